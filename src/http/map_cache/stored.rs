//! What a managed ConfigMap holds, as the cache keeps it: its maps, the gzips not
//! decompressed yet and its chunks; and the maps held once by their gzip's hash, however many
//! ConfigMaps hold them. Anyone who may write a ConfigMap may label it as ours, so nothing
//! here is decompressed until a known object owns it (see [`super::Inner`]).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::api::{ClusterModelCostMapSync, ModelCostMapSync};
use crate::http::maps::ServedMap;
use crate::layout::HISTORY_OF_LABEL;
use crate::layout::gzip::GunzipError;

pub(super) mod chunked;

/// The maps held, by the sha256 of their gzip: a thousand ConfigMaps with the same map are
/// decompressed (to check the digest) and held once.
#[derive(Default)]
pub(super) struct ServedByGzip {
    pub(super) held: std::sync::Mutex<HashMap<[u8; 32], std::sync::Weak<ServedMap>>>,
    /// How many gzips were decompressed, ever.
    pub(super) decompressed: std::sync::atomic::AtomicU64,
}

impl ServedByGzip {
    /// The map this gzip holds: the one held already, or decompressed (at most
    /// `max_bytes`) and held.
    pub(super) fn served(&self, gz: &Bytes, max_bytes: u64) -> Result<Arc<ServedMap>, GunzipError> {
        let key: [u8; 32] = Sha256::digest(gz).into();
        if let Some(map) = crate::locks::lock(&self.held)
            .get(&key)
            .and_then(std::sync::Weak::upgrade)
        {
            return Ok(map);
        }
        // Not under the lock: other ConfigMaps' maps are looked up meanwhile.
        self.decompressed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let map = Arc::new(ServedMap::from_gzip(gz.clone(), max_bytes)?);
        let mut held = crate::locks::lock(&self.held);
        held.retain(|_, map| map.strong_count() > 0);
        if let Some(first) = held.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(first);
        }
        held.insert(key, Arc::downgrade(&map));
        Ok(map)
    }
}

/// The maps of one ConfigMap, and the ModelCostMapSync (or ClusterModelCostMapSync) that
/// owns it.
#[derive(Debug, Clone)]
pub(super) struct StoredMaps {
    pub(super) owner: String,
    /// The owner is a ClusterModelCostMapSync.
    pub(super) cluster: bool,
    pub(super) owner_uid: String,
    /// By key (file name without `.gz`).
    pub(super) maps: Vec<(String, Arc<ServedMap>)>,
    /// The gzips not decompressed (yet): no known object owns the ConfigMap, so it costs
    /// nothing until one does.
    pub(super) pending: Vec<(String, Bytes)>,
    /// The ConfigMap's uid and resourceVersion: a gzip that failed is not tried again
    /// until the ConfigMap changes.
    pub(super) version: (String, String),
    /// A gzip of it failed to decompress.
    pub(super) failed: bool,
    /// The chunks it holds of a map stored in chunks.
    pub(super) chunks: Vec<chunked::ChunkPart>,
    /// On a first ConfigMap: the maps its chunk set puts together, by key.
    pub(super) assembled: Vec<(String, Arc<ServedMap>)>,
}

/// The ModelCostMapSync or ClusterModelCostMapSync that controls `cm`.
pub(super) fn owner_of(cm: &ConfigMap) -> Option<&OwnerReference> {
    cm.owner_references().iter().find(|owner| {
        let kind = [
            ModelCostMapSync::kind(&()),
            ClusterModelCostMapSync::kind(&()),
        ];
        kind.contains(&owner.kind.as_str().into()) && owner.controller == Some(true)
    })
}

/// What a managed ConfigMap holds, its gzips not decompressed yet (see [`decompress`]):
/// anyone who may write a ConfigMap may label it as ours.
pub(super) fn stored_maps(cm: &ConfigMap) -> Option<StoredMaps> {
    // The history ring holds earlier maps for rollback; the endpoint serves the target's.
    if cm.labels().contains_key(HISTORY_OF_LABEL) {
        return None;
    }
    let owner = owner_of(cm)?;
    let pending = cm
        .binary_data
        .iter()
        .flatten()
        .filter_map(|(gz_key, gz)| {
            let key = gz_key.strip_suffix(".gz")?;
            Some((key.to_owned(), Bytes::copy_from_slice(&gz.0)))
        })
        .collect();
    Some(StoredMaps {
        owner: owner.name.clone(),
        cluster: owner.kind == ClusterModelCostMapSync::kind(&()),
        owner_uid: owner.uid.clone(),
        maps: Vec::new(),
        pending,
        version: (
            cm.uid().unwrap_or_default(),
            cm.resource_version().unwrap_or_default(),
        ),
        failed: false,
        chunks: chunked::chunk_parts(cm),
        assembled: Vec::new(),
    })
}

/// Decompresses the pending gzips of `stored` (each at most `max_bytes`), with the digest
/// of their bytes as they are (the annotations are not trusted).
pub(super) fn decompress(stored: &mut StoredMaps, max_bytes: u64, gzips: &ServedByGzip) {
    for (key, gz) in std::mem::take(&mut stored.pending) {
        match gzips.served(&gz, max_bytes) {
            Ok(map) => stored.maps.push((key, map)),
            Err(err) => {
                debug!(owner = %stored.owner, %err, "not serving this ConfigMap's map");
                stored.failed = true;
            }
        }
    }
}
