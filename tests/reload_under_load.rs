//! Priced right at every moment, with the real LiteLLM proxy (`litellm[proxy]` from PyPI, no
//! database, the `costmap_reload` module polling every second): while the operator publishes
//! a new map about every second, a client keeps 16 completions in flight (streaming and not)
//! and every cost the proxy gives (the `x-litellm-response-cost` header, a stream's final
//! `usage.cost`, the spend its success hook receives) is the price of one map for that model,
//! never 0, never a mix; the day-0 model is priced from the first request after its map is
//! loaded; the deployments' own prices are kept. And those deployment prices (`model_info`,
//! `litellm_params`, a model in no map) survive each reload on both supported versions.
//!
//! By hand, the load test must fail on a proxy whose swap is not atomic: with
//! `LOAD_NONATOMIC_SWAP=0.2` the proxy also loads `tests/litellm/nonatomic_swap.py`, which
//! re-applies the deployments' prices 0.2 s after it assigns the new map. With
//! `LOAD_NONATOMIC_SWAP=never` (prices never re-applied, as a LiteLLM that loses them) the
//! deployment-price tests must fail. `LOAD_MODULE=<path>` runs another costmap_reload.py (the
//! previous one, which fetched each new map twice, fails the fetch count).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::load::{self, PricedMap};
use common::process::OperatorProcess;
use common::real_proxy::{ProxyOptions, RealProxy};
use common::*;
use costmap_operator::api::DEFAULT_KEY;
use serde_json::json;

/// How long the client keeps requests in flight (CI runs it: modest).
const LOAD: Duration = Duration::from_secs(25);

/// The module as shipped, or, by hand, the one `LOAD_MODULE` names (an older one, to compare).
fn module() -> PathBuf {
    std::env::var_os("LOAD_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| real_proxy::module_dir().join("costmap_reload.py"))
}

/// The test-only callbacks to load before the module: `nonatomic_swap` when asked by hand.
fn breakage() -> (Vec<&'static str>, Vec<(String, String)>) {
    match std::env::var("LOAD_NONATOMIC_SWAP") {
        Ok(seconds) => (
            vec!["nonatomic_swap"],
            vec![("NONATOMIC_SWAP_SECONDS".to_owned(), seconds)],
        ),
        Err(_) => (Vec::new(), Vec::new()),
    }
}

/// A proxy of `venv` loading its map from `map_url`, with the load config; returns it and
/// the file its spend probe writes.
async fn start_proxy(
    venv: (&'static str, &'static str),
    map_url: &str,
    dir: &std::path::Path,
) -> (RealProxy, PathBuf) {
    let (before, mut env) = breakage();
    let probe = dir.join("probe.jsonl");
    env.push(("COSTMAP_POLL_SECONDS".into(), "1".into()));
    env.push(("SPEND_PROBE_FILE".into(), probe.display().to_string()));
    let proxy = RealProxy::start_with(
        map_url,
        &format!("sk-load-{}", std::process::id()),
        dir,
        ProxyOptions {
            venv,
            config: Some(load::config(dir, &module(), &before)),
            env,
        },
    )
    .await;
    (proxy, probe)
}

#[tokio::test]
async fn every_request_is_priced_by_one_map_while_maps_change_every_second() {
    let client = client().await;
    let ns = namespace(&client, "under-load").await;
    let (first, alternates) = load::maps(&real_map("1.110.2"));
    let source = Source::start(Answer::Map(first.bytes.clone())).await;
    let mut operator = OperatorProcess::quiet_with_litellm_sync(&client, &ns, &source.url).await;
    let map_url = format!("{}/maps/{ns}/litellm/{DEFAULT_KEY}", operator.url);
    let dir = tempfile::tempdir().unwrap();
    let (proxy, probe) = start_proxy(testenv::LITELLM_PROXY_VENV, &map_url, dir.path()).await;
    let fetched_before = load::endpoint_answers(&operator, 200).await;

    let maps = [first, alternates[0].clone(), alternates[1].clone()];
    let report = load::run(&proxy, &probe, &maps, LOAD, |n| {
        let (client, ns, source) = (&client, &ns, &source);
        let map = &alternates[n % 2];
        async move { load::publish(client, ns, source, map, &format!("load-{n}")).await }
    })
    .await;
    eprintln!(
        "litellm 1.108.0, the module from the operator: {}",
        report.summary()
    );
    operator.assert_alive();

    let log = proxy.log_text();
    assert!(
        report.mispriced.is_empty(),
        "{} mispriced, the first: {:#?}\n{}",
        report.mispriced.len(),
        &report.mispriced[..report.mispriced.len().min(10)],
        report.summary()
    );
    assert_eq!(report.failed, 0, "{}\n{log}", report.summary());
    // Load enough to mean something: both maps served, reloads under way, streams too.
    for name in ["A", "B", "same in every map"] {
        assert!(
            report.per_map.get(name).copied().unwrap_or_default() >= 20,
            "{name}: {}",
            report.summary()
        );
    }
    assert!(report.swaps >= 5, "{}\n{log}", report.summary());
    assert!(
        report.streams * 3 >= report.requests,
        "{}",
        report.summary()
    );
    // One fetch per new map: once the proxy has the last map published (nothing changes
    // after), each map the endpoint sent whole (a 200) was loaded, once.
    let last = &alternates[(report.maps_published - 1) % 2];
    let blob = costmap_operator::digest::git_blob_id(&last.bytes);
    let http = reqwest::Client::new();
    // Its "loaded map" line, not only its source info: LiteLLM's loader records the new
    // revision as it finalizes the map, a moment before the module swaps it in and logs it
    // (a fresh-clone CI run read the log in between: 17 maps fetched whole, 16 loaded).
    eventually("the proxy loads the last map published", || async {
        let reported = proxy.source(&http).await?;
        let log = proxy.log_text();
        let last_loaded = log
            .lines()
            .rfind(|line| line.contains("costmap_reload INFO loaded map"))?;
        (reported["source_revision"] == blob.as_str()
            && last_loaded.contains(&format!("loaded map {blob} ")))
        .then_some(())
    })
    .await;
    let log = proxy.log_text();
    let loaded = log.matches("costmap_reload INFO loaded map").count() as u64;
    let fetched = load::endpoint_answers(&operator, 200).await - fetched_before;
    assert_eq!(fetched, loaded, "maps fetched whole, maps loaded: {log}");
}

/// Each reload keeps the deployments' own prices, and prices the mapped models anew.
async fn deployment_prices_survive_reloads(venv: (&'static str, &'static str)) {
    let (first, alternates) = load::maps(&real_map("1.110.2"));
    let source = Source::start(Answer::Map(first.bytes.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _) = start_proxy(venv, &source.url, dir.path()).await;
    let http = reqwest::Client::new();
    assert_prices(&proxy, &first).await;
    for (n, map) in [&alternates[0], &alternates[1], &alternates[0]]
        .into_iter()
        .enumerate()
    {
        source.set(Answer::Map(map.bytes.clone()));
        let blob = costmap_operator::digest::git_blob_id(&map.bytes);
        eventually(&format!("reload {n} by the module"), || async {
            let reported = proxy.source(&http).await?;
            (reported["source_revision"] == blob.as_str()).then_some(())
        })
        .await;
        assert_prices(&proxy, map).await;
        // LiteLLM's own reload endpoint needs a database: without one it answers 500 and
        // leaves the map, and the prices, as they are.
        let response = http
            .post(format!("{}/reload/model_cost_map", proxy.url))
            .bearer_auth(&proxy.master_key)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, reqwest::StatusCode::INTERNAL_SERVER_ERROR, "{text}");
        assert!(text.contains("Database connection not available"), "{text}");
        assert_prices(&proxy, map).await;
    }
}

/// Bills one completion of each deployment and compares it with `map`'s prices.
async fn assert_prices(proxy: &RealProxy, map: &PricedMap) {
    let http = reqwest::Client::new();
    for model in load::DEPLOYMENTS {
        let response = http
            .post(format!("{}/chat/completions", proxy.url))
            .bearer_auth(&proxy.master_key)
            .header("content-type", "application/json")
            .body(
                json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{model}: {}",
            response.status()
        );
        let cost: Option<f64> = response
            .headers()
            .get("x-litellm-response-cost")
            .map(|c| c.to_str().unwrap().parse().unwrap());
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        let tokens = (
            body["usage"]["prompt_tokens"].as_f64().unwrap(),
            body["usage"]["completion_tokens"].as_f64().unwrap(),
        );
        let expected = map.prices[model].map(|(i, o)| tokens.0 * i + tokens.1 * o);
        let close = match (cost, expected) {
            (Some(c), Some(e)) => (c - e).abs() <= e * 1e-9,
            (c, None) => c.unwrap_or_default() == 0.0,
            (None, Some(_)) => false,
        };
        assert!(
            close,
            "{model} under map {}: billed {cost:?}, configured or mapped price says {expected:?}\n{}",
            map.name,
            proxy.log_text()
        );
    }
}

#[tokio::test]
async fn deployment_prices_survive_each_reload_on_litellm_1_108() {
    deployment_prices_survive_reloads(testenv::LITELLM_PROXY_VENV).await;
}

#[tokio::test]
async fn deployment_prices_survive_each_reload_on_litellm_1_106() {
    deployment_prices_survive_reloads(testenv::LITELLM_OLDER_PROXY_VENV).await;
}
