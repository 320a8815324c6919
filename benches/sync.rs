//! End-to-end sync of the real 3.5 MB map on loopback, with the release binary against the
//! local control plane: time from a sync request to the status that records it, for a
//! content change (1.108.0 <-> 1.110.2, with one model more named for the run so that each
//! run is a map never seen: fetch, parse, validate, diff, gzip, write, status) and
//! for an unchanged source (304), for an edit of an override ConfigMap (merged into the
//! remembered fetched map, no fetch) until the endpoint serves it, and the operator's peak
//! RSS. Prints figures; asserts none.
//!
//! `cargo bench --bench sync`

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/figures.rs"]
mod figures;
#[path = "support/timing.rs"]
mod timing;

use costmap_operator::api::MapSync;
use std::time::Instant;

use common::process::OperatorProcess;
use common::*;
use figures::{max, median, min, rss_kib};
use timing::SyncTimer;

const RUNS: usize = 9;

#[tokio::main]
async fn main() {
    let client = client().await;
    let ns = namespace(&client, "bench").await;
    let maps = [real_map("1.108.0"), real_map("1.110.2")];
    let source = Source::start(Answer::Map(maps[0].clone())).await;

    let mut operator = OperatorProcess::quiet_with_litellm_sync(&client, &ns, &source.url).await;
    let pid = operator.pid();
    let rss_after_first_sync = rss_kib(pid, "VmRSS");

    let mut timer = SyncTimer::new(&client, &ns);
    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    for run in 0..RUNS {
        // A map never seen before, every run: a map the operator prepared already (for
        // another object, or two runs ago) is taken from memory, which is not what a new
        // upstream map costs.
        source.set(Answer::Map(timing::never_seen(&maps[(run + 1) % 2], run)));
        changed.push(timer.timed_sync(&format!("change-{run}")).await);
        unchanged.push(timer.timed_sync(&format!("same-{run}")).await);
    }
    let edits = override_edits(&client, &ns, &operator).await;
    let published = published_sizes(&client, &ns).await;
    let peak = rss_kib(pid, "VmHWM");
    let idle = rss_kib(pid, "VmRSS");
    operator.kill();

    println!("sync of the real map on loopback, {RUNS} runs each, release build:");
    println!(
        "  content change (3.0 <-> 3.5 MB, a new map every run): median {:>7.1} ms  (min {:.1}, max {:.1})",
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
        "  override ConfigMap edit -> served by the endpoint (no fetch): median {:>7.1} ms  (min {:.1}, max {:.1})",
        median(&edits),
        min(&edits),
        max(&edits)
    );
    println!("  published map with the override: {published}");
    println!(
        "  operator RSS: {rss_after_first_sync} KiB after the first sync, {idle} KiB at the end, peak {peak} KiB"
    );
}

/// The published map's size, and its gzip's in the ConfigMap.
async fn published_sizes(client: &kube::Client, ns: &str) -> String {
    let sync = syncs(client, ns)
        .get("litellm")
        .await
        .expect("reading the object");
    let config_map = config_maps(client, ns)
        .get(sync.config_map_name())
        .await
        .expect("reading the ConfigMap");
    let artifact = sync
        .status
        .and_then(|s| s.artifact)
        .expect("a published map");
    let gzip: usize = config_map
        .binary_data
        .unwrap_or_default()
        .values()
        .map(|bytes| bytes.0.len())
        .sum();
    format!(
        "{} bytes, {} models, gzip {gzip} bytes ({:.1}% of a ConfigMap's 1 MiB)",
        artifact.size,
        artifact.models,
        gzip as f64 * 100.0 / (1024.0 * 1024.0)
    )
}

/// Names an override ConfigMap in the spec, then edits its price of gpt-4o RUNS times:
/// the milliseconds from each edit until the endpoint serves the new price.
async fn override_edits(client: &kube::Client, ns: &str, operator: &OperatorProcess) -> Vec<f64> {
    let rates = |price: f64| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "negotiated-rates"},
            "data": {"overrides.json": serde_json::json!({"gpt-4o": {"input_cost_per_token": price}}).to_string()},
        })
    };
    let apply = kube::api::PatchParams::apply("bench").force();
    let config_maps = config_maps(client, ns);
    let edit = |price: f64| {
        let config_maps = config_maps.clone();
        let apply = apply.clone();
        async move {
            config_maps
                .patch(
                    "negotiated-rates",
                    &apply,
                    &kube::api::Patch::Apply(&rates(price)),
                )
                .await
                .expect("writing the override ConfigMap");
        }
    };
    edit(1e-6).await;
    let refs = serde_json::json!({"spec": {"overrides": {"configMapRefs": [{"name": "negotiated-rates"}]}}});
    syncs(client, ns)
        .patch(
            "litellm",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&refs),
        )
        .await
        .expect("naming the override ConfigMap");
    let path = format!("/maps/{ns}/litellm/{}", costmap_operator::api::DEFAULT_KEY);
    let serves = |price: f64| {
        let path = path.clone();
        async move {
            let (_, body) = operator.get(&path).await?;
            let map: serde_json::Value = serde_json::from_str(&body).ok()?;
            (map["gpt-4o"]["input_cost_per_token"] == price).then_some(())
        }
    };
    eventually("the first override served", || serves(1e-6)).await;
    let mut times = Vec::new();
    for run in 0..RUNS {
        let price = 1e-6 + (run + 1) as f64 * 1e-8;
        let started = Instant::now();
        edit(price).await;
        eventually("the edit served", || serves(price)).await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times
}
