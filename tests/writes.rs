//! What the operator asks of the API server to write a map: each ConfigMap once. A new
//! target or history slot is created outright (not first sent as a patch that the API
//! server answers 404, a quarter of a MB for nothing), and one that is there is patched.
//!
//! A test binary of its own: it counts the API server's requests, so nothing else may run
//! on its control plane.

mod common;

use common::*;
use costmap_operator::digest::sha256_digest;
use kube::Client;
use serde_json::json;

/// The API server's count of ConfigMap requests with `verb` answered `code`.
async fn config_map_requests(client: &Client, verb: &str, code: &str) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.expect("/metrics");
    text.lines()
        .filter(|line| line.starts_with("apiserver_request_total{"))
        .filter(|line| {
            [
                format!("code=\"{code}\""),
                "resource=\"configmaps\"".to_owned(),
                "subresource=\"\"".to_owned(),
                format!("verb=\"{verb}\""),
            ]
            .iter()
            .all(|label| line.contains(label.as_str()))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|count| count as u64)
        .sum()
}

/// ConfigMap patches so far: (answered 200, answered 404).
async fn patches(client: &Client) -> (u64, u64) {
    (
        config_map_requests(client, "PATCH", "200").await,
        config_map_requests(client, "PATCH", "404").await,
    )
}

/// ConfigMap patches since `before` (a reading of [`patches`]): (answered 200, answered 404).
async fn patches_since(client: &Client, before: (u64, u64)) -> (u64, u64) {
    let (patched, missed) = patches(client).await;
    (patched - before.0, missed - before.1)
}

/// Waits until status names `map` as published with `slots` history entries.
async fn wait_published(s: &Scenario, map: &[u8], slots: usize) {
    let digest = sha256_digest(map);
    eventually(
        &format!("{digest} published, {slots} in history"),
        || async {
            let status = syncs(&s.client, &s.ns).get("litellm").await.ok()?.status?;
            let published = status.artifact?.digest == digest && status.history.len() == slots;
            published.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_new_configmap_is_created_at_once_and_one_that_is_there_is_patched() {
    let client = client().await;
    // Counted from here: the API server's own ConfigMaps (kube-system) are created and
    // updated, never patched.
    let before = patches(&client).await;
    let first = small_map(60, &[]);
    let s = Scenario::new("writes", Answer::Map(first.clone()), json!({})).await;

    // The first map: the target and the first history slot are new, so created: nothing
    // to patch, and no patch of a ConfigMap that is not there (answered 404).
    wait_published(&s, &first, 1).await;
    assert_eq!(patches_since(&client, before).await, (0, 0));

    // A new map: the target is patched, once; the second slot created.
    let second = small_map(60, &["model-launched-today"]);
    s.source.set(Answer::Map(second.clone()));
    request_sync(&s.client, &s.ns, "litellm", "new-map").await;
    wait_published(&s, &second, 2).await;
    assert_eq!(patches_since(&client, before).await, (1, 0));
    s.operator.stop().await;
}
