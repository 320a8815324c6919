//! Reading and writing the ConfigMaps of one stored map, in one ConfigMap or in chunks
//! (see [`crate::sync::render::render_config_maps`]): the target's and each history slot's.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};

use super::FIELD_MANAGER;
use super::reconcile::Reconciler;
use crate::sync::render::{HeldConfigMaps, chunk_count, chunk_name};

/// A ConfigMap write that failed: which one, and the API server's error.
#[derive(Debug)]
pub(super) struct WriteFailed {
    /// The ConfigMap.
    pub(super) name: String,
    /// Why.
    pub(super) error: kube::Error,
}

impl Reconciler<'_> {
    /// The ConfigMaps holding the map whose first ConfigMap is `name`: the first, then as
    /// many chunk ConfigMaps as it names (bounded by the chunk count's range). Chunk
    /// ConfigMaps left over from a larger map are not read: the first does not name them.
    pub(super) async fn read_held(&self, name: &str) -> Result<HeldConfigMaps, kube::Error> {
        let first = self.config_maps.get_opt(name).await?;
        let count = first
            .as_ref()
            .and_then(|first| chunk_count(first).ok().flatten())
            .unwrap_or(1);
        let mut maps = vec![first];
        for index in 1..count {
            maps.push(self.config_maps.get_opt(&chunk_name(name, index)).await?);
        }
        Ok(HeldConfigMaps { maps })
    }

    /// Server-side applies each ConfigMap in turn (each under its own name), stopping at the
    /// first that fails. Give them in [`crate::sync::render::write_order`].
    pub(super) async fn apply_config_maps<'a>(
        &self,
        config_maps: impl IntoIterator<Item = &'a ConfigMap>,
    ) -> Result<(), WriteFailed> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for config_map in config_maps {
            let name = config_map
                .metadata
                .name
                .clone()
                .unwrap_or_else(|| self.target.name.clone());
            if let Err(error) = self
                .config_maps
                .patch(&name, &params, &Patch::Apply(config_map))
                .await
            {
                return Err(WriteFailed { name, error });
            }
        }
        Ok(())
    }
}
