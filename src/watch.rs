//! Watches that outlive API-server restarts and errors.
//!
//! kube's watcher resumes a broken watch from its last resourceVersion without telling
//! anyone when it works again, so a cache built on it cannot say whether it is current. This
//! one starts kube's watcher afresh after an error, after a backoff: the new watcher lists
//! everything again, and its `InitDone` proves the watch works. Readiness (`/readyz`) is
//! built on that proof: a cache is ready between an `InitDone` and the next error.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::Api;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;

/// How many ConfigMaps holding maps one list answer holds: each is a quarter of a MB on the
/// wire.
const PUBLISHED_MAPS_PAGE_SIZE: u32 = 16;

/// The ConfigMaps that hold published maps (targets and cluster copies, with their chunks;
/// not the history ring's), a few per list answer.
pub fn published_maps() -> watcher::Config {
    watcher::Config::default()
        .labels(&crate::layout::published_maps_selector())
        .page_size(PUBLISHED_MAPS_PAGE_SIZE)
}

/// First wait after a failed watch; it doubles, with jitter, up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two tries of a failing watch: also the longest a change can go
/// unseen once the API server is back (kube's default, 30 s, made a restarted API server
/// cost proxies half a minute).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Watches `api` forever: each error is yielded, then, after a backoff, a new watcher starts
/// with a full list (`Init` .. `InitDone`). The backoff starts again once a list completes.
pub fn resilient<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let state = State {
        api,
        config,
        phase: Phase::Start,
        delays: delays(),
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            match std::mem::replace(&mut state.phase, Phase::Start) {
                Phase::Start => {
                    let stream = watcher::watcher(state.api.clone(), state.config.clone());
                    state.phase = Phase::Watching(stream.boxed());
                }
                Phase::Resting(wait) => tokio::time::sleep(wait).await,
                Phase::Watching(mut stream) => match stream.next().await {
                    Some(Ok(event)) => {
                        if matches!(event, Event::InitDone) {
                            state.delays = delays();
                        }
                        state.phase = Phase::Watching(stream);
                        return Some((Ok(event), state));
                    }
                    Some(Err(error)) => {
                        // The caller learns of the error at once (and stops claiming to be
                        // current); the next watcher starts after the wait.
                        let wait = state.delays.next().unwrap_or(MAX_BACKOFF);
                        state.phase = Phase::Resting(wait);
                        return Some((Err(error), state));
                    }
                    // kube's watcher never ends; if it did, start another.
                    None => {}
                },
            }
        }
    })
}

struct State<K: kube::Resource> {
    api: Api<K>,
    config: watcher::Config,
    phase: Phase<K>,
    delays: backon::ExponentialBackoff,
}

enum Phase<K> {
    /// Start a new watcher (it lists first).
    Start,
    /// Watching; each event is passed on.
    Watching(BoxStream<'static, Result<Event<K>, watcher::Error>>),
    /// Waiting after an error before starting again.
    Resting(Duration),
}

fn delays() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The same backoff for kube's own watches (the controller's triggers).
pub struct Backoff {
    delays: backon::ExponentialBackoff,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { delays: delays() }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.delays.next()
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        self.delays = delays();
    }
}
