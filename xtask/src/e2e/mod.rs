//! The end-to-end tests on a real node: the chart's image and pods, the kubelet's ConfigMap
//! mounts and real LiteLLM proxies, run as a user runs them. `cargo xtask node test` runs them
//! on the node that is up; `cargo xtask test` runs them between its node up and node down.
//!
//! One node serves every scenario. They run in order, because the later ones move the
//! operator itself (a deleted leader, an upgrade, an uninstall), and each one deletes the
//! namespaces it made. Each prints its time and the figures it measured.

mod chart;
mod env;
mod proxies;
mod rollout;
mod source;

use std::time::Instant;

use anyhow::{Context, Result, bail};
use testenv::node::Node;

pub use env::E2e;

/// One end-to-end test.
struct Scenario {
    name: &'static str,
    run: fn(&mut E2e) -> Result<()>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "helm install --wait: two replicas, one leader; helm test serves a map",
        run: chart::install,
    },
    Scenario {
        name: "examples/litellm-proxy-no-db.yaml: a day-0 model priced by every pod, no restart",
        run: proxies::module_path,
    },
    Scenario {
        name: "examples/litellm-agent-sidecar.yaml: the agent follows the kubelet's ConfigMap",
        run: proxies::agent_path,
    },
    Scenario {
        name: "restartWorkloads rolls a Deployment with no failed request",
        run: rollout::restart_workloads,
    },
    Scenario {
        name: "the leader pod deleted: the other replica syncs, maps served throughout",
        run: rollout::leader_deleted,
    },
    Scenario {
        name: "examples/cluster.yaml: a proxy in each labelled namespace",
        run: proxies::cluster_wide,
    },
    Scenario {
        name: "helm upgrade to a new tag, then helm uninstall",
        run: chart::upgrade_and_uninstall,
    },
];

/// Runs every scenario on `node` (or those numbered in `only`), in order, stopping at the
/// first failure; prints each one's time and, at the end, every figure measured.
pub fn run(node: &Node, only: &[usize]) -> Result<()> {
    if let Some(unknown) = only.iter().find(|n| !(1..=SCENARIOS.len()).contains(n)) {
        bail!(
            "there is no end-to-end test {unknown}: they are 1 to {}",
            SCENARIOS.len()
        );
    }
    let started = Instant::now();
    let mut e2e = E2e::new(node)?;
    let chosen = SCENARIOS
        .iter()
        .enumerate()
        .map(|(index, scenario)| (index + 1, scenario))
        .filter(|(number, _)| only.is_empty() || only.contains(number));
    for (number, scenario) in chosen {
        eprintln!("--> e2e {number}: {}", scenario.name);
        let scenario_started = Instant::now();
        (scenario.run)(&mut e2e)
            .with_context(|| format!("e2e {number} ({}) failed", scenario.name))?;
        let seconds = scenario_started.elapsed().as_secs_f64();
        eprintln!("--> e2e {number}: ok ({seconds:.1} s)");
        e2e.figure(format!("e2e {number} time"), format!("{seconds:.1} s"));
    }
    eprintln!(
        "the end-to-end tests passed in {:.0} s; figures:",
        started.elapsed().as_secs_f64()
    );
    for (what, value) in e2e.figures() {
        eprintln!("  {what}: {value}");
    }
    Ok(())
}
