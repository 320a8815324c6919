//! `costmap-operator crd`: the CRD YAML generated from the Rust types (`crds/` is its
//! committed output; a test fails on drift).

use kube::CustomResourceExt;

use super::args::CrdKind;
use crate::api::{ClusterModelCostMapSync, ModelCostMapSync};

/// Prints the CRD of `kind` as YAML.
pub fn print(kind: CrdKind) -> anyhow::Result<()> {
    let crd = match kind {
        CrdKind::Modelcostmapsync => ModelCostMapSync::crd(),
        CrdKind::Clustermodelcostmapsync => ClusterModelCostMapSync::crd(),
    };
    super::print_out(serde_yaml::to_string(&crd)?)
}
