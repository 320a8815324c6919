//! The costmap_reload callback in a real LiteLLM proxy (litellm[proxy] 1.108.0, no database)
//! fed by the release operator's endpoint on loopback: the time from a new map served by the
//! endpoint to the proxy reporting it (`/model/cost_map/source`), at a poll period of 10 s and
//! of 2 s, and the module's CPU cost per 304 poll (the proxy's CPU time over a quiet minute,
//! polling every second, minus that of the same proxy without the module, per poll the
//! endpoint answered). Prints figures; asserts none.
//!
//! New maps are published at phases spread evenly over the poll period, so the median
//! includes the wait for the next poll as a user sees it (about half a period on average).
//!
//! `cargo bench --bench reload_module` (RUNS=N, default 5)

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/figures.rs"]
mod figures;

use std::time::{Duration, Instant};

use common::process::OperatorProcess;
use common::real_proxy::{ProxyOptions, RealProxy, module_config};
use common::*;
use costmap_operator::api::DEFAULT_KEY;
use figures::{max, median, min};

/// How long the CPU cost is measured.
const QUIET: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let client = client().await;
    let ns = namespace(&client, "bench-module").await;
    let real = real_map("1.110.2");
    let source = Source::start(Answer::Map(real.clone())).await;
    let operator = OperatorProcess::quiet_with_litellm_sync(&client, &ns, &source.url).await;
    let path = format!("/maps/{ns}/litellm/{DEFAULT_KEY}");
    let map_url = format!("{}{path}", operator.url);
    let logs = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();

    let mut new_maps = 0;
    let mut reach = Vec::new();
    for poll in ["10", "2"] {
        let dir = logs.path().join(format!("poll-{poll}"));
        std::fs::create_dir_all(&dir).unwrap();
        let proxy = start_proxy(&map_url, &dir, Some(poll)).await;
        let period = Duration::from_secs(poll.parse().unwrap());
        let mut times = Vec::new();
        for run in 0..runs {
            // Each run starts just after the proxy's poll saw the last map: publish the next
            // one at a phase spread evenly over the period, as new maps come at any time.
            tokio::time::sleep(period.mul_f64(run as f64 / runs as f64)).await;
            new_maps += 1;
            let map = with_model(&real, &format!("bench-model-{new_maps}"), day0_entry());
            let digest = costmap_operator::digest::sha256_digest(&map);
            let blob = costmap_operator::digest::git_blob_id(&map);
            source.set(Answer::Map(map));
            request_sync(&client, &ns, "litellm", &format!("map-{new_maps}")).await;
            eventually("the endpoint serves the new map", || async {
                let response = http
                    .get(&map_url)
                    .header("if-none-match", format!("\"{digest}\""))
                    .send()
                    .await
                    .ok()?;
                (response.status() == reqwest::StatusCode::NOT_MODIFIED).then_some(())
            })
            .await;
            let served = Instant::now();
            eventually("the proxy reports the new map", || async {
                let reported = proxy.source(&http).await?;
                (reported["source_revision"] == blob.as_str()).then_some(())
            })
            .await;
            times.push(served.elapsed().as_secs_f64());
        }
        reach.push((poll, times));
    }

    // CPU: the same proxy with the module polling every second, and without it.
    let polling = start_proxy(&map_url, &logs.path().join("cpu-module"), Some("1")).await;
    let plain = start_proxy(&map_url, &logs.path().join("cpu-plain"), None).await;
    let requests_before = not_modified(&operator).await;
    let (polling_before, plain_before) = (cpu_seconds(&polling), cpu_seconds(&plain));
    tokio::time::sleep(QUIET).await;
    let polls = not_modified(&operator).await - requests_before;
    let polling_cpu = cpu_seconds(&polling) - polling_before;
    let plain_cpu = cpu_seconds(&plain) - plain_before;

    println!("costmap_reload in litellm[proxy] 1.108.0 (no database), release operator, loopback:");
    for (poll, times) in &reach {
        println!(
            "  poll {poll:>2} s: new map served -> the proxy reports it: median {:.2} s (min {:.2}, max {:.2}, {} runs)",
            median(times),
            min(times),
            max(times),
            times.len()
        );
    }
    println!(
        "  CPU over {} s: polling every 1 s {polling_cpu:.2} s, without the module {plain_cpu:.2} s; \
         {polls} polls answered 304: {:.2} ms of CPU per poll",
        QUIET.as_secs(),
        (polling_cpu - plain_cpu) * 1000.0 / polls.max(1) as f64
    );
}

async fn start_proxy(map_url: &str, dir: &std::path::Path, poll: Option<&str>) -> RealProxy {
    std::fs::create_dir_all(dir).unwrap();
    let mut env = Vec::new();
    if let Some(poll) = poll {
        env.push(("COSTMAP_POLL_SECONDS".to_owned(), poll.to_owned()));
    }
    RealProxy::start_with(
        map_url,
        "sk-bench",
        dir,
        ProxyOptions {
            config: Some(module_config(dir, poll.is_some())),
            env,
            ..ProxyOptions::default()
        },
    )
    .await
}

/// User + system CPU seconds of the proxy process (and the children it waited for).
fn cpu_seconds(proxy: &RealProxy) -> f64 {
    let pid = proxy.pid().expect("a running proxy");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    // utime, stime, cutime, cstime: fields 14-17 of stat, 11-14 counted from the state;
    // in clock ticks, 100 a second on Linux.
    let ticks: f64 = fields[11..15]
        .iter()
        .map(|f| f.parse::<f64>().unwrap())
        .sum();
    ticks / 100.0
}

/// The endpoint's 304 answers so far.
async fn not_modified(operator: &OperatorProcess) -> u64 {
    let (_, text) = operator.get("/metrics").await.expect("metrics");
    text.lines()
        .filter(|line| {
            line.starts_with("costmap_map_requests_total{") && line.contains("code=\"304\"")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}
