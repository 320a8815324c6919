//! `cargo xtask demo [--once]`: the operator end to end on a private control plane.
//!
//! A real LiteLLM map is served from loopback, the operator runs as a local process, and the
//! example ModelCostMapSync is pointed at the loopback URL. Everything started here is tied to
//! this process (testenv::spawn_tied), so even a hard kill leaves nothing running.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use testenv::{ControlPlane, TiedChild};

use crate::cluster::apply_crds;

/// The LiteLLM release whose map the demo serves.
const LITELLM_VERSION: &str = "1.110.2";

/// The demo: control plane, crds/, the LiteLLM map on loopback, the operator
/// (`costmap-operator run --listen 127.0.0.1:PORT`, KUBECONFIG set), examples/basic.yaml pointed
/// at the loopback URL, then `kubectl wait --for=condition=Ready` and the result.
///
/// Written against the operator's documented interface before the operator existed: if its
/// command line or the example changes, this is the one place to adjust.
///
/// Ctrl-C is only handled while waiting at the end; an interrupt during set-up kills this
/// process, and with it every child (PR_SET_PDEATHSIG).
pub fn demo(once: bool) -> Result<()> {
    let root = testenv::workspace_root();
    let logs = fresh_dir(&testenv::target_dir().join("demo"))?;

    eprintln!("==> starting a private control plane");
    let cp = ControlPlane::start()?;
    apply_crds(&cp)?;

    eprintln!("==> serving the LiteLLM {LITELLM_VERSION} map on loopback");
    let map = testenv::litellm_map(LITELLM_VERSION)?;
    let (mut file_server, url) = serve_file(&map, &logs)?;

    eprintln!("==> building and starting the operator");
    let operator_bin = build_operator(&root)?;
    let operator_log = logs.join("operator.log");
    let mut operator = start_operator(&operator_bin, &cp, &operator_log)?;

    eprintln!("==> applying examples/basic.yaml with spec.source.url = {url}");
    let example = std::fs::read_to_string(root.join("examples/basic.yaml"))
        .context("reading examples/basic.yaml")?;
    let manifest = with_source_url(&example, &url)?;
    let sync = find_sync(&cp, &manifest)?;
    ensure_namespace(&cp, &sync.namespace)?;
    cp.kubectl_with_input(&["apply", "-f", "-"], &manifest)?;

    eprintln!("==> waiting for mcms/{} to be Ready", sync.name);
    wait_for_ready(&cp, &sync, &mut operator, &operator_log)?;
    let configmap = show_result(&cp, &sync)?;
    // Maps need a credential: the ConfigMap's map-url carries the object's read token.
    let map_url = cp.kubectl(&[
        "get",
        "configmap",
        &configmap,
        "-n",
        &sync.namespace,
        "-o",
        "jsonpath={.data.map-url}",
    ])?;
    println!(
        "\nLiteLLM proxies load it from the ConfigMap's map-url (valueFrom.configMapKeyRef {{name: {configmap}, key: map-url}}):\n  LITELLM_MODEL_COST_MAP_URL={}",
        map_url.trim()
    );

    if !once {
        eprintln!(
            "\nThe operator is running (log: {}).\n\
             Try: KUBECONFIG={} {}/kubectl get mcms -n {} -o wide\n\
             Press Ctrl-C to stop.",
            operator_log.display(),
            cp.kubeconfig.display(),
            cp.bin_dir.display(),
            sync.namespace
        );
        wait_for_ctrl_c(&mut operator, &operator_log)?;
    }

    // The operator first, while the API server is still there for its shutdown.
    operator.terminate(Duration::from_secs(10))?;
    file_server.kill();
    drop(cp);
    Ok(())
}

/// Empties (or creates) `dir`, for this run's logs.
fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.to_owned())
}

/// Serves `file`'s directory with python3's http.server on a free loopback port; returns the
/// server and the file's URL.
fn serve_file(file: &Path, logs: &Path) -> Result<(TiedChild, String)> {
    let dir = file.parent().context("the map has no parent directory")?;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .context("the map's file name is not UTF-8")?;
    let port = testenv::free_port()?;
    let log = File::create(logs.join("http.log"))?;
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .arg("--directory")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let server = testenv::spawn_tied(cmd).context("starting python3 -m http.server")?;
    testenv::wait_for_tcp(port, Duration::from_secs(20))
        .context("python3 -m http.server did not start")?;
    Ok((server, format!("http://127.0.0.1:{port}/{name}")))
}

/// `cargo build -p costmap-operator`, output shown; returns the binary's path.
fn build_operator(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "costmap-operator"])
        .current_dir(root)
        .status()
        .context("starting cargo build")?;
    if !status.success() {
        bail!("cargo build -p costmap-operator exited with {status}");
    }
    Ok(testenv::target_dir().join("debug").join("costmap-operator"))
}

/// `costmap-operator run --listen 127.0.0.1:<free port>` against the control plane, logging
/// to `log`.
fn start_operator(bin: &Path, cp: &ControlPlane, log: &Path) -> Result<TiedChild> {
    let listen = format!("127.0.0.1:{}", testenv::free_port()?);
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(bin);
    // The demo's source and proxy listen on loopback, which the address policy refuses.
    // map-url names this address, signed with a key the operator creates in `default`.
    cmd.args(["run", "--listen", &listen])
        .args([
            "--allow-source-cidr=127.0.0.0/8",
            "--allow-consumer-cidr=127.0.0.0/8",
        ])
        .args(["--map-base-url", &format!("http://{listen}")])
        .args(["--map-key-secret", "costmap-map-key"])
        .env("KUBECONFIG", &cp.kubeconfig)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let operator = testenv::spawn_tied(cmd)?;
    eprintln!("operator pid {} listening on {listen}", operator.id());
    Ok(operator)
}

/// Points the example at `url`: the one line holding `url:` keeps its indentation and key.
fn with_source_url(example: &str, url: &str) -> Result<String> {
    let is_url_line = |line: &&str| !line.trim_start().starts_with('#') && line.contains("url:");
    let count = example.lines().filter(is_url_line).count();
    if count != 1 {
        bail!("examples/basic.yaml should have exactly one `url:` line, found {count}");
    }
    let mut out = String::with_capacity(example.len() + url.len());
    for line in example.lines() {
        match line.find("url:") {
            Some(at) if is_url_line(&line) => {
                out.push_str(&line[..at]);
                out.push_str("url: ");
                out.push_str(url);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

/// The ModelCostMapSync in the example.
struct Sync {
    namespace: String,
    name: String,
}

/// Finds the example's ModelCostMapSync with a client-side dry run, so kubectl (not a YAML
/// parser of ours) fills in the default namespace and copes with several documents.
fn find_sync(cp: &ControlPlane, manifest: &str) -> Result<Sync> {
    let objects = cp.kubectl_with_input(
        &[
            "apply",
            "--dry-run=client",
            "-f",
            "-",
            "-o",
            "jsonpath={.kind} {.metadata.namespace} {.metadata.name}{\"\\n\"}",
        ],
        manifest,
    )?;
    objects
        .lines()
        .find_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["ModelCostMapSync", namespace, name] => Some(Sync {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                }),
                _ => None,
            },
        )
        .context("examples/basic.yaml has no ModelCostMapSync")
}

/// Creates `namespace` unless it exists: the example may name one, and nothing creates it on
/// a bare control plane.
fn ensure_namespace(cp: &ControlPlane, namespace: &str) -> Result<()> {
    if cp.kubectl(&["get", "namespace", namespace]).is_err() {
        cp.kubectl(&["create", "namespace", namespace])?;
    }
    Ok(())
}

/// `kubectl wait --for=condition=Ready mcms/NAME --timeout=120s`, giving up early, with the
/// operator's log, if the operator exits meanwhile.
fn wait_for_ready(
    cp: &ControlPlane,
    sync: &Sync,
    operator: &mut TiedChild,
    operator_log: &Path,
) -> Result<()> {
    let object = format!("mcms/{}", sync.name);
    let mut wait = cp.kubectl_command();
    wait.args(["wait", "--for=condition=Ready", &object, "--timeout=120s"])
        .args(["-n", &sync.namespace]);
    let mut wait = testenv::spawn_tied(wait)?;
    loop {
        if let Some(status) = wait.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let state = cp
                .kubectl(&["get", &object, "-n", &sync.namespace, "-o", "yaml"])
                .unwrap_or_else(|e| format!("{e:#}"));
            bail!(
                "{object} did not become Ready ({status}).\n{state}\nlast lines of {}:\n{}",
                operator_log.display(),
                log_tail(operator_log)
            );
        }
        check_operator(operator, operator_log)?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Shows the synced object and the annotations the operator wrote on its ConfigMap.
/// Shows the object and its target's annotations; the target's name.
fn show_result(cp: &ControlPlane, sync: &Sync) -> Result<String> {
    let ns = sync.namespace.as_str();
    println!("$ kubectl get mcms -n {ns} -o wide");
    print!("{}", cp.kubectl(&["get", "mcms", "-n", ns, "-o", "wide"])?);
    // spec.target.configMapName defaults to the object's name (the CRD schema fills it in).
    let configmap = cp.kubectl(&[
        "get",
        &format!("mcms/{}", sync.name),
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.target.configMapName}",
    ])?;
    let configmap = if configmap.trim().is_empty() {
        sync.name.as_str()
    } else {
        configmap.trim()
    };
    println!("\n$ kubectl get configmap {configmap} -n {ns} -o jsonpath={{.metadata.annotations}}");
    let annotations = cp.kubectl(&[
        "get",
        "configmap",
        configmap,
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.annotations}",
    ])?;
    println!("{}", pretty_json(&annotations));
    Ok(configmap.to_owned())
}

/// Pretty-printed JSON, or the text unchanged if it is not JSON.
fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .and_then(|value| serde_json::to_string_pretty(&value))
        .unwrap_or_else(|_| text.to_owned())
}

/// Blocks until Ctrl-C (or SIGTERM); fails if the operator exits first.
fn wait_for_ctrl_c(operator: &mut TiedChild, operator_log: &Path) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the Ctrl-C handler")?;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                eprintln!("\nstopping the operator, the file server and the control plane...");
                return Ok(());
            }
            Err(RecvTimeoutError::Timeout) => check_operator(operator, operator_log)?,
        }
    }
}

fn check_operator(operator: &mut TiedChild, log: &Path) -> Result<()> {
    if let Some(status) = operator.try_wait()? {
        bail!(
            "the operator exited ({status}); last lines of {}:\n{}",
            log.display(),
            log_tail(log)
        );
    }
    Ok(())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_one_url_line() {
        let example = "spec:\n  source:\n    # url: not this one\n    url: https://example.com/x.json  # upstream\n  other: 1\n";
        let out = with_source_url(example, "http://127.0.0.1:9/m.json").unwrap();
        assert_eq!(
            out,
            "spec:\n  source:\n    # url: not this one\n    url: http://127.0.0.1:9/m.json\n  other: 1\n"
        );
    }

    #[test]
    fn refuses_zero_or_two_url_lines() {
        assert!(with_source_url("a: 1\n", "u").is_err());
        assert!(with_source_url("url: a\nurl: b\n", "u").is_err());
    }

    #[test]
    fn pretty_prints_json_and_passes_other_text_through() {
        assert_eq!(pretty_json(r#"{"a":"b"}"#), "{\n  \"a\": \"b\"\n}");
        assert_eq!(pretty_json("not json"), "not json");
    }
}
