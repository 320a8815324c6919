//! The last good map status names: from memory (this object's, or the copy another object
//! with the same map holds), or read back from where it was written (a place, or the
//! history ring), its bytes checked against the digest.

use std::sync::Arc;

use tracing::info;

use super::{Destination, Reconciler};
use crate::layout::MapIdentity;
use crate::layout::gzip::StoredMap;
use crate::sync::store::HeldMap;

impl<D: Destination> Reconciler<'_, D> {
    /// The last good map named by `status.artifact`; none when nothing holds exactly those
    /// bytes any more.
    pub(super) async fn last_good(&self) -> Option<Arc<HeldMap>> {
        let artifact = self.artifact()?;
        let digest = &artifact.digest;
        if let Some(map) = self.context.memory.last_good(&self.object.key, digest) {
            return Some(map);
        }
        if let Some(map) = self.context.held.get(digest) {
            self.remember_held(Arc::clone(&map));
            return Some(map);
        }
        let history = &self.status.as_ref()?.history;
        let map = self.destination.read_back(digest, history).await?;
        info!(%digest, "read the last good map back from the cluster");
        Some(self.remember_last_good(map))
    }

    /// The published map's identity, when memory holds that map and nothing else is
    /// pending: what a place written with it and unchanged since holds, unread.
    pub(super) fn expected_identity(&self) -> Option<MapIdentity> {
        let artifact = self.artifact()?;
        let pending = self.status.as_ref()?.pending_artifact.as_ref();
        let held = self
            .context
            .memory
            .last_good(&self.object.key, &artifact.digest)
            .is_some();
        (held && pending.is_none_or(|pending| pending.digest == artifact.digest))
            .then(|| self.identity(artifact))
    }

    /// Keeps `map` as this object's last good map (held once for every object with it).
    pub(super) fn remember_last_good(&self, map: StoredMap) -> Arc<HeldMap> {
        let digest = map.digest();
        let held = self.context.held.hold(map, digest, None);
        self.remember_held(Arc::clone(&held));
        held
    }

    /// Keeps a map already held as this object's last good map.
    pub(super) fn remember_held(&self, map: Arc<HeldMap>) {
        self.context
            .memory
            .remember_last_good(&self.object.key, map);
    }
}
