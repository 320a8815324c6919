//! The upstream map source the scenarios point the examples at: Python's `http.server` (a real
//! HTTP server, with Last-Modified and If-Modified-Since) on the host's address, which pods
//! reach through the bridge, serving real LiteLLM maps and the same maps with a day-0 model.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};
use testenv::TiedChild;

use super::env::wait_for;

/// The day-0 model the examples route (`openai/gpt-day0-preview`): in no released map.
pub const DAY0_MODEL: &str = "gpt-day0-preview";
/// The LiteLLM release whose map is the "before" map.
const BASE_RELEASE: &str = "1.108.0";

pub struct MapSource {
    host_ip: String,
    port: u16,
    dir: PathBuf,
    /// Each file's modification time is kept ahead of the last one: http.server's
    /// Last-Modified has whole seconds, and two maps in one second must not look the same.
    last_modified: Mutex<SystemTime>,
    _server: TiedChild,
}

impl MapSource {
    pub fn start(host_ip: &str, dir: &Path) -> Result<MapSource> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = testenv::free_port()?;
        let mut server = Command::new("python3");
        server
            .args(["-m", "http.server", "--bind", host_ip])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = testenv::spawn_tied(server).context("starting python3 -m http.server")?;
        let address = format!("{host_ip}:{port}");
        wait_for("the map source to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&address)
                .map(drop)
                .with_context(|| format!("connecting to {address}"))
        })?;
        Ok(MapSource {
            host_ip: host_ip.to_owned(),
            port,
            dir: dir.to_owned(),
            last_modified: Mutex::new(SystemTime::UNIX_EPOCH),
            _server: server,
        })
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}:{}/{name}", self.host_ip, self.port)
    }

    /// Replaces `name` whole (written aside, then renamed), as a mirror publishes.
    pub fn publish(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        let staged = self.dir.join(format!(".{name}.new"));
        std::fs::write(&staged, bytes).with_context(|| format!("writing {}", staged.display()))?;
        let mut last_modified = self
            .last_modified
            .lock()
            .map_err(|_| anyhow::anyhow!("a publish panicked"))?;
        let modified = SystemTime::now().max(*last_modified + Duration::from_secs(1));
        std::fs::File::options()
            .write(true)
            .open(&staged)?
            .set_modified(modified)?;
        *last_modified = modified;
        std::fs::rename(&staged, &path).with_context(|| format!("renaming to {}", path.display()))
    }
}

/// LiteLLM 1.108.0's own map, as a map at the source.
pub fn base_map() -> Result<Vec<u8>> {
    let path = testenv::litellm_map(BASE_RELEASE)?;
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// `map` with the day-0 model added at these prices per token, as upstream adds a model on
/// launch day.
pub fn with_day0(map: &[u8], input: f64, output: f64) -> Result<Vec<u8>> {
    let mut parsed: Map<String, Value> = serde_json::from_slice(map).context("the base map")?;
    parsed.insert(
        DAY0_MODEL.to_owned(),
        json!({
            "litellm_provider": "openai",
            "mode": "chat",
            "max_input_tokens": 400000,
            "max_output_tokens": 128000,
            "input_cost_per_token": input,
            "output_cost_per_token": output,
        }),
    );
    Ok(serde_json::to_vec_pretty(&parsed)?)
}

/// `sha256:<hex>` of the bytes: the map's digest as status and the ConfigMap name it.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
