//! The workloads a spec lists under `restartWorkloads`: the map's digest in their pod
//! template rolls their pods, for proxies that neither reload nor poll.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use super::Consumers;
use crate::api::{EventReason, WorkloadKind};
use crate::apiserver::api_error_message;
use crate::controller::status::Notice;

/// The pod template annotation that rolls a workload when the map changes.
pub const DIGEST_TEMPLATE_ANNOTATION: &str = "costmap.dev/digest";

impl Consumers<'_> {
    /// Puts the map's digest in each listed workload's pod template; a workload that already
    /// has it is not touched (no restart).
    pub(super) async fn restart_workloads(&self, digest: &str) {
        let (mut restarted, mut failed) = (Vec::new(), Vec::new());
        for workload in &self.object.spec.consumers.restart_workloads {
            let result = match workload.kind {
                WorkloadKind::Deployment => {
                    self.annotate_template::<Deployment>(&workload.name, digest, |d| {
                        d.spec.as_ref().map(|s| &s.template)
                    })
                    .await
                }
                WorkloadKind::StatefulSet => {
                    self.annotate_template::<StatefulSet>(&workload.name, digest, |s| {
                        s.spec.as_ref().map(|s| &s.template)
                    })
                    .await
                }
                WorkloadKind::DaemonSet => {
                    self.annotate_template::<DaemonSet>(&workload.name, digest, |d| {
                        d.spec.as_ref().map(|s| &s.template)
                    })
                    .await
                }
            };
            match result {
                Ok(false) => {}
                Ok(true) => {
                    info!(kind = ?workload.kind, name = %workload.name, "rolling restart for the new map");
                    restarted.push(format!("{:?} {}", workload.kind, workload.name));
                }
                Err(message) => {
                    warn!(kind = ?workload.kind, name = %workload.name, error = %message, "cannot restart workload");
                    failed.push(message);
                }
            }
        }
        // One Event each, naming every workload: Events with the same reason merge into one
        // series that keeps the first note.
        if !restarted.is_empty() {
            let note = format!("restarted {} for map {digest}", restarted.join(", "));
            self.record(Notice {
                type_: EventType::Normal,
                reason: EventReason::WorkloadRestarted,
                note,
            })
            .await;
        }
        if !failed.is_empty() {
            self.record(Notice {
                type_: EventType::Warning,
                reason: EventReason::RestartFailed,
                note: failed.join("; "),
            })
            .await;
        }
    }

    /// Sets the digest annotation on a workload's pod template; Ok(true) when it patched.
    async fn annotate_template<K>(
        &self,
        name: &str,
        digest: &str,
        template: impl Fn(&K) -> Option<&PodTemplateSpec>,
    ) -> Result<bool, String>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let api: Api<K> = Api::namespaced(self.context.client.clone(), self.namespace);
        let kind = K::kind(&());
        let workload = api
            .get_opt(name)
            .await
            .map_err(|err| format!("reading {kind} {name}: {}", api_error_message(&err)))?
            .ok_or_else(|| format!("{kind} {name} not found"))?;
        let current = template(&workload)
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(DIGEST_TEMPLATE_ANNOTATION));
        if current.map(String::as_str) == Some(digest) {
            return Ok(false);
        }
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {DIGEST_TEMPLATE_ANNOTATION: digest}}}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|err| format!("patching {kind} {name}: {}", api_error_message(&err)))?;
        Ok(true)
    }
}
