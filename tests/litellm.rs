//! Proof with the real LiteLLM from PyPI (venvs under target/, see testenv::litellm_venv):
//! the library prices a model added upstream today with the map from the operator's endpoint
//! and from the agent; a real proxy (no database) reports our git blob id, is Stale after a
//! new map until restarted, then Current; its admin key shows up in no log, Event or status;
//! and the library prices with our overrides over upstream's prices.

mod common;

use costmap_operator::api::Reason;

use std::process::Command;
use std::time::Instant;

use common::agent::Agent;
use common::kubelet::ConfigMapVolume;
use common::process::OperatorProcess;
use common::real_proxy::{RealProxy, create_master_key_secret, venv};
use common::*;
use costmap_operator::api::{ConsumerState, DEFAULT_KEY, ModelCostMapSync};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::json;

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
    let dir = tempfile::tempdir().unwrap();
    let mut volume = ConfigMapVolume::new(dir.path());
    volume.mount(&s.config_map().await);
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
    create_master_key_secret(&client, &ns, &master_key).await;
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
    proxy.list_as_consumer(&client, &ns, "litellm").await;
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

/// The callback module is typed, and `mypy --strict` holds it to that against the LiteLLM of
/// each proxy version it supports (a LiteLLM whose loader changes signature shows up here).
#[test]
fn the_callback_module_is_mypy_strict_clean_against_each_proxy() {
    let mypy = venv(testenv::MYPY_VENV).join("bin").join("mypy");
    let module = common::real_proxy::module_dir().join("costmap_reload.py");
    for proxy in [
        testenv::LITELLM_PROXY_VENV,
        testenv::LITELLM_OLDER_PROXY_VENV,
    ] {
        let python = venv(proxy).join("bin").join("python");
        let cache = tempfile::tempdir().unwrap();
        let out = Command::new(&mypy)
            .arg("--strict")
            .arg("--python-executable")
            .arg(&python)
            .arg("--cache-dir")
            .arg(cache.path())
            .arg(&module)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mypy --strict against {}:\n{}{}",
            proxy.1,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
