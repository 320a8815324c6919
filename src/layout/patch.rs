//! How a rendered ConfigMap is written: as a strategic merge patch, not a server-side apply.
//!
//! The API server reads an apply body as YAML. For a ConfigMap of a quarter of a MB of
//! base64 that parse was half of the API server's CPU while a thousand targets took a new
//! map (`benches/scale.rs`, profiled with pprof). A strategic merge patch is read as JSON.
//! It sets what the rendering sets, leaves the fields of other writers alone and merges
//! the owner reference by uid, as apply does. What apply would also have done, removing the
//! fields it set before and sets no more, the patch does by naming them: the keys of our
//! layout that this rendering does not hold are set to null (a plain copy that no longer
//! fits, the one gzip of a map now in chunks, the chunk manifest of one now whole).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde::Serialize;

use super::chunks::{chunk_key, gz_key, manifest_key};
use super::{CHUNKS_ANNOTATION, MAP_URL_KEY};

/// The patch that makes a ConfigMap hold `rendered`, and none of the keys our layout gives
/// `keys` (the target's key, and one it had before) that `rendered` does not hold. It
/// borrows the rendering: the body is serialized from it, with no copy in between.
pub fn write_patch<'a>(rendered: &'a ConfigMap, keys: &[&str]) -> WritePatch<'a> {
    let meta = &rendered.metadata;
    let mut annotations = borrowed(meta.annotations.as_ref(), |v| v.as_str());
    annotations
        .entry(CHUNKS_ANNOTATION.to_owned())
        .or_insert(None);
    let mut data = borrowed(rendered.data.as_ref(), |v| v.as_str());
    // A map-url no longer rendered (no base URL now) goes, or it would open nothing.
    data.entry(MAP_URL_KEY.to_owned()).or_insert(None);
    let mut binary_data = borrowed(rendered.binary_data.as_ref(), |v| v);
    for key in keys {
        for absent in [key.to_string(), manifest_key(key)] {
            data.entry(absent).or_insert(None);
        }
        for absent in [gz_key(key), chunk_key(key, 0)] {
            binary_data.entry(absent).or_insert(None);
        }
    }
    WritePatch {
        api_version: "v1",
        kind: "ConfigMap",
        metadata: MetadataPatch {
            name: meta.name.as_deref(),
            namespace: meta.namespace.as_deref(),
            labels: meta.labels.as_ref(),
            annotations,
            owner_references: meta.owner_references.as_deref(),
        },
        data,
        binary_data,
    }
}

/// A strategic merge patch of a ConfigMap: a null value removes the key.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WritePatch<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: MetadataPatch<'a>,
    data: BTreeMap<String, Option<&'a str>>,
    binary_data: BTreeMap<String, Option<&'a ByteString>>,
}

/// The metadata a rendering sets.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MetadataPatch<'a> {
    name: Option<&'a str>,
    namespace: Option<&'a str>,
    labels: Option<&'a BTreeMap<String, String>>,
    annotations: BTreeMap<String, Option<&'a str>>,
    owner_references: Option<&'a [OwnerReference]>,
}

/// `map`'s entries, each value borrowed through `value`.
fn borrowed<'a, V, T: ?Sized>(
    map: Option<&'a BTreeMap<String, V>>,
    value: impl Fn(&'a V) -> &'a T,
) -> BTreeMap<String, Option<&'a T>> {
    map.into_iter()
        .flatten()
        .map(|(name, v)| (name.clone(), Some(value(v))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::render::fixtures::rendered_for;
    use serde_json::{Value, json};

    fn write_patch(rendered: &ConfigMap, keys: &[&str]) -> Value {
        serde_json::to_value(super::write_patch(rendered, keys)).unwrap()
    }

    #[test]
    fn a_whole_map_clears_the_chunk_layout_and_keeps_its_own_keys() {
        let rendered = rendered_for("litellm", "litellm", br#"{"gpt-4": {}}"#);
        let patch = write_patch(&rendered[0], &["map.json"]);
        assert_eq!(patch["data"]["map.json"], json!(r#"{"gpt-4": {}}"#));
        assert_eq!(patch["data"]["map.json.gz.chunks"], Value::Null);
        // No map-url rendered (no base URL now): one written before goes.
        let data = patch["data"].as_object().unwrap();
        assert_eq!(data.get(crate::layout::MAP_URL_KEY), Some(&Value::Null));
        assert!(patch["binaryData"]["map.json.gz"].is_string());
        assert_eq!(patch["binaryData"]["map.json.gz.000"], Value::Null);
        let annotations = &patch["metadata"]["annotations"];
        assert_eq!(annotations["costmap.dev/chunks"], Value::Null);
        assert!(annotations["costmap.dev/digest"].is_string());
        // The API server merges it by uid with any other owner's reference.
        assert_eq!(
            patch["metadata"]["ownerReferences"][0]["uid"],
            "uid-litellm"
        );
    }

    #[test]
    fn the_first_of_a_chunked_map_clears_the_whole_layout() {
        let mut rendered = rendered_for("litellm", "litellm", b"{}").remove(0);
        // As the first of a map in chunks renders.
        let mut binary = rendered.binary_data.take().unwrap_or_default();
        let gz = binary.remove("map.json.gz").unwrap();
        binary.insert("map.json.gz.000".into(), gz);
        rendered.binary_data = Some(binary);
        rendered.data = Some([("map.json.gz.chunks".into(), "{}".into())].into());
        rendered
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(CHUNKS_ANNOTATION.into(), "2".into());

        let patch = write_patch(&rendered, &["map.json"]);
        assert_eq!(patch["binaryData"]["map.json.gz"], Value::Null);
        assert!(patch["binaryData"]["map.json.gz.000"].is_string());
        assert_eq!(patch["data"]["map.json"], Value::Null);
        assert_eq!(patch["data"]["map.json.gz.chunks"], json!("{}"));
        assert_eq!(patch["metadata"]["annotations"]["costmap.dev/chunks"], "2");
    }

    #[test]
    fn a_key_written_before_is_cleared_too() {
        let rendered = rendered_for("litellm", "litellm", b"{}");
        let patch = write_patch(&rendered[0], &["map.json", "old.json"]);
        for removed in ["old.json", "old.json.gz.chunks"] {
            assert_eq!(patch["data"][removed], Value::Null, "{removed}");
        }
        for removed in ["old.json.gz", "old.json.gz.000"] {
            assert_eq!(patch["binaryData"][removed], Value::Null, "{removed}");
        }
        assert!(patch["binaryData"]["map.json.gz"].is_string());
    }
}
