//! What the objects' statuses vouch for: a map is served only when its bytes hash to a
//! digest its owner's status names, and only the owner the cache knows by uid.

use super::mirror::Mirror;
use super::stored::StoredMaps;
use crate::api::ModelCostMapSyncStatus;

/// The digests a ModelCostMapSync's status names.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Vouched {
    pub(super) uid: String,
    pub(super) digests: Vec<String>,
    /// Its target ConfigMap's name: who may get that ConfigMap may read the map.
    pub(super) target: String,
}

impl Vouched {
    pub(super) fn vouches(&self, digest: &str) -> bool {
        self.digests.iter().any(|d| d == digest)
    }
}

/// Whether an object known to the cache, by uid, owns `stored`, a ConfigMap in `namespace`.
pub(super) fn owned(
    syncs: &Mirror<Vouched>,
    cluster_syncs: &Mirror<Vouched>,
    namespace: &str,
    stored: &StoredMaps,
) -> bool {
    let id = match stored.cluster {
        true => (String::new(), stored.owner.clone()),
        false => (namespace.to_owned(), stored.owner.clone()),
    };
    let mirror = if stored.cluster { cluster_syncs } else { syncs };
    mirror
        .items
        .get(&id)
        .is_some_and(|vouched| vouched.uid == stored.owner_uid)
}

/// The digests a status names: its artifact, and the map being written.
pub(super) fn vouched(
    status: Option<&ModelCostMapSyncStatus>,
    uid: Option<String>,
    target: &str,
) -> Option<Vouched> {
    let status = status?;
    let digests: Vec<String> = [&status.artifact, &status.pending_artifact]
        .into_iter()
        .flatten()
        .map(|artifact| artifact.digest.clone())
        .collect();
    Some(Vouched {
        uid: uid?,
        digests,
        target: target.to_owned(),
    })
}
