//! The SSRF guard: which addresses a source URL may lead to.
//!
//! A source URL is written by whoever may create a ModelCostMapSync, and the operator's pod
//! may reach places they may not (cloud metadata services hand out credentials). So
//! link-local and cloud metadata addresses are refused: for IP literals in the URL, for every
//! address a host name resolves to (a DNS resolver of our own, so a name cannot point there
//! either), and for every redirect target, unless the operator-wide allow-list
//! (`--allow-source-cidr`) covers them.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use ipnet::IpNet;
use url::{Host, Url};

use super::{FetchError, sanitize_url};

/// IPv4 addresses of cloud metadata services that are not link-local
/// (link-local ones, like 169.254.169.254, are covered by the range check).
const METADATA_V4: [Ipv4Addr; 2] = [
    // Alibaba Cloud ECS metadata.
    Ipv4Addr::new(100, 100, 100, 200),
    // Oracle Cloud (Classic) metadata.
    Ipv4Addr::new(192, 0, 0, 192),
];

/// IPv6 addresses of cloud metadata services. These are unique-local (fd00::/8),
/// not link-local, so a fe80::/10 check alone would let them through.
const METADATA_V6: [Ipv6Addr; 3] = [
    // AWS IMDS over IPv6.
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
    // AWS EKS Pod Identity agent over IPv6 (hands out credentials).
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0023),
    // Google Compute Engine metadata over IPv6.
    Ipv6Addr::new(0xfd20, 0x00ce, 0, 0, 0, 0, 0, 0x0254),
];

/// Which addresses may be connected to.
#[derive(Debug, Clone)]
pub(super) struct AddressPolicy {
    pub(super) allowed: Vec<IpNet>,
}

impl AddressPolicy {
    pub(super) fn permits(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        let allowed = self
            .allowed
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical));
        allowed || !is_blocked(ip)
    }

    /// Applies the policy to a URL whose host is an IP literal. Host names are
    /// checked later, on the resolved addresses, by [`PolicyResolver`].
    pub(super) fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        let ip = match url.host() {
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            // Belt and braces: the URL parser normalises IPv4 spellings to
            // `Host::Ipv4`, but the connector also short-cuts anything that
            // parses as an address, so check that form too.
            Some(Host::Domain(d)) => match d.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return Ok(()),
            },
            None => return Ok(()),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(FetchError::ForbiddenAddress {
                url: sanitize_url(url),
                address: ip,
            })
        }
    }

    /// Keeps the permitted addresses of a DNS answer. Dropping only the blocked
    /// ones (rather than failing) keeps a mixed answer usable while making sure
    /// we never connect to a blocked one.
    pub(super) fn filter(&self, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, BlockedAddress> {
        let (ok, refused): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| self.permits(a.ip()));
        match (ok.is_empty(), refused.first()) {
            (true, Some(first)) => Err(BlockedAddress {
                address: first.ip(),
            }),
            _ => Ok(ok),
        }
    }
}

/// Link-local (IPv4 169.254.0.0/16, IPv6 fe80::/10) or a known metadata
/// address, also when wrapped in IPv4-mapped or NAT64 (64:ff9b::/96) IPv6.
fn is_blocked(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_blocked_v4(v4),
        IpAddr::V6(v6) => {
            v6.is_unicast_link_local()
                || METADATA_V6.contains(&v6)
                || nat64_embedded(v6).is_some_and(is_blocked_v4)
        }
    }
}

fn is_blocked_v4(v4: Ipv4Addr) -> bool {
    v4.is_link_local() || METADATA_V4.contains(&v4)
}

/// The IPv4 address inside a well-known-prefix NAT64 address (RFC 6052): on
/// a NAT64 network, 64:ff9b::a9fe:a9fe reaches 169.254.169.254.
fn nat64_embedded(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        Some(Ipv4Addr::new(a, b, c, d))
    } else {
        None
    }
}

/// Error returned by [`PolicyResolver`] when a name resolves only to blocked
/// addresses; found again in the reqwest error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("resolved only to blocked address {address}")]
pub(super) struct BlockedAddress {
    pub(super) address: IpAddr,
}

type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
pub(super) type LookupFn = Arc<dyn Fn(String) -> LookupFuture + Send + Sync>;

/// DNS resolver that applies the address policy to every answer, so a host
/// name (or a redirect to one) cannot lead to a metadata endpoint.
pub(super) struct PolicyResolver {
    pub(super) policy: Arc<AddressPolicy>,
    pub(super) lookup: LookupFn,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        let lookup = (self.lookup)(host.clone());
        Box::pin(async move {
            let addrs = lookup.await?;
            let total = addrs.len();
            let ok = policy.filter(addrs)?;
            if ok.len() < total {
                tracing::debug!(
                    host = %host,
                    dropped = total - ok.len(),
                    "dropped blocked addresses from a DNS answer"
                );
            }
            let addrs: reqwest::dns::Addrs = Box::new(ok.into_iter());
            Ok(addrs)
        })
    }
}

pub(super) fn system_lookup() -> LookupFn {
    Arc::new(|host: String| {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.collect())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::str::FromStr;

    use std::time::Duration;

    use bytes::Bytes;

    use crate::sync::fetch::{FetchOutcome, FetchPolicy, FetchRequest, Fetcher};

    fn policy_with(allowed: &[&str]) -> AddressPolicy {
        AddressPolicy {
            allowed: allowed.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn link_local_and_metadata_addresses_are_blocked() {
        let p = policy_with(&[]);
        for blocked in [
            "169.254.169.254",
            "169.254.0.1",
            "169.254.170.2",
            "100.100.100.200",
            "192.0.0.192",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "fd00:ec2::23",
            "fd20:ce::254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!p.permits(ip(blocked)), "{blocked} should be blocked");
        }
        for allowed in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.100.100.201",
            "fd00::1",
            "fec0::1",
            "8.8.8.8",
            "2001:db8::1",
        ] {
            assert!(p.permits(ip(allowed)), "{allowed} should be allowed");
        }
    }

    #[test]
    fn the_allow_list_unblocks_an_address() {
        let p = policy_with(&["169.254.0.0/16", "fd00:ec2::254/128"]);
        assert!(p.permits(ip("169.254.169.254")));
        assert!(p.permits(ip("::ffff:169.254.169.254")));
        assert!(p.permits(ip("fd00:ec2::254")));
        assert!(!p.permits(ip("fe80::1")));
        assert!(!p.permits(ip("100.100.100.200")));
    }

    #[test]
    fn ip_literals_in_urls_are_checked() {
        let p = policy_with(&[]);
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            // Alternative IPv4 spellings the URL parser normalises.
            "http://2852039166/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://169.254.169.254./",
            "http://[fe80::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[fd00:ec2::254]/",
            "https://100.100.100.200/",
        ] {
            let err = p.check_url(&Url::parse(url).unwrap()).unwrap_err();
            assert!(
                matches!(err, FetchError::ForbiddenAddress { .. }),
                "{url}: {err:?}"
            );
        }
        for url in [
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://metadata.google.internal/",
        ] {
            // Host names pass here; the resolver checks their addresses.
            assert!(p.check_url(&Url::parse(url).unwrap()).is_ok(), "{url}");
        }
    }

    #[test]
    fn blocked_addresses_are_dropped_from_dns_answers() {
        let p = policy_with(&[]);
        let sa = |s: &str| SocketAddr::new(ip(s), 0);
        let mixed = vec![sa("169.254.169.254"), sa("127.0.0.1"), sa("fe80::1")];
        assert_eq!(p.filter(mixed).unwrap(), vec![sa("127.0.0.1")]);
        let err = p.filter(vec![sa("169.254.169.254")]).unwrap_err();
        assert_eq!(err.address, ip("169.254.169.254"));
        assert!(p.filter(vec![]).unwrap().is_empty());
    }

    /// A lookup table standing in for DNS, so the resolver's policy can be
    /// exercised through the real client without a DNS server.
    fn fake_lookup(table: &'static [(&'static str, &'static [&'static str])]) -> LookupFn {
        let table: HashMap<&str, Vec<SocketAddr>> = table
            .iter()
            .map(|(name, addrs)| {
                (
                    *name,
                    addrs.iter().map(|a| SocketAddr::new(ip(a), 0)).collect(),
                )
            })
            .collect();
        let table = Arc::new(table);
        Arc::new(move |host: String| {
            let answer = table.get(host.as_str()).cloned();
            Box::pin(async move {
                answer.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))
            })
        })
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_blocked_addresses() {
        let fetcher = Fetcher::with_lookup(
            FetchPolicy {
                max_attempts: 3,
                min_backoff: Duration::from_millis(1),
                ..FetchPolicy::default()
            },
            fake_lookup(&[("metadata.test", &["169.254.169.254", "fd00:ec2::254"])]),
        )
        .unwrap();
        let err = fetcher
            .fetch(&FetchRequest {
                url: "http://metadata.test/computeMetadata/v1/?token=x",
                headers: &[],
                timeout: Duration::from_secs(5),
                revision: None,
            })
            .await
            .unwrap_err();
        match &err {
            FetchError::ForbiddenAddress { url, address } => {
                assert_eq!(url, "http://metadata.test/computeMetadata/v1/");
                assert_eq!(*address, ip("169.254.169.254"));
            }
            other => panic!("expected ForbiddenAddress, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn resolver_drops_blocked_addresses_from_mixed_answers() {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // fe80::1 (no scope id) cannot be connected to, so no packet leaves
        // the machine even if filtering were broken; filtering itself is
        // covered by `address_policy_filters_dns_answers`.
        let fetcher = Fetcher::with_lookup(
            FetchPolicy::default(),
            fake_lookup(&[("mixed.test", &["fe80::1", "127.0.0.1"])]),
        )
        .unwrap();
        let url = format!("http://mixed.test:{port}/");
        let out = fetcher
            .fetch(&FetchRequest {
                url: &url,
                headers: &[],
                timeout: Duration::from_secs(5),
                revision: None,
            })
            .await
            .unwrap();
        assert_eq!(
            out,
            FetchOutcome::Fetched {
                body: Bytes::from_static(b"ok"),
                revision: None
            }
        );
    }

    #[tokio::test]
    async fn resolver_passes_system_answers_through() {
        let resolver = PolicyResolver {
            policy: Arc::new(policy_with(&[])),
            lookup: system_lookup(),
        };
        use reqwest::dns::Resolve;
        // An IP-literal name is answered locally by getaddrinfo, no DNS query.
        let err = resolver
            .resolve(reqwest::dns::Name::from_str("169.254.169.254").unwrap())
            .await
            .err()
            .unwrap();
        assert!(err.downcast_ref::<BlockedAddress>().is_some(), "{err}");
        let addrs: Vec<_> = resolver
            .resolve(reqwest::dns::Name::from_str("127.0.0.1").unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs, vec![SocketAddr::new(ip("127.0.0.1"), 0)]);
    }
}
