//! The target ConfigMap: rendered from a map, and the last good map read back from it.
//!
//! The ConfigMap is the only store of the last good map, so an operator restart loses
//! nothing: it reads the map back, checks it against the digest in status and carries on.

use std::collections::BTreeMap;
use std::io::Write;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::digest::sha256_digest;

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

/// What the API server accepts in one ConfigMap's data and binaryData together.
pub const MAX_CONFIG_MAP_PAYLOAD: usize = 1024 * 1024;
/// The plain copy is stored beside the gzip only below this total, leaving room to spare.
pub const VERBATIM_BUDGET: usize = MAX_CONFIG_MAP_PAYLOAD * 3 / 4;

/// The map as stored: its exact bytes and their gzip.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMap {
    /// The exact bytes fetched.
    pub bytes: Vec<u8>,
    /// gzip of `bytes`, as written to (or read from) the ConfigMap.
    pub gz: Vec<u8>,
}

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

/// Where the ConfigMap goes and who owns it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRef {
    /// ConfigMap name.
    pub name: String,
    /// Namespace (the ModelCostMapSync's).
    pub namespace: String,
    /// The plain map's key; the gzip is under `<key>.gz`.
    pub key: String,
    /// Controller reference to the owning ModelCostMapSync.
    pub owner: OwnerReference,
}

/// Errors of rendering and reading back.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The gzipped map does not fit one ConfigMap.
    #[error(
        "the gzipped map is {gz_bytes} bytes, more than the {MAX_CONFIG_MAP_PAYLOAD} bytes a ConfigMap holds"
    )]
    TooLarge {
        /// Size of the gzip.
        gz_bytes: usize,
    },
    /// The ConfigMap's gzip could not be read back.
    #[error("the stored gzip is unreadable: {0}")]
    Unreadable(#[from] GunzipError),
}

/// Why a stored gzip could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    /// It decompresses to more than allowed (a hand edit, or a gzip bomb).
    #[error("it decompresses to more than {max_bytes} bytes")]
    TooLarge {
        /// The limit.
        max_bytes: u64,
    },
    /// It is not a gzip, or it is cut short.
    #[error("not a valid gzip: {0}")]
    Corrupt(std::io::Error),
}

/// Decompresses `gz`, stopping as soon as it yields more than `max_bytes`: whatever stored
/// it (a ConfigMap edited by hand, a mounted file) could hold anything.
pub fn gunzip_bounded(gz: &[u8], max_bytes: u64) -> Result<Vec<u8>, GunzipError> {
    crate::bounded::read_at_most(GzDecoder::new(gz), max_bytes).map_err(|err| match err {
        crate::bounded::BoundedError::TooLarge { max_bytes } => GunzipError::TooLarge { max_bytes },
        crate::bounded::BoundedError::Io(err) => GunzipError::Corrupt(err),
    })
}

/// The gzip level of stored maps. On the 3.5 MB map (flate2 with zlib-rs, `cargo bench
/// --bench pipeline -- "gzip level"`): level 6 is 184,140 bytes in 18 ms, level 9 177,477
/// bytes (3.6% smaller) in 34 ms; miniz_oxide, the default backend, took 73 ms at level 9.
const GZIP_LEVEL: u32 = 6;

impl StoredMap {
    /// Compresses the fetched bytes for storage.
    pub fn from_bytes(bytes: Vec<u8>) -> StoredMap {
        let gz = gzip(&bytes);
        StoredMap { bytes, gz }
    }

    /// The `sha256:<hex>` digest of the bytes.
    pub fn digest(&self) -> String {
        sha256_digest(&self.bytes)
    }
}

/// The gzip of `bytes`, as stored.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 16),
        Compression::new(GZIP_LEVEL),
    );
    // Writing into a Vec cannot fail.
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .unwrap_or_default()
}

/// The gz key for a plain key.
pub fn gz_key(key: &str) -> String {
    format!("{key}.gz")
}

/// Renders the ConfigMap for a map. Refuses, never truncates, a map too large to store.
pub fn render_config_map(
    target: &TargetRef,
    map: &StoredMap,
    identity: &MapIdentity,
) -> Result<ConfigMap, RenderError> {
    if map.gz.len() > MAX_CONFIG_MAP_PAYLOAD {
        return Err(RenderError::TooLarge {
            gz_bytes: map.gz.len(),
        });
    }
    let data = (map.gz.len() + map.bytes.len() <= VERBATIM_BUDGET)
        .then(|| String::from_utf8(map.bytes.clone()).ok())
        .flatten()
        .map(|text| BTreeMap::from([(target.key.clone(), text)]));
    let annotations = BTreeMap::from([
        (DIGEST_ANNOTATION.to_owned(), identity.digest.clone()),
        (
            GIT_BLOB_ID_ANNOTATION.to_owned(),
            identity.git_blob_id.clone(),
        ),
        (MODELS_ANNOTATION.to_owned(), identity.models.to_string()),
        (
            SOURCE_URL_ANNOTATION.to_owned(),
            identity.source_url.clone(),
        ),
        (
            UPDATED_AT_ANNOTATION.to_owned(),
            identity.updated_at.clone(),
        ),
    ]);
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(target.name.clone()),
            namespace: Some(target.namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY.to_owned(),
            )])),
            annotations: Some(annotations),
            owner_references: Some(vec![target.owner.clone()]),
            ..ObjectMeta::default()
        },
        data,
        binary_data: Some(BTreeMap::from([(
            gz_key(&target.key),
            ByteString(map.gz.clone()),
        )])),
        ..ConfigMap::default()
    })
}

/// Reads the map back from a ConfigMap's gz key, decompressing at most `max_bytes`: a
/// ConfigMap edited by hand could hold anything.
pub fn read_stored_map(
    config_map: &ConfigMap,
    key: &str,
    max_bytes: u64,
) -> Result<Option<StoredMap>, RenderError> {
    let Some(gz) = config_map
        .binary_data
        .as_ref()
        .and_then(|data| data.get(&gz_key(key)))
    else {
        return Ok(None);
    };
    Ok(Some(StoredMap {
        bytes: gunzip_bounded(&gz.0, max_bytes)?,
        gz: gz.0.clone(),
    }))
}

/// Whether `actual` still holds everything `desired` sets: our label, owner reference,
/// identity annotations and keys. Fields other writers added are left alone.
pub fn holds_rendered(actual: &ConfigMap, desired: &ConfigMap) -> bool {
    fn contains<V: PartialEq>(
        actual: Option<&BTreeMap<String, V>>,
        desired: Option<&BTreeMap<String, V>>,
        keys: impl Fn(&str) -> bool,
    ) -> bool {
        let empty = BTreeMap::new();
        let actual = actual.unwrap_or(&empty);
        desired
            .unwrap_or(&empty)
            .iter()
            .filter(|(key, _)| keys(key))
            .all(|(key, value)| actual.get(key) == Some(value))
    }
    let identity_annotation =
        |key: &str| [DIGEST_ANNOTATION, GIT_BLOB_ID_ANNOTATION, MODELS_ANNOTATION].contains(&key);
    let owner_kept = desired
        .metadata
        .owner_references
        .iter()
        .flatten()
        .all(|owner| {
            actual
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == owner.uid && o.controller == owner.controller)
        });
    // A verbatim key we do not render must not linger either (it would serve a stale map).
    let no_stale_verbatim = desired.data.is_some()
        || actual
            .data
            .as_ref()
            .is_none_or(|data| data.keys().all(|k| !desired_keys(desired).contains(k)));
    owner_kept
        && no_stale_verbatim
        && contains(
            actual.metadata.labels.as_ref(),
            desired.metadata.labels.as_ref(),
            |_| true,
        )
        && contains(
            actual.metadata.annotations.as_ref(),
            desired.metadata.annotations.as_ref(),
            identity_annotation,
        )
        && contains(actual.data.as_ref(), desired.data.as_ref(), |_| true)
        && contains(
            actual.binary_data.as_ref(),
            desired.binary_data.as_ref(),
            |_| true,
        )
}

/// The plain keys a rendered ConfigMap may hold: `<key>` for each `<key>.gz`.
fn desired_keys(desired: &ConfigMap) -> Vec<String> {
    desired
        .binary_data
        .iter()
        .flatten()
        .filter_map(|(gz, _)| gz.strip_suffix(".gz").map(str::to_owned))
        .collect()
}

/// A controller reference to the ModelCostMapSync `name`, for tests.
#[cfg(test)]
pub(crate) fn owner(name: &str, uid: &str) -> OwnerReference {
    use kube::Resource;
    OwnerReference {
        api_version: crate::api::ModelCostMapSync::api_version(&()).into_owned(),
        kind: crate::api::ModelCostMapSync::kind(&()).into_owned(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::git_blob_id;

    fn target() -> TargetRef {
        TargetRef {
            name: "litellm".into(),
            namespace: "llm".into(),
            key: "map.json".into(),
            owner: owner("litellm", "uid-1"),
        }
    }

    fn identity(map: &StoredMap) -> MapIdentity {
        MapIdentity {
            digest: map.digest(),
            git_blob_id: git_blob_id(&map.bytes),
            models: 2,
            source_url: "https://example.com/map.json".into(),
            updated_at: "2026-11-25T08:00:00Z".into(),
        }
    }

    fn rendered(map: &StoredMap) -> ConfigMap {
        render_config_map(&target(), map, &identity(map)).unwrap()
    }

    #[test]
    fn small_map_is_stored_gzipped_and_verbatim_with_identity() {
        let map = StoredMap::from_bytes(br#"{"a": {}, "b": {}}"#.to_vec());
        let cm = rendered(&map);
        assert_eq!(
            cm.data.as_ref().unwrap()["map.json"],
            r#"{"a": {}, "b": {}}"#
        );
        let read = read_stored_map(&cm, "map.json", 1 << 20).unwrap().unwrap();
        assert_eq!(read.bytes, map.bytes);
        let annotations = cm.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[DIGEST_ANNOTATION], map.digest());
        assert_eq!(annotations[MODELS_ANNOTATION], "2");
        assert_eq!(
            cm.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL],
            MANAGED_BY
        );
        assert_eq!(
            cm.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
    }

    #[test]
    fn large_map_is_stored_gzipped_only() {
        // ~1 MB of JSON: too large to keep a plain copy beside the gzip.
        let body: String = (0..100_000).map(|i| format!("\"m{i}\":{{}},")).collect();
        let map = StoredMap::from_bytes(format!("{{{}\"z\":{{}}}}", body).into_bytes());
        assert!(map.bytes.len() > VERBATIM_BUDGET);
        let cm = rendered(&map);
        assert!(cm.data.is_none());
        assert!(cm.binary_data.unwrap().contains_key("map.json.gz"));
    }

    #[test]
    fn a_gzip_that_does_not_fit_is_refused_not_truncated() {
        let map = StoredMap {
            bytes: vec![b' '; 10],
            gz: vec![0; MAX_CONFIG_MAP_PAYLOAD + 1],
        };
        let err = render_config_map(&target(), &map, &identity(&map)).unwrap_err();
        assert!(
            matches!(err, RenderError::TooLarge { gz_bytes } if gz_bytes == MAX_CONFIG_MAP_PAYLOAD + 1)
        );
    }

    #[test]
    fn reading_back_is_bounded_and_tolerates_garbage() {
        let bomb = StoredMap::from_bytes(vec![b'0'; 2 << 20]);
        let cm = rendered(&StoredMap {
            bytes: vec![],
            gz: bomb.gz,
        });
        let err = read_stored_map(&cm, "map.json", 1 << 20).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");

        let mut garbage = rendered(&StoredMap::from_bytes(b"{}".to_vec()));
        garbage
            .binary_data
            .as_mut()
            .unwrap()
            .insert("map.json.gz".into(), ByteString(b"not gzip".to_vec()));
        assert!(read_stored_map(&garbage, "map.json", 1 << 20).is_err());
        assert!(
            read_stored_map(&ConfigMap::default(), "map.json", 1 << 20)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn hand_edits_to_our_fields_are_detected_and_others_ignored() {
        let map = StoredMap::from_bytes(br#"{"a": {}}"#.to_vec());
        let desired = rendered(&map);
        assert!(holds_rendered(&desired, &desired));

        let mut extra = desired.clone();
        extra
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("team".into(), "x".into());
        extra
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(UPDATED_AT_ANNOTATION.into(), "x".into());
        assert!(
            holds_rendered(&extra, &desired),
            "foreign annotations are not ours to police"
        );

        let mut edited = desired.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("map.json".into(), "{}".into());
        assert!(!holds_rendered(&edited, &desired));

        let mut digest_edited = desired.clone();
        digest_edited
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DIGEST_ANNOTATION.into(), "x".into());
        assert!(!holds_rendered(&digest_edited, &desired));

        let mut orphaned = desired.clone();
        orphaned.metadata.owner_references = None;
        assert!(!holds_rendered(&orphaned, &desired));

        let mut gz_only = desired.clone();
        gz_only.data = None;
        let mut stale_verbatim = gz_only.clone();
        stale_verbatim.data = Some(BTreeMap::from([("map.json".into(), "old".into())]));
        assert!(!holds_rendered(&stale_verbatim, &gz_only));
    }
}
