//! Shared harness of the integration tests: one real control plane per test binary, a
//! namespace and an in-process operator per test, and a loopback HTTP source.

#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod agent;
pub mod big_map;
pub mod cluster;
pub mod faults;
pub mod hostile;
pub mod kinds;
pub mod kubelet;
pub mod load;
pub mod process;
pub mod proxy;
pub mod real_proxy;
pub mod tenants;

use costmap_operator::api::{ConditionType, Reason};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use costmap_operator::api::{
    ClusterModelCostMapSync, ModelCostMapSync, SYNC_REQUESTED_AT_ANNOTATION,
};
use costmap_operator::controller::{self, Settings};
use costmap_operator::digest::sha256_digest;
use costmap_operator::http::access::{AccessMode, Reviewer};
use costmap_operator::http::capability::MapKeys;
use costmap_operator::http::map_cache::MapCache;
use costmap_operator::http::server::{self, Access, ServerState};
use costmap_operator::litellm::{ProxyClient, ProxyClientConfig};
use costmap_operator::metrics::Metrics;
use costmap_operator::sync::fetch::address::{AddressPolicy, OwnAddresses};
use costmap_operator::sync::fetch::{FetchPolicy, Fetcher};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;
use testenv::ControlPlane;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The control plane of this test binary, started on first use. Its processes die with
/// the test process.
pub fn control_plane() -> &'static ControlPlane {
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    PLANE.get_or_init(control_plane_with_crds)
}

/// A control plane of the caller's own (for tests that kill its servers), with `crds/`
/// applied.
pub fn control_plane_with_crds() -> ControlPlane {
    let plane = ControlPlane::start().unwrap_or_else(|err| {
        panic!("the local control plane could not start (tests need it, they do not skip): {err:#}")
    });
    plane
        .kubectl(&[
            "apply",
            "--server-side",
            "-f",
            &testenv::workspace_root().join("crds").to_string_lossy(),
        ])
        .unwrap_or_else(|err| panic!("applying crds/: {err:#}"));
    plane
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/modelcostmapsyncs.costmap.dev",
            "crd/clustermodelcostmapsyncs.costmap.dev",
        ])
        .unwrap_or_else(|err| panic!("waiting for the CRDs: {err:#}"));
    plane
}

/// A client for the control plane, bound to the calling test's runtime.
pub async fn client() -> Client {
    client_of(control_plane()).await
}

/// A client for `plane` (a test's own control plane, say), bound to the calling runtime.
pub async fn client_of(plane: &ControlPlane) -> Client {
    let kubeconfig = Kubeconfig::read_from(&plane.kubeconfig).expect("admin kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("client")
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("{prefix}-{}-{n}", std::process::id());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// An operator running in this process, watching one namespace.
pub struct Operator {
    pub metrics: Arc<Metrics>,
    /// The maps it serves (what its cache has decompressed, say).
    pub maps: MapCache,
    /// `http://127.0.0.1:PORT` of its HTTP server (maps, metrics, health).
    pub base_url: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Operator {
    /// Starts the controller for `namespace` with test-friendly fetch backoffs.
    pub fn start(client: &Client, namespace: &str) -> Operator {
        Self::start_with(client, namespace, test_policy())
    }

    /// Starts the controller with a given fetch policy.
    pub fn start_with(client: &Client, namespace: &str, policy: FetchPolicy) -> Operator {
        Self::start_in(
            client,
            vec![namespace.to_owned()],
            policy,
            loopback_consumers(),
        )
    }

    /// Starts the controller for `namespaces` with given source and consumer address
    /// policies (the tenancy tests run it as it runs by default: no loopback).
    pub fn start_with_addresses(
        client: &Client,
        namespaces: Vec<String>,
        policy: FetchPolicy,
        consumers: AddressPolicy,
    ) -> Operator {
        Self::start_in(client, namespaces, policy, consumers)
    }

    /// Starts the controller for several namespaces (tenants), with test-friendly backoffs.
    pub fn start_for(client: &Client, namespaces: &[&str]) -> Operator {
        let namespaces = namespaces.iter().map(|ns| (*ns).to_owned()).collect();
        Self::start_in(client, namespaces, test_policy(), loopback_consumers())
    }

    /// Starts the controller for the whole cluster: ModelCostMapSyncs in every namespace
    /// and ClusterModelCostMapSyncs. Only one may run per control plane.
    pub fn start_cluster_wide(client: &Client) -> Operator {
        Self::start_in(client, Vec::new(), test_policy(), loopback_consumers())
    }

    fn start_in(
        client: &Client,
        namespaces: Vec<String>,
        policy: FetchPolicy,
        consumers: AddressPolicy,
    ) -> Operator {
        Self::start_with_access(client, namespaces, policy, consumers, |_| Access::default())
    }

    /// Starts the controller for `namespaces` as the chart runs it: maps and metrics need
    /// a credential (`token`), and each target gets a `map-url` on this operator, signed
    /// with the key of Secret `costmap-map-key` in `key_namespace` (created when missing).
    pub async fn start_secured(
        client: &Client,
        namespaces: Vec<String>,
        key_namespace: &str,
    ) -> Operator {
        let loaded = std::sync::Mutex::new(None::<MapKeys>);
        let operator = Self::start_with_access(
            client,
            namespaces,
            test_policy(),
            loopback_consumers(),
            |base_url| {
                let keys = MapKeys::new(Some(base_url));
                *loaded.lock().unwrap() = Some(keys.clone());
                Access {
                    maps: AccessMode::Token,
                    metrics: AccessMode::Token,
                    reviewer: Some(Reviewer::new(client.clone())),
                    keys,
                }
            },
        );
        let keys = loaded.lock().unwrap().take().expect("keys");
        keys.load(client, key_namespace, "costmap-map-key")
            .await
            .expect("the map key");
        // Rotations are followed until the test process ends.
        tokio::spawn(keys.follow(
            client.clone(),
            key_namespace.to_owned(),
            "costmap-map-key".to_owned(),
        ));
        operator
    }

    fn start_with_access(
        client: &Client,
        namespaces: Vec<String>,
        policy: FetchPolicy,
        consumers: AddressPolicy,
        access: impl FnOnce(&str) -> Access,
    ) -> Operator {
        let stop = CancellationToken::new();
        let fetcher = Fetcher::new(policy).expect("fetcher");
        let maps = MapCache::default();
        let metrics = Arc::new(Metrics::default());
        let mut settings = Settings {
            namespaces: namespaces.clone(),
            instance: Some("test".into()),
            metrics: metrics.clone(),
            proxies: ProxyClient::new(ProxyClientConfig {
                attempts: 2,
                min_backoff: Duration::from_millis(50),
                addresses: consumers,
                ..ProxyClientConfig::default()
            })
            .expect("proxy client"),
            maps: maps.clone(),
            concurrent_syncs: 2,
            retry_backoff: costmap_operator::sync::schedule::DEFAULT_RETRY_BACKOFF,
            min_sync_gap: costmap_operator::sync::schedule::DEFAULT_MIN_SYNC_GAP,
            map_keys: MapKeys::default(),
        };
        let max_bytes = fetcher.policy().max_body_bytes;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let access = access(&base_url);
        settings.map_keys = access.keys.clone();
        let state = ServerState::new(metrics.clone(), maps.clone()).with_access(access);
        state.set_ready(true);
        let controller = controller::run(client.clone(), fetcher, settings, stop.clone());
        let serve = server::serve(listener, state, stop.clone().cancelled_owned());
        let client = client.clone();
        let cache_maps = maps.clone();
        let task = tokio::spawn(async move {
            let cache = tokio::spawn(cache_maps.run(client, namespaces, max_bytes));
            let (_, served) = tokio::join!(controller, serve);
            served.expect("server");
            cache.abort();
        });
        Operator {
            metrics,
            maps,
            base_url,
            stop,
            task,
        }
    }

    /// Stops it gracefully and waits until it has.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("operator stops in time")
            .expect("operator task");
    }
}

/// Short retries so failing sources fail fast; loopback sources allowed (the tests' own
/// sources are on loopback).
pub fn test_policy() -> FetchPolicy {
    FetchPolicy {
        max_attempts: 2,
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        allowed_cidrs: LOOPBACK.iter().map(|c| c.parse().unwrap()).collect(),
        ..FetchPolicy::default()
    }
}

/// What the tests' operators allow although the address policy refuses it: loopback,
/// where the tests' sources and proxies listen.
pub const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// The consumer address policy of the in-process operator: loopback allowed.
pub fn loopback_consumers() -> AddressPolicy {
    AddressPolicy::new(
        LOOPBACK.iter().map(|c| c.parse().unwrap()).collect(),
        OwnAddresses::default(),
    )
}

/// The `run` flag of the benches: they time the pipeline request after request, and the
/// least gap between an object's requested syncs (a tenant guard, 5 s by default) would be
/// timed instead.
pub const NO_SYNC_GAP: &str = "--min-sync-gap=0s";

/// The `run` flags that allow loopback sources and consumers, for operator processes.
pub const ALLOW_LOOPBACK_ARGS: [&str; 4] = [
    "--allow-source-cidr=127.0.0.0/8",
    "--allow-source-cidr=::1/128",
    "--allow-consumer-cidr=127.0.0.0/8",
    "--allow-consumer-cidr=::1/128",
];

/// What the loopback source answers.
#[derive(Clone)]
pub enum Answer {
    /// The body, with an ETag of its digest, and 304 on a matching If-None-Match.
    Map(Bytes),
    /// The body with no validators: always 200, whatever the request says.
    Plain(Bytes),
    /// A status code with a body.
    Status(StatusCode, Bytes),
    /// Another answer, after a delay (a slow source: the request stays open meanwhile).
    Delayed(Duration, Box<Answer>),
}

/// A real HTTP source on loopback whose answer a test can change.
#[derive(Clone)]
pub struct Source {
    pub url: String,
    state: Arc<SourceState>,
}

struct SourceState {
    answer: Mutex<Answer>,
    log: Mutex<Vec<Served>>,
    /// Requests received, answered or not.
    received: std::sync::atomic::AtomicUsize,
}

/// One request the source answered.
#[derive(Clone, Debug)]
pub struct Served {
    pub status: u16,
    pub headers: HeaderMap,
}

impl Source {
    /// Starts serving `answer` at `/model_prices_and_context_window.json`.
    pub async fn start(answer: Answer) -> Source {
        let state = Arc::new(SourceState {
            answer: Mutex::new(answer),
            log: Mutex::new(Vec::new()),
            received: std::sync::atomic::AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/model_prices_and_context_window.json", get(serve_map))
            .with_state(state.clone());
        let addr = serve_loopback(app);
        Source {
            url: format!("http://{addr}/model_prices_and_context_window.json"),
            state,
        }
    }

    /// Changes what the source answers from now on.
    pub fn set(&self, answer: Answer) {
        *self.state.answer.lock().unwrap() = answer;
    }

    /// Every request answered so far.
    pub fn served(&self) -> Vec<Served> {
        self.state.log.lock().unwrap().clone()
    }

    /// Status codes answered so far.
    pub fn statuses(&self) -> Vec<u16> {
        self.served().iter().map(|s| s.status).collect()
    }

    /// Requests received so far, including those still being answered.
    pub fn received(&self) -> usize {
        self.state
            .received
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn serve_map(State(state): State<Arc<SourceState>>, headers: HeaderMap) -> Response {
    state
        .received
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut answer = state.answer.lock().unwrap().clone();
    while let Answer::Delayed(delay, then) = answer {
        tokio::time::sleep(delay).await;
        answer = *then;
    }
    let response = match answer {
        Answer::Map(body) => {
            let etag = format!("\"{}\"", sha256_digest(&body));
            let matches = headers
                .get(header::IF_NONE_MATCH)
                .is_some_and(|value| value.as_bytes() == etag.as_bytes());
            if matches {
                (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response()
            } else {
                (StatusCode::OK, [(header::ETAG, etag)], body).into_response()
            }
        }
        Answer::Plain(body) => (StatusCode::OK, body).into_response(),
        Answer::Status(code, body) => (code, body).into_response(),
        Answer::Delayed(..) => unreachable!("unwrapped above"),
    };
    state.log.lock().unwrap().push(Served {
        status: response.status().as_u16(),
        headers,
    });
    response
}

/// A map in LiteLLM's shape with models `model-0`..`model-{n-1}` plus `extra` names.
pub fn small_map(n: usize, extra: &[&str]) -> Bytes {
    let mut map = serde_json::Map::new();
    map.insert(
        "sample_spec".into(),
        json!({"max_tokens": "LEGACY", "input_cost_per_token": 0.0, "mode": "one of: chat"}),
    );
    let names = (0..n)
        .map(|i| format!("model-{i}"))
        .chain(extra.iter().map(|s| s.to_string()));
    for name in names {
        map.insert(
            name,
            json!({"max_tokens": 4096, "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
                   "litellm_provider": "openai", "mode": "chat"}),
        );
    }
    Bytes::from(serde_json::to_vec_pretty(&map).unwrap())
}

/// `map` with one more model, `name` with `entry`, as upstream adds a model on launch day.
/// A model "launched today": not in any released map.
pub const DAY0_MODEL: &str = "gpt-costmap-day0-2026-11-25";
/// Its prices per token once upstream adds it.
pub const DAY0_INPUT: f64 = 1.25e-6;
pub const DAY0_OUTPUT: f64 = 1e-5;

/// The day-0 model's entry as upstream adds it.
pub fn day0_entry() -> serde_json::Value {
    json!({
        "litellm_provider": "openai",
        "mode": "chat",
        "max_input_tokens": 400000,
        "max_output_tokens": 128000,
        "input_cost_per_token": DAY0_INPUT,
        "output_cost_per_token": DAY0_OUTPUT,
    })
}

pub fn with_model(map: &[u8], name: &str, entry: serde_json::Value) -> Bytes {
    let mut parsed: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(map).expect("a JSON object");
    parsed.insert(name.to_owned(), entry);
    Bytes::from(serde_json::to_vec_pretty(&parsed).unwrap())
}

/// The bytes of a real LiteLLM release's map (downloaded once from PyPI, cached).
pub fn real_map(version: &str) -> Bytes {
    let path = testenv::litellm_map(version)
        .unwrap_or_else(|err| panic!("the real litellm {version} map is needed: {err:#}"));
    Bytes::from(std::fs::read(path).unwrap())
}

/// Creates any namespaced object from its JSON.
pub async fn create<K>(client: &Client, ns: &str, object: serde_json::Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).unwrap();
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|err| panic!("creating a {}: {err}", K::kind(&())))
}

/// Creates a ModelCostMapSync from a spec.
pub async fn create_sync(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> ModelCostMapSync {
    let sync: ModelCostMapSync = serde_json::from_value(json!({
        "apiVersion": "costmap.dev/v1alpha1",
        "kind": "ModelCostMapSync",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap();
    syncs(client, namespace)
        .create(&PostParams::default(), &sync)
        .await
        .expect("create ModelCostMapSync")
}

/// Creates the ModelCostMapSync `litellm` fetching from `url`, every other field defaulted.
pub async fn create_litellm_sync(client: &Client, namespace: &str, url: &str) -> ModelCostMapSync {
    create_sync(
        client,
        namespace,
        "litellm",
        json!({"source": {"url": url}}),
    )
    .await
}

/// Creates the ClusterModelCostMapSync `name` fetching from `url` into the namespaces
/// labelled `labels`, every other field defaulted.
pub async fn create_cluster_sync(
    client: &Client,
    name: &str,
    url: &str,
    labels: &BTreeMap<String, String>,
) -> ClusterModelCostMapSync {
    let sync: ClusterModelCostMapSync = serde_json::from_value(json!({
        "apiVersion": "costmap.dev/v1alpha1",
        "kind": "ClusterModelCostMapSync",
        "metadata": {"name": name},
        "spec": {"source": {"url": url}, "namespaceSelector": {"matchLabels": labels}},
    }))
    .unwrap();
    Api::<ClusterModelCostMapSync>::all(client.clone())
        .create(&PostParams::default(), &sync)
        .await
        .expect("create ClusterModelCostMapSync")
}

pub fn syncs(client: &Client, namespace: &str) -> Api<ModelCostMapSync> {
    Api::namespaced(client.clone(), namespace)
}

pub fn config_maps(client: &Client, namespace: &str) -> Api<ConfigMap> {
    Api::namespaced(client.clone(), namespace)
}

/// Sets the sync-request annotation to `value`.
pub async fn request_sync(client: &Client, namespace: &str, name: &str, value: &str) {
    let patch = json!({"metadata": {"annotations": {SYNC_REQUESTED_AT_ANNOTATION: value}}});
    syncs(client, namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
}

/// Polls `probe` until it returns Some, or fails the test at the deadline with `what`.
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, DEADLINE, probe).await
}

/// [`eventually`] with a deadline of its own.
pub async fn eventually_within<T, F, Fut>(what: &str, deadline: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_explained(what, deadline, String::new, probe).await
}

/// [`eventually_within`] whose failure also says `explain()` (a log, say).
pub async fn eventually_explained<T, F, Fut>(
    what: &str,
    deadline: Duration,
    explain: impl Fn() -> String,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out waiting for {what}\n{}",
            explain()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Serves `app` on `listener` (a loopback port, or an address in a test host) for as long
/// as the test runs; returns the address. Every stand-in server of the tests starts here.
pub fn serve(listener: std::net::TcpListener, app: Router) -> SocketAddr {
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// [`serve`] on a fresh loopback port.
pub fn serve_loopback(app: Router) -> SocketAddr {
    serve(
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
        app,
    )
}

/// Waits until the object's Ready condition has `status` and `reason`, and returns it.
pub async fn wait_ready(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &str,
    reason: Reason,
) -> ModelCostMapSync {
    let api = syncs(client, namespace);
    eventually(
        &format!("{namespace}/{name} Ready={status} {reason}"),
        || {
            let api = api.clone();
            async move {
                let sync = api.get(name).await.ok()?;
                let ready = ready_condition(&sync)?;
                (ready.status == status && ready.reason == reason.as_str()).then_some(sync)
            }
        },
    )
    .await
}

/// Waits until the object's status has handled the sync request `value`.
pub async fn wait_handled(
    client: &Client,
    namespace: &str,
    name: &str,
    value: &str,
) -> ModelCostMapSync {
    let api = syncs(client, namespace);
    eventually(
        &format!("{namespace}/{name} handling sync request {value}"),
        || {
            let api = api.clone();
            async move {
                let sync = api.get(name).await.ok()?;
                let handled =
                    sync.status.as_ref()?.last_handled_sync_request.as_deref() == Some(value);
                handled.then_some(sync)
            }
        },
    )
    .await
}

pub fn ready_condition(
    sync: &ModelCostMapSync,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    sync.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Ready.as_str())
        .cloned()
}

/// The map bytes stored in a ConfigMap's gz key.
pub fn stored_bytes(config_map: &ConfigMap, key: &str) -> Vec<u8> {
    use std::io::Read;
    let gz = &config_map.binary_data.as_ref().expect("binaryData")[&format!("{key}.gz")];
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz.0.as_slice())
        .read_to_end(&mut bytes)
        .expect("valid gzip");
    bytes
}

/// Events recorded about objects in `namespace`, as (reason, note).
pub async fn events(client: &Client, namespace: &str) -> Vec<(String, String)> {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// Waits for an Event with `reason` whose note contains `text`.
pub async fn wait_event(client: &Client, namespace: &str, reason: &str, text: &str) -> String {
    eventually(
        &format!("an Event {reason} mentioning {text:?}"),
        || async {
            events(client, namespace)
                .await
                .into_iter()
                .find(|(r, note)| r == reason && note.contains(text))
                .map(|(_, note)| note)
        },
    )
    .await
}

/// The resourceVersions of the ModelCostMapSync `name` and its ConfigMap (named alike): two
/// equal readings mean nothing was written in between.
pub async fn written_versions(client: &Client, namespace: &str, name: &str) -> (String, String) {
    use kube::ResourceExt;
    let sync = syncs(client, namespace)
        .get(name)
        .await
        .expect("the ModelCostMapSync");
    let config_map = config_maps(client, namespace)
        .get(name)
        .await
        .expect("the ConfigMap");
    (
        sync.resource_version().unwrap_or_default(),
        config_map.resource_version().unwrap_or_default(),
    )
}

/// A ConfigMap's annotations.
pub fn annotations(config_map: &ConfigMap) -> BTreeMap<String, String> {
    config_map.metadata.annotations.clone().unwrap_or_default()
}

/// A namespace with an operator, a source serving `answer`, and a ModelCostMapSync
/// `litellm` pointing at it, synced once.
pub struct Scenario {
    pub client: Client,
    pub ns: String,
    pub source: Source,
    pub operator: Operator,
}

impl Scenario {
    pub async fn new(prefix: &str, answer: Answer, extra_spec: serde_json::Value) -> Scenario {
        let client = client().await;
        let ns = namespace(&client, prefix).await;
        let source = Source::start(answer).await;
        let operator = Operator::start(&client, &ns);
        let mut spec = json!({"source": {"url": source.url}, "interval": "1h"});
        merge(&mut spec, extra_spec);
        create_sync(&client, &ns, "litellm", spec).await;
        Scenario {
            client,
            ns,
            source,
            operator,
        }
    }

    pub async fn config_map(&self) -> k8s_openapi::api::core::v1::ConfigMap {
        config_maps(&self.client, &self.ns)
            .get("litellm")
            .await
            .expect("ConfigMap exists")
    }

    pub async fn wait_ready(
        &self,
        status: &str,
        reason: Reason,
    ) -> costmap_operator::api::ModelCostMapSync {
        wait_ready(&self.client, &self.ns, "litellm", status, reason).await
    }

    /// The URL of the map on the operator's endpoint.
    pub fn map_url(&self) -> String {
        format!(
            "{}/maps/{}/litellm/{}",
            self.operator.base_url,
            self.ns,
            costmap_operator::api::DEFAULT_KEY
        )
    }

    /// Asks for a sync and waits until it has been handled.
    pub async fn sync_now(&self, token: &str) -> costmap_operator::api::ModelCostMapSync {
        request_sync(&self.client, &self.ns, "litellm", token).await;
        wait_handled(&self.client, &self.ns, "litellm", token).await
    }
}

pub fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(base), serde_json::Value::Object(extra)) => {
            for (key, value) in extra {
                merge(base.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (base, extra) => *base = extra,
    }
}

/// `kubectl auth can-i ARGS... --as USER` on the shared control plane.
pub fn can_i(user: &str, args: &[&str]) -> bool {
    let output = control_plane()
        .kubectl_command()
        .args(["auth", "can-i"])
        .args(args)
        .args(["--as", user])
        .output()
        .expect("kubectl");
    String::from_utf8_lossy(&output.stdout).trim() == "yes"
}

/// What the operator's endpoint serves at `/maps/{namespace}/{name}/{key}` (the default
/// key), decompressed; None for no 200.
pub async fn served_map(operator: &Operator, namespace: &str, name: &str) -> Option<Vec<u8>> {
    let url = format!(
        "{}/maps/{namespace}/{name}/{}",
        operator.base_url,
        costmap_operator::api::DEFAULT_KEY
    );
    let response = reqwest::get(&url).await.ok()?;
    (response.status() == 200).then_some(())?;
    Some(response.bytes().await.ok()?.to_vec())
}

/// Creates namespace `name`, labelled `labels`.
pub async fn labelled_namespace(
    client: &Client,
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) {
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}
