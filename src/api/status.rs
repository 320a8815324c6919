//! The status of a ModelCostMapSync: what the operator observed and did. Doc comments become
//! what `kubectl explain modelcostmapsync.status` prints.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// What the operator observed and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelCostMapSyncStatus {
    /// ObservedGeneration is the generation of the spec that the last sync attempt used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Conditions: Ready is always present. Ready=True (reason Synced) means the target
    /// ConfigMap holds a validated map from the source. Ready=False says why the last
    /// attempt failed (FetchFailed, InvalidMap, ShrinkGuard, PriceGuard, TooLarge,
    /// WriteFailed, InvalidSpec, OwnedByAnother: a ConfigMap it would write exists and is not
    /// this object's, and is left untouched); the ConfigMap then still holds the last good
    /// map. Reason Suspended while suspend is true. Stalled=True (kstatus) beside it while
    /// only a person can fix the failure (InvalidSpec, ShrinkGuard, PriceGuard, Rejected,
    /// OwnedByAnother); absent otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// LastAttemptTime is when the source was last fetched, successfully or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,

    /// LastSyncTime is when the last sync succeeded: new content written, or the source
    /// confirmed unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,

    /// NextSyncTime is when the source will be checked next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_sync_time: Option<Time>,

    /// LastHandledSyncRequest is the last value of the costmap.dev/sync-requested-at
    /// annotation that was acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_sync_request: Option<String>,

    /// Artifact describes the map the target ConfigMap holds now: the last good map. The
    /// operator serves, restores and compares against exactly these bytes: a ConfigMap whose
    /// map has another digest (edited by hand, say) is not served, and is put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,

    /// LastAcceptedDigest is the digest of the last map accepted by the annotation
    /// costmap.dev/accept-digest although a guard refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accepted_digest: Option<String>,

    /// PendingArtifact is a validated map being written to the target ConfigMap: recorded
    /// just before the write and cleared once artifact names it, so that an operator
    /// restarted in between finds the ConfigMap holding a map it validated (and guards the
    /// next map against it) instead of one it cannot vouch for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_artifact: Option<Artifact>,

    /// LastChange is what the last content change added, removed and changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<LastChange>,

    /// Consumers says, per LiteLLM proxy (per pod for a Service), whether it serves the map
    /// in artifact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<ConsumerStatus>,

    /// Source describes the map as fetched, before overrides: artifact is what is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceMap>,

    /// Overrides says what the overrides did to the published map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<OverridesStatus>,

    /// History lists the published maps kept for rollback, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,

    /// RejectedDigests are maps refused by costmap.dev/reject-digest, newest first (at
    /// most 10): the source serving one of them is Ready=False, reason Rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_digests: Vec<String>,
}

/// The fetched map.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceMap {
    /// Digest is "sha256:<hex>" of the bytes fetched.
    pub digest: String,
    /// GitBlobId is their git blob id.
    pub git_blob_id: String,
    /// Revision is the source's ETag, or its Last-Modified date when it sends no ETag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Models is their model count.
    pub models: i32,
}

/// What the overrides did to the published map.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OverridesStatus {
    /// Applied is how many models have an override.
    pub applied: i32,
    /// Added is how many models the overrides add (upstream does not have them, or no
    /// longer has them).
    pub added: i32,
    /// AddedModels lists the first 20 added models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_models: Vec<String>,
    /// Shadowing lists the first 20 models whose upstream entry an override changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadowing: Vec<String>,
    /// Unchanged lists the first 20 models whose override equals upstream (harmless).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<String>,
    /// Digest is the digest of what the overrides say: when it changes, the map is
    /// published again without a fetch.
    pub digest: String,
}

/// A published map kept for rollback.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// Digest of the published bytes.
    pub digest: String,
    /// Their git blob id.
    pub git_blob_id: String,
    /// Their model count.
    pub models: i32,
    /// When it was published.
    pub published_at: Time,
    /// The ConfigMap that holds it.
    pub config_map: String,
}

/// What one LiteLLM proxy serves.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    /// URL the proxy was reached at.
    pub url: String,
    /// Pod behind that URL, for proxies found through a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// State: Current (serves artifact.gitBlobId), Stale (serves another map) or Unreachable.
    pub state: ConsumerState,
    /// SourceRevision is the git blob id the proxy reports for the map it loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_revision: Option<String>,
    /// Models is the model count the proxy reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<i64>,
    /// CheckedAt is when the proxy was last asked.
    pub checked_at: Time,
    /// Message says why the proxy is not Current (for example a reload it refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// UnpricedModels are the proxy's deployments (their model_name) that are billed at $0:
    /// the map the proxy has loaded gives their model no positive cost, and their own
    /// model_info sets none. At most 20. Absent when the proxy did not answer
    /// GET /model/info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 20))]
    pub unpriced_models: Option<Vec<String>>,
    /// RepricedModels are the proxy's deployments whose price the last map change moved
    /// (a cost number of the map entry that prices them changed or is gone), with the old
    /// and new prices; sorted by modelName, at most 20. A deployment whose own model_info
    /// sets the price that moved is judged by the price the proxy reports, so it is not
    /// listed for it; a model no deployment routes never is. A proxy that has not loaded
    /// the new map yet is judged by the prices it reports from the map before. The list
    /// describes the last map change and is kept until the next change replaces it (empty
    /// when that change moves no price these deployments use). Absent when the proxy did
    /// not answer GET /model/info, serves neither of the two maps, or the change is not
    /// known: after a first sync, or where an operator restarted before judging it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 20))]
    pub repriced_models: Option<Vec<RepricedModel>>,
}

/// A proxy's deployment that a map change repriced.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RepricedModel {
    /// ModelName is the deployment's model_name (what clients ask for).
    pub model_name: String,
    /// Key is the map entry that prices it (LiteLLM's model_info.key).
    pub key: String,
    /// Changes are the prices of that entry that moved for this deployment, the largest
    /// moves first (a price gone, or moved to or from 0, counts as the largest); at most 5.
    #[schemars(length(max = 5))]
    pub changes: Vec<CostChange>,
}

/// One price of a map entry, before and after a map change.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CostChange {
    /// Field is the cost field, a.b[2].c for nested ones.
    pub field: String,
    /// From is the price in the map before.
    pub from: f64,
    /// To is the price in the new map; absent when the field is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<f64>,
}

/// Whether a proxy serves the current map.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerState {
    /// It serves artifact.gitBlobId.
    Current,
    /// It serves another map.
    Stale,
    /// It could not be asked.
    Unreachable,
}

impl ConsumerState {
    /// Every state.
    pub const ALL: [ConsumerState; 3] = [
        ConsumerState::Current,
        ConsumerState::Stale,
        ConsumerState::Unreachable,
    ];

    /// The name, as in status.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerState::Current => "Current",
            ConsumerState::Stale => "Stale",
            ConsumerState::Unreachable => "Unreachable",
        }
    }
}

/// The map held by the target ConfigMap.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Digest is "sha256:<hex>" of the exact bytes fetched (never re-serialized).
    pub digest: String,

    /// GitBlobId is the git blob id of those bytes: what a LiteLLM proxy reports as
    /// source_revision on GET /model/cost_map/source once it has loaded this map.
    pub git_blob_id: String,

    /// Revision is the source's ETag, or its Last-Modified date when it sends no ETag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,

    /// Size of the map in bytes, uncompressed.
    pub size: i64,

    /// Models is the number of models in the map (top-level keys other than sample_spec
    /// and fallback_generalizations).
    pub models: i32,

    /// LastUpdateTime is when the content last changed.
    pub last_update_time: Time,
}

/// What one content change did to the set of models.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LastChange {
    /// Added is how many models are new.
    pub added: i32,
    /// Removed is how many models are gone.
    pub removed: i32,
    /// Changed is how many models kept their name but changed their entry.
    pub changed: i32,
    /// AddedModels lists the first 20 added models, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_models: Vec<String>,
    /// RemovedModels lists the first 20 removed models, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_models: Vec<String>,
    /// Repriced is how many of the last good map's priced models changed or lost a cost
    /// number.
    #[serde(default)]
    pub repriced: i32,
    /// Unpriced is how many of the last good map's priced models lost every price.
    #[serde(default)]
    pub unpriced: i32,
    /// PriceChanges lists the 20 largest price moves, largest first (a price that appears,
    /// vanishes, or moves to or from 0 counts as the largest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub price_changes: Vec<PriceChange>,
}

/// One price that moved.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PriceChange {
    /// Model is the model's name.
    pub model: String,
    /// Field is the cost field, a.b[2].c for nested ones.
    pub field: String,
    /// From is the price in the last good map; absent when the field is new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<f64>,
    /// To is the price in the new map; absent when the field is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<f64>,
}
