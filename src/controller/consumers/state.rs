//! The per-proxy state machine, pure: whether to ask a proxy first, whether to reload it,
//! what its status row says after the answers, how the rows sum up into `ConsumersCurrent`,
//! and when to look again. The calls themselves are in the parent module.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{ConditionType, ConsumerState, ConsumerStatus, ConsumersReason};
use crate::controller::conditions;
use crate::controller::status::Outcome;
use crate::litellm::{ReloadOutcome, SourceInfo};
use crate::sync::schedule::SyncCause;

/// Longest status message about consumers.
const MAX_MESSAGE: usize = 1000;

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

fn truncate(mut text: String) -> String {
    if text.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
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
        let all = condition(&[current.clone(), current.clone()], "new", Some(1), at(5));
        assert_eq!(
            (all.status.as_str(), all.reason.as_str()),
            ("True", "AllCurrent")
        );
        assert_eq!(all.message, "2 of 2 proxies serve map new");
        let mixed = condition(
            &[current.clone(), stale, gone.clone()],
            "new",
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
        let unreachable = condition(&[gone], "new", Some(1), at(5));
        assert_eq!(unreachable.reason, ConsumersReason::Unreachable.as_str());
        let none = condition(&[], "new", Some(1), at(5));
        assert_eq!(none.reason, ConsumersReason::NoProxies.as_str());
    }

    #[test]
    fn rechecks_back_off_to_five_minutes() {
        assert_eq!(recheck_after(0), Duration::from_secs(10));
        assert_eq!(recheck_after(2), Duration::from_secs(40));
        assert_eq!(recheck_after(20), Duration::from_secs(300));
    }
}
