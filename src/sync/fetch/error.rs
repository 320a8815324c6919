//! Why a fetch failed, in words fit for status: what to check, never a header value, a
//! response body or a URL's credentials.

use std::net::IpAddr;

use super::address::Blocked;
use std::time::Duration;

/// Why a fetch failed.
///
/// Messages are meant for users (status conditions, events, CLI output): they
/// say what to check, they never contain header values or response bodies, and
/// their URLs have no userinfo, query or fragment.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The URL, a redirect or a DNS answer pointed at a refused address; nothing was sent
    /// to it.
    #[error("refusing to connect to {address} for {url}: it is {why}; {}", refusal_hint(*.why))]
    ForbiddenAddress {
        /// Sanitized URL being requested.
        url: String,
        /// The refused address.
        address: IpAddr,
        /// Why it is refused.
        why: Blocked,
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
    pub(super) fn with_attempts(mut self, n: usize) -> Self {
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

/// What to do about a refused source address.
fn refusal_hint(why: Blocked) -> &'static str {
    match why {
        Blocked::Operator => {
            "a source may not be the operator's own endpoint (it serves every namespace's maps)"
        }
        _ => {
            "such addresses are refused as sources; if this source is intended, \
             --allow-source-cidr can allow a CIDR covering it"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
