//! Timing a sync from outside, shared by the benches that drive the operator through the
//! control plane.

use std::time::{Duration, Instant};

use kube::runtime::wait::await_condition;

use crate::common::{request_sync, syncs};

/// Requests a sync of `litellm` in `ns` and returns the milliseconds until its status
/// records it.
pub async fn timed_sync(client: &kube::Client, ns: &str, token: &str) -> f64 {
    let api = syncs(client, ns);
    let started = Instant::now();
    request_sync(client, ns, "litellm", token).await;
    let handled = await_condition(
        api,
        "litellm",
        |sync: Option<&costmap_operator::api::ModelCostMapSync>| {
            sync.and_then(|s| s.status.as_ref())
                .is_some_and(|s| s.last_handled_sync_request.as_deref() == Some(token))
        },
    );
    tokio::time::timeout(Duration::from_secs(120), handled)
        .await
        .expect("sync handled in time")
        .expect("watch");
    started.elapsed().as_secs_f64() * 1000.0
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
