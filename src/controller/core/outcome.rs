//! After an attempt: its outcome counted in the metrics and logged, turned into status by
//! the pure [`status::next_status`], the consumers told (and judged for what the new map
//! repriced), the status written, then the Events recorded. Returns when to reconcile
//! again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use tracing::{info, warn};

use super::{Destination, Reconciler};
use crate::api::EventReason;
use crate::apiserver::whole_seconds_now;
use crate::controller::consumers;
use crate::controller::context::Error;
use crate::controller::memory::LastRepricing;
use crate::controller::status::{self, Attempt, Outcome};
use crate::metrics::SyncResult;
use crate::sync::SyncError;
use crate::sync::schedule::{self, SyncCause};

impl<D: Destination> Reconciler<'_, D> {
    /// Records an attempt that ended with `outcome`, for a spec with `interval` (none when
    /// the spec has no valid interval).
    pub(super) async fn write_outcome(
        &self,
        cause: SyncCause,
        outcome: Outcome,
        interval: Option<Duration>,
        started: Instant,
    ) -> Result<Action, Error> {
        let seconds = started.elapsed().as_secs_f64();
        let metrics = &self.context.metrics;
        let labels = self.object.labels();
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
                warn!(reason = %error.reason(), error = %error, "sync failed; the ConfigMaps keep the last good map");
            }
        }
        let failures_before = self
            .context
            .memory
            .read(&self.object.key, |m| m.consecutive_failures)
            .unwrap_or(0);
        let attempt = Attempt {
            generation: self.object.generation,
            sync_request: self.object.sync_request,
            started: self.now,
            finished: whole_seconds_now(),
            interval: interval.unwrap_or(schedule::MIN_INTERVAL),
            failures_before,
            retry_backoff: self.context.retry_backoff,
            last_good_lost: self.last_good_lost,
            config_map: self.object.config_map,
        };
        if let Some(interval) = interval {
            metrics.record_interval(&labels, interval);
        }
        self.remember_repricing(&outcome);
        let mut next = status::next_status(self.status.as_ref(), outcome, &attempt);
        self.context
            .memory
            .update(&self.object.key, |m| m.consecutive_failures = next.failures);
        let mut events = std::mem::take(&mut next.events);
        if let Some(models) = next.published_models() {
            metrics.record_map(&labels, models, self.now.as_second());
        }
        let recheck = match self.consumers() {
            Some(consumers) => consumers.reach(&mut next.status, mode).await,
            None => None,
        };
        // The map's Event says what it changed for the proxies too, once they are judged.
        for notice in events
            .iter_mut()
            .filter(|notice| notice.reason == EventReason::MapUpdated)
        {
            consumers::add_repriced_to_note(&mut notice.note, &next.status.consumers);
        }
        self.write_status(next.status).await?;
        // After the status: it is what readers wait for; the Events tell the story after.
        for notice in events {
            self.record(notice).await;
        }
        Ok(match next.wait {
            Some(wait) => Action::requeue(self.sooner(wait, recheck)),
            None => Action::await_change(),
        })
    }

    /// After a new map: what it repriced, for the consumers to judge their deployments by
    /// (now and at each recheck) until the next map. A map compared with nothing (a first
    /// sync) leaves nothing to judge by. A cluster object has no consumers, so keeps none.
    fn remember_repricing(&self, outcome: &Outcome) {
        let Outcome::Updated {
            artifact, change, ..
        } = outcome
        else {
            return;
        };
        if self.consumers().is_none() {
            return;
        }
        let last = change.as_ref().map(|change| LastRepricing {
            before: self.artifact().map(|before| before.git_blob_id.clone()),
            after: artifact.git_blob_id.clone(),
            prices: Arc::clone(&change.repricing),
        });
        self.context
            .memory
            .update(&self.object.key, |m| m.repricing = last);
    }
}
