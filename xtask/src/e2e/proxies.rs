//! Real LiteLLM proxy pods getting new maps with no restart: through the `costmap_reload`
//! module (the no-db example), through the agent sidecar on the kubelet's ConfigMap volume
//! (the agent example), and from a ClusterModelCostMapSync in each labelled namespace.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::env::{E2e, Pod, RELEASE_NAMESPACE, median, wait_for};
use super::source::{base_map, digest, with_day0};

/// The examples' namespace, master key and proxy selector.
const NAMESPACE: &str = "llm";
const MASTER_KEY: &str = "sk-change-me";
const PROXIES: &str = "app=litellm";
/// The day-0 deployment's name in the examples' config.yaml.
const DAY0_DEPLOYMENT: &str = "day0-model";
/// New maps per scenario, each repricing the day-0 model: the figures are their median.
const ROUNDS: usize = 3;
/// A LiteLLM pod starts in tens of seconds on 2 busy cores.
const PROXY_START: Duration = Duration::from_secs(300);
const SOURCE: &str = "upstream.json";
const OPERATOR_PODS: &str = "app.kubernetes.io/name=costmap-operator";

/// The day-0 model's prices per token in round `round` (0 is launch day).
fn day0_prices(round: usize) -> (f64, f64) {
    let factor = 1.0 + 0.1 * round as f64;
    (1.25e-6 * factor, 1e-5 * factor)
}

/// `examples/litellm-proxy-no-db.yaml` applied unchanged but for its source: both proxies
/// load the map through the operator's Service by DNS name; each new upstream map (a day-0
/// model, then new prices for it) is priced by every pod in a real request, with the same pods
/// and no restart; status shows both pods Current and ModelsPriced True.
pub fn module_path(e2e: &mut E2e) -> Result<()> {
    e2e.fresh_namespace(NAMESPACE, &[])?;
    let base = base_map()?;
    e2e.source.publish(SOURCE, &base)?;
    // The provider key the example reads from the Secret `openai`, as a user creates it;
    // the requests are mock completions, so no provider is called.
    e2e.kubectl(&[
        "create",
        "secret",
        "generic",
        "openai",
        "-n",
        NAMESPACE,
        "--from-literal=apiKey=sk-e2e",
    ])?;
    let example = mock_provider(&e2e.repo_file("examples/litellm-proxy-no-db.yaml")?)?;
    e2e.apply(&with_source(&example, &e2e.source.url(SOURCE))?)?;
    e2e.wait_ready(
        "modelcostmapsync/litellm",
        Some(NAMESPACE),
        Duration::from_secs(90),
    )?;
    let started = Instant::now();
    let pods = e2e.ready_pods(NAMESPACE, PROXIES, 2, PROXY_START)?;
    e2e.figure(
        "module path: 2 LiteLLM pods Ready after the first sync",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    for pod in &pods {
        let (cost, ..) = complete(e2e, pod, DAY0_DEPLOYMENT)?;
        ensure!(
            cost.is_none_or(|c| c == 0.0),
            "{} priced the day-0 model at {cost:?} before any map had it",
            pod.name
        );
    }
    let delays = new_maps_priced(e2e, &pods, &base)?;
    e2e.figure(
        format!(
            "module path: new upstream map -> every pod prices it (median of {ROUNDS}, poll 10 s)"
        ),
        seconds(delays),
    );
    same_pods_no_restart(e2e, &pods)?;
    wait_for(
        "status: both pods Current, ModelsPriced True",
        Duration::from_secs(120),
        || {
            let object = e2e.get(&["modelcostmapsync/litellm", "-n", NAMESPACE])?;
            let consumers = object["status"]["consumers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let current: Vec<_> = consumers
                .iter()
                .filter(|c| c["state"] == "Current")
                .filter_map(|c| c["pod"].as_str())
                .collect();
            for pod in &pods {
                ensure!(
                    current.contains(&pod.name.as_str()),
                    "consumers: {consumers:?}"
                );
            }
            let (priced, reason, message) =
                e2e.condition("modelcostmapsync/litellm", Some(NAMESPACE), "ModelsPriced")?;
            ensure!(
                priced == "True",
                "ModelsPriced {priced} {reason}: {message}"
            );
            Ok(())
        },
    )?;
    e2e.delete_namespace(NAMESPACE)
}

/// `examples/litellm-agent-sidecar.yaml` unchanged but for its source: the proxies start on
/// the agent's map, and each new map reaches every agent through the kubelet's ConfigMap
/// volume (its `..data` swap); timed from the ConfigMap's write to the agent serving it.
pub fn agent_path(e2e: &mut E2e) -> Result<()> {
    e2e.fresh_namespace(NAMESPACE, &[])?;
    let base = base_map()?;
    e2e.source.publish(SOURCE, &base)?;
    let example = e2e.repo_file("examples/litellm-agent-sidecar.yaml")?;
    e2e.apply(&with_source(&example, &e2e.source.url(SOURCE))?)?;
    let object = "modelcostmapsync/litellm";
    let status = e2e.wait_ready(object, Some(NAMESPACE), Duration::from_secs(90))?;
    let pods = e2e.ready_pods(NAMESPACE, PROXIES, 2, PROXY_START)?;
    let revision = status["status"]["artifact"]["gitBlobId"]
        .as_str()
        .unwrap_or_default();
    for pod in &pods {
        // The example's proxy container has no readiness probe: Ready is not listening yet.
        wait_for("the proxy to answer", PROXY_START, || {
            let loaded = source_revision(e2e, pod)?;
            ensure!(
                loaded == revision,
                "{} started on map {loaded}, not the agent's {revision}",
                pod.name
            );
            Ok(())
        })?;
    }
    let mut delays = Vec::new();
    for round in 1..=ROUNDS {
        let (input, output) = day0_prices(round);
        let map = with_day0(&base, input, output)?;
        let new_digest = digest(&map);
        e2e.source.publish(SOURCE, &map)?;
        e2e.request_sync(object, Some(NAMESPACE))?;
        let mut served = Vec::new();
        wait_for(
            "every agent to serve the new map",
            Duration::from_secs(150),
            || {
                served = pods
                    .iter()
                    .map(|pod| {
                        let log = e2e.kubectl(&[
                            "logs",
                            &pod.name,
                            "-n",
                            NAMESPACE,
                            "-c",
                            "costmap-agent",
                        ])?;
                        logged_at(&log, "serving a new map", &new_digest)
                            .with_context(|| format!("{}'s agent does not serve it yet", pod.name))
                    })
                    .collect::<Result<_>>()?;
                Ok(())
            },
        )?;
        // Both sides' own log times (one clock, the host's): the operator's "map written"
        // follows the ConfigMap write, each agent's "serving a new map" its file check.
        let operators = e2e.kubectl(&[
            "logs",
            "-n",
            RELEASE_NAMESPACE,
            "-l",
            OPERATOR_PODS,
            "--tail=-1",
        ])?;
        let written = logged_at(&operators, "map written", &new_digest)
            .context("no operator logged writing the new map")?;
        let last = served.into_iter().max().context("no pods")?;
        delays.push(
            last.duration_since(written)
                .unwrap_or_default()
                .as_secs_f64(),
        );
    }
    let configz = e2e.kubectl(&["get", "--raw", "/api/v1/nodes/node1/proxy/configz"])?;
    let configz: Value = serde_json::from_str(&configz)?;
    let period = configz["kubeletconfig"]["syncFrequency"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    e2e.figure(
        format!("agent path: ConfigMap written -> every agent serves it (median of {ROUNDS}, kubelet syncFrequency {period})"),
        seconds(delays),
    );
    same_pods_no_restart(e2e, &pods)?;
    e2e.delete_namespace(NAMESPACE)
}

/// `examples/cluster.yaml` unchanged but for its source: two labelled namespaces get the map
/// (with the example's gpt-4o override), a third does not, and a LiteLLM proxy with the
/// module in each labelled namespace prices gpt-4o at the override and a new day-0 model.
pub fn cluster_wide(e2e: &mut E2e) -> Result<()> {
    const TEAMS: [&str; 2] = ["e2e-team-a", "e2e-team-b"];
    const OTHER: &str = "e2e-team-c";
    let object = "clustermodelcostmapsync/litellm-shared";
    let base = base_map()?;
    e2e.source.publish(SOURCE, &base)?;
    let _ = e2e.kubectl(&["delete", object, "--ignore-not-found"]);
    for team in TEAMS {
        e2e.fresh_namespace(team, &["costmap.dev/model-cost-map=enabled"])?;
    }
    e2e.fresh_namespace(OTHER, &[])?;
    let example = e2e.repo_file("examples/cluster.yaml")?;
    let upstream = "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json";
    ensure!(
        example.contains(upstream),
        "examples/cluster.yaml no longer names {upstream}"
    );
    e2e.apply(&example.replace(upstream, &e2e.source.url(SOURCE)))?;
    e2e.wait_ready(object, None, Duration::from_secs(90))?;
    let no_db = mock_provider(&e2e.repo_file("examples/litellm-proxy-no-db.yaml")?)?;
    let config = document(&no_db, "name: litellm-config")?;
    for team in TEAMS {
        e2e.apply(&config.replace("namespace: llm", &format!("namespace: {team}")))?;
        e2e.apply(&proxy_pod(team))?;
    }
    let mut pods = Vec::new();
    for team in TEAMS {
        pods.extend(e2e.ready_pods(team, PROXIES, 1, PROXY_START)?);
    }
    ensure!(
        e2e.kubectl(&[
            "get",
            "configmap",
            "litellm-model-cost-map",
            "-n",
            OTHER,
            "--ignore-not-found",
            "-o",
            "name"
        ])?
        .trim()
        .is_empty(),
        "an unlabelled namespace got the map"
    );
    for (pod, team) in pods.iter().zip(TEAMS) {
        let (cost, prompt, completion) = complete(e2e, pod, "gpt-4o")?;
        let expected = prompt as f64 * 2.25e-6 + completion as f64 * 9.0e-6;
        ensure!(
            cost.is_some_and(|c| close(c, expected)),
            "{team}/{} priced gpt-4o at {cost:?}, not the override's {expected}",
            pod.name
        );
    }
    let (input, output) = day0_prices(0);
    e2e.source
        .publish(SOURCE, &with_day0(&base, input, output)?)?;
    e2e.request_sync(object, None)?;
    let started = Instant::now();
    for (pod, team) in pods.iter().zip(TEAMS) {
        wait_for(
            &format!("{team}'s proxy to price the day-0 model"),
            Duration::from_secs(120),
            || priced_at(e2e, pod, input, output),
        )?;
    }
    e2e.figure(
        "cluster kind: new upstream map -> the proxies of 2 namespaces price it (poll 2 s)",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    e2e.kubectl(&["delete", object, "--wait=true"])?;
    for namespace in TEAMS.iter().chain(&[OTHER]) {
        e2e.delete_namespace(namespace)?;
    }
    Ok(())
}

/// Publishes `ROUNDS` new maps (the day-0 model added, then repriced); after each, asks for a
/// sync and waits until every pod prices the day-0 model at the new price in a real request.
/// Returns each round's time from the publish to the last pod priced.
fn new_maps_priced(e2e: &E2e, pods: &[Pod], base: &[u8]) -> Result<Vec<f64>> {
    let object = "modelcostmapsync/litellm";
    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        let (input, output) = day0_prices(round);
        let map = with_day0(base, input, output)?;
        e2e.source.publish(SOURCE, &map)?;
        let published = Instant::now();
        e2e.request_sync(object, Some(NAMESPACE))?;
        let mut pending: Vec<&Pod> = pods.iter().collect();
        wait_for(
            "every pod to price the new map",
            Duration::from_secs(120),
            || {
                pending.retain(|pod| priced_at(e2e, pod, input, output).is_err());
                ensure!(
                    pending.is_empty(),
                    "{} pods still price the old map",
                    pending.len()
                );
                Ok(())
            },
        )?;
        delays.push(published.elapsed().as_secs_f64());
        // Every pod reports the map the operator published, by its git blob id.
        let status = e2e.get(&[object, "-n", NAMESPACE])?;
        let revision = status["status"]["artifact"]["gitBlobId"]
            .as_str()
            .unwrap_or_default();
        for pod in pods {
            let loaded = source_revision(e2e, pod)?;
            ensure!(
                loaded == revision,
                "{} reports {loaded}, status {revision}",
                pod.name
            );
        }
    }
    Ok(delays)
}

/// Ok when a real request for the day-0 deployment is billed at exactly these prices.
fn priced_at(e2e: &E2e, pod: &Pod, input: f64, output: f64) -> Result<()> {
    let (cost, prompt, completion) = complete(e2e, pod, DAY0_DEPLOYMENT)?;
    let expected = prompt as f64 * input + completion as f64 * output;
    ensure!(
        cost.is_some_and(|c| close(c, expected)),
        "billed {cost:?}, expected {expected}"
    );
    Ok(())
}

/// One completion on the pod (the mock provider answers): the cost the proxy bills
/// (`x-litellm-response-cost`; absent when it cannot price the model) and the usage billed.
fn complete(e2e: &E2e, pod: &Pod, deployment: &str) -> Result<(Option<f64>, u64, u64)> {
    let body = json!({
        "model": deployment,
        "messages": [{"role": "user", "content": "hello"}],
    });
    let mut response = e2e
        .http
        .post(format!("http://{}:4000/chat/completions", pod.ip))
        .header("authorization", format!("Bearer {MASTER_KEY}"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .with_context(|| format!("a completion on {}", pod.name))?;
    let status = response.status();
    let cost = response
        .headers()
        .get("x-litellm-response-cost")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.parse::<f64>().ok());
    let text = response.body_mut().read_to_string()?;
    ensure!(status.is_success(), "{}: HTTP {status}: {text}", pod.name);
    let body: Value = serde_json::from_str(&text)?;
    let usage = &body["usage"];
    Ok((
        cost,
        usage["prompt_tokens"].as_u64().unwrap_or_default(),
        usage["completion_tokens"].as_u64().unwrap_or_default(),
    ))
}

/// The git blob id of the map the proxy says it loaded (`GET /model/cost_map/source`).
fn source_revision(e2e: &E2e, pod: &Pod) -> Result<String> {
    let mut response = e2e
        .http
        .get(format!("http://{}:4000/model/cost_map/source", pod.ip))
        .header("authorization", format!("Bearer {MASTER_KEY}"))
        .call()?;
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string()?)?;
    body["source_revision"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{} reports no source_revision: {body}", pod.name))
}

/// When `log` (lines that start with an RFC 3339 time, as the operator and the agent write
/// them) first said `message` about `digest`.
fn logged_at(log: &str, message: &str, digest: &str) -> Option<SystemTime> {
    log.lines()
        .filter(|line| line.contains(message) && line.contains(digest))
        .find_map(|line| humantime::parse_rfc3339(line.split_whitespace().next()?).ok())
}

/// The pods are the same ones (by UID), and none of their containers restarted.
fn same_pods_no_restart(e2e: &E2e, before: &[Pod]) -> Result<()> {
    let uids = |pods: &[Pod]| -> BTreeMap<String, String> {
        pods.iter()
            .map(|p| (p.name.clone(), p.uid.clone()))
            .collect()
    };
    let now = e2e.pods(NAMESPACE, PROXIES)?;
    ensure!(
        uids(&now) == uids(before),
        "the pods changed: {:?} -> {:?}",
        uids(before),
        uids(&now)
    );
    for pod in &now {
        ensure!(
            pod.restarts == 0,
            "{} restarted {} times",
            pod.name,
            pod.restarts
        );
    }
    Ok(())
}

/// The example with its ModelCostMapSync's source set to `url` (the examples sync from
/// upstream's GitHub, which this machine cannot reach); nothing else changes.
fn with_source(example: &str, url: &str) -> Result<String> {
    let mut found = false;
    let documents: Vec<String> = example
        .split("\n---\n")
        .map(|doc| {
            if doc.contains("\nkind: ModelCostMapSync\n") {
                found = true;
                doc.replacen(
                    "\nspec:\n",
                    &format!("\nspec:\n  source: {{url: \"{url}\"}}\n"),
                    1,
                )
            } else {
                doc.to_owned()
            }
        })
        .collect();
    if !found {
        bail!("the example has no ModelCostMapSync");
    }
    Ok(documents.join("\n---\n"))
}

/// The no-db example with its models answered by LiteLLM's mock provider (`mock_response` in
/// each deployment's `litellm_params`): there is no provider to call here, and the proxy
/// refuses a client's `mock_response` unless a virtual key (in a database) allows it. The
/// proxy still prices each response from its map, as for a real provider.
fn mock_provider(example: &str) -> Result<String> {
    const KEY: &str = "          api_key: os.environ/OPENAI_API_KEY\n";
    let deployments = example.matches(KEY).count();
    ensure!(
        deployments == 2,
        "the no-db example has {deployments} deployments with an OpenAI key, not 2"
    );
    Ok(example.replace(KEY, &format!("{KEY}          mock_response: hi\n")))
}

/// The YAML document of `manifests` that contains `needle`.
fn document<'a>(manifests: &'a str, needle: &str) -> Result<&'a str> {
    manifests
        .split("\n---\n")
        .find(|doc| doc.contains(needle))
        .with_context(|| format!("no document with {needle:?}"))
}

/// A LiteLLM proxy with the module, as in the no-db example, reading the map-url of the
/// cluster kind's copy in its namespace and polling every 2 s.
fn proxy_pod(namespace: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: litellm-master-key, namespace: {namespace}}}
stringData: {{masterKey: {MASTER_KEY}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: litellm
  namespace: {namespace}
  labels: {{app: litellm}}
spec:
  containers:
  - name: litellm
    image: ghcr.io/berriai/litellm:main-stable
    args: ["--config", "/app/config/config.yaml", "--port", "4000"]
    env:
    - name: LITELLM_MODEL_COST_MAP_URL
      valueFrom:
        configMapKeyRef: {{name: litellm-model-cost-map, key: map-url}}
    - {{name: COSTMAP_POLL_SECONDS, value: "2"}}
    - {{name: OPENAI_API_KEY, value: sk-e2e}}
    - name: LITELLM_MASTER_KEY
      valueFrom:
        secretKeyRef: {{name: litellm-master-key, key: masterKey}}
    volumeMounts:
    - {{name: config, mountPath: /app/config, readOnly: true}}
    readinessProbe:
      httpGet: {{path: /health/readiness, port: 4000}}
  volumes:
  - name: config
    configMap: {{name: litellm-config}}
"#
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1e-12)
}

/// "median 4.2 s (3.9, 4.2, 5.0)".
fn seconds(mut values: Vec<f64>) -> String {
    let shown: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
    format!("median {:.1} s ({})", median(&mut values), shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_source_of_an_example_changes() {
        let example = "kind: Secret\nspec:\n  x: 1\n---\napiVersion: v1\nkind: ModelCostMapSync\nspec:\n  interval: 1h\n";
        let changed = with_source(example, "http://h/m.json").unwrap();
        assert_eq!(
            changed,
            "kind: Secret\nspec:\n  x: 1\n---\napiVersion: v1\nkind: ModelCostMapSync\nspec:\n  source: {url: \"http://h/m.json\"}\n  interval: 1h\n"
        );
        assert!(with_source("kind: Secret\n", "http://h").is_err());
    }
}
