//! One sync attempt: fetch, then (for new bytes) prepare and write, recording the map as
//! pending before the ConfigMap write so that a restart in between loses nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::events::EventType;
use tracing::info;

use super::Error;
use super::prepared::{Against, ToPublish, answer_max_age};
use super::reconcile::{Reconciler, api_error_message};
use super::status::{Notice, Outcome, artifact_of};
use crate::api::{Artifact, EventReason};
use crate::api::{OverridesStatus, SourceMap};
use crate::layout::gzip::StoredMap;
use crate::layout::read::{HeldConfigMaps, read_stored};
use crate::layout::render::{render_config_maps, write_order};
use crate::sync::fetch::FetchRequest;
use crate::sync::fetch::shared::{SharedOutcome, SharedRequest, SourceBody};
use crate::sync::overrides::{Applied, Overrides};
use crate::sync::store::HeldMap;
use crate::sync::validate::guards::shrink_guard_by_count;
use crate::sync::{SecretError, SyncError};

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
    /// When there was no last good map: what the ConfigMap held instead.
    replaced: Option<String>,
    /// `status.source`, but for the model count (known once the map is parsed).
    source: Option<SourceMap>,
    overrides: Option<OverridesStatus>,
}

/// `status.overrides` for what `applied`; none without overrides.
pub(super) fn overrides_status(
    overrides: &Overrides,
    applied: &Applied,
) -> Option<OverridesStatus> {
    if overrides.is_empty() {
        return None;
    }
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
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

impl Reconciler<'_> {
    /// Fetch, validate, diff, render, apply.
    pub(super) async fn sync_once(
        &self,
        overrides: Result<Overrides, SyncError>,
        last_good: Option<&Arc<HeldMap>>,
        holds_last_good: bool,
        config_map: Option<&HeldConfigMaps>,
    ) -> Outcome {
        match self
            .try_sync(overrides, last_good, holds_last_good, config_map)
            .await
        {
            Ok(outcome) => outcome,
            Err(error) => Outcome::Failed(error),
        }
    }

    async fn try_sync(
        &self,
        overrides: Result<Overrides, SyncError>,
        last_good: Option<&Arc<HeldMap>>,
        holds_last_good: bool,
        config_map: Option<&HeldConfigMaps>,
    ) -> Result<Outcome, SyncError> {
        // Overrides first: a broken one fails the sync before anything is fetched.
        let overrides = overrides?;
        let overrides_changed = self.overrides_changed(&overrides);
        let Some(fetched) = self.fetched(holds_last_good, overrides_changed).await? else {
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
            && self.sync.accept_digest() != Some(digest.as_str())
        {
            return Err(SyncError::Rejected { digest });
        }
        if let Some(map) = last_good.filter(|map| map.digest() == digest) {
            if let Some(artifact) = self.artifact() {
                if !source_counted {
                    source.models = artifact.models;
                }
                if !holds_last_good {
                    self.write_map(map.stored(), artifact).await?;
                }
            }
            return Ok(Outcome::Unchanged {
                revision,
                source: Some(source),
                overrides: overrides_status,
            });
        }
        if let Some(artifact) = self.artifact().filter(|_| last_good.is_none())
            && digest == artifact.digest
        {
            if !source_counted {
                source.models = artifact.models;
            }
            let unchanged = Outcome::Unchanged {
                revision,
                source: Some(source),
                overrides: overrides_status,
            };
            return self.restore_from_source(bytes, artifact, unchanged).await;
        }
        let replaced = match last_good {
            Some(_) => None,
            None => self.unverified_predecessor(config_map),
        };
        // The guards compare published maps, the last good one with today's overrides: an
        // override change is never upstream repricing.
        let against = match last_good {
            None => None,
            Some(map) if overrides.is_empty() => Some(Against::Held(Arc::clone(map))),
            Some(map) => Some(Against::republished(map, &overrides).await?),
        };
        let new = NewMap {
            bytes,
            digest,
            git_blob_id: overrides.is_empty().then(|| source.git_blob_id.clone()),
            revision,
            against,
            replaced,
            source: Some(source),
            overrides: overrides_status,
        };
        self.accept_new_map(new, source_counted).await
    }

    /// The fetched map; None when the source says it did not change and the overrides did
    /// not either. When only the overrides changed, the bytes fetched last are used again
    /// (no fetch), or fetched in full if they are not at hand.
    async fn fetched(
        &self,
        holds_last_good: bool,
        overrides_changed: bool,
    ) -> Result<Option<Arc<SourceBody>>, SyncError> {
        if overrides_changed
            && let Some(bytes) = self.remembered_source()
            && let Some(source) = self.status.as_ref().and_then(|s| s.source.as_ref())
        {
            return Ok(Some(Arc::new(SourceBody {
                bytes,
                digest: source.digest.clone(),
                git_blob_id: source.git_blob_id.clone(),
                revision: source.revision.clone(),
            })));
        }
        let headers = self.source_headers().await?;
        // A validator only makes sense while the cluster holds the map it validates, and
        // while a 304 leaves nothing to do.
        let revision = holds_last_good
            .then(|| self.artifact().and_then(|a| a.revision.as_deref()))
            .flatten()
            .filter(|_| !overrides_changed);
        let request = SharedRequest {
            fetch: FetchRequest {
                url: &self.sync.spec.source.url,
                headers: &headers,
                timeout: self.sync.spec.timeout()?,
                revision,
            },
            follower: &self.uid,
            kind: "ModelCostMapSync",
            max_age: self.answer_max_age(),
        };
        match self.context.sources.fetch(&request).await? {
            SharedOutcome::NotModified => Ok(None),
            SharedOutcome::Fetched(body) => Ok(Some(body)),
        }
    }

    /// How old an answer of the source (fetched for another object) this sync takes: one
    /// from within the interval, so the source is asked once per interval; for a sync
    /// someone asked for or a new spec, none (but the answer of a fetch in flight); for news
    /// of the source, the answer that brought it.
    fn answer_max_age(&self) -> Duration {
        let status = self.status.as_ref();
        let requested = self.sync.sync_request().is_some()
            && self.sync.sync_request()
                != status.and_then(|s| s.last_handled_sync_request.as_deref());
        let spec_changed = status.is_some_and(|s| {
            s.last_attempt_time.is_some() && s.observed_generation != self.sync.metadata.generation
        });
        answer_max_age(
            self.context.sources.has_news(&self.uid),
            self.interval.as_ref().ok().copied(),
            requested || spec_changed,
        )
    }

    /// The source sent the last good map again while the cluster had lost it (ConfigMap
    /// deleted or edited, no copy in memory): puts it back.
    async fn restore_from_source(
        &self,
        body: Bytes,
        artifact: &Artifact,
        unchanged: Outcome,
    ) -> Result<Outcome, SyncError> {
        let compressed = tokio::task::spawn_blocking(move || StoredMap::from_bytes(body.to_vec()));
        let map = compressed
            .await
            .map_err(|join_error| SyncError::Interrupted {
                what: "compressing the map",
                detail: join_error.to_string(),
            })?;
        self.write_map(&map, artifact).await?;
        self.remember_last_good(map);
        info!(config_map = %self.target.name, "restored the last good map from the source");
        self.publish(Notice {
            type_: EventType::Normal,
            reason: EventReason::Restored,
            note: format!(
                "ConfigMap {} did not hold the last good map {}; restored it from the source",
                self.target.name, artifact.digest
            ),
        })
        .await;
        Ok(unchanged)
    }

    /// With no last good map to compare a new one with: what the ConfigMap held instead,
    /// for the Event (a sync is "first" only when the cluster holds no map at all).
    fn unverified_predecessor(&self, config_map: Option<&HeldConfigMaps>) -> Option<String> {
        if let Some(artifact) = self.artifact() {
            return Some(format!(
                "the ConfigMap no longer held the last good map {} (deleted or edited while \
                 no copy was held), so the new map was checked against its model count only",
                artifact.digest
            ));
        }
        let max_bytes = self.context.sources.policy().max_body_bytes;
        let held = read_stored(config_map?, &self.target.key, max_bytes)
            .ok()
            .flatten()?;
        Some(format!(
            "replaced map {} that this operator cannot vouch for (status did not name it)",
            held.digest()
        ))
    }

    /// Prepares a new map (once for every object with the same inputs), and writes it when
    /// it is accepted (and keeps it in history).
    async fn accept_new_map(
        &self,
        new: NewMap,
        source_counted: bool,
    ) -> Result<Outcome, SyncError> {
        let NewMap {
            bytes,
            digest,
            git_blob_id: known_git_blob_id,
            revision,
            against,
            replaced,
            mut source,
            overrides,
        } = new;
        let rules = crate::sync::validate::Rules::from(&self.sync.spec.validation);
        let accept_digest = self.sync.accept_digest().map(str::to_owned);
        let prepared = self
            .context
            .prepared(bytes, digest, against, rules, accept_digest)
            .await?;
        let map = prepared.map.stored();
        let artifact = artifact_of(
            &prepared.map,
            prepared.accepted.models,
            known_git_blob_id,
            revision,
            self.now,
        );
        if let Some(source) = source.as_mut().filter(|_| !source_counted) {
            source.models = artifact.models;
        }
        let mut overridden = prepared.accepted.overridden.clone();
        // The map's bytes are gone from the cluster: a count is all that is left to guard
        // against.
        if let Some(lost) = self.artifact().filter(|_| self.last_good_lost) {
            let before = usize::try_from(lost.models).unwrap_or(0);
            let rules = crate::sync::validate::Rules::from(&self.sync.spec.validation);
            if let Err(refusal) = shrink_guard_by_count(prepared.accepted.models, before, &rules) {
                let accept_digest = self.sync.accept_digest();
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
        self.record_pending(&artifact).await?;
        self.write_map(map, &artifact).await?;
        self.remember_held(Arc::clone(&prepared.map));
        let history = self.keep_in_history(map, &artifact).await;
        Ok(Outcome::Updated {
            artifact,
            change: prepared.accepted.change.clone(),
            replaced,
            overridden,
            source,
            overrides,
            history,
        })
    }

    /// Records in status the map about to be written, before the ConfigMap write: an
    /// operator restarted in between then finds a map it validated in the ConfigMap.
    async fn record_pending(&self, artifact: &Artifact) -> Result<(), SyncError> {
        let mut status = self.status.clone().unwrap_or_default();
        status.pending_artifact = Some(artifact.clone());
        self.write_status(status)
            .await
            .map_err(|err| SyncError::Write {
                what: format!(
                    "status (the new map, before ConfigMap {})",
                    self.target.name
                ),
                message: match &err {
                    Error::Kube(err) => api_error_message(err),
                    other => other.to_string(),
                },
            })
    }

    /// Renders and applies the ConfigMaps for `map` (the first last: see [`write_order`]).
    pub(super) async fn write_map(
        &self,
        map: &StoredMap,
        artifact: &Artifact,
    ) -> Result<(), SyncError> {
        let identity = self.identity(artifact);
        let desired = render_config_maps(&self.target, map, &identity)?;
        let versions = self
            .write_rendered(write_order(&desired), |name| {
                self.context.targets.exists(&self.target.namespace, name)
            })
            .await
            .map_err(|failed| SyncError::Write {
                what: format!("ConfigMap {}", failed.name),
                message: api_error_message(&failed.error),
            })?;
        self.remember_written(identity, versions);
        Ok(())
    }

    /// Request headers from `spec.source.headersSecretRef`. Errors name the Secret, never
    /// its values.
    async fn source_headers(&self) -> Result<Vec<(String, Vec<u8>)>, SyncError> {
        let Some(secret_ref) = &self.sync.spec.source.headers_secret_ref else {
            return Ok(Vec::new());
        };
        let secret = self
            .secret(&secret_ref.name, "headers")
            .await
            .map_err(SyncError::Headers)?;
        Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name, value.0))
            .collect())
    }

    /// The Secret `name` in this object's namespace, read when needed (never listed or
    /// watched), for `purpose` ("headers", "admin key").
    pub(super) async fn secret(
        &self,
        name: &str,
        purpose: &'static str,
    ) -> Result<Secret, SecretError> {
        let secrets: Api<Secret> =
            Api::namespaced(self.context.client.clone(), &self.target.namespace);
        secrets
            .get_opt(name)
            .await
            .map_err(|err| SecretError::Unreadable {
                purpose,
                name: name.to_owned(),
                message: api_error_message(&err),
            })?
            .ok_or_else(|| SecretError::NotFound {
                purpose,
                name: name.to_owned(),
            })
    }
}
