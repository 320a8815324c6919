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
//! - an address policy: link-local and cloud metadata addresses are refused
//!   for IP-literal URLs, for resolved host names (custom DNS resolver) and for
//!   every redirect target, unless the operator-wide allow-list covers them;
//! - caller headers (from a Kubernetes Secret) marked sensitive, sent only to
//!   the configured origin, and never written to logs or errors.
//!
//! Errors never carry header values or response bodies, and URLs in them are
//! passed through [`sanitize_url`] (no userinfo, no query, no fragment).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use url::{Host, Url};

/// `User-Agent` sent with every request, so a source's logs can tell us apart.
pub const USER_AGENT: &str = concat!("costmap-operator/", env!("CARGO_PKG_VERSION"));

/// IPv4 addresses of cloud metadata services that are not link-local
/// (link-local ones, like 169.254.169.254, are covered by the range check).
const METADATA_V4: [Ipv4Addr; 2] = [
    // Alibaba Cloud ECS metadata.
    Ipv4Addr::new(100, 100, 100, 200),
    // Oracle Cloud (Classic) metadata.
    Ipv4Addr::new(192, 0, 0, 192),
];

/// IPv6 addresses of cloud metadata services. These are unique-local (fd00::/8),
/// not link-local, so a fe80::/10 check alone would let them through.
const METADATA_V6: [Ipv6Addr; 3] = [
    // AWS IMDS over IPv6.
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
    // AWS EKS Pod Identity agent over IPv6 (hands out credentials).
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0023),
    // Google Compute Engine metadata over IPv6.
    Ipv6Addr::new(0xfd20, 0x00ce, 0, 0, 0, 0, 0, 0x0254),
];

/// Headers the fetcher sets itself. A Secret that tried to set them would
/// break framing, decoding or the conditional-GET logic, so it is refused with
/// a clear error instead of being silently overridden.
const RESERVED_HEADERS: [HeaderName; 8] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::ACCEPT_ENCODING,
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

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
    /// Addresses allowed even though they are link-local or cloud metadata.
    pub allowed_cidrs: Vec<IpNet>,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            // The map is ~3.5 MB today and grew ~4x in a year: 32 MiB leaves
            // room for years of growth while bounding memory per fetch.
            max_body_bytes: 32 * 1024 * 1024,
            max_redirects: 5,
            max_attempts: 4,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            allowed_cidrs: Vec::new(),
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
        /// The response's ETag if it had one, else its Last-Modified.
        revision: Option<String>,
    },
}

/// Why a fetch failed.
///
/// Messages are meant for users (status conditions, events, CLI output): they
/// say what to check, they never contain header values or response bodies, and
/// their URLs have no userinfo, query or fragment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The source URL cannot be used (unparseable, not http(s), no host).
    #[error("invalid source URL {url}: {reason}")]
    InvalidUrl {
        /// Sanitized URL, or `<unparseable>`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL, a redirect or a DNS answer pointed at a blocked address.
    #[error(
        "refusing to connect to {address} for {url}: link-local and cloud metadata addresses are \
         blocked; if this source is intended, add a CIDR covering it to the operator's allowed CIDRs"
    )]
    ForbiddenAddress {
        /// Sanitized URL being requested.
        url: String,
        /// The refused address.
        address: IpAddr,
    },
    /// A header from the headers Secret cannot be sent.
    #[error("header {name:?} from the headers Secret cannot be used: {reason}")]
    InvalidHeader {
        /// Header name as given (names are not secret; values are).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An attempt did not complete within the request timeout.
    #[error(
        "request to {url} did not complete within {}{}; check that the source is reachable or raise the timeout",
        humantime::format_duration(*.timeout),
        attempts_note(*.attempts)
    )]
    Timeout {
        /// Sanitized URL.
        url: String,
        /// The per-attempt timeout.
        timeout: Duration,
        /// Attempts made.
        attempts: usize,
    },
    /// Connecting or talking to the source failed (DNS, TCP, TLS, protocol).
    #[error("could not fetch {url}: {detail}{}", attempts_note(*.attempts))]
    Connect {
        /// Sanitized URL.
        url: String,
        /// The transport error chain (no URL, no headers).
        detail: String,
        /// Attempts made.
        attempts: usize,
    },
    /// The source answered with a status other than 200 (or an expected 304).
    #[error("{url} answered HTTP {code}{}{}", status_hint(*.code), attempts_note(*.attempts))]
    Status {
        /// Sanitized URL that gave this answer.
        url: String,
        /// HTTP status code.
        code: u16,
        /// Attempts made.
        attempts: usize,
        /// How long the source asked us to wait (`Retry-After`) in its last answer.
        retry_after: Option<Duration>,
    },
    /// The decoded body is larger than the policy allows.
    #[error(
        "the response from {url} is larger than the limit of {limit} bytes (counted after decompression)"
    )]
    TooLarge {
        /// Sanitized URL.
        url: String,
        /// The limit that was exceeded.
        limit: u64,
    },
    /// More redirects than the policy allows.
    #[error("{url} redirected more than {limit} times; point the source at the final URL")]
    TooManyRedirects {
        /// Sanitized URL of the source.
        url: String,
        /// The redirect limit.
        limit: usize,
    },
    /// A redirect could not be followed (no/invalid `Location`, other scheme).
    #[error("{url} sent a redirect that cannot be followed: {reason}")]
    InvalidRedirect {
        /// Sanitized URL that sent the redirect.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The body could not be read or decoded.
    #[error("reading the response body from {url} failed: {detail}{}", attempts_note(*.attempts))]
    Body {
        /// Sanitized URL.
        url: String,
        /// The error chain (no URL, no body content).
        detail: String,
        /// Attempts made.
        attempts: usize,
    },
    /// The HTTP client could not be built (e.g. TLS backend setup failed).
    #[error("could not set up the HTTP client: {detail}")]
    Client {
        /// The error chain.
        detail: String,
    },
}

impl FetchError {
    /// True when the body was over the size cap; the controller reports this
    /// with its own `TooLarge` reason rather than as a fetch failure.
    pub fn is_too_large(&self) -> bool {
        matches!(self, FetchError::TooLarge { .. })
    }

    /// How long the source asked to be left alone in its last answer (`Retry-After`), if
    /// it said: the next sync waits at least that long.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Records the final attempt count on the variants that report it.
    fn with_attempts(mut self, n: usize) -> Self {
        match &mut self {
            FetchError::Timeout { attempts, .. }
            | FetchError::Connect { attempts, .. }
            | FetchError::Status { attempts, .. }
            | FetchError::Body { attempts, .. } => *attempts = n,
            _ => {}
        }
        self
    }
}

fn attempts_note(attempts: usize) -> String {
    if attempts > 1 {
        format!(" (gave up after {attempts} attempts)")
    } else {
        String::new()
    }
}

fn status_hint(code: u16) -> &'static str {
    match code {
        401 | 403 => "; check the credentials in the headers Secret",
        404 | 410 => "; check the source URL",
        304 => "; the source answered 304 to a request without a validator",
        429 => "; the source is rate limiting us",
        500..=599 => "; the source has a server-side problem",
        _ => "",
    }
}

/// Checks that `url` is usable as a source: parseable, http or https, with a
/// host. The address policy is not applied here (it needs the operator's
/// allow-list and DNS); [`Fetcher::fetch`] applies it.
pub fn validate_source_url(url: &str) -> Result<Url, FetchError> {
    let parsed = Url::parse(url.trim()).map_err(|e| FetchError::InvalidUrl {
        // Never echo an unparseable input: it may hold a credential.
        url: "<unparseable>".to_owned(),
        reason: e.to_string(),
    })?;
    check_scheme(&parsed).map_err(|reason| FetchError::InvalidUrl {
        url: sanitize_url(&parsed),
        reason,
    })?;
    Ok(parsed)
}

fn check_scheme(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "scheme {other:?} is not supported; use http or https"
            ));
        }
    }
    match url.host_str() {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err("the URL has no host".to_owned()),
    }
}

/// Renders `url` for logs and messages: userinfo, query and fragment removed,
/// because tokens are commonly passed in any of them.
pub fn sanitize_url(url: &Url) -> String {
    let mut clean = url.clone();
    // Both setters only fail for URLs without a host, which have no userinfo.
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean.set_query(None);
    clean.set_fragment(None);
    clean.to_string()
}

/// Which addresses may be connected to.
#[derive(Debug, Clone)]
struct AddressPolicy {
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    fn permits(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        let allowed = self
            .allowed
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical));
        allowed || !is_blocked(ip)
    }

    /// Applies the policy to a URL whose host is an IP literal. Host names are
    /// checked later, on the resolved addresses, by [`PolicyResolver`].
    fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        let ip = match url.host() {
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            // Belt and braces: the URL parser normalises IPv4 spellings to
            // `Host::Ipv4`, but the connector also short-cuts anything that
            // parses as an address, so check that form too.
            Some(Host::Domain(d)) => match d.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return Ok(()),
            },
            None => return Ok(()),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(FetchError::ForbiddenAddress {
                url: sanitize_url(url),
                address: ip,
            })
        }
    }

    /// Keeps the permitted addresses of a DNS answer. Dropping only the blocked
    /// ones (rather than failing) keeps a mixed answer usable while making sure
    /// we never connect to a blocked one.
    fn filter(&self, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, BlockedAddress> {
        let (ok, refused): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| self.permits(a.ip()));
        match (ok.is_empty(), refused.first()) {
            (true, Some(first)) => Err(BlockedAddress {
                address: first.ip(),
            }),
            _ => Ok(ok),
        }
    }
}

/// Link-local (IPv4 169.254.0.0/16, IPv6 fe80::/10) or a known metadata
/// address, also when wrapped in IPv4-mapped or NAT64 (64:ff9b::/96) IPv6.
fn is_blocked(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_blocked_v4(v4),
        IpAddr::V6(v6) => {
            v6.is_unicast_link_local()
                || METADATA_V6.contains(&v6)
                || nat64_embedded(v6).is_some_and(is_blocked_v4)
        }
    }
}

fn is_blocked_v4(v4: Ipv4Addr) -> bool {
    v4.is_link_local() || METADATA_V4.contains(&v4)
}

/// The IPv4 address inside a well-known-prefix NAT64 address (RFC 6052): on
/// a NAT64 network, 64:ff9b::a9fe:a9fe reaches 169.254.169.254.
fn nat64_embedded(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        Some(Ipv4Addr::new(a, b, c, d))
    } else {
        None
    }
}

/// Error returned by [`PolicyResolver`] when a name resolves only to blocked
/// addresses; found again in the reqwest error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("resolved only to blocked address {address}")]
struct BlockedAddress {
    address: IpAddr,
}

type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
type LookupFn = Arc<dyn Fn(String) -> LookupFuture + Send + Sync>;

/// DNS resolver that applies the address policy to every answer, so a host
/// name (or a redirect to one) cannot lead to a metadata endpoint.
struct PolicyResolver {
    policy: Arc<AddressPolicy>,
    lookup: LookupFn,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        let lookup = (self.lookup)(host.clone());
        Box::pin(async move {
            let addrs = lookup.await?;
            let total = addrs.len();
            let ok = policy.filter(addrs)?;
            if ok.len() < total {
                tracing::debug!(
                    host = %host,
                    dropped = total - ok.len(),
                    "dropped blocked addresses from a DNS answer"
                );
            }
            let addrs: reqwest::dns::Addrs = Box::new(ok.into_iter());
            Ok(addrs)
        })
    }
}

fn system_lookup() -> LookupFn {
    Arc::new(|host: String| {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.collect())
        })
    })
}

/// Fetches sources under one [`FetchPolicy`], reusing connections.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: FetchPolicy,
    addresses: Arc<AddressPolicy>,
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
        let addresses = Arc::new(AddressPolicy {
            allowed: policy.allowed_cidrs.clone(),
        });
        let resolver = Arc::new(PolicyResolver {
            policy: Arc::clone(&addresses),
            lookup,
        });
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .gzip(true)
            // Redirects are followed by hand: reqwest would forward the
            // Secret's custom headers (e.g. X-Api-Key) to another origin; it
            // only strips Authorization and cookies.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve names itself, bypassing the address policy.
            .no_proxy()
            .dns_resolver(resolver)
            .build()
            .map_err(|e| FetchError::Client {
                detail: error_chain(&e),
            })?;
        Ok(Fetcher {
            client,
            policy,
            addresses,
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
            self.addresses
                .check_url(&url)
                .map_err(AttemptError::fatal)?;
            let mut headers = ctx.conditional.clone();
            // Secrets go only to the origin the user configured: a redirect
            // to another host, port or scheme (https -> http) does not get them.
            if url.origin() == ctx.url.origin() {
                for (name, value) in ctx.secret_headers {
                    headers.append(name.clone(), value.clone());
                }
            }
            let response = self
                .client
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
        let mut body = BytesMut::with_capacity(capacity);
        while let Some(chunk) = response.chunk().await.map_err(|e| classify(e, url))? {
            // Stop at the first chunk past the cap: the decoder produces
            // output incrementally, so a gzip bomb is never inflated further.
            if (body.len() as u64).saturating_add(chunk.len() as u64) > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(FetchOutcome::Fetched {
            body: body.freeze(),
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
    if let Some(blocked) = find_source::<BlockedAddress>(&err) {
        return AttemptError::fatal(FetchError::ForbiddenAddress {
            url: shown,
            address: blocked.address,
        });
    }
    let is_timeout = err.is_timeout();
    let is_decode = err.is_decode();
    let is_body = err.is_body();
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

fn find_source<'e, T: std::error::Error + 'static>(
    err: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// "a: b: c" from an error and its sources, skipping repeats (hyper often
/// repeats its cause in its own message).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    // reqwest's own top line ("error sending request") adds nothing to our
    // variant's message; its causes say what actually went wrong.
    let mut current = match err.source() {
        Some(source) if err.is::<reqwest::Error>() => Some(source),
        _ => Some(err),
    };
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// Turns the Secret's entries into sensitive headers.
fn secret_headers(pairs: &[(String, Vec<u8>)]) -> Result<HeaderMap, FetchError> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let invalid = |reason| FetchError::InvalidHeader {
            name: name.clone(),
            reason,
        };
        let header_name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| invalid("not a valid HTTP header name"))?;
        if RESERVED_HEADERS.contains(&header_name) {
            return Err(invalid("the operator sets this header itself"));
        }
        // Surrounding whitespace is not part of a header value (RFC 9110
        // 5.5), and Secrets made with `echo token | kubectl ...` end in "\n".
        let mut header_value = HeaderValue::from_bytes(value.trim_ascii()).map_err(|_| {
            invalid("the value contains characters not allowed in a header (e.g. a newline)")
        })?;
        header_value.set_sensitive(true);
        map.append(header_name, header_value);
    }
    Ok(map)
}

/// The conditional header for a stored validator: ETags go to
/// `If-None-Match`, anything else is taken as a date for `If-Modified-Since`.
/// A validator that is not a valid header value is skipped (full GET).
fn validator_header(revision: Option<&str>) -> Option<(HeaderName, HeaderValue)> {
    let revision = revision.map(str::trim).filter(|r| !r.is_empty())?;
    let name = if revision.starts_with('"') || revision.starts_with("W/\"") {
        header::IF_NONE_MATCH
    } else {
        header::IF_MODIFIED_SINCE
    };
    match HeaderValue::from_str(revision) {
        Ok(value) => Some((name, value)),
        Err(_) => {
            tracing::debug!(
                "stored revision is not a valid header value; fetching unconditionally"
            );
            None
        }
    }
}

/// The validator to store: the ETag if present, else Last-Modified.
fn response_revision(headers: &HeaderMap) -> Option<String> {
    [header::ETAG, header::LAST_MODIFIED]
        .iter()
        .find_map(|name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        })
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (RFC 9110 10.2.3).
/// A date in the past means "now". Capping is the caller's job.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits, so the only parse failure is overflow: "very long".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::str::FromStr;

    fn policy_with(allowed: &[&str]) -> AddressPolicy {
        AddressPolicy {
            allowed: allowed.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        // Obsolete RFC 850 and asctime forms are valid HTTP dates too.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:38 1994", now),
            Some(Duration::from_secs(1))
        );
        // A date in the past means "retry now".
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_garbage() {
        let now = SystemTime::now();
        for v in ["", "soon", "-1", "1.5", "1s"] {
            assert_eq!(parse_retry_after(v, now), None, "{v:?}");
        }
    }

    #[test]
    fn sanitize_strips_userinfo_query_fragment() {
        let url = Url::parse("https://user:s3cret@mirror.example:8443/a/b.json?token=abc&x=1#frag")
            .unwrap();
        assert_eq!(sanitize_url(&url), "https://mirror.example:8443/a/b.json");
        let url = Url::parse("http://onlyuser@10.0.0.1/x").unwrap();
        assert_eq!(sanitize_url(&url), "http://10.0.0.1/x");
    }

    #[test]
    fn validate_url() {
        assert!(validate_source_url("https://raw.githubusercontent.com/x/y.json").is_ok());
        assert!(validate_source_url("http://127.0.0.1:8080/").is_ok());
        for bad in [
            "file:///etc/passwd",
            "ftp://example.com/x",
            "data:text/plain,hi",
            "nope",
        ] {
            let err = validate_source_url(bad).unwrap_err();
            assert!(
                matches!(err, FetchError::InvalidUrl { .. }),
                "{bad}: {err:?}"
            );
        }
        let err = validate_source_url("ftp://u:pw@example.com/x?token=t").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"ftp\""), "{text}");
        assert!(!text.contains("pw") && !text.contains("token"), "{text}");
        // Unparseable input is never echoed back.
        let err = validate_source_url("http://secret token@[::1").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn address_policy_blocks_link_local_and_metadata() {
        let p = policy_with(&[]);
        for blocked in [
            "169.254.169.254",
            "169.254.0.1",
            "169.254.170.2",
            "100.100.100.200",
            "192.0.0.192",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "fd00:ec2::23",
            "fd20:ce::254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!p.permits(ip(blocked)), "{blocked} should be blocked");
        }
        for allowed in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.100.100.201",
            "fd00::1",
            "fec0::1",
            "8.8.8.8",
            "2001:db8::1",
        ] {
            assert!(p.permits(ip(allowed)), "{allowed} should be allowed");
        }
    }

    #[test]
    fn address_policy_allow_list_overrides() {
        let p = policy_with(&["169.254.0.0/16", "fd00:ec2::254/128"]);
        assert!(p.permits(ip("169.254.169.254")));
        assert!(p.permits(ip("::ffff:169.254.169.254")));
        assert!(p.permits(ip("fd00:ec2::254")));
        assert!(!p.permits(ip("fe80::1")));
        assert!(!p.permits(ip("100.100.100.200")));
    }

    #[test]
    fn address_policy_on_url_literals() {
        let p = policy_with(&[]);
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            // Alternative IPv4 spellings the URL parser normalises.
            "http://2852039166/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://169.254.169.254./",
            "http://[fe80::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[fd00:ec2::254]/",
            "https://100.100.100.200/",
        ] {
            let err = p.check_url(&Url::parse(url).unwrap()).unwrap_err();
            assert!(
                matches!(err, FetchError::ForbiddenAddress { .. }),
                "{url}: {err:?}"
            );
        }
        for url in [
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://metadata.google.internal/",
        ] {
            // Host names pass here; the resolver checks their addresses.
            assert!(p.check_url(&Url::parse(url).unwrap()).is_ok(), "{url}");
        }
    }

    #[test]
    fn address_policy_filters_dns_answers() {
        let p = policy_with(&[]);
        let sa = |s: &str| SocketAddr::new(ip(s), 0);
        let mixed = vec![sa("169.254.169.254"), sa("127.0.0.1"), sa("fe80::1")];
        assert_eq!(p.filter(mixed).unwrap(), vec![sa("127.0.0.1")]);
        let err = p.filter(vec![sa("169.254.169.254")]).unwrap_err();
        assert_eq!(err.address, ip("169.254.169.254"));
        assert!(p.filter(vec![]).unwrap().is_empty());
    }

    #[test]
    fn validator_choice() {
        let (name, value) = validator_header(Some("\"abc\"")).unwrap();
        assert_eq!(name, header::IF_NONE_MATCH);
        assert_eq!(value, "\"abc\"");
        let (name, _) = validator_header(Some("W/\"abc\"")).unwrap();
        assert_eq!(name, header::IF_NONE_MATCH);
        let (name, value) = validator_header(Some("Wed, 21 Oct 2015 07:28:00 GMT")).unwrap();
        assert_eq!(name, header::IF_MODIFIED_SINCE);
        assert_eq!(value, "Wed, 21 Oct 2015 07:28:00 GMT");
        assert!(validator_header(None).is_none());
        assert!(validator_header(Some("  ")).is_none());
        assert!(validator_header(Some("bad\nvalue")).is_none());
    }

    #[test]
    fn revision_prefers_etag() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(
            response_revision(&h).as_deref(),
            Some("Wed, 21 Oct 2015 07:28:00 GMT")
        );
        h.insert(header::ETAG, HeaderValue::from_static("W/\"v2\""));
        assert_eq!(response_revision(&h).as_deref(), Some("W/\"v2\""));
        assert_eq!(response_revision(&HeaderMap::new()), None);
    }

    #[test]
    fn statuses_retried() {
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
    fn secret_headers_are_sensitive_and_checked() {
        let map = secret_headers(&[
            ("X-Api-Key".into(), b"k3y\n".to_vec()),
            ("Authorization".into(), b"Bearer t0ken".to_vec()),
        ])
        .unwrap();
        assert_eq!(map["x-api-key"], "k3y", "trailing newline trimmed");
        assert!(map.values().all(HeaderValue::is_sensitive));
        // Debug output of a sensitive value hides it.
        assert!(!format!("{map:?}").contains("t0ken"));

        let err = secret_headers(&[("X-Key".into(), b"a\nb".to_vec())]).unwrap_err();
        assert!(matches!(err, FetchError::InvalidHeader { .. }));
        let text = format!("{err} {err:?}");
        assert!(text.contains("X-Key") && !text.contains("a\\nb"), "{text}");

        let err = secret_headers(&[("bad name".into(), b"v".to_vec())]).unwrap_err();
        assert!(matches!(err, FetchError::InvalidHeader { .. }));
        let err = secret_headers(&[("If-None-Match".into(), b"v".to_vec())]).unwrap_err();
        assert!(err.to_string().contains("sets this header itself"), "{err}");
    }

    #[test]
    fn request_debug_hides_secrets() {
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

    #[test]
    fn error_messages_are_actionable() {
        let e = FetchError::Status {
            url: "https://x/y".into(),
            code: 403,
            attempts: 1,
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "https://x/y answered HTTP 403; check the credentials in the headers Secret"
        );
        let e = FetchError::Status {
            url: "https://x/y".into(),
            code: 503,
            attempts: 4,
            retry_after: None,
        };
        assert!(e.to_string().ends_with("(gave up after 4 attempts)"), "{e}");
        let e = FetchError::Timeout {
            url: "https://x/y".into(),
            timeout: Duration::from_millis(300),
            attempts: 1,
        };
        assert!(e.to_string().contains("within 300ms"), "{e}");
        assert!(
            FetchError::TooLarge {
                url: String::new(),
                limit: 1
            }
            .is_too_large()
        );
        assert!(!e.is_too_large());
    }

    /// A lookup table standing in for DNS, so the resolver's policy can be
    /// exercised through the real client without a DNS server.
    fn fake_lookup(table: &'static [(&'static str, &'static [&'static str])]) -> LookupFn {
        let table: HashMap<&str, Vec<SocketAddr>> = table
            .iter()
            .map(|(name, addrs)| {
                (
                    *name,
                    addrs.iter().map(|a| SocketAddr::new(ip(a), 0)).collect(),
                )
            })
            .collect();
        let table = Arc::new(table);
        Arc::new(move |host: String| {
            let answer = table.get(host.as_str()).cloned();
            Box::pin(async move {
                answer.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))
            })
        })
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_blocked_addresses() {
        let fetcher = Fetcher::with_lookup(
            FetchPolicy {
                max_attempts: 3,
                min_backoff: Duration::from_millis(1),
                ..FetchPolicy::default()
            },
            fake_lookup(&[("metadata.test", &["169.254.169.254", "fd00:ec2::254"])]),
        )
        .unwrap();
        let err = fetcher
            .fetch(&FetchRequest {
                url: "http://metadata.test/computeMetadata/v1/?token=x",
                headers: &[],
                timeout: Duration::from_secs(5),
                revision: None,
            })
            .await
            .unwrap_err();
        match &err {
            FetchError::ForbiddenAddress { url, address } => {
                assert_eq!(url, "http://metadata.test/computeMetadata/v1/");
                assert_eq!(*address, ip("169.254.169.254"));
            }
            other => panic!("expected ForbiddenAddress, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn resolver_drops_blocked_addresses_from_mixed_answers() {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // fe80::1 (no scope id) cannot be connected to, so no packet leaves
        // the machine even if filtering were broken; filtering itself is
        // covered by `address_policy_filters_dns_answers`.
        let fetcher = Fetcher::with_lookup(
            FetchPolicy::default(),
            fake_lookup(&[("mixed.test", &["fe80::1", "127.0.0.1"])]),
        )
        .unwrap();
        let url = format!("http://mixed.test:{port}/");
        let out = fetcher
            .fetch(&FetchRequest {
                url: &url,
                headers: &[],
                timeout: Duration::from_secs(5),
                revision: None,
            })
            .await
            .unwrap();
        assert_eq!(
            out,
            FetchOutcome::Fetched {
                body: Bytes::from_static(b"ok"),
                revision: None
            }
        );
    }

    #[tokio::test]
    async fn resolver_passes_system_answers_through() {
        let resolver = PolicyResolver {
            policy: Arc::new(policy_with(&[])),
            lookup: system_lookup(),
        };
        use reqwest::dns::Resolve;
        // An IP-literal name is answered locally by getaddrinfo, no DNS query.
        let err = resolver
            .resolve(reqwest::dns::Name::from_str("169.254.169.254").unwrap())
            .await
            .err()
            .unwrap();
        assert!(err.downcast_ref::<BlockedAddress>().is_some(), "{err}");
        let addrs: Vec<_> = resolver
            .resolve(reqwest::dns::Name::from_str("127.0.0.1").unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs, vec![SocketAddr::new(ip("127.0.0.1"), 0)]);
    }
}
