//! What the operator remembers per object between reconciles. All of it can be rebuilt from
//! the cluster, so a restart loses nothing; objects that are gone are forgotten.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::config_maps::WrittenTarget;
use crate::api::ModelCostMapSyncStatus;
use crate::sync::diff::Repricing;
use crate::sync::store::HeldMap;

/// How many superseded versions are remembered: a sync writes status at most three times.
const SUPERSEDED_VERSIONS: usize = 8;

/// Which object a memory is of: its kind (each kind forgets its own deleted objects) and
/// its uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ObjectKey {
    pub(super) kind: &'static str,
    pub(super) uid: String,
}

/// Per object, what the operator remembers.
#[derive(Default)]
pub(super) struct Memories {
    by_object: Mutex<HashMap<ObjectKey, Memory>>,
}

/// What the operator remembers about one object.
#[derive(Default)]
pub(super) struct Memory {
    /// The last good map, so that a deleted ConfigMap is restored without a fetch and the
    /// next map is judged without reading this one back. Held once for every object with
    /// the same map ([`crate::sync::store`]).
    pub(super) last_good: Option<Arc<HeldMap>>,
    /// Failed syncs in a row, for the retry backoff.
    pub(super) consecutive_failures: u32,
    /// The status this operator last wrote. The object a reconcile gets comes from a watch
    /// cache that can lag behind our own write; deciding on a stale status would fetch twice.
    pub(super) written_status: Option<WrittenStatus>,
    /// Consumer checks since the map last changed, for the recheck backoff.
    pub(super) consumer_checks: u32,
    /// The fetched map (before overrides), gzipped, when overrides make the published map:
    /// an override change republishes from it without a fetch.
    pub(super) source: Option<RememberedMap>,
    /// What the last attempt read as its overrides (a digest), to tell an edit from a retry.
    pub(super) override_inputs: Option<String>,
    /// The map's ConfigMaps as this operator last wrote (or checked) them, by namespace:
    /// the target's, or each copy of a cluster object.
    pub(super) written: HashMap<String, WrittenTarget>,
    /// The namespaces a cluster object selected at its last reconcile: one that loses the
    /// labels concerns it too.
    pub(super) selected: BTreeSet<String>,
    /// What the last map change repriced, to judge the proxies' deployments by until the
    /// next change. Lost on a restart: status keeps the lists judged so far.
    pub(super) repricing: Option<LastRepricing>,
}

/// A map change's moved prices, between the maps proxies report by git blob id.
#[derive(Clone, Debug)]
pub(super) struct LastRepricing {
    /// The map before the change, when known: a proxy that still serves it is judged by
    /// its prices (what it bills until it loads the new map).
    pub(super) before: Option<String>,
    /// The map it changed to.
    pub(super) after: String,
    /// The prices that moved.
    pub(super) prices: Arc<Repricing>,
}

/// A status this operator wrote, the resourceVersion the write produced, and the versions
/// it supersedes: the object it was decided on, and what earlier writes of ours produced.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct WrittenStatus {
    pub(super) status: ModelCostMapSyncStatus,
    pub(super) version: Option<String>,
    pub(super) superseded: Vec<String>,
}

/// A map kept gzipped between reconciles.
#[derive(Clone)]
pub(super) struct RememberedMap {
    pub(super) digest: String,
    pub(super) gz: Bytes,
}

impl Memories {
    /// Reads what is remembered of `object`, if anything.
    pub(super) fn read<T>(&self, object: &ObjectKey, read: impl FnOnce(&Memory) -> T) -> Option<T> {
        crate::locks::lock(&self.by_object).get(object).map(read)
    }

    /// Changes what is remembered of `object`.
    pub(super) fn update<T>(&self, object: &ObjectKey, update: impl FnOnce(&mut Memory) -> T) -> T {
        update(
            crate::locks::lock(&self.by_object)
                .entry(object.clone())
                .or_default(),
        )
    }

    /// Records a status write: `status`, which produced `version`, decided on the object at
    /// `decided_on`.
    pub(super) fn record_write(
        &self,
        object: &ObjectKey,
        status: ModelCostMapSyncStatus,
        version: Option<String>,
        decided_on: Option<String>,
    ) {
        self.update(object, |memory| {
            let mut superseded = memory
                .written_status
                .take()
                .map(|previous| {
                    let mut versions = previous.superseded;
                    versions.extend(previous.version);
                    versions
                })
                .unwrap_or_default();
            if let Some(decided_on) = decided_on.filter(|v| !superseded.contains(v)) {
                superseded.push(decided_on);
            }
            let excess = superseded.len().saturating_sub(SUPERSEDED_VERSIONS);
            superseded.drain(..excess);
            memory.written_status = Some(WrittenStatus {
                status,
                version,
                superseded,
            });
        });
    }

    /// Remembers `map` as the last good map of `object`.
    pub(super) fn remember_last_good(&self, object: &ObjectKey, map: Arc<HeldMap>) {
        self.update(object, |m| m.last_good = Some(map));
    }

    /// The last good map of `object`, if the one remembered has `digest`.
    pub(super) fn last_good(&self, object: &ObjectKey, digest: &str) -> Option<Arc<HeldMap>> {
        self.read(object, |m| m.last_good.clone())
            .flatten()
            .filter(|map| map.digest() == digest)
    }

    /// Forgets every object of `kind` but `live` (uids); returns how many were forgotten.
    pub(super) fn retain(&self, kind: &str, live: &HashSet<String>) -> usize {
        let mut by_object = crate::locks::lock(&self.by_object);
        let before = by_object.len();
        by_object.retain(|object, _| object.kind != kind || live.contains(&object.uid));
        before - by_object.len()
    }
}

/// The status to decide on: the object's, or our last write when the object is older.
///
/// The object comes from a watch cache that can lag behind our own writes: a reconcile right
/// after a write may get the very object that write was decided on, or what an earlier
/// write of the same sync produced (the pending record). Deciding on its status would sync a
/// second time, or take our own half-done write for one a restart interrupted. So a version
/// our last write supersedes is replaced by that write. Any other version is someone else's
/// write after ours, unless its attempt time is older than ours (attempt times have whole
/// seconds, which is why versions come first).
pub(super) fn newer_status(
    observed: Option<&ModelCostMapSyncStatus>,
    observed_version: Option<String>,
    written: Option<WrittenStatus>,
) -> Option<ModelCostMapSyncStatus> {
    let attempt = |status: &ModelCostMapSyncStatus| status.last_attempt_time.as_ref().map(|t| t.0);
    match (observed, written) {
        (Some(observed), Some(written))
            if observed_version
                .as_ref()
                .is_some_and(|version| written.superseded.contains(version))
                || (written.version != observed_version
                    && attempt(&written.status) > attempt(observed)) =>
        {
            Some(written.status)
        }
        (None, written) => written.map(|w| w.status),
        (observed, _) => observed.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn attempted_at(second: i64, models: i32) -> ModelCostMapSyncStatus {
        ModelCostMapSyncStatus {
            last_attempt_time: Some(Time(Timestamp::from_second(second).unwrap())),
            observed_generation: Some(i64::from(models)),
            ..ModelCostMapSyncStatus::default()
        }
    }

    #[test]
    fn our_last_write_wins_over_the_versions_it_supersedes() {
        let before = attempted_at(100, 1);
        let ours = WrittenStatus {
            status: attempted_at(100, 2),
            version: Some("43".into()),
            // Decided on 41; an earlier write of the same sync (the pending record) made 42.
            superseded: vec!["41".into(), "42".into()],
        };
        let decide = |observed: &ModelCostMapSyncStatus, version: &str| {
            newer_status(Some(observed), Some(version.into()), Some(ours.clone()))
        };
        // The watch re-delivers the object our write was decided on, or our own earlier
        // write: ours, though all attempts fall in the same second.
        assert_eq!(decide(&before, "41"), Some(ours.status.clone()));
        assert_eq!(
            decide(&attempted_at(100, 9), "42"),
            Some(ours.status.clone())
        );
        // Our write itself: the same status either way.
        assert_eq!(decide(&ours.status, "43"), Some(ours.status.clone()));
        // An older attempt: ours.
        assert_eq!(
            decide(&attempted_at(99, 1), "40"),
            Some(ours.status.clone())
        );
        // Someone edited status after us (same second, newer object): theirs.
        let edited = attempted_at(100, 3);
        assert_eq!(decide(&edited, "44"), Some(edited.clone()));
        assert_eq!(
            decide(&attempted_at(101, 4), "45"),
            Some(attempted_at(101, 4))
        );
        assert_eq!(
            newer_status(None, None, Some(ours.clone())),
            Some(ours.status)
        );
        assert_eq!(
            newer_status(Some(&edited), Some("44".into()), None),
            Some(edited)
        );
    }

    fn key(kind: &'static str, uid: &str) -> ObjectKey {
        ObjectKey {
            kind,
            uid: uid.to_owned(),
        }
    }

    #[test]
    fn writes_remember_what_they_supersede_and_gone_objects_are_forgotten() {
        let memories = Memories::default();
        let (u1, u2) = (key("ModelCostMapSync", "u1"), key("ModelCostMapSync", "u2"));
        let cluster = key("ClusterModelCostMapSync", "u3");
        memories.record_write(
            &u1,
            attempted_at(1, 1),
            Some("42".into()),
            Some("41".into()),
        );
        memories.record_write(
            &u1,
            attempted_at(1, 2),
            Some("43".into()),
            Some("41".into()),
        );
        let written = memories.read(&u1, |m| m.written_status.clone()).flatten();
        assert_eq!(
            written.map(|w| (w.version, w.superseded)),
            Some((Some("43".into()), vec!["41".into(), "42".into()]))
        );
        memories.update(&u2, |m| m.consecutive_failures = 3);
        memories.update(&cluster, |m| m.consecutive_failures = 1);
        let dropped = memories.retain("ModelCostMapSync", &HashSet::from(["u2".to_owned()]));
        assert_eq!(dropped, 1);
        assert!(memories.read(&u1, |_| ()).is_none());
        assert_eq!(memories.read(&u2, |m| m.consecutive_failures), Some(3));
        // The other kind keeps its own, whatever the first kind's live objects are.
        assert_eq!(memories.read(&cluster, |m| m.consecutive_failures), Some(1));
    }
}
