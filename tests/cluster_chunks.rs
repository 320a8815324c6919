//! A ClusterModelCostMapSync whose map needs chunks (the real map ten times over, 35 MB):
//! every selected namespace gets the chunk ConfigMaps, the endpoint serves each copy byte
//! exact, an edited chunk is put back, and a smaller map is whole again in one ConfigMap.
//!
//! A test binary of its own: it runs a cluster-wide operator, and two of those on one
//! control plane would both reconcile every cluster object.

mod common;

use std::collections::BTreeMap;
use std::io::Read;

use common::big_map::ten_times_real;
use common::*;
use costmap_operator::api::{DEFAULT_KEY, SYNC_REQUESTED_AT_ANNOTATION};
use costmap_operator::digest::sha256_digest;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const NAME: &str = "big";

/// The ConfigMaps of the copy in `namespace`, first first, when the first names its chunks.
async fn chunk_set(client: &Client, namespace: &str) -> Option<Vec<ConfigMap>> {
    let api = config_maps(client, namespace);
    let first = api.get_opt(NAME).await.ok()??;
    let count: usize = first
        .annotations()
        .get("costmap.dev/chunks")?
        .parse()
        .ok()?;
    let mut all = vec![first];
    for index in 1..count {
        all.push(api.get_opt(&format!("{NAME}-{index}")).await.ok()??);
    }
    Some(all)
}

/// The map the chunks hold, put together and gunzipped; None when one lacks its chunk.
fn joined(chunks: &[ConfigMap]) -> Option<Vec<u8>> {
    let mut gz = Vec::new();
    for (index, cm) in chunks.iter().enumerate() {
        let key = format!("{DEFAULT_KEY}.gz.{index:03}");
        gz.extend_from_slice(&cm.binary_data.as_ref()?.get(&key)?.0);
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut plain)
        .ok()?;
    Some(plain)
}

async fn served(operator: &Operator, namespace: &str) -> Option<Vec<u8>> {
    served_map(operator, namespace, NAME).await
}

#[tokio::test]
async fn a_cluster_sync_writes_a_map_in_chunks_into_every_namespace() {
    let client = client().await;
    let operator = Operator::start_cluster_wide(&client);
    let label = format!("costmap-chunks-{}", std::process::id());
    let labels = BTreeMap::from([(label, "yes".to_owned())]);
    let namespaces = ["a", "b"].map(|n| format!("cluster-chunks-{n}-{}", std::process::id()));
    for name in &namespaces {
        labelled_namespace(&client, name, &labels).await;
    }
    let big = ten_times_real();
    let digest = sha256_digest(&big);
    let source = Source::start(Answer::Map(big.clone())).await;
    create_cluster_sync(&client, NAME, &source.url, &labels).await;

    for namespace in &namespaces {
        let chunks = eventually(&format!("{namespace} holds the map in chunks"), || async {
            let chunks = chunk_set(&client, namespace).await?;
            (joined(&chunks)? == big.as_ref()).then_some(chunks)
        })
        .await;
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        for cm in &chunks {
            assert_eq!(cm.annotations()["costmap.dev/digest"], digest);
            let owner = &cm.owner_references()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.controller),
                ("ClusterModelCostMapSync", NAME, Some(true))
            );
        }
        eventually(
            &format!("/maps/{namespace}/{NAME} serves the map"),
            || async { (served(&operator, namespace).await? == big.as_ref()).then_some(()) },
        )
        .await;
    }
    assert_eq!(source.received(), 1, "one fetch for every namespace");

    // An edited chunk is put back, and the copy is served whole again.
    let api = config_maps(&client, &namespaces[0]);
    let chunk = format!("{NAME}-1");
    let original = api.get(&chunk).await.unwrap().binary_data;
    let tamper = json!({"binaryData": {format!("{DEFAULT_KEY}.gz.001"): "dGFtcGVyZWQ="}});
    api.patch(&chunk, &PatchParams::default(), &Patch::Merge(&tamper))
        .await
        .expect("edit a chunk");
    eventually("the edited chunk is put back", || async {
        (api.get(&chunk).await.ok()?.binary_data == original).then_some(())
    })
    .await;
    eventually("the copy is served whole", || async {
        (served(&operator, &namespaces[0]).await? == big.as_ref()).then_some(())
    })
    .await;

    // A map that fits one ConfigMap again (nine in ten models gone, so the shrink guard
    // is told to let it through): whole in the first, no chunk layout left in it.
    let small = real_map("1.110.2");
    source.set(Answer::Map(small.clone()));
    let patch = json!({
        "metadata": {"annotations": {SYNC_REQUESTED_AT_ANNOTATION: "smaller"}},
        "spec": {"validation": {"maxRemovedPercent": 95}},
    });
    Api::<costmap_operator::api::ClusterModelCostMapSync>::all(client.clone())
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
    for namespace in &namespaces {
        let first = eventually(&format!("{namespace} holds the smaller map"), || async {
            let first = config_maps(&client, namespace).get_opt(NAME).await.ok()??;
            let whole = first
                .binary_data
                .as_ref()?
                .contains_key(&format!("{DEFAULT_KEY}.gz"));
            (whole && stored_bytes(&first, DEFAULT_KEY) == small.as_ref()).then_some(first)
        })
        .await;
        assert!(!first.annotations().contains_key("costmap.dev/chunks"));
        let binary_keys: Vec<&String> = first.binary_data.as_ref().unwrap().keys().collect();
        assert_eq!(binary_keys, [&format!("{DEFAULT_KEY}.gz")], "no chunk left");
        assert!(
            !first
                .data
                .unwrap_or_default()
                .contains_key(&format!("{DEFAULT_KEY}.gz.chunks")),
            "no manifest left"
        );
    }
    assert_eq!(source.received(), 2);
    operator.stop().await;
}
