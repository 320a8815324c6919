//! A stand-in for a LiteLLM proxy that behaves as LiteLLM's code does (litellm 1.108
//! `proxy_server.py`), for tests that need many of them or need to see their requests:
//!
//! - at start (and at each [`StandIn::restart`]) it loads the map from its
//!   `LITELLM_MODEL_COST_MAP_URL`;
//! - `POST /reload/model_cost_map` needs `Authorization: Bearer <master key>` (else 401);
//!   without a database it answers 500 `{"detail": "Database connection not available"}`,
//!   with one it re-fetches the map (502 when that fails, keeping the old one);
//! - `GET /model/cost_map/source` (admin key) reports the git blob id of the bytes it loaded
//!   as `source_revision`, and `model_count`.
//!
//! The real proxy is exercised by `tests/litellm.rs`; this one runs on any listener, including
//! one inside a [`testenv::TestHost`] (a stand-in pod IP).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use costmap_operator::digest::git_blob_id;
use serde_json::json;

/// One request the stand-in received.
#[derive(Clone, Debug)]
pub struct ProxyRequest {
    pub method: Method,
    pub path: String,
    pub authorization: Option<String>,
}

/// A running stand-in proxy.
#[derive(Clone)]
pub struct StandIn {
    /// Its base URL, `http://ADDR:PORT`.
    pub url: String,
    state: Arc<ProxyState>,
}

struct ProxyState {
    master_key: String,
    map_url: String,
    database: bool,
    /// git blob id and model count of the map loaded, None: the bundled copy.
    loaded: Mutex<Option<(String, usize)>>,
    requests: Mutex<Vec<ProxyRequest>>,
    http: reqwest::Client,
    /// While true, reload calls wait (a proxy whose reload takes its time).
    hold_reloads: tokio::sync::watch::Sender<bool>,
    /// While true, reload calls answer success but keep the map (a broken canary).
    ignore_reloads: std::sync::atomic::AtomicBool,
}

impl StandIn {
    /// Starts a proxy on `listener` that loads its map from `map_url`; `database` says
    /// whether it can reload in place.
    pub async fn start(
        listener: std::net::TcpListener,
        map_url: &str,
        master_key: &str,
        database: bool,
    ) -> StandIn {
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(ProxyState {
            master_key: master_key.to_owned(),
            map_url: map_url.to_owned(),
            database,
            loaded: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            http: reqwest::Client::new(),
            hold_reloads: tokio::sync::watch::Sender::new(false),
            ignore_reloads: std::sync::atomic::AtomicBool::new(false),
        });
        super::serve(
            listener,
            Router::new().fallback(handle).with_state(state.clone()),
        );
        let proxy = StandIn { url, state };
        proxy.restart().await;
        proxy
    }

    /// Loads the map again, as a restarted pod would. A failed fetch keeps the bundled copy.
    pub async fn restart(&self) {
        let loaded = fetch(&self.state).await.ok();
        *self.state.loaded.lock().unwrap() = loaded;
    }

    /// The git blob id of the map it serves; None for the bundled copy.
    pub fn revision(&self) -> Option<String> {
        self.state
            .loaded
            .lock()
            .unwrap()
            .as_ref()
            .map(|(id, _)| id.clone())
    }

    /// Every request it received, in order.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Makes reload calls wait (true) until released (false): a reload that takes long keeps
    /// the operator between its ConfigMap write and its status write.
    pub fn hold_reloads(&self, hold: bool) {
        self.state.hold_reloads.send_replace(hold);
    }

    /// Makes reload calls answer success without loading anything (true), until false: a
    /// proxy that stays on its map whatever it is told.
    pub fn ignore_reloads(&self, ignore: bool) {
        self.state
            .ignore_reloads
            .store(ignore, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many reload calls it received.
    pub fn reloads(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path == "/reload/model_cost_map")
            .count()
    }
}

/// The map at the proxy's map URL: (git blob id, model count).
async fn fetch(state: &ProxyState) -> Result<(String, usize), String> {
    let response = state
        .http
        .get(&state.map_url)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    Ok((git_blob_id(&bytes), map.len()))
}

/// Every request: recorded, authenticated as LiteLLM's `user_api_key_auth` does for the
/// master key (401 without the right Bearer token), then routed.
async fn handle(
    State(state): State<Arc<ProxyState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.requests.lock().unwrap().push(ProxyRequest {
        method: method.clone(),
        path: uri.path().to_owned(),
        authorization: authorization.clone(),
    });
    let route = (method, uri.path());
    if !matches!(
        route,
        (Method::POST, "/reload/model_cost_map") | (Method::GET, "/model/cost_map/source")
    ) {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"detail": "Not Found"})),
        )
            .into_response();
    }
    if authorization != Some(format!("Bearer {}", state.master_key)) {
        let error = json!({"error": {"message": "Authentication Error, Invalid proxy server token passed"}});
        return (StatusCode::UNAUTHORIZED, axum::Json(error)).into_response();
    }
    if route.0 == Method::POST {
        reload(&state).await
    } else {
        source(&state)
    }
}

async fn reload(state: &ProxyState) -> Response {
    let _ = state.hold_reloads.subscribe().wait_for(|held| !*held).await;
    if !state.database {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"detail": "Database connection not available"})),
        )
            .into_response();
    }
    if state
        .ignore_reloads
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return axum::Json(json!({"status": "success"})).into_response();
    }
    match fetch(state).await {
        Ok((revision, models)) => {
            *state.loaded.lock().unwrap() = Some((revision, models));
            axum::Json(json!({"status": "success", "models_count": models})).into_response()
        }
        Err(reason) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"detail": format!("Failed to reload model cost map: {reason}. Current pricing data was kept.")})),
        )
            .into_response(),
    }
}

fn source(state: &ProxyState) -> Response {
    let loaded = state.loaded.lock().unwrap().clone();
    let body = match loaded {
        Some((revision, models)) => json!({
            "source": "remote", "url": state.map_url, "is_env_forced": false,
            "fallback_reason": null, "source_revision": revision, "model_count": models,
        }),
        None => json!({
            "source": "local", "url": state.map_url, "is_env_forced": false,
            "fallback_reason": "fetch failed", "source_revision": "bundled", "model_count": 4878,
        }),
    };
    axum::Json(body).into_response()
}
