//! What every scenario uses: kubectl and helm on the node, JSON from the API, the map source,
//! an HTTP client on the host (which reaches pod and Service IPs directly), polling with a
//! deadline, and the figures the scenarios measure.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use testenv::node::Node;

use super::source::MapSource;

/// The release every scenario installs, upgrades and finally uninstalls, as the README names it.
pub const RELEASE: &str = "costmap-operator";
pub const RELEASE_NAMESPACE: &str = "costmap-system";
pub const CHART: &str = "charts/costmap-operator";

pub struct E2e<'a> {
    pub node: &'a Node,
    pub source: MapSource,
    pub http: ureq::Agent,
    helm: PathBuf,
    figures: Vec<(String, String)>,
}

impl<'a> E2e<'a> {
    pub fn new(node: &'a Node) -> Result<E2e<'a>> {
        let helm = testenv::ensure_tools()?.join("helm");
        let host_ip = node
            .server
            .trim_start_matches("https://")
            .rsplit_once(':')
            .map(|(host, _)| host.to_owned())
            .with_context(|| format!("no host in {}", node.server))?;
        let source = MapSource::start(&host_ip, &node.dir().join("e2e-source"))?;
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Ok(E2e {
            node,
            source,
            http,
            helm,
            figures: Vec::new(),
        })
    }

    /// Records a figure, shown when every scenario has passed.
    pub fn figure(&mut self, what: impl Into<String>, value: impl Into<String>) {
        let (what, value) = (what.into(), value.into());
        eprintln!("    {what}: {value}");
        self.figures.push((what, value));
    }

    pub fn figures(&self) -> &[(String, String)] {
        &self.figures
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.node.kubectl(args)
    }

    /// `kubectl get ARGS -o json`.
    pub fn get(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl(&all)?;
        serde_json::from_str(&out)
            .with_context(|| format!("kubectl {} gave no JSON", all.join(" ")))
    }

    pub fn apply(&self, manifests: &str) -> Result<()> {
        self.node.apply(manifests).map(drop)
    }

    /// A file of the repository, as a user has it in a checkout.
    pub fn repo_file(&self, path: &str) -> Result<String> {
        let path = testenv::workspace_root().join(path);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Runs the pinned helm against the node from the repository root, as the README does.
    pub fn helm(&self, args: &[&str]) -> Result<String> {
        let home = self.node.dir().join("helm");
        let output = Command::new(&self.helm)
            .args(args)
            .current_dir(testenv::workspace_root())
            .env("KUBECONFIG", &self.node.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .output()
            .context("running helm")?;
        if !output.status.success() {
            bail!(
                "helm {} failed ({}):\n{}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `helm upgrade` of the release with its values and `set` (`key=value`), waiting for
    /// the roll.
    pub fn upgrade(&self, set: &str) -> Result<String> {
        self.helm(&[
            "upgrade",
            RELEASE,
            CHART,
            "-n",
            RELEASE_NAMESPACE,
            "--reuse-values",
            &format!("--set={set}"),
            "--wait",
            "--timeout=3m",
        ])
    }

    /// Creates `name` with `labels`, after deleting what an earlier, failed run left in it.
    pub fn fresh_namespace(&self, name: &str, labels: &[&str]) -> Result<()> {
        self.delete_namespace(name)?;
        self.kubectl(&["create", "namespace", name])?;
        if !labels.is_empty() {
            let mut args = vec!["label", "namespace", name];
            args.extend_from_slice(labels);
            self.kubectl(&args)?;
        }
        Ok(())
    }

    /// Deletes `name` and waits until it is gone, so the next scenario has the node's memory.
    pub fn delete_namespace(&self, name: &str) -> Result<()> {
        self.kubectl(&[
            "delete",
            "namespace",
            name,
            "--ignore-not-found",
            "--timeout=180s",
        ])
        .map(drop)
    }

    /// Asks the operator for a sync now, as `kubectl costmap sync` does.
    pub fn request_sync(&self, kind_and_name: &str, namespace: Option<&str>) -> Result<()> {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
        let annotation = format!("costmap.dev/sync-requested-at={millis}");
        let mut args = vec!["annotate", kind_and_name, &annotation, "--overwrite"];
        if let Some(namespace) = namespace {
            args.extend_from_slice(&["-n", namespace]);
        }
        self.kubectl(&args).map(drop)
    }

    /// The pods matching `selector` in `namespace`, Ready or not.
    pub fn pods(&self, namespace: &str, selector: &str) -> Result<Vec<Pod>> {
        let list = self.get(&["pods", "-n", namespace, "-l", selector])?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(Pod::from_json)
            .collect())
    }

    /// Waits until `count` pods match `selector`, every one Ready, and returns them.
    pub fn ready_pods(
        &self,
        namespace: &str,
        selector: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Pod>> {
        wait_for(
            &format!("{count} Ready pods {selector} in {namespace}"),
            timeout,
            || {
                let pods = self.pods(namespace, selector)?;
                let ready: Vec<_> = pods.iter().filter(|p| p.ready && !p.terminating).collect();
                if pods.len() != count || ready.len() != count {
                    bail!(
                        "{} pods, {} Ready: {:?}",
                        pods.len(),
                        ready.len(),
                        pods.iter().map(|p| &p.phase_detail).collect::<Vec<_>>()
                    );
                }
                Ok(pods)
            },
        )
    }
}

/// What the scenarios read of a pod.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub uid: String,
    pub ip: String,
    pub ready: bool,
    pub terminating: bool,
    pub restarts: u64,
    /// Phase and the waiting reasons of its containers, for messages.
    pub phase_detail: String,
}

impl Pod {
    fn from_json(pod: &Value) -> Pod {
        let status = &pod["status"];
        let ready = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let containers = status["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let restarts = containers
            .iter()
            .map(|c| c["restartCount"].as_u64().unwrap_or(0))
            .sum();
        let waiting: Vec<String> = containers
            .iter()
            .filter_map(|c| c["state"]["waiting"]["reason"].as_str().map(str::to_owned))
            .collect();
        Pod {
            name: pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            uid: pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ip: status["podIP"].as_str().unwrap_or_default().to_owned(),
            ready,
            terminating: !pod["metadata"]["deletionTimestamp"].is_null(),
            restarts,
            phase_detail: format!(
                "{} {} {waiting:?}",
                pod["metadata"]["name"].as_str().unwrap_or_default(),
                status["phase"].as_str().unwrap_or_default()
            ),
        }
    }
}

/// Calls `check` every 250 ms until it returns Ok or `timeout` passes; the error then says
/// what was awaited and what `check` said last.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => {
                bail!("waited {} s for {what}; last: {err:#}", timeout.as_secs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// The median of `values` (which must not be empty), for figures.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

impl E2e<'_> {
    /// The object's condition `type`: (status, reason, message).
    pub fn condition(
        &self,
        object: &str,
        namespace: Option<&str>,
        type_: &str,
    ) -> Result<(String, String, String)> {
        let mut args = vec![object];
        if let Some(namespace) = namespace {
            args.extend_from_slice(&["-n", namespace]);
        }
        let object = self.get(&args)?;
        let condition = object["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .with_context(|| format!("no {type_} condition yet"))?;
        let text = |field: &str| condition[field].as_str().unwrap_or_default().to_owned();
        Ok((text("status"), text("reason"), text("message")))
    }

    /// Waits until the object's Ready condition is True at its current generation, and
    /// returns the object.
    pub fn wait_ready(
        &self,
        object: &str,
        namespace: Option<&str>,
        timeout: Duration,
    ) -> Result<Value> {
        wait_for(&format!("{object} to be Ready"), timeout, || {
            let (status, reason, message) = self.condition(object, namespace, "Ready")?;
            if status != "True" {
                bail!("Ready={status} {reason}: {message}");
            }
            let mut args = vec![object];
            if let Some(namespace) = namespace {
                args.extend_from_slice(&["-n", namespace]);
            }
            let object = self.get(&args)?;
            if object["status"]["observedGeneration"] != object["metadata"]["generation"] {
                bail!("status is for an older generation");
            }
            Ok(object)
        })
    }

    /// Waits until the object's status names the map `digest` as its artifact; returns the
    /// status.
    pub fn wait_artifact(&self, object: &str, namespace: &str, digest: &str) -> Result<Value> {
        wait_for(
            &format!("{object} to publish {digest}"),
            Duration::from_secs(90),
            || {
                let status = self.get(&[object, "-n", namespace])?["status"].take();
                let held = status["artifact"]["digest"].as_str().unwrap_or_default();
                ensure!(held == digest, "artifact is {held}");
                Ok(status)
            },
        )
    }

    /// How many times an Event with `reason` was recorded about the object `name` in
    /// `namespace` (a series counts each time it was seen).
    pub fn events(&self, namespace: &str, name: &str, reason: &str) -> Result<u64> {
        let list = self.get(&["events.events.k8s.io", "-n", namespace])?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["regarding"]["name"] == name && e["reason"] == reason)
            .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
            .sum())
    }
}

/// A ModelCostMapSync with `source` as its source and the examples' schedule.
pub fn model_cost_map_sync(namespace: &str, name: &str, source: &str, target: &str) -> String {
    format!(
        "apiVersion: costmap.dev/v1alpha1
kind: ModelCostMapSync
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  source: {{url: \"{source}\"}}
  interval: 1h
  target: {{configMapName: {target}}}
"
    )
}
