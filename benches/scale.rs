//! The operator (release build) with many ModelCostMapSync objects, each holding the real
//! 3.5 MB map: time to sync them all, and the operator's RSS once idle. Prints figures;
//! asserts none.
//!
//! `cargo bench --bench scale` (COSTMAP_BENCH_OBJECTS=N to change the default 100)

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/figures.rs"]
mod figures;

use std::time::{Duration, Instant};

use common::process::OperatorProcess;
use common::*;
use figures::rss_kib;
use serde_json::json;

#[tokio::main]
async fn main() {
    let objects: usize = std::env::var("COSTMAP_BENCH_OBJECTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let client = client().await;
    let ns = namespace(&client, "bench-scale").await;
    let source = Source::start(Answer::Map(real_map("1.110.2"))).await;
    let operator = OperatorProcess::start(
        &control_plane().kubeconfig,
        &ns,
        "operator-0",
        &["--namespace", &ns],
    );
    let started = Instant::now();
    for i in 0..objects {
        create_sync(
            &client,
            &ns,
            &format!("litellm-{i:03}"),
            json!({"source": {"url": source.url}}),
        )
        .await;
    }
    let api = syncs(&client, &ns);
    eventually_within("every object Ready", Duration::from_secs(600), || async {
        let list = api.list(&Default::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|s| ready_condition(s).is_some_and(|c| c.status == "True"))
            .count();
        (ready == objects).then_some(())
    })
    .await;
    let synced = started.elapsed();
    let pid = operator.pid();
    let peak = rss_kib(pid, "VmHWM");
    // Idle: nothing due for an hour; give the allocator a moment to settle, then read.
    let mut idle = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        idle.push(rss_kib(pid, "VmRSS"));
    }
    println!(
        "{objects} ModelCostMapSync objects, each the real 3.5 MB map (litellm 1.110.2), release build:"
    );
    println!(
        "  all Ready after {:.1} s ({:.0} ms per object)",
        synced.as_secs_f64(),
        synced.as_secs_f64() * 1000.0 / objects as f64
    );
    println!(
        "  operator RSS: idle {} KiB (samples over 10 s: {idle:?}), peak {peak} KiB",
        idle.last().unwrap()
    );
}
