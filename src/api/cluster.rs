//! The `ClusterModelCostMapSync` API (`costmap.dev/v1alpha1`, cluster-scoped): one map,
//! fetched once, written into the target ConfigMap of every namespace a label selector
//! picks.
//!
//! The spec is the namespaced spec, flattened, plus `namespaceSelector`. The fields that only
//! make sense inside one namespace are taken out of this kind's schema (see
//! [`NOT_CLUSTER_WIDE`]), so the API server prunes them and `kubectl apply` (strict field
//! validation) names them as unknown; [`ClusterModelCostMapSyncSpec::unsupported`] refuses
//! them again at reconcile time for a client that sent them anyway.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{ModelCostMapSyncSpec, ModelCostMapSyncStatus, SpecError};

/// How many failing namespaces status lists by name (the count is always complete).
pub const MAX_LISTED_NAMESPACES: usize = 20;

/// Spec fields (JSON paths below spec) that a ClusterModelCostMapSync does not have, and
/// why: each names something inside one namespace (a Secret, a ConfigMap, proxies,
/// workloads, a history ring), and a cluster object has no namespace of its own.
pub const NOT_CLUSTER_WIDE: [(&str, &str); 4] = [
    (
        "source.headersSecretRef",
        "a Secret lives in one namespace; use a namespaced ModelCostMapSync for a source that needs headers",
    ),
    (
        "overrides.configMapRefs",
        "a ConfigMap lives in one namespace; put cluster-wide overrides in overrides.models",
    ),
    (
        "consumers",
        "proxies and workloads live in namespaces; reach them with a namespaced ModelCostMapSync, or let them poll the map URL (costmap_reload)",
    ),
    (
        "history",
        "no history ring is kept for a cluster object, so costmap.dev/reject-digest does not apply to it",
    ),
];

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "costmap.dev",
    version = "v1alpha1",
    kind = "ClusterModelCostMapSync",
    status = "ClusterModelCostMapSyncStatus",
    shortname = "cmcms",
    category = "litellm",
    doc = "ClusterModelCostMapSync keeps the same ConfigMap, holding the current LiteLLM model cost map, in every namespace its namespaceSelector picks: the map is fetched and validated once, then written to each namespace (and served at /maps/<namespace>/<name>/<key>). Namespaces that get the labels later are filled as they appear; one that loses them keeps its ConfigMap as it was, no longer updated. A ConfigMap of the same name that belongs to someone else (a namespaced ModelCostMapSync, say) is left alone, and status names that namespace as failing.",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Namespaces", "type": "string", "jsonPath": ".status.namespaces.summary"}"#,
    printcolumn = r#"{"name": "Models", "type": "integer", "jsonPath": ".status.artifact.models"}"#,
    printcolumn = r#"{"name": "Last Sync", "type": "date", "jsonPath": ".status.lastSyncTime"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "priority": 1, "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name": "Message", "type": "string", "priority": 1, "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = without_namespaced_fields)]
/// ClusterModelCostMapSyncSpec is a ModelCostMapSync's spec (source, interval, suspend,
/// target, validation, overrides.models) plus the namespaces to write the map into.
/// target.configMapName (default: this object's name) is the ConfigMap's name in each
/// selected namespace.
pub struct ClusterModelCostMapSyncSpec {
    /// The namespaced spec's fields.
    #[serde(flatten)]
    pub sync: ModelCostMapSyncSpec,

    /// NamespaceSelector picks the namespaces that receive the map, by their labels;
    /// {} selects every namespace. A namespace that gets the labels is filled within
    /// seconds; one that loses them keeps its ConfigMap as it was, no longer updated (status
    /// lists it under namespaces.noLongerSelected).
    pub namespace_selector: LabelSelector,
}

/// Descriptions of the shared fields as a cluster object reads them.
const CLUSTER_DESCRIPTIONS: [(&str, &str); 2] = [
    (
        "target",
        "Target is the ConfigMap written into each selected namespace (the same name and key in each).",
    ),
    (
        "overrides",
        "Overrides are your own prices and models (overrides.models), merged over each fetched map before it is published: negotiated rates, regional or private deployments. Without overrides the published map is the fetched map, byte for byte.",
    ),
];

/// Removes [`NOT_CLUSTER_WIDE`] from the generated schema (defaults and descriptions
/// included), and words the shared fields for a cluster object.
fn without_namespaced_fields(schema: &mut schemars::Schema) {
    if let Some(properties) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        for (field, description) in CLUSTER_DESCRIPTIONS {
            if let Some(field) = properties.get_mut(field).and_then(|f| f.as_object_mut()) {
                field.insert("description".into(), description.into());
            }
        }
    }
    for (path, _) in NOT_CLUSTER_WIDE {
        let mut object = schema.as_object_mut();
        let mut parts = path.split('.').peekable();
        while let (Some(part), Some(current)) = (parts.next(), object) {
            let properties = current
                .get_mut("properties")
                .and_then(serde_json::Value::as_object_mut);
            if parts.peek().is_none() {
                if let Some(properties) = properties {
                    properties.remove(part);
                }
                break;
            }
            object = properties
                .and_then(|properties| properties.get_mut(part))
                .and_then(serde_json::Value::as_object_mut);
        }
    }
}

/// What the operator observed and did: the sync (as a ModelCostMapSync's status says it),
/// and where the map got to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = without_namespaced_status)]
pub struct ClusterModelCostMapSyncStatus {
    /// The sync's status. Ready=True (reason Synced) only when the map is synced and every
    /// selected namespace holds it; Ready=False reason NamespacesFailing names the
    /// namespaces that do not, or reason OwnedByAnother (and Stalled=True) when in some of
    /// them a ConfigMap of someone else's is in the way (the others still get the map).
    #[serde(flatten)]
    pub sync: ModelCostMapSyncStatus,

    /// Namespaces sums up the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespacesStatus>,
}

/// Status fields a cluster object never sets: they belong to the fields it does not have.
const NOT_CLUSTER_WIDE_STATUS: [&str; 3] = ["consumers", "history", "rejectedDigests"];

fn without_namespaced_status(schema: &mut schemars::Schema) {
    if let Some(properties) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        for field in NOT_CLUSTER_WIDE_STATUS {
            properties.remove(field);
        }
    }
}

/// Where the map got to, over the selected namespaces.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NamespacesStatus {
    /// Selected is how many namespaces the selector picks (terminating ones excluded).
    pub selected: i32,
    /// Ready is how many of them hold the map in artifact.
    pub ready: i32,
    /// Summary is "ready/selected", for kubectl get.
    pub summary: String,
    /// FailingCount is how many selected namespaces do not hold the map.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failing_count: i32,
    /// Failing lists the first 20 of them, by name, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<NamespaceFailure>,
    /// NoLongerSelected lists the first 20 namespaces that hold a ConfigMap of this object
    /// but no longer match the selector: the ConfigMap is left as it was and not updated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_longer_selected: Vec<String>,
    /// NoLongerSelectedCount is how many such namespaces there are.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub no_longer_selected_count: i32,
}

fn is_zero(value: &i32) -> bool {
    *value == 0
}

/// A selected namespace that does not hold the map.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceFailure {
    /// Namespace is the namespace's name.
    pub namespace: String,
    /// Reason: OwnedByAnother (a ConfigMap of the copy, or one of its chunks, is not
    /// controlled by this object and is left untouched), WriteFailed, or NotSynced (no map
    /// to write yet).
    pub reason: String,
    /// Message says more.
    pub message: String,
}

impl ClusterModelCostMapSyncSpec {
    /// The first field set that a cluster object does not have, as a spec error.
    pub fn unsupported(&self) -> Result<(), SpecError> {
        let sync = &self.sync;
        let set = |field: &str| match field {
            "source.headersSecretRef" => sync.source.headers_secret_ref.is_some(),
            "overrides.configMapRefs" => !sync.overrides.config_map_refs.is_empty(),
            "consumers" => !sync.consumers.is_empty(),
            // Always defaulted by serde; not in the schema, so never set by a user.
            _ => false,
        };
        match NOT_CLUSTER_WIDE.iter().find(|(field, _)| set(field)) {
            Some((field, why)) => Err(SpecError {
                field,
                reason: format!("not supported on a ClusterModelCostMapSync: {why}"),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn spec(yaml: &str) -> ClusterModelCostMapSyncSpec {
        serde_yaml::from_str(yaml).expect("spec parses")
    }

    #[test]
    fn the_namespaced_fields_flatten_in_beside_the_selector() {
        let spec = spec("namespaceSelector: {matchLabels: {team: a}}\ninterval: 30m");
        assert_eq!(spec.sync.interval, "30m");
        assert_eq!(spec.sync.source.url, crate::api::DEFAULT_SOURCE_URL);
        let labels = spec.namespace_selector.match_labels.unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    }

    #[test]
    fn fields_of_one_namespace_are_refused_by_name() {
        assert!(spec("namespaceSelector: {}").unsupported().is_ok());
        let secret = spec("namespaceSelector: {}\nsource: {headersSecretRef: {name: auth}}");
        let err = secret.unsupported().unwrap_err();
        assert_eq!(err.field, "source.headersSecretRef");
        assert!(err.to_string().contains("not supported"), "{err}");
        let refs = spec("namespaceSelector: {}\noverrides: {configMapRefs: [{name: x}]}");
        assert_eq!(
            refs.unsupported().unwrap_err().field,
            "overrides.configMapRefs"
        );
        let consumers = spec(
            "namespaceSelector: {}\nconsumers: {restartWorkloads: [{kind: Deployment, name: x}]}",
        );
        assert_eq!(consumers.unsupported().unwrap_err().field, "consumers");
    }

    #[test]
    fn the_schema_has_the_shared_fields_and_not_the_namespaced_ones() {
        let crd = serde_json::to_value(ClusterModelCostMapSync::crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(crd["spec"]["scope"], "Cluster");
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let properties = spec["properties"].as_object().unwrap();
        for field in [
            "source",
            "interval",
            "suspend",
            "target",
            "validation",
            "overrides",
            "namespaceSelector",
        ] {
            assert!(properties.contains_key(field), "spec.{field} is missing");
        }
        assert_eq!(spec["required"], serde_json::json!(["namespaceSelector"]));
        for field in ["consumers", "history"] {
            assert!(!properties.contains_key(field), "spec.{field} is there");
        }
        assert!(
            properties["source"]["properties"]
                .get("headersSecretRef")
                .is_none()
        );
        assert!(properties["source"]["properties"].get("url").is_some());
        assert!(
            properties["overrides"]["properties"]
                .get("configMapRefs")
                .is_none()
        );
        assert!(
            properties["overrides"]["properties"]
                .get("models")
                .is_some()
        );
        // Structural: no allOf/anyOf that flattening could have left behind.
        let text = serde_json::to_string(spec).unwrap();
        assert!(
            !text.contains("allOf") && !text.contains("\"$ref\""),
            "{text}"
        );
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert!(status.get("artifact").is_some() && status.get("namespaces").is_some());
        assert!(status.get("consumers").is_none() && status.get("history").is_none());
    }
}
