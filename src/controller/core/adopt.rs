//! A content change that a restart interrupted between the ConfigMap writes and the
//! status write that records them. Status names the map as pending, and a place holds
//! exactly its bytes, so this operator validated and wrote it: it becomes the last good
//! map (the next map is guarded against it), and the proxies are told. Nothing is fetched;
//! the places that missed it get it at the next reconcile, from memory.

use std::time::Duration;

use kube::runtime::controller::Action;
use tracing::info;

use super::{Destination, Reconciler};
use crate::controller::consumers;
use crate::controller::context::Error;
use crate::controller::status;

impl<D: Destination> Reconciler<'_, D> {
    /// Adopts the pending map when a place holds it; the action then, or none when there
    /// is nothing to adopt.
    pub(super) async fn adopt_interrupted_write(&mut self) -> Result<Option<Action>, Error> {
        let Some(previous) = self.status.clone() else {
            return Ok(None);
        };
        let Some(pending) = previous.pending_artifact.clone() else {
            return Ok(None);
        };
        if self.artifact().is_some_and(|a| a.digest == pending.digest) {
            return Ok(None);
        }
        let Some(map) = self
            .destination
            .read_back(&pending.digest, &previous.history)
            .await
        else {
            // The write never happened: the places still hold the artifact (or lost it,
            // which the usual path handles); the pending record is dropped at the next
            // status write.
            return Ok(None);
        };
        self.remember_last_good(map);
        info!(digest = %pending.digest, "adopted the map whose write a restart interrupted");
        self.context.metrics.record_map(
            &self.object.labels(),
            i64::from(pending.models),
            self.now.as_second(),
        );
        let (mut status, notice) = status::adopted(
            &previous,
            pending,
            self.object.generation,
            self.now,
            self.object.config_map,
        );
        // The proxies may not have been told before the restart.
        if let Some(consumers) = self.consumers() {
            consumers
                .reach(&mut status, consumers::Mode::ReloadStale)
                .await;
        }
        self.write_status(status.clone()).await?;
        self.record(notice).await;
        self.status = Some(status);
        Ok(Some(Action::requeue(Duration::ZERO)))
    }
}
