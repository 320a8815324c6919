//! The operator's HTTP server, on every replica: the map endpoint, metrics, health and
//! readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::http::access::{AccessMode, Asked, Reviewer, Verdict, bearer};
use crate::http::capability::{MapKeys, TOKEN_PARAMETER};
use crate::http::map_cache::{MapCache, MapKey};
use crate::http::maps::respond;
use crate::metrics::Metrics;

/// State shared by the handlers.
#[derive(Clone, Default)]
pub struct ServerState {
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    maps: MapCache,
    access: Access,
}

/// Who may read maps and metrics.
#[derive(Clone)]
pub struct Access {
    /// Who may read `/maps`.
    pub maps: AccessMode,
    /// Who may read `/metrics`.
    pub metrics: AccessMode,
    /// Reviews bearer tokens; without it, a token is never accepted.
    pub reviewer: Option<Reviewer>,
    /// Checks the tokens of `map-url`.
    pub keys: MapKeys,
}

impl Default for Access {
    /// Open to anyone: what tests and single-team set-ups that opt out get.
    fn default() -> Access {
        Access {
            maps: AccessMode::Open,
            metrics: AccessMode::Open,
            reviewer: None,
            keys: MapKeys::default(),
        }
    }
}

impl ServerState {
    /// State serving `metrics` and `maps` to anyone; see [`ServerState::with_access`].
    pub fn new(metrics: Arc<Metrics>, maps: MapCache) -> ServerState {
        ServerState {
            ready: Arc::default(),
            metrics,
            maps,
            access: Access::default(),
        }
    }

    /// The same state, serving maps and metrics only as `access` allows.
    pub fn with_access(self, access: Access) -> ServerState {
        ServerState { access, ..self }
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
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let key = MapKey {
        namespace,
        name,
        key,
    };
    let response = match state.may_read_map(&key, query.as_deref(), &headers).await {
        Ok(()) => respond(state.maps.get(&key).as_deref(), &method, &headers),
        Err(refused) => refused,
    };
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
    if state.ready.load(Ordering::Relaxed) && state.maps.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

impl ServerState {
    /// Whether the request may read the map of `key`: in token mode with the object's
    /// capability, or a bearer token whose identity may get the target ConfigMap. A
    /// refusal is the same whether the object exists or not.
    async fn may_read_map(
        &self,
        key: &MapKey,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(), Response> {
        if self.access.maps == AccessMode::Open {
            return Ok(());
        }
        let capability = query.and_then(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == TOKEN_PARAMETER)
                .map(|(_, value)| value.into_owned())
        });
        if let Some(token) = &capability
            && self.access.keys.verify(&key.namespace, &key.name, token)
        {
            return Ok(());
        }
        if bearer(headers).is_none() && capability.is_some() {
            return Err(refused(Verdict::Forbidden));
        }
        // Unknown objects are asked about as if their target had the object's name, the
        // default: no answer tells whether the object exists.
        let target = self
            .maps
            .target_of(&key.namespace, &key.name)
            .unwrap_or_else(|| key.name.clone());
        self.review(
            headers,
            &Asked::ConfigMap {
                namespace: key.namespace.clone(),
                name: target,
            },
        )
        .await
    }

    /// Whether the bearer token of `headers` may read `asked`.
    async fn review(&self, headers: &HeaderMap, asked: &Asked) -> Result<(), Response> {
        let Some(token) = bearer(headers) else {
            return Err(refused(Verdict::Unauthenticated));
        };
        let verdict = match &self.access.reviewer {
            Some(reviewer) => reviewer.review(token, asked).await,
            None => Verdict::Unavailable,
        };
        match verdict {
            Verdict::Allowed => Ok(()),
            refusal => Err(refused(refusal)),
        }
    }
}

/// The answer to a request refused for `verdict`: no body but the reason.
fn refused(verdict: Verdict) -> Response {
    match verdict {
        Verdict::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a Kubernetes bearer token or the map-url token is needed\n",
        )
            .into_response(),
        Verdict::Forbidden | Verdict::Allowed => {
            (StatusCode::FORBIDDEN, "forbidden\n").into_response()
        }
        Verdict::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the API server could not review the token\n",
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<ServerState>, headers: HeaderMap) -> Response {
    if state.access.metrics == AccessMode::Token
        && let Err(refused) = state
            .review(&headers, &Asked::Path("/metrics".to_owned()))
            .await
    {
        return refused;
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
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
