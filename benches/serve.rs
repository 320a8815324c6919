//! Serving figures, release build, all on loopback; prints figures, asserts none:
//! - the operator's map endpoint under load from `wrk` (Debian's wrk; `apt-get install wrk`),
//!   for the real 3.5 MB map with gzip and without: requests per second, p50 and p99;
//! - the agent's RSS, idle and after the same load;
//! - the time from a source change (with a sync request) until the real litellm library
//!   prices the new model from the operator's endpoint.
//!
//! `cargo bench --bench serve`

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/figures.rs"]
mod figures;

use std::process::Command;
use std::time::Instant;

use common::agent::Agent;
use common::kubelet::ConfigMapVolume;
use common::process::OperatorProcess;
use common::*;
use figures::{max, median, min, rss_kib};
use serde_json::json;

const RUNS: usize = 3;
const SECONDS_PER_RUN: u32 = 10;

#[tokio::main]
async fn main() {
    let wrk = which("wrk").expect("wrk is needed for this bench: apt-get install wrk");
    let client = client().await;
    let ns = namespace(&client, "bench-serve").await;
    let real = real_map("1.110.2");
    let source = Source::start(Answer::Map(real.clone())).await;

    let operator = OperatorProcess::quiet_with_litellm_sync(&client, &ns, &source.url).await;
    let url = format!(
        "{}/maps/{ns}/litellm/model_prices_and_context_window.json",
        operator.url
    );
    eventually("the endpoint serves the map", || async {
        reqwest::get(&url)
            .await
            .ok()?
            .error_for_status()
            .ok()
            .map(|_| ())
    })
    .await;

    println!(
        "map endpoint, real 3.5 MB map (litellm 1.110.2), wrk -t1 -c16, {RUNS} runs of {SECONDS_PER_RUN} s:"
    );
    for (what, headers) in [
        ("gzip (176 KB per response)", vec!["Accept-Encoding: gzip"]),
        ("plain (3.5 MB per response)", vec![]),
    ] {
        let runs: Vec<Load> = (0..RUNS).map(|_| load(&wrk, &url, &headers)).collect();
        report(what, &runs);
    }
    println!(
        "  operator RSS after the load: {} KiB (peak {} KiB)",
        rss_kib(operator.pid(), "VmRSS"),
        rss_kib(operator.pid(), "VmHWM")
    );

    // The agent on the ConfigMap, mounted the kubelet's way.
    let config_map = config_maps(&client, &ns).get("litellm").await.unwrap();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (key, value) in config_map.binary_data.unwrap_or_default() {
        files.push((key, value.0));
    }
    let dir = tempfile::tempdir().unwrap();
    ConfigMapVolume::new(dir.path()).write(
        &files
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect::<Vec<_>>(),
    );
    let agent = Agent::start(dir.path(), "", "http://127.0.0.1:9/reload/model_cost_map");
    eventually("the agent serves the map", || agent.map()).await;
    let agent_pid = agent.pid();
    let idle = rss_kib(agent_pid, "VmRSS");
    let agent_runs: Vec<Load> = (0..RUNS)
        .map(|_| load(&wrk, &agent.map_url(), &["Accept-Encoding: gzip"]))
        .collect();
    println!("agent, same map:");
    report("gzip", &agent_runs);
    let plain = load(&wrk, &agent.map_url(), &[]);
    report(
        "plain (one run; the plain map is decompressed once, then kept)",
        &[plain],
    );
    println!(
        "  agent RSS: {idle} KiB idle with the map loaded, {} KiB after the load, peak {} KiB",
        rss_kib(agent_pid, "VmRSS"),
        rss_kib(agent_pid, "VmHWM")
    );

    // Day 0: upstream adds a model; how long until the real litellm prices it.
    let python = testenv::litellm_venv(testenv::LITELLM_LIB_VENV.0, testenv::LITELLM_LIB_VENV.1)
        .expect("the litellm venv")
        .join("bin/python");
    let script = testenv::workspace_root().join("tests/litellm/price.py");
    let mut day0 = Vec::new();
    let mut import_only = Vec::new();
    for run in 0..RUNS {
        let model = format!("gpt-costmap-bench-{run}");
        let entry = json!({"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6});
        let started = Instant::now();
        source.set(Answer::Map(with_model(&real, &model, entry)));
        request_sync(&client, &ns, "litellm", &model).await;
        wait_handled(&client, &ns, "litellm", &model).await;
        let synced = started.elapsed().as_secs_f64();
        let priced = Command::new(&python)
            .arg(&script)
            .arg(&model)
            .env("LITELLM_MODEL_COST_MAP_URL", &url)
            .output()
            .expect("python");
        assert!(
            priced.status.success(),
            "{}",
            String::from_utf8_lossy(&priced.stdout)
        );
        let total = started.elapsed().as_secs_f64();
        day0.push(total);
        import_only.push(total - synced);
    }
    println!(
        "day 0, source change + sync request -> the real litellm library prices the new model ({RUNS} runs):"
    );
    println!(
        "  median {:.2} s (min {:.2}, max {:.2}); of which python + import litellm + fetch: median {:.2} s",
        median(&day0),
        min(&day0),
        max(&day0),
        median(&import_only)
    );
    drop(operator);
}

/// One wrk run.
struct Load {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn load(wrk: &str, url: &str, headers: &[&str]) -> Load {
    let mut cmd = Command::new(wrk);
    cmd.args(["-t1", "-c16", &format!("-d{SECONDS_PER_RUN}s"), "--latency"]);
    for header in headers {
        cmd.args(["-H", header]);
    }
    let output = cmd.arg(url).output().expect("running wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed:\n{text}");
    assert!(!text.contains("Non-2xx"), "errors under load:\n{text}");
    let field = |prefix: &str| -> &str {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk's output:\n{text}"))
            .trim()
    };
    Load {
        requests_per_second: field("Requests/sec:").parse().unwrap(),
        p50_ms: millis(field("50%")),
        p99_ms: millis(field("99%")),
    }
}

/// wrk's "1.23ms", "456.00us" or "1.20s" in milliseconds.
fn millis(text: &str) -> f64 {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        panic!("unexpected wrk latency {text:?}")
    };
    number.parse::<f64>().unwrap() * scale
}

fn report(what: &str, runs: &[Load]) {
    let rps: Vec<f64> = runs.iter().map(|r| r.requests_per_second).collect();
    let p50: Vec<f64> = runs.iter().map(|r| r.p50_ms).collect();
    let p99: Vec<f64> = runs.iter().map(|r| r.p99_ms).collect();
    println!(
        "  {what}: median {:.0} req/s (min {:.0}, max {:.0}), p50 {:.2} ms, p99 {:.2} ms",
        median(&rps),
        min(&rps),
        max(&rps),
        median(&p50),
        median(&p99)
    );
}

fn which(program: &str) -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()?;
    found
        .status
        .success()
        .then(|| String::from_utf8_lossy(&found.stdout).trim().to_owned())
}
