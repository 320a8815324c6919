//! End-to-end sync of the real 3.5 MB map on loopback, with the release binary against the
//! local control plane: time from a sync request to the status that records it, for a
//! content change (1.108.0 <-> 1.110.2: fetch, parse, validate, diff, gzip, apply, status) and
//! for an unchanged source (304), and the operator's peak RSS. Prints figures; asserts none.
//!
//! `cargo bench --bench sync`

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/figures.rs"]
mod figures;

use costmap_operator::api::Reason;
use std::time::{Duration, Instant};

use common::process::OperatorProcess;
use common::*;
use figures::{max, median, min, rss_kib};
use kube::runtime::wait::await_condition;

const RUNS: usize = 9;

#[tokio::main]
async fn main() {
    let client = client().await;
    let ns = namespace(&client, "bench").await;
    let maps = [real_map("1.108.0"), real_map("1.110.2")];
    let source = Source::start(Answer::Map(maps[0].clone())).await;

    let mut operator = OperatorProcess::start_logging(
        &control_plane().kubeconfig,
        &ns,
        "operator-0",
        &["--namespace", &ns],
        "warn",
    );
    let pid = operator.pid();

    create_litellm_sync(&client, &ns, &source.url).await;
    wait_ready(&client, &ns, "litellm", "True", Reason::Synced).await;
    let rss_after_first_sync = rss_kib(pid, "VmRSS");

    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    for run in 0..RUNS {
        source.set(Answer::Map(maps[(run + 1) % 2].clone()));
        changed.push(timed_sync(&client, &ns, &format!("change-{run}")).await);
        unchanged.push(timed_sync(&client, &ns, &format!("same-{run}")).await);
    }
    let peak = rss_kib(pid, "VmHWM");
    let idle = rss_kib(pid, "VmRSS");
    operator.kill();

    println!("sync of the real map on loopback, {RUNS} runs each, release build:");
    println!(
        "  content change (3.0 <-> 3.5 MB): median {:>7.1} ms  (min {:.1}, max {:.1})",
        median(&changed),
        min(&changed),
        max(&changed)
    );
    println!(
        "  unchanged (304):                 median {:>7.1} ms  (min {:.1}, max {:.1})",
        median(&unchanged),
        min(&unchanged),
        max(&unchanged)
    );
    println!(
        "  operator RSS: {rss_after_first_sync} KiB after the first sync, {idle} KiB at the end, peak {peak} KiB"
    );
}

/// Requests a sync and returns the milliseconds until the status records it.
async fn timed_sync(client: &kube::Client, ns: &str, token: &str) -> f64 {
    let api = syncs(client, ns);
    let started = Instant::now();
    request_sync(client, ns, "litellm", token).await;
    let handled = await_condition(
        api,
        "litellm",
        |sync: Option<&costmap_operator::api::ModelCostMapSync>| {
            sync.and_then(|s| s.status.as_ref())
                .is_some_and(|s| s.last_handled_sync_request.as_deref() == Some(token))
        },
    );
    tokio::time::timeout(Duration::from_secs(60), handled)
        .await
        .expect("sync handled in time")
        .expect("watch");
    started.elapsed().as_secs_f64() * 1000.0
}
