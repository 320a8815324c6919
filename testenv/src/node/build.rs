//! Building the node's Go binaries: kubelet, kube-proxy, kube-scheduler and
//! kube-controller-manager from `controlplane/` (the same pinned Kubernetes as kube-apiserver,
//! same flags, so the shared packages come from the Go build cache), the CNI plugins from
//! `nodeplane/cni` and CoreDNS from `nodeplane/coredns`.

use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::binaries::{collect_inputs, go_command, go_version, kubernetes_ldflags, run_logged};
use crate::lock::FileLock;

/// Kubernetes `main` packages under controlplane/cmd that only the node needs.
pub(crate) const KUBE_COMMANDS: [&str; 4] = [
    "kubelet",
    "kube-proxy",
    "kube-scheduler",
    "kube-controller-manager",
];
/// CNI plugins (their packages in github.com/containernetworking/plugins, pinned by
/// nodeplane/cni/go.mod).
pub(crate) const CNI_PLUGINS: [&str; 4] = [
    "main/bridge",
    "ipam/host-local",
    "main/loopback",
    "meta/portmap",
];
const CNI_MODULE: &str = "github.com/containernetworking/plugins/plugins";
const STAMP_FILE: &str = ".stamp";

/// Where the node's binaries go.
pub(crate) struct NodeBins {
    /// kubelet, kube-proxy, kube-scheduler, kube-controller-manager, coredns.
    pub bin: PathBuf,
    /// The CNI plugins (containerd's CNI bin_dir).
    pub cni: PathBuf,
}

pub(crate) fn node_bins() -> NodeBins {
    let base = crate::target_dir().join("node");
    NodeBins {
        bin: base.join("bin"),
        cni: base.join("cni-bin"),
    }
}

/// Builds the node binaries unless the stamp matches the Go sources and settings; concurrent
/// callers wait on a lock instead of building twice.
pub(crate) fn ensure_node_binaries() -> Result<NodeBins> {
    let bins = node_bins();
    let stamp = stamp()?;
    if is_fresh(&bins, &stamp) {
        return Ok(bins);
    }
    let _lock = FileLock::acquire(
        &bins.bin.with_file_name("build.lock"),
        "waiting for another process that is building the node...",
    )?;
    if is_fresh(&bins, &stamp) {
        return Ok(bins);
    }
    build(&bins)?;
    std::fs::write(bins.bin.join(STAMP_FILE), &stamp)
        .with_context(|| format!("writing {}", bins.bin.join(STAMP_FILE).display()))?;
    Ok(bins)
}

fn is_fresh(bins: &NodeBins, stamp: &str) -> bool {
    std::fs::read_to_string(bins.bin.join(STAMP_FILE)).is_ok_and(|s| s == stamp)
        && KUBE_COMMANDS
            .iter()
            .chain(&["coredns"])
            .all(|b| bins.bin.join(b).is_file())
        && CNI_PLUGINS
            .iter()
            .all(|p| bins.cni.join(plugin_name(p)).is_file())
}

fn plugin_name(package: &str) -> &str {
    package.rsplit('/').next().unwrap_or(package)
}

fn source_dirs() -> [PathBuf; 3] {
    let root = crate::workspace_root();
    [
        root.join("controlplane"),
        root.join("nodeplane/cni"),
        root.join("nodeplane/coredns"),
    ]
}

fn settings() -> String {
    format!(
        "env GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off\nkube {KUBE_COMMANDS:?} {}\ncni {CNI_PLUGINS:?}\ncoredns -s -w\n",
        kubernetes_ldflags()
    )
}

fn stamp() -> Result<String> {
    let mut hasher = DefaultHasher::new();
    hasher.write(settings().as_bytes());
    for dir in source_dirs() {
        let mut files = Vec::new();
        collect_inputs(&dir, &mut files)
            .with_context(|| format!("reading the Go sources in {}", dir.display()))?;
        files.sort();
        for file in files {
            // Relative, so the stamp does not depend on where the checkout lives.
            let relative = file.strip_prefix(&dir).unwrap_or(&file);
            hasher.write(relative.as_os_str().as_encoded_bytes());
            hasher.write(
                &std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
            );
        }
    }
    Ok(format!("{:016x}\n", hasher.finish()))
}

fn build(bins: &NodeBins) -> Result<()> {
    let [controlplane, cni, coredns] = source_dirs();
    let go = go_version(&controlplane)?;
    for dir in [&bins.bin, &bins.cni] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(bins.bin.join(STAMP_FILE));
    let log = bins.bin.with_file_name("build.log");
    std::fs::write(&log, "").with_context(|| format!("creating {}", log.display()))?;
    eprintln!(
        "building the node (kubelet, kube-proxy, kube-scheduler, kube-controller-manager, CNI \
         plugins, CoreDNS) with {go} into {} (first time: kubelet ~9 min on 2 cores, the rest \
         ~3 min; cached after that)...",
        bins.bin.display()
    );
    for command in KUBE_COMMANDS {
        // One at a time, so the time of each is visible (and measured) on a cold build.
        let started = Instant::now();
        let mut cmd = go_command(&controlplane);
        cmd.args([
            "build",
            "-trimpath",
            "-ldflags",
            &kubernetes_ldflags(),
            "-o",
        ])
        .arg(dir_arg(&bins.bin))
        .arg(format!("./cmd/{command}"));
        run_logged(cmd, &log, command)?;
        eprintln!("  {command}: {:.0} s", started.elapsed().as_secs_f64());
    }
    let started = Instant::now();
    let mut cmd = go_command(&cni);
    cmd.args(["build", "-trimpath", "-ldflags", "-s -w", "-o"])
        .arg(dir_arg(&bins.cni))
        .args(CNI_PLUGINS.map(|p| format!("{CNI_MODULE}/{p}")));
    run_logged(cmd, &log, "CNI plugins")?;
    eprintln!("  CNI plugins: {:.0} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let mut cmd = go_command(&coredns);
    cmd.args(["build", "-trimpath", "-ldflags", "-s -w", "-o"])
        .arg(bins.bin.join("coredns"))
        .arg(".");
    run_logged(cmd, &log, "CoreDNS")?;
    eprintln!("  CoreDNS: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `go build -o DIR/` writes every package's binary into DIR (the slash says it is a dir).
fn dir_arg(dir: &Path) -> std::ffi::OsString {
    let mut arg = dir.as_os_str().to_owned();
    arg.push("/");
    arg
}
