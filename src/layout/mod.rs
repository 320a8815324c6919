//! The ConfigMap layout: how a map is stored in ConfigMaps, the contract between the one
//! writer (the controller) and the readers (the map endpoint's cache, the agent on a
//! mounted volume, an operator restarted that reads its last good map back).
//!
//! - [`gzip`]: the map as stored, its exact bytes and their gzip;
//! - [`chunks`]: a gzip too large for one ConfigMap, split over numbered ConfigMaps;
//! - [`render`]: the ConfigMaps for a map, and the order to write them in;
//! - [`read`]: a map read back from ConfigMaps (either layout), checked against its digest;
//! - [`patch`]: the patch that writes a rendered ConfigMap.
//!
//! The labels and annotations every reader relies on are here, with the selector of the
//! ConfigMaps that hold published maps.

pub mod chunks;
pub mod gzip;
pub mod patch;
pub mod read;
pub mod render;

/// Label on every ConfigMap this operator writes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "costmap-operator";
/// On the ConfigMaps of the history ring: the target ConfigMap they keep maps of.
pub const HISTORY_OF_LABEL: &str = "costmap.dev/history-of";
/// `sha256:<hex>` of the map's bytes.
pub const DIGEST_ANNOTATION: &str = "costmap.dev/digest";
/// Git blob id of the map's bytes (LiteLLM's `source_revision`).
pub const GIT_BLOB_ID_ANNOTATION: &str = "costmap.dev/git-blob-id";
/// Number of models in the map.
pub const MODELS_ANNOTATION: &str = "costmap.dev/models";
/// Where the map was fetched from (credentials and query removed).
pub const SOURCE_URL_ANNOTATION: &str = "costmap.dev/source-url";
/// When the content last changed (RFC 3339).
pub const UPDATED_AT_ANNOTATION: &str = "costmap.dev/updated-at";
/// On the first ConfigMap of a map stored in chunks: how many ConfigMaps hold them.
/// The data key of the target's `map-url`: the URL, token included, a proxy in the
/// target's namespace reads the map from (see `crate::http::capability`).
pub const MAP_URL_KEY: &str = "map-url";
pub const CHUNKS_ANNOTATION: &str = "costmap.dev/chunks";

/// Annotation values describing the stored map.
#[derive(Debug, Clone, PartialEq)]
pub struct MapIdentity {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Git blob id.
    pub git_blob_id: String,
    /// Model count.
    pub models: i32,
    /// Redacted source URL.
    pub source_url: String,
    /// RFC 3339 time of the last content change.
    pub updated_at: String,
}

/// The label selector of the ConfigMaps this operator writes that hold published maps:
/// targets and cluster copies (with their chunks), not the history ring's.
pub fn published_maps_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},!{HISTORY_OF_LABEL}")
}
