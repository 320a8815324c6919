//! What both kinds' controllers share around the core: running kube's `Controller` with
//! the error policy, reconciling an object when a shared source has news for it, and
//! forgetting what was kept of deleted objects.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tokio::sync::broadcast;
use tracing::{Instrument, Span, debug, info, warn};

use super::context::{Context, Error};
use super::core::{Destination, Reconciler};
use super::object::Object;
use crate::api::MapSync;
use crate::metrics::{MapLabels, ObjectScope};

/// How long after a failed reconcile (an API call failed) it is tried again.
const RETRY_FAILED_RECONCILE: Duration = Duration::from_secs(15);
/// How often what is remembered of deleted objects (memory, metric series) is dropped.
const FORGET_EVERY: Duration = Duration::from_secs(10);

/// Runs `controller` with `reconcile` until `stop`; in-flight reconciles finish first.
pub(super) async fn run<K, R, F>(
    controller: Controller<K>,
    reconcile: R,
    context: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) where
    K: MapSync + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    R: FnMut(Arc<K>, Arc<Context>) -> F,
    F: Future<Output = Result<Action, Error>> + Send + 'static,
{
    controller
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                debug!(error = %err, "reconcile ended with an error");
            }
        })
        .await;
}

/// Runs the core for `object`, writing where `destination` says, inside `span`; counts the
/// reconcile.
pub(super) async fn reconcile_core<D: Destination>(
    object: Object<'_>,
    context: &Context,
    destination: D,
    span: Span,
) -> Result<Action, Error> {
    let result = Reconciler::new(object, context, destination)
        .reconcile()
        .instrument(span)
        .await;
    context.metrics.reconciles.inc();
    result
}

/// A reconcile that failed (an API call did) is tried again after a while.
fn error_policy<K: MapSync>(object: Arc<K>, error: &Error, _: Arc<Context>) -> Action {
    warn!(kind = K::KIND, namespace = object.namespace().unwrap_or_default(), name = object.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(RETRY_FAILED_RECONCILE)
}

/// The objects of `store` that a shared source has news for, as the news comes.
pub(super) fn news_of_sources<K>(
    store: Store<K>,
    news: broadcast::Receiver<Vec<String>>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    futures::stream::unfold((store, news), |(store, mut news)| async move {
        loop {
            match news.recv().await {
                Ok(uids) => {
                    let uids: HashSet<String> = uids.into_iter().collect();
                    let told: Vec<ObjectRef<K>> = store
                        .state()
                        .iter()
                        .filter(|object| object.uid().is_some_and(|uid| uids.contains(&uid)))
                        .map(|object| ObjectRef::from_obj(object.as_ref()))
                        .collect();
                    return Some((futures::stream::iter(told), (store, news)));
                }
                // Missed news: those objects sync at their own interval.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, "missed news of shared sources");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .flatten()
}

/// Drops, every [`FORGET_EVERY`], the memory, the followed sources and the metric series
/// of the objects of kind `K` that are gone: kube does not reconcile a deleted object, so
/// nothing else would.
pub(super) async fn forget_deleted<K>(
    stores: Vec<Store<K>>,
    context: Arc<Context>,
    scope: ObjectScope,
) where
    K: MapSync + Clone,
{
    // The first look comes a period after start, when the stores have listed the objects
    // (a store that has not would make every object look deleted).
    let start = tokio::time::Instant::now() + FORGET_EVERY;
    let mut ticks = tokio::time::interval_at(start, FORGET_EVERY);
    loop {
        ticks.tick().await;
        let live: Vec<Arc<K>> = stores.iter().flat_map(Store::state).collect();
        let uids: HashSet<String> = live.iter().filter_map(|object| object.uid()).collect();
        let maps: HashSet<MapLabels> = live
            .iter()
            .map(|object| MapLabels {
                namespace: object.namespace().unwrap_or_default(),
                name: object.name_any(),
            })
            .collect();
        let forgotten = context.memory.retain(K::KIND, &uids);
        context.sources.forget_except(K::KIND, &uids);
        let series = context.metrics.forget_maps_except(scope, &maps);
        if forgotten + series > 0 {
            info!(
                kind = K::KIND,
                objects = forgotten,
                metric_series = series,
                "forgot deleted objects"
            );
        }
    }
}
