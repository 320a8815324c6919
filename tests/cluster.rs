//! ClusterModelCostMapSync on the real control plane: one fetch fills every selected
//! namespace, follows label changes, and leaves a ConfigMap of someone else alone.
//!
//! One test, told as a story: the operator here watches the whole cluster, and two such
//! operators on one control plane would both reconcile every cluster object.

mod common;

use std::collections::BTreeMap;

use common::cluster::*;
use common::*;
use costmap_operator::api::{
    ClusterModelCostMapSync, DEFAULT_KEY, EventReason, NamespacesStatus, Reason,
};
use costmap_operator::digest::sha256_digest;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

const NAME: &str = "shared";

/// Sets (Some) or removes (None) the selector label on a namespace.
async fn set_label(client: &Client, namespace: &str, key: &str, value: Option<&str>) {
    let patch = json!({"metadata": {"labels": {key: value}}});
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label namespace");
}

/// Waits until the namespaces summary satisfies `check`; returns it.
async fn wait_namespaces(
    client: &Client,
    what: &str,
    check: impl Fn(&NamespacesStatus) -> bool,
) -> ClusterModelCostMapSync {
    eventually(what, || async {
        let sync = cluster_syncs(client).get(NAME).await.ok()?;
        let namespaces = sync.status.as_ref()?.namespaces.as_ref()?;
        check(namespaces).then_some(sync)
    })
    .await
}

async fn served(operator: &Operator, namespace: &str) -> Option<Vec<u8>> {
    served_map(operator, namespace, NAME).await
}

async fn wait_served(operator: &Operator, namespace: &str, bytes: &[u8]) {
    eventually(
        &format!("/maps/{namespace}/{NAME} serves the map"),
        || async { (served(operator, namespace).await? == bytes).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_cluster_sync_fills_every_selected_namespace_and_follows_label_changes() {
    let client = client().await;
    let operator = Operator::start_cluster_wide(&client);
    let label = format!("costmap-test-{}", std::process::id());
    let selected = BTreeMap::from([(label.clone(), "yes".to_owned())]);
    let ns = |n: &str| format!("cluster-{n}-{}", std::process::id());
    let (a, b, c, d, taken, later) = (ns("a"), ns("b"), ns("c"), ns("d"), ns("taken"), ns("later"));
    for name in [&a, &b, &c, &taken] {
        labelled_namespace(&client, name, &selected).await;
    }
    labelled_namespace(&client, &d, &BTreeMap::new()).await;

    // In one selected namespace a namespaced ModelCostMapSync already owns a ConfigMap of
    // the same name (from a source of its own, so the cluster source's count is its own).
    let other_source = Source::start(Answer::Map(small_map(55, &[]))).await;
    create_sync(
        &client,
        &taken,
        NAME,
        json!({"source": {"url": other_source.url}}),
    )
    .await;
    wait_ready(&client, &taken, NAME, "True", Reason::Synced).await;

    let first = small_map(60, &[]);
    let source = Source::start(Answer::Map(first.clone())).await;
    create_cluster_sync(&client, NAME, &source.url, &selected).await;

    // Every selected namespace gets the map; the one whose ConfigMap is someone else's
    // fails, by name, and keeps its own map.
    wait_held(&client, NAME, &[&a, &b, &c], &first).await;
    let sync = wait_namespaces(&client, "3 of 4 namespaces ready", |n| {
        n.selected == 4 && n.ready == 3 && n.failing_count == 1
    })
    .await;
    let namespaces = sync.status.as_ref().unwrap().namespaces.clone().unwrap();
    assert_eq!(namespaces.summary, "3/4");
    let failing = &namespaces.failing[0];
    assert_eq!(failing.namespace, taken);
    assert_eq!(failing.reason, "OwnedByAnother");
    assert!(
        failing
            .message
            .contains(&format!("ModelCostMapSync {taken}/{NAME}")),
        "{}",
        failing.message
    );
    // Only a person can fix that (issue 21): the reason says so, and names the ConfigMap.
    let (ready, reason, message) = ready_of(&sync).expect("a Ready condition");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "OwnedByAnother")
    );
    assert!(message.contains(&format!("{taken}/{NAME}")), "{message}");
    let conditions = &sync.status.as_ref().unwrap().sync.conditions;
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True"),
        "{conditions:?}"
    );
    let theirs = config_maps(&client, &taken).get(NAME).await.unwrap();
    assert_eq!(
        sha256_digest(&stored_bytes(&theirs, DEFAULT_KEY)),
        sha256_digest(&small_map(55, &[])),
        "the namespaced object's ConfigMap is left alone"
    );
    assert!(
        held_digest(&client, &d, NAME).await.is_none(),
        "{d} is not selected"
    );
    let artifact = sync.status.as_ref().unwrap().sync.artifact.clone().unwrap();
    assert_eq!(artifact.digest, sha256_digest(&first));
    assert_eq!(artifact.models, 60);
    for namespace in [&a, &b, &c] {
        wait_served(&operator, namespace, &first).await;
    }
    assert!(served(&operator, &d).await.is_none());
    assert_eq!(source.received(), 1, "one fetch for every namespace");
    wait_event(
        &client,
        "default",
        EventReason::MapSynced.as_str(),
        "first sync",
    )
    .await;

    // A namespace that gets the label, and one created with it, are filled within seconds,
    // without a fetch.
    set_label(&client, &d, &label, Some("yes")).await;
    labelled_namespace(&client, &later, &selected).await;
    wait_held(&client, NAME, &[&d, &later], &first).await;
    wait_namespaces(&client, "5 of 6 ready", |n| n.selected == 6 && n.ready == 5).await;
    wait_served(&operator, &later, &first).await;

    // A namespace that loses it keeps its ConfigMap as it was, and status says so.
    set_label(&client, &b, &label, None).await;
    let sync = wait_namespaces(&client, "b no longer selected", |n| {
        n.no_longer_selected == [b.clone()] && n.selected == 5
    })
    .await;
    assert_eq!(
        sync.status
            .unwrap()
            .namespaces
            .unwrap()
            .no_longer_selected_count,
        1
    );

    // A new map at the source reaches every selected namespace, from one fetch; b keeps
    // the map it had.
    let second = small_map(60, &["day0-model"]);
    source.set(Answer::Map(second.clone()));
    request_cluster_sync(&client, NAME, "new-map").await;
    wait_held(&client, NAME, &[&a, &c, &d, &later], &second).await;
    wait_served(&operator, &a, &second).await;
    assert_eq!(source.received(), 2, "one fetch for the round");
    assert_eq!(
        held_digest(&client, &b, NAME).await,
        Some(sha256_digest(&first)),
        "{b} is no longer updated"
    );
    wait_event(
        &client,
        "default",
        EventReason::MapUpdated.as_str(),
        "day0-model",
    )
    .await;

    // The label back: b gets the current map, without a fetch.
    set_label(&client, &b, &label, Some("yes")).await;
    wait_held(&client, NAME, &[&b], &second).await;
    wait_namespaces(&client, "b selected again", |n| {
        n.no_longer_selected.is_empty() && n.ready == 5
    })
    .await;

    // A deleted copy is put back without a fetch.
    config_maps(&client, &a)
        .delete(NAME, &DeleteParams::default())
        .await
        .unwrap();
    wait_held(&client, NAME, &[&a], &second).await;
    assert_eq!(source.received(), 2, "restoring a copy fetches nothing");

    // Once the other ConfigMap is gone (no garbage collector runs here), that namespace
    // gets the map too and Ready is True.
    syncs(&client, &taken)
        .delete(NAME, &DeleteParams::default())
        .await
        .unwrap();
    config_maps(&client, &taken)
        .delete(NAME, &DeleteParams::default())
        .await
        .unwrap();
    wait_held(&client, NAME, &[&taken], &second).await;
    let sync = wait_namespaces(&client, "every namespace ready", |n| {
        n.ready == 6 && n.failing_count == 0
    })
    .await;
    let (ready, reason, _) = ready_of(&sync).expect("a Ready condition");
    assert_eq!((ready.as_str(), reason.as_str()), ("True", "Synced"));
    let conditions = &sync.status.as_ref().unwrap().sync.conditions;
    assert!(
        conditions.iter().all(|c| c.type_ != "Stalled"),
        "no longer stalled: {conditions:?}"
    );
    assert_eq!(source.received(), 2);

    // A namespaced object on the same source: when it fetches a new map, the cluster
    // object takes it at once from that fetch (its own interval is an hour away).
    create_sync(
        &client,
        &a,
        "follower",
        json!({"source": {"url": source.url}}),
    )
    .await;
    wait_ready(&client, &a, "follower", "True", Reason::Synced).await;
    assert_eq!(source.received(), 2, "the follower took the answer at hand");
    let third = small_map(60, &["day0-model", "day1-model"]);
    source.set(Answer::Map(third.clone()));
    request_sync(&client, &a, "follower", "news").await;
    wait_held(&client, NAME, &[&a, &b, &c, &d, &later, &taken], &third).await;
    assert_eq!(source.received(), 3, "one fetch for both objects");

    // The cluster object has its own per-map series (no namespace), and they outlive the
    // namespaced object's: each kind forgets only its own deleted objects.
    let cluster_series = format!("costmap_map_models{{namespace=\"\",name=\"{NAME}\"}} 62");
    eventually("the cluster object's models series", || async {
        operator
            .metrics
            .encode()
            .contains(&cluster_series)
            .then_some(())
    })
    .await;
    let text = operator.metrics.encode();
    assert!(
        text.contains(&format!(
            "costmap_sync_interval_seconds{{namespace=\"\",name=\"{NAME}\"}} 3600"
        )),
        "{text}"
    );
    let follower_series = format!("namespace=\"{a}\",name=\"follower\"");
    assert!(text.contains(&follower_series), "{text}");
    syncs(&client, &a)
        .delete("follower", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the follower's series to go", || async {
        let text = operator.metrics.encode();
        (!text.contains(&follower_series)).then_some(())
    })
    .await;
    assert!(operator.metrics.encode().contains(&cluster_series));
    cluster_syncs(&client)
        .delete(NAME, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the cluster object's series to go", || async {
        let text = operator.metrics.encode();
        (!text.contains(&format!("namespace=\"\",name=\"{NAME}\""))).then_some(())
    })
    .await;
    operator.stop().await;
}
