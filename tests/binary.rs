//! The built `costmap-operator` binary end to end: `crd`, `check` on files and URLs, and
//! `run` against the real control plane (health, metrics, a sync, graceful SIGTERM), and
//! `run` failing cleanly when it cannot reach or use the cluster.

mod common;

use common::process::OperatorProcess;
use costmap_operator::api::Reason;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use common::{Answer, DEADLINE, Source, control_plane, eventually, small_map};
use costmap_operator::api::DEFAULT_KEY;
use costmap_operator::digest::{git_blob_id, sha256_digest};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_costmap-operator");

/// How one run of the binary ended.
#[derive(Debug)]
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The exit code; None (killed by a signal) fails the test.
    fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }

    /// Asserts exit code 1 (a clean failure, never 101 = panic) and returns stderr.
    fn failed_cleanly(&self, what: &str) -> &str {
        assert_eq!(
            self.code(),
            1,
            "{what}: expected exit code 1\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "{what}: panicked: {}",
            self.stderr
        );
        &self.stderr
    }
}

/// Runs the binary to completion (killed at [`DEADLINE`]), with output captured in files so
/// a chatty child can never block on a full pipe.
fn run_bin<I, S>(args: I, configure: impl FnOnce(&mut Command)) -> Ran
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    configure(&mut cmd);
    let mut child = testenv::spawn_tied(cmd).expect("start the binary");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            child.kill();
            panic!(
                "the binary did not exit within {DEADLINE:?}\nstderr: {}",
                read_lossy(&err_path)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
    }
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// `costmap-operator check ARGS...`.
fn check(args: &[&str]) -> Ran {
    run_bin(std::iter::once("check").chain(args.iter().copied()), |_| {})
}

/// [`check`] from async code: the runtime keeps serving loopback sources meanwhile.
async fn check_async(args: &[&str]) -> Ran {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check(&args)
    })
    .await
    .unwrap()
}

/// Writes `bytes` to a fresh file; the directory lives as long as the returned guard.
fn write_map(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model_prices_and_context_window.json");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// The value of a `name: value` line of check's summary.
fn summary_field<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{stdout}"))
}

/// Deterministic pseudo-random bytes (xorshift64), so a failure reproduces.
fn garbage(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn crd_prints_exactly_the_committed_crd() {
    let ran = run_bin(["crd"], |_| {});
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert!(
        ran.stdout == include_str!("../crds/modelcostmapsync.yaml"),
        "`costmap-operator crd` differs from crds/modelcostmapsync.yaml"
    );
    assert!(ran.stderr.is_empty(), "{}", ran.stderr);
    let cluster = run_bin(["crd", "clustermodelcostmapsync"], |_| {});
    assert_eq!(cluster.code(), 0, "{}", cluster.stderr);
    assert!(
        cluster.stdout == include_str!("../crds/clustermodelcostmapsync.yaml"),
        "`costmap-operator crd clustermodelcostmapsync` differs from crds/clustermodelcostmapsync.yaml"
    );
}

#[test]
fn check_of_a_valid_file_prints_models_digest_blob_id_and_size() {
    let map = small_map(60, &[]);
    let (_dir, path) = write_map(&map);
    let path = path.to_str().unwrap();
    let ran = check(&[path]);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert_eq!(summary_field(&ran.stdout, "models"), "60");
    assert_eq!(summary_field(&ran.stdout, "digest"), sha256_digest(&map));
    assert!(summary_field(&ran.stdout, "digest").starts_with("sha256:"));
    assert_eq!(summary_field(&ran.stdout, "git blob id"), git_blob_id(&map));
    assert_eq!(
        summary_field(&ran.stdout, "size"),
        format!("{} bytes", map.len())
    );
    assert!(ran.stdout.contains(path), "names what it checked");
}

#[test]
fn check_of_the_real_map_matches_what_litellm_reports() {
    let real = common::real_map("1.110.2");
    let (_dir, path) = write_map(&real);
    let ran = check(&[path.to_str().unwrap()]);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert!(ran.stdout.contains("models:      4876"), "{}", ran.stdout);
    let blob = summary_field(&ran.stdout, "git blob id");
    assert!(blob.starts_with("c8f11f1b697e"), "{blob}");
    assert_eq!(blob, git_blob_id(&real));
    assert_eq!(
        summary_field(&ran.stdout, "size"),
        format!("{} bytes", real.len())
    );
}

#[test]
fn commands_end_quietly_when_their_reader_has_gone() {
    let (_dir, path) = write_map(&small_map(60, &[]));
    let path = path.to_string_lossy();
    let runs: [&[&str]; 3] = [
        &["check", &path],
        &["diff", &path, &path],
        &["crd", "modelcostmapsync"],
    ];
    for args in runs {
        // The pipe's reading end is closed before the binary starts, as `| head` closes
        // it after the lines it wanted: every write to it fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let ran = run_bin(args, |cmd| {
            cmd.stdout(writer);
        });
        assert_eq!(ran.code(), 0, "{args:?}: {}", ran.stderr);
        assert!(ran.stderr.is_empty(), "{args:?}: {}", ran.stderr);
    }
}

#[test]
fn check_refuses_invalid_files_with_exit_code_1_and_the_reason() {
    let deep_array = "[".repeat(200_000);
    let deep_in_map = format!("{{\"model\": {}", "[".repeat(200_000));
    let ten_models = small_map(10, &[]);
    let valid = small_map(60, &[]);
    let numbers = serde_json::to_string(
        &(0..60)
            .map(|i| (format!("model-{i}"), json!(i)))
            .collect::<serde_json::Map<_, _>>(),
    )
    .unwrap();
    let two_documents = format!("{}\n{{}}", String::from_utf8_lossy(&valid));
    let cases: [(&str, &[u8], &str); 10] = [
        (
            "HTML",
            b"<!DOCTYPE html><html><body>rate limited</body></html>",
            "looks like HTML",
        ),
        ("truncated JSON", &valid[..500], "the JSON is truncated"),
        ("an array", b"[]", "not a JSON object"),
        ("an empty file", b"", "the body is empty"),
        ("random bytes", &garbage(64 * 1024), "not a JSON object"),
        (
            "200k nested arrays",
            deep_array.as_bytes(),
            "not a JSON object",
        ),
        (
            "200k nested arrays in a map",
            deep_in_map.as_bytes(),
            "recursion limit",
        ),
        ("10 models", &ten_models, "fewer than minModels 50"),
        (
            "models that are not objects",
            numbers.as_bytes(),
            // No map at all: described by its shape, never its keys or values.
            "not a map of model entries: 0 of its 60 top-level values are objects",
        ),
        (
            "two JSON documents",
            two_documents.as_bytes(),
            "trailing characters",
        ),
    ];
    for (what, bytes, reason) in cases {
        let (_dir, path) = write_map(bytes);
        let ran = check(&[path.to_str().unwrap()]);
        let stderr = ran.failed_cleanly(what);
        assert!(
            stderr.contains(reason),
            "{what}: stderr should say {reason:?}: {stderr}"
        );
        assert!(ran.stdout.is_empty(), "{what}: {}", ran.stdout);
    }

    // The flag lowers the floor: the same 10-model map passes with --min-models 10.
    let (_dir, path) = write_map(&ten_models);
    let ran = check(&[path.to_str().unwrap(), "--min-models", "10"]);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert_eq!(summary_field(&ran.stdout, "models"), "10");
}

#[test]
fn check_refuses_missing_files_and_non_http_sources() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-map.json");
    let ran = check(&[missing.to_str().unwrap()]);
    let stderr = ran.failed_cleanly("missing file");
    assert!(
        stderr.contains(missing.to_str().unwrap()) && stderr.contains("No such file"),
        "{stderr}"
    );

    for source in ["file:///etc/passwd", "ftp://x/y"] {
        // Run where the URL cannot happen to name a relative path.
        let ran = run_bin(["check", source], |cmd| {
            cmd.current_dir(dir.path());
        });
        let stderr = ran.failed_cleanly(source);
        assert!(stderr.contains(source), "{source}: {stderr}");
        assert!(stderr.contains("use http or https"), "{source}: {stderr}");
        assert!(
            !stderr.contains("root:") && !ran.stdout.contains("root:"),
            "{source}: /etc/passwd was read: {stderr}"
        );
    }

    // Cloud metadata is refused before any connection is made.
    let ran = check(&["http://169.254.169.254/latest/meta-data/"]);
    let stderr = ran.failed_cleanly("metadata address");
    assert!(stderr.contains("link-local"), "{stderr}");
}

#[tokio::test]
async fn check_of_a_url_fetches_with_the_operators_client() {
    let map = small_map(60, &[]);
    let source = Source::start(Answer::Map(map.clone())).await;
    let ran = check_async(&[&source.url]).await;
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert_eq!(summary_field(&ran.stdout, "models"), "60");
    assert_eq!(summary_field(&ran.stdout, "digest"), sha256_digest(&map));
    assert_eq!(source.statuses(), [200]);

    source.set(Answer::Status(
        StatusCode::INTERNAL_SERVER_ERROR,
        Bytes::from_static(b"upstream exploded"),
    ));
    let ran = check_async(&[&source.url, "--timeout", "5s"]).await;
    let stderr = ran.failed_cleanly("HTTP 500");
    assert!(stderr.contains("500"), "{stderr}");
    assert!(
        source.statuses().len() > 2 && source.statuses()[1..].iter().all(|s| *s == 500),
        "a 500 is retried: {:?}",
        source.statuses()
    );
}

/// Runs `openssl ARGS...` in `dir`, which must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect(
            "the openssl command (Debian's openssl package) is needed to make test certificates",
        );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` (`name.pem`, `name.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let (key, cert, subject) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subject,
            "-keyout",
            &key,
            "-out",
            &cert,
        ],
    );
}

#[test]
fn check_of_an_https_url_verifies_against_the_system_roots_which_plain_http_never_loads() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    make_ca(dir, "trusted");
    make_ca(dir, "stranger");
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "trusted.pem",
            "-CAkey",
            "trusted.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
            "-out",
            "server.pem",
        ],
    );
    // A certificate file whose only certificate does not parse: a client that loads the
    // system's roots from it fails to build.
    std::fs::write(
        dir.join("broken.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(dir.join("map.json"), small_map(60, &[])).unwrap();

    // A real TLS server: openssl's, serving the directory (HTTP/1.0, the body to the close).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl");
    server
        .args([
            "s_server",
            "-quiet",
            "-WWW",
            "-cert",
            "server.pem",
            "-key",
            "server.key",
        ])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = testenv::spawn_tied(server).expect("start openssl s_server");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < DEADLINE,
            "openssl s_server never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let check_with_roots = |url: &str, roots: &str| {
        run_bin(["check", url, "--fetch-attempts", "1"], |cmd| {
            cmd.env("SSL_CERT_FILE", dir.join(roots))
                .env_remove("SSL_CERT_DIR");
        })
    };
    let https = format!("https://127.0.0.1:{port}/map.json");
    let ran = check_with_roots(&https, "trusted.pem");
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert_eq!(summary_field(&ran.stdout, "models"), "60");

    let ran = check_with_roots(&https, "stranger.pem");
    let stderr = ran.failed_cleanly("a server the roots do not vouch for");
    assert!(stderr.contains("certificate"), "{stderr}");
    // The same certificate is refused on every attempt: the first is the last, whatever
    // --fetch-attempts allows (the default, four, would wait seven seconds to say so).
    let ran = run_bin(["check", &https], |cmd| {
        cmd.env("SSL_CERT_FILE", dir.join("stranger.pem"))
            .env_remove("SSL_CERT_DIR");
    });
    let stderr = ran.failed_cleanly("a certificate refused with attempts to spare");
    assert!(
        stderr.contains("certificate") && !stderr.contains("attempts"),
        "{stderr}"
    );

    let ran = check_with_roots(&https, "broken.pem");
    let stderr = ran.failed_cleanly("roots that do not load");
    assert!(
        stderr.contains("could not set up the HTTP client"),
        "{stderr}"
    );
    server.kill();

    // Plain HTTP and files never load the roots, so the broken ones do not matter to them.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let source = runtime.block_on(Source::start(Answer::Map(small_map(60, &[]))));
    let ran = check_with_roots(&source.url, "broken.pem");
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    let map = dir.join("map.json");
    let ran = check_with_roots(&map.to_string_lossy(), "broken.pem");
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
}

/// The value of an unlabelled counter in Prometheus text.
fn counter(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn run_serves_health_syncs_and_stops_gracefully_on_sigterm() {
    let client = common::client().await;
    let ns = common::namespace(&client, "binary-run").await;
    let map = small_map(60, &[]);
    let source = Source::start(Answer::Map(map.clone())).await;
    let mut operator = OperatorProcess::start_logging(
        &control_plane().kubeconfig,
        &ns,
        "binary-test",
        &["--namespace", &ns],
        "info",
    );

    assert_eq!(operator.wait_ok("/readyz").await, "ready");
    assert_eq!(operator.get("/healthz").await.map(|r| r.0), Some(200));
    let metrics = operator.wait_ok("/metrics").await;
    assert!(metrics.contains("costmap_reconciles_total"), "{metrics}");

    common::create_sync(
        &client,
        &ns,
        "litellm",
        json!({"source": {"url": source.url, "timeout": "5s"}}),
    )
    .await;
    let sync = common::wait_ready(&client, &ns, "litellm", "True", Reason::Synced).await;
    operator.assert_alive();
    let artifact = sync.status.unwrap().artifact.expect("artifact");
    assert_eq!(artifact.digest, sha256_digest(&map));
    assert_eq!(artifact.models, 60);
    let cm = common::config_maps(&client, &ns)
        .get("litellm")
        .await
        .expect("the binary wrote the ConfigMap");
    assert_eq!(common::stored_bytes(&cm, DEFAULT_KEY), map.as_ref());

    // The binary's controller and its /metrics share one registry.
    let metrics = eventually("/metrics to count the sync", || async {
        let (_, text) = operator.get("/metrics").await?;
        let counted = counter(&text, "costmap_reconciles_total")? >= 1.0
            && text.contains("costmap_syncs_total{result=\"updated\"} 1");
        counted.then_some(text)
    })
    .await;
    assert!(metrics.contains("# TYPE costmap_syncs"), "{metrics}");

    let pid = operator.pid().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success(), "kill -TERM {pid}");
    let status = eventually("costmap-operator to exit after SIGTERM", || {
        let exited = operator.try_wait();
        async move { exited }
    })
    .await;
    assert_eq!(
        status.code(),
        Some(0),
        "graceful shutdown exits 0 ({status}):\n{}",
        operator.log_text()
    );
    assert!(
        operator.get("/healthz").await.is_none(),
        "the HTTP server stopped with the process"
    );
}

/// Writes `path`: a kubeconfig for `server` with a bearer token, skipping TLS verification.
fn write_kubeconfig(path: &Path, server: &str, token: &str) {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": true}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    });
    std::fs::write(path, serde_yaml::to_string(&config).unwrap()).unwrap();
}

#[test]
fn run_fails_cleanly_when_it_cannot_use_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let nobody_listens = dir.path().join("nobody-listens");
    let port = testenv::free_port().unwrap();
    write_kubeconfig(
        &nobody_listens,
        &format!("https://127.0.0.1:{port}"),
        "token",
    );
    let bad_token = dir.path().join("bad-token");
    write_kubeconfig(&bad_token, &control_plane().server, "not-a-valid-token");
    let missing = dir.path().join("no-such-kubeconfig");
    let cases = [
        (
            "nothing listens",
            nobody_listens,
            "listing ModelCostMapSync objects",
        ),
        (
            "credentials refused",
            bad_token,
            "listing ModelCostMapSync objects",
        ),
        ("no kubeconfig file", missing, "finding the cluster"),
    ];
    for (what, kubeconfig, reason) in cases {
        let port = testenv::free_port().unwrap();
        let ran = run_bin(
            [
                "run",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--namespace",
                "default",
            ],
            |cmd| {
                cmd.env("KUBECONFIG", &kubeconfig)
                    .env_remove("KUBERNETES_SERVICE_HOST")
                    .env_remove("KUBERNETES_SERVICE_PORT");
            },
        );
        let stderr = ran.failed_cleanly(what);
        assert!(
            stderr.contains(reason),
            "{what}: stderr should say {reason:?}: {stderr}"
        );
    }
}
