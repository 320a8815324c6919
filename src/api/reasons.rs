//! The words status and Events use: condition types, the reasons of each condition, and the
//! reasons of Events. Tests and dashboards match on them, so they are defined here once and
//! never written as bare strings elsewhere.

use std::fmt;

/// The types of the conditions in `status.conditions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionType {
    /// Whether the target ConfigMap holds a validated map from the source. Always present.
    Ready,
    /// Whether every LiteLLM proxy listed under `spec.consumers` serves the current map.
    /// Present only while proxies are listed.
    ConsumersCurrent,
    /// Whether every deployment of the listed proxies is priced by the map it has loaded
    /// (or by its own model_info). Present only while proxies are listed.
    ModelsPriced,
    /// kstatus: True when only a person can fix what is wrong (an invalid spec, a guard
    /// refusal, a rejected digest, a ConfigMap owned by another); absent otherwise.
    Stalled,
    /// kstatus: True while a sync someone waits for is in flight (the first one, one for a
    /// new spec, one asked for with the sync-request annotation); absent otherwise.
    Reconciling,
}

/// Why `Ready` is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// True: the ConfigMap holds a validated map from the source.
    Synced,
    /// False: the source could not be fetched (or its headers Secret not read).
    FetchFailed,
    /// False: the fetched map breaks a structure rule.
    InvalidMap,
    /// False: the fetched map drops more models than `maxRemovedPercent` allows.
    ShrinkGuard,
    /// False: the fetched map's prices are broken (`minPricedPercent`,
    /// `maxUnpricedPercent` or `maxRepricedPercent`).
    PriceGuard,
    /// False: the map does not fit: over `--max-map-bytes`, or its gzip over 100 chunk
    /// ConfigMaps.
    TooLarge,
    /// False: the ConfigMap or status could not be written.
    WriteFailed,
    /// False: the source serves a map refused by `costmap.dev/reject-digest`; the map
    /// restored from history stays published.
    Rejected,
    /// False: an override cannot be applied (a referenced ConfigMap missing, not JSON, or
    /// an entry that breaks the map's rules); the last good map stays published.
    InvalidOverride,
    /// False: a spec field the API server should have refused (an object stored before the
    /// CRD's validation existed); nothing is tried until the spec changes.
    InvalidSpec,
    /// Unchanged: syncing is suspended (`spec.suspend`); Ready keeps its status.
    Suspended,
    /// False, on a ClusterModelCostMapSync: the map is synced, but some selected namespace
    /// does not hold it (the message names them; `status.namespaces.failing` says why).
    NamespacesFailing,
    /// False: a ConfigMap the map would be written to (the target, a chunk, a history slot,
    /// a cluster copy or its chunk) exists and is not controlled by this object; it is left
    /// untouched until a person renames the target or deletes that ConfigMap. On a
    /// ClusterModelCostMapSync the other namespaces still get the map.
    OwnedByAnother,
}

/// Why a selected namespace of a ClusterModelCostMapSync does not hold its map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceReason {
    /// A ConfigMap of that name exists and is not this object's: it is left alone.
    OwnedByAnother,
    /// The ConfigMap could not be written.
    WriteFailed,
    /// There is no map to write yet (the first sync has not succeeded).
    NotSynced,
}

impl NamespaceReason {
    /// The name, as status spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            NamespaceReason::OwnedByAnother => "OwnedByAnother",
            NamespaceReason::WriteFailed => "WriteFailed",
            NamespaceReason::NotSynced => "NotSynced",
        }
    }
}

/// Why `ConsumersCurrent` is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumersReason {
    /// True: every proxy serves the current map.
    AllCurrent,
    /// False: some proxy serves another map.
    Stale,
    /// False: some proxy could not be asked.
    Unreachable,
    /// False: a Service has no ready endpoint.
    NoProxies,
    /// False: a canary (`consumers.rollout.canary`) did not verify, so the other proxies
    /// were not reloaded and keep the map they have.
    CanaryFailed,
}

/// Why `ModelsPriced` is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PricedReason {
    /// True: every deployment of every proxy asked has a positive price.
    AllPriced,
    /// False: some deployment is billed at $0: the map its proxy loaded does not price its
    /// model and its own model_info sets no price.
    Unpriced,
    /// Unknown: no proxy answered GET /model/info.
    NotChecked,
}

/// The reasons of the Events recorded on a ModelCostMapSync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventReason {
    /// The first map written: the cluster held none.
    MapSynced,
    /// A new map written (naming the new models), or a write a restart interrupted, done.
    MapUpdated,
    /// A map a guard refused was accepted by the annotation `costmap.dev/accept-digest`.
    MapAccepted,
    /// The published map was rejected by `costmap.dev/reject-digest`, and an earlier one
    /// restored from history.
    MapRejected,
    /// The ConfigMap was edited by hand and the last good map put back.
    Restored,
    /// The ConfigMap was deleted and written again.
    Recreated,
    /// Workloads under `restartWorkloads` got the new digest in their pod template.
    WorkloadRestarted,
    /// A workload under `restartWorkloads` could not be restarted.
    RestartFailed,
    /// A proxy routes models that nothing prices (Warning): the set grew.
    ModelsUnpriced,
    /// A model that was unpriced is priced now.
    ModelPriced,
    /// A sync failed: the Event's reason is the Ready reason.
    SyncFailed(Reason),
}

impl Reason {
    /// Whether only a person can fix a Ready=False of this reason (kstatus `Stalled`):
    /// retrying alone will not help.
    pub fn stalls(self) -> bool {
        matches!(
            self,
            Reason::InvalidSpec
                | Reason::ShrinkGuard
                | Reason::PriceGuard
                | Reason::Rejected
                | Reason::OwnedByAnother
        )
    }
}

impl ConditionType {
    /// The name, as status spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::ConsumersCurrent => "ConsumersCurrent",
            ConditionType::ModelsPriced => "ModelsPriced",
            ConditionType::Stalled => "Stalled",
            ConditionType::Reconciling => "Reconciling",
        }
    }
}

impl Reason {
    /// The name, as status, Events and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Synced => "Synced",
            Reason::FetchFailed => "FetchFailed",
            Reason::InvalidMap => "InvalidMap",
            Reason::ShrinkGuard => "ShrinkGuard",
            Reason::PriceGuard => "PriceGuard",
            Reason::TooLarge => "TooLarge",
            Reason::WriteFailed => "WriteFailed",
            Reason::Rejected => "Rejected",
            Reason::InvalidOverride => "InvalidOverride",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Suspended => "Suspended",
            Reason::NamespacesFailing => "NamespacesFailing",
            Reason::OwnedByAnother => "OwnedByAnother",
        }
    }
}

impl ConsumersReason {
    /// The name, as status spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumersReason::AllCurrent => "AllCurrent",
            ConsumersReason::Stale => "Stale",
            ConsumersReason::Unreachable => "Unreachable",
            ConsumersReason::NoProxies => "NoProxies",
            ConsumersReason::CanaryFailed => "CanaryFailed",
        }
    }
}

impl PricedReason {
    /// The name, as status spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PricedReason::AllPriced => "AllPriced",
            PricedReason::Unpriced => "Unpriced",
            PricedReason::NotChecked => "NotChecked",
        }
    }
}

impl EventReason {
    /// The name, as Events spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::MapSynced => "MapSynced",
            EventReason::MapUpdated => "MapUpdated",
            EventReason::MapAccepted => "MapAccepted",
            EventReason::MapRejected => "MapRejected",
            EventReason::Restored => "Restored",
            EventReason::Recreated => "Recreated",
            EventReason::WorkloadRestarted => "WorkloadRestarted",
            EventReason::RestartFailed => "RestartFailed",
            EventReason::ModelsUnpriced => "ModelsUnpriced",
            EventReason::ModelPriced => "ModelPriced",
            EventReason::SyncFailed(reason) => reason.as_str(),
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ConsumersReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for EventReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_variant_names() {
        assert_eq!(ConditionType::ConsumersCurrent.as_str(), "ConsumersCurrent");
        assert_eq!(Reason::ShrinkGuard.to_string(), "ShrinkGuard");
        assert_eq!(ConsumersReason::NoProxies.as_str(), "NoProxies");
        assert_eq!(
            EventReason::SyncFailed(Reason::FetchFailed).as_str(),
            "FetchFailed"
        );
        assert_eq!(EventReason::WorkloadRestarted.as_str(), "WorkloadRestarted");
    }
}
