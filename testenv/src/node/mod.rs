//! A real single-node Kubernetes cluster on this machine, for `cargo xtask node up|down` and
//! the tests that need pods: containerd + runc (Debian's), etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kubelet, kube-proxy (iptables), the CNI bridge
//! and CoreDNS behind `kube-dns`, every image made locally. Everything lives under
//! `target/node/`; the ports are fixed and below the ephemeral range the test control planes
//! take theirs from, so the two never collide.
//!
//! The processes are detached (own session, pid files), so the node outlives `node up`.
//! [`Node::down`] stops them and puts the host back as it was (iptables rules in both backends,
//! cni0, pod network namespaces, mounts, cgroups, sysctls); [`Node::up`] runs the same teardown
//! first, for whatever a killed earlier run left behind.

mod build;
mod config;
mod host;
mod image;
mod images;
mod litellm_image;
mod processes;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use host::HostSnapshot;
pub use image::{ImageSpec, write_docker_archive};
pub use images::{
    OPERATOR_REPOSITORY, chart_app_version, operator_image_archive, operator_image_spec,
};
pub use litellm_image::{LITELLM_IMAGE, litellm_image_archive, litellm_image_spec};

use crate::controlplane::{kubectl_command, random_token};
use crate::kubeconfig;
use crate::process::run_capture;
use processes::Processes;

/// The node's name (kubelet `--hostname-override`, kube-proxy's too).
pub const NODE_NAME: &str = "node1";
/// The kube-dns Service's address; the kubelet gives it to pods as their nameserver.
pub const CLUSTER_DNS: &str = "10.96.0.10";
/// A small busybox image (Debian's busybox-static) for test pods; `imagePullPolicy: Never`.
pub const BUSYBOX_IMAGE: &str = "localhost/busybox:local";
pub(crate) const PAUSE_IMAGE: &str = "localhost/pause:local";
pub(crate) const COREDNS_IMAGE: &str = "localhost/coredns:v1.14.7";
const SERVICE_CIDR: &str = "10.96.0.0/24";
pub(crate) const POD_CIDR: &str = "10.88.0.0/24";
const APISERVER_PORT: u16 = 16443;
const ETCD_CLIENT_PORT: u16 = 12379;
const ETCD_PEER_PORT: u16 = 12380;
/// How often the kubelet syncs each pod, which is how soon a ConfigMap volume follows its
/// ConfigMap (the default, 1m, makes that ~75 s). `COSTMAP_NODE_SYNC_FREQUENCY` (a Go
/// duration such as `1m`) overrides it, to measure the agent at a cluster's default.
const SYNC_FREQUENCY: &str = "1s";
const SYNC_FREQUENCY_ENV: &str = "COSTMAP_NODE_SYNC_FREQUENCY";

fn sync_frequency() -> String {
    std::env::var(SYNC_FREQUENCY_ENV).unwrap_or_else(|_| SYNC_FREQUENCY.to_owned())
}

/// Debian packages the node needs, with a command each provides (to see if it is there).
const PACKAGES: [(&str, &str); 8] = [
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("iptables", "iptables-legacy"),
    ("conntrack", "conntrack"),
    ("busybox-static", "busybox"),
    ("iproute2", "ip"),
    ("gcc", "gcc"),
    ("debootstrap", "debootstrap"),
];

/// A running node.
#[derive(Debug)]
pub struct Node {
    /// Admin kubeconfig (system:masters, bearer token).
    pub kubeconfig: PathBuf,
    /// `https://<host IP>:16443` (the serving certificate has no 127.0.0.1 SAN).
    pub server: String,
    /// kubectl, helm: the control plane's bin dir.
    pub bin_dir: PathBuf,
    dir: PathBuf,
}

/// `target/node`: binaries, images, and `state/` (the running node's files).
pub fn node_dir() -> PathBuf {
    crate::target_dir().join("node")
}

fn state_dir() -> PathBuf {
    node_dir().join("state")
}

fn sysctls_file() -> PathBuf {
    node_dir().join("sysctls.saved")
}

fn missing_paths_file() -> PathBuf {
    node_dir().join("paths.missing")
}

/// The files of the running node, all under `state/`.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    fn containerd_root(&self) -> PathBuf {
        self.dir.join("containerd/root")
    }
    fn containerd_state(&self) -> PathBuf {
        self.dir.join("containerd/state")
    }
    fn cni_conf(&self) -> PathBuf {
        self.dir.join("cni-conf")
    }
    fn cert_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }
    fn node_kubeconfig(&self) -> PathBuf {
        self.dir.join("node.kubeconfig")
    }
    fn server_file(&self) -> PathBuf {
        self.dir.join("server")
    }
}

impl Node {
    /// Brings the node up from nothing (after clearing what an earlier run left) and waits
    /// until it is Ready and CoreDNS answers. `extra_images` are docker archives to import
    /// too (the operator image, made by the caller from its release binary).
    pub fn up(extra_images: &[PathBuf]) -> Result<Node> {
        let started = Instant::now();
        let step = |what: &str| eprintln!("[{:6.1} s] {what}", started.elapsed().as_secs_f64());
        require_root()?;
        if Self::teardown()? {
            step("cleared what an earlier run left behind");
        }
        ensure_packages()?;
        let cp_bin = crate::ensure_binaries()?;
        let node_bins = build::ensure_node_binaries()?;
        let mut archives = vec![
            images::pause().archive()?,
            images::busybox().archive()?,
            images::coredns(&node_bins.bin.join("coredns")).archive()?,
        ];
        archives.extend_from_slice(extra_images);
        step("binaries and images ready");

        let host_ip = host_ip()?;
        let layout = Layout { dir: state_dir() };
        for dir in [
            layout.containerd_root(),
            layout.containerd_state(),
            layout.cni_conf(),
            layout.dir.join("etcd"),
            layout.dir.join("kubelet"),
        ] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        host::save_sysctls(&sysctls_file())?;
        host::record_missing_paths(&missing_paths_file())?;
        // Pods' traffic is routed through the host (the bridge, Service NAT).
        host::set_sysctl("net/ipv4/ip_forward", "1")?;
        let mut procs = Processes::new(&layout.dir)?;
        let result = (|| {
            start_runtime(&layout, &node_bins, &mut procs, &archives)?;
            step("containerd up, images imported");
            let node = start_control_plane(&layout, &cp_bin, host_ip, &mut procs)?;
            step("kube-apiserver ready");
            start_node(&layout, &node_bins, host_ip, &mut procs)?;
            node.wait_ready(&procs)?;
            step("node Ready");
            node.start_dns(&procs)?;
            step("CoreDNS ready");
            Ok(node)
        })();
        if result.is_err() {
            // Nothing half-started stays on the host; the logs are kept for whoever debugs it.
            let kept = node_dir().join("failed-logs");
            let _ = std::fs::remove_dir_all(&kept);
            let _ = std::fs::rename(procs.log_dir(), &kept);
            drop(procs);
            if let Err(e) = Self::teardown() {
                eprintln!("cleaning up after the failed start failed too: {e:#}");
            }
            eprintln!("node up failed; the logs are in {}", kept.display());
        }
        result
    }

    /// The running node, if its API answers.
    pub fn running() -> Option<Node> {
        let layout = Layout { dir: state_dir() };
        let server = std::fs::read_to_string(layout.server_file()).ok()?;
        let node = Node {
            kubeconfig: layout.kubeconfig(),
            server,
            bin_dir: crate::binaries::bin_dir(),
            dir: layout.dir,
        };
        node.kubectl(&["get", "--raw", "/readyz", "--request-timeout=5s"])
            .ok()
            .map(|_| node)
    }

    /// Stops the node and puts the host back as it was. Returns whether anything was left to
    /// stop or clean.
    pub fn down() -> Result<bool> {
        require_root()?;
        Self::teardown()
    }

    /// Every step of the teardown, each idempotent, in an order that never strands anything:
    /// the components that make pods first, then the pods' processes, containerd, mounts,
    /// network namespaces, cni0, iptables chains, cgroups, sysctls, and kube-apiserver before
    /// etcd (the other way round it retries etcd for ~40 s).
    fn teardown() -> Result<bool> {
        let started = Instant::now();
        let step = |what: &str| {
            eprintln!("[{:6.1} s] {what}", started.elapsed().as_secs_f64());
        };
        let layout = Layout { dir: state_dir() };
        let mut anything = false;
        if layout.dir.exists() {
            let procs = Processes::existing(&layout.dir);
            anything |= procs.stop(&[
                "kube-controller-manager",
                "kube-scheduler",
                "kubelet",
                "kube-proxy",
            ])?;
            step("stopped the components that make pods");
            anything |= kill_pods(&layout.dir, &layout.containerd_socket())?;
            step("killed the pods' processes");
            anything |= procs.stop(&["containerd", "kube-apiserver", "etcd"])?;
            step("stopped containerd, kube-apiserver, etcd");
            anything |= host::unmount_under(&layout.dir)? > 0;
        }
        anything |= !host::pod_netns().is_empty();
        host::remove_pod_netns()?;
        anything |= host::interfaces().contains("cni0");
        host::delete_bridge()?;
        host::remove_iptables_chains()?;
        host::remove_kubepods_cgroups();
        host::restore_sysctls(&sysctls_file())?;
        host::remove_recorded_paths(&missing_paths_file())?;
        step("host cleaned");
        match std::fs::remove_dir_all(&layout.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", layout.dir.display()));
            }
            _ => {}
        }
        Ok(anything)
    }

    /// Runs kubectl against the node and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        run_capture(
            self.kubectl_command().args(args),
            &format!("kubectl {}", args.join(" ")),
        )
    }

    /// `kubectl apply -f -` of `manifests` (YAML or JSON).
    pub fn apply(&self, manifests: &str) -> Result<String> {
        crate::process::run_with_input(
            self.kubectl_command().args(["apply", "-f", "-"]),
            "kubectl apply",
            Some(manifests),
        )
    }

    /// Imports docker archives into the node's containerd (an image of the same name is
    /// replaced).
    pub fn import_images(&self, archives: &[PathBuf]) -> Result<()> {
        images::import(&self.layout().containerd_socket(), archives)
    }

    fn layout(&self) -> Layout {
        Layout {
            dir: self.dir.clone(),
        }
    }

    /// Gives an imported image a second name, as a registry holding a new tag of the same
    /// image would (the node pulls nothing).
    pub fn tag_image(&self, from: &str, to: &str) -> Result<()> {
        let socket = self.layout().containerd_socket();
        run_capture(
            Command::new("ctr")
                .arg("--address")
                .arg(socket)
                .args(["-n", "k8s.io", "images", "tag", "--force", from, to]),
            &format!("ctr images tag {from} {to}"),
        )
        .map(drop)
    }

    /// A kubectl [`Command`] with `--kubeconfig` set.
    pub fn kubectl_command(&self) -> Command {
        kubectl_command(&self.bin_dir, &self.kubeconfig, &self.dir)
    }

    /// The node's state directory (logs in `logs/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn wait_ready(&self, procs: &Processes) -> Result<()> {
        let jsonpath = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
        poll(
            procs,
            Duration::from_secs(120),
            "the node to be Ready",
            || {
                let ready = self.kubectl(&["get", "node", NODE_NAME, "-o", jsonpath])?;
                if ready.trim() != "True" {
                    bail!("Ready is {ready:?}");
                }
                // kube-controller-manager makes it; pods cannot be created before it exists.
                self.kubectl(&["get", "serviceaccount", "default", "-o", "name"])?;
                Ok(())
            },
        )
    }

    fn start_dns(&self, procs: &Processes) -> Result<()> {
        self.apply(&config::coredns_manifests(COREDNS_IMAGE))
            .context("applying CoreDNS")?;
        poll(
            procs,
            Duration::from_secs(120),
            "CoreDNS to be ready",
            || {
                let ready = self.kubectl(&[
                    "-n",
                    "kube-system",
                    "get",
                    "deployment",
                    "coredns",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                ])?;
                if ready.trim() != "1" {
                    bail!("readyReplicas is {ready:?}");
                }
                Ok(())
            },
        )
    }
}

/// Processes of a node: any with the node's state directory in its command line (every
/// component and containerd's shims name a file in it) or in a pod's cgroup. Empty after
/// [`Node::down`].
pub fn leftover_processes() -> Vec<String> {
    host::processes_matching(&state_dir())
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the node needs root (containerd, the kubelet, iptables, mounts)");
    }
    Ok(())
}

fn command_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// Installs the Debian packages the node needs when their commands are missing (as `.ci/run`
/// does for iproute2), or says which are missing.
fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, command)| !command_exists(command))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {} with apt-get...", missing.join(" "));
    let installed = run_capture(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
        "apt-get install",
    );
    installed.with_context(|| {
        format!(
            "the node needs the Debian packages {} (containerd and runc run the pods; iptables \
             and conntrack serve kube-proxy; busybox-static and gcc make the test and pause \
             images; debootstrap makes the LiteLLM image's root); install them and retry",
            missing.join(", ")
        )
    })?;
    Ok(())
}

/// The host's non-loopback IPv4 address (the one its default route leaves from): the node IP
/// and kube-apiserver's advertise address, which pods reach through the `kubernetes` Service.
fn host_ip() -> Result<Ipv4Addr> {
    // A UDP connect sends nothing; it only asks the kernel which source address it would use.
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    socket
        .connect("192.0.2.255:9")
        .or_else(|_| socket.connect("1.1.1.1:53"))
        .context("the node needs a non-loopback IPv4 address with a route (none found)")?;
    match socket.local_addr()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Ok(ip),
        other => bail!("the node needs a non-loopback IPv4 address; the route gives {other}"),
    }
}

fn start_runtime(
    layout: &Layout,
    bins: &build::NodeBins,
    procs: &mut Processes,
    archives: &[PathBuf],
) -> Result<()> {
    let conf = layout.dir.join("containerd.toml");
    std::fs::write(
        &conf,
        config::containerd(
            &layout.containerd_root(),
            &layout.containerd_state(),
            &layout.containerd_socket(),
            &bins.cni,
            &layout.cni_conf(),
        ),
    )?;
    // The conflist must be there before the kubelet starts, or the node stays NotReady.
    std::fs::write(
        layout.cni_conf().join("10-bridge.conflist"),
        config::cni_conflist(&layout.dir.join("cni-ipam")),
    )?;
    let containerd = which("containerd")?;
    let mut cmd = Command::new(&containerd);
    cmd.arg("--config").arg(&conf);
    procs.spawn("containerd", cmd)?;
    let socket = layout.containerd_socket();
    poll(
        procs,
        Duration::from_secs(30),
        "containerd to answer",
        || {
            run_capture(
                Command::new("ctr")
                    .arg("--address")
                    .arg(&socket)
                    .arg("version"),
                "ctr version",
            )
            .map(|_| ())
        },
    )?;
    images::import(&socket, archives)
}

fn start_control_plane(
    layout: &Layout,
    cp_bin: &Path,
    host_ip: Ipv4Addr,
    procs: &mut Processes,
) -> Result<Node> {
    let dir = &layout.dir;
    run_capture(
        Command::new(cp_bin.join("sakey"))
            .arg(dir.join("sa.key"))
            .arg(dir.join("sa.pub")),
        "sakey",
    )?;
    let admin = random_token()?;
    let node_token = random_token()?;
    // CSV: token,user,uid,"groups". The kubelet gets system:masters too: without client
    // certificates there is no Node authorizer identity to give it.
    std::fs::write(
        dir.join("tokens.csv"),
        format!(
            "{admin},admin,admin,\"system:masters\"\n\
             {node_token},system:node:{NODE_NAME},{NODE_NAME},\"system:nodes,system:masters\"\n"
        ),
    )?;
    let etcd_client = format!("http://127.0.0.1:{ETCD_CLIENT_PORT}");
    let etcd_peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
    let mut etcd = Command::new(cp_bin.join("etcd"));
    etcd.arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--name", "default"])
        .args(["--listen-client-urls", &etcd_client])
        .args(["--advertise-client-urls", &etcd_client])
        .args(["--listen-peer-urls", &etcd_peer])
        .args(["--initial-advertise-peer-urls", &etcd_peer])
        .args(["--initial-cluster", &format!("default={etcd_peer}")])
        .arg("--unsafe-no-fsync");
    procs.spawn("etcd", etcd)?;
    let mut apiserver = Command::new(cp_bin.join("kube-apiserver"));
    apiserver
        .arg(format!("--etcd-servers={etcd_client}"))
        .arg(format!("--cert-dir={}", layout.cert_dir().display()))
        .arg("--bind-address=0.0.0.0")
        // Pods reach the API through the kubernetes Service, whose endpoint is this address.
        .arg(format!("--advertise-address={host_ip}"))
        .arg(format!("--secure-port={APISERVER_PORT}"))
        .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
        .arg("--allow-privileged=true")
        .arg("--authorization-mode=RBAC")
        .arg("--endpoint-reconciler-type=lease")
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!(
            "--service-account-key-file={}",
            dir.join("sa.pub").display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            dir.join("sa.key").display()
        ))
        // Else `kubectl logs/exec` dials node1:10250 and the name does not resolve.
        .arg("--kubelet-preferred-address-types=InternalIP,Hostname")
        .arg(format!(
            "--token-auth-file={}",
            dir.join("tokens.csv").display()
        ));
    procs.spawn("kube-apiserver", apiserver)?;

    // The self-signed certificate has the host IP as SAN, not 127.0.0.1.
    let server = format!("https://{host_ip}:{APISERVER_PORT}");
    let node = Node {
        kubeconfig: layout.kubeconfig(),
        server: server.clone(),
        bin_dir: cp_bin.to_owned(),
        dir: dir.clone(),
    };
    poll(
        procs,
        Duration::from_secs(90),
        "kube-apiserver to be ready",
        || {
            let bundle = std::fs::read_to_string(layout.cert_dir().join("apiserver.crt"))
                .context("no certificate yet")?;
            let ca = kubeconfig::ca_from_serving_bundle(&bundle).context("no CA yet")?;
            std::fs::write(layout.ca(), ca)?;
            std::fs::write(
                layout.kubeconfig(),
                kubeconfig::render(&server, &layout.ca(), &admin),
            )?;
            node.kubectl(&["get", "--raw", "/readyz", "--request-timeout=5s"])?;
            Ok(())
        },
    )?;
    std::fs::write(
        layout.node_kubeconfig(),
        kubeconfig::render(&server, &layout.ca(), &node_token),
    )?;
    std::fs::write(layout.server_file(), &server)?;
    Ok(node)
}

fn start_node(
    layout: &Layout,
    bins: &build::NodeBins,
    host_ip: Ipv4Addr,
    procs: &mut Processes,
) -> Result<()> {
    let admin = layout.kubeconfig();
    let mut kcm = Command::new(bins.bin.join("kube-controller-manager"));
    kcm.arg(format!("--kubeconfig={}", admin.display()))
        .arg("--leader-elect=false")
        .arg("--bind-address=127.0.0.1")
        .arg(format!(
            "--service-account-private-key-file={}",
            layout.dir.join("sa.key").display()
        ))
        .arg(format!("--root-ca-file={}", layout.ca().display()))
        .arg("--controllers=*");
    procs.spawn("kube-controller-manager", kcm)?;
    let mut scheduler = Command::new(bins.bin.join("kube-scheduler"));
    scheduler
        .arg(format!("--kubeconfig={}", admin.display()))
        .arg("--leader-elect=false")
        .arg("--bind-address=127.0.0.1");
    procs.spawn("kube-scheduler", scheduler)?;

    let kubelet_config = layout.dir.join("kubelet.yaml");
    std::fs::write(
        &kubelet_config,
        config::kubelet(&layout.containerd_socket(), &sync_frequency()),
    )?;
    let mut kubelet = Command::new(bins.bin.join("kubelet"));
    kubelet
        .arg(format!("--config={}", kubelet_config.display()))
        .arg(format!(
            "--kubeconfig={}",
            layout.node_kubeconfig().display()
        ))
        .arg(format!(
            "--root-dir={}",
            layout.dir.join("kubelet").display()
        ))
        // Its serving certificate; the default is /var/lib/kubelet/pki.
        .arg(format!(
            "--cert-dir={}",
            layout.dir.join("kubelet-pki").display()
        ))
        .arg(format!("--hostname-override={NODE_NAME}"))
        .arg(format!("--node-ip={host_ip}"));
    procs.spawn("kubelet", kubelet)?;
    let mut proxy = Command::new(bins.bin.join("kube-proxy"));
    proxy
        .arg(format!("--kubeconfig={}", admin.display()))
        .arg(format!("--hostname-override={NODE_NAME}"))
        .arg("--proxy-mode=iptables")
        .arg(format!("--cluster-cidr={POD_CIDR}"))
        // 0: leave the host's conntrack table size and timeouts alone.
        .arg("--conntrack-max-per-core=0")
        .arg("--conntrack-tcp-timeout-established=0s")
        .arg("--conntrack-tcp-timeout-close-wait=0s")
        .arg("--metrics-bind-address=127.0.0.1:10249")
        .arg("--healthz-bind-address=127.0.0.1:10256");
    procs.spawn("kube-proxy", proxy)?;
    Ok(())
}

/// Kills whatever containers the node's containerd still runs (its shims and everything under
/// them), and waits until they are gone.
fn kill_pods(state_dir: &Path, socket: &Path) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut any = false;
    loop {
        let killed = host::kill_containers(state_dir, socket)?;
        if killed == 0 {
            return Ok(any);
        }
        any = true;
        if Instant::now() >= deadline {
            bail!("{killed} container processes survived SIGKILL for 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn which(name: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .with_context(|| format!("{name} is not on PATH"))
}

/// Polls `check` every 200 ms until it succeeds or `timeout` passes; fails at once, with the
/// log's tail, when one of the node's processes has exited.
fn poll(
    procs: &Processes,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        procs.check_alive()?;
        let error = match check() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(error.context(format!("timed out after {timeout:?} waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
