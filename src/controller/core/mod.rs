//! The sync core both kinds run: one reconcile of one object, as a list of steps.
//!
//! 1. check the spec ([`Reconciler::reconcile`]);
//! 2. look at what the cluster holds ([`Destination::look`]);
//! 3. finish a write a restart interrupted ([`adopt`]);
//! 4. act on a rejected digest, where a history ring is kept ([`reject`]);
//! 5. find the last good map ([`last_good`]) and read the overrides ([`overrides`]);
//! 6. decide with [`schedule::decide`]: wait, or sync;
//! 7. sync once ([`attempt`]: fetch, prepare, guard, record the pending map, write);
//! 8. turn the outcome into metrics, status and Events ([`outcome`]), and tell the
//!    consumers.
//!
//! What differs between the kinds is only where the map is written and how status sums
//! that up: a [`Destination`]. The decisions themselves are pure functions elsewhere
//! ([`schedule::decide`], [`crate::controller::status::next_status`], the stages of
//! [`crate::sync`]); these modules do the reads and writes around them, one file a step.

mod adopt;
mod attempt;
pub(crate) mod destination;
mod fetch;
mod last_good;
mod outcome;
mod overrides;
mod reject;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};

pub(crate) use destination::Destination;

use super::consumers::Consumers;
use super::context::{Context, Error};
use super::memory::newer_status;
use super::object::Object;
use super::status::{self, Notice, Outcome};
use crate::api::{Artifact, EventReason, ModelCostMapSyncStatus, SpecError};
use crate::apiserver::whole_seconds_now;
use crate::layout::MapIdentity;
use crate::sync::SyncError;
use crate::sync::schedule::{self, Decision, SyncCause};
use crate::sync::store::HeldMap;

/// One reconcile of one object of either kind.
pub(crate) struct Reconciler<'a, D> {
    object: Object<'a>,
    /// The newer of the object's status and the one this operator last wrote.
    status: Option<ModelCostMapSyncStatus>,
    context: &'a Context,
    /// Where the map goes.
    destination: D,
    now: Timestamp,
    /// Status names a last good map that neither memory nor any place holds (deleted or
    /// edited while nothing held a copy).
    last_good_lost: bool,
}

impl<'a, D: Destination> Reconciler<'a, D> {
    pub(crate) fn new(object: Object<'a>, context: &'a Context, destination: D) -> Self {
        let written = context
            .memory
            .read(&object.key, |m| m.written_status.clone())
            .flatten();
        Reconciler {
            status: newer_status(object.observed, object.version.clone(), written),
            object,
            context,
            destination,
            now: whole_seconds_now(),
            last_good_lost: false,
        }
    }

    /// Runs the steps; returns when to reconcile again.
    pub(crate) async fn reconcile(mut self) -> Result<Action, Error> {
        let spec = self.object.spec;
        let interval = match self.destination.spec_error().map_or(spec.interval(), Err) {
            Ok(interval) => interval,
            Err(err) => return self.say_invalid_spec(err).await,
        };
        let expected = self.expected_identity();
        self.destination.look(expected.as_ref()).await?;
        if let Some(action) = self.adopt_interrupted_write().await? {
            return Ok(action);
        }
        if self.destination.keeps_history()
            && let Some(action) = self.handle_reject().await?
        {
            return Ok(action);
        }
        let last_good = self.last_good().await;
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
            generation: self.object.generation,
            suspended: spec.suspend,
            sync_request: self.object.sync_request,
            status,
            has_last_good: last_good.is_some(),
            retrying: status.is_some_and(status::retrying),
            overrides_changed,
            overrides_edited: self.overrides_edited(&overrides),
            source_news: self.context.sources.has_news(self.object.uid()),
            min_gap: self.context.min_sync_gap,
        });
        match decision {
            Decision::Suspended => {
                self.restore(last_good.as_ref()).await?;
                let suspended =
                    status::suspended(self.status.as_ref(), self.object.generation, self.now);
                self.write_status(suspended).await?;
                Ok(Action::await_change())
            }
            Decision::Wait(remaining) => {
                self.restore(last_good.as_ref()).await?;
                let mut status = self.status.clone().unwrap_or_default();
                let recheck = match self.consumers() {
                    Some(consumers) => consumers.recheck(&mut status).await,
                    None => None,
                };
                self.write_status(status).await?;
                Ok(Action::requeue(self.sooner(remaining, recheck)))
            }
            Decision::Sync(cause) => {
                info!(?cause, "syncing");
                let started = Instant::now();
                if let Some(reconciling) = status::reconciling(
                    self.status.as_ref(),
                    cause,
                    self.object.generation,
                    self.now,
                ) {
                    self.write_status(reconciling.clone()).await?;
                    // The writes of this sync (the pending map) keep saying it.
                    self.status = Some(reconciling);
                }
                self.record_override_inputs(&overrides);
                let outcome = self
                    .attempt(cause, overrides.overrides, last_good.as_ref())
                    .await;
                self.write_outcome(cause, outcome, Some(interval), started)
                    .await
            }
        }
    }

    /// An invalid spec leaves nothing to schedule with: says so once, and waits for the
    /// spec to change. Once: the status write is itself a change that reconciles again.
    async fn say_invalid_spec(self, err: SpecError) -> Result<Action, Error> {
        if !status::says_invalid_spec(self.status.as_ref(), self.object.generation) {
            let outcome = Outcome::Failed(SyncError::Spec(err));
            self.write_outcome(SyncCause::SpecChanged, outcome, None, Instant::now())
                .await?;
        }
        Ok(Action::await_change())
    }

    /// Puts the last good map back where it is missing or was edited (not a sync: nothing
    /// is fetched); `announce`: an Event names what was put back.
    async fn put_back(
        &mut self,
        last_good: Option<&Arc<HeldMap>>,
        announce: bool,
    ) -> Result<(), SyncError> {
        let (Some(map), Some(artifact)) = (last_good, self.artifact()) else {
            return Ok(());
        };
        let identity = self.identity(artifact);
        let put_back = self.destination.converge(map.stored(), &identity).await?;
        if let Some(put_back) = put_back.filter(|_| announce) {
            self.announce(put_back).await;
        }
        Ok(())
    }

    /// [`Self::put_back`] between syncs: a failed write is retried with backoff.
    /// A ConfigMap of someone else's in the way is left alone and not retried here: only a
    /// person can fix it, and the next sync says so in status.
    async fn restore(&mut self, last_good: Option<&Arc<HeldMap>>) -> Result<(), Error> {
        match self.put_back(last_good, true).await {
            Ok(()) => Ok(()),
            Err(err @ SyncError::OwnedByAnother { .. }) => {
                warn!(error = %err, "the last good map was not put back");
                Ok(())
            }
            Err(err) => Err(Error::Restore {
                what: "the last good map".to_owned(),
                message: err.to_string(),
            }),
        }
    }

    /// The Event that says a ConfigMap was put back. Distinct reasons, because Events with
    /// the same reason merge into one series that keeps the first note.
    async fn announce(&self, put_back: destination::PutBack) {
        let (reason, what) = match put_back.deleted {
            false => (EventReason::Restored, "edited"),
            true => (EventReason::Recreated, "deleted"),
        };
        let name = put_back.config_map;
        info!(config_map = %name, what, "restored the ConfigMap");
        self.record(Notice {
            type_: EventType::Normal,
            reason,
            note: format!("ConfigMap {name} was {what}; restored the last good map"),
        })
        .await;
    }

    /// The consumers of this object's map; none for a cluster object.
    fn consumers(&self) -> Option<Consumers<'_>> {
        Consumers::of(&self.object, self.context, self.now)
    }

    /// The earliest of `wait`, the consumers' `recheck` and the destination's retry.
    fn sooner(&self, wait: Duration, recheck: Option<Duration>) -> Duration {
        [Some(wait), recheck, self.destination.retry_after()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(wait)
    }

    fn artifact(&self) -> Option<&Artifact> {
        self.status.as_ref()?.artifact.as_ref()
    }

    /// The annotations' account of `artifact`, fetched from this object's source.
    fn identity(&self, artifact: &Artifact) -> MapIdentity {
        super::config_maps::identity(artifact, &self.object.spec.source.url)
    }

    /// Writes the whole status through the destination (skipped when nothing changed, so
    /// a reconcile with nothing to do writes nothing), and remembers it: the next
    /// reconcile may get the object from a watch that has not seen this write yet.
    async fn write_status(&self, status: ModelCostMapSyncStatus) -> Result<(), Error> {
        if let Some(applied) = self.destination.write_status(status).await? {
            self.context.memory.record_write(
                &self.object.key,
                applied.status,
                applied.version,
                self.object.version.clone(),
            );
        }
        Ok(())
    }

    /// Records an Event about this object.
    async fn record(&self, notice: Notice) {
        self.destination.record(notice).await;
    }
}

#[cfg(test)]
mod tests;
