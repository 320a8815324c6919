//! `cargo xtask cluster up|down|bin-dir`, and applying crds/ (shared with the demo).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use testenv::ControlPlane;

/// Where the background control plane keeps its pid files, logs, certificates and data.
fn state_dir() -> PathBuf {
    testenv::target_dir().join("cluster")
}

/// Starts the background control plane unless it is already up, and prints the admin
/// kubeconfig path as the last line of stdout (everything else goes to stderr), so
/// `export KUBECONFIG=$(cargo xtask cluster up)` works.
pub fn up() -> Result<()> {
    let state = state_dir();
    testenv::ensure_binaries()?;
    if let Some(cp) = ControlPlane::running_detached(&state)? {
        eprintln!("the control plane is already up at {}", cp.server);
        println!("{}", cp.kubeconfig.display());
        return Ok(());
    }
    eprintln!("starting etcd and kube-apiserver in the background...");
    let cp = ControlPlane::start_detached(&state)?;
    if let Err(e) = apply_crds(&cp) {
        // Leave nothing half set up behind: the next `up` starts clean and applies again.
        let _ = ControlPlane::stop_detached(&state);
        return Err(e);
    }
    eprintln!(
        "the control plane is up at {} (logs in {}); stop it with `cargo xtask cluster down`.\n\
         kubectl is in {} (`cargo xtask cluster bin-dir` adds helm and promtool)",
        cp.server,
        cp.dir().display(),
        cp.bin_dir.display()
    );
    println!("{}", cp.kubeconfig.display());
    Ok(())
}

/// Stops the background control plane and removes its state.
pub fn down() -> Result<()> {
    if ControlPlane::stop_detached(&state_dir())? {
        eprintln!("stopped the control plane");
    } else {
        eprintln!("the control plane was not running");
    }
    Ok(())
}

/// Prints the directory with etcd, kube-apiserver, kubectl, helm and promtool (building the
/// ones missing).
pub fn bin_dir() -> Result<()> {
    testenv::ensure_binaries()?;
    println!("{}", testenv::ensure_tools()?.display());
    Ok(())
}

/// Applies every manifest in `<root>/crds/` server-side and waits until the CRDs are
/// Established, so custom resources can be created right after. Skips, with a note, when
/// there are none yet.
pub fn apply_crds(cp: &ControlPlane) -> Result<()> {
    let dir = testenv::workspace_root().join("crds");
    if !has_manifests(&dir)? {
        eprintln!("note: no CRD manifests in {}; skipping", dir.display());
        return Ok(());
    }
    let dir_arg = dir.to_string_lossy();
    let applied = cp.kubectl(&["apply", "--server-side", "-f", &dir_arg, "-o", "name"])?;
    let names: Vec<&str> = applied.split_whitespace().collect();
    eprintln!("applied {}", names.join(", "));
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    wait.extend(
        names
            .iter()
            .filter(|n| n.starts_with("customresourcedefinition")),
    );
    if wait.len() > 3 {
        cp.kubectl(&wait)?;
    }
    Ok(())
}

fn has_manifests(dir: &Path) -> Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    Ok(entries.flatten().any(|entry| {
        entry
            .path()
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml" || ext == "json")
    }))
}
