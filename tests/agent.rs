//! The `agent` subcommand (the built binary) on a ConfigMap volume written the kubelet's way:
//! it serves the old map until the `..data` swap and the new one after, reloads the proxy once
//! per new map, never serves a half-written or invalid map, and never shows the admin key.

mod common;

use costmap_operator::api::Reason;
use std::net::TcpListener;

use axum::http::{StatusCode, header};
use common::agent::Agent;
use common::kubelet::{ConfigMapVolume, gzip};
use common::proxy::StandIn;
use common::{eventually, small_map};
use costmap_operator::api::DEFAULT_KEY;
use costmap_operator::digest::{git_blob_id, sha256_digest};

const MASTER_KEY: &str = "sk-agent-test-master-key-4f1d";

/// The files the operator writes for `map` (the small maps here fit both keys).
fn files(map: &[u8]) -> Vec<(String, Vec<u8>)> {
    vec![
        (format!("{DEFAULT_KEY}.gz"), gzip(map)),
        (DEFAULT_KEY.to_owned(), map.to_vec()),
    ]
}

fn refs(files: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect()
}

#[tokio::test]
async fn the_agent_serves_the_old_map_until_the_swap_and_reloads_the_proxy_once_per_map() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = ConfigMapVolume::new(dir.path());
    let first = small_map(60, &[]);
    volume.write(&refs(&files(&first)));

    let proxy_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy_listener.local_addr().unwrap());
    let agent = Agent::start(
        dir.path(),
        MASTER_KEY,
        &format!("{proxy_url}/reload/model_cost_map"),
    );
    let served = eventually("the agent serves the first map", || agent.map()).await;
    assert_eq!(served, first);
    // The proxy starts once the agent is ready (the sidecar's startup probe) and loads the
    // map from it: no reload for the first map.
    let proxy = StandIn::start(proxy_listener, &agent.map_url(), MASTER_KEY, true).await;
    assert_eq!(proxy.revision(), Some(git_blob_id(&first)));

    // gzip and ETag as the operator's endpoint.
    let gz = reqwest::Client::builder()
        .no_gzip()
        .build()
        .unwrap()
        .get(agent.map_url())
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(
        gz.headers()[header::ETAG],
        format!("\"{}\"", sha256_digest(&first)).as_str()
    );
    assert_eq!(gz.bytes().await.unwrap(), gzip(&first));

    // The kubelet writes the next version; until it swaps `..data`, the old map is served.
    let second = small_map(61, &["day0-model"]);
    let checks = agent.status().await["checks"].as_u64().unwrap();
    let second_files = files(&second);
    let staged = volume.stage(&refs(&second_files));
    agent.wait_looked_since(checks).await;
    assert_eq!(agent.map().await.unwrap(), first, "not swapped yet");
    assert_eq!(proxy.reloads(), 0);

    volume.swap(staged);
    eventually("the new map after the swap", || async {
        (agent.map().await? == second).then_some(())
    })
    .await;
    eventually("the proxy reloaded the new map", || async {
        (proxy.revision() == Some(git_blob_id(&second))).then_some(())
    })
    .await;
    assert_eq!(proxy.reloads(), 1);
    let reload = &proxy.requests()[0];
    assert_eq!(
        (reload.method.as_str(), reload.path.as_str()),
        ("POST", "/reload/model_cost_map")
    );
    assert_eq!(
        reload.authorization.as_deref(),
        Some(format!("Bearer {MASTER_KEY}").as_str())
    );

    // An invalid map (too few models) and a broken gzip are refused: the last good map
    // stays served and the proxy is left alone.
    for broken in [
        files(&small_map(10, &[])),
        vec![(format!("{DEFAULT_KEY}.gz"), gzip(&second)[..100].to_vec())],
    ] {
        let checks = agent.status().await["checks"].as_u64().unwrap();
        volume.write(&refs(&broken));
        let status = eventually("the agent refuses the broken map", || async {
            let status = agent.wait_looked_since(checks).await;
            status["lastProblem"].is_string().then_some(status)
        })
        .await;
        assert_eq!(
            status["digest"].as_str(),
            Some(sha256_digest(&second).as_str())
        );
        assert_eq!(agent.map().await.unwrap(), second);
        assert_eq!(proxy.reloads(), 1);
    }

    // The same map again (a resync that rewrote the files): no reload.
    let checks = agent.status().await["checks"].as_u64().unwrap();
    volume.write(&refs(&second_files));
    eventually("the agent sees the same map", || async {
        let status = agent.wait_looked_since(checks).await;
        status["lastProblem"].is_null().then_some(())
    })
    .await;
    assert_eq!(agent.map().await.unwrap(), second);
    assert_eq!(proxy.reloads(), 1);

    let log = agent.log_text();
    assert!(log.contains("serving a new map"), "{log}");
    assert!(
        !log.contains(MASTER_KEY),
        "the admin key leaked into the log:\n{log}"
    );
}

#[tokio::test]
async fn the_agent_is_ready_only_with_a_valid_map_and_says_when_the_proxy_cannot_reload() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = ConfigMapVolume::new(dir.path());
    let proxy_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy_listener.local_addr().unwrap());
    let agent = Agent::start(
        dir.path(),
        MASTER_KEY,
        &format!("{proxy_url}/reload/model_cost_map"),
    );

    let not_ready = eventually("the agent answers", || agent.get("/readyz")).await;
    assert_eq!(not_ready.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(agent.map().await, None);

    // A map LiteLLM would refuse does not make it ready either.
    volume.write(&refs(&files(&small_map(10, &[]))));
    eventually("the agent refuses it", || async {
        agent.status().await["lastProblem"]
            .is_string()
            .then_some(())
    })
    .await;
    assert_eq!(
        agent.get("/readyz").await.unwrap().0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let first = small_map(60, &[]);
    volume.write(&refs(&files(&first)));
    eventually("ready with a valid map", || async {
        (agent.get("/readyz").await?.0 == StatusCode::OK).then_some(())
    })
    .await;
    let proxy = StandIn::start(proxy_listener, &agent.map_url(), MASTER_KEY, false).await;

    // A proxy without a database answers the reload with 500: the agent says what to do.
    volume.write(&refs(&files(&small_map(61, &[]))));
    let status = eventually("the reload outcome", || async {
        let status = agent.status().await;
        status["lastReload"].as_str().map(str::to_owned)
    })
    .await;
    assert!(
        status.contains("no database") && status.contains("restartWorkloads"),
        "{status}"
    );
    assert_eq!(proxy.reloads(), 1, "the no-database answer is not retried");
    assert_eq!(
        proxy.revision(),
        Some(git_blob_id(&first)),
        "stale until restarted"
    );
    assert!(!agent.log_text().contains(MASTER_KEY));
}

/// With `--verify-with`, a map in the mounted files that the ModelCostMapSync's status does
/// not name (a ConfigMap edited by hand) is never served; the operator's next map is.
#[tokio::test]
async fn a_verifying_agent_serves_only_maps_the_status_names() {
    let first = small_map(60, &[]);
    let s = common::Scenario::new(
        "agent-verify",
        common::Answer::Map(first.clone()),
        serde_json::json!({}),
    )
    .await;
    s.wait_ready("True", Reason::Synced).await;
    let dir = tempfile::tempdir().unwrap();
    let mut volume = ConfigMapVolume::new(dir.path());
    volume.write(&refs(&files(&first)));
    let sync = format!("{}/litellm", s.ns);
    // The agent runs with only the rights the example grants its ServiceAccount.
    let kubeconfig_dir = tempfile::tempdir().unwrap();
    let kubeconfig = &kubeconfig_dir.path().join("agent.kubeconfig");
    agent_kubeconfig(&s.ns, kubeconfig);
    let agent = Agent::start_verifying(dir.path(), kubeconfig, &sync);
    let served = eventually("the agent serves the named map", || agent.map()).await;
    assert_eq!(served, first);

    // The kubelet brings in a ConfigMap someone edited: valid, but not the operator's.
    let forged = small_map(60, &["forged-model"]);
    volume.write(&refs(&files(&forged)));
    let refused = eventually("the agent refuses the forged map", || async {
        let status = agent.status().await;
        let problem = status["lastProblem"].as_str()?.to_owned();
        problem
            .contains("is not one that ModelCostMapSync")
            .then_some(problem)
    })
    .await;
    assert!(refused.contains(&sha256_digest(&forged)), "{refused}");
    assert_eq!(
        agent.map().await,
        Some(first.clone()),
        "the named map stays served"
    );

    // The operator's next map, once the kubelet brings it, is served.
    let second = small_map(60, &["day0-model"]);
    s.source.set(common::Answer::Map(second.clone()));
    s.sync_now("second").await;
    volume.write(&refs(&files(&second)));
    eventually("the agent serves the operator's new map", || async {
        (agent.map().await? == second).then_some(())
    })
    .await;

    // An agent that starts on the forged files serves nothing and is not ready.
    volume.write(&refs(&files(&forged)));
    let fresh = Agent::start_verifying(dir.path(), kubeconfig, &sync);
    eventually("the fresh agent refuses the forged map", || async {
        let status = fresh.status().await;
        status["lastProblem"]
            .as_str()?
            .contains("is not one that")
            .then_some(())
    })
    .await;
    assert_eq!(fresh.map().await, None);
    let ready = fresh.get("/readyz").await.unwrap().0;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!agent.log_text().contains("panicked"));
    s.operator.stop().await;
}

/// A kubeconfig for a ServiceAccount with the rights `examples/litellm-agent-sidecar.yaml`
/// grants the agent: get, list and watch on the one ModelCostMapSync `litellm`.
fn agent_kubeconfig(ns: &str, path: &std::path::Path) {
    let plane = common::control_plane();
    let rbac = format!(
        "apiVersion: v1
kind: ServiceAccount
metadata: {{name: litellm, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: costmap-agent, namespace: {ns}}}
rules:
- apiGroups: [costmap.dev]
  resources: [modelcostmapsyncs]
  resourceNames: [litellm]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: costmap-agent, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: costmap-agent}}
subjects: [{{kind: ServiceAccount, name: litellm, namespace: {ns}}}]
"
    );
    plane
        .kubectl_with_input(&["apply", "-f", "-"], &rbac)
        .unwrap();
    let token = plane
        .kubectl(&["create", "token", "litellm", "-n", ns])
        .unwrap();
    plane.write_token_kubeconfig(path, token.trim()).unwrap();
    let user = format!("system:serviceaccount:{ns}:litellm");
    assert!(common::can_i(
        &user,
        &["watch", "modelcostmapsyncs/litellm", "-n", ns]
    ));
    assert!(!common::can_i(&user, &["get", "configmaps", "-n", ns]));
    assert!(!common::can_i(
        &user,
        &["get", "modelcostmapsyncs/other", "-n", ns]
    ));
}

#[tokio::test]
async fn the_probe_address_answers_health_and_readiness_and_never_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = ConfigMapVolume::new(dir.path());
    volume.write(&refs(&files(&small_map(60, &[]))));
    let probes = format!("127.0.0.1:{}", testenv::free_port().unwrap());
    let agent = Agent::start_with(dir.path(), &["--probe-listen", &probes], &[]);
    let probe = |path: &str| {
        let url = format!("http://{probes}{path}");
        async move {
            let response = reqwest::get(url).await.ok()?;
            Some(response.status())
        }
    };
    eventually("the probe address to say ready", || async {
        (probe("/readyz").await? == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(probe("/healthz").await, Some(StatusCode::OK));
    for path in [format!("/{DEFAULT_KEY}"), "/status".to_owned()] {
        assert_eq!(probe(&path).await, Some(StatusCode::NOT_FOUND), "{path}");
    }
    let (status, _) = agent.get(&format!("/{DEFAULT_KEY}")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
}
