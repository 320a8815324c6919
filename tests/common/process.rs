//! `costmap-operator run`, the built binary, as a replica in a cluster runs it: its own pod
//! name, the Lease in the test's namespace, its log in a file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use testenv::TiedChild;

const BIN: &str = env!("CARGO_BIN_EXE_costmap-operator");

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
        cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")])
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
