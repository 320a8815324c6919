//! `costmap-operator agent`, the built binary, as a test runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use axum::http::StatusCode;
use costmap_operator::api::DEFAULT_KEY;
use testenv::TiedChild;

use super::eventually;

const BIN: &str = env!("CARGO_BIN_EXE_costmap-operator");

/// `costmap-operator agent` on `dir`, reloading `reload_url`, logging into a file.
pub struct Agent {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: PathBuf,
    process: TiedChild,
    _log_dir: tempfile::TempDir,
}

impl Agent {
    /// Starts it on `dir`, with `master_key` as LITELLM_MASTER_KEY.
    pub fn start(dir: &Path, master_key: &str, reload_url: &str) -> Agent {
        Self::start_with(
            dir,
            &["--reload-url", reload_url],
            &[("LITELLM_MASTER_KEY", master_key)],
        )
    }

    /// Starts it on `dir`, serving only maps that `sync` (`namespace/name`) names in its
    /// status, found through `kubeconfig`; no proxy to reload.
    pub fn start_verifying(dir: &Path, kubeconfig: &Path, sync: &str) -> Agent {
        let kubeconfig = kubeconfig.to_string_lossy();
        Self::start_with(
            dir,
            &["--verify-with", sync],
            &[("KUBECONFIG", &kubeconfig)],
        )
    }

    /// Starts it on `dir` with extra `args`.
    pub fn start_with(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Agent {
        let port = testenv::free_port().unwrap();
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("agent.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["agent", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--watch-dir")
            .arg(dir)
            .args(args)
            // Changes must be found by file events: the safety-net re-check never runs here.
            .args(["--recheck-interval", "1h"])
            .envs(envs.iter().copied())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file));
        Agent {
            url: format!("http://127.0.0.1:{port}"),
            log,
            process: testenv::spawn_tied(cmd).unwrap(),
            _log_dir: log_dir,
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn map_url(&self) -> String {
        format!("{}/{DEFAULT_KEY}", self.url)
    }

    pub async fn get(&self, path: &str) -> Option<(StatusCode, bytes::Bytes)> {
        let response = reqwest::get(format!("{}{path}", self.url)).await.ok()?;
        Some((response.status(), response.bytes().await.ok()?))
    }

    /// The map served now (None: 404).
    pub async fn map(&self) -> Option<bytes::Bytes> {
        let (status, body) = self.get(&format!("/{DEFAULT_KEY}")).await?;
        (status == StatusCode::OK).then_some(body)
    }

    pub async fn status(&self) -> serde_json::Value {
        let (_, body) = self
            .get("/status")
            .await
            .expect("the agent answers /status");
        serde_json::from_slice(&body).unwrap()
    }

    /// Waits until the agent has looked at the directory after `checks` looks.
    pub async fn wait_looked_since(&self, checks: u64) -> serde_json::Value {
        eventually("the agent looks at the directory again", || async {
            let status = self.status().await;
            (status["checks"].as_u64()? > checks).then_some(status)
        })
        .await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}
