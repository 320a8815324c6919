//! The HTTP clients a [`Fetcher`](super::Fetcher) sends with: one per scheme, so that only
//! an https source pays for the TLS roots.

use std::sync::Arc;

use url::Url;

use super::address::PolicyResolver;
use super::{FetchError, USER_AGENT, error_chain};

/// A fetcher's clients; clones share them, and their connection pools.
#[derive(Clone)]
pub(super) struct Clients {
    /// For `http://` hops: no TLS roots.
    plain: reqwest::Client,
    /// For `https://` hops, built at the first one: loading the system's roots reads and
    /// parses every certificate file it has (3 ms here, a tenth of a `check`), which a
    /// plain-http source or a file never needs.
    tls: Arc<tokio::sync::OnceCell<reqwest::Client>>,
    resolver: Arc<PolicyResolver>,
}

impl Clients {
    pub(super) fn new(resolver: Arc<PolicyResolver>) -> Result<Clients, FetchError> {
        Ok(Clients {
            plain: client(&resolver, false)?,
            tls: Arc::default(),
            resolver,
        })
    }

    /// The client for `url`'s scheme (only http and https get this far).
    pub(super) async fn for_url(&self, url: &Url) -> Result<&reqwest::Client, FetchError> {
        if url.scheme() != "https" {
            return Ok(&self.plain);
        }
        self.tls
            .get_or_try_init(|| async { client(&self.resolver, true) })
            .await
    }
}

/// A client that resolves through `resolver`; `tls_roots` loads the system's and the
/// bundled roots, which only an https source needs.
fn client(resolver: &Arc<PolicyResolver>, tls_roots: bool) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .gzip(true)
        // Redirects are followed by hand: reqwest would forward the
        // Secret's custom headers (e.g. X-Api-Key) to another origin; it
        // only strips Authorization and cookies.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve names itself, bypassing the address policy.
        .no_proxy()
        .dns_resolver(Arc::clone(resolver))
        .tls_built_in_root_certs(tls_roots)
        .build()
        .map_err(|e| FetchError::Client {
            detail: error_chain(&e),
        })
}

/// Whether `err` is a TLS handshake the source's server cannot pass: its certificate
/// refused (an unknown issuer, expired, for another name) or no protocol in common. Another
/// attempt meets the same certificate, so it is not retried.
pub(super) fn refused_by_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    super::causes::causes(err)
        .find_map(|cause| cause.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| {
            matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
                    | rustls::Error::PeerIncompatible(_)
                    | rustls::Error::InvalidCertRevocationList(_)
            )
        })
}
