//! `cargo xtask node up|down`: a real single-node cluster on this machine (see
//! `testenv::node`), with the operator image made from the working tree's release binary.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use testenv::node::Node;

/// Brings the node up (unless it is already up) and prints the admin kubeconfig's path as the
/// last line of stdout, so `export KUBECONFIG=$(cargo xtask node up)` works.
pub fn up() -> Result<()> {
    let started = Instant::now();
    if let Some(node) = Node::running() {
        eprintln!("the node is already up at {}", node.server);
        println!("{}", node.kubeconfig.display());
        return Ok(());
    }
    let node = Node::up(&user_images()?)?;
    eprintln!(
        "the node is up at {} in {:.1} s (logs in {}); images: {}, {}; stop it with \
         `cargo xtask node down`",
        node.server,
        started.elapsed().as_secs_f64(),
        node.dir().join("logs").display(),
        testenv::node::BUSYBOX_IMAGE,
        testenv::node::operator_image_spec()?.reference,
    );
    println!("{}", node.kubeconfig.display());
    Ok(())
}

/// Stops the node and puts the host back as it found it.
pub fn down() -> Result<()> {
    let started = Instant::now();
    if Node::down()? {
        eprintln!(
            "stopped the node in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    } else {
        eprintln!("the node was not running; nothing was left behind");
    }
    Ok(())
}

/// Makes the images users see (the operator's, LiteLLM's) and prints each archive's size.
pub fn images() -> Result<()> {
    for archive in user_images()? {
        let size = std::fs::metadata(&archive)
            .with_context(|| format!("reading {}", archive.display()))?
            .len();
        println!("{:7.1} MB {}", size as f64 / 1e6, archive.display());
    }
    Ok(())
}

/// The docker archives of the images under the names users see: the operator from the working
/// tree, and the LiteLLM proxy with the pin the proxy tests use.
fn user_images() -> Result<Vec<PathBuf>> {
    let (_, requirement) = testenv::LITELLM_PROXY_VENV;
    let litellm = testenv::node::litellm_image_archive(requirement)?;
    let operator = operator_image()?;
    Ok(vec![operator, litellm])
}

/// Builds the release binary (as the Dockerfile does, but for this machine's glibc target:
/// there is no musl target here) and makes the operator image from it.
pub fn operator_image() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    // `cargo run` hands xtask the package's CARGO_PKG_* and friends; a build script that
    // watches one of them would see it change and rebuild the TLS stack each time a release
    // build alternates between a shell and xtask.
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                name.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            build.env_remove(&key);
        }
    }
    let status = build
        .args([
            "build",
            "--release",
            "--locked",
            "--bin",
            "costmap-operator",
        ])
        .current_dir(testenv::workspace_root())
        .status()
        .context("starting cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release --bin costmap-operator exited with {status}");
    }
    let binary = testenv::target_dir()
        .join("release")
        .join("costmap-operator");
    testenv::node::operator_image_archive(&binary)
}

/// The end-to-end tests on the node that is up, with the operator image of the working tree
/// (imported again when the release binary changed since `node up`).
pub fn test(only: &[usize]) -> Result<()> {
    let node = Node::running().context("no node is up: run `cargo xtask node up` first")?;
    let image = operator_image()?;
    node.import_images(&[image])?;
    crate::e2e::run(&node, only)
}

/// `cargo xtask test`'s node step: from a clean host, `node up` gives a Ready node on which a
/// busybox pod resolves `kubernetes.default.svc.cluster.local` through CoreDNS and the
/// end-to-end tests pass, and `node down` leaves no process, mount, iptables rule, interface
/// or changed sysctl behind.
pub fn check() -> Result<()> {
    // Start from a clean host, so "after down" is compared with a host the node never touched.
    Node::down()?;
    let before = snapshot();
    let images = user_images()?;
    let started = Instant::now();
    let node = Node::up(&images)?;
    eprintln!("node up: {:.1} s", started.elapsed().as_secs_f64());
    let checked = pod_resolves_cluster_names(&node).and_then(|()| crate::e2e::run(&node, &[]));
    let started = Instant::now();
    Node::down()?;
    eprintln!("node down: {:.1} s", started.elapsed().as_secs_f64());
    checked?;
    let after = snapshot();
    let mut left = Vec::new();
    diff(&mut left, "iptables", &before.iptables, &after.iptables);
    diff(
        &mut left,
        "interfaces",
        &before.interfaces,
        &after.interfaces,
    );
    diff(&mut left, "mounts", &before.mounts, &after.mounts);
    if before.pod_netns != after.pod_netns {
        left.push(format!(
            "pod netns: {:?} -> {:?}",
            before.pod_netns, after.pod_netns
        ));
    }
    if before.outside_paths != after.outside_paths {
        left.push(format!(
            "directories: {:?} -> {:?}",
            before.outside_paths, after.outside_paths
        ));
    }
    if before.cgroups != after.cgroups {
        left.push(format!(
            "cgroups: {:?} -> {:?}",
            before.cgroups, after.cgroups
        ));
    }
    if before.sysctls != after.sysctls {
        left.push(format!(
            "sysctls: {:?} -> {:?}",
            before.sysctls, after.sysctls
        ));
    }
    left.extend(
        testenv::node::leftover_processes()
            .into_iter()
            .map(|p| format!("process: {p}")),
    );
    if !left.is_empty() {
        bail!("node down left the host changed:\n  {}", left.join("\n  "));
    }
    eprintln!("node down left no process, mount, iptables rule or interface behind");
    Ok(())
}

/// What other tests running meanwhile may add or remove (their network namespaces and
/// veths), left out of the comparison.
fn snapshot() -> testenv::node::HostSnapshot {
    testenv::node::HostSnapshot::take(|name| {
        name.starts_with("cm") || name.starts_with("/run/netns/costmap-test-")
    })
}

fn diff<T: Ord + std::fmt::Debug>(
    out: &mut Vec<String>,
    what: &str,
    before: &std::collections::BTreeSet<T>,
    after: &std::collections::BTreeSet<T>,
) {
    for added in after.difference(before) {
        out.push(format!("{what}: {added:?} added"));
    }
    for removed in before.difference(after) {
        out.push(format!("{what}: {removed:?} removed"));
    }
}

/// A busybox pod resolves the API's Service name through CoreDNS (kube-dns, 10.96.0.10).
fn pod_resolves_cluster_names(node: &Node) -> Result<()> {
    const NAME: &str = "kubernetes.default.svc.cluster.local";
    let pod = format!(
        r#"{{"apiVersion": "v1", "kind": "Pod",
  "metadata": {{"name": "dns-check", "namespace": "default"}},
  "spec": {{"terminationGracePeriodSeconds": 0, "containers": [{{
    "name": "busybox", "image": "{}", "imagePullPolicy": "Never",
    "command": ["sleep", "3600"]}}]}}}}"#,
        testenv::node::BUSYBOX_IMAGE
    );
    node.apply(&pod).context("creating the dns-check pod")?;
    node.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/dns-check",
        "--timeout=60s",
    ])?;
    let started = Instant::now();
    let deadline = started + std::time::Duration::from_secs(60);
    loop {
        // CoreDNS is Ready before up returns, but kube-proxy may program the Service a moment
        // later: poll until the answer comes, with a deadline.
        match node.kubectl(&["exec", "dns-check", "--", "nslookup", NAME]) {
            Ok(out) if out.contains("10.96.0.1") => {
                eprintln!(
                    "a pod resolved {NAME} through {} in {:.1} s",
                    testenv::node::CLUSTER_DNS,
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            result if Instant::now() >= deadline => {
                bail!("a pod could not resolve {NAME} within 60 s: {result:?}")
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(250)),
        }
    }
}
