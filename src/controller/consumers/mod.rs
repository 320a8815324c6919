//! Reaching the consumers of the map: LiteLLM proxies are reloaded and asked which map they
//! serve (`status.consumers`, condition `ConsumersCurrent`); workloads listed under
//! `restartWorkloads` get the digest in their pod template, which rolls their pods.

mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{debug, info, warn};

pub(super) use state::Mode;

use super::conditions;
use super::context::Context;
use super::object::Object;
use super::status::Notice;
use crate::api::{
    ConditionType, ConsumerState, ConsumerStatus, EventReason, LitellmProxy,
    ModelCostMapSyncStatus, SecretKeySelector, WorkloadKind,
};
use crate::apiserver::api_error_message;
use crate::http::map_cache::MapKey;
use crate::litellm::{AdminKey, RELOAD_PATH, ReloadOutcome, endpoint};
use crate::sync::SecretError;
use state::{Checked, recheck_after};

/// The pod template annotation that rolls a workload when the map changes.
pub const DIGEST_TEMPLATE_ANNOTATION: &str = "costmap.dev/digest";
/// The label EndpointSlices carry naming their Service.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// How long a new map may take to reach this replica's endpoint (through its ConfigMap
/// watch) before the proxies are told to reload anyway.
const SERVED_WAIT: Duration = Duration::from_secs(10);

/// How long after a self-reloading proxy's poll period it is looked at again.
const SELF_RELOAD_MARGIN: Duration = Duration::from_secs(2);

/// What checking one proxy found.
struct ProxyCheck {
    row: ConsumerStatus,
    /// Its costmap_reload callback's poll period, when it reloads by itself.
    self_reload: Option<Duration>,
    /// Input and output price per token of each of its deployments.
    prices: BTreeMap<String, (Option<f64>, Option<f64>)>,
}

impl ProxyCheck {
    fn of(row: ConsumerStatus) -> ProxyCheck {
        ProxyCheck {
            row,
            self_reload: None,
            prices: BTreeMap::new(),
        }
    }

    /// Records which deployments nothing prices (at most [`state::MAX_UNPRICED_MODELS`]
    /// names) and what the others cost.
    fn priced_by(&mut self, deployments: &[crate::litellm::Deployment]) {
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
    }
}

/// A price per token as Events print it: 1.25e-6, or "-" when there is none.
fn price_text(price: Option<f64>) -> String {
    price.map_or("-".to_owned(), |p| format!("{p:e}"))
}

/// One proxy to reach.
struct ProxyTarget {
    url: String,
    pod: Option<String>,
    admin_key: Result<Option<AdminKey>, SecretError>,
}

/// The consumers of one object's map, as one reconcile reaches them.
pub(super) struct Consumers<'a> {
    object: &'a Object<'a>,
    /// Proxies and workloads are in the object's namespace; a cluster object has none (its
    /// spec cannot name any).
    namespace: &'a str,
    context: &'a Context,
    now: Timestamp,
}

impl<'a> Consumers<'a> {
    /// The consumers of `object`; none for a cluster object.
    pub(super) fn of(object: &'a Object<'a>, context: &'a Context, now: Timestamp) -> Option<Self> {
        Some(Consumers {
            namespace: object.namespace.as_deref()?,
            object,
            context,
            now,
        })
    }

    /// After a sync attempt: tells the consumers and records what the proxies serve in
    /// `status`. Returns when the proxies should be checked again, if some are not Current.
    pub(super) async fn reach(
        &self,
        status: &mut ModelCostMapSyncStatus,
        mode: Mode,
    ) -> Option<Duration> {
        self.reach_known(status, mode, None).await
    }

    /// [`Self::reach`], with the proxies already found when `known`.
    async fn reach_known(
        &self,
        status: &mut ModelCostMapSyncStatus,
        mode: Mode,
        known: Option<Vec<ProxyTarget>>,
    ) -> Option<Duration> {
        let digest = status.artifact.as_ref()?.digest.clone();
        self.restart_workloads(&digest).await;
        if self.object.spec.consumers.litellm_proxies.is_empty() {
            status.consumers.clear();
            conditions::remove_condition(&mut status.conditions, ConditionType::ConsumersCurrent);
            conditions::remove_condition(&mut status.conditions, ConditionType::ModelsPriced);
            return None;
        }
        if mode == Mode::Skip {
            return None;
        }
        let expected = status.artifact.as_ref()?.git_blob_id.clone();
        if mode == Mode::ReloadAll {
            self.wait_until_served(&digest).await;
        }
        let mut targets = match known {
            Some(targets) => targets,
            None => self.proxy_targets().await,
        };
        targets.sort_by(|a, b| a.url.cmp(&b.url));
        let previous = std::mem::take(&mut status.consumers);
        // Canaries first (the first in URL order); the others are reloaded only when every
        // canary verifies, and else only asked.
        let canaries = usize::try_from(self.object.spec.consumers.rollout.canary)
            .unwrap_or(0)
            .min(targets.len());
        let reloading = matches!(mode, Mode::ReloadAll | Mode::ReloadStale);
        let (first, rest) = if reloading && canaries > 0 && canaries < targets.len() {
            targets.split_at(canaries)
        } else {
            targets.split_at(targets.len())
        };
        let mut checks = self.check_group(first, mode, &expected, &previous).await;
        let canary_failure = if rest.is_empty() {
            None
        } else {
            let failures: Vec<String> = checks
                .iter()
                .filter_map(|check| {
                    let before = previous.iter().find(|row| row.url == check.row.url);
                    state::canary_failure(&check.row, before)
                })
                .collect();
            let rest_mode = if failures.is_empty() {
                mode
            } else {
                Mode::Verify
            };
            if !failures.is_empty() {
                warn!(failures = %failures.join("; "), "the canary did not verify; the other proxies are not reloaded");
            }
            checks.extend(
                self.check_group(rest, rest_mode, &expected, &previous)
                    .await,
            );
            (!failures.is_empty()).then(|| failures.join("; "))
        };
        let self_reload = checks.iter().filter_map(|check| check.self_reload).min();
        let prices: BTreeMap<String, (Option<f64>, Option<f64>)> = checks
            .iter()
            .flat_map(|check| check.prices.clone())
            .collect();
        status.consumers = checks.into_iter().map(|check| check.row).collect();
        let per_state = ConsumerState::ALL.map(|state| {
            let count = status.consumers.iter().filter(|r| r.state == state).count();
            (state.as_str(), i64::try_from(count).unwrap_or(i64::MAX))
        });
        self.context
            .metrics
            .record_consumers(&self.object.labels(), &per_state);
        self.report_pricing(status, &previous, &prices).await;
        let all_current = status
            .consumers
            .iter()
            .all(|row| row.state == ConsumerState::Current);
        conditions::set_condition(
            &mut status.conditions,
            state::condition(
                &status.consumers,
                &expected,
                canary_failure.as_deref(),
                self.object.generation,
                self.now,
            ),
        );
        let mut checks_so_far = 0;
        self.context.memory.update(&self.object.key, |m| {
            m.consumer_checks = if mode == Mode::ReloadAll {
                0
            } else {
                m.consumer_checks + 1
            };
            checks_so_far = m.consumer_checks;
        });
        // A proxy that loads maps by itself is looked at again just after its next poll.
        let self_reload = self_reload.map(|period| period + SELF_RELOAD_MARGIN);
        (!all_current).then(|| {
            let recheck = recheck_after(checks_so_far);
            self_reload.map_or(recheck, |soon| soon.min(recheck))
        })
    }

    /// [`Self::check_proxy`] for each of `group`, at once.
    async fn check_group(
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

    /// ModelsPriced, the unpriced-deployments metric, and an Event when the set of unpriced
    /// models grows (Warning) or a model in it becomes priced (Normal).
    async fn report_pricing(
        &self,
        status: &mut ModelCostMapSyncStatus,
        previous: &[ConsumerStatus],
        prices: &BTreeMap<String, (Option<f64>, Option<f64>)>,
    ) {
        conditions::set_condition(
            &mut status.conditions,
            state::priced_condition(&status.consumers, self.object.generation, self.now),
        );
        let unpriced = state::unpriced_models(&status.consumers).len();
        let count = i64::try_from(unpriced).unwrap_or(i64::MAX);
        self.context
            .metrics
            .record_unpriced(&self.object.labels(), count);
        let (grown, priced_now) = state::pricing_changes(previous, &status.consumers);
        if !grown.is_empty() {
            warn!(models = %grown.join(", "), "proxies route models nothing prices");
            self.record(Notice {
                type_: EventType::Warning,
                reason: EventReason::ModelsUnpriced,
                note: format!(
                    "the proxies route models that nothing prices (billed at $0): {}",
                    grown.join(", ")
                ),
            })
            .await;
        }
        let priced_now: Vec<String> = priced_now
            .into_iter()
            .map(|model| {
                let (input, output) = prices.get(&model).copied().unwrap_or_default();
                format!(
                    "{model} is now priced: {} / {}",
                    price_text(input),
                    price_text(output)
                )
            })
            .collect();
        if !priced_now.is_empty() {
            info!(models = %priced_now.join("; "), "unpriced models are priced now");
            self.record(Notice {
                type_: EventType::Normal,
                reason: EventReason::ModelPriced,
                note: format!("{} (input / output per token)", priced_now.join("; ")),
            })
            .await;
        }
    }

    /// Between syncs: keeps workloads on the current digest, and checks the proxies again
    /// when some are not Current (with backoff) or the pods behind a Service changed;
    /// records what they serve in `status`. Returns when to check again.
    pub(super) async fn recheck(&self, status: &mut ModelCostMapSyncStatus) -> Option<Duration> {
        let digest = status.artifact.as_ref()?.digest.clone();
        let proxies = &self.object.spec.consumers.litellm_proxies;
        if proxies.is_empty() {
            // Also clears what an earlier spec with proxies left in status.
            return self.reach(status, Mode::Skip).await;
        }
        let targets = self.proxy_targets().await;
        let same_proxies = targets.len() == status.consumers.len()
            && targets
                .iter()
                .all(|target| status.consumers.iter().any(|row| row.url == target.url));
        let oldest_unfinished = status
            .consumers
            .iter()
            .filter(|row| row.state != ConsumerState::Current)
            .map(|row| row.checked_at.0)
            .min();
        if same_proxies {
            let Some(checked_at) = oldest_unfinished else {
                self.restart_workloads(&digest).await;
                return None;
            };
            let checks = self
                .context
                .memory
                .read(&self.object.key, |m| m.consumer_checks)
                .unwrap_or(0);
            let due = checked_at
                + SignedDuration::try_from(recheck_after(checks)).unwrap_or(SignedDuration::MAX);
            let remaining = self.now.duration_until(due);
            if remaining > SignedDuration::ZERO {
                return Some(remaining.unsigned_abs());
            }
        }
        self.reach_known(status, Mode::ReloadStale, Some(targets))
            .await
    }

    /// Waits (briefly) until this replica's endpoint serves the map with `digest`: a proxy
    /// told to reload before that would fetch the old map again.
    async fn wait_until_served(&self, digest: &str) {
        let key = MapKey {
            namespace: self.namespace.to_owned(),
            name: self.object.name.clone(),
            key: self.object.spec.key().to_owned(),
        };
        if !self.context.maps.wait_for(&key, digest, SERVED_WAIT).await {
            warn!(
                timeout = ?SERVED_WAIT,
                "this replica does not serve the new map yet; reloading the proxies anyway \
                 (those left behind are reloaded again at the next check)"
            );
        }
    }

    /// Every proxy the spec names: URLs as given, and each ready endpoint behind a Service.
    async fn proxy_targets(&self) -> Vec<ProxyTarget> {
        let mut targets = Vec::new();
        for proxy in &self.object.spec.consumers.litellm_proxies {
            let admin_key = self.admin_key(&proxy.admin_key_secret_ref).await;
            for (url, pod) in self.proxy_urls(proxy).await {
                targets.push(ProxyTarget {
                    url,
                    pod,
                    admin_key: admin_key.clone(),
                });
            }
        }
        targets
    }

    async fn proxy_urls(&self, proxy: &LitellmProxy) -> Vec<(String, Option<String>)> {
        if let Some(url) = &proxy.url {
            return vec![(url.clone(), None)];
        }
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
    async fn admin_key(
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
    async fn check_proxy(
        &self,
        target: &ProxyTarget,
        mode: Mode,
        expected: &str,
        previous: Option<&ConsumerStatus>,
    ) -> ProxyCheck {
        let admin_key = match &target.admin_key {
            Ok(key) => key.as_ref(),
            Err(err) => {
                let row = state::unasked(
                    &target.url,
                    target.pod.as_deref(),
                    self.now,
                    err.to_string(),
                );
                return ProxyCheck::of(row);
            }
        };
        let proxies = &self.context.proxies;
        let mut answer = match mode.asks_first() {
            true => Some(proxies.source(&target.url, admin_key).await),
            false => None,
        };
        let mut reloaded = None;
        if mode.reloads(answer.as_ref(), expected) {
            let mut outcome = proxies
                .reload(&endpoint(&target.url, RELOAD_PATH), admin_key)
                .await;
            if outcome == ReloadOutcome::NoDatabase
                && let Ok(Some(period)) = proxies.self_reload_period(&target.url, admin_key).await
            {
                outcome = ReloadOutcome::ReloadsItself(period);
            }
            info!(url = %target.url, %outcome, "asked the proxy to reload");
            reloaded = Some(outcome);
            answer = None;
        }
        let answer = match answer {
            Some(answer) => answer,
            None => proxies.source(&target.url, admin_key).await,
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
            match proxies.deployments(&target.url, admin_key).await {
                Ok(deployments) => check.priced_by(&deployments),
                // ModelsPriced says so when no proxy answers; one that does not is no news.
                Err(message) => {
                    debug!(url = %target.url, error = %message, "cannot list the proxy's deployments")
                }
            }
        }
        check
    }

    /// Puts the map's digest in each listed workload's pod template; a workload that already
    /// has it is not touched (no restart).
    async fn restart_workloads(&self, digest: &str) {
        let (mut restarted, mut failed) = (Vec::new(), Vec::new());
        for workload in &self.object.spec.consumers.restart_workloads {
            let result = match workload.kind {
                WorkloadKind::Deployment => {
                    self.annotate_template::<Deployment>(&workload.name, digest, |d| {
                        d.spec.as_ref().map(|s| &s.template)
                    })
                    .await
                }
                WorkloadKind::StatefulSet => {
                    self.annotate_template::<StatefulSet>(&workload.name, digest, |s| {
                        s.spec.as_ref().map(|s| &s.template)
                    })
                    .await
                }
                WorkloadKind::DaemonSet => {
                    self.annotate_template::<DaemonSet>(&workload.name, digest, |d| {
                        d.spec.as_ref().map(|s| &s.template)
                    })
                    .await
                }
            };
            match result {
                Ok(false) => {}
                Ok(true) => {
                    info!(kind = ?workload.kind, name = %workload.name, "rolling restart for the new map");
                    restarted.push(format!("{:?} {}", workload.kind, workload.name));
                }
                Err(message) => {
                    warn!(kind = ?workload.kind, name = %workload.name, error = %message, "cannot restart workload");
                    failed.push(message);
                }
            }
        }
        // One Event each, naming every workload: Events with the same reason merge into one
        // series that keeps the first note.
        if !restarted.is_empty() {
            let note = format!("restarted {} for map {digest}", restarted.join(", "));
            self.record(Notice {
                type_: EventType::Normal,
                reason: EventReason::WorkloadRestarted,
                note,
            })
            .await;
        }
        if !failed.is_empty() {
            self.record(Notice {
                type_: EventType::Warning,
                reason: EventReason::RestartFailed,
                note: failed.join("; "),
            })
            .await;
        }
    }

    /// Sets the digest annotation on a workload's pod template; Ok(true) when it patched.
    async fn annotate_template<K>(
        &self,
        name: &str,
        digest: &str,
        template: impl Fn(&K) -> Option<&PodTemplateSpec>,
    ) -> Result<bool, String>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let api: Api<K> = Api::namespaced(self.context.client.clone(), self.namespace);
        let kind = K::kind(&());
        let workload = api
            .get_opt(name)
            .await
            .map_err(|err| format!("reading {kind} {name}: {}", api_error_message(&err)))?
            .ok_or_else(|| format!("{kind} {name} not found"))?;
        let current = template(&workload)
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(DIGEST_TEMPLATE_ANNOTATION));
        if current.map(String::as_str) == Some(digest) {
            return Ok(false);
        }
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {DIGEST_TEMPLATE_ANNOTATION: digest}}}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|err| format!("patching {kind} {name}: {}", api_error_message(&err)))?;
        Ok(true)
    }

    async fn record(&self, notice: Notice) {
        self.context.record(notice, &self.object.reference).await;
    }
}
