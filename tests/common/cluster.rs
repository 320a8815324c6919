//! ClusterModelCostMapSync helpers: its copies in each namespace, and a sync request.

use costmap_operator::api::{ClusterModelCostMapSync, DEFAULT_KEY, SYNC_REQUESTED_AT_ANNOTATION};
use costmap_operator::digest::sha256_digest;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use super::{config_maps, eventually, stored_bytes};

pub fn cluster_syncs(client: &Client) -> Api<ClusterModelCostMapSync> {
    Api::all(client.clone())
}

/// The digest of the map the copy of the cluster object `name` in `namespace` holds, if it
/// is one of its copies (controller owner reference to it), read from the bytes themselves.
pub async fn held_digest(client: &Client, namespace: &str, name: &str) -> Option<String> {
    let cm: ConfigMap = config_maps(client, namespace).get_opt(name).await.ok()??;
    let owner = cm
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))?
        .clone();
    (owner.kind == "ClusterModelCostMapSync" && owner.name == name).then_some(())?;
    Some(sha256_digest(&stored_bytes(&cm, DEFAULT_KEY)))
}

/// Waits until the copy of `name` in every namespace of `namespaces` holds the map `bytes`.
pub async fn wait_held(client: &Client, name: &str, namespaces: &[&str], bytes: &[u8]) {
    let digest = sha256_digest(bytes);
    for namespace in namespaces {
        eventually(&format!("{namespace} holds {digest}"), || async {
            (held_digest(client, namespace, name).await? == digest).then_some(())
        })
        .await;
    }
}

/// Sets the sync-request annotation of the cluster object `name` to `value`.
pub async fn request_cluster_sync(client: &Client, name: &str, value: &str) {
    let patch = json!({"metadata": {"annotations": {SYNC_REQUESTED_AT_ANNOTATION: value}}});
    cluster_syncs(client)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
}

/// The Ready condition of a cluster object: (status, reason, message).
pub fn ready_of(sync: &ClusterModelCostMapSync) -> Option<(String, String, String)> {
    let ready = sync
        .status
        .as_ref()?
        .sync
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((
        ready.status.clone(),
        ready.reason.clone(),
        ready.message.clone(),
    ))
}
