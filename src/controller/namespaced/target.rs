//! Where a ModelCostMapSync's map goes: its target ConfigMap (and chunks) in the object's
//! namespace, and the history ring beside it.
//!
//! The target is read only when the watch does not show it as this operator last wrote it
//! for the published map: a target is a quarter of a MB, and every reconcile of every
//! object would otherwise read its own.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use super::history::next_ring;
use crate::api::{HistoryEntry, MapSync, ModelCostMapSync, ModelCostMapSyncStatus};
use crate::apiserver::{api_error_message, apply_status};
use crate::controller::config_maps::{WriteFailed, WrittenTarget};
use crate::controller::context::{Context, Error};
use crate::controller::core::Destination;
use crate::controller::core::destination::{AppliedStatus, PutBack};
use crate::controller::memory::ObjectKey;
use crate::controller::status::Notice;
use crate::layout::chunks::{chunk_name, split_gz};
use crate::layout::gzip::StoredMap;
use crate::layout::read::{HeldConfigMaps, read_stored, stale};
use crate::layout::render::{TargetRef, render_config_maps, write_order};
use crate::layout::{HISTORY_OF_LABEL, MapIdentity};
use crate::sync::SyncError;

/// The target ConfigMap of one ModelCostMapSync, as one reconcile knows it.
pub(super) struct TargetConfigMap<'a> {
    sync: &'a ModelCostMapSync,
    context: &'a Context,
    /// Whose memory records what was written.
    key: ObjectKey,
    target: TargetRef,
    /// The target's ConfigMaps as read; none while they are as this operator wrote them
    /// for the published map (not read).
    held: Option<HeldConfigMaps>,
}

impl<'a> TargetConfigMap<'a> {
    pub(super) fn new(
        sync: &'a ModelCostMapSync,
        key: ObjectKey,
        context: &'a Context,
    ) -> Result<Self, Error> {
        let namespace = sync.namespace().unwrap_or_default();
        let map_key = sync.spec.key();
        Ok(TargetConfigMap {
            target: TargetRef {
                name: sync.config_map_name().to_owned(),
                map_url: context.map_url(&namespace, &sync.name_any(), map_key),
                namespace,
                key: map_key.to_owned(),
                owner: sync.controller_owner_ref(&()).ok_or(Error::Unnamed)?,
            },
            sync,
            context,
            key,
            held: None,
        })
    }

    fn namespace(&self) -> &str {
        &self.target.namespace
    }

    /// How many maps the history ring keeps.
    fn history_kept(&self) -> usize {
        usize::try_from(self.sync.spec.history).unwrap_or(0).min(10)
    }

    /// What this operator last wrote into the target (or found there as it would write it).
    fn written(&self) -> Option<WrittenTarget> {
        self.context
            .memory
            .read(&self.key, |m| m.written.get(self.namespace()).cloned())
            .flatten()
    }

    fn remember_written(&self, written: WrittenTarget) {
        let namespace = self.namespace().to_owned();
        self.context.memory.update(&self.key, |m| {
            m.written.insert(namespace, written);
        });
    }

    /// The target's key, and the one this operator wrote before if the spec changed it:
    /// the layout's keys of both are cleared from what a write does not hold.
    fn keys_written(&self) -> Vec<String> {
        let mut keys = vec![self.target.key.clone()];
        let before = self.written().map(|written| written.target.key);
        keys.extend(before.filter(|key| key != &self.target.key));
        keys
    }

    /// Remembers that `held`, as read, is the rendering of `identity`: the next reconcile
    /// need not read it while it stays at these versions.
    fn note_as_written(&self, held: &HeldConfigMaps, identity: &MapIdentity) {
        let versions = held
            .maps
            .iter()
            .flatten()
            .filter_map(|cm| Some((cm.metadata.name.clone()?, cm.resource_version()?)))
            .collect();
        self.remember_written(WrittenTarget {
            target: self.target.clone(),
            identity: identity.clone(),
            versions,
        });
    }

    /// Writes `config_maps` (in [`write_order`]) into the namespace, clearing the keys of
    /// the layout they do not hold.
    async fn write(
        &self,
        config_maps: &[&ConfigMap],
        exists: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, String)>, WriteFailed> {
        let keys = self.keys_written();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.context
            .config_maps
            .write(self.namespace(), config_maps, &keys, exists)
            .await
    }
}

impl Destination for TargetConfigMap<'_> {
    async fn look(&mut self, expected: Option<&MapIdentity>) -> Result<(), Error> {
        let as_written = expected.is_some_and(|identity| {
            self.written().is_some_and(|written| {
                written.renders(&self.target, identity)
                    && self.context.config_maps.unchanged(&written)
            })
        });
        self.held = match as_written {
            true => None,
            false => Some(
                self.context
                    .config_maps
                    .read(self.namespace(), &self.target.name)
                    .await?,
            ),
        };
        Ok(())
    }

    async fn read_back(&self, digest: &str, history: &[HistoryEntry]) -> Option<StoredMap> {
        let max_bytes = self.context.max_map_bytes();
        let in_target = self
            .held
            .as_ref()
            .and_then(|held| {
                read_stored(held, &self.target.key, max_bytes)
                    .ok()
                    .flatten()
            })
            .filter(|map| map.digest() == digest);
        if in_target.is_some() {
            return in_target;
        }
        let entry = history.iter().find(|entry| entry.digest == digest)?;
        let map = self
            .context
            .config_maps
            .read_map(
                self.namespace(),
                &entry.config_map,
                &self.target.key,
                digest,
                max_bytes,
            )
            .await?;
        info!(config_map = %entry.config_map, "found the map in history");
        Some(map)
    }

    fn unvouched(&self) -> Option<String> {
        let max_bytes = self.context.max_map_bytes();
        let held = read_stored(self.held.as_ref()?, &self.target.key, max_bytes).ok()??;
        Some(held.digest())
    }

    async fn converge(
        &mut self,
        map: &StoredMap,
        identity: &MapIdentity,
    ) -> Result<Option<PutBack>, SyncError> {
        let Some(held) = self.held.take() else {
            // Not read: as written, for this very map.
            return Ok(None);
        };
        let desired = render_config_maps(&self.target, map, identity)?;
        let stale: Vec<&ConfigMap> = stale(&held, &desired).collect();
        let Some(first_stale) = stale.first() else {
            self.note_as_written(&held, identity);
            return Ok(None);
        };
        let config_map = first_stale.metadata.name.clone().unwrap_or_default();
        let index = desired
            .iter()
            .position(|cm| cm.metadata.name.as_deref() == Some(config_map.as_str()))
            .unwrap_or(0);
        let deleted = held.get(index).is_none();
        let mut versions = self
            .write(&stale, |name| held.has(name))
            .await
            .map_err(WriteFailed::into_sync_error)?;
        // The ConfigMaps not written are as read.
        for cm in held.maps.iter().flatten() {
            let (Some(name), Some(version)) = (cm.metadata.name.clone(), cm.resource_version())
            else {
                continue;
            };
            let rewritten = versions.iter().any(|(written, _)| written == &name);
            let rendered = desired
                .iter()
                .any(|d| d.metadata.name.as_ref() == Some(&name));
            if rendered && !rewritten {
                versions.push((name, version));
            }
        }
        self.remember_written(WrittenTarget {
            target: self.target.clone(),
            identity: identity.clone(),
            versions,
        });
        Ok(Some(PutBack {
            config_map,
            deleted,
        }))
    }

    async fn write_new(
        &mut self,
        map: &StoredMap,
        identity: &MapIdentity,
    ) -> Result<(), SyncError> {
        let keys = self.keys_written();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let config_maps = &self.context.config_maps;
        let written = config_maps
            .write_map(&self.target, map, identity, &keys, |name| {
                config_maps.seen(self.namespace(), name)
            })
            .await?;
        self.remember_written(written);
        self.held = None;
        Ok(())
    }

    fn keeps_history(&self) -> bool {
        true
    }

    async fn check_places(
        &self,
        map: &StoredMap,
        entry: &HistoryEntry,
        previous: &[HistoryEntry],
    ) -> Result<(), SyncError> {
        let chunks = split_gz(&map.gz).len();
        let mut names: Vec<String> = (0..chunks)
            .map(|index| chunk_name(&self.target.name, index))
            .collect();
        if let (Some(slot), _) = next_ring(
            previous,
            self.history_kept(),
            &self.target.name,
            entry.clone(),
        ) {
            names.extend((0..chunks).map(|index| chunk_name(&slot, index)));
        }
        let foreign = self
            .context
            .config_maps
            .first_foreign(self.namespace(), &names, &self.target.owner.uid)
            .await
            .map_err(|err| SyncError::Write {
                what: "the ConfigMaps' owners".to_owned(),
                message: api_error_message(&err),
            })?;
        match foreign {
            Some(foreign) => Err(foreign.into()),
            None => Ok(()),
        }
    }

    async fn keep_in_history(
        &self,
        map: &StoredMap,
        identity: &MapIdentity,
        entry: HistoryEntry,
        previous: &[HistoryEntry],
    ) -> Option<Vec<HistoryEntry>> {
        let (slot, ring) = next_ring(previous, self.history_kept(), &self.target.name, entry);
        let Some(slot) = slot else {
            return Some(ring);
        };
        // History slots are not read through the endpoint: no map-url.
        let target = TargetRef {
            name: slot.clone(),
            map_url: None,
            ..self.target.clone()
        };
        // A map in chunks is kept in chunks: `<slot>`, `<slot>-1`, ...
        let mut rendered = match render_config_maps(&target, map, identity) {
            Ok(rendered) => rendered,
            Err(err) => {
                warn!(error = %err, "cannot keep the map in history");
                return None;
            }
        };
        for config_map in &mut rendered {
            config_map
                .metadata
                .labels
                .get_or_insert_default()
                .insert(HISTORY_OF_LABEL.to_owned(), self.target.name.clone());
        }
        // A slot the ring names was written before (chunks: as many as it had, a guess).
        let existed = previous.iter().any(|entry| entry.config_map == slot);
        let in_order: Vec<&ConfigMap> = write_order(&rendered).collect();
        match self.write(&in_order, |_| existed).await {
            Ok(_) => Some(ring),
            Err(failed) => {
                warn!(config_map = %failed.name, error = %failed.message(), "cannot keep the map in history");
                None
            }
        }
    }

    async fn write_status(
        &self,
        status: ModelCostMapSyncStatus,
    ) -> Result<Option<AppliedStatus>, kube::Error> {
        if self.sync.status.as_ref() == Some(&status) {
            return Ok(None);
        }
        let api =
            Api::<ModelCostMapSync>::namespaced(self.context.client.clone(), self.namespace());
        let written = apply_status(&api, &self.sync.name_any(), &status).await?;
        Ok(Some(AppliedStatus {
            status,
            version: written.resource_version(),
        }))
    }

    async fn record(&self, notice: Notice) {
        self.context
            .record(notice, &self.sync.object_ref(&()))
            .await;
    }
}
