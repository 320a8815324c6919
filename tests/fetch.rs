//! The fetch stage against a real HTTP source: an axum server on loopback,
//! started inside each test. Nothing in reqwest is mocked.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use costmap_operator::digest::Digests;
use costmap_operator::sync::fetch::{FetchError, FetchOutcome, FetchPolicy, FetchRequest, Fetcher};

/// A request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    path: String,
    headers: HeaderMap,
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Serves `app` on 127.0.0.1 with an ephemeral port, recording every request.
async fn serve(app: Router) -> Server {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let app = app.layer(middleware::from_fn(move |req: Request, next: Next| {
        let log = Arc::clone(&log);
        async move {
            log.lock().unwrap().push(Seen {
                at: Instant::now(),
                path: req.uri().path().to_owned(),
                headers: req.headers().clone(),
            });
            next.run(req).await
        }
    }));
    let addr = common::serve_loopback(app);
    Server { addr, seen }
}

/// Short backoffs keep the suite fast; the behaviour is the same. The test servers listen
/// on loopback, which the address policy refuses unless allowed.
fn fast_policy() -> FetchPolicy {
    FetchPolicy {
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        allowed_cidrs: common::LOOPBACK
            .iter()
            .map(|c| c.parse().unwrap())
            .collect(),
        ..FetchPolicy::default()
    }
}

fn fetcher(policy: FetchPolicy) -> Fetcher {
    Fetcher::new(policy).unwrap()
}

async fn fetch_url(f: &Fetcher, url: &str) -> Result<FetchOutcome, FetchError> {
    f.fetch(&FetchRequest {
        url,
        headers: &[],
        timeout: Duration::from_secs(5),
        revision: None,
    })
    .await
}

fn body_of(outcome: FetchOutcome) -> (Bytes, Option<String>) {
    match outcome {
        FetchOutcome::Fetched {
            body,
            digests,
            revision,
        } => {
            // Hashed as the body streamed in: the same as hashing it whole.
            assert_eq!(digests, Digests::of(&body));
            (body, revision)
        }
        FetchOutcome::NotModified => panic!("expected a body, got NotModified"),
    }
}

const MAP: &str = r#"{"gpt-4o": {"input_cost_per_token": 2.5e-06}}"#;

#[tokio::test]
async fn a_second_fetch_with_the_etag_gets_304_and_no_body() {
    let app = Router::new().route(
        "/map.json",
        get(|headers: HeaderMap| async move {
            if headers
                .get(header::IF_NONE_MATCH)
                .is_some_and(|v| v == "\"v1\"")
            {
                return StatusCode::NOT_MODIFIED.into_response();
            }
            ([(header::ETAG, "\"v1\"")], MAP).into_response()
        }),
    );
    let server = serve(app).await;
    let f = fetcher(fast_policy());
    let url = server.url("/map.json");

    let (body, revision) = body_of(fetch_url(&f, &url).await.unwrap());
    assert_eq!(body, MAP.as_bytes());
    assert_eq!(revision.as_deref(), Some("\"v1\""));

    let again = f
        .fetch(&FetchRequest {
            url: &url,
            headers: &[],
            timeout: Duration::from_secs(5),
            revision: revision.as_deref(),
        })
        .await
        .unwrap();
    assert_eq!(again, FetchOutcome::NotModified);

    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].headers.get(header::IF_NONE_MATCH).is_none());
    assert_eq!(seen[1].headers[header::IF_NONE_MATCH], "\"v1\"");
    assert!(seen[1].headers.get(header::IF_MODIFIED_SINCE).is_none());
}

#[tokio::test]
async fn a_second_fetch_with_last_modified_gets_304() {
    const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
    let app = Router::new().route(
        "/map.json",
        get(|headers: HeaderMap| async move {
            if headers
                .get(header::IF_MODIFIED_SINCE)
                .is_some_and(|v| v == LAST_MODIFIED)
            {
                return StatusCode::NOT_MODIFIED.into_response();
            }
            ([(header::LAST_MODIFIED, LAST_MODIFIED)], MAP).into_response()
        }),
    );
    let server = serve(app).await;
    let f = fetcher(fast_policy());
    let url = server.url("/map.json");

    let (_, revision) = body_of(fetch_url(&f, &url).await.unwrap());
    assert_eq!(revision.as_deref(), Some(LAST_MODIFIED));

    let again = f
        .fetch(&FetchRequest {
            url: &url,
            headers: &[],
            timeout: Duration::from_secs(5),
            revision: revision.as_deref(),
        })
        .await
        .unwrap();
    assert_eq!(again, FetchOutcome::NotModified);
    let seen = server.requests();
    assert_eq!(seen[1].headers[header::IF_MODIFIED_SINCE], LAST_MODIFIED);
    assert!(seen[1].headers.get(header::IF_NONE_MATCH).is_none());
}

#[tokio::test]
async fn not_modified_without_a_validator_is_an_error() {
    // A 304 we did not ask for must not make the caller think it has the map.
    let server = serve(Router::new().route("/", get(|| async { StatusCode::NOT_MODIFIED }))).await;
    let err = fetch_url(&fetcher(fast_policy()), &server.url("/"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Status { code: 304, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn each_attempt_has_its_own_timeout() {
    let app = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            MAP
        }),
    );
    let server = serve(app).await;
    let f = fetcher(FetchPolicy {
        max_attempts: 2,
        ..fast_policy()
    });
    let started = Instant::now();
    let err = f
        .fetch(&FetchRequest {
            url: &server.url("/slow"),
            headers: &[],
            timeout: Duration::from_millis(300),
            revision: None,
        })
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    match &err {
        FetchError::Timeout {
            timeout, attempts, ..
        } => {
            assert_eq!(*timeout, Duration::from_millis(300));
            assert_eq!(*attempts, 2);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(err.to_string().contains("300ms"), "{err}");
    assert_eq!(server.count(), 2, "timeouts are retried");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[tokio::test]
async fn the_timeout_covers_a_body_that_trickles() {
    // Headers arrive at once, the body trickles: the timeout must still hold.
    let app = Router::new().route(
        "/trickle",
        get(|| async {
            let chunks = futures::stream::unfold(0u32, |i| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b"{}")), i + 1))
            });
            Body::from_stream(chunks)
        }),
    );
    let server = serve(app).await;
    let err = fetcher(FetchPolicy {
        max_attempts: 1,
        ..fast_policy()
    })
    .fetch(&FetchRequest {
        url: &server.url("/trickle"),
        headers: &[],
        timeout: Duration::from_millis(300),
        revision: None,
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, FetchError::Timeout { attempts: 1, .. }),
        "{err:?}"
    );
}

/// A handler that answers `first` for the first `n` requests, then 200.
fn flaky(n: usize, first: impl Fn() -> Response + Clone + Send + Sync + 'static) -> Router {
    let count = Arc::new(AtomicUsize::new(0));
    Router::new().route(
        "/map.json",
        get(move || {
            let count = Arc::clone(&count);
            let first = first.clone();
            async move {
                if count.fetch_add(1, Ordering::SeqCst) < n {
                    first()
                } else {
                    MAP.into_response()
                }
            }
        }),
    )
}

#[tokio::test]
async fn a_retry_after_in_seconds_is_waited_for() {
    let server = serve(flaky(1, || {
        (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")]).into_response()
    }))
    .await;
    let f = fetcher(FetchPolicy {
        max_backoff: Duration::from_secs(5),
        ..fast_policy()
    });
    let (body, _) = body_of(fetch_url(&f, &server.url("/map.json")).await.unwrap());
    assert_eq!(body, MAP.as_bytes());
    let seen = server.requests();
    assert_eq!(seen.len(), 2, "one 429, then the retry");
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
}

#[tokio::test]
async fn a_retry_after_as_an_http_date_is_waited_for() {
    let server = serve(flaky(1, || {
        // HTTP dates have one-second resolution: +2 s means a wait of 1-2 s.
        let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
        (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, at)]).into_response()
    }))
    .await;
    let f = fetcher(FetchPolicy {
        max_backoff: Duration::from_secs(5),
        ..fast_policy()
    });
    body_of(fetch_url(&f, &server.url("/map.json")).await.unwrap());
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
}

#[tokio::test]
async fn a_retry_after_longer_than_the_backoff_ends_the_fetch_and_is_reported() {
    let server = serve(flaky(1, || {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "3600")],
        )
            .into_response()
    }))
    .await;
    let f = fetcher(FetchPolicy {
        max_backoff: Duration::from_millis(200),
        ..fast_policy()
    });
    let err = fetch_url(&f, &server.url("/map.json")).await.unwrap_err();
    assert_eq!(server.requests().len(), 1, "not retried within the fetch");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert!(err.to_string().contains("answered HTTP 429"), "{err}");
}

#[tokio::test]
async fn a_source_unavailable_three_times_then_answering_is_fetched() {
    let server = serve(flaky(3, || StatusCode::SERVICE_UNAVAILABLE.into_response())).await;
    let (body, _) = body_of(
        fetch_url(&fetcher(fast_policy()), &server.url("/map.json"))
            .await
            .unwrap(),
    );
    assert_eq!(body, MAP.as_bytes());
    assert_eq!(server.count(), 4);
}

#[tokio::test]
async fn a_source_failing_forever_is_given_up_after_max_attempts() {
    let server = serve(Router::new().route(
        "/map.json",
        get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
    ))
    .await;
    let err = fetch_url(&fetcher(fast_policy()), &server.url("/map.json"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Status {
                code: 500,
                attempts: 4,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("gave up after 4 attempts"),
        "{err}"
    );
    assert_eq!(server.count(), 4);
}

#[tokio::test]
async fn a_408_is_retried() {
    let server = serve(flaky(1, || StatusCode::REQUEST_TIMEOUT.into_response())).await;
    body_of(
        fetch_url(&fetcher(fast_policy()), &server.url("/map.json"))
            .await
            .unwrap(),
    );
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn a_404_is_not_retried() {
    let server = serve(Router::new()).await;
    let err = fetch_url(&fetcher(fast_policy()), &server.url("/missing.json"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Status {
                code: 404,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("check the source URL"), "{err}");
    assert_eq!(server.count(), 1);
}

/// `/r/{n}` redirects to `/r/{n-1}`; `/r/0` serves the map.
fn redirect_chain() -> Router {
    Router::new().route(
        "/r/{n}",
        get(|Path(n): Path<u32>| async move {
            if n == 0 {
                MAP.into_response()
            } else {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, format!("/r/{}", n - 1))],
                )
                    .into_response()
            }
        }),
    )
}

#[tokio::test]
async fn redirects_are_followed_up_to_the_limit() {
    let server = serve(redirect_chain()).await;
    let f = fetcher(FetchPolicy {
        max_redirects: 3,
        ..fast_policy()
    });
    let (body, _) = body_of(fetch_url(&f, &server.url("/r/3")).await.unwrap());
    assert_eq!(body, MAP.as_bytes());
    assert_eq!(server.count(), 4);

    let err = fetch_url(&f, &server.url("/r/4")).await.unwrap_err();
    assert!(
        matches!(err, FetchError::TooManyRedirects { limit: 3, .. }),
        "{err:?}"
    );
    // 4 for the first fetch, then the original + 3 followed redirects; the
    // 4th redirect is not followed and the error is not retried.
    assert_eq!(server.count(), 8);
}

#[tokio::test]
async fn a_redirect_to_a_metadata_address_is_refused() {
    let app = Router::new().route(
        "/map.json",
        get(|| async {
            (
                StatusCode::MOVED_PERMANENTLY,
                [(
                    header::LOCATION,
                    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                )],
            )
        }),
    );
    let server = serve(app).await;
    let err = fetch_url(&fetcher(fast_policy()), &server.url("/map.json"))
        .await
        .unwrap_err();
    match &err {
        FetchError::ForbiddenAddress { address, url, .. } => {
            assert_eq!(address.to_string(), "169.254.169.254");
            assert!(url.starts_with("http://169.254.169.254/"), "{url}");
        }
        other => panic!("expected ForbiddenAddress, got {other:?}"),
    }
    assert_eq!(server.count(), 1, "a policy refusal is not retried");
}

#[tokio::test]
async fn a_redirect_to_another_scheme_is_refused() {
    let app = Router::new().route(
        "/map.json",
        get(|| async {
            (
                StatusCode::FOUND,
                [(header::LOCATION, "file:///etc/passwd")],
            )
        }),
    );
    let server = serve(app).await;
    let err = fetch_url(&fetcher(fast_policy()), &server.url("/map.json"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::InvalidRedirect { .. }), "{err:?}");
    assert!(err.to_string().contains("\"file\""), "{err}");
}

#[tokio::test]
async fn metadata_addresses_are_refused_without_a_request() {
    let f = fetcher(fast_policy());
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "https://[fe80::1]/",
    ] {
        let started = Instant::now();
        let err = f
            .fetch(&FetchRequest {
                url,
                headers: &[],
                timeout: Duration::from_secs(10),
                revision: None,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::ForbiddenAddress { .. }),
            "{url}: {err:?}"
        );
        // Refused before connecting: nothing to wait for, no retries.
        assert!(started.elapsed() < Duration::from_secs(1), "{url}");
        assert!(err.to_string().contains("--allow-source-cidr"), "{err}");
    }
}

#[tokio::test]
async fn an_allow_listed_cidr_lifts_the_refusal() {
    // The allow-list must take the address out of the policy's hands: the
    // fetch then fails on the network, not as ForbiddenAddress. IPv6
    // link-local is used because connecting to it without a scope id fails
    // inside the kernel, so no packet leaves this machine (a 169.254/16 probe
    // would). The same rule for 169.254.0.0/16 is covered by unit tests.
    let allowed = fetcher(FetchPolicy {
        max_attempts: 1,
        allowed_cidrs: vec!["fe80::/10".parse().unwrap()],
        ..fast_policy()
    });
    let err = allowed
        .fetch(&FetchRequest {
            url: "http://[fe80::1]/",
            headers: &[],
            timeout: Duration::from_millis(300),
            revision: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Connect { .. } | FetchError::Timeout { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused_by_its_content_length() {
    let big = vec![b' '; 2 * 1024 * 1024];
    let app = Router::new().route("/big", get(move || async move { big.clone() }));
    let server = serve(app).await;
    let err = fetch_url(
        &fetcher(FetchPolicy {
            max_body_bytes: 1024 * 1024,
            ..fast_policy()
        }),
        &server.url("/big"),
    )
    .await
    .unwrap_err();
    assert!(err.is_too_large(), "{err:?}");
    assert!(
        matches!(
            err,
            FetchError::TooLarge {
                limit: 1_048_576,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.count(), 1, "TooLarge is not retried");
}

#[tokio::test]
async fn a_streamed_body_over_the_cap_is_cut_off() {
    // 64 KiB chunks forever: only the running count can stop this one.
    let app = Router::new().route(
        "/endless",
        get(|| async {
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let chunks =
                futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            Body::from_stream(chunks)
        }),
    );
    let server = serve(app).await;
    let err = fetch_url(
        &fetcher(FetchPolicy {
            max_body_bytes: 1024 * 1024,
            ..fast_policy()
        }),
        &server.url("/endless"),
    )
    .await
    .unwrap_err();
    assert!(err.is_too_large(), "{err:?}");
}

#[tokio::test]
async fn a_body_exactly_at_the_cap_is_accepted() {
    let exact = vec![b' '; 1024];
    let app = Router::new().route("/exact", get(move || async move { exact.clone() }));
    let server = serve(app).await;
    let (body, _) = body_of(
        fetch_url(
            &fetcher(FetchPolicy {
                max_body_bytes: 1024,
                ..fast_policy()
            }),
            &server.url("/exact"),
        )
        .await
        .unwrap(),
    );
    assert_eq!(body.len(), 1024);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn a_gzip_body_is_decoded() {
    let compressed = gzip(MAP.as_bytes());
    let app = Router::new().route(
        "/map.json",
        get(move || async move { ([(header::CONTENT_ENCODING, "gzip")], compressed.clone()) }),
    );
    let server = serve(app).await;
    let (body, _) = body_of(
        fetch_url(&fetcher(fast_policy()), &server.url("/map.json"))
            .await
            .unwrap(),
    );
    assert_eq!(body, MAP.as_bytes());
    let seen = server.requests();
    let accept = seen[0].headers[header::ACCEPT_ENCODING].to_str().unwrap();
    assert!(accept.contains("gzip"), "{accept}");
    let agent = seen[0].headers[header::USER_AGENT].to_str().unwrap();
    assert_eq!(
        agent,
        concat!("costmap-operator/", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn the_real_map_arrives_whole_with_its_digests_with_a_length_and_without() {
    // Many parts of the body are hashed while it arrives: with a Content-Length (room
    // reserved up front) and gzip-encoded (no length: the body grows as it arrives).
    let map = common::real_map("1.110.2");
    let (plain, zipped) = (map.clone(), Bytes::from(gzip(&map)));
    let app = Router::new()
        .route("/plain.json", get(move || async move { plain.clone() }))
        .route(
            "/gzip.json",
            get(move || async move { ([(header::CONTENT_ENCODING, "gzip")], zipped.clone()) }),
        );
    let server = serve(app).await;
    for path in ["/plain.json", "/gzip.json"] {
        let outcome = fetch_url(&fetcher(fast_policy()), &server.url(path)).await;
        let (body, _) = body_of(outcome.unwrap());
        assert!(body == map, "{path}: the body is not the map served");
    }
}

#[tokio::test]
async fn a_gzip_bomb_is_cut_off_at_the_cap() {
    // 100 MiB of zeros, ~100 KiB on the wire, compressed one chunk at a time
    // so the test itself never holds 100 MiB either.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..100 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = Bytes::from(enc.finish().unwrap());
    assert!(bomb.len() < 1024 * 1024, "bomb is {} bytes", bomb.len());
    let app = Router::new().route(
        "/map.json",
        get(move || {
            let bomb = bomb.clone();
            async move { ([(header::CONTENT_ENCODING, "gzip")], bomb) }
        }),
    );
    let server = serve(app).await;
    let err = fetch_url(
        &fetcher(FetchPolicy {
            max_body_bytes: 1024 * 1024,
            ..fast_policy()
        }),
        &server.url("/map.json"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::TooLarge {
                limit: 1_048_576,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Collects everything logged while it is the default subscriber.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

const SECRET: &str = "sk-live-DO-NOT-LEAK-4242";

#[tokio::test]
async fn secret_headers_are_sent_and_never_shown() {
    let logs = LogCapture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // `#[tokio::test]` runs everything on this thread, server included.
    let _guard = tracing::subscriber::set_default(subscriber);
    // A callsite first reached by a test on another thread, with no subscriber there, can
    // stay cached as uninteresting; this test then missed its own "retrying" line (seen once
    // in CI). Ask every callsite again, now that this thread has a subscriber.
    tracing::callsite::rebuild_interest_cache();

    let server = serve(Router::new().route(
        "/map.json",
        get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
    ))
    .await;
    let headers = vec![
        ("X-Api-Key".to_owned(), SECRET.as_bytes().to_vec()),
        (
            "Authorization".to_owned(),
            format!("Bearer {SECRET}").into_bytes(),
        ),
    ];
    let err = fetcher(FetchPolicy {
        max_attempts: 2,
        ..fast_policy()
    })
    .fetch(&FetchRequest {
        url: &server.url("/map.json"),
        headers: &headers,
        timeout: Duration::from_secs(5),
        revision: None,
    })
    .await
    .unwrap_err();

    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.headers["x-api-key"], SECRET);
        assert_eq!(s.headers[header::AUTHORIZATION], format!("Bearer {SECRET}"));
    }
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    let logged = logs.text();
    assert!(
        logged.contains("retrying"),
        "the retry was logged: {logged}"
    );
    assert!(!logged.contains(SECRET), "secret in logs: {logged}");
}

#[tokio::test]
async fn secret_headers_stay_on_the_configured_origin() {
    let other = serve(Router::new().route("/map.json", get(|| async { MAP }))).await;
    let target = other.url("/map.json");
    let app = Router::new()
        .route(
            "/same",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/final")]) }),
        )
        .route("/final", get(|| async { MAP }))
        .route(
            "/elsewhere",
            get(move || {
                let target = target.clone();
                async move { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]) }
            }),
        );
    let origin = serve(app).await;
    let headers = vec![("X-Api-Key".to_owned(), SECRET.as_bytes().to_vec())];
    let f = fetcher(fast_policy());
    for path in ["/same", "/elsewhere"] {
        f.fetch(&FetchRequest {
            url: &origin.url(path),
            headers: &headers,
            timeout: Duration::from_secs(5),
            revision: None,
        })
        .await
        .unwrap();
    }
    let at_origin = origin.requests();
    assert_eq!(at_origin.len(), 3);
    assert!(at_origin.iter().all(|s| s.headers["x-api-key"] == SECRET));
    assert_eq!(at_origin[1].path, "/final");
    let at_other = other.requests();
    assert_eq!(at_other.len(), 1);
    assert!(
        at_other[0].headers.get("x-api-key").is_none(),
        "secret forwarded to another origin"
    );
}

#[tokio::test]
async fn an_invalid_secret_header_value_is_not_echoed() {
    let headers = vec![(
        "X-Api-Key".to_owned(),
        format!("{SECRET}\r\nX-Evil: 1").into_bytes(),
    )];
    let err = fetcher(fast_policy())
        .fetch(&FetchRequest {
            url: "http://127.0.0.1:9/",
            headers: &headers,
            timeout: Duration::from_secs(1),
            revision: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::InvalidHeader { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("X-Api-Key"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
}

#[tokio::test]
async fn userinfo_and_query_are_stripped_from_errors() {
    let server = serve(Router::new()).await;
    let f = fetcher(FetchPolicy {
        max_attempts: 1,
        ..fast_policy()
    });
    // A status error from a live server...
    let url = format!(
        "http://alice:{SECRET}@{}/missing.json?token={SECRET}#{SECRET}",
        server.addr
    );
    let err = fetch_url(&f, &url).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Status { code: 404, .. }),
        "{err:?}"
    );
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains(SECRET) && !shown.contains("alice"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("http://{}/missing.json", server.addr)),
        "{shown}"
    );

    // ...and a connection error (reqwest's own message embeds the full URL).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://alice:{SECRET}@{closed}/map.json?token={SECRET}");
    let err = fetch_url(&f, &url).await.unwrap_err();
    assert!(matches!(err, FetchError::Connect { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains(SECRET) && !shown.contains("alice"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("http://{closed}/map.json")),
        "{shown}"
    );
}

#[tokio::test]
async fn non_http_schemes_are_refused() {
    let f = fetcher(fast_policy());
    for url in [
        "file:///etc/passwd",
        "ftp://example.com/map.json",
        "gopher://x/",
    ] {
        let err = fetch_url(&f, url).await.unwrap_err();
        assert!(
            matches!(err, FetchError::InvalidUrl { .. }),
            "{url}: {err:?}"
        );
        assert!(err.to_string().contains("use http or https"), "{err}");
    }
    let err = fetch_url(&f, "not a url").await.unwrap_err();
    assert!(matches!(err, FetchError::InvalidUrl { .. }), "{err:?}");
}
