//! The outbound address policy: where a URL a tenant wrote may lead.
//!
//! Source URLs (and each redirect) and consumer URLs are written by whoever may create a
//! ModelCostMapSync, and the operator's pod may reach places they may not: its own
//! endpoint (every tenant's maps), the node's loopback services, cloud metadata services
//! (which hand out credentials). So loopback, unspecified, link-local and cloud metadata
//! addresses (also inside IPv4-mapped, IPv4-compatible and NAT64 IPv6 forms) and the
//! operator's own pod and Service addresses are refused: for IP literals in a URL, and for
//! every address a host name resolves to (a DNS resolver of our own, so a name cannot
//! point there either), unless an operator-wide allow-list (`--allow-source-cidr`,
//! `--allow-consumer-cidr`) covers them. The operator's own addresses are refused even
//! then: an allow-list of the pod network must not reopen the way to its own endpoint.
//!
//! One policy for the fetcher and the proxy client. `check` and `diff`, run by a person on
//! their own machine, use [`AddressPolicy::local`]: any address but link-local and cloud
//! metadata (their credentials are the machine's, not the person's). The agent reaches the
//! proxy of its own pod: [`AddressPolicy::unrestricted`].

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use url::{Host, Url};

/// IPv4 addresses of cloud metadata services that are not link-local
/// (link-local ones, like 169.254.169.254, are covered by the range check).
const METADATA_V4: [Ipv4Addr; 3] = [
    // Alibaba Cloud ECS metadata.
    Ipv4Addr::new(100, 100, 100, 200),
    // Oracle Cloud (Classic) metadata.
    Ipv4Addr::new(192, 0, 0, 192),
    // Azure WireServer (VM agent and extension configuration, DNS and DHCP of the host).
    Ipv4Addr::new(168, 63, 129, 16),
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

/// Why an address is refused; its `Display` completes "... is ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 0.0.0.0/8, :: (connecting there reaches the host itself).
    Unspecified,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// A known cloud metadata address.
    Metadata,
    /// 255.255.255.255.
    Broadcast,
    /// One of the operator's own pod or Service addresses.
    Operator,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Blocked::Loopback => "a loopback address",
            Blocked::Unspecified => "an unspecified address",
            Blocked::LinkLocal => "a link-local address",
            Blocked::Metadata => "a cloud metadata address",
            Blocked::Broadcast => "the broadcast address",
            Blocked::Operator => "an address of the operator itself",
        })
    }
}

/// The operator's own pod and Service addresses, shared by every policy of the process
/// and updated while it runs (the Service is read again now and then).
#[derive(Clone, Default)]
pub struct OwnAddresses(Arc<RwLock<Vec<IpAddr>>>);

impl OwnAddresses {
    /// These addresses and nothing else.
    pub fn of(addresses: Vec<IpAddr>) -> OwnAddresses {
        OwnAddresses(Arc::new(RwLock::new(addresses)))
    }

    /// Replaces the addresses.
    pub fn set(&self, addresses: Vec<IpAddr>) {
        let mut held = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *held = addresses;
    }

    /// The addresses now.
    pub fn get(&self) -> Vec<IpAddr> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let held = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        held.iter()
            .any(|own| own.to_canonical() == ip.to_canonical())
    }
}

impl std::fmt::Debug for OwnAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OwnAddresses").field(&self.get()).finish()
    }
}

impl PartialEq for OwnAddresses {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for OwnAddresses {}

/// The pod's own addresses from the downward API (`POD_IP`, and `POD_IPS`, comma
/// separated, on dual-stack clusters); unparseable entries are skipped.
pub fn pod_addresses_from_env() -> Vec<IpAddr> {
    pod_addresses(|name| std::env::var(name).ok())
}

fn pod_addresses(var: impl Fn(&str) -> Option<String>) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = ["POD_IP", "POD_IPS"]
        .iter()
        .filter_map(|name| var(name))
        .flat_map(|value| {
            value
                .split(',')
                .filter_map(|part| part.trim().parse().ok())
                .collect::<Vec<IpAddr>>()
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Which addresses may be connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
    own: OwnAddresses,
    scope: Scope,
}

/// Whose URLs a policy guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// URLs tenants wrote, reached from the operator's pod: the whole block list.
    Tenant,
    /// URLs a person gives on their own machine: link-local and metadata only.
    Local,
    /// Anything.
    Any,
}

impl AddressPolicy {
    /// The block list, with `allowed` as exceptions (never for `own` addresses).
    pub fn new(allowed: Vec<IpNet>, own: OwnAddresses) -> AddressPolicy {
        AddressPolicy {
            allowed,
            own,
            scope: Scope::Tenant,
        }
    }

    /// For commands a person runs on their own machine: any address but link-local and
    /// cloud metadata ones, with `allowed` as exceptions.
    pub fn local(allowed: Vec<IpNet>) -> AddressPolicy {
        AddressPolicy {
            allowed,
            own: OwnAddresses::default(),
            scope: Scope::Local,
        }
    }

    /// Any address at all.
    pub fn unrestricted() -> AddressPolicy {
        AddressPolicy {
            allowed: Vec::new(),
            own: OwnAddresses::default(),
            scope: Scope::Any,
        }
    }

    /// Why `ip` may not be connected to, or None when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<Blocked> {
        if self.scope == Scope::Any {
            return None;
        }
        if self.own.contains(ip) {
            return Some(Blocked::Operator);
        }
        let embedded = embedded_v4(ip).map(IpAddr::V4);
        let allowed = self
            .allowed
            .iter()
            .any(|net| net.contains(&ip) || embedded.is_some_and(|v4| net.contains(&v4)));
        if allowed {
            return None;
        }
        match (self.scope, blocked(ip)) {
            (Scope::Local, Some(Blocked::LinkLocal | Blocked::Metadata)) | (Scope::Tenant, _) => {
                blocked(ip)
            }
            _ => None,
        }
    }

    /// Whether `ip` may be connected to.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.refusal(ip).is_none()
    }

    /// Whether an allow-list entry covers `ip` (a refusal aside).
    pub fn allows_explicitly(&self, ip: IpAddr) -> bool {
        let embedded = embedded_v4(ip).map(IpAddr::V4);
        self.allowed
            .iter()
            .any(|net| net.contains(&ip) || embedded.is_some_and(|v4| net.contains(&v4)))
    }

    /// Whether some addresses are allowed by CIDR.
    pub fn has_allow_list(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// Applies the policy to a URL whose host is an IP literal. Host names are
    /// checked later, on the resolved addresses, by [`PolicyResolver`].
    pub fn check_url(&self, url: &Url) -> Result<(), BlockedAddress> {
        let Some(ip) = url_ip(url) else {
            return Ok(());
        };
        match self.refusal(ip) {
            None => Ok(()),
            Some(why) => Err(BlockedAddress { address: ip, why }),
        }
    }

    /// Keeps the permitted addresses of a DNS answer. Dropping only the blocked
    /// ones (rather than failing) keeps a mixed answer usable while making sure
    /// we never connect to a blocked one.
    pub fn filter(&self, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, BlockedAddress> {
        let mut ok = Vec::with_capacity(addrs.len());
        let mut first_refused = None;
        for addr in addrs {
            match self.refusal(addr.ip()) {
                None => ok.push(addr),
                Some(why) => {
                    first_refused.get_or_insert(BlockedAddress {
                        address: addr.ip(),
                        why,
                    });
                }
            }
        }
        match (ok.is_empty(), first_refused) {
            (true, Some(refused)) => Err(refused),
            _ => Ok(ok),
        }
    }
}

/// The address of a URL whose host is an IP literal.
pub fn url_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        // Belt and braces: the URL parser normalises IPv4 spellings to `Host::Ipv4`, but
        // the connector also short-cuts anything that parses as an address.
        Host::Domain(d) => d.parse::<IpAddr>().ok(),
    }
}

/// Why `ip` is on the block list, looking inside IPv6 forms that carry an IPv4 address.
fn blocked(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some(Blocked::Loopback)
            } else if v6.is_unspecified() {
                Some(Blocked::Unspecified)
            } else if v6.is_unicast_link_local() {
                Some(Blocked::LinkLocal)
            } else if METADATA_V6.contains(&v6) {
                Some(Blocked::Metadata)
            } else {
                embedded_v4(ip).and_then(blocked_v4)
            }
        }
    }
}

fn blocked_v4(v4: Ipv4Addr) -> Option<Blocked> {
    if v4.is_loopback() {
        Some(Blocked::Loopback)
    } else if v4.octets()[0] == 0 {
        // 0.0.0.0/8 "this network": Linux connects 0.0.0.0 to the host itself.
        Some(Blocked::Unspecified)
    } else if v4.is_link_local() {
        Some(Blocked::LinkLocal)
    } else if METADATA_V4.contains(&v4) {
        Some(Blocked::Metadata)
    } else if v4.is_broadcast() {
        Some(Blocked::Broadcast)
    } else {
        None
    }
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped (::ffff:a.b.c.d),
/// IPv4-compatible (::a.b.c.d, deprecated but still routed by some stacks) and
/// well-known-prefix NAT64 (64:ff9b::a.b.c.d, RFC 6052: on a NAT64 network
/// 64:ff9b::a9fe:a9fe reaches 169.254.169.254).
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return Some(mapped);
    }
    let s = v6.segments();
    let tail = || {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
        return Some(tail());
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail());
    }
    None
}

/// A refused address: in a URL, or the only kind a host name resolved to; found again
/// in the reqwest error's source chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{address} is {why}")]
pub struct BlockedAddress {
    /// The refused address.
    pub address: IpAddr,
    /// Why.
    pub why: Blocked,
}

type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
pub(crate) type LookupFn = Arc<dyn Fn(String) -> LookupFuture + Send + Sync>;

/// DNS resolver that applies the address policy to every answer, so a host
/// name (or a redirect to one) cannot lead to a refused address.
pub(crate) struct PolicyResolver {
    pub(crate) policy: Arc<AddressPolicy>,
    pub(crate) lookup: LookupFn,
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
                    "dropped refused addresses from a DNS answer"
                );
            }
            let addrs: reqwest::dns::Addrs = Box::new(ok.into_iter());
            Ok(addrs)
        })
    }
}

pub(crate) fn system_lookup() -> LookupFn {
    Arc::new(|host: String| {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.collect())
        })
    })
}

/// The first [`BlockedAddress`] in an error's source chain.
pub fn find_blocked(err: &(dyn std::error::Error + 'static)) -> Option<BlockedAddress> {
    super::causes::causes(err).find_map(|cause| cause.downcast_ref::<BlockedAddress>().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::str::FromStr;

    use std::time::Duration;

    use bytes::Bytes;

    use crate::sync::fetch::{FetchError, FetchOutcome, FetchPolicy, FetchRequest, Fetcher};

    fn policy_with(allowed: &[&str]) -> AddressPolicy {
        AddressPolicy::new(
            allowed.iter().map(|c| c.parse().unwrap()).collect(),
            OwnAddresses::default(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_unspecified_link_local_and_metadata_addresses_are_blocked() {
        let p = policy_with(&[]);
        for (blocked, why) in [
            ("127.0.0.1", Blocked::Loopback),
            ("127.1.2.3", Blocked::Loopback),
            ("::1", Blocked::Loopback),
            ("0.0.0.0", Blocked::Unspecified),
            ("0.1.2.3", Blocked::Unspecified),
            ("::", Blocked::Unspecified),
            ("169.254.169.254", Blocked::LinkLocal),
            ("169.254.0.1", Blocked::LinkLocal),
            ("169.254.170.2", Blocked::LinkLocal),
            ("100.100.100.200", Blocked::Metadata),
            ("192.0.0.192", Blocked::Metadata),
            ("168.63.129.16", Blocked::Metadata),
            ("fe80::1", Blocked::LinkLocal),
            ("febf::1", Blocked::LinkLocal),
            ("fd00:ec2::254", Blocked::Metadata),
            ("fd00:ec2::23", Blocked::Metadata),
            ("fd20:ce::254", Blocked::Metadata),
            ("255.255.255.255", Blocked::Broadcast),
            // IPv4-mapped, IPv4-compatible and NAT64 forms.
            ("::ffff:127.0.0.1", Blocked::Loopback),
            ("::ffff:169.254.169.254", Blocked::LinkLocal),
            ("::127.0.0.1", Blocked::Loopback),
            ("::169.254.169.254", Blocked::LinkLocal),
            ("::ffff:0.0.0.0", Blocked::Unspecified),
            ("64:ff9b::a9fe:a9fe", Blocked::LinkLocal),
            ("64:ff9b::7f00:1", Blocked::Loopback),
            ("64:ff9b::a83f:8110", Blocked::Metadata),
        ] {
            assert_eq!(p.refusal(ip(blocked)), Some(why), "{blocked}");
        }
        for allowed in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.100.100.201",
            "168.63.129.17",
            "fd00::1",
            "fec0::1",
            "8.8.8.8",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "64:ff9b::808:808",
        ] {
            assert!(p.permits(ip(allowed)), "{allowed} should be allowed");
        }
    }

    #[test]
    fn the_allow_list_unblocks_an_address() {
        let p = policy_with(&["169.254.0.0/16", "fd00:ec2::254/128", "127.0.0.2/32"]);
        assert!(p.permits(ip("169.254.169.254")));
        assert!(p.permits(ip("::ffff:169.254.169.254")));
        assert!(p.permits(ip("fd00:ec2::254")));
        assert!(p.permits(ip("127.0.0.2")));
        assert!(!p.permits(ip("127.0.0.1")));
        assert!(!p.permits(ip("fe80::1")));
        assert!(!p.permits(ip("100.100.100.200")));
    }

    #[test]
    fn the_operator_s_own_addresses_are_refused_even_when_allowed() {
        let own = OwnAddresses::of(vec![ip("10.0.0.7"), ip("fd00::7")]);
        let p = AddressPolicy::new(vec!["10.0.0.0/8".parse().unwrap()], own.clone());
        assert_eq!(p.refusal(ip("10.0.0.7")), Some(Blocked::Operator));
        assert_eq!(p.refusal(ip("::ffff:10.0.0.7")), Some(Blocked::Operator));
        assert_eq!(p.refusal(ip("fd00::7")), Some(Blocked::Operator));
        assert!(p.permits(ip("10.0.0.8")));
        // Updated while running: every policy sharing them sees the change.
        own.set(vec![ip("10.0.0.8")]);
        assert!(p.permits(ip("10.0.0.7")));
        assert_eq!(p.refusal(ip("10.0.0.8")), Some(Blocked::Operator));
    }

    #[test]
    fn the_unrestricted_policy_permits_anything() {
        let p = AddressPolicy::unrestricted();
        for any in ["127.0.0.1", "::1", "169.254.169.254", "0.0.0.0"] {
            assert!(p.permits(ip(any)), "{any}");
        }
    }

    #[test]
    fn a_person_s_policy_refuses_only_link_local_and_metadata() {
        let p = AddressPolicy::local(Vec::new());
        for any in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(p.permits(ip(any)), "{any}");
        }
        for blocked in [
            "169.254.169.254",
            "fd00:ec2::254",
            "168.63.129.16",
            "fe80::1",
        ] {
            assert!(!p.permits(ip(blocked)), "{blocked}");
        }
        let allowed = AddressPolicy::local(vec!["169.254.0.0/16".parse().unwrap()]);
        assert!(allowed.permits(ip("169.254.169.254")));
    }

    #[test]
    fn pod_addresses_come_from_the_downward_api() {
        let env = |name: &str| match name {
            "POD_IP" => Some("10.1.0.5".to_owned()),
            "POD_IPS" => Some("10.1.0.5, fd00::5,garbage".to_owned()),
            _ => None,
        };
        assert_eq!(pod_addresses(env), vec![ip("10.1.0.5"), ip("fd00::5")]);
        assert!(pod_addresses(|_| None).is_empty());
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
            "http://127.0.0.1:8080/maps/team-b/litellm/x.json",
            "http://2130706433/",
            "http://0/",
            "http://[::1]/",
            "http://[::]/",
        ] {
            assert!(p.check_url(&Url::parse(url).unwrap()).is_err(), "{url}");
        }
        for url in ["http://10.0.0.1/", "http://metadata.google.internal/"] {
            // Host names pass here; the resolver checks their addresses.
            assert!(p.check_url(&Url::parse(url).unwrap()).is_ok(), "{url}");
        }
    }

    #[test]
    fn blocked_addresses_are_dropped_from_dns_answers() {
        let p = policy_with(&[]);
        let sa = |s: &str| SocketAddr::new(ip(s), 0);
        let mixed = vec![sa("169.254.169.254"), sa("10.0.0.1"), sa("::1")];
        assert_eq!(p.filter(mixed).unwrap(), vec![sa("10.0.0.1")]);
        let err = p.filter(vec![sa("169.254.169.254")]).unwrap_err();
        assert_eq!(err.address, ip("169.254.169.254"));
        assert_eq!(err.why, Blocked::LinkLocal);
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
            fake_lookup(&[
                ("metadata.test", &["169.254.169.254", "fd00:ec2::254"]),
                ("localhost.test", &["127.0.0.1", "::1"]),
            ]),
        )
        .unwrap();
        for (url, address) in [
            (
                "http://metadata.test/computeMetadata/v1/?token=x",
                "169.254.169.254",
            ),
            ("http://localhost.test/maps/?token=x", "127.0.0.1"),
        ] {
            let err = fetcher
                .fetch(&FetchRequest {
                    url,
                    headers: &[],
                    timeout: Duration::from_secs(5),
                    revision: None,
                })
                .await
                .unwrap_err();
            match &err {
                FetchError::ForbiddenAddress {
                    url,
                    address: got,
                    why,
                } => {
                    assert!(!url.contains("token"), "{url}");
                    assert_eq!(*got, ip(address));
                    assert_ne!(*why, Blocked::Operator);
                }
                other => panic!("expected ForbiddenAddress, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn resolver_drops_blocked_addresses_from_mixed_answers() {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // fe80::1 (no scope id) cannot be connected to, so no packet leaves
        // the machine even if filtering were broken.
        let fetcher = Fetcher::with_lookup(
            FetchPolicy {
                allowed_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
                ..FetchPolicy::default()
            },
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
                digests: crate::digest::Digests::of(b"ok"),
                revision: None
            }
        );
    }

    #[tokio::test]
    async fn resolver_passes_system_answers_through() {
        let resolver = PolicyResolver {
            policy: Arc::new(policy_with(&["127.0.0.0/8"])),
            lookup: system_lookup(),
        };
        use reqwest::dns::Resolve;
        // An IP-literal name is answered locally by getaddrinfo, no DNS query.
        let err = resolver
            .resolve(reqwest::dns::Name::from_str("169.254.169.254").unwrap())
            .await
            .err()
            .unwrap();
        assert!(find_blocked(err.as_ref()).is_some(), "{err}");
        let addrs: Vec<_> = resolver
            .resolve(reqwest::dns::Name::from_str("127.0.0.1").unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs, vec![SocketAddr::new(ip("127.0.0.1"), 0)]);
    }
}
