//! Who reads a map from the operator's endpoint: nobody without a credential, a tenant's
//! token only its own namespace's maps, a `map-url` only its own object's map; `/metrics`
//! only for an identity allowed to read it; and ConfigMaps that only look like ours cost
//! the cache nothing.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use costmap_operator::api::{DEFAULT_KEY, Reason};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::common::tenants::{Tenant, account_token};
use crate::common::{
    Answer, Operator, Source, client, config_maps, create_sync, eventually, namespace,
    request_sync, small_map, wait_ready,
};

/// Two tenants, each with the ModelCostMapSync `litellm` synced from its own source, and
/// an operator in token mode watching both.
struct Teams {
    admin: Client,
    /// Where the operator's map key Secret lives.
    ops: String,
    a: Tenant,
    b: Tenant,
    operator: Operator,
    /// The map tenant B's object publishes.
    b_map: bytes::Bytes,
    _sources: Vec<Source>,
}

impl Teams {
    async fn start(prefix: &str) -> Teams {
        let admin = client().await;
        let a = Tenant::create(&admin, &format!("{prefix}-a")).await;
        let b = Tenant::create(&admin, &format!("{prefix}-b")).await;
        let ops = namespace(&admin, &format!("{prefix}-ops")).await;
        let operator =
            Operator::start_secured(&admin, vec![a.namespace.clone(), b.namespace.clone()], &ops)
                .await;
        let a_map = small_map(3, &["team-a-private"]);
        let b_map = small_map(3, &["team-b-negotiated"]);
        let mut sources = Vec::new();
        for (tenant, map) in [(&a, &a_map), (&b, &b_map)] {
            let source = Source::start(Answer::Map(map.clone())).await;
            create_sync(
                &admin,
                &tenant.namespace,
                "litellm",
                json!({"source": {"url": source.url}, "interval": "1h", "validation": {"minModels": 1}}),
            )
            .await;
            sources.push(source);
        }
        for tenant in [&a, &b] {
            wait_ready(&admin, &tenant.namespace, "litellm", "True", Reason::Synced).await;
        }
        Teams {
            admin,
            ops,
            a,
            b,
            operator,
            b_map,
            _sources: sources,
        }
    }

    /// `/maps/{namespace}/{name}/{key}` on the operator.
    fn map_path(&self, namespace: &str, name: &str) -> String {
        format!(
            "{}/maps/{namespace}/{name}/{DEFAULT_KEY}",
            self.operator.base_url
        )
    }

    /// The `map-url` in the target ConfigMap of `litellm` in `namespace`, once written.
    async fn map_url(&self, namespace: &str) -> String {
        let api = config_maps(&self.admin, namespace);
        eventually(&format!("map-url in {namespace}/litellm"), || {
            let api = api.clone();
            async move {
                let cm = api.get("litellm").await.ok()?;
                cm.data?.get("map-url").cloned()
            }
        })
        .await
    }

    /// Waits until the operator serves B's map (to an authorized reader).
    async fn wait_served(&self) {
        let token = self.b.token(&self.admin).await;
        let url = self.map_path(&self.b.namespace, "litellm");
        eventually("B's map served", || {
            let (url, token) = (url.clone(), token.clone());
            async move { (get(&url, Some(&token)).await.0 == 200).then_some(()) }
        })
        .await;
    }
}

/// GET `url`, with `token` as bearer when given: status and body.
async fn get(url: &str, token: Option<&str>) -> (u16, bytes::Bytes) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the operator answers");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body"))
}

fn holds(body: &[u8], needle: &str) -> bool {
    body.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_read_without_a_credential_is_refused_with_no_map_bytes() {
    let teams = Teams::start("nocred").await;
    teams.wait_served().await;
    let url = teams.map_path(&teams.b.namespace, "litellm");
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        "Bearer"
    );
    let body = response.bytes().await.unwrap();
    assert!(!holds(&body, "team-b-negotiated"), "no map bytes");
    let head = reqwest::Client::new().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 401);
    let length = head
        .headers()
        .get("content-length")
        .map(|l| l.to_str().unwrap().to_owned());
    assert_ne!(
        length,
        Some(teams.b_map.len().to_string()),
        "not even the map's size"
    );
    // A made-up capability is no credential either.
    let (status, body) = get(&format!("{url}?token=00ff"), None).await;
    assert_eq!(status, 403);
    assert!(!holds(&body, "team-b-negotiated"));
    teams.operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_reads_its_own_maps_and_no_other_tenants() {
    let teams = Teams::start("tokens").await;
    teams.wait_served().await;
    let a_token = teams.a.token(&teams.admin).await;
    let b_token = teams.b.token(&teams.admin).await;
    let b_url = teams.map_path(&teams.b.namespace, "litellm");
    let (status, body) = get(&b_url, Some(&a_token)).await;
    assert_eq!(status, 403, "A's token on B's map");
    assert!(!holds(&body, "team-b-negotiated"));
    let (status, body) = get(&b_url, Some(&b_token)).await;
    assert_eq!(status, 200, "B's own token");
    assert_eq!(body, teams.b_map);
    let (status, _) = get(
        &teams.map_path(&teams.a.namespace, "litellm"),
        Some(&a_token),
    )
    .await;
    assert_eq!(status, 200, "A's own token on A's map");
    // An object that does not exist answers A as one A may not read: no oracle.
    let (status, _) = get(
        &teams.map_path(&teams.b.namespace, "nothing"),
        Some(&a_token),
    )
    .await;
    assert_eq!(status, 403);
    // A token that is no identity at all.
    let (status, _) = get(&b_url, Some("not-a-token")).await;
    assert_eq!(status, 401);
    teams.operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_url_opens_its_own_map_and_nothing_else() {
    let teams = Teams::start("mapurl").await;
    let b_ns = teams.b.namespace.clone();
    // A second object in B, published too.
    let source = Source::start(Answer::Map(small_map(3, &["team-b-other"]))).await;
    create_sync(
        &teams.admin,
        &b_ns,
        "other",
        json!({"source": {"url": source.url}, "interval": "1h", "validation": {"minModels": 1}}),
    )
    .await;
    wait_ready(&teams.admin, &b_ns, "other", "True", Reason::Synced).await;
    let map_url = teams.map_url(&b_ns).await;
    assert!(
        map_url.starts_with(&teams.map_path(&b_ns, "litellm")),
        "{map_url}"
    );
    // As written, with no other credential: what a plain LiteLLM proxy does.
    let body = eventually("map-url serves B's map", || {
        let map_url = map_url.clone();
        async move {
            let (status, body) = get(&map_url, None).await;
            (status == 200).then_some(body)
        }
    })
    .await;
    assert_eq!(body, teams.b_map);
    let token = map_url.split_once("?token=").unwrap().1;
    // The same token on another object of the namespace, and on the same name elsewhere.
    let other = format!("{}?token={token}", teams.map_path(&b_ns, "other"));
    let (status, body) = get(&other, None).await;
    assert_eq!(status, 403);
    assert!(!holds(&body, "team-b-other"));
    let in_a = format!(
        "{}?token={token}",
        teams.map_path(&teams.a.namespace, "litellm")
    );
    let (status, body) = get(&in_a, None).await;
    assert_eq!(status, 403);
    assert!(!holds(&body, "team-a-private"));
    // A's own map-url opens A's map only.
    let a_url = teams.map_url(&teams.a.namespace).await;
    assert_ne!(a_url.split_once("?token=").unwrap().1, token);
    teams.operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_allowed_to_read_them() {
    let teams = Teams::start("metrics").await;
    let url = format!("{}/metrics", teams.operator.base_url);
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 401);
    let body = response.text().await.unwrap();
    assert!(!body.contains(&teams.b.namespace), "no object named");
    let tenant = teams.a.token(&teams.admin).await;
    assert_eq!(
        get(&url, Some(&tenant)).await.0,
        403,
        "a tenant is no metrics reader"
    );
    // Prometheus: a ServiceAccount bound to the chart's metrics-reader ClusterRole.
    let reader = format!("{}-metrics-reader", teams.a.namespace);
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": reader},
        "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
    }))
    .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": reader},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": reader},
        "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": teams.a.namespace}],
    }))
    .unwrap();
    let post = PostParams::default();
    Api::<ClusterRole>::all(teams.admin.clone())
        .create(&post, &role)
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(teams.admin.clone())
        .create(&post, &binding)
        .await
        .unwrap();
    crate::common::create::<k8s_openapi::api::core::v1::ServiceAccount>(
        &teams.admin,
        &teams.a.namespace,
        json!({"metadata": {"name": "prometheus"}}),
    )
    .await;
    let prometheus = account_token(&teams.admin, &teams.a.namespace, "prometheus").await;
    let (status, body) = get(&url, Some(&prometheus)).await;
    assert_eq!(status, 200);
    assert!(holds(&body, "costmap_"), "the metrics");
    teams.operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_rewrites_map_url_and_the_previous_key_opens_until_dropped() {
    let teams = Teams::start("rotate").await;
    let b_ns = teams.b.namespace.clone();
    let old_url = teams.map_url(&b_ns).await;
    let secrets = Api::<Secret>::namespaced(teams.admin.clone(), &teams.ops);
    let old_key = secrets.get("costmap-map-key").await.unwrap().data.unwrap()["key"].clone();
    // Rotation: a new key signs, the old one moves to `previous`.
    let patch =
        json!({"data": {"key": BASE64.encode([42u8; 32]), "previous": BASE64.encode(&old_key.0)}});
    secrets
        .patch(
            "costmap-map-key",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let api = config_maps(&teams.admin, &b_ns);
    let mut round = 0;
    let new_url = eventually("map-url rewritten with the new key", || {
        round += 1;
        let (api, admin, ns, old) = (
            api.clone(),
            teams.admin.clone(),
            b_ns.clone(),
            old_url.clone(),
        );
        async move {
            request_sync(&admin, &ns, "litellm", &format!("rotate-{round}")).await;
            let url = api
                .get("litellm")
                .await
                .ok()?
                .data?
                .get("map-url")
                .cloned()?;
            (url != old).then_some(url)
        }
    })
    .await;
    assert_eq!(get(&new_url, None).await.0, 200, "the new map-url");
    assert_eq!(
        get(&old_url, None).await.0,
        200,
        "the old one, during the rotation"
    );
    // Rotation done: `previous` dropped, and the old URL opens nothing.
    let patch = json!({"data": {"previous": null}});
    secrets
        .patch(
            "costmap-map-key",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    eventually("the old map-url refused", || {
        let old = old_url.clone();
        async move { (get(&old, None).await.0 == 403).then_some(()) }
    })
    .await;
    assert_eq!(get(&new_url, None).await.0, 200);
    teams.operator.stop().await;
}

/// The median of `samples` latencies of GETs of `url` with `token`, each answered 200.
async fn median_latency(url: &str, token: &str, samples: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..samples {
        let start = Instant::now();
        let (status, _) = get(url, Some(token)).await;
        times.push(start.elapsed());
        assert_eq!(status, 200);
    }
    times.sort();
    times[samples / 2]
}

/// A gzip of `zeros` zero bytes: a few hundred KB that decompress to `zeros`.
fn zeros_gz(zeros: usize) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![0u8; 1 << 20];
    for _ in 0..zeros / block.len() {
        gz.write_all(&block).unwrap();
    }
    gz.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmaps_that_only_look_like_ours_cost_nothing() {
    let teams = Teams::start("bombs").await;
    teams.wait_served().await;
    let b_token = teams.b.token(&teams.admin).await;
    let b_url = teams.map_path(&teams.b.namespace, "litellm");
    let before = median_latency(&b_url, &b_token, 21).await;
    let decompressed = teams.operator.maps.decompressions();

    // Tenant A, with only a team's rights, writes five ConfigMaps labelled as ours: no
    // owner, or B's object named as owner with a made-up uid.
    let a_token = teams.a.token(&teams.admin).await;
    let as_a = teams.a.client(&a_token).await;
    let bomb = k8s_openapi::ByteString(zeros_gz(300 << 20));
    let api = Api::<ConfigMap>::namespaced(as_a, &teams.a.namespace);
    for index in 0..5 {
        let owner = (index % 2 == 1).then(|| {
            json!([{"apiVersion": "costmap.dev/v1alpha1", "kind": "ModelCostMapSync",
                    "name": "litellm", "uid": format!("forged-{index}"), "controller": true}])
        });
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": format!("bomb-{index}"),
                         "labels": {"app.kubernetes.io/managed-by": "costmap-operator"},
                         "ownerReferences": owner},
            "binaryData": {DEFAULT_KEY.to_owned() + ".gz": bomb},
        }))
        .unwrap();
        api.create(&PostParams::default(), &cm)
            .await
            .expect("A may create ConfigMaps");
    }
    // Touched again and again while B's proxies read.
    let toucher = tokio::spawn(async move {
        for round in 0..20 {
            for index in 0..5 {
                let patch = json!({"metadata": {"annotations": {"touch": round.to_string()}}});
                api.patch(
                    &format!("bomb-{index}"),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .expect("A may patch its ConfigMaps");
            }
        }
    });
    let during = median_latency(&b_url, &b_token, 41).await;
    toucher.await.unwrap();
    let after = median_latency(&b_url, &b_token, 5).await;
    assert_eq!(
        teams.operator.maps.decompressions(),
        decompressed,
        "no gzip of a ConfigMap no known object owns is decompressed"
    );
    let margin = before * 5 + Duration::from_millis(100);
    assert!(
        during < margin,
        "B's median read: {before:?} before, {during:?} during"
    );
    assert!(
        after < margin,
        "B's median read: {before:?} before, {after:?} after"
    );
    teams.operator.stop().await;
}
