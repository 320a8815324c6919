//! Status as a pure function of what happened: the status a sync attempt leaves, the Events
//! to record and when to look again. The reconciler does the I/O (writes, Events, metrics);
//! everything it decides is here, tested without an API server.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;

use crate::api::{
    ACCEPT_DIGEST_ANNOTATION, Artifact, ConditionType, EventReason, HistoryEntry,
    ModelCostMapSyncStatus, OverridesStatus, Reason, SourceMap,
};
use crate::controller::conditions;
use crate::sync::SyncError;
use crate::sync::diff::MapChange;
use crate::sync::schedule;
use crate::sync::validate::guards::Refusal;

/// How many new model names an Event lists.
const EVENT_MODEL_NAMES: usize = 10;
/// The longest a source's `Retry-After` defers the next sync: a hostile or broken value
/// must not stop syncing for good (a sync request still goes through at once).
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How a sync attempt ended.
// One lives for one attempt, moved once into `next_status`: boxing the large variant would
// buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Outcome {
    /// The source answered 304 for the last good map's revision.
    NotModified,
    /// The source re-sent the bytes of the last good map (with the same overrides).
    Unchanged {
        revision: Option<String>,
        /// The fetched map.
        source: Option<SourceMap>,
        /// What the overrides did.
        overrides: Option<OverridesStatus>,
    },
    /// A new map was validated and written.
    Updated {
        artifact: Artifact,
        /// What it changed against the last good map.
        change: Option<MapChange>,
        /// When there was no last good map to compare with: what the ConfigMap held.
        replaced: Option<String>,
        /// The guards' refusals the accept-digest annotation overrode.
        overridden: Vec<Refusal>,
        /// The fetched map.
        source: Option<SourceMap>,
        /// What the overrides did.
        overrides: Option<OverridesStatus>,
        /// The history ring after this map, newest first (None: unchanged).
        history: Option<Vec<HistoryEntry>>,
    },
    /// The attempt failed; the ConfigMap keeps the last good map.
    Failed(SyncError),
}

/// What the attempt was, besides its outcome.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attempt<'a> {
    /// `metadata.generation` of the spec it used.
    pub(super) generation: Option<i64>,
    /// The sync-request annotation's value, if set.
    pub(super) sync_request: Option<&'a str>,
    /// When it started (whole seconds).
    pub(super) started: Timestamp,
    /// When it ended (whole seconds): waits count from here.
    pub(super) finished: Timestamp,
    /// `spec.interval`.
    pub(super) interval: Duration,
    /// Failed attempts in a row before this one.
    pub(super) failures_before: u32,
    /// The first wait after a failure.
    pub(super) retry_backoff: Duration,
    /// Status names a last good map that the cluster no longer holds.
    pub(super) last_good_lost: bool,
    /// The target ConfigMap's name, for messages.
    pub(super) config_map: &'a str,
}

/// An Event to record.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Notice {
    pub(super) type_: EventType,
    pub(super) reason: EventReason,
    pub(super) note: String,
}

/// What an attempt leaves.
#[derive(Debug)]
pub(super) struct NextStatus {
    pub(super) status: ModelCostMapSyncStatus,
    pub(super) events: Vec<Notice>,
    /// When to sync next; None: not until the spec changes.
    pub(super) wait: Option<Duration>,
    /// Failed attempts in a row, this one included.
    pub(super) failures: u32,
}

impl NextStatus {
    /// The models of the map published after a successful attempt, for the per-map gauges;
    /// None after a failure (the gauges keep the last success).
    pub(super) fn published_models(&self) -> Option<i64> {
        let artifact = self
            .status
            .artifact
            .as_ref()
            .filter(|_| self.failures == 0)?;
        Some(i64::from(artifact.models))
    }
}

/// The status after an attempt that ended with `outcome`.
pub(super) fn next_status(
    previous: Option<&ModelCostMapSyncStatus>,
    outcome: Outcome,
    attempt: &Attempt<'_>,
) -> NextStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = attempt.generation;
    status.last_attempt_time = Some(Time(attempt.started));
    if let Some(request) = attempt.sync_request {
        status.last_handled_sync_request = Some(request.to_owned());
    }
    status.pending_artifact = None;
    let mut events = Vec::new();
    let (wait, failures) = match outcome {
        Outcome::NotModified | Outcome::Unchanged { .. } => {
            if let Outcome::Unchanged {
                revision,
                source,
                overrides,
            } = outcome
            {
                if let Some(artifact) = status.artifact.as_mut().filter(|_| revision.is_some()) {
                    artifact.revision = revision;
                }
                if source.is_some() {
                    status.source = source;
                }
                status.overrides = overrides;
            }
            status.last_sync_time = Some(Time(attempt.started));
            let message = synced_message(status.artifact.as_ref(), "unchanged");
            set_ready(&mut status, true, Reason::Synced, message, attempt);
            (Some(attempt.interval), 0)
        }
        Outcome::Updated {
            artifact,
            change,
            replaced,
            overridden,
            source,
            overrides,
            history,
        } => {
            status.source = source;
            status.overrides = overrides;
            if let Some(history) = history {
                status.history = history;
            }
            if !overridden.is_empty() {
                let why: Vec<String> = overridden.iter().map(|r| r.message.clone()).collect();
                events.push(Notice {
                    type_: EventType::Normal,
                    reason: EventReason::MapAccepted,
                    note: format!(
                        "map {} accepted by annotation {ACCEPT_DIGEST_ANNOTATION} although \
                         the guards refused it: {}",
                        artifact.digest,
                        why.join("; ")
                    ),
                });
                status.last_accepted_digest = Some(artifact.digest.clone());
            }
            let (reason, note) = match (&change, replaced) {
                (Some(change), _) => (
                    EventReason::MapUpdated,
                    format!(
                        "{} models; {}",
                        artifact.models,
                        change.summary(EVENT_MODEL_NAMES)
                    ),
                ),
                (None, Some(replaced)) => (
                    EventReason::MapUpdated,
                    format!("{} models; {replaced}", artifact.models),
                ),
                (None, None) => (
                    EventReason::MapSynced,
                    format!("first sync: {} models", artifact.models),
                ),
            };
            events.push(Notice {
                type_: EventType::Normal,
                reason,
                note: format!("ConfigMap {}: {note}", attempt.config_map),
            });
            status.last_change = change.map(|c| c.to_status());
            let message = synced_message(Some(&artifact), "updated");
            status.artifact = Some(artifact);
            status.last_sync_time = Some(Time(attempt.started));
            set_ready(&mut status, true, Reason::Synced, message, attempt);
            (Some(attempt.interval), 0)
        }
        Outcome::Failed(error) => {
            let failures = attempt.failures_before.saturating_add(1);
            let reason = error.reason();
            let mut message = error.to_string();
            let wait = match reason {
                // The spec will not get better by itself: wait for it to change.
                Reason::InvalidSpec => None,
                _ => Some(failure_wait(&error, failures, attempt, &mut message)),
            };
            if let Some(artifact) = status.artifact.as_ref().filter(|_| attempt.last_good_lost) {
                message.push_str(&format!(
                    "; ConfigMap {} does not hold the last good map {} (deleted or edited) and \
                     is not served; it is restored at the next good fetch",
                    attempt.config_map, artifact.digest
                ));
            }
            events.push(Notice {
                type_: EventType::Warning,
                reason: EventReason::SyncFailed(reason),
                note: message.clone(),
            });
            set_ready(&mut status, false, reason, message, attempt);
            (wait, failures)
        }
    };
    status.next_sync_time = wait.map(|wait| Time(later(attempt.finished, wait)));
    NextStatus {
        status,
        events,
        wait,
        failures,
    }
}

/// The wait after a failed attempt: the backoff, or longer when the source asked for it
/// (then the message says until when).
fn failure_wait(
    error: &SyncError,
    failures: u32,
    attempt: &Attempt<'_>,
    message: &mut String,
) -> Duration {
    let backoff = schedule::retry_after_failure(failures, attempt.retry_backoff, attempt.interval);
    let asked = error.retry_after().map(|wait| wait.min(MAX_RETRY_AFTER));
    match asked {
        Some(asked) if asked > backoff => {
            message.push_str(&format!(
                "; the source asked to wait {} (Retry-After), so the next attempt is at {}",
                humantime::format_duration(asked),
                later(attempt.finished, asked)
            ));
            asked
        }
        _ => backoff,
    }
}

/// Status once an interrupted write is found complete: the map the ConfigMap holds, which
/// status recorded as pending, is the last good map. Returns the Event that says so.
pub(super) fn adopted(
    previous: &ModelCostMapSyncStatus,
    pending: Artifact,
    generation: Option<i64>,
    now: Timestamp,
    config_map: &str,
) -> (ModelCostMapSyncStatus, Notice) {
    let mut status = previous.clone();
    let message = synced_message(Some(&pending), "written before the operator restarted");
    conditions::remove_condition(&mut status.conditions, ConditionType::Stalled);
    conditions::remove_condition(&mut status.conditions, ConditionType::Reconciling);
    conditions::set_condition(
        &mut status.conditions,
        conditions::ready(true, Reason::Synced, message, generation, now),
    );
    let note = format!(
        "ConfigMap {config_map}: {} models, map {}; its write was interrupted by an operator \
         restart and is complete now (what it changed is not known)",
        pending.models, pending.digest
    );
    status.artifact = Some(pending);
    status.pending_artifact = None;
    status.last_change = None;
    let notice = Notice {
        type_: EventType::Normal,
        reason: EventReason::MapUpdated,
        note,
    };
    (status, notice)
}

/// Status while `spec.suspend` is true: Ready keeps its status, and says why nothing syncs.
pub(super) fn suspended(
    previous: Option<&ModelCostMapSyncStatus>,
    generation: Option<i64>,
    now: Timestamp,
) -> ModelCostMapSyncStatus {
    let mut status = previous.cloned().unwrap_or_default();
    let ready = conditions::is_ready(&status.conditions).unwrap_or(false);
    let message =
        "syncing is suspended (spec.suspend); the ConfigMap keeps the map it holds".to_owned();
    conditions::set_condition(
        &mut status.conditions,
        conditions::ready(ready, Reason::Suspended, message, generation, now),
    );
    conditions::remove_condition(&mut status.conditions, ConditionType::Reconciling);
    status.observed_generation = generation;
    status.next_sync_time = None;
    status
}

/// kstatus' Reconciling, written before a sync someone waits for starts: the first sync, a
/// sync for a new spec, a requested sync (`kubectl wait`, a GitOps health check). Periodic
/// syncs say nothing: nobody waits for them, and the write would double the status writes
/// of a large install. Ready and observedGeneration stay as they were until the sync's
/// outcome, which removes Reconciling; if the operator stops meanwhile, the sync is still owed
/// (the generation is not observed, or the request not handled) and its outcome removes it.
pub(super) fn reconciling(
    previous: Option<&ModelCostMapSyncStatus>,
    cause: schedule::SyncCause,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<ModelCostMapSyncStatus> {
    let what = match cause {
        schedule::SyncCause::FirstSync => "the first sync",
        schedule::SyncCause::SpecChanged => "a sync of the new spec",
        schedule::SyncCause::Requested => "the requested sync",
        _ => return None,
    };
    let mut status = previous.cloned().unwrap_or_default();
    let generation_text = generation.map_or_else(String::new, |g| format!(" (generation {g})"));
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            ConditionType::Reconciling,
            true,
            &format!("{cause:?}"),
            format!("{what}{generation_text} is in progress"),
            generation,
            now,
        ),
    );
    Some(status)
}

/// Sets Ready, and kstatus' Stalled beside it: present, True, while only a person can fix
/// the failure ([`Reason::stalls`]), absent otherwise. Reconciling ends with it.
fn set_ready(
    status: &mut ModelCostMapSyncStatus,
    ready: bool,
    reason: Reason,
    message: String,
    attempt: &Attempt<'_>,
) {
    let (generation, now) = (attempt.generation, attempt.started);
    let stalled = (!ready && reason.stalls()).then(|| {
        conditions::condition(
            ConditionType::Stalled,
            true,
            reason.as_str(),
            message.clone(),
            generation,
            now,
        )
    });
    conditions::set_condition(
        &mut status.conditions,
        conditions::ready(ready, reason, message, generation, now),
    );
    conditions::remove_condition(&mut status.conditions, ConditionType::Reconciling);
    match stalled {
        Some(stalled) => conditions::set_condition(&mut status.conditions, stalled),
        None => conditions::remove_condition(&mut status.conditions, ConditionType::Stalled),
    }
}

fn later(at: Timestamp, wait: Duration) -> Timestamp {
    at + SignedDuration::try_from(wait).unwrap_or(SignedDuration::MAX)
}

/// Whether the last attempt failed: its `nextSyncTime` is then a retry, which every sync
/// but a requested one or a new spec's waits for. A synced map that some namespaces of a
/// cluster object lack is no failed attempt.
pub(super) fn retrying(status: &ModelCostMapSyncStatus) -> bool {
    // A cluster object's copy that is someone else's fails a namespace, not the attempt,
    // which then synced: the last sync is the last attempt.
    let synced_last = status.last_sync_time.is_some()
        && status.last_sync_time.as_ref() == status.last_attempt_time.as_ref();
    conditions::ready_condition(&status.conditions).is_some_and(|c| {
        c.status != "True"
            && c.reason != Reason::NamespacesFailing.as_str()
            && !(c.reason == Reason::OwnedByAnother.as_str() && synced_last)
    })
}

/// Whether `status` already says that spec `generation` is invalid: a reconcile then has
/// nothing to write (its own status write would reconcile it again).
pub(super) fn says_invalid_spec(
    status: Option<&ModelCostMapSyncStatus>,
    generation: Option<i64>,
) -> bool {
    status.is_some_and(|s| {
        s.observed_generation == generation
            && s.conditions
                .iter()
                .any(|c| c.reason == Reason::InvalidSpec.as_str())
    })
}

/// The artifact of a newly accepted map with `models` models; `git_blob_id` when known
/// (the fetched map's, when no override changed it), else hashed here.
pub(super) fn artifact_of(
    map: &crate::sync::store::HeldMap,
    models: usize,
    git_blob_id: Option<String>,
    revision: Option<String>,
    now: Timestamp,
) -> Artifact {
    let bytes = &map.stored().bytes;
    Artifact {
        digest: map.digest().to_owned(),
        git_blob_id: git_blob_id.unwrap_or_else(|| crate::digest::git_blob_id(bytes)),
        revision,
        size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
        models: i32::try_from(models).unwrap_or(i32::MAX),
        last_update_time: Time(now),
    }
}

/// The Ready message of a successful sync.
pub(super) fn synced_message(artifact: Option<&Artifact>, what: &str) -> String {
    match artifact {
        Some(a) => format!(
            "{} models, {} bytes, {} ({what})",
            a.models, a.size, a.digest
        ),
        None => format!("source {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SpecError;
    use crate::sync::fetch::FetchError;
    use crate::sync::validate::ValidationError;

    #[test]
    fn only_for_the_generation_status_called_invalid() {
        let mut status = ModelCostMapSyncStatus {
            observed_generation: Some(2),
            ..Default::default()
        };
        assert!(
            !says_invalid_spec(Some(&status), Some(2)),
            "no condition yet"
        );
        let ready = conditions::ready(
            false,
            Reason::InvalidSpec,
            "bad".to_owned(),
            Some(2),
            Timestamp::UNIX_EPOCH,
        );
        conditions::set_condition(&mut status.conditions, ready);
        assert!(says_invalid_spec(Some(&status), Some(2)));
        assert!(!says_invalid_spec(Some(&status), Some(3)), "a new spec");
        assert!(!says_invalid_spec(None, Some(2)));
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn artifact(digest: &str, models: i32) -> Artifact {
        Artifact {
            digest: digest.into(),
            git_blob_id: format!("blob-{digest}"),
            revision: Some("\"etag-1\"".into()),
            size: 100,
            models,
            last_update_time: Time(at(1000)),
        }
    }

    fn attempt() -> Attempt<'static> {
        Attempt {
            generation: Some(2),
            sync_request: Some("r1"),
            started: at(2000),
            finished: at(2003),
            interval: Duration::from_secs(3600),
            failures_before: 0,
            retry_backoff: Duration::from_secs(30),
            last_good_lost: false,
            config_map: "litellm",
        }
    }

    fn synced(digest: &str) -> ModelCostMapSyncStatus {
        next_status(
            None,
            Outcome::Updated {
                artifact: artifact(digest, 60),
                change: None,
                replaced: None,
                overridden: Vec::new(),
                source: None,
                overrides: None,
                history: None,
            },
            &Attempt {
                started: at(1000),
                finished: at(1000),
                ..attempt()
            },
        )
        .status
    }

    fn ready(
        status: &ModelCostMapSyncStatus,
    ) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
    }

    fn failure(error: SyncError) -> NextStatus {
        next_status(
            Some(&synced("sha256:a")),
            Outcome::Failed(error),
            &attempt(),
        )
    }

    #[test]
    fn a_configmap_of_someone_else_stalls_until_a_sync_succeeds() {
        let next = failure(SyncError::OwnedByAnother {
            config_map: "team-a/precious".into(),
            controller: "no controller: not written by this operator".into(),
        });
        let ready = ready(&next.status);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "OwnedByAnother")
        );
        assert!(
            ready.message.contains("team-a/precious"),
            "{}",
            ready.message
        );
        let stalled = next.status.conditions.iter().find(|c| c.type_ == "Stalled");
        let stalled = stalled.expect("Stalled beside Ready");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "OwnedByAnother")
        );
        assert!(
            retrying(&next.status),
            "a failed attempt, retried with backoff"
        );

        let fetch_failed = next_status(
            Some(&next.status),
            Outcome::Failed(SyncError::Write {
                what: "ConfigMap litellm".into(),
                message: "the server is down".into(),
            }),
            &attempt(),
        );
        assert!(
            fetch_failed
                .status
                .conditions
                .iter()
                .all(|c| c.type_ != "Stalled"),
            "waiting may fix a write that failed"
        );
        let unchanged = next_status(Some(&next.status), Outcome::NotModified, &attempt());
        assert!(
            unchanged
                .status
                .conditions
                .iter()
                .all(|c| c.type_ != "Stalled")
        );
    }

    #[test]
    fn a_first_sync_records_the_artifact_and_a_map_synced_event() {
        let next = next_status(
            None,
            Outcome::Updated {
                artifact: artifact("sha256:a", 60),
                change: None,
                replaced: None,
                overridden: Vec::new(),
                source: None,
                overrides: None,
                history: None,
            },
            &attempt(),
        );
        let status = &next.status;
        assert_eq!(status.artifact.as_ref().unwrap().digest, "sha256:a");
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(status.last_handled_sync_request.as_deref(), Some("r1"));
        assert_eq!(status.last_attempt_time, Some(Time(at(2000))));
        assert_eq!(status.last_sync_time, Some(Time(at(2000))));
        assert_eq!(
            status.next_sync_time,
            Some(Time(at(2003 + 3600))),
            "from the end"
        );
        assert_eq!(ready(status).status, "True");
        assert_eq!(ready(status).reason, Reason::Synced.as_str());
        assert_eq!(next.wait, Some(Duration::from_secs(3600)));
        assert_eq!(next.failures, 0);
        assert_eq!(
            next.events,
            [Notice {
                type_: EventType::Normal,
                reason: EventReason::MapSynced,
                note: "ConfigMap litellm: first sync: 60 models".into(),
            }]
        );
    }

    #[test]
    fn a_content_change_names_the_new_models_and_keeps_ready_s_transition_time() {
        let before = synced("sha256:a");
        let change = MapChange {
            added: vec!["day0".into()],
            changed: 2,
            ..MapChange::default()
        };
        let next = next_status(
            Some(&before),
            Outcome::Updated {
                artifact: artifact("sha256:b", 61),
                change: Some(change),
                replaced: None,
                overridden: Vec::new(),
                source: None,
                overrides: None,
                history: None,
            },
            &attempt(),
        );
        assert_eq!(next.events[0].reason, EventReason::MapUpdated);
        assert_eq!(
            next.events[0].note,
            "ConfigMap litellm: 61 models; 1 added, 0 removed, 2 changed; new: day0"
        );
        assert_eq!(next.status.last_change.as_ref().unwrap().added, 1);
        assert_eq!(
            ready(&next.status).last_transition_time,
            Time(at(1000)),
            "still True: the transition time stays"
        );
    }

    #[test]
    fn a_map_that_replaced_an_unvouched_one_says_so() {
        let next = next_status(
            None,
            Outcome::Updated {
                artifact: artifact("sha256:b", 61),
                change: None,
                replaced: Some("replaced map sha256:x".into()),
                overridden: Vec::new(),
                source: None,
                overrides: None,
                history: None,
            },
            &attempt(),
        );
        assert_eq!(next.events[0].reason, EventReason::MapUpdated);
        assert!(
            next.events[0]
                .note
                .ends_with("61 models; replaced map sha256:x")
        );
    }

    #[test]
    fn an_unchanged_source_keeps_the_artifact_and_takes_a_new_revision() {
        let before = synced("sha256:a");
        let not_modified = next_status(Some(&before), Outcome::NotModified, &attempt());
        assert_eq!(not_modified.status.artifact, before.artifact);
        assert!(not_modified.events.is_empty());
        assert!(ready(&not_modified.status).message.ends_with("(unchanged)"));
        let unchanged = next_status(
            Some(&before),
            Outcome::Unchanged {
                revision: Some("\"etag-2\"".into()),
                source: None,
                overrides: None,
            },
            &attempt(),
        );
        let revision = unchanged.status.artifact.unwrap().revision;
        assert_eq!(revision.as_deref(), Some("\"etag-2\""));
    }

    #[test]
    fn a_failure_keeps_the_artifact_backs_off_from_the_end_and_moves_the_transition_time() {
        let next = failure(SyncError::Map(ValidationError::InvalidMap("html".into())));
        let status = &next.status;
        assert_eq!(status.artifact.as_ref().unwrap().digest, "sha256:a");
        assert_eq!(ready(status).status, "False");
        assert_eq!(ready(status).reason, Reason::InvalidMap.as_str());
        assert_eq!(ready(status).last_transition_time, Time(at(2000)));
        assert_eq!(next.failures, 1);
        assert_eq!(next.wait, Some(Duration::from_secs(30)));
        assert_eq!(status.next_sync_time, Some(Time(at(2033))));
        assert_eq!(
            next.events[0].reason,
            EventReason::SyncFailed(Reason::InvalidMap)
        );
        let third = next_status(
            Some(status),
            Outcome::Failed(SyncError::Map(ValidationError::InvalidMap("html".into()))),
            &Attempt {
                failures_before: 2,
                ..attempt()
            },
        );
        assert_eq!(third.wait, Some(Duration::from_secs(120)));
        assert_eq!(
            ready(&third.status).last_transition_time,
            Time(at(2000)),
            "still False: the transition time stays"
        );
    }

    #[test]
    fn a_long_retry_after_defers_the_next_attempt_and_says_until_when() {
        let limited = FetchError::Status {
            url: "https://x/".into(),
            code: 429,
            attempts: 1,
            retry_after: Some(Duration::from_secs(3600)),
        };
        let next = failure(SyncError::Fetch(limited));
        assert_eq!(next.wait, Some(Duration::from_secs(3600)));
        let message = &ready(&next.status).message;
        assert!(
            message.contains(
                "asked to wait 1h (Retry-After), so the next attempt is at 1970-01-01T01:33:23Z"
            ),
            "{message}"
        );
        let hostile = FetchError::Status {
            url: "https://x/".into(),
            code: 429,
            attempts: 1,
            retry_after: Some(Duration::from_secs(u64::MAX / 4)),
        };
        assert_eq!(
            failure(SyncError::Fetch(hostile)).wait,
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn an_invalid_spec_waits_for_a_change() {
        let next = failure(SyncError::Spec(SpecError {
            field: "interval",
            reason: "must be at least 1m".into(),
        }));
        assert_eq!(ready(&next.status).reason, Reason::InvalidSpec.as_str());
        assert_eq!(next.wait, None);
        assert_eq!(next.status.next_sync_time, None);
    }

    #[test]
    fn a_failure_while_the_map_is_lost_says_it_is_not_served() {
        let next = next_status(
            Some(&synced("sha256:a")),
            Outcome::Failed(SyncError::Map(ValidationError::InvalidMap("x".into()))),
            &Attempt {
                last_good_lost: true,
                ..attempt()
            },
        );
        assert!(
            ready(&next.status)
                .message
                .ends_with("ConfigMap litellm does not hold the last good map sha256:a (deleted or edited) and is not served; it is restored at the next good fetch")
        );
    }

    #[test]
    fn a_map_accepted_by_annotation_is_recorded_with_an_event() {
        use crate::sync::validate::guards::Guard;
        let next = next_status(
            Some(&synced("sha256:a")),
            Outcome::Updated {
                artifact: artifact("sha256:b", 60),
                change: None,
                replaced: None,
                overridden: vec![Refusal {
                    guard: Guard::MaxRepriced,
                    message: "100 of 100 repriced".into(),
                }],
                source: None,
                overrides: None,
                history: None,
            },
            &attempt(),
        );
        assert_eq!(
            next.status.last_accepted_digest.as_deref(),
            Some("sha256:b")
        );
        let accepted = &next.events[0];
        assert_eq!(accepted.reason, EventReason::MapAccepted);
        assert!(
            accepted
                .note
                .contains("accepted by annotation costmap.dev/accept-digest")
        );
        assert!(accepted.note.ends_with("100 of 100 repriced"));
    }

    #[test]
    fn a_pending_record_is_cleared_by_the_next_attempt() {
        let mut before = synced("sha256:a");
        before.pending_artifact = Some(artifact("sha256:b", 61));
        let next = next_status(Some(&before), Outcome::NotModified, &attempt());
        assert_eq!(next.status.pending_artifact, None);
    }

    #[test]
    fn an_adopted_write_becomes_the_artifact() {
        let mut before = synced("sha256:a");
        before.pending_artifact = Some(artifact("sha256:b", 61));
        let (status, notice) = adopted(
            &before,
            artifact("sha256:b", 61),
            Some(2),
            at(3000),
            "litellm",
        );
        assert_eq!(status.artifact.unwrap().digest, "sha256:b");
        assert_eq!(status.pending_artifact, None);
        assert_eq!(notice.reason, EventReason::MapUpdated);
        assert!(notice.note.contains("interrupted by an operator restart"));
    }

    #[test]
    fn suspending_keeps_ready_s_status_and_says_why() {
        let status = suspended(Some(&synced("sha256:a")), Some(3), at(3000));
        let condition = ready(&status);
        assert_eq!(condition.status, "True");
        assert_eq!(condition.reason, Reason::Suspended.as_str());
        assert_eq!(status.next_sync_time, None);
        assert_eq!(status.observed_generation, Some(3));
    }
}
