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

mod patch;
pub use patch::{WritePatch, write_patch};

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
/// On the first ConfigMap of a map stored in chunks: how many ConfigMaps hold them.
pub const CHUNKS_ANNOTATION: &str = "costmap.dev/chunks";
/// Gzip bytes per chunk ConfigMap, for a map whose gzip does not fit one ConfigMap. The API
/// server refuses a ConfigMap whose data and binaryData add up to more than 1 MiB, and etcd
/// a write over 1.5 MiB (the whole object: annotations, managedFields); 768 KiB leaves a
/// quarter MiB for those, so a chunk never fails on its own size.
pub const CHUNK_BYTES: usize = 768 * 1024;
/// Most chunks a map is split into (75 MiB of gzip, far above any map `--max-map-bytes`
/// admits): the index is three digits, and a reader never fetches more ConfigMaps than this.
pub const MAX_CHUNKS: usize = 100;

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
    /// The gzipped map does not fit [`MAX_CHUNKS`] ConfigMaps.
    #[error(
        "the gzipped map is {gz_bytes} bytes, more than {MAX_CHUNKS} ConfigMaps of {CHUNK_BYTES} bytes hold"
    )]
    TooLarge {
        /// Size of the gzip.
        gz_bytes: usize,
    },
    /// The ConfigMap's gzip could not be read back.
    #[error("the stored gzip is unreadable: {0}")]
    Unreadable(#[from] GunzipError),
    /// The chunks of a map stored in chunks do not make that map.
    #[error(transparent)]
    Chunks(#[from] ChunkError),
}

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

/// Renders the ConfigMaps for a map: one while its gzip fits a ConfigMap (`<key>.gz`, and
/// the plain copy when that fits too), else the gzip split in [`CHUNK_BYTES`] byte ranges,
/// `<key>.gz.000`, `<key>.gz.001`, ... in ConfigMaps `<name>`, `<name>-1`, ... (the first
/// also names the count and holds the [`ChunkManifest`]). The first ConfigMap comes first;
/// write them in [`write_order`]. Refuses, never truncates, a map too large to store.
pub fn render_config_maps(
    target: &TargetRef,
    map: &StoredMap,
    identity: &MapIdentity,
) -> Result<Vec<ConfigMap>, RenderError> {
    let parts = split_gz(&map.gz);
    if parts.len() > MAX_CHUNKS {
        return Err(RenderError::TooLarge {
            gz_bytes: map.gz.len(),
        });
    }
    let mut annotations = identity_annotations(identity);
    if let [gz] = parts.as_slice() {
        let data = (gz.len() + map.bytes.len() <= VERBATIM_BUDGET)
            .then(|| String::from_utf8(map.bytes.clone()).ok())
            .flatten()
            .map(|text| BTreeMap::from([(target.key.clone(), text)]));
        let binary_data = BTreeMap::from([(gz_key(&target.key), ByteString(gz.to_vec()))]);
        return Ok(vec![config_map(
            target,
            target.name.clone(),
            annotations,
            data,
            binary_data,
        )]);
    }
    annotations.insert(CHUNKS_ANNOTATION.to_owned(), parts.len().to_string());
    let manifest = ChunkManifest {
        chunks: parts.len(),
        digest: identity.digest.clone(),
    };
    // Serializing a struct of a number and a string cannot fail.
    let manifest = serde_json::to_string(&manifest).unwrap_or_default();
    let mut first = Some((annotations, manifest));
    Ok(parts
        .iter()
        .enumerate()
        .map(|(index, part)| {
            let (annotations, data) = match first.take() {
                Some((annotations, manifest)) => (
                    annotations,
                    Some(BTreeMap::from([(manifest_key(&target.key), manifest)])),
                ),
                None => (
                    BTreeMap::from([(DIGEST_ANNOTATION.to_owned(), identity.digest.clone())]),
                    None,
                ),
            };
            let binary_data =
                BTreeMap::from([(chunk_key(&target.key, index), ByteString(part.to_vec()))]);
            config_map(
                target,
                chunk_name(&target.name, index),
                annotations,
                data,
                binary_data,
            )
        })
        .collect())
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

/// The order to write rendered ConfigMaps in: the chunks first, the first ConfigMap last,
/// so that a reader, who starts from the first, finds the new map only once it is whole.
pub fn write_order(rendered: &[ConfigMap]) -> impl Iterator<Item = &ConfigMap> {
    rendered.iter().skip(1).chain(rendered.first())
}

fn identity_annotations(identity: &MapIdentity) -> BTreeMap<String, String> {
    BTreeMap::from([
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
    ])
}

fn config_map(
    target: &TargetRef,
    name: String,
    annotations: BTreeMap<String, String>,
    data: Option<BTreeMap<String, String>>,
    binary_data: BTreeMap<String, ByteString>,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
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
        binary_data: Some(binary_data),
        ..ConfigMap::default()
    }
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

/// The ConfigMaps that may hold one stored map, as read from the cluster: the first (the
/// target's, or a history slot's) at index 0, then the chunk ConfigMaps its annotation
/// names, each `None` when it is not there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeldConfigMaps {
    /// By chunk index.
    pub maps: Vec<Option<ConfigMap>>,
}

impl HeldConfigMaps {
    /// A map held in one ConfigMap (or none).
    pub fn single(first: Option<ConfigMap>) -> HeldConfigMaps {
        HeldConfigMaps { maps: vec![first] }
    }

    /// The first ConfigMap, named by the target.
    pub fn first(&self) -> Option<&ConfigMap> {
        self.get(0)
    }

    /// The ConfigMap of chunk `index`.
    pub fn get(&self, index: usize) -> Option<&ConfigMap> {
        self.maps.get(index)?.as_ref()
    }

    /// Whether one of them is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.maps
            .iter()
            .flatten()
            .any(|cm| cm.metadata.name.as_deref() == Some(name))
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
    match count.parse::<usize>() {
        Ok(n) if (2..=MAX_CHUNKS).contains(&n) => Ok(Some(n)),
        _ => Err(ChunkError::BadCount {
            count: count.clone(),
        }),
    }
}

/// Reads the map back from the ConfigMaps that hold it, in either layout, decompressing at
/// most `max_bytes`. Chunks must make exactly the map whose digest the first names; `None`
/// when the first holds no map of `key`.
pub fn read_stored(
    held: &HeldConfigMaps,
    key: &str,
    max_bytes: u64,
) -> Result<Option<StoredMap>, RenderError> {
    let Some(first) = held.first() else {
        return Ok(None);
    };
    if let Some(map) = read_stored_map(first, key, max_bytes)? {
        return Ok(Some(map));
    }
    let Some(count) = chunk_count(first)? else {
        return Ok(None);
    };
    let first_name = first.metadata.name.clone().unwrap_or_default();
    let parts = (0..count)
        .map(|index| {
            held.get(index)
                .and_then(|cm| cm.binary_data.as_ref()?.get(&chunk_key(key, index)))
                .map(|gz| gz.0.as_slice())
                .ok_or_else(|| ChunkError::Missing {
                    index,
                    count,
                    name: chunk_name(&first_name, index),
                })
        })
        .collect::<Result<Vec<&[u8]>, ChunkError>>()?;
    let expected = first
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(DIGEST_ANNOTATION))
        .map_or("", String::as_str);
    assemble(&parts, expected, max_bytes).map(Some)
}

/// Puts chunks together: the map they make, when it is exactly the map of `expected` (its
/// digest). Chunks of two maps (an update half written) make another gzip, or none.
pub fn assemble(parts: &[&[u8]], expected: &str, max_bytes: u64) -> Result<StoredMap, RenderError> {
    let gz = parts.concat();
    let bytes = match gunzip_bounded(&gz, max_bytes) {
        Ok(bytes) => bytes,
        Err(err @ GunzipError::TooLarge { .. }) => return Err(err.into()),
        Err(GunzipError::Corrupt(err)) => {
            return Err(ChunkError::Mixed {
                expected: expected.to_owned(),
                actual: format!("none (not a valid gzip: {err})"),
            }
            .into());
        }
    };
    let map = StoredMap { bytes, gz };
    let actual = map.digest();
    if actual != expected {
        return Err(ChunkError::Mixed {
            expected: expected.to_owned(),
            actual,
        }
        .into());
    }
    Ok(map)
}

/// Whether `held` still holds every ConfigMap of `desired` (see [`holds_rendered`]).
pub fn holds_all(held: &HeldConfigMaps, desired: &[ConfigMap]) -> bool {
    stale(held, desired).next().is_none()
}

/// The ConfigMaps of `desired` that `held` does not hold (any more), in [`write_order`]:
/// what to write to put the map back.
pub fn stale<'a>(
    held: &'a HeldConfigMaps,
    desired: &'a [ConfigMap],
) -> impl Iterator<Item = &'a ConfigMap> {
    let held_at = |index: usize, desired: &ConfigMap| {
        held.get(index)
            .is_some_and(|actual| holds_rendered(actual, desired))
    };
    let first_stale = desired.first().filter(|first| !held_at(0, first));
    desired
        .iter()
        .enumerate()
        .skip(1)
        .filter(move |(index, cm)| !held_at(*index, cm))
        .map(|(_, cm)| cm)
        .chain(first_stale)
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
    let identity_annotation = |key: &str| {
        [
            DIGEST_ANNOTATION,
            GIT_BLOB_ID_ANNOTATION,
            MODELS_ANNOTATION,
            CHUNKS_ANNOTATION,
        ]
        .contains(&key)
    };
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
    let rendered_data = |k: &String| desired.data.as_ref().is_some_and(|d| d.contains_key(k));
    let no_stale_verbatim = actual.data.as_ref().is_none_or(|data| {
        data.keys()
            .all(|k| rendered_data(k) || !desired_keys(desired).contains(k))
    });
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

/// The plain keys a rendered ConfigMap may hold: `<key>` for each `<key>.gz` or chunk
/// `<key>.gz.NNN`.
fn desired_keys(desired: &ConfigMap) -> Vec<String> {
    desired
        .binary_data
        .iter()
        .flatten()
        .filter_map(|(gz, _)| {
            gz.strip_suffix(".gz")
                .or_else(|| gz.rsplit_once(".gz.").map(|(key, _)| key))
                .map(str::to_owned)
        })
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

/// The ConfigMaps the ModelCostMapSync `owner` (uid `uid-<owner>`) renders for `bytes` as
/// target `name` in namespace `llm`, key `map.json`, for tests.
#[cfg(test)]
pub(crate) fn rendered_for(name: &str, owner_name: &str, bytes: &[u8]) -> Vec<ConfigMap> {
    let map = StoredMap::from_bytes(bytes.to_vec());
    let target = TargetRef {
        name: name.into(),
        namespace: "llm".into(),
        key: "map.json".into(),
        owner: owner(owner_name, &format!("uid-{owner_name}")),
    };
    let identity = MapIdentity {
        digest: map.digest(),
        git_blob_id: String::new(),
        models: 1,
        source_url: String::new(),
        updated_at: String::new(),
    };
    render_config_maps(&target, &map, &identity).unwrap()
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
        let mut rendered = render_config_maps(&target(), map, &identity(map)).unwrap();
        assert_eq!(rendered.len(), 1, "fits one ConfigMap");
        rendered.remove(0)
    }

    /// A map whose gzip is `chunks` and a bit chunks long: pseudo-random hex compresses
    /// to about half its size.
    fn map_of_chunks(chunks: usize) -> StoredMap {
        let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ chunks as u64;
        let mut text = String::from("{\"m\": \"");
        while text.len() < chunks * CHUNK_BYTES * 19 / 10 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.push_str(&format!("{state:016x}"));
        }
        text.push_str("\"}");
        let map = StoredMap::from_bytes(text.into_bytes());
        assert!(map.gz.len() > MAX_CONFIG_MAP_PAYLOAD);
        map
    }

    fn held(rendered: &[ConfigMap]) -> HeldConfigMaps {
        HeldConfigMaps {
            maps: rendered.iter().cloned().map(Some).collect(),
        }
    }

    #[test]
    fn a_gzip_over_a_configmap_is_split_in_chunks_and_the_first_names_them() {
        let map = map_of_chunks(3);
        let rendered = render_config_maps(&target(), &map, &identity(&map)).unwrap();
        let expected_chunks = map.gz.len().div_ceil(CHUNK_BYTES);
        assert_eq!(rendered.len(), expected_chunks);
        let names: Vec<_> = rendered
            .iter()
            .map(|cm| cm.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names[..3], ["litellm", "litellm-1", "litellm-2"]);
        let mut joined = Vec::new();
        for (index, cm) in rendered.iter().enumerate() {
            let binary = cm.binary_data.as_ref().unwrap();
            assert_eq!(binary.len(), 1);
            let part = &binary[&format!("map.json.gz.{index:03}")].0;
            assert!(part.len() <= CHUNK_BYTES);
            joined.extend_from_slice(part);
            let annotations = cm.metadata.annotations.as_ref().unwrap();
            assert_eq!(annotations[DIGEST_ANNOTATION], map.digest(), "on each");
            assert_eq!(
                cm.metadata.owner_references.as_ref().unwrap()[0].uid,
                "uid-1"
            );
            assert_eq!(
                cm.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL],
                MANAGED_BY
            );
            assert_eq!(
                annotations.get(CHUNKS_ANNOTATION).cloned(),
                (index == 0).then(|| expected_chunks.to_string())
            );
        }
        assert_eq!(joined, map.gz, "byte ranges of the one gzip");
        let manifest: ChunkManifest =
            serde_json::from_str(&rendered[0].data.as_ref().unwrap()["map.json.gz.chunks"])
                .unwrap();
        assert_eq!(
            manifest,
            ChunkManifest {
                chunks: expected_chunks,
                digest: map.digest()
            }
        );
        assert!(rendered[1].data.is_none());
        let order: Vec<_> = write_order(&rendered)
            .map(|cm| cm.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            order.last().unwrap(),
            "litellm",
            "the first is written last"
        );
        assert_eq!(order.len(), rendered.len());
    }

    #[test]
    fn chunks_read_back_byte_exact_and_a_mixed_or_incomplete_set_is_refused() {
        let (a, b) = (map_of_chunks(2), map_of_chunks(3));
        let rendered_a = render_config_maps(&target(), &a, &identity(&a)).unwrap();
        let rendered_b = render_config_maps(&target(), &b, &identity(&b)).unwrap();
        let read = read_stored(&held(&rendered_a), "map.json", 64 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(read, a);

        // The chunks of b written, the first not yet: the first names a.
        let mut half = held(&rendered_b);
        half.maps[0] = Some(rendered_a[0].clone());
        let err = read_stored(&half, "map.json", 64 << 20).unwrap_err();
        assert!(
            matches!(err, RenderError::Chunks(ChunkError::Mixed { .. })),
            "{err}"
        );
        assert!(err.to_string().contains(&a.digest()), "{err}");
        // The first of b, one chunk of a.
        let mut mixed = held(&rendered_b);
        mixed.maps[1] = Some(rendered_a[1].clone());
        assert!(read_stored(&mixed, "map.json", 64 << 20).is_err());
        // A chunk ConfigMap gone.
        let mut incomplete = held(&rendered_a);
        incomplete.maps[1] = None;
        let err = read_stored(&incomplete, "map.json", 64 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("chunk 1 of {} (litellm-1) is missing", rendered_a.len())
        );
        // The decompressed size is bounded as for one ConfigMap.
        let err = read_stored(&held(&rendered_a), "map.json", 1 << 20).unwrap_err();
        assert!(matches!(
            err,
            RenderError::Unreadable(GunzipError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_chunk_count_out_of_range_is_refused_before_anything_is_read() {
        let mut first = ConfigMap::default();
        assert_eq!(chunk_count(&first), Ok(None));
        for (count, ok) in [
            ("2", true),
            ("100", true),
            ("1", false),
            ("101", false),
            ("x", false),
        ] {
            first.metadata.annotations =
                Some(BTreeMap::from([(CHUNKS_ANNOTATION.into(), count.into())]));
            assert_eq!(chunk_count(&first).is_ok(), ok, "{count}");
        }
    }

    #[test]
    fn a_chunk_set_is_held_only_while_every_configmap_is() {
        let map = map_of_chunks(2);
        let rendered = render_config_maps(&target(), &map, &identity(&map)).unwrap();
        let mut actual = held(&rendered);
        assert!(holds_all(&actual, &rendered));
        // One chunk edited: it alone is stale.
        actual.maps[1]
            .as_mut()
            .unwrap()
            .binary_data
            .as_mut()
            .unwrap()
            .insert("map.json.gz.001".into(), ByteString(b"edited".to_vec()));
        let stale_names: Vec<_> = stale(&actual, &rendered)
            .map(|cm| cm.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(stale_names, ["litellm-1"]);
        // Nothing there: every one, the first last.
        let nothing = HeldConfigMaps::single(None);
        let stale_names: Vec<_> = stale(&nothing, &rendered)
            .map(|cm| cm.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(stale_names.len(), rendered.len());
        assert_eq!(stale_names.last().unwrap(), "litellm");
        // A plain copy added by hand beside the manifest would serve a stale map.
        let mut verbatim = held(&rendered);
        verbatim.maps[0]
            .as_mut()
            .unwrap()
            .data
            .as_mut()
            .unwrap()
            .insert("map.json".into(), "{}".into());
        assert!(!holds_all(&verbatim, &rendered));
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
    fn a_gzip_that_does_not_fit_the_most_chunks_is_refused_not_truncated() {
        let too_large = MAX_CHUNKS * CHUNK_BYTES + 1;
        let map = StoredMap {
            bytes: vec![b' '; 10],
            gz: vec![0; too_large],
        };
        let err = render_config_maps(&target(), &map, &identity(&map)).unwrap_err();
        assert!(matches!(err, RenderError::TooLarge { gz_bytes } if gz_bytes == too_large));
        let fits = StoredMap {
            bytes: vec![b' '; 10],
            gz: vec![0; MAX_CONFIG_MAP_PAYLOAD],
        };
        let one = render_config_maps(&target(), &fits, &identity(&fits)).unwrap();
        assert_eq!(
            one.len(),
            1,
            "a gzip of exactly 1 MiB still fits one ConfigMap"
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
