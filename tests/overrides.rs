//! Your prices and your history on the control plane: overrides merged into the published
//! bytes and kept across upstream updates, an override ConfigMap edit republished without a
//! fetch, broken overrides refused with the last good map kept, the history ring rotating,
//! a rejected map rolled back byte for byte and refused after, and `kubectl costmap`.

mod common;

use std::time::Instant;

use axum::body::Bytes;
use common::*;
use costmap_operator::api::{DEFAULT_KEY, Reason};
use costmap_operator::digest::sha256_digest;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

fn published(cm: &ConfigMap) -> Value {
    serde_json::from_slice(&stored_bytes(cm, DEFAULT_KEY)).expect("the published map is JSON")
}

/// A ConfigMap `name` with `overrides.json` holding `models`.
async fn overrides_config_map(s: &Scenario, name: &str, models: Value) {
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"overrides.json": models.to_string()},
    });
    let params = PatchParams::apply("test").force();
    config_maps(&s.client, &s.ns)
        .patch(name, &params, &Patch::Apply(&cm))
        .await
        .unwrap();
}

/// `small_map(n, extra)` with the price of `model` set.
fn priced(n: usize, model: &str, input: f64) -> Bytes {
    let mut map: serde_json::Map<String, Value> =
        serde_json::from_slice(&small_map(n, &[])).unwrap();
    map[model]["input_cost_per_token"] = json!(input);
    Bytes::from(serde_json::to_vec_pretty(&map).unwrap())
}

#[tokio::test]
async fn overrides_are_published_kept_across_updates_and_an_edit_republishes_without_a_fetch() {
    let upstream = small_map(100, &[]);
    let spec = json!({
        "overrides": {
            "models": {
                "model-1": {"input_cost_per_token": 2.25e-6, "mode": null},
                "azure/our-gpt-4o-eu": {"litellm_provider": "azure", "mode": "chat",
                                        "input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5},
            },
            "configMapRefs": [{"name": "negotiated-rates", "key": "overrides.json"}],
        },
    });
    let s = Scenario::new("overrides", Answer::Map(upstream.clone()), json!({})).await;
    overrides_config_map(
        &s,
        "negotiated-rates",
        json!({"model-2": {"output_cost_per_token": 1e-7}}),
    )
    .await;
    // Server-side apply keeps the null (a merge patch would read it as "delete the key").
    let apply =
        json!({"apiVersion": "costmap.dev/v1alpha1", "kind": "ModelCostMapSync", "spec": spec});
    syncs(&s.client, &s.ns)
        .patch(
            "litellm",
            &PatchParams::apply("team-rates"),
            &Patch::Apply(&apply),
        )
        .await
        .unwrap();
    let synced = eventually("the overrides published", || async {
        let sync = syncs(&s.client, &s.ns).get("litellm").await.ok()?;
        let status = sync.status.clone()?;
        (status.overrides.is_some() && ready_condition(&sync)?.status == "True").then_some(sync)
    })
    .await;
    let status = synced.status.unwrap();
    let cm = s.config_map().await;
    let map = published(&cm);
    assert_eq!(map["model-1"]["input_cost_per_token"], 2.25e-6);
    assert!(
        map["model-1"].get("mode").is_none(),
        "null removed the field"
    );
    assert_eq!(
        map["model-1"]["output_cost_per_token"], 2e-6,
        "other fields stay"
    );
    assert_eq!(
        map["model-2"]["output_cost_per_token"], 1e-7,
        "from the ConfigMap"
    );
    assert_eq!(map["azure/our-gpt-4o-eu"]["litellm_provider"], "azure");
    let bytes = stored_bytes(&cm, DEFAULT_KEY);
    assert_eq!(
        status.artifact.as_ref().unwrap().digest,
        sha256_digest(&bytes),
        "artifact is the published map"
    );
    assert_eq!(
        status.source.as_ref().unwrap().digest,
        sha256_digest(&upstream),
        "source is the fetched one"
    );
    let overrides = status.overrides.clone().unwrap();
    assert_eq!((overrides.applied, overrides.added), (3, 1));
    assert_eq!(overrides.added_models, ["azure/our-gpt-4o-eu"]);
    assert_eq!(overrides.shadowing, ["model-1", "model-2"]);

    // Same inputs, same bytes: a sync that changes nothing writes nothing.
    let version = cm.resource_version();
    s.sync_now("same").await;
    assert_eq!(s.config_map().await.resource_version(), version);

    // An upstream update keeps the overrides.
    s.source.set(Answer::Map(small_map(100, &["day0-model"])));
    s.sync_now("upstream-update").await;
    let map = published(&s.config_map().await);
    assert!(map.get("day0-model").is_some());
    assert_eq!(map["model-1"]["input_cost_per_token"], 2.25e-6);

    // An edit of the override ConfigMap republishes within seconds, without a fetch.
    let requests = s.source.received();
    let before = s.config_map().await.resource_version();
    let edited = Instant::now();
    overrides_config_map(
        &s,
        "negotiated-rates",
        json!({"model-2": {"output_cost_per_token": 3e-7}}),
    )
    .await;
    let served = eventually("the edit on the endpoint", || async {
        let body = reqwest::get(s.map_url()).await.ok()?.bytes().await.ok()?;
        let map: Value = serde_json::from_slice(&body).ok()?;
        (map["model-2"]["output_cost_per_token"] == 3e-7).then_some(map)
    })
    .await;
    println!(
        "override edit -> served by the endpoint: {:.2} s",
        edited.elapsed().as_secs_f64()
    );
    assert_eq!(served["model-1"]["input_cost_per_token"], 2.25e-6);
    assert_ne!(s.config_map().await.resource_version(), before);
    assert_eq!(s.source.received(), requests, "republished without a fetch");

    // A broken override ConfigMap: InvalidOverride, naming it; the last good map stays.
    let good = s.config_map().await.resource_version();
    overrides_config_map(
        &s,
        "negotiated-rates",
        json!({"model-2": {"output_cost_per_token": -1}}),
    )
    .await;
    let refused = s.wait_ready("False", Reason::InvalidOverride).await;
    let message = ready_condition(&refused).unwrap().message;
    assert!(
        message.contains("ConfigMap negotiated-rates key overrides.json"),
        "{message}"
    );
    assert_eq!(s.config_map().await.resource_version(), good);
    config_maps(&s.client, &s.ns)
        .delete("negotiated-rates", &Default::default())
        .await
        .unwrap();
    let missing = eventually("the missing ConfigMap reported", || async {
        let sync = syncs(&s.client, &s.ns).get("litellm").await.ok()?;
        let ready = ready_condition(&sync)?;
        ready.message.contains("not found").then_some(ready)
    })
    .await;
    assert_eq!(missing.reason, Reason::InvalidOverride.as_str());
    assert!(
        missing.message.contains("ConfigMap negotiated-rates"),
        "{}",
        missing.message
    );
    assert_eq!(s.config_map().await.resource_version(), good);

    // The fix is seen at once, not at the retry of the failed sync.
    overrides_config_map(
        &s,
        "negotiated-rates",
        json!({"model-2": {"output_cost_per_token": 5e-7}}),
    )
    .await;
    s.wait_ready("True", Reason::Synced).await;
    assert_eq!(
        published(&s.config_map().await)["model-2"]["output_cost_per_token"],
        5e-7
    );
    assert_eq!(s.source.received(), requests, "still no fetch");
    s.operator.stop().await;
}

#[tokio::test]
async fn the_history_ring_rotates_and_a_rejected_map_is_rolled_back_byte_for_byte() {
    let maps: Vec<Bytes> = (0..5)
        .map(|i| priced(100, "model-0", 1e-6 * (i + 1) as f64))
        .collect();
    let s = Scenario::new(
        "history",
        Answer::Map(maps[0].clone()),
        json!({"history": 3}),
    )
    .await;
    s.wait_ready("True", Reason::Synced).await;
    for (i, map) in maps.iter().enumerate().skip(1) {
        s.source.set(Answer::Map(map.clone()));
        s.sync_now(&format!("map-{i}")).await;
    }
    let status = s.wait_ready("True", Reason::Synced).await.status.unwrap();
    let digests: Vec<String> = status.history.iter().map(|e| e.digest.clone()).collect();
    let expected: Vec<String> = maps[2..].iter().rev().map(|m| sha256_digest(m)).collect();
    assert_eq!(digests, expected, "the newest three, newest first");
    for entry in &status.history {
        let cm = config_maps(&s.client, &s.ns)
            .get(&entry.config_map)
            .await
            .unwrap();
        assert_eq!(
            sha256_digest(&stored_bytes(&cm, DEFAULT_KEY)),
            entry.digest,
            "{}",
            entry.config_map
        );
        assert_eq!(cm.labels()["costmap.dev/history-of"], "litellm");
    }
    let mut slots: Vec<&str> = status
        .history
        .iter()
        .map(|e| e.config_map.as_str())
        .collect();
    slots.sort();
    assert_eq!(
        slots,
        [
            "litellm-history-1",
            "litellm-history-2",
            "litellm-history-3"
        ]
    );

    // Reject the published map (maps[4]): maps[3] comes back, byte for byte, without a fetch.
    let rejected = sha256_digest(&maps[4]);
    let requests = s.source.received();
    let patch = json!({"metadata": {"annotations": {"costmap.dev/reject-digest": rejected}}});
    syncs(&s.client, &s.ns)
        .patch("litellm", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let rolled_back = s.wait_ready("False", Reason::Rejected).await;
    let status = rolled_back.status.unwrap();
    assert_eq!(status.artifact.unwrap().digest, sha256_digest(&maps[3]));
    assert_eq!(status.rejected_digests, std::slice::from_ref(&rejected));
    assert_eq!(
        stored_bytes(&s.config_map().await, DEFAULT_KEY),
        maps[3].as_ref()
    );
    eventually("the endpoint serving the restored map", || async {
        let body = reqwest::get(s.map_url()).await.ok()?.bytes().await.ok()?;
        (body == maps[3]).then_some(())
    })
    .await;
    assert_eq!(s.source.received(), requests, "no fetch");
    wait_event(
        &s.client,
        &s.ns,
        costmap_operator::api::EventReason::MapRejected.as_str(),
        &rejected,
    )
    .await;

    // The source still serves the rejected map: refused, nothing written.
    let version = s.config_map().await.resource_version();
    s.sync_now("still-rejected").await;
    let refused = s.wait_ready("False", Reason::Rejected).await;
    assert!(
        ready_condition(&refused)
            .unwrap()
            .message
            .contains("was rejected")
    );
    assert_eq!(s.config_map().await.resource_version(), version);

    // Accepting the rejected digest on purpose is the way back.
    let patch = json!({"metadata": {"annotations": {"costmap.dev/accept-digest": rejected}}});
    syncs(&s.client, &s.ns)
        .patch("litellm", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    s.sync_now("accepted-again").await;
    s.wait_ready("True", Reason::Synced).await;
    assert_eq!(
        stored_bytes(&s.config_map().await, DEFAULT_KEY),
        maps[4].as_ref()
    );

    // The source moves on: Ready again.
    let next = priced(100, "model-0", 9e-6);
    s.source.set(Answer::Map(next.clone()));
    s.sync_now("moved-on").await;
    s.wait_ready("True", Reason::Synced).await;
    assert_eq!(
        stored_bytes(&s.config_map().await, DEFAULT_KEY),
        next.as_ref()
    );
    s.operator.stop().await;
}

/// `kubectl costmap ...` against the control plane: the binary, called as kubectl-costmap.
#[tokio::test]
async fn the_kubectl_plugin_shows_status_and_history_and_sets_the_annotations() {
    let map = small_map(100, &[]);
    let s = Scenario::new("plugin", Answer::Map(map.clone()), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-costmap");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_costmap-operator"), &plugin).unwrap();
    let kubeconfig = control_plane().kubeconfig.clone();
    let run = |args: Vec<String>| {
        let plugin = plugin.clone();
        let kubeconfig = kubeconfig.clone();
        async move {
            let output = tokio::task::spawn_blocking(move || {
                std::process::Command::new(plugin)
                    .args(args)
                    .env("KUBECONFIG", kubeconfig)
                    .output()
            })
            .await
            .unwrap()
            .unwrap();
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
    };
    let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let ns = s.ns.clone();

    let (ok, table, _) = run(args(&["status", "-n", &ns])).await;
    assert!(ok, "{table}");
    assert!(
        table.lines().all(|line| line.chars().count() <= 80),
        "{table}"
    );
    let row = table
        .lines()
        .find(|line| line.starts_with("litellm "))
        .unwrap();
    assert!(
        row.contains("True") && row.contains("Synced") && row.contains("100"),
        "{row}"
    );
    let (ok, all, _) = run(args(&["status", "-A"])).await;
    assert!(ok && all.contains(&ns), "{all}");
    let (ok, json, _) = run(args(&["status", "litellm", "-n", &ns, "-o", "json"])).await;
    assert!(ok, "{json}");
    let rows: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[0]["models"], 100);
    assert_eq!(rows[0]["reason"], "Synced");
    let (ok, yaml, _) = run(args(&["history", "litellm", "-n", &ns, "-o", "yaml"])).await;
    assert!(ok && yaml.contains(&sha256_digest(&map)), "{yaml}");
    let (ok, history, _) = run(args(&["history", "litellm", "-n", &ns])).await;
    assert!(ok && history.contains("litellm-history-1"), "{history}");
    // The table prints short digests; accept and reject take them back.
    let short = &sha256_digest(&map)[..7 + 16];
    assert!(history.contains(&format!("* {short} ")), "{history}");
    let (ok, out, _) = run(args(&["accept", "litellm", short, "-n", &ns])).await;
    assert!(ok && out.contains(&sha256_digest(&map)), "{out}");
    let sync = syncs(&s.client, &s.ns).get("litellm").await.unwrap();
    assert_eq!(
        sync.annotations()["costmap.dev/accept-digest"],
        sha256_digest(&map)
    );

    let (ok, out, _) = run(args(&["sync", "litellm", "-n", &ns])).await;
    assert!(ok, "{out}");
    let token = out
        .split("sync-requested-at=")
        .nth(1)
        .unwrap()
        .trim_end_matches(")\n")
        .to_owned();
    wait_handled(&s.client, &s.ns, "litellm", &token).await;

    let digest = format!("sha256:{}", "ab".repeat(32));
    let (ok, out, _) = run(args(&["accept", "litellm", &digest, "-n", &ns])).await;
    assert!(ok, "{out}");
    let (ok, out, _) = run(args(&["reject", "litellm", &digest, "-n", &ns])).await;
    assert!(ok && out.contains("nothing is restored"), "{out}");
    let sync = syncs(&s.client, &s.ns).get("litellm").await.unwrap();
    assert_eq!(sync.annotations()["costmap.dev/accept-digest"], digest);
    assert_eq!(sync.annotations()["costmap.dev/reject-digest"], digest);
    eventually("the rejected digest recorded", || async {
        let sync = syncs(&s.client, &s.ns).get("litellm").await.ok()?;
        sync.status?
            .rejected_digests
            .contains(&digest)
            .then_some(())
    })
    .await;

    let (ok, _, err) = run(args(&["status", "nope", "-n", &ns])).await;
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "no ModelCostMapSync {ns}/nope; see kubectl get mcms -A"
        )),
        "{err}"
    );
    let (ok, _, err) = run(args(&["accept", "litellm", "not-a-digest", "-n", &ns])).await;
    assert!(!ok && err.contains("is not a digest"), "{err}");
    s.operator.stop().await;
}
