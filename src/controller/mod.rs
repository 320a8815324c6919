//! The controller: the only writer to the Kubernetes API (ConfigMaps, status, Events,
//! workloads to restart).
//!
//! One reconcile ([`reconcile`]) reads the cluster, decides with
//! [`crate::sync::schedule::decide`], runs a sync attempt ([`attempt`]: fetch, prepare,
//! write), turns its outcome into status with the pure [`status::next_status`], and tells
//! the consumers ([`consumers`]: LiteLLM proxies, workloads). [`memory`] is what it keeps
//! between reconciles. This module only wires them to kube's `Controller`.

mod attempt;
mod chunks;
mod cluster;
pub mod conditions;
mod consumers;
mod history;
mod memory;
mod overrides;
mod prepared;
mod reconcile;
mod status;
mod targets;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::ModelCostMapSync;
use crate::http::map_cache::MapCache;
use crate::litellm::ProxyClient;
use crate::memo::Memo;
use crate::metrics::{MapLabels, Metrics, ObjectScope};
use crate::scope;
use crate::sync::fetch::Fetcher;
use crate::sync::fetch::shared::SharedFetcher;
use crate::sync::store::MapStore;
use memory::Memories;
use reconcile::Reconciler;

/// Field manager of every write this operator makes (status by server-side apply,
/// ConfigMaps by patch).
pub const FIELD_MANAGER: &str = "costmap-operator";
/// How often what is remembered of deleted objects (memory, metric series) is dropped.
const FORGET_EVERY: Duration = Duration::from_secs(10);
/// How many prepared maps are kept for the objects that come after the first: each answer
/// holds a map (about 4 MB today), and the objects of one round share one or two.
const PREPARED_MAPS: usize = 2;
/// How many objects are reconciled at once. Each holds its ConfigMap as read (a quarter of
/// a MB) and the API calls of one reconcile; a thousand at once would hold a quarter of a
/// GB for no gain in time, as the API server serves them one or two at a time anyway.
const CONCURRENT_RECONCILES: u16 = 16;

/// Errors that end a reconcile early; the error policy retries them with backoff. Sync
/// failures (a bad source, a refused map, an invalid spec) are not errors here: they are
/// recorded in status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no namespace (it is namespaced, so the API server never sends this).
    #[error("object has no namespace")]
    NoNamespace,
    /// A map from history could not be put back.
    #[error("restoring from history: {0}")]
    Restore(String),
}

/// What the reconciler needs, shared by every reconcile.
pub struct Context {
    client: Client,
    /// Fetches, one per source at a time, answers shared by the objects on that source.
    sources: SharedFetcher,
    /// The maps held in memory, once each.
    held: Arc<MapStore>,
    /// New maps prepared for some object: the others with the same inputs take the answer.
    prepared: Memo<prepared::PrepareInputs, prepared::PrepareAnswer>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    proxies: ProxyClient,
    maps: MapCache,
    /// How many maps may be prepared (parsed, validated, compressed) at once.
    sync_slots: Semaphore,
    /// First wait after a failed sync.
    retry_backoff: Duration,
    memory: Memories,
    /// The watched metadata of the targets.
    targets: targets::WatchedTargets,
}

/// Settings of the controller.
#[derive(Clone)]
pub struct Settings {
    /// Namespaces to watch; all when empty.
    pub namespaces: Vec<String>,
    /// Identity in Events (the pod name in a cluster).
    pub instance: Option<String>,
    /// Where reconciles and syncs are counted.
    pub metrics: Arc<Metrics>,
    /// The client that reloads and checks LiteLLM proxies.
    pub proxies: ProxyClient,
    /// The maps this replica serves: proxies are reloaded once it serves the new one.
    pub maps: MapCache,
    /// How many maps may be prepared (parsed, validated, compressed) at once; fetches,
    /// which mostly wait, are not counted.
    pub concurrent_syncs: usize,
    /// First wait after a failed sync; it doubles with each further failure, up to the
    /// interval.
    pub retry_backoff: Duration,
}

impl Context {
    /// A context for `client`, fetching with `fetcher`.
    pub fn new(client: Client, fetcher: Fetcher, settings: Settings) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: settings.instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            sources: SharedFetcher::new(fetcher),
            held: Arc::default(),
            prepared: Memo::new(PREPARED_MAPS),
            metrics: settings.metrics,
            proxies: settings.proxies,
            maps: settings.maps,
            sync_slots: Semaphore::new(settings.concurrent_syncs.max(1)),
            retry_backoff: settings.retry_backoff,
            memory: Memories::default(),
            targets: targets::WatchedTargets::default(),
        }
    }
}

impl Context {
    /// Records an Event about `object`; a failure to record is logged, never fatal.
    async fn publish(&self, notice: status::Notice, object: &ObjectReference) {
        let event = Event {
            type_: notice.type_,
            reason: notice.reason.as_str().to_owned(),
            note: Some(reconcile::truncate(notice.note, 1000)),
            action: "Sync".to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, object).await {
            warn!(error = %err, "could not record an Event");
        }
    }
}

/// Server-side applies the whole status of `name` (of kind `K`); the object written.
async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<K, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(&patch)).await
}

/// Runs the controller, one per watched namespace (or one for the cluster), until `stop`
/// is cancelled; in-flight reconciles finish first.
pub async fn run(client: Client, fetcher: Fetcher, settings: Settings, stop: CancellationToken) {
    let scopes = scope::scopes(&settings.namespaces);
    let settings_namespaces_empty = settings.namespaces.is_empty();
    let context = Arc::new(Context::new(client.clone(), fetcher, settings));
    let controllers: Vec<Controller<ModelCostMapSync>> = scopes
        .iter()
        .map(|scope| controller(&client, scope.as_deref(), &context))
        .collect();
    let stores = controllers.iter().map(Controller::store).collect();
    let forgetting = tokio::spawn(forget_deleted(stores, context.clone()));
    let running = controllers.into_iter().map(|controller| {
        run_controller(controller, context.clone(), stop.clone().cancelled_owned()).boxed()
    });
    // ClusterModelCostMapSyncs write into any namespace: only an operator that watches
    // them all (and has the ClusterRole for it) reconciles them.
    let cluster_wide = settings_namespaces_empty
        .then(|| cluster::run(client.clone(), context.clone(), stop.clone()).boxed());
    join_all(running.chain(cluster_wide)).await;
    forgetting.abort();
}

/// The controller of one scope: ModelCostMapSyncs, the ConfigMaps they own, the
/// EndpointSlices of the Services their proxies sit behind, and the news of a shared
/// source (another object fetched a new map from it).
fn controller(
    client: &Client,
    scope: Option<&str>,
    context: &Context,
) -> Controller<ModelCostMapSync> {
    // A change to a target ConfigMap (deleted, edited) reconciles its owner; only metadata
    // is watched, as a target is a quarter of a MB. History ConfigMaps are left out: their
    // owner has nothing to do when one changes.
    // The store also tells a reconcile whether its target is as it was written
    // ([`targets`]). Who wrote what is in managedFields: not kept.
    let (reader, writer) = reflector::store();
    context.targets.add(reader);
    let targets = reflector(
        writer,
        watcher::watcher(
            scope::api::<PartialObjectMeta<ConfigMap>>(client, scope),
            crate::watch::published_maps(),
        )
        .modify(|meta| meta.managed_fields_mut().clear()),
    )
    .touched_objects();
    // As `Controller::new`, but the store keeps no managedFields: nothing reads them, and
    // each object's lists every status field (several KB each of a thousand objects).
    let (reader, writer) = reflector::store();
    let syncs = reflector(
        writer,
        watcher::watcher(
            scope::api::<ModelCostMapSync>(client, scope),
            watcher::Config::default(),
        )
        .modify(|sync| sync.managed_fields_mut().clear()),
    )
    .applied_objects();
    let controller = Controller::for_stream(syncs, reader).with_config(
        kube::runtime::controller::Config::default().concurrency(CONCURRENT_RECONCILES),
    );
    let news = news_of_sources(controller.store(), context.sources.subscribe());
    // A proxy pod that appears behind a Service is checked as it appears.
    let syncs_by_service = consumers::SyncsByService::new(controller.store());
    // An edit to a ConfigMap of overrides republishes within seconds. Only metadata is
    // watched: every ConfigMap in scope, so their contents are not held.
    let syncs_by_override = overrides::SyncsByOverride::new(controller.store());
    let config_maps = watcher::watcher(
        scope::api::<PartialObjectMeta<ConfigMap>>(client, scope),
        watcher::Config::default(),
    )
    .touched_objects();
    controller
        .trigger_backoff(crate::watch::Backoff::default())
        .owns_stream(targets)
        .watches(
            scope::api::<EndpointSlice>(client, scope),
            watcher::Config::default(),
            move |slice| syncs_by_service.of(&slice),
        )
        .watches_stream(config_maps, move |config_map| {
            syncs_by_override.of(&config_map)
        })
        .reconcile_on(news)
}

/// The objects of `store` that a shared source has news for, as the news comes.
fn news_of_sources<K>(
    store: Store<K>,
    news: broadcast::Receiver<Vec<String>>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    futures::stream::unfold((store, news), |(store, mut news)| async move {
        loop {
            match news.recv().await {
                Ok(uids) => {
                    let uids: HashSet<String> = uids.into_iter().collect();
                    let told: Vec<ObjectRef<K>> = store
                        .state()
                        .iter()
                        .filter(|sync| sync.uid().is_some_and(|uid| uids.contains(&uid)))
                        .map(|sync| ObjectRef::from_obj(sync.as_ref()))
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

/// The objects of `namespace` that `wants`: how a watched object (an EndpointSlice, a
/// ConfigMap of overrides) finds the ModelCostMapSyncs to reconcile.
fn syncs_in(
    store: &Store<ModelCostMapSync>,
    namespace: &str,
    wants: impl Fn(&ModelCostMapSync) -> bool,
) -> Vec<ObjectRef<ModelCostMapSync>> {
    store
        .state()
        .iter()
        .filter(|sync| sync.namespace().as_deref() == Some(namespace))
        .filter(|sync| wants(sync))
        .map(|sync| ObjectRef::from_obj(sync.as_ref()))
        .collect()
}

async fn run_controller(
    controller: Controller<ModelCostMapSync>,
    context: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
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

/// Drops, every [`FORGET_EVERY`], the memory and metric series of objects that are gone:
/// kube does not reconcile a deleted object, so nothing else would.
async fn forget_deleted(stores: Vec<Store<ModelCostMapSync>>, context: Arc<Context>) {
    // The first look comes a period after start, when the stores have listed the objects
    // (a store that has not would make every object look deleted).
    let start = tokio::time::Instant::now() + FORGET_EVERY;
    let mut ticks = tokio::time::interval_at(start, FORGET_EVERY);
    loop {
        ticks.tick().await;
        let live: Vec<Arc<ModelCostMapSync>> = stores.iter().flat_map(Store::state).collect();
        let uids: HashSet<String> = live.iter().filter_map(|sync| sync.uid()).collect();
        let maps: HashSet<MapLabels> = live
            .iter()
            .map(|sync| MapLabels {
                namespace: sync.namespace().unwrap_or_default(),
                name: sync.name_any(),
            })
            .collect();
        let forgotten = context.memory.retain(&uids);
        context.sources.forget_except("ModelCostMapSync", &uids);
        let series = context
            .metrics
            .forget_maps_except(ObjectScope::Namespaced, &maps);
        if forgotten + series > 0 {
            info!(
                objects = forgotten,
                metric_series = series,
                "forgot deleted ModelCostMapSyncs"
            );
        }
    }
}

fn error_policy(sync: Arc<ModelCostMapSync>, error: &Error, _: Arc<Context>) -> Action {
    warn!(namespace = sync.namespace().unwrap_or_default(), name = sync.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(15))
}

async fn reconcile(sync: Arc<ModelCostMapSync>, context: Arc<Context>) -> Result<Action, Error> {
    let namespace = sync.namespace().ok_or(Error::NoNamespace)?;
    // Not `name`: JSON logs put the span's own name under that key.
    let span = info_span!("reconcile", namespace = %namespace, modelcostmapsync = %sync.name_any());
    let result = Reconciler::new(&sync, &context, namespace)?
        .reconcile()
        .instrument(span)
        .await;
    context.metrics.reconciles.inc();
    result
}
