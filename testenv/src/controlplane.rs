//! etcd + kube-apiserver on loopback: per test ([`ControlPlane::start`]) or in the background
//! for `cargo xtask cluster` ([`ControlPlane::start_detached`]).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::binaries::ensure_binaries;
use crate::kubeconfig;
use crate::net::free_port;
use crate::process::{
    TiedChild, is_running, run_capture, run_with_input, spawn_detached, spawn_tied, stop_pid, tail,
};

/// How long kube-apiserver may take to answer /readyz (it is usually a few seconds; a busy
/// 2-core CI machine running several test binaries at once is the case this covers).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Fresh ports are tried this many times when a server loses a port race.
const PORT_ATTEMPTS: u32 = 3;

/// Servers in start order; they are stopped in reverse.
const ETCD: &str = "etcd";
const APISERVER: &str = "kube-apiserver";

/// A running etcd + kube-apiserver with an admin kubeconfig.
///
/// No kubelet, scheduler or controller-manager runs: nothing garbage-collects, namespaces stay
/// Terminating, Deployments get no Pods and there is no default ServiceAccount.
#[derive(Debug)]
pub struct ControlPlane {
    /// An admin kubeconfig (system:masters, bearer token) for [`Self::server`].
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// Where etcd, kube-apiserver, kubectl and helm are.
    pub bin_dir: PathBuf,
    dir: PathBuf,
    /// Attached mode only: stopped on drop. Empty for a detached control plane.
    children: Vec<TiedChild>,
    /// Attached mode only: how each server was started, to start it again after a fault.
    ports: Option<Ports>,
}

/// One of the two servers, for fault tests that kill and restart it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// etcd: the API server loses its storage while it is down.
    Etcd,
    /// kube-apiserver: every client's requests and watches fail while it is down.
    ApiServer,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Etcd => ETCD,
            Server::ApiServer => APISERVER,
        }
    }

    /// Index in [`ControlPlane::children`] (start order).
    fn index(self) -> usize {
        match self {
            Server::Etcd => 0,
            Server::ApiServer => 1,
        }
    }
}

/// The loopback ports of one control plane.
#[derive(Debug, Clone, Copy)]
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    secure: u16,
}

impl ControlPlane {
    /// Starts a private control plane for a test, in a fresh directory under
    /// `target/testenv/`, and waits until it is ready.
    ///
    /// The servers are killed, and the directory removed, when the value drops; they are also
    /// killed if the test process dies (see [`crate::spawn_tied`]). If the drop happens during a
    /// panic, the logs are kept and their directory is printed.
    pub fn start() -> Result<ControlPlane> {
        let bin_dir = ensure_binaries()?;
        let dir = new_test_dir()?;
        let result = retry_port_races(|| {
            let layout = Layout::fresh(&dir)?;
            let mut children = Vec::new();
            let started = launch(&bin_dir, &layout, |_name, cmd| {
                children.push(spawn_tied(cmd)?);
                Ok(children.len() - 1)
            })
            .and_then(|launched| {
                wait_ready(&bin_dir, &launched, |i| children[i].try_wait())?;
                Ok(launched)
            });
            // Dropping the children on failure kills them before the next attempt.
            started.map(|launched| (launched, std::mem::take(&mut children)))
        });
        match result {
            Ok((launched, children)) => Ok(ControlPlane {
                kubeconfig: launched.layout.kubeconfig(),
                server: launched.server,
                bin_dir,
                dir,
                children,
                ports: Some(launched.ports),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Starts a control plane whose processes survive this process (own session, pid files and
    /// logs in `state_dir`), for `cargo xtask cluster up`. Returns the running one if
    /// `state_dir` already has a healthy control plane; otherwise stops any leftovers, wipes
    /// `state_dir` and starts afresh. Stop it with [`Self::stop_detached`].
    pub fn start_detached(state_dir: &Path) -> Result<ControlPlane> {
        let bin_dir = ensure_binaries()?;
        if let Some(running) = Self::running_detached(state_dir)? {
            return Ok(running);
        }
        Self::stop_detached(state_dir)?;
        let launched = retry_port_races(|| {
            let layout = Layout::fresh(state_dir)?;
            let mut children: Vec<Child> = Vec::new();
            let started = launch(&bin_dir, &layout, |name, mut cmd| {
                let child = spawn_detached(&mut cmd)?;
                write_pid_file(&layout.pid_file(name), child.id(), &bin_dir.join(name))?;
                children.push(child);
                Ok(children.len() - 1)
            })
            .and_then(|launched| {
                wait_ready(&bin_dir, &launched, |i| {
                    children[i].try_wait().context("checking on a server")
                })?;
                Ok(launched)
            });
            if started.is_err() {
                for child in children.iter_mut().rev() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            started
        })?;
        std::fs::write(launched.layout.server_file(), &launched.server)
            .context("writing the server address")?;
        Ok(ControlPlane {
            kubeconfig: launched.layout.kubeconfig(),
            server: launched.server,
            bin_dir,
            dir: state_dir.to_owned(),
            children: Vec::new(),
            ports: None,
        })
    }

    /// The detached control plane in `state_dir`, if both servers are alive and it is ready.
    pub fn running_detached(state_dir: &Path) -> Result<Option<ControlPlane>> {
        let layout = Layout {
            dir: state_dir.to_owned(),
        };
        let alive = [ETCD, APISERVER].iter().all(|name| {
            read_pid_file(&layout.pid_file(name))
                .is_some_and(|(pid, program)| is_running(pid, &program))
        });
        let Ok(server) = std::fs::read_to_string(layout.server_file()) else {
            return Ok(None);
        };
        if !alive || !layout.kubeconfig().is_file() {
            return Ok(None);
        }
        let bin_dir = ensure_binaries()?;
        if readyz(&bin_dir, &layout).is_err() {
            return Ok(None);
        }
        Ok(Some(ControlPlane {
            kubeconfig: layout.kubeconfig(),
            server,
            bin_dir,
            dir: state_dir.to_owned(),
            children: Vec::new(),
            ports: None,
        }))
    }

    /// Stops the detached control plane in `state_dir` (SIGTERM, then SIGKILL after 10 s) and
    /// removes `state_dir`. Returns whether any of its processes was still running.
    pub fn stop_detached(state_dir: &Path) -> Result<bool> {
        let layout = Layout {
            dir: state_dir.to_owned(),
        };
        let mut was_running = false;
        for name in [APISERVER, ETCD] {
            if let Some((pid, program)) = read_pid_file(&layout.pid_file(name)) {
                was_running |= is_running(pid, &program);
                stop_pid(pid, &program, Duration::from_secs(10))
                    .with_context(|| format!("stopping {name}"))?;
            }
        }
        match std::fs::remove_dir_all(state_dir) {
            Ok(()) => Ok(was_running),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(was_running),
            Err(e) => Err(e).with_context(|| format!("removing {}", state_dir.display())),
        }
    }

    /// Runs kubectl against this control plane and returns its stdout. The error carries
    /// kubectl's stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        run_capture(
            self.kubectl_command().args(args),
            &format!("kubectl {}", args.join(" ")),
        )
    }

    /// Like [`Self::kubectl`], with `input` on stdin (for `apply -f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: &str) -> Result<String> {
        run_with_input(
            self.kubectl_command().args(args),
            &format!("kubectl {}", args.join(" ")),
            Some(input),
        )
    }

    /// A kubectl [`Command`] with `--kubeconfig` set, for callers that want to handle its
    /// output themselves.
    pub fn kubectl_command(&self) -> Command {
        kubectl_command(&self.bin_dir, &self.kubeconfig, &self.dir)
    }

    /// The directory holding this control plane's logs, certificates and etcd data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILLs one server, as a crash would: no shutdown, open connections reset. Only for a
    /// control plane of [`Self::start`].
    pub fn kill(&mut self, server: Server) -> Result<()> {
        self.children
            .get_mut(server.index())
            .with_context(|| format!("{} is not a child of this process", server.name()))?
            .kill();
        Ok(())
    }

    /// Starts a server killed by [`Self::kill`] again, on the same port and with the same data
    /// and certificates, and waits until kube-apiserver answers /readyz again.
    pub fn restart(&mut self, server: Server) -> Result<()> {
        let ports = self
            .ports
            .with_context(|| "only a control plane of ControlPlane::start restarts")?;
        let layout = Layout {
            dir: self.dir.clone(),
        };
        let command = match server {
            Server::Etcd => {
                etcd_command(&self.bin_dir, &layout, ports.etcd_client, ports.etcd_peer)
            }
            Server::ApiServer => {
                apiserver_command(&self.bin_dir, &layout, ports.etcd_client, ports.secure)
            }
        }?;
        let child = spawn_tied(command)?;
        let slot = self
            .children
            .get_mut(server.index())
            .with_context(|| format!("{} is not a child of this process", server.name()))?;
        // Dropping the old handle is a no-op: it was killed and reaped.
        *slot = child;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for (name, child) in [ETCD, APISERVER].iter().zip(self.children.iter_mut()) {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{name} exited after a restart ({status}); last lines of {}:\n{}",
                        layout.log(name).display(),
                        tail(&layout.log(name), 30)
                    );
                }
            }
            match readyz(&self.bin_dir, &layout) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "kube-apiserver not ready within {READY_TIMEOUT:?} of restarting {}",
                        server.name()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Writes a kubeconfig at `path` for this server that authenticates with `token` (for
    /// example a ServiceAccount's, from `kubectl create token`), trusting the same CA.
    pub fn write_token_kubeconfig(&self, path: &Path, token: &str) -> Result<()> {
        let ca = self.dir.join("ca.crt");
        std::fs::write(path, kubeconfig::render(&self.server, &ca, token))
            .with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.children.is_empty() {
            // Detached: it is meant to outlive this handle.
            return;
        }
        // kube-apiserver before etcd, so it does not log a storm of etcd errors while dying.
        while let Some(mut child) = self.children.pop() {
            child.kill();
        }
        if std::thread::panicking() {
            keep_logs(&self.dir);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Keeps a failed test's logs for whoever debugs it: renamed to `failed-cp-...` so the
/// stale-directory sweep of the next test binary leaves it alone. etcd's data is large and of
/// no use, so it goes.
fn keep_logs(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join("etcd"));
    let kept = dir.file_name().map(|name| {
        let mut failed = std::ffi::OsString::from("failed-");
        failed.push(name);
        dir.with_file_name(failed)
    });
    let kept = match kept {
        Some(kept) if std::fs::rename(dir, &kept).is_ok() => kept,
        _ => dir.to_owned(),
    };
    eprintln!("testenv: control plane logs kept in {}", kept.display());
}

/// The files of one control plane, all inside `dir`.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Empties (or creates) `dir`.
    fn fresh(dir: &Path) -> Result<Layout> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cleaning {}", dir.display())),
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Layout {
            dir: dir.to_owned(),
        })
    }

    fn etcd_data(&self) -> PathBuf {
        self.dir.join("etcd")
    }
    fn cert_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }
    /// Written by kube-apiserver: its serving certificate followed by the CA.
    fn serving_bundle(&self) -> PathBuf {
        self.cert_dir().join("apiserver.crt")
    }
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    fn sa_private_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    fn sa_public_key(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }
    fn tokens(&self) -> PathBuf {
        self.dir.join("tokens.csv")
    }
    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
    fn server_file(&self) -> PathBuf {
        self.dir.join("server")
    }
    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }
    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pid"))
    }
}

/// What [`launch`] started: `servers[i]` is (name, the handle index the spawner returned).
struct Launched {
    layout: Layout,
    server: String,
    token: String,
    servers: Vec<(&'static str, usize)>,
    ports: Ports,
}

/// Writes keys and the token file, then starts etcd and kube-apiserver through `spawn`, which
/// returns an index for its own handle list.
fn launch(
    bin_dir: &Path,
    layout: &Layout,
    mut spawn: impl FnMut(&'static str, Command) -> Result<usize>,
) -> Result<Launched> {
    let token = random_token()?;
    write_secrets(bin_dir, layout, &token)?;
    let ports = Ports {
        etcd_client: free_port()?,
        etcd_peer: free_port()?,
        secure: free_port()?,
    };
    let etcd = spawn(
        ETCD,
        etcd_command(bin_dir, layout, ports.etcd_client, ports.etcd_peer)?,
    )?;
    let apiserver = spawn(
        APISERVER,
        apiserver_command(bin_dir, layout, ports.etcd_client, ports.secure)?,
    )?;
    Ok(Launched {
        layout: Layout {
            dir: layout.dir.clone(),
        },
        server: format!("https://127.0.0.1:{}", ports.secure),
        token,
        servers: vec![(ETCD, etcd), (APISERVER, apiserver)],
        ports,
    })
}

fn write_secrets(bin_dir: &Path, layout: &Layout, token: &str) -> Result<()> {
    // One RSA key both signs and verifies service-account tokens (`kubectl create token`).
    run_capture(
        Command::new(bin_dir.join("sakey"))
            .arg(layout.sa_private_key())
            .arg(layout.sa_public_key()),
        "sakey (service-account key generation)",
    )?;
    // CSV: token,user,uid,"groups". system:masters bypasses RBAC.
    std::fs::write(
        layout.tokens(),
        format!("{token},admin,admin,\"system:masters\"\n"),
    )
    .context("writing the token file")
}

fn etcd_command(bin_dir: &Path, layout: &Layout, client: u16, peer: u16) -> Result<Command> {
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = server_command(bin_dir, layout, ETCD)?;
    cmd.arg("--data-dir")
        .arg(layout.etcd_data())
        .args(["--name", "default"])
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        // Throwaway data: durability costs seconds per test for nothing.
        .arg("--unsafe-no-fsync");
    Ok(cmd)
}

fn apiserver_command(
    bin_dir: &Path,
    layout: &Layout,
    etcd_client: u16,
    secure_port: u16,
) -> Result<Command> {
    let mut cmd = server_command(bin_dir, layout, APISERVER)?;
    cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_client}"))
        // It self-signs a serving certificate (with a 127.0.0.1 IP SAN) and its CA here.
        .arg(format!("--cert-dir={}", layout.cert_dir().display()))
        .arg("--bind-address=127.0.0.1")
        // Without it the server looks for a default-route interface and fails on machines
        // that have none.
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={secure_port}"))
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg("--allow-privileged=true")
        .arg("--authorization-mode=RBAC")
        // No controller-manager creates default ServiceAccounts, so the admission plugin would
        // reject every Pod.
        .arg("--disable-admission-plugins=ServiceAccount")
        // Nothing listens at the advertised address for the kubernetes Service.
        .arg("--endpoint-reconciler-type=none")
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!(
            "--service-account-key-file={}",
            layout.sa_public_key().display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            layout.sa_private_key().display()
        ))
        .arg(format!("--token-auth-file={}", layout.tokens().display()));
    Ok(cmd)
}

/// A server command with its full path as argv[0] (pid files are checked against it), no
/// stdin, and stdout+stderr appended to `<dir>/<name>.log` (a restarted server adds to it).
fn server_command(bin_dir: &Path, layout: &Layout, name: &str) -> Result<Command> {
    let log_path = layout.log(name);
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(bin_dir.join(name));
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(cmd)
}

/// Polls until kube-apiserver's /readyz answers 200, writing the kubeconfig as soon as the
/// self-signed CA exists. Fails early, with the tail of its log, if a server exits.
fn wait_ready(
    bin_dir: &Path,
    launched: &Launched,
    mut try_wait: impl FnMut(usize) -> Result<Option<ExitStatus>>,
) -> Result<()> {
    let layout = &launched.layout;
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut kubeconfig_written = false;
    let mut last_error = anyhow!("kube-apiserver has not written its certificate yet");
    loop {
        for (name, index) in &launched.servers {
            if let Some(status) = try_wait(*index)? {
                bail!(
                    "{name} exited during start-up ({status}); last lines of {}:\n{}",
                    layout.log(name).display(),
                    tail(&layout.log(name), 30)
                );
            }
        }
        if !kubeconfig_written {
            kubeconfig_written = write_kubeconfig(layout, &launched.server, &launched.token)?;
        }
        if kubeconfig_written {
            match readyz(bin_dir, layout) {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e,
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "kube-apiserver was not ready within {READY_TIMEOUT:?}: {last_error:#}\n\
                 last lines of {}:\n{}",
                layout.log(APISERVER).display(),
                tail(&layout.log(APISERVER), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes ca.crt and the kubeconfig once kube-apiserver has written its certificate bundle.
fn write_kubeconfig(layout: &Layout, server: &str, token: &str) -> Result<bool> {
    let Ok(bundle) = std::fs::read_to_string(layout.serving_bundle()) else {
        return Ok(false);
    };
    let Some(ca) = kubeconfig::ca_from_serving_bundle(&bundle) else {
        return Ok(false);
    };
    std::fs::write(layout.ca(), ca).context("writing ca.crt")?;
    std::fs::write(
        layout.kubeconfig(),
        kubeconfig::render(server, &layout.ca(), token),
    )
    .context("writing the kubeconfig")?;
    Ok(true)
}

/// `GET /readyz` through kubectl: it proves the certificate, the token and readiness at once.
fn readyz(bin_dir: &Path, layout: &Layout) -> Result<()> {
    let mut cmd = kubectl_command(bin_dir, &layout.kubeconfig(), &layout.dir);
    cmd.args(["get", "--raw", "/readyz", "--request-timeout=5s"]);
    run_capture(&mut cmd, "GET /readyz").map(|_| ())
}

/// kubectl for the control plane in `dir`. Its discovery cache lives in `dir` too: the
/// default, ~/.kube/cache, would gain a directory per test run.
pub(crate) fn kubectl_command(bin_dir: &Path, kubeconfig: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(bin_dir.join("kubectl"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(dir.join("kubectl-cache"));
    cmd
}

/// Runs `attempt` again (up to [`PORT_ATTEMPTS`] times) when it failed because another process
/// took one of the ports [`free_port`] picked.
fn retry_port_races<T>(mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut tries = 1;
    loop {
        match attempt() {
            Err(e)
                if tries < PORT_ATTEMPTS && format!("{e:#}").contains("address already in use") =>
            {
                eprintln!("testenv: a port was taken meanwhile; retrying with fresh ports");
                tries += 1;
            }
            result => return result,
        }
    }
}

/// A new directory `target/testenv/cp-<pid>-<n>`, after removing those left by dead processes
/// (a SIGKILLed test never runs its Drop).
fn new_test_dir() -> Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let root = crate::target_dir().join("testenv");
    remove_stale_dirs(&root);
    let pid = std::process::id();
    let dir = root.join(format!("cp-{pid}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn remove_stale_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.strip_prefix("cp-"))
            .and_then(|n| n.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = owner
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// 128 random bits from the kernel, as hex: the admin bearer token.
pub(crate) fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A pid file holds the pid and the program path (argv[0]) to check it against.
pub(crate) fn write_pid_file(path: &Path, pid: u32, program: &Path) -> Result<()> {
    std::fs::write(path, format!("{pid}\n{}\n", program.display()))
        .with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn read_pid_file(path: &Path) -> Option<(u32, PathBuf)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let program = PathBuf::from(lines.next()?);
    Some((pid, program))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_round_trip() {
        let dir = std::env::temp_dir().join(format!("testenv-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.pid");
        write_pid_file(&path, 42, Path::new("/bin/etcd")).unwrap();
        assert_eq!(read_pid_file(&path), Some((42, PathBuf::from("/bin/etcd"))));
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(read_pid_file(&path), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn port_races_are_retried_and_other_errors_are_not() {
        let mut calls = 0;
        let result: Result<()> = retry_port_races(|| {
            calls += 1;
            bail!("bind: address already in use")
        });
        assert!(result.is_err());
        assert_eq!(calls, PORT_ATTEMPTS);

        let mut calls = 0;
        let result: Result<()> = retry_port_races(|| {
            calls += 1;
            bail!("something else")
        });
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_server_exiting_during_start_up_fails_with_its_log() {
        use std::os::unix::process::ExitStatusExt;
        let dir = std::env::temp_dir().join(format!("testenv-early-{}", std::process::id()));
        let layout = Layout::fresh(&dir).unwrap();
        std::fs::write(layout.log(ETCD), "starting\nbind: address already in use\n").unwrap();
        let launched = Launched {
            layout,
            server: "https://127.0.0.1:1".into(),
            token: "t".into(),
            servers: vec![(ETCD, 0), (APISERVER, 1)],
            ports: Ports {
                etcd_client: 1,
                etcd_peer: 2,
                secure: 3,
            },
        };
        let started = Instant::now();
        let err = wait_ready(Path::new("/nonexistent"), &launched, |i| {
            Ok((i == 0).then(|| ExitStatus::from_raw(1 << 8)))
        })
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.starts_with("etcd exited during start-up"),
            "{message}"
        );
        assert!(
            message.contains("bind: address already in use"),
            "{message}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failed_runs_keep_logs_out_of_the_sweep() {
        let root = std::env::temp_dir().join(format!("testenv-keep-{}", std::process::id()));
        let dir = root.join("cp-99999999-0");
        std::fs::create_dir_all(dir.join("etcd")).unwrap();
        std::fs::write(dir.join("kube-apiserver.log"), "log").unwrap();
        keep_logs(&dir);
        remove_stale_dirs(&root);
        let kept = root.join("failed-cp-99999999-0");
        assert!(kept.join("kube-apiserver.log").is_file());
        assert!(!kept.join("etcd").exists() && !dir.exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn stale_dirs_of_dead_processes_are_removed() {
        let root = std::env::temp_dir().join(format!("testenv-stale-{}", std::process::id()));
        // pid_max is at most 2^22, so this pid cannot exist.
        let dead = root.join("cp-99999999-0");
        let alive = root.join(format!("cp-{}-0", std::process::id()));
        let other = root.join("unrelated");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        remove_stale_dirs(&root);
        assert!(!dead.exists() && alive.exists() && other.exists());
        std::fs::remove_dir_all(root).unwrap();
    }
}
