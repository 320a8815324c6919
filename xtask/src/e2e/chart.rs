//! The chart as the README installs, tests, upgrades and uninstalls it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::env::{CHART, E2e, RELEASE, RELEASE_NAMESPACE, model_cost_map_sync, wait_for};
use super::source::{base_map, digest, with_day0};

/// Where `helm test` reads its map: a ModelCostMapSync of its own.
const TEST_NAMESPACE: &str = "e2e-chart";
const TEST_SYNC: &str = "chart";
const TEST_TARGET: &str = "chart-map";
const TEST_SOURCE: &str = "chart.json";
const SELECTOR: &str = "app.kubernetes.io/name=costmap-operator";

/// `helm install --wait` as the README says (with the test hook pointed at a map): two
/// replicas Ready, one of them holds the Lease, and `helm test` fetches a map through the
/// Service and validates it, with no token in its log.
pub fn install(e2e: &mut E2e) -> Result<()> {
    // A node kept up between runs may hold an earlier release.
    let _ = e2e.helm(&["uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait"]);
    let started = Instant::now();
    e2e.helm(&[
        "install",
        RELEASE,
        CHART,
        "-n",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout=3m",
        &format!("--set=tests.map.namespace={TEST_NAMESPACE}"),
        &format!("--set=tests.map.configMapName={TEST_TARGET}"),
    ])?;
    e2e.figure(
        "helm install --wait",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    let pods = e2e.ready_pods(RELEASE_NAMESPACE, SELECTOR, 2, Duration::from_secs(10))?;
    // An earlier release's pod may hold the Lease until it expires.
    wait_for(
        "one of the two replicas to hold the Lease",
        Duration::from_secs(60),
        || {
            let holder = lease_holder(e2e)?;
            ensure!(
                pods.iter().any(|p| p.name == holder),
                "the Lease is held by {holder:?}, not one of {:?}",
                pods.iter().map(|p| &p.name).collect::<Vec<_>>()
            );
            Ok(())
        },
    )?;

    e2e.fresh_namespace(TEST_NAMESPACE, &[])?;
    e2e.source.publish(TEST_SOURCE, &base_map()?)?;
    e2e.apply(&model_cost_map_sync(
        TEST_NAMESPACE,
        TEST_SYNC,
        &e2e.source.url(TEST_SOURCE),
        TEST_TARGET,
    ))?;
    e2e.wait_ready(
        &sync_object(),
        Some(TEST_NAMESPACE),
        Duration::from_secs(60),
    )?;
    let started = Instant::now();
    let out = e2e.helm(&["test", RELEASE, "-n", RELEASE_NAMESPACE, "--timeout=2m"])?;
    e2e.figure(
        "helm test",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    ensure!(
        out.contains("Phase:          Succeeded"),
        "helm test did not succeed:\n{out}"
    );
    // `helm test --logs` looks for the pod in the release namespace; it runs in the map's.
    let out = e2e.kubectl(&["logs", "-n", TEST_NAMESPACE, &format!("{RELEASE}-test-map")])?;
    let service = format!("http://{RELEASE}.{RELEASE_NAMESPACE}.svc:8080/maps/{TEST_NAMESPACE}/");
    ensure!(
        out.contains(&format!("valid map: {service}")),
        "helm test did not read the map through the Service ({service}):\n{out}"
    );
    ensure!(
        !out.contains("token="),
        "helm test's log shows the map token:\n{out}"
    );
    Ok(())
}

/// `helm upgrade` to another tag of the image while a sync is asked for: the operator rolls
/// to the new tag, and the new map is written exactly once (one MapUpdated Event, once in
/// history). Then `helm uninstall`: the operator goes, the CRDs, the ModelCostMapSync and its
/// ConfigMap stay, as the README says.
pub fn upgrade_and_uninstall(e2e: &mut E2e) -> Result<()> {
    let spec = testenv::node::operator_image_spec()?;
    let (repository, tag) = spec
        .reference
        .rsplit_once(':')
        .context("the operator image has no tag")?;
    let new_tag = format!("{tag}-e2e");
    e2e.node
        .tag_image(&spec.reference, &format!("{repository}:{new_tag}"))?;

    let object = sync_object();
    let updates_before = e2e.events(TEST_NAMESPACE, TEST_SYNC, "MapUpdated")?;
    let new_map = with_day0(&base_map()?, 3e-6, 6e-6)?;
    e2e.source.publish(TEST_SOURCE, &new_map)?;
    let new_digest = digest(&new_map);

    // The upgrade rolls both replicas, and with them the Lease; the sync is asked for while it
    // does.
    let started = Instant::now();
    let upgrade = std::thread::scope(|scope| -> Result<()> {
        let helm = scope.spawn(|| e2e.upgrade(&format!("image.tag={new_tag}")));
        wait_for(
            "the upgrade to start rolling",
            Duration::from_secs(60),
            || {
                let pods = e2e.pods(RELEASE_NAMESPACE, SELECTOR)?;
                ensure!(
                    pods.len() > 2 || pods.iter().any(|p| p.terminating),
                    "not yet"
                );
                Ok(())
            },
        )?;
        e2e.request_sync(&object, Some(TEST_NAMESPACE))?;
        helm.join()
            .map_err(|_| anyhow::anyhow!("helm upgrade panicked"))??;
        Ok(())
    });
    upgrade?;
    e2e.figure(
        "helm upgrade --wait (new tag)",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    let pods = e2e.ready_pods(RELEASE_NAMESPACE, SELECTOR, 2, Duration::from_secs(60))?;
    let images = e2e.kubectl(&[
        "get",
        "pods",
        "-n",
        RELEASE_NAMESPACE,
        "-l",
        SELECTOR,
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ])?;
    ensure!(
        images.split_whitespace().count() == pods.len()
            && images
                .split_whitespace()
                .all(|i| i.ends_with(&format!(":{new_tag}"))),
        "the operator runs {images}, not the tag {new_tag}"
    );
    let status = e2e.wait_artifact(&object, TEST_NAMESPACE, &new_digest)?;
    let in_history = status["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["digest"] == new_digest.as_str())
        .count();
    ensure!(
        in_history <= 1,
        "the new map is {in_history} times in history: {status}"
    );
    let updates = e2e.events(TEST_NAMESPACE, TEST_SYNC, "MapUpdated")? - updates_before;
    ensure!(
        updates == 1,
        "the new map was written {updates} times (MapUpdated Events)"
    );

    let started = Instant::now();
    e2e.helm(&[
        "uninstall",
        RELEASE,
        "-n",
        RELEASE_NAMESPACE,
        "--wait",
        "--timeout=2m",
    ])?;
    e2e.figure(
        "helm uninstall --wait",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    wait_for("the operator's pods to go", Duration::from_secs(60), || {
        let left = e2e.pods(RELEASE_NAMESPACE, SELECTOR)?;
        ensure!(left.is_empty(), "{} pods left", left.len());
        Ok(())
    })?;
    for crd in [
        "crd/modelcostmapsyncs.costmap.dev",
        "crd/clustermodelcostmapsyncs.costmap.dev",
    ] {
        e2e.kubectl(&["get", crd, "-o", "name"])
            .with_context(|| format!("helm uninstall removed {crd}"))?;
    }
    e2e.kubectl(&["get", &object, "-n", TEST_NAMESPACE, "-o", "name"])
        .context("helm uninstall removed the ModelCostMapSync")?;
    let target = e2e.get(&["configmap", TEST_TARGET, "-n", TEST_NAMESPACE])?;
    let held = target["metadata"]["annotations"]["costmap.dev/digest"]
        .as_str()
        .unwrap_or_default();
    if held != new_digest {
        bail!("after helm uninstall the ConfigMap holds {held:?}, not {new_digest}");
    }
    e2e.delete_namespace(TEST_NAMESPACE)
}

fn sync_object() -> String {
    format!("modelcostmapsync/{TEST_SYNC}")
}

/// The holder of the operator's Lease in the release namespace.
pub(super) fn lease_holder(e2e: &E2e) -> Result<String> {
    let leases = e2e.get(&["leases", "-n", RELEASE_NAMESPACE])?;
    leases["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["spec"]["holderIdentity"].as_str())
        .find(|h| h.starts_with(RELEASE))
        .map(str::to_owned)
        .context("no Lease held by an operator pod")
}
