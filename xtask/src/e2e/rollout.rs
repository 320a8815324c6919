//! Pods that come and go while clients keep asking: a Deployment rolled by `restartWorkloads`,
//! and the operator's own leader pod deleted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::chart::lease_holder;
use super::env::{E2e, RELEASE, RELEASE_NAMESPACE, model_cost_map_sync, wait_for};
use super::source::{base_map, digest, with_day0};

const NAMESPACE: &str = "e2e-rollout";

/// With `restartWorkloads.enabled=true` (as the README says to set it), a new map rolls a real
/// Deployment: new pods carry the map's digest, and a client looping through its Service
/// during the roll gets no failed request.
pub fn restart_workloads(e2e: &mut E2e) -> Result<()> {
    e2e.upgrade("restartWorkloads.enabled=true")?;
    e2e.fresh_namespace(NAMESPACE, &[])?;
    let source = "rollout.json";
    let base = base_map()?;
    e2e.source.publish(source, &base)?;
    e2e.apply(&web_deployment())?;
    let before = e2e.ready_pods(NAMESPACE, "app=web", 2, Duration::from_secs(120))?;
    let sync = model_cost_map_sync(NAMESPACE, "web", &e2e.source.url(source), "web-map")
        + "  consumers:\n    restartWorkloads:\n    - {kind: Deployment, name: web}\n";
    e2e.apply(&sync)?;
    let object = "modelcostmapsync/web";
    e2e.wait_ready(object, Some(NAMESPACE), Duration::from_secs(60))?;
    // The first map already rolls the Deployment (its template gets the digest): wait for
    // that roll to finish so that the measured one starts from two settled pods.
    let first = digest(&base);
    let settled = wait_rolled(e2e, &first)?;

    let service_ip = e2e.kubectl(&[
        "get",
        "service",
        "web",
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let url = format!("http://{}:80/", service_ip.trim());
    let map = with_day0(&base, 1.25e-6, 1e-5)?;
    let new_digest = digest(&map);
    let started = Instant::now();
    let counts = while_looping(&url, || {
        e2e.source.publish(source, &map)?;
        e2e.request_sync(object, Some(NAMESPACE))?;
        wait_rolled(e2e, &new_digest).map(drop)
    })?;
    e2e.figure(
        "restartWorkloads: new map -> Deployment rolled",
        format!(
            "{:.1} s, {} requests through the Service during it, {} failed",
            started.elapsed().as_secs_f64(),
            counts.ok + counts.failed,
            counts.failed
        ),
    );
    ensure!(
        counts.failed == 0,
        "{} of {} requests failed during the roll: {}",
        counts.failed,
        counts.ok + counts.failed,
        counts.last_error
    );
    ensure!(
        counts.ok >= 10,
        "only {} requests went through during the roll",
        counts.ok
    );
    let after = e2e.pods(NAMESPACE, "app=web")?;
    for pod in &after {
        ensure!(
            !before.iter().chain(&settled).any(|old| old.uid == pod.uid),
            "{} was not replaced",
            pod.name
        );
    }
    e2e.delete_namespace(NAMESPACE)
}

/// The leader pod deleted: the other replica takes the Lease and completes a requested sync,
/// and a client reading a map through the Service the whole time gets every map.
pub fn leader_deleted(e2e: &mut E2e) -> Result<()> {
    // The chart test's ModelCostMapSync (e2e-chart/chart) is still there.
    let (namespace, name, target) = ("e2e-chart", "chart", "chart-map");
    let object = format!("modelcostmapsync/{name}");
    let map_url = e2e.kubectl(&[
        "get",
        "configmap",
        target,
        "-n",
        namespace,
        "-o",
        "jsonpath={.data.map-url}",
    ])?;
    let service_ip = e2e.kubectl(&[
        "get",
        "service",
        RELEASE,
        "-n",
        RELEASE_NAMESPACE,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    // The host cannot resolve cluster names: the same URL by the Service's address.
    let service_host = format!("{RELEASE}.{RELEASE_NAMESPACE}.svc");
    ensure!(
        map_url.contains(&service_host),
        "map-url does not name the Service: it has no {service_host}"
    );
    let url = map_url.replace(&service_host, service_ip.trim());

    let leader = lease_holder(e2e)?;
    let map = with_day0(&base_map()?, 2e-6, 4e-6)?;
    let new_digest = digest(&map);
    let started = Instant::now();
    let mut takeover = 0.0;
    let counts = while_looping(&url, || {
        e2e.kubectl(&[
            "delete",
            "pod",
            &leader,
            "-n",
            RELEASE_NAMESPACE,
            "--wait=false",
        ])?;
        let new_leader = wait_for(
            "another replica to take the Lease",
            Duration::from_secs(90),
            || {
                let holder = lease_holder(e2e)?;
                ensure!(holder != leader, "still {holder}");
                Ok(holder)
            },
        )?;
        takeover = started.elapsed().as_secs_f64();
        e2e.source.publish("chart.json", &map)?;
        e2e.request_sync(&object, Some(namespace))?;
        e2e.wait_artifact(&object, namespace, &new_digest)?;
        e2e.ready_pods(
            RELEASE_NAMESPACE,
            "app.kubernetes.io/name=costmap-operator",
            2,
            Duration::from_secs(120),
        )
        .with_context(|| format!("{new_leader} leads, but the Deployment did not replace {leader}"))
        .map(drop)
    })?;
    e2e.figure(
        "leader pod deleted -> Lease taken by the other replica",
        format!("{takeover:.1} s"),
    );
    e2e.figure(
        "leader pod deleted: map reads through the Service meanwhile",
        format!(
            "{} requests, {} failed",
            counts.ok + counts.failed,
            counts.failed
        ),
    );
    ensure!(
        counts.failed == 0,
        "{} of {} map reads failed: {}",
        counts.failed,
        counts.ok + counts.failed,
        counts.last_error
    );
    Ok(())
}

/// Requests through a Service while something happens.
struct Counts {
    ok: u64,
    failed: u64,
    last_error: String,
}

/// Runs `during` while another thread GETs `url` in a loop (one request at a time, 5 s
/// timeout), and counts the answers: a 200 is ok, anything else (an error status, a refused
/// or reset connection, a timeout) failed.
fn while_looping(url: &str, during: impl FnOnce() -> Result<()>) -> Result<Counts> {
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        // A new connection per request, so each one goes through the Service's rules again.
        .max_idle_connections(0)
        .build()
        .new_agent();
    let (result, last_error) = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            let mut last_error = String::new();
            while !stop.load(Ordering::Relaxed) {
                match agent.get(url).call() {
                    Ok(mut response) if response.status() == 200 => {
                        // Read the whole body: a map cut short is a failed request too.
                        match response
                            .body_mut()
                            .with_config()
                            .limit(256 << 20)
                            .read_to_vec()
                        {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(err) => {
                                last_error = format!("body: {err}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    Ok(response) => {
                        last_error = format!("HTTP {}", response.status());
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        last_error = err.to_string();
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            last_error
        });
        let result = during();
        stop.store(true, Ordering::Relaxed);
        (
            result,
            client
                .join()
                .unwrap_or_else(|_| "the client panicked".to_owned()),
        )
    });
    result?;
    Ok(Counts {
        ok: ok.into_inner(),
        failed: failed.into_inner(),
        last_error: last_error.replace(url, "<url>"),
    })
}

/// Waits until the Deployment's template carries `digest` and the roll is complete (every
/// pod updated, Ready, the old ones gone); returns its pods.
fn wait_rolled(e2e: &E2e, digest: &str) -> Result<Vec<super::env::Pod>> {
    wait_for(
        &format!("the Deployment to roll to {digest}"),
        Duration::from_secs(180),
        || {
            let deployment = e2e.get(&["deployment", "web", "-n", NAMESPACE])?;
            let annotation =
                &deployment["spec"]["template"]["metadata"]["annotations"]["costmap.dev/digest"];
            ensure!(annotation == digest, "the template has {annotation}");
            let status = &deployment["status"];
            ensure!(
                status["observedGeneration"] == deployment["metadata"]["generation"]
                    && status["updatedReplicas"] == 2
                    && status["readyReplicas"] == 2
                    && status["replicas"] == 2,
                "rolling: {status}"
            );
            let pods = e2e.pods(NAMESPACE, "app=web")?;
            ensure!(
                pods.len() == 2 && pods.iter().all(|p| p.ready && !p.terminating),
                "old pods remain"
            );
            Ok(pods)
        },
    )
}

/// A small web Deployment as teams run one: two replicas, a readiness probe, a surge-only
/// rolling update and a preStop pause (so a pod leaves the Service's endpoints before its
/// server stops).
fn web_deployment() -> String {
    let image = testenv::node::BUSYBOX_IMAGE;
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  strategy:
    rollingUpdate: {{maxUnavailable: 0, maxSurge: 1}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: web
        image: {image}
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{{containerPort: 8080}}]
        readinessProbe:
          httpGet: {{path: /, port: 8080}}
          periodSeconds: 1
        lifecycle:
          preStop:
            exec: {{command: ["sleep", "3"]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}
