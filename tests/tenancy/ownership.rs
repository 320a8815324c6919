//! Issue 21, ownership and the rate of requested syncs: a ConfigMap in the way that the
//! object does not control (a target, a chunk, a history slot, a cluster copy or a chunk of
//! one) is left exactly as it was, Ready=False `OwnedByAnother` names it and `Stalled=True`;
//! a cluster object still fills its other namespaces. Two sync requests within
//! `--min-sync-gap` are both handled: one fetch at once, the next when the gap has passed.
//!
//! On f08083a the namespaced kind took each of these ConfigMaps over (create, 409, patch
//! with a controller owner reference), the cluster kind took a foreign chunk over and said
//! `NamespacesFailing` of a foreign first copy, and the second request was fetched at once.
//!
//! All cases share one cluster-wide operator (the cluster kind needs one, and two on one
//! control plane would both reconcile every object).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use costmap_operator::api::{DEFAULT_KEY, Reason};
use costmap_operator::layout::chunks::split_gz;
use costmap_operator::layout::gzip::StoredMap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::common::big_map::big_map;
use crate::common::kinds::{Kind, Subject, assert_ready, operator_on_its_own_runtime};
use crate::common::{
    Answer, Source, client, config_maps, eventually, real_map, small_map, stored_bytes,
};

/// The URL of the operator these cases share, started on first use.
fn operator_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| operator_on_its_own_runtime(|_| async {}))
}

/// A ConfigMap `name` of someone else's in `namespace`: no label, no owner.
async fn precious(client: &Client, namespace: &str, name: &str) -> ConfigMap {
    let config_map: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": {"keep": "me"},
    }))
    .unwrap();
    config_maps(client, namespace)
        .create(&PostParams::default(), &config_map)
        .await
        .expect("create someone else's ConfigMap")
}

/// Asserts that `before` is as it was: same resourceVersion (nothing written, not even
/// metadata), same data, no owner, no label or annotation added.
async fn assert_untouched(client: &Client, before: &ConfigMap) {
    let namespace = before.namespace().unwrap();
    let name = before.name_any();
    let now = config_maps(client, &namespace).get(&name).await.unwrap();
    assert_eq!(
        now.resource_version(),
        before.resource_version(),
        "{namespace}/{name} was written"
    );
    assert_eq!(now.data, before.data, "{namespace}/{name}");
    assert!(now.owner_references().is_empty(), "{namespace}/{name}");
    assert_eq!(now.labels(), before.labels(), "{namespace}/{name}");
    assert_eq!(
        now.annotations(),
        before.annotations(),
        "{namespace}/{name}"
    );
}

/// Waits for Ready=False OwnedByAnother naming `namespace/name`, with Stalled=True beside
/// it; returns the Ready message.
async fn wait_owned_by_another(s: &Subject, namespace: &str, name: &str) -> String {
    let status = s.wait_ready("False", Reason::OwnedByAnother).await;
    let ready = assert_ready(&status, ("False", Reason::OwnedByAnother), "blocked");
    let named = format!("{namespace}/{name}");
    assert!(ready.message.contains(&named), "{}", ready.message);
    let stalled = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .expect("a Stalled condition");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "OwnedByAnother")
    );
    ready.message.clone()
}

/// A map whose gzip does not fit one ConfigMap: stored in chunks.
fn chunked_map() -> Bytes {
    let map = big_map(&real_map("1.110.2"), 6);
    let gz = StoredMap::from_bytes(map.to_vec()).gz;
    assert!(split_gz(&gz).len() >= 2, "the map needs chunks");
    map
}

/// For the cluster kind: the namespaces part of status says `blocked` is OwnedByAnother,
/// and the other namespace holds `map` (in chunks: its first ConfigMap names them).
async fn assert_other_namespace_filled(client: &Client, s: &Subject, blocked: &str, map: &[u8]) {
    let other = s.namespaces.iter().find(|ns| *ns != blocked).unwrap();
    let chunked = split_gz(&StoredMap::from_bytes(map.to_vec()).gz).len() > 1;
    eventually(&format!("{other} to hold the map"), || async {
        let first = config_maps(client, other).get_opt(&s.name).await.ok()??;
        match chunked {
            true => first.annotations().contains_key("costmap.dev/chunks"),
            false => stored_bytes(&first, DEFAULT_KEY) == map,
        }
        .then_some(())
    })
    .await;
    let namespaces = s.raw_status().await["namespaces"].clone();
    assert_eq!(namespaces["summary"], "1/2", "{namespaces}");
    let failing = &namespaces["failing"][0];
    assert_eq!(failing["namespace"], blocked, "{namespaces}");
    assert_eq!(failing["reason"], "OwnedByAnother", "{namespaces}");
}

async fn a_target_of_someone_else_is_left_untouched(kind: Kind) {
    let client = client().await;
    let map = small_map(60, &[]);
    let source = Source::start(Answer::Map(map.clone())).await;
    let s = Subject::without_object(
        kind,
        &client,
        operator_url(),
        &format!("precious-{}", suffix(kind)),
    )
    .await;
    let blocked = s.namespaces[0].clone();
    let before = precious(&client, &blocked, &s.name).await;
    s.create_object(json!({"source": {"url": source.url}, "interval": "1h"}))
        .await;

    wait_owned_by_another(&s, &blocked, &s.name).await;
    if kind == Kind::Cluster {
        assert_other_namespace_filled(&client, &s, &blocked, &map).await;
    }
    assert_untouched(&client, &before).await;
}

#[tokio::test]
async fn a_target_of_someone_else_is_left_untouched_namespaced() {
    a_target_of_someone_else_is_left_untouched(Kind::Namespaced).await;
}

#[tokio::test]
async fn a_copy_of_someone_else_is_left_untouched_and_the_other_namespace_filled() {
    a_target_of_someone_else_is_left_untouched(Kind::Cluster).await;
}

#[tokio::test]
async fn a_history_slot_of_someone_else_blocks_the_sync_before_the_target_is_written() {
    let client = client().await;
    let map = small_map(60, &[]);
    let source = Source::start(Answer::Map(map.clone())).await;
    let s = Subject::without_object(Kind::Namespaced, &client, operator_url(), "slot-ns").await;
    let namespace = s.namespaces[0].clone();
    let slot = format!("{}-history-1", s.name);
    let before = precious(&client, &namespace, &slot).await;
    s.create_object(json!({"source": {"url": source.url}, "interval": "1h"}))
        .await;

    wait_owned_by_another(&s, &namespace, &slot).await;
    assert_untouched(&client, &before).await;
    let target = config_maps(&client, &namespace)
        .get_opt(&s.name)
        .await
        .unwrap();
    assert!(
        target.is_none(),
        "nothing of the sync is written: the target would hold a map its history lacks"
    );
}

async fn a_chunk_of_someone_else_is_left_untouched(kind: Kind) {
    let client = client().await;
    let map = chunked_map();
    let source = Source::start(Answer::Map(map.clone())).await;
    let s = Subject::without_object(
        kind,
        &client,
        operator_url(),
        &format!("chunk-{}", suffix(kind)),
    )
    .await;
    let blocked = s.namespaces[0].clone();
    let chunk = format!("{}-1", s.name);
    let before = precious(&client, &blocked, &chunk).await;
    s.create_object(json!({"source": {"url": source.url}, "interval": "1h"}))
        .await;

    wait_owned_by_another(&s, &blocked, &chunk).await;
    assert_untouched(&client, &before).await;
    let first = config_maps(&client, &blocked)
        .get_opt(&s.name)
        .await
        .unwrap();
    assert!(
        first.is_none(),
        "nothing of the map is written in {blocked}"
    );
    if kind == Kind::Cluster {
        assert_other_namespace_filled(&client, &s, &blocked, &map).await;
    }
}

#[tokio::test]
async fn a_chunk_of_someone_else_is_left_untouched_namespaced() {
    a_chunk_of_someone_else_is_left_untouched(Kind::Namespaced).await;
}

#[tokio::test]
async fn a_chunk_of_a_copy_of_someone_else_is_left_untouched() {
    a_chunk_of_someone_else_is_left_untouched(Kind::Cluster).await;
}

fn suffix(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespaced => "ns",
        Kind::Cluster => "cl",
    }
}

/// Two sync requests within the gap (5s by default): the first is fetched at once, the
/// second only once the gap since the first has passed, and it is handled, not dropped.
#[tokio::test]
async fn a_second_sync_request_within_the_gap_waits_for_it_and_is_not_lost() {
    let gap = costmap_operator::sync::schedule::DEFAULT_MIN_SYNC_GAP;
    let client = client().await;
    let map = small_map(60, &[]);
    let source = Source::start(Answer::Map(map.clone())).await;
    let s = Subject::create(
        Kind::Namespaced,
        &client,
        operator_url(),
        "gap",
        &source,
        json!({}),
    )
    .await;
    s.wait_ready("True", Reason::Synced).await;
    let first_sync = source.received();

    s.sync_now("one").await;
    let handled_one = Instant::now();
    assert_eq!(
        source.received(),
        first_sync + 1,
        "one fetch for the first request"
    );
    s.request_sync("two").await;
    s.wait_handled("two").await;
    let waited = handled_one.elapsed();
    assert_eq!(
        source.received(),
        first_sync + 2,
        "one fetch for the second request"
    );
    // Status times are whole seconds, so the gap may end up to a second early.
    assert!(
        waited >= gap - Duration::from_millis(1500),
        "the second request was fetched {waited:?} after the first, within the {gap:?} gap"
    );
}
