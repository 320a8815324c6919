//! Building the pinned control-plane binaries from `controlplane/` (Go).

use std::fs::OpenOptions;
use std::hash::{DefaultHasher, Hasher};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lock::FileLock;
use crate::process::{run_capture, spawn_tied, tail};

/// The Kubernetes release that controlplane/go.mod pins; it is stamped into `/version`.
pub(crate) const KUBERNETES_VERSION: &str = "v1.35.4";
const KUBERNETES_MINOR: &str = "35";
const HELM_VERSION: &str = "v3.21.4";
/// Prometheus' Go module version of promtool (the chart's alert rules are checked with it).
const PROMTOOL_VERSION: &str = "v0.316.0";

/// The `main` packages under controlplane/cmd built with `go build`.
const GO_COMMANDS: [&str; 4] = ["etcd", "kube-apiserver", "kubectl", "sakey"];

/// Binaries built together, with a stamp of their own so that building one set never
/// rebuilds (or waits for) another: the demo runs only the cluster set.
struct BinarySet {
    /// Shown while building and in errors.
    label: &'static str,
    /// The Go module that pins them, relative to the workspace root.
    module: &'static str,
    binaries: &'static [&'static str],
    stamp_file: &'static str,
    settings: fn() -> String,
    build: fn(&Path, &Path, &Path) -> Result<()>,
}

/// What a control plane runs: etcd, kube-apiserver, kubectl (and `sakey`, a key generator used
/// by [`crate::ControlPlane`]).
const CLUSTER: BinarySet = BinarySet {
    label: "etcd, kube-apiserver, kubectl",
    module: "controlplane",
    binaries: &GO_COMMANDS,
    stamp_file: ".stamp",
    settings: cluster_settings,
    build: build_cluster,
};

/// What only the tests run: helm (the chart) and promtool (the alert rules).
const TOOLS: BinarySet = BinarySet {
    label: "helm, promtool",
    module: "controlplane",
    binaries: &["helm", "promtool"],
    stamp_file: ".tools-stamp",
    settings: tools_settings,
    build: build_tools,
};

/// What GitOps tools show for an object: `costmap-health` (kstatus and Argo CD's Lua
/// runtime, pinned by health/go.mod).
const HEALTH: BinarySet = BinarySet {
    label: "costmap-health",
    module: "health",
    binaries: &["costmap-health"],
    stamp_file: ".health-stamp",
    settings: health_settings,
    build: build_health,
};

/// Builds etcd, kube-apiserver, kubectl and `sakey` into `target/controlplane/bin` and returns
/// that directory.
///
/// Skips the build when the stamp there matches controlplane/'s go.mod, go.sum, Go sources and
/// the build settings. Concurrent callers (test binaries, xtask) wait on a file lock instead of
/// building twice. Uses the default GOCACHE and GOMODCACHE so later builds on the same machine
/// are warm. Fails, never skips, when Go is missing or the build breaks.
pub fn ensure_binaries() -> Result<PathBuf> {
    ensure(&CLUSTER)
}

/// Builds helm and promtool (pinned by controlplane/go.mod) into the same directory as
/// [`ensure_binaries`], the same way; only the tests and `cargo xtask test` need them.
pub fn ensure_tools() -> Result<PathBuf> {
    ensure(&TOOLS)
}

/// Builds `costmap-health` into the same directory as [`ensure_binaries`], the same way: it
/// prints, per object, kstatus' verdict and an Argo CD Lua health check's (tests only).
pub fn ensure_health() -> Result<PathBuf> {
    ensure(&HEALTH)
}

fn ensure(set: &BinarySet) -> Result<PathBuf> {
    let source_dir = crate::workspace_root().join(set.module);
    let bin_dir = bin_dir();
    let stamp = stamp(&source_dir, &(set.settings)())?;
    if is_fresh(&bin_dir, set, &stamp) {
        return Ok(bin_dir);
    }
    let _lock = FileLock::acquire(
        &bin_dir.with_file_name("build.lock"),
        "waiting for another process that is building the control plane...",
    )?;
    // Whoever held the lock may have just built it.
    if is_fresh(&bin_dir, set, &stamp) {
        return Ok(bin_dir);
    }
    let go_version = go_version(&source_dir)?;
    std::fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    // A half-finished build must never look fresh.
    let _ = std::fs::remove_file(bin_dir.join(set.stamp_file));
    let log = bin_dir.with_file_name("build.log");
    std::fs::write(&log, "").with_context(|| format!("creating {}", log.display()))?;
    eprintln!(
        "building {} with {go_version} into {} (the first time takes minutes on 2 cores, \
         later ones well under a minute)...",
        set.label,
        bin_dir.display()
    );
    let started = Instant::now();
    (set.build)(&source_dir, &bin_dir, &log)?;
    eprintln!("built {} in {} s", set.label, started.elapsed().as_secs());
    std::fs::write(bin_dir.join(set.stamp_file), &stamp)
        .with_context(|| format!("writing {}", bin_dir.join(set.stamp_file).display()))?;
    Ok(bin_dir)
}

/// `target/controlplane/bin`, built or not.
pub(crate) fn bin_dir() -> PathBuf {
    crate::target_dir().join("controlplane").join("bin")
}

fn is_fresh(bin_dir: &Path, set: &BinarySet, stamp: &str) -> bool {
    let stamp_matches =
        std::fs::read_to_string(bin_dir.join(set.stamp_file)).is_ok_and(|s| s == stamp);
    stamp_matches && set.binaries.iter().all(|b| bin_dir.join(b).is_file())
}

/// A hash of everything that determines the binaries. DefaultHasher's algorithm may change
/// with the Rust release; the cost of that is one warm rebuild, so no crypto hash is needed.
fn stamp(source_dir: &Path, settings: &str) -> Result<String> {
    let mut hasher = DefaultHasher::new();
    hasher.write(settings.as_bytes());
    let mut files = Vec::new();
    collect_inputs(source_dir, &mut files)
        .with_context(|| format!("reading the Go sources in {}", source_dir.display()))?;
    files.sort();
    for file in files {
        let relative = file.strip_prefix(source_dir).unwrap_or(&file);
        hasher.write(relative.as_os_str().as_encoded_bytes());
        hasher.write(&std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?);
    }
    Ok(format!("{:016x}\n", hasher.finish()))
}

/// go.mod, go.sum and every .go file: the inputs of the build that live in this repository.
pub(crate) fn collect_inputs(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_inputs(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "go")
            || path
                .file_name()
                .is_some_and(|n| n == "go.mod" || n == "go.sum")
        {
            files.push(path);
        }
    }
    Ok(())
}

/// The build settings as text, hashed into the stamp so changing a flag rebuilds.
fn cluster_settings() -> String {
    format!(
        "env GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off\nbuild {:?} {}\n",
        GO_COMMANDS,
        kubernetes_ldflags(),
    )
}

fn tools_settings() -> String {
    format!(
        "env GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off\ninstall {} {}\ninstall {}\n",
        helm_package(),
        helm_ldflags(),
        promtool_package()
    )
}

fn health_settings() -> String {
    "env GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off\nbuild -trimpath -ldflags=-s -w -o costmap-health .\n"
        .to_owned()
}

pub(crate) fn kubernetes_ldflags() -> String {
    // Without these, /version reports v0.0.0-master and version-checking clients such as helm
    // misbehave.
    let v = KUBERNETES_VERSION;
    format!(
        "-s -w -X k8s.io/component-base/version.gitVersion={v} \
         -X k8s.io/component-base/version.gitMajor=1 \
         -X k8s.io/component-base/version.gitMinor={KUBERNETES_MINOR} \
         -X k8s.io/client-go/pkg/version.gitVersion={v}"
    )
}

fn helm_ldflags() -> String {
    // Helm v3 built by `go install` believes the cluster is Kubernetes 1.20 and calls itself
    // "v3.21" unless told otherwise.
    format!(
        "-s -w -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={KUBERNETES_MINOR} \
         -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={KUBERNETES_MINOR} \
         -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
    )
}

fn helm_package() -> String {
    format!("helm.sh/helm/v3/cmd/helm@{HELM_VERSION}")
}

fn promtool_package() -> String {
    format!("github.com/prometheus/prometheus/cmd/promtool@{PROMTOOL_VERSION}")
}

pub(crate) fn go_command(source_dir: &Path) -> Command {
    let mut cmd = Command::new("go");
    cmd.current_dir(source_dir)
        // Never download a toolchain; a static build needs no C toolchain; a go.work further up
        // must not change what gets built.
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GOWORK", "off");
    cmd
}

fn build_cluster(source_dir: &Path, bin_dir: &Path, log: &Path) -> Result<()> {
    let mut out_dir = bin_dir.as_os_str().to_owned();
    out_dir.push("/");
    let mut kubernetes = go_command(source_dir);
    kubernetes
        .args([
            "build",
            "-trimpath",
            "-ldflags",
            &kubernetes_ldflags(),
            "-o",
        ])
        .arg(out_dir)
        .args(GO_COMMANDS.map(|c| format!("./cmd/{c}")));
    run_logged(kubernetes, log, "etcd, kube-apiserver, kubectl, sakey")
}

fn build_health(source_dir: &Path, bin_dir: &Path, log: &Path) -> Result<()> {
    let mut health = go_command(source_dir);
    health
        .args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
        .arg(bin_dir.join("costmap-health"))
        .arg(".");
    run_logged(health, log, "costmap-health")
}

fn build_tools(source_dir: &Path, bin_dir: &Path, log: &Path) -> Result<()> {
    let mut helm = go_command(source_dir);
    helm.env("GOBIN", bin_dir).args([
        "install",
        "-trimpath",
        "-ldflags",
        &helm_ldflags(),
        &helm_package(),
    ]);
    run_logged(helm, log, "helm")?;

    let mut promtool = go_command(source_dir);
    promtool.env("GOBIN", bin_dir).args([
        "install",
        "-trimpath",
        "-ldflags",
        "-s -w",
        &promtool_package(),
    ]);
    run_logged(promtool, log, "promtool")
}

/// The local Go's version, or an error that says Go is missing and what is needed.
pub(crate) fn go_version(source_dir: &Path) -> Result<String> {
    let mut cmd = go_command(source_dir);
    cmd.args(["env", "GOVERSION"]);
    match run_capture(&mut cmd, "go env GOVERSION") {
        Ok(version) => Ok(version.trim().to_owned()),
        Err(e) if is_not_found(&e) => bail!(
            "building the control plane needs the Go toolchain, but `go` is not on PATH. \
             Install Go at least as new as the `go` line of {} (tested with go1.26) and retry.",
            source_dir.join("go.mod").display()
        ),
        Err(e) => Err(e),
    }
}

fn is_not_found(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == ErrorKind::NotFound)
    })
}

/// Runs a Go command with its output appended to `log`, printing a heartbeat every minute so a
/// long cold build is visibly alive. The child is tied to this process: if a test run is killed,
/// the build stops too instead of racing the next one.
pub(crate) fn run_logged(mut cmd: Command, log: &Path, label: &str) -> Result<()> {
    let file = OpenOptions::new()
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let started = Instant::now();
    let mut child = spawn_tied(cmd)?;
    let mut next_heartbeat = Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() >= next_heartbeat {
            eprintln!(
                "  still building {label} ({} s)...",
                started.elapsed().as_secs()
            );
            next_heartbeat += Duration::from_secs(60);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !status.success() {
        bail!(
            "building {label} failed ({status}); last lines of {}:\n{}",
            log.display(),
            tail(log, 40)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_changes_with_the_sources() {
        let dir = std::env::temp_dir().join(format!("testenv-stamp-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("cmd/x")).unwrap();
        std::fs::write(dir.join("go.mod"), "module m\n").unwrap();
        std::fs::write(dir.join("cmd/x/main.go"), "package main\n").unwrap();
        std::fs::write(dir.join("README.md"), "ignored\n").unwrap();
        let first = stamp(&dir, "s").unwrap();
        assert_eq!(first, stamp(&dir, "s").unwrap());
        assert_ne!(first, stamp(&dir, "other settings").unwrap());
        std::fs::write(dir.join("README.md"), "still ignored\n").unwrap();
        assert_eq!(first, stamp(&dir, "s").unwrap());
        std::fs::write(dir.join("cmd/x/main.go"), "package main // changed\n").unwrap();
        assert_ne!(first, stamp(&dir, "s").unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn settings_pin_the_versions() {
        let s = cluster_settings();
        assert!(s.contains("version.gitVersion=v1.35.4"), "{s}");
        assert!(s.contains("GOTOOLCHAIN=local CGO_ENABLED=0"), "{s}");
        let s = tools_settings();
        assert!(s.contains("helm.sh/helm/v3/cmd/helm@v3.21.4"), "{s}");
        assert!(s.contains("GOTOOLCHAIN=local CGO_ENABLED=0"), "{s}");
    }
}
