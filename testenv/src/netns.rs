//! Test hosts: network namespaces with an address of their own, reachable from the test
//! process over a veth pair.
//!
//! The API server refuses loopback and link-local addresses in EndpointSlices, so a test
//! that wants "a pod behind a Service" needs a server on some other address that this host
//! can reach. A [`TestHost`] is that: `ip netns add`, a veth pair with a /30 of 10.231.0.0/16,
//! host side here, peer side in the namespace. [`TestHost::bind`] opens a listening socket
//! inside the namespace; the socket stays there while the test serves it from its own
//! runtime. Needs root and iproute2's `ip`; without them it fails and says so.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::process::run_capture;

/// Every namespace this module makes is named `<PREFIX><pid>-<n>`.
const PREFIX: &str = "costmap-test-";

/// A network namespace with one address, `addr`, routed from this host.
#[derive(Debug)]
pub struct TestHost {
    name: String,
    addr: Ipv4Addr,
}

impl TestHost {
    /// Makes a new test host. Namespaces that earlier test processes left behind (killed
    /// before they could clean up) are removed first.
    pub fn create() -> Result<TestHost> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        sweep_orphans();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{pid}-{n}");
        // Interface names have at most 15 bytes: "cm" + pid in hex (at most 6) + n + side.
        let host_if = format!("cm{pid:x}x{n}h");
        let peer_if = format!("cm{pid:x}x{n}p");
        // A /30 per host: .1 here, .2 in the namespace. pid and counter keep concurrent
        // test processes apart.
        let block = ((pid % 1024) * 16 + n % 16) % 16384;
        let base = u32::from(Ipv4Addr::new(10, 231, 0, 0)) + block * 4;
        let (here, there) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));

        let host = TestHost { name, addr: there };
        ip(&["netns", "add", &host.name])?;
        // From here on, dropping `host` removes the namespace and the veth pair with it.
        let ns = host.name.as_str();
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ])?;
        ip(&["link", "set", &peer_if, "netns", ns])?;
        ip(&["addr", "add", &format!("{here}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{there}/30"),
            "dev",
            &peer_if,
        ])?;
        ip(&["-n", ns, "link", "set", &peer_if, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// The host's address, as a pod IP would be.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A TCP listener on `addr():port` (0: any free port) inside the namespace. Set it
    /// non-blocking to hand it to tokio.
    pub fn bind(&self, port: u16) -> Result<TcpListener> {
        let path = format!("/run/netns/{}", self.name);
        let addr = SocketAddr::from((self.addr, port));
        // setns changes only the calling thread, so a thread of its own enters the
        // namespace, opens the socket and ends; the socket stays in the namespace.
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<TcpListener> {
                    let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
                    // SAFETY: setns on a valid namespace fd affects only this thread.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("entering {path} (tests run as root)"));
                    }
                    TcpListener::bind(addr).with_context(|| format!("binding {addr} in {path}"))
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the thread binding {addr} panicked"))?
        })
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes the peer interface, and so the whole veth pair.
        if let Err(err) = ip(&["netns", "delete", &self.name]) {
            eprintln!("removing test host {}: {err:#}", self.name);
        }
    }
}

fn ip(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run_capture(&mut cmd, &format!("ip {}", args.join(" ")))
        .context("test hosts need iproute2's `ip` and root (CAP_NET_ADMIN)")
}

/// Removes namespaces of test processes that no longer run.
fn sweep_orphans() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn a_test_host_is_reachable_at_its_own_address_and_removed_on_drop() {
        let host = TestHost::create().unwrap();
        assert_eq!(host.addr().octets()[..2], [10, 231]);
        let listener = host.bind(0).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(addr.ip(), host.addr());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(b"hello from the namespace").unwrap();
        });
        let mut reply = String::new();
        TcpStream::connect(addr)
            .unwrap()
            .read_to_string(&mut reply)
            .unwrap();
        server.join().unwrap();
        assert_eq!(reply, "hello from the namespace");
        // Nothing listens on that address in this (the host's) namespace.
        assert!(TcpListener::bind(addr).is_err());

        let name = host.name().to_owned();
        drop(host);
        assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
    }
}
