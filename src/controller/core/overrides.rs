//! The overrides a spec names (inline, and keys of ConfigMaps in the object's namespace), read
//! for each reconcile; and the fetched bytes they are merged into, kept so that an override
//! change republishes without a fetch.

use bytes::Bytes;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use super::{Destination, Reconciler};
use crate::apiserver::api_error_message;
use crate::controller::memory::RememberedMap;
use crate::digest::sha256_digest;
use crate::layout::gzip::{StoredMap, gunzip_bounded};
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

impl<D: Destination> Reconciler<'_, D> {
    /// The overrides of the spec, in the order they apply: `configMapRefs` in order, inline
    /// models last.
    pub(super) async fn read_overrides(&self) -> ReadOverrides {
        let found = match self.read_config_map_refs().await {
            Ok(found) => found,
            Err(error) => {
                return ReadOverrides {
                    fingerprint: None,
                    overrides: Err(error),
                };
            }
        };
        let fingerprint = serde_json::to_vec(&(&found, &self.object.spec.overrides.models))
            .ok()
            .map(|inputs| sha256_digest(&inputs));
        ReadOverrides {
            fingerprint,
            overrides: self.parse_overrides(found),
        }
    }

    /// Each `configMapRefs` entry as found, in the object's own namespace.
    async fn read_config_map_refs(&self) -> Result<Vec<Found>, SyncError> {
        let references = &self.object.spec.overrides.config_map_refs;
        if references.is_empty() {
            return Ok(Vec::new());
        }
        let namespace = self.object.own_namespace("overrides.configMapRefs")?;
        let config_maps = Api::<ConfigMap>::namespaced(self.context.client.clone(), namespace);
        let mut found = Vec::with_capacity(references.len());
        for reference in references {
            let config_map =
                config_maps
                    .get_opt(&reference.name)
                    .await
                    .map_err(|err| SyncError::Write {
                        what: format!("(reading) override ConfigMap {}", reference.name),
                        message: api_error_message(&err),
                    })?;
            let text = config_map.map(|config_map| {
                config_map
                    .data
                    .and_then(|mut data| data.remove(&reference.key))
            });
            found.push(match text {
                None => Found::ConfigMapMissing,
                Some(None) => Found::KeyMissing,
                Some(Some(text)) => Found::Text(text),
            });
        }
        Ok(found)
    }

    fn parse_overrides(&self, found: Vec<Found>) -> Result<Overrides, SyncError> {
        let spec = &self.object.spec.overrides;
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
            .read(&self.object.key, |m| m.override_inputs.clone())
            .flatten();
        matches!((last, &read.fingerprint), (Some(last), Some(now)) if &last != now)
    }

    /// Remembers what the attempt about to run reads as its overrides.
    pub(super) fn record_override_inputs(&self, read: &ReadOverrides) {
        let fingerprint = read.fingerprint.clone();
        self.context
            .memory
            .update(&self.object.key, |m| m.override_inputs = fingerprint);
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
        let map = StoredMap::from_bytes(fetched.to_vec());
        let remembered = RememberedMap {
            digest: map.digest(),
            gz: Bytes::from(map.gz),
        };
        self.context
            .memory
            .update(&self.object.key, |m| m.source = Some(remembered));
    }

    /// The fetched bytes status names as the source, if memory holds them.
    pub(super) fn remembered_source(&self) -> Option<Bytes> {
        let digest = self.status.as_ref()?.source.as_ref()?.digest.clone();
        let remembered = self
            .context
            .memory
            .read(&self.object.key, |m| m.source.clone())
            .flatten()
            .filter(|map| map.digest == digest)?;
        gunzip_bounded(&remembered.gz, self.context.max_map_bytes())
            .ok()
            .map(Bytes::from)
    }
}
