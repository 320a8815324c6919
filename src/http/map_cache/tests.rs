use super::*;
use crate::api::{Artifact, ModelCostMapSyncStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;

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
pub(super) fn sync(name: &str, artifact_of: &[u8], pending_of: Option<&[u8]>) -> ModelCostMapSync {
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
        !cache.is_ready(),
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
    assert!(cache.is_ready());
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
    assert!(!cache.is_ready());
    assert!(cache.get(&key("litellm")).is_some(), "still served");
    cache.on_config_map_event("", Ok(Event::Init), MAX);
    assert!(!cache.is_ready(), "listing is not watching yet");
    cache.on_config_map_event(
        "",
        Ok(Event::InitApply(managed("litellm", "litellm", bytes))),
        MAX,
    );
    cache.on_config_map_event("", Ok(Event::InitDone), MAX);
    assert!(cache.is_ready());
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
    assert!(!cache.is_ready(), "the cluster objects are not listed yet");
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
    assert!(cache.is_ready());
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
    let shared_in_llm = || {
        cache.get(&MapKey {
            namespace: "llm".into(),
            name: "shared".into(),
            key: "map.json".into(),
        })
    };
    assert_eq!(
        shared_in_llm()
            .expect("served until the copy's next version comes")
            .digest(),
        crate::digest::sha256_digest(bytes)
    );
    cache.on_config_map_event("", Ok(Event::Delete(copy("llm"))), MAX);
    assert!(shared_in_llm().is_none(), "no longer vouched");
}

#[test]
fn a_status_that_names_the_next_map_before_its_configmap_arrives_leaves_no_gap() {
    let (old, new) = (b"{\"a\": {}}".as_slice(), b"{\"b\": {}}".as_slice());
    let cache = listed(
        vec![sync("litellm", old, None)],
        vec![managed("litellm", "litellm", old)],
    );
    let served = || {
        cache
            .get(&key("litellm"))
            .map(|map| map.digest().to_owned())
    };
    // The operator wrote the ConfigMap, then status; the status event came first.
    cache.on_sync_event("", Ok(Event::Apply(sync("litellm", new, None))));
    assert_eq!(served(), Some(crate::digest::sha256_digest(old)));
    cache.on_config_map_event(
        "",
        Ok(Event::Apply(managed("litellm", "litellm", new))),
        MAX,
    );
    assert_eq!(served(), Some(crate::digest::sha256_digest(new)));
    // The old map is not served again for its ConfigMap holding it: status names the new.
    cache.on_config_map_event(
        "",
        Ok(Event::Apply(managed("litellm", "litellm", old))),
        MAX,
    );
    assert_eq!(served(), Some(crate::digest::sha256_digest(new)));
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
    let at = |version: &str| owned_by(bomb("litellm", "litellm", 1 << 16), "uid-litellm", version);
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

#[test]
fn a_replica_is_ready_only_once_the_maps_it_listed_are_served() {
    // Megabytes, so that decompressing and hashing them takes milliseconds; listed before
    // their owner, so that the owner's listing completes the cache's and the gzip is
    // decompressed after it.
    let models: Vec<String> = (0..40_000)
        .map(|n| format!("\"model-{n}\": {{\"input_cost_per_token\": {n}e-9, \"mode\": \"chat\"}}"))
        .collect();
    let bytes = format!("{{{}}}", models.join(", ")).into_bytes();
    let cache = MapCache::default();
    cache.write().config_maps.expect(&[None]);
    cache.write().syncs.expect(&[None]);
    cache.on_config_map_event("", Ok(Event::Init), MAX);
    let cm = managed("litellm", "litellm", &bytes);
    cache.on_config_map_event("", Ok(Event::InitApply(cm)), MAX);
    cache.on_config_map_event("", Ok(Event::InitDone), MAX);
    cache.on_sync_event("", Ok(Event::Init));
    cache.on_sync_event("", Ok(Event::InitApply(sync("litellm", &bytes, None))));
    let listing = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.on_sync_event("", Ok(Event::InitDone)))
    };
    // Served maps only come in this test: once ready, the map is there.
    let mut polls_while_ready = 0u64;
    while !listing.is_finished() {
        if cache.is_ready() {
            polls_while_ready += 1;
            assert!(
                cache.get(&key("litellm")).is_some(),
                "ready, but the listed map is not served yet ({polls_while_ready} polls)"
            );
        }
    }
    listing.join().unwrap();
    assert!(cache.is_ready());
    assert_eq!(
        cache.get(&key("litellm")).unwrap().digest(),
        crate::digest::sha256_digest(&bytes)
    );
}
