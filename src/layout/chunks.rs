//! A map whose gzip does not fit one ConfigMap, stored in chunks: `<key>.gz.000`,
//! `<key>.gz.001`, ... across ConfigMaps `<target>`, `<target>-1`, ...; the first names the
//! count (annotation [`super::CHUNKS_ANNOTATION`], and the [`ChunkManifest`] for readers of
//! a mounted volume). Names, sizes and counts here; putting chunks together is
//! [`super::read::assemble`].

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::CHUNKS_ANNOTATION;

/// What the API server accepts in one ConfigMap's data and binaryData together.
pub const MAX_CONFIG_MAP_PAYLOAD: usize = 1024 * 1024;

/// Gzip bytes per chunk ConfigMap, for a map whose gzip does not fit one ConfigMap. The API
/// server refuses a ConfigMap whose data and binaryData add up to more than 1 MiB, and etcd
/// a write over 1.5 MiB (the whole object: annotations, managedFields); 768 KiB leaves a
/// quarter MiB for those, so a chunk never fails on its own size.
pub const CHUNK_BYTES: usize = 768 * 1024;
/// Most chunks a map is split into (75 MiB of gzip, far above any map `--max-map-bytes`
/// admits): the index is three digits, and a reader never fetches more ConfigMaps than this.
pub const MAX_CHUNKS: usize = 100;

/// Why the chunks of a map stored in chunks do not make a map to serve.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChunkError {
    /// The first ConfigMap's chunk count is not a number from 2 to [`MAX_CHUNKS`].
    #[error("the chunk count {count:?} is not a number from 2 to {MAX_CHUNKS}")]
    BadCount {
        /// What it says.
        count: String,
    },
    /// A chunk is not there (its ConfigMap, or its key, is missing).
    #[error("chunk {index} of {count} ({name}) is missing")]
    Missing {
        /// Its index, from 0.
        index: usize,
        /// How many the first ConfigMap names.
        count: usize,
        /// The ConfigMap or file that should hold it.
        name: String,
    },
    /// The chunks come from different maps (an update half written, or an edit): what they
    /// make is not the map the first ConfigMap names.
    #[error(
        "the chunks make map {actual}, not {expected} that the first names: they mix two maps (an update half written?)"
    )]
    Mixed {
        /// The digest the first ConfigMap names.
        expected: String,
        /// The digest of what the chunks make (or why they make nothing).
        actual: String,
    },
}

/// What a reader without the API (the agent, on a mounted volume) needs to put the chunks
/// together: the count and the digest, which the annotations carry for API readers.
/// Stored as JSON in the first ConfigMap's `data["<key>.gz.chunks"]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChunkManifest {
    /// How many chunks: `<key>.gz.000` ... `<key>.gz.<chunks-1>`.
    pub chunks: usize,
    /// `sha256:<hex>` of the whole plain map.
    pub digest: String,
}

/// The gz key for a plain key.
pub fn gz_key(key: &str) -> String {
    format!("{key}.gz")
}

/// The gzip in the byte ranges it is stored in: itself while it fits one ConfigMap, else
/// [`CHUNK_BYTES`] each (the last one shorter).
pub fn split_gz(gz: &[u8]) -> Vec<&[u8]> {
    if gz.len() <= MAX_CONFIG_MAP_PAYLOAD {
        return vec![gz];
    }
    gz.chunks(CHUNK_BYTES).collect()
}

/// The key of chunk `index` (from 0): `<key>.gz.000`.
pub fn chunk_key(key: &str, index: usize) -> String {
    format!("{key}.gz.{index:03}")
}

/// The key of the [`ChunkManifest`] in the first ConfigMap: `<key>.gz.chunks`.
pub fn manifest_key(key: &str) -> String {
    format!("{key}.gz.chunks")
}

/// The ConfigMap of chunk `index` of a map whose first ConfigMap is `first`: `first` itself
/// for chunk 0, else `<first>-<index>`.
pub fn chunk_name(first: &str, index: usize) -> String {
    match index {
        0 => first.to_owned(),
        _ => format!("{first}-{index}"),
    }
}

/// How many chunks the first ConfigMap of a map names: `None` for a map in one ConfigMap.
/// A count out of range (an edit) is an error, so no reader fetches a thousand ConfigMaps.
pub fn chunk_count(first: &ConfigMap) -> Result<Option<usize>, ChunkError> {
    chunk_count_of(&first.metadata)
}

/// [`chunk_count`] from the first ConfigMap's metadata (as a metadata watch has it).
pub fn chunk_count_of(first: &ObjectMeta) -> Result<Option<usize>, ChunkError> {
    let Some(count) = first
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(CHUNKS_ANNOTATION))
    else {
        return Ok(None);
    };
    let bad = || ChunkError::BadCount {
        count: count.clone(),
    };
    let count = count.parse::<usize>().map_err(|_| bad())?;
    checked_count(count).map(Some).map_err(|_| bad())
}

/// `count`, when it is a chunk count a reader may follow: from 2 to [`MAX_CHUNKS`] (an edit
/// could name a thousand).
pub fn checked_count(count: usize) -> Result<usize, ChunkError> {
    match (2..=MAX_CHUNKS).contains(&count) {
        true => Ok(count),
        false => Err(ChunkError::BadCount {
            count: count.to_string(),
        }),
    }
}
