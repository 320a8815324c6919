//! Loopback ports.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A loopback TCP port that was free a moment ago: bound on 127.0.0.1:0, then released.
///
/// Another process can take it before the caller binds it; [`crate::ControlPlane::start`]
/// retries with fresh ports when a server reports "address already in use".
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a port")?;
    Ok(listener.local_addr()?.port())
}

/// Polls until something accepts TCP connections on 127.0.0.1:`port`, or `timeout` passes.
pub fn wait_for_tcp(port: u16, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing accepted connections on {addr} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable_and_nonzero() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }

    #[test]
    fn wait_for_tcp_sees_a_listener() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        wait_for_tcp(port, Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn wait_for_tcp_times_out_on_a_port_nobody_listens_on() {
        // A socket that is bound but not listening: connections are refused, and nothing else
        // (not even a self-connect) can use the port while it is held.
        // SAFETY: plain socket syscalls on a descriptor this test owns and closes.
        let (fd, port) = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let addr_ptr = (&raw mut addr).cast::<libc::sockaddr>();
            assert_eq!(libc::bind(fd, addr_ptr, len), 0);
            let mut len = len;
            assert_eq!(libc::getsockname(fd, addr_ptr, &mut len), 0);
            (fd, u16::from_be(addr.sin_port))
        };
        let err = wait_for_tcp(port, Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("within"), "{err}");
        // SAFETY: fd is ours and still open.
        unsafe { libc::close(fd) };
    }
}
