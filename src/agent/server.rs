//! The agent's HTTP server: the map at `/<key>` (the operator's own handler), health,
//! readiness, and `/status`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::http::maps::{ServedMap, respond};

/// What `GET /status` reports: what is served and why the last file was not.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `sha256:<hex>` of the map served, if any.
    pub digest: Option<String>,
    /// Its model count.
    pub models: Option<usize>,
    /// The file it came from.
    pub file: Option<PathBuf>,
    /// How many times the directory was looked at.
    pub checks: u64,
    /// `sha256:<hex>` of the raw file last decoded (gzip or plain), valid or not.
    pub last_file_digest: Option<String>,
    /// Why the last file was refused, while the refusal stands.
    pub last_problem: Option<String>,
    /// How the last reload ended.
    pub last_reload: Option<String>,
    /// With `--verify-with`: the digests the ModelCostMapSync's status names.
    pub named: Option<Vec<String>>,
}

/// What the HTTP handlers see.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    key: Arc<str>,
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    pub(super) map: Option<Arc<ServedMap>>,
    pub(super) status: Status,
}

impl Shared {
    pub(super) fn new(key: &str) -> Shared {
        Shared {
            key: Arc::from(key),
            inner: Arc::default(),
        }
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut Inner)) {
        // A panic while holding the lock cannot leave Inner half-updated in a harmful way:
        // every field is replaced whole.
        change(&mut crate::locks::write(&self.inner));
    }

    pub(super) fn read<T>(&self, read: impl FnOnce(&Inner) -> T) -> T {
        read(&crate::locks::read(&self.inner))
    }
}

pub(super) fn router(shared: Shared) -> Router {
    let map_path = format!("/{}", shared.key);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route(&map_path, get(map))
        .with_state(shared)
}

/// Health and readiness alone: what the kubelet probes on the pod IP, with no map.
pub(super) fn probe_router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

/// `GET`/`HEAD /<key>`: the map, exactly as the operator serves it.
async fn map(State(shared): State<Shared>, method: Method, headers: HeaderMap) -> Response {
    let map = shared.read(|inner| inner.map.clone());
    respond(map.as_deref(), &method, &headers)
}

/// Ready once a valid map is served: the proxy must not start before it can fetch one.
async fn readyz(State(shared): State<Shared>) -> (StatusCode, &'static str) {
    if shared.read(|inner| inner.map.is_some()) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no valid map yet")
    }
}

async fn status(State(shared): State<Shared>) -> Response {
    axum::Json(shared.read(|inner| inner.status.clone())).into_response()
}
