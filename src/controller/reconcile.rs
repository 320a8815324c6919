//! One reconcile of one object: read the cluster, decide, sync, write. The decisions are
//! pure functions elsewhere ([`schedule::decide`], [`status::next_status`], the stages in
//! [`crate::sync`]); this module does the reads and writes around them.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use super::status::{self, Attempt, Notice, Outcome};
use super::targets::WrittenTarget;
use super::{Context, Error, conditions, consumers};
use crate::api::{Artifact, EventReason, ModelCostMapSync, ModelCostMapSyncStatus, SpecError};
use crate::layout::MapIdentity;
use crate::layout::gzip::StoredMap;
use crate::layout::read::{HeldConfigMaps, holds_all, read_stored, stale};
use crate::layout::render::{TargetRef, render_config_maps};
use crate::metrics::{MapLabels, SyncResult};
use crate::sync::SyncError;
use crate::sync::fetch::{sanitize_url, validate_source_url};
use crate::sync::schedule::{self, Decision, SyncCause};
use crate::sync::store::HeldMap;

/// The target's ConfigMaps, as one reconcile knows them.
pub(super) enum Target {
    /// As this operator wrote them for the last good map: not read.
    AsWritten,
    /// As read.
    Read(HeldConfigMaps),
}

impl Target {
    /// The ConfigMaps as read; None when not read (they hold the last good map).
    pub(super) fn read(&self) -> Option<&HeldConfigMaps> {
        match self {
            Target::AsWritten => None,
            Target::Read(held) => Some(held),
        }
    }
}

/// One reconcile of one object.
pub(super) struct Reconciler<'a> {
    pub(super) sync: &'a ModelCostMapSync,
    /// The newer of the object's status and the one this operator last wrote.
    pub(super) status: Option<ModelCostMapSyncStatus>,
    pub(super) context: &'a Context,
    pub(super) config_maps: Api<ConfigMap>,
    pub(super) target: TargetRef,
    pub(super) uid: String,
    /// `spec.interval`, or why it cannot be used.
    pub(super) interval: Result<std::time::Duration, SpecError>,
    pub(super) now: Timestamp,
    /// Status names a last good map that neither memory nor the ConfigMap holds (the
    /// ConfigMap was deleted or edited while nothing held a copy).
    pub(super) last_good_lost: bool,
}

impl<'a> Reconciler<'a> {
    pub(super) fn new(
        sync: &'a ModelCostMapSync,
        context: &'a Context,
        namespace: String,
    ) -> Result<Self, Error> {
        let owner = sync.controller_owner_ref(&()).ok_or(Error::NoNamespace)?;
        let uid = sync.uid().unwrap_or_default();
        let written = context
            .memory
            .read(&uid, |m| m.written_status.clone())
            .flatten();
        Ok(Reconciler {
            sync,
            status: super::memory::newer_status(
                sync.status.as_ref(),
                sync.resource_version(),
                written,
            ),
            context,
            config_maps: Api::namespaced(context.client.clone(), &namespace),
            target: TargetRef {
                name: sync.config_map_name().to_owned(),
                namespace,
                key: sync.spec.key().to_owned(),
                owner,
            },
            uid,
            interval: sync.spec.interval(),
            now: whole_seconds_now(),
            last_good_lost: false,
        })
    }

    pub(super) async fn reconcile(mut self) -> Result<Action, Error> {
        if let Err(err) = &self.interval {
            // Nothing to schedule with: say so once, and wait for the spec to change. Once:
            // the status write is itself a change that reconciles again.
            if status::says_invalid_spec(self.status.as_ref(), self.sync.metadata.generation) {
                return Ok(Action::await_change());
            }
            let outcome = Outcome::Failed(SyncError::Spec(err.clone()));
            self.write_outcome(SyncCause::SpecChanged, outcome, Instant::now())
                .await?;
            return Ok(Action::await_change());
        }
        let target = self.read_target().await?;
        if let Some(action) = self.adopt_interrupted_write(target.read()).await? {
            return Ok(action);
        }
        if let Some(action) = self.handle_reject().await? {
            return Ok(action);
        }
        let last_good = self.last_good(target.read()).await;
        self.last_good_lost = self.artifact().is_some() && last_good.is_none();
        // A broken override counts as a change: the sync then says what is wrong with it.
        let overrides = self.read_overrides().await;
        let overrides_changed = match &overrides.overrides {
            Ok(read) => self.overrides_changed(read),
            Err(_) => true,
        };
        let status = self.status.as_ref();
        let decision = schedule::decide(&schedule::Inputs {
            now: self.now,
            generation: self.sync.metadata.generation,
            suspended: self.sync.spec.suspend,
            sync_request: self.sync.sync_request(),
            status,
            has_last_good: last_good.is_some(),
            retrying: status.is_some_and(|s| conditions::is_ready(&s.conditions) == Some(false)),
            overrides_changed,
            overrides_edited: self.overrides_edited(&overrides),
            source_news: self.context.sources.has_news(&self.uid),
        });
        match decision {
            Decision::Suspended => {
                let suspended = status::suspended(
                    self.status.as_ref(),
                    self.sync.metadata.generation,
                    self.now,
                );
                self.write_status(suspended).await?;
                Ok(Action::await_change())
            }
            Decision::Wait(remaining) => {
                if let (Some(last_good), Target::Read(held)) = (&last_good, &target) {
                    self.restore_if_changed(held, last_good.stored()).await?;
                }
                let recheck = self.recheck_consumers().await?;
                Ok(Action::requeue(
                    recheck.map_or(remaining, |r| r.min(remaining)),
                ))
            }
            Decision::Sync(cause) => {
                info!(?cause, "syncing");
                let holds_last_good = match &target {
                    Target::AsWritten => true,
                    Target::Read(held) => last_good.as_ref().is_some_and(|map| {
                        let holds = self
                            .desired(map.stored())
                            .is_some_and(|desired| holds_all(held, &desired));
                        if holds {
                            self.note_as_written(held);
                        }
                        holds
                    }),
                };
                let started = Instant::now();
                self.record_override_inputs(&overrides);
                let outcome = self
                    .sync_once(
                        overrides.overrides,
                        last_good.as_ref(),
                        holds_last_good,
                        target.read(),
                    )
                    .await;
                self.write_outcome(cause, outcome, started).await
            }
        }
    }

    /// Finishes a content change that a restart interrupted between the ConfigMap write and
    /// the status write: status names the map as pending, and the ConfigMap holds exactly
    /// its bytes, so it was validated and written by this operator. It becomes the last good
    /// map (the next map is guarded against it), and the proxies are told. Nothing is
    /// fetched or written to the ConfigMap.
    async fn adopt_interrupted_write(
        &mut self,
        config_map: Option<&HeldConfigMaps>,
    ) -> Result<Option<Action>, Error> {
        let Some(pending) = self
            .status
            .as_ref()
            .and_then(|status| status.pending_artifact.clone())
        else {
            return Ok(None);
        };
        if self.artifact().is_some_and(|a| a.digest == pending.digest) {
            return Ok(None);
        }
        // Unread only when it holds the artifact (see [`Self::read_target`]).
        let Some(config_map) = config_map else {
            return Ok(None);
        };
        let max_bytes = self.context.sources.policy().max_body_bytes;
        let held = read_stored(config_map, &self.target.key, max_bytes)
            .ok()
            .flatten()
            .filter(|held| held.digest() == pending.digest);
        let Some(held) = held else {
            // The write never happened: the ConfigMap still holds the artifact (or lost it,
            // which the usual path handles); the pending record is dropped at the next write.
            return Ok(None);
        };
        self.remember_last_good(held);
        info!(digest = %pending.digest, "adopted the map whose write a restart interrupted");
        self.context.metrics.record_map(
            &self.map_labels(),
            i64::from(pending.models),
            self.now.as_second(),
        );
        let (mut status, notice) = status::adopted(
            &self.status.clone().unwrap_or_default(),
            pending,
            self.sync.metadata.generation,
            self.now,
            &self.target.name,
        );
        self.publish(notice).await;
        // The proxies may not have been told before the restart.
        self.reach_consumers(&mut status, consumers::Mode::ReloadStale)
            .await;
        self.write_status(status.clone()).await?;
        self.status = Some(status);
        Ok(Some(Action::requeue(std::time::Duration::ZERO)))
    }

    /// The last good map named by `status.artifact`, from memory, read back from the
    /// ConfigMap, or from the history ring. None when none holds exactly those bytes.
    async fn last_good(&self, config_map: Option<&HeldConfigMaps>) -> Option<Arc<HeldMap>> {
        if let Some(map) = self.last_good_at_hand(config_map) {
            return Some(map);
        }
        let artifact = self.artifact()?;
        let history = &self.status.as_ref()?.history;
        let entry = history
            .iter()
            .find(|entry| entry.digest == artifact.digest)?;
        let map = self.read_history(entry).await?;
        info!(config_map = %entry.config_map, "found the last good map in history");
        Some(self.remember_last_good(map))
    }

    /// [`Self::last_good`] from memory (this object's, or the copy another object with the
    /// same map holds) or the ConfigMap.
    fn last_good_at_hand(&self, config_map: Option<&HeldConfigMaps>) -> Option<Arc<HeldMap>> {
        let digest = &self.status.as_ref()?.artifact.as_ref()?.digest;
        if let Some(map) = self.context.memory.last_good(&self.uid, digest) {
            return Some(map);
        }
        if let Some(map) = self.context.held.get(digest) {
            self.remember_held(map.clone());
            return Some(map);
        }
        let max_bytes = self.context.sources.policy().max_body_bytes;
        let read = read_stored(config_map?, &self.target.key, max_bytes).ok()??;
        if &read.digest() != digest {
            return None;
        }
        Some(self.remember_last_good(read))
    }

    /// Keeps `map` as this object's last good map (held once for every object with it).
    pub(super) fn remember_last_good(&self, map: StoredMap) -> Arc<HeldMap> {
        let digest = map.digest();
        let held = self.context.held.hold(map, digest, None);
        self.remember_held(held.clone());
        held
    }

    /// Keeps a map already held as this object's last good map.
    pub(super) fn remember_held(&self, map: Arc<HeldMap>) {
        self.context.memory.remember_last_good(&self.uid, map);
    }

    /// The target's ConfigMaps: not read when the watch shows them as this operator wrote
    /// them for the last good map, which memory holds ([`super::targets`]). A pending map
    /// that is not the artifact needs them read ([`Self::adopt_interrupted_write`]).
    async fn read_target(&self) -> Result<Target, Error> {
        let as_written = self.artifact().is_some_and(|artifact| {
            let pending = self
                .status
                .as_ref()
                .and_then(|s| s.pending_artifact.as_ref());
            let identity = self.identity(artifact);
            pending.is_none_or(|pending| pending.digest == artifact.digest)
                && self
                    .context
                    .memory
                    .last_good(&self.uid, &artifact.digest)
                    .is_some()
                && self
                    .context
                    .memory
                    .read(&self.uid, |m| m.written_target.clone())
                    .flatten()
                    .is_some_and(|written| {
                        written.renders(&self.target, &identity)
                            && self.context.targets.unchanged(&written)
                    })
        });
        if as_written {
            return Ok(Target::AsWritten);
        }
        Ok(Target::Read(self.read_held(&self.target.name).await?))
    }

    /// Remembers that `held`, as read, is the target as this operator would write it for
    /// the artifact: the next reconcile need not read it while it stays at these versions.
    fn note_as_written(&self, held: &HeldConfigMaps) {
        let Some(artifact) = self.artifact() else {
            return;
        };
        let versions = held
            .maps
            .iter()
            .flatten()
            .filter_map(|cm| Some((cm.metadata.name.clone()?, cm.resource_version()?)))
            .collect();
        self.remember_written(self.identity(artifact), versions);
    }

    /// Remembers the target's ConfigMaps at `versions` as holding the map of `identity`.
    pub(super) fn remember_written(&self, identity: MapIdentity, versions: Vec<(String, String)>) {
        let written = WrittenTarget {
            target: self.target.clone(),
            identity,
            versions,
        };
        self.context
            .memory
            .update(&self.uid, |m| m.written_target = Some(written));
    }

    pub(super) fn identity(&self, artifact: &Artifact) -> MapIdentity {
        identity(artifact, &self.sync.spec.source.url)
    }

    /// The ConfigMaps as they should be for the last good map in status. None when there
    /// is no artifact, or it no longer renders (it did when it was stored).
    fn desired(&self, map: &StoredMap) -> Option<Vec<ConfigMap>> {
        render_config_maps(&self.target, map, &self.identity(self.artifact()?)).ok()
    }

    pub(super) fn artifact(&self) -> Option<&Artifact> {
        self.status.as_ref()?.artifact.as_ref()
    }

    /// Puts the last good map back when the ConfigMap was deleted or edited by hand. This
    /// is not a sync: nothing is fetched.
    async fn restore_if_changed(
        &self,
        actual: &HeldConfigMaps,
        last_good: &StoredMap,
    ) -> Result<(), Error> {
        let Some(desired) = self.desired(last_good) else {
            return Ok(());
        };
        let stale: Vec<&ConfigMap> = stale(actual, &desired).collect();
        let Some(first_stale) = stale.first() else {
            self.note_as_written(actual);
            return Ok(());
        };
        // A chunk alone may be stale: the Event names the first ConfigMap put back.
        let name = first_stale.metadata.name.clone().unwrap_or_default();
        let index = desired
            .iter()
            .position(|cm| cm.metadata.name == first_stale.metadata.name)
            .unwrap_or(0);
        let deleted = actual.get(index).is_none();
        self.write_rendered(stale, |name| actual.has(name))
            .await
            .map_err(|failed| failed.error)?;
        // Distinct reasons, because Events with the same reason merge into one series that
        // keeps the first note.
        let (reason, what) = match deleted {
            false => (EventReason::Restored, "edited"),
            true => (EventReason::Recreated, "deleted"),
        };
        info!(config_map = %name, what, "restored the ConfigMap");
        self.publish(Notice {
            type_: EventType::Normal,
            reason,
            note: format!("ConfigMap {name} was {what}; restored the last good map"),
        })
        .await;
        Ok(())
    }

    /// Records an attempt in status (through [`status::next_status`]), the metrics and the
    /// Events, then tells the consumers. Returns when to reconcile again.
    async fn write_outcome(
        &self,
        cause: SyncCause,
        outcome: Outcome,
        started: Instant,
    ) -> Result<Action, Error> {
        let seconds = started.elapsed().as_secs_f64();
        let metrics = &self.context.metrics;
        let mode = consumers::Mode::after(cause, &outcome);
        match &outcome {
            Outcome::NotModified => metrics.count_sync(SyncResult::NotModified, seconds),
            Outcome::Unchanged { .. } => metrics.count_sync(SyncResult::Unchanged, seconds),
            Outcome::Updated { artifact, .. } => {
                metrics.count_sync(SyncResult::Updated, seconds);
                info!(cause = ?cause, digest = %artifact.digest, models = artifact.models, "map written");
            }
            Outcome::Failed(error) => {
                metrics.count_sync(SyncResult::Failed, seconds);
                if let SyncError::Refused { refusals, .. } = error {
                    for refusal in refusals {
                        metrics.count_guard_refusal(refusal.guard.as_str());
                    }
                }
                warn!(reason = %error.reason(), error = %error, "sync failed; the ConfigMap keeps the last good map");
            }
        }
        let failures_before = self
            .context
            .memory
            .read(&self.uid, |m| m.consecutive_failures)
            .unwrap_or(0);
        let attempt = Attempt {
            generation: self.sync.metadata.generation,
            sync_request: self.sync.sync_request(),
            started: self.now,
            finished: whole_seconds_now(),
            interval: *self.interval.as_ref().unwrap_or(&schedule::MIN_INTERVAL),
            failures_before,
            retry_backoff: self.context.retry_backoff,
            last_good_lost: self.last_good_lost,
            config_map: &self.target.name,
        };
        if let Ok(interval) = &self.interval {
            metrics.record_interval(&self.map_labels(), *interval);
        }
        let mut next = status::next_status(self.status.as_ref(), outcome, &attempt);
        self.context
            .memory
            .update(&self.uid, |m| m.consecutive_failures = next.failures);
        let events = std::mem::take(&mut next.events);
        if let Some(models) = next.published_models() {
            metrics.record_map(&self.map_labels(), models, self.now.as_second());
        }
        let recheck = self.reach_consumers(&mut next.status, mode).await;
        self.write_status(next.status).await?;
        // After the status: it is what readers wait for; the Events tell the story after.
        for notice in events {
            self.publish(notice).await;
        }
        Ok(match next.wait {
            Some(wait) => Action::requeue(recheck.map_or(wait, |r| r.min(wait))),
            None => Action::await_change(),
        })
    }

    /// Server-side applies the whole status; skipped when nothing changed, so a reconcile
    /// with nothing to do writes nothing.
    pub(super) async fn write_status(&self, status: ModelCostMapSyncStatus) -> Result<(), Error> {
        if self.sync.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<ModelCostMapSync> =
            Api::namespaced(self.context.client.clone(), &self.target.namespace);
        let written = super::apply_status(&api, &self.sync.name_any(), &status).await?;
        self.context.memory.record_write(
            &self.uid,
            status,
            written.resource_version(),
            self.sync.resource_version(),
        );
        Ok(())
    }

    /// This object, as metrics label it.
    pub(super) fn map_labels(&self) -> MapLabels {
        MapLabels {
            namespace: self.target.namespace.clone(),
            name: self.sync.name_any(),
        }
    }

    /// Records an Event; a failure to record is logged, never fatal.
    pub(super) async fn publish(&self, notice: Notice) {
        let object = self.sync.object_ref(&());
        self.context.publish(notice, &object).await;
    }
}

/// Now, in whole seconds, as metav1.Time stores it: a status kept in memory must compare
/// equal to the same status read back from the API server.
pub(super) fn whole_seconds_now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now())
}

/// The annotations' account of `artifact`, fetched from `url` (shown redacted).
pub(super) fn identity(artifact: &Artifact, url: &str) -> MapIdentity {
    MapIdentity {
        digest: artifact.digest.clone(),
        git_blob_id: artifact.git_blob_id.clone(),
        models: artifact.models,
        source_url: redacted(url),
        updated_at: artifact.last_update_time.0.to_string(),
    }
}

fn redacted(url: &str) -> String {
    validate_source_url(url)
        .map(|url| sanitize_url(&url))
        .unwrap_or_else(|_| "<invalid URL>".to_owned())
}

/// The API server's message for an error, without the request it answered.
pub(super) fn api_error_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

pub(super) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}
