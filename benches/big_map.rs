//! The 35 MB map (the real map ten times over, tests/common/big_map.rs) end to end on
//! loopback, with the release binary against the local control plane: its size, gzip size
//! and chunk count; the first sync (create to Ready); content changes between two such maps
//! (sync request to the status that records it, and to the endpoint serving the new map put
//! together from its chunks); an unchanged source (304); and the operator's peak RSS.
//! Prints figures; asserts none.
//!
//! `cargo bench --bench big_map`

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/figures.rs"]
mod figures;
#[path = "support/timing.rs"]
mod timing;

use std::time::Instant;

use common::big_map::{big_map, gzip_ratio};
use common::process::OperatorProcess;
use common::*;
use costmap_operator::api::{DEFAULT_KEY, Reason};
use costmap_operator::digest::sha256_digest;
use costmap_operator::layout::chunks::CHUNK_BYTES;
use costmap_operator::layout::gzip::StoredMap;
use costmap_operator::sync::validate::IndexedMap;
use figures::{max, median, min, rss_kib};
use timing::SyncTimer;

const RUNS: usize = 5;

#[tokio::main]
async fn main() {
    let real = real_map("1.110.2");
    let maps = [big_map(&real, 9), big_map(&real_map("1.108.0"), 9)];
    let gz_len = StoredMap::from_bytes(maps[0].to_vec()).gz.len();
    let client = client().await;
    let ns = namespace(&client, "bench-big").await;
    let source = Source::start(Answer::Map(maps[0].clone())).await;
    let mut operator = OperatorProcess::quiet(&ns);
    let pid = operator.pid();
    let rss_at_start = rss_kib(pid, "VmRSS");

    let started = Instant::now();
    create_litellm_sync(&client, &ns, &source.url).await;
    wait_ready(&client, &ns, "litellm", "True", Reason::Synced).await;
    let first_sync = started.elapsed().as_secs_f64() * 1000.0;
    let first_served = served_after(&operator, &ns, &maps[0], started).await;
    let rss_after_first_sync = rss_kib(pid, "VmRSS");

    let mut timer = SyncTimer::new(&client, &ns);
    let (mut changed, mut served, mut unchanged) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        // A map never seen before, every run (a map prepared before comes from memory).
        let map = &timing::never_seen(&maps[(run + 1) % 2], run);
        source.set(Answer::Map(map.clone()));
        let started = Instant::now();
        changed.push(timer.timed_sync(&format!("change-{run}")).await);
        served.push(served_after(&operator, &ns, map, started).await);
        unchanged.push(timer.timed_sync(&format!("same-{run}")).await);
    }
    let peak = rss_kib(pid, "VmHWM");
    let idle = rss_kib(pid, "VmRSS");
    operator.kill();

    println!("the 35 MB map (chunks) on loopback, release build:");
    println!(
        "  map: {} bytes, {} models (the real map's, and nine renamed copies), gzip {gz_len} bytes (ratio {:.4}; the real map's {:.4}), {} chunks of at most {CHUNK_BYTES} bytes",
        maps[0].len(),
        IndexedMap::read(&maps[0]).expect("a map").model_count(),
        gzip_ratio(&maps[0]),
        gzip_ratio(&real),
        gz_len.div_ceil(CHUNK_BYTES),
    );
    println!(
        "  first sync (create -> Ready): {first_sync:.0} ms; served by the endpoint after {first_served:.0} ms"
    );
    println!(
        "  content change (35 MB <-> 30 MB, a new map every run), {RUNS} runs: request -> status median {:.0} ms (min {:.0}, max {:.0}); -> served median {:.0} ms (min {:.0}, max {:.0})",
        median(&changed),
        min(&changed),
        max(&changed),
        median(&served),
        min(&served),
        max(&served)
    );
    println!(
        "  unchanged (304), {RUNS} runs: median {:.0} ms (min {:.0}, max {:.0})",
        median(&unchanged),
        min(&unchanged),
        max(&unchanged)
    );
    println!(
        "  operator RSS: {rss_at_start} KiB at start, {rss_after_first_sync} KiB after the first sync, {idle} KiB at the end, peak {peak} KiB"
    );
}

/// Milliseconds from `started` until the operator's endpoint serves `map` (by its ETag).
async fn served_after(operator: &OperatorProcess, ns: &str, map: &[u8], started: Instant) -> f64 {
    let url = format!("{}/maps/{ns}/litellm/{DEFAULT_KEY}", operator.url);
    let etag = format!("\"{}\"", sha256_digest(map));
    let client = reqwest::Client::new();
    eventually("the endpoint serves the map", || async {
        let response = client.head(&url).send().await.ok()?;
        (response.headers().get("etag")?.to_str().ok()? == etag).then_some(())
    })
    .await;
    started.elapsed().as_secs_f64() * 1000.0
}
