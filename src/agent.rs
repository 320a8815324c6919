//! The `agent` subcommand: the in-pod sidecar for LiteLLM proxies that mount the map's
//! ConfigMap as a directory.
//!
//! A LiteLLM proxy never reads a mounted file, only `LITELLM_MODEL_COST_MAP_URL`. The agent
//! closes that gap: it serves the mounted map on `/<key>` (with the operator's own handler:
//! the stored gzip, ETag, 304), follows the kubelet's atomic `..data` swap with file-watch
//! events (and a periodic re-check as a safety net), and after each change that validates
//! it asks the proxy to re-fetch the map (`POST /reload/model_cost_map`).
//!
//! The pieces:
//! - [`read_map`] (= [`read_file`], [`unpack`], [`Unpacked::validate`]): the pure part,
//!   files to a validated [`ServedMap`]; it never yields a half-written or invalid map.
//! - [`Checker`]: the state between two looks at the directory (what is served, which file
//!   was seen last), deciding whether a look found a new map, the same one or a refusal.
//! - [`run`]: the thin async wiring of the watcher, the HTTP server and the reload calls.
//!
//! With `--verify-with`, the agent also watches the ModelCostMapSync that writes the
//! ConfigMap and serves only a map whose digest its status names: anyone who can edit the
//! ConfigMap can put any map in the mounted files, but only the operator writes status.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use url::Url;

use crate::consumers::{AdminKey, ProxyClient, ProxyClientConfig, ReloadOutcome};
use crate::digest::sha256_digest;
use crate::fetch::{sanitize_url, validate_source_url};
use crate::render::{GunzipError, StoredMap, gunzip_bounded, gz_key};
use crate::serve::{ServedMap, respond};
use crate::validate::{ModelMap, Rules, ValidationError, validate};

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
    /// The map's key: the agent reads `<key>.gz` (else `<key>`) and serves `/<key>`.
    pub key: String,
    /// Where to serve HTTP (used by [`run`]; [`run_on`] takes a bound listener).
    pub listen: SocketAddr,
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

/// Why a look at the directory did not give a map to serve.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// Neither `<key>.gz` nor `<key>` is there (yet).
    #[error("neither {gz} nor {key} is in {dir}", gz = gz_key(key))]
    Missing {
        /// The directory.
        dir: PathBuf,
        /// The plain key.
        key: String,
    },
    /// A file is there but could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A file, or what it decompresses to, is larger than allowed.
    #[error("{path} holds more than {max_bytes} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max_bytes: u64,
    },
    /// The gz file does not decompress.
    #[error("{path}: {error}")]
    Gzip {
        /// The file.
        path: PathBuf,
        /// Why.
        error: GunzipError,
    },
    /// The map is not one LiteLLM (or our rules) would accept.
    #[error("{path}: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        error: ValidationError,
    },
    /// The map is valid, but not one the ModelCostMapSync's status names (an edited
    /// ConfigMap, or the status not written yet).
    #[error(
        "map {digest} is not one that ModelCostMapSync {sync} names in its status ({}): not served",
        if named.is_empty() { "it names none yet".to_owned() } else { named.join(", ") }
    )]
    NotNamed {
        /// The map's digest.
        digest: String,
        /// `namespace/name` of the ModelCostMapSync.
        sync: String,
        /// The digests its status names.
        named: Vec<String>,
    },
}

/// How a map file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `<key>.gz`: gzip of the map (always written by the operator).
    Gzip,
    /// `<key>`: the map verbatim (written beside the gzip when it fits).
    Plain,
}

/// One map file as read from the directory.
#[derive(Debug, Clone)]
pub struct MapFile {
    /// The path read (through the kubelet's symlinks).
    pub path: PathBuf,
    /// How its bytes are stored.
    pub encoding: Encoding,
    /// Its bytes.
    pub bytes: Bytes,
}

/// A validated map, ready to serve.
#[derive(Debug)]
pub struct LoadedMap {
    /// The map.
    pub map: ServedMap,
    /// How many models it holds.
    pub models: usize,
    /// The file it came from.
    pub path: PathBuf,
}

/// A map file decompressed, not yet validated.
#[derive(Debug)]
pub struct Unpacked {
    file: MapFile,
    plain: Vec<u8>,
    digest: String,
}

impl Unpacked {
    /// `sha256:<hex>` of the plain map.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Validates the map and makes it ready to serve.
    ///
    /// Only the gzip is kept for a gz file; the plain bytes are decompressed again on the
    /// first request that needs them ([`ServedMap`]), so the agent does not hold 3.5 MB it
    /// rarely sends.
    pub fn validate(self, rules: &Rules) -> Result<LoadedMap, MapError> {
        let Unpacked {
            file,
            plain,
            digest,
        } = self;
        let invalid = |error| MapError::Invalid {
            path: file.path.clone(),
            error,
        };
        // The parsed tree is several times the map's size: it lives only for this block.
        let models = {
            let parsed = ModelMap::parse(&plain).map_err(invalid)?;
            validate(&parsed, rules, None).map_err(invalid)?;
            parsed.model_count()
        };
        let map = match file.encoding {
            Encoding::Gzip => ServedMap::from_checked_gzip(file.bytes, digest, plain.len() as u64),
            // The verbatim key is only written for small maps: keeping both copies is cheap.
            Encoding::Plain => ServedMap::from_stored(StoredMap::from_bytes(plain)),
        };
        Ok(LoadedMap {
            map,
            models,
            path: file.path,
        })
    }
}

/// Reads the map file of `key` in `dir`: `<key>.gz` when there, else `<key>`. Each is opened
/// once through the kubelet's `<key> -> ..data/<key>` symlink, so the bytes all come from
/// one `..<timestamp>` directory even while the kubelet swaps `..data`.
pub fn read_file(dir: &Path, key: &str, max_bytes: u64) -> Result<MapFile, MapError> {
    for (name, encoding) in [
        (gz_key(key), Encoding::Gzip),
        (key.to_owned(), Encoding::Plain),
    ] {
        let path = dir.join(name);
        if let Some(bytes) = read_bounded(&path, max_bytes)? {
            return Ok(MapFile {
                path,
                encoding,
                bytes: Bytes::from(bytes),
            });
        }
    }
    Err(MapError::Missing {
        dir: dir.to_owned(),
        key: key.to_owned(),
    })
}

/// The bytes of `path`, `None` when it (or the symlink's target) does not exist.
fn read_bounded(path: &Path, max_bytes: u64) -> Result<Option<Vec<u8>>, MapError> {
    let read_error = |error| MapError::Read {
        path: path.to_owned(),
        error,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(read_error(err)),
    };
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > max_bytes {
        return Err(MapError::TooLarge {
            path: path.to_owned(),
            max_bytes,
        });
    }
    Ok(Some(bytes))
}

/// Decompresses a map file (at most `max_bytes`) and computes the map's digest, so that the
/// caller can tell a new map from a re-compressed copy before paying for validation.
pub fn unpack(file: MapFile, max_bytes: u64) -> Result<Unpacked, MapError> {
    let plain = match file.encoding {
        Encoding::Gzip => gunzip_bounded(&file.bytes, max_bytes).map_err(|err| match err {
            GunzipError::TooLarge { max_bytes } => MapError::TooLarge {
                path: file.path.clone(),
                max_bytes,
            },
            error @ GunzipError::Corrupt(_) => MapError::Gzip {
                path: file.path.clone(),
                error,
            },
        })?,
        Encoding::Plain => file.bytes.to_vec(),
    };
    Ok(Unpacked {
        digest: sha256_digest(&plain),
        file,
        plain,
    })
}

/// Reads, decompresses and validates the map of `key` in `dir`.
pub fn read_map(
    dir: &Path,
    key: &str,
    rules: &Rules,
    max_bytes: u64,
) -> Result<LoadedMap, MapError> {
    unpack(read_file(dir, key, max_bytes)?, max_bytes)?.validate(rules)
}

/// What one look at the directory found.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing new: the same file as last time, or the same problem as last time.
    Unchanged,
    /// A different file holding the map already served (e.g. re-compressed).
    SameMap,
    /// A new valid map, now served.
    Serving {
        /// The map.
        map: Arc<ServedMap>,
        /// Its model count.
        models: usize,
        /// The file it came from.
        path: PathBuf,
        /// The digest of the map served before; `None` for the first map.
        previous: Option<String>,
    },
    /// No map from this look: the previous map (if any) stays served.
    Refused(MapError),
}

/// What the agent remembers between two looks at the directory.
#[derive(Debug)]
pub struct Checker {
    dir: PathBuf,
    key: String,
    rules: Rules,
    max_bytes: u64,
    served: Option<Arc<ServedMap>>,
    /// Digest of the raw file last decoded, so a re-check of the same file costs one read
    /// and one hash, and an invalid file is reported once, not every re-check.
    last_file: Option<String>,
    /// The last refusal, reported once until something else happens.
    last_problem: Option<String>,
    /// With `--verify-with`: the ModelCostMapSync, and the digests its status names.
    named: Option<(String, Vec<String>)>,
}

impl Checker {
    /// A checker that has seen nothing yet.
    pub fn new(dir: PathBuf, key: String, rules: Rules, max_bytes: u64) -> Checker {
        Checker {
            dir,
            key,
            rules,
            max_bytes,
            served: None,
            last_file: None,
            last_problem: None,
            named: None,
        }
    }

    /// Serves from now on only maps that `sync` (`namespace/name`) names in its status;
    /// it names none until [`Checker::set_named`] says otherwise.
    pub fn require_named(&mut self, sync: String) {
        self.named = Some((sync, Vec::new()));
    }

    /// What the ModelCostMapSync's status names now. A change makes the next look decode
    /// the file again: a map refused before may be named now.
    pub fn set_named(&mut self, digests: Vec<String>) {
        if let Some((_, named)) = &mut self.named
            && *named != digests
        {
            *named = digests;
            self.last_file = None;
        }
    }

    /// The map served now.
    pub fn served(&self) -> Option<&Arc<ServedMap>> {
        self.served.as_ref()
    }

    /// Digest of the raw file last decoded.
    pub fn last_file(&self) -> Option<&str> {
        self.last_file.as_deref()
    }

    /// The last refusal, if nothing was served since.
    pub fn last_problem(&self) -> Option<&str> {
        self.last_problem.as_deref()
    }

    /// Looks at the directory once.
    pub fn check(&mut self) -> Outcome {
        let file = match read_file(&self.dir, &self.key, self.max_bytes) {
            Ok(file) => file,
            Err(err) => {
                // Whatever comes back later is looked at afresh.
                self.last_file = None;
                return self.refused(err);
            }
        };
        let file_digest = sha256_digest(&file.bytes);
        if self.last_file.as_deref() == Some(file_digest.as_str()) {
            return Outcome::Unchanged;
        }
        self.last_file = Some(file_digest);
        let unpacked = match unpack(file, self.max_bytes) {
            Ok(unpacked) => unpacked,
            Err(err) => return self.refused(err),
        };
        let current = self.served.as_ref().map(|map| map.digest().to_owned());
        if current.as_deref() == Some(unpacked.digest()) {
            self.last_problem = None;
            return Outcome::SameMap;
        }
        if let Some((sync, named)) = &self.named
            && !named.iter().any(|digest| digest == unpacked.digest())
        {
            let err = MapError::NotNamed {
                digest: unpacked.digest().to_owned(),
                sync: sync.clone(),
                named: named.clone(),
            };
            return self.refused(err);
        }
        match unpacked.validate(&self.rules) {
            Err(err) => self.refused(err),
            Ok(loaded) => {
                self.last_problem = None;
                let map = Arc::new(loaded.map);
                self.served = Some(Arc::clone(&map));
                Outcome::Serving {
                    map,
                    models: loaded.models,
                    path: loaded.path,
                    previous: current,
                }
            }
        }
    }

    fn refused(&mut self, err: MapError) -> Outcome {
        let message = err.to_string();
        if self.last_problem.as_deref() == Some(message.as_str()) {
            return Outcome::Unchanged;
        }
        self.last_problem = Some(message);
        Outcome::Refused(err)
    }
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
struct Shared {
    key: Arc<str>,
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    map: Option<Arc<ServedMap>>,
    status: Status,
}

impl Shared {
    fn new(key: &str) -> Shared {
        Shared {
            key: Arc::from(key),
            inner: Arc::default(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Inner)) {
        // A panic while holding the lock cannot leave Inner half-updated in a harmful way:
        // every field is replaced whole.
        change(&mut self.inner.write().unwrap_or_else(PoisonError::into_inner));
    }

    fn read<T>(&self, read: impl FnOnce(&Inner) -> T) -> T {
        read(&self.inner.read().unwrap_or_else(PoisonError::into_inner))
    }
}

fn router(shared: Shared) -> Router {
    let map_path = format!("/{}", shared.key);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route(&map_path, get(map))
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

/// Runs the agent on `config.listen` until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|error| AgentError::Listen {
            addr: config.listen,
            error,
        })?;
    run_on(listener, config, shutdown).await
}

/// Runs the agent on a bound listener until `shutdown` is cancelled.
pub async fn run_on(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let reloader = config.reload.clone().map(Reloader::new).transpose()?;
    // Watch before the first look, so that no swap falls between the two.
    let changed = Arc::new(Notify::new());
    let _watcher = watch(&config.watch_dir, Arc::clone(&changed))?;

    let shared = Shared::new(&config.key);
    let server = {
        let app = router(shared.clone());
        let stop = shutdown.clone().cancelled_owned();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        })
    };
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
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use serde_json::json;

    const KEY: &str = "map.json";

    fn map_bytes(models: usize, cost: f64) -> Vec<u8> {
        let entries: serde_json::Map<String, serde_json::Value> = (0..models)
            .map(|i| {
                (
                    format!("model-{i}"),
                    json!({"max_tokens": 4096, "input_cost_per_token": cost,
                           "litellm_provider": "openai", "mode": "chat"}),
                )
            })
            .collect();
        serde_json::to_vec(&entries).unwrap()
    }

    fn gzip(bytes: &[u8], level: Compression) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), level);
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn checker(dir: &Path) -> Checker {
        Checker::new(dir.to_owned(), KEY.into(), Rules::default(), 1 << 20)
    }

    fn serving(outcome: Outcome) -> (Arc<ServedMap>, Option<String>) {
        match outcome {
            Outcome::Serving { map, previous, .. } => (map, previous),
            other => panic!("expected a new map, got {other:?}"),
        }
    }

    #[test]
    fn the_gz_key_is_preferred_and_the_verbatim_key_is_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let plain = map_bytes(60, 1e-6);
        std::fs::write(dir.path().join(KEY), &plain).unwrap();
        let loaded = read_map(dir.path(), KEY, &Rules::default(), 1 << 20).unwrap();
        assert_eq!(loaded.path, dir.path().join(KEY));
        assert_eq!(loaded.models, 60);
        assert_eq!(loaded.map.plain(), plain);

        let other = map_bytes(70, 1e-6);
        std::fs::write(
            dir.path().join("map.json.gz"),
            gzip(&other, Compression::fast()),
        )
        .unwrap();
        let loaded = read_map(dir.path(), KEY, &Rules::default(), 1 << 20).unwrap();
        assert_eq!(loaded.path, dir.path().join("map.json.gz"));
        assert_eq!(loaded.models, 70);
        assert_eq!(loaded.map.plain(), other);
        assert_eq!(loaded.map.digest(), sha256_digest(&other));
    }

    #[test]
    fn a_dangling_gz_symlink_falls_back_to_the_verbatim_key() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("..data/map.json.gz", dir.path().join("map.json.gz")).unwrap();
        std::fs::write(dir.path().join(KEY), map_bytes(60, 1e-6)).unwrap();
        let loaded = read_map(dir.path(), KEY, &Rules::default(), 1 << 20).unwrap();
        assert_eq!(loaded.path, dir.path().join(KEY));
    }

    #[test]
    fn missing_truncated_invalid_and_oversized_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let read = || read_map(dir.path(), KEY, &Rules::default(), 1 << 20).unwrap_err();
        assert!(matches!(read(), MapError::Missing { .. }), "{}", read());
        assert!(
            read()
                .to_string()
                .contains("neither map.json.gz nor map.json")
        );

        let gz_path = dir.path().join("map.json.gz");
        let gz = gzip(&map_bytes(60, 1e-6), Compression::best());
        std::fs::write(&gz_path, &gz[..gz.len() / 2]).unwrap();
        assert!(matches!(read(), MapError::Gzip { .. }), "{}", read());

        let plain = map_bytes(60, 1e-6);
        std::fs::write(
            &gz_path,
            gzip(&plain[..plain.len() - 10], Compression::best()),
        )
        .unwrap();
        let err = read();
        assert!(err.to_string().contains("truncated"), "{err}");

        std::fs::write(&gz_path, gzip(&map_bytes(10, 1e-6), Compression::best())).unwrap();
        let err = read();
        assert!(
            err.to_string()
                .contains("10 models, fewer than minModels 50"),
            "{err}"
        );

        std::fs::write(&gz_path, gzip(&map_bytes(60, -1.0), Compression::best())).unwrap();
        assert!(
            read().to_string().contains("costs are finite"),
            "{}",
            read()
        );

        // A gzip bomb stops at the limit.
        std::fs::write(&gz_path, gzip(&vec![b' '; 2 << 20], Compression::best())).unwrap();
        assert!(matches!(read(), MapError::TooLarge { .. }), "{}", read());
    }

    #[test]
    fn a_file_larger_than_the_limit_is_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY), map_bytes(60, 1e-6)).unwrap();
        let err = read_map(dir.path(), KEY, &Rules::default(), 100).unwrap_err();
        assert!(
            matches!(err, MapError::TooLarge { max_bytes: 100, .. }),
            "{err}"
        );
    }

    #[test]
    fn the_checker_serves_the_first_map_then_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let gz_path = dir.path().join("map.json.gz");
        let mut checker = checker(dir.path());

        // Nothing there: refused once, then quiet until something else happens.
        assert!(matches!(
            checker.check(),
            Outcome::Refused(MapError::Missing { .. })
        ));
        assert!(matches!(checker.check(), Outcome::Unchanged));
        assert!(checker.served().is_none());

        let first = map_bytes(60, 1e-6);
        std::fs::write(&gz_path, gzip(&first, Compression::best())).unwrap();
        let (map, previous) = serving(checker.check());
        assert_eq!(map.digest(), sha256_digest(&first));
        assert_eq!(previous, None, "the first map is no change");
        assert_eq!(checker.last_problem(), None);
        assert!(matches!(checker.check(), Outcome::Unchanged));

        // Same map, compressed differently: the file is new, the map is not.
        std::fs::write(&gz_path, gzip(&first, Compression::fast())).unwrap();
        assert!(matches!(checker.check(), Outcome::SameMap));
        assert_eq!(
            checker.last_file(),
            Some(sha256_digest(&gzip(&first, Compression::fast())).as_str())
        );

        // An invalid map is refused once and the first stays served.
        std::fs::write(&gz_path, gzip(&map_bytes(10, 1e-6), Compression::best())).unwrap();
        let Outcome::Refused(err) = checker.check() else {
            panic!("an invalid map must be refused");
        };
        assert!(matches!(err, MapError::Invalid { .. }), "{err}");
        assert!(matches!(checker.check(), Outcome::Unchanged));
        assert_eq!(checker.served().unwrap().digest(), sha256_digest(&first));
        assert!(checker.last_problem().unwrap().contains("10 models"));

        let second = map_bytes(60, 2e-6);
        std::fs::write(&gz_path, gzip(&second, Compression::best())).unwrap();
        let (map, previous) = serving(checker.check());
        assert_eq!(map.digest(), sha256_digest(&second));
        assert_eq!(previous, Some(sha256_digest(&first)));
        assert_eq!(checker.last_problem(), None);
    }

    #[test]
    fn files_that_vanish_and_come_back_unchanged_are_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let gz_path = dir.path().join("map.json.gz");
        let gz = gzip(&map_bytes(60, 1e-6), Compression::best());
        std::fs::write(&gz_path, &gz).unwrap();
        let mut checker = checker(dir.path());
        serving(checker.check());
        std::fs::remove_file(&gz_path).unwrap();
        assert!(matches!(
            checker.check(),
            Outcome::Refused(MapError::Missing { .. })
        ));
        assert!(checker.served().is_some(), "the last good map stays served");
        std::fs::write(&gz_path, &gz).unwrap();
        assert!(matches!(checker.check(), Outcome::SameMap));
    }

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
    fn with_verification_only_a_map_status_names_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let gz_path = dir.path().join("map.json.gz");
        let good = map_bytes(60, 1e-6);
        std::fs::write(&gz_path, gzip(&good, Compression::best())).unwrap();
        let mut checker = checker(dir.path());
        checker.require_named("llm/litellm".into());
        let Outcome::Refused(err) = checker.check() else {
            panic!("status names no map yet");
        };
        assert!(
            err.to_string().contains(
                "not one that ModelCostMapSync llm/litellm names in its status (it names none yet)"
            ),
            "{err}"
        );
        assert!(matches!(checker.check(), Outcome::Unchanged));
        checker.set_named(vec![sha256_digest(&good)]);
        serving(checker.check());

        // A valid map put in the ConfigMap by hand: refused, the named one stays served.
        let tampered = map_bytes(60, 0.0);
        std::fs::write(&gz_path, gzip(&tampered, Compression::best())).unwrap();
        assert!(matches!(
            checker.check(),
            Outcome::Refused(MapError::NotNamed { .. })
        ));
        assert_eq!(checker.served().unwrap().digest(), sha256_digest(&good));
        // Once status names it (the operator wrote it), it is served.
        checker.set_named(vec![sha256_digest(&good), sha256_digest(&tampered)]);
        let (map, _) = serving(checker.check());
        assert_eq!(map.digest(), sha256_digest(&tampered));
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
