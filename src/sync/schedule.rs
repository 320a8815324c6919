//! When to fetch: only when a sync is due, so that a status write (which triggers another
//! reconcile) never causes a fetch.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::ModelCostMapSyncStatus;

/// What the reconciler knows when it decides.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Now.
    pub now: Timestamp,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `spec.suspend`.
    pub suspended: bool,
    /// Value of the sync-request annotation.
    pub sync_request: Option<&'a str>,
    /// The current status.
    pub status: Option<&'a ModelCostMapSyncStatus>,
    /// Whether the cluster (or memory) still holds the last good map named in status.
    pub has_last_good: bool,
    /// Whether the last attempt failed: `nextSyncTime` is then its retry, which every
    /// sync but a requested or a new spec's waits for.
    pub retrying: bool,
    /// Whether the overrides (a referenced ConfigMap) say something else than when the map
    /// was last published.
    pub overrides_changed: bool,
    /// Whether a person edited the overrides since the last attempt: worth a sync now even
    /// while a failed one waits for its retry (a fix is seen at once; a fetch happens only
    /// when the fetched map is not at hand).
    pub overrides_edited: bool,
    /// Whether another object on the same source fetched a new map from it since this
    /// object last asked: taking it costs the source nothing.
    pub source_news: bool,
    /// The least time between the start of the last attempt and a requested sync or an
    /// override republish: whoever may annotate the object or edit its overrides cannot
    /// make the operator fetch and write as fast as they can write to the API server.
    pub min_gap: Duration,
}

/// Why a sync runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncCause {
    /// Never synced.
    FirstSync,
    /// The spec changed since the last attempt.
    SpecChanged,
    /// A new value of the sync-request annotation.
    Requested,
    /// The interval (or the retry backoff) has passed.
    Due,
    /// The ConfigMap lost the last good map and nothing else holds it.
    TargetLost,
    /// The overrides changed: the map is published again (without a fetch when the fetched
    /// map is at hand).
    OverridesChanged,
    /// Another object on the same source fetched a new map from it.
    SourceChanged,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Suspended: no sync, scheduled or requested.
    Suspended,
    /// Sync now.
    Sync(SyncCause),
    /// Nothing to do until this much time has passed.
    Wait(Duration),
}

/// Decides whether to fetch now.
pub fn decide(inputs: &Inputs) -> Decision {
    if inputs.suspended {
        return Decision::Suspended;
    }
    let Some(status) = inputs.status.filter(|s| s.last_attempt_time.is_some()) else {
        return Decision::Sync(SyncCause::FirstSync);
    };
    if status.observed_generation != inputs.generation {
        return Decision::Sync(SyncCause::SpecChanged);
    }
    // A request or an override change within the gap waits for it, never dropped: the
    // reconcile after the wait sees it still pending.
    let gap_left = gap_left(inputs, status);
    let mut held = None;
    if inputs.sync_request.is_some()
        && inputs.sync_request != status.last_handled_sync_request.as_deref()
    {
        match gap_left {
            None => return Decision::Sync(SyncCause::Requested),
            Some(left) => held = Some(left),
        }
    }
    let remaining = status
        .next_sync_time
        .as_ref()
        .map(|next| inputs.now.duration_until(next.0))
        .filter(|remaining| *remaining > SignedDuration::ZERO);
    // A lost map is restored at once, but a restore that failed waits for its retry like
    // any failed sync: a source that keeps failing is not asked again and again.
    if status.artifact.is_some()
        && !inputs.has_last_good
        && (!inputs.retrying || remaining.is_none())
    {
        return Decision::Sync(SyncCause::TargetLost);
    }
    if inputs.overrides_changed
        && (!inputs.retrying || remaining.is_none() || inputs.overrides_edited)
    {
        match gap_left {
            None => return Decision::Sync(SyncCause::OverridesChanged),
            Some(left) => held = Some(left),
        }
    }
    // Even while a failed sync waits for its retry: the source has just answered.
    if inputs.source_news {
        return Decision::Sync(SyncCause::SourceChanged);
    }
    match remaining {
        Some(remaining) => {
            let remaining = remaining.unsigned_abs();
            Decision::Wait(held.map_or(remaining, |held| held.min(remaining)))
        }
        None => Decision::Sync(SyncCause::Due),
    }
}

/// How much of [`Inputs::min_gap`] is left since the last attempt started; none once it
/// has passed. A start in the future (another replica's clock) waits one gap at most.
fn gap_left(inputs: &Inputs, status: &ModelCostMapSyncStatus) -> Option<Duration> {
    let started = status.last_attempt_time.as_ref()?.0;
    let since = started.duration_until(inputs.now);
    let gap = SignedDuration::try_from(inputs.min_gap).unwrap_or(SignedDuration::MAX);
    let left = gap.checked_sub(since.max(SignedDuration::ZERO))?;
    (left > SignedDuration::ZERO).then(|| left.unsigned_abs())
}

/// The default [`Inputs::min_gap`].
pub const DEFAULT_MIN_SYNC_GAP: Duration = Duration::from_secs(5);

/// The shortest `spec.interval` the CRD allows.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// The default first wait after a failed sync ([`retry_after_failure`]'s `first`).
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(30);

/// How long to wait, from the end of the failed attempt, before retrying after
/// `consecutive_failures` failed syncs: `first` doubling, never longer than the interval,
/// so a broken source is not hammered and a healthy schedule is not delayed.
pub fn retry_after_failure(
    consecutive_failures: u32,
    first: Duration,
    interval: Duration,
) -> Duration {
    let exponent = consecutive_failures.saturating_sub(1).min(16);
    first.saturating_mul(1 << exponent).min(interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use crate::api::Artifact;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn synced_status() -> ModelCostMapSyncStatus {
        ModelCostMapSyncStatus {
            observed_generation: Some(2),
            last_attempt_time: Some(Time(at(1000))),
            next_sync_time: Some(Time(at(4600))),
            last_handled_sync_request: Some("r1".into()),
            artifact: Some(Artifact {
                digest: "sha256:x".into(),
                git_blob_id: "x".into(),
                revision: None,
                size: 1,
                models: 1,
                last_update_time: Time(at(1000)),
            }),
            ..Default::default()
        }
    }

    fn inputs(status: &ModelCostMapSyncStatus) -> Inputs<'_> {
        Inputs {
            now: at(2000),
            generation: Some(2),
            suspended: false,
            sync_request: Some("r1"),
            status: Some(status),
            has_last_good: true,
            retrying: false,
            overrides_changed: false,
            overrides_edited: false,
            source_news: false,
            min_gap: Duration::from_secs(5),
        }
    }

    #[test]
    fn news_of_the_shared_source_syncs_now_even_while_retrying_but_not_when_suspended() {
        let status = synced_status();
        let news = Inputs {
            source_news: true,
            retrying: true,
            ..inputs(&status)
        };
        assert_eq!(decide(&news), Decision::Sync(SyncCause::SourceChanged));
        let suspended = Inputs {
            suspended: true,
            ..news
        };
        assert_eq!(decide(&suspended), Decision::Suspended);
    }

    #[test]
    fn a_status_write_alone_never_causes_a_fetch() {
        let status = synced_status();
        assert_eq!(
            decide(&inputs(&status)),
            Decision::Wait(Duration::from_secs(2600))
        );
    }

    #[test]
    fn first_sync_spec_change_request_and_due_each_trigger_a_sync() {
        let status = synced_status();
        let first = Inputs {
            status: None,
            ..inputs(&status)
        };
        assert_eq!(decide(&first), Decision::Sync(SyncCause::FirstSync));
        let changed = Inputs {
            generation: Some(3),
            ..inputs(&status)
        };
        assert_eq!(decide(&changed), Decision::Sync(SyncCause::SpecChanged));
        let requested = Inputs {
            sync_request: Some("r2"),
            ..inputs(&status)
        };
        assert_eq!(decide(&requested), Decision::Sync(SyncCause::Requested));
        let due = Inputs {
            now: at(4600),
            ..inputs(&status)
        };
        assert_eq!(decide(&due), Decision::Sync(SyncCause::Due));
        let lost = Inputs {
            has_last_good: false,
            ..inputs(&status)
        };
        assert_eq!(decide(&lost), Decision::Sync(SyncCause::TargetLost));
    }

    #[test]
    fn a_lost_map_is_restored_at_once_unless_a_failed_restore_waits_for_its_retry() {
        let status = synced_status();
        let failed_restore = Inputs {
            has_last_good: false,
            retrying: true,
            ..inputs(&status)
        };
        assert_eq!(
            decide(&failed_restore),
            Decision::Wait(Duration::from_secs(2600))
        );
        let retry_due = Inputs {
            now: at(4600),
            ..failed_restore
        };
        assert_eq!(decide(&retry_due), Decision::Sync(SyncCause::TargetLost));
        let requested = Inputs {
            sync_request: Some("r2"),
            ..failed_restore
        };
        assert_eq!(decide(&requested), Decision::Sync(SyncCause::Requested));
    }

    #[test]
    fn changed_overrides_republish_at_once_unless_a_failure_waits_for_its_retry() {
        let status = synced_status();
        let changed = Inputs {
            overrides_changed: true,
            ..inputs(&status)
        };
        assert_eq!(
            decide(&changed),
            Decision::Sync(SyncCause::OverridesChanged)
        );
        let failing = Inputs {
            retrying: true,
            ..changed
        };
        assert_eq!(decide(&failing), Decision::Wait(Duration::from_secs(2600)));
        let fixed = Inputs {
            overrides_edited: true,
            ..failing
        };
        assert_eq!(decide(&fixed), Decision::Sync(SyncCause::OverridesChanged));
    }

    #[test]
    fn a_request_within_the_gap_waits_for_it_and_then_syncs() {
        // The last attempt started at 1000.
        let status = synced_status();
        let early = Inputs {
            now: at(1002),
            sync_request: Some("r2"),
            ..inputs(&status)
        };
        assert_eq!(decide(&early), Decision::Wait(Duration::from_secs(3)));
        let later = Inputs {
            now: at(1005),
            ..early
        };
        assert_eq!(decide(&later), Decision::Sync(SyncCause::Requested));
        let no_gap = Inputs {
            min_gap: Duration::ZERO,
            ..early
        };
        assert_eq!(decide(&no_gap), Decision::Sync(SyncCause::Requested));
    }

    #[test]
    fn an_override_change_within_the_gap_waits_for_it_too() {
        let status = synced_status();
        let early = Inputs {
            now: at(1001),
            overrides_changed: true,
            overrides_edited: true,
            ..inputs(&status)
        };
        assert_eq!(decide(&early), Decision::Wait(Duration::from_secs(4)));
        let later = Inputs {
            now: at(1006),
            ..early
        };
        assert_eq!(decide(&later), Decision::Sync(SyncCause::OverridesChanged));
    }

    #[test]
    fn the_gap_holds_back_nothing_else() {
        let status = synced_status();
        let early = Inputs {
            now: at(1001),
            sync_request: Some("r2"),
            ..inputs(&status)
        };
        let lost = Inputs {
            has_last_good: false,
            ..early
        };
        assert_eq!(decide(&lost), Decision::Sync(SyncCause::TargetLost));
        let news = Inputs {
            source_news: true,
            ..early
        };
        assert_eq!(decide(&news), Decision::Sync(SyncCause::SourceChanged));
        let changed = Inputs {
            generation: Some(3),
            ..early
        };
        assert_eq!(decide(&changed), Decision::Sync(SyncCause::SpecChanged));
        // A scheduled sync that comes first answers the request.
        let mut due_soon = synced_status();
        due_soon.next_sync_time = Some(Time(at(1002)));
        let waiting = Inputs {
            status: Some(&due_soon),
            ..early
        };
        assert_eq!(decide(&waiting), Decision::Wait(Duration::from_secs(1)));
        // A clock behind the last attempt's start waits one gap at most.
        let behind = Inputs {
            now: at(900),
            ..early
        };
        assert_eq!(decide(&behind), Decision::Wait(Duration::from_secs(5)));
    }

    #[test]
    fn removing_the_request_annotation_is_not_a_request() {
        let status = synced_status();
        let removed = Inputs {
            sync_request: None,
            ..inputs(&status)
        };
        assert!(matches!(decide(&removed), Decision::Wait(_)));
    }

    #[test]
    fn suspend_wins_over_everything() {
        let status = synced_status();
        let suspended = Inputs {
            suspended: true,
            sync_request: Some("r9"),
            generation: Some(7),
            ..inputs(&status)
        };
        assert_eq!(decide(&suspended), Decision::Suspended);
    }

    #[test]
    fn failures_back_off_up_to_the_interval() {
        let hour = Duration::from_secs(3600);
        let first = DEFAULT_RETRY_BACKOFF;
        assert_eq!(retry_after_failure(1, first, hour), Duration::from_secs(30));
        assert_eq!(
            retry_after_failure(3, first, hour),
            Duration::from_secs(120)
        );
        assert_eq!(retry_after_failure(30, first, hour), hour);
        assert_eq!(
            retry_after_failure(1, first, Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        assert_eq!(
            retry_after_failure(2, Duration::from_secs(1), hour),
            Duration::from_secs(2)
        );
    }
}
