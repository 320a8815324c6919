//! The local control plane and real LiteLLM maps for tests and xtask.
//!
//! - [`ensure_binaries`] builds the pinned etcd, kube-apiserver and kubectl from
//!   `controlplane/` into `target/controlplane/bin` (once; later calls are a stamp check);
//!   [`ensure_tools`] builds helm and promtool there the same way, for the tests only.
//! - [`ControlPlane::start`] runs etcd and kube-apiserver on free loopback ports for one test;
//!   [`ControlPlane::start_detached`] runs them in the background for `cargo xtask cluster up`.
//! - [`litellm_map`] returns the exact cost-map bytes shipped in a given LiteLLM release.
//! - [`litellm_venv`] returns a Python venv with a pinned LiteLLM (library or proxy) installed.
//! - [`TestHost`] is a network namespace with an address of its own (a stand-in pod IP).
//! - [`node::Node`] is a real single-node cluster (containerd, kubelet, CoreDNS...) on this
//!   machine, for `cargo xtask node up|down`.
//! - [`spawn_tied`] starts any helper process (the operator, a file server) so that it cannot
//!   outlive the process that started it.

mod binaries;
mod controlplane;
mod kubeconfig;
mod litellm;
mod lock;
mod net;
mod netns;
pub mod node;
mod process;

use std::path::PathBuf;

pub use binaries::{ensure_binaries, ensure_health, ensure_tools};
pub use controlplane::{ControlPlane, Server};
pub use litellm::{
    LITELLM_LIB_VENV, LITELLM_OLDER_PROXY_VENV, LITELLM_PROXY_VENV, MYPY_VENV, litellm_map,
    litellm_venv,
};
pub use net::{free_port, wait_for_tcp};
pub use netns::TestHost;
pub use process::{TiedChild, spawn_tied};

/// The workspace root (the directory holding the root `Cargo.toml`, `crds/`, `controlplane/`).
pub fn workspace_root() -> PathBuf {
    // testenv lives one level below the root; the path is fixed at compile time, which is what
    // tests and xtask want: they always run from a checkout.
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            // A relative CARGO_TARGET_DIR is relative to where cargo was started; the workspace
            // root is the best guess and keeps the result independent of the test's cwd.
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}
