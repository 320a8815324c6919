//! Timing a sync from outside, shared by the benches that drive the operator through the
//! control plane.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::common::{request_sync, syncs};

/// Times syncs of `litellm` in one namespace: requests one and waits until its status
/// records it. One watch stays open for every run: a watch started per run (and the new
/// connection its request then needs) cost the bench about 50 ms a run that were not the
/// operator's.
pub struct SyncTimer {
    client: kube::Client,
    ns: String,
    handled: watch::Receiver<Option<String>>,
}

impl SyncTimer {
    /// Starts watching `litellm` in `ns`.
    pub fn new(client: &kube::Client, ns: &str) -> SyncTimer {
        let (tell, handled) = watch::channel(None);
        let config = watcher::Config::default().fields("metadata.name=litellm");
        let objects = watcher(syncs(client, ns), config).applied_objects();
        tokio::spawn(objects.for_each(move |sync| {
            let handled = sync
                .ok()
                .and_then(|sync| sync.status?.last_handled_sync_request);
            if handled.is_some() {
                tell.send_replace(handled);
            }
            async {}
        }));
        SyncTimer {
            client: client.clone(),
            ns: ns.to_owned(),
            handled,
        }
    }

    /// Requests a sync (`token`) and returns the milliseconds until status records it.
    pub async fn timed_sync(&mut self, token: &str) -> f64 {
        let started = Instant::now();
        request_sync(&self.client, &self.ns, "litellm", token).await;
        let handled = self
            .handled
            .wait_for(|handled| handled.as_deref() == Some(token));
        tokio::time::timeout(Duration::from_secs(120), handled)
            .await
            .expect("sync handled in time")
            .expect("the watch runs");
        started.elapsed().as_secs_f64() * 1000.0
    }
}

/// `map` with one more model, named for `run`, so that every run has a map of its own.
pub fn never_seen(map: &[u8], run: usize) -> bytes::Bytes {
    let entry = format!(
        r#"{{"bench-model-{run}": {{"litellm_provider": "openai", "mode": "chat", "max_tokens": 8192, "input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}},"#
    );
    let open = map
        .iter()
        .position(|&b| b == b'{')
        .expect("the map is a JSON object");
    let mut changed = map[..open].to_vec();
    changed.extend_from_slice(entry.as_bytes());
    changed.extend_from_slice(&map[open + 1..]);
    changed.into()
}
