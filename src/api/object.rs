//! What both kinds are to the operator: a ModelCostMapSync's spec and status (a
//! ClusterModelCostMapSync has them flattened into its own), and the annotations a person
//! sets on either.

use super::{
    ACCEPT_DIGEST_ANNOTATION, ClusterModelCostMapSync, ModelCostMapSync, ModelCostMapSyncSpec,
    ModelCostMapSyncStatus, REJECT_DIGEST_ANNOTATION, SYNC_REQUESTED_AT_ANNOTATION,
};

/// An object that syncs a map: either kind.
pub trait MapSync: kube::Resource<DynamicType = ()> {
    /// The kind's name (as `kube::Resource::kind` has it, but for as long as the program
    /// runs): what is kept per kind (memory, shared fetches, metric series) is keyed by it.
    const KIND: &'static str;

    /// The namespaced kind's spec (the cluster kind's, but its namespace selector).
    fn sync_spec(&self) -> &ModelCostMapSyncSpec;

    /// The namespaced kind's status (the cluster kind's, but its namespaces summary).
    fn sync_status(&self) -> Option<&ModelCostMapSyncStatus>;

    /// Name of the target ConfigMap (in each namespace, for the cluster kind):
    /// `spec.target.configMapName`, else this object's name.
    fn config_map_name(&self) -> &str {
        self.sync_spec()
            .target
            .config_map_name
            .as_deref()
            .or(self.meta().name.as_deref())
            .unwrap_or_default()
    }

    /// The value of the sync-request annotation, if set.
    fn sync_request(&self) -> Option<&str> {
        annotation(self, SYNC_REQUESTED_AT_ANNOTATION)
    }

    /// The value of the accept-digest annotation, if set.
    fn accept_digest(&self) -> Option<&str> {
        annotation(self, ACCEPT_DIGEST_ANNOTATION)
    }

    /// The value of the reject-digest annotation, if set.
    fn reject_digest(&self) -> Option<&str> {
        annotation(self, REJECT_DIGEST_ANNOTATION)
    }
}

fn annotation<'a, K: kube::Resource + ?Sized>(object: &'a K, name: &str) -> Option<&'a str> {
    object
        .meta()
        .annotations
        .as_ref()?
        .get(name)
        .map(String::as_str)
}

impl MapSync for ModelCostMapSync {
    const KIND: &'static str = "ModelCostMapSync";

    fn sync_spec(&self) -> &ModelCostMapSyncSpec {
        &self.spec
    }

    fn sync_status(&self) -> Option<&ModelCostMapSyncStatus> {
        self.status.as_ref()
    }
}

impl MapSync for ClusterModelCostMapSync {
    const KIND: &'static str = "ClusterModelCostMapSync";

    fn sync_spec(&self) -> &ModelCostMapSyncSpec {
        &self.spec.sync
    }

    fn sync_status(&self) -> Option<&ModelCostMapSyncStatus> {
        self.status.as_ref().map(|status| &status.sync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn each_kind_names_itself_as_kube_does() {
        assert_eq!(ModelCostMapSync::KIND, ModelCostMapSync::kind(&()));
        assert_eq!(
            ClusterModelCostMapSync::KIND,
            ClusterModelCostMapSync::kind(&())
        );
    }
}
