//! Starts the real control plane, as the operator's integration tests will.

use std::time::{Duration, Instant};

use testenv::{ControlPlane, Server};

#[test]
fn control_plane_serves_kubectl_and_cleans_up() {
    let cp = ControlPlane::start().unwrap();
    assert!(cp.server.starts_with("https://127.0.0.1:"), "{}", cp.server);

    // Namespaces are created by a post-start hook that /readyz waits for, but poll anyway:
    // the list is what tests rely on, not the hook's timing.
    let deadline = Instant::now() + Duration::from_secs(30);
    let namespaces = loop {
        let out = cp.kubectl(&["get", "ns", "-o", "name"]).unwrap();
        if out.contains("namespace/default") || Instant::now() >= deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(namespaces.contains("namespace/default"), "{namespaces}");
    assert!(namespaces.contains("namespace/kube-system"), "{namespaces}");

    // The admin can write, and a service-account token can be minted (signing key works).
    cp.kubectl_with_input(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: probe\n  namespace: default\n",
    )
    .unwrap();
    let token = cp.kubectl(&["create", "token", "probe"]).unwrap();
    assert!(token.trim().split('.').count() == 3, "{token}");

    let version = cp.kubectl(&["version", "-o", "json"]).unwrap();
    assert!(version.contains("\"gitVersion\": \"v1.35.4\""), "{version}");

    // Errors carry kubectl's stderr.
    let err = cp.kubectl(&["get", "nosuchkind"]).unwrap_err().to_string();
    assert!(
        err.contains("the server doesn't have a resource type"),
        "{err}"
    );

    let dir = cp.dir().to_owned();
    let pids: Vec<String> = ["etcd", "kube-apiserver"]
        .iter()
        .map(|name| {
            std::fs::read_to_string(dir.join(format!("{name}.log"))).map(|_| name.to_string())
        })
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(pids.len(), 2);
    drop(cp);
    assert!(!dir.exists(), "{} should be removed on drop", dir.display());
}

#[test]
fn killed_servers_restart_on_the_same_ports_with_their_data() {
    let mut cp = ControlPlane::start().unwrap();
    cp.kubectl(&["create", "configmap", "kept", "-n", "default"])
        .unwrap();

    cp.kill(Server::ApiServer).unwrap();
    let err = cp
        .kubectl(&["get", "cm", "kept", "-n", "default", "--request-timeout=2s"])
        .unwrap_err();
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
    cp.restart(Server::ApiServer).unwrap();
    let kept = cp.kubectl(&["get", "cm", "kept", "-n", "default", "-o", "name"]);
    assert_eq!(
        kept.unwrap().trim(),
        "configmap/kept",
        "same etcd, same data"
    );

    cp.kill(Server::Etcd).unwrap();
    // kube-apiserver notices within its etcd health check's interval.
    let deadline = Instant::now() + Duration::from_secs(60);
    let err = loop {
        match cp.kubectl(&["get", "--raw", "/readyz", "--request-timeout=10s"]) {
            Err(err) => break err,
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Ok(ok) => panic!("/readyz still answers {ok:?} a minute after etcd died"),
        }
    };
    assert!(format!("{err:#}").contains("etcd"), "{err:#}");
    cp.restart(Server::Etcd).unwrap();
    let kept = cp.kubectl(&["get", "cm", "kept", "-n", "default", "-o", "name"]);
    assert_eq!(kept.unwrap().trim(), "configmap/kept", "etcd kept its data");
}
