//! Reloads under load with the real LiteLLM proxy (litellm[proxy] 1.108.0 by default, no
//! database, the costmap_reload module polling every second): a client keeps 16 mock
//! completions in flight (streaming and not, six deployments, one day-0) for a minute while
//! the release operator publishes a new map about every second, alternating two maps of
//! different prices. Once with the module reading the operator's endpoint, once reading the
//! in-pod agent's (the kubelet's swap of the mounted ConfigMap done after each publish).
//!
//! Prints, per path: requests, maps published, swaps, mispriced requests (every cost checked:
//! the response's, the spend the success hook got), requests per map, and the reload pause
//! (the event loop's longest stall in the 0.5 s before each swap, and per 0.5 s window with
//! and without a swap). Asserts nothing.
//!
//! `cargo bench --bench reload_under_load` (SECONDS=N, default 60; MODULE=path to measure
//! another costmap_reload.py; LITELLM=1.106 for litellm[proxy] 1.106.12)

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::agent::Agent;
use common::kubelet::ConfigMapVolume;
use common::load;
use common::process::OperatorProcess;
use common::real_proxy::{ProxyOptions, RealProxy, module_dir};
use common::*;
use costmap_operator::api::DEFAULT_KEY;

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let module = std::env::var_os("MODULE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| module_dir().join("costmap_reload.py"));
    let venv = match std::env::var("LITELLM").as_deref() {
        Ok("1.106") => testenv::LITELLM_OLDER_PROXY_VENV,
        _ => testenv::LITELLM_PROXY_VENV,
    };
    let client = client().await;
    let ns = namespace(&client, "bench-under-load").await;
    let (first, alternates) = load::maps(&real_map("1.110.2"));
    let maps = [first.clone(), alternates[0].clone(), alternates[1].clone()];
    let source = Source::start(Answer::Map(first.bytes.clone())).await;
    let operator = OperatorProcess::quiet_with_litellm_sync(&client, &ns, &source.url).await;
    let logs = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    let mut published = 0;

    for via in ["operator", "agent"] {
        // Each path starts from the first map.
        load::publish(&client, &ns, &source, &first, &format!("first-{via}")).await;
        let dir = logs.path().join(via);
        std::fs::create_dir_all(&dir).unwrap();
        let volume_dir = dir.join("volume");
        std::fs::create_dir_all(&volume_dir).unwrap();
        let volume = Mutex::new(ConfigMapVolume::new(&volume_dir));
        let (map_url, _agent) = if via == "agent" {
            let config_map = config_maps(&client, &ns).get("litellm").await.unwrap();
            volume.lock().unwrap().mount(&config_map);
            let agent = Agent::start(&volume_dir, "", "http://127.0.0.1:9/reload/model_cost_map");
            eventually("the agent serves the map", || agent.map()).await;
            (agent.map_url(), Some(agent))
        } else {
            let url = format!("{}/maps/{ns}/litellm/{DEFAULT_KEY}", operator.url);
            (url, None)
        };
        let probe = dir.join("probe.jsonl");
        let proxy = RealProxy::start_with(
            &map_url,
            "sk-bench",
            &dir,
            ProxyOptions {
                venv,
                config: Some(load::config(&dir, &module, &[])),
                env: vec![
                    ("COSTMAP_POLL_SECONDS".into(), "1".into()),
                    ("SPEND_PROBE_FILE".into(), probe.display().to_string()),
                ],
            },
        )
        .await;
        let report = load::run(&proxy, &probe, &maps, Duration::from_secs(seconds), |n| {
            let (client, ns, source, volume) = (&client, &ns, &source, &volume);
            let map = &alternates[n % 2];
            let token = format!("{via}-{}", published + n);
            async move {
                load::publish(client, ns, source, map, &token).await;
                if via == "agent" {
                    let config_map = config_maps(client, ns).get("litellm").await.unwrap();
                    volume.lock().unwrap().mount(&config_map);
                }
            }
        })
        .await;
        published += report.maps_published;
        for wrong in report.mispriced.iter().take(5) {
            eprintln!("  {via}: mispriced: {wrong}");
        }
        lines.push(format!("  via the {via}: {}", report.summary()));
    }

    println!(
        "reloads under load, {}, module {}, {seconds} s per path, 16 in flight, a new map about every second:",
        venv.1,
        module.display()
    );
    for line in lines {
        println!("{line}");
    }
}
