//! Price integrity: real releases pass every guard with the defaults, maps whose prices are
//! broken are refused on the control plane with the ConfigMap untouched, one refused map can
//! be accepted on purpose, and `diff` says the same in a mirror's CI.

mod common;

use std::process::Command;

use axum::body::Bytes;
use common::*;
use costmap_operator::api::{ACCEPT_DIGEST_ANNOTATION, EventReason, Reason};
use costmap_operator::digest::sha256_digest;
use costmap_operator::sync::validate::guards::price_report;
use costmap_operator::sync::validate::{IndexedMap, Rules};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_costmap-operator");

/// `map` with `change` applied to every model's entry.
fn each_entry(map: &[u8], change: impl Fn(&mut serde_json::Map<String, Value>)) -> Bytes {
    let mut parsed: serde_json::Map<String, Value> = serde_json::from_slice(map).unwrap();
    for (name, entry) in parsed.iter_mut() {
        if name == "sample_spec" {
            continue;
        }
        if let Some(entry) = entry.as_object_mut() {
            change(entry);
        }
    }
    Bytes::from(serde_json::to_vec_pretty(&parsed).unwrap())
}

/// Every number under a key containing "cost", through `price`.
fn reprice(map: &[u8], price: impl Fn(&str, f64) -> f64 + Copy) -> Bytes {
    each_entry(map, |entry| {
        for (field, value) in entry.iter_mut() {
            if field.contains("cost")
                && let Some(number) = value.as_f64()
            {
                *value = json!(price(field, number));
            }
        }
    })
}

#[test]
fn every_real_transition_passes_every_guard_with_the_defaults() {
    let versions = ["1.80.0", "1.108.0", "1.110.2"];
    let maps: Vec<Bytes> = versions.iter().map(|v| real_map(v)).collect();
    for (i, j) in [(0, 1), (1, 2), (0, 2)] {
        let old = IndexedMap::read(&maps[i]).unwrap().into_summary();
        let accepted =
            costmap_operator::sync::accept(&maps[j], &Rules::default(), Some(&old), None)
                .unwrap_or_else(|err| panic!("{} -> {}: {err}", versions[i], versions[j]));
        assert!(accepted.overridden.is_empty());
        let new = IndexedMap::read(&maps[j]).unwrap().into_summary();
        let report = price_report(&new, Some(&old));
        let share = |n: usize| 100.0 * n as f64 / report.last_priced as f64;
        println!(
            "{} -> {}: {} priced models, repriced {} ({:.1}%), unpriced {} ({:.1}%); new map priced {}/{}",
            versions[i],
            versions[j],
            report.last_priced,
            report.repriced.len(),
            share(report.repriced.len()),
            report.unpriced.len(),
            share(report.unpriced.len()),
            report.priced,
            report.models
        );
        assert!(report.unpriced.is_empty(), "{:?}", report.unpriced);
        assert!(share(report.repriced.len()) < 15.0);
    }
}

/// The control plane: a first good sync, then maps with broken prices, each refused with
/// the ConfigMap untouched; the accept annotation publishes exactly the map it names.
#[tokio::test]
async fn broken_prices_are_refused_and_one_map_can_be_accepted_on_purpose() {
    let good = small_map(100, &[]);
    let s = Scenario::new("prices", Answer::Map(good.clone()), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;
    let cm_version = s.config_map().await.resource_version();

    let zeroed = reprice(&good, |_, _| 0.0);
    let emptied = each_entry(&good, serde_json::Map::clear);
    let times_a_million = reprice(&good, |_, price| price * 1e6);
    let input_zeroed = reprice(&good, |field, price| {
        if field.starts_with("input") {
            0.0
        } else {
            price
        }
    });
    for (n, (what, map, says)) in [
        ("every price zeroed", &zeroed, "lost every price"),
        (
            "every entry emptied",
            &emptied,
            "are priced, fewer than minPricedPercent 50%",
        ),
        (
            "every price x1e6",
            &times_a_million,
            "changed or lost a price, more than maxRepricedPercent 25%",
        ),
        (
            "every input price zeroed",
            &input_zeroed,
            "changed or lost a price",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        s.source.set(Answer::Map(map.clone()));
        s.sync_now(&format!("broken-{n}")).await;
        let refused = s.wait_ready("False", Reason::PriceGuard).await;
        let message = ready_condition(&refused).unwrap().message;
        assert!(message.contains(says), "{what}: {message}");
        let digest = sha256_digest(map);
        assert!(
            message.contains(&format!("map {digest} is refused")),
            "{what}: {message}"
        );
        assert!(
            message.contains(&format!("{ACCEPT_DIGEST_ANNOTATION}={digest}")),
            "{what}: {message}"
        );
        assert_eq!(
            s.config_map().await.resource_version(),
            cm_version,
            "{what}"
        );
    }
    let metrics = s.operator.metrics.encode();
    assert!(
        metrics.contains("costmap_guard_refusals_total{guard=\"max_repriced\"} 4"),
        "{metrics}"
    );

    // Accept the x1e6 map on purpose: exactly that digest is published.
    let accepted = sha256_digest(&times_a_million);
    s.source.set(Answer::Map(times_a_million.clone()));
    let patch = json!({"metadata": {"annotations": {ACCEPT_DIGEST_ANNOTATION: accepted}}});
    syncs(&s.client, &s.ns)
        .patch("litellm", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    s.sync_now("accept").await;
    let synced = s.wait_ready("True", Reason::Synced).await;
    let status = synced.status.unwrap();
    assert_eq!(status.artifact.unwrap().digest, accepted);
    assert_eq!(
        status.last_accepted_digest.as_deref(),
        Some(accepted.as_str())
    );
    assert_eq!(
        stored_bytes(&s.config_map().await, costmap_operator::api::DEFAULT_KEY),
        times_a_million.as_ref()
    );
    let note = wait_event(
        &s.client,
        &s.ns,
        EventReason::MapAccepted.as_str(),
        &accepted,
    )
    .await;
    assert!(note.contains("accepted by annotation"), "{note}");
    let change = status.last_change.unwrap();
    assert_eq!(change.repriced, 100);
    assert_eq!(change.price_changes.len(), 20);

    // The annotation still names that map: the next broken map is refused again, and the
    // refusal says the annotation names another map.
    let next = reprice(&times_a_million, |_, _| 0.0);
    s.source.set(Answer::Map(next.clone()));
    s.sync_now("next-broken").await;
    let refused = s.wait_ready("False", Reason::PriceGuard).await;
    let message = ready_condition(&refused).unwrap().message;
    assert!(
        message.contains(&format!(
            "({ACCEPT_DIGEST_ANNOTATION} names {accepted}, not this map)"
        )),
        "{message}"
    );
    s.operator.stop().await;
}

#[tokio::test]
async fn a_first_sync_of_a_map_with_every_price_zeroed_is_refused() {
    let zeroed = reprice(&small_map(100, &[]), |_, _| 0.0);
    let s = Scenario::new("prices-first", Answer::Map(zeroed), json!({})).await;
    let refused = s.wait_ready("False", Reason::PriceGuard).await;
    let message = ready_condition(&refused).unwrap().message;
    assert!(
        message.contains("only 0 of the map's 100 models (0%) are priced"),
        "{message}"
    );
    assert!(
        config_maps(&s.client, &s.ns)
            .get_opt("litellm")
            .await
            .unwrap()
            .is_none(),
        "nothing written"
    );
    s.operator.stop().await;
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .output()
        .expect("run the binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn diff_and_check_against_say_what_the_guards_would_in_a_mirror_s_ci() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_string_lossy().into_owned()
    };
    let old = write("1.108.0.json", &real_map("1.108.0"));
    let new = write("1.110.2.json", &real_map("1.110.2"));
    let zeroed = write("zeroed.json", &reprice(&real_map("1.110.2"), |_, _| 0.0));

    let (code, stdout, _) = run(&["diff", &old, &new]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("added:    688"), "{stdout}");
    assert!(
        stdout.contains("verdict: the operator would accept"),
        "{stdout}"
    );
    assert!(stdout.contains("largest price moves:"), "{stdout}");

    let (code, stdout, _) = run(&["diff", &old, &zeroed, "--output", "json"]);
    assert_eq!(code, Some(1), "{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["accepted"], false);
    let refused: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["accepts"] == false)
        .map(|check| check["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        refused,
        [
            "minPricedPercent",
            "maxUnpricedPercent",
            "maxRepricedPercent"
        ]
    );

    // A looser threshold, given as a flag, lets a big repricing through.
    let doubled = write(
        "doubled.json",
        &reprice(&real_map("1.108.0"), |_, price| price * 2.0),
    );
    assert_eq!(run(&["diff", &old, &doubled]).0, Some(1));
    assert_eq!(
        run(&["diff", &old, &doubled, "--max-repriced-percent", "100"]).0,
        Some(0)
    );

    let (code, _, stderr) = run(&["diff", &old, "/nonexistent/map.json"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("reading /nonexistent/map.json"), "{stderr}");

    let (code, stdout, _) = run(&["check", &new, "--against", &old]);
    assert_eq!(code, Some(0), "{stdout}");
    let (code, _, stderr) = run(&["check", &zeroed, "--against", &old]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("price guard:"), "{stderr}");
}
