//! One fetch per source: objects whose source URL and headers are the same share one fetch
//! in flight and its answer, so the source sees one request per interval however many
//! objects point at it. A 304 for one is a 304 for all.
//!
//! Each object (a *follower*, by uid) still decides for itself when to sync, and validates
//! what it gets. An answer younger than the follower's interval is reused (its next due
//! sync then asks the source again, and the others reuse that); when a fetch brings new
//! bytes, every other follower of the source is told ([`SharedFetcher::subscribe`]), so
//! they all publish the new map within seconds instead of at their own next interval.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use super::{FetchError, FetchOutcome, FetchPolicy, FetchRequest, Fetcher};
use crate::locks::lock;

/// How long a failure is the answer for the other followers too: those that waited for the
/// failed fetch, and those right behind them, do not ask a failing source again. The
/// follower it failed for retries on its own backoff.
const FAILURE_REUSE: Duration = Duration::from_secs(5);
/// How many news messages a slow listener may fall behind; one that falls further behind
/// misses some (its objects then sync at their own interval).
const NEWS_BACKLOG: usize = 64;

/// A body the source sent, with what every follower needs of it, computed once.
#[derive(Debug, PartialEq, Eq)]
pub struct SourceBody {
    /// The exact decoded bytes.
    pub bytes: Bytes,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// Git blob id of `bytes` (LiteLLM's `source_revision`).
    pub git_blob_id: String,
    /// The response's ETag, else its Last-Modified.
    pub revision: Option<String>,
}

/// What a follower asks for.
#[derive(Debug, Clone, Copy)]
pub struct SharedRequest<'a> {
    /// The request; its `revision` is the follower's own validator (set while the cluster
    /// holds the map it validates).
    pub fetch: FetchRequest<'a>,
    /// Who asks: the object's uid.
    pub follower: &'a str,
    /// Which kind of object asks: each kind forgets its own deleted objects
    /// ([`SharedFetcher::forget_except`]).
    pub kind: &'static str,
    /// An answer of the source younger than this is reused rather than asked again. Zero
    /// asks the source, unless a fetch of it is in flight (its answer is as fresh).
    pub max_age: Duration,
}

/// What a follower gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedOutcome {
    /// The source has the follower's revision still.
    NotModified,
    /// The source's current body.
    Fetched(Arc<SourceBody>),
}

/// Fetches through one [`Fetcher`], one fetch per source at a time, answers reused.
pub struct SharedFetcher {
    fetcher: Fetcher,
    sources: Mutex<HashMap<SourceKey, Arc<tokio::sync::Mutex<SourceState>>>>,
    followers: Mutex<HashMap<String, Following>>,
    news: broadcast::Sender<Vec<String>>,
}

/// A source: its URL and headers, hashed (the headers are secrets; the key holds none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SourceKey([u8; 32]);

impl SourceKey {
    fn of(url: &str, headers: &[(String, Vec<u8>)]) -> SourceKey {
        let mut sorted: Vec<&(String, Vec<u8>)> = headers.iter().collect();
        sorted.sort();
        let mut hasher = Sha256::new();
        // Lengths first, so that no two different requests feed the same bytes.
        for part in std::iter::once(url.as_bytes()).chain(
            sorted
                .iter()
                .flat_map(|(name, value)| [name.as_bytes(), value.as_slice()]),
        ) {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        SourceKey(hasher.finalize().into())
    }
}

/// What a follower follows, and whether another's fetch brought it news since its own.
struct Following {
    source: SourceKey,
    kind: &'static str,
    news: bool,
}

/// What is known of one source.
#[derive(Default)]
struct SourceState {
    /// The last body it sent.
    body: Option<Arc<SourceBody>>,
    /// The validator it last sent or confirmed.
    revision: Option<String>,
    /// When it last answered (200 or 304); None once it failed since.
    answered_at: Option<Instant>,
    /// The follower that fetched that answer.
    answered_for: String,
    /// Its last failure, when that came after its last answer: when, for whom, what.
    failure: Option<Failure>,
}

/// A failed fetch.
struct Failure {
    at: Instant,
    fetched_for: String,
    error: FetchError,
}

impl SourceState {
    /// The answer for a follower holding `revision`, from what is known; None when only a
    /// fetch can tell (the follower holds another revision and no body is at hand).
    fn answer(&self, revision: Option<&str>) -> Option<SharedOutcome> {
        if revision.is_some() && revision == self.revision.as_deref() {
            return Some(SharedOutcome::NotModified);
        }
        self.body.clone().map(SharedOutcome::Fetched)
    }

    /// What is known and recent enough to answer with, without asking the source.
    /// `asked_at` is when the follower asked: an answer that came after it (a fetch that was
    /// in flight) is as fresh as a fetch of its own.
    fn reusable(
        &self,
        follower: &str,
        revision: Option<&str>,
        max_age: Duration,
        asked_at: Instant,
        now: Instant,
    ) -> Option<Result<SharedOutcome, FetchError>> {
        if let Some(failure) = &self.failure
            && (failure.at >= asked_at
                || (failure.fetched_for != follower
                    && now.duration_since(failure.at) < FAILURE_REUSE))
        {
            return Some(Err(failure.error.clone()));
        }
        // A follower due again does not take its own answer from an interval ago: that one
        // asks the source, and the others take its answer.
        let answered = self.answered_at?;
        let recent =
            self.answered_for != follower && now.duration_since(answered) < reuse_window(max_age);
        (answered >= asked_at || recent)
            .then(|| self.answer(revision).map(Ok))
            .flatten()
    }
}

/// How old an answer may be to be reused by a follower whose interval is `max_age`: a
/// little less, because the follower's own schedule (whole seconds in status) can bring
/// it back a moment early, and it must then ask the source, not take the answer it got
/// an interval ago.
fn reuse_window(max_age: Duration) -> Duration {
    max_age.saturating_sub((max_age / 10).max(Duration::from_secs(2)))
}

impl SharedFetcher {
    /// Shares `fetcher`'s fetches.
    pub fn new(fetcher: Fetcher) -> SharedFetcher {
        SharedFetcher {
            fetcher,
            sources: Mutex::default(),
            followers: Mutex::default(),
            news: broadcast::channel(NEWS_BACKLOG).0,
        }
    }

    /// The policy every fetch follows.
    pub fn policy(&self) -> &FetchPolicy {
        self.fetcher.policy()
    }

    /// The uids of followers whose source sent new bytes to another follower, one message
    /// per new body.
    pub fn subscribe(&self) -> broadcast::Receiver<Vec<String>> {
        self.news.subscribe()
    }

    /// Whether another follower's fetch brought new bytes since `follower` last fetched.
    pub fn has_news(&self, follower: &str) -> bool {
        lock(&self.followers)
            .get(follower)
            .is_some_and(|following| following.news)
    }

    /// Fetches for one follower: an answer recent enough is reused; otherwise this waits
    /// for a fetch of the same source in flight, or makes one.
    pub async fn fetch(&self, request: &SharedRequest<'_>) -> Result<SharedOutcome, FetchError> {
        let asked_at = Instant::now();
        let key = SourceKey::of(request.fetch.url, request.fetch.headers);
        let source = self.follow(request.follower, request.kind, &key);
        let mut state = source.lock().await;
        let revision = request.fetch.revision;
        let now = Instant::now();
        if let Some(answer) =
            state.reusable(request.follower, revision, request.max_age, asked_at, now)
        {
            return answer;
        }
        // The source is asked for what this operator holds, when it holds a body;
        // otherwise for what the follower holds (a 304 then answers it alone).
        let validator = match &state.body {
            Some(_) => state.revision.clone(),
            None => revision.map(str::to_owned),
        };
        let fetch = FetchRequest {
            revision: validator.as_deref(),
            ..request.fetch
        };
        match self.fetcher.fetch(&fetch).await {
            Ok(FetchOutcome::NotModified) => state.revision = validator,
            Ok(FetchOutcome::Fetched {
                body,
                digests,
                revision,
            }) => {
                let body = Arc::new(SourceBody {
                    bytes: body,
                    digest: digests.sha256,
                    git_blob_id: digests.git_blob_id,
                    revision,
                });
                let news = state
                    .body
                    .as_ref()
                    .is_some_and(|old| old.digest != body.digest);
                state.revision.clone_from(&body.revision);
                state.body = Some(body);
                if news {
                    self.announce(&key, request.follower);
                }
            }
            Err(error) => {
                // An answer from before the failure is not the source's word any more.
                state.answered_at = None;
                state.failure = Some(Failure {
                    at: Instant::now(),
                    fetched_for: request.follower.to_owned(),
                    error: error.clone(),
                });
                return Err(error);
            }
        }
        state.answered_at = Some(Instant::now());
        request.follower.clone_into(&mut state.answered_for);
        state.failure = None;
        // The source just answered: for this follower's revision (a 304), or with a body.
        Ok(state.answer(revision).unwrap_or(SharedOutcome::NotModified))
    }

    /// Forgets every follower of `kind` but `live` (uids), and the sources nobody follows
    /// (their bodies with them); returns how many followers were forgotten.
    pub fn forget_except(&self, kind: &str, live: &HashSet<String>) -> usize {
        let mut followers = lock(&self.followers);
        let before = followers.len();
        followers.retain(|uid, following| following.kind != kind || live.contains(uid));
        let followed: HashSet<&SourceKey> = followers.values().map(|f| &f.source).collect();
        lock(&self.sources).retain(|key, _| followed.contains(key));
        before - followers.len()
    }

    /// Drops the body with `digest` wherever it is the last body a source sent (a map that
    /// was refused); the validator goes with it, so the next fetch asks for the whole body.
    /// A source whose fetch is in flight keeps it.
    pub fn forget_body(&self, digest: &str) {
        let sources: Vec<_> = lock(&self.sources).values().cloned().collect();
        for source in sources {
            if let Ok(mut state) = source.try_lock()
                && state
                    .body
                    .as_ref()
                    .is_some_and(|body| body.digest == digest)
            {
                state.body = None;
                state.revision = None;
                state.answered_at = None;
            }
        }
    }

    /// Records that `follower` follows `key` (and is about to get its latest answer), and
    /// returns the source's state.
    fn follow(
        &self,
        follower: &str,
        kind: &'static str,
        key: &SourceKey,
    ) -> Arc<tokio::sync::Mutex<SourceState>> {
        lock(&self.followers).insert(
            follower.to_owned(),
            Following {
                source: key.clone(),
                kind,
                news: false,
            },
        );
        Arc::clone(lock(&self.sources).entry(key.clone()).or_default())
    }

    /// Tells every follower of `key` but `fetched_by` that it has news.
    fn announce(&self, key: &SourceKey, fetched_by: &str) {
        let told: Vec<String> = lock(&self.followers)
            .iter_mut()
            .filter(|(uid, following)| &following.source == key && uid.as_str() != fetched_by)
            .map(|(uid, following)| {
                following.news = true;
                uid.clone()
            })
            .collect();
        if !told.is_empty() {
            // No listener (none running yet) is not an error: the flags stay set.
            let _ = self.news.send(told);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_digest;

    fn body(text: &str, revision: &str) -> Arc<SourceBody> {
        Arc::new(SourceBody {
            bytes: Bytes::copy_from_slice(text.as_bytes()),
            digest: sha256_digest(text.as_bytes()),
            git_blob_id: String::new(),
            revision: Some(revision.to_owned()),
        })
    }

    #[test]
    fn keys_differ_by_url_and_by_any_header_and_ignore_header_order() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, Vec<u8>)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        let a = SourceKey::of("http://a/map", &h(&[("x", "1"), ("y", "2")]));
        assert_eq!(
            a,
            SourceKey::of("http://a/map", &h(&[("y", "2"), ("x", "1")]))
        );
        assert_ne!(
            a,
            SourceKey::of("http://a/map", &h(&[("x", "1"), ("y", "3")]))
        );
        assert_ne!(
            a,
            SourceKey::of("http://b/map", &h(&[("x", "1"), ("y", "2")]))
        );
        assert_ne!(
            SourceKey::of("http://a/map", &h(&[("x", "12")])),
            SourceKey::of("http://a/map", &h(&[("x1", "2")]))
        );
    }

    #[test]
    fn a_refused_body_is_forgotten_and_the_others_kept() {
        let shared = SharedFetcher::new(Fetcher::new(FetchPolicy::default()).unwrap());
        let state = |text: &str| SourceState {
            body: Some(body(text, "\"v1\"")),
            revision: Some("\"v1\"".into()),
            answered_at: Some(Instant::now()),
            ..SourceState::default()
        };
        let headers = Vec::new();
        let (refused, kept) = (
            SourceKey::of("http://a/map", &headers),
            SourceKey::of("http://b/map", &headers),
        );
        for (key, text) in [(&refused, "refused"), (&kept, "kept")] {
            lock(&shared.sources).insert(key.clone(), Arc::new(state(text).into()));
        }
        shared.forget_body(&sha256_digest(b"refused"));
        let sources = lock(&shared.sources).clone();
        let refused = sources[&refused].try_lock().unwrap();
        assert!(refused.body.is_none() && refused.revision.is_none());
        assert!(
            refused.answer(None).is_none(),
            "nothing left to answer with"
        );
        let kept = sources[&kept].try_lock().unwrap();
        assert_eq!(kept.body.as_ref().unwrap().bytes, "kept");
    }

    #[test]
    fn a_recent_answer_is_reused_and_a_304_for_one_is_a_304_for_all() {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let state = SourceState {
            body: Some(body("{}", "\"v2\"")),
            revision: Some("\"v2\"".into()),
            answered_at: Some(now - Duration::from_secs(600)),
            answered_for: "other".into(),
            failure: None,
        };
        // A follower holding v2 is told it is current; one holding v1 or nothing gets v2.
        assert_eq!(
            state
                .reusable("f", Some("\"v2\""), hour, now, now)
                .unwrap()
                .unwrap(),
            SharedOutcome::NotModified
        );
        for held in [Some("\"v1\""), None] {
            assert!(matches!(
                state.reusable("f", held, hour, now, now),
                Some(Ok(SharedOutcome::Fetched(b))) if b.revision.as_deref() == Some("\"v2\"")
            ));
        }
        // Older than the window (interval minus a margin): asked again.
        assert!(
            state
                .reusable("f", None, Duration::from_secs(660), now, now)
                .is_none()
        );
        assert!(
            state
                .reusable("f", None, Duration::from_secs(610), now, now)
                .is_none()
        );
        assert_eq!(reuse_window(hour), Duration::from_secs(3240));
        // A sync someone asked for (max age zero) takes only an answer that came after it
        // asked: the fetch that was in flight.
        let asked = now - Duration::from_secs(601);
        assert!(
            state
                .reusable("f", None, Duration::ZERO, asked, now)
                .is_some()
        );
        let asked = now - Duration::from_secs(599);
        assert!(
            state
                .reusable("f", None, Duration::ZERO, asked, now)
                .is_none()
        );
        assert_eq!(
            reuse_window(Duration::from_secs(10)),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn without_a_body_only_the_confirmed_revision_is_answered() {
        let now = Instant::now();
        let state = SourceState {
            body: None,
            revision: Some("\"v1\"".into()),
            answered_at: Some(now),
            answered_for: "other".into(),
            failure: None,
        };
        let hour = Duration::from_secs(3600);
        assert_eq!(
            state
                .reusable("f", Some("\"v1\""), hour, now, now)
                .unwrap()
                .unwrap(),
            SharedOutcome::NotModified
        );
        assert!(state.reusable("f", None, hour, now, now).is_none());
        assert!(
            state
                .reusable("f", Some("\"v0\""), hour, now, now)
                .is_none()
        );
    }

    #[test]
    fn a_fresh_failure_is_the_others_answer_for_a_few_seconds() {
        let now = Instant::now();
        let error = FetchError::Client {
            detail: "down".into(),
        };
        let state = SourceState {
            failure: Some(Failure {
                at: now - Duration::from_secs(1),
                fetched_for: "first".into(),
                error,
            }),
            ..SourceState::default()
        };
        let hour = Duration::from_secs(3600);
        assert!(matches!(
            state.reusable("f", None, hour, now, now),
            Some(Err(_))
        ));
        let later = now + FAILURE_REUSE;
        assert!(state.reusable("f", None, hour, later, later).is_none());
        // The follower it failed for retries on its own backoff: it asks again...
        assert!(state.reusable("first", None, hour, now, now).is_none());
        // ...unless the failure came from a fetch in flight when it asked.
        let asked = now - Duration::from_secs(2);
        assert!(state.reusable("first", None, hour, asked, now).is_some());
    }
}
