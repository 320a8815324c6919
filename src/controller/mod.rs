//! The controller: the only writer to the Kubernetes API (ConfigMaps, status, Events,
//! workloads to restart).
//!
//! Both kinds run one sync core ([`core`]): read the cluster, decide, sync once, write
//! status. What differs between them is where the map goes, a [`core::Destination`]: one
//! target in the object's namespace for a ModelCostMapSync ([`namespaced`]), a copy in
//! each selected namespace for a ClusterModelCostMapSync ([`cluster`]). Around the core:
//! [`context`] (what every reconcile shares), [`object`] (either kind as the core sees
//! it), [`config_maps`] (reading and writing the ConfigMaps the operator owns),
//! [`prepared`] (new maps judged once for every object), [`status`] and [`conditions`]
//! (status as a pure function of what happened), [`consumers`] (proxies and workloads),
//! [`memory`] (what is kept between reconciles) and [`runner`] (what both controllers share
//! around kube's `Controller`). This module only starts them.

mod cluster;
mod conditions;
mod config_maps;
mod consumers;
mod context;
mod core;
mod memory;
mod namespaced;
mod object;
mod prepared;
mod runner;
mod status;

use std::sync::Arc;

use kube::Client;
use tokio_util::sync::CancellationToken;

pub use crate::apiserver::FIELD_MANAGER;
pub use context::{Context, Error, Settings};

use crate::sync::fetch::Fetcher;

/// Runs the controllers of both kinds until `stop` is cancelled; in-flight reconciles
/// finish first. ModelCostMapSyncs are reconciled in `settings.namespaces` (all when
/// empty); ClusterModelCostMapSyncs write into any namespace, so only an operator that
/// watches them all (and has the ClusterRole for it) reconciles them.
pub async fn run(client: Client, fetcher: Fetcher, settings: Settings, stop: CancellationToken) {
    let namespaces = settings.namespaces.clone();
    let context = Arc::new(Context::new(client.clone(), fetcher, settings));
    let namespaced = namespaced::run(&client, &namespaces, context.clone(), stop.clone());
    if namespaces.is_empty() {
        let cluster_wide = cluster::run(client.clone(), context, stop);
        futures::join!(namespaced, cluster_wide);
    } else {
        namespaced.await;
    }
}
