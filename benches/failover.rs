//! Failover with the default 15 s lease, release build, two operator processes on the local
//! control plane: time from SIGKILL of the leader until the other replica holds the Lease,
//! and until it has handled a sync request. Prints figures; asserts none.
//!
//! `cargo bench --bench failover`

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/figures.rs"]
mod figures;

use costmap_operator::api::Reason;
use std::time::Instant;

use common::process::OperatorProcess;
use common::*;
use figures::{max, median, min};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

const RUNS: usize = 5;

#[tokio::main]
async fn main() {
    let client = client().await;
    let source = Source::start(Answer::Map(small_map(60, &[]))).await;
    let kubeconfig = &control_plane().kubeconfig;
    let mut to_lease = Vec::new();
    let mut to_sync = Vec::new();
    for run in 0..RUNS {
        let ns = namespace(&client, "bench-failover").await;
        let mut replicas = [
            OperatorProcess::start(
                kubeconfig,
                &ns,
                "replica-a",
                &["--namespace", &ns, NO_SYNC_GAP],
            ),
            OperatorProcess::start(
                kubeconfig,
                &ns,
                "replica-b",
                &["--namespace", &ns, NO_SYNC_GAP],
            ),
        ];
        create_litellm_sync(&client, &ns, &source.url).await;
        wait_ready(&client, &ns, "litellm", "True", Reason::Synced).await;
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let holder = || async {
            leases
                .get("costmap-operator")
                .await
                .ok()?
                .spec?
                .holder_identity
        };
        let leader = eventually("a leader", holder).await;
        let index = replicas.iter().position(|r| r.pod == leader).unwrap();
        replicas[index].kill();
        let killed = Instant::now();
        eventually("a new leader", || async {
            holder().await.filter(|pod| pod != &leader)
        })
        .await;
        to_lease.push(killed.elapsed().as_secs_f64());
        let token = format!("failover-{run}");
        request_sync(&client, &ns, "litellm", &token).await;
        wait_handled(&client, &ns, "litellm", &token).await;
        to_sync.push(killed.elapsed().as_secs_f64());
    }
    println!("failover, lease duration 15 s (the default), {RUNS} runs, leader SIGKILLed:");
    println!(
        "  until the other replica holds the Lease: median {:.1} s (min {:.1}, max {:.1})",
        median(&to_lease),
        min(&to_lease),
        max(&to_lease)
    );
    println!(
        "  until it has handled a sync request:     median {:.1} s (min {:.1}, max {:.1})",
        median(&to_sync),
        min(&to_sync),
        max(&to_sync)
    );
}
