//! The ClusterModelCostMapSync controller: the core run with a copy of the ConfigMap in
//! every namespace the selector picks ([`copies`]); which namespaces get a write, which
//! hold the map, which fail and what status says of them is [`selection`], pure.
//!
//! What reconciles an object besides its own changes: Namespaces (a namespace that appears
//! or changes labels reconciles the objects that now pick it or picked it before), the
//! ConfigMaps it owns (a deleted or edited copy is put back without a fetch), and news of
//! a shared source.

mod copies;
mod selection;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ListParams;
use kube::core::{PartialObjectMeta, Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info_span, warn};

use super::context::{Context, Error};
use super::memory::ObjectKey;
use super::object::Object;
use super::runner;
use crate::api::{ClusterModelCostMapSync, MapSync, SpecError};
use crate::apiserver::whole_seconds_now;
use crate::metrics::ObjectScope;
use copies::NamespaceCopies;

/// Runs the ClusterModelCostMapSync controller until `stop`, if the CRD is installed (an
/// operator upgraded without applying the new CRD keeps running the namespaced kind).
pub(super) async fn run(client: Client, context: Arc<Context>, stop: CancellationToken) {
    let api = Api::<ClusterModelCostMapSync>::all(client.clone());
    if let Err(err) = api.list_metadata(&ListParams::default().limit(1)).await {
        warn!(error = %err, "ClusterModelCostMapSync objects are not reconciled: listing them failed (is crds/clustermodelcostmapsync.yaml applied?)");
        return;
    }
    let controller = Controller::new(api, watcher::Config::default());
    let store = controller.store();
    let by_namespace = {
        let (store, context) = (store.clone(), context.clone());
        move |namespace: PartialObjectMeta<Namespace>| affected(&store, &context, &namespace)
    };
    let namespaces = watcher::watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    )
    .touched_objects();
    // The copies' metadata: a change reconciles the owner, and the store tells a reconcile
    // whether a copy is as it was written.
    let (watched, writer) = reflector::store();
    context.config_maps.watch(watched);
    let copies = reflector(
        writer,
        watcher::watcher(
            Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
            crate::watch::published_maps(),
        )
        .modify(|meta| meta.managed_fields_mut().clear()),
    )
    .touched_objects();
    let by_config_map = {
        let store = store.clone();
        move |config_map: PartialObjectMeta<ConfigMap>| concerned(&store, &config_map)
    };
    // Another object fetched a new map from a source this one follows: sync now.
    let news = runner::news_of_sources(store.clone(), context.sources.subscribe());
    let forgetting = tokio::spawn(runner::forget_deleted(
        vec![store],
        context.clone(),
        ObjectScope::Cluster,
    ));
    let controller = controller
        .trigger_backoff(crate::watch::Backoff::default())
        .watches_stream(namespaces, by_namespace)
        // Not `owns`: kube gives the owner of a namespaced child the child's namespace,
        // which a cluster-scoped owner does not have.
        .watches_stream(copies, by_config_map)
        .reconcile_on(news);
    runner::run(controller, reconcile, context, stop.cancelled_owned()).await;
    forgetting.abort();
}

async fn reconcile(
    sync: Arc<ClusterModelCostMapSync>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    let span = info_span!("reconcile", clustermodelcostmapsync = %sync.name_any());
    let object = Object::of(sync.as_ref())?;
    let copies = NamespaceCopies::new(&sync, object.key.clone(), &context, whole_seconds_now())?;
    runner::reconcile_core(object, &context, copies, span).await
}

/// The objects a namespace event concerns: those whose selector picks the namespace now,
/// and those that picked it at their last reconcile (it may have lost the labels).
fn affected(
    store: &Store<ClusterModelCostMapSync>,
    context: &Context,
    namespace: &PartialObjectMeta<Namespace>,
) -> Vec<ObjectRef<ClusterModelCostMapSync>> {
    let name = namespace.name_any();
    let labels = namespace.labels();
    store
        .state()
        .iter()
        .filter(|sync| {
            let picks = selector(sync).is_ok_and(|selector| selector.matches(labels));
            let picked = sync.uid().is_some_and(|uid| {
                let key = ObjectKey {
                    kind: ClusterModelCostMapSync::KIND,
                    uid,
                };
                context
                    .memory
                    .read(&key, |m| m.selected.contains(&name))
                    .unwrap_or(false)
            });
            picks || picked
        })
        .map(|sync| ObjectRef::from_obj(sync.as_ref()))
        .collect()
}

/// The objects a managed ConfigMap concerns: the one that controls it (a copy deleted or
/// edited), and those whose target has its name (someone else's ConfigMap of that name
/// went away, or appeared).
fn concerned(
    store: &Store<ClusterModelCostMapSync>,
    config_map: &PartialObjectMeta<ConfigMap>,
) -> Vec<ObjectRef<ClusterModelCostMapSync>> {
    let name = config_map.name_any();
    let owner = config_map
        .owner_references()
        .iter()
        .find(|owner| is_cluster_owner(owner))
        .map(|owner| owner.name.as_str());
    store
        .state()
        .iter()
        .filter(|sync| owner == Some(sync.name_any().as_str()) || sync.config_map_name() == name)
        .map(|sync| ObjectRef::from_obj(sync.as_ref()))
        .collect()
}

fn is_cluster_owner(owner: &OwnerReference) -> bool {
    owner.controller == Some(true)
        && owner.kind == ClusterModelCostMapSync::kind(&())
        && owner.api_version == ClusterModelCostMapSync::api_version(&())
}

fn selector(sync: &ClusterModelCostMapSync) -> Result<Selector, SpecError> {
    Selector::try_from(sync.spec.namespace_selector.clone()).map_err(|err| SpecError {
        field: "namespaceSelector",
        reason: err.to_string(),
    })
}
