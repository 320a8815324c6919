//! Convergence after each kind of fault (the scenarios `tests/faults.rs` asserts): the time
//! from the end of the fault (a server or the operator started again, the source answering
//! again) until status, the ConfigMap and the map endpoint all hold the right map. Debug
//! control plane, release operator; prints medians of several runs, asserts nothing the
//! tests do not.
//!
//! `cargo bench --bench faults` (RUNS=N to change the number of runs, default 5; ONLY=TEXT
//! for the scenarios whose name contains TEXT)

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/figures.rs"]
mod figures;

use std::future::Future;
use std::time::Duration;

use common::faults;
use figures::{max, median, min};
use testenv::Server;

async fn measure<F, Fut>(name: &str, runs: usize, scenario: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Duration>,
{
    // ONLY=apiserver (say) runs the scenarios whose name contains it.
    if std::env::var("ONLY").is_ok_and(|only| !name.contains(only.as_str())) {
        return;
    }
    let mut seconds = Vec::new();
    for _ in 0..runs {
        seconds.push(scenario().await.as_secs_f64());
    }
    println!(
        "{name:<48} median {:>6.2} s  (min {:.2}, max {:.2}, {runs} runs)",
        median(&seconds),
        min(&seconds),
        max(&seconds)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(5);
    measure(
        "kube-apiserver killed after a sync",
        runs,
        faults::api_server_killed_after_a_sync,
    )
    .await;
    measure("kube-apiserver killed during a sync", runs, || {
        faults::killed_during_a_sync(Server::ApiServer)
    })
    .await;
    measure("etcd killed during a sync", runs, || {
        faults::killed_during_a_sync(Server::Etcd)
    })
    .await;
    measure(
        "operator killed before the fetch ends",
        runs,
        faults::operator_killed_before_the_fetch_ends,
    )
    .await;
    measure(
        "operator killed after the ConfigMap write",
        runs,
        faults::operator_killed_after_the_configmap_write,
    )
    .await;
    measure(
        "operator killed after the status write",
        runs,
        faults::operator_killed_after_the_status_write,
    )
    .await;
    measure(
        "ConfigMap deleted while the operator is down",
        runs,
        faults::configmap_deleted_while_the_operator_is_down,
    )
    .await;
    measure(
        "ConfigMap tampered with while it is down",
        runs,
        faults::configmap_tampered_while_the_operator_is_down,
    )
    .await;
    measure(
        "tampered, source failing, restored from history",
        runs,
        faults::configmap_tampered_while_the_source_fails_is_restored_from_history,
    )
    .await;
    measure(
        "tampered, source failing (history 0), then answering",
        runs,
        faults::configmap_tampered_while_the_source_fails,
    )
    .await;
    measure(
        "source refusing then hanging, then answering",
        runs,
        faults::source_failing_then_hanging,
    )
    .await;
}
