//! Reaching the consumers of the map: LiteLLM proxies are reloaded and asked which map they
//! serve (`status.consumers`, condition `ConsumersCurrent`); workloads listed under
//! `restartWorkloads` get the digest in their pod template, which rolls their pods.

mod state;

use std::fmt::Debug;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::SignedDuration;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

pub(super) use state::Mode;

use super::Error;
use super::reconcile::{Reconciler, api_error_message};
use super::status::Notice;
use crate::api::{
    ConditionType, ConsumerState, ConsumerStatus, EventReason, LitellmProxy, ModelCostMapSync,
    ModelCostMapSyncStatus, SecretKeySelector, WorkloadKind,
};
use crate::controller::conditions;
use crate::http::map_cache::MapKey;
use crate::litellm::{AdminKey, RELOAD_PATH, endpoint};
use crate::sync::SecretError;
use state::{Checked, recheck_after};

/// The pod template annotation that rolls a workload when the map changes.
pub const DIGEST_TEMPLATE_ANNOTATION: &str = "costmap.dev/digest";
/// The label EndpointSlices carry naming their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// How long a new map may take to reach this replica's endpoint (through its ConfigMap
/// watch) before the proxies are told to reload anyway.
const SERVED_WAIT: Duration = Duration::from_secs(10);

/// Maps an EndpointSlice to the ModelCostMapSyncs whose proxies sit behind its Service.
pub(super) struct SyncsByService {
    store: Store<ModelCostMapSync>,
}

impl SyncsByService {
    pub(super) fn new(store: Store<ModelCostMapSync>) -> SyncsByService {
        SyncsByService { store }
    }

    pub(super) fn of(&self, slice: &EndpointSlice) -> Vec<ObjectRef<ModelCostMapSync>> {
        let (Some(namespace), Some(service)) =
            (slice.namespace(), slice.labels().get(SERVICE_NAME_LABEL))
        else {
            return Vec::new();
        };
        super::syncs_in(&self.store, &namespace, |sync| {
            sync.spec
                .consumers
                .litellm_proxies
                .iter()
                .any(|proxy| proxy.service.as_ref().is_some_and(|s| &s.name == service))
        })
    }
}

/// One proxy to reach.
struct ProxyTarget {
    url: String,
    pod: Option<String>,
    admin_key: Result<Option<AdminKey>, SecretError>,
}

impl Reconciler<'_> {
    /// After a sync attempt: tells the consumers and records what the proxies serve in
    /// `status`. Returns when the proxies should be checked again, if some are not Current.
    pub(super) async fn reach_consumers(
        &self,
        status: &mut ModelCostMapSyncStatus,
        mode: Mode,
    ) -> Option<Duration> {
        let digest = status.artifact.as_ref()?.digest.clone();
        self.restart_workloads(&digest).await;
        if self.sync.spec.consumers.litellm_proxies.is_empty() {
            status.consumers.clear();
            conditions::remove_condition(&mut status.conditions, ConditionType::ConsumersCurrent);
            return None;
        }
        if mode == Mode::Skip {
            return None;
        }
        let expected = status.artifact.as_ref()?.git_blob_id.clone();
        if mode == Mode::ReloadAll {
            self.wait_until_served(&digest).await;
        }
        let targets = self.proxy_targets().await;
        let previous = std::mem::take(&mut status.consumers);
        let checks = targets.iter().map(|target| {
            self.check_proxy(
                target,
                mode,
                &expected,
                previous.iter().find(|row| row.url == target.url),
            )
        });
        status.consumers = join_all(checks).await;
        let per_state = ConsumerState::ALL.map(|state| {
            let count = status.consumers.iter().filter(|r| r.state == state).count();
            (state.as_str(), i64::try_from(count).unwrap_or(i64::MAX))
        });
        self.context
            .metrics
            .record_consumers(&self.map_labels(), &per_state);
        let all_current = status
            .consumers
            .iter()
            .all(|row| row.state == ConsumerState::Current);
        conditions::set_condition(
            &mut status.conditions,
            state::condition(
                &status.consumers,
                &expected,
                self.sync.metadata.generation,
                self.now,
            ),
        );
        let mut checks_so_far = 0;
        self.context.memory.update(&self.uid, |m| {
            m.consumer_checks = if mode == Mode::ReloadAll {
                0
            } else {
                m.consumer_checks + 1
            };
            checks_so_far = m.consumer_checks;
        });
        (!all_current).then(|| recheck_after(checks_so_far))
    }

    /// Between syncs: keeps workloads on the current digest, and checks the proxies again
    /// when some are not Current (with backoff) or the pods behind a Service changed.
    /// Returns when to check again.
    pub(super) async fn recheck_consumers(&self) -> Result<Option<Duration>, Error> {
        let Some(mut status) = self.status.clone().filter(|s| s.artifact.is_some()) else {
            return Ok(None);
        };
        let proxies = &self.sync.spec.consumers.litellm_proxies;
        if proxies.is_empty() {
            // Also clears what an earlier spec with proxies left in status.
            self.reach_consumers(&mut status, Mode::Skip).await;
            self.write_status(status).await?;
            return Ok(None);
        }
        let urls: Vec<String> = self
            .proxy_targets()
            .await
            .into_iter()
            .map(|t| t.url)
            .collect();
        let same_proxies = urls.len() == status.consumers.len()
            && urls
                .iter()
                .all(|url| status.consumers.iter().any(|row| &row.url == url));
        let oldest_unfinished = status
            .consumers
            .iter()
            .filter(|row| row.state != ConsumerState::Current)
            .map(|row| row.checked_at.0)
            .min();
        if same_proxies {
            let Some(checked_at) = oldest_unfinished else {
                self.restart_workloads(
                    &status
                        .artifact
                        .as_ref()
                        .map(|a| a.digest.clone())
                        .unwrap_or_default(),
                )
                .await;
                return Ok(None);
            };
            let checks = self
                .context
                .memory
                .read(&self.uid, |m| m.consumer_checks)
                .unwrap_or(0);
            let due = checked_at
                + SignedDuration::try_from(recheck_after(checks)).unwrap_or(SignedDuration::MAX);
            let remaining = self.now.duration_until(due);
            if remaining > SignedDuration::ZERO {
                return Ok(Some(remaining.unsigned_abs()));
            }
        }
        let recheck = self.reach_consumers(&mut status, Mode::ReloadStale).await;
        self.write_status(status).await?;
        Ok(recheck)
    }

    /// Waits (briefly) until this replica's endpoint serves the map with `digest`: a proxy
    /// told to reload before that would fetch the old map again.
    async fn wait_until_served(&self, digest: &str) {
        let key = MapKey {
            namespace: self.target.namespace.clone(),
            name: self.sync.name_any(),
            key: self.target.key.clone(),
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
        for proxy in &self.sync.spec.consumers.litellm_proxies {
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
            Api::namespaced(self.context.client.clone(), &self.target.namespace);
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
        let secret = self.secret(&selector.name, "admin key").await?;
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

    /// Asks, reloads and asks again one proxy as `mode` says ([`state`] decides).
    async fn check_proxy(
        &self,
        target: &ProxyTarget,
        mode: Mode,
        expected: &str,
        previous: Option<&ConsumerStatus>,
    ) -> ConsumerStatus {
        let admin_key = match &target.admin_key {
            Ok(key) => key.as_ref(),
            Err(err) => {
                return state::unasked(
                    &target.url,
                    target.pod.as_deref(),
                    self.now,
                    err.to_string(),
                );
            }
        };
        let proxies = &self.context.proxies;
        let mut answer = match mode.asks_first() {
            true => Some(proxies.source(&target.url, admin_key).await),
            false => None,
        };
        let mut reloaded = None;
        if mode.reloads(answer.as_ref(), expected) {
            let outcome = proxies
                .reload(&endpoint(&target.url, RELOAD_PATH), admin_key)
                .await;
            info!(url = %target.url, %outcome, "asked the proxy to reload");
            reloaded = Some(outcome);
            answer = None;
        }
        let answer = match answer {
            Some(answer) => answer,
            None => proxies.source(&target.url, admin_key).await,
        };
        state::row(Checked {
            url: &target.url,
            pod: target.pod.as_deref(),
            now: self.now,
            expected,
            answer,
            reloaded: reloaded.as_ref(),
            previous,
        })
    }

    /// Puts the map's digest in each listed workload's pod template; a workload that already
    /// has it is not touched (no restart).
    async fn restart_workloads(&self, digest: &str) {
        let (mut restarted, mut failed) = (Vec::new(), Vec::new());
        for workload in &self.sync.spec.consumers.restart_workloads {
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
            self.publish(Notice {
                type_: EventType::Normal,
                reason: EventReason::WorkloadRestarted,
                note,
            })
            .await;
        }
        if !failed.is_empty() {
            self.publish(Notice {
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
        let api: Api<K> = Api::namespaced(self.context.client.clone(), &self.target.namespace);
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
}
