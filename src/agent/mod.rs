//! The `agent` subcommand: the in-pod sidecar for LiteLLM proxies that mount the map's
//! ConfigMap as a directory (a projected volume of it and its chunk ConfigMaps, for a map
//! stored in chunks).
//!
//! A LiteLLM proxy never reads a mounted file, only `LITELLM_MODEL_COST_MAP_URL`. The agent
//! closes that gap: it serves the mounted map on `/<key>` (with the operator's own handler:
//! the stored gzip, ETag, 304), follows the kubelet's atomic `..data` swap with file-watch
//! events (and a periodic re-check as a safety net), and after each change that validates
//! it asks the proxy to re-fetch the map (`POST /reload/model_cost_map`).
//!
//! The pieces: [`files`] (pure: files to a validated map, and the state between two looks)
//! and, here, the thin async wiring of the file watch, the HTTP server and the reload calls.
//!
//! With `--verify-with`, the agent also watches the ModelCostMapSync that writes the
//! ConfigMap and serves only a map whose digest its status names: anyone who can edit the
//! ConfigMap can put any map in the mounted files, but only the operator writes status.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use url::Url;

use crate::litellm::{AdminKey, ProxyClient, ProxyClientConfig, ReloadOutcome};
use crate::sync::fetch::address::AddressPolicy;
use crate::sync::fetch::{sanitize_url, validate_source_url};
use crate::sync::validate::Rules;

mod files;
mod server;

pub use server::Status;
use server::{Shared, probe_router, router};

pub use files::{
    Checker, Encoding, LoadedMap, MapError, MapFile, Outcome, Unpacked, read_file, read_map, unpack,
};

/// The environment variable holding the proxy's admin key, as in the proxy itself.
pub const ADMIN_KEY_ENV: &str = "LITELLM_MASTER_KEY";
/// Default time between two re-checks of the directory when no event arrives.
pub const DEFAULT_RECHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Default timeout of one reload call. The proxy re-fetches the map from this agent, on the
/// same pod, during the call: seconds, not minutes.
pub const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// After a file event, further events within this time are taken as part of the same
/// change: a writer that is not the kubelet (no atomic swap) is read once it is done.
const SETTLE: Duration = Duration::from_millis(50);
/// A stream of events never delays a look at the directory by more than this.
const MAX_SETTLE: Duration = Duration::from_secs(1);
/// Everything `costmap-operator agent` is told.
#[derive(Debug, Clone)]
pub struct Config {
    /// The mounted ConfigMap directory.
    pub watch_dir: PathBuf,
    /// The map's key: the agent reads `<key>.gz` (else the chunks `<key>.gz.chunks` names,
    /// else `<key>`) and serves `/<key>`.
    pub key: String,
    /// Where to serve HTTP (used by [`run`]; [`run_on`] takes a bound listener).
    pub listen: SocketAddr,
    /// Where to serve health and readiness alone, for the kubelet's probes on the pod IP
    /// while the map stays on loopback.
    pub probe_listen: Option<SocketAddr>,
    /// The proxy to reload after each new map; none: serve only.
    pub reload: Option<ReloadConfig>,
    /// What a map must satisfy to be served.
    pub rules: Rules,
    /// Largest map accepted, in bytes, after decompression (and largest file read).
    pub max_map_bytes: u64,
    /// Time between two re-checks when no file event arrives.
    pub recheck_interval: Duration,
    /// Serve only maps that this ModelCostMapSync's status names; none: trust the files.
    pub verify: Option<Verify>,
}

/// The ModelCostMapSync whose status names the maps the agent may serve.
#[derive(Clone)]
pub struct Verify {
    /// A client allowed to get, list and watch it.
    pub client: kube::Client,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Debug for Verify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verify({}/{})", self.namespace, self.name)
    }
}

/// Reads `--verify-with`: `NAMESPACE/NAME`, or `NAME` (in `default_namespace`).
pub fn parse_verify_with(value: &str, default_namespace: &str) -> Result<(String, String), String> {
    let (namespace, name) = match value.split_once('/') {
        Some((namespace, name)) => (namespace, name),
        None => (default_namespace, value),
    };
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 253
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
    };
    if !valid(namespace) || !valid(name) {
        return Err(format!(
            "{value:?} is not NAMESPACE/NAME or NAME of a ModelCostMapSync"
        ));
    }
    Ok((namespace.to_owned(), name.to_owned()))
}

/// How to reach the proxy's reload endpoint.
#[derive(Debug, Clone)]
pub struct ReloadConfig {
    /// The full reload URL, e.g. `http://127.0.0.1:4000/reload/model_cost_map`.
    pub url: Url,
    /// The admin key, sent as `Authorization: Bearer`; none for a proxy without a master key.
    pub admin_key: Option<AdminKey>,
    /// Timeouts and retries of the call.
    pub client: ProxyClientConfig,
}

impl ReloadConfig {
    /// Three attempts of [`DEFAULT_RELOAD_TIMEOUT`] each, the first retry after half a second.
    pub fn new(url: Url, admin_key: Option<AdminKey>) -> ReloadConfig {
        ReloadConfig {
            url,
            admin_key,
            client: ProxyClientConfig {
                reload_timeout: DEFAULT_RELOAD_TIMEOUT,
                attempts: 3,
                min_backoff: Duration::from_millis(500),
                // The agent reaches the proxy of its own pod, on the URL its pod spec names.
                addresses: AddressPolicy::unrestricted(),
                ..ProxyClientConfig::default()
            },
        }
    }
}

/// The admin key from [`ADMIN_KEY_ENV`], if set and not empty.
pub fn admin_key_from_env() -> Result<Option<AdminKey>, AgentError> {
    match std::env::var(ADMIN_KEY_ENV) {
        Ok(key) => AdminKey::new(&key).map_err(|_| AgentError::InvalidAdminKey),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(AgentError::InvalidAdminKey),
    }
}

/// Checks a `--reload-url`: http(s) with a host.
pub fn parse_reload_url(url: &str) -> Result<Url, String> {
    validate_source_url(url).map_err(|err| err.to_string())
}

/// Checks a `--key`: a ConfigMap key (`[-._a-zA-Z0-9]+`, not `.` or `..`), so that it is a
/// file name in the mounted directory and a plain path segment for the router.
pub fn parse_key(key: &str) -> Result<String, String> {
    let charset_ok = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if key.is_empty() || key.len() > 253 || !charset_ok || key == "." || key == ".." {
        return Err(format!(
            "{key:?} is not a ConfigMap key (1-253 characters of [-._a-zA-Z0-9], not . or ..)"
        ));
    }
    if matches!(key, "healthz" | "readyz" | "status") {
        return Err(format!("{key:?} is one of the agent's own paths"));
    }
    Ok(key.to_owned())
}

/// Why the agent could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The listen address could not be bound.
    #[error("listening on {addr}: {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The directory could not be watched.
    #[error("watching {dir}: {error}")]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// Why.
        error: notify::Error,
    },
    /// The admin key cannot be sent in an HTTP header.
    #[error("{ADMIN_KEY_ENV} is not a valid HTTP header value")]
    InvalidAdminKey,
    /// The HTTP client for reloads could not be built.
    #[error("building the HTTP client for reloads: {0}")]
    Client(String),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

/// Calls the proxy's reload endpoint.
#[derive(Debug, Clone)]
struct Reloader {
    client: ProxyClient,
    url: String,
    admin_key: Option<AdminKey>,
    /// The URL as logged: no userinfo, no query.
    shown: String,
}

impl Reloader {
    fn new(config: ReloadConfig) -> Result<Reloader, AgentError> {
        let client =
            ProxyClient::new(config.client).map_err(|err| AgentError::Client(err.to_string()))?;
        Ok(Reloader {
            client,
            shown: sanitize_url(&config.url),
            url: config.url.to_string(),
            admin_key: config.admin_key,
        })
    }

    async fn reload(&self) -> ReloadOutcome {
        self.client.reload(&self.url, self.admin_key.as_ref()).await
    }
}

/// Runs the agent on `config.listen` until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|error| AgentError::Listen { addr, error })
    };
    let listener = bind(config.listen).await?;
    let probes = match config.probe_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    run_on(listener, probes, config, shutdown).await
}

/// Runs the agent on a bound listener until `shutdown` is cancelled.
pub async fn run_on(
    listener: TcpListener,
    probes: Option<TcpListener>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let reloader = config.reload.clone().map(Reloader::new).transpose()?;
    // Watch before the first look, so that no swap falls between the two.
    let changed = Arc::new(Notify::new());
    let _watcher = watch(&config.watch_dir, Arc::clone(&changed))?;

    let shared = Shared::new(&config.key);
    let serve = |listener: TcpListener, app: axum::Router| {
        let stop = shutdown.clone().cancelled_owned();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        })
    };
    let server = serve(listener, router(shared.clone()));
    // Ends with the shutdown like the main server; its errors only cost the probes.
    let _probe_server = probes.map(|probes| serve(probes, probe_router(shared.clone())));
    info!(
        watch_dir = %config.watch_dir.display(),
        key = %config.key,
        reload_url = reloader.as_ref().map(|r| r.shown.as_str()).unwrap_or("none"),
        admin_key = if config.reload.as_ref().is_some_and(|r| r.admin_key.is_some()) { "set" } else { "not set" },
        recheck_interval = ?config.recheck_interval,
        "agent started"
    );

    let mut checker = Checker::new(
        config.watch_dir.clone(),
        config.key.clone(),
        config.rules,
        config.max_map_bytes,
    );
    let (named_tx, mut named) = tokio::sync::watch::channel(Vec::new());
    let _status_watch = match &config.verify {
        Some(verify) => {
            info!(sync = %format!("{}/{}", verify.namespace, verify.name), "serving only maps this ModelCostMapSync's status names");
            checker.require_named(format!("{}/{}", verify.namespace, verify.name));
            shared.update(|inner| inner.status.named = Some(Vec::new()));
            Some(AbortOnDrop(tokio::spawn(watch_named(
                verify.clone(),
                named_tx,
            ))))
        }
        None => None,
    };
    let mut recheck = tokio::time::interval(config.recheck_interval);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reloading: Option<JoinHandle<()>> = None;
    loop {
        // The first tick is immediate: the initial look.
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = recheck.tick() => {}
            () = changed.notified() => settle(&changed).await,
            Ok(()) = named.changed(), if config.verify.is_some() => {
                let digests = named.borrow_and_update().clone();
                shared.update(|inner| inner.status.named = Some(digests.clone()));
                checker.set_named(digests);
            }
        }
        let outcome = checker.check();
        if matches!(outcome, Outcome::Serving { .. } | Outcome::Refused(_)) {
            crate::heap::release_freed_memory();
        }
        let new_map = handle(&outcome, &checker, &shared);
        shared.update(|inner| inner.status.checks += 1);
        if let (Some(true), Some(reloader)) = (new_map, &reloader) {
            // A newer map makes an unfinished reload moot: the proxy fetches the map
            // served now either way.
            if let Some(previous) = reloading.take() {
                previous.abort();
            }
            reloading = Some(tokio::spawn(reload(reloader.clone(), shared.clone())));
        }
    }
    if let Some(task) = reloading {
        task.abort();
    }
    match server.await {
        Ok(result) => result.map_err(AgentError::Serve),
        Err(join) => Err(AgentError::Serve(std::io::Error::other(join))),
    }
}

/// Logs an outcome and publishes it. `Some(true)` when a map replaced another (a reload is
/// due), `Some(false)` for the first map (the proxy reads it at start).
fn handle(outcome: &Outcome, checker: &Checker, shared: &Shared) -> Option<bool> {
    let last_file = checker.last_file().map(str::to_owned);
    let last_problem = checker.last_problem().map(str::to_owned);
    shared.update(|inner| {
        inner.status.last_file_digest = last_file;
        inner.status.last_problem = last_problem;
    });
    match outcome {
        Outcome::Unchanged => {
            debug!("the map did not change");
            None
        }
        Outcome::SameMap => {
            info!("the files changed but the map did not: nothing to do");
            None
        }
        Outcome::Serving {
            map,
            models,
            path,
            previous,
        } => {
            info!(
                digest = %map.digest(),
                previous = previous.as_deref().unwrap_or("none"),
                models,
                file = %path.display(),
                "serving a new map"
            );
            shared.update(|inner| {
                inner.map = Some(Arc::clone(map));
                inner.status.digest = Some(map.digest().to_owned());
                inner.status.models = Some(*models);
                inner.status.file = Some(path.clone());
            });
            Some(previous.is_some())
        }
        Outcome::Refused(err) => {
            match checker.served() {
                Some(map) => {
                    warn!(error = %err, serving = %map.digest(), "no new map: still serving the previous one")
                }
                None => warn!(error = %err, "no valid map yet: not ready"),
            }
            None
        }
    }
}

async fn reload(reloader: Reloader, shared: Shared) {
    let outcome = reloader.reload().await;
    match &outcome {
        ReloadOutcome::Reloaded => info!(url = %reloader.shown, "{outcome}"),
        _ => error!(url = %reloader.shown, "{outcome}"),
    }
    shared.update(|inner| inner.status.last_reload = Some(outcome.to_string()));
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps `named` equal to the digests the ModelCostMapSync's status names (artifact and the
/// map being written). While the API server cannot be reached, the last answer stands.
async fn watch_named(verify: Verify, named: tokio::sync::watch::Sender<Vec<String>>) {
    use futures::StreamExt;
    use kube::runtime::watcher::{Config as WatchConfig, Event};

    let api: kube::Api<crate::api::ModelCostMapSync> =
        kube::Api::namespaced(verify.client.clone(), &verify.namespace);
    let config = WatchConfig::default().fields(&format!("metadata.name={}", verify.name));
    let digests = |sync: &crate::api::ModelCostMapSync| -> Vec<String> {
        sync.status
            .iter()
            .flat_map(|status| [&status.artifact, &status.pending_artifact])
            .flatten()
            .map(|artifact| artifact.digest.clone())
            .collect()
    };
    let mut listed_any = false;
    let mut events = std::pin::pin!(crate::watch::resilient(api, config));
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listed_any = false,
            Ok(Event::InitApply(sync) | Event::Apply(sync)) => {
                listed_any = true;
                named.send_replace(digests(&sync));
            }
            Ok(Event::InitDone) if !listed_any => {
                named.send_replace(Vec::new());
            }
            Ok(Event::InitDone) => {}
            Ok(Event::Delete(_)) => {
                named.send_replace(Vec::new());
            }
            Err(error) => {
                warn!(%error, "cannot watch the ModelCostMapSync; going by its last known status")
            }
        }
    }
}

/// Waits until events stop for [`SETTLE`] (at most [`MAX_SETTLE`]).
async fn settle(changed: &Notify) {
    let start = Instant::now();
    while start.elapsed() < MAX_SETTLE
        && tokio::time::timeout(SETTLE, changed.notified())
            .await
            .is_ok()
    {}
}

/// Watches `dir` (not its subdirectories: the kubelet's swap is a rename in `dir` itself,
/// and files being written in a new `..<timestamp>` directory are not ready yet).
fn watch(dir: &Path, changed: Arc<Notify>) -> Result<RecommendedWatcher, AgentError> {
    let watch_error = |error| AgentError::Watch {
        dir: dir.to_owned(),
        error,
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Opening and reading files (ours included) changes nothing.
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            Ok(_) => changed.notify_one(),
            Err(err) => {
                // E.g. the event queue overflowed: look at the directory anyway.
                warn!(error = %err, "file watch error");
                changed.notify_one();
            }
        }
    })
    .map_err(watch_error)?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "map.json";

    #[test]
    fn the_reload_config_never_shows_the_admin_key() {
        let key = AdminKey::new("sk-secret-1234").unwrap();
        let config = ReloadConfig::new(
            Url::parse("http://127.0.0.1:4000/reload/model_cost_map").unwrap(),
            key,
        );
        assert!(!format!("{config:?}").contains("sk-secret"), "{config:?}");
    }

    #[test]
    fn keys_and_reload_urls_are_checked() {
        assert_eq!(parse_key(KEY).unwrap(), KEY);
        for bad in ["", ".", "..", "a/b", "healthz", "{x}", "a b"] {
            assert!(parse_key(bad).is_err(), "{bad:?}");
        }
        assert!(parse_reload_url("http://127.0.0.1:4000/reload/model_cost_map").is_ok());
        assert!(parse_reload_url("file:///etc/passwd").is_err());
    }

    #[test]
    fn verify_with_takes_namespace_and_name_or_a_name() {
        assert_eq!(
            parse_verify_with("llm/litellm", "default").unwrap(),
            ("llm".to_owned(), "litellm".to_owned())
        );
        assert_eq!(
            parse_verify_with("litellm", "team-a").unwrap(),
            ("team-a".to_owned(), "litellm".to_owned())
        );
        for bad in ["", "/x", "x/", "a/b/c", "UPPER", "a b"] {
            assert!(parse_verify_with(bad, "default").is_err(), "{bad:?}");
        }
    }
}
