//! The committed CRD is the generated one, and it uses only what the API server supports.

use costmap_operator::api::{ClusterModelCostMapSync, ModelCostMapSync};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

const COMMITTED: &str = include_str!("../crds/modelcostmapsync.yaml");
const COMMITTED_CLUSTER: &str = include_str!("../crds/clustermodelcostmapsync.yaml");

#[test]
fn committed_crd_matches_the_rust_types() {
    let generated = serde_yaml::to_string(&ModelCostMapSync::crd()).unwrap();
    assert!(
        generated == COMMITTED,
        "crds/modelcostmapsync.yaml is stale: run `cargo run -- crd > crds/modelcostmapsync.yaml`"
    );
}

#[test]
fn committed_cluster_crd_matches_the_rust_types() {
    let generated = serde_yaml::to_string(&ClusterModelCostMapSync::crd()).unwrap();
    assert!(
        generated == COMMITTED_CLUSTER,
        "crds/clustermodelcostmapsync.yaml is stale: run `cargo run -- crd clustermodelcostmapsync > crds/clustermodelcostmapsync.yaml`"
    );
}

#[test]
fn schema_uses_only_formats_kubernetes_knows() {
    let crds: [CustomResourceDefinition; 2] =
        [ModelCostMapSync::crd(), ClusterModelCostMapSync::crd()];
    for crd in crds {
        let value = serde_json::to_value(crd).unwrap();
        let mut formats = Vec::new();
        collect_formats(&value, &mut formats);
        assert!(!formats.is_empty(), "the walk found no formats at all");
        for format in formats {
            assert!(
                // "double": the prices in lastChange.priceChanges (Kubernetes knows it).
                ["int32", "int64", "double", "date-time"].contains(&format.as_str()),
                "unsupported format {format}"
            );
        }
    }
}

fn collect_formats(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("format", serde_json::Value::String(format)) => found.push(format.clone()),
                    _ => collect_formats(child, found),
                }
            }
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|item| collect_formats(item, found))
        }
        _ => {}
    }
}
