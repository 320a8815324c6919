//! Requests under load while a real LiteLLM proxy reloads its map: a client keeps
//! [`IN_FLIGHT`] mock completions in flight (streaming and not, several deployments), and each
//! cost the proxy gives is checked against the prices of every map it may have had loaded.
//!
//! The deployments of [`config`]: `gpt-4o` and `mini` (mapped models whose prices the maps
//! change), `day0-model` (priced only by the maps published during the load), `own-price`
//! (gpt-4o with its own `model_info` prices), `params-price` (gpt-4o-mini with
//! `litellm_params` prices) and `custom` (a model in no map, priced in `litellm_params`).
//! The three last ones must be billed at their configured prices whatever the map.
//!
//! The proxy also loads `tests/litellm/spend_probe.py`, which writes what the success hook
//! received (the spend the proxy logs) and how long its event loop stalled before each swap.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{Value, json};

use super::real_proxy::RealProxy;
use super::{DAY0_MODEL, eventually_within};

/// Requests the client keeps in flight.
pub const IN_FLIGHT: usize = 16;

/// (input, output) cost per token.
pub type Price = (f64, f64);

/// The prices set in config.yaml, which no map may change.
pub const OWN_PRICE: Price = (7.0e-6, 9.0e-6);
pub const PARAMS_PRICE: Price = (3.0e-6, 4.0e-6);
pub const CUSTOM_PRICE: Price = (5.0e-6, 6.0e-6);
/// The model of `custom`, in no map.
pub const CUSTOM_MODEL: &str = "costmap-custom-model";

/// The deployments, by model_name, in the order the client cycles through them.
pub const DEPLOYMENTS: [&str; 6] = [
    "gpt-4o",
    "mini",
    "day0-model",
    "own-price",
    "params-price",
    "custom",
];

/// The folder of the test-only callbacks.
pub fn helpers_dir() -> PathBuf {
    testenv::workspace_root().join("tests/litellm")
}

/// Writes config.yaml into `dir` with the deployments above, the spend probe, `before` (other
/// test-only callbacks, listed before the module) and the module `module` (a costmap_reload.py).
pub fn config(dir: &Path, module: &Path, before: &[&str]) -> PathBuf {
    let (own, params, custom) = (OWN_PRICE, PARAMS_PRICE, CUSTOM_PRICE);
    let mut callbacks = vec!["spend_probe".to_owned()];
    for name in before {
        std::fs::copy(
            helpers_dir().join(format!("{name}.py")),
            dir.join(format!("{name}.py")),
        )
        .unwrap();
        callbacks.push((*name).to_owned());
    }
    callbacks.push("costmap_reload".to_owned());
    std::fs::copy(
        helpers_dir().join("spend_probe.py"),
        dir.join("spend_probe.py"),
    )
    .unwrap();
    std::fs::copy(module, dir.join("costmap_reload.py")).unwrap();
    let callbacks: Vec<String> = callbacks
        .iter()
        .map(|c| format!("\"{c}.handler\""))
        .collect();
    let mock = "mock_response: \"hello there, my priced friend\", api_key: sk-fake";
    let config = format!(
        "model_list:\n\
         \x20 - model_name: gpt-4o\n\
         \x20   litellm_params: {{model: openai/gpt-4o, {mock}}}\n\
         \x20 - model_name: mini\n\
         \x20   litellm_params: {{model: openai/gpt-4o-mini, {mock}}}\n\
         \x20 - model_name: day0-model\n\
         \x20   litellm_params: {{model: openai/{DAY0_MODEL}, {mock}}}\n\
         \x20 - model_name: own-price\n\
         \x20   litellm_params: {{model: openai/gpt-4o, {mock}}}\n\
         \x20   model_info: {{input_cost_per_token: {:e}, output_cost_per_token: {:e}}}\n\
         \x20 - model_name: params-price\n\
         \x20   litellm_params: {{model: openai/gpt-4o-mini, {mock}, input_cost_per_token: {:e}, output_cost_per_token: {:e}}}\n\
         \x20 - model_name: custom\n\
         \x20   litellm_params: {{model: openai/{CUSTOM_MODEL}, {mock}, input_cost_per_token: {:e}, output_cost_per_token: {:e}}}\n\
         litellm_settings:\n  callbacks: [{}]\n",
        own.0,
        own.1,
        params.0,
        params.1,
        custom.0,
        custom.1,
        callbacks.join(", ")
    );
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    dir.join("config.yaml")
}

/// A map and what each deployment costs under it (None: unpriced).
#[derive(Clone, Debug)]
pub struct PricedMap {
    pub name: &'static str,
    pub bytes: Bytes,
    pub prices: BTreeMap<&'static str, Option<Price>>,
}

impl PricedMap {
    fn new(name: &'static str, map: Value) -> PricedMap {
        let price = |key: &str| {
            let entry = map.get(key)?;
            Some((
                entry["input_cost_per_token"].as_f64()?,
                entry["output_cost_per_token"].as_f64()?,
            ))
        };
        let prices = BTreeMap::from([
            ("gpt-4o", price("gpt-4o")),
            ("mini", price("gpt-4o-mini")),
            ("day0-model", price(DAY0_MODEL)),
            ("own-price", Some(OWN_PRICE)),
            ("params-price", Some(PARAMS_PRICE)),
            ("custom", Some(CUSTOM_PRICE)),
        ]);
        PricedMap {
            name,
            bytes: Bytes::from(serde_json::to_vec(&map).unwrap()),
            prices,
        }
    }
}

/// The map the proxy starts with (`real`: no day-0 model) and the two maps published in turn
/// during the load: the day-0 model priced, gpt-4o and gpt-4o-mini repriced, each price by a
/// different factor so that no mix of two maps' prices equals one map's.
pub fn maps(real: &[u8]) -> (PricedMap, [PricedMap; 2]) {
    let first: Value = serde_json::from_slice(real).unwrap();
    let variant = |factor: f64| {
        let mut map = first.clone();
        for model in ["gpt-4o", "gpt-4o-mini"] {
            let entry = &mut map[model];
            let input = entry["input_cost_per_token"].as_f64().unwrap();
            let output = entry["output_cost_per_token"].as_f64().unwrap();
            entry["input_cost_per_token"] = json!(input * factor);
            entry["output_cost_per_token"] = json!(output * (factor + 1.0));
        }
        let mut day0 = super::day0_entry();
        day0["input_cost_per_token"] = json!(super::DAY0_INPUT * factor);
        day0["output_cost_per_token"] = json!(super::DAY0_OUTPUT * (factor + 1.0));
        map[DAY0_MODEL] = day0;
        map
    };
    (
        PricedMap::new("first", first.clone()),
        [
            PricedMap::new("A", variant(1.5)),
            PricedMap::new("B", variant(2.0)),
        ],
    )
}

/// One response as the client saw it.
#[derive(Clone, Debug)]
struct Seen {
    model: &'static str,
    stream: bool,
    call_id: String,
    sent: Instant,
    received: Instant,
    /// `x-litellm-response-cost` (non-streaming) or the final chunk's `usage.cost` (streaming).
    cost: Option<f64>,
    tokens: (u64, u64),
}

/// What a run under load found.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub requests: usize,
    pub streams: usize,
    pub failed: usize,
    pub maps_published: usize,
    /// Swaps the probe saw (`litellm.model_cost` replaced).
    pub swaps: usize,
    /// Responses by the map whose prices they carry ("same in every map" for fixed prices).
    pub per_map: BTreeMap<String, usize>,
    /// Day-0 requests sent before any response showed a map that prices it: unpriced, rightly.
    pub day0_before_its_map: usize,
    /// Each mispriced request, said in words.
    pub mispriced: Vec<String>,
    /// The longest event-loop stall in the 0.5 s before each swap, seconds.
    pub pauses: Vec<f64>,
    /// The longest stall of each 0.5 s window with a swap, and of those without one.
    pub swap_windows: Vec<f64>,
    pub quiet_windows: Vec<f64>,
    /// Streams whose final chunk and booked spend carry different maps' prices: a swap came
    /// between LiteLLM's two computations (each is one map's price).
    pub straddled: usize,
    /// Request latencies, seconds.
    pub latencies: Vec<f64>,
}

/// Runs the load for `duration` against `proxy` (whose probe writes `probe_file`), calling
/// `publish(n)` about every second meanwhile (it publishes a new map and returns when it is
/// served); then reads what the proxy booked and checks every cost against `maps`.
pub async fn run<F, Fut>(
    proxy: &RealProxy,
    probe_file: &Path,
    maps: &[PricedMap],
    duration: Duration,
    mut publish: F,
) -> LoadReport
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .unwrap();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|worker| {
            let (stop, http) = (stop.clone(), http.clone());
            let (url, key) = (proxy.url.clone(), proxy.master_key.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut failed = 0;
                let mut n = worker;
                while !stop.load(Ordering::Relaxed) {
                    let model = DEPLOYMENTS[n % DEPLOYMENTS.len()];
                    let stream = (n / DEPLOYMENTS.len()) % 2 == 1;
                    match complete(&http, &url, &key, model, stream).await {
                        Some(s) => seen.push(s),
                        None => failed += 1,
                    }
                    n += IN_FLIGHT;
                }
                (seen, failed)
            })
        })
        .collect();
    let start = Instant::now();
    let mut published = 0;
    while start.elapsed() < duration {
        let tick = Instant::now();
        publish(published).await;
        published += 1;
        tokio::time::sleep_until((tick + Duration::from_secs(1)).into()).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    let mut report = LoadReport {
        maps_published: published,
        ..LoadReport::default()
    };
    for worker in workers {
        let (s, failed) = worker.await.unwrap();
        seen.extend(s);
        report.failed += failed;
    }
    // The success hook runs after the response: wait until it has booked every request.
    let ids: BTreeSet<String> = seen.iter().map(|s| s.call_id.clone()).collect();
    let booked = eventually_within(
        "the success hook booked every request",
        Duration::from_secs(60),
        || async {
            let booked = read_probe(probe_file);
            let spent = booked.spend.keys().filter(|id| ids.contains(*id)).count();
            (spent == ids.len()).then_some(booked)
        },
    )
    .await;
    report.swaps = booked.pauses.len();
    report.pauses = booked.pauses.clone();
    for &(stall, swap) in &booked.windows {
        if swap {
            report.swap_windows.push(stall);
        } else {
            report.quiet_windows.push(stall);
        }
    }
    check(&mut report, &seen, &booked, maps);
    report
}

/// One completion; None when it failed.
async fn complete(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    model: &'static str,
    stream: bool,
) -> Option<Seen> {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hello"}]});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let sent = Instant::now();
    let response = http
        .post(format!("{url}/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let call_id = header("x-litellm-call-id")?;
    let header_cost = header("x-litellm-response-cost").and_then(|c| c.parse().ok());
    let text = response.text().await.ok()?;
    let received = Instant::now();
    let usage = if stream {
        text.lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .find_map(|chunk| chunk.get("usage").filter(|u| u.is_object()).cloned())?
    } else {
        serde_json::from_str::<Value>(&text).ok()?["usage"].clone()
    };
    Some(Seen {
        model,
        stream,
        call_id,
        sent,
        received,
        cost: if stream {
            usage["cost"].as_f64()
        } else {
            header_cost
        },
        tokens: (
            usage["prompt_tokens"].as_u64()?,
            usage["completion_tokens"].as_u64()?,
        ),
    })
}

/// What the probe wrote.
#[derive(Default)]
struct Booked {
    /// call id -> (cost, prompt tokens, completion tokens).
    spend: BTreeMap<String, (Option<f64>, u64, u64)>,
    pauses: Vec<f64>,
    windows: Vec<(f64, bool)>,
}

fn read_probe(path: &Path) -> Booked {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut booked = Booked::default();
    for record in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        match record["kind"].as_str() {
            Some("spend") => {
                let tokens = |k: &str| record[k].as_u64().unwrap_or_default();
                booked.spend.insert(
                    record["call_id"].as_str().unwrap_or_default().to_owned(),
                    (
                        record["cost"].as_f64(),
                        tokens("prompt"),
                        tokens("completion"),
                    ),
                );
            }
            Some("swap") => booked
                .pauses
                .push(record["stall"].as_f64().unwrap_or_default()),
            Some("window") => booked.windows.push((
                record["stall"].as_f64().unwrap_or_default(),
                record["swap"].as_bool().unwrap_or_default(),
            )),
            _ => {}
        }
    }
    booked
}

/// The maps whose price for `model` gives `cost` for `tokens`; empty when none does. A cost
/// of 0 or none matches the maps under which the model is unpriced.
fn matching(maps: &[PricedMap], model: &str, tokens: (u64, u64), cost: Option<f64>) -> Vec<usize> {
    let cost = cost.unwrap_or_default();
    (0..maps.len())
        .filter(|&i| match maps[i].prices[model] {
            None => cost == 0.0,
            Some((input, output)) => {
                let expected = tokens.0 as f64 * input + tokens.1 as f64 * output;
                expected > 0.0 && (cost - expected).abs() <= expected * 1e-9
            }
        })
        .collect()
}

fn check(report: &mut LoadReport, seen: &[Seen], booked: &Booked, maps: &[PricedMap]) {
    report.requests = seen.len();
    report.streams = seen.iter().filter(|s| s.stream).count();
    report.latencies = seen
        .iter()
        .map(|s| (s.received - s.sent).as_secs_f64())
        .collect();
    let day0_priced_by = |i: usize| maps[i].prices["day0-model"].is_some();
    // The first response carrying the prices of a map that prices the day-0 model: it is loaded.
    let day0_loaded = seen
        .iter()
        .filter(|s| {
            let found = matching(maps, s.model, s.tokens, s.cost);
            !found.is_empty() && found.iter().all(|&i| day0_priced_by(i))
        })
        .map(|s| s.received)
        .min();
    for s in seen {
        let (hook_cost, prompt, completion) = booked.spend[&s.call_id];
        let what = |cost: Option<f64>, tokens: (u64, u64), by: &str| {
            format!(
                "{} ({}): {by} says {cost:?} for {tokens:?} tokens",
                s.model,
                if s.stream { "stream" } else { "not streamed" },
            )
        };
        let mut sets = Vec::new();
        for (cost, tokens, by) in [
            (s.cost, s.tokens, "the response"),
            (hook_cost, (prompt, completion), "the spend hook"),
        ] {
            let found = matching(maps, s.model, tokens, cost);
            if found.is_empty() {
                let why = "no one map's price";
                report
                    .mispriced
                    .push(format!("{}: {why}", what(cost, tokens, by)));
            } else if s.model == "day0-model"
                && found.iter().all(|&i| !day0_priced_by(i))
                && day0_loaded.is_some_and(|loaded| s.sent > loaded)
            {
                let why = "unpriced after its map was loaded";
                report
                    .mispriced
                    .push(format!("{}: {why}", what(cost, tokens, by)));
            } else {
                sets.push(found);
            }
        }
        let [said, booked] = &sets[..] else { continue };
        if !said.iter().any(|i| booked.contains(i)) {
            report.straddled += 1;
        }
        if s.model == "day0-model" && booked.iter().all(|&i| !day0_priced_by(i)) {
            report.day0_before_its_map += 1;
            continue;
        }
        let key = if booked.len() == 1 {
            maps[booked[0]].name.to_owned()
        } else if booked.len() == maps.len() {
            "same in every map".to_owned()
        } else {
            booked
                .iter()
                .map(|&i| maps[i].name)
                .collect::<Vec<_>>()
                .join("|")
        };
        *report.per_map.entry(key).or_default() += 1;
    }
}

impl LoadReport {
    /// The figures, in one paragraph.
    pub fn summary(&self) -> String {
        let quantile = |v: &[f64], q: usize| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v.get(v.len() * q / 100).copied().unwrap_or(f64::NAN)
        };
        let median = |v: &[f64]| quantile(v, 50);
        format!(
            "{} requests ({} streamed, {} failed), {} maps published, {} swaps seen, {} mispriced; \
             per map (by the spend booked) {:?}; day-0 requests before its map {}; streams whose \
             chunk and spend straddle a swap {}; reload pause (longest loop stall in the 0.5 s \
             before a swap) median {:.3} s, max {:.3} s; longest stall per 0.5 s window: with a \
             swap median {:.3} s, without {:.3} s; latency median {:.3} s, p99 {:.3} s",
            self.requests,
            self.streams,
            self.failed,
            self.maps_published,
            self.swaps,
            self.mispriced.len(),
            self.per_map,
            self.day0_before_its_map,
            self.straddled,
            median(&self.pauses),
            self.pauses.iter().copied().fold(0.0, f64::max),
            median(&self.swap_windows),
            median(&self.quiet_windows),
            median(&self.latencies),
            quantile(&self.latencies, 99),
        )
    }
}

/// Makes the source answer `map`, asks the operator for a sync of `namespace/litellm` and
/// waits until it publishes that map.
pub async fn publish(
    client: &kube::Client,
    namespace: &str,
    source: &super::Source,
    map: &PricedMap,
    token: &str,
) {
    source.set(super::Answer::Map(map.bytes.clone()));
    super::request_sync(client, namespace, "litellm", token).await;
    let blob = costmap_operator::digest::git_blob_id(&map.bytes);
    super::eventually("the operator publishes the map", || async {
        let sync = super::syncs(client, namespace).get("litellm").await.ok()?;
        let artifact = sync.status?.artifact?;
        (artifact.git_blob_id == blob).then_some(())
    })
    .await;
}

/// The answers with status `code` the operator's map endpoint has given so far.
pub async fn endpoint_answers(operator: &super::process::OperatorProcess, code: u16) -> u64 {
    let Some((_, text)) = operator.get("/metrics").await else {
        return 0;
    };
    let code = format!("code=\"{code}\"");
    text.lines()
        .filter(|line| line.starts_with("costmap_map_requests_total{") && line.contains(&code))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}
