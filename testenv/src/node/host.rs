//! What the node changes on the host outside its state directory, and putting it back:
//! sysctls, iptables chains in both backends, the cni0 bridge, network namespaces, mounts,
//! cgroups and stray container processes. Every step is idempotent, so `node up` runs the
//! whole teardown first to clear what a killed earlier run left behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::process::run_capture;

/// The sysctls the node's components change (the kubelet's kernel tunables, kube-proxy's
/// route_localnet and conntrack timeouts, ip_forward for pod networking), saved before the
/// first change and restored by the teardown.
const SYSCTLS: [&str; 10] = [
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Directories the components make outside the state directory whatever their flags say:
/// containerd 1.6's shim sockets and runc state, libcni's result cache, the kubelet's
/// device-plugins dir and the pods' logs. Removed by the teardown only if `up` found them
/// missing (a host's own containerd or kubelet keeps its files).
const OUTSIDE_PATHS: [&str; 5] = [
    "/run/containerd",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
];

/// iptables front ends: the kubelet writes KUBE-FIREWALL into the legacy backend and its
/// canaries into nf_tables, so both are cleaned, for IPv4 and IPv6.
const IPTABLES: [&str; 4] = [
    "iptables-legacy",
    "iptables-nft",
    "ip6tables-legacy",
    "ip6tables-nft",
];

/// Chains the node's components and the CNI plugins make.
fn is_node_chain(chain: &str) -> bool {
    chain.starts_with("KUBE-") || chain.starts_with("CNI-")
}

/// Records in `file` which of [`OUTSIDE_PATHS`] do not exist yet, unless it exists (then it
/// is from before an earlier run that was killed).
pub(crate) fn record_missing_paths(file: &Path) -> Result<()> {
    if file.is_file() {
        return Ok(());
    }
    let missing: String = OUTSIDE_PATHS
        .iter()
        .filter(|p| !Path::new(p).exists())
        .map(|p| format!("{p}\n"))
        .collect();
    std::fs::write(file, missing).with_context(|| format!("writing {}", file.display()))
}

/// Removes the paths [`record_missing_paths`] found missing, and the record.
pub(crate) fn remove_recorded_paths(file: &Path) -> Result<()> {
    let Ok(recorded) = std::fs::read_to_string(file) else {
        return Ok(());
    };
    for path in recorded.lines().filter(|p| OUTSIDE_PATHS.contains(p)) {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {path}"));
            }
            _ => {}
        }
    }
    std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))
}

/// Saves the sysctls in `file` unless it exists (then it holds the values from before an
/// earlier run that was killed, which are the ones to restore).
pub(crate) fn save_sysctls(file: &Path) -> Result<()> {
    if file.is_file() {
        return Ok(());
    }
    let mut saved = String::new();
    for key in SYSCTLS {
        if let Ok(value) = std::fs::read_to_string(Path::new("/proc/sys").join(key)) {
            saved.push_str(&format!("{key}={}\n", value.trim()));
        }
    }
    std::fs::write(file, saved).with_context(|| format!("writing {}", file.display()))
}

pub(crate) fn set_sysctl(key: &str, value: &str) -> Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
        .with_context(|| format!("setting {key}={value} (the node needs root)"))
}

/// Restores the sysctls saved by [`save_sysctls`] and removes the file.
pub(crate) fn restore_sysctls(file: &Path) -> Result<()> {
    let Ok(saved) = std::fs::read_to_string(file) else {
        return Ok(());
    };
    for (key, value) in saved.lines().filter_map(|l| l.split_once('=')) {
        set_sysctl(key, value)?;
    }
    std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))
}

/// Kills every container process of the node whose state directory is `state_dir`: the shims
/// of its containerd (`containerd-shim-runc-v2 ... -address <state>/containerd.sock`),
/// everything below them, and containers whose shim is already gone (a killed run orphans
/// them), known by their root filesystem, which lives in the state directory.
pub(crate) fn kill_containers(state_dir: &Path, socket: &Path) -> Result<usize> {
    let socket = socket.as_os_str().as_encoded_bytes();
    let processes = processes();
    let orphans = processes.iter().filter(|p| {
        std::fs::read_link(format!("/proc/{}/root", p.pid))
            .is_ok_and(|root| root.starts_with(state_dir))
    });
    let shims: Vec<u32> = processes
        .iter()
        .filter(|p| {
            p.argv0.ends_with(b"containerd-shim-runc-v2")
                && p.cmdline.split(|b| *b == 0).any(|a| a == socket)
        })
        .map(|p| p.pid)
        .collect();
    let mut doomed: BTreeSet<u32> = shims.iter().copied().collect();
    doomed.extend(orphans.map(|p| p.pid));
    // Descendants: repeat until no new child of a doomed process turns up.
    loop {
        let before = doomed.len();
        for p in &processes {
            if doomed.contains(&p.ppid) {
                doomed.insert(p.pid);
            }
        }
        if doomed.len() == before {
            break;
        }
    }
    for pid in &doomed {
        if let Ok(pid) = libc::pid_t::try_from(*pid) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    Ok(doomed.len())
}

struct Process {
    pid: u32,
    ppid: u32,
    argv0: Vec<u8>,
    cmdline: Vec<u8>,
}

fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`: comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv0 = cmdline
                .split(|b| *b == 0)
                .next()
                .unwrap_or_default()
                .to_vec();
            Some(Process {
                pid,
                ppid,
                argv0,
                cmdline,
            })
        })
        .collect()
}

/// Processes with `dir` in their command line or in a kubepods cgroup, as `pid argv0`.
pub(crate) fn processes_matching(dir: &Path) -> Vec<String> {
    let needle = dir.as_os_str().as_encoded_bytes();
    processes()
        .into_iter()
        .filter(|p| {
            let in_pod = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid))
                .is_ok_and(|c| c.contains("/kubepods"));
            in_pod || p.cmdline.windows(needle.len()).any(|w| w == needle)
        })
        .map(|p| format!("{} {}", p.pid, String::from_utf8_lossy(&p.argv0)))
        .collect()
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mountinfo).
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(field: &str) -> PathBuf {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// Lazily unmounts everything under `dir` (a busy mount is detached now, freed when unused).
pub(crate) fn unmount_under(dir: &Path) -> Result<usize> {
    let mounts = mounts_under(dir);
    for mount in &mounts {
        let path = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes())
            .context("a mount path with a NUL")?;
        // SAFETY: path is a valid NUL-terminated string for the duration of the call.
        let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: no longer a mount point (a parent's detach took it along).
            if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e).with_context(|| format!("unmounting {}", mount.display()));
            }
        }
    }
    Ok(mounts.len())
}

/// The network namespaces containerd's CRI made for pods (`/run/netns/cni-<uuid>`).
pub(crate) fn pod_netns() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("cni-"))
        .collect();
    names.sort();
    names
}

pub(crate) fn remove_pod_netns() -> Result<()> {
    for name in pod_netns() {
        let path = Path::new("/run/netns").join(&name);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: as in unmount_under.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Interface names, from /sys/class/net.
pub(crate) fn interfaces() -> BTreeSet<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes the CNI bridge (its veths go with their pods' namespaces).
pub(crate) fn delete_bridge() -> Result<()> {
    if interfaces().contains("cni0") {
        run_capture(
            Command::new("ip").args(["link", "delete", "cni0"]),
            "ip link delete cni0",
        )?;
    }
    Ok(())
}

/// Removes every rule that jumps to a KUBE-*/CNI-* chain and then those chains, in every
/// table of both iptables backends, IPv4 and IPv6. A missing front end is skipped.
pub(crate) fn remove_iptables_chains() -> Result<()> {
    for tool in IPTABLES {
        let Ok(saved) = run_capture(&mut Command::new(format!("{tool}-save")), tool) else {
            continue;
        };
        for (table, chains) in tables(&saved) {
            // Rules are deleted by number, last first, so the numbers of the others hold.
            for (chain, rules) in &chains {
                if is_node_chain(chain) {
                    continue;
                }
                for (number, rule) in rules.iter().enumerate().rev() {
                    if rule_jumps_to_node_chain(rule) {
                        iptables(
                            tool,
                            &["-t", &table, "-D", chain, &(number + 1).to_string()],
                        )?;
                    }
                }
            }
            let node_chains: Vec<&String> = chains.keys().filter(|c| is_node_chain(c)).collect();
            // Flush all before deleting any: node chains jump to each other.
            for chain in &node_chains {
                iptables(tool, &["-t", &table, "-F", chain])?;
            }
            for chain in &node_chains {
                iptables(tool, &["-t", &table, "-X", chain])?;
            }
        }
    }
    Ok(())
}

fn rule_jumps_to_node_chain(rule: &str) -> bool {
    let words: Vec<&str> = rule.split_whitespace().collect();
    words
        .windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && is_node_chain(w[1]))
}

fn iptables(tool: &str, args: &[&str]) -> Result<()> {
    run_capture(
        Command::new(tool).args(args),
        &format!("{tool} {}", args.join(" ")),
    )
    .map(|_| ())
}

type Chains = std::collections::BTreeMap<String, Vec<String>>;

/// `iptables-save` output as table -> chain -> its rules (the text after `-A CHAIN`).
fn tables(saved: &str) -> Vec<(String, Chains)> {
    let mut tables: Vec<(String, Chains)> = Vec::new();
    for line in saved.lines() {
        if let Some(table) = line.strip_prefix('*') {
            tables.push((table.to_owned(), Chains::new()));
        } else if let Some((_, chains)) = tables.last_mut() {
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    chains.entry(name.to_owned()).or_default();
                }
            } else if let Some((chain, rest)) = line
                .strip_prefix("-A ")
                .and_then(|rule| rule.split_once(' '))
            {
                chains
                    .entry(chain.to_owned())
                    .or_default()
                    .push(rest.to_owned());
            }
        }
    }
    tables
}

/// The host state the node may change, to compare before `up` and after `down`: iptables
/// chains and rules (both backends; counters and empty built-in tables left out), interfaces,
/// pod network namespaces, mounts under the state dir, sysctls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    pub iptables: BTreeSet<String>,
    pub interfaces: BTreeSet<String>,
    pub pod_netns: Vec<String>,
    pub mounts: BTreeSet<PathBuf>,
    pub sysctls: Vec<(String, String)>,
    /// Which of the directories the components make outside the state directory exist.
    pub outside_paths: Vec<String>,
    /// The kubelet's `kubepods` cgroups.
    pub cgroups: Vec<PathBuf>,
}

impl HostSnapshot {
    /// Takes the snapshot; `ignore` drops interfaces and mount points (by name) that other
    /// tests make meanwhile.
    pub fn take(ignore: impl Fn(&str) -> bool) -> HostSnapshot {
        let mut rules = BTreeSet::new();
        for tool in IPTABLES {
            let Ok(saved) = run_capture(&mut Command::new(format!("{tool}-save")), tool) else {
                continue;
            };
            for (table, chains) in tables(&saved) {
                for (chain, chain_rules) in chains {
                    if !is_builtin(&chain) {
                        rules.insert(format!("{tool} {table} :{chain}"));
                    }
                    for rule in chain_rules {
                        rules.insert(format!("{tool} {table} -A {chain} {rule}"));
                    }
                }
            }
        }
        HostSnapshot {
            iptables: rules,
            interfaces: interfaces().into_iter().filter(|i| !ignore(i)).collect(),
            pod_netns: pod_netns(),
            mounts: mounts_under(Path::new("/"))
                .into_iter()
                .filter(|m| !ignore(&m.to_string_lossy()))
                .collect(),
            sysctls: SYSCTLS
                .iter()
                .map(|k| {
                    let v =
                        std::fs::read_to_string(Path::new("/proc/sys").join(k)).unwrap_or_default();
                    ((*k).to_owned(), v.trim().to_owned())
                })
                .collect(),
            outside_paths: OUTSIDE_PATHS
                .iter()
                .filter(|p| Path::new(p).exists())
                .map(|p| (*p).to_owned())
                .collect(),
            cgroups: kubepods_cgroups(),
        }
    }
}

fn is_builtin(chain: &str) -> bool {
    matches!(
        chain,
        "INPUT" | "OUTPUT" | "FORWARD" | "PREROUTING" | "POSTROUTING"
    )
}

fn kubepods_cgroups() -> Vec<PathBuf> {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = hierarchies
        .flatten()
        .map(|h| h.path().join("kubepods"))
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    found
}

/// Removes the cgroups the kubelet made (`kubepods` in every v1 hierarchy, cgroupfs driver),
/// deepest first. Only empty cgroups can go, so this runs after every container is gone.
pub(crate) fn remove_kubepods_cgroups() {
    for root in kubepods_cgroups() {
        let mut dirs = Vec::new();
        collect_dirs(&root, &mut dirs);
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in dirs {
            // A cgroup directory goes with rmdir only (its files are the kernel's).
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "# Generated by iptables-nft-save\n*nat\n:PREROUTING ACCEPT [0:0]\n\
        :POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:CNI-abc - [0:0]\n\
        -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
        -A POSTROUTING -s 10.88.0.2/32 -j CNI-abc\n-A POSTROUTING -o eth0 -j MASQUERADE\n\
        -A CNI-abc -d 10.88.0.0/24 -j ACCEPT\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";

    #[test]
    fn save_output_is_read_per_table_and_chain() {
        let tables = tables(SAVED);
        assert_eq!(tables.len(), 2);
        let (name, nat) = &tables[0];
        assert_eq!(name, "nat");
        assert_eq!(nat["POSTROUTING"].len(), 2);
        assert!(nat["KUBE-SERVICES"].is_empty());
        assert_eq!(nat["CNI-abc"], ["-d 10.88.0.0/24 -j ACCEPT"]);
    }

    #[test]
    fn only_jumps_to_node_chains_are_removed() {
        let tables = tables(SAVED);
        let post = &tables[0].1["POSTROUTING"];
        assert!(rule_jumps_to_node_chain(&post[0]));
        assert!(!rule_jumps_to_node_chain(&post[1]));
        assert!(rule_jumps_to_node_chain(&tables[0].1["PREROUTING"][0]));
        assert!(!is_node_chain("DOCKER") && is_node_chain("KUBE-FIREWALL"));
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b/c"), PathBuf::from("/a b/c"));
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }
}
