//! Reaching the proxies, on a real kube-apiserver: the map endpoint every replica serves,
//! LiteLLM proxies reloaded and verified by URL and behind a Service (one row per pod, pods
//! on test hosts of their own), and workloads rolled by restartWorkloads.

mod common;

use costmap_operator::api::{ConditionType, ConsumersReason, EventReason, Reason};
use std::collections::BTreeMap;
use std::net::TcpListener;

use axum::http::{StatusCode, header};
use common::proxy::StandIn;
use common::*;
use costmap_operator::api::{ConsumerState, ConsumerStatus, DEFAULT_KEY, ModelCostMapSync};
use costmap_operator::http::map_cache::MapCache;
use costmap_operator::http::server::{self, ServerState};
use costmap_operator::metrics::Metrics;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde_json::json;
use testenv::TestHost;

/// The URL path of a ModelCostMapSync's map on the operator's endpoint.
fn map_path(ns: &str, name: &str) -> String {
    format!("/maps/{ns}/{name}/{DEFAULT_KEY}")
}

/// A client that shows the wire: no automatic decompression.
fn raw_http() -> reqwest::Client {
    reqwest::Client::builder().no_gzip().build().unwrap()
}

/// A namespace with the proxies' master key Secret, a source serving a small map, and an
/// operator; proxies fetch from `map_url`, the operator's endpoint for `litellm`.
struct Proxied {
    client: Client,
    ns: String,
    key: String,
    source: Source,
    operator: Operator,
    map_url: String,
}

impl Proxied {
    async fn new(prefix: &str) -> Proxied {
        let client = client().await;
        let ns = namespace(&client, prefix).await;
        let key = master_key_secret(&client, &ns).await;
        let source = Source::start(Answer::Map(small_map(60, &[]))).await;
        let operator = Operator::start(&client, &ns);
        let map_url = format!("{}{}", operator.base_url, map_path(&ns, "litellm"));
        Proxied {
            client,
            ns,
            key,
            source,
            operator,
            map_url,
        }
    }
}

/// The Secret holding a proxy's master key, and the key.
async fn master_key_secret(client: &Client, ns: &str) -> String {
    let key = format!("sk-costmap-test-{ns}");
    create::<Secret>(
        client,
        ns,
        json!({"metadata": {"name": "litellm-master-key"}, "stringData": {"masterKey": key}}),
    )
    .await;
    key
}

/// `n` hosts of their own (network namespaces), standing in for pods: the API server refuses
/// loopback endpoints.
fn test_hosts(n: usize) -> Vec<TestHost> {
    (0..n)
        .map(|_| TestHost::create().expect("a test host (needs root and iproute2)"))
        .collect()
}

/// One endpoint of an EndpointSlice: `host`'s address, the pod `pod`.
fn pod_endpoint(host: &TestHost, pod: &str, ready: bool, ns: &str) -> serde_json::Value {
    json!({"addresses": [host.addr().to_string()], "conditions": {"ready": ready},
           "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}})
}

/// The Service `litellm` (port 4000) and its EndpointSlice `litellm-abc12` with `endpoints`,
/// as the EndpointSlice controller would write it.
async fn service_with_endpoints(client: &Client, ns: &str, endpoints: Vec<serde_json::Value>) {
    create::<Service>(
        client,
        ns,
        json!({"metadata": {"name": "litellm"},
               "spec": {"selector": {"app": "litellm"}, "ports": [{"port": 4000}]}}),
    )
    .await;
    create::<EndpointSlice>(
        client,
        ns,
        json!({
            "metadata": {"name": "litellm-abc12", "labels": {"kubernetes.io/service-name": "litellm"}},
            "addressType": "IPv4",
            "ports": [{"port": 4000}],
            "endpoints": endpoints,
        }),
    )
    .await;
}

fn admin_key_ref() -> serde_json::Value {
    json!({"name": "litellm-master-key", "key": "masterKey"})
}

/// Waits until `status.consumers` satisfies `accept`, and returns the object.
async fn wait_consumers(
    client: &Client,
    ns: &str,
    what: &str,
    accept: impl Fn(&[ConsumerStatus], &str) -> bool,
) -> ModelCostMapSync {
    eventually(what, || async {
        let sync = syncs(client, ns).get("litellm").await.ok()?;
        let status = sync.status.as_ref()?;
        let blob = &status.artifact.as_ref()?.git_blob_id;
        accept(&status.consumers, blob).then_some(sync)
    })
    .await
}

fn row<'a>(rows: &'a [ConsumerStatus], url: &str) -> Option<&'a ConsumerStatus> {
    rows.iter().find(|r| r.url == url)
}

fn is_current(rows: &[ConsumerStatus], url: &str, blob: &str) -> bool {
    row(rows, url).is_some_and(|r| {
        r.state == ConsumerState::Current && r.source_revision.as_deref() == Some(blob)
    })
}

fn condition(
    sync: &ModelCostMapSync,
    type_: ConditionType,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    sync.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", sync.status))
}

#[tokio::test]
async fn the_map_endpoint_serves_the_exact_bytes_with_stored_gzip_etag_and_304() {
    let real = real_map("1.110.2");
    let s = Scenario::new("serve", Answer::Map(real.clone()), json!({})).await;
    let sync = s.wait_ready("True", Reason::Synced).await;
    let (client, ns, source) = (&s.client, &s.ns, &s.source);
    let digest = sync.status.unwrap().artifact.unwrap().digest;
    let stored_gz = config_maps(client, ns)
        .get("litellm")
        .await
        .unwrap()
        .binary_data
        .unwrap()[&format!("{DEFAULT_KEY}.gz")]
        .0
        .clone();

    let http = raw_http();
    let url = format!("{}{}", s.operator.base_url, map_path(ns, "litellm"));
    // The watch-backed cache may take a moment to see the ConfigMap.
    let gz = eventually("the endpoint serves the map", || async {
        let response = http
            .get(&url)
            .header(header::ACCEPT_ENCODING, "gzip")
            .send()
            .await
            .ok()?;
        (response.status() == StatusCode::OK).then_some(response)
    })
    .await;
    let etag = format!("\"{digest}\"");
    assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(gz.headers()[header::ETAG], etag.as_str());
    assert_eq!(gz.headers()[header::CACHE_CONTROL], "no-cache");
    assert_eq!(gz.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        gz.bytes().await.unwrap(),
        stored_gz,
        "the stored gzip, not a recompression"
    );

    let plain = http.get(&url).send().await.unwrap();
    assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
    assert_eq!(plain.bytes().await.unwrap(), real, "the exact source bytes");

    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        real.len().to_string()
    );
    assert!(head.bytes().await.unwrap().is_empty());

    let cached = http
        .get(&url)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert!(cached.bytes().await.unwrap().is_empty());

    for unknown in [
        map_path(ns, "other"),
        map_path("elsewhere", "litellm"),
        format!("/maps/{ns}/litellm/other.json"),
    ] {
        let response = http
            .get(format!("{}{unknown}", s.operator.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{unknown}");
    }

    // A replica that does not reconcile (not the leader) serves the same map from its own
    // watch of the ConfigMaps.
    let follower_maps = MapCache::default();
    tokio::spawn(
        follower_maps
            .clone()
            .run(client.clone(), vec![ns.clone()], 64 << 20),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let follower_url = format!(
        "http://{}{}",
        listener.local_addr().unwrap(),
        map_path(ns, "litellm")
    );
    let state = ServerState::new(std::sync::Arc::new(Metrics::default()), follower_maps);
    state.set_ready(true);
    tokio::spawn(server::serve(listener, state, std::future::pending()));
    let from_follower = eventually("the follower serves the map", || async {
        let response = http.get(&follower_url).send().await.ok()?;
        (response.status() == StatusCode::OK).then_some(response)
    })
    .await;
    assert_eq!(from_follower.headers()[header::ETAG], etag.as_str());
    assert_eq!(from_follower.bytes().await.unwrap(), real);

    // A new map is served as soon as it is synced, by both.
    let newer = with_model(
        &real,
        "day0-model",
        json!({"input_cost_per_token": 1e-6, "mode": "chat"}),
    );
    source.set(Answer::Map(newer.clone()));
    request_sync(client, ns, "litellm", "new").await;
    for url in [&url, &follower_url] {
        eventually("the new map is served", || async {
            let body = http
                .get(url.as_str())
                .send()
                .await
                .ok()?
                .bytes()
                .await
                .ok()?;
            (body == newer).then_some(())
        })
        .await;
    }
    s.operator.stop().await;
}

#[tokio::test]
async fn proxies_by_url_are_reloaded_with_the_admin_key_and_verified() {
    let Proxied {
        client,
        ns,
        key,
        source,
        operator,
        map_url,
    } = Proxied::new("proxies").await;
    let loopback = || TcpListener::bind("127.0.0.1:0").unwrap();
    // Started before the first sync: they run on their bundled map.
    let with_db = StandIn::start(loopback(), &map_url, &key, true).await;
    let no_db = StandIn::start(loopback(), &map_url, &key, false).await;
    create_sync(
        &client,
        &ns,
        "litellm",
        json!({
            "source": {"url": source.url},
            "consumers": {"litellmProxies": [
                {"url": with_db.url, "adminKeySecretRef": admin_key_ref()},
                {"url": no_db.url, "adminKeySecretRef": admin_key_ref()},
            ]},
        }),
    )
    .await;

    let sync = wait_consumers(
        &client,
        &ns,
        "one proxy Current, one Stale",
        |rows, blob| {
            is_current(rows, &with_db.url, blob)
                && row(rows, &no_db.url).is_some_and(|r| r.state == ConsumerState::Stale)
        },
    )
    .await;
    let status = sync.status.as_ref().unwrap();
    let blob = &status.artifact.as_ref().unwrap().git_blob_id;
    assert_eq!(with_db.revision().as_ref(), Some(blob));
    let stale = row(&status.consumers, &no_db.url).unwrap();
    assert_eq!(stale.source_revision.as_deref(), Some("bundled"));
    let message = stale.message.as_deref().unwrap();
    assert!(
        message.contains("Database connection not available")
            && message.contains("restartWorkloads"),
        "{message}"
    );
    let summary = condition(&sync, ConditionType::ConsumersCurrent);
    assert_eq!(
        (summary.status.as_str(), summary.reason.as_str()),
        ("False", ConsumersReason::Stale.as_str())
    );
    assert!(
        summary.message.contains("1 of 2 proxies"),
        "{}",
        summary.message
    );

    // Exactly LiteLLM's admin API: the method, the path, the master key as a Bearer token.
    let reloads: Vec<_> = with_db
        .requests()
        .into_iter()
        .filter(|r| r.path == "/reload/model_cost_map")
        .collect();
    assert_eq!(reloads.len(), 1, "{reloads:?}");
    assert_eq!(reloads[0].method, "POST");
    let bearer = format!("Bearer {key}");
    assert_eq!(reloads[0].authorization.as_deref(), Some(bearer.as_str()));
    assert!(
        with_db
            .requests()
            .iter()
            .chain(&no_db.requests())
            .all(|r| r.authorization.as_deref() == Some(bearer.as_str())),
        "every admin call carries the key"
    );
    assert_eq!(
        no_db.reloads(),
        1,
        "the no-database answer is final: no retries"
    );

    // The proxy without a database picks the map up when restarted; a sync request
    // re-verifies without reloading the proxy that already serves it.
    no_db.restart().await;
    let with_db_reloads = with_db.reloads();
    request_sync(&client, &ns, "litellm", "after-restart").await;
    let sync = wait_consumers(&client, &ns, "both proxies Current", |rows, blob| {
        is_current(rows, &with_db.url, blob) && is_current(rows, &no_db.url, blob)
    })
    .await;
    let summary = condition(&sync, ConditionType::ConsumersCurrent);
    assert_eq!(
        (summary.status.as_str(), summary.reason.as_str()),
        ("True", ConsumersReason::AllCurrent.as_str())
    );
    assert_eq!(
        with_db.reloads(),
        with_db_reloads,
        "a Current proxy is not reloaded"
    );

    // A new map: the proxy with a database reloads it in place, the other is Stale again.
    source.set(Answer::Map(small_map(60, &["day0-model"])));
    request_sync(&client, &ns, "litellm", "new-map").await;
    let sync = wait_consumers(
        &client,
        &ns,
        "the new map reaches the proxy with a database",
        |rows, blob| {
            is_current(rows, &with_db.url, blob)
                && row(rows, &no_db.url).is_some_and(|r| r.state == ConsumerState::Stale)
        },
    )
    .await;
    assert_eq!(
        sync.status.unwrap().last_change.unwrap().added_models,
        vec!["day0-model".to_owned()]
    );
    operator.stop().await;
}

#[tokio::test]
async fn a_service_is_fanned_out_to_every_ready_pod_and_new_pods_are_verified() {
    let Proxied {
        client,
        ns,
        key,
        source,
        operator,
        map_url,
    } = Proxied::new("service").await;

    // Two pods, each a host of its own (the API server refuses loopback endpoints), both
    // listening on 4000 like LiteLLM pods behind one Service.
    let hosts = test_hosts(3);
    let mut pods = Vec::new();
    for host in &hosts[..2] {
        pods.push(StandIn::start(host.bind(4000).unwrap(), &map_url, &key, true).await);
    }
    let endpoint = |host: &TestHost, pod: &str, ready: bool| pod_endpoint(host, pod, ready, &ns);
    // The third address belongs to a pod that is not ready: it must be left alone.
    service_with_endpoints(
        &client,
        &ns,
        vec![
            endpoint(&hosts[0], "litellm-a", true),
            endpoint(&hosts[1], "litellm-b", true),
            endpoint(&hosts[2], "litellm-starting", false),
        ],
    )
    .await;
    create_sync(
        &client,
        &ns,
        "litellm",
        json!({
            "source": {"url": source.url},
            "consumers": {"litellmProxies": [
                {"service": {"name": "litellm", "port": 4000}, "adminKeySecretRef": admin_key_ref()},
            ]},
        }),
    )
    .await;

    let sync = wait_consumers(&client, &ns, "both pods Current", |rows, blob| {
        rows.len() == 2 && pods.iter().all(|pod| is_current(rows, &pod.url, blob))
    })
    .await;
    let rows = sync.status.unwrap().consumers;
    let names: BTreeMap<&str, Option<&str>> = rows
        .iter()
        .map(|r| (r.url.as_str(), r.pod.as_deref()))
        .collect();
    assert_eq!(names[pods[0].url.as_str()], Some("litellm-a"));
    assert_eq!(names[pods[1].url.as_str()], Some("litellm-b"));
    for pod in &pods {
        assert_eq!(pod.reloads(), 1, "each pod reloaded once, directly");
    }

    // The third pod becomes ready, running the current map: it is verified as it appears,
    // without a sync and without a reload.
    let third = StandIn::start(hosts[2].bind(4000).unwrap(), &map_url, &key, true).await;
    let patch = json!({"endpoints": [
        endpoint(&hosts[0], "litellm-a", true),
        endpoint(&hosts[1], "litellm-b", true),
        endpoint(&hosts[2], "litellm-c", true),
    ]});
    Api::<EndpointSlice>::namespaced(client.clone(), &ns)
        .patch(
            "litellm-abc12",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let sync = wait_consumers(&client, &ns, "the new pod verified", |rows, blob| {
        rows.len() == 3 && is_current(rows, &third.url, blob)
    })
    .await;
    assert_eq!(third.reloads(), 0);
    let row = row(&sync.status.as_ref().unwrap().consumers, &third.url).unwrap();
    assert_eq!(row.pod.as_deref(), Some("litellm-c"));
    assert_eq!(
        condition(&sync, ConditionType::ConsumersCurrent).message,
        format!(
            "3 of 3 proxies serve map {}",
            sync.status
                .as_ref()
                .unwrap()
                .artifact
                .as_ref()
                .unwrap()
                .git_blob_id
        )
    );
    operator.stop().await;
}

#[tokio::test]
async fn a_canary_that_stays_stale_stops_the_rollout_and_a_good_one_lets_the_rest_follow() {
    let Proxied {
        client,
        ns,
        key,
        source,
        operator,
        map_url,
    } = Proxied::new("canary").await;
    let hosts = test_hosts(3);
    let mut pods = Vec::new();
    for host in &hosts {
        pods.push(StandIn::start(host.bind(4000).unwrap(), &map_url, &key, true).await);
    }
    // The canary is the first in URL order.
    pods.sort_by(|a, b| a.url.cmp(&b.url));
    let endpoints = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| pod_endpoint(host, &format!("litellm-{i}"), true, &ns))
        .collect();
    service_with_endpoints(&client, &ns, endpoints).await;
    create_sync(
        &client,
        &ns,
        "litellm",
        json!({
            "source": {"url": source.url},
            "consumers": {
                "litellmProxies": [
                    {"service": {"name": "litellm", "port": 4000}, "adminKeySecretRef": admin_key_ref()},
                ],
                "rollout": {"canary": 1},
            },
        }),
    )
    .await;
    wait_consumers(&client, &ns, "every pod Current", |rows, blob| {
        rows.len() == 3 && pods.iter().all(|pod| is_current(rows, &pod.url, blob))
    })
    .await;
    let (canary, others) = pods.split_first().unwrap();
    let first_map = canary.revision();

    // A canary that stays on its map: the others are not reloaded.
    canary.ignore_reloads(true);
    let reloads_before: Vec<usize> = others.iter().map(StandIn::reloads).collect();
    source.set(Answer::Map(small_map(61, &[])));
    let sync = sync_now_and_wait(&client, &ns, "canary-stale").await;
    let consumers = condition(&sync, ConditionType::ConsumersCurrent);
    assert_eq!(
        (consumers.status.as_str(), consumers.reason.as_str()),
        ("False", "CanaryFailed"),
        "{consumers:?}"
    );
    assert!(
        consumers.message.contains(&canary.url) && consumers.message.contains("is Stale"),
        "{}",
        consumers.message
    );
    assert_eq!(condition(&sync, ConditionType::Ready).status, "True");
    assert_eq!(canary.reloads(), 2, "the canary was told");
    let reloads_after: Vec<usize> = others.iter().map(StandIn::reloads).collect();
    assert_eq!(
        reloads_after, reloads_before,
        "the others were not reloaded"
    );
    for pod in others {
        assert_eq!(
            pod.revision(),
            first_map,
            "the others keep the map they have"
        );
    }

    // A good canary lets the rest follow (at the next check, or a sync request).
    canary.ignore_reloads(false);
    let sync = sync_now_and_wait(&client, &ns, "canary-good").await;
    let blob = &sync
        .status
        .as_ref()
        .unwrap()
        .artifact
        .as_ref()
        .unwrap()
        .git_blob_id;
    for pod in &pods {
        assert!(
            is_current(&sync.status.as_ref().unwrap().consumers, &pod.url, blob),
            "{:?}",
            sync.status.as_ref().unwrap().consumers
        );
    }
    assert_eq!(
        condition(&sync, ConditionType::ConsumersCurrent).reason,
        "AllCurrent"
    );
    for pod in others {
        assert_eq!(
            pod.reloads(),
            reloads_before[0] + 1,
            "each other pod reloaded once"
        );
    }
    operator.stop().await;
}

#[tokio::test]
async fn restart_workloads_rolls_each_kind_once_per_new_map() {
    let client = client().await;
    let ns = namespace(&client, "restart").await;
    let template = json!({
        "metadata": {"labels": {"app": "litellm"}},
        "spec": {"containers": [{"name": "litellm", "image": "ghcr.io/berriai/litellm:main-stable"}]},
    });
    let selector = json!({"matchLabels": {"app": "litellm"}});
    create::<Deployment>(
        &client,
        &ns,
        json!({"metadata": {"name": "litellm"}, "spec": {"selector": selector, "template": template}}),
    )
    .await;
    create::<StatefulSet>(
        &client,
        &ns,
        json!({"metadata": {"name": "litellm-sts"},
               "spec": {"serviceName": "litellm", "selector": selector, "template": template}}),
    )
    .await;
    create::<DaemonSet>(
        &client,
        &ns,
        json!({"metadata": {"name": "litellm-ds"}, "spec": {"selector": selector, "template": template}}),
    )
    .await;
    let source = Source::start(Answer::Map(small_map(60, &[]))).await;
    let operator = Operator::start(&client, &ns);
    create_sync(
        &client,
        &ns,
        "litellm",
        json!({
            "source": {"url": source.url},
            "consumers": {"restartWorkloads": [
                {"kind": "Deployment", "name": "litellm"},
                {"kind": "StatefulSet", "name": "litellm-sts"},
                {"kind": "DaemonSet", "name": "litellm-ds"},
                {"kind": "Deployment", "name": "missing"},
            ]},
        }),
    )
    .await;
    let sync = wait_ready(&client, &ns, "litellm", "True", Reason::Synced).await;
    let digest = sync.status.unwrap().artifact.unwrap().digest;

    // (digest annotation, generation) of each workload's pod template.
    let templates = || async {
        fn of<K: Resource>(
            object: &K,
            template: impl Fn(&K) -> Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
        ) -> (Option<String>, Option<i64>) {
            let annotation = template(object)
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get("costmap.dev/digest").cloned());
            (annotation, object.meta().generation)
        }
        let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get("litellm")
            .await
            .unwrap();
        let stateful = Api::<StatefulSet>::namespaced(client.clone(), &ns)
            .get("litellm-sts")
            .await
            .unwrap();
        let daemon = Api::<DaemonSet>::namespaced(client.clone(), &ns)
            .get("litellm-ds")
            .await
            .unwrap();
        vec![
            of(&deployment, |d| d.spec.as_ref().map(|s| &s.template)),
            of(&stateful, |s| s.spec.as_ref().map(|s| &s.template)),
            of(&daemon, |d| d.spec.as_ref().map(|s| &s.template)),
        ]
    };
    let first = eventually("every workload carries the digest", || async {
        let now = templates().await;
        now.iter()
            .all(|(annotation, _)| annotation.as_deref() == Some(digest.as_str()))
            .then_some(now)
    })
    .await;
    wait_event(
        &client,
        &ns,
        EventReason::WorkloadRestarted.as_str(),
        "restarted Deployment litellm, StatefulSet litellm-sts, DaemonSet litellm-ds for map sha256:",
    )
    .await;
    wait_event(
        &client,
        &ns,
        EventReason::RestartFailed.as_str(),
        "Deployment missing not found",
    )
    .await;

    // The same map again: nothing is patched, so nothing restarts.
    sync_now_and_wait(&client, &ns, "same").await;
    assert_eq!(templates().await, first, "no patch without a new map");

    // A new map rolls each workload once more.
    source.set(Answer::Map(small_map(61, &[])));
    let sync = sync_now_and_wait(&client, &ns, "new").await;
    let new_digest = sync.status.unwrap().artifact.unwrap().digest;
    assert_ne!(new_digest, digest);
    let second = eventually("every workload carries the new digest", || async {
        let now = templates().await;
        now.iter()
            .all(|(annotation, _)| annotation.as_deref() == Some(new_digest.as_str()))
            .then_some(now)
    })
    .await;
    for (before, after) in first.iter().zip(&second) {
        assert_eq!(after.1, before.1.map(|g| g + 1), "one rollout per new map");
    }
    operator.stop().await;
}

async fn sync_now_and_wait(client: &Client, ns: &str, token: &str) -> ModelCostMapSync {
    request_sync(client, ns, "litellm", token).await;
    wait_handled(client, ns, "litellm", token).await
}

/// A loopback server answering `answers` in turn (the last one forever), counting requests.
async fn scripted(
    answers: Vec<(StatusCode, &'static str)>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let app = axum::Router::new().fallback(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let (status, body) = answers[n.min(answers.len() - 1)];
        async move { (status, body) }
    });
    let url = format!("http://{}/reload/model_cost_map", serve_loopback(app));
    (url, count)
}

#[tokio::test]
async fn reloads_retry_what_can_pass_and_stop_at_final_answers() {
    use costmap_operator::litellm::{ProxyClient, ProxyClientConfig, ReloadOutcome};
    use std::sync::atomic::Ordering;
    let client = ProxyClient::new(ProxyClientConfig {
        attempts: 3,
        min_backoff: std::time::Duration::from_millis(20),
        addresses: common::loopback_consumers(),
        ..ProxyClientConfig::default()
    })
    .unwrap();
    let cases = [
        (
            vec![
                (StatusCode::SERVICE_UNAVAILABLE, ""),
                (StatusCode::BAD_GATEWAY, ""),
                (StatusCode::OK, "{}"),
            ],
            ReloadOutcome::Reloaded,
            3,
        ),
        (
            vec![(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"detail":"Database connection not available"}"#,
            )],
            ReloadOutcome::NoDatabase,
            1,
        ),
        (
            vec![(StatusCode::UNAUTHORIZED, "")],
            ReloadOutcome::Unauthorized(401),
            1,
        ),
        (
            vec![(StatusCode::SERVICE_UNAVAILABLE, "")],
            ReloadOutcome::Failed("the proxy answered HTTP 503".into()),
            3,
        ),
    ];
    for (answers, expected, requests) in cases {
        let (url, count) = scripted(answers).await;
        assert_eq!(client.reload(&url, None).await, expected, "{url}");
        assert_eq!(count.load(Ordering::SeqCst), requests, "{expected:?}");
    }
    // Nothing listening: a connection error, retried, then reported without the URL.
    let closed = format!(
        "http://127.0.0.1:{}/reload/model_cost_map",
        testenv::free_port().unwrap()
    );
    assert_eq!(
        client.reload(&closed, None).await,
        ReloadOutcome::Failed("connection failed".into())
    );
}
