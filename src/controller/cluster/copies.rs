//! Where a ClusterModelCostMapSync's map goes: a copy of the same ConfigMap in every
//! namespace the selector picks, written from one map in memory; and status sums up which
//! namespaces hold it ([`selection`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::core::{PartialObjectMeta, Selector};
use kube::{Api, Resource, ResourceExt};
use tracing::debug;

use super::selection::{self, Copy, Plan};
use crate::api::{
    ClusterModelCostMapSync, ClusterModelCostMapSyncStatus, HistoryEntry, MapSync,
    ModelCostMapSyncStatus, NamespaceFailure, NamespaceReason, NamespacesStatus, SpecError,
};
use crate::apiserver::{api_error_message, apply_status};
use crate::controller::config_maps::WrittenTarget;
use crate::controller::context::{Context, Error};
use crate::controller::core::Destination;
use crate::controller::core::destination::{AppliedStatus, PutBack};
use crate::controller::memory::ObjectKey;
use crate::controller::status::Notice;
use crate::layout::chunks::{chunk_name, split_gz};
use crate::layout::gzip::StoredMap;
use crate::layout::render::TargetRef;
use crate::layout::{DIGEST_ANNOTATION, MapIdentity};
use crate::sync::SyncError;

/// ConfigMaps written at once: enough to fill 200 namespaces in a few seconds, few enough
/// not to flood the API server.
const CONCURRENT_WRITES: usize = 16;

/// The copies of one ClusterModelCostMapSync, as one reconcile knows them.
pub(super) struct NamespaceCopies<'a> {
    sync: &'a ClusterModelCostMapSync,
    context: &'a Context,
    /// Whose memory records what was written.
    key: ObjectKey,
    /// The namespace selector, or why the spec has none.
    selector: Result<Selector, SpecError>,
    owner: OwnerReference,
    now: Timestamp,
    /// Whether the namespaces were looked at in this reconcile.
    looked: bool,
    /// The namespaces the selector picks.
    selected: BTreeSet<String>,
    /// Every ConfigMap of the target's name, by namespace.
    copies: BTreeMap<String, Copy>,
    /// Where the map was written in this reconcile, and where it failed.
    plan: Option<Plan>,
}

impl<'a> NamespaceCopies<'a> {
    pub(super) fn new(
        sync: &'a ClusterModelCostMapSync,
        key: ObjectKey,
        context: &'a Context,
        now: Timestamp,
    ) -> Result<Self, Error> {
        Ok(NamespaceCopies {
            selector: super::selector(sync),
            owner: sync.controller_owner_ref(&()).ok_or(Error::Unnamed)?,
            sync,
            context,
            key,
            now,
            looked: false,
            selected: BTreeSet::new(),
            copies: BTreeMap::new(),
            plan: None,
        })
    }

    /// The copy in `namespace`.
    fn target(&self, namespace: &str) -> TargetRef {
        TargetRef {
            name: self.sync.config_map_name().to_owned(),
            namespace: namespace.to_owned(),
            key: self.sync.spec.sync.key().to_owned(),
            owner: self.owner.clone(),
            map_url: self.context.map_url(
                namespace,
                &self.sync.name_any(),
                self.sync.spec.sync.key(),
            ),
        }
    }

    /// What this operator last wrote into the copy in `namespace`.
    fn written(&self, namespace: &str) -> Option<WrittenTarget> {
        self.context
            .memory
            .read(&self.key, |m| m.written.get(namespace).cloned())
            .flatten()
    }

    /// Whether the copy in `namespace` is as this operator wrote it for `identity`.
    fn holds(&self, namespace: &str, identity: &MapIdentity) -> bool {
        self.written(namespace).is_some_and(|written| {
            written.renders(&self.target(namespace), identity)
                && self.context.config_maps.unchanged(&written)
        })
    }

    /// The plan for the published map `identity` (none before the first sync).
    fn plan(&self, identity: Option<&MapIdentity>) -> Plan {
        selection::plan(
            &self.selected,
            &self.copies,
            identity.is_some(),
            |namespace| identity.is_some_and(|identity| self.holds(namespace, identity)),
            self.sync.config_map_name(),
        )
    }

    /// Writes `map` into the selected namespaces that do not hold it; the plan, with the
    /// writes that failed moved to failing.
    async fn write_copies(&mut self, map: &StoredMap, identity: &MapIdentity) {
        let mut plan = self.plan(Some(identity));
        let to_write = std::mem::take(&mut plan.write);
        let this = &*self;
        let results: Vec<(String, Result<WrittenTarget, SyncError>)> =
            futures::stream::iter(to_write)
                .map(|namespace| async move {
                    let result = this.write_copy(&namespace, map, identity).await;
                    (namespace, result)
                })
                .buffer_unordered(CONCURRENT_WRITES)
                .collect()
                .await;
        let mut restored = Vec::new();
        let mut written = Vec::new();
        for (namespace, result) in results {
            match result {
                Ok(copy) => {
                    let had_it = matches!(self.copies.get(&namespace), Some(Copy::Ours { digest: Some(d) }) if d == &identity.digest);
                    if had_it {
                        restored.push(namespace.clone());
                    }
                    written.push((namespace.clone(), copy));
                    plan.holding.push(namespace);
                }
                Err(err) => {
                    let reason = match err {
                        SyncError::OwnedByAnother { .. } => NamespaceReason::OwnedByAnother,
                        _ => NamespaceReason::WriteFailed,
                    };
                    plan.failing.push(NamespaceFailure {
                        namespace,
                        reason: reason.as_str().to_owned(),
                        message: err.to_string(),
                    });
                }
            }
        }
        let selected = &self.selected;
        self.context.memory.update(&self.key, |m| {
            m.written.extend(written);
            m.written
                .retain(|namespace, _| selected.contains(namespace));
        });
        if !restored.is_empty() {
            debug!(namespaces = ?restored, "wrote ConfigMaps that were edited, or not known to hold the map");
        }
        self.plan = Some(plan);
    }

    /// Writes one copy (in chunks when it needs them), unless one of its ConfigMaps is
    /// someone else's: then nothing of it is written.
    async fn write_copy(
        &self,
        namespace: &str,
        map: &StoredMap,
        identity: &MapIdentity,
    ) -> Result<WrittenTarget, SyncError> {
        let key = self.sync.spec.sync.key();
        let config_maps = &self.context.config_maps;
        let names: Vec<String> = (0..split_gz(&map.gz).len())
            .map(|index| chunk_name(self.sync.config_map_name(), index))
            .collect();
        let foreign = config_maps
            .first_foreign(namespace, &names, &self.owner.uid)
            .await
            .map_err(|err| SyncError::Write {
                what: format!("the owners of the ConfigMaps in {namespace}"),
                message: api_error_message(&err),
            })?;
        if let Some(foreign) = foreign {
            return Err(foreign.into());
        }
        config_maps
            .write_map(&self.target(namespace), map, identity, &[key], |name| {
                config_maps.seen(namespace, name)
            })
            .await
    }

    /// The namespaces the selector picks, except those being deleted (nothing can be
    /// written there).
    async fn selected_namespaces(&self, selector: &Selector) -> Result<BTreeSet<String>, Error> {
        let namespaces = Api::<Namespace>::all(self.context.client.clone())
            .list_metadata(&ListParams::default().labels_from(selector))
            .await?;
        Ok(namespaces
            .items
            .iter()
            .filter(|ns| ns.metadata.deletion_timestamp.is_none())
            .map(|ns| ns.name_any())
            .collect())
    }

    /// Every ConfigMap of the target's name, in any namespace, by namespace: metadata only.
    async fn list_copies(&self) -> Result<BTreeMap<String, Copy>, Error> {
        let name = self.sync.config_map_name();
        let params = ListParams::default().fields(&format!("metadata.name={name}"));
        let listed = Api::<ConfigMap>::all(self.context.client.clone())
            .list_metadata(&params)
            .await?;
        Ok(listed
            .items
            .iter()
            .filter_map(|cm| Some((cm.namespace()?, self.copy_of(cm))))
            .collect())
    }

    fn copy_of(&self, cm: &PartialObjectMeta<ConfigMap>) -> Copy {
        let controller = cm
            .owner_references()
            .iter()
            .find(|owner| owner.controller == Some(true));
        match controller {
            Some(owner) if owner.uid == self.owner.uid => Copy::Ours {
                digest: cm.annotations().get(DIGEST_ANNOTATION).cloned(),
            },
            Some(owner) => {
                let namespace = match owner.kind.as_str() {
                    "ClusterModelCostMapSync" => String::new(),
                    _ => format!("{}/", cm.namespace().unwrap_or_default()),
                };
                Copy::Others(format!(
                    "controlled by {} {namespace}{}",
                    owner.kind, owner.name
                ))
            }
            None => Copy::Others("no controller: not written by this operator".to_owned()),
        }
    }

    /// The namespaces part of status: where the map got to in this reconcile; before the
    /// first map, which namespaces wait for it (and which cannot get it); else, when
    /// nothing was written, what status said.
    fn namespaces(&self, status: &ModelCostMapSyncStatus) -> Option<NamespacesStatus> {
        if let Some(plan) = &self.plan {
            return Some(selection::summary(plan));
        }
        if self.looked && status.artifact.is_none() {
            return Some(selection::summary(&self.plan(None)));
        }
        self.sync.status.as_ref()?.namespaces.clone()
    }
}

impl Destination for NamespaceCopies<'_> {
    fn spec_error(&self) -> Option<SpecError> {
        self.sync
            .spec
            .unsupported()
            .err()
            .or_else(|| self.selector.as_ref().err().cloned())
    }

    async fn look(&mut self, _expected: Option<&MapIdentity>) -> Result<(), Error> {
        // An invalid selector is a spec error: the core says so and never looks.
        let Ok(selector) = self.selector.as_ref() else {
            return Ok(());
        };
        let selected = self.selected_namespaces(selector).await?;
        self.copies = self.list_copies().await?;
        let remembered = selected.clone();
        self.context
            .memory
            .update(&self.key, |m| m.selected = remembered);
        self.selected = selected;
        self.looked = true;
        Ok(())
    }

    async fn read_back(&self, digest: &str, _history: &[HistoryEntry]) -> Option<StoredMap> {
        let max_bytes = self.context.max_map_bytes();
        let key = self.sync.spec.sync.key();
        let name = self.sync.config_map_name();
        let candidates = self.copies.iter().filter(
            |(_, copy)| matches!(copy, Copy::Ours { digest: Some(held) } if held == digest),
        );
        for (namespace, _) in candidates {
            let read = self
                .context
                .config_maps
                .read_map(namespace, name, key, digest, max_bytes)
                .await;
            if read.is_some() {
                return read;
            }
        }
        None
    }

    fn unvouched(&self) -> Option<String> {
        // The copies of a cluster object are not read back unless status names their map.
        None
    }

    async fn converge(
        &mut self,
        map: &StoredMap,
        identity: &MapIdentity,
    ) -> Result<Option<PutBack>, SyncError> {
        // Copies put back are logged, not announced: a namespace that gets the labels is
        // filled the same way, and that is no loss.
        self.write_copies(map, identity).await;
        Ok(None)
    }

    async fn write_new(
        &mut self,
        map: &StoredMap,
        identity: &MapIdentity,
    ) -> Result<(), SyncError> {
        // A namespace that fails says so in status; the map is published in the others.
        self.write_copies(map, identity).await;
        Ok(())
    }

    async fn write_status(
        &self,
        mut status: ModelCostMapSyncStatus,
    ) -> Result<Option<AppliedStatus>, kube::Error> {
        let namespaces = self.namespaces(&status);
        if let Some(namespaces) = &namespaces {
            selection::set_ready(
                &mut status,
                namespaces,
                self.sync.meta().generation,
                self.now,
            );
        }
        let status = ClusterModelCostMapSyncStatus {
            sync: status,
            namespaces,
        };
        if self.sync.status.as_ref() == Some(&status) {
            return Ok(None);
        }
        let api = Api::<ClusterModelCostMapSync>::all(self.context.client.clone());
        let written = apply_status(&api, &self.sync.name_any(), &status).await?;
        Ok(Some(AppliedStatus {
            status: status.sync,
            version: written.resource_version(),
        }))
    }

    fn retry_after(&self) -> Option<Duration> {
        self.plan.as_ref().and_then(selection::retry_after)
    }

    async fn record(&self, notice: Notice) {
        // kube puts the Events of a cluster-scoped object in namespace `default`.
        self.context
            .record(notice, &self.sync.object_ref(&()))
            .await;
    }
}
