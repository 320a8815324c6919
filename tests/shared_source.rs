//! Many objects on one source, on a real control plane: one upstream request per round
//! (counted at the source), a 304 for one is a 304 for all, and a new map fetched for one
//! reaches all of them without another request.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use costmap_operator::digest::sha256_digest;
use costmap_operator::metrics::SyncResult;
use kube::ResourceExt;
use serde_json::json;

const OBJECTS: usize = 12;

/// The artifact digest of every object, and the lastSyncTime of each.
async fn digests_and_sync_times(
    client: &kube::Client,
    ns: &str,
) -> Vec<(String, Option<String>, Option<String>)> {
    let list = syncs(client, ns).list(&Default::default()).await.unwrap();
    list.items
        .iter()
        .map(|sync| {
            let status = sync.status.as_ref();
            (
                sync.name_any(),
                status.and_then(|s| Some(s.artifact.as_ref()?.digest.clone())),
                status.and_then(|s| Some(s.last_sync_time.as_ref()?.0.to_string())),
            )
        })
        .collect()
}

#[tokio::test]
async fn objects_on_one_source_share_one_request_per_round() {
    let client = client().await;
    let ns = namespace(&client, "shared").await;
    let first = small_map(60, &[]);
    let source = Source::start(Answer::Map(first.clone())).await;
    let operator = Operator::start(&client, &ns);
    for i in 0..OBJECTS {
        create_sync(
            &client,
            &ns,
            &format!("team-{i:02}"),
            json!({"source": {"url": source.url}, "interval": "1m"}),
        )
        .await;
    }
    // First round: every object Ready, every ConfigMap written, one request.
    let first_round = eventually("every object synced the first map", || async {
        let all = digests_and_sync_times(&client, &ns).await;
        let synced = all.len() == OBJECTS
            && all
                .iter()
                .all(|(_, digest, _)| digest.as_deref() == Some(&sha256_digest(&first)));
        synced.then_some(all)
    })
    .await;
    assert_eq!(
        source.statuses(),
        [200],
        "one request for {OBJECTS} objects"
    );

    // Second round, at the interval: one conditional request; its 304 answers everyone.
    let second_round = eventually_within(
        "every object synced again at its interval",
        Duration::from_secs(120),
        || async {
            let all = digests_and_sync_times(&client, &ns).await;
            let again = all
                .iter()
                .zip(&first_round)
                .all(|((_, _, now), (_, _, before))| now > before);
            again.then_some(all)
        },
    )
    .await;
    assert_eq!(
        source.statuses(),
        [200, 304],
        "one request in the second round"
    );
    assert_eq!(
        operator.metrics.syncs_with(SyncResult::NotModified),
        OBJECTS as u64,
        "the 304 was every object's answer"
    );

    // A new map, fetched for one object (asked to sync now), reaches all of them at once,
    // without a request of theirs.
    let second = small_map(61, &["day0-model"]);
    source.set(Answer::Map(second.clone()));
    request_sync(&client, &ns, "team-00", "now").await;
    eventually("every object holds the new map", || async {
        let all = digests_and_sync_times(&client, &ns).await;
        all.iter()
            .all(|(_, digest, _)| digest.as_deref() == Some(&sha256_digest(&second)))
            .then_some(())
    })
    .await;
    assert_eq!(source.statuses(), [200, 304, 200]);
    for i in 0..OBJECTS {
        let cm = config_maps(&client, &ns)
            .get(&format!("team-{i:02}"))
            .await
            .unwrap();
        assert_eq!(
            stored_bytes(&cm, "model_prices_and_context_window.json"),
            second.to_vec()
        );
    }
    let names: BTreeSet<String> = second_round.into_iter().map(|(name, _, _)| name).collect();
    assert_eq!(names.len(), OBJECTS);
    operator.stop().await;
}

#[tokio::test]
async fn different_headers_are_different_sources() {
    let client = client().await;
    let ns = namespace(&client, "shared-headers").await;
    let map = small_map(60, &[]);
    let source = Source::start(Answer::Map(map)).await;
    let operator = Operator::start(&client, &ns);
    for (name, token) in [("a", "one"), ("b", "two")] {
        let _: k8s_openapi::api::core::v1::Secret = create(
            &client,
            &ns,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": name}, "stringData": {"X-Token": token}}),
        )
        .await;
        create_sync(
            &client,
            &ns,
            name,
            json!({"source": {"url": source.url, "headersSecretRef": {"name": name}}}),
        )
        .await;
    }
    for name in ["a", "b"] {
        wait_ready(
            &client,
            &ns,
            name,
            "True",
            costmap_operator::api::Reason::Synced,
        )
        .await;
    }
    let mut tokens: Vec<String> = source
        .served()
        .iter()
        .filter_map(|s| Some(s.headers.get("x-token")?.to_str().ok()?.to_owned()))
        .collect();
    tokens.sort();
    assert_eq!(tokens, ["one", "two"], "one request per distinct source");
    operator.stop().await;
}
