//! Proof with the real LiteLLM from PyPI (venvs under target/, see testenv::litellm_venv):
//! the library prices a model added upstream today with the map from the operator's endpoint
//! and from the agent; a real proxy (no database) reports our git blob id, is Stale after a
//! new map until restarted, then Current; its admin key shows up in no log, Event or status;
//! and the library prices with our overrides over upstream's prices.

mod common;

use costmap_operator::api::Reason;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::Agent;
use common::kubelet::ConfigMapVolume;
use common::process::OperatorProcess;
use common::*;
use costmap_operator::api::{ConsumerState, DEFAULT_KEY, ModelCostMapSync};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use testenv::TiedChild;

/// A model "launched today": not in any released map.
const DAY0_MODEL: &str = "gpt-costmap-day0-2026-11-25";
/// How long a real proxy may take to start (about 7 s here).
const PROXY_START: Duration = Duration::from_secs(120);

fn day0_entry() -> serde_json::Value {
    json!({
        "litellm_provider": "openai",
        "mode": "chat",
        "max_input_tokens": 400000,
        "max_output_tokens": 128000,
        "input_cost_per_token": 1.25e-6,
        "output_cost_per_token": 1e-5,
    })
}

fn venv(which: (&str, &str)) -> PathBuf {
    testenv::litellm_venv(which.0, which.1)
        .unwrap_or_else(|err| panic!("the real {} is needed: {err:#}", which.1))
}

/// What `tests/litellm/price.py` prints: the price of 1000 prompt and 1000 completion tokens
/// of `model`, with the map the library loaded from `map_url`.
async fn price_with_litellm(map_url: &str, model: &str) -> serde_json::Value {
    let python = venv(testenv::LITELLM_LIB_VENV).join("bin").join("python");
    let script = testenv::workspace_root().join("tests/litellm/price.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg(model)
        .env("LITELLM_MODEL_COST_MAP_URL", map_url)
        // Never the bundled copy by accident, never the network.
        .env_remove("LITELLM_LOCAL_MODEL_COST_MAP")
        .env("NO_PROXY", "*");
    // Importing litellm takes seconds of CPU: off the runtime that runs the operator.
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "price.py printed no JSON ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn assert_day0_price(priced: &serde_json::Value, git_blob_id: &str) {
    assert_eq!(
        priced["source"]["source"], "remote",
        "loaded from our URL: {priced}"
    );
    assert_eq!(priced["source"]["source_revision"], git_blob_id, "{priced}");
    let prompt = priced["prompt"]
        .as_f64()
        .unwrap_or_else(|| panic!("{priced}"));
    let completion = priced["completion"].as_f64().unwrap();
    assert!((prompt - 1000.0 * 1.25e-6).abs() < 1e-12, "{priced}");
    assert!((completion - 1000.0 * 1e-5).abs() < 1e-12, "{priced}");
}

#[tokio::test]
async fn the_litellm_library_prices_a_day0_model_from_the_operator_and_from_the_agent() {
    let real = real_map("1.110.2");
    let s = Scenario::new("library", Answer::Map(real.clone()), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;
    let map_url = s.map_url();

    // Before the launch the model has no price.
    let before = price_with_litellm(&map_url, DAY0_MODEL).await;
    assert!(before["error"].is_string(), "{before}");

    // Upstream adds the model; a sync request brings it to the library.
    let started = Instant::now();
    s.source
        .set(Answer::Map(with_model(&real, DAY0_MODEL, day0_entry())));
    let sync = s.sync_now("day0").await;
    let artifact = sync.status.unwrap().artifact.unwrap();
    eventually("the endpoint serves the new map", || async {
        let served = reqwest::get(&map_url)
            .await
            .ok()?
            .headers()
            .get("etag")?
            .clone();
        (served == format!("\"{}\"", artifact.digest).as_str()).then_some(())
    })
    .await;
    let priced = price_with_litellm(&map_url, DAY0_MODEL).await;
    eprintln!(
        "source change -> sync request -> the real litellm library prices the day-0 model: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_day0_price(&priced, &artifact.git_blob_id);

    // The same map through the agent, from the ConfigMap mounted the kubelet's way.
    let config_map = s.config_map().await;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (key, value) in config_map.binary_data.unwrap_or_default() {
        files.push((key, value.0));
    }
    for (key, value) in config_map.data.unwrap_or_default() {
        files.push((key, value.into_bytes()));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut volume = ConfigMapVolume::new(dir.path());
    volume.write(
        &files
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect::<Vec<_>>(),
    );
    let agent = Agent::start(dir.path(), "", "http://127.0.0.1:9/reload/model_cost_map");
    eventually("the agent serves the map", || agent.map()).await;
    let priced = price_with_litellm(&agent.map_url(), DAY0_MODEL).await;
    assert_day0_price(&priced, &artifact.git_blob_id);
    s.operator.stop().await;
}

#[tokio::test]
async fn the_litellm_library_prices_with_our_overrides_over_upstream() {
    let real = real_map("1.110.2");
    let upstream: serde_json::Value = serde_json::from_slice(&real).unwrap();
    let list_price = upstream["gpt-4o"]["input_cost_per_token"].as_f64().unwrap();
    let negotiated = list_price * 0.8;
    let spec = json!({"overrides": {"models": {
        "gpt-4o": {"input_cost_per_token": negotiated},
        DAY0_MODEL: day0_entry(),
    }}});
    let s = Scenario::new("library-overrides", Answer::Map(real), spec).await;
    let status = s.wait_ready("True", Reason::Synced).await.status.unwrap();
    let artifact = status.artifact.unwrap();
    assert_eq!(status.overrides.unwrap().added_models, [DAY0_MODEL]);

    let priced = price_with_litellm(&s.map_url(), "gpt-4o").await;
    assert_eq!(
        priced["source"]["source_revision"], artifact.git_blob_id,
        "{priced}"
    );
    let prompt = priced["prompt"]
        .as_f64()
        .unwrap_or_else(|| panic!("{priced}"));
    assert!(
        (prompt - 1000.0 * negotiated).abs() < 1e-12,
        "{priced} (list {list_price})"
    );
    let completion = priced["completion"].as_f64().unwrap();
    let list_completion = upstream["gpt-4o"]["output_cost_per_token"]
        .as_f64()
        .unwrap();
    assert!(
        (completion - 1000.0 * list_completion).abs() < 1e-12,
        "upstream's: {priced}"
    );
    assert_day0_price(
        &price_with_litellm(&s.map_url(), DAY0_MODEL).await,
        &artifact.git_blob_id,
    );
    s.operator.stop().await;
}

/// A real `litellm` proxy process (litellm[proxy], no database) on loopback.
struct RealProxy {
    url: String,
    port: u16,
    map_url: String,
    master_key: String,
    log: PathBuf,
    process: Option<TiedChild>,
}

impl RealProxy {
    async fn start(map_url: &str, master_key: &str, log_dir: &Path) -> RealProxy {
        let port = testenv::free_port().unwrap();
        let mut proxy = RealProxy {
            url: format!("http://127.0.0.1:{port}"),
            port,
            map_url: map_url.to_owned(),
            master_key: master_key.to_owned(),
            log: log_dir.join("litellm-proxy.log"),
            process: None,
        };
        proxy.restart().await;
        proxy
    }

    /// (Re)starts the process and waits until it answers GET /model/cost_map/source.
    async fn restart(&mut self) {
        if let Some(mut old) = self.process.take() {
            old.kill();
        }
        let litellm = venv(testenv::LITELLM_PROXY_VENV)
            .join("bin")
            .join("litellm");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(litellm);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .env("LITELLM_MODEL_COST_MAP_URL", &self.map_url)
            .env("LITELLM_MASTER_KEY", &self.master_key)
            .env_remove("DATABASE_URL")
            .env("NO_PROXY", "*")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        self.process = Some(testenv::spawn_tied(cmd).expect("starting litellm"));
        let http = reqwest::Client::new();
        let log = self.log.clone();
        let explain = move || {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("its log:\n{log}")
        };
        let this = &*self;
        eventually_explained("litellm to answer", PROXY_START, explain, || async {
            this.source(&http).await
        })
        .await;
    }

    async fn source(&self, http: &reqwest::Client) -> Option<serde_json::Value> {
        let response = http
            .get(format!("{}/model/cost_map/source", self.url))
            .bearer_auth(&self.master_key)
            .send()
            .await
            .ok()?;
        let body = response.error_for_status().ok()?.bytes().await.ok()?;
        serde_json::from_slice(&body).ok()
    }
}

async fn consumer_state(client: &Client, ns: &str, state: ConsumerState) -> ModelCostMapSync {
    eventually(&format!("the proxy {state:?}"), || async {
        let sync = syncs(client, ns).get("litellm").await.ok()?;
        let row = sync.status.as_ref()?.consumers.first()?.clone();
        (row.state == state).then_some(sync)
    })
    .await
}

#[tokio::test]
async fn a_real_litellm_proxy_reports_our_map_and_is_stale_after_a_new_one_until_restarted() {
    let client = client().await;
    let ns = namespace(&client, "realproxy").await;
    let master_key = format!("sk-real-proxy-{}", std::process::id());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "litellm-master-key"},
        "stringData": {"masterKey": master_key},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let real = real_map("1.110.2");
    let source = Source::start(Answer::Map(real.clone())).await;

    // The operator as users run it, with its log kept to look for the key.
    let operator = OperatorProcess::start(
        &control_plane().kubeconfig,
        &ns,
        "operator-0",
        &["--namespace", &ns],
    );
    let logs = tempfile::tempdir().unwrap();
    create_litellm_sync(&client, &ns, &source.url).await;
    let sync = wait_ready(&client, &ns, "litellm", "True", Reason::Synced).await;
    let first = sync.status.unwrap().artifact.unwrap();
    let map_url = format!("{}/maps/{ns}/litellm/{DEFAULT_KEY}", operator.url);
    let mut proxy = RealProxy::start(&map_url, &master_key, logs.path()).await;
    let reported = proxy.source(&reqwest::Client::new()).await.unwrap();
    assert_eq!(reported["source"], "remote", "{reported}");
    assert_eq!(reported["source_revision"], first.git_blob_id.as_str());

    // Listed as a consumer, it is verified Current.
    let patch = json!({"spec": {"consumers": {"litellmProxies": [
        {"url": proxy.url, "adminKeySecretRef": {"name": "litellm-master-key", "key": "masterKey"}},
    ]}}});
    syncs(&client, &ns)
        .patch("litellm", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let sync = consumer_state(&client, &ns, ConsumerState::Current).await;
    let row = &sync.status.as_ref().unwrap().consumers[0];
    assert_eq!(
        row.source_revision.as_deref(),
        Some(first.git_blob_id.as_str())
    );
    assert!(row.models.unwrap() > 4000, "{row:?}");

    // A new map: this proxy has no database, so its reload answers 500 and it stays on the
    // old map, reported Stale with what to do.
    source.set(Answer::Map(with_model(&real, DAY0_MODEL, day0_entry())));
    request_sync(&client, &ns, "litellm", "new-map").await;
    let sync = consumer_state(&client, &ns, ConsumerState::Stale).await;
    let status = sync.status.as_ref().unwrap();
    let second = status.artifact.as_ref().unwrap();
    assert_ne!(second.git_blob_id, first.git_blob_id);
    let row = &status.consumers[0];
    assert_eq!(
        row.source_revision.as_deref(),
        Some(first.git_blob_id.as_str())
    );
    let message = row.message.as_deref().unwrap();
    assert!(
        message.contains("Database connection not available")
            && message.contains("restartWorkloads"),
        "{message}"
    );

    // Restarted, it loads the new map; a sync request re-verifies.
    proxy.restart().await;
    request_sync(&client, &ns, "litellm", "after-restart").await;
    let sync = consumer_state(&client, &ns, ConsumerState::Current).await;
    let row = &sync.status.as_ref().unwrap().consumers[0];
    assert_eq!(
        row.source_revision.as_deref(),
        Some(second.git_blob_id.as_str())
    );

    // The admin key is in no log line, Event, status field or error message.
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let places = [
        ("the operator's log", operator.log_text()),
        ("the Events", serde_json::to_string(&events.items).unwrap()),
        (
            "the ModelCostMapSync",
            serde_json::to_string(&sync).unwrap(),
        ),
    ];
    for (place, text) in places {
        assert!(!text.is_empty(), "{place} is empty");
        assert!(
            !text.contains(&master_key),
            "the admin key leaked into {place}"
        );
    }
    assert!(
        operator.log_text().contains("asked the proxy to reload"),
        "the operator's log covers the reload"
    );
}
