//! One sync attempt: fetch, then (for new bytes) prepare and write, recording the map as
//! pending before the ConfigMap write so that a restart in between loses nothing.

use bytes::Bytes;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::runtime::events::EventType;
use tracing::info;

use super::Error;
use super::reconcile::{Reconciler, api_error_message};
use super::status::{Notice, Outcome};
use crate::api::{Artifact, EventReason};
use crate::api::{OverridesStatus, SourceMap};
use crate::digest::{git_blob_id, sha256_digest};
use crate::sync::fetch::{FetchOutcome, FetchRequest};
use crate::sync::overrides::{Overrides, Published, apply};
use crate::sync::render::{StoredMap, read_stored_map, render_config_map};
use crate::sync::validate::guards::shrink_guard_by_count;
use crate::sync::{SecretError, SyncError};

/// A map the source sent (with the overrides merged in), to accept or refuse.
struct NewMap {
    /// The bytes to publish.
    bytes: Vec<u8>,
    /// The source's revision.
    revision: Option<String>,
    /// The last good map to guard against, with today's overrides.
    compare_with: Option<Vec<u8>>,
    /// When there was no last good map: what the ConfigMap held instead.
    replaced: Option<String>,
    source: Option<SourceMap>,
    overrides: Option<OverridesStatus>,
}

/// `status.overrides` for `published`; none without overrides.
pub(super) fn overrides_status(
    overrides: &Overrides,
    published: &Published,
) -> Option<OverridesStatus> {
    if overrides.is_empty() {
        return None;
    }
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let applied = &published.applied;
    Some(OverridesStatus {
        applied: count(applied.applied),
        added: count(applied.added_count),
        added_models: applied.added.clone(),
        shadowing: applied.shadowing.clone(),
        unchanged: applied.unchanged.clone(),
        digest: overrides.digest(),
    })
}

impl Reconciler<'_> {
    /// Fetch, validate, diff, render, apply.
    pub(super) async fn sync_once(
        &self,
        overrides: Result<Overrides, SyncError>,
        last_good: Option<&StoredMap>,
        holds_last_good: bool,
        config_map: Option<&ConfigMap>,
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
        last_good: Option<&StoredMap>,
        holds_last_good: bool,
        config_map: Option<&ConfigMap>,
    ) -> Result<Outcome, SyncError> {
        // Overrides first: a broken one fails the sync before anything is fetched.
        let overrides = overrides?;
        let overrides_changed = self.overrides_changed(&overrides);
        let Some((fetched, revision)) = self.fetched(holds_last_good, overrides_changed).await?
        else {
            return Ok(Outcome::NotModified);
        };
        if !overrides.is_empty() {
            self.remember_source(&fetched);
        }
        let published = apply(&fetched, &overrides);
        let source = Some(SourceMap {
            digest: sha256_digest(&fetched),
            git_blob_id: git_blob_id(&fetched),
            revision: revision.clone(),
            models: self.source_models(&fetched, &published),
        });
        let overrides_status = overrides_status(&overrides, &published);
        let bytes = published.bytes;
        let digest = sha256_digest(&bytes);
        // Accepting a rejected digest on purpose is the way back from a rejection.
        let rejected = self.status.as_ref().map(|s| s.rejected_digests.as_slice());
        if rejected.is_some_and(|rejected| rejected.contains(&digest))
            && self.sync.accept_digest() != Some(digest.as_str())
        {
            return Err(SyncError::Rejected { digest });
        }
        if let Some(map) = last_good.filter(|map| map.bytes == bytes) {
            if let Some(artifact) = self.artifact().filter(|_| !holds_last_good) {
                self.write_map(map, artifact).await?;
            }
            return Ok(Outcome::Unchanged {
                revision,
                source,
                overrides: overrides_status,
            });
        }
        if let Some(artifact) = self.artifact().filter(|_| last_good.is_none())
            && digest == artifact.digest
        {
            let unchanged = Outcome::Unchanged {
                revision,
                source,
                overrides: overrides_status,
            };
            return self
                .restore_from_source(Bytes::from(bytes), artifact, unchanged)
                .await;
        }
        let replaced = match last_good {
            Some(_) => None,
            None => self.unverified_predecessor(config_map),
        };
        // The guards compare published maps, the last good one with today's overrides: an
        // override change is never upstream repricing.
        let compare_with = last_good.map(|map| apply(&map.bytes, &overrides).bytes);
        let new = NewMap {
            bytes,
            revision,
            compare_with,
            replaced,
            source,
            overrides: overrides_status,
        };
        self.accept_new_map(new).await
    }

    /// The fetched bytes and their revision; None when the source says they did not change
    /// and the overrides did not either. When only the overrides changed, the bytes fetched
    /// last are used again (no fetch), or fetched in full if they are not at hand.
    async fn fetched(
        &self,
        holds_last_good: bool,
        overrides_changed: bool,
    ) -> Result<Option<(Bytes, Option<String>)>, SyncError> {
        let remembered = self.remembered_source();
        if overrides_changed && let Some(bytes) = remembered.clone() {
            let revision = self
                .status
                .as_ref()
                .and_then(|s| s.source.as_ref()?.revision.clone());
            return Ok(Some((bytes, revision)));
        }
        let headers = self.source_headers().await?;
        // A validator only makes sense while the cluster holds the map it validates, and
        // while a 304 leaves nothing to do.
        let revision = holds_last_good
            .then(|| self.artifact().and_then(|a| a.revision.as_deref()))
            .flatten()
            .filter(|_| !overrides_changed);
        let request = FetchRequest {
            url: &self.sync.spec.source.url,
            headers: &headers,
            timeout: self.sync.spec.timeout()?,
            revision,
        };
        match self.context.fetcher.fetch(&request).await? {
            FetchOutcome::NotModified => Ok(None),
            FetchOutcome::Fetched { body, revision } => {
                self.context.metrics.fetched_bytes.inc_by(body.len() as u64);
                Ok(Some((body, revision)))
            }
        }
    }

    /// The fetched map's model count: the published map's, when there are no overrides.
    fn source_models(&self, fetched: &[u8], published: &Published) -> i32 {
        let models = if published.applied == Default::default() {
            None
        } else {
            crate::sync::validate::ModelMap::parse(fetched)
                .ok()
                .map(|map| map.model_count())
        };
        let models = models.or_else(|| {
            crate::sync::validate::ModelMap::parse(&published.bytes)
                .ok()
                .map(|map| map.model_count())
        });
        i32::try_from(models.unwrap_or(0)).unwrap_or(i32::MAX)
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
        self.remember_last_good(&map);
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
    fn unverified_predecessor(&self, config_map: Option<&ConfigMap>) -> Option<String> {
        if let Some(artifact) = self.artifact() {
            return Some(format!(
                "the ConfigMap no longer held the last good map {} (deleted or edited while \
                 no copy was held), so the new map was checked against its model count only",
                artifact.digest
            ));
        }
        let max_bytes = self.context.fetcher.policy().max_body_bytes;
        let held = read_stored_map(config_map?, &self.target.key, max_bytes)
            .ok()
            .flatten()?;
        Some(format!(
            "replaced map {} that this operator cannot vouch for (status did not name it)",
            held.digest()
        ))
    }

    /// Validates a new map and, when it passes, writes it (and keeps it in history).
    async fn accept_new_map(&self, new: NewMap) -> Result<Outcome, SyncError> {
        let rules = self.sync.spec.validation.rules();
        let accept_digest = self.sync.accept_digest().map(str::to_owned);
        let NewMap {
            bytes,
            revision,
            compare_with,
            replaced,
            source,
            overrides,
        } = new;
        let prepared = self
            .context
            .prepare(bytes, rules, compare_with, accept_digest)
            .await?;
        let artifact = super::status::artifact_of(&prepared, revision, self.now);
        let mut overridden = prepared.accepted.overridden;
        // The map's bytes are gone from the cluster: a count is all that is left to guard
        // against.
        if let Some(lost) = self.artifact().filter(|_| self.last_good_lost) {
            let before = usize::try_from(lost.models).unwrap_or(0);
            let rules = self.sync.spec.validation.rules();
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
        self.write_map(&prepared.map, &artifact).await?;
        self.remember_last_good(&prepared.map);
        let history = self.keep_in_history(&prepared.map, &artifact).await;
        Ok(Outcome::Updated {
            artifact,
            change: prepared.accepted.change,
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

    /// Renders and applies the ConfigMap for `map`.
    pub(super) async fn write_map(
        &self,
        map: &StoredMap,
        artifact: &Artifact,
    ) -> Result<(), SyncError> {
        let desired = render_config_map(&self.target, map, &self.identity(artifact))?;
        self.apply_config_map(&desired)
            .await
            .map(|_| ())
            .map_err(|err| SyncError::Write {
                what: format!("ConfigMap {}", self.target.name),
                message: api_error_message(&err),
            })
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
