//! Talking to LiteLLM proxies: ask one to reload the map (`POST /reload/model_cost_map`) and
//! ask which map it serves (`GET /model/cost_map/source`), both with the admin key.
//!
//! No Kubernetes here: the controller finds the proxies and their keys, and writes status.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;

use crate::api::ConsumerState;

/// What LiteLLM answers on a reload when it has no database: such a proxy cannot reload.
const NO_DATABASE: &str = "Database connection not available";
/// LiteLLM re-fetches the map during the reload call (5 s timeout, 3 tries): allow for it.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
const SOURCE_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP client for LiteLLM's admin endpoints.
#[derive(Clone)]
pub struct ProxyClient {
    http: reqwest::Client,
    attempts: usize,
    min_backoff: Duration,
}

/// How a reload call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The proxy reloaded.
    Reloaded,
    /// The proxy has no database, so it cannot reload; it needs a restart.
    NoDatabase,
    /// Anything else, with a message fit for status (never the key, never a long body).
    Failed(String),
}

/// What `GET /model/cost_map/source` reports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SourceInfo {
    /// Git blob id of the bytes the proxy loaded.
    pub source_revision: Option<String>,
    /// Models in the proxy's loaded map.
    pub model_count: Option<i64>,
}

impl ProxyClient {
    /// A client retrying `attempts` times from `min_backoff`.
    pub fn new(attempts: usize, min_backoff: Duration) -> Result<ProxyClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(crate::fetch::USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(ProxyClient {
            http,
            attempts: attempts.max(1),
            min_backoff,
        })
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_backoff)
            .with_max_delay(self.min_backoff * 8)
            .with_max_times(self.attempts - 1)
            .with_jitter()
    }

    /// `POST <base>/reload/model_cost_map`, retried on connection errors and 5xx (but not on
    /// LiteLLM's no-database answer, which will not change).
    pub async fn reload(&self, base_url: &str, admin_key: &str) -> ReloadOutcome {
        let url = endpoint(base_url, "reload/model_cost_map");
        let attempt = || async {
            let response = self
                .http
                .post(&url)
                .header(AUTHORIZATION, bearer(admin_key)?)
                .timeout(RELOAD_TIMEOUT)
                .send()
                .await
                .map_err(|err| Attempt::Retry(describe(&err)))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let body = response.text().await.unwrap_or_default();
            if body.contains(NO_DATABASE) {
                return Err(Attempt::NoDatabase);
            }
            let message = format!("reload answered HTTP {}", status.as_u16());
            if status.is_server_error() {
                Err(Attempt::Retry(message))
            } else {
                Err(Attempt::Final(message))
            }
        };
        let result = attempt
            .retry(self.backoff())
            .when(|err| matches!(err, Attempt::Retry(_)))
            .await;
        match result {
            Ok(()) => ReloadOutcome::Reloaded,
            Err(Attempt::NoDatabase) => ReloadOutcome::NoDatabase,
            Err(Attempt::Retry(message) | Attempt::Final(message)) => {
                ReloadOutcome::Failed(message)
            }
        }
    }

    /// `GET <base>/model/cost_map/source`: which map the proxy serves.
    pub async fn source(&self, base_url: &str, admin_key: &str) -> Result<SourceInfo, String> {
        let url = endpoint(base_url, "model/cost_map/source");
        let attempt = || async {
            let response = self
                .http
                .get(&url)
                .header(AUTHORIZATION, bearer(admin_key)?)
                .timeout(SOURCE_TIMEOUT)
                .send()
                .await
                .map_err(|err| Attempt::Retry(describe(&err)))?;
            let status = response.status();
            if !status.is_success() {
                let message = format!(
                    "GET /model/cost_map/source answered HTTP {}",
                    status.as_u16()
                );
                return Err(if status.is_server_error() {
                    Attempt::Retry(message)
                } else {
                    Attempt::Final(message)
                });
            }
            let not_litellm = || {
                Attempt::Final(
                    "GET /model/cost_map/source did not answer LiteLLM's JSON".to_owned(),
                )
            };
            let body = response.bytes().await.map_err(|_| not_litellm())?;
            serde_json::from_slice::<SourceInfo>(&body).map_err(|_| not_litellm())
        };
        attempt
            .retry(self.backoff())
            .when(|err| matches!(err, Attempt::Retry(_)))
            .await
            .map_err(|err| match err {
                Attempt::Retry(message) | Attempt::Final(message) => message,
                Attempt::NoDatabase => NO_DATABASE.to_owned(),
            })
    }
}

/// One try's failure.
#[derive(Debug)]
enum Attempt {
    Retry(String),
    Final(String),
    NoDatabase,
}

fn bearer(admin_key: &str) -> Result<HeaderValue, Attempt> {
    let mut value = HeaderValue::from_str(&format!("Bearer {admin_key}"))
        .map_err(|_| Attempt::Final("the admin key is not a valid header value".to_owned()))?;
    value.set_sensitive(true);
    Ok(value)
}

fn endpoint(base_url: &str, path: &str) -> String {
    format!("{}/{path}", base_url.trim_end_matches('/'))
}

/// A transport error without the URL's query or anything the server sent.
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    }
}

/// Whether a proxy reporting `reported` serves the map whose git blob id is `expected`.
pub fn state_of(reported: Option<&str>, expected: &str) -> ConsumerState {
    if reported == Some(expected) {
        ConsumerState::Current
    } else {
        ConsumerState::Stale
    }
}

/// Why a proxy that is not Current is not, for status.
pub fn stale_message(reload: Option<&ReloadOutcome>) -> Option<String> {
    match reload? {
        ReloadOutcome::Reloaded => None,
        ReloadOutcome::NoDatabase => Some(
            "the proxy has no database, so it cannot reload (reload answered 500 \"Database connection not available\"); \
             it loads the new map when restarted: list its workload under restartWorkloads"
                .to_owned(),
        ),
        ReloadOutcome::Failed(message) => Some(message.clone()),
    }
}

/// How long to wait before checking proxies that are not Current again: 10 s doubling to
/// 5 min, so a stale proxy is not asked every second.
pub fn recheck_after(checks_so_far: u32) -> Duration {
    Duration::from_secs(10)
        .saturating_mul(1 << checks_so_far.min(5))
        .min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_only_when_the_revision_matches() {
        assert_eq!(state_of(Some("abc"), "abc"), ConsumerState::Current);
        assert_eq!(state_of(Some("old"), "abc"), ConsumerState::Stale);
        assert_eq!(state_of(None, "abc"), ConsumerState::Stale);
    }

    #[test]
    fn a_proxy_without_database_is_pointed_at_restart_workloads() {
        let message = stale_message(Some(&ReloadOutcome::NoDatabase)).unwrap();
        assert!(message.contains("restartWorkloads"), "{message}");
        assert_eq!(stale_message(Some(&ReloadOutcome::Reloaded)), None);
        assert_eq!(stale_message(None), None);
    }

    #[test]
    fn rechecks_back_off_to_five_minutes() {
        assert_eq!(recheck_after(0), Duration::from_secs(10));
        assert_eq!(recheck_after(2), Duration::from_secs(40));
        assert_eq!(recheck_after(20), Duration::from_secs(300));
    }

    #[test]
    fn endpoints_join_without_double_slashes() {
        assert_eq!(
            endpoint("http://p:4000/", "reload/model_cost_map"),
            "http://p:4000/reload/model_cost_map"
        );
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
