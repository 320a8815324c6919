//! The headers of a fetch: the Secret's (sensitive, checked), the conditional ones from the
//! stored validator, and what the answer says about revisions and retrying.

use std::time::{Duration, SystemTime};

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::FetchError;

/// Headers the fetcher sets itself. A Secret that tried to set them would
/// break framing, decoding or the conditional-GET logic, so it is refused with
/// a clear error instead of being silently overridden.
pub(super) const RESERVED_HEADERS: [HeaderName; 8] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::ACCEPT_ENCODING,
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

/// Turns the Secret's entries into sensitive headers.
pub(super) fn secret_headers(pairs: &[(String, Vec<u8>)]) -> Result<HeaderMap, FetchError> {
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
pub(super) fn validator_header(revision: Option<&str>) -> Option<(HeaderName, HeaderValue)> {
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
pub(super) fn response_revision(headers: &HeaderMap) -> Option<String> {
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
pub(super) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
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

    #[test]
    fn a_retry_after_in_seconds_is_read() {
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
    fn a_retry_after_date_is_read_as_the_wait_until_then() {
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
    fn a_garbled_retry_after_is_ignored() {
        let now = SystemTime::now();
        for v in ["", "soon", "-1", "1.5", "1s"] {
            assert_eq!(parse_retry_after(v, now), None, "{v:?}");
        }
    }

    #[test]
    fn an_etag_goes_to_if_none_match_and_a_date_to_if_modified_since() {
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
    fn the_etag_is_the_revision_when_there_is_one() {
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
}
