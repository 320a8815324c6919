//! `costmap-operator run`, the built binary, as a replica in a cluster runs it: its own pod
//! name, the Lease in the test's namespace, its log in a file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use testenv::TiedChild;

const BIN: &str = env!("CARGO_BIN_EXE_costmap-operator");

/// `--map-access open` and `--metrics-access open`, each unless `args` choose: these tests
/// read maps and metrics as a single-team set-up does; `tests/tenancy` runs token mode.
fn open_unless_given(args: &[&str]) -> Vec<&'static str> {
    let given = |flag: &str| args.iter().any(|arg| arg.starts_with(flag));
    let mut open = Vec::new();
    if !given("--map-access") {
        open.extend(["--map-access", "open"]);
    }
    if !given("--metrics-access") {
        open.extend(["--metrics-access", "open"]);
    }
    open
}

/// One operator process.
pub struct OperatorProcess {
    /// `http://127.0.0.1:PORT` of its HTTP server.
    pub url: String,
    /// Its pod name (the Lease's holderIdentity when it leads).
    pub pod: String,
    log: PathBuf,
    process: TiedChild,
    _log_dir: tempfile::TempDir,
}

impl OperatorProcess {
    /// Starts `costmap-operator run ARGS...` with `kubeconfig`, as pod `pod` of namespace
    /// `pod_namespace` (where its Lease lives), logging at `RUST_LOG=debug`.
    pub fn start(
        kubeconfig: &Path,
        pod_namespace: &str,
        pod: &str,
        args: &[&str],
    ) -> OperatorProcess {
        Self::start_logging(kubeconfig, pod_namespace, pod, args, "debug")
    }

    /// [`OperatorProcess::start`] with another `RUST_LOG` (benches log `warn`).
    pub fn start_logging(
        kubeconfig: &Path,
        pod_namespace: &str,
        pod: &str,
        args: &[&str],
        rust_log: &str,
    ) -> OperatorProcess {
        let port = testenv::free_port().unwrap();
        Self::start_on(kubeconfig, pod_namespace, pod, args, rust_log, port)
    }

    /// A bench's replica: one namespace, no gap between syncs, logging `warn`.
    pub fn quiet(namespace: &str) -> OperatorProcess {
        let args = ["--namespace", namespace, super::NO_SYNC_GAP];
        let kubeconfig = &super::control_plane().kubeconfig;
        Self::start_logging(kubeconfig, namespace, "operator-0", &args, "warn")
    }

    /// [`OperatorProcess::quiet`] with the ModelCostMapSync `litellm` on `source_url`
    /// created and Ready.
    pub async fn quiet_with_litellm_sync(
        client: &kube::Client,
        namespace: &str,
        source_url: &str,
    ) -> OperatorProcess {
        let operator = Self::quiet(namespace);
        super::create_litellm_sync(client, namespace, source_url).await;
        super::wait_ready(
            client,
            namespace,
            "litellm",
            "True",
            costmap_operator::api::Reason::Synced,
        )
        .await;
        operator
    }

    /// [`OperatorProcess::start_logging`] on a given port: a restarted replica behind the
    /// same address.
    pub fn start_on(
        kubeconfig: &Path,
        pod_namespace: &str,
        pod: &str,
        args: &[&str],
        rust_log: &str,
        port: u16,
    ) -> OperatorProcess {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("operator.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")]);
        // The tests' sources and proxies are on loopback, which the address policy refuses;
        // a test that passes an allow flag of its own chooses its policy itself.
        if !args.iter().any(|arg| arg.starts_with("--allow-")) {
            cmd.args(super::ALLOW_LOOPBACK_ARGS);
        }
        cmd.args(open_unless_given(args))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", pod_namespace)
            .env("POD_NAME", pod)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file));
        OperatorProcess {
            url: format!("http://127.0.0.1:{port}"),
            pod: pod.to_owned(),
            log,
            process: testenv::spawn_tied(cmd).expect("starting the operator"),
            _log_dir: log_dir,
        }
    }

    /// The port of its HTTP server.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("the URL ends in a port")
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// `Some(status)` once it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.process.try_wait().expect("checking on the operator")
    }

    /// Fails the test, with the log, if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!(
                "costmap-operator run exited early ({status}):\n{}",
                self.log_text()
            );
        }
    }

    /// GET `path` of its HTTP server: status and body, or None if nothing answered.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        get(&self.url, path).await
    }

    /// Waits until `path` answers 200 and returns the body; fails, with the log, if the
    /// process dies first.
    pub async fn wait_ok(&mut self, path: &str) -> String {
        let what = format!("{path} to answer 200");
        let (url, log) = (self.url.clone(), self.log.clone());
        let explain = move || std::fs::read_to_string(&log).unwrap_or_default();
        let this = std::cell::RefCell::new(self);
        super::eventually_explained(&what, super::DEADLINE, explain, || async {
            this.borrow_mut().assert_alive();
            match get(&url, path).await {
                Some((200, body)) => Some(body),
                _ => None,
            }
        })
        .await
    }

    /// SIGKILLs it: no goodbye, no Lease release.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of an unlabelled metric (or the first series of it), if served.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let metric = series.split('{').next()?;
                (metric == name).then(|| value.parse().ok()).flatten()
            })
    }
}

/// GET `base` + `path`: status and body, or None if nothing answered.
async fn get(base: &str, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .ok()?
        .get(format!("{base}{path}"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}
