//! High availability with two operator processes (the built binary) on the real control
//! plane: one leader reconciles, both serve; the leader is killed, the other takes the Lease
//! within the lease duration, writes nothing twice, and handles the next sync request.

mod common;

use costmap_operator::api::Reason;
use std::time::{Duration, Instant};

use common::process::OperatorProcess;
use common::*;
use costmap_operator::api::DEFAULT_KEY;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

/// Short, so the test is quick; the default (15 s) is measured by `cargo bench --bench failover`.
const LEASE_DURATION: Duration = Duration::from_secs(4);

async fn holder(client: &Client, ns: &str) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get("costmap-operator")
        .await
        .ok()?;
    lease.spec?.holder_identity
}

async fn serves(operator: &OperatorProcess, ns: &str, digest: &str) -> bool {
    let url = format!("{}/maps/{ns}/litellm/{DEFAULT_KEY}", operator.url);
    let Ok(response) = reqwest::get(url).await else {
        return false;
    };
    response
        .headers()
        .get("etag")
        .is_some_and(|etag| etag.as_bytes() == format!("\"{digest}\"").as_bytes())
}

#[tokio::test]
async fn the_follower_takes_over_a_killed_leader_and_handles_the_next_sync_request() {
    let client = client().await;
    let ns = namespace(&client, "ha").await;
    let source = Source::start(Answer::Map(small_map(60, &[]))).await;
    let kubeconfig = &control_plane().kubeconfig;
    let lease = format!("--lease-duration={}s", LEASE_DURATION.as_secs());
    let json = "--log-format=json";
    let mut replicas = [
        OperatorProcess::start(
            kubeconfig,
            &ns,
            "replica-a",
            &["--namespace", &ns, &lease, json],
        ),
        OperatorProcess::start(
            kubeconfig,
            &ns,
            "replica-b",
            &["--namespace", &ns, &lease, json],
        ),
    ];
    create_litellm_sync(&client, &ns, &source.url).await;
    let sync = wait_ready(&client, &ns, "litellm", "True", Reason::Synced).await;
    let first = sync.status.unwrap().artifact.unwrap().digest;

    let leader_pod = eventually("a leader", || holder(&client, &ns)).await;
    let (leader, follower) = if leader_pod == replicas[0].pod {
        (0, 1)
    } else {
        (1, 0)
    };
    assert_eq!(replicas[leader].pod, leader_pod);
    // Both serve; only the leader reconciles.
    for replica in &replicas {
        eventually("every replica serves the map", || async {
            serves(replica, &ns, &first).await.then_some(())
        })
        .await;
    }
    assert_eq!(replicas[leader].metric("costmap_leader").await, Some(1.0));
    assert_eq!(replicas[follower].metric("costmap_leader").await, Some(0.0));
    assert_eq!(
        replicas[follower].metric("costmap_reconciles_total").await,
        Some(0.0),
        "the follower does not reconcile"
    );

    let written = written_versions(&client, &ns, "litellm").await;

    replicas[leader].kill();
    let killed = Instant::now();
    let new_holder = eventually("the follower takes the Lease", || async {
        holder(&client, &ns).await.filter(|pod| pod != &leader_pod)
    })
    .await;
    let took = killed.elapsed();
    eprintln!(
        "failover with a {LEASE_DURATION:?} lease: {:.2} s",
        took.as_secs_f64()
    );
    assert_eq!(new_holder, replicas[follower].pod);
    assert!(
        took < LEASE_DURATION + Duration::from_secs(5),
        "taken over in {took:?}, a lease lasts {LEASE_DURATION:?}"
    );
    eventually("the new leader reconciles", || async {
        let reconciles = replicas[follower]
            .metric("costmap_reconciles_total")
            .await?;
        (reconciles > 0.0).then_some(())
    })
    .await;
    // Taking over rewrote nothing: the cluster already held the last good map and status.
    assert_eq!(written_versions(&client, &ns, "litellm").await, written);

    // The new leader handles a sync request with a new map, and serves it.
    source.set(Answer::Map(small_map(60, &["day0-model"])));
    request_sync(&client, &ns, "litellm", "after-failover").await;
    let sync = wait_handled(&client, &ns, "litellm", "after-failover").await;
    let status = sync.status.unwrap();
    assert_eq!(
        status.last_change.unwrap().added_models,
        vec!["day0-model".to_owned()]
    );
    let second = status.artifact.unwrap().digest;
    assert_ne!(second, first);
    eventually("the survivor serves the new map", || async {
        serves(&replicas[follower], &ns, &second)
            .await
            .then_some(())
    })
    .await;
    // JSON logs: one object per line; the lines of a reconcile name the object.
    let log = replicas[follower].log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let message = |line: &serde_json::Value| line["fields"]["message"].as_str().map(str::to_owned);
    assert!(
        lines
            .iter()
            .any(|l| message(l).as_deref() == Some("became the leader: reconciling"))
    );
    let syncing = lines
        .iter()
        .find(|l| message(l).as_deref() == Some("syncing"))
        .unwrap_or_else(|| panic!("no reconcile logged a sync:\n{log}"));
    assert_eq!(syncing["span"]["namespace"], ns.as_str(), "{syncing}");
    assert_eq!(syncing["span"]["modelcostmapsync"], "litellm", "{syncing}");
}
