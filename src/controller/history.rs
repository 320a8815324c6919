//! The history ring and rollback: the last `spec.history` published maps, each in an owned
//! ConfigMap `<target>-history-<n>` (a new map overwrites the oldest slot, so keeping
//! history needs no delete right), and `costmap.dev/reject-digest`, which puts the newest
//! other one back.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::Error;
use super::reconcile::{Reconciler, api_error_message};
use super::status::Notice;
use crate::api::{Artifact, EventReason, HistoryEntry, ModelCostMapSyncStatus, Reason};
use crate::controller::{conditions, consumers};
use crate::layout::HISTORY_OF_LABEL;
use crate::layout::gzip::StoredMap;
use crate::layout::read::read_stored;
use crate::layout::render::{TargetRef, render_config_maps, write_order};

/// How many rejected digests status keeps.
const REJECTED_KEPT: usize = 10;

/// Where a new map goes in the ring, and the ring after it (newest first). `None` for the
/// slot when nothing is written: no history kept, or the map is already the newest entry.
pub(super) fn next_ring(
    previous: &[HistoryEntry],
    keep: usize,
    target: &str,
    new: HistoryEntry,
) -> (Option<String>, Vec<HistoryEntry>) {
    if keep == 0 {
        return (None, Vec::new());
    }
    if previous
        .first()
        .is_some_and(|newest| newest.digest == new.digest)
    {
        return (None, previous.iter().take(keep).cloned().collect());
    }
    let kept: Vec<HistoryEntry> = previous.iter().take(keep - 1).cloned().collect();
    let slot = (1..=keep)
        .map(|n| format!("{target}-history-{n}"))
        .find(|name| kept.iter().all(|entry| &entry.config_map != name))
        .unwrap_or_else(|| format!("{target}-history-{keep}"));
    let mut ring = vec![HistoryEntry {
        config_map: slot.clone(),
        ..new
    }];
    ring.extend(kept);
    (Some(slot), ring)
}

/// The newest entry of `history` with another digest than `rejected` that is not itself
/// rejected.
pub(super) fn restore_candidate<'a>(
    history: &'a [HistoryEntry],
    rejected: &[String],
) -> Option<&'a HistoryEntry> {
    history
        .iter()
        .find(|entry| !rejected.iter().any(|digest| digest == &entry.digest))
}

impl Reconciler<'_> {
    /// Keeps a new published map in the ring; returns the ring after it, or `None` when it
    /// could not be written (status keeps the ring it had; the map is published all the
    /// same).
    pub(super) async fn keep_in_history(
        &self,
        map: &StoredMap,
        artifact: &Artifact,
    ) -> Option<Vec<HistoryEntry>> {
        let keep = usize::try_from(self.sync.spec.history).unwrap_or(0).min(10);
        let previous = self
            .status
            .as_ref()
            .map(|status| status.history.clone())
            .unwrap_or_default();
        let new = HistoryEntry {
            digest: artifact.digest.clone(),
            git_blob_id: artifact.git_blob_id.clone(),
            models: artifact.models,
            published_at: Time(self.now),
            config_map: String::new(),
        };
        let (slot, ring) = next_ring(&previous, keep, &self.target.name, new);
        let Some(slot) = slot else {
            return Some(ring);
        };
        let target = TargetRef {
            name: slot.clone(),
            ..self.target.clone()
        };
        // A map in chunks is kept in chunks: `<slot>`, `<slot>-1`, ...
        let mut rendered = match render_config_maps(&target, map, &self.identity(artifact)) {
            Ok(rendered) => rendered,
            Err(err) => {
                warn!(error = %err, "cannot keep the map in history");
                return None;
            }
        };
        for config_map in &mut rendered {
            config_map
                .metadata
                .labels
                .get_or_insert_default()
                .insert(HISTORY_OF_LABEL.to_owned(), self.target.name.clone());
        }
        // A slot the ring names was written before (chunks: as many as it had, a guess).
        let existed = previous.iter().any(|entry| entry.config_map == slot);
        match self
            .write_rendered(write_order(&rendered), |_| existed)
            .await
        {
            Ok(_) => Some(ring),
            Err(failed) => {
                warn!(config_map = %failed.name, error = %api_error_message(&failed.error), "cannot keep the map in history");
                None
            }
        }
    }

    /// The map of a history entry, when its ConfigMaps still hold exactly those bytes.
    pub(super) async fn read_history(&self, entry: &HistoryEntry) -> Option<StoredMap> {
        let held = self.read_held(&entry.config_map).await.ok()?;
        let max_bytes = self.context.sources.policy().max_body_bytes;
        read_stored(&held, &self.target.key, max_bytes)
            .ok()
            .flatten()
            .filter(|map| map.digest() == entry.digest)
    }

    /// Acts on `costmap.dev/reject-digest` once per digest: refuses that digest from now on
    /// and, when it is the published map, puts the newest other map of the history back
    /// (no fetch) and tells the consumers.
    pub(super) async fn handle_reject(&mut self) -> Result<Option<Action>, Error> {
        let Some(rejected) = self.sync.reject_digest().map(str::to_owned) else {
            return Ok(None);
        };
        let mut status = self.status.clone().unwrap_or_default();
        if status.rejected_digests.contains(&rejected) {
            return Ok(None);
        }
        status.rejected_digests.insert(0, rejected.clone());
        status.rejected_digests.truncate(REJECTED_KEPT);
        let published = status
            .artifact
            .as_ref()
            .is_some_and(|a| a.digest == rejected);
        if !published {
            info!(digest = %rejected, "refusing a digest that is not published");
            self.write_status(status.clone()).await?;
            self.status = Some(status);
            return Ok(Some(Action::requeue(std::time::Duration::ZERO)));
        }
        let candidate = restore_candidate(&status.history, &status.rejected_digests).cloned();
        let restored = match &candidate {
            Some(entry) => self
                .read_history(entry)
                .await
                .map(|map| (entry.clone(), map)),
            None => None,
        };
        let generation = self.sync.metadata.generation;
        let Some((entry, map)) = restored else {
            let message = format!(
                "map {rejected} was rejected (costmap.dev/reject-digest), but history holds no \
                 other map to restore: it stays published until the source serves another"
            );
            warn!(digest = %rejected, "rejected the published map with nothing to restore");
            conditions::set_condition(
                &mut status.conditions,
                conditions::ready(false, Reason::Rejected, message, generation, self.now),
            );
            self.write_status(status.clone()).await?;
            self.status = Some(status);
            return Ok(Some(Action::requeue(std::time::Duration::ZERO)));
        };
        let artifact = Artifact {
            digest: entry.digest.clone(),
            git_blob_id: entry.git_blob_id.clone(),
            revision: None,
            size: i64::try_from(map.bytes.len()).unwrap_or(i64::MAX),
            models: entry.models,
            last_update_time: Time(self.now),
        };
        self.restore_published(&map, &artifact, &mut status).await?;
        let message = format!(
            "map {rejected} was rejected (costmap.dev/reject-digest); restored map {} from {} \
             (published at {}); the source's {rejected} is refused until it serves another",
            entry.digest, entry.config_map, entry.published_at.0
        );
        conditions::set_condition(
            &mut status.conditions,
            conditions::ready(
                false,
                Reason::Rejected,
                message.clone(),
                generation,
                self.now,
            ),
        );
        info!(rejected = %rejected, restored = %entry.digest, "rolled back");
        self.publish(Notice {
            type_: EventType::Normal,
            reason: EventReason::MapRejected,
            note: message,
        })
        .await;
        self.reach_consumers(&mut status, consumers::Mode::ReloadAll)
            .await;
        self.write_status(status.clone()).await?;
        self.status = Some(status);
        Ok(Some(Action::requeue(std::time::Duration::ZERO)))
    }

    /// Publishes a map the operator validated before (from history): recorded as pending,
    /// written to the ConfigMap, then the artifact of `status`.
    async fn restore_published(
        &self,
        map: &StoredMap,
        artifact: &Artifact,
        status: &mut ModelCostMapSyncStatus,
    ) -> Result<(), Error> {
        let mut pending = status.clone();
        pending.pending_artifact = Some(artifact.clone());
        self.write_status(pending).await?;
        self.write_map(map, artifact).await.map_err(|err| {
            warn!(error = %err, "cannot restore the map from history");
            Error::Restore(err.to_string())
        })?;
        self.remember_last_good(map.clone());
        status.artifact = Some(artifact.clone());
        status.pending_artifact = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn entry(digest: &str, slot: &str) -> HistoryEntry {
        HistoryEntry {
            digest: digest.into(),
            git_blob_id: format!("blob-{digest}"),
            models: 1,
            published_at: Time(Timestamp::UNIX_EPOCH),
            config_map: slot.into(),
        }
    }

    fn ring_of(digests: &[&str], keep: usize) -> Vec<HistoryEntry> {
        let mut ring = Vec::new();
        for digest in digests {
            let (_, next) = next_ring(&ring, keep, "litellm", entry(digest, ""));
            ring = next;
        }
        ring
    }

    #[test]
    fn a_ring_of_three_keeps_the_newest_three_overwriting_the_oldest_slot() {
        let ring = ring_of(&["a", "b", "c"], 3);
        let slots: Vec<(&str, &str)> = ring
            .iter()
            .map(|e| (e.digest.as_str(), e.config_map.as_str()))
            .collect();
        assert_eq!(
            slots,
            [
                ("c", "litellm-history-3"),
                ("b", "litellm-history-2"),
                ("a", "litellm-history-1")
            ]
        );
        let (slot, ring) = next_ring(&ring, 3, "litellm", entry("d", ""));
        assert_eq!(
            slot.as_deref(),
            Some("litellm-history-1"),
            "a's slot, the oldest"
        );
        let digests: Vec<&str> = ring.iter().map(|e| e.digest.as_str()).collect();
        assert_eq!(digests, ["d", "c", "b"]);
        let (slot, _) = next_ring(&ring, 3, "litellm", entry("e", ""));
        assert_eq!(slot.as_deref(), Some("litellm-history-2"));
    }

    #[test]
    fn the_same_map_again_writes_nothing_and_no_history_keeps_nothing() {
        let ring = ring_of(&["a", "b"], 3);
        let (slot, again) = next_ring(&ring, 3, "litellm", entry("b", ""));
        assert_eq!(slot, None);
        assert_eq!(again, ring);
        assert_eq!(
            next_ring(&ring, 0, "litellm", entry("c", "")),
            (None, Vec::new())
        );
    }

    #[test]
    fn a_smaller_ring_drops_the_oldest_entries() {
        let ring = ring_of(&["a", "b", "c"], 3);
        let (slot, smaller) = next_ring(&ring, 2, "litellm", entry("d", ""));
        assert_eq!(slot.as_deref(), Some("litellm-history-1"));
        let digests: Vec<&str> = smaller.iter().map(|e| e.digest.as_str()).collect();
        assert_eq!(digests, ["d", "c"]);
    }

    #[test]
    fn the_restore_candidate_is_the_newest_map_not_rejected() {
        let ring = ring_of(&["a", "b", "c"], 3);
        let rejected = vec!["c".to_owned()];
        assert_eq!(restore_candidate(&ring, &rejected).unwrap().digest, "b");
        let both = vec!["c".to_owned(), "b".to_owned()];
        assert_eq!(restore_candidate(&ring, &both).unwrap().digest, "a");
        let all = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert!(restore_candidate(&ring, &all).is_none());
    }
}
