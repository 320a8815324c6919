//! The read capability of one object's map: the `map-url` the operator writes into each
//! target ConfigMap, for LiteLLM proxies that send no headers.
//!
//! Its token is an HMAC-SHA256 of a version tag, the namespace and the name under a key
//! only the operator holds (a Secret in its own namespace), so it opens that object's map
//! in that namespace and nothing else, cannot be derived from public data, and is the same
//! on every replica and across restarts. Rotation: put a new `key` in the Secret and move
//! the old one to `previous` (still accepted for reads), roll the proxies once the leader
//! has rewritten every `map-url`, then drop `previous`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use hmac::{Hmac, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use sha2::Sha256;
use tracing::{info, warn};

pub use crate::layout::MAP_URL_KEY;
/// The query parameter that carries the token.
pub const TOKEN_PARAMETER: &str = "token";
/// The Secret's key that signs.
pub const KEY_FIELD: &str = "key";
/// The Secret's key still accepted for reads during a rotation.
pub const PREVIOUS_FIELD: &str = "previous";

/// Tags what is signed, so that a later scheme never accepts a token of this one.
const VERSION: &str = "costmap-map-v1";
/// Shortest key accepted from the Secret: HMAC-SHA256 wants at least its output's length.
const MIN_KEY_BYTES: usize = 32;

/// Why the map key could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The API server refused to read or create the Secret.
    #[error("reading or creating the map key Secret {name}: {message}")]
    Api {
        /// The Secret.
        name: String,
        /// The API server's message.
        message: String,
    },
    /// The Secret holds no usable `key`.
    #[error("the map key Secret {name} has no `key` of at least {MIN_KEY_BYTES} bytes")]
    Unusable {
        /// The Secret.
        name: String,
    },
    /// No randomness for a new key.
    #[error("reading random bytes for a new map key: {0}")]
    Random(#[from] getrandom::Error),
}

#[derive(Clone, PartialEq)]
struct Keys {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

/// The map key, as the Secret holds it now, and where maps are served from.
#[derive(Clone, Default)]
pub struct MapKeys {
    keys: Arc<RwLock<Option<Keys>>>,
    base_url: Option<String>,
}

impl MapKeys {
    /// Keys to be set from a Secret; `base_url` (e.g. `http://costmap.ops.svc:8080`) is
    /// where proxies reach the endpoint: without it, no `map-url` is written.
    pub fn new(base_url: Option<&str>) -> MapKeys {
        MapKeys {
            keys: Arc::default(),
            base_url: base_url.map(|url| url.trim_end_matches('/').to_owned()),
        }
    }

    /// Keys fixed to `current` (and `previous`), for tests and tools.
    pub fn fixed(base_url: Option<&str>, current: &[u8], previous: Option<&[u8]>) -> MapKeys {
        let keys = MapKeys::new(base_url);
        keys.set(current.to_vec(), previous.map(<[u8]>::to_vec));
        keys
    }

    fn set(&self, current: Vec<u8>, previous: Option<Vec<u8>>) {
        *crate::locks::write(&self.keys) = Some(Keys { current, previous });
    }

    /// The token that opens the map of object `name` in `namespace`; none without a key.
    pub fn token(&self, namespace: &str, name: &str) -> Option<String> {
        let keys = crate::locks::read(&self.keys);
        Some(hex::encode(sign(&keys.as_ref()?.current, namespace, name)?))
    }

    /// The `map-url` of key `key` of object `name` in `namespace`: none without a base URL
    /// or a key.
    pub fn map_url(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        let base = self.base_url.as_deref()?;
        let token = self.token(namespace, name)?;
        Some(format!(
            "{base}/maps/{namespace}/{name}/{key}?{TOKEN_PARAMETER}={token}"
        ))
    }

    /// Whether `token` opens the map of object `name` in `namespace`, under the key or the
    /// previous one (compared in constant time).
    pub fn verify(&self, namespace: &str, name: &str, token: &str) -> bool {
        let Ok(token) = hex::decode(token) else {
            return false;
        };
        let keys = crate::locks::read(&self.keys);
        let Some(keys) = keys.as_ref() else {
            return false;
        };
        std::iter::once(&keys.current)
            .chain(&keys.previous)
            .filter_map(|key| mac(key, namespace, name))
            .any(|mac| mac.verify_slice(&token).is_ok())
    }

    /// Reads the Secret `name` in `namespace`, creating it with a random key when missing
    /// (on a conflict another replica created it first: read that one).
    pub async fn load(&self, client: &Client, namespace: &str, name: &str) -> Result<(), KeyError> {
        let api = Api::<Secret>::namespaced(client.clone(), namespace);
        let api_error = |err: kube::Error| KeyError::Api {
            name: name.to_owned(),
            message: crate::apiserver::api_error_message(&err),
        };
        let secret = match api.get_opt(name).await.map_err(api_error)? {
            Some(secret) => secret,
            None => {
                let new = new_secret(name, random_key()?);
                match api.create(&PostParams::default(), &new).await {
                    Ok(created) => {
                        info!(secret = name, "created the map key");
                        created
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        api.get(name).await.map_err(api_error)?
                    }
                    Err(err) => return Err(api_error(err)),
                }
            }
        };
        self.apply(&secret).then_some(()).ok_or(KeyError::Unusable {
            name: name.to_owned(),
        })
    }

    /// Follows the Secret `name` in `namespace` until dropped: a rotated key signs from
    /// then on. A Secret deleted or emptied keeps the last key (proxies keep working).
    pub async fn follow(self, client: Client, namespace: String, name: String) {
        let api = Api::<Secret>::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        crate::watch::resilient(api, config)
            .for_each(|event| {
                match event {
                    Ok(Event::Apply(secret) | Event::InitApply(secret)) => {
                        if !self.apply(&secret) {
                            warn!(secret = %secret.name_any(), "the map key Secret has no usable `key`; keeping the last one");
                        }
                    }
                    Ok(_) => {}
                    Err(error) => warn!(%error, "watching the map key Secret failed"),
                }
                futures::future::ready(())
            })
            .await;
    }

    /// Takes the keys of `secret`; whether it had a usable one.
    fn apply(&self, secret: &Secret) -> bool {
        let field = |key: &str| {
            secret
                .data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(|value| value.0.clone())
                .filter(|value| value.len() >= MIN_KEY_BYTES)
        };
        let Some(current) = field(KEY_FIELD) else {
            return false;
        };
        let keys = Keys {
            current,
            previous: field(PREVIOUS_FIELD),
        };
        let mut held = crate::locks::write(&self.keys);
        if held.as_ref() != Some(&keys) {
            if held.is_some() {
                info!("the map key changed: map-url is rewritten at each object's next reconcile");
            }
            *held = Some(keys);
        }
        true
    }
}

/// The MAC of an object; none only if HMAC refused the key, which it does for no length.
fn mac(key: &[u8], namespace: &str, name: &str) -> Option<Hmac<Sha256>> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    // Lengths first: ("a", "bc") and ("ab", "c") sign differently.
    for part in [VERSION, namespace, name] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    Some(mac)
}

fn sign(key: &[u8], namespace: &str, name: &str) -> Option<Vec<u8>> {
    Some(mac(key, namespace, name)?.finalize().into_bytes().to_vec())
}

fn random_key() -> Result<Vec<u8>, getrandom::Error> {
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key)?;
    Ok(key)
}

fn new_secret(name: &str, key: Vec<u8>) -> Secret {
    let mut secret = Secret {
        data: Some(BTreeMap::from([(KEY_FIELD.to_owned(), ByteString(key))])),
        ..Secret::default()
    };
    secret.metadata.name = Some(name.to_owned());
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = &[7; 32];
    const OTHER: &[u8] = &[9; 32];

    #[test]
    fn a_token_opens_its_own_object_in_its_own_namespace_only() {
        let keys = MapKeys::fixed(Some("http://op.ops.svc:8080/"), KEY, None);
        let token = keys.token("team-a", "litellm").unwrap();
        assert!(keys.verify("team-a", "litellm", &token));
        assert!(!keys.verify("team-b", "litellm", &token));
        assert!(!keys.verify("team-a", "other", &token));
        // Boundaries between the parts are signed too.
        assert!(!keys.verify("team-al", "itellm", &token));
        assert!(!keys.verify("team-a", "litellm", "not hex"));
        assert!(!keys.verify("team-a", "litellm", &token[..10]));
        assert_eq!(
            keys.map_url("team-a", "litellm", "map.json").unwrap(),
            format!("http://op.ops.svc:8080/maps/team-a/litellm/map.json?token={token}")
        );
        // Another key signs differently: the token is not derived from public data alone.
        let other = MapKeys::fixed(None, OTHER, None);
        assert_ne!(other.token("team-a", "litellm").unwrap(), token);
        assert!(
            other.map_url("team-a", "litellm", "map.json").is_none(),
            "no base URL"
        );
        assert!(
            MapKeys::new(Some("http://x")).token("a", "b").is_none(),
            "no key"
        );
    }

    #[test]
    fn during_a_rotation_the_previous_key_still_opens_and_the_new_one_signs() {
        let old = MapKeys::fixed(None, KEY, None).token("ns", "m").unwrap();
        let rotated = MapKeys::fixed(None, OTHER, Some(KEY));
        assert!(rotated.verify("ns", "m", &old));
        assert_ne!(rotated.token("ns", "m").unwrap(), old);
        let done = MapKeys::fixed(None, OTHER, None);
        assert!(!done.verify("ns", "m", &old));
    }

    #[test]
    fn a_secret_without_a_long_enough_key_is_not_taken() {
        let keys = MapKeys::new(None);
        assert!(!keys.apply(&new_secret("k", vec![1; 8])));
        assert!(keys.token("ns", "m").is_none());
        let mut secret = new_secret("k", KEY.to_vec());
        assert!(keys.apply(&secret));
        let before = keys.token("ns", "m");
        secret.data = None;
        assert!(!keys.apply(&secret));
        assert_eq!(keys.token("ns", "m"), before, "the last key stays");
    }
}
