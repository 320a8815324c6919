//! The Helm chart: its CRD is the generated one, `helm lint` passes, a typo in values fails,
//! the defaults pass a security review, and on the real control plane `helm install` works and
//! the RBAC it grants is enough for every feature (the operator runs with a token of the
//! chart's ServiceAccount) and no more (`kubectl auth can-i`).

mod common;

use costmap_operator::api::{ClusterModelCostMapSync, EventReason, Reason};
use std::path::PathBuf;
use std::process::Command;

use common::process::OperatorProcess;
use common::proxy::StandIn;
use common::*;
use costmap_operator::api::{ConsumerState, DEFAULT_KEY};
use costmap_operator::http::capability::{KEY_FIELD, MapKeys};
use costmap_operator::layout::MAP_URL_KEY;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Api;
use kube::api::DeleteParams;
use serde::Deserialize;
use serde_json::json;
use serde_yaml::Value;
use testenv::TestHost;

const RELEASE: &str = "costmap-operator";
const RELEASE_NAMESPACE: &str = "costmap-system";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:costmap-system:costmap-operator";
/// The map key Secret the chart names (`<fullname>-map-key`).
const MAP_KEY_SECRET: &str = "costmap-operator-map-key";

fn chart() -> PathBuf {
    testenv::workspace_root().join("charts/costmap-operator")
}

/// Runs helm (the pinned build) with the control plane's kubeconfig; Err is its stderr.
fn helm(args: &[&str]) -> Result<String, String> {
    let plane = control_plane();
    let helm = testenv::ensure_tools().expect("building helm").join("helm");
    let output = Command::new(helm)
        .args(args)
        .env("KUBECONFIG", &plane.kubeconfig)
        .env("HELM_CACHE_HOME", plane.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", plane.dir().join("helm/config"))
        .env("HELM_DATA_HOME", plane.dir().join("helm/data"))
        .output()
        .expect("running helm");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The chart rendered with `sets`, as YAML documents.
fn template(sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        RELEASE_NAMESPACE,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let rendered = helm(&args).unwrap_or_else(|err| panic!("helm template {sets:?}: {err}"));
    serde_yaml::Deserializer::from_str(&rendered)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// Every (apiGroup, resource, verb) the rendered Roles and ClusterRoles grant (rules on
/// non-resource URLs, the metrics reader's, are not resources).
fn grants(docs: &[Value]) -> Vec<(String, String, String)> {
    let mut grants = Vec::new();
    for role in of_kind(docs, "ClusterRole")
        .into_iter()
        .chain(of_kind(docs, "Role"))
    {
        for rule in role["rules"].as_sequence().unwrap() {
            for group in rule["apiGroups"].as_sequence().into_iter().flatten() {
                for resource in rule["resources"].as_sequence().unwrap() {
                    for verb in rule["verbs"].as_sequence().unwrap() {
                        grants.push((
                            group.as_str().unwrap().to_owned(),
                            resource.as_str().unwrap().to_owned(),
                            verb.as_str().unwrap().to_owned(),
                        ));
                    }
                }
            }
        }
    }
    grants
}

#[test]
fn the_chart_crds_are_the_generated_crds_byte_for_byte() {
    for file in ["modelcostmapsync.yaml", "clustermodelcostmapsync.yaml"] {
        let generated = std::fs::read(testenv::workspace_root().join("crds").join(file));
        let in_chart = std::fs::read(chart().join("crds").join(file));
        assert_eq!(
            in_chart.unwrap(),
            generated.unwrap(),
            "copy crds/{file} into charts/costmap-operator/crds/"
        );
    }
}

#[test]
fn helm_lint_passes_with_the_defaults_and_every_option() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    helm(&["lint", "--strict", chart]).unwrap();
    helm(&[
        "lint",
        "--strict",
        chart,
        "--set",
        "restartWorkloads.enabled=true",
        "--set",
        "watchNamespaces={llm,team-b}",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "allowSourceCidrs={169.254.10.0/24}",
        "--set",
        "logFormat=json",
        "--set",
        "networkPolicy.enabled=true",
    ])
    .unwrap();
}

/// promtool's unit tests of the chart's alerts: each fires on the series that mean it, and
/// stays quiet on healthy ones.
const ALERT_TESTS: &str = r#"
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # Synced at t=0 with a 10m interval; nothing since: failing after 20m (+5m for).
      - series: 'costmap_last_success_timestamp_seconds{namespace="llm",name="litellm"}'
        values: '0x40'
      - series: 'costmap_sync_interval_seconds{namespace="llm",name="litellm"}'
        values: '600x40'
      # A healthy one: synced every minute.
      - series: 'costmap_last_success_timestamp_seconds{namespace="llm",name="fresh"}'
        values: '0+60x40'
      - series: 'costmap_sync_interval_seconds{namespace="llm",name="fresh"}'
        values: '600x40'
      # A ClusterModelCostMapSync (no namespace), failing the same way.
      - series: 'costmap_last_success_timestamp_seconds{namespace="",name="shared"}'
        values: '0x40'
      - series: 'costmap_sync_interval_seconds{namespace="",name="shared"}'
        values: '600x40'
      - series: 'costmap_guard_refusals_total{guard="price"}'
        values: '0 0 1 1 1'
      - series: 'costmap_consumers{namespace="llm",name="litellm",state="Current"}'
        values: '1x40'
      - series: 'costmap_consumers{namespace="llm",name="litellm",state="Stale"}'
        values: '1x40'
      - series: 'costmap_unpriced_deployments{namespace="llm",name="litellm"}'
        values: '0 0 1x40'
    alert_rule_test:
      - eval_time: 10m
        alertname: CostmapSyncFailing
        exp_alerts: []
      - eval_time: 30m
        alertname: CostmapSyncFailing
        exp_alerts:
          - exp_labels: {severity: warning, namespace: llm, name: litellm}
            exp_annotations:
              summary: "ModelCostMapSync llm/litellm has not synced for two intervals"
              description: "Its Ready condition says why (kubectl costmap status litellm -n llm); the last good map is still served."
              runbook_url: "https://github.com/costmap-operator/costmap-operator/blob/main/README.md#costmapsyncfailing"
          - exp_labels: {severity: warning, name: shared}
            exp_annotations:
              summary: "ClusterModelCostMapSync shared has not synced for two intervals"
              description: "Its Ready condition says why (kubectl describe cmcms shared); the last good map is still served."
              runbook_url: "https://github.com/costmap-operator/costmap-operator/blob/main/README.md#costmapsyncfailing"
      - eval_time: 4m
        alertname: CostmapGuardRefusing
        exp_alerts:
          - exp_labels: {severity: warning, guard: price}
            exp_annotations:
              summary: "A price guard refused a new map"
              description: "The refusal names the map's digest; review it, then accept or wait for upstream."
              runbook_url: "https://github.com/costmap-operator/costmap-operator/blob/main/README.md#costmapguardrefusing"
      - eval_time: 10m
        alertname: CostmapConsumersNotCurrent
        exp_alerts: []
      - eval_time: 20m
        alertname: CostmapConsumersNotCurrent
        exp_alerts:
          - exp_labels: {severity: warning, namespace: llm, name: litellm}
            exp_annotations:
              summary: "1 proxies of llm/litellm do not serve the current map"
              description: "status.consumers says which and why (a reload refused, unreachable, a canary that failed)."
              runbook_url: "https://github.com/costmap-operator/costmap-operator/blob/main/README.md#costmapconsumersnotcurrent"
      - eval_time: 3m
        alertname: CostmapUnpricedDeployments
        exp_alerts: []
      - eval_time: 10m
        alertname: CostmapUnpricedDeployments
        exp_alerts:
          - exp_labels: {severity: critical, namespace: llm, name: litellm}
            exp_annotations:
              summary: "1 deployments of llm/litellm's proxies are billed at $0"
              description: "The ModelsPriced condition names them: price them in spec.overrides or their model_info, or wait for upstream."
              runbook_url: "https://github.com/costmap-operator/costmap-operator/blob/main/README.md#costmapunpriceddeployments"
"#;

#[test]
fn the_alert_rules_pass_promtool_and_fire_on_what_they_mean() {
    let docs = template(&["prometheusRule.enabled=true"]);
    let rules = of_kind(&docs, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    let names: Vec<&str> = rules[0]["spec"]["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|rule| rule["alert"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "CostmapSyncFailing",
            "CostmapGuardRefusing",
            "CostmapConsumersNotCurrent",
            "CostmapUnpricedDeployments"
        ]
    );
    // Each alert's runbook is a README section.
    let readme = std::fs::read_to_string(testenv::workspace_root().join("README.md")).unwrap();
    for name in &names {
        assert!(
            readme.contains(&format!("#### {name}")),
            "README.md has no runbook section for {name}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml::to_string(&rules[0]["spec"]).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("tests.yaml"), ALERT_TESTS).unwrap();
    let promtool = testenv::ensure_tools()
        .expect("building promtool")
        .join("promtool");
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "tests.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("running promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        of_kind(&template(&[]), "PrometheusRule").is_empty(),
        "off by default"
    );
}

#[test]
fn a_typo_or_a_bad_value_fails_at_install() {
    let chart = chart();
    for (set, complaint) in [
        ("replicaCont=3", "replicaCont"),
        ("image.tagg=1", "tagg"),
        ("logFormat=xml", "logFormat"),
        ("leaderElection.leaseDuration=15", "leaseDuration"),
        ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
    ] {
        let err =
            helm(&["template", RELEASE, chart.to_str().unwrap(), "--set", set]).expect_err(set);
        assert!(err.contains(complaint), "{set}: {err}");
    }
}

#[test]
fn the_defaults_pass_a_security_review() {
    let docs = template(&[]);
    let deployment = of_kind(&docs, "Deployment")[0];
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["automountServiceAccountToken"], true);
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    for field in ["requests", "limits"] {
        assert!(
            container["resources"][field]["memory"].is_string(),
            "resources.{field}"
        );
    }
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--lease-duration=15s"), "{args:?}");
    // Maps and metrics need a credential; map-url names the Service.
    for arg in [
        "--map-access=token",
        "--metrics-access=token",
        "--map-base-url=http://costmap-operator.costmap-system.svc:8080",
        "--map-key-secret=costmap-operator-map-key",
    ] {
        assert!(args.contains(&arg), "{arg} in {args:?}");
    }
    // The map key: one Secret by name, in the release namespace; create cannot be named.
    let map_key = of_kind(&docs, "Role")
        .into_iter()
        .find(|role| role["metadata"]["name"] == "costmap-operator-map-key")
        .expect("the map key's Role");
    assert_eq!(map_key["metadata"]["namespace"], RELEASE_NAMESPACE);
    for rule in map_key["rules"].as_sequence().unwrap() {
        let verbs = rule["verbs"].as_sequence().unwrap();
        if verbs.iter().any(|v| v != "create") {
            assert_eq!(rule["resourceNames"][0], "costmap-operator-map-key");
            assert_eq!(rule["resourceNames"].as_sequence().unwrap().len(), 1);
        }
    }
    let without_map_key: Vec<Value> = docs
        .iter()
        .filter(|doc| doc["metadata"]["name"] != "costmap-operator-map-key")
        .cloned()
        .collect();
    let service_account = of_kind(&docs, "ServiceAccount")[0];
    assert_eq!(service_account["automountServiceAccountToken"], false);
    assert_eq!(of_kind(&docs, "PodDisruptionBudget").len(), 1);

    // Workload rights only when restartWorkloads is on; Secrets only ever `get` (but the
    // map key's).
    let default_grants = grants(&without_map_key);
    assert!(!default_grants.iter().any(|(group, _, _)| group == "apps"));
    let secret_verbs: Vec<&str> = default_grants
        .iter()
        .filter(|(_, resource, _)| resource == "secrets")
        .map(|(_, _, verb)| verb.as_str())
        .collect();
    assert_eq!(secret_verbs, ["get"]);
    assert!(
        !default_grants
            .iter()
            .any(|(_, _, verb)| verb == "delete" || verb == "*"),
        "nothing is ever deleted"
    );
    // ClusterModelCostMapSyncs: the kind and its status, and Namespaces to select from,
    // read-only; only in the ClusterRole.
    for (resource, verb) in [
        ("clustermodelcostmapsyncs", "watch"),
        ("clustermodelcostmapsyncs/status", "patch"),
        ("namespaces", "list"),
        ("namespaces", "watch"),
    ] {
        let group = if resource == "namespaces" {
            ""
        } else {
            "costmap.dev"
        };
        assert!(
            default_grants.contains(&(group.into(), resource.into(), verb.into())),
            "{verb} {resource}"
        );
    }
    let namespace_verbs: Vec<&str> = default_grants
        .iter()
        .filter(|(_, resource, _)| resource == "namespaces")
        .map(|(_, _, verb)| verb.as_str())
        .collect();
    assert_eq!(namespace_verbs, ["get", "list", "watch"]);
    let with_restarts = grants(&template(&["restartWorkloads.enabled=true"]));
    assert!(with_restarts.contains(&("apps".into(), "deployments".into(), "patch".into())));

    // Token and access reviews, and the metrics reader's role: cluster-wide by nature.
    for review in ["tokenreviews", "subjectaccessreviews"] {
        let verbs: Vec<&str> = default_grants
            .iter()
            .filter(|(_, resource, _)| resource == review)
            .map(|(_, _, verb)| verb.as_str())
            .collect();
        assert_eq!(verbs, ["create"], "{review}");
    }
    let reader = of_kind(&docs, "ClusterRole")
        .into_iter()
        .find(|role| role["metadata"]["name"] == "costmap-operator-metrics-reader")
        .expect("metrics-reader");
    assert_eq!(reader["rules"][0]["nonResourceURLs"][0], "/metrics");
    let monitor = template(&["serviceMonitor.enabled=true"]);
    let endpoint = &of_kind(&monitor, "ServiceMonitor")[0]["spec"]["endpoints"][0];
    assert!(
        endpoint["bearerTokenFile"].is_string(),
        "Prometheus sends its token"
    );

    // A list of namespaces: a Role in each (plus the Lease's and the map key's), and no
    // ClusterRole but the reviews' and the metrics reader's.
    let scoped = template(&["watchNamespaces={llm,team-b}"]);
    let mut cluster_roles: Vec<&str> = of_kind(&scoped, "ClusterRole")
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap())
        .collect();
    cluster_roles.sort();
    assert_eq!(
        cluster_roles,
        ["costmap-operator-auth", "costmap-operator-metrics-reader"]
    );
    assert!(
        !grants(&scoped).iter().any(|(_, resource, _)| resource
            .starts_with("clustermodelcostmapsyncs")
            || resource == "namespaces"),
        "a namespaced install has no cluster rights"
    );
    let mut role_namespaces: Vec<&str> = of_kind(&scoped, "Role")
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    role_namespaces.sort();
    assert_eq!(
        role_namespaces,
        ["costmap-system", "costmap-system", "llm", "team-b"]
    );
}

/// `kubectl auth can-i VERB RESOURCE [-n NS | -A] --as <the chart's ServiceAccount>`.
fn can_i(args: &[&str]) -> bool {
    common::can_i(SERVICE_ACCOUNT, args)
}

#[tokio::test]
async fn helm_install_grants_exactly_what_every_feature_needs() {
    let client = client().await;
    let chart = chart();
    helm(&[
        "install",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--set",
        "restartWorkloads.enabled=true",
    ])
    .unwrap_or_else(|err| panic!("helm install: {err}"));
    let status = helm(&["status", RELEASE, "-n", RELEASE_NAMESPACE]).unwrap();
    assert!(status.contains("STATUS: deployed"), "{status}");
    assert!(
        status.contains("LITELLM_MODEL_COST_MAP_URL") || status.contains("/maps/"),
        "NOTES: {status}"
    );
    let deployment = Api::<Deployment>::namespaced(client.clone(), RELEASE_NAMESPACE)
        .get(RELEASE)
        .await
        .unwrap();
    assert_eq!(deployment.spec.unwrap().replicas, Some(2));

    // The operator, as the chart's ServiceAccount.
    let token = control_plane()
        .kubectl(&[
            "create",
            "token",
            RELEASE,
            "-n",
            RELEASE_NAMESPACE,
            "--duration=1h",
        ])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("operator.kubeconfig");
    control_plane()
        .write_token_kubeconfig(&kubeconfig, token.trim())
        .unwrap();
    // As the chart runs it: maps and metrics need a credential, reviewed with the chart's
    // RBAC; the map key as the chart names it, created, read and watched with that RBAC.
    let port = testenv::free_port().unwrap();
    let base_url = format!("http://127.0.0.1:{port}");
    let operator = OperatorProcess::start_on(
        &kubeconfig,
        RELEASE_NAMESPACE,
        "costmap-operator-0",
        &[
            "--map-key-secret",
            MAP_KEY_SECRET,
            "--map-base-url",
            &base_url,
            "--map-access",
            "token",
            "--metrics-access",
            "token",
        ],
        "debug",
        port,
    );

    // Every feature, in a namespace of its own: a source with a header from a Secret, proxies
    // behind a Service (their admin key from a Secret), a workload to restart.
    let ns = namespace(&client, "rbac").await;
    let source = Source::start(Answer::Map(small_map(60, &[]))).await;
    create::<Secret>(
        &client,
        &ns,
        json!({"metadata": {"name": "mirror-auth"}, "stringData": {"X-Mirror-Token": "mirror-secret-value"}}),
    )
    .await;
    let master_key = "sk-rbac-test-master";
    create::<Secret>(
        &client,
        &ns,
        json!({"metadata": {"name": "litellm-master-key"}, "stringData": {"masterKey": master_key}}),
    )
    .await;
    let host = TestHost::create().expect("a test host (needs root and iproute2)");
    // The proxy reads the map-url the target will hold: signed with the key the operator
    // created.
    let keys = map_keys(&client, &base_url).await;
    let map_url = keys.map_url(&ns, "litellm", DEFAULT_KEY).unwrap();
    let pod = StandIn::start(host.bind(4000).unwrap(), &map_url, master_key, true).await;
    create::<Service>(
        &client,
        &ns,
        json!({"metadata": {"name": "litellm"}, "spec": {"ports": [{"port": 4000}]}}),
    )
    .await;
    create::<EndpointSlice>(
        &client,
        &ns,
        json!({
            "metadata": {"name": "litellm-1", "labels": {"kubernetes.io/service-name": "litellm"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [host.addr().to_string()], "conditions": {"ready": true},
                           "targetRef": {"kind": "Pod", "name": "litellm-0", "namespace": ns}}],
        }),
    )
    .await;
    create::<Deployment>(
        &client,
        &ns,
        json!({"metadata": {"name": "litellm"}, "spec": {
            "selector": {"matchLabels": {"app": "litellm"}},
            "template": {"metadata": {"labels": {"app": "litellm"}},
                         "spec": {"containers": [{"name": "litellm", "image": "litellm"}]}}}}),
    )
    .await;
    create_sync(
        &client,
        &ns,
        "litellm",
        json!({
            "source": {"url": source.url, "headersSecretRef": {"name": "mirror-auth"}},
            "consumers": {
                "litellmProxies": [{"service": {"name": "litellm", "port": 4000},
                                    "adminKeySecretRef": {"name": "litellm-master-key", "key": "masterKey"}}],
                "restartWorkloads": [{"kind": "Deployment", "name": "litellm"}],
            },
        }),
    )
    .await;

    let sync = wait_ready(&client, &ns, "litellm", "True", Reason::Synced).await;
    let digest = sync
        .status
        .as_ref()
        .unwrap()
        .artifact
        .as_ref()
        .unwrap()
        .digest
        .clone();
    let target = config_maps(&client, &ns).get("litellm").await.unwrap();
    assert_eq!(target.data.unwrap()[MAP_URL_KEY], map_url);
    assert!(
        source.served().iter().any(|s| s
            .headers
            .get("x-mirror-token")
            .is_some_and(|v| v == "mirror-secret-value")),
        "the header from the Secret reached the source"
    );
    eventually("the proxy behind the Service is Current", || async {
        let sync = syncs(&client, &ns).get("litellm").await.ok()?;
        let row = sync.status?.consumers.first()?.clone();
        (row.state == ConsumerState::Current).then_some(())
    })
    .await;
    assert_eq!(pod.reloads(), 1);
    eventually("the Deployment carries the digest", || async {
        let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get("litellm")
            .await
            .ok()?;
        let annotations = deployment.spec?.template.metadata?.annotations?;
        (annotations.get("costmap.dev/digest") == Some(&digest)).then_some(())
    })
    .await;
    wait_event(&client, &ns, EventReason::MapSynced.as_str(), "first sync").await;
    let lease = Api::<Lease>::namespaced(client.clone(), RELEASE_NAMESPACE)
        .get("costmap-operator")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("costmap-operator-0")
    );
    // A deleted ConfigMap is put back; a new map is written and announced.
    config_maps(&client, &ns)
        .delete("litellm", &DeleteParams::default())
        .await
        .unwrap();
    wait_event(&client, &ns, EventReason::Recreated.as_str(), "was deleted").await;
    source.set(Answer::Map(small_map(60, &["day0-model"])));
    request_sync(&client, &ns, "litellm", "rbac").await;
    wait_handled(&client, &ns, "litellm", "rbac").await;
    wait_event(&client, &ns, EventReason::MapUpdated.as_str(), "day0-model").await;
    // A ClusterModelCostMapSync, as the chart's ServiceAccount runs it: its copy in the
    // labelled namespace, its status, its Event (in default), served by the endpoint.
    let label = "costmap-rbac-test";
    control_plane()
        .kubectl(&["label", "namespace", &ns, &format!("{label}=yes")])
        .unwrap();
    let labels = std::collections::BTreeMap::from([(label.to_owned(), "yes".to_owned())]);
    create_cluster_sync(&client, "rbac-shared", &source.url, &labels).await;
    let cluster_syncs = Api::<ClusterModelCostMapSync>::all(client.clone());
    eventually(
        "the ClusterModelCostMapSync is Ready in the labelled namespace",
        || async {
            let sync = cluster_syncs.get("rbac-shared").await.ok()?;
            let status = sync.status?;
            let ready = status.sync.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.status == "True" && status.namespaces?.ready == 1).then_some(())
        },
    )
    .await;
    let copy = config_maps(&client, &ns).get("rbac-shared").await.unwrap();
    assert_eq!(
        copy.metadata.owner_references.unwrap()[0].kind,
        "ClusterModelCostMapSync"
    );
    wait_event(
        &client,
        "default",
        EventReason::MapSynced.as_str(),
        "rbac-shared",
    )
    .await;
    let copy_url = copy.data.unwrap()[MAP_URL_KEY].clone();
    eventually("the copy is served on its map-url", || async {
        let response = reqwest::get(&copy_url).await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    let (unsigned, _) = copy_url.split_once('?').unwrap();
    assert_eq!(reqwest::get(unsigned).await.unwrap().status(), 401);
    // Prometheus, bound to the chart's metrics-reader ClusterRole.
    let metrics_url = format!("{}/metrics", operator.url);
    assert_eq!(reqwest::get(&metrics_url).await.unwrap().status(), 401);
    let prometheus = metrics_reader(&client, &ns).await;
    let metrics = reqwest::Client::new()
        .get(&metrics_url)
        .bearer_auth(&prometheus)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let log = operator.log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the chart's RBAC refused something:\n{log}"
    );

    // What it must not be able to do.
    let denied: &[&[&str]] = &[
        &["list", "secrets", "-A"],
        &["watch", "secrets", "-A"],
        &["list", "secrets", "-n", &ns],
        &["create", "pods", "-n", &ns],
        &["delete", "namespaces"],
        &["delete", "configmaps", "-n", &ns],
        &["update", "modelcostmapsyncs.costmap.dev", "-n", &ns],
        &["delete", "modelcostmapsyncs.costmap.dev", "-n", &ns],
        &["create", "clusterrolebindings"],
        &["get", "nodes"],
        &["update", "clustermodelcostmapsyncs.costmap.dev"],
        &["delete", "clustermodelcostmapsyncs.costmap.dev"],
        &["patch", "namespaces"],
        &["delete", "configmaps", "-A"],
        &["delete", "deployments", "-n", &ns],
        &["patch", "leases.coordination.k8s.io", "-n", &ns],
    ];
    for args in denied {
        assert!(!can_i(args), "the chart's ServiceAccount can {args:?}");
    }
    // ... and the rights it does need, as a check that can-i asks the right question.
    let allowed: &[&[&str]] = &[
        &["get", "secrets", "-n", &ns],
        &["patch", "configmaps", "-n", &ns],
        &["create", "tokenreviews.authentication.k8s.io"],
        &["create", "subjectaccessreviews.authorization.k8s.io"],
        &[
            "watch",
            "secrets/costmap-operator-map-key",
            "-n",
            RELEASE_NAMESPACE,
        ],
        &["list", "namespaces"],
        &["watch", "clustermodelcostmapsyncs.costmap.dev"],
        &[
            "patch",
            "clustermodelcostmapsyncs.costmap.dev",
            "--subresource=status",
        ],
        &["patch", "deployments", "-n", &ns],
        &[
            "patch",
            "modelcostmapsyncs.costmap.dev",
            "--subresource=status",
            "-n",
            &ns,
        ],
    ];
    for args in allowed {
        assert!(can_i(args), "the chart's ServiceAccount cannot {args:?}");
    }
    helm(&["uninstall", RELEASE, "-n", RELEASE_NAMESPACE]).unwrap();
}

/// The chart's map key Secret's keys, as the operator created them.
async fn map_keys(client: &kube::Client, base_url: &str) -> MapKeys {
    let secrets = Api::<Secret>::namespaced(client.clone(), RELEASE_NAMESPACE);
    let key = eventually("the operator creates the map key", || async {
        let secret = secrets.get_opt(MAP_KEY_SECRET).await.ok()??;
        Some(secret.data?.get(KEY_FIELD)?.0.clone())
    })
    .await;
    MapKeys::fixed(Some(base_url), &key, None)
}

/// A token of ServiceAccount `prometheus` in `ns`, bound to the chart's metrics-reader
/// ClusterRole.
async fn metrics_reader(client: &kube::Client, ns: &str) -> String {
    create::<ServiceAccount>(client, ns, json!({"metadata": {"name": "prometheus"}})).await;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{ns}-metrics-reader")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": format!("{RELEASE}-metrics-reader")},
        "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": ns}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&kube::api::PostParams::default(), &binding)
        .await
        .unwrap();
    common::tenants::account_token(client, ns, "prometheus").await
}

#[test]
fn the_readme_documents_every_value() {
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let readme = std::fs::read_to_string(testenv::workspace_root().join("README.md")).unwrap();
    // The chart's own settings are documented key by key; free-form Kubernetes objects
    // (resources, securityContext...) as a whole.
    let documented_by_field = [
        "image",
        "restartWorkloads",
        "leaderElection",
        "service",
        "serviceMonitor",
        "prometheusRule",
        "podDisruptionBudget",
        "networkPolicy",
        "tests",
    ];
    let mut keys = Vec::new();
    for (key, value) in values.as_mapping().unwrap() {
        let key = key.as_str().unwrap();
        match value.as_mapping() {
            Some(fields) if documented_by_field.contains(&key) => {
                keys.extend(
                    fields
                        .keys()
                        .map(|f| format!("{key}.{}", f.as_str().unwrap())),
                );
            }
            _ => keys.push(key.to_owned()),
        }
    }
    assert!(keys.len() > 20, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|key| !readme.contains(&format!("`{key}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "values missing from README's table: {missing:?}"
    );
}

#[test]
fn the_network_policy_admits_only_the_selected_namespaces_to_the_http_port() {
    assert!(of_kind(&template(&[]), "NetworkPolicy").is_empty());
    let docs = template(&[
        "networkPolicy.enabled=true",
        "networkPolicy.mapClients.namespaceSelector.matchLabels.team=llm",
        "networkPolicy.extraFrom[0].ipBlock.cidr=10.0.0.0/24",
    ]);
    let policies = of_kind(&docs, "NetworkPolicy");
    assert_eq!(policies.len(), 1);
    let spec = serde_json::to_value(&policies[0]["spec"]).unwrap();
    let deployment = of_kind(&docs, "Deployment")[0];
    assert_eq!(
        spec["podSelector"]["matchLabels"],
        serde_json::to_value(&deployment["spec"]["selector"]["matchLabels"]).unwrap()
    );
    assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress"]));
    let rules = spec["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0]["ports"],
        serde_json::json!([{"port": "http", "protocol": "TCP"}])
    );
    assert_eq!(
        rules[0]["from"],
        serde_json::json!([
            {"namespaceSelector": {"matchLabels": {"team": "llm"}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
            {"ipBlock": {"cidr": "10.0.0.0/24"}},
        ])
    );
}
