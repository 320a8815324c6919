//! One sync attempt: fetch; for new bytes, prepare (parse, validate, guard, compress: once
//! for every object with the same inputs) and, when accepted, record the map as pending in
//! status before it is written, so that a restart in between loses nothing; then write.
//! Whatever happens, every place ends up holding the published map.

use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::{Destination, Reconciler};
use crate::api::{Artifact, EventReason, HistoryEntry, OverridesStatus, SourceMap};
use crate::apiserver::api_error_message;
use crate::controller::context::Error;
use crate::controller::prepared::{Against, ToPublish};
use crate::controller::status::{Notice, Outcome, artifact_of};
use crate::layout::gzip::StoredMap;
use crate::sync::SyncError;
use crate::sync::overrides::{Applied, Overrides};
use crate::sync::schedule::SyncCause;
use crate::sync::store::HeldMap;
use crate::sync::validate::Rules;
use crate::sync::validate::guards::shrink_guard_by_count;

/// A map the source sent (with the overrides merged in), to accept or refuse.
struct NewMap {
    /// The bytes to publish.
    bytes: Bytes,
    /// Their digest.
    digest: String,
    /// Their git blob id, when known (the fetched map's, without overrides).
    git_blob_id: Option<String>,
    /// The source's revision.
    revision: Option<String>,
    /// What the map is judged against: the last good map, with today's overrides.
    against: Option<Against>,
    /// When there was no last good map: what the places held instead.
    replaced: Option<String>,
    /// `status.source`, but for the model count when the overrides left it unknown.
    source: SourceMap,
    /// Whether `source.models` is known.
    source_counted: bool,
    overrides: Option<OverridesStatus>,
}

/// `status.overrides` for what `applied`; none without overrides.
fn overrides_status(overrides: &Overrides, applied: &Applied) -> Option<OverridesStatus> {
    if overrides.is_empty() {
        return None;
    }
    Some(OverridesStatus {
        applied: count(applied.applied),
        added: count(applied.added_count),
        added_models: applied.added.clone(),
        shadowing: applied.shadowing.clone(),
        unchanged: applied.unchanged.clone(),
        digest: overrides.digest(),
    })
}

fn count(models: usize) -> i32 {
    i32::try_from(models).unwrap_or(i32::MAX)
}

impl<D: Destination> Reconciler<'_, D> {
    /// Fetch, prepare, guard, write: how the attempt ended. Every place holds the
    /// published map afterwards (the new one, or the last good one), but where a write
    /// failed.
    pub(super) async fn attempt(
        &mut self,
        cause: SyncCause,
        overrides: Result<Overrides, SyncError>,
        last_good: Option<&Arc<HeldMap>>,
    ) -> Outcome {
        let outcome = match self.try_sync(cause, overrides, last_good).await {
            Ok(outcome) => outcome,
            Err(error) => Outcome::Failed(error),
        };
        if matches!(outcome, Outcome::Updated { .. }) {
            return outcome;
        }
        // What the places lost (a deletion, an edit, a new namespace) is put back from
        // memory, without a fetch; silently for a new spec, whose new places are no loss.
        let announce = !matches!(cause, SyncCause::SpecChanged | SyncCause::FirstSync);
        match (self.put_back(last_good, announce).await, outcome) {
            (Err(error), Outcome::NotModified | Outcome::Unchanged { .. }) => {
                Outcome::Failed(error)
            }
            (Err(error), outcome) => {
                warn!(%error, "the last good map could not be put back");
                outcome
            }
            (Ok(()), outcome) => outcome,
        }
    }

    async fn try_sync(
        &mut self,
        cause: SyncCause,
        overrides: Result<Overrides, SyncError>,
        last_good: Option<&Arc<HeldMap>>,
    ) -> Result<Outcome, SyncError> {
        // Overrides first: a broken one fails the sync before anything is fetched.
        let overrides = overrides?;
        let overrides_changed = self.overrides_changed(&overrides);
        // Before a new body arrives: prepared maps every object has moved on from go now,
        // not after it (a 35 MB map held three times over instead of twice).
        self.context.preparer.forget_unheld();
        let Some(fetched) = self
            .fetched(cause, last_good.is_some(), overrides_changed)
            .await?
        else {
            return Ok(Outcome::NotModified);
        };
        if !overrides.is_empty() {
            self.remember_source(&fetched.bytes);
        }
        let ToPublish {
            bytes,
            digest,
            applied,
            fetched_models,
        } = ToPublish::of(&fetched, &overrides);
        let mut source = SourceMap {
            digest: fetched.digest.clone(),
            git_blob_id: fetched.git_blob_id.clone(),
            revision: fetched.revision.clone(),
            models: fetched_models.map_or(0, count),
        };
        let source_counted = source.models > 0;
        let overrides_status = overrides_status(&overrides, &applied);
        let revision = fetched.revision.clone();
        drop(fetched);
        // Accepting a rejected digest on purpose is the way back from a rejection.
        let rejected = self.status.as_ref().map(|s| s.rejected_digests.as_slice());
        if rejected.is_some_and(|rejected| rejected.contains(&digest))
            && self.object.accept_digest != Some(digest.as_str())
        {
            return Err(SyncError::Rejected { digest });
        }
        if let Some(artifact) = self.artifact().filter(|a| a.digest == digest) {
            if !source_counted {
                source.models = artifact.models;
            }
            let unchanged = Outcome::Unchanged {
                revision,
                source: Some(source),
                overrides: overrides_status,
            };
            if last_good.is_none() {
                return self.restore_from_source(bytes, unchanged).await;
            }
            return Ok(unchanged);
        }
        let replaced = match last_good {
            Some(_) => None,
            None => self.unverified_predecessor(),
        };
        // The guards compare published maps, the last good one with today's overrides: an
        // override change is never upstream repricing.
        let against = match last_good {
            None => None,
            Some(map) => Some(Against::republished(map, &overrides).await?),
        };
        let new = NewMap {
            bytes,
            digest,
            git_blob_id: overrides.is_empty().then(|| source.git_blob_id.clone()),
            revision,
            against,
            replaced,
            source,
            source_counted,
            overrides: overrides_status,
        };
        self.accept_new_map(new).await
    }

    /// The source sent the last good map again while the cluster had lost it (every place
    /// deleted or edited, no copy in memory): puts it back.
    async fn restore_from_source(
        &mut self,
        body: Bytes,
        unchanged: Outcome,
    ) -> Result<Outcome, SyncError> {
        let compressed = tokio::task::spawn_blocking(move || StoredMap::from_bytes(body.to_vec()));
        let map = compressed
            .await
            .map_err(|join_error| SyncError::Interrupted {
                what: "compressing the map",
                detail: join_error.to_string(),
            })?;
        let Some(artifact) = self.artifact().cloned() else {
            return Ok(unchanged);
        };
        self.destination
            .write_new(&map, &self.identity(&artifact))
            .await?;
        self.remember_last_good(map);
        info!(config_map = %self.object.config_map, "restored the last good map from the source");
        self.record(Notice {
            type_: EventType::Normal,
            reason: EventReason::Restored,
            note: format!(
                "ConfigMap {} did not hold the last good map {}; restored it from the source",
                self.object.config_map, artifact.digest
            ),
        })
        .await;
        Ok(unchanged)
    }

    /// With no last good map to compare a new one with: what the places held instead, for
    /// the Event (a sync is "first" only when the cluster holds no map at all).
    fn unverified_predecessor(&self) -> Option<String> {
        if let Some(artifact) = self.artifact() {
            return Some(format!(
                "the ConfigMap no longer held the last good map {} (deleted or edited while \
                 no copy was held), so the new map was checked against its model count only",
                artifact.digest
            ));
        }
        let digest = self.destination.unvouched()?;
        Some(format!(
            "replaced map {digest} that this operator cannot vouch for (status did not name it)"
        ))
    }

    /// Prepares a new map (once for every object with the same inputs) and, when it is
    /// accepted, records it as pending, writes it and keeps it in history.
    async fn accept_new_map(&mut self, new: NewMap) -> Result<Outcome, SyncError> {
        let NewMap {
            bytes,
            digest,
            git_blob_id: known_git_blob_id,
            revision,
            against,
            replaced,
            mut source,
            source_counted,
            overrides,
        } = new;
        let rules = Rules::from(&self.object.spec.validation);
        let accept_digest = self.object.accept_digest.map(str::to_owned);
        let prepared = match self
            .context
            .preparer
            .prepared(
                self.object.namespace.as_deref().unwrap_or_default(),
                bytes,
                digest.clone(),
                against,
                rules,
                accept_digest,
            )
            .await
        {
            Ok(prepared) => prepared,
            Err(refused) => {
                // A refused body is not kept for the source's other followers: a tenant's
                // hostile source would otherwise hold the largest accepted size in memory
                // until its next answer. Another follower fetches it again, and the
                // preparer's memory of the refusal answers it without parsing.
                self.context.sources.forget_body(&digest);
                return Err(refused);
            }
        };
        let map = prepared.map.stored();
        let artifact = artifact_of(
            &prepared.map,
            prepared.accepted.models,
            known_git_blob_id,
            revision,
            self.now,
        );
        if !source_counted {
            source.models = artifact.models;
        }
        let mut overridden = prepared.accepted.overridden.clone();
        // The map's bytes are gone from the cluster: a count is all that is left to guard
        // against.
        if let Some(lost) = self.artifact().filter(|_| self.last_good_lost) {
            let before = usize::try_from(lost.models).unwrap_or(0);
            if let Err(refusal) = shrink_guard_by_count(prepared.accepted.models, before, &rules) {
                let accept_digest = self.object.accept_digest;
                if accept_digest != Some(artifact.digest.as_str()) {
                    return Err(SyncError::Refused {
                        refusals: vec![refusal],
                        digest: artifact.digest,
                        accept_digest: accept_digest.map(str::to_owned),
                    });
                }
                overridden.push(refusal);
            }
        }
        let entry = HistoryEntry {
            digest: artifact.digest.clone(),
            git_blob_id: artifact.git_blob_id.clone(),
            models: artifact.models,
            published_at: Time(self.now),
            config_map: String::new(),
        };
        let previous = self
            .status
            .as_ref()
            .map(|status| status.history.clone())
            .unwrap_or_default();
        self.destination
            .check_places(map, &entry, &previous)
            .await?;
        self.record_pending(&artifact).await?;
        let identity = self.identity(&artifact);
        self.destination.write_new(map, &identity).await?;
        self.remember_held(Arc::clone(&prepared.map));
        let history = self
            .destination
            .keep_in_history(map, &identity, entry, &previous)
            .await;
        Ok(Outcome::Updated {
            artifact,
            change: prepared.accepted.change.clone(),
            replaced,
            overridden,
            source: Some(source),
            overrides,
            history,
        })
    }

    /// Records in status the map about to be written, before any place is: an operator
    /// restarted in between then finds a map it validated (see [`super::adopt`]), and the
    /// endpoint serves each place as soon as it holds the map, as status vouches for it.
    async fn record_pending(&self, artifact: &Artifact) -> Result<(), SyncError> {
        let mut status = self.status.clone().unwrap_or_default();
        status.pending_artifact = Some(artifact.clone());
        self.write_status(status)
            .await
            .map_err(|err| SyncError::Write {
                what: format!(
                    "status (the new map, before ConfigMap {})",
                    self.object.config_map
                ),
                message: match &err {
                    Error::Kube(err) => api_error_message(err),
                    other => other.to_string(),
                },
            })
    }
}
