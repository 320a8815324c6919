//! The per-proxy state machine, pure: whether to ask a proxy first, whether to reload it,
//! what its status row says after the answers, how the rows sum up into `ConsumersCurrent`,
//! and when to look again. The calls themselves are in the parent module.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use std::collections::BTreeSet;

use crate::api::{ConditionType, ConsumerState, ConsumerStatus, ConsumersReason, PricedReason};
use crate::controller::conditions;
use crate::controller::status::Outcome;
use crate::litellm::{ReloadOutcome, SourceInfo};
use crate::sync::schedule::SyncCause;

/// Longest status message about consumers.
const MAX_MESSAGE: usize = 1000;
/// Most unpriced model names kept per proxy row.
pub(crate) const MAX_UNPRICED_MODELS: usize = 20;

/// What to do with the proxies in this reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A new map: reload every proxy, then check.
    ReloadAll,
    /// Ask each proxy; reload those that do not serve the map, and ask them again. For a
    /// sync request with the map unchanged, and for rechecks of proxies left behind.
    ReloadStale,
    /// Only ask which map they serve.
    Verify,
    /// Leave the proxies alone (the sync failed: nothing new to tell).
    Skip,
}

impl Mode {
    /// The mode after a sync attempt.
    pub(crate) fn after(cause: SyncCause, outcome: &Outcome) -> Mode {
        match outcome {
            Outcome::Updated { .. } => Mode::ReloadAll,
            Outcome::Failed(_) => Mode::Skip,
            _ if cause == SyncCause::Requested => Mode::ReloadStale,
            _ => Mode::Verify,
        }
    }

    /// Whether a proxy is asked which map it serves before anything else.
    pub(crate) fn asks_first(self) -> bool {
        matches!(self, Mode::ReloadStale | Mode::Verify)
    }

    /// Whether a proxy is told to reload, given what it answered when asked first.
    pub(crate) fn reloads(
        self,
        first_answer: Option<&Result<SourceInfo, String>>,
        expected: &str,
    ) -> bool {
        match self {
            Mode::ReloadAll => true,
            Mode::ReloadStale => !matches!(
                first_answer,
                Some(Ok(info)) if info.source_revision.as_deref() == Some(expected)
            ),
            Mode::Verify | Mode::Skip => false,
        }
    }
}

/// Whether a proxy reporting `reported` serves the map whose git blob id is `expected`.
pub(crate) fn state_of(reported: Option<&str>, expected: &str) -> ConsumerState {
    if reported == Some(expected) {
        ConsumerState::Current
    } else {
        ConsumerState::Stale
    }
}

/// Why a proxy that is not Current is not, from its last reload.
fn stale_message(reload: Option<&ReloadOutcome>) -> Option<String> {
    match reload? {
        ReloadOutcome::Reloaded => None,
        other => Some(other.to_string()),
    }
}

/// The row of one proxy after its last answer.
pub(crate) struct Checked<'a> {
    pub(crate) url: &'a str,
    pub(crate) pod: Option<&'a str>,
    pub(crate) now: Timestamp,
    /// The git blob id of the map it should serve.
    pub(crate) expected: &'a str,
    /// What `GET /model/cost_map/source` answered last.
    pub(crate) answer: Result<SourceInfo, String>,
    /// How the reload of this check ended, if there was one.
    pub(crate) reloaded: Option<&'a ReloadOutcome>,
    /// The row of the check before.
    pub(crate) previous: Option<&'a ConsumerStatus>,
}

/// The status row of a proxy that could not be asked at all (its admin key is unusable).
pub(crate) fn unasked(url: &str, pod: Option<&str>, now: Timestamp, why: String) -> ConsumerStatus {
    ConsumerStatus {
        url: url.to_owned(),
        pod: pod.map(str::to_owned),
        state: ConsumerState::Unreachable,
        source_revision: None,
        models: None,
        checked_at: Time(now),
        message: Some(why),
        unpriced_models: None,
        repriced_models: None,
    }
}

/// The status row of a proxy from what it answered.
pub(crate) fn row(checked: Checked<'_>) -> ConsumerStatus {
    let mut row = unasked(checked.url, checked.pod, checked.now, String::new());
    row.message = None;
    match checked.answer {
        Ok(info) => {
            row.state = state_of(info.source_revision.as_deref(), checked.expected);
            row.source_revision = info.source_revision;
            row.models = info.model_count;
            if row.state != ConsumerState::Current {
                // Keep the reason learnt at the last reload when this check did not reload.
                row.message = stale_message(checked.reloaded)
                    .or_else(|| checked.previous.and_then(|p| p.message.clone()))
                    .or_else(|| Some("the proxy serves another map".to_owned()));
            }
        }
        Err(message) => row.message = Some(message),
    }
    row
}

/// The ConsumersCurrent condition summing up the rows.
pub(crate) fn condition(
    rows: &[ConsumerStatus],
    expected: &str,
    canary_failure: Option<&str>,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let condition = |ok: bool, reason: ConsumersReason, message: String| {
        conditions::condition(
            ConditionType::ConsumersCurrent,
            ok,
            reason.as_str(),
            truncate(message),
            generation,
            now,
        )
    };
    if rows.is_empty() {
        let message = "no proxy found: no ready endpoints behind the Service".to_owned();
        return condition(false, ConsumersReason::NoProxies, message);
    }
    if let Some(failure) = canary_failure {
        let message = format!(
            "the canary did not verify, so the other proxies keep the map they have: {failure}"
        );
        return condition(false, ConsumersReason::CanaryFailed, message);
    }
    let behind: Vec<&ConsumerStatus> = rows
        .iter()
        .filter(|r| r.state != ConsumerState::Current)
        .collect();
    if behind.is_empty() {
        let message = format!(
            "{} of {} proxies serve map {expected}",
            rows.len(),
            rows.len()
        );
        return condition(true, ConsumersReason::AllCurrent, message);
    }
    let reason = if behind.iter().any(|r| r.state == ConsumerState::Stale) {
        ConsumersReason::Stale
    } else {
        ConsumersReason::Unreachable
    };
    let details: Vec<String> = behind
        .iter()
        .map(|row| {
            let who = row
                .pod
                .as_deref()
                .map_or(row.url.clone(), |pod| format!("{} ({pod})", row.url));
            format!(
                "{who}: {:?}, {}",
                row.state,
                row.message.as_deref().unwrap_or("")
            )
        })
        .collect();
    let message = format!(
        "{} of {} proxies do not serve map {expected}: {}",
        behind.len(),
        rows.len(),
        details.join("; ")
    );
    condition(false, reason, message)
}

/// Why a canary row does not verify, if it does not: it must serve the map, and the map
/// must not leave a deployment unpriced that was priced before (`previous`).
pub(crate) fn canary_failure(
    row: &ConsumerStatus,
    previous: Option<&ConsumerStatus>,
) -> Option<String> {
    let who = row
        .pod
        .as_deref()
        .map_or(row.url.clone(), |pod| format!("{} ({pod})", row.url));
    if row.state != ConsumerState::Current {
        let why = row.message.as_deref().unwrap_or("it serves another map");
        return Some(format!("{who} is {}: {why}", row.state.as_str()));
    }
    let before: BTreeSet<&String> = previous
        .and_then(|p| p.unpriced_models.as_ref())
        .into_iter()
        .flatten()
        .collect();
    let newly: Vec<&str> = row
        .unpriced_models
        .iter()
        .flatten()
        .filter(|model| !before.contains(model))
        .map(String::as_str)
        .collect();
    if previous.is_some_and(|p| p.unpriced_models.is_some()) && !newly.is_empty() {
        return Some(format!(
            "{who} serves the map, but it leaves unpriced: {}",
            newly.join(", ")
        ));
    }
    None
}

/// The distinct unpriced model names over every row.
pub(crate) fn unpriced_models(rows: &[ConsumerStatus]) -> BTreeSet<String> {
    rows.iter()
        .flat_map(|row| row.unpriced_models.iter().flatten())
        .cloned()
        .collect()
}

/// What changed from the `previous` rows to `rows`: the models newly unpriced, and those
/// unpriced before that are priced now. Only a proxy that answered both times can say a
/// model got priced: one that did not answer now is no news.
pub(crate) fn pricing_changes(
    previous: &[ConsumerStatus],
    rows: &[ConsumerStatus],
) -> (Vec<String>, Vec<String>) {
    let now = unpriced_models(rows);
    let grown = now
        .difference(&unpriced_models(previous))
        .cloned()
        .collect();
    let answered_now: BTreeSet<&str> = rows
        .iter()
        .filter(|row| row.unpriced_models.is_some())
        .map(|row| row.url.as_str())
        .collect();
    let priced: BTreeSet<String> = previous
        .iter()
        .filter(|row| answered_now.contains(row.url.as_str()))
        .flat_map(|row| row.unpriced_models.iter().flatten())
        .filter(|model| !now.contains(*model))
        .cloned()
        .collect();
    (grown, priced.into_iter().collect())
}

/// The ModelsPriced condition over the rows of the proxies that answered GET /model/info.
pub(crate) fn priced_condition(
    rows: &[ConsumerStatus],
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let condition = |status: Option<bool>, reason: PricedReason, message: String| {
        let mut condition = conditions::condition(
            ConditionType::ModelsPriced,
            status.unwrap_or(false),
            reason.as_str(),
            truncate(message),
            generation,
            now,
        );
        if status.is_none() {
            condition.status = "Unknown".to_owned();
        }
        condition
    };
    let answered = rows.iter().filter(|r| r.unpriced_models.is_some()).count();
    if answered == 0 {
        let message = "no proxy answered GET /model/info".to_owned();
        return condition(None, PricedReason::NotChecked, message);
    }
    let unpriced = unpriced_models(rows);
    if unpriced.is_empty() {
        let message = format!("every deployment of {answered} proxies is priced");
        return condition(Some(true), PricedReason::AllPriced, message);
    }
    let names: Vec<&str> = unpriced.iter().map(String::as_str).collect();
    let message = format!(
        "{} deployments are billed at $0 (the map they loaded does not price them and their \
         model_info sets no price): {}",
        names.len(),
        names.join(", ")
    );
    condition(Some(false), PricedReason::Unpriced, message)
}

fn truncate(text: String) -> String {
    crate::apiserver::truncate(text, MAX_MESSAGE)
}

/// How long to wait before checking proxies that are not Current again: 10 s doubling to
/// 5 min, so a stale proxy is not asked every second.
pub(crate) fn recheck_after(checks_so_far: u32) -> Duration {
    Duration::from_secs(10)
        .saturating_mul(1 << checks_so_far.min(5))
        .min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn serving(revision: &str) -> Result<SourceInfo, String> {
        Ok(SourceInfo {
            source_revision: Some(revision.to_owned()),
            model_count: Some(4878),
        })
    }

    fn checked<'a>(
        answer: Result<SourceInfo, String>,
        reloaded: Option<&'a ReloadOutcome>,
        previous: Option<&'a ConsumerStatus>,
    ) -> ConsumerStatus {
        row(Checked {
            url: "http://10.0.0.7:4000",
            pod: Some("litellm-abc"),
            now: at(100),
            expected: "new",
            answer,
            reloaded,
            previous,
        })
    }

    #[test]
    fn a_proxy_serving_the_map_is_current_and_says_nothing_more() {
        let row = checked(serving("new"), Some(&ReloadOutcome::Reloaded), None);
        assert_eq!(row.state, ConsumerState::Current);
        assert_eq!(row.source_revision.as_deref(), Some("new"));
        assert_eq!(row.models, Some(4878));
        assert_eq!(row.message, None);
        assert_eq!(row.pod.as_deref(), Some("litellm-abc"));
        assert_eq!(row.checked_at, Time(at(100)));
    }

    #[test]
    fn a_proxy_serving_another_map_is_stale_with_the_reason_of_its_reload() {
        let refused = ReloadOutcome::Unauthorized(401);
        let row = checked(serving("old"), Some(&refused), None);
        assert_eq!(row.state, ConsumerState::Stale);
        assert!(
            row.message
                .unwrap()
                .contains("refused the admin key (HTTP 401)")
        );
        let plain = checked(serving("old"), None, None);
        assert_eq!(
            plain.message.as_deref(),
            Some("the proxy serves another map")
        );
    }

    #[test]
    fn a_proxy_without_a_database_is_pointed_at_restart_workloads_until_it_is_current() {
        let no_database = ReloadOutcome::NoDatabase;
        let stale = checked(serving("old"), Some(&no_database), None);
        let message = stale.message.clone().unwrap();
        assert!(message.contains("restartWorkloads"), "{message}");
        assert!(message.contains("500"), "{message}");
        // A recheck that does not reload keeps the reason learnt at the reload.
        let recheck = checked(serving("old"), None, Some(&stale));
        assert_eq!(recheck.message, stale.message);
        // Restarted: Current, and nothing to report.
        let restarted = checked(serving("new"), None, Some(&stale));
        assert_eq!(restarted.state, ConsumerState::Current);
        assert_eq!(restarted.message, None);
    }

    #[test]
    fn a_proxy_that_does_not_answer_is_unreachable_with_why() {
        let row = checked(Err("connection failed".into()), None, None);
        assert_eq!(row.state, ConsumerState::Unreachable);
        assert_eq!(row.message.as_deref(), Some("connection failed"));
        let unusable = unasked(
            "http://p",
            None,
            at(1),
            "Secret k has no key masterKey".into(),
        );
        assert_eq!(unusable.state, ConsumerState::Unreachable);
        assert!(unusable.message.unwrap().contains("has no key"));
    }

    #[test]
    fn each_mode_asks_and_reloads_as_it_says() {
        assert!(Mode::ReloadAll.reloads(None, "new"));
        assert!(!Mode::ReloadAll.asks_first());
        assert!(Mode::ReloadStale.asks_first());
        assert!(!Mode::ReloadStale.reloads(Some(&serving("new")), "new"));
        assert!(Mode::ReloadStale.reloads(Some(&serving("old")), "new"));
        assert!(Mode::ReloadStale.reloads(Some(&Err("timed out".into())), "new"));
        assert!(Mode::Verify.asks_first());
        assert!(!Mode::Verify.reloads(Some(&serving("old")), "new"));
        assert!(!Mode::Skip.asks_first() && !Mode::Skip.reloads(None, "new"));
    }

    #[test]
    fn modes_follow_the_attempt() {
        use crate::sync::SyncError;
        use crate::sync::validate::ValidationError;
        let failed = Outcome::Failed(SyncError::Map(ValidationError::InvalidMap("x".into())));
        assert_eq!(Mode::after(SyncCause::Due, &failed), Mode::Skip);
        assert_eq!(
            Mode::after(SyncCause::Requested, &Outcome::NotModified),
            Mode::ReloadStale
        );
        assert_eq!(
            Mode::after(SyncCause::Due, &Outcome::NotModified),
            Mode::Verify
        );
    }

    #[test]
    fn the_condition_sums_up_the_rows() {
        let current = checked(serving("new"), None, None);
        let stale = checked(serving("old"), None, None);
        let gone = checked(Err("timed out".into()), None, None);
        let all = condition(
            &[current.clone(), current.clone()],
            "new",
            None,
            Some(1),
            at(5),
        );
        assert_eq!(
            (all.status.as_str(), all.reason.as_str()),
            ("True", "AllCurrent")
        );
        assert_eq!(all.message, "2 of 2 proxies serve map new");
        let mixed = condition(
            &[current.clone(), stale.clone(), gone.clone()],
            "new",
            None,
            Some(1),
            at(5),
        );
        assert_eq!(mixed.reason, ConsumersReason::Stale.as_str());
        assert!(
            mixed
                .message
                .starts_with("2 of 3 proxies do not serve map new")
        );
        assert!(
            mixed
                .message
                .contains("(litellm-abc): Unreachable, timed out")
        );
        let unreachable = condition(&[gone], "new", None, Some(1), at(5));
        assert_eq!(unreachable.reason, ConsumersReason::Unreachable.as_str());
        let none = condition(&[], "new", None, Some(1), at(5));
        assert_eq!(none.reason, ConsumersReason::NoProxies.as_str());
        let canary = condition(&[current, stale], "new", Some("a is Stale"), Some(1), at(5));
        assert_eq!(
            (canary.status.as_str(), canary.reason.as_str()),
            ("False", "CanaryFailed")
        );
        assert!(
            canary
                .message
                .ends_with("keep the map they have: a is Stale")
        );
    }

    fn with_unpriced(mut row: ConsumerStatus, models: Option<&[&str]>) -> ConsumerStatus {
        row.unpriced_models = models.map(|m| m.iter().map(|s| (*s).to_owned()).collect());
        row
    }

    #[test]
    fn models_priced_sums_up_the_proxies_that_answered() {
        let priced = with_unpriced(checked(serving("new"), None, None), Some(&[]));
        let day0 = with_unpriced(checked(serving("new"), None, None), Some(&["day0-model"]));
        let unasked = with_unpriced(checked(serving("new"), None, None), None);

        let all = priced_condition(&[priced.clone(), unasked.clone()], Some(1), at(5));
        assert_eq!(
            (all.status.as_str(), all.reason.as_str()),
            ("True", "AllPriced")
        );
        assert_eq!(all.message, "every deployment of 1 proxies is priced");

        let some = priced_condition(&[priced, day0.clone(), day0.clone()], Some(1), at(5));
        assert_eq!(
            (some.status.as_str(), some.reason.as_str()),
            ("False", "Unpriced")
        );
        assert!(
            some.message.starts_with("1 deployments are billed at $0"),
            "{}",
            some.message
        );
        assert!(some.message.ends_with(": day0-model"), "{}", some.message);

        let none = priced_condition(&[unasked], Some(1), at(5));
        assert_eq!(
            (none.status.as_str(), none.reason.as_str()),
            ("Unknown", "NotChecked")
        );
        assert_eq!(unpriced_models(&[day0.clone(), day0]).len(), 1);
    }

    #[test]
    fn a_model_is_priced_now_only_where_its_proxy_answered_both_times() {
        let at_url = |url: &str, models: Option<&[&str]>| {
            let mut row = with_unpriced(checked(serving("new"), None, None), models);
            row.url = url.to_owned();
            row
        };
        let before = [
            at_url("http://a", Some(&["day0-model"])),
            at_url("http://b", Some(&["private"])),
        ];
        // a now prices day0-model; b did not answer; c is new and routes another.
        let now = [
            at_url("http://a", Some(&[])),
            at_url("http://b", None),
            at_url("http://c", Some(&["other"])),
        ];
        let (grown, priced) = pricing_changes(&before, &now);
        assert_eq!(grown, ["other"]);
        assert_eq!(priced, ["day0-model"]);
        assert_eq!(pricing_changes(&now, &now), (Vec::new(), Vec::new()));
    }

    #[test]
    fn a_canary_verifies_when_current_and_nothing_newly_unpriced() {
        let before = with_unpriced(checked(serving("old"), None, None), Some(&["day0-model"]));
        let same = with_unpriced(checked(serving("new"), None, None), Some(&["day0-model"]));
        assert_eq!(canary_failure(&same, Some(&before)), None);
        let fewer = with_unpriced(checked(serving("new"), None, None), Some(&[]));
        assert_eq!(canary_failure(&fewer, Some(&before)), None);
        let unknown = with_unpriced(checked(serving("new"), None, None), None);
        assert_eq!(canary_failure(&unknown, Some(&before)), None);

        let worse = with_unpriced(
            checked(serving("new"), None, None),
            Some(&["day0-model", "gpt-4o"]),
        );
        let failure = canary_failure(&worse, Some(&before)).unwrap();
        assert!(failure.ends_with("it leaves unpriced: gpt-4o"), "{failure}");

        let stale = checked(serving("old"), None, None);
        let failure = canary_failure(&stale, None).unwrap();
        assert!(
            failure.starts_with("http://10.0.0.7:4000 (litellm-abc) is Stale"),
            "{failure}"
        );
    }

    #[test]
    fn rechecks_back_off_to_five_minutes() {
        assert_eq!(recheck_after(0), Duration::from_secs(10));
        assert_eq!(recheck_after(2), Duration::from_secs(40));
        assert_eq!(recheck_after(20), Duration::from_secs(300));
    }
}
