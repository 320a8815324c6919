//! `cargo xtask test`: every check and test, in order, failing fast.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// One named step. To add one (helm lint, LiteLLM venvs...), write a function and list it in
/// [`STEPS`].
struct Step {
    name: &'static str,
    run: fn() -> Result<()>,
}

const STEPS: &[Step] = &[
    Step {
        name: "cargo fmt --check",
        run: fmt,
    },
    Step {
        name: "cargo clippy",
        run: clippy,
    },
    Step {
        // Before the tests, so the (first-time) build happens once, visibly, instead of inside
        // whichever test binary gets there first with its output captured.
        name: "control-plane binaries",
        run: control_plane,
    },
    Step {
        // Before the tests for the same reason: the first pip install of LiteLLM takes tens of
        // seconds, shown here once instead of inside a test's timeout.
        name: "litellm venvs",
        run: litellm_venvs,
    },
    Step {
        name: "cargo test",
        run: test,
    },
    Step {
        // One real node (containerd, kubelet, CoreDNS) from a clean host and back, with the
        // end-to-end tests (the chart, LiteLLM pods) on it.
        name: "node up, cluster DNS, end-to-end tests, node down",
        run: crate::node::check,
    },
];

/// Runs every step; stops at the first failure and names it.
pub fn run_all() -> Result<()> {
    let started = Instant::now();
    for step in STEPS {
        eprintln!("==> {}", step.name);
        let step_started = Instant::now();
        (step.run)().with_context(|| format!("step `{}` failed", step.name))?;
        eprintln!(
            "==> {}: ok ({:.1} s)",
            step.name,
            step_started.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "all {} steps passed in {:.0} s",
        STEPS.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn fmt() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])
}

fn clippy() -> Result<()> {
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

fn control_plane() -> Result<()> {
    testenv::ensure_binaries()?;
    testenv::ensure_health()?;
    let bin_dir = testenv::ensure_tools()?;
    eprintln!("binaries in {}", bin_dir.display());
    Ok(())
}

/// The Python venvs with the real LiteLLM library and proxy that the LiteLLM tests run, and
/// the type checker the callback module is held to.
fn litellm_venvs() -> Result<()> {
    for (name, requirement) in [
        testenv::LITELLM_LIB_VENV,
        testenv::LITELLM_PROXY_VENV,
        testenv::LITELLM_OLDER_PROXY_VENV,
        testenv::MYPY_VENV,
    ] {
        let started = Instant::now();
        let venv = testenv::litellm_venv(name, requirement)?;
        eprintln!(
            "{requirement} in {} ({:.1} s)",
            venv.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn test() -> Result<()> {
    cargo(&["test", "--workspace"])
}

/// Runs cargo in the workspace root with inherited stdout/stderr, so its own output (such as
/// the `test result:` lines) is shown as it comes.
fn cargo(args: &[&str]) -> Result<()> {
    // `cargo run` sets $CARGO to the cargo that runs us: use the same toolchain.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(testenv::workspace_root())
        .status()
        .with_context(|| format!("starting cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} exited with {status}", args.join(" "));
    }
    Ok(())
}
