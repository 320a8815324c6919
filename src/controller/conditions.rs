//! `metav1.Condition` handling: the Ready condition and a merge that keeps
//! `lastTransitionTime` unless the status really changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{ConditionType, Reason};

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
    condition(
        ConditionType::Ready,
        status,
        reason.as_str(),
        message,
        generation,
        now,
    )
}

/// A condition of any type.
pub fn condition(
    type_: ConditionType,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.as_str().to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: Time(now),
    }
}

/// Removes the condition of a type, if present.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: ConditionType) {
    conditions.retain(|c| c.type_ != type_.as_str());
}

/// The Ready condition, if present.
pub fn ready_condition(conditions: &[Condition]) -> Option<&Condition> {
    conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Ready.as_str())
}

/// The Ready condition's status, if present.
pub fn is_ready(conditions: &[Condition]) -> Option<bool> {
    ready_condition(conditions).map(|c| c.status == "True")
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
        assert_eq!(conditions[0].reason, Reason::Suspended.as_str());
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
        other.type_ = ConditionType::ConsumersCurrent.as_str().into();
        let mut conditions = vec![other.clone()];
        set_condition(
            &mut conditions,
            ready(false, Reason::FetchFailed, "y".into(), None, at(2)),
        );
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0], other);
    }
}
