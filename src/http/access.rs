//! Who may read what from the operator's HTTP server: a Kubernetes bearer token, reviewed by
//! the API server (TokenReview, then SubjectAccessReview), as controller-runtime guards its
//! metrics. Answers are cached for [`REVIEW_TTL`], keyed by a hash of the token, so that a
//! proxy polling its map costs the API server two requests per token and TTL, not per read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tracing::warn;

/// How long an answer of the API server is reused, allowed or denied: a revoked right or
/// token still reads for at most this long.
pub const REVIEW_TTL: Duration = Duration::from_secs(30);
/// Most answers held; past it the expired go, then all (a flood of made-up tokens must not
/// grow memory).
const MAX_CACHED: usize = 10_000;

/// Who may read an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessMode {
    /// A Kubernetes token whose identity the API server authorizes.
    #[default]
    Token,
    /// Anyone who reaches the port.
    Open,
}

/// What a request asks to read, as the API server authorizes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Asked {
    /// `get` on ConfigMap `name` in `namespace`.
    ConfigMap { namespace: String, name: String },
    /// `get` on a non-resource URL, such as `/metrics`.
    Path(String),
}

/// The API server's answer about one token and one [`Asked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// The token is no valid identity: 401.
    Unauthenticated,
    /// A valid identity without the right: 403.
    Forbidden,
    /// The API server could not be asked: 503, not cached.
    Unavailable,
}

/// Answers by the hash of token and question, with when they were given.
type Answers = HashMap<[u8; 32], (Instant, Verdict)>;

/// Reviews tokens through the API server, with a short cache.
#[derive(Clone)]
pub struct Reviewer {
    client: Client,
    cache: Arc<Mutex<Answers>>,
}

impl Reviewer {
    pub fn new(client: Client) -> Reviewer {
        Reviewer {
            client,
            cache: Arc::default(),
        }
    }

    /// Whether the identity of `token` may read `asked`.
    pub async fn review(&self, token: &str, asked: &Asked) -> Verdict {
        let key = cache_key(token, asked);
        if let Some(verdict) = self.cached(&key) {
            return verdict;
        }
        let verdict = self.ask(token, asked).await;
        if verdict != Verdict::Unavailable {
            let mut cache = crate::locks::lock(&self.cache);
            if cache.len() >= MAX_CACHED {
                let now = Instant::now();
                cache.retain(|_, (at, _)| now.duration_since(*at) < REVIEW_TTL);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(key, (Instant::now(), verdict));
        }
        verdict
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Verdict> {
        let cache = crate::locks::lock(&self.cache);
        let (at, verdict) = cache.get(key)?;
        (at.elapsed() < REVIEW_TTL).then_some(*verdict)
    }

    async fn ask(&self, token: &str, asked: &Asked) -> Verdict {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let reviewed = match Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(reviewed) => reviewed,
            Err(err) => {
                // The error never holds the token: the API server does not echo the body.
                warn!(error = %crate::apiserver::api_error_message(&err), "a TokenReview failed");
                return Verdict::Unavailable;
            }
        };
        let status = reviewed.status.unwrap_or_default();
        let (true, Some(user)) = (status.authenticated == Some(true), status.user) else {
            return Verdict::Unauthenticated;
        };
        match self.authorize(user, asked).await {
            Some(true) => Verdict::Allowed,
            Some(false) => Verdict::Forbidden,
            None => Verdict::Unavailable,
        }
    }

    async fn authorize(&self, user: UserInfo, asked: &Asked) -> Option<bool> {
        let (resource_attributes, non_resource_attributes) = match asked {
            Asked::ConfigMap { namespace, name } => (
                Some(ResourceAttributes {
                    namespace: Some(namespace.clone()),
                    name: Some(name.clone()),
                    resource: Some("configmaps".to_owned()),
                    verb: Some("get".to_owned()),
                    ..ResourceAttributes::default()
                }),
                None,
            ),
            Asked::Path(path) => (
                None,
                Some(NonResourceAttributes {
                    path: Some(path.clone()),
                    verb: Some("get".to_owned()),
                }),
            ),
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                resource_attributes,
                non_resource_attributes,
            },
            ..SubjectAccessReview::default()
        };
        match Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(reviewed) => Some(reviewed.status.is_some_and(|status| status.allowed)),
            Err(err) => {
                warn!(error = %crate::apiserver::api_error_message(&err), "a SubjectAccessReview failed");
                None
            }
        }
    }
}

/// The cache key: a hash of the token and what it asks, so that no token is held.
fn cache_key(token: &str, asked: &Asked) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(token.as_bytes());
    hash.update([0]);
    match asked {
        Asked::ConfigMap { namespace, name } => {
            hash.update(b"cm\0");
            hash.update(namespace.as_bytes());
            hash.update([0]);
            hash.update(name.as_bytes());
        }
        Asked::Path(path) => {
            hash.update(b"path\0");
            hash.update(path.as_bytes());
        }
    }
    hash.finalize().into()
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_is_read_from_its_header_only() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(http::header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn each_token_and_question_has_its_own_answer() {
        let cm = |name: &str| Asked::ConfigMap {
            namespace: "a".into(),
            name: name.into(),
        };
        assert_eq!(cache_key("t", &cm("x")), cache_key("t", &cm("x")));
        assert_ne!(cache_key("t", &cm("x")), cache_key("u", &cm("x")));
        assert_ne!(cache_key("t", &cm("x")), cache_key("t", &cm("y")));
        assert_ne!(
            cache_key("t", &cm("x")),
            cache_key("t", &Asked::Path("x".into()))
        );
    }
}
