//! Every proxy priced, with the real LiteLLM proxy (`litellm[proxy]` from PyPI, no database):
//! our callback module `integrations/litellm/costmap_reload.py` loads each new map into a
//! running proxy without a restart, on 1.108.0 and on 1.106.12, from the operator's endpoint
//! and from the in-pod agent; the operator sees the proxy's day-0 deployment unpriced
//! (ModelsPriced=False, the metric is 1) and then priced, and the proxy's own cost path
//! bills the new price. The same new map moves gpt-4o's price (routed: listed in
//! repricedModels, the metric and the MapUpdated Event), gpt-4o-mini's (routed by no
//! proxy: absent) and the price a deployment sets in its own model_info (absent). On a
//! LiteLLM it does not know, the module says so once and does nothing.

mod common;

use std::process::Command;
use std::time::Instant;

use common::agent::Agent;
use common::kubelet::ConfigMapVolume;
use common::process::OperatorProcess;
use common::real_proxy::{
    ProxyOptions, RealProxy, create_master_key_secret, module_config, module_dir, venv,
};
use common::*;
use costmap_operator::api::{
    ConditionType, ConsumerState, CostChange, DEFAULT_KEY, ModelCostMapSync, Reason, RepricedModel,
};
use costmap_operator::layout::MAP_URL_KEY;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

/// The module's poll period in these tests.
const POLL_SECONDS: &str = "2";
/// gpt-4o's input price in the real map, and in the next map of these tests.
const GPT_4O_INPUT: (f64, f64) = (2.5e-6, 3e-6);
/// A deployment of gpt-4o at a negotiated input price, set in its own model_info.
const NEGOTIATED: &str = "  - model_name: gpt-4o-negotiated\n    \
    litellm_params: {model: openai/gpt-4o, api_key: sk-fake, mock_response: hi}\n    \
    model_info: {input_cost_per_token: 2.0e-06}\n";

/// Where the proxy fetches the map from.
#[derive(Clone, Copy, Debug)]
enum MapVia {
    /// The operator's endpoint.
    Operator,
    /// The in-pod agent, serving the ConfigMap mounted the kubelet's way.
    Agent,
}

#[tokio::test]
async fn the_module_loads_each_new_map_into_litellm_1_108_without_a_restart() {
    end_to_end(testenv::LITELLM_PROXY_VENV, MapVia::Operator).await;
}

#[tokio::test]
async fn the_module_loads_each_new_map_into_litellm_1_106_without_a_restart() {
    end_to_end(testenv::LITELLM_OLDER_PROXY_VENV, MapVia::Operator).await;
}

#[tokio::test]
async fn the_module_loads_each_new_map_from_the_agent_without_a_restart() {
    end_to_end(testenv::LITELLM_PROXY_VENV, MapVia::Agent).await;
}

#[test]
fn the_module_says_once_and_does_nothing_on_a_litellm_it_does_not_know() {
    // The library venv has litellm without the proxy's extras: its proxy cannot be imported,
    // so the module does not know how to swap a map in.
    let (stdout, stderr) = run_module(
        testenv::LITELLM_LIB_VENV,
        "import sys; sys.path.insert(0, sys.argv[1]); import costmap_reload; print(costmap_reload.handler)",
        &[
            ("LITELLM_LOCAL_MODEL_COST_MAP", "true"),
            ("LITELLM_MODEL_COST_MAP_URL", "http://127.0.0.1:9/map.json"),
        ],
    );
    assert_eq!(stdout.trim(), "costmap_reload(inactive)", "{stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("costmap_reload"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].contains("does nothing: litellm 1.110.2 is not a version this module knows"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_failing_map_url_is_logged_once_and_the_loaded_map_kept() {
    // The proxy loads from a plain source (no operator): the module's own behaviour.
    let real = real_map("1.110.2");
    let source = Source::start(Answer::Map(real.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = RealProxy::start_with(
        &source.url,
        "sk-failing",
        dir.path(),
        ProxyOptions {
            config: Some(module_config(dir.path(), true)),
            env: vec![("COSTMAP_POLL_SECONDS".into(), "1".into())],
            ..ProxyOptions::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let loaded = costmap_operator::digest::git_blob_id(&real);
    let reported = proxy.source(&http).await.unwrap();
    assert_eq!(reported["source_revision"], loaded.as_str());

    // The source fails for several polls: one line, the map kept, the proxy up.
    source.set(Answer::Status(
        reqwest::StatusCode::INTERNAL_SERVER_ERROR,
        Default::default(),
    ));
    let before = source.received();
    eventually("three failed polls", || async {
        (source.received() >= before + 3).then_some(())
    })
    .await;
    let reported = proxy.source(&http).await.expect("the proxy still answers");
    assert_eq!(reported["source_revision"], loaded.as_str());
    let failures = |log: &str| {
        log.lines()
            .filter(|l| l.contains("costmap_reload WARNING poll failed"))
            .count()
    };
    assert_eq!(failures(&proxy.log_text()), 1, "{}", proxy.log_text());
    assert!(
        proxy.log_text().contains("answered HTTP 500"),
        "{}",
        proxy.log_text()
    );

    // It answers again, with a new map: loaded, and the recovery said once.
    let next = with_model(&real, DAY0_MODEL, day0_entry());
    source.set(Answer::Map(next.clone()));
    let next_revision = costmap_operator::digest::git_blob_id(&next);
    eventually("the new map loaded", || async {
        let reported = proxy.source(&http).await?;
        (reported["source_revision"] == next_revision.as_str()).then_some(())
    })
    .await;
    // The proxy's source endpoint can run on a worker thread and see the new map between
    // the swap and the module's log line: wait for the line, then count.
    let loaded_lines = |log: &str| log.matches("costmap_reload INFO loaded map").count();
    eventually("the loaded line", || async {
        (loaded_lines(&proxy.log_text()) >= 1).then_some(())
    })
    .await;
    let log = proxy.log_text();
    assert_eq!(failures(&log), 1, "{log}");
    assert_eq!(loaded_lines(&log), 1, "{log}");
}

#[test]
fn a_password_or_token_in_the_map_url_never_reaches_the_log() {
    // Polls a URL with credentials that nothing answers, until the failure is logged.
    let script = r#"
import asyncio, logging, sys
sys.path.insert(0, sys.argv[1])
async def main():
    import costmap_reload
    failed = asyncio.Event()
    class Watch(logging.Handler):
        def emit(self, record):
            if "poll failed" in record.getMessage():
                failed.set()
    logging.getLogger("costmap_reload").addHandler(Watch())
    print(costmap_reload.handler)
    await asyncio.wait_for(failed.wait(), 60)
asyncio.run(main())
"#;
    let (stdout, stderr) = run_module(
        testenv::LITELLM_PROXY_VENV,
        script,
        &[
            ("LITELLM_LOCAL_MODEL_COST_MAP", "false"),
            (
                "LITELLM_MODEL_COST_MAP_URL",
                "http://mirror-user:s3cret-pw@127.0.0.1:9/map.json?token=0123abcd",
            ),
            ("COSTMAP_POLL_SECONDS", "1"),
        ],
    );
    assert_eq!(stdout.trim(), "costmap_reload(poll=1s)", "{stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("costmap_reload"))
        .collect();
    assert!(
        ours.iter()
            .any(|l| l.contains("polling http://127.0.0.1:9/map.json?redacted every 1s")),
        "{stderr}"
    );
    assert!(ours.iter().any(|l| l.contains("poll failed")), "{stderr}");
    assert!(
        !ours.iter().any(|l| l.contains("s3cret-pw")
            || l.contains("mirror-user")
            || l.contains("0123abcd")),
        "{stderr}"
    );
}

#[test]
fn a_bad_poll_period_is_refused_at_start_up() {
    for (value, words) in [
        ("soon", "'soon' is not a number of seconds"),
        ("0.1", "'0.1' is under 1"),
    ] {
        let (stdout, stderr) = run_module(
            testenv::LITELLM_PROXY_VENV,
            "import asyncio, sys; sys.path.insert(0, sys.argv[1])\nasync def main():\n    import costmap_reload\n    print(costmap_reload.handler)\nasyncio.run(main())",
            &[
                ("LITELLM_LOCAL_MODEL_COST_MAP", "false"),
                ("LITELLM_MODEL_COST_MAP_URL", "http://127.0.0.1:9/map.json"),
                ("COSTMAP_POLL_SECONDS", value),
            ],
        );
        assert_eq!(stdout.trim(), "costmap_reload(inactive)", "{stderr}");
        assert!(stderr.contains(words), "{value}: {stderr}");
    }
}

/// Runs `script` with the Python of `venv`, the module's folder as its first argument and
/// `env` set; returns stdout and stderr, after checking that it exited well.
fn run_module(venv_of: (&str, &str), script: &str, env: &[(&str, &str)]) -> (String, String) {
    let python = venv(venv_of).join("bin").join("python");
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(module_dir())
        .envs(env.iter().copied())
        .env("NO_PROXY", "*")
        .output()
        .expect("running python");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

async fn metric(operator: &OperatorProcess, ns: &str) -> Option<String> {
    series(operator, "costmap_unpriced_deployments", ns).await
}

async fn series(operator: &OperatorProcess, name: &str, ns: &str) -> Option<String> {
    let (_, text) = operator.get("/metrics").await?;
    let prefix = format!("{name}{{namespace=\"{ns}\",name=\"litellm\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
}

fn priced_condition(sync: &ModelCostMapSync) -> Option<(String, String, String)> {
    let condition = sync
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::ModelsPriced.as_str())?;
    Some((
        condition.status.clone(),
        condition.reason.clone(),
        condition.message.clone(),
    ))
}

/// The cost the proxy bills for one mock completion of `model`, from its own cost path
/// (the `x-litellm-response-cost` header; LiteLLM leaves it out when it cannot price the
/// model), and the usage it billed.
async fn billed(proxy: &RealProxy, model: &str) -> (Option<f64>, u64, u64) {
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", proxy.url))
        .bearer_auth(&proxy.master_key)
        .header("content-type", "application/json")
        .body(
            json!({"model": model, "messages": [{"role": "user", "content": "hello"}]}).to_string(),
        )
        .send()
        .await
        .expect("a completion");
    assert!(response.status().is_success(), "{}", response.status());
    let cost: Option<f64> = response
        .headers()
        .get("x-litellm-response-cost")
        .map(|cost| cost.to_str().unwrap().parse().unwrap());
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let usage = &body["usage"];
    (
        cost,
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    )
}

async fn end_to_end(litellm: (&'static str, &'static str), via: MapVia) {
    let client = client().await;
    let ns = namespace(&client, "module").await;
    let master_key = format!("sk-module-{}", std::process::id());
    create_master_key_secret(&client, &ns, &master_key).await;
    let real = real_map("1.110.2");
    let source = Source::start(Answer::Map(real.clone())).await;
    // As the chart runs it: maps need a credential, the proxy uses the target's map-url.
    let port = testenv::free_port().unwrap();
    let base_url = format!("http://127.0.0.1:{port}");
    let mut operator = OperatorProcess::start_on(
        &control_plane().kubeconfig,
        &ns,
        "operator-0",
        &[
            "--namespace",
            &ns,
            "--map-access",
            "token",
            "--map-base-url",
            &base_url,
            "--map-key-secret",
            "costmap-map-key",
        ],
        "debug",
        port,
    );
    create_litellm_sync(&client, &ns, &source.url).await;
    let sync = wait_ready(&client, &ns, "litellm", "True", Reason::Synced).await;
    let first = sync.status.unwrap().artifact.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let volume_dir = dir.path().join("volume");
    std::fs::create_dir_all(&volume_dir).unwrap();
    let mut volume = ConfigMapVolume::new(&volume_dir);
    let (map_url, _agent) = match via {
        MapVia::Operator => {
            let target = config_maps(&client, &ns).get("litellm").await.unwrap();
            let map_url = target.data.unwrap()[MAP_URL_KEY].clone();
            assert!(
                map_url.starts_with(&format!(
                    "{base_url}/maps/{ns}/litellm/{DEFAULT_KEY}?token="
                )),
                "{map_url}"
            );
            (map_url, None)
        }
        MapVia::Agent => {
            volume.mount(&config_maps(&client, &ns).get("litellm").await.unwrap());
            let agent = Agent::start(&volume_dir, "", "http://127.0.0.1:9/reload/model_cost_map");
            eventually("the agent serves the map", || agent.map()).await;
            (agent.map_url(), Some(agent))
        }
    };
    let proxy = RealProxy::start_with(
        &map_url,
        &master_key,
        dir.path(),
        ProxyOptions {
            venv: litellm,
            config: Some(with_negotiated(module_config(dir.path(), true))),
            env: vec![("COSTMAP_POLL_SECONDS".into(), POLL_SECONDS.into())],
        },
    )
    .await;
    let http = reqwest::Client::new();
    let reported = proxy.source(&http).await.unwrap();
    assert_eq!(
        reported["source_revision"],
        first.git_blob_id.as_str(),
        "{reported}"
    );
    assert!(
        proxy
            .log_text()
            .contains(&format!("polling {} every 2s", shown(&map_url))),
        "the module says it polls: {}",
        proxy.log_text()
    );

    // Listed as a consumer: Current, and its day-0 deployment is unpriced.
    proxy.list_as_consumer(&client, &ns, "litellm").await;
    let explain = || format!("the operator's log:\n{}", operator.log_text());
    let sync = eventually_explained(
        "the day-0 deployment reported unpriced",
        DEADLINE,
        explain,
        || async {
            let sync = syncs(&client, &ns).get("litellm").await.ok()?;
            let row = sync.status.as_ref()?.consumers.first()?.clone();
            (row.state == ConsumerState::Current && row.unpriced_models.is_some()).then_some(sync)
        },
    )
    .await;
    let row = &sync.status.as_ref().unwrap().consumers[0];
    assert_eq!(
        row.unpriced_models.as_deref(),
        Some(&["day0-model".to_owned()][..])
    );
    assert_eq!(row.repriced_models, None, "a first sync changed no price");
    let (status, reason, message) = priced_condition(&sync).unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Unpriced"),
        "{message}"
    );
    assert!(message.ends_with(": day0-model"), "{message}");
    eventually("the metric says 1", || async {
        (metric(&operator, &ns).await? == "1").then_some(())
    })
    .await;
    let (cost, ..) = billed(&proxy, "day0-model").await;
    assert!(
        cost.unwrap_or_default() == 0.0,
        "before the launch the proxy bills $0: {cost:?}"
    );

    // Upstream prices the model; the new map reaches the running proxy through the module.
    // It also moves the price of a model the proxy routes, and of one no proxy routes.
    let next = with_model(&real, DAY0_MODEL, day0_entry());
    let next = repriced(&next, "gpt-4o", "input_cost_per_token", GPT_4O_INPUT.1);
    let next = repriced(&next, "gpt-4o-mini", "output_cost_per_token", 7e-7);
    source.set(Answer::Map(next));
    request_sync(&client, &ns, "litellm", "day0-priced").await;
    let sync = eventually("the new map published", || async {
        let sync = syncs(&client, &ns).get("litellm").await.ok()?;
        let artifact = sync.status.as_ref()?.artifact.as_ref()?;
        (artifact.digest != first.digest).then_some(sync)
    })
    .await;
    let second = sync.status.unwrap().artifact.unwrap();
    let published = Instant::now();
    if let MapVia::Agent = via {
        // The kubelet's swap of the mounted ConfigMap.
        volume.mount(&config_maps(&client, &ns).get("litellm").await.unwrap());
    }
    eventually("the proxy reports the new map", || async {
        let reported = proxy.source(&http).await?;
        (reported["source_revision"] == second.git_blob_id.as_str()).then_some(())
    })
    .await;
    eprintln!(
        "{via:?}, {}: new map published -> the proxy reports it: {:.2} s (poll {POLL_SECONDS} s)",
        litellm.1,
        published.elapsed().as_secs_f64()
    );

    // The operator sees it Current without a restart, and priced.
    let sync = eventually("the proxy Current and priced", || async {
        let sync = syncs(&client, &ns).get("litellm").await.ok()?;
        let row = sync.status.as_ref()?.consumers.first()?.clone();
        let current = row.state == ConsumerState::Current
            && row.source_revision.as_deref() == Some(second.git_blob_id.as_str());
        (current && row.unpriced_models.as_deref() == Some(&[][..])).then_some(sync)
    })
    .await;
    let (status, reason, _) = priced_condition(&sync).unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "AllPriced"));
    eventually("the metric says 0", || async {
        (metric(&operator, &ns).await? == "0").then_some(())
    })
    .await;
    // gpt-4o is repriced, with both prices; not gpt-4o-mini (no proxy routes it), nor the
    // deployment whose own model_info sets the price that moved.
    let row = &sync.status.as_ref().unwrap().consumers[0];
    assert_eq!(
        row.repriced_models.as_deref(),
        Some(
            &[RepricedModel {
                model_name: "gpt-4o".into(),
                key: "gpt-4o".into(),
                changes: vec![CostChange {
                    field: "input_cost_per_token".into(),
                    from: GPT_4O_INPUT.0,
                    to: Some(GPT_4O_INPUT.1),
                }],
            }][..]
        ),
    );
    eventually("the repriced metric says 1", || async {
        (series(&operator, "costmap_repriced_deployments", &ns).await? == "1").then_some(())
    })
    .await;
    let (cost, prompt, completion) = billed(&proxy, "day0-model").await;
    let cost = cost.expect("the proxy prices the model now");
    let expected = prompt as f64 * DAY0_INPUT + completion as f64 * DAY0_OUTPUT;
    assert!(
        (cost - expected).abs() <= expected * 1e-9,
        "billed {cost}, the new price says {expected}"
    );

    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let notes: Vec<(String, String)> = events
        .items
        .iter()
        .map(|e| {
            (
                e.reason.clone().unwrap_or_default(),
                e.note.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        notes.iter().any(|(reason, note)| reason == "ModelsUnpriced"
            && note.ends_with("billed at $0): day0-model")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|(reason, note)| reason == "ModelPriced"
            && note.contains("day0-model is now priced: 1.25e-6 / 1e-5")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|(reason, note)| reason == "MapUpdated"
            && note.contains(
                "models; the proxies route 1 repriced deployments: \
                 gpt-4o input_cost_per_token 2.5e-06 -> 3e-06 (x1.2); 1 added"
            )),
        "{notes:?}"
    );
    // The reload call found no database, and the operator told that the module reloads.
    assert!(
        operator
            .log_text()
            .contains("its costmap_reload callback polls the map every 2s"),
        "{}",
        operator.log_text()
    );
    let loaded: Vec<String> = proxy
        .log_text()
        .lines()
        .filter(|line| line.contains("costmap_reload INFO loaded map"))
        .map(str::to_owned)
        .collect();
    assert_eq!(loaded.len(), 1, "one line per new map: {loaded:?}");
    assert!(loaded[0].contains(&second.git_blob_id), "{loaded:?}");
    operator.kill();
}

/// The config at `path` with the [`NEGOTIATED`] deployment added to its model list.
fn with_negotiated(path: std::path::PathBuf) -> std::path::PathBuf {
    let config = std::fs::read_to_string(&path).unwrap();
    let (models, rest) = config.split_once("litellm_settings:").unwrap();
    std::fs::write(
        &path,
        format!("{models}{NEGOTIATED}litellm_settings:{rest}"),
    )
    .unwrap();
    path
}

/// `map` with one price of `model` set to `price`.
fn repriced(map: &[u8], model: &str, field: &str, price: f64) -> bytes::Bytes {
    let mut parsed: serde_json::Value = serde_json::from_slice(map).unwrap();
    parsed[model][field] = json!(price);
    bytes::Bytes::from(serde_json::to_vec_pretty(&parsed).unwrap())
}

/// `url` as the module logs it: the query, which may carry map-url's token, redacted.
fn shown(url: &str) -> String {
    match url.split_once('?') {
        Some((path, _)) => format!("{path}?redacted"),
        None => url.to_owned(),
    }
}
