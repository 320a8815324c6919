//! Tenancy, outbound addresses: with the operator on its default address policy (no
//! loopback), a tenant cannot make it fetch from loopback, from its own endpoint (another
//! team's maps) or through a redirect to either; cannot make it send to a proxy on loopback,
//! link-local or in another namespace; cannot read a non-map JSON document back through
//! status; and a proxy URL's credentials are not stored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use costmap_operator::api::{
    ConditionType, ConsumerState, ConsumerStatus, DEFAULT_KEY, ModelCostMapSync, Reason,
};
use costmap_operator::sync::fetch::FetchPolicy;
use costmap_operator::sync::fetch::address::{AddressPolicy, OwnAddresses};
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use serde_json::json;

use crate::common::process::OperatorProcess;
use crate::common::*;

/// What a [`Counting`] server answers to every request.
#[derive(Clone)]
enum Reply {
    Body(Bytes),
    Redirect(String),
}

/// A server on `ip` that counts every request it receives, whatever the path.
struct Counting {
    base: String,
    received: Arc<AtomicUsize>,
}

impl Counting {
    fn start(ip: &str, reply: Reply) -> Counting {
        let received = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&received);
        let app = Router::new().fallback(move || {
            count.fetch_add(1, Ordering::SeqCst);
            let reply = reply.clone();
            async move {
                match reply {
                    Reply::Body(body) => (StatusCode::OK, body).into_response(),
                    Reply::Redirect(to) => {
                        (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
                    }
                }
            }
        });
        let listener = std::net::TcpListener::bind(format!("{ip}:0")).expect("bind");
        let addr: SocketAddr = serve(listener, app);
        Counting {
            base: format!("http://{addr}"),
            received,
        }
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

/// The fetch policy of `run` with only `allowed` allowed (no loopback unless listed).
fn sources_allowing(allowed: &[&str]) -> FetchPolicy {
    FetchPolicy {
        allowed_cidrs: allowed.iter().map(|c| c.parse().unwrap()).collect(),
        ..test_policy()
    }
}

/// The consumer policy of `run` with only `allowed` allowed.
fn consumers_allowing(allowed: &[&str]) -> AddressPolicy {
    AddressPolicy::new(
        allowed.iter().map(|c| c.parse().unwrap()).collect(),
        OwnAddresses::default(),
    )
}

/// Waits for Ready=False `reason` and returns its message.
async fn refused(client: &Client, ns: &str, name: &str, reason: Reason) -> String {
    let sync = wait_ready(client, ns, name, "False", reason).await;
    ready_condition(&sync).unwrap().message
}

#[tokio::test]
async fn a_source_on_loopback_is_refused_and_receives_nothing() {
    let client = client().await;
    let ns = namespace(&client, "egress-loopback").await;
    let source = Counting::start("127.0.0.1", Reply::Body(small_map(60, &[])));
    let operator = Operator::start_with_addresses(
        &client,
        vec![ns.clone()],
        sources_allowing(&[]),
        consumers_allowing(&[]),
    );
    let url = format!("{}/model_prices_and_context_window.json", source.base);
    create_litellm_sync(&client, &ns, &url).await;

    let message = refused(&client, &ns, "litellm", Reason::FetchFailed).await;
    assert!(
        message.contains("refusing to connect to 127.0.0.1") && message.contains("loopback"),
        "{message}"
    );
    assert_eq!(source.received(), 0, "nothing is sent to a refused address");
    assert!(
        config_maps(&client, &ns)
            .get_opt("litellm")
            .await
            .unwrap()
            .is_none()
    );
    operator.stop().await;
}

#[tokio::test]
async fn the_operator_s_own_endpoint_is_refused_as_a_source_even_when_its_range_is_allowed() {
    let client = client().await;
    let team_a = namespace(&client, "egress-own-a").await;
    let team_b = namespace(&client, "egress-own-b").await;
    // The operator listens on 127.0.0.1: that is its own address here, as its pod IP is
    // in a cluster. Team B's source is on another loopback address, all of 127/8 allowed.
    let b_source = Counting::start("127.0.0.2", Reply::Body(small_map(60, &["team-b-only"])));
    let operator = Operator::start_with_addresses(
        &client,
        vec![team_a.clone(), team_b.clone()],
        FetchPolicy {
            own_addresses: OwnAddresses::of(vec!["127.0.0.1".parse().unwrap()]),
            ..sources_allowing(&["127.0.0.0/8"])
        },
        consumers_allowing(&[]),
    );
    let b_url = format!("{}/map.json", b_source.base);
    create_litellm_sync(&client, &team_b, &b_url).await;
    wait_ready(&client, &team_b, "litellm", "True", Reason::Synced).await;
    let b_map = format!("{}/maps/{team_b}/litellm/{DEFAULT_KEY}", operator.base_url);
    eventually("team B's map served", || async {
        let served = served_map(&operator, &team_b, "litellm").await?;
        (!served.is_empty()).then_some(())
    })
    .await;

    create_sync(
        &client,
        &team_a,
        "litellm",
        json!({"source": {"url": b_map}, "validation": {"minModels": 1}}),
    )
    .await;
    let message = refused(&client, &team_a, "litellm", Reason::FetchFailed).await;
    assert!(
        message.contains("refusing to connect to 127.0.0.1")
            && message.contains("the operator itself"),
        "{message}"
    );
    assert!(
        config_maps(&client, &team_a)
            .get_opt("litellm")
            .await
            .unwrap()
            .is_none(),
        "team B's map is not copied into team A"
    );
    operator.stop().await;
}

#[tokio::test]
async fn a_redirect_from_an_allowed_source_to_loopback_is_refused() {
    let client = client().await;
    let ns = namespace(&client, "egress-redirect").await;
    let target = Counting::start("127.0.0.1", Reply::Body(small_map(60, &[])));
    let redirector = Counting::start(
        "127.0.0.2",
        Reply::Redirect(format!("{}/map.json", target.base)),
    );
    // Only the redirecting source's address is allowed.
    let operator = Operator::start_with_addresses(
        &client,
        vec![ns.clone()],
        sources_allowing(&["127.0.0.2/32"]),
        consumers_allowing(&[]),
    );
    create_litellm_sync(&client, &ns, &format!("{}/map.json", redirector.base)).await;

    let message = refused(&client, &ns, "litellm", Reason::FetchFailed).await;
    assert!(
        message.contains("refusing to connect to 127.0.0.1") && message.contains("loopback"),
        "{message}"
    );
    assert!(redirector.received() > 0, "the allowed source was asked");
    assert_eq!(target.received(), 0, "the redirect was not followed");
    operator.stop().await;
}

/// A namespace whose `litellm` syncs from an allowed source (127.0.0.2) and names
/// `proxies`, with an operator on the default consumer policy.
async fn with_proxies(prefix: &str, proxies: serde_json::Value) -> (Client, String, Operator) {
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    create::<k8s_openapi::api::core::v1::Secret>(
        &client,
        &ns,
        json!({"metadata": {"name": "key"}, "stringData": {"masterKey": "sk-tenant"}}),
    )
    .await;
    let source = Counting::start("127.0.0.2", Reply::Body(small_map(60, &[])));
    let operator = Operator::start_with_addresses(
        &client,
        vec![ns.clone()],
        sources_allowing(&["127.0.0.2/32"]),
        consumers_allowing(&[]),
    );
    let url = format!("{}/map.json", source.base);
    create_sync(
        &client,
        &ns,
        "litellm",
        json!({"source": {"url": url}, "consumers": {"litellmProxies": proxies}}),
    )
    .await;
    (client, ns, operator)
}

/// The consumer rows once every one of `count` has been checked.
async fn consumer_rows(client: &Client, ns: &str, count: usize) -> ModelCostMapSync {
    let api = syncs(client, ns);
    eventually("every proxy checked", || {
        let api = api.clone();
        async move {
            let sync = api.get("litellm").await.ok()?;
            (sync.status.as_ref()?.consumers.len() == count).then_some(sync)
        }
    })
    .await
}

/// The row of `url`, however its path is spelled (`http://h:p` or `http://h:p/`).
fn row<'a>(sync: &'a ModelCostMapSync, url: &str) -> &'a ConsumerStatus {
    let rows = &sync.status.as_ref().unwrap().consumers;
    rows.iter()
        .find(|row| row.url.trim_end_matches('/') == url.trim_end_matches('/'))
        .unwrap_or_else(|| panic!("no row for {url} in {rows:?}"))
}

#[tokio::test]
async fn proxies_on_loopback_link_local_or_in_another_namespace_are_refused_unasked() {
    let other = {
        let client = client().await;
        namespace(&client, "egress-other-team").await
    };
    let other_service: Service = {
        let client = client().await;
        create(
            &client,
            &other,
            json!({"metadata": {"name": "litellm"},
                   "spec": {"ports": [{"port": 4000}]}}),
        )
        .await
    };
    let other_ip = other_service
        .spec
        .and_then(|spec| spec.cluster_ip)
        .expect("a cluster IP");
    let proxy = Counting::start("127.0.0.1", Reply::Body(Bytes::from_static(b"{}")));
    let key = json!({"name": "key", "key": "masterKey"});
    let in_other = format!("names a Service in namespace {other}");
    let urls = [
        (proxy.base.clone(), "127.0.0.1 is a loopback address"),
        (
            "http://[fe80::1]:4000".to_owned(),
            "fe80::1 is a link-local address",
        ),
        (format!("http://litellm.{other}:4000"), in_other.as_str()),
        (
            format!("http://litellm.{other}.svc.cluster.local:4000"),
            in_other.as_str(),
        ),
        (
            format!("http://{other_ip}:4000"),
            "is no address of a Service or ready endpoint in namespace",
        ),
    ];
    let proxies: Vec<serde_json::Value> = urls
        .iter()
        .map(|(url, _)| json!({"url": url, "adminKeySecretRef": key}))
        .collect();
    let (client, ns, operator) = with_proxies("egress-proxies", json!(proxies)).await;

    let sync = consumer_rows(&client, &ns, urls.len()).await;
    for (url, says) in &urls {
        let row = row(&sync, url);
        assert_eq!(row.state, ConsumerState::Unreachable, "{url}");
        let message = row.message.as_deref().unwrap_or_default();
        assert!(
            message.contains("refused, nothing was sent") && message.contains(says),
            "{url}: {message}"
        );
    }
    let condition = sync
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::ConsumersCurrent.as_str())
        .expect("ConsumersCurrent");
    assert_eq!(condition.status, "False");
    assert!(
        condition.message.contains("refused, nothing was sent"),
        "{}",
        condition.message
    );
    assert_eq!(proxy.received(), 0, "nothing is sent to a refused proxy");
    operator.stop().await;
}

#[tokio::test]
async fn a_proxy_url_is_stored_without_userinfo_or_query() {
    let client = client().await;
    let ns = namespace(&client, "egress-userinfo").await;
    create::<k8s_openapi::api::core::v1::Secret>(
        &client,
        &ns,
        json!({"metadata": {"name": "key"}, "stringData": {"masterKey": "sk-tenant"}}),
    )
    .await;
    let source = Counting::start("127.0.0.2", Reply::Body(small_map(60, &[])));
    let proxy = Counting::start("127.0.0.1", Reply::Body(Bytes::from_static(b"{}")));
    // Loopback allowed for proxies here: the row is written whatever the proxy answers.
    let operator = Operator::start_with_addresses(
        &client,
        vec![ns.clone()],
        sources_allowing(&["127.0.0.2/32"]),
        consumers_allowing(&["127.0.0.0/8"]),
    );
    let port = proxy.base.rsplit(':').next().unwrap();
    let url = format!("http://admin:pa55w0rd-canary@127.0.0.1:{port}/?token=t0ken-canary");
    create_sync(
        &client,
        &ns,
        "litellm",
        json!({"source": {"url": format!("{}/map.json", source.base)},
               "consumers": {"litellmProxies": [{"url": url,
                   "adminKeySecretRef": {"name": "key", "key": "masterKey"}}]}}),
    )
    .await;

    let sync = consumer_rows(&client, &ns, 1).await;
    let rows = &sync.status.as_ref().unwrap().consumers;
    assert_eq!(rows[0].url, format!("http://127.0.0.1:{port}/"));
    let status = serde_json::to_string(&sync.status).unwrap();
    let events = serde_json::to_string(&events(&client, &ns).await).unwrap();
    for canary in ["pa55w0rd-canary", "t0ken-canary", "admin:"] {
        assert!(!status.contains(canary), "{canary} in status: {status}");
        assert!(!events.contains(canary), "{canary} in Events: {events}");
    }
    assert!(proxy.received() > 0, "the proxy itself was asked");
    operator.stop().await;
}

#[tokio::test]
async fn a_source_answer_that_is_no_map_is_described_by_its_shape_only() {
    let client = client().await;
    let ns = namespace(&client, "egress-oracle").await;
    // An internal JSON document a tenant points a source at: secrets by key and value.
    let document = Counting::start(
        "127.0.0.2",
        Reply::Body(Bytes::from_static(
            br#"{"internal-secret-key": "s3cret-value", "db-password": "hunter2-canary",
                 "quota": {"max_tokens": -987654321}}"#,
        )),
    );
    let scalar = Counting::start(
        "127.0.0.2",
        Reply::Body(Bytes::from_static(br#""s3cret-scalar-canary""#)),
    );
    let operator = Operator::start_with_addresses(
        &client,
        vec![ns.clone()],
        sources_allowing(&["127.0.0.2/32"]),
        consumers_allowing(&[]),
    );
    for (name, source) in [("document", &document), ("scalar", &scalar)] {
        create_sync(
            &client,
            &ns,
            name,
            json!({"source": {"url": format!("{}/doc.json", source.base)},
                   "validation": {"minModels": 1}}),
        )
        .await;
    }
    let document_says = refused(&client, &ns, "document", Reason::InvalidMap).await;
    let scalar_says = refused(&client, &ns, "scalar", Reason::InvalidMap).await;
    let mut told = String::new();
    for name in ["document", "scalar"] {
        let sync = syncs(&client, &ns).get(name).await.unwrap();
        told.push_str(&serde_json::to_string(&sync.status).unwrap());
    }
    told.push_str(&serde_json::to_string(&events(&client, &ns).await).unwrap());
    for canary in [
        "internal-secret-key",
        "s3cret",
        "db-password",
        "hunter2",
        "987654321",
        "quota",
    ] {
        assert!(
            !told.contains(canary),
            "{canary} in status or Events: {told}"
        );
    }
    assert!(
        document_says.contains("not a map of model entries: 1 of its 3 top-level values"),
        "{document_says}"
    );
    assert!(
        scalar_says.contains("the body is a JSON string"),
        "{scalar_says}"
    );
    operator.stop().await;
}

#[tokio::test]
async fn run_refuses_the_cluster_ips_of_the_service_it_is_told_is_its_own() {
    let client = client().await;
    let ns = namespace(&client, "egress-own-service").await;
    let service: Service = create(
        &client,
        &ns,
        json!({"metadata": {"name": "costmap-operator"},
               "spec": {"ports": [{"port": 8080}]}}),
    )
    .await;
    let ip = service
        .spec
        .and_then(|spec| spec.cluster_ip)
        .expect("a cluster IP");
    // The address is allowed by CIDR: only its being the operator's own refuses it.
    let allow = format!("--allow-source-cidr={ip}/32");
    let mut operator = OperatorProcess::start(
        &control_plane().kubeconfig,
        &ns,
        "operator-0",
        &[
            "--namespace",
            &ns,
            "--service-name=costmap-operator",
            &allow,
        ],
    );
    let url = format!("http://{ip}:8080/maps/{ns}/other/{DEFAULT_KEY}");
    create_litellm_sync(&client, &ns, &url).await;
    let message = refused(&client, &ns, "litellm", Reason::FetchFailed).await;
    assert!(
        message.contains(&format!("refusing to connect to {ip}"))
            && message.contains("the operator itself"),
        "{message}"
    );
    operator.assert_alive();
}
