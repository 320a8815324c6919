//! `costmap.dev/reject-digest`: a person rejects a published map. The digest is refused
//! from then on and, when it is the published map, the newest other map of the history
//! ring is put back (no fetch) and the proxies are told. Only where a ring is kept.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::{Destination, Reconciler};
use crate::api::{Artifact, EventReason, HistoryEntry, ModelCostMapSyncStatus, Reason};
use crate::controller::conditions;
use crate::controller::consumers;
use crate::controller::context::Error;
use crate::controller::status::Notice;
use crate::layout::gzip::StoredMap;

/// How many rejected digests status keeps.
const REJECTED_KEPT: usize = 10;

/// The newest entry of `history` whose digest is not `rejected`.
pub(super) fn restore_candidate<'a>(
    history: &'a [HistoryEntry],
    rejected: &[String],
) -> Option<&'a HistoryEntry> {
    history
        .iter()
        .find(|entry| !rejected.iter().any(|digest| digest == &entry.digest))
}

impl<D: Destination> Reconciler<'_, D> {
    /// Acts on `costmap.dev/reject-digest` once per digest; the action then, or none when
    /// there is nothing new to reject.
    pub(super) async fn handle_reject(&mut self) -> Result<Option<Action>, Error> {
        let Some(rejected) = self.object.reject_digest.map(str::to_owned) else {
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
            return self.rejected(status).await;
        }
        let candidate = restore_candidate(&status.history, &status.rejected_digests).cloned();
        let restored = match &candidate {
            Some(entry) => self
                .destination
                .read_back(&entry.digest, &status.history)
                .await
                .map(|map| (entry.clone(), map)),
            None => None,
        };
        let generation = self.object.generation;
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
            return self.rejected(status).await;
        };
        let artifact = Artifact {
            digest: entry.digest.clone(),
            git_blob_id: entry.git_blob_id.clone(),
            revision: None,
            size: i64::try_from(map.bytes.len()).unwrap_or(i64::MAX),
            models: entry.models,
            last_update_time: Time(self.now),
        };
        self.restore_published(map, &artifact, &mut status).await?;
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
        if let Some(consumers) = self.consumers() {
            consumers
                .reach(&mut status, consumers::Mode::ReloadAll)
                .await;
        }
        self.write_status(status.clone()).await?;
        self.record(Notice {
            type_: EventType::Normal,
            reason: EventReason::MapRejected,
            note: message,
        })
        .await;
        self.status = Some(status);
        Ok(Some(Action::requeue(Duration::ZERO)))
    }

    /// Writes `status` after a rejection and reconciles again at once.
    async fn rejected(&mut self, status: ModelCostMapSyncStatus) -> Result<Option<Action>, Error> {
        self.write_status(status.clone()).await?;
        self.status = Some(status);
        Ok(Some(Action::requeue(Duration::ZERO)))
    }

    /// Publishes a map the operator validated before (from history): recorded as pending,
    /// written, then the artifact of `status`.
    async fn restore_published(
        &mut self,
        map: StoredMap,
        artifact: &Artifact,
        status: &mut ModelCostMapSyncStatus,
    ) -> Result<(), Error> {
        let mut pending = status.clone();
        pending.pending_artifact = Some(artifact.clone());
        self.write_status(pending).await?;
        let identity = self.identity(artifact);
        self.destination
            .write_new(&map, &identity)
            .await
            .map_err(|err| {
                warn!(error = %err, "cannot restore the map from history");
                Error::Restore {
                    what: "the map from history".to_owned(),
                    message: err.to_string(),
                }
            })?;
        self.remember_last_good(map);
        status.artifact = Some(artifact.clone());
        status.pending_artifact = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn entry(digest: &str) -> HistoryEntry {
        HistoryEntry {
            digest: digest.into(),
            git_blob_id: format!("blob-{digest}"),
            models: 1,
            published_at: Time(Timestamp::UNIX_EPOCH),
            config_map: format!("litellm-history-{digest}"),
        }
    }

    #[test]
    fn the_restore_candidate_is_the_newest_map_not_rejected() {
        let ring = [entry("c"), entry("b"), entry("a")];
        let rejected = vec!["c".to_owned()];
        assert_eq!(restore_candidate(&ring, &rejected).unwrap().digest, "b");
        let both = vec!["c".to_owned(), "b".to_owned()];
        assert_eq!(restore_candidate(&ring, &both).unwrap().digest, "a");
        let all = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert!(restore_candidate(&ring, &all).is_none());
    }
}
