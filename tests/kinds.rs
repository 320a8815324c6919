//! One table of scenarios, run against both kinds on the real control plane: a
//! `ModelCostMapSync` and a `ClusterModelCostMapSync` run one sync core, so each scenario
//! expects the same of both unless the table says otherwise. A scenario is one async
//! function taking a [`Kind`]; each has one test per kind (`<scenario>::namespaced`,
//! `<scenario>::cluster`), all under one cluster-wide operator that this binary shares (two
//! on one control plane would both reconcile every cluster object). The scenarios that stop
//! and start the operator are in tests/kinds_restart.rs.
//!
//! | #  | scenario                 | expected of both kinds                                                    |
//! |----|--------------------------|---------------------------------------------------------------------------|
//! | 1  | first sync               | Ready=True Synced; artifact digest and models; every ConfigMap holds the bytes; the endpoint serves them; Event MapSynced "first sync"; one fetch |
//! | 2  | source unchanged (304)   | a requested sync sends If-None-Match = the ETag, gets 304; Ready=True "(unchanged)"; lastHandledSyncRequest; no ConfigMap written |
//! | 3  | content change           | artifact updated; lastChange.addedModels names the new model; ConfigMap(s) hold it; Event MapUpdated |
//! | 4  | each guard refuses       | shrink: ShrinkGuard; every price zeroed or x1e6: PriceGuard (message names the digest and costmap.dev/accept-digest); an HTML body: InvalidMap (a structure rule: no accept offered); artifact and ConfigMap(s) unchanged |
//! | 5  | accept-digest            | the refused map is published; lastAcceptedDigest; Event MapAccepted        |
//! | 6  | reject-digest            | DIFFERS, by design: the namespaced kind restores the previous map from its history ring (Ready=False Rejected); the cluster kind keeps no history ring, so the annotation has no effect (the map stays published, Ready=True) |
//! | 7  | suspended                | Ready keeps its status with reason Suspended; no nextSyncTime; a sync request is not handled (nothing fetched) until resumed |
//! | 8  | invalid spec (30s)       | Ready=False InvalidSpec; nothing fetched; no ConfigMap                     |
//! | 9  | status write refused     | Ready=False WriteFailed naming the status write; artifact and ConfigMap(s) keep the last good map; published once the write goes through |
//! | 10 | spec changed, same source | the source is asked again at once (not an answer from within the interval); the same map, Synced for the new generation (here validation.minModels changed) |
//! | 10b| spec names a new source  | the new source is not sent the old one's ETag: a validator of the old spec means nothing there |
//! | 10c| the new source fails     | Ready=False FetchFailed for the new generation; every ConfigMap keeps the last good map as written (its annotations still name the source it came from) |
//! | 11 | GitOps health            | kstatus (cli-utils v0.37.2) and the Argo CD Lua check of examples/gitops/argocd: synced Current/Healthy; a requested sync in flight (Reconciling=True) and a spec not yet observed InProgress/Progressing; a transient fetch failure InProgress/Progressing (no Stalled); a guard refusal Failed/Degraded (Stalled=True) |
//!
//! Where the kinds differ by design (tested here only for scenario 6; the rest is in
//! tests/cluster.rs or in the schema):
//!
//! | what                                   | ModelCostMapSync                     | ClusterModelCostMapSync                          |
//! |----------------------------------------|--------------------------------------|--------------------------------------------------|
//! | history ring (`spec.history`)          | kept in `<target>-history-N`         | none: not in its schema                          |
//! | `costmap.dev/reject-digest`            | restores from history, Rejected      | no effect (scenario 6)                           |
//! | a ConfigMap of the name someone else owns | Ready=False OwnedByAnother, nothing written (tests/tenancy/ownership.rs) | that namespace fails alone, the others get the map: Ready=False OwnedByAnother (tests/cluster.rs, tests/tenancy/ownership.rs) |
//! | consumers, headersSecretRef, overrides.configMapRefs | supported              | none: things of one namespace, not in its schema |
//! | Events                                 | in its namespace                     | in namespace `default`                           |
//! | status                                 | the sync status                      | the same, flattened, plus `namespaces`           |
//!
//! Written ahead of the one sync core: on the two pipelines of commit c8772d7, scenario 9
//! fails for the cluster kind (a refused status write becomes a reconcile error, retried
//! forever) and 10b for the namespaced kind (it kept the old ETag across a spec change). For
//! the same source (10), the shared fetcher revalidates the body it holds with its own ETag
//! whatever the reconciler asks: a 304 from the URL that served that body vouches for it.
//!
//! The CRDs refuse an interval under 1m; scenario 8 is about an object stored before that
//! rule existed, so this binary drops the rule from both CRDs once, before its operator
//! starts (as tests/sync.rs does on a control plane of its own).

mod common;

/// The tests of one scenario, `<scenario>::namespaced` and `<scenario>::cluster`.
macro_rules! for_both_kinds {
    ($scenario:ident) => {
        mod $scenario {
            use super::Kind;

            #[tokio::test]
            async fn namespaced() {
                super::$scenario(Kind::Namespaced).await;
            }

            #[tokio::test]
            async fn cluster() {
                super::$scenario(Kind::Cluster).await;
            }
        }
    };
}

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::header::IF_NONE_MATCH;
use common::faults::zero_prices;
use common::kinds::{
    Kind, Subject, assert_ready, describe_ready, operator_on_its_own_runtime, ready,
};
use common::*;
use costmap_operator::api::{
    ACCEPT_DIGEST_ANNOTATION, EventReason, REJECT_DIGEST_ANNOTATION, Reason,
    SYNC_REQUESTED_AT_ANNOTATION,
};
use costmap_operator::digest::sha256_digest;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// The URL of the operator this binary's tests share, started on first use.
fn operator_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| operator_on_its_own_runtime(without_the_interval_rule))
}

/// Drops the CEL rule "interval must be at least 1m" from both CRDs, and waits until the
/// API server takes a 30s interval of each kind.
async fn without_the_interval_rule(client: Client) {
    let plane = control_plane();
    for crd in [
        "modelcostmapsyncs.costmap.dev",
        "clustermodelcostmapsyncs.costmap.dev",
    ] {
        let text = plane.kubectl(&["get", "crd", crd, "-o", "json"]).unwrap();
        let mut crd: Value = serde_json::from_str(&text).unwrap();
        let interval = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["interval"];
        interval
            .as_object_mut()
            .expect("spec.interval in the schema")
            .remove("x-kubernetes-validations")
            .expect("the rule on spec.interval");
        plane
            .kubectl_with_input(&["replace", "-f", "-"], &crd.to_string())
            .unwrap();
    }
    for kind in [Kind::Namespaced, Kind::Cluster] {
        let probe = Subject::without_object(kind, &client, "", "crd-probe").await;
        let spec = json!({"source": {"url": "http://127.0.0.1:1/map.json"}, "interval": "30s"});
        eventually("the API server to take a 30s interval", || async {
            probe.would_take(spec.clone()).await.then_some(())
        })
        .await;
    }
}

/// A source serving `map` with an ETag, and a subject of `kind` on it.
async fn on_source(kind: Kind, scenario: &str, map: &Bytes, extra: Value) -> (Subject, Source) {
    let url = operator_url();
    let client = client().await;
    let source = Source::start(Answer::Map(map.clone())).await;
    let subject = Subject::create(kind, &client, url, scenario, &source, extra).await;
    (subject, source)
}

/// A subject synced once with `map` (every ConfigMap holding it), and its source.
async fn synced(kind: Kind, scenario: &str, map: &Bytes) -> (Subject, Source) {
    let (subject, source) = on_source(kind, scenario, map, json!({})).await;
    subject.wait_ready("True", Reason::Synced).await;
    subject.wait_artifact(map).await;
    subject.wait_held(map).await;
    (subject, source)
}

/// The map every scenario starts from: 200 models.
fn map_a() -> Bytes {
    small_map(200, &[])
}

/// The ETag the source sends for `map`, as status records it.
fn etag(map: &[u8]) -> String {
    format!("\"{}\"", sha256_digest(map))
}

/// `map` with every number under a key containing "cost" multiplied by a million.
fn times_a_million(map: &[u8]) -> Bytes {
    let mut parsed: serde_json::Map<String, Value> = serde_json::from_slice(map).unwrap();
    for entry in parsed.values_mut().filter_map(Value::as_object_mut) {
        for (field, value) in entry.iter_mut() {
            if field.contains("cost")
                && let Some(price) = value.as_f64()
            {
                *value = json!(price * 1e6);
            }
        }
    }
    Bytes::from(serde_json::to_vec_pretty(&parsed).unwrap())
}

// 1. First sync.

async fn first_sync(kind: Kind) {
    let map = map_a();
    let (s, source) = on_source(kind, "first-sync", &map, json!({})).await;
    let status = s.wait_ready("True", Reason::Synced).await;
    let artifact = status.artifact.expect("an artifact");
    assert_eq!(artifact.digest, sha256_digest(&map));
    assert_eq!(artifact.models, 200);
    assert_eq!(artifact.size, map.len() as i64);
    s.wait_held(&map).await;
    s.wait_served(&map).await;
    s.wait_event(EventReason::MapSynced.as_str(), "first sync")
        .await;
    assert_eq!(source.received(), 1, "one fetch for every ConfigMap");
}

for_both_kinds!(first_sync);

// 2. The source unchanged: a conditional GET answered 304 writes nothing.

async fn unchanged_source_answers_304_and_nothing_is_written(kind: Kind) {
    let map = map_a();
    let (s, source) = synced(kind, "not-modified", &map).await;
    let before = s.status().await.unwrap();
    assert_eq!(
        before.artifact.unwrap().revision.as_deref(),
        Some(etag(&map).as_str()),
        "the ETag is the artifact's revision"
    );
    let versions = s.config_map_versions().await;
    let asked_before = source.served().len();
    let status = s.sync_now("again").await;
    let asked: Vec<Served> = source.served().split_off(asked_before);
    assert_eq!(asked.len(), 1, "one request for the requested sync");
    assert_eq!(
        asked[0]
            .headers
            .get(IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok()),
        Some(etag(&map).as_str()),
        "the request carries the stored ETag"
    );
    assert_eq!(asked[0].status, 304);
    let ready = assert_ready(&status, ("True", Reason::Synced), "unchanged");
    assert!(ready.message.ends_with("(unchanged)"), "{}", ready.message);
    assert_eq!(status.last_handled_sync_request.as_deref(), Some("again"));
    assert_eq!(status.artifact.unwrap().digest, sha256_digest(&map));
    assert_eq!(
        s.config_map_versions().await,
        versions,
        "no ConfigMap was written"
    );
}

for_both_kinds!(unchanged_source_answers_304_and_nothing_is_written);

// 3. A content change: one model added.

async fn a_new_model_is_published(kind: Kind) {
    let (s, source) = synced(kind, "content-change", &map_a()).await;
    let new = small_map(200, &["model-launched-today"]);
    source.set(Answer::Map(new.clone()));
    let status = s.sync_now("new-map").await;
    assert_ready(&status, ("True", Reason::Synced), "a new model");
    let artifact = status.artifact.expect("an artifact");
    assert_eq!(artifact.digest, sha256_digest(&new));
    assert_eq!(artifact.models, 201);
    let change = status.last_change.expect("lastChange");
    assert_eq!(change.added_models, ["model-launched-today"]);
    assert_eq!((change.added, change.removed), (1, 0));
    s.wait_held(&new).await;
    s.wait_served(&new).await;
    s.wait_event(EventReason::MapUpdated.as_str(), "model-launched-today")
        .await;
    // A second change minutes later has an Event of its own, with its own summary (kube's
    // Recorder would fold it into the first one's series, note and all).
    let newer = small_map(200, &["model-launched-today", "model-launched-tomorrow"]);
    source.set(Answer::Map(newer));
    s.sync_now("newer-map").await;
    s.wait_event(EventReason::MapUpdated.as_str(), "model-launched-tomorrow")
        .await;
}

for_both_kinds!(a_new_model_is_published);

// 4. Each guard refuses, and the last good map stays.

async fn each_guard_refuses_and_keeps_the_last_good_map(kind: Kind) {
    let a = map_a();
    let (s, source) = synced(kind, "guards", &a).await;
    let versions = s.config_map_versions().await;
    let html = Bytes::from_static(b"<!DOCTYPE html><html>Rate limited</html>");
    let cases: [(&str, Bytes, Reason); 4] = [
        (
            "a map dropping 60% of the models",
            small_map(80, &[]),
            Reason::ShrinkGuard,
        ),
        (
            "every price zeroed",
            Bytes::from(zero_prices(&a)),
            Reason::PriceGuard,
        ),
        ("every price x1e6", times_a_million(&a), Reason::PriceGuard),
        ("an HTML body", html, Reason::InvalidMap),
    ];
    for (n, (what, map, reason)) in cases.into_iter().enumerate() {
        source.set(Answer::Map(map.clone()));
        let status = s.sync_now(&format!("refused-{n}")).await;
        let ready = assert_ready(&status, ("False", reason), what);
        let digest = sha256_digest(&map);
        let offer = format!("{ACCEPT_DIGEST_ANNOTATION}={digest}");
        match reason {
            // A structure rule: no annotation lets such a map through.
            Reason::InvalidMap => {
                assert!(
                    ready.message.starts_with("invalid map"),
                    "{what}: {}",
                    ready.message
                );
                assert!(
                    !ready.message.contains(ACCEPT_DIGEST_ANNOTATION),
                    "{what}: {}",
                    ready.message
                );
            }
            _ => {
                assert!(
                    ready.message.contains(&format!("map {digest} is refused")),
                    "{what}: {}",
                    ready.message
                );
                assert!(ready.message.contains(&offer), "{what}: {}", ready.message);
            }
        }
        assert_eq!(
            status.artifact.expect("an artifact").digest,
            sha256_digest(&a),
            "{what}: the artifact is the last good map"
        );
        assert_eq!(
            s.config_map_versions().await,
            versions,
            "{what}: nothing written"
        );
    }
    assert!(s.holds(&a).await);
    s.wait_served(&a).await;
}

for_both_kinds!(each_guard_refuses_and_keeps_the_last_good_map);

// 5. A refused map accepted on purpose.

async fn a_refused_map_is_accepted_by_annotation(kind: Kind) {
    let (s, source) = synced(kind, "accept", &map_a()).await;
    let shrunk = small_map(80, &[]);
    source.set(Answer::Map(shrunk.clone()));
    s.sync_now("shrunk").await;
    s.wait_ready("False", Reason::ShrinkGuard).await;
    let digest = sha256_digest(&shrunk);
    s.annotate(json!({
        ACCEPT_DIGEST_ANNOTATION: digest,
        SYNC_REQUESTED_AT_ANNOTATION: "accept-it",
    }))
    .await;
    let status = s.wait_handled("accept-it").await;
    assert_ready(&status, ("True", Reason::Synced), "accepted by annotation");
    assert_eq!(status.artifact.expect("an artifact").digest, digest);
    assert_eq!(
        status.last_accepted_digest.as_deref(),
        Some(digest.as_str())
    );
    s.wait_held(&shrunk).await;
    s.wait_served(&shrunk).await;
    s.wait_event(EventReason::MapAccepted.as_str(), &digest)
        .await;
}

for_both_kinds!(a_refused_map_is_accepted_by_annotation);

// 6. Rejecting the published map: the one scenario where the kinds differ by design.

async fn rejecting_the_published_map(kind: Kind) {
    let a = map_a();
    let (s, source) = synced(kind, "reject", &a).await;
    let b = small_map(200, &["model-to-reject"]);
    source.set(Answer::Map(b.clone()));
    s.sync_now("b").await;
    s.wait_artifact(&b).await;
    s.wait_held(&b).await;
    // The source keeps serving B; a sync is requested with the annotation, so the handled
    // request shows the annotated object was reconciled.
    s.annotate(json!({
        REJECT_DIGEST_ANNOTATION: sha256_digest(&b),
        SYNC_REQUESTED_AT_ANNOTATION: "after-the-reject",
    }))
    .await;
    let status = s.wait_handled("after-the-reject").await;
    // With a history ring the previous map comes back and B is refused from now on;
    // without one there is nothing to restore, and the annotation is not acted on.
    let (ready, published, rejected) = match kind.keeps_history() {
        true => (("False", Reason::Rejected), &a, vec![sha256_digest(&b)]),
        false => (("True", Reason::Synced), &b, Vec::new()),
    };
    assert_ready(&status, ready, "after the reject");
    assert_eq!(
        status.artifact.expect("an artifact").digest,
        sha256_digest(published)
    );
    assert_eq!(status.rejected_digests, rejected);
    s.wait_held(published).await;
    s.wait_served(published).await;
}

for_both_kinds!(rejecting_the_published_map);

// 7. Suspended.

async fn suspended_handles_no_sync_request(kind: Kind) {
    let a = map_a();
    let (s, source) = synced(kind, "suspended", &a).await;
    let synced = s.status().await.unwrap();
    let fetched = source.received();
    // Suspended and a sync request in one write: the reconcile that records the new
    // generation has seen the request too.
    let generation = s
        .patch(json!({
            "metadata": {"annotations": {SYNC_REQUESTED_AT_ANNOTATION: "while-suspended"}},
            "spec": {"suspend": true},
        }))
        .await
        .metadata
        .generation;
    let status = s
        .wait_status("suspended at the new generation", |status| {
            status.observed_generation == generation
                && ready(status).is_some_and(|r| r.reason == Reason::Suspended.as_str())
        })
        .await;
    let ready_now = ready(&status).expect("Ready");
    assert_eq!(
        ready_now.status, "True",
        "Ready keeps its status: {}",
        ready_now.message
    );
    assert!(
        ready_now.message.contains("suspended"),
        "{}",
        ready_now.message
    );
    assert_eq!(status.next_sync_time, None, "nothing is scheduled");
    assert_eq!(
        status.last_handled_sync_request, synced.last_handled_sync_request,
        "the request is not handled while suspended"
    );
    assert_eq!(
        source.received(),
        fetched,
        "nothing fetched while suspended"
    );
    assert_eq!(status.artifact, synced.artifact);
    assert!(s.holds(&a).await);

    // Resumed: the request is handled.
    s.patch_spec(json!({"suspend": false})).await;
    let status = s.wait_handled("while-suspended").await;
    assert_eq!(
        ready(&status).map(|r| r.reason.as_str()),
        Some("Synced"),
        "{}",
        describe_ready(&status)
    );
    assert!(source.received() > fetched);
}

for_both_kinds!(suspended_handles_no_sync_request);

// 8. An invalid spec the API server let through.

async fn an_invalid_interval_fetches_nothing(kind: Kind) {
    let (s, source) = on_source(kind, "invalid-spec", &map_a(), json!({"interval": "30s"})).await;
    let status = s.wait_ready("False", Reason::InvalidSpec).await;
    assert_eq!(
        ready(&status).unwrap().message,
        "spec.interval is invalid: must be at least 1m"
    );
    assert_eq!(status.next_sync_time, None, "nothing is scheduled");
    assert_eq!(source.received(), 0, "nothing was fetched");
    assert!(
        s.held().await.iter().all(Option::is_none),
        "no ConfigMap was written"
    );
}

for_both_kinds!(an_invalid_interval_fetches_nothing);

// 9. The API server refuses the status write that records the new map as pending.

/// The label that makes the policy of [`DenyPending`] apply to an object.
const DENY_PENDING_LABEL: &str = "kinds-test/deny-pending";

/// A ValidatingAdmissionPolicy (and its binding) that refuses every status update of a
/// costmap.dev object labelled [`DENY_PENDING_LABEL`]=`name` that sets
/// `status.pendingArtifact`.
struct DenyPending {
    client: Client,
    name: String,
}

impl DenyPending {
    async fn create(client: &Client, name: &str) -> DenyPending {
        let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": ["costmap.dev"],
                    "apiVersions": ["*"],
                    "operations": ["UPDATE"],
                    "resources": ["modelcostmapsyncs/status", "clustermodelcostmapsyncs/status"],
                }]},
                "validations": [{
                    "expression": "!has(object.status) || !has(object.status.pendingArtifact)",
                    "message": "kinds test: no pending map may be recorded",
                }],
            },
        }))
        .unwrap();
        let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"objectSelector": {"matchLabels": {DENY_PENDING_LABEL: name}}},
            },
        }))
        .unwrap();
        Api::<ValidatingAdmissionPolicy>::all(client.clone())
            .create(&PostParams::default(), &policy)
            .await
            .expect("create the ValidatingAdmissionPolicy");
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .expect("create the ValidatingAdmissionPolicyBinding");
        DenyPending {
            client: client.clone(),
            name: name.to_owned(),
        }
    }

    async fn delete(&self) {
        Api::<ValidatingAdmissionPolicyBinding>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await
            .expect("delete the binding");
        Api::<ValidatingAdmissionPolicy>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await
            .expect("delete the policy");
    }
}

/// Whether the API server takes a status write of `s` that records a pending map (a dry
/// run: nothing is stored).
async fn takes_a_pending_map(s: &Subject) -> bool {
    let artifact = s.raw_status().await["artifact"].clone();
    s.would_take_status(json!({"pendingArtifact": artifact}))
        .await
}

async fn a_refused_status_write_is_write_failed(kind: Kind) {
    let a = map_a();
    let (s, source) = synced(kind, "status-refused", &a).await;
    let versions = s.config_map_versions().await;
    s.patch(json!({"metadata": {"labels": {DENY_PENDING_LABEL: s.name}}}))
        .await;
    let policy = DenyPending::create(&s.client, &s.name).await;
    eventually("the policy to refuse a pending map", || async {
        (!takes_a_pending_map(&s).await).then_some(())
    })
    .await;

    let b = small_map(200, &["model-behind-a-policy"]);
    source.set(Answer::Map(b.clone()));
    s.request_sync("refused-write").await;
    let status = s.wait_ready("False", Reason::WriteFailed).await;
    let message = &ready(&status).unwrap().message;
    assert!(message.contains("writing status"), "{message}");
    s.assert_kept(&status, &a, &versions, "a refused status write")
        .await;

    // The policy gone, the next requested sync publishes B.
    policy.delete().await;
    eventually("the API server to take a pending map again", || async {
        takes_a_pending_map(&s).await.then_some(())
    })
    .await;
    let status = s.sync_now("written").await;
    assert_eq!(
        status.artifact.as_ref().map(|a| a.digest.clone()),
        Some(sha256_digest(&b)),
        "{}",
        describe_ready(&status)
    );
    s.wait_ready("True", Reason::Synced).await;
    s.wait_held(&b).await;
    s.wait_served(&b).await;
}

for_both_kinds!(a_refused_status_write_is_write_failed);

// 10. After a spec change, the source is asked again.

async fn a_new_spec_asks_the_source_again(kind: Kind) {
    let a = map_a();
    let (s, source) = synced(kind, "new-spec", &a).await;
    let asked_before = source.served().len();
    let generation = s.patch_spec(json!({"validation": {"minModels": 60}})).await;
    eventually("a fetch for the new spec", || async {
        source.served().get(asked_before).cloned()
    })
    .await;
    let status = s
        .wait_status("the new generation synced", |status| {
            status.observed_generation == generation
                && ready(status).is_some_and(|r| r.reason == Reason::Synced.as_str())
        })
        .await;
    assert_eq!(status.artifact.unwrap().digest, sha256_digest(&a));
}

for_both_kinds!(a_new_spec_asks_the_source_again);

// 10b. The same rule where the spec names another source.

async fn a_new_source_is_not_sent_the_old_etag(kind: Kind) {
    let a = map_a();
    let (s, _old) = synced(kind, "new-source", &a).await;
    let mirrored = small_map(200, &["model-from-the-mirror"]);
    let mirror = Source::start(Answer::Map(mirrored.clone())).await;
    s.patch_spec(json!({"source": {"url": mirror.url}})).await;
    let asked = eventually("a fetch from the new source", || async {
        mirror.served().first().cloned()
    })
    .await;
    assert_eq!(
        asked.headers.get(IF_NONE_MATCH),
        None,
        "the new source was sent the old source's ETag"
    );
    s.wait_artifact(&mirrored).await;
    s.wait_held(&mirrored).await;
}

for_both_kinds!(a_new_source_is_not_sent_the_old_etag);

// 10c. A new source that fails: the ConfigMaps keep the map, and the source it came from.

async fn a_failing_new_source_writes_nothing(kind: Kind) {
    let a = map_a();
    let (s, _old) = synced(kind, "failing-source", &a).await;
    let versions = s.config_map_versions().await;
    let down = Source::start(Answer::Status(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from_static(b"down"),
    ))
    .await;
    let generation = s.patch_spec(json!({"source": {"url": down.url}})).await;
    let status = s
        .wait_status("an attempt of the new spec", |status| {
            status.observed_generation == generation
        })
        .await;
    assert_ready(
        &status,
        ("False", Reason::FetchFailed),
        "a failing new source",
    );
    s.assert_kept(&status, &a, &versions, "a failing new source")
        .await;
}

for_both_kinds!(a_failing_new_source_writes_nothing);

// 11. What GitOps tools show in each state: kstatus, with the library Flux and Config Sync
// use, and the Argo CD health check we ship, run by the Lua runtime Argo CD embeds.

async fn gitops_tools_read_each_state(kind: Kind) {
    let a = map_a();
    let (s, source) = synced(kind, "gitops-health", &a).await;
    assert_health(&s, kind, ("Current", "Healthy"), "synced").await;

    // A requested sync in flight: the source takes its time.
    source.set(Answer::Delayed(
        std::time::Duration::from_secs(8),
        Box::new(Answer::Map(a.clone())),
    ));
    s.request_sync("slow").await;
    s.wait_status("Reconciling=True", |status| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Reconciling" && c.status == "True")
    })
    .await;
    assert_health(
        &s,
        kind,
        ("InProgress", "Progressing"),
        "a requested sync in flight",
    )
    .await;
    // A new spec while that sync runs: not observed until the sync after it.
    let generation = s.patch_spec(json!({"validation": {"minModels": 60}})).await;
    assert_health(
        &s,
        kind,
        ("InProgress", "Progressing"),
        "a new generation not yet observed",
    )
    .await;
    let status = s
        .wait_status("the new generation synced", |status| {
            status.observed_generation == generation
                && ready(status).is_some_and(|c| c.status == "True")
                && status.conditions.iter().all(|c| c.type_ != "Reconciling")
        })
        .await;
    assert_ready(&status, ("True", Reason::Synced), "after the slow sync");
    assert_health(&s, kind, ("Current", "Healthy"), "synced again").await;

    // A transient failure, the last good map still served: in progress, not failed.
    source.set(Answer::Status(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from_static(b"down"),
    ));
    let status = s.sync_now("down").await;
    assert_ready(
        &status,
        ("False", Reason::FetchFailed),
        "a transient failure",
    );
    assert_health(
        &s,
        kind,
        ("InProgress", "Progressing"),
        "a transient failure",
    )
    .await;

    // A guard refusal: only a person can fix it.
    source.set(Answer::Map(times_a_million(&a)));
    let status = s.sync_now("refused").await;
    assert_ready(&status, ("False", Reason::PriceGuard), "a guard refusal");
    assert_health(&s, kind, ("Failed", "Degraded"), "a guard refusal").await;

    // Suspended: Argo CD says so; kstatus has no such state and keeps the refusal's Failed.
    let generation = s.patch_spec(json!({"suspend": true})).await;
    s.wait_status("suspended", |status| {
        status.observed_generation == generation
    })
    .await;
    assert_health(
        &s,
        kind,
        ("Failed", "Suspended"),
        "suspended after a refusal",
    )
    .await;
}

for_both_kinds!(gitops_tools_read_each_state);

/// Asserts what kstatus and the Argo CD check say of the object now.
async fn assert_health(s: &Subject, kind: Kind, expected: (&str, &str), when: &str) {
    let (kstatus, argocd) = health(s, kind).await;
    assert_eq!((kstatus.as_str(), argocd.as_str()), expected, "{when}");
}

/// What kstatus and the shipped Argo CD health check say of the object as it is now.
async fn health(s: &Subject, kind: Kind) -> (String, String) {
    let object = serde_json::to_string(&s.get().await).unwrap();
    let snippet: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(
            testenv::workspace_root().join("examples/gitops/argocd/argocd-cm-health.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let key = format!(
        "resource.customizations.health.costmap.dev_{}",
        kind.as_str()
    );
    let lua = snippet["data"][key.as_str()]
        .as_str()
        .unwrap_or_else(|| panic!("argocd-cm-health.yaml has no {key}"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("health.lua"), lua).unwrap();
    let binary = testenv::ensure_health().unwrap().join("costmap-health");
    let mut child = std::process::Command::new(binary)
        .arg("--lua")
        .arg(dir.path().join("health.lua"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(object.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "costmap-health failed");
    let line: Value = serde_json::from_slice(&output.stdout).unwrap();
    let text = |field: &str| line[field].as_str().unwrap_or_default().to_owned();
    eprintln!(
        "{}: kstatus {} ({}), Argo CD {} ({})",
        kind.as_str(),
        text("kstatus"),
        text("kstatusMessage"),
        text("argocd"),
        text("argocdMessage")
    );
    (text("kstatus"), text("argocd"))
}
