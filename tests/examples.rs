//! Every manifest in examples/ is accepted by the real API server (server-side dry run: the
//! schema, defaults and CEL rules of the CRD, and the built-in kinds' validation).

mod common;

#[test]
fn every_example_passes_a_server_side_dry_run() {
    let plane = common::control_plane();
    // The examples live in namespace llm, as the contract's examples do.
    let namespace = plane
        .kubectl(&[
            "create",
            "namespace",
            "llm",
            "--dry-run=client",
            "-o",
            "yaml",
        ])
        .unwrap();
    plane
        .kubectl_with_input(&["apply", "-f", "-"], &namespace)
        .unwrap();

    let dir = testenv::workspace_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "examples found: {files:?}");
    for file in files {
        let output = plane
            .kubectl(&["apply", "--dry-run=server", "-f", &file.to_string_lossy()])
            .unwrap_or_else(|err| panic!("{} is refused: {err:#}", file.display()));
        assert!(
            output.contains("(server dry run)"),
            "{}: {output}",
            file.display()
        );
    }
}
