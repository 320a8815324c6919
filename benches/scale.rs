//! The operator (release build) with many ModelCostMapSync objects on one source, each
//! holding the real 3.5 MB map: upstream requests per round, time until all are Ready and
//! until all hold a new map, the operator's RSS idle and at its peak. Prints figures;
//! asserts none.
//!
//! `cargo bench --bench scale` (COSTMAP_BENCH_OBJECTS=N to change the default 1000)
//!
//! Rounds: the first (every object created, each syncs the 1.108.0 map), the second (at
//! the 1-minute interval: the source answers 304), and a new map (the source serves
//! 1.110.2 and one object is asked to sync now; the others learn it from that fetch).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/figures.rs"]
mod figures;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::OperatorProcess;
use common::*;
use costmap_operator::api::ModelCostMapSync;
use costmap_operator::digest::sha256_digest;
use figures::rss_kib;
use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

/// Every object as the bench last saw it. The bench follows them with a watch, as
/// `kubectl get -w` would: a full list every 100 ms would itself load the API server with
/// megabytes per answer, and the figures are the operator's.
fn watch_all(api: Api<ModelCostMapSync>) -> Store<ModelCostMapSync> {
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default()));
    tokio::spawn(stream.applied_objects().for_each(|_| async {}));
    reader
}

/// What the bench reads of every object at once, by name (the second round compares each
/// object with itself).
fn list(store: &Store<ModelCostMapSync>) -> Vec<Arc<ModelCostMapSync>> {
    let mut all = store.state();
    all.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    all
}

fn digest_of(sync: &ModelCostMapSync) -> Option<&str> {
    Some(sync.status.as_ref()?.artifact.as_ref()?.digest.as_str())
}

fn last_sync(sync: &ModelCostMapSync) -> Option<i64> {
    Some(sync.status.as_ref()?.last_sync_time.as_ref()?.0.as_second())
}

#[tokio::main]
async fn main() {
    let objects: usize = std::env::var("COSTMAP_BENCH_OBJECTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let client = client().await;
    let ns = namespace(&client, "bench-scale").await;
    let (old_map, new_map) = (real_map("1.108.0"), real_map("1.110.2"));
    let source = Source::start(Answer::Map(old_map.clone())).await;
    let operator = OperatorProcess::quiet(&ns);
    let pid = operator.pid();
    let seen = watch_all(syncs(&client, &ns));
    let started = Instant::now();
    // Created 16 at a time, as `kubectl apply` of a directory would.
    futures::stream::iter(0..objects)
        .map(|i| {
            let (client, ns, url) = (&client, &ns, &source.url);
            async move {
                let name = format!("litellm-{i:04}");
                let spec = json!({"source": {"url": url}, "interval": "1m"});
                create_sync(client, ns, &name, spec).await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let created = started.elapsed();
    let first = sha256_digest(&old_map);
    let round_one = eventually_within("every object Ready", Duration::from_secs(1800), || {
        let seen = seen.clone();
        let first = first.clone();
        async move {
            let all = list(&seen);
            let ready = all
                .iter()
                .filter(|s| ready_condition(s).is_some_and(|c| c.status == "True"))
                .filter(|s| digest_of(s) == Some(first.as_str()))
                .count();
            (ready == objects).then_some(all)
        }
    })
    .await;
    let all_ready = started.elapsed();
    let requests_first = source.received();
    let peak_first = rss_kib(pid, "VmHWM");

    // Idle: nothing due for a while. Samples over a few seconds.
    let mut idle = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        idle.push(rss_kib(pid, "VmRSS"));
    }

    // The second round, at the interval.
    let before: Vec<Option<i64>> = round_one.iter().map(|s| last_sync(s)).collect();
    eventually_within(
        "every object synced at its interval",
        Duration::from_secs(600),
        || {
            let seen = seen.clone();
            let before = before.clone();
            async move {
                let all = list(&seen);
                let again = all.len() == before.len()
                    && all.iter().zip(&before).all(|(s, b)| last_sync(s) > *b);
                again.then_some(())
            }
        },
    )
    .await;
    let requests_second = source.received() - requests_first;

    // A new map: one object asked to sync now; time until every object holds it.
    source.set(Answer::Map(new_map.clone()));
    let new = sha256_digest(&new_map);
    let asked = Instant::now();
    let before_new = source.received();
    request_sync(&client, &ns, "litellm-0000", "new-map").await;
    eventually_within(
        "every object holds the new map",
        Duration::from_secs(1800),
        || {
            let seen = seen.clone();
            let new = new.clone();
            async move {
                let all = list(&seen);
                let holding = all
                    .iter()
                    .filter(|s| digest_of(s) == Some(new.as_str()))
                    .count();
                (holding == objects).then_some(())
            }
        },
    )
    .await;
    let all_new = asked.elapsed();
    let requests_new = source.received() - before_new;
    let peak = rss_kib(pid, "VmHWM");

    println!(
        "{objects} ModelCostMapSync objects on one source, the real 3.5 MB map, release build:"
    );
    println!(
        "  first round: all Ready {:.1} s after the first was created ({:.1} s to create them); \
         upstream requests {requests_first}; RSS peak so far {peak_first} KiB",
        all_ready.as_secs_f64(),
        created.as_secs_f64(),
    );
    println!(
        "  idle RSS {} KiB (samples over 5 s: {idle:?})",
        idle.last().copied().unwrap_or_default()
    );
    println!("  second round (interval 1m, unchanged): upstream requests {requests_second}");
    println!(
        "  new map (1.108.0 -> 1.110.2): all hold it {:.1} s after one object was asked; \
         upstream requests {requests_new}",
        all_new.as_secs_f64()
    );
    println!("  operator RSS peak over the run: {peak} KiB");
}
