//! The operator's HTTP server, on every replica: the map endpoint, metrics, health and
//! readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::http::map_cache::{MapCache, MapKey};
use crate::http::maps::respond;
use crate::metrics::Metrics;

/// State shared by the handlers.
#[derive(Clone, Default)]
pub struct ServerState {
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    maps: MapCache,
}

impl ServerState {
    /// State serving `metrics`.
    pub fn new(metrics: Arc<Metrics>, maps: MapCache) -> ServerState {
        ServerState {
            ready: Arc::default(),
            metrics,
            maps,
        }
    }

    /// Marks the operator ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// The routes.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/maps/{namespace}/{name}/{key}", get(map))
        .with_state(state)
}

/// `GET`/`HEAD /maps/{namespace}/{name}/{key}`: the last good map of a ModelCostMapSync.
async fn map(
    State(state): State<ServerState>,
    Path((namespace, name, key)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let map = state.maps.get(&MapKey {
        namespace,
        name,
        key,
    });
    let response = respond(map.as_deref(), &method, &headers);
    let gzip = response.headers().contains_key(header::CONTENT_ENCODING);
    let body_bytes = match method {
        Method::HEAD => 0,
        _ => response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse().ok())
            .unwrap_or(0),
    };
    state
        .metrics
        .count_map_request(response.status().as_u16(), gzip, body_bytes);
    response
}

/// Ready once the operator runs and its map cache watches the cluster: a replica whose
/// watches fail would serve maps it cannot tell are current.
async fn readyz(State(state): State<ServerState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) && state.maps.is_watching() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(state): State<ServerState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Serves until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: ServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
