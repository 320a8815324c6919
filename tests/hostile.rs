//! Every hostile source the fault probe tried, in one table: each row is a source (a body, a
//! status, a redirect, or bytes on the socket that are not HTTP at all), the reason the
//! operator must give, and words of its message. After each row the ConfigMap is byte-for-
//! byte what it was and the operator still runs. The same rows run once more with secrets
//! in play (a header Secret, a proxy's admin key) at log level trace: none of them may show
//! up in the log, Events, status, ConfigMaps or metrics, and every JSON log line has each
//! key once.

mod common;

use costmap_operator::api::Reason;
use std::io::Write;

use base64::Engine as _;
use common::hostile::{Behavior, HostileSource};
use common::process::OperatorProcess;
use common::proxy::StandIn;
use common::*;
use costmap_operator::sync::fetch::FetchPolicy;
use costmap_operator::sync::validate::ModelMap;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

/// One hostile source and what the operator must say about it.
struct Row {
    name: &'static str,
    url: String,
    reason: &'static str,
    says: &'static str,
}

/// The last good map of the table: 300 models.
fn base_map() -> Vec<u8> {
    small_map(300, &[]).to_vec()
}

/// [`base_map`] with `change` applied to its parsed form.
fn base_with(change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let mut map: serde_json::Map<String, Value> = serde_json::from_slice(&base_map()).unwrap();
    change(&mut map);
    serde_json::to_vec_pretty(&map).unwrap()
}

/// [`base_map`] with one field of `model-7` replaced by raw JSON text.
fn base_with_raw(field: &str, raw: &str) -> Vec<u8> {
    let text = String::from_utf8(base_map()).unwrap();
    let needle = "\"model-7\": {";
    let at = text.find(needle).unwrap() + needle.len();
    format!("{}\"{field}\": {raw},{}", &text[..at], &text[at..]).into_bytes()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Every case of the fault probe, served by `source` (or, for addresses refused before any
/// request, at a URL of its own).
fn rows(source: &HostileSource) -> Vec<Row> {
    let body =
        |name: &str, bytes: Vec<u8>| source.set_path(&format!("/{name}"), Behavior::ok(bytes));
    let with = |name: &str, behavior: Behavior| source.set_path(&format!("/{name}"), behavior);
    let cap = usize::try_from(FetchPolicy::default().max_body_bytes).unwrap();
    let row = |name, url, reason, says| Row {
        name,
        url,
        reason,
        says,
    };
    vec![
        row(
            "html",
            body(
                "html",
                b"<!DOCTYPE html><html><body>rate limited</body></html>".to_vec(),
            ),
            Reason::InvalidMap.as_str(),
            "looks like HTML",
        ),
        row(
            "truncated",
            body("truncated", base_map()[..base_map().len() / 2].to_vec()),
            Reason::InvalidMap.as_str(),
            "truncated",
        ),
        row(
            "empty",
            body("empty", Vec::new()),
            Reason::InvalidMap.as_str(),
            "the body is empty",
        ),
        row(
            "array",
            body("array", b"[]".to_vec()),
            Reason::InvalidMap.as_str(),
            "not a JSON object of models",
        ),
        row(
            "empty-object",
            body("empty-object", b"{}".to_vec()),
            Reason::InvalidMap.as_str(),
            "0 models, fewer than minModels 50",
        ),
        row(
            "null",
            body("null", b"null".to_vec()),
            Reason::InvalidMap.as_str(),
            "not a JSON object of models",
        ),
        row(
            "tiny",
            body("tiny", small_map(10, &[]).to_vec()),
            Reason::InvalidMap.as_str(),
            "10 models, fewer than minModels 50",
        ),
        row(
            "big-shrink",
            body("big-shrink", small_map(100, &[]).to_vec()),
            Reason::ShrinkGuard.as_str(),
            "drops 200 of the last good map's 300 models",
        ),
        row(
            "negative-cost",
            body(
                "negative-cost",
                base_with(|m| {
                    m["model-7"]["input_cost_per_token"] = json!(-1e-6);
                }),
            ),
            Reason::InvalidMap.as_str(),
            "costs are finite non-negative numbers",
        ),
        row(
            "string-cost",
            body(
                "string-cost",
                base_with(|m| {
                    m["model-7"]["input_cost_per_token"] = json!("0.000001");
                }),
            ),
            Reason::InvalidMap.as_str(),
            "costs are finite non-negative numbers",
        ),
        row(
            "nan-cost",
            body("nan-cost", base_with_raw("input_cost_per_token", "NaN")),
            Reason::InvalidMap.as_str(),
            "not a JSON object of models",
        ),
        row(
            "infinite-cost",
            body(
                "infinite-cost",
                base_with_raw("input_cost_per_token", "Infinity"),
            ),
            Reason::InvalidMap.as_str(),
            "not a JSON object of models",
        ),
        row(
            "huge-cost",
            body("huge-cost", base_with_raw("input_cost_per_token", "1e400")),
            Reason::InvalidMap.as_str(),
            "number out of range",
        ),
        row(
            "negative-tokens",
            body(
                "negative-tokens",
                base_with(|m| {
                    m["model-7"]["max_tokens"] = json!(-4096);
                }),
            ),
            Reason::InvalidMap.as_str(),
            "token counts are non-negative numbers",
        ),
        row(
            "long-cost-path",
            body(
                "long-cost-path",
                base_with_raw(
                    &format!("cost{}", "x".repeat(200_000)),
                    &format!("[{}]", vec!["0"; 5_000].join(",")),
                ),
            ),
            Reason::InvalidMap.as_str(),
            "5000 cost paths are longer than 256 bytes, the first by name in model \"model-7\"",
        ),
        row(
            "cost-paths-past-the-body",
            body(
                "cost-paths-past-the-body",
                base_with_raw(
                    &format!("cost{}", "x".repeat(200)),
                    &format!("[{}]", vec!["0"; 200_000].join(",")),
                ),
            ),
            Reason::InvalidMap.as_str(),
            "the cost paths take 42",
        ),
        row(
            "a-rule-broken-once-per-value",
            body(
                "a-rule-broken-once-per-value",
                base_with_raw(
                    "cost",
                    &format!(
                        "{{{}}}",
                        (0..900_000)
                            .map(|i| format!("\"k{i}\":null"))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                ),
            ),
            Reason::InvalidMap.as_str(),
            "rule \"costs are finite non-negative numbers\" broken 900000 times: model-7 (cost.k0 is null), model-7 (cost.k1 is null), model-7 (cost.k10 is null)",
        ),
        row(
            "deep-nesting",
            body(
                "deep-nesting",
                format!("{{\"m\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            ),
            Reason::InvalidMap.as_str(),
            "recursion limit",
        ),
        row(
            "million-keys",
            body(
                "million-keys",
                format!(
                    "{{{}}}",
                    (0..1_000_000)
                        .map(|i| format!("\"k{i}\":0"))
                        .collect::<Vec<_>>()
                        .join(",")
                )
                .into_bytes(),
            ),
            Reason::InvalidMap.as_str(),
            "more than 100000 top-level keys",
        ),
        row(
            "oversize-with-length",
            with(
                "oversize-with-length",
                Behavior::ShortBody {
                    declared: cap + 1,
                    sent: b"{".to_vec(),
                },
            ),
            Reason::TooLarge.as_str(),
            "larger than the limit",
        ),
        row(
            "oversize-streamed",
            with(
                "oversize-streamed",
                Behavior::Chunked {
                    body: vec![b' '; cap + 1],
                },
            ),
            Reason::TooLarge.as_str(),
            "larger than the limit",
        ),
        row(
            "gzip-bomb",
            with(
                "gzip-bomb",
                Behavior::Http {
                    status: 200,
                    headers: vec![("Content-Encoding".into(), "gzip".into())],
                    body: gzip(&vec![b' '; 4 * cap]),
                },
            ),
            Reason::TooLarge.as_str(),
            "larger than the limit",
        ),
        row(
            "bad-gzip",
            with(
                "bad-gzip",
                Behavior::Http {
                    status: 200,
                    headers: vec![("Content-Encoding".into(), "gzip".into())],
                    body: b"this is not gzip at all".to_vec(),
                },
            ),
            Reason::FetchFailed.as_str(),
            "reading the response body",
        ),
        row(
            "slow-loris",
            with(
                "slow-loris",
                Behavior::SlowLoris {
                    body: base_map(),
                    every: std::time::Duration::from_millis(100),
                },
            ),
            Reason::FetchFailed.as_str(),
            "did not complete within 1s",
        ),
        row(
            "hang",
            with("hang", Behavior::Hang),
            Reason::FetchFailed.as_str(),
            "did not complete within 1s",
        ),
        row(
            "reset",
            with("reset", Behavior::Reset),
            Reason::FetchFailed.as_str(),
            "could not fetch",
        ),
        row(
            "short-body",
            with(
                "short-body",
                Behavior::ShortBody {
                    declared: 100_000,
                    sent: base_map()[..100].to_vec(),
                },
            ),
            Reason::FetchFailed.as_str(),
            "reading the response body",
        ),
        row(
            "not-http",
            with(
                "not-http",
                Behavior::Raw(b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
            ),
            Reason::FetchFailed.as_str(),
            "could not fetch",
        ),
        row(
            "header-bomb",
            with(
                "header-bomb",
                Behavior::Http {
                    status: 200,
                    headers: (0..20_000)
                        .map(|i| (format!("X-Bomb-{i}"), "x".repeat(100)))
                        .collect(),
                    body: base_map(),
                },
            ),
            Reason::FetchFailed.as_str(),
            "could not fetch",
        ),
        row(
            "not-found",
            with("not-found", Behavior::status(404, &[])),
            Reason::FetchFailed.as_str(),
            "answered HTTP 404",
        ),
        row(
            "unauthorized",
            with("unauthorized", Behavior::status(401, &[])),
            Reason::FetchFailed.as_str(),
            "answered HTTP 401",
        ),
        row(
            "server-error",
            with("server-error", Behavior::status(500, &[])),
            Reason::FetchFailed.as_str(),
            "answered HTTP 500",
        ),
        row(
            "rate-limited",
            with(
                "rate-limited",
                Behavior::status(429, &[("Retry-After", "1")]),
            ),
            Reason::FetchFailed.as_str(),
            "answered HTTP 429",
        ),
        row(
            "redirect-loop",
            with(
                "redirect-loop",
                Behavior::status(302, &[("Location", "/redirect-loop")]),
            ),
            Reason::FetchFailed.as_str(),
            "redirected more than 5 times",
        ),
        row(
            "redirect-to-metadata",
            with(
                "redirect-to-metadata",
                Behavior::status(
                    302,
                    &[("Location", "http://169.254.169.254/latest/meta-data/")],
                ),
            ),
            Reason::FetchFailed.as_str(),
            "refusing to connect to 169.254.169.254",
        ),
        row(
            "redirect-to-file",
            with(
                "redirect-to-file",
                Behavior::status(302, &[("Location", "file:///etc/passwd")]),
            ),
            Reason::FetchFailed.as_str(),
            "sent a redirect that cannot be followed",
        ),
        row(
            "metadata-v4",
            "http://169.254.169.254/latest/meta-data/".into(),
            Reason::FetchFailed.as_str(),
            "refusing to connect to 169.254.169.254",
        ),
        row(
            "metadata-v4-mapped-v6",
            "http://[::ffff:169.254.169.254]/latest/meta-data/".into(),
            Reason::FetchFailed.as_str(),
            "refusing to connect to ::ffff:169.254.169.254",
        ),
        row(
            "invalid-utf8",
            body("invalid-utf8", {
                let mut map = base_with_raw("mode", "\"chat\"");
                let at = map.windows(6).position(|w| w == b"\"chat\"").unwrap();
                map[at + 1] = 0xff;
                map
            }),
            Reason::InvalidMap.as_str(),
            "not a JSON object of models",
        ),
        row(
            "bom",
            body("bom", [b"\xEF\xBB\xBF".as_slice(), &base_map()].concat()),
            Reason::InvalidMap.as_str(),
            "not a JSON object of models",
        ),
        row(
            "duplicate-keys",
            body("duplicate-keys", {
                let text = String::from_utf8(base_map()).unwrap();
                text.replacen("{", "{\n  \"model-1\": {\"input_cost_per_token\": 0},", 1)
                    .into_bytes()
            }),
            Reason::InvalidMap.as_str(),
            "top-level keys appear more than once: \"model-1\"",
        ),
    ]
}

/// A namespace, a hostile source whose default answer is the base map, an operator
/// process, and (once created) the ModelCostMapSync `litellm`.
struct Table {
    client: Client,
    ns: String,
    source: HostileSource,
    operator: OperatorProcess,
}

impl Table {
    async fn new(prefix: &str, rust_log: &str, log_format: &str) -> Table {
        let client = client().await;
        let ns = namespace(&client, prefix).await;
        let source = HostileSource::start(Behavior::ok(base_map())).await;
        let args = [
            "--namespace",
            &ns,
            "--leader-election=false",
            "--fetch-attempts",
            "1",
            "--log-format",
            log_format,
        ];
        let operator = OperatorProcess::start_logging(
            &control_plane().kubeconfig,
            &ns,
            "operator",
            &args,
            rust_log,
        );
        Table {
            client,
            ns,
            source,
            operator,
        }
    }

    /// Creates the ModelCostMapSync on the source (`spec` merged in) and waits for its
    /// first sync.
    async fn create(&self, spec: Value) {
        let mut full =
            json!({"source": {"url": self.source.url, "timeout": "1s"}, "interval": "1h"});
        merge(&mut full, spec);
        create_sync(&self.client, &self.ns, "litellm", full).await;
        wait_ready(&self.client, &self.ns, "litellm", "True", Reason::Synced).await;
    }

    /// Points the source URL at each row's source and checks what the operator says.
    async fn run(&self) {
        let config_maps = config_maps(&self.client, &self.ns);
        let before = config_maps.get("litellm").await.unwrap();
        for row in rows(&self.source) {
            let patch = json!({"spec": {"source": {"url": row.url}}});
            let patched = syncs(&self.client, &self.ns)
                .patch("litellm", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
            let generation = patched.metadata.generation;
            let sync = eventually(
                &format!("row {}: an attempt of the new spec", row.name),
                || async {
                    let sync = syncs(&self.client, &self.ns).get("litellm").await.ok()?;
                    (sync.status.as_ref()?.observed_generation == generation).then_some(sync)
                },
            )
            .await;
            let ready = ready_condition(&sync).unwrap();
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("False", row.reason),
                "row {}: {}",
                row.name,
                ready.message
            );
            assert!(
                ready.message.contains(row.says),
                "row {}: {:?} does not say {:?}",
                row.name,
                ready.message,
                row.says
            );
            let after = config_maps.get("litellm").await.unwrap();
            assert_eq!(
                after.resource_version(),
                before.resource_version(),
                "row {}: the ConfigMap was written",
                row.name
            );
            assert_eq!(
                (&after.binary_data, &after.data, after.annotations()),
                (&before.binary_data, &before.data, before.annotations()),
                "row {}",
                row.name
            );
            let health = reqwest::get(format!("{}/healthz", self.operator.url)).await;
            assert!(
                health.is_ok_and(|r| r.status().is_success()),
                "row {}: the operator is down:\n{}",
                row.name,
                self.operator.log_text()
            );
        }
        // And it still takes a good map.
        let good = small_map(300, &["day0-model"]);
        let url = self.source.set_path("/good", Behavior::ok(good.to_vec()));
        let patch = json!({"spec": {"source": {"url": url}}});
        syncs(&self.client, &self.ns)
            .patch("litellm", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        eventually("the good map after the hostile ones", || async {
            let cm = config_maps.get("litellm").await.ok()?;
            (stored_bytes(&cm, costmap_operator::api::DEFAULT_KEY) == good.as_ref()).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn every_hostile_source_is_refused_with_its_reason_and_the_configmap_kept_byte_for_byte() {
    let table = Table::new("hostile", "info", "text").await;
    table.create(json!({})).await;
    table.run().await;
}

const CANARY_HEADER: &str = "canary-header-value-3f9c1e";
const CANARY_TOKEN: &str = "canary-bearer-token-8d2a7b";
const CANARY_ADMIN_KEY: &str = "sk-canary-admin-key-5e0b94";

#[tokio::test]
async fn no_secret_reaches_logs_events_status_configmaps_or_metrics_and_json_logs_have_unique_keys()
{
    let table = Table::new("leak", "trace", "json").await;
    let secrets = Api::<Secret>::namespaced(table.client.clone(), &table.ns);
    for (name, data) in [
        (
            "mirror-auth",
            json!({"X-Mirror-Token": CANARY_HEADER, "Authorization": format!("Bearer {CANARY_TOKEN}")}),
        ),
        ("litellm-master-key", json!({"masterKey": CANARY_ADMIN_KEY})),
    ] {
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
                .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let map_url = format!(
        "{}/maps/{}/litellm/{}",
        table.operator.url,
        table.ns,
        costmap_operator::api::DEFAULT_KEY
    );
    let proxy_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = StandIn::start(proxy_listener, &map_url, CANARY_ADMIN_KEY, true).await;
    table
        .create(json!({
            "source": {"headersSecretRef": {"name": "mirror-auth"}},
            "consumers": {"litellmProxies": [{
                "url": proxy.url,
                "adminKeySecretRef": {"name": "litellm-master-key", "key": "masterKey"},
            }]},
        }))
        .await;
    table.run().await;
    assert!(proxy.reloads() > 0, "the admin key was used");

    let mut canaries = vec![
        CANARY_HEADER.to_owned(),
        CANARY_TOKEN.to_owned(),
        CANARY_ADMIN_KEY.to_owned(),
    ];
    let encoded: Vec<String> = canaries
        .iter()
        .map(|canary| base64::engine::general_purpose::STANDARD.encode(canary))
        .collect();
    canaries.extend(encoded);
    let log = table.operator.log_text();
    let events: Vec<Event> = Api::namespaced(table.client.clone(), &table.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let sync = syncs(&table.client, &table.ns)
        .get("litellm")
        .await
        .unwrap();
    let config_maps: Vec<ConfigMap> = config_maps(&table.client, &table.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let metrics = reqwest::get(format!("{}/metrics", table.operator.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let places = [
        ("the operator's log at trace", log.clone()),
        ("Events", serde_json::to_string(&events).unwrap()),
        ("status", serde_json::to_string(&sync).unwrap()),
        ("ConfigMaps", serde_json::to_string(&config_maps).unwrap()),
        ("/metrics", metrics),
    ];
    for (place, text) in &places {
        for canary in &canaries {
            assert!(!text.contains(canary.as_str()), "{canary} found in {place}");
        }
    }
    assert!(log.lines().count() > 1000, "trace logging was on");
    for line in log.lines() {
        // The map parser refuses a key that appears twice in any object.
        if let Err(err) = ModelMap::parse(line.as_bytes()) {
            let err = err.to_string();
            assert!(
                !err.contains("more than once") && !err.contains("a key twice"),
                "a JSON log line with a key twice: {err}\n{line}"
            );
            assert!(
                !err.contains("not a JSON object"),
                "a log line that is not JSON: {line}"
            );
        }
    }
}
