//! Reaching the consumers of the map: LiteLLM proxies are reloaded and asked which map they
//! serve (`status.consumers`, condition `ConsumersCurrent`); workloads listed under
//! `restartWorkloads` get the digest in their pod template, which rolls their pods.

mod proxies;
mod reach;
mod repriced;
mod state;
mod workloads;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;
use tracing::{info, warn};

pub(super) use repriced::add_to_note as add_repriced_to_note;
pub(super) use state::Mode;

use super::conditions;
use super::context::Context;
use super::object::Object;
use super::status::Notice;
use crate::api::{
    ConditionType, ConsumerState, ConsumerStatus, EventReason, ModelCostMapSyncStatus,
};
use crate::http::map_cache::MapKey;
use proxies::ProxyTarget;
use state::recheck_after;

/// The label EndpointSlices carry naming their Service.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// How long a new map may take to reach this replica's endpoint (through its ConfigMap
/// watch) before the proxies are told to reload anyway.
const SERVED_WAIT: Duration = Duration::from_secs(10);

/// How long after a self-reloading proxy's poll period it is looked at again.
const SELF_RELOAD_MARGIN: Duration = Duration::from_secs(2);

/// A price per token as Events print it: 1.25e-6, or "-" when there is none.
fn price_text(price: Option<f64>) -> String {
    price.map_or("-".to_owned(), |p| format!("{p:e}"))
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
        let last = self
            .context
            .memory
            .read(&self.object.key, |m| m.repricing.clone())
            .flatten()
            .filter(|last| last.after == expected);
        for check in &mut checks {
            let before = previous.iter().find(|row| row.url == check.row.url);
            check.row.repriced_models = repriced::row_list(
                &check.row,
                check.deployments.as_deref(),
                last.as_ref(),
                &expected,
                before,
            );
        }
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

    /// ModelsPriced, the unpriced- and repriced-deployments metrics, and an Event when the
    /// set of unpriced models grows (Warning) or a model in it becomes priced (Normal).
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
        let repriced = repriced::repriced_over(&status.consumers).len();
        self.context.metrics.record_repriced(
            &self.object.labels(),
            i64::try_from(repriced).unwrap_or(i64::MAX),
        );
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

    async fn record(&self, notice: Notice) {
        self.context.record(notice, &self.object.reference).await;
    }
}
