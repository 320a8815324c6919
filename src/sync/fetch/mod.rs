//! Fetch stage: one conditional GET of the cost map from its HTTP source.
//!
//! Everything the operator needs to stay bounded and safe when talking to a
//! source it does not control lives here:
//!
//! - a per-attempt timeout covering connect, redirects and the whole body;
//! - a size cap on the *decoded* body, enforced while streaming, so a gzip
//!   bomb is cut off after `max_body_bytes` rather than inflated in memory;
//! - conditional GET (`If-None-Match` / `If-Modified-Since`) from the stored
//!   validator, so an unchanged map costs a 304 and nothing else;
//! - retries with exponential backoff and jitter (via `backon`) on transport
//!   errors, timeouts, 408, 429 and 5xx, honouring `Retry-After`;
//! - the outbound address policy ([`address`]): loopback, unspecified, link-local,
//!   cloud metadata and the operator's own addresses are refused for IP-literal URLs, for
//!   resolved host names (custom DNS resolver) and for every redirect target, unless the
//!   operator-wide allow-list covers them (the operator's own, never);
//! - caller headers (from a Kubernetes Secret) marked sensitive, sent only to
//!   the configured origin, and never written to logs or errors.
//!
//! Errors ([`error`]) never carry header values or response bodies, and URLs in
//! them are passed through [`sanitize_url`] (no userinfo, no query, no fragment).

pub mod address;
mod causes;
mod clients;
pub mod error;
mod headers;
pub mod shared;
mod source_url;

use clients::Clients;
use source_url::check_scheme;
pub use source_url::{sanitize_url, validate_source_url};

pub use error::FetchError;

use address::{AddressPolicy, LookupFn, OwnAddresses, PolicyResolver, find_blocked, system_lookup};
use headers::{parse_retry_after, response_revision, secret_headers, validator_header};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use ipnet::IpNet;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use url::Url;

use crate::budget::ByteBudget;
use crate::digest::{Digests, HashingBody};

/// `User-Agent` sent with every request, so a source's logs can tell us apart.
pub const USER_AGENT: &str = concat!("costmap-operator/", env!("CARGO_PKG_VERSION"));

/// Operator-wide limits for fetching a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Largest accepted body, counted after content decoding (gzip).
    pub max_body_bytes: u64,
    /// How many redirects one attempt may follow.
    pub max_redirects: usize,
    /// Attempts in total, the first try included (0 is treated as 1).
    pub max_attempts: usize,
    /// First backoff delay; later ones grow exponentially with jitter.
    pub min_backoff: Duration,
    /// Longest wait between two attempts. A server whose `Retry-After` asks for longer is
    /// not retried within the fetch: the error carries its wait for the next sync.
    pub max_backoff: Duration,
    /// Addresses allowed even though the address policy refuses them (loopback,
    /// link-local, cloud metadata; never the operator's own).
    pub allowed_cidrs: Vec<IpNet>,
    /// The most bytes of bodies being received at once, across every source: however many
    /// tenants' sources send large bodies together, memory holds this much of them. At
    /// least `max_body_bytes` (so one body of the largest size can always be received).
    pub max_bytes_in_flight: u64,
    /// The operator's own pod and Service addresses, always refused.
    pub own_addresses: OwnAddresses,
    /// A person's policy, for commands they run on their own machine (`check`, `diff`):
    /// only link-local and cloud metadata addresses refused. Never for the operator.
    pub local: bool,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            // The map is ~3.5 MB today and grew ~4x in a year: 64 MiB admits a map ten
            // times today's (stored in chunks) while bounding memory per fetch.
            max_body_bytes: 64 * 1024 * 1024,
            max_redirects: 5,
            max_attempts: 4,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            allowed_cidrs: Vec::new(),
            max_bytes_in_flight: 64 * 1024 * 1024,
            own_addresses: OwnAddresses::default(),
            local: false,
        }
    }
}

/// One fetch of one source.
///
/// `Debug` is written by hand so that logging a request never prints the
/// header values.
#[derive(Clone, Copy)]
pub struct FetchRequest<'a> {
    /// Source URL (http or https).
    pub url: &'a str,
    /// Extra request headers, name -> value bytes, typically from a Secret.
    /// Values are secrets: they are marked sensitive and never logged.
    pub headers: &'a [(String, Vec<u8>)],
    /// Per-attempt limit for the whole exchange, redirects and body included.
    pub timeout: Duration,
    /// Stored validator from the last successful fetch: an ETag (starts with
    /// `"` or `W/"`) is sent as `If-None-Match`, anything else is taken as a
    /// Last-Modified date and sent as `If-Modified-Since`.
    pub revision: Option<&'a str>,
}

impl std::fmt::Debug for FetchRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match Url::parse(self.url) {
            Ok(url) => sanitize_url(&url),
            Err(_) => "<unparseable>".to_owned(),
        };
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("FetchRequest")
            .field("url", &url)
            .field("headers", &header_names)
            .field("timeout", &self.timeout)
            .field("revision", &self.revision)
            .finish()
    }
}

/// Result of a successful fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The source confirmed that the stored revision is current (HTTP 304).
    NotModified,
    /// The source sent a body.
    Fetched {
        /// The exact decoded bytes of the body.
        body: Bytes,
        /// Their sha256 and git blob id, computed as they arrived.
        digests: Digests,
        /// The response's ETag if it had one, else its Last-Modified.
        revision: Option<String>,
    },
}

/// Fetches sources under one [`FetchPolicy`], reusing connections.
#[derive(Clone)]
pub struct Fetcher {
    clients: Clients,
    policy: FetchPolicy,
    addresses: Arc<AddressPolicy>,
    in_flight: ByteBudget,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Builds the HTTP client for `policy`.
    pub fn new(policy: FetchPolicy) -> Result<Fetcher, FetchError> {
        Self::with_lookup(policy, system_lookup())
    }

    fn with_lookup(policy: FetchPolicy, lookup: LookupFn) -> Result<Fetcher, FetchError> {
        let addresses = Arc::new(if policy.local {
            AddressPolicy::local(policy.allowed_cidrs.clone())
        } else {
            AddressPolicy::new(policy.allowed_cidrs.clone(), policy.own_addresses.clone())
        });
        let clients = Clients::new(Arc::new(PolicyResolver {
            policy: Arc::clone(&addresses),
            lookup,
        }))?;
        let in_flight = ByteBudget::new(policy.max_bytes_in_flight.max(policy.max_body_bytes));
        Ok(Fetcher {
            clients,
            policy,
            addresses,
            in_flight,
        })
    }

    /// The policy this fetcher enforces.
    pub fn policy(&self) -> &FetchPolicy {
        &self.policy
    }

    /// Fetches `req.url`, retrying transient failures as the policy allows.
    ///
    /// Worst case it takes about `max_attempts * timeout` plus the backoff
    /// waits (each at most `max_backoff`).
    ///
    /// Returns [`FetchOutcome::NotModified`] only when a validator was sent and
    /// the source answered 304; the body is never read or parsed then.
    pub async fn fetch(&self, req: &FetchRequest<'_>) -> Result<FetchOutcome, FetchError> {
        let url = validate_source_url(req.url)?;
        let shown = sanitize_url(&url);
        let secret_headers = secret_headers(req.headers)?;
        let mut conditional = HeaderMap::new();
        if let Some((name, value)) = validator_header(req.revision) {
            conditional.insert(name, value);
        }
        let ctx = AttemptCtx {
            url: &url,
            shown: &shown,
            secret_headers: &secret_headers,
            conditional: &conditional,
            timeout: req.timeout,
            attempts: AtomicUsize::new(0),
        };

        let max_backoff = self.policy.max_backoff.max(self.policy.min_backoff);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.min_backoff)
            .with_max_delay(max_backoff)
            .with_max_times(self.policy.max_attempts.saturating_sub(1))
            .with_jitter();

        let result = (|| self.timed_attempt(&ctx))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &AttemptError| e.retryable)
            .adjust(|e: &AttemptError, next: Option<Duration>| {
                // `None` means the attempts are used up: keep it that way.
                // Otherwise wait at least what the server asked for, but never
                // longer than max_backoff (jitter may push past it too).
                next.map(|d| d.max(e.retry_after.unwrap_or_default()).min(max_backoff))
            })
            .notify(|e: &AttemptError, wait: Duration| {
                tracing::warn!(
                    url = %shown,
                    attempt = ctx.attempts.load(Ordering::Relaxed),
                    retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %e.error,
                    "fetching the cost map failed; retrying"
                );
            })
            .await;

        result.map_err(|e| e.error.with_attempts(ctx.attempts.load(Ordering::Relaxed)))
    }

    async fn timed_attempt(&self, ctx: &AttemptCtx<'_>) -> Result<FetchOutcome, AttemptError> {
        ctx.attempts.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(ctx.timeout, self.attempt(ctx)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(AttemptError::retry(FetchError::Timeout {
                url: ctx.shown.to_owned(),
                timeout: ctx.timeout,
                attempts: 1,
            })),
        }
    }

    /// One attempt: the request, any redirects, and the body.
    async fn attempt(&self, ctx: &AttemptCtx<'_>) -> Result<FetchOutcome, AttemptError> {
        let mut url = ctx.url.clone();
        let mut redirects = 0;
        loop {
            self.addresses.check_url(&url).map_err(|blocked| {
                AttemptError::fatal(FetchError::ForbiddenAddress {
                    url: sanitize_url(&url),
                    address: blocked.address,
                    why: blocked.why,
                })
            })?;
            let mut headers = ctx.conditional.clone();
            // Secrets go only to the origin the user configured: a redirect
            // to another host, port or scheme (https -> http) does not get them.
            if url.origin() == ctx.url.origin() {
                for (name, value) in ctx.secret_headers {
                    headers.append(name.clone(), value.clone());
                }
            }
            let client = self
                .clients
                .for_url(&url)
                .await
                .map_err(AttemptError::fatal)?;
            let response = client
                .get(url.clone())
                .headers(headers)
                .send()
                .await
                .map_err(|e| classify(e, &url))?;
            let status = response.status();
            if !is_followed_redirect(status) {
                return self.finish(response, &url, ctx).await;
            }
            if redirects >= self.policy.max_redirects {
                return Err(AttemptError::fatal(FetchError::TooManyRedirects {
                    url: ctx.shown.to_owned(),
                    limit: self.policy.max_redirects,
                }));
            }
            let next = redirect_target(&url, response.headers()).map_err(|reason| {
                AttemptError::fatal(FetchError::InvalidRedirect {
                    url: sanitize_url(&url),
                    reason,
                })
            })?;
            tracing::debug!(
                from = %sanitize_url(&url),
                to = %sanitize_url(&next),
                status = status.as_u16(),
                "following redirect"
            );
            redirects += 1;
            url = next;
        }
    }

    async fn finish(
        &self,
        mut response: reqwest::Response,
        url: &Url,
        ctx: &AttemptCtx<'_>,
    ) -> Result<FetchOutcome, AttemptError> {
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED && !ctx.conditional.is_empty() {
            return Ok(FetchOutcome::NotModified);
        }
        if status != StatusCode::OK {
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let error = FetchError::Status {
                url: sanitize_url(url),
                code: status.as_u16(),
                attempts: 1,
                retry_after,
            };
            // A source that asks for more than our longest backoff is not retried within
            // this fetch: the whole next sync waits for it instead (the controller defers it).
            let asks_too_long = retry_after.is_some_and(|wait| wait > self.policy.max_backoff);
            if !status_retryable(status) || asks_too_long {
                return Err(AttemptError::fatal(error));
            }
            return Err(AttemptError {
                error,
                retryable: true,
                retry_after,
            });
        }

        let revision = response_revision(response.headers());
        let limit = self.policy.max_body_bytes;
        let too_large = || {
            AttemptError::fatal(FetchError::TooLarge {
                url: sanitize_url(url),
                limit,
            })
        };
        // Known only for identity-encoded bodies; a decoded (gzip) body has no
        // exact length and is checked while streaming below.
        let expected = response.content_length();
        if expected.is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let capacity = usize::try_from(expected.unwrap_or(0).min(limit)).unwrap_or(0);
        // A known length is reserved whole, so two bodies never each hold half the budget
        // waiting for the other half; an unknown one grows its share as it arrives.
        let mut reserved = self.in_flight.reserve(None, capacity as u64).await;
        let mut body = HashingBody::new(capacity, expected);
        while let Some(chunk) = response.chunk().await.map_err(|e| classify(e, url))? {
            // Stop at the first chunk past the cap: the decoder produces
            // output incrementally, so a gzip bomb is never inflated further.
            let len = body.received().saturating_add(chunk.len() as u64);
            if len > limit {
                return Err(too_large());
            }
            reserved = self.in_flight.reserve(reserved, len).await;
            body.extend(&chunk);
        }
        let (body, digests) = body.finish().await;
        Ok(FetchOutcome::Fetched {
            body,
            digests,
            revision,
        })
    }
}

/// Per-fetch state shared by all attempts.
struct AttemptCtx<'a> {
    url: &'a Url,
    shown: &'a str,
    secret_headers: &'a HeaderMap,
    conditional: &'a HeaderMap,
    timeout: Duration,
    attempts: AtomicUsize,
}

/// An attempt's failure, with what the retry loop needs to know about it.
#[derive(Debug)]
struct AttemptError {
    error: FetchError,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl AttemptError {
    fn fatal(error: FetchError) -> Self {
        Self {
            error,
            retryable: false,
            retry_after: None,
        }
    }

    fn retry(error: FetchError) -> Self {
        Self {
            error,
            retryable: true,
            retry_after: None,
        }
    }
}

/// 408 and 429 say "try again later"; 5xx are server-side and often passing.
/// Other statuses will not change by retrying.
fn status_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// Redirect statuses we follow. The fetch is always a GET, so 301/302/303 and
/// 307/308 all mean "GET the new location"; 300 and 305 are not followed.
fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn redirect_target(current: &Url, headers: &HeaderMap) -> Result<Url, String> {
    let location = headers
        .get(header::LOCATION)
        .ok_or("no Location header")?
        .to_str()
        .map_err(|_| "the Location header is not valid text".to_owned())?;
    // Relative locations are resolved against the URL that sent them.
    let next = current
        .join(location)
        .map_err(|e| format!("invalid Location: {e}"))?;
    check_scheme(&next).map_err(|reason| format!("target {}: {reason}", sanitize_url(&next)))?;
    Ok(next)
}

/// Maps a reqwest error to a [`FetchError`] without reqwest's own message,
/// which embeds the full URL (query string included).
fn classify(err: reqwest::Error, url: &Url) -> AttemptError {
    let shown = sanitize_url(url);
    if let Some(blocked) = find_blocked(&err) {
        return AttemptError::fatal(FetchError::ForbiddenAddress {
            url: shown,
            address: blocked.address,
            why: blocked.why,
        });
    }
    let is_timeout = err.is_timeout();
    let is_decode = err.is_decode();
    let is_body = err.is_body();
    let refused_by_tls = clients::refused_by_tls(&err);
    let detail = error_chain(&err.without_url());
    if is_timeout {
        // We set no reqwest timeouts, but a lower layer may still time out.
        return AttemptError::retry(FetchError::Connect {
            url: shown,
            detail,
            attempts: 1,
        });
    }
    if is_decode {
        // A corrupt gzip stream will be just as corrupt next time.
        return AttemptError::fatal(FetchError::Body {
            url: shown,
            detail,
            attempts: 1,
        });
    }
    if refused_by_tls {
        return AttemptError::fatal(FetchError::Connect {
            url: shown,
            detail,
            attempts: 1,
        });
    }
    if is_body {
        // The connection broke mid-body: transient, worth another attempt.
        return AttemptError::retry(FetchError::Body {
            url: shown,
            detail,
            attempts: 1,
        });
    }
    AttemptError::retry(FetchError::Connect {
        url: shown,
        detail,
        attempts: 1,
    })
}

/// "a: b: c" from an error and its sources, skipping repeats (hyper often
/// repeats its cause in its own message).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    // reqwest's own top line ("error sending request") adds nothing to our
    // variant's message; its causes say what actually went wrong.
    let first = match err.source() {
        Some(source) if err.is::<reqwest::Error>() => source,
        _ => err,
    };
    for cause in causes::causes(first) {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_408_429_and_5xx_are_retried() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(
                status_retryable(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 410, 451] {
            assert!(
                !status_retryable(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    #[test]
    fn a_request_s_debug_output_hides_header_values() {
        let headers = [("X-Api-Key".to_owned(), b"k3y-secret".to_vec())];
        let req = FetchRequest {
            url: "https://u:pw@mirror.example/map.json?token=t0k",
            headers: &headers,
            timeout: Duration::from_secs(1),
            revision: Some("\"v1\""),
        };
        let shown = format!("{req:?}");
        assert!(shown.contains("X-Api-Key"), "{shown}");
        for secret in ["k3y-secret", "pw", "t0k"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
