//! The operator's own addresses, which no source or consumer URL may lead to (they serve
//! every namespace's maps): the pod's, from the downward API (`POD_IP`, `POD_IPS`), and
//! the cluster IPs of its Service (`run --service-name`), read again every minute so a
//! Service created after the pod, or recreated with another IP, is covered.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::apiserver::api_error_message;
use crate::sync::fetch::address::{OwnAddresses, pod_addresses_from_env};

/// How often the Service is read again.
const REFRESH: Duration = Duration::from_secs(60);

/// The pod's addresses now; [`OwnService`] adds the Service's.
pub fn from_env() -> OwnAddresses {
    OwnAddresses::of(pod_addresses_from_env())
}

/// The operator's own Service, read now and then.
pub struct OwnService {
    services: Api<Service>,
    name: String,
    pod: Vec<IpAddr>,
}

impl OwnService {
    /// The Service `name` in `namespace`.
    pub fn new(client: Client, namespace: &str, name: String) -> OwnService {
        OwnService {
            services: Api::namespaced(client, namespace),
            name,
            pod: pod_addresses_from_env(),
        }
    }

    /// Sets `own` to the pod's addresses plus the Service's cluster IPs; on an error keeps
    /// what was learnt before (a Service rarely changes its IPs).
    pub async fn refresh(&self, own: &OwnAddresses) {
        match self.services.get_opt(&self.name).await {
            Ok(service) => {
                if service.is_none() {
                    warn!(service = %self.name, "the operator's own Service is not found");
                }
                let mut addresses = self.pod.clone();
                addresses.extend(service.as_ref().map(cluster_ips).unwrap_or_default());
                addresses.sort();
                addresses.dedup();
                own.set(addresses);
            }
            Err(err) => warn!(
                service = %self.name,
                error = %api_error_message(&err),
                "cannot read the operator's own Service"
            ),
        }
    }

    /// [`Self::refresh`] every minute until `stop`.
    pub async fn keep(self, own: OwnAddresses, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REFRESH) => {}
            }
            self.refresh(&own).await;
        }
    }
}

fn cluster_ips(service: &Service) -> Vec<IpAddr> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    spec.cluster_ips
        .iter()
        .flatten()
        .chain(&spec.cluster_ip)
        .chain(spec.external_ips.iter().flatten())
        .filter_map(|ip| ip.parse().ok())
        .collect()
}
