//! A map whose gzip does not fit one ConfigMap, on a real kube-apiserver: the real map ten
//! times over (35 MB, 1.8 MB gzipped) is stored in numbered chunk ConfigMaps, served byte
//! exact from them, put together by the agent from a projected volume, kept in history, and
//! a chunk set that mixes two maps is never served.

mod common;

use std::io::Read;
use std::sync::{Arc, Mutex};

use axum::http::{StatusCode, header};
use common::agent::Agent;
use common::big_map::{big_map, gzip_ratio, ten_times_real};
use common::kubelet::ConfigMapVolume;
use common::*;
use costmap_operator::api::{DEFAULT_KEY, EventReason, REJECT_DIGEST_ANNOTATION, Reason};
use costmap_operator::digest::sha256_digest;
use costmap_operator::layout::chunks::{CHUNK_BYTES, MAX_CONFIG_MAP_PAYLOAD, split_gz};
use costmap_operator::layout::gzip::StoredMap;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The chunk ConfigMaps of `name` the first names, first first.
async fn chunk_config_maps(s: &Scenario, name: &str) -> Vec<ConfigMap> {
    let api = config_maps(&s.client, &s.ns);
    let first = api.get(name).await.expect("the first ConfigMap");
    let count: usize = annotations(&first)["costmap.dev/chunks"].parse().unwrap();
    let mut all = vec![first];
    for index in 1..count {
        all.push(api.get(&format!("{name}-{index}")).await.expect("a chunk"));
    }
    all
}

/// The gzip the chunks hold, put together.
fn joined(chunks: &[ConfigMap]) -> Vec<u8> {
    chunks
        .iter()
        .enumerate()
        .flat_map(|(index, cm)| {
            cm.binary_data.as_ref().unwrap()[&format!("{DEFAULT_KEY}.gz.{index:03}")]
                .0
                .clone()
        })
        .collect()
}

fn gunzip(gz: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut plain)
        .unwrap();
    plain
}

/// The map the endpoint serves, gzipped as sent, with its ETag; None for no 200.
async fn served_gzip(url: &str) -> Option<(String, Vec<u8>)> {
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let response = client
        .get(url)
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
    let etag = response.headers()[header::ETAG]
        .to_str()
        .unwrap()
        .to_owned();
    Some((etag, response.bytes().await.ok()?.to_vec()))
}

fn etag_of(map: &[u8]) -> String {
    format!("\"{}\"", sha256_digest(map))
}

#[tokio::test]
async fn the_35_mb_map_syncs_in_chunks_and_is_served_byte_exact() {
    let real = real_map("1.110.2");
    let big = ten_times_real();
    assert!(
        (34_000_000..36_000_000).contains(&big.len()),
        "{} bytes",
        big.len()
    );
    let (real_ratio, big_ratio) = (gzip_ratio(&real), gzip_ratio(&big));
    assert!(
        (big_ratio / real_ratio - 1.0).abs() < 0.15,
        "compresses like the real map: {big_ratio:.4} vs {real_ratio:.4}"
    );
    let s = Scenario::new("chunks", Answer::Map(big.clone()), json!({})).await;
    let sync = s.wait_ready("True", Reason::Synced).await;
    let artifact = sync.status.unwrap().artifact.unwrap();
    assert_eq!(artifact.size, big.len() as i64);
    assert_eq!(artifact.digest, sha256_digest(&big));

    let chunks = chunk_config_maps(&s, "litellm").await;
    let gz = StoredMap::from_bytes(big.to_vec()).gz;
    assert!(gz.len() > MAX_CONFIG_MAP_PAYLOAD);
    assert_eq!(chunks.len(), gz.len().div_ceil(CHUNK_BYTES));
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    for (index, cm) in chunks.iter().enumerate() {
        let expected = if index == 0 {
            "litellm".to_owned()
        } else {
            format!("litellm-{index}")
        };
        assert_eq!(cm.name_any(), expected);
        assert_eq!(annotations(cm)["costmap.dev/digest"], artifact.digest);
        assert_eq!(
            cm.labels()["app.kubernetes.io/managed-by"],
            "costmap-operator"
        );
        let owner = &cm.owner_references()[0];
        assert_eq!(
            (owner.name.as_str(), owner.controller),
            ("litellm", Some(true))
        );
        assert_eq!(
            cm.binary_data.as_ref().unwrap().len(),
            1,
            "{expected} holds one chunk"
        );
    }
    assert!(
        !chunks[0]
            .binary_data
            .as_ref()
            .unwrap()
            .contains_key(&format!("{DEFAULT_KEY}.gz")),
        "no whole gz key beside the chunks"
    );
    assert_eq!(gunzip(&joined(&chunks)), big.as_ref(), "the exact bytes");

    // The endpoint: plain, gzip, ETag, 304.
    let plain = reqwest::get(s.map_url()).await.unwrap();
    assert_eq!(plain.headers()[header::ETAG], etag_of(&big).as_str());
    assert_eq!(plain.bytes().await.unwrap(), big);
    let (etag, served_gz) = served_gzip(&s.map_url()).await.expect("served");
    assert_eq!(etag, etag_of(&big));
    assert_eq!(
        served_gz,
        joined(&chunks),
        "the stored gzip, not recompressed"
    );
    let not_modified = reqwest::Client::new()
        .get(s.map_url())
        .header(header::IF_NONE_MATCH, etag_of(&big))
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);

    // The agent, on a projected volume of the chunk ConfigMaps, serving only what status
    // names.
    let dir = tempfile::tempdir().unwrap();
    let mut volume = ConfigMapVolume::new(dir.path());
    volume.mount_projected(&chunks);
    let agent = Agent::start_verifying(
        dir.path(),
        &control_plane().kubeconfig,
        &format!("{}/litellm", s.ns),
    );
    let served = eventually("the agent serves the map from chunks", || agent.map()).await;
    assert_eq!(served, big, "byte exact");

    // A volume whose ConfigMaps the kubelet updated one by one: chunk 1 of another map.
    let other = StoredMap::from_bytes(big_map(&real_map("1.108.0"), 9).to_vec()).gz;
    let mut mixed = chunks.clone();
    mixed[1].binary_data.as_mut().unwrap().insert(
        format!("{DEFAULT_KEY}.gz.001"),
        ByteString(split_gz(&other)[1].to_vec()),
    );
    let checks = agent.status().await["checks"].as_u64().unwrap();
    volume.mount_projected(&mixed);
    let status = eventually("the agent refuses the mixed chunks", || async {
        let status = agent.wait_looked_since(checks).await;
        status["lastProblem"]
            .as_str()?
            .contains("mix two maps")
            .then_some(status)
    })
    .await;
    assert_eq!(status["digest"], artifact.digest, "still serving the map");
    assert_eq!(agent.map().await.unwrap(), big);
    s.operator.stop().await;
}

#[tokio::test]
async fn a_half_written_chunk_set_is_never_served() {
    let old = ten_times_real();
    let s = Scenario::new("halfwritten", Answer::Map(old.clone()), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;
    let old_chunks = chunk_config_maps(&s, "litellm").await;
    let old_gz = joined(&old_chunks);

    // Everything the endpoint answers, from now on, checked: its gzip makes exactly the
    // map its ETag names.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = CancellationToken::new();
    let poller = {
        let (url, seen, stop) = (s.map_url(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            // One more answer once told to stop: it is asked for after the new map was
            // seen served, so the new map is among those checked.
            loop {
                let stopping = stop.is_cancelled();
                let (etag, gz) = served_gzip(&url).await.expect("always a map");
                let made = tokio::task::spawn_blocking(move || etag_of(&gunzip(&gz)))
                    .await
                    .unwrap();
                assert_eq!(made, etag, "a gzip that is not its map");
                seen.lock().unwrap().push(etag);
                if stopping {
                    break;
                }
            }
        })
    };

    // A chunk edited to hold another map's bytes (annotations kept): the set mixes two
    // maps. The endpoint keeps the whole map, and the operator puts the chunk back.
    let other = big_map(&real_map("1.108.0"), 9);
    let other_gz = StoredMap::from_bytes(other.to_vec()).gz;
    let forged = json!({"binaryData": {
        format!("{DEFAULT_KEY}.gz.001"): ByteString(split_gz(&other_gz)[1].to_vec()),
    }});
    config_maps(&s.client, &s.ns)
        .patch("litellm-1", &PatchParams::default(), &Patch::Merge(&forged))
        .await
        .expect("editing a chunk");
    wait_event(
        &s.client,
        &s.ns,
        EventReason::Restored.as_str(),
        "ConfigMap litellm-1 was edited",
    )
    .await;
    assert_eq!(joined(&chunk_config_maps(&s, "litellm").await), old_gz);

    // A real update: the operator writes the chunks, then the first.
    s.source.set(Answer::Map(other.clone()));
    let sync = s.sync_now("update").await;
    assert_eq!(
        sync.status.unwrap().artifact.unwrap().digest,
        sha256_digest(&other)
    );
    eventually("the endpoint serves the new map", || async {
        let (etag, _) = served_gzip(&s.map_url()).await?;
        (etag == etag_of(&other)).then_some(())
    })
    .await;
    stop.cancel();
    poller.await.expect("every answer was a whole map");
    let seen = seen.lock().unwrap().clone();
    let (old_etag, new_etag) = (etag_of(&old), etag_of(&other));
    assert!(
        seen.iter()
            .all(|etag| etag == &old_etag || etag == &new_etag),
        "only the two whole maps were served"
    );
    let first_new = seen.iter().position(|etag| etag == &new_etag);
    assert!(
        first_new.is_none_or(|at| seen[at..].iter().all(|etag| etag == &new_etag)),
        "never back to the old map once the new one was served"
    );
    assert!(
        seen.contains(&old_etag) && seen.contains(&new_etag),
        "answers checked before and after the update: {} (old {}, new {})",
        seen.len(),
        seen.contains(&old_etag),
        seen.contains(&new_etag)
    );
    s.operator.stop().await;
}

#[tokio::test]
async fn the_history_ring_keeps_a_chunked_map_in_chunks_and_restores_it() {
    let first = big_map(&real_map("1.108.0"), 9);
    let second = ten_times_real();
    let s = Scenario::new("chunkhistory", Answer::Map(first.clone()), json!({})).await;
    s.wait_ready("True", Reason::Synced).await;
    s.source.set(Answer::Map(second.clone()));
    let sync = s.sync_now("second").await;
    let history = sync.status.unwrap().history;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].digest, sha256_digest(&second));
    assert_eq!(history[1].digest, sha256_digest(&first));

    // Kept in chunks, each chunk labelled as history (the endpoint serves none of them).
    let slot = history[1].config_map.clone();
    let kept = chunk_config_maps(&s, &slot).await;
    assert!(kept.len() >= 2, "kept in chunks");
    for cm in &kept {
        assert_eq!(cm.labels()["costmap.dev/history-of"], "litellm");
    }
    assert_eq!(gunzip(&joined(&kept)), first.as_ref());

    // Rolling back reads it back from its chunks, checks it and publishes it.
    let reject = json!({"metadata": {"annotations": {
        REJECT_DIGEST_ANNOTATION: sha256_digest(&second),
    }}});
    syncs(&s.client, &s.ns)
        .patch("litellm", &PatchParams::default(), &Patch::Merge(&reject))
        .await
        .expect("annotating");
    let rolled_back = s.wait_ready("False", Reason::Rejected).await;
    assert_eq!(
        rolled_back.status.unwrap().artifact.unwrap().digest,
        sha256_digest(&first)
    );
    eventually("the endpoint serves the restored map", || async {
        let (etag, gz) = served_gzip(&s.map_url()).await?;
        (etag == etag_of(&first)).then_some(gz)
    })
    .await;
    let plain = reqwest::get(s.map_url())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(plain, first, "byte exact");
    assert_eq!(
        gunzip(&joined(&chunk_config_maps(&s, "litellm").await)),
        first.as_ref()
    );
    s.operator.stop().await;
}
