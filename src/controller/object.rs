//! One object of either kind, as a reconcile sees it: the namespaced spec and status, the
//! annotations a person sets, and how it is named in memory, metrics and Events.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt;

use super::context::Error;
use super::memory::ObjectKey;
use crate::api::{MapSync, ModelCostMapSyncSpec, ModelCostMapSyncStatus, SpecError};
use crate::metrics::MapLabels;

/// One ModelCostMapSync or ClusterModelCostMapSync.
#[derive(Debug, Clone)]
pub(super) struct Object<'a> {
    /// What is remembered of it is kept under this key.
    pub(super) key: ObjectKey,
    pub(super) name: String,
    /// Its namespace; none for a cluster object.
    pub(super) namespace: Option<String>,
    pub(super) generation: Option<i64>,
    /// The resourceVersion this reconcile was decided on.
    pub(super) version: Option<String>,
    pub(super) spec: &'a ModelCostMapSyncSpec,
    /// Its status as the watch delivered it (see [`super::memory::newer_status`]).
    pub(super) observed: Option<&'a ModelCostMapSyncStatus>,
    /// `costmap.dev/sync-requested-at`.
    pub(super) sync_request: Option<&'a str>,
    /// `costmap.dev/accept-digest`.
    pub(super) accept_digest: Option<&'a str>,
    /// `costmap.dev/reject-digest`.
    pub(super) reject_digest: Option<&'a str>,
    /// The target ConfigMap's name (in each namespace, for a cluster object).
    pub(super) config_map: &'a str,
    /// Events are about this.
    pub(super) reference: ObjectReference,
}

impl<'a> Object<'a> {
    /// `object` as a reconcile sees it.
    pub(super) fn of<K: MapSync>(object: &'a K) -> Result<Object<'a>, Error> {
        let uid = object.uid().ok_or(Error::Unnamed)?;
        Ok(Object {
            key: ObjectKey { kind: K::KIND, uid },
            name: object.name_any(),
            namespace: object.namespace(),
            generation: object.meta().generation,
            version: object.resource_version(),
            spec: object.sync_spec(),
            observed: object.sync_status(),
            sync_request: object.sync_request(),
            accept_digest: object.accept_digest(),
            reject_digest: object.reject_digest(),
            config_map: object.config_map_name(),
            reference: object.object_ref(&()),
        })
    }

    /// Its uid.
    pub(super) fn uid(&self) -> &str {
        &self.key.uid
    }

    /// Its kind.
    pub(super) fn kind(&self) -> &'static str {
        self.key.kind
    }

    /// Its namespace, where what its spec names lives (Secrets, override ConfigMaps,
    /// proxies): never another one. A cluster object has none, and its spec may name none
    /// of those (see [`crate::api::ClusterModelCostMapSyncSpec::unsupported`]).
    pub(super) fn own_namespace(&self, field: &'static str) -> Result<&str, SpecError> {
        self.namespace.as_deref().ok_or_else(|| SpecError {
            field,
            reason: "a cluster-scoped object has no namespace to read it from".to_owned(),
        })
    }

    /// How metrics label it (an empty namespace for a cluster object).
    pub(super) fn labels(&self) -> MapLabels {
        MapLabels {
            namespace: self.namespace.clone().unwrap_or_default(),
            name: self.name.clone(),
        }
    }
}
