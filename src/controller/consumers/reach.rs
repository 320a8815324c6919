//! Where a proxy URL may lead, decided before anything is sent: into the object's own
//! namespace (a Service DNS name there, or an address of one of its Services or ready
//! endpoints), unless `--allow-consumer-cidr` covers the address; and whatever the name,
//! every address it resolves to passes the address policy (the proxy client's resolver),
//! since an ExternalName Service can point anywhere.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use url::{Host, Url};

use super::Consumers;
use crate::apiserver::api_error_message;
use crate::litellm::refused_message;
use crate::sync::fetch::address::url_ip;
use crate::sync::fetch::sanitize_url;

/// A proxy URL as a tenant wrote it, checked.
pub(super) struct Checked {
    /// What status and logs show: no userinfo, no query.
    pub(super) shown: String,
    /// What is requested (a Service's short name made fully qualified), or why nothing is.
    pub(super) request: Result<String, String>,
}

/// How a host name names a Service: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.<domain>`.
/// Returns the Service and its namespace (`namespace` when the name has none), or None
/// when the name is not a Service DNS name of this cluster.
pub(super) fn service_name<'h>(
    host: &'h str,
    namespace: &'h str,
    cluster_domain: &str,
) -> Option<(&'h str, &'h str)> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let labels: Vec<&str> = host.split('.').collect();
    let domain = cluster_domain.trim_matches('.');
    match labels.as_slice() {
        [svc] => Some((*svc, namespace)),
        [svc, ns] | [svc, ns, "svc"] => Some((*svc, *ns)),
        [svc, ns, "svc", rest @ ..] if rest.join(".").eq_ignore_ascii_case(domain) => {
            Some((*svc, *ns))
        }
        _ => None,
    }
    .filter(|(svc, ns)| !svc.is_empty() && !ns.is_empty())
}

impl Consumers<'_> {
    /// Checks a proxy `url` of the spec; see the module's comment.
    pub(super) async fn check_url(&self, url: &str) -> Checked {
        let Ok(parsed) = Url::parse(url.trim()) else {
            return Checked {
                shown: "<invalid URL>".to_owned(),
                request: Err("the proxy URL is not a valid URL".to_owned()),
            };
        };
        // As written when there is nothing to hide: status keeps the spec's spelling.
        let hides_nothing = parsed.username().is_empty()
            && parsed.password().is_none()
            && parsed.query().is_none()
            && parsed.fragment().is_none();
        let shown = if hides_nothing {
            url.trim().to_owned()
        } else {
            sanitize_url(&parsed)
        };
        let request = self.request_url(parsed).await;
        Checked { shown, request }
    }

    async fn request_url(&self, mut url: Url) -> Result<String, String> {
        let addresses = self.context.proxies.addresses();
        if let Some(ip) = url_ip(&url) {
            addresses
                .check_url(&url)
                .map_err(|blocked| refused_message(&blocked))?;
            if addresses.allows_explicitly(ip) || self.namespace_addresses().await.contains(&ip) {
                return Ok(url.to_string());
            }
            return Err(format!(
                "refused, nothing was sent: {ip} is no address of a Service or ready endpoint in \
                 namespace {}; name a Service of this namespace (or the operator's \
                 --allow-consumer-cidr can allow the address)",
                self.namespace
            ));
        }
        let Some(Host::Domain(host)) = url.host() else {
            return Err("the proxy URL has no host".to_owned());
        };
        let host = host.to_ascii_lowercase();
        let cluster_domain = self.context.proxies.cluster_domain();
        match service_name(&host, self.namespace, cluster_domain) {
            Some((svc, ns)) if ns == self.namespace => {
                // Fully qualified: a short name would resolve in the operator's namespace.
                let full = format!("{svc}.{ns}.svc.{}", cluster_domain.trim_matches('.'));
                url.set_host(Some(&full))
                    .map_err(|_| "the proxy URL's host cannot be used".to_owned())?;
                Ok(url.to_string())
            }
            Some((_, ns)) => Err(format!(
                "refused, nothing was sent: {host} names a Service in namespace {ns}; a proxy \
                 must be in the object's own namespace, {}",
                self.namespace
            )),
            None if self
                .allowed_by_name(&host, url.port_or_known_default())
                .await =>
            {
                Ok(url.to_string())
            }
            None => Err(format!(
                "refused, nothing was sent: {host} is not a Service of namespace {}; name one \
                 as <service>, <service>.{0} or <service>.{0}.svc.{cluster_domain} (a proxy \
                 elsewhere needs its addresses allowed by the operator's --allow-consumer-cidr)",
                self.namespace
            )),
        }
    }

    /// Whether every address of a name outside the cluster is allowed by CIDR (and so may
    /// be reached); the proxy client's resolver still applies the policy when connecting.
    async fn allowed_by_name(&self, host: &str, port: Option<u16>) -> bool {
        let addresses = self.context.proxies.addresses();
        if !addresses.has_allow_list() {
            return false;
        }
        match tokio::net::lookup_host((host, port.unwrap_or(80))).await {
            Ok(found) => {
                let found: Vec<IpAddr> = found.map(|a| a.ip()).collect();
                !found.is_empty()
                    && found
                        .iter()
                        .all(|ip| addresses.allows_explicitly(*ip) && addresses.permits(*ip))
            }
            Err(_) => false,
        }
    }

    /// The cluster IPs of the namespace's Services and the addresses of its ready endpoints.
    async fn namespace_addresses(&self) -> Vec<IpAddr> {
        let client = self.context.client.clone();
        let mut found = Vec::new();
        let services: Api<Service> = Api::namespaced(client.clone(), self.namespace);
        match services.list(&ListParams::default()).await {
            Ok(list) => found.extend(
                list.items
                    .iter()
                    .filter_map(|s| s.spec.as_ref())
                    .flat_map(|spec| spec.cluster_ips.iter().flatten().chain(&spec.cluster_ip))
                    .filter_map(|ip| ip.parse::<IpAddr>().ok()),
            ),
            Err(err) => {
                tracing::warn!(error = %api_error_message(&err), "cannot list Services");
            }
        }
        let slices: Api<EndpointSlice> = Api::namespaced(client, self.namespace);
        match slices.list(&ListParams::default()).await {
            Ok(list) => found.extend(
                list.items
                    .iter()
                    .flat_map(|slice| &slice.endpoints)
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                    .flat_map(|e| &e.addresses)
                    .filter_map(|ip| ip.parse::<IpAddr>().ok()),
            ),
            Err(err) => {
                tracing::warn!(error = %api_error_message(&err), "cannot list EndpointSlices");
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_dns_names_are_read_with_their_namespace() {
        let domain = "cluster.local";
        for (host, expected) in [
            ("litellm", Some(("litellm", "team-a"))),
            ("litellm.team-a", Some(("litellm", "team-a"))),
            ("litellm.team-b", Some(("litellm", "team-b"))),
            ("litellm.team-a.svc", Some(("litellm", "team-a"))),
            (
                "litellm.team-a.svc.cluster.local",
                Some(("litellm", "team-a")),
            ),
            (
                "litellm.team-a.svc.cluster.local.",
                Some(("litellm", "team-a")),
            ),
            (
                "litellm.team-b.svc.cluster.local",
                Some(("litellm", "team-b")),
            ),
            ("litellm.team-a.svc.evil.example", None),
            ("litellm.team-a.pod.cluster.local", None),
            ("proxy.example.com", None),
            (".team-a", None),
        ] {
            assert_eq!(service_name(host, "team-a", domain), expected, "{host}");
        }
    }
}
