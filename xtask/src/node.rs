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
    let operator = operator_image()?;
    let node = Node::up(&[operator])?;
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

/// Builds the release binary (as the Dockerfile does, but for this machine's glibc target:
/// there is no musl target here) and makes the operator image from it.
pub fn operator_image() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
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
