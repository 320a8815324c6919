//! The maps every replica serves, kept current by a watch on the managed ConfigMaps, so a
//! request never calls the API server and a replica that is not the leader serves too.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::render::{DIGEST_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL};
use crate::scope;
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
    /// Watches whose first full list has not been loaded yet.
    unsynced_scopes: usize,
    /// Watches whose first full list has been loaded.
    synced_scopes: HashSet<String>,
    /// Per watch, the set being built by a list in progress.
    relisting: HashMap<String, HashMap<ConfigMapId, ConfigMapMaps>>,
}

/// A watch scope as a map key: the namespace, or "" for the whole cluster.
fn scope_key(scope: Option<&str>) -> String {
    scope.unwrap_or_default().to_owned()
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

    /// Whether the initial list of ConfigMaps has been loaded by every watch.
    pub fn is_synced(&self) -> bool {
        let inner = self.read();
        !inner.synced_scopes.is_empty() && inner.unsynced_scopes == 0
    }

    /// Keeps the cache current from the managed ConfigMaps in `namespaces` (all when empty)
    /// until the watches end.
    pub async fn run(self, client: Client, namespaces: Vec<String>, max_bytes: u64) {
        let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let scopes = scope::scopes(&namespaces);
        self.write().unsynced_scopes = scopes.len();
        let watches = scopes.into_iter().map(|scope| {
            let api = scope::api::<ConfigMap>(&client, scope.as_deref());
            watcher::watcher(api, config.clone())
                .default_backoff()
                .map_ok(move |event| (scope.clone(), event))
                .boxed()
        });
        let result = futures::stream::select_all(watches)
            .try_for_each(|(scope, event)| {
                self.apply(scope.as_deref(), event, max_bytes);
                futures::future::ready(Ok(()))
            })
            .await;
        if let Err(err) = result {
            warn!(error = %err, "the ConfigMap watch of the map cache ended");
        }
    }

    /// Applies one watch event of the watch on `scope` (a namespace, or the cluster).
    fn apply(&self, scope: Option<&str>, event: Event<ConfigMap>, max_bytes: u64) {
        let mut inner = self.write();
        match event {
            // A (re)list builds a fresh set and swaps it in when complete, so maps keep being
            // served while the watch recovers.
            Event::Init => {
                inner.relisting.insert(scope_key(scope), HashMap::new());
            }
            Event::InitApply(cm) => {
                let maps = served_maps(&cm, max_bytes);
                inner
                    .relisting
                    .entry(scope_key(scope))
                    .or_default()
                    .insert(config_map_id(&cm), maps);
            }
            Event::InitDone => {
                let listed = inner
                    .relisting
                    .remove(&scope_key(scope))
                    .unwrap_or_default();
                inner
                    .by_config_map
                    .retain(|(namespace, _), _| scope.is_some_and(|s| s != namespace));
                inner.by_config_map.extend(listed);
                if inner.synced_scopes.insert(scope_key(scope)) {
                    inner.unsynced_scopes = inner.unsynced_scopes.saturating_sub(1);
                }
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
        cache.apply(None, Event::Init, 1 << 20);
        let cm = managed("prices", "litellm", b"{\"a\": {}}");
        cache.apply(None, Event::InitApply(cm.clone()), 1 << 20);
        assert!(!cache.is_synced());
        assert!(
            cache.get(&key("litellm")).is_none(),
            "swapped in when the list completes"
        );
        cache.apply(None, Event::InitDone, 1 << 20);
        assert!(cache.is_synced());
        assert_eq!(
            cache.get(&key("litellm")).unwrap().plain().as_ref(),
            b"{\"a\": {}}"
        );
        assert!(
            cache.get(&key("prices")).is_none(),
            "by the ModelCostMapSync's name"
        );
        cache.apply(None, Event::Init, 1 << 20);
        assert!(
            cache.get(&key("litellm")).is_some(),
            "still served during a relist"
        );
        cache.apply(None, Event::InitApply(cm.clone()), 1 << 20);
        cache.apply(None, Event::InitDone, 1 << 20);
        cache.apply(None, Event::Delete(cm), 1 << 20);
        assert!(cache.get(&key("litellm")).is_none());
    }

    #[test]
    fn a_relist_of_one_namespace_keeps_the_maps_of_the_others() {
        let cache = MapCache::default();
        cache.write().unsynced_scopes = 2;
        let mut other = managed("litellm", "litellm", b"{\"b\": {}}");
        other.metadata.namespace = Some("team-b".into());
        let key_b = MapKey {
            namespace: "team-b".into(),
            ..key("litellm")
        };
        for (scope, cm) in [
            ("llm", managed("litellm", "litellm", b"{}")),
            ("team-b", other),
        ] {
            cache.apply(Some(scope), Event::Init, 1 << 20);
            cache.apply(Some(scope), Event::InitApply(cm), 1 << 20);
            assert!(!cache.is_synced() || scope == "team-b");
            cache.apply(Some(scope), Event::InitDone, 1 << 20);
        }
        assert!(cache.is_synced(), "both watches listed");
        // llm relists and finds nothing: only llm's map goes.
        cache.apply(Some("llm"), Event::Init, 1 << 20);
        cache.apply(Some("llm"), Event::InitDone, 1 << 20);
        assert!(cache.get(&key("litellm")).is_none());
        assert!(cache.get(&key_b).is_some());
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
        cache.apply(None, Event::Apply(cm), 1 << 20);
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
        cache.apply(None, Event::Apply(cm), 1 << 20);
        assert!(cache.get(&key("litellm")).is_none());
    }
}
