//! `metav1.Condition` handling: the Ready condition and a merge that keeps
//! `lastTransitionTime` unless the status really changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The condition every ModelCostMapSync carries.
pub const READY: &str = "Ready";
/// Whether every LiteLLM proxy listed under consumers serves the current map; present only
/// when proxies are listed.
pub const CONSUMERS_CURRENT: &str = "ConsumersCurrent";

/// Why Ready is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The ConfigMap holds a validated map from the source (Ready=True).
    Synced,
    /// The source could not be fetched.
    FetchFailed,
    /// The fetched map failed validation.
    InvalidMap,
    /// The fetched map drops more models than maxRemovedPercent allows.
    ShrinkGuard,
    /// The map does not fit the ConfigMap, even gzipped.
    TooLarge,
    /// The ConfigMap (or a referenced Secret) could not be read or written.
    WriteFailed,
    /// Syncing is suspended; Ready keeps its status.
    Suspended,
}

impl Reason {
    /// The CamelCase reason string used in conditions, events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Synced => "Synced",
            Reason::FetchFailed => "FetchFailed",
            Reason::InvalidMap => "InvalidMap",
            Reason::ShrinkGuard => "ShrinkGuard",
            Reason::TooLarge => "TooLarge",
            Reason::WriteFailed => "WriteFailed",
            Reason::Suspended => "Suspended",
        }
    }
}

/// Sets `new` in `conditions`, replacing the condition of the same type. When the status is
/// unchanged, the old `lastTransitionTime` is kept: it says when the status last flipped.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// A Ready condition.
pub fn ready(
    status: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    condition(READY, status, reason.as_str(), message, generation, now)
}

/// A condition of any type.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: Time(now),
    }
}

/// Removes the condition of a type, if present.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The Ready condition's status, if present.
pub fn is_ready(conditions: &[Condition]) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn unchanged_status_keeps_transition_time_but_takes_new_reason_and_message() {
        let mut conditions = vec![ready(true, Reason::Synced, "a".into(), Some(1), at(100))];
        set_condition(
            &mut conditions,
            ready(true, Reason::Suspended, "b".into(), Some(2), at(200)),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, Time(at(100)));
        assert_eq!(conditions[0].reason, "Suspended");
        assert_eq!(conditions[0].message, "b");
        assert_eq!(conditions[0].observed_generation, Some(2));
    }

    #[test]
    fn changed_status_moves_transition_time() {
        let mut conditions = vec![ready(true, Reason::Synced, "a".into(), Some(1), at(100))];
        set_condition(
            &mut conditions,
            ready(false, Reason::InvalidMap, "bad".into(), Some(1), at(300)),
        );
        assert_eq!(conditions[0].last_transition_time, Time(at(300)));
        assert_eq!(is_ready(&conditions), Some(false));
    }

    #[test]
    fn other_condition_types_are_left_alone() {
        let mut other = ready(true, Reason::Synced, "x".into(), None, at(1));
        other.type_ = "ConsumersCurrent".into();
        let mut conditions = vec![other.clone()];
        set_condition(
            &mut conditions,
            ready(false, Reason::FetchFailed, "y".into(), None, at(2)),
        );
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0], other);
    }
}
