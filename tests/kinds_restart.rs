//! The scenarios of tests/kinds.rs that stop and start the operator (an in-process operator
//! forgets everything when it stops), against both kinds, each expecting the same of both:
//!
//! | #  | scenario                    | expected of both kinds                                                 |
//! |----|-----------------------------|------------------------------------------------------------------------|
//! | 11 | the last good map lost      | every ConfigMap holding it deleted while the operator was down: a map of 80 models (the last good had 200) is refused by the count-only shrink guard, nothing written; a map of 201 is published everywhere |
//! | 12 | an interrupted write        | status names A with B pending, the ConfigMap(s) hold B, the source fails: B is adopted (Event MapUpdated "interrupted by an operator restart"), served, and guards the next map |
//!
//! Written ahead of the one sync core: on the two pipelines of commit c8772d7, scenario 11
//! fails for the cluster kind (it has no count-only guard and publishes the 80 models).
//!
//! One cluster-wide operator at a time may run on this binary's control plane, so each test
//! runs alone ([`alone`]), on a runtime of its own that ends (and its operator with it)
//! before the next test starts, even when it fails.

mod common;

/// The tests of one scenario, `<scenario>::namespaced` and `<scenario>::cluster`, each
/// alone (see [`alone`]).
macro_rules! for_both_kinds {
    ($scenario:ident) => {
        mod $scenario {
            use super::{Kind, alone};

            #[test]
            fn namespaced() {
                alone(super::$scenario(Kind::Namespaced));
            }

            #[test]
            fn cluster() {
                alone(super::$scenario(Kind::Cluster));
            }
        }
    };
}

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use axum::body::Bytes;
use axum::http::StatusCode;
use common::kinds::{Kind, Subject, describe_ready, ready};
use common::*;
use costmap_operator::api::{EventReason, Reason};
use costmap_operator::digest::sha256_digest;
use serde_json::json;

/// Runs `scenario` on a runtime of its own while no other test of this binary runs; the
/// runtime (with every task it runs: operator, source) is dropped before the next starts.
fn alone(scenario: impl Future<Output = ()>) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(scenario);
}

/// A subject of `kind` on a source serving `map`, synced once by `operator`.
async fn synced(kind: Kind, scenario: &str, operator: &Operator, map: &Bytes) -> (Subject, Source) {
    let client = client().await;
    let source = Source::start(Answer::Map(map.clone())).await;
    let s = Subject::create(
        kind,
        &client,
        &operator.base_url,
        scenario,
        &source,
        json!({}),
    )
    .await;
    s.wait_ready("True", Reason::Synced).await;
    s.wait_artifact(map).await;
    s.wait_held(map).await;
    (s, source)
}

// 11. The last good map lost while the operator was down.

async fn a_lost_last_good_map_still_guards_by_its_count(kind: Kind) {
    let client = client().await;
    let operator = Operator::start_cluster_wide(&client);
    let a = small_map(200, &[]);
    let (mut s, source) = synced(kind, "lost-map", &operator, &a).await;
    operator.stop().await;

    // Every ConfigMap that holds A goes: the target (and its history ring), or every copy.
    let deleted = s.delete_managed_config_maps().await;
    assert!(!deleted.is_empty());
    assert!(s.held().await.iter().all(Option::is_none));
    let shrunk = small_map(80, &[]);
    source.set(Answer::Map(shrunk.clone()));

    let operator = Operator::start_cluster_wide(&client);
    s.operator_url.clone_from(&operator.base_url);
    let shrunk_digest = sha256_digest(&shrunk);
    // Either outcome ends the wait: the refusal, or the shrunk map published.
    let status = s
        .wait_status("the 80-model map refused or published", |status| {
            let refused = ready(status).is_some_and(|r| r.reason == Reason::ShrinkGuard.as_str());
            let published = status
                .artifact
                .as_ref()
                .is_some_and(|a| a.digest == shrunk_digest);
            refused || published
        })
        .await;
    let message = ready(&status)
        .map(|r| r.message.clone())
        .unwrap_or_default();
    assert_eq!(
        ready(&status).map(|r| (r.status.as_str(), r.reason.as_str())),
        Some(("False", "ShrinkGuard")),
        "a map of 80 models after a lost map of 200: {}",
        describe_ready(&status)
    );
    assert!(
        message.contains("no longer in the cluster, so only its count is known"),
        "{message}"
    );
    assert!(message.contains(&shrunk_digest), "{message}");
    assert!(
        s.held().await.iter().all(Option::is_none),
        "nothing was written"
    );

    // A good map (one model more than the lost one) is published everywhere.
    let good = small_map(200, &["model-after-the-loss"]);
    source.set(Answer::Map(good.clone()));
    s.sync_now("a-good-map").await;
    let status = s.wait_ready("True", Reason::Synced).await;
    assert_eq!(status.artifact.unwrap().digest, sha256_digest(&good));
    s.wait_held(&good).await;
    s.wait_served(&good).await;
    operator.stop().await;
}

for_both_kinds!(a_lost_last_good_map_still_guards_by_its_count);

// 12. A write that an operator restart interrupted.

async fn an_interrupted_write_is_adopted_and_guards_the_next_map(kind: Kind) {
    let client = client().await;
    let operator = Operator::start_cluster_wide(&client);
    let a = small_map(200, &[]);
    let (mut s, source) = synced(kind, "interrupted", &operator, &a).await;
    let status_with_a = s.raw_status().await;
    let b = small_map(200, &["model-launched-today"]);
    source.set(Answer::Map(b.clone()));
    s.sync_now("b").await;
    let with_b = s.wait_artifact(&b).await;
    s.wait_held(&b).await;
    operator.stop().await;

    // What an operator stopped between the ConfigMap write(s) and the status write leaves:
    // every ConfigMap holds B, status (by the operator's field manager) names A with B
    // pending. The source fails from now on: the ConfigMaps are all there is.
    let mut interrupted = status_with_a;
    interrupted["pendingArtifact"] = serde_json::to_value(with_b.artifact.as_ref()).unwrap();
    s.apply_status(interrupted).await;
    let status = s.status().await.unwrap();
    assert_eq!(status.artifact.unwrap().digest, sha256_digest(&a));
    assert!(s.holds(&b).await);
    source.set(Answer::Status(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from_static(b"down"),
    ));

    let operator = Operator::start_cluster_wide(&client);
    s.operator_url.clone_from(&operator.base_url);
    let adopted = s
        .wait_status("B adopted", |status| {
            status
                .artifact
                .as_ref()
                .is_some_and(|a| a.digest == sha256_digest(&b))
                && status.pending_artifact.is_none()
        })
        .await;
    assert_eq!(adopted.artifact.unwrap().models, 201);
    s.wait_event(
        EventReason::MapUpdated.as_str(),
        "interrupted by an operator restart",
    )
    .await;
    s.wait_served(&b).await;
    assert!(s.holds(&b).await);

    // A map that drops 60% of B's models is refused against B.
    let shrunk = small_map(80, &[]);
    source.set(Answer::Map(shrunk.clone()));
    s.sync_now("shrunk").await;
    let refused = s.wait_ready("False", Reason::ShrinkGuard).await;
    let message = &ready(&refused).unwrap().message;
    assert!(
        message.contains("drops 121 of the last good map's 201"),
        "{message}"
    );
    assert_eq!(refused.artifact.unwrap().digest, sha256_digest(&b));
    assert!(s.holds(&b).await);
    s.wait_served(&b).await;
    operator.stop().await;
}

for_both_kinds!(an_interrupted_write_is_adopted_and_guards_the_next_map);
