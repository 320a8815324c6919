//! Every manifest under examples/ (recursively, GitOps setups included) is accepted by the
//! real API server (server-side dry run: the schema, defaults and CEL rules of the CRD, and
//! the built-in kinds' validation), and every ModelCostMapSync in them has a spec the
//! operator reads as written.

mod common;

use std::path::{Path, PathBuf};

use costmap_operator::api::{ClusterModelCostMapSyncSpec, ModelCostMapSyncSpec};
use serde::Deserialize;
use serde_yaml::Value;

/// Namespaces the examples put objects in: the operator's, the proxies', and those of the
/// GitOps tools.
const NAMESPACES: [&str; 4] = ["llm", "costmap-system", "argocd", "flux-system"];

/// Files that must be there (relative to examples/), and folders that must hold at least
/// two manifests.
const EXPECTED_FILES: [&str; 7] = [
    "basic.yaml",
    "cluster.yaml",
    "air-gapped.yaml",
    "litellm-proxy.yaml",
    "litellm-proxy-no-db.yaml",
    "litellm-agent-sidecar.yaml",
    "overrides.yaml",
];
const EXPECTED_FOLDERS: [&str; 2] = ["gitops/flux", "gitops/argocd"];

#[test]
fn every_example_passes_a_server_side_dry_run() {
    let plane = common::control_plane();

    // Flux and Argo CD are not installed here: stand-in CRDs make their kinds known.
    let fixture = testenv::workspace_root().join("tests/fixtures/gitops-crds.yaml");
    let fixture = fixture.to_string_lossy();
    plane
        .kubectl(&["apply", "--server-side", "-f", &fixture])
        .unwrap_or_else(|err| panic!("applying {fixture}: {err:#}"));
    plane
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &fixture,
        ])
        .unwrap_or_else(|err| panic!("waiting for the stand-in CRDs: {err:#}"));

    // A dry run creates nothing, so the namespaces must exist for real.
    let namespaces: String = NAMESPACES
        .iter()
        .map(|name| format!("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"))
        .collect();
    plane
        .kubectl_with_input(&["apply", "-f", "-"], &namespaces)
        .unwrap_or_else(|err| panic!("creating namespaces {NAMESPACES:?}: {err:#}"));

    let files = example_files();
    assert_expected_files(&files);
    for file in &files {
        let output = plane
            .kubectl(&["apply", "--dry-run=server", "-f", &file.to_string_lossy()])
            .unwrap_or_else(|err| panic!("{} is refused: {err:#}", file.display()));
        let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            !lines.is_empty() && lines.iter().all(|l| l.ends_with("(server dry run)")),
            "{}: every object should be accepted by the dry run:\n{output}",
            file.display()
        );
    }
}

#[test]
fn the_no_database_example_ships_the_callback_module_byte_for_byte() {
    let root = testenv::workspace_root();
    let text = std::fs::read_to_string(root.join("examples/litellm-proxy-no-db.yaml")).unwrap();
    let config_map = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let module =
        std::fs::read_to_string(root.join("integrations/litellm/costmap_reload.py")).unwrap();
    assert!(
        config_map["data"]["costmap_reload.py"].as_str() == Some(module.as_str()),
        "examples/litellm-proxy-no-db.yaml holds another costmap_reload.py than \
         integrations/litellm/: copy the module into it again"
    );
    let config = config_map["data"]["config.yaml"].as_str().unwrap();
    assert!(
        config.contains(r#"callbacks: ["costmap_reload.handler"]"#),
        "{config}"
    );
}

#[test]
fn every_example_sync_spec_reads_as_written() {
    let files = example_files();
    assert_expected_files(&files);
    let mut syncs = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let where_ = format!("{} (document {})", file.display(), index + 1);
            let document = Value::deserialize(document)
                .unwrap_or_else(|err| panic!("{where_} is not YAML: {err}"));
            if document.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            assert!(
                document.get("apiVersion").is_some_and(Value::is_string)
                    && document.get("kind").is_some_and(Value::is_string),
                "{where_}: every document needs apiVersion and kind"
            );
            let cluster = document["kind"] == "ClusterModelCostMapSync";
            if document["kind"] != "ModelCostMapSync" && !cluster {
                continue;
            }
            assert_eq!(
                document["apiVersion"], "costmap.dev/v1alpha1",
                "{where_}: apiVersion"
            );
            let written = document
                .get("spec")
                .cloned()
                .unwrap_or_else(|| panic!("{where_}: a ModelCostMapSync needs a spec"));
            let parsed = match cluster {
                true => serde_yaml::from_value::<ClusterModelCostMapSyncSpec>(written.clone())
                    .map(|spec| serde_yaml::to_value(&spec).unwrap()),
                false => serde_yaml::from_value::<ModelCostMapSyncSpec>(written.clone())
                    .map(|spec| serde_yaml::to_value(&spec).unwrap()),
            };
            // serde skips fields it does not know: a misspelt field would parse, be pruned
            // by the API server, and quietly take its default. Every field written must
            // come back when the parsed spec is written out again.
            let read = parsed.unwrap_or_else(|err| panic!("{where_}: spec does not parse: {err}"));
            let mut unknown = Vec::new();
            unknown_fields(&written, &read, "spec", &mut unknown);
            assert!(
                unknown.is_empty(),
                "{where_}: fields the operator does not know: {unknown:?}"
            );
            syncs.push(where_);
        }
    }
    // basic, cluster, air-gapped, litellm-proxy, litellm-proxy-no-db, litellm-agent-sidecar,
    // overrides, Flux and Argo CD.
    assert!(
        syncs.len() >= 9,
        "ModelCostMapSyncs found in examples/: {syncs:#?}"
    );
}

/// Every .yaml file under examples/, recursively, sorted.
fn example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    collect_yaml(&examples_dir(), &mut files);
    files.sort();
    files
}

fn examples_dir() -> PathBuf {
    testenv::workspace_root().join("examples")
}

fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_yaml(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "yaml") {
            files.push(path);
        }
    }
}

fn assert_expected_files(files: &[PathBuf]) {
    let dir = examples_dir();
    for name in EXPECTED_FILES {
        assert!(
            files.contains(&dir.join(name)),
            "examples/{name} is missing; found {files:#?}"
        );
    }
    for folder in EXPECTED_FOLDERS {
        let count = files
            .iter()
            .filter(|f| f.starts_with(dir.join(folder)))
            .count();
        assert!(
            count >= 2,
            "examples/{folder} should hold at least 2 manifests, has {count}"
        );
    }
}

/// Collects the paths of fields in `written` that `read` (the same spec parsed and written
/// out again) lacks. Fields left empty (null, `{}`, `[]`) may vanish on the way: the
/// operator omits empty optional fields.
fn unknown_fields(written: &Value, read: &Value, path: &str, unknown: &mut Vec<String>) {
    match (written, read) {
        (Value::Mapping(written), Value::Mapping(read)) => {
            for (key, value) in written {
                let here = format!("{path}.{}", key.as_str().unwrap_or("<non-string key>"));
                match read.get(key) {
                    Some(read) => unknown_fields(value, read, &here, unknown),
                    None if is_empty(value) => {}
                    None => unknown.push(here),
                }
            }
        }
        (Value::Sequence(written), Value::Sequence(read)) => {
            for (i, (written, read)) in written.iter().zip(read).enumerate() {
                unknown_fields(written, read, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Mapping(map) => map.values().all(is_empty),
        Value::Sequence(items) => items.is_empty(),
        _ => false,
    }
}
