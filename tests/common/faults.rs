//! Fault scenarios, each on a control plane of its own (the harness started its etcd and
//! kube-apiserver, so it may kill and restart them) with the operator as a process (so it
//! can be SIGKILLed). Each scenario asserts convergence to the right bytes in the status,
//! the ConfigMap and the map endpoint, at most one ConfigMap write per new map, and that the
//! guards still apply; it returns the time from the end of the fault to convergence, for
//! `cargo bench --bench faults`.

use costmap_operator::api::{ConditionType, EventReason, Reason};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use costmap_operator::api::{DEFAULT_KEY, ModelCostMapSync, ModelCostMapSyncStatus};
use costmap_operator::digest::sha256_digest;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use testenv::{ControlPlane, Server};

use super::process::OperatorProcess;
use super::proxy::StandIn;
use super::*;

/// The first wait after a failed sync, for the operator under test (the default is 30 s).
pub const RETRY_BACKOFF_SECONDS: i64 = 1;
const MASTER_KEY: &str = "sk-fault-test-master-key";

/// A map with 200 models.
pub fn map_a() -> Bytes {
    small_map(200, &[])
}

/// [`map_a`] and a day-0 model.
pub fn map_b() -> Bytes {
    small_map(200, &["day0-model"])
}

/// A namespace on a control plane of its own, a source, the operator as a process, and the
/// ModelCostMapSync `litellm`; a watch records every version of its ConfigMap.
pub struct FaultBed {
    pub plane: ControlPlane,
    pub client: Client,
    pub ns: String,
    pub source: Source,
    operator: Option<OperatorProcess>,
    /// Operators killed so far, kept for their logs.
    killed: Vec<OperatorProcess>,
    port: u16,
    versions: Arc<Mutex<Vec<ConfigMapVersion>>>,
    recorder: tokio::task::JoinHandle<()>,
}

/// One version of the ConfigMap, as the test's own watch saw it.
#[derive(Clone, Debug)]
struct ConfigMapVersion {
    resource_version: String,
    digest: Option<String>,
}

impl Drop for FaultBed {
    fn drop(&mut self) {
        self.recorder.abort();
        if std::thread::panicking() {
            for operator in self.killed.iter().chain(&self.operator) {
                eprintln!(
                    "--- log of operator {} ---\n{}",
                    operator.pid(),
                    operator.log_text()
                );
            }
        }
    }
}

impl FaultBed {
    /// Starts everything with the source answering `answer`; `spec` is merged into the
    /// ModelCostMapSync's spec.
    pub async fn start(prefix: &str, answer: Answer, spec: serde_json::Value) -> FaultBed {
        let bed = FaultBed::without_sync(prefix, answer).await;
        bed.create_sync(spec).await;
        bed
    }

    /// Everything but the ModelCostMapSync, which [`FaultBed::create_sync`] creates.
    pub async fn without_sync(prefix: &str, answer: Answer) -> FaultBed {
        let plane = tokio::task::block_in_place(control_plane_with_crds);
        let client = client_of(&plane).await;
        let ns = namespace(&client, prefix).await;
        let source = Source::start(answer).await;
        let versions = Arc::new(Mutex::new(Vec::new()));
        let recorder = tokio::spawn(record_versions(
            Api::namespaced(client.clone(), &ns),
            Arc::clone(&versions),
        ));
        let mut bed = FaultBed {
            port: testenv::free_port().unwrap(),
            plane,
            client,
            ns,
            source,
            operator: None,
            killed: Vec::new(),
            versions,
            recorder,
        };
        bed.start_operator();
        bed
    }

    /// Creates the ModelCostMapSync `litellm` on the source, `spec` merged in.
    pub async fn create_sync(&self, spec: serde_json::Value) {
        let mut full =
            json!({"source": {"url": self.source.url, "timeout": "5s"}, "interval": "1h"});
        merge(&mut full, spec);
        create_sync(&self.client, &self.ns, "litellm", full).await;
    }

    /// Starts the operator (again), on the same port as before.
    pub fn start_operator(&mut self) {
        assert!(self.operator.is_none(), "one operator at a time");
        let backoff = format!("{RETRY_BACKOFF_SECONDS}s");
        let args = [
            "--namespace",
            &self.ns,
            "--leader-election=false",
            "--retry-backoff",
            &backoff,
            "--fetch-attempts",
            "1",
        ];
        self.operator = Some(OperatorProcess::start_on(
            &self.plane.kubeconfig,
            &self.ns,
            "operator",
            &args,
            "debug",
            self.port,
        ));
    }

    /// SIGKILLs the operator.
    pub fn kill_operator(&mut self) {
        let mut operator = self.operator.take().expect("an operator runs");
        operator.kill();
        self.killed.push(operator);
    }

    /// SIGKILLs one server of the control plane.
    pub fn kill(&mut self, server: Server) {
        self.plane.kill(server).unwrap();
    }

    /// Starts a killed server again and waits until the API server is ready.
    pub fn restart(&mut self, server: Server) {
        tokio::task::block_in_place(|| self.plane.restart(server)).unwrap();
    }

    /// `http://127.0.0.1:PORT` of the operator.
    pub fn operator_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The map the operator serves now (None: no 200).
    pub async fn served(&self) -> Option<Bytes> {
        let url = format!(
            "{}/maps/{}/litellm/{DEFAULT_KEY}",
            self.operator_url(),
            self.ns
        );
        let response = reqwest::get(url).await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        response.bytes().await.ok()
    }

    /// The status code of the operator's /readyz (None: no answer).
    pub async fn readyz(&self) -> Option<u16> {
        let response = reqwest::get(format!("{}/readyz", self.operator_url()))
            .await
            .ok()?;
        Some(response.status().as_u16())
    }

    pub async fn sync(&self) -> ModelCostMapSync {
        syncs(&self.client, &self.ns).get("litellm").await.unwrap()
    }

    pub async fn status(&self) -> ModelCostMapSyncStatus {
        self.sync().await.status.unwrap_or_default()
    }

    pub async fn config_map(&self) -> Option<ConfigMap> {
        config_maps(&self.client, &self.ns)
            .get_opt("litellm")
            .await
            .unwrap()
    }

    /// Waits until status, ConfigMap and endpoint all hold `map`, with Ready=True.
    pub async fn wait_converged(&self, map: &[u8], what: &str) {
        let digest = sha256_digest(map);
        eventually_within(what, Duration::from_secs(90), || async {
            let sync = syncs(&self.client, &self.ns).get("litellm").await.ok()?;
            let ready = ready_condition(&sync)?;
            let artifact = sync.status?.artifact?;
            let cm = self.config_map().await?;
            let held = stored_map(&cm)?;
            let served = self.served().await?;
            (ready.status == "True"
                && artifact.digest == digest
                && held == map
                && served.as_ref() == map)
                .then_some(())
        })
        .await;
    }

    /// How many versions of the ConfigMap held `map`.
    pub fn writes_of(&self, map: &[u8]) -> usize {
        let digest = sha256_digest(map);
        self.versions
            .lock()
            .unwrap()
            .iter()
            .filter(|version| version.digest.as_deref() == Some(digest.as_str()))
            .count()
    }

    /// How many versions of the ConfigMap the watch saw.
    pub fn version_count(&self) -> usize {
        self.versions.lock().unwrap().len()
    }

    /// Asks for a sync now.
    pub async fn request_sync(&self, token: &str) {
        request_sync(&self.client, &self.ns, "litellm", token).await;
    }

    /// After a fault: a map that drops 60% of the models of `last_good` (the map the cluster
    /// holds) is still refused by the shrink guard, and the ConfigMap keeps `last_good`.
    pub async fn assert_guards_apply(&self, last_good: &[u8]) {
        let shrunk = small_map(80, &[]);
        self.source.set(Answer::Map(shrunk.clone()));
        self.request_sync("after-the-fault-a-shrunk-map").await;
        let refused = wait_ready(
            &self.client,
            &self.ns,
            "litellm",
            "False",
            Reason::ShrinkGuard,
        )
        .await;
        let message = ready_condition(&refused).unwrap().message;
        assert!(message.contains("of the last good map's"), "{message}");
        let cm = self.config_map().await.expect("the ConfigMap");
        assert_eq!(stored_map(&cm).as_deref(), Some(last_good));
        assert_eq!(self.served().await.as_deref(), Some(last_good));
        assert_eq!(self.writes_of(&shrunk), 0);
    }

    /// Waits until the endpoint and the ConfigMap hold map A again, asserting on the way
    /// that the `tampered` bytes are never served.
    pub async fn wait_restored(&self, tampered: &[u8], what: &str) {
        eventually(what, || async {
            let served = self.served().await;
            assert_ne!(
                served.as_deref(),
                Some(tampered),
                "the tampered map was served"
            );
            let cm = self.config_map().await?;
            (served.as_deref() == Some(map_a().as_ref()) && stored_map(&cm)? == map_a())
                .then_some(())
        })
        .await;
    }

    /// Puts `map` in the ConfigMap, gzip and digest annotation alike, as someone with edit
    /// rights on ConfigMaps could.
    pub async fn tamper(&self, map: &[u8]) {
        let gz = super::kubelet::gzip(map);
        let patch = json!({
            "metadata": {"annotations": {"costmap.dev/digest": sha256_digest(map)}},
            "binaryData": {format!("{DEFAULT_KEY}.gz"): ByteString(gz)},
        });
        config_maps(&self.client, &self.ns)
            .patch("litellm", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
}

/// The map in a ConfigMap's gz key, if it holds a readable one.
fn stored_map(cm: &ConfigMap) -> Option<Vec<u8>> {
    use std::io::Read;
    let gz = cm.binary_data.as_ref()?.get(&format!("{DEFAULT_KEY}.gz"))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz.0.as_slice())
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// Records every version of the ConfigMap `litellm` (by resourceVersion, once each), through
/// API-server restarts.
async fn record_versions(api: Api<ConfigMap>, versions: Arc<Mutex<Vec<ConfigMapVersion>>>) {
    let config = watcher::Config::default().fields("metadata.name=litellm");
    let mut events = std::pin::pin!(costmap_operator::watch::resilient(api, config));
    while let Some(event) = events.next().await {
        if let Ok(Event::Apply(cm) | Event::InitApply(cm)) = event {
            let resource_version = cm.resource_version().unwrap_or_default();
            let mut versions = versions.lock().unwrap();
            if !versions
                .iter()
                .any(|v| v.resource_version == resource_version)
            {
                versions.push(ConfigMapVersion {
                    resource_version,
                    digest: stored_map(&cm).map(|map| sha256_digest(&map)),
                });
            }
        }
    }
}

/// The reasons of the Events about `litellm`, in the order recorded.
async fn event_notes(bed: &FaultBed, reason: &str) -> Vec<String> {
    events(&bed.client, &bed.ns)
        .await
        .into_iter()
        .filter(|(r, _)| r == reason)
        .map(|(_, note)| note)
        .collect()
}

/// kube-apiserver is SIGKILLed after a sync and started again: the operator reports not
/// ready while it is down, then a new map reaches the ConfigMap and the endpoint.
pub async fn api_server_killed_after_a_sync() -> Duration {
    let mut bed = FaultBed::start("fault-api-after", Answer::Map(map_a()), json!({})).await;
    bed.wait_converged(&map_a(), "the first sync").await;
    bed.kill(Server::ApiServer);
    eventually("/readyz to fail while the API server is down", || async {
        (bed.readyz().await == Some(503)).then_some(())
    })
    .await;
    bed.restart(Server::ApiServer);
    let restarted = Instant::now();
    bed.source.set(Answer::Map(map_b()));
    bed.request_sync("after-the-restart").await;
    bed.wait_converged(&map_b(), "the new map after the restart")
        .await;
    let took = restarted.elapsed();
    eventually("/readyz to pass again", || async {
        (bed.readyz().await == Some(200)).then_some(())
    })
    .await;
    assert_eq!(bed.writes_of(&map_b()), 1, "the new map was written once");
    bed.assert_guards_apply(&map_b()).await;
    took
}

/// A server of the control plane is SIGKILLed while a sync is fetching, and started again
/// at once: the sync is done again once the API is back, and the map written once.
pub async fn killed_during_a_sync(server: Server) -> Duration {
    let prefix = match server {
        Server::ApiServer => "fault-api-during",
        Server::Etcd => "fault-etcd-during",
    };
    let mut bed = FaultBed::start(prefix, Answer::Map(map_a()), json!({})).await;
    bed.wait_converged(&map_a(), "the first sync").await;
    let slow_b = Answer::Delayed(Duration::from_secs(2), Box::new(Answer::Map(map_b())));
    bed.source.set(slow_b);
    let before = bed.source.received();
    bed.request_sync("during-the-fault").await;
    eventually("the fetch to start", || async {
        (bed.source.received() > before).then_some(())
    })
    .await;
    bed.kill(server);
    bed.restart(server);
    let restarted = Instant::now();
    bed.wait_converged(&map_b(), "the new map after the restart")
        .await;
    let took = restarted.elapsed();
    assert_eq!(bed.writes_of(&map_b()), 1, "the new map was written once");
    bed.assert_guards_apply(&map_b()).await;
    took
}

/// The operator is SIGKILLed while its fetch of a new map is in flight; a new operator
/// fetches again and writes the map once, never calling it a first sync.
pub async fn operator_killed_before_the_fetch_ends() -> Duration {
    let mut bed = FaultBed::start("fault-op-fetch", Answer::Map(map_a()), json!({})).await;
    bed.wait_converged(&map_a(), "the first sync").await;
    let before = bed.source.received();
    bed.source.set(Answer::Delayed(
        Duration::from_secs(60),
        Box::new(Answer::Map(map_b())),
    ));
    bed.request_sync("killed-while-fetching").await;
    eventually("the fetch to start", || async {
        (bed.source.received() > before).then_some(())
    })
    .await;
    bed.kill_operator();
    bed.source.set(Answer::Map(map_b()));
    bed.start_operator();
    let started = Instant::now();
    bed.wait_converged(&map_b(), "the new map from the new operator")
        .await;
    let took = started.elapsed();
    assert_eq!(bed.writes_of(&map_b()), 1, "the new map was written once");
    let first = event_notes(&bed, EventReason::MapSynced.as_str()).await;
    assert_eq!(first.len(), 1, "one first sync only: {first:?}");
    bed.assert_guards_apply(&map_b()).await;
    took
}

/// The scenario: the operator is SIGKILLed between its ConfigMap write and its
/// status write (a proxy's slow reload holds it there). The new operator finds the map it
/// validated in the ConfigMap, adopts it without writing again, and a map that drops 60% of
/// its models is refused by the shrink guard against it.
pub async fn operator_killed_after_the_configmap_write() -> Duration {
    let mut bed = FaultBed::without_sync("fault-op-cm", Answer::Map(map_a())).await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "litellm-master-key"},
        "stringData": {"masterKey": MASTER_KEY},
    }))
    .unwrap();
    Api::<Secret>::namespaced(bed.client.clone(), &bed.ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let map_url = format!(
        "{}/maps/{}/litellm/{DEFAULT_KEY}",
        bed.operator_url(),
        bed.ns
    );
    let proxy_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = StandIn::start(proxy_listener, &map_url, MASTER_KEY, true).await;
    bed.create_sync(json!({"consumers": {"litellmProxies": [{
        "url": proxy.url,
        "adminKeySecretRef": {"name": "litellm-master-key", "key": "masterKey"},
    }]}}))
    .await;
    bed.wait_converged(&map_a(), "the first sync").await;

    proxy.hold_reloads(true);
    let reloads = proxy.reloads();
    bed.source.set(Answer::Map(map_b()));
    bed.request_sync("held-by-a-slow-reload").await;
    let b = sha256_digest(&map_b());
    eventually(
        "the ConfigMap to hold the new map while status names the old one",
        || async {
            let status = bed.status().await;
            let cm = bed.config_map().await?;
            let in_gap = proxy.reloads() > reloads
                && stored_map(&cm).is_some_and(|held| held == map_b())
                && status.artifact?.digest == sha256_digest(&map_a())
                && status.pending_artifact?.digest == b;
            in_gap.then_some(())
        },
    )
    .await;
    bed.kill_operator();
    proxy.hold_reloads(false);

    bed.start_operator();
    let started = Instant::now();
    eventually(
        "the new operator to adopt the map it finds in the ConfigMap",
        || async {
            let status = bed.status().await;
            (status.artifact?.digest == b && status.pending_artifact.is_none()).then_some(())
        },
    )
    .await;
    let took = started.elapsed();
    // The request the killed operator was handling is handled again: the source still
    // sends the same map, so nothing is written.
    wait_handled(&bed.client, &bed.ns, "litellm", "held-by-a-slow-reload").await;
    bed.wait_converged(&map_b(), "the adopted map served").await;

    // 60% of the models gone: guarded against the map the ConfigMap holds.
    let shrunk = small_map(80, &[]);
    bed.source.set(Answer::Map(shrunk.clone()));
    bed.request_sync("the-shrunk-map").await;
    let refused = wait_ready(
        &bed.client,
        &bed.ns,
        "litellm",
        "False",
        Reason::ShrinkGuard,
    )
    .await;
    let message = ready_condition(&refused).unwrap().message;
    assert!(
        message.contains("drops 121 of the last good map's 201"),
        "{message}"
    );
    assert_eq!(
        stored_map(&bed.config_map().await.unwrap()).unwrap(),
        map_b()
    );
    assert_eq!(bed.writes_of(&map_b()), 1, "the new map was written once");
    assert_eq!(bed.writes_of(&shrunk), 0);
    assert_eq!(
        event_notes(&bed, EventReason::MapSynced.as_str())
            .await
            .len(),
        1,
        "one first sync only"
    );
    let updates = event_notes(&bed, EventReason::MapUpdated.as_str()).await;
    assert!(
        updates
            .iter()
            .any(|note| note.contains("interrupted by an operator restart")),
        "{updates:?}"
    );
    took
}

/// The operator is SIGKILLed right after its status write: the new operator writes nothing.
pub async fn operator_killed_after_the_status_write() -> Duration {
    let mut bed = FaultBed::start("fault-op-status", Answer::Map(map_a()), json!({})).await;
    bed.wait_converged(&map_a(), "the first sync").await;
    bed.source.set(Answer::Map(map_b()));
    bed.request_sync("killed-after-status").await;
    let b = sha256_digest(&map_b());
    eventually("status to name the new map", || async {
        (bed.status().await.artifact?.digest == b).then_some(())
    })
    .await;
    bed.kill_operator();
    let versions = bed.version_count();
    let sync_version = bed.sync().await.resource_version();
    bed.start_operator();
    let started = Instant::now();
    bed.wait_converged(&map_b(), "the new operator serving the map")
        .await;
    let took = started.elapsed();
    // Served, ready, and one more sync request handled: nothing was written in between.
    eventually("/readyz to pass", || async {
        (bed.readyz().await == Some(200)).then_some(())
    })
    .await;
    assert_eq!(
        bed.sync().await.resource_version(),
        sync_version,
        "status untouched"
    );
    bed.request_sync("after-the-restart").await;
    wait_handled(&bed.client, &bed.ns, "litellm", "after-the-restart").await;
    assert_eq!(
        bed.version_count(),
        versions,
        "the ConfigMap was not written again"
    );
    assert_eq!(bed.writes_of(&map_b()), 1);
    bed.assert_guards_apply(&map_b()).await;
    took
}

/// The ConfigMap is deleted while the operator is down: the new operator (which holds no
/// copy) fetches the map again and restores it.
pub async fn configmap_deleted_while_the_operator_is_down() -> Duration {
    let mut bed = FaultBed::start("fault-cm-deleted", Answer::Map(map_a()), json!({})).await;
    bed.wait_converged(&map_a(), "the first sync").await;
    bed.kill_operator();
    config_maps(&bed.client, &bed.ns)
        .delete("litellm", &DeleteParams::default())
        .await
        .unwrap();
    bed.start_operator();
    let started = Instant::now();
    bed.wait_converged(&map_a(), "the restored map").await;
    let took = started.elapsed();
    assert_eq!(bed.writes_of(&map_a()), 2, "written, then restored once");
    bed.assert_guards_apply(&map_a()).await;
    took
}

/// The ConfigMap is edited by hand while the operator is down (a valid map with every price
/// zeroed, gzip and digest annotation alike): it is never served, and is restored from the
/// source.
pub async fn configmap_tampered_while_the_operator_is_down() -> Duration {
    let mut bed = FaultBed::start("fault-cm-tampered", Answer::Map(map_a()), json!({})).await;
    bed.wait_converged(&map_a(), "the first sync").await;
    bed.kill_operator();
    let zeroed = zero_prices(&map_a());
    bed.tamper(&zeroed).await;
    bed.start_operator();
    let started = Instant::now();
    bed.wait_restored(&zeroed, "the restored map").await;
    let took = started.elapsed();
    bed.wait_converged(&map_a(), "the restored map").await;
    bed.assert_guards_apply(&map_a()).await;
    took
}

/// A first sync of map A, then, while the operator is down, its ConfigMap tampered with
/// (prices zeroed) and the source failing; the operator started again. Returns the bed, the
/// tampered bytes and the source's request count before the start.
async fn tampered_with_a_failing_source(
    name: &str,
    spec: serde_json::Value,
) -> (FaultBed, Vec<u8>, usize) {
    let mut bed = FaultBed::start(name, Answer::Map(map_a()), spec).await;
    bed.wait_converged(&map_a(), "the first sync").await;
    bed.kill_operator();
    let zeroed = zero_prices(&map_a());
    bed.tamper(&zeroed).await;
    bed.source.set(Answer::Status(
        StatusCode::INTERNAL_SERVER_ERROR,
        Bytes::new(),
    ));
    let before = bed.source.received();
    bed.start_operator();
    (bed, zeroed, before)
}

/// The same while the source fails, with the history ring: the last good map is read back
/// from its history ConfigMap and restored at once, without a request to the source.
pub async fn configmap_tampered_while_the_source_fails_is_restored_from_history() -> Duration {
    let (bed, zeroed, before) = tampered_with_a_failing_source("fault-cm-history", json!({})).await;
    let started = Instant::now();
    bed.wait_restored(&zeroed, "the map restored from history")
        .await;
    let took = started.elapsed();
    bed.wait_converged(&map_a(), "the restored map").await;
    assert_eq!(
        bed.source.received(),
        before,
        "the restore needs no request to the source"
    );
    bed.assert_guards_apply(&map_a()).await;
    took
}

/// The same without a history ring (`history: 0`): the tampered map is not served,
/// Ready=False says why, the restore waits for the retry backoff (counted from the end of
/// each attempt), and the first good answer restores the map.
pub async fn configmap_tampered_while_the_source_fails() -> Duration {
    let (bed, _, before) =
        tampered_with_a_failing_source("fault-cm-tampered-500", json!({"history": 0})).await;
    let failing = wait_ready(
        &bed.client,
        &bed.ns,
        "litellm",
        "False",
        Reason::FetchFailed,
    )
    .await;
    let message = ready_condition(&failing).unwrap().message;
    assert!(
        message.contains("does not hold the last good map") && message.contains("is not served"),
        "{message}"
    );
    assert_eq!(bed.served().await, None, "the tampered map is not served");
    // Three more attempts: each waits its backoff (1 s, 2 s, 4 s) after the one before.
    let attempts = retried_attempts(&bed, 3).await;
    assert_backoff(&attempts);
    assert_eq!(bed.served().await, None, "the tampered map is not served");
    assert!(
        bed.source.received() - before <= attempts.len() + 1,
        "one request per attempt"
    );
    bed.source.set(Answer::Map(map_a()));
    let recovered = Instant::now();
    bed.wait_converged(&map_a(), "the restored map").await;
    let took = recovered.elapsed();
    bed.assert_guards_apply(&map_a()).await;
    took
}

/// A source that answers 500 for several retries, then one that hangs: each retry waits its
/// backoff after the end of the attempt before (a hanging attempt lasts its timeout), one
/// request per attempt, and the first good answer ends it.
pub async fn source_failing_then_hanging() -> Duration {
    let bed = FaultBed::start(
        "fault-source",
        Answer::Map(map_a()),
        json!({"source": {"timeout": "2s"}}),
    )
    .await;
    bed.wait_converged(&map_a(), "the first sync").await;
    bed.source.set(Answer::Status(
        StatusCode::INTERNAL_SERVER_ERROR,
        Bytes::new(),
    ));
    let before = bed.source.received();
    bed.request_sync("refused").await;
    let refused = retried_attempts(&bed, 3).await;
    assert_backoff(&refused);
    assert!(
        bed.source.received() - before <= refused.len() + 1,
        "one request per attempt"
    );

    // A success ends the backoff.
    bed.source.set(Answer::Map(map_a()));
    bed.request_sync("answered").await;
    wait_ready(&bed.client, &bed.ns, "litellm", "True", Reason::Synced).await;

    bed.source.set(Answer::Delayed(
        Duration::from_secs(3600),
        Box::new(Answer::Map(map_b())),
    ));
    bed.request_sync("hanging").await;
    let hung = retried_attempts(&bed, 2).await;
    // Each attempt lasts its 2 s timeout, and the next waits its backoff (1 s, doubling)
    // after the end of it; whole seconds in status cost at most one of them.
    for (n, attempt) in hung.iter().enumerate() {
        let backoff = RETRY_BACKOFF_SECONDS << n;
        assert!(
            attempt.next_at - attempt.started_at >= 2 + backoff - 1,
            "nextSyncTime counts from the end of the attempt: {hung:?}"
        );
    }
    bed.source.set(Answer::Map(map_b()));
    let recovered = Instant::now();
    bed.wait_converged(&map_b(), "the new map once the source answers")
        .await;
    let took = recovered.elapsed();
    assert_eq!(bed.writes_of(&map_b()), 1);
    bed.assert_guards_apply(&map_b()).await;
    took
}

/// One failed attempt as status recorded it, in Unix seconds.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    started_at: i64,
    next_at: i64,
}

/// Waits for `count` further failed attempts (after the one status shows now, which may be
/// a requested one) and returns every attempt seen, first included.
async fn retried_attempts(bed: &FaultBed, count: usize) -> Vec<Attempt> {
    let seen = std::cell::RefCell::new(Vec::<Attempt>::new());
    eventually_within(
        &format!("{count} retries"),
        Duration::from_secs(60),
        || async {
            let status = bed.status().await;
            let ready = status
                .conditions
                .iter()
                .find(|c| c.type_ == ConditionType::Ready.as_str())?;
            let attempt = Attempt {
                started_at: status.last_attempt_time?.0.as_second(),
                next_at: status.next_sync_time?.0.as_second(),
            };
            let mut seen = seen.borrow_mut();
            if ready.status == "False"
                && seen
                    .last()
                    .is_none_or(|last| last.started_at != attempt.started_at)
            {
                seen.push(attempt);
            }
            (seen.len() > count).then(|| seen.clone())
        },
    )
    .await
}

/// Each retry starts no earlier than the one before planned, and the planned waits double.
fn assert_backoff(attempts: &[Attempt]) {
    for pair in attempts.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        assert!(
            after.started_at >= before.next_at,
            "an attempt came before its retry time: {attempts:?}"
        );
    }
    let waits: Vec<i64> = attempts.iter().map(|a| a.next_at - a.started_at).collect();
    assert!(
        waits.windows(2).all(|pair| pair[1] >= pair[0]),
        "the backoff does not shrink: {waits:?}"
    );
    assert!(
        *waits.last().unwrap() >= 4 * RETRY_BACKOFF_SECONDS,
        "the backoff grew: {waits:?}"
    );
}

/// `map` with every cost set to 0: valid JSON, the right model count, and free.
pub fn zero_prices(map: &[u8]) -> Vec<u8> {
    let mut parsed: serde_json::Value = serde_json::from_slice(map).unwrap();
    for entry in parsed.as_object_mut().unwrap().values_mut() {
        for (field, value) in entry.as_object_mut().unwrap().iter_mut() {
            if field.contains("cost") {
                *value = json!(0);
            }
        }
    }
    serde_json::to_vec_pretty(&parsed).unwrap()
}
