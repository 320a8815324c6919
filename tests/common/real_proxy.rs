//! A real LiteLLM proxy process (`litellm[proxy]` from PyPI, no database) on loopback, in one
//! of the venvs `testenv::litellm_venv` builds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use testenv::TiedChild;

/// How long a real proxy may take to start (about 7 s here).
pub const PROXY_START: Duration = Duration::from_secs(120);

/// The venv of `which` (`testenv::LITELLM_*_VENV`), built on first use.
pub fn venv(which: (&str, &str)) -> PathBuf {
    testenv::litellm_venv(which.0, which.1)
        .unwrap_or_else(|err| panic!("the real {} is needed: {err:#}", which.1))
}

/// The Secret `litellm-master-key` (key `masterKey`) holding a proxy's master key, as the
/// consumers' adminKeySecretRef names it.
pub async fn create_master_key_secret(client: &kube::Client, ns: &str, master_key: &str) {
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "litellm-master-key"},
        "stringData": {"masterKey": master_key},
    }))
    .unwrap();
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
}

/// Where the project's LiteLLM callback module is.
pub fn module_dir() -> PathBuf {
    testenv::workspace_root().join("integrations/litellm")
}

/// A proxy config directory as examples/litellm-proxy-no-db.yaml ships it: config.yaml
/// routing `day0-model` (the day-0 model, unpriced until a map prices it) and gpt-4o, with
/// mock responses, and, when `with_module`, the callback module loaded from next to it.
pub fn module_config(dir: &Path, with_module: bool) -> PathBuf {
    let day0 = super::DAY0_MODEL;
    let mut config = format!(
        "model_list:\n\
         \x20 - model_name: day0-model\n\
         \x20   litellm_params: {{model: openai/{day0}, api_key: sk-fake, mock_response: hi}}\n\
         \x20 - model_name: gpt-4o\n\
         \x20   litellm_params: {{model: openai/gpt-4o, api_key: sk-fake, mock_response: hi}}\n"
    );
    if with_module {
        config.push_str("litellm_settings:\n  callbacks: [\"costmap_reload.handler\"]\n");
        std::fs::copy(
            module_dir().join("costmap_reload.py"),
            dir.join("costmap_reload.py"),
        )
        .unwrap();
    }
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    dir.join("config.yaml")
}

/// How to run a proxy.
pub struct ProxyOptions {
    /// The venv (`testenv::LITELLM_PROXY_VENV` or another).
    pub venv: (&'static str, &'static str),
    /// A config.yaml to pass with `--config` (the callback module next to it).
    pub config: Option<PathBuf>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            venv: testenv::LITELLM_PROXY_VENV,
            config: None,
            env: Vec::new(),
        }
    }
}

/// A running proxy.
pub struct RealProxy {
    pub url: String,
    port: u16,
    map_url: String,
    pub master_key: String,
    pub log: PathBuf,
    options: ProxyOptions,
    process: Option<TiedChild>,
}

impl RealProxy {
    /// Starts a proxy that loads its map from `map_url`, with the default options.
    pub async fn start(map_url: &str, master_key: &str, log_dir: &Path) -> RealProxy {
        RealProxy::start_with(map_url, master_key, log_dir, ProxyOptions::default()).await
    }

    /// Starts a proxy that loads its map from `map_url`, and waits until it answers.
    pub async fn start_with(
        map_url: &str,
        master_key: &str,
        log_dir: &Path,
        options: ProxyOptions,
    ) -> RealProxy {
        let port = testenv::free_port().unwrap();
        let mut proxy = RealProxy {
            url: format!("http://127.0.0.1:{port}"),
            port,
            map_url: map_url.to_owned(),
            master_key: master_key.to_owned(),
            log: log_dir.join(format!("litellm-proxy-{port}.log")),
            options,
            process: None,
        };
        proxy.restart().await;
        proxy
    }

    /// (Re)starts the process and waits until it answers GET /model/cost_map/source.
    pub async fn restart(&mut self) {
        if let Some(mut old) = self.process.take() {
            old.kill();
        }
        let litellm = venv(self.options.venv).join("bin").join("litellm");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(litellm);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()]);
        if let Some(config) = &self.options.config {
            cmd.arg("--config").arg(config);
        }
        cmd.env("LITELLM_MODEL_COST_MAP_URL", &self.map_url)
            .env("LITELLM_MASTER_KEY", &self.master_key)
            .env_remove("DATABASE_URL")
            .env_remove("LITELLM_LOCAL_MODEL_COST_MAP")
            .env("NO_PROXY", "*")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        self.process = Some(testenv::spawn_tied(cmd).expect("starting litellm"));
        let http = reqwest::Client::new();
        let log = self.log.clone();
        let explain = move || {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("its log:\n{log}")
        };
        let this = &*self;
        super::eventually_explained("litellm to answer", PROXY_START, explain, || async {
            this.source(&http).await
        })
        .await;
    }

    /// What it answers to GET /model/cost_map/source.
    pub async fn source(&self, http: &reqwest::Client) -> Option<serde_json::Value> {
        self.get_json(http, "model/cost_map/source").await
    }

    /// GET <url>/<path> with the master key, as JSON.
    pub async fn get_json(&self, http: &reqwest::Client, path: &str) -> Option<serde_json::Value> {
        let response = http
            .get(format!("{}/{path}", self.url))
            .bearer_auth(&self.master_key)
            .send()
            .await
            .ok()?;
        let body = response.error_for_status().ok()?.bytes().await.ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// Lists it under the ModelCostMapSync's `consumers.litellmProxies`, by URL, with the
    /// key of [`create_master_key_secret`].
    pub async fn list_as_consumer(&self, client: &kube::Client, ns: &str, name: &str) {
        let patch = serde_json::json!({"spec": {"consumers": {"litellmProxies": [
            {"url": self.url, "adminKeySecretRef": {"name": "litellm-master-key", "key": "masterKey"}},
        ]}}});
        super::syncs(client, ns)
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, for reading its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(TiedChild::id)
    }
}
