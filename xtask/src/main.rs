//! Developer commands for costmap-operator; run them as `cargo xtask ...`.
//!
//! - `cargo xtask cluster up|down|bin-dir`: a background local control plane.
//! - `cargo xtask test`: every check and test, as CI runs them.
//! - `cargo xtask demo [--once]`: the operator end to end on a private control plane.
//! - `cargo xtask node up|down|test`: a real single-node cluster on this machine (root), and
//!   the end-to-end tests on it.
//! - `cargo xtask modules`: the module tree of src/ with line counts, and its rules.

mod checks;
mod cluster;
mod demo;
mod e2e;
mod modules;
mod node;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Developer commands for costmap-operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The local control plane (etcd + kube-apiserver) in the background.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// A real single-node cluster on this machine (containerd, kubelet, CoreDNS; needs root).
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Run every check and test (fmt, clippy, the control-plane build, cargo test).
    Test,
    /// Run the operator end to end against a real LiteLLM map, then wait for Ctrl-C.
    Demo {
        /// Exit after showing the result instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Print src/'s module tree with line counts; fail on an import cycle between sibling
    /// modules, on http or agent using controller, or on a file too long before its tests.
    Modules {
        /// List every reference that makes each edge of a cycle, not only the first.
        #[arg(long)]
        all_references: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Build (first time), start, apply crds/, and print the admin kubeconfig path last.
    Up,
    /// Stop the control plane and remove its state.
    Down,
    /// Print the directory holding etcd, kube-apiserver, kubectl and helm (building them if
    /// needed).
    BinDir,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Build (first time), clear what an earlier run left, start, wait until the node is Ready
    /// and CoreDNS answers; print the admin kubeconfig path last.
    Up,
    /// Stop the node and leave the host as it was (processes, mounts, iptables rules,
    /// interfaces, sysctls).
    Down,
    /// What `cargo xtask test` checks of the node: from a clean host, up, a pod resolves
    /// cluster names through CoreDNS, the end-to-end tests, down leaves the host as it was.
    Check,
    /// The end-to-end tests (the chart, LiteLLM pods, the kubelet's ConfigMap mounts) on the
    /// node that is up (`cargo xtask node up` first).
    Test {
        /// Run only these (by number, in order; the first installs the chart the others use).
        only: Vec<usize>,
    },
    /// Make the images `up` imports (operator, LiteLLM proxy) and print each archive's size.
    Images,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Cluster { command } => match command {
            ClusterCommand::Up => cluster::up(),
            ClusterCommand::Down => cluster::down(),
            ClusterCommand::BinDir => cluster::bin_dir(),
        },
        Command::Node { command } => match command {
            NodeCommand::Up => node::up(),
            NodeCommand::Down => node::down(),
            NodeCommand::Images => node::images(),
            NodeCommand::Check => node::check(),
            NodeCommand::Test { only } => node::test(&only),
        },
        Command::Test => checks::run_all(),
        Command::Demo { once } => demo::demo(once),
        Command::Modules { all_references } => modules::run(all_references),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // {:#} puts the whole context chain on one line; log tails inside keep their
            // newlines.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
