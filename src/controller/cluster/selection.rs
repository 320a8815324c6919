//! Which namespaces of a ClusterModelCostMapSync get a write, which hold its map, which fail
//! and why, and what status says about them: pure functions of what the cluster holds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::{
    ConditionType, MAX_LISTED_NAMESPACES, ModelCostMapSyncStatus, NamespaceFailure,
    NamespaceReason, NamespacesStatus, Reason,
};
use crate::controller::conditions;
use crate::controller::status::{self, synced_message};

/// A ConfigMap of the target's name found in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Copy {
    /// Controlled by this ClusterModelCostMapSync (its uid: a copy of a predecessor of the
    /// same name, orphaned, is someone else's).
    Ours {
        /// Its `costmap.dev/digest` annotation.
        digest: Option<String>,
    },
    /// Anyone else's: left alone. Says whose.
    Others(String),
}

/// What to do in the namespaces.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Plan {
    /// Selected namespaces whose ConfigMap is written (missing, edited, an older map, or
    /// not known to hold this map since the operator started).
    pub(super) write: Vec<String>,
    /// Selected namespaces that hold the map as this operator last wrote it.
    pub(super) holding: Vec<String>,
    /// Selected namespaces that cannot get the map.
    pub(super) failing: Vec<NamespaceFailure>,
    /// Namespaces with a copy of ours that the selector no longer picks: left as they are.
    pub(super) no_longer_selected: Vec<String>,
}

/// Plans the writes of the published map (none before the first sync). `holds` says which
/// namespaces hold its copy as this operator last wrote it: any other copy was changed by
/// someone (or by an operator before a restart) and is written again; a write with nothing
/// to change writes nothing on the server.
pub(super) fn plan(
    selected: &BTreeSet<String>,
    copies: &BTreeMap<String, Copy>,
    published: bool,
    holds: impl Fn(&str) -> bool,
    config_map: &str,
) -> Plan {
    let mut plan = Plan::default();
    for namespace in selected {
        let copy = copies.get(namespace);
        if let Some(Copy::Others(owner)) = copy {
            plan.failing.push(NamespaceFailure {
                namespace: namespace.clone(),
                reason: NamespaceReason::OwnedByAnother.as_str().to_owned(),
                message: format!(
                    "ConfigMap {namespace}/{config_map} exists and is not controlled by this \
                     object ({owner}); it is left untouched: delete it, or rename the target \
                     (target.configMapName)"
                ),
            });
            continue;
        }
        if !published {
            plan.failing.push(NamespaceFailure {
                namespace: namespace.clone(),
                reason: NamespaceReason::NotSynced.as_str().to_owned(),
                message: "no map has been synced yet".to_owned(),
            });
            continue;
        };
        if matches!(copy, Some(Copy::Ours { .. })) && holds(namespace) {
            plan.holding.push(namespace.clone());
        } else {
            plan.write.push(namespace.clone());
        }
    }
    plan.no_longer_selected = copies
        .iter()
        .filter(|(namespace, copy)| {
            matches!(copy, Copy::Ours { .. }) && !selected.contains(*namespace)
        })
        .map(|(namespace, _)| namespace.clone())
        .collect();
    plan
}

/// The namespaces part of status, once the writes of `plan` are done (the ones that
/// failed moved to `failing`).
pub(super) fn summary(plan: &Plan) -> NamespacesStatus {
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let selected = plan.holding.len() + plan.failing.len() + plan.write.len();
    let mut failing = plan.failing.clone();
    failing.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    let failing_count = failing.len();
    failing.truncate(MAX_LISTED_NAMESPACES);
    let mut no_longer_selected = plan.no_longer_selected.clone();
    no_longer_selected.truncate(MAX_LISTED_NAMESPACES);
    NamespacesStatus {
        selected: count(selected),
        ready: count(plan.holding.len()),
        summary: format!("{}/{}", plan.holding.len(), selected),
        failing_count: count(failing_count),
        failing,
        no_longer_selected,
        no_longer_selected_count: count(plan.no_longer_selected.len()),
    }
}

/// Ready as a cluster object has it: True only when the map is synced and every selected
/// namespace holds it. A synced map that some namespace lacks is Ready=False, reason
/// NamespacesFailing naming them, or OwnedByAnother (and Stalled) when a ConfigMap of
/// someone else's stands in the way in any of them: only a person can fix that. Once none
/// fails, Synced again.
pub(super) fn set_ready(
    status: &mut ModelCostMapSyncStatus,
    namespaces: &NamespacesStatus,
    generation: Option<i64>,
    now: Timestamp,
) {
    let Some(ready) = conditions::ready_condition(&status.conditions) else {
        return;
    };
    if status::retrying(status) {
        // The sync itself failed: its reason says more than the namespaces.
        return;
    }
    let was_synced = ready.status == "True";
    let synced_message = synced_message(status.artifact.as_ref(), "synced");
    let blocked = namespaces
        .failing
        .iter()
        .any(|f| f.reason == NamespaceReason::OwnedByAnother.as_str());
    if !blocked {
        conditions::remove_condition(&mut status.conditions, ConditionType::Stalled);
    }
    let condition = if namespaces.failing_count == 0 {
        if was_synced {
            return;
        }
        conditions::ready(true, Reason::Synced, synced_message, generation, now)
    } else {
        let names: Vec<String> = namespaces
            .failing
            .iter()
            .map(|f| format!("{} ({})", f.namespace, f.reason))
            .collect();
        let more = usize::try_from(namespaces.failing_count)
            .unwrap_or(0)
            .saturating_sub(names.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let mut message = format!(
            "{synced_message}; {} of {} selected namespaces do not hold it: {}{more}",
            namespaces.failing_count,
            namespaces.selected,
            names.join(", ")
        );
        let reason = match blocked {
            true => Reason::OwnedByAnother,
            false => Reason::NamespacesFailing,
        };
        if blocked {
            let theirs: Vec<&str> = namespaces
                .failing
                .iter()
                .filter(|f| f.reason == NamespaceReason::OwnedByAnother.as_str())
                .map(|f| f.message.as_str())
                .collect();
            message = format!("{message}. {}", theirs.join(". "));
        }
        conditions::ready(false, reason, message, generation, now)
    };
    let stalled = (condition.reason == Reason::OwnedByAnother.as_str()).then(|| {
        conditions::condition(
            ConditionType::Stalled,
            true,
            &condition.reason,
            condition.message.clone(),
            generation,
            now,
        )
    });
    conditions::set_condition(&mut status.conditions, condition);
    if let Some(stalled) = stalled {
        conditions::set_condition(&mut status.conditions, stalled);
    }
}

/// How soon to look again after writing, for the namespaces' sake: a write that failed (a
/// quota, a webhook, RBAC being fixed) is tried again within [`WRITE_RETRY`], not only at
/// the next interval.
pub(super) fn retry_after(plan: &Plan) -> Option<Duration> {
    plan.failing
        .iter()
        .any(|f| f.reason == NamespaceReason::WriteFailed.as_str())
        .then_some(WRITE_RETRY)
}

/// The longest a failed ConfigMap write waits for its retry.
pub(super) const WRITE_RETRY: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn ours(digest: &str) -> Copy {
        Copy::Ours {
            digest: Some(digest.into()),
        }
    }

    fn none_held(_: &str) -> bool {
        false
    }

    #[test]
    fn new_changed_and_unknown_copies_are_written_and_the_ones_we_wrote_are_held() {
        let copies = BTreeMap::from([
            ("held".to_owned(), ours("sha256:a")),
            ("old-map".to_owned(), ours("sha256:old")),
            ("edited".to_owned(), ours("sha256:a")),
            ("after-restart".to_owned(), ours("sha256:a")),
        ]);
        // Only "held" is at the version the write of this map produced.
        let selected = set(&["held", "old-map", "edited", "after-restart", "new"]);
        let plan = plan(&selected, &copies, true, |ns| ns == "held", "litellm");
        assert_eq!(plan.holding, ["held"]);
        assert_eq!(plan.write, ["after-restart", "edited", "new", "old-map"]);
        assert!(plan.failing.is_empty() && plan.no_longer_selected.is_empty());
    }

    #[test]
    fn a_copy_of_someone_else_fails_its_namespace_and_is_not_written() {
        let copies = BTreeMap::from([(
            "team-b".to_owned(),
            Copy::Others("controlled by ModelCostMapSync team-b/litellm".into()),
        )]);
        let plan = plan(
            &set(&["team-b", "team-a"]),
            &copies,
            true,
            |_| true,
            "litellm",
        );
        assert_eq!(plan.write, ["team-a"]);
        assert_eq!(plan.failing.len(), 1);
        assert_eq!(plan.failing[0].namespace, "team-b");
        assert_eq!(plan.failing[0].reason, "OwnedByAnother");
        let message = &plan.failing[0].message;
        assert!(
            message.contains("ConfigMap team-b/litellm exists"),
            "{message}"
        );
        assert!(
            message.contains("(controlled by ModelCostMapSync team-b/litellm)"),
            "{message}"
        );
    }

    #[test]
    fn copies_outside_the_selection_are_no_longer_selected_and_left_alone() {
        let copies = BTreeMap::from([
            ("gone".to_owned(), ours("sha256:a")),
            ("theirs".to_owned(), Copy::Others("someone".into())),
        ]);
        let plan = plan(&set(&[]), &copies, true, none_held, "x");
        assert_eq!(plan.no_longer_selected, ["gone"]);
        assert!(plan.write.is_empty() && plan.failing.is_empty());
    }

    #[test]
    fn before_the_first_sync_every_namespace_waits_for_a_map() {
        let plan = plan(&set(&["a"]), &BTreeMap::new(), false, none_held, "x");
        assert_eq!(plan.failing[0].reason, "NotSynced");
        assert!(plan.write.is_empty());
    }

    #[test]
    fn the_summary_counts_everything_and_lists_at_most_twenty() {
        let failing = (0..25)
            .map(|i| NamespaceFailure {
                namespace: format!("ns-{i:02}"),
                reason: "WriteFailed".into(),
                message: "forbidden".into(),
            })
            .collect();
        let plan = Plan {
            holding: vec!["ok".into(); 3],
            failing,
            no_longer_selected: vec!["left".into()],
            write: vec![],
        };
        let summary = summary(&plan);
        assert_eq!(summary.selected, 28);
        assert_eq!(summary.ready, 3);
        assert_eq!(summary.summary, "3/28");
        assert_eq!(summary.failing_count, 25);
        assert_eq!(summary.failing.len(), MAX_LISTED_NAMESPACES);
        assert_eq!(summary.failing[0].namespace, "ns-00");
        assert_eq!(summary.no_longer_selected_count, 1);
    }

    #[test]
    fn a_failed_write_is_retried_within_half_a_minute() {
        let mut plan = Plan::default();
        assert_eq!(retry_after(&plan), None);
        plan.failing.push(NamespaceFailure {
            namespace: "a".into(),
            reason: "OwnedByAnother".into(),
            message: String::new(),
        });
        assert_eq!(retry_after(&plan), None, "waiting will not change that");
        plan.failing[0].reason = "WriteFailed".into();
        assert_eq!(retry_after(&plan), Some(WRITE_RETRY));
    }

    #[test]
    fn ready_is_true_only_when_every_namespace_holds_the_map() {
        let at = Timestamp::from_second(100).unwrap();
        let mut status = ModelCostMapSyncStatus {
            last_attempt_time: Some(Time(at)),
            last_sync_time: Some(Time(at)),
            ..ModelCostMapSyncStatus::default()
        };
        conditions::set_condition(
            &mut status.conditions,
            conditions::ready(true, Reason::Synced, "ok".into(), Some(1), at),
        );
        let failing = |reason: &str| NamespacesStatus {
            selected: 2,
            ready: 1,
            failing_count: 1,
            failing: vec![NamespaceFailure {
                namespace: "team-b".into(),
                reason: reason.into(),
                message: "ConfigMap team-b/litellm exists".into(),
            }],
            ..NamespacesStatus::default()
        };
        set_ready(&mut status, &failing("WriteFailed"), Some(1), at);
        let ready = &status.conditions[0];
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "NamespacesFailing");
        assert!(ready.message.contains("1 of 2 selected namespaces"));
        assert!(ready.message.contains("team-b (WriteFailed)"));
        assert_eq!(status.conditions.len(), 1, "a failed write is no stall");
        assert!(
            !crate::controller::status::retrying(&status),
            "a namespace failing is not a failed sync"
        );

        // Someone else's ConfigMap in the way: only a person can fix that.
        set_ready(&mut status, &failing("OwnedByAnother"), Some(1), at);
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "OwnedByAnother")
        );
        assert!(
            ready.message.contains("team-b/litellm"),
            "{}",
            ready.message
        );
        let stalled = &status.conditions[1];
        assert_eq!(
            (stalled.type_.as_str(), stalled.status.as_str()),
            ("Stalled", "True")
        );
        assert!(
            !crate::controller::status::retrying(&status),
            "the map is synced in the other namespaces"
        );

        set_ready(&mut status, &NamespacesStatus::default(), Some(1), at);
        assert_eq!(status.conditions.len(), 1, "no longer stalled");
        assert_eq!(status.conditions[0].status, "True");
        assert_eq!(status.conditions[0].reason, "Synced");

        // A failed sync keeps its own reason.
        conditions::set_condition(
            &mut status.conditions,
            conditions::ready(false, Reason::FetchFailed, "down".into(), Some(1), at),
        );
        set_ready(&mut status, &failing("OwnedByAnother"), Some(1), at);
        assert_eq!(status.conditions[0].reason, "FetchFailed");
        assert!(crate::controller::status::retrying(&status));
    }
}
