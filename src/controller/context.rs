//! What every reconcile of either kind shares: the API client, the fetches (one per source
//! at a time), the maps held and prepared once, the Event recorder, the metrics, the
//! ConfigMaps the operator owns, and what it remembers of each object.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::{Api, Client};
use tracing::warn;

use super::config_maps::OwnedConfigMaps;
use super::memory::Memories;
use super::prepared::Preparer;
use super::status::Notice;
use crate::apiserver::{FIELD_MANAGER, api_error_message, truncate};
use crate::http::capability::MapKeys;
use crate::http::map_cache::MapCache;
use crate::litellm::ProxyClient;
use crate::metrics::Metrics;
use crate::sync::SecretError;
use crate::sync::fetch::Fetcher;
use crate::sync::fetch::shared::SharedFetcher;
use crate::sync::store::MapStore;

/// An Event's action: `Sync-` and a digest of its note.
///
/// kube's Recorder folds Events with the same type, reason, action and object, recorded
/// minutes apart, into one series that keeps the first note: a second new map would show
/// only the first one's summary. Naming the note in the action keeps a repeated note (a
/// source failing the same way each retry) one series and makes a new note a new Event.
fn event_action(note: &str) -> String {
    let digest = crate::digest::sha256_digest(note.as_bytes());
    let hex = digest.trim_start_matches("sha256:");
    format!("Sync-{}", &hex[..12])
}

/// The longest Event note the operator writes (the API server takes 1 kB).
const MAX_EVENT_NOTE: usize = 1000;

/// Errors that end a reconcile early; the error policy retries them with backoff. Sync
/// failures (a bad source, a refused map, an invalid spec) are not errors here: they are
/// recorded in status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no uid or name (the API server always sends them).
    #[error("object has no name or uid")]
    Unnamed,
    /// A map could not be put back: from history (a rejection), or into a ConfigMap found
    /// edited or deleted.
    #[error("restoring {what}: {message}")]
    Restore {
        /// What was being restored.
        what: String,
        /// Why it failed.
        message: String,
    },
}

/// Settings of the controller.
#[derive(Clone)]
pub struct Settings {
    /// Namespaces to watch; all when empty.
    pub namespaces: Vec<String>,
    /// Identity in Events (the pod name in a cluster).
    pub instance: Option<String>,
    /// Where reconciles and syncs are counted.
    pub metrics: Arc<Metrics>,
    /// The client that reloads and checks LiteLLM proxies.
    pub proxies: ProxyClient,
    /// The maps this replica serves: proxies are reloaded once it serves the new one.
    pub maps: MapCache,
    /// How many maps may be prepared (parsed, validated, compressed) at once; fetches,
    /// which mostly wait, are not counted.
    pub concurrent_syncs: usize,
    /// First wait after a failed sync; it doubles with each further failure, up to the
    /// interval.
    pub retry_backoff: Duration,
    /// Least time between the start of an object's last attempt and a requested sync or
    /// an override republish of it.
    pub min_sync_gap: Duration,
    /// Signs the `map-url` written into each target (none written without a base URL).
    pub map_keys: MapKeys,
}

/// What the reconcilers of both kinds share.
pub struct Context {
    pub(super) client: Client,
    /// Fetches, one per source at a time, answers shared by the objects on that source.
    pub(super) sources: SharedFetcher,
    /// The maps held in memory, once each.
    pub(super) held: Arc<MapStore>,
    /// New maps prepared once for every object with the same inputs.
    pub(super) preparer: Preparer,
    recorder: Recorder,
    pub(super) metrics: Arc<Metrics>,
    pub(super) proxies: ProxyClient,
    pub(super) maps: MapCache,
    /// First wait after a failed sync.
    pub(super) retry_backoff: Duration,
    /// Least time between an object's attempt and a requested sync or republish.
    pub(super) min_sync_gap: Duration,
    /// What is remembered of each object between reconciles.
    pub(super) memory: Memories,
    /// The ConfigMaps this operator writes, read and written for both kinds.
    pub(super) config_maps: OwnedConfigMaps,
    map_keys: MapKeys,
}

impl Context {
    /// A context for `client`, fetching with `fetcher`.
    pub fn new(client: Client, fetcher: Fetcher, settings: Settings) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: settings.instance,
        };
        let held = Arc::<MapStore>::default();
        let max_map_bytes = fetcher.policy().max_body_bytes;
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            config_maps: OwnedConfigMaps::new(client.clone()),
            client,
            sources: SharedFetcher::new(fetcher),
            preparer: Preparer::new(Arc::clone(&held), settings.concurrent_syncs, max_map_bytes),
            held,
            metrics: settings.metrics,
            proxies: settings.proxies,
            maps: settings.maps,
            retry_backoff: settings.retry_backoff,
            min_sync_gap: settings.min_sync_gap,
            memory: Memories::default(),
            map_keys: settings.map_keys,
        }
    }

    /// The `map-url` of key `key` of object `name` in `namespace`: what the target (or the
    /// copy there) holds.
    pub(super) fn map_url(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        self.map_keys.map_url(namespace, name, key)
    }

    /// The largest map the operator takes, after decompression: from a source, or read
    /// back from a ConfigMap.
    pub(super) fn max_map_bytes(&self) -> u64 {
        self.sources.policy().max_body_bytes
    }

    /// Records an Event about `object`; a failure to record is logged, never fatal.
    pub(super) async fn record(&self, notice: Notice, object: &ObjectReference) {
        let note = truncate(notice.note, MAX_EVENT_NOTE);
        let event = Event {
            type_: notice.type_,
            reason: notice.reason.as_str().to_owned(),
            action: event_action(&note),
            note: Some(note),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, object).await {
            warn!(error = %err, "could not record an Event");
        }
    }

    /// The Secret `name` in `namespace`, read when needed (never listed or watched), for
    /// `purpose` ("headers", "admin key"). Errors name the Secret, never a value.
    pub(super) async fn secret(
        &self,
        namespace: &str,
        name: &str,
        purpose: &'static str,
    ) -> Result<Secret, SecretError> {
        Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|err| SecretError::Unreadable {
                purpose,
                name: name.to_owned(),
                message: api_error_message(&err),
            })?
            .ok_or_else(|| SecretError::NotFound {
                purpose,
                name: name.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_action_names_its_note() {
        let first = event_action("ConfigMap m: 201 models; 1 added");
        assert_eq!(first, event_action("ConfigMap m: 201 models; 1 added"));
        assert_ne!(first, event_action("ConfigMap m: 202 models; 1 added"));
        // events.k8s.io takes at most 128 characters of action.
        assert!(first.starts_with("Sync-") && first.len() <= 128, "{first}");
    }
}
