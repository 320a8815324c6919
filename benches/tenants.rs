//! Many tenants at once, some hostile: the release operator against the local control plane,
//! with its default flags (but loopback sources allowed, as every loopback bench must, and
//! no gap between requested syncs, which the fairness runs would time). Hostile
//! tenants each point at a different source of the largest accepted size, of the shapes that
//! cost the parser most per byte; two tenants sync two different 35 MB maps; the other tenants sync the
//! real map. Everything is created at once. Prints the operator's peak RSS against the
//! chart's memory limit, whether it restarted, and how long the other tenants took to be
//! Ready. Asserts nothing but that the operator stays up.
//!
//! `cargo bench --bench tenants`

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/figures.rs"]
mod figures;
#[path = "support/timing.rs"]
mod timing;

use std::time::{Duration, Instant};

use common::big_map::big_map;
use common::process::OperatorProcess;
use common::*;
use costmap_operator::api::Reason;
use costmap_operator::sync::fetch::FetchPolicy;
use figures::{max, median, rss_kib};
use timing::{SyncTimer, never_seen};

/// The chart's default memory limit (charts/costmap-operator/values.yaml).
const CHART_LIMIT: &str = "512Mi";
const CHART_LIMIT_KIB: u64 = 512 * 1024;
/// Tenants that sync the real map.
const GOOD_TENANTS: usize = 3;
/// Objects of the crowding tenant, each on a 35 MB map of its own.
const CROWD: usize = 8;
/// Runs of each fairness measurement.
const RUNS: usize = 3;

/// A body of `size` bytes of one hostile shape: valid JSON, a top-level object, as many
/// values per byte as JSON allows.
fn hostile(shape: &str, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    match shape {
        // Models whose one field is a long array of zeros: two bytes per value.
        "arrays" => {
            let per_model = size / 64;
            let mut model = 0;
            out.push(b'{');
            while out.len() + per_model + 32 < size {
                if model > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(format!("\"m{model}\":{{\"a\":[0").as_bytes());
                let end = out.len() + per_model;
                while out.len() < end {
                    out.extend_from_slice(b",0");
                }
                out.extend_from_slice(b"]}");
                model += 1;
            }
            out.push(b'}');
        }
        // One array of empty objects: three bytes per object.
        "objects" => {
            out.extend_from_slice(b"{\"m\":{\"a\":[{}");
            while out.len() + 8 < size {
                out.extend_from_slice(b",{}");
            }
            out.extend_from_slice(b"]}}");
        }
        // Models with many one-letter fields: short keys, each a string the tree copies.
        "fields" => {
            let mut model = 0;
            out.push(b'{');
            while out.len() + 4096 < size {
                if model > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(format!("\"m{model}\":{{").as_bytes());
                for field in 0..300 {
                    if field > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(format!("\"f{field}\":1").as_bytes());
                }
                out.push(b'}');
                model += 1;
            }
            out.push(b'}');
        }
        other => panic!("no shape {other}"),
    }
    assert!(out.len() <= size, "{shape}: {} > {size}", out.len());
    out
}

#[tokio::main]
async fn main() {
    let max_bytes = usize::try_from(FetchPolicy::default().max_body_bytes).unwrap();
    let shapes = ["arrays", "objects", "fields"];
    let real = real_map("1.110.2");
    let bigs = [big_map(&real, 9), big_map(&real_map("1.108.0"), 9)];
    let client = client().await;
    let operator_ns = namespace(&client, "bench-tenants-op").await;
    let mut operator = OperatorProcess::start_logging(
        &control_plane().kubeconfig,
        &operator_ns,
        "operator-0",
        &[NO_SYNC_GAP],
        "warn",
    );
    let pid = operator.pid();
    eventually("the operator to serve", || async {
        let ready = reqwest::get(format!("{}/readyz", operator.url))
            .await
            .ok()?;
        ready.status().is_success().then_some(())
    })
    .await;
    let rss_at_start = rss_kib(pid, "VmRSS");

    let mut sources = Vec::new();
    let mut hostile_tenants = Vec::new();
    for shape in shapes {
        let body = hostile(shape, max_bytes);
        let source = Source::start(Answer::Map(body.into())).await;
        hostile_tenants.push((
            namespace(&client, &format!("bench-h-{shape}")).await,
            source.url.clone(),
        ));
        sources.push(source);
    }
    let mut big_tenants = Vec::new();
    for big in &bigs {
        let source = Source::start(Answer::Map(big.clone())).await;
        big_tenants.push((namespace(&client, "bench-big").await, source.url.clone()));
        sources.push(source);
    }
    let good_source = Source::start(Answer::Map(real.clone())).await;
    let mut good_tenants = Vec::new();
    for _ in 0..GOOD_TENANTS {
        good_tenants.push(namespace(&client, "bench-good").await);
    }

    let started = Instant::now();
    for (ns, url) in &hostile_tenants {
        create_litellm_sync(&client, ns, url).await;
    }
    for (ns, url) in &big_tenants {
        create_litellm_sync(&client, ns, url).await;
    }
    for ns in &good_tenants {
        create_litellm_sync(&client, ns, &good_source.url).await;
    }
    let mut good_ready = Vec::new();
    for ns in &good_tenants {
        wait_ready(&client, ns, "litellm", "True", Reason::Synced).await;
        good_ready.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut big_ready = Vec::new();
    for (ns, _) in &big_tenants {
        wait_ready(&client, ns, "litellm", "True", Reason::Synced).await;
        big_ready.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut hostile_outcomes = Vec::new();
    for (ns, _) in &hostile_tenants {
        let sync = eventually_within(
            "the hostile tenant's sync to fail",
            Duration::from_secs(120),
            || async {
                let sync = syncs(&client, ns).get("litellm").await.ok()?;
                let ready = ready_condition(&sync)?;
                (ready.status == "False").then(|| format!("{}: {}", ready.reason, ready.message))
            },
        )
        .await;
        hostile_outcomes.push(sync);
    }
    let all_done = started.elapsed().as_secs_f64() * 1000.0;
    operator.assert_alive();
    let peak = rss_kib(pid, "VmHWM");
    let now = rss_kib(pid, "VmRSS");

    println!(
        "{} hostile tenants ({}) on {} MiB sources, two on 35 MB maps ({} and {} bytes), {GOOD_TENANTS} on the real map, created at once; release build:",
        shapes.len(),
        shapes.join(", "),
        max_bytes / (1024 * 1024),
        bigs[0].len(),
        bigs[1].len(),
    );
    for ((ns, _), outcome) in hostile_tenants.iter().zip(&hostile_outcomes) {
        let shown: String = outcome.chars().take(140).collect();
        println!("  {ns}: {shown}");
    }
    println!(
        "  real-map tenants Ready after median {:.0} ms (max {:.0}); the 35 MB tenants after {:.0} ms; all settled after {all_done:.0} ms",
        median(&good_ready),
        max(&good_ready),
        max(&big_ready)
    );
    println!(
        "  operator RSS: {rss_at_start} KiB at start, peak {peak} KiB ({:.0}% of the chart's {} limit), {now} KiB at the end; it did not restart",
        peak as f64 * 100.0 / CHART_LIMIT_KIB as f64,
        CHART_LIMIT
    );

    fairness(&client, &bigs[0], &real).await;
    operator.assert_alive();
}

/// How long one tenant's requested sync takes while another tenant's many objects sync
/// large maps at the same moment, against the time of one of those syncs alone.
async fn fairness(client: &kube::Client, big: &[u8], real: &[u8]) {
    let crowd_ns = namespace(client, "bench-crowd").await;
    let alone_ns = namespace(client, "bench-alone").await;
    let mut crowd = Vec::new();
    for i in 0..CROWD {
        let source = Source::start(Answer::Map(never_seen(big, i))).await;
        let name = if i == 0 {
            "litellm".to_owned()
        } else {
            format!("crowd-{i}")
        };
        create_sync(
            client,
            &crowd_ns,
            &name,
            serde_json::json!({"source": {"url": source.url}}),
        )
        .await;
        crowd.push((name, source));
    }
    let alone = Source::start(Answer::Map(real.to_vec().into())).await;
    create_litellm_sync(client, &alone_ns, &alone.url).await;
    for (name, _) in &crowd {
        wait_ready(client, &crowd_ns, name, "True", Reason::Synced).await;
    }
    wait_ready(client, &alone_ns, "litellm", "True", Reason::Synced).await;

    let mut alone_timer = SyncTimer::new(client, &alone_ns);
    let mut crowd_timer = SyncTimer::new(client, &crowd_ns);
    let mut content = 1000;
    let mut next = |map: &[u8]| {
        content += 1;
        never_seen(map, content)
    };
    let (mut by_itself, mut one_large, mut crowded) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        alone.set(Answer::Map(next(real)));
        by_itself.push(alone_timer.timed_sync(&format!("alone-{run}")).await);
        crowd[0].1.set(Answer::Map(next(big)));
        one_large.push(crowd_timer.timed_sync(&format!("large-{run}")).await);
        for (_, source) in &crowd {
            source.set(Answer::Map(next(big)));
        }
        alone.set(Answer::Map(next(real)));
        let token = format!("crowded-{run}");
        for (name, _) in &crowd {
            request_sync(client, &crowd_ns, name, &token).await;
        }
        crowded.push(alone_timer.timed_sync(&token).await);
        for (name, _) in &crowd {
            wait_handled(client, &crowd_ns, name, &token).await;
        }
    }
    println!(
        "fairness, {RUNS} runs: tenant B's requested sync (real map, new content) median {:.0} ms by itself, {:.0} ms while tenant A's {CROWD} objects sync new 35 MB maps requested at the same moment; one of A's syncs by itself: median {:.0} ms",
        median(&by_itself),
        median(&crowded),
        median(&one_large)
    );
}
