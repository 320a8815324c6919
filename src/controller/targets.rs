//! Whether a target is still as this operator wrote it, without reading it: a target is a
//! quarter of a MB, and every reconcile of every object would otherwise read its own. The
//! controller watches the metadata of its targets anyway (a change reconciles the owner);
//! while that watch shows each of a target's ConfigMaps at the resourceVersion our own
//! write produced, nobody has changed them since.

use std::sync::RwLock;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::layout::MapIdentity;
use crate::layout::render::TargetRef;

/// The watched metadata of the managed targets, one store per watched scope.
#[derive(Default)]
pub(super) struct WatchedTargets {
    stores: RwLock<Vec<Store<PartialObjectMeta<ConfigMap>>>>,
}

impl WatchedTargets {
    /// Adds the store of one more scope's watch.
    pub(super) fn add(&self, store: Store<PartialObjectMeta<ConfigMap>>) {
        crate::locks::write(&self.stores).push(store);
    }

    /// The resourceVersion the watch last saw of ConfigMap `name` in `namespace`.
    fn version(&self, namespace: &str, name: &str) -> Option<String> {
        let key = ObjectRef::new(name).within(namespace);
        crate::locks::read(&self.stores)
            .iter()
            .find_map(|store| store.get(&key))
            .and_then(|meta| meta.resource_version())
    }

    /// Whether the watch has seen ConfigMap `name` in `namespace` (and not its deletion).
    pub(super) fn exists(&self, namespace: &str, name: &str) -> bool {
        self.version(namespace, name).is_some()
    }

    /// Whether the ConfigMaps `written` names are all still at the versions it records.
    pub(super) fn unchanged(&self, written: &WrittenTarget) -> bool {
        !written.versions.is_empty()
            && written.versions.iter().all(|(name, version)| {
                self.version(&written.target.namespace, name).as_ref() == Some(version)
            })
    }
}

/// A target's ConfigMaps as this operator last wrote them (or read and found them as it
/// would write them): what they hold, and the resourceVersion of each.
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
    /// Whether this is the rendering of `identity` into `target`.
    pub(super) fn renders(&self, target: &TargetRef, identity: &MapIdentity) -> bool {
        &self.target == target && &self.identity == identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn unchanged_only_while_every_configmap_is_at_the_version_written() {
        let (reader, mut writer) = store();
        writer.apply_watcher_event(&Event::Apply(meta("litellm-model-cost-map", "10")));
        writer.apply_watcher_event(&Event::Apply(meta("litellm-model-cost-map-1", "11")));
        let watched = WatchedTargets::default();
        watched.add(reader);

        let both = written(&[
            ("litellm-model-cost-map", "10"),
            ("litellm-model-cost-map-1", "11"),
        ]);
        assert!(watched.unchanged(&both));
        // Someone edited a chunk after our write.
        writer.apply_watcher_event(&Event::Apply(meta("litellm-model-cost-map-1", "12")));
        assert!(!watched.unchanged(&both));
        // Deleted, or not seen by the watch yet.
        assert!(!watched.unchanged(&written(&[("litellm-model-cost-map-2", "13")])));
        assert!(!watched.unchanged(&written(&[])));
    }

    #[test]
    fn renders_only_the_same_target_and_identity() {
        let first = written(&[("litellm-model-cost-map", "10")]);
        assert!(first.renders(&first.target, &first.identity));
        let mut other_url = first.identity.clone();
        other_url.source_url = "https://example.com/other.json".to_owned();
        assert!(!first.renders(&first.target, &other_url));
        let mut other_key = first.target.clone();
        other_key.key = "map.json".to_owned();
        assert!(!first.renders(&other_key, &first.identity));
    }
}
