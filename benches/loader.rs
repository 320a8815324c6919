//! Fetch and validate of the real LiteLLM map over HTTP on loopback (issue 24): our whole
//! process, `costmap-operator check <URL>` from spawn to exit, against LiteLLM's own loader,
//! `litellm.get_model_cost_map(url=URL)`, timed in-process in one Python process that has
//! already imported litellm (`benches/support/litellm_loader.py`). Both fetch the same 3.5 MB
//! map (litellm 1.110.2's) from the same loopback source (`Source`, tests/common). LiteLLM is
//! run from the library venv (1.110.2) and the proxy venv (1.108.0).
//!
//! Each side gets one untimed warm-up load first: an untimed `check` run, and the load that
//! `import litellm` itself runs (from the same source, through LITELLM_MODEL_COST_MAP_URL).
//! Every timed LiteLLM call must report a remote load of the fetched bytes (its source info,
//! git blob id); every `check` must exit 0 with the same git blob id and model count.
//! For context, RUNS times each: `check` of the same map from a file, `costmap-operator
//! --version` (what a process costs before any work), and in Python the fetch alone as
//! LiteLLM makes it (`httpx.get(url).content`) and the bare `json.loads` of the map's bytes.
//! Prints figures; asserts none of them.
//!
//! `cargo bench --bench loader` (RUNS=N loads each, default 15)

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/figures.rs"]
mod figures;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::real_proxy::venv;
use common::*;
use costmap_operator::digest::git_blob_id;
use figures::{max, median, min};

const BIN: &str = env!("CARGO_BIN_EXE_costmap-operator");
const MAP_VERSION: &str = "1.110.2";

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15);
    assert!(runs > 0, "RUNS must be at least 1");
    let map_file = testenv::litellm_map(MAP_VERSION).unwrap_or_else(|err| {
        panic!("the real litellm {MAP_VERSION} map is needed for this bench: {err:#}")
    });
    let map = real_map(MAP_VERSION);
    let blob = git_blob_id(&map);
    let source = Source::start(Answer::Map(map.clone())).await;
    let url = source.url.clone();

    // Ours: one untimed run, then `runs` timed ones.
    let (models, _) = check(&url, &blob);
    let ours: Vec<f64> = (0..runs).map(|_| check(&url, &blob).1).collect();
    let from_file: Vec<f64> = (0..runs)
        .map(|_| check(&map_file.to_string_lossy(), &blob).1)
        .collect();
    let floor: Vec<f64> = (0..runs).map(|_| version()).collect();

    let litellm: Vec<Loader> = [testenv::LITELLM_LIB_VENV, testenv::LITELLM_PROXY_VENV]
        .into_iter()
        .map(|which| Loader::run(which, &url, runs, &map_file, &blob, models))
        .collect();

    println!(
        "fetch + validate of the real {:.1} MB map (litellm {MAP_VERSION}'s, {} bytes, {models} models) over HTTP on loopback, {runs} loads each, release build:",
        map.len() as f64 / 1e6,
        map.len(),
    );
    let ours_median = median(&ours);
    println!(
        "  ours, `costmap-operator check <url>`, whole process (spawn to exit): {}",
        spread(&ours)
    );
    for loader in &litellm {
        println!(
            "  litellm {} (python {}), get_model_cost_map(url=...) in-process after `import litellm` ({:.1} s, untimed): {}; litellm median / ours median = {:.2}x",
            loader.version,
            loader.python,
            loader.import_seconds,
            spread(&loader.times),
            median(&loader.times) / ours_median,
        );
    }
    println!("  for context:");
    println!(
        "    `costmap-operator check <file>`, whole process: {}",
        spread(&from_file),
    );
    println!(
        "    `costmap-operator --version`, whole process (the floor of a process): {}",
        spread(&floor),
    );
    let python = &litellm[0];
    println!(
        "    python {} httpx.get(url).content alone (LiteLLM's fetch, a new connection each), in-process: {}",
        python.python,
        spread(&python.httpx_get),
    );
    println!(
        "    python {} bare json.loads of the bytes, in-process: {}",
        python.python,
        spread(&python.json_loads),
    );
}

/// Runs `costmap-operator check SOURCE` once; asserts it exits 0 having read the map with
/// git blob id `blob`; returns its model count and its wall time in ms (spawn to exit).
fn check(source: &str, blob: &str) -> (usize, f64) {
    let started = Instant::now();
    let output = Command::new(BIN)
        .args(["check", source])
        .output()
        .expect("running costmap-operator check");
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "costmap-operator check {source} failed ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name:?} in check's output:\n{stdout}"))
            .to_owned()
    };
    assert_eq!(field("git blob id:"), blob, "check read other bytes");
    let models = field("models:").parse().expect("a model count");
    (models, ms)
}

/// Runs `costmap-operator --version` once; returns its wall time in ms (spawn to exit).
fn version() -> f64 {
    let started = Instant::now();
    let status = Command::new(BIN)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running costmap-operator --version");
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(status.success(), "costmap-operator --version: {status}");
    ms
}

/// One Python process timing LiteLLM's loader (`benches/support/litellm_loader.py`).
struct Loader {
    version: String,
    python: String,
    import_seconds: f64,
    /// get_model_cost_map(url=...) per call, ms.
    times: Vec<f64>,
    /// httpx.get(url).content alone, ms.
    httpx_get: Vec<f64>,
    /// json.loads of the map file's bytes, ms.
    json_loads: Vec<f64>,
}

impl Loader {
    /// Runs the helper in the venv `which` (built on first use); asserts that every timed call
    /// loaded the fetched bytes (git blob id `blob`) with `models` models, as `check` counts.
    fn run(
        which: (&str, &str),
        url: &str,
        runs: usize,
        map_file: &Path,
        blob: &str,
        models: usize,
    ) -> Loader {
        let python = venv(which).join("bin").join("python");
        let script = testenv::workspace_root().join("benches/support/litellm_loader.py");
        let output = Command::new(&python)
            .arg(&script)
            .arg(url)
            .arg(runs.to_string())
            .arg(map_file)
            .env("LITELLM_MODEL_COST_MAP_URL", url)
            .env_remove("LITELLM_LOCAL_MODEL_COST_MAP")
            .env_remove("LITELLM_OFFLINE_MODE")
            .output()
            .unwrap_or_else(|err| panic!("running {}: {err}", python.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{} {} failed ({}):\n{stdout}{}",
            python.display(),
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let result: serde_json::Value = stdout
            .lines()
            .find_map(|line| line.strip_prefix("RESULT "))
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_else(|| panic!("no RESULT line from the helper:\n{stdout}"));
        let version = result["litellm"]
            .as_str()
            .expect("litellm version")
            .to_owned();
        assert_eq!(
            result["source_revisions"],
            serde_json::json!([blob]),
            "litellm {version} loaded other bytes than the source's"
        );
        assert_eq!(
            result["models"],
            serde_json::json!([models]),
            "litellm {version} counts other models than check"
        );
        let times = |key: &str| -> Vec<f64> {
            result[key]
                .as_array()
                .and_then(|times| times.iter().map(|t| t.as_f64()).collect())
                .unwrap_or_else(|| panic!("no {key} in the helper's result"))
        };
        Loader {
            python: result["python"]
                .as_str()
                .expect("python version")
                .to_owned(),
            import_seconds: result["import_seconds"].as_f64().expect("import time"),
            times: times("times_ms"),
            httpx_get: times("httpx_get_ms"),
            json_loads: times("json_loads_ms"),
            version,
        }
    }
}

/// `median M ms (min A, max B)` of `samples`, in ms.
fn spread(samples: &[f64]) -> String {
    format!(
        "median {:.1} ms (min {:.1}, max {:.1})",
        median(samples),
        min(samples),
        max(samples)
    )
}
