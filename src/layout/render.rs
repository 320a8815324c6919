//! The ConfigMaps for a map: one while its gzip fits (with the plain copy when that fits
//! too), else one per chunk; owned by the object that publishes the map, labelled as ours,
//! annotated with the map's identity.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::chunks::{
    CHUNK_BYTES, ChunkManifest, MAX_CHUNKS, MAX_CONFIG_MAP_PAYLOAD, chunk_key, chunk_name, gz_key,
    manifest_key, split_gz,
};
use super::gzip::StoredMap;
use super::{
    CHUNKS_ANNOTATION, DIGEST_ANNOTATION, GIT_BLOB_ID_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL,
    MAP_URL_KEY, MODELS_ANNOTATION, MapIdentity, SOURCE_URL_ANNOTATION, UPDATED_AT_ANNOTATION,
};

/// The plain copy is stored beside the gzip only below this total, leaving room to spare.
pub const VERBATIM_BUDGET: usize = MAX_CONFIG_MAP_PAYLOAD * 3 / 4;

/// Where the ConfigMap goes and who owns it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRef {
    /// ConfigMap name.
    pub name: String,
    /// Namespace (the ModelCostMapSync's).
    pub namespace: String,
    /// The plain map's key; the gzip is under `<key>.gz`.
    pub key: String,
    /// Controller reference to the object that publishes the map.
    pub owner: OwnerReference,
    /// The `map-url` the first ConfigMap holds (a capability: never logged), if any.
    pub map_url: Option<String>,
}

impl TargetRef {
    /// `data` with the `map-url` added.
    fn with_map_url(
        &self,
        data: Option<BTreeMap<String, String>>,
    ) -> Option<BTreeMap<String, String>> {
        let Some(url) = &self.map_url else {
            return data;
        };
        let mut data = data.unwrap_or_default();
        data.insert(MAP_URL_KEY.to_owned(), url.clone());
        Some(data)
    }
}

/// Why a map cannot be rendered.
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
            .then(|| std::str::from_utf8(&map.bytes).ok().map(str::to_owned))
            .flatten()
            .map(|text| BTreeMap::from([(target.key.clone(), text)]));
        let data = target.with_map_url(data);
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
                    target.with_map_url(Some(BTreeMap::from([(
                        manifest_key(&target.key),
                        manifest,
                    )]))),
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

/// Maps and renderings for the tests of the layout and of its readers.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::digest::git_blob_id;
    use crate::layout::read::HeldConfigMaps;

    /// A controller reference to the ModelCostMapSync `name`, for tests.
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
    pub(crate) fn rendered_for(name: &str, owner_name: &str, bytes: &[u8]) -> Vec<ConfigMap> {
        let map = StoredMap::from_bytes(bytes.to_vec());
        let target = TargetRef {
            name: name.into(),
            namespace: "llm".into(),
            key: "map.json".into(),
            owner: owner(owner_name, &format!("uid-{owner_name}")),
            map_url: None,
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

    pub(crate) fn target() -> TargetRef {
        TargetRef {
            name: "litellm".into(),
            namespace: "llm".into(),
            key: "map.json".into(),
            owner: owner("litellm", "uid-1"),
            map_url: None,
        }
    }

    pub(crate) fn identity(map: &StoredMap) -> MapIdentity {
        MapIdentity {
            digest: map.digest(),
            git_blob_id: git_blob_id(&map.bytes),
            models: 2,
            source_url: "https://example.com/map.json".into(),
            updated_at: "2026-11-25T08:00:00Z".into(),
        }
    }

    pub(crate) fn rendered(map: &StoredMap) -> ConfigMap {
        let mut rendered = render_config_maps(&target(), map, &identity(map)).unwrap();
        assert_eq!(rendered.len(), 1, "fits one ConfigMap");
        rendered.remove(0)
    }

    /// A map whose gzip is `chunks` and a bit chunks long: pseudo-random hex compresses
    /// to about half its size.
    pub(crate) fn map_of_chunks(chunks: usize) -> StoredMap {
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

    pub(crate) fn held(rendered: &[ConfigMap]) -> HeldConfigMaps {
        HeldConfigMaps {
            maps: rendered.iter().cloned().map(Some).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::layout::read::read_stored_map;

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
    fn the_map_url_goes_into_the_first_configmap_only() {
        let target = TargetRef {
            map_url: Some("http://op.ops.svc:8080/maps/llm/litellm/map.json?token=ab".into()),
            ..target()
        };
        let small = StoredMap::from_bytes(br#"{"a": {}}"#.to_vec());
        let one = render_config_maps(&target, &small, &identity(&small)).unwrap();
        let data = one[0].data.as_ref().unwrap();
        assert_eq!(data[MAP_URL_KEY], target.map_url.clone().unwrap());
        assert!(data.contains_key("map.json"), "beside the plain copy");
        let big = map_of_chunks(2);
        let chunked = render_config_maps(&target, &big, &identity(&big)).unwrap();
        assert_eq!(
            chunked[0].data.as_ref().unwrap()[MAP_URL_KEY],
            target.map_url.clone().unwrap()
        );
        assert!(chunked[1..].iter().all(|cm| cm.data.is_none()));
        let without = render_config_maps(&super::fixtures::target(), &small, &identity(&small));
        assert!(
            !without.unwrap()[0]
                .data
                .as_ref()
                .unwrap()
                .contains_key(MAP_URL_KEY)
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
            bytes: vec![b' '; 10].into(),
            gz: vec![0; too_large],
        };
        let err = render_config_maps(&target(), &map, &identity(&map)).unwrap_err();
        assert!(matches!(err, RenderError::TooLarge { gz_bytes } if gz_bytes == too_large));
        let fits = StoredMap {
            bytes: vec![b' '; 10].into(),
            gz: vec![0; MAX_CONFIG_MAP_PAYLOAD],
        };
        let one = render_config_maps(&target(), &fits, &identity(&fits)).unwrap();
        assert_eq!(
            one.len(),
            1,
            "a gzip of exactly 1 MiB still fits one ConfigMap"
        );
    }
}
