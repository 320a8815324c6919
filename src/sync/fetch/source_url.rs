//! Source URLs: which are usable, and how they are shown (never with what may be a
//! credential: userinfo, query, fragment).

use url::Url;

use super::FetchError;

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

pub(super) fn check_scheme(url: &Url) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_userinfo_query_or_fragment() {
        let url = Url::parse("https://user:s3cret@mirror.example:8443/a/b.json?token=abc&x=1#frag")
            .unwrap();
        assert_eq!(sanitize_url(&url), "https://mirror.example:8443/a/b.json");
        let url = Url::parse("http://onlyuser@10.0.0.1/x").unwrap();
        assert_eq!(sanitize_url(&url), "http://10.0.0.1/x");
    }

    #[test]
    fn only_http_urls_with_a_host_are_sources() {
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
}
