//! The core's decisions (what to fetch, when to write, what to adopt), with the API calls
//! behind a [`Destination`] that records instead of writing, and a real HTTP source on
//! loopback. The same decisions run against the real control plane, for both kinds, in
//! `tests/kinds.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use serde_json::json;

use super::destination::{AppliedStatus, PutBack};
use super::{Destination, Reconciler};
use crate::api::{
    Artifact, EventReason, HistoryEntry, ModelCostMapSync, ModelCostMapSyncStatus, Reason,
};
use crate::controller::conditions;
use crate::controller::context::{Context, Error, Settings};
use crate::controller::object::Object;
use crate::controller::status::Notice;
use crate::digest::{git_blob_id, sha256_digest};
use crate::layout::MapIdentity;
use crate::layout::gzip::StoredMap;
use crate::sync::SyncError;
use crate::sync::fetch::{FetchPolicy, Fetcher};
use crate::sync::validate::tests::sample_map;

/// What the recording destination saw.
#[derive(Default)]
struct Record {
    /// The map the one place holds.
    held: Option<StoredMap>,
    /// Digests of the maps written, in order.
    writes: Vec<String>,
    /// Maps put back where they were missing.
    put_back: usize,
    statuses: Vec<ModelCostMapSyncStatus>,
    events: Vec<Notice>,
    /// The API server refuses a status that records a map as pending.
    refuse_pending: bool,
}

/// One place, in memory.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Record>>);

impl Recorded {
    fn holding(map: &[u8]) -> Recorded {
        let recorded = Recorded::default();
        recorded.lock().held = Some(StoredMap::from_bytes(map.to_vec()));
        recorded
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.0.lock().unwrap()
    }

    fn last_status(&self) -> ModelCostMapSyncStatus {
        self.lock()
            .statuses
            .last()
            .cloned()
            .expect("a status written")
    }

    fn event_reasons(&self) -> Vec<EventReason> {
        self.lock().events.iter().map(|e| e.reason).collect()
    }
}

impl Destination for Recorded {
    async fn look(&mut self, _expected: Option<&MapIdentity>) -> Result<(), Error> {
        Ok(())
    }

    async fn read_back(&self, digest: &str, _history: &[HistoryEntry]) -> Option<StoredMap> {
        self.lock()
            .held
            .clone()
            .filter(|map| map.digest() == digest)
    }

    fn unvouched(&self) -> Option<String> {
        self.lock().held.as_ref().map(StoredMap::digest)
    }

    async fn converge(
        &mut self,
        map: &StoredMap,
        _identity: &MapIdentity,
    ) -> Result<Option<PutBack>, SyncError> {
        let mut record = self.lock();
        if record.held.as_ref() == Some(map) {
            return Ok(None);
        }
        let deleted = record.held.is_none();
        record.held = Some(map.clone());
        record.put_back += 1;
        Ok(Some(PutBack {
            config_map: "litellm".into(),
            deleted,
        }))
    }

    async fn write_new(
        &mut self,
        map: &StoredMap,
        _identity: &MapIdentity,
    ) -> Result<(), SyncError> {
        let mut record = self.lock();
        record.writes.push(map.digest());
        record.held = Some(map.clone());
        Ok(())
    }

    async fn write_status(
        &self,
        status: ModelCostMapSyncStatus,
    ) -> Result<Option<AppliedStatus>, kube::Error> {
        let mut record = self.lock();
        if record.refuse_pending && status.pending_artifact.is_some() {
            return Err(kube::Error::Api(
                kube::core::Status::failure("denied by an admission policy", "Invalid")
                    .with_code(422)
                    .boxed(),
            ));
        }
        record.statuses.push(status.clone());
        Ok(Some(AppliedStatus {
            status,
            version: Some(record.statuses.len().to_string()),
        }))
    }

    async fn record(&self, notice: Notice) {
        self.lock().events.push(notice);
    }
}

/// A source on loopback: the map with an ETag of its digest, 304 on a matching
/// If-None-Match; it records the If-None-Match of each request.
#[derive(Clone)]
struct Source {
    url: String,
    state: Arc<SourceState>,
}

struct SourceState {
    answer: Mutex<Option<Vec<u8>>>,
    asked: Mutex<Vec<Option<String>>>,
}

impl Source {
    async fn serving(map: Option<&[u8]>) -> Source {
        let state = Arc::new(SourceState {
            answer: Mutex::new(map.map(<[u8]>::to_vec)),
            asked: Mutex::default(),
        });
        let app = Router::new()
            .route("/map.json", get(answer))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/map.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Source { url, state }
    }

    /// The If-None-Match of each request so far.
    fn asked(&self) -> Vec<Option<String>> {
        self.state.asked.lock().unwrap().clone()
    }
}

async fn answer(State(state): State<Arc<SourceState>>, headers: HeaderMap) -> Response {
    let validator = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.asked.lock().unwrap().push(validator.clone());
    let Some(body) = state.answer.lock().unwrap().clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    };
    let etag = etag_of(&body);
    if validator.as_deref() == Some(etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (StatusCode::OK, [(header::ETAG, etag)], body).into_response()
}

fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", sha256_digest(body))
}

fn map_of(models: usize) -> Vec<u8> {
    sample_map(models).to_string().into_bytes()
}

fn context() -> Context {
    // No test here reaches the API server: every call goes through the destination.
    let client =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    let fetcher = Fetcher::new(FetchPolicy {
        max_attempts: 1,
        // The test sources listen on loopback.
        allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
        ..FetchPolicy::default()
    })
    .unwrap();
    let settings = Settings {
        namespaces: Vec::new(),
        instance: None,
        metrics: Arc::default(),
        proxies: crate::litellm::ProxyClient::new(crate::litellm::ProxyClientConfig::default())
            .unwrap(),
        maps: crate::http::map_cache::MapCache::default(),
        concurrent_syncs: 1,
        retry_backoff: Duration::from_secs(30),
        min_sync_gap: Duration::ZERO,
        map_keys: Default::default(),
    };
    Context::new(client, fetcher, settings)
}

/// An object on `source` at `generation`, with `status` (observed at generation 1).
fn object(
    source: &Source,
    generation: i64,
    spec: serde_json::Value,
    status: Option<ModelCostMapSyncStatus>,
) -> ModelCostMapSync {
    let mut spec_json = json!({"source": {"url": source.url}});
    if let (Some(base), Some(extra)) = (spec_json.as_object_mut(), spec.as_object()) {
        base.extend(extra.clone());
    }
    let mut sync: ModelCostMapSync = serde_json::from_value(json!({
        "apiVersion": "costmap.dev/v1alpha1",
        "kind": "ModelCostMapSync",
        "metadata": {"name": "litellm", "namespace": "llm", "uid": "uid-1",
                     "generation": generation, "resourceVersion": "100"},
        "spec": spec_json,
    }))
    .unwrap();
    sync.status = status;
    sync
}

/// The status of a map `bytes` synced at generation 1, with its ETag as the revision.
fn synced(bytes: &[u8]) -> ModelCostMapSyncStatus {
    let models = sample_map_models(bytes);
    let mut status = ModelCostMapSyncStatus {
        observed_generation: Some(1),
        last_attempt_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        last_sync_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        next_sync_time: Some(Time(
            k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(1),
        )),
        artifact: Some(artifact(bytes, models)),
        ..ModelCostMapSyncStatus::default()
    };
    conditions::set_condition(
        &mut status.conditions,
        conditions::ready(
            true,
            Reason::Synced,
            "synced".into(),
            Some(1),
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
    );
    status
}

fn artifact(bytes: &[u8], models: i32) -> Artifact {
    Artifact {
        digest: sha256_digest(bytes),
        git_blob_id: git_blob_id(bytes),
        revision: Some(etag_of(bytes)),
        size: bytes.len() as i64,
        models,
        last_update_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

fn sample_map_models(bytes: &[u8]) -> i32 {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    value.as_object().unwrap().len() as i32 - 1
}

async fn reconcile(
    context: &Context,
    sync: &ModelCostMapSync,
    destination: &Recorded,
) -> Result<Action, Error> {
    let object = Object::of(sync).unwrap();
    Reconciler::new(object, context, destination.clone())
        .reconcile()
        .await
}

fn ready(status: &ModelCostMapSyncStatus) -> (String, String, String) {
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    (
        ready.status.clone(),
        ready.reason.clone(),
        ready.message.clone(),
    )
}

#[tokio::test]
async fn a_first_sync_records_the_map_as_pending_then_writes_it() {
    let map = map_of(60);
    let source = Source::serving(Some(&map)).await;
    let place = Recorded::default();
    let sync = object(&source, 1, json!({}), None);
    reconcile(&context(), &sync, &place).await.unwrap();

    assert_eq!(source.asked(), [None], "one unconditional GET");
    let record = place.lock();
    assert_eq!(record.writes, [sha256_digest(&map)]);
    let [reconciling, pending, last] = record.statuses.as_slice() else {
        panic!("three status writes: {:?}", record.statuses.len());
    };
    let says_reconciling = |status: &ModelCostMapSyncStatus| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Reconciling" && c.status == "True" && c.reason == "FirstSync")
    };
    assert!(
        says_reconciling(reconciling),
        "Reconciling before the fetch"
    );
    assert!(says_reconciling(pending), "and while the map is written");
    assert!(
        !last.conditions.iter().any(|c| c.type_ == "Reconciling"),
        "not after it"
    );
    assert_eq!(
        pending.pending_artifact.as_ref().map(|a| &a.digest),
        Some(&sha256_digest(&map)),
        "recorded as pending before the write"
    );
    assert_eq!(last.artifact.as_ref().unwrap().models, 60);
    assert_eq!(last.pending_artifact, None);
    assert_eq!(ready(last).1, "Synced");
    drop(record);
    assert_eq!(place.event_reasons(), [EventReason::MapSynced]);
}

#[tokio::test]
async fn an_unchanged_source_answers_304_to_the_revision_and_nothing_is_written() {
    let map = map_of(60);
    let source = Source::serving(Some(&map)).await;
    let place = Recorded::holding(&map);
    let status = synced(&map);
    // A requested sync: the interval has not passed.
    let mut sync = object(&source, 1, json!({}), Some(status));
    sync.metadata.annotations =
        Some([("costmap.dev/sync-requested-at".to_owned(), "now".to_owned())].into());
    reconcile(&context(), &sync, &place).await.unwrap();

    assert_eq!(source.asked(), [Some(etag_of(&map))], "a conditional GET");
    assert!(place.lock().writes.is_empty());
    assert_eq!(place.lock().put_back, 0);
    let status = place.last_status();
    assert!(
        ready(&status).2.ends_with("(unchanged)"),
        "{:?}",
        ready(&status)
    );
    assert_eq!(status.last_handled_sync_request.as_deref(), Some("now"));
}

#[tokio::test]
async fn a_new_spec_asks_the_source_without_a_validator() {
    let map = map_of(60);
    let source = Source::serving(Some(&map)).await;
    let place = Recorded::holding(&map);
    // Generation 2, status observed at 1: the spec changed (it may name another source).
    let sync = object(&source, 2, json!({}), Some(synced(&map)));
    reconcile(&context(), &sync, &place).await.unwrap();

    assert_eq!(source.asked(), [None]);
    assert!(
        place.lock().writes.is_empty(),
        "the same bytes: nothing to write"
    );
    assert_eq!(place.last_status().observed_generation, Some(2));
}

#[tokio::test]
async fn a_pending_map_a_place_holds_is_adopted_without_a_fetch() {
    let (before, new) = (map_of(60), map_of(61));
    let source = Source::serving(None).await;
    let place = Recorded::holding(&new);
    let mut status = synced(&before);
    status.pending_artifact = Some(artifact(&new, 61));
    let sync = object(&source, 1, json!({}), Some(status));
    let action = reconcile(&context(), &sync, &place).await.unwrap();

    assert_eq!(action, Action::requeue(Duration::ZERO));
    assert!(source.asked().is_empty(), "nothing fetched");
    assert!(place.lock().writes.is_empty(), "nothing written");
    let status = place.last_status();
    assert_eq!(status.artifact.unwrap().digest, sha256_digest(&new));
    assert_eq!(status.pending_artifact, None);
    let events = place.lock().events.clone();
    assert!(
        events[0]
            .note
            .contains("interrupted by an operator restart"),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_pending_map_no_place_holds_is_not_adopted() {
    let (before, new) = (map_of(60), map_of(61));
    let source = Source::serving(Some(&before)).await;
    let place = Recorded::holding(&before);
    let mut status = synced(&before);
    status.pending_artifact = Some(artifact(&new, 61));
    // Due: the interval has passed.
    status.next_sync_time = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let sync = object(&source, 1, json!({}), Some(status));
    reconcile(&context(), &sync, &place).await.unwrap();

    let status = place.last_status();
    assert_eq!(status.artifact.unwrap().digest, sha256_digest(&before));
    assert_eq!(status.pending_artifact, None, "dropped by the attempt");
    assert_eq!(source.asked().len(), 1, "the usual sync ran");
}

#[tokio::test]
async fn after_a_lost_last_good_map_only_its_count_guards_the_next_one() {
    let (lost, shrunk, grown) = (map_of(200), map_of(80), map_of(201));
    let source = Source::serving(Some(&shrunk)).await;
    // Status names a map that no place and no memory holds.
    let place = Recorded::default();
    let sync = object(&source, 1, json!({}), Some(synced(&lost)));
    let context = context();
    reconcile(&context, &sync, &place).await.unwrap();

    let status = place.last_status();
    let (ready_status, reason, message) = ready(&status);
    assert_eq!(
        (ready_status.as_str(), reason.as_str()),
        ("False", "ShrinkGuard")
    );
    assert!(
        message.contains("no longer in the cluster, so only its count is known"),
        "{message}"
    );
    assert!(place.lock().writes.is_empty(), "refused, not written");
    assert!(
        place
            .lock()
            .statuses
            .iter()
            .all(|s| s.pending_artifact.is_none()),
        "never recorded as pending"
    );

    // A map that keeps the count is accepted and written (by an operator that has not
    // failed yet: this one waits for its retry).
    *source.state.answer.lock().unwrap() = Some(grown.clone());
    let sync = object(&source, 1, json!({}), Some(synced(&lost)));
    let place = Recorded::default();
    reconcile(&self::context(), &sync, &place).await.unwrap();
    assert_eq!(place.lock().writes, [sha256_digest(&grown)]);
}

#[tokio::test]
async fn a_refused_pending_status_write_fails_the_sync_and_writes_nothing() {
    let (before, new) = (map_of(60), map_of(61));
    let source = Source::serving(Some(&new)).await;
    let place = Recorded::holding(&before);
    place.lock().refuse_pending = true;
    let mut status = synced(&before);
    status.next_sync_time = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let sync = object(&source, 1, json!({}), Some(status));
    let action = reconcile(&context(), &sync, &place).await;

    assert!(
        action.is_ok(),
        "recorded in status, not retried as an error"
    );
    let status = place.last_status();
    let (ready_status, reason, message) = ready(&status);
    assert_eq!(
        (ready_status.as_str(), reason.as_str()),
        ("False", "WriteFailed")
    );
    assert!(message.contains("writing status"), "{message}");
    assert_eq!(status.artifact.unwrap().digest, sha256_digest(&before));
    assert!(place.lock().writes.is_empty());
}

#[tokio::test]
async fn between_syncs_a_place_that_lost_the_map_gets_it_back_from_memory() {
    let map = map_of(60);
    let source = Source::serving(Some(&map)).await;
    let context = context();
    let place = Recorded::default();
    reconcile(&context, &object(&source, 1, json!({}), None), &place)
        .await
        .unwrap();
    let written = place.last_status();
    assert_eq!(source.asked().len(), 1);

    // The ConfigMap is deleted; the next reconcile comes before the interval is over.
    place.lock().held = None;
    let sync = object(&source, 1, json!({}), Some(written));
    let action = reconcile(&context, &sync, &place).await.unwrap();
    assert!(matches!(action, a if a != Action::await_change()));
    assert_eq!(source.asked().len(), 1, "not fetched again");
    assert_eq!(place.lock().put_back, 1);
    assert_eq!(
        place.lock().held.as_ref().map(StoredMap::digest),
        Some(sha256_digest(&map))
    );
    assert_eq!(
        place.event_reasons().last(),
        Some(&EventReason::Recreated),
        "announced"
    );
}

#[tokio::test]
async fn a_suspended_object_fetches_nothing() {
    let map = map_of(60);
    let source = Source::serving(Some(&map)).await;
    let place = Recorded::holding(&map);
    let mut sync = object(&source, 1, json!({"suspend": true}), Some(synced(&map)));
    sync.metadata.annotations =
        Some([("costmap.dev/sync-requested-at".to_owned(), "now".to_owned())].into());
    let action = reconcile(&context(), &sync, &place).await.unwrap();

    assert_eq!(action, Action::await_change());
    assert!(source.asked().is_empty());
    let status = place.last_status();
    assert_eq!(ready(&status).1, "Suspended");
    assert_eq!(status.next_sync_time, None);
    assert_eq!(status.last_handled_sync_request, None);
}

#[tokio::test]
async fn an_invalid_spec_is_said_once_and_nothing_is_fetched() {
    let map = map_of(60);
    let source = Source::serving(Some(&map)).await;
    let place = Recorded::default();
    let context = context();
    let sync = object(&source, 1, json!({"interval": "30s"}), None);
    let action = reconcile(&context, &sync, &place).await.unwrap();

    assert_eq!(action, Action::await_change());
    assert!(source.asked().is_empty());
    let status = place.last_status();
    assert_eq!(ready(&status).1, "InvalidSpec");
    // Said: the next reconcile of the same generation writes nothing.
    let sync = object(&source, 1, json!({"interval": "30s"}), Some(status));
    reconcile(&context, &sync, &place).await.unwrap();
    assert_eq!(place.lock().statuses.len(), 1);
}

#[tokio::test]
async fn a_cluster_object_reads_nothing_of_a_namespace() {
    let map = map_of(60);
    let source = Source::serving(Some(&map)).await;
    // What the schema and the cluster destination refuse, reaching the core anyway: the
    // core reads no namespace's ConfigMaps or Secrets for an object that has none.
    let sync: crate::api::ClusterModelCostMapSync = serde_json::from_value(json!({
        "apiVersion": "costmap.dev/v1alpha1",
        "kind": "ClusterModelCostMapSync",
        "metadata": {"name": "everywhere", "uid": "uid-2", "generation": 1},
        "spec": {
            "source": {"url": source.url},
            "overrides": {"configMapRefs": [{"name": "negotiated-rates"}]},
            "namespaceSelector": {},
        },
    }))
    .unwrap();
    let place = Recorded::default();
    let object = Object::of(&sync).unwrap();
    Reconciler::new(object, &context(), place.clone())
        .reconcile()
        .await
        .unwrap();

    let status = place.last_status();
    let (ready_status, reason, message) = ready(&status);
    assert_eq!(
        (ready_status.as_str(), reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(message.contains("overrides.configMapRefs"), "{message}");
    assert!(source.asked().is_empty(), "nothing fetched");
    assert!(place.lock().writes.is_empty());
}

#[tokio::test]
async fn a_new_map_leaves_what_it_repriced_for_a_namespaced_object_s_proxies_only() {
    let before = map_of(60);
    let mut moved = sample_map(60);
    moved["model-3"]["input_cost_per_token"] = json!(3e-6);
    let after = moved.to_string().into_bytes();
    let source = Source::serving(Some(&after)).await;
    let context = context();
    let requested = |annotations: &mut Option<std::collections::BTreeMap<String, String>>| {
        *annotations =
            Some([("costmap.dev/sync-requested-at".to_owned(), "now".to_owned())].into());
    };
    let mut sync = object(&source, 1, json!({}), Some(synced(&before)));
    requested(&mut sync.metadata.annotations);
    let place = Recorded::holding(&before);
    reconcile(&context, &sync, &place).await.unwrap();
    assert_eq!(place.lock().writes, [sha256_digest(&after)], "synced");
    let key = Object::of(&sync).unwrap().key;
    let last = context
        .memory
        .read(&key, |m| m.repricing.clone())
        .flatten()
        .expect("the moved prices, kept for the proxies");
    assert_eq!(last.before, Some(git_blob_id(&before)));
    assert_eq!(last.after, git_blob_id(&after));
    assert_eq!(last.prices.len(), 1);
    let move_ = &last.prices.moves("model-3")[0];
    assert_eq!((move_.from, move_.to), (Some(1.5e-6), Some(3e-6)));

    // The same change to a cluster object, whose spec names no proxies: nothing kept.
    let mut cluster: crate::api::ClusterModelCostMapSync = serde_json::from_value(json!({
        "apiVersion": "costmap.dev/v1alpha1",
        "kind": "ClusterModelCostMapSync",
        "metadata": {"name": "everywhere", "uid": "uid-2", "generation": 1},
        "spec": {"source": {"url": source.url}, "namespaceSelector": {}},
    }))
    .unwrap();
    cluster.status = Some(crate::api::ClusterModelCostMapSyncStatus {
        sync: synced(&before),
        ..Default::default()
    });
    requested(&mut cluster.metadata.annotations);
    let place = Recorded::holding(&before);
    let object = Object::of(&cluster).unwrap();
    let key = object.key.clone();
    Reconciler::new(object, &context, place.clone())
        .reconcile()
        .await
        .unwrap();
    assert_eq!(place.lock().writes, [sha256_digest(&after)], "synced");
    assert!(
        context
            .memory
            .read(&key, |m| m.repricing.is_none())
            .unwrap_or(true)
    );
}
