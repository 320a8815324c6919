//! The ConfigMaps this operator owns, read and written for both kinds: a target and its
//! chunks, the history slots, the copies of a cluster object. The layout itself is
//! [`crate::layout`]; this module does the API calls.
//!
//! Writes are strategic merge patches (see [`crate::layout::patch`]), or creates for a
//! ConfigMap not there yet, answered with metadata only. Whether a ConfigMap is still as
//! this operator wrote it is told without reading it (a quarter of a MB each): the
//! controllers watch the metadata of the ConfigMaps holding published maps, and a
//! [`WrittenTarget`] records the resourceVersion each write produced.

use std::sync::RwLock;

use http::HeaderValue;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

use crate::api::Artifact;
use crate::apiserver::FIELD_MANAGER;
use crate::layout::MapIdentity;
use crate::layout::chunks::{chunk_count, chunk_name};
use crate::layout::gzip::StoredMap;
use crate::layout::patch::write_patch;
use crate::layout::read::{HeldConfigMaps, read_stored};
use crate::layout::render::{TargetRef, render_config_maps, write_order};
use crate::sync::SyncError;
use crate::sync::fetch::{sanitize_url, validate_source_url};

/// What a write asks for in answer: the object's metadata, not the object.
const METADATA_ANSWER: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// A ConfigMap in the way of a write: it exists and the object does not control it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Foreign {
    /// `namespace/name`.
    pub(super) config_map: String,
    /// Who controls it instead, as its controller owner reference says.
    pub(super) controller: String,
}

impl From<Foreign> for SyncError {
    fn from(foreign: Foreign) -> SyncError {
        SyncError::OwnedByAnother {
            config_map: foreign.config_map,
            controller: foreign.controller,
        }
    }
}

/// Why a ConfigMap write failed.
#[derive(Debug)]
pub(super) enum WriteError {
    /// The API server refused it.
    Api(kube::Error),
    /// It is someone else's: not written.
    Foreign(Foreign),
}

impl From<kube::Error> for WriteError {
    fn from(error: kube::Error) -> WriteError {
        WriteError::Api(error)
    }
}

/// A ConfigMap write that failed: which one, and why.
#[derive(Debug)]
pub(super) struct WriteFailed {
    /// The ConfigMap.
    pub(super) name: String,
    /// Why.
    pub(super) error: WriteError,
}

impl WriteFailed {
    /// As a sync failure: the ConfigMap and the API server's message, or whose it is.
    pub(super) fn into_sync_error(self) -> SyncError {
        match self.error {
            WriteError::Api(error) => SyncError::Write {
                what: format!("ConfigMap {}", self.name),
                message: crate::apiserver::api_error_message(&error),
            },
            WriteError::Foreign(foreign) => foreign.into(),
        }
    }

    /// Why, for a log line.
    pub(super) fn message(&self) -> String {
        match &self.error {
            WriteError::Api(error) => crate::apiserver::api_error_message(error),
            WriteError::Foreign(foreign) => {
                format!("controlled by {}", foreign.controller)
            }
        }
    }
}

/// Whether the object of `uid` controls the ConfigMap of `meta` (a controller owner
/// reference with its uid); else who does, as [`Foreign::controller`] says it.
fn control(meta: &ObjectMeta, uid: &str) -> Result<(), String> {
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true));
    match controller {
        Some(owner) if owner.uid == uid => Ok(()),
        Some(owner) => Err(format!("controlled by {} {}", owner.kind, owner.name)),
        None => Err("no controller: not written by this operator".to_owned()),
    }
}

/// The uid of the object whose controller reference `rendered` carries.
fn owner_uid(rendered: &ConfigMap) -> &str {
    rendered
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true))
        .map_or("", |owner| owner.uid.as_str())
}

/// A map's ConfigMaps as this operator last wrote them (or read and found them as it
/// would write them): where, what they hold, and the resourceVersion of each.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct WrittenTarget {
    /// Where, and for whom.
    pub(super) target: TargetRef,
    /// The map they hold, as their annotations say it.
    pub(super) identity: MapIdentity,
    /// Name and resourceVersion of each ConfigMap, the first and its chunks.
    pub(super) versions: Vec<(String, String)>,
}

impl WrittenTarget {
    /// Whether this is the map of `identity` rendered into `target`. Where the map was
    /// fetched from and when it last changed do not count: status does not say where the
    /// published map came from, so a map put back after a sync from a new source failed
    /// would otherwise be written again, naming a source it did not come from.
    pub(super) fn renders(&self, target: &TargetRef, identity: &MapIdentity) -> bool {
        let map = |identity: &MapIdentity| {
            (
                identity.digest.clone(),
                identity.git_blob_id.clone(),
                identity.models,
            )
        };
        &self.target == target && map(&self.identity) == map(identity)
    }
}

/// The annotations' account of `artifact`, fetched from `url` (shown redacted).
pub(super) fn identity(artifact: &Artifact, url: &str) -> MapIdentity {
    let source_url = validate_source_url(url)
        .map(|url| sanitize_url(&url))
        .unwrap_or_else(|_| "<invalid URL>".to_owned());
    MapIdentity {
        digest: artifact.digest.clone(),
        git_blob_id: artifact.git_blob_id.clone(),
        models: artifact.models,
        source_url,
        updated_at: artifact.last_update_time.0.to_string(),
    }
}

/// Reads and writes the owned ConfigMaps.
pub(super) struct OwnedConfigMaps {
    client: Client,
    /// The watched metadata of the ConfigMaps holding published maps, one store per watch.
    watched: RwLock<Vec<Store<PartialObjectMeta<ConfigMap>>>>,
}

impl OwnedConfigMaps {
    pub(super) fn new(client: Client) -> OwnedConfigMaps {
        OwnedConfigMaps {
            client,
            watched: RwLock::default(),
        }
    }

    fn api(&self, namespace: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Adds the store of one more watch of ConfigMap metadata.
    pub(super) fn watch(&self, store: Store<PartialObjectMeta<ConfigMap>>) {
        crate::locks::write(&self.watched).push(store);
    }

    /// The resourceVersion the watches last saw of ConfigMap `name` in `namespace`.
    fn version(&self, namespace: &str, name: &str) -> Option<String> {
        let key = ObjectRef::new(name).within(namespace);
        crate::locks::read(&self.watched)
            .iter()
            .find_map(|store| store.get(&key))
            .and_then(|meta| meta.resource_version())
    }

    /// The metadata of ConfigMap `name` in `namespace`: as the watches saw it when
    /// `watched` and they did, else read (metadata only; none when it is not there). A
    /// ConfigMap not labelled as ours is never in the watches.
    async fn metadata(
        &self,
        namespace: &str,
        name: &str,
        watched: bool,
    ) -> Result<Option<ObjectMeta>, kube::Error> {
        let key = ObjectRef::new(name).within(namespace);
        let seen = watched
            .then(|| {
                crate::locks::read(&self.watched)
                    .iter()
                    .find_map(|store| store.get(&key))
            })
            .flatten();
        if let Some(seen) = seen {
            return Ok(Some(seen.metadata.clone()));
        }
        let read = self.api(namespace).get_metadata_opt(name).await?;
        Ok(read.map(|meta| meta.metadata))
    }

    /// The first of `names` in `namespace` that exists and is not controlled by the object
    /// of `uid`: checked before anything of a write is, so that a map is never half
    /// written into someone else's ConfigMaps.
    pub(super) async fn first_foreign(
        &self,
        namespace: &str,
        names: &[String],
        uid: &str,
    ) -> Result<Option<Foreign>, kube::Error> {
        for name in names {
            let Some(meta) = self.metadata(namespace, name, true).await? else {
                continue;
            };
            if let Err(controller) = control(&meta, uid) {
                return Ok(Some(Foreign {
                    config_map: format!("{namespace}/{name}"),
                    controller,
                }));
            }
        }
        Ok(None)
    }

    /// Whether a watch has seen ConfigMap `name` in `namespace` (and not its deletion).
    pub(super) fn seen(&self, namespace: &str, name: &str) -> bool {
        self.version(namespace, name).is_some()
    }

    /// Whether the ConfigMaps `written` names are all still at the versions it records.
    pub(super) fn unchanged(&self, written: &WrittenTarget) -> bool {
        !written.versions.is_empty()
            && written.versions.iter().all(|(name, version)| {
                self.version(&written.target.namespace, name).as_ref() == Some(version)
            })
    }

    /// The ConfigMaps holding the map whose first ConfigMap is `name` in `namespace`: the
    /// first, then as many chunk ConfigMaps as it names (bounded by the chunk count's
    /// range). Chunk ConfigMaps left over from a larger map are not read: the first does
    /// not name them.
    pub(super) async fn read(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<HeldConfigMaps, kube::Error> {
        let api = self.api(namespace);
        let first = api.get_opt(name).await?;
        let count = first
            .as_ref()
            .and_then(|first| chunk_count(first).ok().flatten())
            .unwrap_or(1);
        let mut maps = vec![first];
        for index in 1..count {
            maps.push(api.get_opt(&chunk_name(name, index)).await?);
        }
        Ok(HeldConfigMaps { maps })
    }

    /// The map `digest` of `key`, read back from the ConfigMaps whose first is `name` in
    /// `namespace`, when they hold exactly its bytes (decompressing at most `max_bytes`).
    pub(super) async fn read_map(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        digest: &str,
        max_bytes: u64,
    ) -> Option<StoredMap> {
        let held = self.read(namespace, name).await.ok()?;
        read_stored(&held, key, max_bytes)
            .ok()
            .flatten()
            .filter(|map| map.digest() == digest)
    }

    /// Renders `map` into `target` and writes every ConfigMap of it (the first last: see
    /// [`write_order`]); `keys` are the layout's keys to clear (the target's key, and one it
    /// had before), `seen` guesses which ConfigMaps are there (see [`Self::write`]). What
    /// was written.
    pub(super) async fn write_map(
        &self,
        target: &TargetRef,
        map: &StoredMap,
        identity: &MapIdentity,
        keys: &[&str],
        seen: impl Fn(&str) -> bool,
    ) -> Result<WrittenTarget, SyncError> {
        let rendered = render_config_maps(target, map, identity)?;
        let in_order: Vec<&ConfigMap> = write_order(&rendered).collect();
        let versions = self
            .write(&target.namespace, &in_order, keys, seen)
            .await
            .map_err(WriteFailed::into_sync_error)?;
        Ok(WrittenTarget {
            target: target.clone(),
            identity: identity.clone(),
            versions,
        })
    }

    /// Writes each of `config_maps` into `namespace` in turn, stopping at the first that
    /// fails; `keys` are the layout's keys to clear. `exists` says which ConfigMaps the
    /// caller believes are there: those are patched first, the others created first, so
    /// that a new one is not sent twice (a quarter of a MB each time) after a patch
    /// answered 404. A wrong guess costs one more request, not a failure. Returns the name
    /// and the resourceVersion the write produced of each.
    pub(super) async fn write(
        &self,
        namespace: &str,
        config_maps: &[&ConfigMap],
        keys: &[&str],
        exists: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, String)>, WriteFailed> {
        let api = self.api(namespace);
        let mut versions = Vec::new();
        for config_map in config_maps.iter().copied() {
            let name = config_map.metadata.name.clone().unwrap_or_default();
            let writer = ConfigMapWriter {
                owned: self,
                namespace,
                request: kube::core::Request::new(api.resource_url()),
                name: &name,
                rendered: config_map,
                keys,
            };
            match writer.write(exists(&name)).await {
                Ok(written) => versions.extend(written.resource_version().map(|v| (name, v))),
                Err(error) => return Err(WriteFailed { name, error }),
            }
        }
        Ok(versions)
    }
}

/// One ConfigMap `name` to hold `rendered`, by a patch or a create. The API server
/// answers with the metadata of the object written: the whole of it would be a quarter of
/// a MB more through the API server per write, decoded here only to be dropped.
struct ConfigMapWriter<'a> {
    owned: &'a OwnedConfigMaps,
    namespace: &'a str,
    request: kube::core::Request,
    name: &'a str,
    rendered: &'a ConfigMap,
    keys: &'a [&'a str],
}

impl ConfigMapWriter<'_> {
    /// Patches first when it `exists`, else creates first; then the other when the API
    /// server says the guess was wrong (409, 404). Only a ConfigMap the object controls is
    /// ever patched: one that is there is checked first (from the watch, or read when the
    /// watch has not seen it: a ConfigMap someone else made need not carry our label).
    async fn write(&self, exists: bool) -> Result<PartialObjectMeta<ConfigMap>, WriteError> {
        let mut exists = exists;
        // After a 409 or a 404 the watch is behind: read.
        let mut watched = true;
        // Created and deleted by someone else again and again: the last try says so.
        for last_try in [false, false, true] {
            if !exists {
                match self.create().await {
                    Err(kube::Error::Api(status)) if status.code == 409 && !last_try => {
                        watched = false;
                    }
                    written => return Ok(written?),
                }
            }
            let meta = self
                .owned
                .metadata(self.namespace, self.name, watched)
                .await?;
            let Some(meta) = meta else {
                // Gone in between: create it after all.
                (exists, watched) = (false, false);
                continue;
            };
            if let Err(controller) = control(&meta, owner_uid(self.rendered)) {
                return Err(WriteError::Foreign(Foreign {
                    config_map: format!("{}/{}", self.namespace, self.name),
                    controller,
                }));
            }
            match self.patch().await {
                Err(kube::Error::Api(status)) if status.code == 404 && !last_try => {
                    (exists, watched) = (false, false);
                }
                written => return Ok(written?),
            }
        }
        Ok(self.create().await?)
    }

    async fn patch(&self) -> Result<PartialObjectMeta<ConfigMap>, kube::Error> {
        let patch = write_patch(self.rendered, self.keys);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patched = self
            .request
            .patch(self.name, &params, &Patch::Strategic(&patch))
            .map_err(kube::Error::BuildRequest)?;
        self.owned
            .client
            .request(metadata_answer(patched, "patch"))
            .await
    }

    async fn create(&self) -> Result<PartialObjectMeta<ConfigMap>, kube::Error> {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let body = serde_json::to_vec(self.rendered).map_err(kube::Error::SerdeError)?;
        let created = self
            .request
            .create(&params, body)
            .map_err(kube::Error::BuildRequest)?;
        self.owned
            .client
            .request(metadata_answer(created, "create"))
            .await
    }
}

/// `request`, asking for the metadata of the object in answer; `verb` names it in kube's
/// metrics and traces, as kube's own requests do.
fn metadata_answer(
    mut request: http::Request<Vec<u8>>,
    verb: &'static str,
) -> http::Request<Vec<u8>> {
    request.headers_mut().insert(
        http::header::ACCEPT,
        HeaderValue::from_static(METADATA_ANSWER),
    );
    request.extensions_mut().insert(verb);
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn meta(name: &str, version: &str) -> PartialObjectMeta<ConfigMap> {
        let mut meta = PartialObjectMeta::<ConfigMap>::default();
        meta.metadata.name = Some(name.to_owned());
        meta.metadata.namespace = Some("team-a".to_owned());
        meta.metadata.resource_version = Some(version.to_owned());
        meta
    }

    fn written(versions: &[(&str, &str)]) -> WrittenTarget {
        WrittenTarget {
            target: TargetRef {
                name: "litellm-model-cost-map".to_owned(),
                namespace: "team-a".to_owned(),
                key: "model_prices_and_context_window.json".to_owned(),
                owner: Default::default(),
                map_url: None,
            },
            identity: MapIdentity {
                digest: "sha256:aa".to_owned(),
                git_blob_id: "bb".to_owned(),
                models: 3,
                source_url: "https://example.com/map.json".to_owned(),
                updated_at: "2026-12-01T00:00:00Z".to_owned(),
            },
            versions: versions
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// A client for no server: the tests here never call it.
    fn no_server() -> Client {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn unchanged_only_while_every_configmap_is_at_the_version_written() {
        let (reader, mut writer) = store();
        writer.apply_watcher_event(&Event::Apply(meta("litellm-model-cost-map", "10")));
        writer.apply_watcher_event(&Event::Apply(meta("litellm-model-cost-map-1", "11")));
        let owned = OwnedConfigMaps::new(no_server());
        owned.watch(reader);

        let both = written(&[
            ("litellm-model-cost-map", "10"),
            ("litellm-model-cost-map-1", "11"),
        ]);
        assert!(owned.unchanged(&both));
        assert!(owned.seen("team-a", "litellm-model-cost-map-1"));
        // Someone edited a chunk after our write.
        writer.apply_watcher_event(&Event::Apply(meta("litellm-model-cost-map-1", "12")));
        assert!(!owned.unchanged(&both));
        // Deleted, or not seen by the watch yet.
        assert!(!owned.unchanged(&written(&[("litellm-model-cost-map-2", "13")])));
        assert!(!owned.seen("team-a", "litellm-model-cost-map-2"));
        assert!(!owned.unchanged(&written(&[])));
    }

    #[test]
    fn only_a_controller_reference_with_the_object_s_uid_is_control() {
        let owner = |uid: &str, controller: Option<bool>| OwnerReference {
            api_version: "costmap.dev/v1alpha1".into(),
            kind: "ModelCostMapSync".into(),
            name: "litellm".into(),
            uid: uid.into(),
            controller,
            ..OwnerReference::default()
        };
        let meta = |owners: Vec<OwnerReference>| ObjectMeta {
            owner_references: Some(owners),
            ..ObjectMeta::default()
        };
        assert_eq!(control(&meta(vec![owner("u1", Some(true))]), "u1"), Ok(()));
        // The same name and kind, another object (a predecessor, or a forged reference).
        let other = control(&meta(vec![owner("u0", Some(true))]), "u1").unwrap_err();
        assert_eq!(other, "controlled by ModelCostMapSync litellm");
        // An owner that is no controller does not make it ours.
        let not_controller = control(&meta(vec![owner("u1", None)]), "u1").unwrap_err();
        assert!(
            not_controller.starts_with("no controller"),
            "{not_controller}"
        );
        assert!(control(&ObjectMeta::default(), "u1").is_err());
    }

    #[test]
    fn renders_only_the_same_map_into_the_same_target() {
        let first = written(&[("litellm-model-cost-map", "10")]);
        assert!(first.renders(&first.target, &first.identity));
        let mut other_map = first.identity.clone();
        other_map.digest = "sha256:cc".to_owned();
        assert!(!first.renders(&first.target, &other_map));
        let mut other_key = first.target.clone();
        other_key.key = "map.json".to_owned();
        assert!(!first.renders(&other_key, &first.identity));
        // The same map named as fetched from a spec's new source: still what was written.
        let mut other_url = first.identity.clone();
        other_url.source_url = "https://example.com/other.json".to_owned();
        other_url.updated_at = "2026-12-05T00:00:00Z".to_owned();
        assert!(first.renders(&first.target, &other_url));
    }

    #[test]
    fn the_identity_names_the_source_without_its_credentials() {
        let artifact = Artifact {
            digest: "sha256:aa".into(),
            git_blob_id: "bb".into(),
            revision: None,
            size: 1,
            models: 3,
            last_update_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        };
        let shown = identity(
            &artifact,
            "https://user:secret@example.com/map.json?token=x",
        );
        assert!(!shown.source_url.contains("secret"), "{}", shown.source_url);
        assert!(!shown.source_url.contains("token"), "{}", shown.source_url);
        assert_eq!(identity(&artifact, "not a url").source_url, "<invalid URL>");
    }
}
