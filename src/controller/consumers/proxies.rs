//! The proxies a spec names, one by one: found (a URL, or each ready pod behind a Service),
//! asked which map they serve, reloaded as the mode says, and asked which deployments
//! nothing prices.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use tracing::{debug, info, warn};

use super::state::{self, Checked, Mode};
use super::{Consumers, SERVICE_NAME_LABEL};
use crate::api::{ConsumerStatus, LitellmProxy, SecretKeySelector};
use crate::apiserver::api_error_message;
use crate::litellm::{AdminKey, Deployment, RELOAD_PATH, ReloadOutcome, endpoint};
use crate::sync::SecretError;

/// What checking one proxy found.
pub(super) struct ProxyCheck {
    pub(super) row: ConsumerStatus,
    /// Its costmap_reload callback's poll period, when it reloads by itself.
    pub(super) self_reload: Option<Duration>,
    /// Input and output price per token of each of its deployments.
    pub(super) prices: BTreeMap<String, (Option<f64>, Option<f64>)>,
    /// Its deployments, when it listed them: judged for repricing once every proxy is
    /// checked.
    pub(super) deployments: Option<Vec<Deployment>>,
}

impl ProxyCheck {
    pub(super) fn of(row: ConsumerStatus) -> ProxyCheck {
        ProxyCheck {
            row,
            self_reload: None,
            prices: BTreeMap::new(),
            deployments: None,
        }
    }

    /// Records which deployments nothing prices (at most [`state::MAX_UNPRICED_MODELS`]
    /// names) and what the others cost.
    pub(super) fn priced_by(&mut self, deployments: Vec<Deployment>) {
        let unpriced: BTreeSet<&str> = deployments
            .iter()
            .filter(|d| d.is_unpriced())
            .map(|d| d.model_name.as_str())
            .collect();
        self.row.unpriced_models = Some(
            unpriced
                .into_iter()
                .take(state::MAX_UNPRICED_MODELS)
                .map(str::to_owned)
                .collect(),
        );
        self.prices = deployments
            .iter()
            .map(|d| (d.model_name.clone(), d.token_prices()))
            .collect();
        self.deployments = Some(deployments);
    }
}

/// One proxy to reach.
pub(super) struct ProxyTarget {
    /// As status and logs show it: no userinfo, no query.
    pub(super) url: String,
    /// What is requested, or why nothing may be.
    pub(super) request: Result<String, String>,
    pub(super) pod: Option<String>,
    pub(super) admin_key: Result<Option<AdminKey>, SecretError>,
}

impl Consumers<'_> {
    /// [`Self::check_proxy`] for each of `group`, at once.
    pub(super) async fn check_group(
        &self,
        group: &[ProxyTarget],
        mode: Mode,
        expected: &str,
        previous: &[ConsumerStatus],
    ) -> Vec<ProxyCheck> {
        join_all(group.iter().map(|target| {
            let before = previous.iter().find(|row| row.url == target.url);
            self.check_proxy(target, mode, expected, before)
        }))
        .await
    }

    /// Every proxy the spec names: URLs as given, and each ready endpoint behind a Service.
    pub(super) async fn proxy_targets(&self) -> Vec<ProxyTarget> {
        let mut targets = Vec::new();
        for proxy in &self.object.spec.consumers.litellm_proxies {
            let admin_key = self.admin_key(&proxy.admin_key_secret_ref).await;
            if let Some(url) = &proxy.url {
                let checked = self.check_url(url).await;
                targets.push(ProxyTarget {
                    url: checked.shown,
                    request: checked.request,
                    pod: None,
                    admin_key,
                });
                continue;
            }
            for (url, pod) in self.proxy_urls(proxy).await {
                // Endpoint addresses pass the address policy in the proxy client: a tenant
                // may write an EndpointSlice by hand.
                targets.push(ProxyTarget {
                    request: Ok(url.clone()),
                    url,
                    pod,
                    admin_key: admin_key.clone(),
                });
            }
        }
        targets
    }

    /// Each ready endpoint behind the Service a proxy names, with its pod.
    pub(super) async fn proxy_urls(&self, proxy: &LitellmProxy) -> Vec<(String, Option<String>)> {
        let Some(service) = &proxy.service else {
            return Vec::new();
        };
        let slices: Api<EndpointSlice> =
            Api::namespaced(self.context.client.clone(), self.namespace);
        let selector =
            ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={}", service.name));
        let slices = match slices.list(&selector).await {
            Ok(list) => list.items,
            Err(err) => {
                warn!(service = %service.name, error = %api_error_message(&err), "cannot list EndpointSlices");
                return Vec::new();
            }
        };
        let mut urls: Vec<(String, Option<String>)> = slices
            .iter()
            .flat_map(|slice| &slice.endpoints)
            // Kubernetes says: a nil ready condition means ready.
            .filter(|endpoint| endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .flat_map(|endpoint| {
                let pod = endpoint.target_ref.as_ref().and_then(|r| r.name.clone());
                endpoint.addresses.iter().map(move |address| {
                    let host = if address.contains(':') {
                        format!("[{address}]")
                    } else {
                        address.clone()
                    };
                    (format!("http://{host}:{}", service.port), pod.clone())
                })
            })
            .collect();
        urls.sort();
        urls.dedup();
        urls
    }

    /// The admin key from its Secret; the error names the Secret, never a value.
    pub(super) async fn admin_key(
        &self,
        selector: &SecretKeySelector,
    ) -> Result<Option<AdminKey>, SecretError> {
        let secret = self
            .context
            .secret(self.namespace, &selector.name, "admin key")
            .await?;
        let value = secret
            .data
            .as_ref()
            .and_then(|data| data.get(&selector.key))
            .ok_or_else(|| SecretError::MissingKey {
                name: selector.name.clone(),
                key: selector.key.clone(),
            })?;
        let not_a_key = || SecretError::NotAHeaderValue {
            name: selector.name.clone(),
            key: selector.key.clone(),
        };
        let text = std::str::from_utf8(&value.0).map_err(|_| not_a_key())?;
        AdminKey::new(text).map_err(|_| not_a_key())
    }

    /// Asks, reloads and asks again one proxy as `mode` says ([`state`] decides), then asks
    /// which of its deployments nothing prices.
    pub(super) async fn check_proxy(
        &self,
        target: &ProxyTarget,
        mode: Mode,
        expected: &str,
        previous: Option<&ConsumerStatus>,
    ) -> ProxyCheck {
        let unasked = |why: String| {
            ProxyCheck::of(state::unasked(
                &target.url,
                target.pod.as_deref(),
                self.now,
                why,
            ))
        };
        let url = match &target.request {
            Ok(url) => url.as_str(),
            Err(why) => {
                warn!(url = %target.url, reason = %why, "the proxy URL is refused");
                return unasked(why.clone());
            }
        };
        if let Err(blocked) = self.context.proxies.check_address(url) {
            return unasked(crate::litellm::refused_message(&blocked));
        }
        let admin_key = match &target.admin_key {
            Ok(key) => key.as_ref(),
            Err(err) => return unasked(err.to_string()),
        };
        let proxies = &self.context.proxies;
        let mut answer = match mode.asks_first() {
            true => Some(proxies.source(url, admin_key).await),
            false => None,
        };
        let mut reloaded = None;
        if mode.reloads(answer.as_ref(), expected) {
            let mut outcome = proxies.reload(&endpoint(url, RELOAD_PATH), admin_key).await;
            if outcome == ReloadOutcome::NoDatabase
                && let Ok(Some(period)) = proxies.self_reload_period(url, admin_key).await
            {
                outcome = ReloadOutcome::ReloadsItself(period);
            }
            info!(url = %target.url, %outcome, "asked the proxy to reload");
            reloaded = Some(outcome);
            answer = None;
        }
        let answer = match answer {
            Some(answer) => answer,
            None => proxies.source(url, admin_key).await,
        };
        let answered = answer.is_ok();
        let mut check = ProxyCheck::of(state::row(Checked {
            url: &target.url,
            pod: target.pod.as_deref(),
            now: self.now,
            expected,
            answer,
            reloaded: reloaded.as_ref(),
            previous,
        }));
        if let Some(ReloadOutcome::ReloadsItself(period)) = reloaded {
            check.self_reload = Some(period);
        }
        if answered {
            match proxies.deployments(url, admin_key).await {
                Ok(deployments) => check.priced_by(deployments),
                // ModelsPriced says so when no proxy answers; one that does not is no news.
                Err(message) => {
                    debug!(url = %target.url, error = %message, "cannot list the proxy's deployments")
                }
            }
        }
        check
    }
}
