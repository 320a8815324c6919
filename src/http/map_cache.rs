//! The maps every replica serves, kept current by watches, so a request never calls the API
//! server and a replica that is not the leader serves too.
//!
//! Two watches feed it: the managed ConfigMaps (the map bytes) and the ModelCostMapSync
//! objects (what their status vouches for); a third, of the ClusterModelCostMapSync objects,
//! when the operator watches the whole cluster: their copies are served at
//! `/maps/{namespace}/{cluster object's name}/{key}`. A map is served only when its bytes hash to the
//! digest that status names, `status.artifact` or the `status.pendingArtifact` being
//! written; never on the word of the ConfigMap's own annotations, which anyone who can edit
//! the ConfigMap can edit too. A map served before stays served while status still names it,
//! so a ConfigMap deleted or edited by hand changes nothing for proxies until the operator
//! puts it back; and while status names a map its ConfigMaps here do not hold yet (status is
//! written after them, but they come down separate watches), so that a new map never
//! leaves a moment where proxies get a 404.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::api::{ClusterModelCostMapSync, MapSync, ModelCostMapSync};
use crate::http::maps::ServedMap;
use crate::scope;
use crate::watch;

mod mirror;
mod stored;
mod vouched;

use mirror::{Mirror, scope_key};
use stored::{ServedByGzip, StoredMaps, chunked, decompress, owner_of, stored_maps};
use vouched::{Vouched, owned, vouched};

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

/// The served maps, and what they are served from.
#[derive(Default, Clone)]
pub struct MapCache {
    inner: Arc<RwLock<Inner>>,
    /// Woken after every change, for [`MapCache::wait_for`].
    changed: Arc<Notify>,
}

/// An object's namespace and name.
type ObjectId = (String, String);

#[derive(Default)]
struct Inner {
    /// The maps each managed ConfigMap holds.
    config_maps: Mirror<StoredMaps>,
    /// What each ModelCostMapSync's status vouches for.
    syncs: Mirror<Vouched>,
    /// What each ClusterModelCostMapSync's status vouches for (namespace "").
    cluster_syncs: Mirror<Vouched>,
    /// The maps served now.
    served: HashMap<MapKey, Arc<ServedMap>>,
    /// Every map held, once however many ConfigMaps hold it.
    gzips: Arc<ServedByGzip>,
    /// The maps put together from chunks.
    chunked: chunked::Assemblies,
    /// The ConfigMaps holding gzips not decompressed yet.
    pending: HashSet<ObjectId>,
    /// The ConfigMaps (uid) whose gzip failed to decompress, at which resourceVersion.
    failed: HashMap<String, String>,
    /// The bound on decompression, as the ConfigMap watch was started with.
    max_bytes: u64,
    /// Whether every watch had listed, what they listed decompressed, after the last event.
    caught_up: bool,
}

impl MapCache {
    /// The map for a request, if synced.
    pub fn get(&self, key: &MapKey) -> Option<Arc<ServedMap>> {
        self.read().served.get(key).cloned()
    }

    /// How many gzips of ConfigMaps this cache has decompressed since it started: those of
    /// ConfigMaps no known object owns are never.
    pub fn decompressions(&self) -> u64 {
        self.read()
            .gzips
            .decompressed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The target ConfigMap of the object `name` in `namespace` (a namespaced one, else a
    /// cluster object's copy there), if known.
    pub fn target_of(&self, namespace: &str, name: &str) -> Option<String> {
        let inner = self.read();
        [false, true]
            .into_iter()
            .find_map(|cluster| inner.vouched(namespace, name, cluster))
            .map(|vouched| vouched.target.clone())
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

    /// Whether every watch has listed and not failed since, and what they listed is
    /// decompressed: the cache then serves what the cluster holds (else a replica in the
    /// Service would answer 404 for the milliseconds its first maps take).
    pub fn is_ready(&self) -> bool {
        let inner = self.read();
        inner.caught_up && inner.is_watching()
    }

    /// Keeps the cache current from the managed ConfigMaps and the ModelCostMapSyncs in
    /// `namespaces` (all when empty). Runs until dropped: watches that fail start again.
    pub async fn run(self, client: Client, namespaces: Vec<String>, max_bytes: u64) {
        let managed = watch::published_maps();
        let scopes = scope::scopes(&namespaces);
        let cluster_syncs = Api::<ClusterModelCostMapSync>::all(client.clone());
        // An operator upgraded without applying the new CRD serves the namespaced maps.
        let watch_cluster_syncs = namespaces.is_empty()
            && cluster_syncs
                .list_metadata(&ListParams::default().limit(1))
                .await
                .is_ok();
        {
            let mut inner = self.write();
            inner.config_maps.expect(&scopes);
            inner.syncs.expect(&scopes);
            if watch_cluster_syncs {
                inner.cluster_syncs.expect(&[None]);
            }
        }
        let mut watches = Vec::new();
        if watch_cluster_syncs {
            let cache = self.clone();
            watches.push(
                watch::resilient(cluster_syncs, watcher::Config::default())
                    .for_each(move |event| {
                        cache.on_cluster_sync_event(event);
                        futures::future::ready(())
                    })
                    .boxed(),
            );
        }
        for scope in scopes {
            let config_maps = scope::api::<ConfigMap>(&client, scope.as_deref());
            let syncs = scope::api::<ModelCostMapSync>(&client, scope.as_deref());
            let key = scope_key(scope.as_deref());
            let cache = self.clone();
            watches.push(
                watch::resilient(config_maps, managed.clone())
                    .for_each(move |event| {
                        cache.on_config_map_event(&key, event, max_bytes);
                        futures::future::ready(())
                    })
                    .boxed(),
            );
            let key = scope_key(scope.as_deref());
            let cache = self.clone();
            watches.push(
                watch::resilient(syncs, watcher::Config::default())
                    .for_each(move |event| {
                        cache.on_sync_event(&key, event);
                        futures::future::ready(())
                    })
                    .boxed(),
            );
        }
        futures::future::join_all(watches).await;
    }

    fn on_config_map_event(
        &self,
        scope: &str,
        event: Result<Event<ConfigMap>, watcher::Error>,
        max_bytes: u64,
    ) {
        // Decompressed before the cache's lock is taken: a large gzip holds up no reader.
        let prepared = match &event {
            Ok(Event::Apply(cm) | Event::InitApply(cm)) => self.prepare(cm, max_bytes),
            _ => None,
        };
        self.update(|inner| match event {
            Ok(event) => {
                inner.max_bytes = max_bytes;
                if let Event::Delete(cm) = &event {
                    inner.failed.remove(&cm.uid().unwrap_or_default());
                }
                // One object changed: only its namespace's chunk sets can have, and only
                // its owner's maps (none: served maps stay while status vouches).
                let (namespace, refresh) = match &event {
                    Event::Apply(cm) | Event::Delete(cm) => {
                        let refresh = owner_of(cm).map_or(Refresh::Nothing, |owner| Refresh::Of {
                            namespace: cm.namespace(),
                            name: owner.name.clone(),
                        });
                        (cm.namespace(), refresh)
                    }
                    event => (None, Refresh::after_listing(event)),
                };
                inner.note_failures(prepared.as_ref());
                inner
                    .config_maps
                    .apply(scope, event, |_| prepared.clone());
                inner.track_pending();
                inner.refresh_chunks(namespace.as_deref());
                refresh
            }
            Err(error) => {
                warn!(%error, scope, "the map cache's ConfigMap watch failed; not ready until it lists again");
                inner.config_maps.fail(scope);
                Refresh::All
            }
        });
    }

    fn on_sync_event(&self, scope: &str, event: Result<Event<ModelCostMapSync>, watcher::Error>) {
        self.update(|inner| match event {
            Ok(event) => {
                let refresh = match &event {
                    Event::Apply(sync) | Event::Delete(sync) => Refresh::Of {
                        namespace: sync.namespace(),
                        name: sync.name_any(),
                    },
                    event => Refresh::after_listing(event),
                };
                inner.syncs.apply(scope, event, |sync| {
                    vouched(sync.status.as_ref(), sync.uid(), sync.config_map_name())
                });
                refresh
            }
            Err(error) => {
                warn!(%error, scope, "the map cache's ModelCostMapSync watch failed; not ready until it lists again");
                inner.syncs.fail(scope);
                Refresh::All
            }
        });
    }

    fn on_cluster_sync_event(&self, event: Result<Event<ClusterModelCostMapSync>, watcher::Error>) {
        self.update(|inner| match event {
            Ok(event) => {
                let refresh = match &event {
                    // Its copies, in every namespace.
                    Event::Apply(sync) | Event::Delete(sync) => Refresh::Of {
                        namespace: None,
                        name: sync.name_any(),
                    },
                    event => Refresh::after_listing(event),
                };
                inner.cluster_syncs.apply("", event, |sync| {
                    let target = sync.config_map_name();
                    vouched(sync.status.as_ref().map(|s| &s.sync), sync.uid(), target)
                });
                refresh
            }
            Err(error) => {
                warn!(%error, "the map cache's ClusterModelCostMapSync watch failed; not ready until it lists again");
                inner.cluster_syncs.fail("");
                Refresh::All
            }
        });
    }

    fn update(&self, change: impl FnOnce(&mut Inner) -> Refresh) {
        let mut inner = self.write();
        let refresh = change(&mut inner);
        inner.refresh_served(&refresh);
        let pending = inner.owned_pending();
        if pending.is_empty() {
            inner.catch_up();
            drop(inner);
        } else {
            drop(inner);
            // Caught up under its lock, once the maps are in.
            self.resolve(pending);
        }
        self.changed.notify_waiters();
    }

    /// The ConfigMap's maps, and whether a known object owns it; the gzips are decompressed
    /// only then, and not again at a resourceVersion where they failed before.
    fn prepare(&self, cm: &ConfigMap, max_bytes: u64) -> Option<StoredMaps> {
        let mut stored = stored_maps(cm)?;
        let (known, failed) = {
            let inner = self.read();
            let known = inner.owns(&cm.namespace().unwrap_or_default(), &stored);
            let failed = inner.failed.get(&stored.version.0) == Some(&stored.version.1);
            (known, failed)
        };
        if failed {
            stored.pending.clear();
        } else if known {
            let gzips = self.read().gzips_handle();
            decompress(&mut stored, max_bytes, &gzips);
        }
        Some(stored)
    }

    /// Decompresses the gzips of `pending` ConfigMaps whose owner is now known, outside
    /// the lock, and serves what they hold.
    fn resolve(&self, pending: Vec<(ObjectId, StoredMaps)>) {
        let (gzips, max_bytes) = {
            let inner = self.read();
            (inner.gzips_handle(), inner.max_bytes)
        };
        let mut resolved = Vec::new();
        for (id, mut stored) in pending {
            decompress(&mut stored, max_bytes, &gzips);
            resolved.push((id, stored));
        }
        let mut inner = self.write();
        for (id, stored) in resolved {
            inner.pending.remove(&id);
            // Unless the ConfigMap changed meanwhile (its own event prepared it again).
            let current = inner.config_maps.items.get(&id).map(|s| s.version.clone());
            if current.as_ref() != Some(&stored.version) {
                continue;
            }
            inner.note_failures(Some(&stored));
            let refresh = Refresh::Of {
                namespace: Some(id.0.clone()),
                name: stored.owner.clone(),
            };
            inner.config_maps.items.insert(id.clone(), stored);
            inner.refresh_chunks(Some(&id.0));
            inner.refresh_served(&refresh);
        }
        inner.catch_up();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        crate::locks::read(&self.inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        crate::locks::write(&self.inner)
    }
}

impl Inner {
    /// Whether a known object (its uid) owns `stored`, a ConfigMap in `namespace`.
    fn owns(&self, namespace: &str, stored: &StoredMaps) -> bool {
        owned(&self.syncs, &self.cluster_syncs, namespace, stored)
    }

    fn gzips_handle(&self) -> Arc<ServedByGzip> {
        Arc::clone(&self.gzips)
    }

    /// Records a ConfigMap whose gzip failed, so its next event at the same version is free.
    fn note_failures(&mut self, stored: Option<&StoredMaps>) {
        if let Some(stored) = stored.filter(|stored| stored.failed) {
            self.failed
                .insert(stored.version.0.clone(), stored.version.1.clone());
        }
    }

    /// Keeps [`Inner::pending`] to the ConfigMaps that hold gzips not decompressed.
    fn track_pending(&mut self) {
        let items = &self.config_maps.items;
        self.pending.retain(|id| items.contains_key(id));
        for (id, stored) in items {
            if !stored.pending.is_empty() {
                self.pending.insert(id.clone());
            }
        }
    }

    /// The pending ConfigMaps a known object now owns.
    fn owned_pending(&self) -> Vec<(ObjectId, StoredMaps)> {
        self.pending
            .iter()
            .filter_map(|id| {
                let stored = self.config_maps.items.get(id)?;
                (!stored.pending.is_empty() && self.owns(&id.0, stored))
                    .then(|| (id.clone(), stored.clone()))
            })
            .collect()
    }

    /// Puts chunk sets together in `namespace` (all when None), for known owners only.
    fn refresh_chunks(&mut self, namespace: Option<&str>) {
        let (syncs, cluster_syncs) = (&self.syncs, &self.cluster_syncs);
        let known = |ns: &str, stored: &StoredMaps| owned(syncs, cluster_syncs, ns, stored);
        let items = &mut self.config_maps.items;
        self.chunked
            .refresh(items, namespace, self.max_bytes, known);
    }

    /// Records whether every watch has listed, once what the last event made ours is
    /// decompressed and served.
    fn catch_up(&mut self) {
        let caught_up = self.is_watching();
        if caught_up && !self.caught_up {
            info!("the map cache is watching, and serves what it listed");
        }
        self.caught_up = caught_up;
    }

    fn is_watching(&self) -> bool {
        // Without cluster objects to watch, none is expected.
        let cluster = self.cluster_syncs.scopes.is_empty() || self.cluster_syncs.is_watching();
        self.config_maps.is_watching() && self.syncs.is_watching() && cluster
    }

    /// What the owner of a ConfigMap in `namespace` vouches for.
    fn vouched(&self, namespace: &str, owner: &str, cluster: bool) -> Option<&Vouched> {
        match cluster {
            true => self
                .cluster_syncs
                .items
                .get(&(String::new(), owner.to_owned())),
            false => self
                .syncs
                .items
                .get(&(namespace.to_owned(), owner.to_owned())),
        }
    }

    /// Serves each stored map that status vouches for; keeps serving a map served before
    /// while status still vouches for it, or while its owner's ConfigMaps are here but hold
    /// no map status names (status is written after the ConfigMaps, but they come down
    /// separate watches: a status naming the next map can come before the ConfigMaps that
    /// hold it, or before the last of its chunks). Where a namespaced object and a cluster one of
    /// the same name both have a map, the namespaced one is served. Only the maps
    /// `refresh` names are looked at: with a thousand objects, going over all of them at
    /// every event of every one was most of the operator's CPU.
    fn refresh_served(&mut self, refresh: &Refresh) {
        if matches!(refresh, Refresh::Nothing) {
            return;
        }
        let mut served = HashMap::new();
        // The owners whose status names a map and that have a ConfigMap here.
        let mut awaited = HashSet::new();
        for ((namespace, _), stored) in &self.config_maps.items {
            if !refresh.concerns(namespace, &stored.owner) {
                continue;
            }
            let Some(vouched) = self.vouched(namespace, &stored.owner, stored.cluster) else {
                continue;
            };
            if vouched.uid != stored.owner_uid {
                continue;
            }
            if !vouched.digests.is_empty() {
                awaited.insert((namespace.as_str(), stored.owner.as_str()));
            }
            for (key, map) in stored.maps.iter().chain(&stored.assembled) {
                if vouched.vouches(map.digest()) {
                    let key = MapKey {
                        namespace: namespace.clone(),
                        name: stored.owner.clone(),
                        key: key.clone(),
                    };
                    if stored.cluster {
                        served.entry(key).or_insert_with(|| Arc::clone(map));
                    } else {
                        served.insert(key, Arc::clone(map));
                    }
                } else {
                    debug!(namespace, owner = %stored.owner, key, digest = map.digest(), "not serving a map its status does not name");
                }
            }
        }
        let previous: Vec<(MapKey, Arc<ServedMap>)> = self
            .served
            .extract_if(|key, _| refresh.concerns(&key.namespace, &key.name))
            .collect();
        for (key, map) in previous {
            let still_vouched = [false, true].into_iter().any(|cluster| {
                self.vouched(&key.namespace, &key.name, cluster)
                    .is_some_and(|vouched| vouched.vouches(map.digest()))
            });
            // Or the map status names now is on its way (a map it names that is here
            // already is in `served`, and replaces this one).
            let next_on_its_way = || awaited.contains(&(key.namespace.as_str(), key.name.as_str()));
            if still_vouched || next_on_its_way() {
                served.entry(key).or_insert(map);
            }
        }
        self.served.extend(served);
    }
}

/// Which served maps an event can change.
#[derive(Debug, PartialEq, Eq)]
enum Refresh {
    /// Every one: a watch listed again, or failed.
    All,
    /// Those at `/maps/{namespace}/{name}/...`, of either kind; in every namespace when
    /// `namespace` is None (a cluster object's copies).
    Of {
        namespace: Option<String>,
        name: String,
    },
    /// None.
    Nothing,
}

impl Refresh {
    /// After a listing event: everything once the list is complete, nothing before (the
    /// listed objects wait aside until then).
    fn after_listing<K>(event: &Event<K>) -> Refresh {
        match event {
            Event::InitDone => Refresh::All,
            _ => Refresh::Nothing,
        }
    }

    fn concerns(&self, namespace: &str, name: &str) -> bool {
        match self {
            Refresh::All => true,
            Refresh::Of {
                namespace: only,
                name: of,
            } => of == name && only.as_deref().is_none_or(|only| only == namespace),
            Refresh::Nothing => false,
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
