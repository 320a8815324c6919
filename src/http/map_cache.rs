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
//! puts it back.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ListParams;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::api::{ClusterModelCostMapSync, MapSync, ModelCostMapSync, ModelCostMapSyncStatus};
use crate::http::maps::ServedMap;
use crate::layout::HISTORY_OF_LABEL;
use crate::layout::gzip::GunzipError;
use crate::scope;
use crate::watch;
use sha2::{Digest, Sha256};

mod chunked;
mod mirror;

use mirror::{Mirror, scope_key};

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
}

/// The maps held, by the sha256 of their gzip: a thousand ConfigMaps with the same map are
/// decompressed (to check the digest) and held once.
#[derive(Default)]
struct ServedByGzip {
    held: std::sync::Mutex<HashMap<[u8; 32], std::sync::Weak<ServedMap>>>,
    /// How many gzips were decompressed, ever.
    decompressed: std::sync::atomic::AtomicU64,
}

impl ServedByGzip {
    /// The map this gzip holds: the one held already, or decompressed (at most
    /// `max_bytes`) and held.
    fn served(&self, gz: &Bytes, max_bytes: u64) -> Result<Arc<ServedMap>, GunzipError> {
        let key: [u8; 32] = Sha256::digest(gz).into();
        if let Some(map) = crate::locks::lock(&self.held)
            .get(&key)
            .and_then(std::sync::Weak::upgrade)
        {
            return Ok(map);
        }
        // Not under the lock: other ConfigMaps' maps are looked up meanwhile.
        self.decompressed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let map = Arc::new(ServedMap::from_gzip(gz.clone(), max_bytes)?);
        let mut held = crate::locks::lock(&self.held);
        held.retain(|_, map| map.strong_count() > 0);
        if let Some(first) = held.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(first);
        }
        held.insert(key, Arc::downgrade(&map));
        Ok(map)
    }
}

/// The maps of one ConfigMap, and the ModelCostMapSync (or ClusterModelCostMapSync) that
/// owns it.
#[derive(Debug, Clone)]
struct StoredMaps {
    owner: String,
    /// The owner is a ClusterModelCostMapSync.
    cluster: bool,
    owner_uid: String,
    /// By key (file name without `.gz`).
    maps: Vec<(String, Arc<ServedMap>)>,
    /// The gzips not decompressed (yet): no known object owns the ConfigMap, so it costs
    /// nothing until one does.
    pending: Vec<(String, Bytes)>,
    /// The ConfigMap's uid and resourceVersion: a gzip that failed is not tried again
    /// until the ConfigMap changes.
    version: (String, String),
    /// A gzip of it failed to decompress.
    failed: bool,
    /// The chunks it holds of a map stored in chunks.
    chunks: Vec<chunked::ChunkPart>,
    /// On a first ConfigMap: the maps its chunk set puts together, by key.
    assembled: Vec<(String, Arc<ServedMap>)>,
}

/// The digests a ModelCostMapSync's status names.
#[derive(Debug, Clone, PartialEq)]
struct Vouched {
    uid: String,
    digests: Vec<String>,
    /// Its target ConfigMap's name: who may get that ConfigMap may read the map.
    target: String,
}

impl Vouched {
    fn vouches(&self, digest: &str) -> bool {
        self.digests.iter().any(|d| d == digest)
    }
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

    /// Whether every watch has listed its objects and has not failed since: what the cache
    /// serves is then what the cluster holds.
    pub fn is_watching(&self) -> bool {
        self.read().is_watching()
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
        let was_watching = inner.is_watching();
        let refresh = change(&mut inner);
        inner.refresh_served(&refresh);
        if !was_watching && inner.is_watching() {
            info!("the map cache is watching");
        }
        let pending = inner.owned_pending();
        drop(inner);
        if !pending.is_empty() {
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
    /// while status still vouches for it. Where a namespaced object and a cluster one of
    /// the same name both have a map, the namespaced one is served. Only the maps
    /// `refresh` names are looked at: with a thousand objects, going over all of them at
    /// every event of every one was most of the operator's CPU.
    fn refresh_served(&mut self, refresh: &Refresh) {
        if matches!(refresh, Refresh::Nothing) {
            return;
        }
        let mut served = HashMap::new();
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
            if still_vouched {
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

/// The ModelCostMapSync or ClusterModelCostMapSync that controls `cm`.
fn owner_of(cm: &ConfigMap) -> Option<&OwnerReference> {
    cm.owner_references().iter().find(|owner| {
        let kind = [
            ModelCostMapSync::kind(&()),
            ClusterModelCostMapSync::kind(&()),
        ];
        kind.contains(&owner.kind.as_str().into()) && owner.controller == Some(true)
    })
}

/// Whether an object known to the cache, by uid, owns `stored`, a ConfigMap in `namespace`.
fn owned(
    syncs: &Mirror<Vouched>,
    cluster_syncs: &Mirror<Vouched>,
    namespace: &str,
    stored: &StoredMaps,
) -> bool {
    let id = match stored.cluster {
        true => (String::new(), stored.owner.clone()),
        false => (namespace.to_owned(), stored.owner.clone()),
    };
    let mirror = if stored.cluster { cluster_syncs } else { syncs };
    mirror
        .items
        .get(&id)
        .is_some_and(|vouched| vouched.uid == stored.owner_uid)
}

/// What a managed ConfigMap holds, its gzips not decompressed yet (see [`decompress`]):
/// anyone who may write a ConfigMap may label it as ours.
fn stored_maps(cm: &ConfigMap) -> Option<StoredMaps> {
    // The history ring holds earlier maps for rollback; the endpoint serves the target's.
    if cm.labels().contains_key(HISTORY_OF_LABEL) {
        return None;
    }
    let owner = owner_of(cm)?;
    let pending = cm
        .binary_data
        .iter()
        .flatten()
        .filter_map(|(gz_key, gz)| {
            let key = gz_key.strip_suffix(".gz")?;
            Some((key.to_owned(), Bytes::copy_from_slice(&gz.0)))
        })
        .collect();
    Some(StoredMaps {
        owner: owner.name.clone(),
        cluster: owner.kind == ClusterModelCostMapSync::kind(&()),
        owner_uid: owner.uid.clone(),
        maps: Vec::new(),
        pending,
        version: (
            cm.uid().unwrap_or_default(),
            cm.resource_version().unwrap_or_default(),
        ),
        failed: false,
        chunks: chunked::chunk_parts(cm),
        assembled: Vec::new(),
    })
}

/// Decompresses the pending gzips of `stored` (each at most `max_bytes`), with the digest
/// of their bytes as they are (the annotations are not trusted).
fn decompress(stored: &mut StoredMaps, max_bytes: u64, gzips: &ServedByGzip) {
    for (key, gz) in std::mem::take(&mut stored.pending) {
        match gzips.served(&gz, max_bytes) {
            Ok(map) => stored.maps.push((key, map)),
            Err(err) => {
                debug!(owner = %stored.owner, %err, "not serving this ConfigMap's map");
                stored.failed = true;
            }
        }
    }
}

/// The digests a status names: its artifact, and the map being written.
fn vouched(
    status: Option<&ModelCostMapSyncStatus>,
    uid: Option<String>,
    target: &str,
) -> Option<Vouched> {
    let status = status?;
    let digests: Vec<String> = [&status.artifact, &status.pending_artifact]
        .into_iter()
        .flatten()
        .map(|artifact| artifact.digest.clone())
        .collect();
    Some(Vouched {
        uid: uid?,
        digests,
        target: target.to_owned(),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::api::{Artifact, ModelCostMapSyncStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    const MAX: u64 = 64 << 20;

    fn managed(name: &str, owner: &str, bytes: &[u8]) -> ConfigMap {
        crate::layout::render::fixtures::rendered_for(name, owner, bytes).remove(0)
    }

    fn artifact(bytes: &[u8]) -> Artifact {
        Artifact {
            digest: crate::digest::sha256_digest(bytes),
            git_blob_id: String::new(),
            revision: None,
            size: 0,
            models: 0,
            last_update_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    /// The ModelCostMapSync `name` whose status names `artifact` (and `pending`).
    pub(super) fn sync(
        name: &str,
        artifact_of: &[u8],
        pending_of: Option<&[u8]>,
    ) -> ModelCostMapSync {
        let mut sync = ModelCostMapSync::new(name, serde_json::from_str("{}").unwrap());
        sync.metadata.namespace = Some("llm".into());
        sync.metadata.uid = Some(format!("uid-{name}"));
        sync.status = Some(ModelCostMapSyncStatus {
            artifact: Some(artifact(artifact_of)),
            pending_artifact: pending_of.map(artifact),
            ..ModelCostMapSyncStatus::default()
        });
        sync
    }

    pub(super) fn key(name: &str) -> MapKey {
        MapKey {
            namespace: "llm".into(),
            name: name.into(),
            key: "map.json".into(),
        }
    }

    /// A cache whose watches of the cluster have listed `syncs` and `config_maps`.
    pub(super) fn listed(syncs: Vec<ModelCostMapSync>, config_maps: Vec<ConfigMap>) -> MapCache {
        let cache = MapCache::default();
        cache.write().config_maps.expect(&[None]);
        cache.write().syncs.expect(&[None]);
        cache.on_sync_event("", Ok(Event::Init));
        for sync in syncs {
            cache.on_sync_event("", Ok(Event::InitApply(sync)));
        }
        cache.on_sync_event("", Ok(Event::InitDone));
        cache.on_config_map_event("", Ok(Event::Init), MAX);
        for cm in config_maps {
            cache.on_config_map_event("", Ok(Event::InitApply(cm)), MAX);
        }
        cache.on_config_map_event("", Ok(Event::InitDone), MAX);
        cache
    }

    #[test]
    fn a_map_is_served_by_its_owner_once_both_watches_have_listed() {
        let cm = managed("prices", "litellm", b"{\"a\": {}}");
        let cache = MapCache::default();
        cache.write().config_maps.expect(&[None]);
        cache.write().syncs.expect(&[None]);
        cache.on_config_map_event("", Ok(Event::Init), MAX);
        cache.on_config_map_event("", Ok(Event::InitApply(cm.clone())), MAX);
        cache.on_config_map_event("", Ok(Event::InitDone), MAX);
        assert!(
            !cache.is_watching(),
            "the ModelCostMapSync watch has not listed"
        );
        assert!(
            cache.get(&key("litellm")).is_none(),
            "no status vouches for it yet"
        );
        cache.on_sync_event("", Ok(Event::Init));
        cache.on_sync_event(
            "",
            Ok(Event::InitApply(sync("litellm", b"{\"a\": {}}", None))),
        );
        cache.on_sync_event("", Ok(Event::InitDone));
        assert!(cache.is_watching());
        assert_eq!(
            cache
                .get(&key("litellm"))
                .unwrap()
                .plain()
                .unwrap()
                .as_ref(),
            b"{\"a\": {}}"
        );
        assert!(
            cache.get(&key("prices")).is_none(),
            "by the ModelCostMapSync's name"
        );
    }

    #[test]
    fn an_event_of_one_object_changes_its_own_map_only() {
        let (a, b) = (b"{\"a\": {}}".as_slice(), b"{\"b\": {}}".as_slice());
        let cache = listed(
            vec![sync("one", a, None), sync("two", a, None)],
            vec![managed("one", "one", a), managed("two", "two", a)],
        );
        // Object one names b, and its ConfigMap holds b: served. Two is untouched.
        cache.on_sync_event("", Ok(Event::Apply(sync("one", b, None))));
        cache.on_config_map_event("", Ok(Event::Apply(managed("one", "one", b))), MAX);
        let plain = |name: &str| cache.get(&key(name)).and_then(|m| m.plain().ok());
        assert_eq!(plain("one").unwrap().as_ref(), b);
        assert_eq!(plain("two").unwrap().as_ref(), a);
        // Two's ConfigMap gone: two is served still (status vouches), one as it was.
        cache.on_config_map_event("", Ok(Event::Delete(managed("two", "two", a))), MAX);
        assert_eq!(plain("two").unwrap().as_ref(), a);
        // Two deleted: its map goes, one's stays.
        cache.on_sync_event("", Ok(Event::Delete(sync("two", a, None))));
        assert!(cache.get(&key("two")).is_none());
        assert_eq!(plain("one").unwrap().as_ref(), b);
    }

    #[test]
    fn a_refresh_concerns_the_object_named_in_its_namespace_or_in_all() {
        let of = |namespace: Option<&str>| Refresh::Of {
            namespace: namespace.map(str::to_owned),
            name: "litellm".into(),
        };
        assert!(of(Some("llm")).concerns("llm", "litellm"));
        assert!(!of(Some("llm")).concerns("other", "litellm"));
        assert!(!of(Some("llm")).concerns("llm", "other"));
        assert!(of(None).concerns("any", "litellm"));
        assert!(Refresh::All.concerns("any", "thing"));
        assert!(!Refresh::Nothing.concerns("llm", "litellm"));
        assert_eq!(
            Refresh::after_listing::<ConfigMap>(&Event::Init),
            Refresh::Nothing
        );
        assert_eq!(
            Refresh::after_listing::<ConfigMap>(&Event::InitDone),
            Refresh::All
        );
    }

    #[test]
    fn a_map_status_does_not_name_is_never_served_and_the_vouched_one_stays() {
        let good = b"{\"a\": {}}";
        let cache = listed(
            vec![sync("litellm", good, None)],
            vec![managed("litellm", "litellm", good)],
        );
        assert!(cache.get(&key("litellm")).is_some());
        // Edited by hand, annotations and all: the map served before stays served.
        let tampered = managed("litellm", "litellm", b"{\"zero\": {}}");
        cache.on_config_map_event("", Ok(Event::Apply(tampered.clone())), MAX);
        let served = cache.get(&key("litellm")).unwrap();
        assert_eq!(served.digest(), crate::digest::sha256_digest(good));
        // Deleted: still served, until status names another map.
        cache.on_config_map_event("", Ok(Event::Delete(tampered.clone())), MAX);
        assert!(cache.get(&key("litellm")).is_some());
        cache.on_sync_event(
            "",
            Ok(Event::Apply(sync("litellm", b"{\"new\": {}}", None))),
        );
        assert!(cache.get(&key("litellm")).is_none());

        // A cache that starts after the edit never serves it.
        let fresh = listed(vec![sync("litellm", good, None)], vec![tampered]);
        assert!(fresh.get(&key("litellm")).is_none());
    }

    #[test]
    fn the_map_being_written_is_served_as_soon_as_the_configmap_holds_it() {
        let (old, new) = (b"{\"a\": {}}".as_slice(), b"{\"b\": {}}".as_slice());
        let cache = listed(
            vec![sync("litellm", old, Some(new))],
            vec![managed("litellm", "litellm", old)],
        );
        assert_eq!(
            cache.get(&key("litellm")).unwrap().digest(),
            crate::digest::sha256_digest(old)
        );
        cache.on_config_map_event(
            "",
            Ok(Event::Apply(managed("litellm", "litellm", new))),
            MAX,
        );
        assert_eq!(
            cache.get(&key("litellm")).unwrap().digest(),
            crate::digest::sha256_digest(new)
        );
    }

    #[test]
    fn a_configmap_of_another_object_with_the_same_name_is_not_served() {
        let bytes = b"{}";
        let mut recreated = sync("litellm", bytes, None);
        recreated.metadata.uid = Some("uid-of-a-new-object".into());
        let cache = listed(vec![recreated], vec![managed("litellm", "litellm", bytes)]);
        assert!(cache.get(&key("litellm")).is_none());
    }

    #[test]
    fn a_failed_watch_is_not_watching_until_it_lists_again_and_keeps_serving_meanwhile() {
        let bytes = b"{}";
        let cache = listed(
            vec![sync("litellm", bytes, None)],
            vec![managed("litellm", "litellm", bytes)],
        );
        cache.on_config_map_event("", Err(watcher::Error::NoResourceVersion), MAX);
        assert!(!cache.is_watching());
        assert!(cache.get(&key("litellm")).is_some(), "still served");
        cache.on_config_map_event("", Ok(Event::Init), MAX);
        assert!(!cache.is_watching(), "listing is not watching yet");
        cache.on_config_map_event(
            "",
            Ok(Event::InitApply(managed("litellm", "litellm", bytes))),
            MAX,
        );
        cache.on_config_map_event("", Ok(Event::InitDone), MAX);
        assert!(cache.is_watching());
    }

    #[test]
    fn a_relist_of_one_namespace_keeps_the_objects_of_the_others() {
        let mut mirror = Mirror::<u32>::default();
        mirror.expect(&[Some("llm".into()), Some("team-b".into())]);
        let cm = |namespace: &str| {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some("litellm".into());
            cm.metadata.namespace = Some(namespace.into());
            cm
        };
        let one = |_: &ConfigMap| Some(1);
        for scope in ["llm", "team-b"] {
            mirror.apply(scope, Event::Init, one);
            mirror.apply(scope, Event::InitApply(cm(scope)), one);
            assert!(!mirror.is_watching());
            mirror.apply(scope, Event::InitDone, one);
        }
        assert!(mirror.is_watching());
        mirror.apply("llm", Event::Init, one);
        assert_eq!(mirror.items.len(), 2, "kept during the relist");
        mirror.apply("llm", Event::InitDone, one);
        assert_eq!(
            mirror.items.keys().collect::<Vec<_>>(),
            [&("team-b".to_owned(), "litellm".to_owned())]
        );
    }

    #[test]
    fn copies_of_a_cluster_object_are_served_in_each_namespace_once_its_status_vouches() {
        use crate::api::{ClusterModelCostMapSync, ClusterModelCostMapSyncStatus};
        let bytes = b"{\"a\": {}}";
        let copy = |namespace: &str| {
            let mut cm = managed("shared", "ignored", bytes);
            cm.metadata.namespace = Some(namespace.into());
            let owner = &mut cm.metadata.owner_references.as_mut().unwrap()[0];
            owner.kind = ClusterModelCostMapSync::kind(&()).into_owned();
            owner.name = "shared".into();
            owner.uid = "uid-cluster".into();
            cm
        };
        let cache = listed(vec![], vec![copy("llm"), copy("team-b")]);
        cache.write().cluster_syncs.expect(&[None]);
        assert!(
            !cache.is_watching(),
            "the cluster objects are not listed yet"
        );
        let mut cluster = ClusterModelCostMapSync::new(
            "shared",
            serde_json::from_str("{\"namespaceSelector\": {}}").unwrap(),
        );
        cluster.metadata.uid = Some("uid-cluster".into());
        cluster.status = Some(ClusterModelCostMapSyncStatus {
            sync: ModelCostMapSyncStatus {
                artifact: Some(artifact(bytes)),
                ..ModelCostMapSyncStatus::default()
            },
            namespaces: None,
        });
        cache.on_cluster_sync_event(Ok(Event::Init));
        cache.on_cluster_sync_event(Ok(Event::InitApply(cluster.clone())));
        cache.on_cluster_sync_event(Ok(Event::InitDone));
        assert!(cache.is_watching());
        for namespace in ["llm", "team-b"] {
            let key = MapKey {
                namespace: namespace.into(),
                name: "shared".into(),
                key: "map.json".into(),
            };
            let served = cache.get(&key).expect("served");
            assert_eq!(served.digest(), crate::digest::sha256_digest(bytes));
        }
        // A namespaced object's ConfigMap is not vouched for by a cluster object of the
        // same name.
        assert!(cache.get(&key("litellm")).is_none());
        cluster.status.as_mut().unwrap().sync.artifact = Some(artifact(b"{}"));
        cache.on_cluster_sync_event(Ok(Event::Apply(cluster)));
        assert!(cache.get(&key("shared")).is_none(), "no longer vouched");
    }

    /// `cm` owned by the ModelCostMapSync `owner` with uid `uid`, at `version`.
    fn owned_by(mut cm: ConfigMap, uid: &str, version: &str) -> ConfigMap {
        cm.metadata.owner_references.as_mut().unwrap()[0].uid = uid.into();
        cm.metadata.uid = Some(format!("cm-{}", cm.metadata.name.as_deref().unwrap()));
        cm.metadata.resource_version = Some(version.into());
        cm
    }

    /// A ConfigMap whose `map.json.gz` decompresses to more than `MAX`... of `bound`.
    fn bomb(name: &str, owner: &str, bound: u64) -> ConfigMap {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&vec![0; bound as usize * 4]).unwrap();
        let mut cm = managed(name, owner, b"{}");
        cm.binary_data.as_mut().unwrap().insert(
            "map.json.gz".into(),
            k8s_openapi::ByteString(gz.finish().unwrap()),
        );
        cm
    }

    #[test]
    fn a_configmap_no_known_object_owns_is_never_decompressed() {
        let bytes = b"{\"a\": {}}";
        let cache = listed(vec![sync("litellm", bytes, None)], vec![]);
        // Labelled as ours, owned by no object the cache knows: the name of a real one
        // with another uid, and a name no object has.
        let forged = owned_by(bomb("forged", "litellm", 1 << 16), "uid-forged", "1");
        let orphan = bomb("orphan", "nobody", 1 << 16);
        for version in ["1", "2", "3"] {
            for cm in [&forged, &orphan] {
                let cm = owned_by(cm.clone(), &cm.owner_references()[0].uid, version);
                cache.on_config_map_event("", Ok(Event::Apply(cm)), 1 << 16);
            }
        }
        assert_eq!(cache.decompressions(), 0);
        assert!(cache.get(&key("litellm")).is_none());
        // Its own ConfigMap is decompressed once, and served.
        let own = managed("litellm", "litellm", bytes);
        cache.on_config_map_event("", Ok(Event::Apply(own)), 1 << 16);
        assert_eq!(cache.decompressions(), 1);
        assert!(cache.get(&key("litellm")).is_some());
    }

    #[test]
    fn a_gzip_that_failed_is_not_tried_again_until_its_configmap_changes() {
        let cache = listed(vec![sync("litellm", b"{}", None)], vec![]);
        let at =
            |version: &str| owned_by(bomb("litellm", "litellm", 1 << 16), "uid-litellm", version);
        cache.on_config_map_event("", Ok(Event::Apply(at("1"))), 1 << 16);
        assert_eq!(cache.decompressions(), 1);
        // The same version again (a relist): free.
        cache.on_config_map_event("", Ok(Event::Init), 1 << 16);
        cache.on_config_map_event("", Ok(Event::InitApply(at("1"))), 1 << 16);
        cache.on_config_map_event("", Ok(Event::InitDone), 1 << 16);
        assert_eq!(cache.decompressions(), 1);
        // Changed: tried again.
        cache.on_config_map_event("", Ok(Event::Apply(at("2"))), 1 << 16);
        assert_eq!(cache.decompressions(), 2);
    }

    #[test]
    fn a_configmap_listed_before_its_owner_is_decompressed_once_the_owner_is_known() {
        let bytes = b"{\"a\": {}}";
        let cache = MapCache::default();
        cache.write().config_maps.expect(&[None]);
        cache.write().syncs.expect(&[None]);
        let own = managed("litellm", "litellm", bytes);
        cache.on_config_map_event("", Ok(Event::Apply(own)), MAX);
        assert_eq!(cache.decompressions(), 0, "no owner known yet");
        cache.on_sync_event("", Ok(Event::Apply(sync("litellm", bytes, None))));
        assert_eq!(cache.decompressions(), 1);
        assert!(cache.get(&key("litellm")).is_some());
        assert_eq!(
            cache.target_of("llm", "litellm").as_deref(),
            Some("litellm")
        );
        assert_eq!(cache.target_of("llm", "other"), None);
        assert_eq!(cache.target_of("elsewhere", "litellm"), None);
    }

    #[tokio::test]
    async fn waiting_for_a_digest_ends_when_the_map_arrives_or_at_the_timeout() {
        let bytes = b"{\"a\": {}}";
        let cache = listed(vec![sync("litellm", bytes, None)], vec![]);
        let digest = crate::digest::sha256_digest(bytes);
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
        cache.on_config_map_event(
            "",
            Ok(Event::Apply(managed("litellm", "litellm", bytes))),
            MAX,
        );
        assert!(waiter.await.unwrap());
        assert!(cache.wait_for(&key("litellm"), &digest, short).await);
        assert!(!cache.wait_for(&key("litellm"), "sha256:other", short).await);
    }
}
