//! The ModelCostMapSync controller: the core run with one target ConfigMap in the object's
//! namespace ([`target`]), kept with a history ring ([`history`]).
//!
//! What reconciles an object besides its own changes: its target's ConfigMaps (deleted or
//! edited; metadata only), the EndpointSlices of the Services its proxies sit behind (a
//! pod that appears is checked), the ConfigMaps its overrides name (an edit republishes),
//! and news of a shared source (another object fetched a new map from it).

mod history;
mod target;

use std::sync::Arc;

use futures::FutureExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::info_span;

use super::consumers::SERVICE_NAME_LABEL;
use super::context::{Context, Error};
use super::object::Object;
use super::runner;
use crate::api::ModelCostMapSync;
use crate::metrics::ObjectScope;
use crate::scope;
use target::TargetConfigMap;

/// How many objects are reconciled at once. Each holds its ConfigMap as read (a quarter of
/// a MB) and the API calls of one reconcile; a thousand at once would hold a quarter of a
/// GB for no gain in time, as the API server serves them one or two at a time anyway.
const CONCURRENT_RECONCILES: u16 = 16;

/// Runs the controller, one per watched namespace (or one for the cluster), until `stop`
/// is cancelled; in-flight reconciles finish first.
pub(super) async fn run(
    client: &Client,
    namespaces: &[String],
    context: Arc<Context>,
    stop: CancellationToken,
) {
    let controllers: Vec<Controller<ModelCostMapSync>> = scope::scopes(namespaces)
        .iter()
        .map(|scope| controller(client, scope.as_deref(), &context))
        .collect();
    let stores = controllers.iter().map(Controller::store).collect();
    let forgetting = tokio::spawn(runner::forget_deleted(
        stores,
        context.clone(),
        ObjectScope::Namespaced,
    ));
    let running = controllers.into_iter().map(|controller| {
        runner::run(
            controller,
            reconcile,
            context.clone(),
            stop.clone().cancelled_owned(),
        )
        .boxed()
    });
    futures::future::join_all(running).await;
    forgetting.abort();
}

async fn reconcile(sync: Arc<ModelCostMapSync>, context: Arc<Context>) -> Result<Action, Error> {
    let namespace = sync.namespace().unwrap_or_default();
    // Not `name`: JSON logs put the span's own name under that key.
    let span = info_span!("reconcile", namespace = %namespace, modelcostmapsync = %sync.name_any());
    let object = Object::of(sync.as_ref())?;
    let target = TargetConfigMap::new(&sync, object.key.clone(), &context)?;
    runner::reconcile_core(object, &context, target, span).await
}

/// The controller of one scope.
fn controller(
    client: &Client,
    scope: Option<&str>,
    context: &Context,
) -> Controller<ModelCostMapSync> {
    // A change to a target ConfigMap (deleted, edited) reconciles its owner; only metadata
    // is watched, as a target is a quarter of a MB. History ConfigMaps are left out: their
    // owner has nothing to do when one changes. The store also tells a reconcile whether
    // its target is as it was written. Who wrote what is in managedFields: not kept.
    let (reader, writer) = reflector::store();
    context.config_maps.watch(reader);
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
    let news = runner::news_of_sources(controller.store(), context.sources.subscribe());
    // A proxy pod that appears behind a Service is checked as it appears.
    let by_service = controller.store();
    // An edit to a ConfigMap of overrides republishes within seconds. Only metadata is
    // watched: every ConfigMap in scope, so their contents are not held.
    let by_override = controller.store();
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
            move |slice| behind_service(&by_service, &slice),
        )
        .watches_stream(config_maps, move |config_map| {
            naming_override(&by_override, &config_map)
        })
        .reconcile_on(news)
}

/// The objects whose proxies sit behind the Service of `slice`.
fn behind_service(
    store: &Store<ModelCostMapSync>,
    slice: &EndpointSlice,
) -> Vec<ObjectRef<ModelCostMapSync>> {
    let (Some(namespace), Some(service)) =
        (slice.namespace(), slice.labels().get(SERVICE_NAME_LABEL))
    else {
        return Vec::new();
    };
    syncs_in(store, &namespace, |sync| {
        sync.spec
            .consumers
            .litellm_proxies
            .iter()
            .any(|proxy| proxy.service.as_ref().is_some_and(|s| &s.name == service))
    })
}

/// The objects whose overrides name the ConfigMap `config_map`.
fn naming_override<K: kube::Resource>(
    store: &Store<ModelCostMapSync>,
    config_map: &K,
) -> Vec<ObjectRef<ModelCostMapSync>> {
    let (Some(namespace), name) = (config_map.namespace(), config_map.name_any()) else {
        return Vec::new();
    };
    syncs_in(store, &namespace, |sync| {
        sync.spec
            .overrides
            .config_map_refs
            .iter()
            .any(|reference| reference.name == name)
    })
}

/// The objects of `namespace` that `wants`.
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
