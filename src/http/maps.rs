//! Serving one map over HTTP, shared by the operator's `/maps/...` endpoint and the in-pod
//! agent: the exact bytes, gzip straight from storage when the client accepts it (no
//! recompression per request), an ETag from the digest, and 304 on `If-None-Match`.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::layout::gzip::{GunzipError, StoredMap, gunzip_bounded, gunzip_digest};

/// Clients may keep a copy but must revalidate it (cheap, thanks to the ETag): the map
/// changes whenever upstream changes.
const CACHE_CONTROL: &str = "no-cache";

/// A map ready to serve.
#[derive(Debug)]
pub struct ServedMap {
    gz: Bytes,
    digest: String,
    size: u64,
    /// The plain bytes, decompressed on the first request that does not accept gzip (LiteLLM's
    /// httpx client does), then kept.
    plain: OnceLock<Bytes>,
}

impl ServedMap {
    /// From a stored gzip, decompressed (at most `max_bytes`) to learn the digest of what it
    /// holds: whatever stored it (a ConfigMap edited by hand) could hold anything.
    pub fn from_gzip(gz: Bytes, max_bytes: u64) -> Result<ServedMap, GunzipError> {
        // Hashed as it decompresses: the plain bytes are built only if a client asks for them.
        let (digest, size) = gunzip_digest(&gz, max_bytes)?;
        Ok(ServedMap {
            size,
            digest,
            gz,
            plain: OnceLock::new(),
        })
    }

    /// From a gzip whose plain bytes the caller has just decompressed, hashed (`digest`) and
    /// measured (`size`): no second decompression to check it.
    pub fn from_checked_gzip(gz: Bytes, digest: String, size: u64) -> ServedMap {
        ServedMap {
            gz,
            digest,
            size,
            plain: OnceLock::new(),
        }
    }

    /// From a map already in memory.
    pub fn from_stored(map: StoredMap) -> ServedMap {
        ServedMap {
            digest: map.digest(),
            size: map.bytes.len() as u64,
            gz: Bytes::from(map.gz),
            plain: OnceLock::from(map.bytes),
        }
    }

    /// `sha256:<hex>` of the plain bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The gzipped bytes.
    pub fn gz(&self) -> &Bytes {
        &self.gz
    }

    /// The plain bytes, decompressed on first use (the gzip was checked when this map was
    /// built, so this fails only if memory was corrupted or the size was wrong).
    pub fn plain(&self) -> Result<Bytes, GunzipError> {
        if let Some(plain) = self.plain.get() {
            return Ok(plain.clone());
        }
        let plain = Bytes::from(gunzip_bounded(&self.gz, self.size)?);
        Ok(self.plain.get_or_init(|| plain).clone())
    }

    fn etag(&self) -> String {
        format!("\"{}\"", self.digest)
    }
}

/// The response to a GET or HEAD of a map; 404 when there is none.
pub fn respond(map: Option<&ServedMap>, method: &Method, request: &HeaderMap) -> Response {
    let Some(map) = map else {
        return (StatusCode::NOT_FOUND, "no synced map here\n").into_response();
    };
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
        )
            .into_response();
    }
    let etag = map.etag();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    if if_none_match(request, &etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = if accepts_gzip(request) {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        map.gz.clone()
    } else if method == Method::HEAD {
        // The plain length is known: a HEAD does not decompress the map (nor keep it).
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(map.size));
        return (StatusCode::OK, headers, Body::empty()).into_response();
    } else {
        match map.plain() {
            Ok(plain) => plain,
            // Never an empty 200: a proxy would take it for a map and refuse it, or worse.
            Err(err) => {
                tracing::error!(digest = %map.digest, %err, "a served map's gzip cannot be read");
                let message =
                    "the stored map cannot be read; try again with Accept-Encoding: gzip\n";
                return (StatusCode::INTERNAL_SERVER_ERROR, message).into_response();
            }
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    };
    (StatusCode::OK, headers, body).into_response()
}

/// Whether `If-None-Match` lists our ETag (weak or strong) or `*`.
fn if_none_match(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

/// Whether `Accept-Encoding` allows gzip: listed (or `*`) without `q=0`.
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|item| {
            let mut parts = item.split(';');
            let coding = parts.next()?.trim().to_ascii_lowercase();
            let refused = parts.any(|param| {
                param
                    .trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding == "gzip" || coding == "x-gzip" || coding == "*").then_some(!refused)
        })
        .next()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ServedMap {
        ServedMap::from_stored(StoredMap::from_bytes(
            br#"{"a": {"mode": "chat"}}"#.to_vec(),
        ))
    }

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    async fn body(response: Response) -> Bytes {
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn gzip_clients_get_the_stored_gzip_and_others_the_exact_bytes() {
        let map = map();
        let gz = respond(
            Some(&map),
            &Method::GET,
            &request(&[("accept-encoding", "gzip, deflate")]),
        );
        assert_eq!(gz.status(), StatusCode::OK);
        assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(gz.headers()[header::ETAG], format!("\"{}\"", map.digest()));
        assert_eq!(body(gz).await, map.gz());

        let plain = respond(Some(&map), &Method::GET, &request(&[]));
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(plain.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(body(plain).await.as_ref(), br#"{"a": {"mode": "chat"}}"#);
    }

    #[tokio::test]
    async fn a_gzip_that_cannot_be_read_is_a_500_never_an_empty_200() {
        let broken =
            ServedMap::from_checked_gzip(Bytes::from_static(b"not gzip"), "sha256:x".into(), 10);
        let plain = respond(Some(&broken), &Method::GET, &request(&[]));
        assert_eq!(plain.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body(plain).await.is_empty());
        let gz = respond(
            Some(&broken),
            &Method::GET,
            &request(&[("accept-encoding", "gzip")]),
        );
        assert_eq!(
            gz.status(),
            StatusCode::OK,
            "the stored bytes are sent as they are"
        );
    }

    #[tokio::test]
    async fn head_has_the_headers_and_no_body() {
        let map = map();
        let head = respond(Some(&map), &Method::HEAD, &request(&[]));
        assert_eq!(head.headers()[header::CONTENT_LENGTH], "23");
        assert!(body(head).await.is_empty());
    }

    #[tokio::test]
    async fn a_head_without_gzip_does_not_decompress_the_map() {
        let stored = StoredMap::from_bytes(br#"{"a": {"mode": "chat"}}"#.to_vec());
        let map = ServedMap::from_gzip(Bytes::from(stored.gz), 1024).unwrap();
        let head = respond(Some(&map), &Method::HEAD, &request(&[]));
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()[header::CONTENT_LENGTH], "23");
        assert_eq!(head.headers()[header::ETAG], map.etag().as_str());
        assert!(head.headers().get(header::CONTENT_ENCODING).is_none());
        assert!(body(head).await.is_empty());
        assert!(
            map.plain.get().is_none(),
            "nothing decompressed, nothing kept"
        );
        let get = respond(Some(&map), &Method::GET, &request(&[]));
        assert_eq!(body(get).await.len(), 23);
    }

    #[test]
    fn matching_etag_gives_304_and_others_404_or_405() {
        let map = map();
        let etag = format!("\"{}\"", map.digest());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", W/{etag}")).unwrap(),
        );
        assert_eq!(
            respond(Some(&map), &Method::GET, &headers).status(),
            StatusCode::NOT_MODIFIED
        );
        let stale = request(&[("if-none-match", "\"sha256:old\"")]);
        assert_eq!(
            respond(Some(&map), &Method::GET, &stale).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(None, &Method::GET, &stale).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(Some(&map), &Method::POST, &stale).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn accept_encoding_is_negotiated() {
        for (value, expected) in [
            ("gzip", true),
            ("br, GZIP;q=0.5", true),
            ("*", true),
            ("gzip;q=0", false),
            ("identity", false),
            ("deflate, br", false),
        ] {
            let headers = request(&[("accept-encoding", value)]);
            assert_eq!(accepts_gzip(&headers), expected, "{value}");
        }
    }

    #[test]
    fn a_stored_gzip_is_known_by_the_digest_of_what_it_holds() {
        let stored = StoredMap::from_bytes(b"{}".to_vec());
        let digest = stored.digest();
        let gz = Bytes::from(stored.gz);
        assert_eq!(
            ServedMap::from_gzip(gz.clone(), 1024).unwrap().digest(),
            digest
        );
        assert!(ServedMap::from_gzip(Bytes::from_static(b"nope"), 1024).is_err());
        assert!(ServedMap::from_gzip(gz, 1).is_err(), "bounded");
    }
}
