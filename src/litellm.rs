//! Talking to LiteLLM proxies: ask one to reload the map (`POST /reload/model_cost_map`) and
//! ask which map it serves (`GET /model/cost_map/source`), both with the admin key.
//!
//! One client for the operator (which reaches proxies by URL or pod IP) and the in-pod agent
//! (which reaches its own proxy on localhost). No Kubernetes here: the controller finds the
//! proxies and their keys, and writes status.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;

use crate::sync::fetch::address::{
    AddressPolicy, BlockedAddress, OwnAddresses, PolicyResolver, find_blocked, system_lookup,
};

/// LiteLLM's reload endpoint, below a proxy's base URL.
pub const RELOAD_PATH: &str = "reload/model_cost_map";
/// LiteLLM's "which map do you serve" endpoint, below a proxy's base URL.
pub const SOURCE_PATH: &str = "model/cost_map/source";
/// LiteLLM's list of deployments with their prices.
const MODEL_INFO_PATH: &str = "model/info";
/// LiteLLM's list of the callbacks it runs.
const CALLBACKS_PATH: &str = "active/callbacks";
/// The name our LiteLLM callback module (integrations/litellm/costmap_reload.py) gives itself.
pub const SELF_RELOAD_CALLBACK: &str = "costmap_reload";
/// A proxy's deployments, listed: a few KiB each, hundreds at most.
const MAX_MODEL_INFO_BODY: usize = 8 * 1024 * 1024;
/// Its callbacks: a few hundred bytes each.
const MAX_CALLBACKS_BODY: usize = 256 * 1024;
/// What LiteLLM answers (HTTP 500, FastAPI's `{"detail": ...}`) on a reload when it has no
/// database: such a proxy cannot reload.
const NO_DATABASE: &str = "Database connection not available";
/// How much of a failed answer is read: enough for LiteLLM's `{"detail": ...}`.
const MAX_ERROR_BODY: usize = 4096;
/// How much of a source answer is read: a few hundred bytes in practice.
const MAX_SOURCE_BODY: usize = 64 * 1024;

/// A proxy's admin (master) key, kept as a sensitive `Authorization: Bearer` header value:
/// its `Debug` never shows it, and no log or message of ours does either.
#[derive(Clone)]
pub struct AdminKey(HeaderValue);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

/// An admin key that cannot be sent in an HTTP header (a newline, say).
#[derive(Debug, thiserror::Error)]
#[error("the admin key is not a valid HTTP header value")]
pub struct InvalidAdminKey;

impl AdminKey {
    /// The key, surrounding white space removed (Secrets written with `echo` end in a
    /// newline); `None` when empty: a proxy without a master key needs no Authorization.
    pub fn new(key: &str) -> Result<Option<AdminKey>, InvalidAdminKey> {
        let key = key.trim();
        if key.is_empty() {
            return Ok(None);
        }
        let mut value =
            HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| InvalidAdminKey)?;
        value.set_sensitive(true);
        Ok(Some(AdminKey(value)))
    }
}

/// Timeouts and retries of a [`ProxyClient`].
#[derive(Debug, Clone)]
pub struct ProxyClientConfig {
    /// Timeout of one reload attempt. LiteLLM re-fetches the map during the call (5 s
    /// timeout, 3 tries), so this is tens of seconds.
    pub reload_timeout: Duration,
    /// Timeout of one `GET /model/cost_map/source`.
    pub source_timeout: Duration,
    /// Attempts in all, first included.
    pub attempts: usize,
    /// Wait before the first retry; it doubles (with jitter) up to 8 times this.
    pub min_backoff: Duration,
    /// Which addresses may be reached, for IP literals and for every address a name
    /// resolves to. The operator's: the block list with `--allow-consumer-cidr`; the
    /// agent's (its own proxy on localhost): unrestricted.
    pub addresses: AddressPolicy,
    /// The cluster's DNS domain (`<svc>.<namespace>.svc.<domain>`).
    pub cluster_domain: String,
}

impl Default for ProxyClientConfig {
    fn default() -> Self {
        ProxyClientConfig {
            reload_timeout: Duration::from_secs(30),
            source_timeout: Duration::from_secs(10),
            attempts: 3,
            min_backoff: Duration::from_secs(1),
            addresses: AddressPolicy::new(Vec::new(), OwnAddresses::default()),
            cluster_domain: "cluster.local".to_owned(),
        }
    }
}

/// An HTTP client for LiteLLM's admin endpoints.
#[derive(Clone, Debug)]
pub struct ProxyClient {
    http: reqwest::Client,
    config: ProxyClientConfig,
}

/// What status says of a refused proxy address: nothing was sent to it.
pub fn refused_message(blocked: &BlockedAddress) -> String {
    let hint = match blocked.why {
        crate::sync::fetch::address::Blocked::Operator => "",
        _ => " (the operator's --allow-consumer-cidr can allow it)",
    };
    format!("refused, nothing was sent: {blocked}{hint}")
}

/// How a reload call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The proxy reloaded the map.
    Reloaded,
    /// The proxy has no database, so it cannot reload; it needs a restart.
    NoDatabase,
    /// The proxy has no database but runs the costmap_reload callback, which polls the map
    /// every so often and loads a new one by itself.
    ReloadsItself(Duration),
    /// The proxy refused the admin key (HTTP 401 or 403).
    Unauthorized(u16),
    /// Anything else, with a message fit for status (never the key, never the proxy's body).
    Failed(String),
}

impl std::fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadOutcome::Reloaded => f.write_str("the proxy reloaded the map"),
            ReloadOutcome::NoDatabase => f.write_str(
                "the proxy has no database, so it cannot reload (the reload answered 500 \
                 \"Database connection not available\"); it loads the new map when \
                 restarted: list its workload under restartWorkloads",
            ),
            ReloadOutcome::Unauthorized(status) => write!(
                f,
                "the proxy refused the admin key (HTTP {status}); check the key's Secret"
            ),
            ReloadOutcome::ReloadsItself(period) => write!(
                f,
                "the proxy has no database; its costmap_reload callback polls the map every \
                 {} and loads the new one by itself",
                humantime::format_duration(*period)
            ),
            ReloadOutcome::Failed(message) => write!(f, "the reload failed: {message}"),
        }
    }
}

/// What `GET /model/cost_map/source` reports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SourceInfo {
    /// Git blob id of the bytes the proxy loaded.
    pub source_revision: Option<String>,
    /// Models in the proxy's loaded map.
    pub model_count: Option<i64>,
}

/// One attempt's failure: worth another try, or final.
#[derive(Debug)]
enum Attempt<T> {
    Retry(String),
    Final(T),
    /// The address policy refused the address: nothing was sent.
    Refused(String),
}

impl ProxyClient {
    /// A client with these timeouts and retries.
    pub fn new(config: ProxyClientConfig) -> Result<ProxyClient, reqwest::Error> {
        let resolver = PolicyResolver {
            policy: std::sync::Arc::new(config.addresses.clone()),
            lookup: system_lookup(),
        };
        let http = reqwest::Client::builder()
            .user_agent(crate::sync::fetch::USER_AGENT)
            // Proxies are in the cluster (or the pod): never send them, and the key, through
            // an egress proxy (which would also resolve names past the address policy), nor
            // the key after a redirect.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(std::sync::Arc::new(resolver))
            .build()?;
        Ok(ProxyClient { http, config })
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.min_backoff * 8)
            .with_max_times(self.config.attempts.max(1) - 1)
            .with_jitter()
    }

    /// Whether the address policy lets `url` be reached, when its host is an IP literal
    /// (names are checked on their addresses, as they resolve).
    pub fn check_address(&self, url: &str) -> Result<(), BlockedAddress> {
        match url::Url::parse(url) {
            Ok(parsed) => self.config.addresses.check_url(&parsed),
            // reqwest refuses it too, before any connection.
            Err(_) => Ok(()),
        }
    }

    /// The cluster's DNS domain, for Service names in proxy URLs.
    pub fn cluster_domain(&self) -> &str {
        &self.config.cluster_domain
    }

    /// The address policy of this client.
    pub fn addresses(&self) -> &AddressPolicy {
        &self.config.addresses
    }

    /// `POST reload_url` (a proxy's `<base>/reload/model_cost_map`), retried with backoff on
    /// connection errors and answers that can pass (5xx, 408, 429), but not on LiteLLM's
    /// no-database answer or a refused key, which will not change.
    pub async fn reload(&self, reload_url: &str, admin_key: Option<&AdminKey>) -> ReloadOutcome {
        if let Err(blocked) = self.check_address(reload_url) {
            return ReloadOutcome::Failed(refused_message(&blocked));
        }
        let attempt = || async {
            let request = self
                .http
                .post(reload_url)
                .timeout(self.config.reload_timeout);
            let response = send(request, admin_key).await?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            classify_reload_failure(status, &read_some(response, MAX_ERROR_BODY).await)
        };
        let result = attempt
            .retry(self.backoff())
            .when(|err| matches!(err, Attempt::Retry(_)))
            .await;
        match result {
            Ok(()) => ReloadOutcome::Reloaded,
            Err(Attempt::Final(outcome)) => outcome,
            Err(Attempt::Retry(message) | Attempt::Refused(message)) => {
                ReloadOutcome::Failed(message)
            }
        }
    }

    /// `GET <base>/model/cost_map/source`: which map the proxy serves. The error is a
    /// message fit for status.
    pub async fn source(
        &self,
        base_url: &str,
        admin_key: Option<&AdminKey>,
    ) -> Result<SourceInfo, String> {
        self.get_json(base_url, SOURCE_PATH, MAX_SOURCE_BODY, admin_key)
            .await
    }

    /// `GET <base>/model/info`: the proxy's deployments, priced from the map it has loaded.
    pub async fn deployments(
        &self,
        base_url: &str,
        admin_key: Option<&AdminKey>,
    ) -> Result<Vec<Deployment>, String> {
        let info: ModelInfo = self
            .get_json(base_url, MODEL_INFO_PATH, MAX_MODEL_INFO_BODY, admin_key)
            .await?;
        Ok(info.data)
    }

    /// How often the proxy's `costmap_reload` callback polls the map, from
    /// `GET <base>/active/callbacks`; None when it does not run one that polls.
    pub async fn self_reload_period(
        &self,
        base_url: &str,
        admin_key: Option<&AdminKey>,
    ) -> Result<Option<Duration>, String> {
        let callbacks: serde_json::Value = self
            .get_json(base_url, CALLBACKS_PATH, MAX_CALLBACKS_BODY, admin_key)
            .await?;
        Ok(self_reload_period(&callbacks))
    }

    /// `GET <base>/<path>` as JSON, retried like [`Self::reload`]; the error is a message fit
    /// for status.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        base_url: &str,
        path: &str,
        max_body: usize,
        admin_key: Option<&AdminKey>,
    ) -> Result<T, String> {
        let url = endpoint(base_url, path);
        self.check_address(&url)
            .map_err(|blocked| refused_message(&blocked))?;
        let attempt = || async {
            let request = self.http.get(&url).timeout(self.config.source_timeout);
            let response = send(request, admin_key).await?;
            let status = response.status();
            if !status.is_success() {
                let message = format!("GET /{path} answered HTTP {}", status.as_u16());
                return Err(if retryable(status) {
                    Attempt::Retry(message)
                } else {
                    Attempt::Final(message)
                });
            }
            let body = read_some(response, max_body).await;
            serde_json::from_slice::<T>(&body)
                .map_err(|_| Attempt::Final(format!("GET /{path} did not answer LiteLLM's JSON")))
        };
        attempt
            .retry(self.backoff())
            .when(|err| matches!(err, Attempt::Retry(_)))
            .await
            .map_err(|err| match err {
                Attempt::Retry(message) | Attempt::Final(message) | Attempt::Refused(message) => {
                    message
                }
            })
    }
}

/// What `GET /model/info` answers (the fields we read).
#[derive(Debug, Deserialize)]
struct ModelInfo {
    data: Vec<Deployment>,
}

/// One deployment of a proxy, as `GET /model/info` lists it: its public name, and its
/// model_info, which LiteLLM fills from the loaded map and the deployment's own settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Deployment {
    /// The name clients ask for (`model_name` in config.yaml).
    pub model_name: String,
    /// Prices and limits, the map's merged with the deployment's own.
    #[serde(default)]
    pub model_info: serde_json::Map<String, serde_json::Value>,
}

/// The cost fields of which one positive value prices a deployment: per token, and the
/// per-second, per-character and per-image forms some providers bill in.
const COST_FIELDS: [&str; 8] = [
    "input_cost_per_token",
    "output_cost_per_token",
    "input_cost_per_second",
    "output_cost_per_second",
    "input_cost_per_character",
    "output_cost_per_character",
    "input_cost_per_image",
    "output_cost_per_image",
];

impl Deployment {
    /// Its input and output cost per token, when positive.
    pub fn token_prices(&self) -> (Option<f64>, Option<f64>) {
        (
            self.positive_cost("input_cost_per_token"),
            self.positive_cost("output_cost_per_token"),
        )
    }

    /// The map entry LiteLLM prices it by (`model_info.key`, which `get_model_info` always
    /// sets when the loaded map has an entry for it).
    pub fn map_key(&self) -> Option<&str> {
        self.model_info
            .get("key")
            .and_then(serde_json::Value::as_str)
    }

    /// Whether nothing prices it: every request to it is billed at $0.
    pub fn is_unpriced(&self) -> bool {
        COST_FIELDS
            .iter()
            .all(|field| self.positive_cost(field).is_none())
    }

    fn positive_cost(&self, field: &str) -> Option<f64> {
        self.model_info
            .get(field)
            .and_then(serde_json::Value::as_f64)
            .filter(|cost| *cost > 0.0)
    }
}

/// The poll period the `costmap_reload` callback reports in its name
/// (`costmap_reload(poll=10s)`), in LiteLLM's `/active/callbacks` answer.
fn self_reload_period(callbacks: &serde_json::Value) -> Option<Duration> {
    callbacks
        .get("litellm.callbacks")?
        .as_array()?
        .iter()
        .filter_map(serde_json::Value::as_str)
        .find_map(|name| {
            let seconds = name
                .strip_prefix(SELF_RELOAD_CALLBACK)?
                .strip_prefix("(poll=")?
                .strip_suffix("s)")?;
            Duration::try_from_secs_f64(seconds.parse().ok()?).ok()
        })
}

/// Sends `request` with the admin key (if any); a transport error is worth another try.
async fn send<T>(
    mut request: reqwest::RequestBuilder,
    admin_key: Option<&AdminKey>,
) -> Result<reqwest::Response, Attempt<T>> {
    if let Some(AdminKey(value)) = admin_key {
        request = request.header(AUTHORIZATION, value.clone());
    }
    request
        .send()
        .await
        .map_err(|err| match find_blocked(&err) {
            Some(blocked) => Attempt::Refused(refused_message(&blocked)),
            None => Attempt::Retry(describe(&err)),
        })
}

/// At most `max` bytes of a response body: a proxy's error page is never read whole.
async fn read_some(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= max {
            body.truncate(max);
            break;
        }
    }
    body
}

/// What a failed reload answer means.
fn classify_reload_failure(status: StatusCode, body: &[u8]) -> Result<(), Attempt<ReloadOutcome>> {
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.get("detail")?.as_str().map(str::to_owned));
    if status == StatusCode::INTERNAL_SERVER_ERROR && detail.as_deref() == Some(NO_DATABASE) {
        return Err(Attempt::Final(ReloadOutcome::NoDatabase));
    }
    if matches!(status.as_u16(), 401 | 403) {
        return Err(Attempt::Final(ReloadOutcome::Unauthorized(status.as_u16())));
    }
    let message = format!("the proxy answered HTTP {}", status.as_u16());
    if retryable(status) {
        Err(Attempt::Retry(message))
    } else {
        Err(Attempt::Final(ReloadOutcome::Failed(message)))
    }
}

/// 5xx (LiteLLM's 502: it could not fetch the map), 408 and 429 can pass; other 4xx won't.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 408 | 429)
}

/// `<base>/<path>` with exactly one slash between them.
pub fn endpoint(base_url: &str, path: &str) -> String {
    format!("{}/{path}", base_url.trim_end_matches('/'))
}

/// A transport error without the URL or anything the server sent.
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_join_without_double_slashes() {
        assert_eq!(
            endpoint("http://p:4000/", RELOAD_PATH),
            "http://p:4000/reload/model_cost_map"
        );
    }

    #[test]
    fn reload_answers_are_classified() {
        let outcome = |status: StatusCode, body: &[u8]| match classify_reload_failure(status, body)
        {
            Ok(()) => None,
            Err(Attempt::Final(outcome)) => Some(Ok(outcome)),
            Err(Attempt::Retry(message) | Attempt::Refused(message)) => Some(Err(message)),
        };
        assert_eq!(
            outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"detail":"Database connection not available"}"#
            ),
            Some(Ok(ReloadOutcome::NoDatabase))
        );
        let other_500 = outcome(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"detail":"Failed to reload model cost map: boom"}"#,
        );
        assert!(matches!(other_500, Some(Err(_))), "{other_500:?}");
        assert!(matches!(
            outcome(StatusCode::BAD_GATEWAY, b"<html>"),
            Some(Err(_))
        ));
        assert!(matches!(
            outcome(StatusCode::TOO_MANY_REQUESTS, b""),
            Some(Err(_))
        ));
        assert_eq!(
            outcome(StatusCode::FORBIDDEN, b""),
            Some(Ok(ReloadOutcome::Unauthorized(403)))
        );
        assert!(matches!(
            outcome(StatusCode::NOT_FOUND, b""),
            Some(Ok(ReloadOutcome::Failed(_)))
        ));
    }

    #[test]
    fn the_admin_key_is_never_shown() {
        let key = AdminKey::new(" sk-secret-1234\n").unwrap().unwrap();
        assert!(!format!("{key:?}").contains("sk-secret"));
        assert!(key.0.is_sensitive());
        assert_eq!(key.0.to_str().unwrap(), "Bearer sk-secret-1234");
        assert!(AdminKey::new("").unwrap().is_none());
        assert!(AdminKey::new("bad\u{7f}key").is_err());
    }

    #[test]
    fn deployments_are_unpriced_when_no_cost_is_positive() {
        let info: ModelInfo = serde_json::from_str(
            r#"{"data": [
                {"model_name": "day0-model", "litellm_params": {"model": "openai/x"},
                 "model_info": {"input_cost_per_token": null, "output_cost_per_token": null}},
                {"model_name": "gpt-4o", "model_info": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05}},
                {"model_name": "free", "model_info": {"input_cost_per_token": 0, "output_cost_per_token": 0.0}},
                {"model_name": "whisper", "model_info": {"input_cost_per_second": 0.0001}},
                {"model_name": "bare"}
            ]}"#,
        )
        .unwrap();
        let unpriced: Vec<&str> = info
            .data
            .iter()
            .filter(|d| d.is_unpriced())
            .map(|d| d.model_name.as_str())
            .collect();
        assert_eq!(unpriced, ["day0-model", "free", "bare"]);
        assert_eq!(info.data[1].token_prices(), (Some(2.5e-6), Some(1e-5)));
        assert_eq!(info.data[2].token_prices(), (None, None));
    }

    #[test]
    fn the_self_reload_callback_is_found_by_its_name() {
        let callbacks = |names: &[&str]| serde_json::json!({"litellm.callbacks": names});
        assert_eq!(
            self_reload_period(&callbacks(&[
                "<x object at 0x1>",
                "costmap_reload(poll=10s)"
            ])),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            self_reload_period(&callbacks(&["costmap_reload(poll=2.5s)"])),
            Some(Duration::from_millis(2500))
        );
        for idle in [
            callbacks(&["costmap_reload(inactive)"]),
            callbacks(&["<x object at 0x1>"]),
            callbacks(&["costmap_reload(poll=-1s)"]),
            serde_json::json!({}),
        ] {
            assert_eq!(self_reload_period(&idle), None, "{idle}");
        }
    }

    #[test]
    fn litellm_source_answers_parse() {
        let info: SourceInfo = serde_json::from_str(
            r#"{"source": "remote", "url": "http://x", "is_env_forced": false, "fallback_reason": null,
                "loaded_at": "2026-11-25T08:00:00", "source_revision": "c8f1", "etag": "\"e\"", "model_count": 4878}"#,
        )
        .unwrap();
        assert_eq!(info.source_revision.as_deref(), Some("c8f1"));
        assert_eq!(info.model_count, Some(4878));
    }
}
