//! The node's configuration files, rendered from its [`Layout`](super::Layout): pure text,
//! so what the node runs with is tested without running it.

use std::path::Path;

use super::{CLUSTER_DNS, PAUSE_IMAGE, POD_CIDR};

/// containerd 1.6's config (version 2). `restrict_oom_score_adj` is required on this kind of
/// VM: it lacks CAP_SYS_RESOURCE, so runc cannot give the pod sandbox its -998 and every pod
/// fails with "can't get final child's PID from pipe" without it.
pub(crate) fn containerd(
    root: &Path,
    state: &Path,
    socket: &Path,
    cni_bin: &Path,
    cni_conf: &Path,
) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  # Must exist locally: nothing is pulled.
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # No systemd as PID 1: the cgroupfs driver, as the kubelet's.
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"#,
        root = root.display(),
        state = state.display(),
        socket = socket.display(),
        cni_bin = cni_bin.display(),
        cni_conf = cni_conf.display(),
    )
}

/// The CNI network: a bridge (cni0) with host-local addresses from [`POD_CIDR`], masquerade
/// for pod traffic leaving the node, and portmap for hostPorts.
pub(crate) fn cni_conflist(ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "podnet",
        "plugins": [
            {
                "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

/// The kubelet's config. `failCgroupV1: false` because this host has cgroup v1 (1.35 refuses it
/// by default); `syncFrequency` is how soon a ConfigMap volume follows its ConfigMap.
pub(crate) fn kubelet(containerd_socket: &Path, sync_frequency: &str) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
# The apiserver reaches the kubelet (logs, exec) without client certificates.
authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}, x509: {{}}}}
authorization: {{mode: AlwaysAllow}}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
syncFrequency: {sync_frequency}
configMapAndSecretChangeDetectionStrategy: Watch
serializeImagePulls: false
# Images are imported, never pulled: they must never be garbage-collected.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{}}
clusterDomain: cluster.local
clusterDNS: ["{CLUSTER_DNS}"]
"#,
        socket = containerd_socket.display(),
    )
}

/// CoreDNS in kube-system behind the `kube-dns` Service at [`CLUSTER_DNS`], as kubeadm sets it
/// up (same names, so tools that look for them find them), with the local image.
pub(crate) fn coredns_manifests(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: coredns, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:coredns"}}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}}
subjects:
- {{kind: ServiceAccount, name: coredns, namespace: kube-system}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  Corefile: |
    .:53 {{
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {{
           pods insecure
           fallthrough in-addr.arpa ip6.arpa
           ttl 30
        }}
        forward . /etc/resolv.conf
        cache 30
        loop
        reload
        loadbalance
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {{matchLabels: {{k8s-app: kube-dns}}}}
  template:
    metadata: {{labels: {{k8s-app: kube-dns}}}}
    spec:
      serviceAccountName: coredns
      # Upstream DNS is the node's resolver, not the cluster's own (that would loop).
      dnsPolicy: Default
      tolerations:
      - {{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}}
      containers:
      - name: coredns
        image: {image}
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {{containerPort: 53, name: dns, protocol: UDP}}
        - {{containerPort: 53, name: dns-tcp, protocol: TCP}}
        readinessProbe:
          httpGet: {{path: /ready, port: 8181}}
          periodSeconds: 1
        livenessProbe:
          httpGet: {{path: /health, port: 8080}}
        volumeMounts:
        - {{name: config, mountPath: /etc/coredns, readOnly: true}}
      volumes:
      - name: config
        configMap: {{name: coredns}}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  clusterIP: {CLUSTER_DNS}
  selector: {{k8s-app: kube-dns}}
  ports:
  - {{name: dns, port: 53, protocol: UDP, targetPort: 53}}
  - {{name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_clamps_oom_scores_and_uses_the_local_pause() {
        let c = containerd(
            Path::new("/r"),
            Path::new("/s"),
            Path::new("/s/c.sock"),
            Path::new("/cni"),
            Path::new("/conf"),
        );
        assert!(c.contains("restrict_oom_score_adj = true"), "{c}");
        assert!(
            c.contains(&format!("sandbox_image = \"{PAUSE_IMAGE}\"")),
            "{c}"
        );
        assert!(c.contains("SystemdCgroup = false"), "{c}");
    }

    #[test]
    fn kubelet_runs_on_cgroup_v1_and_points_pods_at_cluster_dns() {
        let k = kubelet(Path::new("/s/c.sock"), "1s");
        assert!(k.contains("failCgroupV1: false"), "{k}");
        assert!(k.contains("syncFrequency: 1s"), "{k}");
        assert!(k.contains("clusterDNS: [\"10.96.0.10\"]"), "{k}");
        assert!(k.contains("unix:///s/c.sock"), "{k}");
    }

    #[test]
    fn cni_network_is_a_bridge_with_a_fixed_subnet() {
        let c: serde_json::Value = serde_json::from_str(&cni_conflist(Path::new("/ipam"))).unwrap();
        assert_eq!(c["plugins"][0]["bridge"], "cni0");
        assert_eq!(c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], POD_CIDR);
        assert_eq!(c["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn kube_dns_service_has_the_kubelets_cluster_dns_address() {
        let m = coredns_manifests("localhost/coredns:x");
        assert!(m.contains("clusterIP: 10.96.0.10"), "{m}");
        assert!(m.contains("image: localhost/coredns:x"), "{m}");
    }
}
