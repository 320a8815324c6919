//! A ClusterModelCostMapSync whose operator stopped between writing the copies and writing
//! the status that records them: the next operator adopts the map it validated (found in a
//! copy, checked against the pending record) while the source fails, puts it in the copies
//! that missed it, and guards the next map against it.
//!
//! A test binary of its own: it runs a cluster-wide operator, and two of those on one
//! control plane would both reconcile every cluster object.

mod common;

use std::collections::BTreeMap;

use common::cluster::*;
use common::*;
use costmap_operator::api::{ClusterModelCostMapSync, EventReason, Reason};
use costmap_operator::controller::FIELD_MANAGER;
use costmap_operator::digest::sha256_digest;
use kube::Resource;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

const NAME: &str = "restarted";

#[tokio::test]
async fn a_cluster_sync_interrupted_by_a_restart_is_adopted_and_guards_the_next_map() {
    let client = client().await;
    let label = format!("costmap-restart-{}", std::process::id());
    let selected = BTreeMap::from([(label, "yes".to_owned())]);
    let namespaces: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("restart-{n}-{}", std::process::id()))
        .collect();
    for namespace in &namespaces {
        labelled_namespace(&client, namespace, &selected).await;
    }
    let all: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let missed = all[2];

    // The map before (200 models), synced everywhere; what status said then, and the copy
    // of one namespace as it was, are kept.
    let operator = Operator::start_cluster_wide(&client);
    let before = small_map(200, &[]);
    let source = Source::start(Answer::Map(before.clone())).await;
    create_cluster_sync(&client, NAME, &source.url, &selected).await;
    wait_held(&client, NAME, &all, &before).await;
    let synced_before = eventually("status to record the first map", || async {
        let sync = cluster_syncs(&client).get(NAME).await.ok()?;
        let digest = sync.status.as_ref()?.sync.artifact.as_ref()?.digest.clone();
        (digest == sha256_digest(&before)).then_some(sync)
    })
    .await;
    let copy_before = config_maps(&client, missed).get(NAME).await.unwrap();

    // The new map (201 models), synced everywhere by a request.
    let new = small_map(200, &["model-launched-today"]);
    source.set(Answer::Map(new.clone()));
    request_cluster_sync(&client, NAME, "new-map").await;
    wait_held(&client, NAME, &all, &new).await;
    let new_artifact = eventually("status to record the new map", || async {
        let sync = cluster_syncs(&client).get(NAME).await.ok()?;
        let artifact = sync.status?.sync.artifact?;
        (artifact.digest == sha256_digest(&new)).then_some(artifact)
    })
    .await;
    operator.stop().await;

    // What an operator killed half-way through that sync leaves: one copy still holds the
    // map before, and status (written by the operator's field manager, as it writes it)
    // names the map before with the new one pending.
    let copies = config_maps(&client, missed);
    let mut reverted = copy_before.clone();
    reverted.metadata.resource_version = copies.get(NAME).await.unwrap().metadata.resource_version;
    reverted.metadata.managed_fields = None;
    copies
        .replace(NAME, &PostParams::default(), &reverted)
        .await
        .unwrap();
    assert_eq!(
        held_digest(&client, missed, NAME).await,
        Some(sha256_digest(&before))
    );
    let mut interrupted = synced_before.status.clone().unwrap();
    interrupted.sync.pending_artifact = Some(new_artifact.clone());
    let status = json!({
        "apiVersion": ClusterModelCostMapSync::api_version(&()),
        "kind": ClusterModelCostMapSync::kind(&()),
        "status": interrupted,
    });
    cluster_syncs(&client)
        .patch_status(
            NAME,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    // The source fails from now on: what the copies hold is all there is.
    source.set(Answer::Status(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "down".into(),
    ));

    // The next operator adopts the new map and puts it in the copy that missed it, without
    // the source; the request the stopped one was handling fails against the source, and
    // every copy keeps the adopted map.
    let operator = Operator::start_cluster_wide(&client);
    let adopted = eventually("the new operator to adopt the pending map", || async {
        let sync = cluster_syncs(&client).get(NAME).await.ok()?;
        let status = &sync.status.as_ref()?.sync;
        let adopted = status.artifact.as_ref()?.digest == new_artifact.digest
            && status.pending_artifact.is_none();
        adopted.then_some(sync)
    })
    .await;
    assert_eq!(adopted.status.unwrap().sync.artifact.unwrap().models, 201);
    wait_event(
        &client,
        "default",
        EventReason::MapUpdated.as_str(),
        "interrupted by an operator restart",
    )
    .await;
    wait_held(&client, NAME, &all, &new).await;
    for namespace in &all {
        eventually(&format!("{namespace} serves the new map"), || async {
            (served_map(&operator, namespace, NAME).await? == new).then_some(())
        })
        .await;
    }
    let failed = eventually("the request to fail against the source", || async {
        let sync = cluster_syncs(&client).get(NAME).await.ok()?;
        let ready = ready_of(&sync)?;
        (ready.0 == "False").then_some(sync)
    })
    .await;
    assert_eq!(
        failed.status.unwrap().sync.artifact.unwrap().digest,
        new_artifact.digest,
        "a failing source changes nothing"
    );
    for namespace in &all {
        assert_eq!(
            held_digest(&client, namespace, NAME).await,
            Some(sha256_digest(&new))
        );
    }

    // A map that drops 60% of the models is refused against the adopted map, not the
    // one before it; every copy keeps the adopted map.
    source.set(Answer::Map(small_map(80, &[])));
    request_cluster_sync(&client, NAME, "shrunk").await;
    let (ready, reason, message) = eventually("the shrunk map refused", || async {
        let sync = cluster_syncs(&client).get(NAME).await.ok()?;
        let ready = ready_of(&sync)?;
        (ready.1 == Reason::ShrinkGuard.as_str()).then_some(ready)
    })
    .await;
    assert_eq!(ready, "False");
    assert_eq!(reason, "ShrinkGuard");
    assert!(
        message.contains("drops 121 of the last good map's 201"),
        "{message}"
    );
    for namespace in &all {
        assert_eq!(
            held_digest(&client, namespace, NAME).await,
            Some(sha256_digest(&new))
        );
    }
    operator.stop().await;
}
