//! The sync core on a real kube-apiserver: ModelCostMapSync -> validated, gzipped ConfigMap
//! with status and Events, from a real HTTP source on loopback.

mod common;

use axum::body::Bytes;
use axum::http::StatusCode;
use common::hostile::{Behavior, HostileSource};
use common::*;
use costmap_operator::api::DEFAULT_KEY;
use costmap_operator::api::{EventReason, Reason};
use costmap_operator::digest::{git_blob_id, sha256_digest};
use costmap_operator::metrics::SyncResult;
use costmap_operator::sync::fetch::FetchPolicy;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn first_sync_of_the_real_map_writes_a_gzipped_configmap_with_status_and_annotations() {
    let real = real_map("1.110.2");
    let s = Scenario::new("first", Answer::Map(real.clone()), json!({})).await;
    let sync = s.wait_ready("True", Reason::Synced).await;

    let cm = s.config_map().await;
    assert_eq!(
        stored_bytes(&cm, DEFAULT_KEY),
        real.as_ref(),
        "gz key holds the exact source bytes"
    );
    assert!(
        cm.data.is_none(),
        "3.5 MB does not fit verbatim beside the gzip"
    );
    let gz_len = cm.binary_data.as_ref().unwrap()[&format!("{DEFAULT_KEY}.gz")]
        .0
        .len();
    assert!(gz_len < 300_000, "gzip of the real map is {gz_len} bytes");

    let digest = sha256_digest(&real);
    let annotations = annotations(&cm);
    assert_eq!(annotations["costmap.dev/digest"], digest);
    assert_eq!(annotations["costmap.dev/git-blob-id"], git_blob_id(&real));
    assert!(annotations["costmap.dev/git-blob-id"].starts_with("c8f11f1b697e"));
    assert_eq!(annotations["costmap.dev/models"], "4876");
    assert_eq!(annotations["costmap.dev/source-url"], s.source.url);
    assert!(annotations.contains_key("costmap.dev/updated-at"));
    assert_eq!(
        cm.labels()["app.kubernetes.io/managed-by"],
        "costmap-operator"
    );

    let owner = &cm.owner_references()[0];
    assert_eq!(owner.kind, "ModelCostMapSync");
    assert_eq!(owner.name, "litellm");
    assert_eq!(Some(owner.uid.clone()), sync.uid());
    assert_eq!(owner.controller, Some(true));

    let status = sync.status.unwrap();
    let artifact = status.artifact.unwrap();
    assert_eq!(artifact.digest, digest);
    assert_eq!(artifact.size, 3_483_222);
    assert_eq!(artifact.models, 4876);
    assert_eq!(
        artifact.revision,
        Some(format!("\"{digest}\"")),
        "the ETag is kept for conditional GETs"
    );
    assert_eq!(status.observed_generation, sync.metadata.generation);
    assert!(status.last_sync_time.is_some() && status.next_sync_time.is_some());
    assert!(
        status.last_change.is_none(),
        "nothing to compare a first sync with"
    );
    wait_event(
        &s.client,
        &s.ns,
        EventReason::MapSynced.as_str(),
        "first sync: 4876 models",
    )
    .await;
    s.operator.stop().await;
}

#[tokio::test]
async fn unchanged_source_writes_nothing_and_a_304_costs_no_parse() {
    let map = small_map(60, &[]);
    let s = Scenario::new("unchanged", Answer::Map(map.clone()), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;
    let cm_version = s.config_map().await.resource_version();

    let after_304 = s.sync_now("1").await;
    assert_eq!(
        s.source.statuses(),
        [200, 304],
        "the second fetch was conditional"
    );
    assert_eq!(s.operator.metrics.syncs_with(SyncResult::NotModified), 1);
    assert_eq!(s.config_map().await.resource_version(), cm_version);
    let etag = format!("\"{}\"", sha256_digest(&map));
    let sent = s.source.served()[1]
        .headers
        .get("if-none-match")
        .cloned()
        .unwrap();
    assert_eq!(sent.to_str().unwrap(), etag);

    // A source that ignores validators re-sends the same bytes: still nothing written.
    s.source.set(Answer::Plain(map));
    let after_200 = s.sync_now("2").await;
    assert_eq!(s.source.statuses(), [200, 304, 200]);
    assert_eq!(s.operator.metrics.syncs_with(SyncResult::Unchanged), 1);
    assert_eq!(s.config_map().await.resource_version(), cm_version);
    assert_eq!(
        s.operator.metrics.syncs_with(SyncResult::Updated),
        1,
        "only the first sync wrote"
    );
    let ready = ready_condition(&after_200).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", Reason::Synced.as_str())
    );
    assert_eq!(
        ready.last_transition_time,
        ready_condition(&after_304).unwrap().last_transition_time,
        "Ready stayed True, so its transition time stays"
    );
    s.operator.stop().await;
}

#[tokio::test]
async fn a_new_real_map_reports_added_removed_and_changed_models_and_an_event() {
    let s = Scenario::new("change", Answer::Map(real_map("1.108.0")), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;

    let newer = real_map("1.110.2");
    s.source.set(Answer::Map(newer.clone()));
    let sync = s.sync_now("launch-day").await;
    let status = sync.status.unwrap();
    let change = status.last_change.unwrap();
    assert_eq!(
        (change.added, change.removed, change.changed),
        (688, 52, 3434)
    );
    assert_eq!(change.added_models.len(), 20);
    assert!(
        change.added_models.windows(2).all(|w| w[0] < w[1]),
        "sorted"
    );
    assert_eq!(status.artifact.unwrap().digest, sha256_digest(&newer));
    assert_eq!(
        stored_bytes(&s.config_map().await, DEFAULT_KEY),
        newer.as_ref()
    );
    let note = wait_event(
        &s.client,
        &s.ns,
        EventReason::MapUpdated.as_str(),
        "688 added, 52 removed, 3434 changed",
    )
    .await;
    assert!(
        note.contains(&format!("new: {}", change.added_models[0])),
        "{note}"
    );
    s.operator.stop().await;
}

#[tokio::test]
async fn broken_sources_leave_the_last_good_map_and_say_why() {
    let good = small_map(60, &[]);
    let s = Scenario::new("broken", Answer::Map(good.clone()), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;
    let cm_version = s.config_map().await.resource_version();

    let shrunk_names: Vec<String> = (0..25)
        .map(|i| format!("model-{i}"))
        .chain((0..35).map(|i| format!("brand-new-{i}")))
        .collect();
    let shrunk: Vec<&str> = shrunk_names.iter().map(String::as_str).collect();
    let cases = [
        (
            "html",
            Answer::Status(
                StatusCode::OK,
                Bytes::from("<!DOCTYPE html><html>Rate limited</html>"),
            ),
            Reason::InvalidMap.as_str(),
            "looks like HTML",
        ),
        (
            "truncated",
            Answer::Plain(good.slice(..good.len() / 2)),
            Reason::InvalidMap.as_str(),
            "truncated",
        ),
        (
            "too-few",
            Answer::Plain(small_map(10, &[])),
            Reason::InvalidMap.as_str(),
            "10 models, fewer than minModels 50",
        ),
        (
            "shrunk",
            Answer::Plain(small_map(0, &shrunk)),
            Reason::ShrinkGuard.as_str(),
            "drops 35 of the last good map's 60 models",
        ),
        (
            "server-error",
            Answer::Status(StatusCode::INTERNAL_SERVER_ERROR, Bytes::from("oops")),
            Reason::FetchFailed.as_str(),
            "500",
        ),
    ];
    let mut reasons_seen = Vec::new();
    for (token, answer, reason, text) in cases {
        s.source.set(answer);
        let sync = s.sync_now(token).await;
        let ready = ready_condition(&sync).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason),
            "{token}: {}",
            ready.message
        );
        assert!(ready.message.contains(text), "{token}: {}", ready.message);
        assert!(
            !ready.message.contains("Rate limited"),
            "response bodies are never echoed"
        );
        let cm = s.config_map().await;
        assert_eq!(
            cm.resource_version(),
            cm_version,
            "{token}: the ConfigMap was not touched"
        );
        assert_eq!(stored_bytes(&cm, DEFAULT_KEY), good.as_ref());
        assert_eq!(
            sync.status.unwrap().artifact.unwrap().digest,
            sha256_digest(&good)
        );
        // Events of one reason form a series that keeps its first note.
        let first_of_its_reason = !reasons_seen.contains(&reason);
        wait_event(
            &s.client,
            &s.ns,
            reason,
            if first_of_its_reason { text } else { "" },
        )
        .await;
        reasons_seen.push(reason);
    }

    s.source.set(Answer::Map(good));
    s.sync_now("fixed").await;
    s.wait_ready("True", Reason::Synced).await;
    s.operator.stop().await;
}

#[tokio::test]
async fn a_map_over_the_size_cap_is_too_large() {
    let client = client().await;
    let ns = namespace(&client, "toolarge").await;
    let source = Source::start(Answer::Map(small_map(60, &[]))).await;
    let policy = FetchPolicy {
        max_body_bytes: 1024,
        ..test_policy()
    };
    let operator = Operator::start_with(&client, &ns, policy);
    create_litellm_sync(&client, &ns, &source.url).await;
    let sync = wait_ready(&client, &ns, "litellm", "False", Reason::TooLarge).await;
    assert!(ready_condition(&sync).unwrap().message.contains("1024"));
    assert!(
        config_maps(&client, &ns)
            .get_opt("litellm")
            .await
            .unwrap()
            .is_none(),
        "nothing truncated, nothing written"
    );
    operator.stop().await;
}

#[tokio::test]
async fn suspend_stops_scheduled_and_requested_syncs() {
    let s = Scenario::new(
        "suspend",
        Answer::Map(small_map(60, &[])),
        json!({"suspend": true}),
    )
    .await;
    let sync = s.wait_ready("False", Reason::Suspended).await;
    assert!(
        ready_condition(&sync)
            .unwrap()
            .message
            .contains("suspended")
    );
    request_sync(&s.client, &s.ns, "litellm", "while-suspended").await;
    // The request is seen (a reconcile runs) but not acted on.
    let before = s.operator.metrics.reconciles.get();
    eventually("a reconcile of the annotated object", || async {
        (s.operator.metrics.reconciles.get() > before).then_some(())
    })
    .await;
    assert!(s.source.served().is_empty(), "suspended: no fetch at all");
    assert!(
        config_maps(&s.client, &s.ns)
            .get_opt("litellm")
            .await
            .unwrap()
            .is_none()
    );

    let resume = json!({"spec": {"suspend": false}});
    syncs(&s.client, &s.ns)
        .patch("litellm", &PatchParams::default(), &Patch::Merge(&resume))
        .await
        .unwrap();
    let sync = s.wait_ready("True", Reason::Synced).await;
    assert_eq!(
        sync.status.unwrap().last_handled_sync_request.as_deref(),
        Some("while-suspended")
    );
    assert_eq!(s.source.statuses(), [200]);
    s.operator.stop().await;
}

#[tokio::test]
async fn a_deleted_configmap_is_recreated_and_a_hand_edited_one_restored_without_fetching() {
    let map = small_map(60, &[]);
    let s = Scenario::new("restore", Answer::Map(map.clone()), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;
    let original = s.config_map().await;
    assert_eq!(
        original.data.as_ref().unwrap()[DEFAULT_KEY].as_bytes(),
        map.as_ref(),
        "small maps are also stored verbatim"
    );

    config_maps(&s.client, &s.ns)
        .delete("litellm", &DeleteParams::default())
        .await
        .unwrap();
    let recreated = eventually("the ConfigMap to come back", || async {
        config_maps(&s.client, &s.ns)
            .get_opt("litellm")
            .await
            .ok()
            .flatten()
            .filter(|cm| cm.uid() != original.uid())
    })
    .await;
    assert_eq!(stored_bytes(&recreated, DEFAULT_KEY), map.as_ref());
    assert_eq!(
        annotations(&recreated)["costmap.dev/digest"],
        sha256_digest(&map)
    );

    let edit = json!({"data": {DEFAULT_KEY: "{}"}, "metadata": {"annotations": {"costmap.dev/digest": "sha256:forged"}}});
    config_maps(&s.client, &s.ns)
        .patch("litellm", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    let restored = eventually("the hand edit to be undone", || async {
        let cm = config_maps(&s.client, &s.ns).get("litellm").await.ok()?;
        (cm.data.as_ref()?[DEFAULT_KEY].as_bytes() == map.as_ref()).then_some(cm)
    })
    .await;
    assert_eq!(
        annotations(&restored)["costmap.dev/digest"],
        sha256_digest(&map)
    );
    assert_eq!(s.source.statuses(), [200], "restoring needs no fetch");
    wait_event(&s.client, &s.ns, EventReason::Recreated.as_str(), "deleted").await;
    wait_event(&s.client, &s.ns, EventReason::Restored.as_str(), "edited").await;
    s.operator.stop().await;
}

#[tokio::test]
async fn an_operator_restart_rewrites_nothing() {
    let s = Scenario::new("restart", Answer::Map(small_map(60, &[])), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;
    let written = written_versions(&s.client, &s.ns, "litellm").await;
    let Scenario {
        client,
        ns,
        source,
        operator,
    } = s;
    operator.stop().await;

    let restarted = Operator::start(&client, &ns);
    eventually("the restarted operator to reconcile", || async {
        (restarted.metrics.reconciles.get() >= 1).then_some(())
    })
    .await;
    assert_eq!(written_versions(&client, &ns, "litellm").await, written);
    assert_eq!(source.statuses(), [200], "not due: no fetch");
    restarted.stop().await;
}

#[tokio::test]
async fn headers_from_the_secret_reach_the_source_and_nowhere_else() {
    let client = client().await;
    let ns = namespace(&client, "headers").await;
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "mirror-auth"},
        "stringData": {"Authorization": "Bearer hunter2-very-secret"},
    }))
    .unwrap();
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    let source = Source::start(Answer::Status(StatusCode::FORBIDDEN, Bytes::from("denied"))).await;
    let operator = Operator::start(&client, &ns);
    let spec = json!({"source": {"url": source.url, "headersSecretRef": {"name": "mirror-auth"}}});
    create_sync(&client, &ns, "litellm", spec).await;
    let sync = wait_ready(&client, &ns, "litellm", "False", Reason::FetchFailed).await;
    let sent = source.served()[0]
        .headers
        .get("authorization")
        .cloned()
        .unwrap();
    assert_eq!(sent.to_str().unwrap(), "Bearer hunter2-very-secret");

    let status = serde_json::to_string(&sync.status).unwrap();
    assert!(status.contains("403"), "{status}");
    assert!(!status.contains("hunter2"), "{status}");
    wait_event(&client, &ns, Reason::FetchFailed.as_str(), "403").await;
    let all_events = format!("{:?}", events(&client, &ns).await);
    assert!(!all_events.contains("hunter2"), "{all_events}");
    operator.stop().await;
}

#[tokio::test]
async fn a_sync_runs_when_next_sync_time_passes_or_the_spec_changes() {
    let s = Scenario::new("schedule", Answer::Map(small_map(60, &[])), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;
    assert_eq!(s.source.statuses(), [200]);

    // Pretend an hour went by: the schedule lives in status, so moving nextSyncTime into the
    // past makes the sync due (waiting out the 1m minimum interval would slow the suite).
    let past = json!({"status": {"nextSyncTime": "2020-01-01T00:00:00Z"}});
    syncs(&s.client, &s.ns)
        .patch_status("litellm", &PatchParams::default(), &Patch::Merge(&past))
        .await
        .unwrap();
    eventually("a scheduled fetch", || async {
        (s.source.statuses() == [200, 304]).then_some(())
    })
    .await;
    let sync = eventually("nextSyncTime back in the future", || async {
        let sync = syncs(&s.client, &s.ns).get("litellm").await.ok()?;
        let next = sync.status.as_ref()?.next_sync_time.as_ref()?.0;
        (next > k8s_openapi::jiff::Timestamp::now()).then_some(sync)
    })
    .await;
    assert_eq!(ready_condition(&sync).unwrap().status, "True");

    let new_spec = json!({"spec": {"interval": "2h"}});
    syncs(&s.client, &s.ns)
        .patch("litellm", &PatchParams::default(), &Patch::Merge(&new_spec))
        .await
        .unwrap();
    let sync = eventually("a sync for the new generation", || async {
        let sync = syncs(&s.client, &s.ns).get("litellm").await.ok()?;
        (sync.status.as_ref()?.observed_generation == Some(2)).then_some(sync)
    })
    .await;
    assert_eq!(
        s.source.statuses(),
        [200, 304, 304],
        "a spec change fetches once"
    );
    let status = sync.status.unwrap();
    let next = status.next_sync_time.unwrap().0;
    let last = status.last_attempt_time.unwrap().0;
    assert_eq!(
        last.duration_until(next).as_secs(),
        7200,
        "the new interval applies"
    );
    s.operator.stop().await;
}

/// The README's way through a legitimate big removal: raise maxRemovedPercent for one sync.
#[tokio::test]
async fn raising_max_removed_percent_lets_a_real_shrink_through() {
    let s = Scenario::new("shrink", Answer::Map(small_map(200, &[])), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;
    s.source.set(Answer::Map(small_map(60, &[])));
    s.sync_now("shrink").await;
    let refused = s.wait_ready("False", Reason::ShrinkGuard).await;
    assert!(
        ready_condition(&refused)
            .unwrap()
            .message
            .contains("drops 140 of the last good map's 200 models (70%)")
    );
    let patch = json!({"spec": {"validation": {"maxRemovedPercent": 100}}});
    syncs(&s.client, &s.ns)
        .patch("litellm", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let sync = s.wait_ready("True", Reason::Synced).await;
    let status = sync.status.unwrap();
    assert_eq!(status.artifact.unwrap().models, 60);
    assert_eq!(status.last_change.unwrap().removed, 140);
    s.operator.stop().await;
}

/// Fetches hold no sync slot: two objects whose source hangs (the operator has two slots)
/// do not hold up a healthy object.
#[tokio::test]
async fn hung_sources_do_not_hold_up_a_healthy_object() {
    let client = client().await;
    let ns = namespace(&client, "hung").await;
    let hung = HostileSource::start(Behavior::Hang).await;
    let healthy = Source::start(Answer::Map(small_map(60, &[]))).await;
    let _operator = Operator::start(&client, &ns);
    // Two objects on one hung source share one hung fetch.
    for name in ["hung-1", "hung-2"] {
        let spec = json!({"source": {"url": hung.url, "timeout": "10m"}});
        create_sync(&client, &ns, name, spec).await;
    }
    eventually("the fetch to hang", || async {
        (hung.open() == 1).then_some(())
    })
    .await;
    create_sync(
        &client,
        &ns,
        "healthy",
        json!({"source": {"url": healthy.url}}),
    )
    .await;
    wait_ready(&client, &ns, "healthy", "True", Reason::Synced).await;
    assert_eq!(
        hung.open(),
        1,
        "the hung fetch is still hanging, and the only one"
    );
    // The operator is dropped with the test: stopping it would wait for the hung fetches.
}

/// A Retry-After longer than the fetch's own backoff ends the fetch and defers the whole
/// next attempt, and status says until when.
#[tokio::test]
async fn a_long_retry_after_defers_the_next_attempt_and_status_says_until_when() {
    let client = client().await;
    let ns = namespace(&client, "retry-after").await;
    let limited = HostileSource::start(Behavior::status(429, &[("Retry-After", "3600")])).await;
    let operator = Operator::start(&client, &ns);
    create_litellm_sync(&client, &ns, &limited.url).await;
    let sync = wait_ready(&client, &ns, "litellm", "False", Reason::FetchFailed).await;
    let message = ready_condition(&sync).unwrap().message;
    assert!(
        message.contains("the source asked to wait 1h (Retry-After), so the next attempt is at"),
        "{message}"
    );
    let status = sync.status.unwrap();
    let wait = status
        .last_attempt_time
        .unwrap()
        .0
        .duration_until(status.next_sync_time.unwrap().0);
    assert!(
        wait.as_secs() >= 3599,
        "the next attempt waits the hour: {wait:?}"
    );
    assert_eq!(limited.requests(), 1, "not retried within the fetch");
    operator.stop().await;
}

/// kube does not reconcile a deleted object, so the operator forgets it on its own: its
/// per-map metric series go within seconds.
#[tokio::test]
async fn a_deleted_object_leaves_no_metric_series_behind() {
    let s = Scenario::new("forget", Answer::Map(small_map(60, &[])), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;
    let series = format!(
        "costmap_map_models{{namespace=\"{}\",name=\"litellm\"}} 60",
        s.ns
    );
    assert!(s.operator.metrics.encode().contains(&series));
    syncs(&s.client, &s.ns)
        .delete("litellm", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted object's series to go", || async {
        let text = s.operator.metrics.encode();
        (!text.contains(&format!("namespace=\"{}\"", s.ns))).then_some(())
    })
    .await;
    s.operator.stop().await;
}

/// An object the API server should have refused (here: stored while the CRD had no rule
/// on the interval) is Ready=False InvalidSpec, fetches nothing, and syncs once the spec is
/// fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_the_crd_let_through_waits_for_a_fix() {
    let plane = tokio::task::block_in_place(control_plane_with_crds);
    // The rule on spec.interval is dropped, as in a CRD from before it existed.
    let crd = plane
        .kubectl(&["get", "crd", "modelcostmapsyncs.costmap.dev", "-o", "json"])
        .unwrap();
    let mut crd: serde_json::Value = serde_json::from_str(&crd).unwrap();
    let interval = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["interval"];
    interval
        .as_object_mut()
        .unwrap()
        .remove("x-kubernetes-validations");
    plane
        .kubectl_with_input(&["replace", "-f", "-"], &crd.to_string())
        .unwrap();
    let client = client_of(&plane).await;
    let ns = namespace(&client, "invalid-spec").await;
    let source = Source::start(Answer::Map(small_map(60, &[]))).await;
    let operator = Operator::start(&client, &ns);
    let spec = json!({"source": {"url": source.url}, "interval": "30s"});
    eventually("the API server to take the object", || async {
        let sync: costmap_operator::api::ModelCostMapSync = serde_json::from_value(json!({
            "apiVersion": "costmap.dev/v1alpha1", "kind": "ModelCostMapSync",
            "metadata": {"name": "litellm", "namespace": ns}, "spec": spec,
        }))
        .unwrap();
        syncs(&client, &ns)
            .create(&Default::default(), &sync)
            .await
            .ok()
    })
    .await;
    let refused = wait_ready(&client, &ns, "litellm", "False", Reason::InvalidSpec).await;
    let ready = ready_condition(&refused).unwrap();
    assert_eq!(
        ready.message,
        "spec.interval is invalid: must be at least 1m"
    );
    assert!(
        refused.status.unwrap().next_sync_time.is_none(),
        "nothing is scheduled"
    );
    assert_eq!(source.received(), 0, "nothing was fetched");
    let fixed = json!({"spec": {"interval": "1h"}});
    syncs(&client, &ns)
        .patch("litellm", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .unwrap();
    wait_ready(&client, &ns, "litellm", "True", Reason::Synced).await;
    operator.stop().await;
}
