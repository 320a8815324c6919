//! The `ModelCostMapSync` API (`costmap.dev/v1alpha1`).
//!
//! Doc comments on these types become the CRD's descriptions, and so what `kubectl explain`
//! prints: they are written for the people who write the YAML.

use std::collections::BTreeMap;
use std::time::Duration;

mod cluster;
mod duration;
mod object;
mod reasons;
mod status;

use duration::parse_duration;

pub use cluster::{
    ClusterModelCostMapSync, ClusterModelCostMapSyncSpec, ClusterModelCostMapSyncStatus,
    MAX_LISTED_NAMESPACES, NOT_CLUSTER_WIDE, NamespaceFailure, NamespacesStatus,
};
pub use object::MapSync;
pub use reasons::{
    ConditionType, ConsumersReason, EventReason, NamespaceReason, PricedReason, Reason,
};
pub use status::{
    Artifact, ConsumerState, ConsumerStatus, CostChange, HistoryEntry, LastChange,
    ModelCostMapSyncStatus, OverridesStatus, PriceChange, RepricedModel, SourceMap,
};

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of every resource this operator defines.
pub const GROUP: &str = "costmap.dev";
/// Set this annotation to any new value to ask for one sync now ("sync now").
pub const SYNC_REQUESTED_AT_ANNOTATION: &str = "costmap.dev/sync-requested-at";
/// Set this annotation to the digest of the published map to roll back to the newest map in
/// history with another digest, and refuse that digest from then on.
pub const REJECT_DIGEST_ANNOTATION: &str = "costmap.dev/reject-digest";
/// Set this annotation to the digest of a map a guard refused, to accept that one map on
/// purpose at the next sync (the structure rules still apply).
pub const ACCEPT_DIGEST_ANNOTATION: &str = "costmap.dev/accept-digest";
/// Where LiteLLM itself fetches the map from.
pub const DEFAULT_SOURCE_URL: &str =
    "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json";
/// The file name LiteLLM uses for the map, and the default ConfigMap key.
pub const DEFAULT_KEY: &str = "model_prices_and_context_window.json";

/// Go-style durations made of whole numbers: `90s`, `30m`, `1h30m`, `500ms`. The CEL rules
/// repeat it so that a malformed duration gets only the pattern's error, not also a CEL
/// type-conversion error.
const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "costmap.dev",
    version = "v1alpha1",
    kind = "ModelCostMapSync",
    namespaced,
    status = "ModelCostMapSyncStatus",
    shortname = "mcms",
    category = "litellm",
    doc = "ModelCostMapSync keeps a ConfigMap filled with the current LiteLLM model cost map (prices and context windows), fetched from a source URL on an interval and validated before it replaces the last good one, so a broken source never reaches the proxies.",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Models", "type": "integer", "jsonPath": ".status.artifact.models"}"#,
    printcolumn = r#"{"name": "Last Sync", "type": "date", "jsonPath": ".status.lastSyncTime"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "priority": 1, "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name": "Message", "type": "string", "priority": 1, "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
/// ModelCostMapSyncSpec says where to fetch the map, how often, and where to write it.
pub struct ModelCostMapSyncSpec {
    /// Source is where the map is fetched from.
    #[serde(default)]
    pub source: Source,

    /// Interval is how often the source is checked, as a Go-style duration
    /// (for example 30m, 1h, 1h30m). At least 1m. Defaults to 1h.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || duration(self) >= duration('1m')").message("interval must be at least 1m"))]
    pub interval: String,

    /// Suspend stops scheduled and requested syncs while true. The ConfigMap keeps the map
    /// it holds. Defaults to false.
    #[serde(default)]
    pub suspend: bool,

    /// Target is the ConfigMap, in this object's namespace, that receives the map.
    #[serde(default)]
    pub target: Target,

    /// Validation sets the checks a fetched map must pass before it replaces the last good one.
    #[serde(default)]
    pub validation: Validation,

    /// Consumers are told about each new map: LiteLLM proxies are reloaded and checked,
    /// workloads are restarted.
    #[serde(default, skip_serializing_if = "Consumers::is_empty")]
    pub consumers: Consumers,

    /// Overrides are your own prices and models, merged over each fetched map before it is
    /// published: negotiated rates, regional or private deployments. They survive every
    /// upstream update. Without overrides the published map is the fetched map, byte for
    /// byte.
    #[serde(default, skip_serializing_if = "Overrides::is_empty")]
    pub overrides: Overrides,

    /// History is how many published maps are kept, the current one included, in owned
    /// ConfigMaps <target>-history-1 ... <target>-history-N (a ring: a new map overwrites the
    /// oldest slot), for rolling back with costmap.dev/reject-digest. 0 to 10. Defaults to 3.
    #[serde(default = "default_history")]
    #[schemars(range(min = 0, max = 10))]
    pub history: i32,
}

/// Your prices over upstream's.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Overrides {
    /// Models maps a model name to the fields to set in its entry: each field replaces
    /// upstream's (null removes it), the other fields stay; a model upstream does not have
    /// is added. The fields obey the map's rules (costs are non-negative numbers). Applied
    /// after configMapRefs, so these win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "override_models_schema")]
    pub models: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,

    /// ConfigMapRefs name keys of ConfigMaps in this namespace, each holding a JSON object of
    /// the same shape as models, applied in order (a later one wins field by field). Edits
    /// to them are watched and republished within seconds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub config_map_refs: Vec<ConfigMapKeyRef>,
}

impl Overrides {
    /// Whether no override is configured.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty() && self.config_map_refs.is_empty()
    }
}

/// A key of a ConfigMap in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253), regex(pattern = CONFIG_MAP_NAME_PATTERN))]
    pub name: String,
    /// Key in the ConfigMap. Defaults to overrides.json.
    #[serde(default = "default_overrides_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = CONFIG_MAP_KEY_PATTERN))]
    pub key: String,
}

fn default_overrides_key() -> String {
    DEFAULT_OVERRIDES_KEY.to_owned()
}

/// Default of `spec.overrides.configMapRefs[].key`.
pub const DEFAULT_OVERRIDES_KEY: &str = "overrides.json";

/// Any fields per model: the shape of a model's entry is upstream's to extend.
fn override_models_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}

/// Who gets each new map.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Consumers {
    /// LitellmProxies are LiteLLM proxies that fetch the map from this operator
    /// (LITELLM_MODEL_COST_MAP_URL). After each new map each is sent
    /// POST /reload/model_cost_map, then asked GET /model/cost_map/source whether it serves
    /// the new map, and GET /model/info which of its deployments nothing prices
    /// (condition ModelsPriced). Reloading needs a proxy with a database, or one that runs
    /// the costmap_reload callback (integrations/litellm), which loads new maps by itself;
    /// others are reported Stale until restarted (see restartWorkloads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub litellm_proxies: Vec<LitellmProxy>,

    /// Rollout says how a new map reaches the proxies.
    #[serde(default, skip_serializing_if = "Rollout::is_default")]
    pub rollout: Rollout,

    /// RestartWorkloads are Deployments, StatefulSets or DaemonSets in this namespace whose
    /// pods get a rolling restart after each new map (the pod template annotation
    /// costmap.dev/digest is set to the new digest): for proxies without a database.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub restart_workloads: Vec<WorkloadRef>,
}

/// How a new map reaches the proxies.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Canary is how many proxies (the first in URL order) are reloaded first and verified
    /// (Current, and no deployment unpriced that was priced before) before the others are
    /// reloaded. A canary that does not verify stops the rollout: the others keep the map
    /// they have, Ready stays True, ConsumersCurrent=False with reason CanaryFailed, and the
    /// next check tries the canaries again. Defaults to 0: every proxy at once.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0, max = 64))]
    pub canary: i32,
}

impl Rollout {
    fn is_default(&self) -> bool {
        self == &Rollout::default()
    }
}

fn is_zero(value: &i32) -> bool {
    *value == 0
}

impl Consumers {
    /// Whether no consumer is configured.
    pub fn is_empty(&self) -> bool {
        self.litellm_proxies.is_empty() && self.restart_workloads.is_empty()
    }
}

/// One LiteLLM proxy, or every ready pod behind a Service. Set exactly one of url and service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.service)").message("set exactly one of url and service"))]
pub struct LitellmProxy {
    /// URL is the proxy's base URL, for example http://litellm.llm.svc:4000. Through a
    /// Service this reaches one random pod; prefer service to reach them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https']").message("url must be an http or https URL"))]
    pub url: Option<String>,

    /// Service names a Service in this namespace: every ready endpoint of its
    /// EndpointSlices is reloaded and checked, one status row per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServicePort>,

    /// AdminKeySecretRef names the Secret key holding the proxy's master (admin) key.
    pub admin_key_secret_ref: SecretKeySelector,
}

/// A Service and the port LiteLLM listens on in its pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ServicePort {
    /// Name of the Service.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Port LiteLLM listens on in each pod (the Service's target port).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// A key of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A workload to restart after each new map.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WorkloadRef {
    /// Kind: Deployment, StatefulSet or DaemonSet.
    pub kind: WorkloadKind,
    /// Name, in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The kinds of workload that can be restarted.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

/// Where the map comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// URL of the map: http or https. Defaults to LiteLLM's upstream map on GitHub.
    /// Link-local and cloud metadata addresses are refused unless the operator allow-lists them.
    #[serde(default = "default_source_url")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https']").message("url must be an http or https URL"))]
    pub url: String,

    /// HeadersSecretRef names a Secret in this object's namespace; each of its keys is sent
    /// as a request header with its value (for example Authorization for a private mirror).
    /// Values are never logged or shown in status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<LocalObjectReference>,

    /// Timeout of one fetch attempt, including reading the body, as a Go-style duration.
    /// Between 1s and 10m. Defaults to 30s.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('10m'))").message("timeout must be between 1s and 10m"))]
    pub timeout: String,
}

impl Default for Source {
    fn default() -> Self {
        Source {
            url: default_source_url(),
            headers_secret_ref: None,
            timeout: default_timeout(),
        }
    }
}

/// A reference to an object in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LocalObjectReference {
    /// Name of the referent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A ConfigMap's name: a DNS subdomain.
const CONFIG_MAP_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A key of a ConfigMap's data.
const CONFIG_MAP_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// The ConfigMap that receives the map.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// ConfigMapName is the name of the ConfigMap to write, in this object's namespace.
    /// Defaults to the name of this ModelCostMapSync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = CONFIG_MAP_NAME_PATTERN))]
    pub config_map_name: Option<String>,

    /// Key is the file name of the map in the ConfigMap. The gzipped map is stored under
    /// binaryData "<key>.gz" while it fits one ConfigMap, else in chunks "<key>.gz.000",
    /// "<key>.gz.001", ... across ConfigMaps <name>, <name>-1, ..., the first of which also
    /// holds the chunk manifest under data "<key>.gz.chunks". The plain map is also stored
    /// under data "<key>" when it is small enough to fit. At most 243 characters, so that
    /// "<key>.gz.chunks" is a valid key. Defaults to model_prices_and_context_window.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 243), regex(pattern = CONFIG_MAP_KEY_PATTERN))]
    pub key: Option<String>,
}

/// Checks a fetched map must pass. LiteLLM's own acceptance rules are always applied.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    /// MinModels is the fewest models a map may hold. Defaults to 50 (LiteLLM's own floor).
    #[serde(default = "default_min_models")]
    #[schemars(range(min = 1))]
    pub min_models: i32,

    /// MaxRemovedPercent refuses a map that drops more than this share (0-100) of the
    /// models in the last good map. Defaults to 50 (LiteLLM refuses maps below half its
    /// bundled copy).
    #[serde(default = "default_max_removed_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_removed_percent: i32,

    /// MinPricedPercent refuses a map in which fewer than this share (0-100) of the models
    /// are priced (some cost field above 0; alias_of rows do not count), on the first sync
    /// too. Real maps price 91-95% of their models; a map with every price zeroed or every
    /// entry emptied prices none. Defaults to 50.
    #[serde(default = "default_min_priced_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub min_priced_percent: i32,

    /// MaxUnpricedPercent refuses a map in which more than this share (0-100) of the last
    /// good map's priced models lose every price. In real releases (litellm 1.60 to 1.110)
    /// no priced model ever lost its prices. Defaults to 1.
    #[serde(default = "default_max_unpriced_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_unpriced_percent: i32,

    /// MaxRepricedPercent refuses a map in which more than this share (0-100) of the last
    /// good map's priced models change or lose a cost number (a new cost field does not
    /// count). Between consecutive real releases at most 8.5% did, 13.4% from 1.80 straight
    /// to 1.108; every price multiplied by 1e6 (a unit error) is 100%. Defaults to 25.
    #[serde(default = "default_max_repriced_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_repriced_percent: i32,
}

impl Default for Validation {
    fn default() -> Self {
        Validation {
            min_models: default_min_models(),
            max_removed_percent: default_max_removed_percent(),
            min_priced_percent: default_min_priced_percent(),
            max_unpriced_percent: default_max_unpriced_percent(),
            max_repriced_percent: default_max_repriced_percent(),
        }
    }
}

fn default_history() -> i32 {
    DEFAULT_HISTORY
}

/// Default of `spec.history`.
pub const DEFAULT_HISTORY: i32 = 3;

fn default_interval() -> String {
    "1h".to_owned()
}
fn default_timeout() -> String {
    "30s".to_owned()
}
fn default_source_url() -> String {
    DEFAULT_SOURCE_URL.to_owned()
}
/// Default of `spec.validation.minModels`: LiteLLM's own floor.
pub const DEFAULT_MIN_MODELS: i32 = 50;
/// Default of `spec.validation.maxRemovedPercent`: LiteLLM refuses maps below half its
/// bundled copy.
pub const DEFAULT_MAX_REMOVED_PERCENT: i32 = 50;

/// Default of `spec.validation.minPricedPercent`.
pub const DEFAULT_MIN_PRICED_PERCENT: i32 = 50;
/// Default of `spec.validation.maxUnpricedPercent`.
pub const DEFAULT_MAX_UNPRICED_PERCENT: i32 = 1;
/// Default of `spec.validation.maxRepricedPercent`.
pub const DEFAULT_MAX_REPRICED_PERCENT: i32 = 25;

fn default_min_priced_percent() -> i32 {
    DEFAULT_MIN_PRICED_PERCENT
}
fn default_max_unpriced_percent() -> i32 {
    DEFAULT_MAX_UNPRICED_PERCENT
}
fn default_max_repriced_percent() -> i32 {
    DEFAULT_MAX_REPRICED_PERCENT
}
fn default_min_models() -> i32 {
    DEFAULT_MIN_MODELS
}
fn default_max_removed_percent() -> i32 {
    DEFAULT_MAX_REMOVED_PERCENT
}

/// A spec field that the API server should have refused, met anyway (for example an object
/// created before the CRD's validation existed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("spec.{field} is invalid: {reason}")]
pub struct SpecError {
    /// JSON path below spec.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl ModelCostMapSyncSpec {
    /// The sync interval.
    pub fn interval(&self) -> Result<Duration, SpecError> {
        let interval = parse_duration("interval", &self.interval)?;
        if interval < Duration::from_secs(60) {
            return Err(SpecError {
                field: "interval",
                reason: "must be at least 1m".into(),
            });
        }
        Ok(interval)
    }

    /// The timeout of one fetch attempt.
    pub fn timeout(&self) -> Result<Duration, SpecError> {
        parse_duration("source.timeout", &self.source.timeout)
    }

    /// The ConfigMap key of the plain map; the gzipped map lives under `<key>.gz`.
    pub fn key(&self) -> &str {
        self.target.key.as_deref().unwrap_or(DEFAULT_KEY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_from_yaml(yaml: &str) -> ModelCostMapSyncSpec {
        serde_yaml::from_str(yaml).expect("spec parses")
    }

    #[test]
    fn empty_spec_gets_the_documented_defaults() {
        let spec = spec_from_yaml("{}");
        assert_eq!(spec.source.url, DEFAULT_SOURCE_URL);
        assert_eq!(spec.timeout().unwrap(), Duration::from_secs(30));
        assert_eq!(spec.interval().unwrap(), Duration::from_secs(3600));
        assert!(!spec.suspend);
        assert_eq!(spec.key(), DEFAULT_KEY);
        assert_eq!(spec.validation.min_models, 50);
        assert_eq!(spec.validation.max_removed_percent, 50);
    }

    #[test]
    fn go_style_durations_parse() {
        let spec = spec_from_yaml("interval: 1h30m\nsource: {timeout: 1m30s}");
        assert_eq!(spec.interval().unwrap(), Duration::from_secs(5400));
        assert_eq!(spec.timeout().unwrap(), Duration::from_secs(90));
    }

    #[test]
    fn bad_durations_name_the_field() {
        for bad in ["", "1 h", "1d", "-5m", "1.5h", "soon"] {
            let spec = spec_from_yaml(&format!("interval: {bad:?}"));
            let err = spec.interval().unwrap_err();
            assert_eq!(err.field, "interval", "{bad}");
        }
        let too_short = spec_from_yaml("interval: 59s").interval().unwrap_err();
        assert!(too_short.to_string().contains("at least 1m"));
    }

    #[test]
    fn config_map_name_defaults_to_object_name() {
        let mut sync = ModelCostMapSync::new("litellm", spec_from_yaml("{}"));
        assert_eq!(sync.config_map_name(), "litellm");
        sync.spec.target.config_map_name = Some("prices".into());
        assert_eq!(sync.config_map_name(), "prices");
    }
}
