//! Reading the overrides a spec names (inline, and keys of ConfigMaps in its namespace), and
//! keeping the fetched bytes they are merged into, so that an override change republishes
//! without a fetch.

use bytes::Bytes;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use super::memory::RememberedMap;
use super::reconcile::Reconciler;
use crate::api::ModelCostMapSync;
use crate::digest::sha256_digest;
use crate::layout::gzip::gunzip_bounded;
use crate::sync::SyncError;
use crate::sync::overrides::{Origin, OverrideError, Overrides, inline_layer, layer_from_json};

/// The overrides of a spec as read now.
pub(super) struct ReadOverrides {
    /// A digest of what was read (each ConfigMap key's text, or that it is missing, and the
    /// inline models), broken or not: a change says a person edited them, which is worth a
    /// sync now even while a failed one waits for its retry. None when the API could not say.
    pub(super) fingerprint: Option<String>,
    pub(super) overrides: Result<Overrides, SyncError>,
}

/// A `configMapRefs` entry as found.
#[derive(serde::Serialize)]
enum Found {
    ConfigMapMissing,
    KeyMissing,
    Text(String),
}

impl Reconciler<'_> {
    /// The overrides of the spec, in the order they apply: `configMapRefs` in order, inline
    /// models last.
    pub(super) async fn read_overrides(&self) -> ReadOverrides {
        let spec = &self.sync.spec.overrides;
        let config_maps: Api<ConfigMap> =
            Api::namespaced(self.context.client.clone(), &self.target.namespace);
        let mut found = Vec::with_capacity(spec.config_map_refs.len());
        for reference in &spec.config_map_refs {
            let config_map = match config_maps.get_opt(&reference.name).await {
                Ok(config_map) => config_map,
                Err(err) => {
                    let error = SyncError::Write {
                        what: format!("(reading) override ConfigMap {}", reference.name),
                        message: super::reconcile::api_error_message(&err),
                    };
                    return ReadOverrides {
                        fingerprint: None,
                        overrides: Err(error),
                    };
                }
            };
            found.push(match config_map {
                None => Found::ConfigMapMissing,
                Some(config_map) => match config_map
                    .data
                    .and_then(|mut data| data.remove(&reference.key))
                {
                    None => Found::KeyMissing,
                    Some(text) => Found::Text(text),
                },
            });
        }
        let fingerprint = serde_json::to_vec(&(&found, &spec.models))
            .ok()
            .map(|inputs| sha256_digest(&inputs));
        ReadOverrides {
            fingerprint,
            overrides: self.parse_overrides(found),
        }
    }

    fn parse_overrides(&self, found: Vec<Found>) -> Result<Overrides, SyncError> {
        let spec = &self.sync.spec.overrides;
        let mut layers = Vec::with_capacity(found.len() + 1);
        for (reference, found) in spec.config_map_refs.iter().zip(found) {
            let text = match found {
                Found::ConfigMapMissing => Err(OverrideError::MissingConfigMap {
                    name: reference.name.clone(),
                }),
                Found::KeyMissing => Err(OverrideError::MissingKey {
                    name: reference.name.clone(),
                    key: reference.key.clone(),
                }),
                Found::Text(text) => Ok(text),
            }?;
            let origin = Origin::ConfigMap {
                name: reference.name.clone(),
                key: reference.key.clone(),
            };
            layers.push(layer_from_json(origin, &text)?);
        }
        if !spec.models.is_empty() {
            layers.push(inline_layer(&spec.models)?);
        }
        Ok(Overrides::new(layers))
    }

    /// Whether the overrides were edited since the last attempt read them.
    pub(super) fn overrides_edited(&self, read: &ReadOverrides) -> bool {
        let last = self
            .context
            .memory
            .read(&self.uid, |m| m.override_inputs.clone())
            .flatten();
        matches!((last, &read.fingerprint), (Some(last), Some(now)) if &last != now)
    }

    /// Remembers what the attempt about to run reads as its overrides.
    pub(super) fn record_override_inputs(&self, read: &ReadOverrides) {
        let fingerprint = read.fingerprint.clone();
        self.context
            .memory
            .update(&self.uid, |m| m.override_inputs = fingerprint);
    }

    /// Whether the overrides say something else than when the map was last published.
    pub(super) fn overrides_changed(&self, overrides: &Overrides) -> bool {
        let recorded = self
            .status
            .as_ref()
            .and_then(|status| status.overrides.as_ref())
            .map(|status| status.digest.as_str());
        match recorded {
            Some(digest) => overrides.is_empty() || overrides.digest() != digest,
            None => !overrides.is_empty() && self.artifact().is_some(),
        }
    }

    /// Keeps the fetched bytes (gzipped) for merging other overrides into them later.
    pub(super) fn remember_source(&self, fetched: &[u8]) {
        let map = crate::layout::gzip::StoredMap::from_bytes(fetched.to_vec());
        let remembered = RememberedMap {
            digest: map.digest(),
            gz: Bytes::from(map.gz),
        };
        self.context
            .memory
            .update(&self.uid, |m| m.source = Some(remembered));
    }

    /// The fetched bytes status names as the source, if memory holds them.
    pub(super) fn remembered_source(&self) -> Option<Bytes> {
        let digest = self.status.as_ref()?.source.as_ref()?.digest.clone();
        let remembered = self
            .context
            .memory
            .read(&self.uid, |m| m.source.clone())
            .flatten()
            .filter(|map| map.digest == digest)?;
        let max_bytes = self.context.sources.policy().max_body_bytes;
        gunzip_bounded(&remembered.gz, max_bytes)
            .ok()
            .map(Bytes::from)
    }
}

/// Maps a ConfigMap to the ModelCostMapSyncs whose overrides name it, so that an edit to it
/// republishes their maps.
pub(super) struct SyncsByOverride {
    store: Store<ModelCostMapSync>,
}

impl SyncsByOverride {
    pub(super) fn new(store: Store<ModelCostMapSync>) -> SyncsByOverride {
        SyncsByOverride { store }
    }

    pub(super) fn of<K: kube::Resource>(&self, config_map: &K) -> Vec<ObjectRef<ModelCostMapSync>> {
        let (Some(namespace), name) = (config_map.namespace(), config_map.name_any()) else {
            return Vec::new();
        };
        super::syncs_in(&self.store, &namespace, |sync| {
            sync.spec
                .overrides
                .config_map_refs
                .iter()
                .any(|reference| reference.name == name)
        })
    }
}
