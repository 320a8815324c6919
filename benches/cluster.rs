//! The operator (release build, watching the whole cluster) with one ClusterModelCostMapSync
//! selecting many namespaces, with the real 3.5 MB map: upstream requests per round, time
//! until every namespace is Ready and until every namespace holds a new map, and the
//! operator's peak RSS. Prints figures; asserts none.
//!
//! `cargo bench --bench cluster` (COSTMAP_BENCH_NAMESPACES=N to change the default 200)

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/figures.rs"]
mod figures;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::process::OperatorProcess;
use common::*;
use costmap_operator::api::ClusterModelCostMapSync;
use costmap_operator::digest::sha256_digest;
use figures::rss_kib;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Client};
use serde_json::json;

const NAME: &str = "bench-shared";
const LABEL: &str = "costmap-bench-cluster";

/// How many copies (ConfigMaps of the cluster object, anywhere) hold `digest`.
async fn holding(client: &Client, digest: &str) -> usize {
    let params = ListParams::default().fields(&format!("metadata.name={NAME}"));
    let listed = Api::<PartialObjectMeta<ConfigMap>>::all(client.clone())
        .list_metadata(&params)
        .await
        .map(|list| list.items)
        .unwrap_or_default();
    listed
        .iter()
        .filter(|cm| {
            cm.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("costmap.dev/digest"))
                .is_some_and(|d| d == digest)
        })
        .count()
}

/// Waits until status says every namespace is Ready with `digest`.
async fn wait_all_ready(client: &Client, namespaces: usize, digest: &str) {
    let api = Api::<ClusterModelCostMapSync>::all(client.clone());
    eventually_within(
        "every namespace Ready",
        Duration::from_secs(600),
        || async {
            let status = api.get(NAME).await.ok()?.status?;
            let ready = status.sync.conditions.iter().find(|c| c.type_ == "Ready")?;
            let artifact = status.sync.artifact.as_ref()?;
            let counted = status.namespaces.as_ref()?.ready == namespaces as i32;
            (ready.status == "True" && counted && artifact.digest == digest).then_some(())
        },
    )
    .await;
}

#[tokio::main]
async fn main() {
    let namespaces: usize = std::env::var("COSTMAP_BENCH_NAMESPACES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let client = client().await;
    let operator_ns = namespace(&client, "bench-cluster-operator").await;
    let labels = BTreeMap::from([(LABEL.to_owned(), "yes".to_owned())]);
    for i in 0..namespaces {
        let ns: Namespace = serde_json::from_value(
            json!({"metadata": {"name": format!("bench-team-{i:03}"), "labels": labels}}),
        )
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }
    let first = real_map("1.110.2");
    let source = Source::start(Answer::Map(first.clone())).await;
    let operator = OperatorProcess::start_logging(
        &control_plane().kubeconfig,
        &operator_ns,
        "operator-0",
        &[NO_SYNC_GAP],
        "warn",
    );
    let started = Instant::now();
    create_cluster_sync(&client, NAME, &source.url, &labels).await;
    wait_all_ready(&client, namespaces, &sha256_digest(&first)).await;
    let all_ready = started.elapsed();
    let first_round = source.received();

    // A new map upstream (one model more), asked for at once: until every copy holds it.
    let second = with_model(&first, DAY0_MODEL, day0_entry());
    let second_digest = sha256_digest(&second);
    source.set(Answer::Map(second.clone()));
    let started = Instant::now();
    let patch = json!({"metadata": {"annotations": {"costmap.dev/sync-requested-at": "bench"}}});
    Api::<ClusterModelCostMapSync>::all(client.clone())
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("request a sync");
    eventually_within(
        "every namespace holds the new map",
        Duration::from_secs(600),
        || async { (holding(&client, &second_digest).await == namespaces).then_some(()) },
    )
    .await;
    let all_new = started.elapsed();
    wait_all_ready(&client, namespaces, &second_digest).await;
    let status_new = started.elapsed();
    let second_round = source.received() - first_round;
    let peak = rss_kib(operator.pid(), "VmHWM");
    let now = rss_kib(operator.pid(), "VmRSS");

    println!(
        "1 ClusterModelCostMapSync over {namespaces} namespaces, the real 3.5 MB map (litellm 1.110.2), release build:"
    );
    println!("  upstream requests: first round {first_round}, new-map round {second_round}");
    println!(
        "  every namespace Ready (status {namespaces}/{namespaces}) {:.1} s after the object was created",
        all_ready.as_secs_f64()
    );
    println!(
        "  every namespace holds the new map {:.1} s after the sync request (status says so at {:.1} s)",
        all_new.as_secs_f64(),
        status_new.as_secs_f64()
    );
    println!("  operator RSS: peak {peak} KiB, at the end {now} KiB");
}
