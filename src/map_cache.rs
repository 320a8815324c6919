//! The maps every replica serves, kept current by a watch on the managed ConfigMaps, so a
//! request never calls the API server and a replica that is not the leader serves too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::render::{DIGEST_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL};
use crate::serve::ServedMap;

/// Which map: `/maps/{namespace}/{name}/{key}`, where name is the ModelCostMapSync's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapKey {
    /// Namespace of the ModelCostMapSync (and its ConfigMap).
    pub namespace: String,
    /// Name of the ModelCostMapSync.
    pub name: String,
    /// The map's key (file name), without `.gz`.
    pub key: String,
}

/// The served maps, by key, with the ConfigMap each came from.
#[derive(Default, Clone)]
pub struct MapCache {
    inner: Arc<RwLock<Inner>>,
    /// Woken after every change, for [`MapCache::wait_for`].
    changed: Arc<Notify>,
}

/// A ConfigMap's namespace and name.
type ConfigMapId = (String, String);
/// The maps one ConfigMap holds.
type ConfigMapMaps = Vec<(MapKey, Arc<ServedMap>)>;

#[derive(Default)]
struct Inner {
    /// Maps by ConfigMap (namespace/name), so a deleted or changed ConfigMap drops its maps.
    by_config_map: HashMap<ConfigMapId, ConfigMapMaps>,
    /// The same maps by the key requests use.
    by_key: HashMap<MapKey, Arc<ServedMap>>,
    /// Whether the first full list has been loaded.
    synced: bool,
    /// The set being built by a list in progress.
    relisting: Option<HashMap<ConfigMapId, ConfigMapMaps>>,
}

impl MapCache {
    /// The map for a request, if synced.
    pub fn get(&self, key: &MapKey) -> Option<Arc<ServedMap>> {
        self.read().by_key.get(key).cloned()
    }

    /// Waits until the map for `key` has `digest`, at most `timeout`; whether it has.
    ///
    /// The operator asks proxies to reload only once its own endpoint serves the new map,
    /// or they would fetch the old one again.
    pub async fn wait_for(&self, key: &MapKey, digest: &str, timeout: Duration) -> bool {
        let serves = || self.get(key).is_some_and(|map| map.digest() == digest);
        let waiting = async {
            loop {
                // Registered before the check, so a change between the two is not missed.
                let changed = self.changed.notified();
                if serves() {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, waiting).await.is_ok()
    }

    /// Whether the initial list of ConfigMaps has been loaded.
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    /// Keeps the cache current from the managed ConfigMaps of `api` until the watch ends.
    pub async fn run(self, api: Api<ConfigMap>, max_bytes: u64) {
        let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let events = watcher::watcher(api, config).default_backoff();
        let result = events
            .try_for_each(|event| {
                self.apply(event, max_bytes);
                futures::future::ready(Ok(()))
            })
            .await;
        if let Err(err) = result {
            warn!(error = %err, "the ConfigMap watch of the map cache ended");
        }
    }

    fn apply(&self, event: Event<ConfigMap>, max_bytes: u64) {
        let mut inner = self.write();
        match event {
            // A (re)list builds a fresh set and swaps it in when complete, so maps keep being
            // served while the watch recovers.
            Event::Init => inner.relisting = Some(HashMap::new()),
            Event::InitApply(cm) => {
                let maps = served_maps(&cm, max_bytes);
                inner
                    .relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(config_map_id(&cm), maps);
            }
            Event::InitDone => {
                inner.by_config_map = inner.relisting.take().unwrap_or_default();
                inner.synced = true;
            }
            Event::Apply(cm) => {
                let maps = served_maps(&cm, max_bytes);
                inner.by_config_map.insert(config_map_id(&cm), maps);
            }
            Event::Delete(cm) => {
                inner.by_config_map.remove(&config_map_id(&cm));
            }
        }
        inner.by_key = inner
            .by_config_map
            .values()
            .flatten()
            .map(|(key, map)| (key.clone(), map.clone()))
            .collect();
        drop(inner);
        self.changed.notify_waiters();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn config_map_id(cm: &ConfigMap) -> ConfigMapId {
    (cm.namespace().unwrap_or_default(), cm.name_any())
}

/// The maps a managed ConfigMap holds: each `<key>.gz` whose bytes match the digest
/// annotation. A ConfigMap edited by hand serves nothing until the operator restores it.
fn served_maps(cm: &ConfigMap, max_bytes: u64) -> ConfigMapMaps {
    let Some(owner) = cm
        .owner_references()
        .iter()
        .find(|owner| owner.kind == "ModelCostMapSync" && owner.controller == Some(true))
    else {
        return Vec::new();
    };
    let Some(digest) = cm.annotations().get(DIGEST_ANNOTATION) else {
        return Vec::new();
    };
    let namespace = cm.namespace().unwrap_or_default();
    cm.binary_data
        .iter()
        .flatten()
        .filter_map(|(gz_key, gz)| {
            let key = gz_key.strip_suffix(".gz")?;
            match ServedMap::from_gzip(Bytes::from(gz.0.clone()), digest, max_bytes) {
                Ok(map) => Some((
                    MapKey {
                        namespace: namespace.clone(),
                        name: owner.name.clone(),
                        key: key.to_owned(),
                    },
                    Arc::new(map),
                )),
                Err(err) => {
                    debug!(config_map = %cm.name_any(), %err, "not serving this ConfigMap's map");
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{MapIdentity, StoredMap, TargetRef, render_config_map};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn managed(name: &str, owner: &str, bytes: &[u8]) -> ConfigMap {
        let map = StoredMap::from_bytes(bytes.to_vec());
        let target = TargetRef {
            name: name.into(),
            namespace: "llm".into(),
            key: "map.json".into(),
            owner: OwnerReference {
                api_version: "costmap.dev/v1alpha1".into(),
                kind: "ModelCostMapSync".into(),
                name: owner.into(),
                uid: "u".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        };
        let identity = MapIdentity {
            digest: map.digest(),
            git_blob_id: String::new(),
            models: 1,
            source_url: String::new(),
            updated_at: String::new(),
        };
        render_config_map(&target, &map, &identity).unwrap()
    }

    fn key(name: &str) -> MapKey {
        MapKey {
            namespace: "llm".into(),
            name: name.into(),
            key: "map.json".into(),
        }
    }

    #[test]
    fn maps_are_found_by_their_owner_and_dropped_with_their_configmap() {
        let cache = MapCache::default();
        cache.apply(Event::Init, 1 << 20);
        let cm = managed("prices", "litellm", b"{\"a\": {}}");
        cache.apply(Event::InitApply(cm.clone()), 1 << 20);
        assert!(!cache.is_synced());
        assert!(
            cache.get(&key("litellm")).is_none(),
            "swapped in when the list completes"
        );
        cache.apply(Event::InitDone, 1 << 20);
        assert!(cache.is_synced());
        assert_eq!(
            cache.get(&key("litellm")).unwrap().plain().as_ref(),
            b"{\"a\": {}}"
        );
        assert!(
            cache.get(&key("prices")).is_none(),
            "by the ModelCostMapSync's name"
        );
        cache.apply(Event::Init, 1 << 20);
        assert!(
            cache.get(&key("litellm")).is_some(),
            "still served during a relist"
        );
        cache.apply(Event::InitApply(cm.clone()), 1 << 20);
        cache.apply(Event::InitDone, 1 << 20);
        cache.apply(Event::Delete(cm), 1 << 20);
        assert!(cache.get(&key("litellm")).is_none());
    }

    #[tokio::test]
    async fn waiting_for_a_digest_ends_when_the_map_arrives_or_at_the_timeout() {
        let cache = MapCache::default();
        let cm = managed("litellm", "litellm", b"{\"a\": {}}");
        let digest = StoredMap::from_bytes(b"{\"a\": {}}".to_vec()).digest();
        let short = Duration::from_millis(50);
        assert!(!cache.wait_for(&key("litellm"), &digest, short).await);
        let waiter = {
            let cache = cache.clone();
            let digest = digest.clone();
            tokio::spawn(async move {
                cache
                    .wait_for(&key("litellm"), &digest, Duration::from_secs(30))
                    .await
            })
        };
        tokio::task::yield_now().await;
        cache.apply(Event::Apply(cm), 1 << 20);
        assert!(waiter.await.unwrap());
        assert!(cache.wait_for(&key("litellm"), &digest, short).await);
        assert!(!cache.wait_for(&key("litellm"), "sha256:other", short).await);
    }

    #[test]
    fn a_configmap_whose_bytes_do_not_match_its_digest_serves_nothing() {
        let cache = MapCache::default();
        let mut cm = managed("litellm", "litellm", b"{}");
        cm.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DIGEST_ANNOTATION.into(), "sha256:forged".into());
        cache.apply(Event::Apply(cm), 1 << 20);
        assert!(cache.get(&key("litellm")).is_none());
    }
}
