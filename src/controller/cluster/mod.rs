//! The controller of ClusterModelCostMapSync objects: one fetch, one validation, and the
//! same ConfigMap written into every namespace the selector picks.
//!
//! It runs beside the namespaced controller and shares its [`Context`] (fetcher, recorder,
//! metrics, prepare slots). The sync itself uses the same pure pieces:
//! [`schedule::decide`], [`crate::sync::prepare`], [`status::next_status`]; what is its own
//! is in [`selection`] (which namespaces to write, and what status says of them). Watches:
//! the objects, Namespaces (a namespace that appears or changes labels reconciles the
//! objects that now pick it or picked it before), and the ConfigMaps they own (a deleted or
//! edited copy is put back without a fetch).

mod selection;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::core::{PartialObjectMeta, Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::chunks::{read_held, write_config_maps};
use super::memory::{Memories, newer_status};
use super::prepared::{Against, ToPublish, answer_max_age};
use super::reconcile::{api_error_message, identity, whole_seconds_now};
use super::status::{self, Attempt, Notice, Outcome};
use super::{Context, Error};
use crate::api::{
    Artifact, ClusterModelCostMapSync, ClusterModelCostMapSyncStatus, ModelCostMapSyncStatus,
    NamespaceFailure, NamespaceReason, SourceMap, SpecError,
};
use crate::layout::chunks::{chunk_count_of, chunk_name};
use crate::layout::gzip::StoredMap;
use crate::layout::read::read_stored;
use crate::layout::render::{TargetRef, render_config_maps, write_order};
use crate::layout::{DIGEST_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, MapIdentity};
use crate::metrics::{MapLabels, ObjectScope, SyncResult};
use crate::sync::SyncError;
use crate::sync::fetch::FetchRequest;
use crate::sync::fetch::shared::{SharedOutcome, SharedRequest};
use crate::sync::overrides::{Overrides, inline_layer};
use crate::sync::schedule::{self, Decision};
use crate::sync::store::HeldMap;
use selection::Copy;

/// ConfigMaps written at once: enough to fill 200 namespaces in a few seconds, few enough
/// not to flood the API server.
const CONCURRENT_WRITES: usize = 16;
/// How often what is remembered of deleted objects is dropped.
const FORGET_EVERY: Duration = Duration::from_secs(10);

/// What the cluster controller keeps besides the shared [`Context`].
struct ClusterContext {
    base: Arc<Context>,
    /// Status written, failures in a row, the last good map: as the namespaced controller
    /// keeps them, by uid.
    memory: Memories,
    /// Per object (by uid): the namespaces it selected at its last reconcile, and the
    /// resourceVersions of each copy as it was written.
    copies: Mutex<HashMap<String, Copies>>,
    /// The watched metadata of every managed ConfigMap: the chunks of a copy are checked
    /// against it, not read.
    watched: Store<PartialObjectMeta<ConfigMap>>,
}

#[derive(Default, Clone)]
struct Copies {
    selected: BTreeSet<String>,
    written: HashMap<String, String>,
}

/// Runs the ClusterModelCostMapSync controller until `stop`, if the CRD is installed (an
/// operator upgraded without applying the new CRD keeps running the namespaced kind).
pub(super) async fn run(client: Client, base: Arc<Context>, stop: CancellationToken) {
    let api = Api::<ClusterModelCostMapSync>::all(client.clone());
    if let Err(err) = api.list_metadata(&ListParams::default().limit(1)).await {
        warn!(error = %err, "ClusterModelCostMapSync objects are not reconciled: listing them failed (is crds/clustermodelcostmapsync.yaml applied?)");
        return;
    }
    let (watched, writer) = reflector::store();
    let context = Arc::new(ClusterContext {
        base,
        memory: Memories::default(),
        copies: Mutex::default(),
        watched,
    });
    let controller = Controller::new(api, watcher::Config::default());
    let store = controller.store();
    let by_namespace = {
        let (store, context) = (store.clone(), context.clone());
        move |namespace: PartialObjectMeta<Namespace>| affected(&store, &context, &namespace)
    };
    let namespaces = watcher::watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    )
    .touched_objects();
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let copies = reflector(
        writer,
        watcher::watcher(
            Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
            managed,
        )
        .modify(|meta| meta.managed_fields_mut().clear()),
    )
    .touched_objects();
    let by_config_map = {
        let store = store.clone();
        move |config_map: PartialObjectMeta<ConfigMap>| concerned(&store, &config_map)
    };
    // Another object fetched a new map from a source this one follows: sync now.
    let news = super::news_of_sources(store.clone(), context.base.sources.subscribe());
    let forgetting = tokio::spawn(forget_deleted(store, context.clone()));
    controller
        .trigger_backoff(crate::watch::Backoff::default())
        .watches_stream(namespaces, by_namespace)
        // Not `owns`: kube gives the owner of a namespaced child the child's namespace,
        // which a cluster-scoped owner does not have.
        .watches_stream(copies, by_config_map)
        .reconcile_on(news)
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                debug!(error = %err, "cluster reconcile ended with an error");
            }
        })
        .await;
    forgetting.abort();
}

/// The objects a namespace event concerns: those whose selector picks the namespace now,
/// and those that picked it at their last reconcile (it may have lost the labels).
fn affected(
    store: &Store<ClusterModelCostMapSync>,
    context: &ClusterContext,
    namespace: &PartialObjectMeta<Namespace>,
) -> Vec<ObjectRef<ClusterModelCostMapSync>> {
    let name = namespace.name_any();
    let labels = namespace.labels();
    let copies = crate::locks::lock(&context.copies);
    store
        .state()
        .iter()
        .filter(|sync| {
            let picks = selector(sync).is_ok_and(|selector| selector.matches(labels));
            let picked = sync
                .uid()
                .and_then(|uid| copies.get(&uid))
                .is_some_and(|copies| copies.selected.contains(&name));
            picks || picked
        })
        .map(|sync| ObjectRef::from_obj(sync.as_ref()))
        .collect()
}

/// The objects a managed ConfigMap concerns: the one that controls it (a copy deleted or
/// edited), and those whose target has its name (someone else's ConfigMap of that name
/// went away, or appeared).
fn concerned(
    store: &Store<ClusterModelCostMapSync>,
    config_map: &PartialObjectMeta<ConfigMap>,
) -> Vec<ObjectRef<ClusterModelCostMapSync>> {
    let name = config_map.name_any();
    let owner = config_map
        .owner_references()
        .iter()
        .find(|owner| is_cluster_owner(owner))
        .map(|owner| owner.name.as_str());
    store
        .state()
        .iter()
        .filter(|sync| owner == Some(sync.name_any().as_str()) || sync.config_map_name() == name)
        .map(|sync| ObjectRef::from_obj(sync.as_ref()))
        .collect()
}

fn is_cluster_owner(owner: &OwnerReference) -> bool {
    owner.controller == Some(true)
        && owner.kind == ClusterModelCostMapSync::kind(&())
        && owner.api_version == ClusterModelCostMapSync::api_version(&())
}

fn selector(sync: &ClusterModelCostMapSync) -> Result<Selector, SpecError> {
    Selector::try_from(sync.spec.namespace_selector.clone()).map_err(|err| SpecError {
        field: "namespaceSelector",
        reason: err.to_string(),
    })
}

async fn forget_deleted(store: Store<ClusterModelCostMapSync>, context: Arc<ClusterContext>) {
    let start = tokio::time::Instant::now() + FORGET_EVERY;
    let mut ticks = tokio::time::interval_at(start, FORGET_EVERY);
    loop {
        ticks.tick().await;
        let objects = store.state();
        let live: HashSet<String> = objects.iter().filter_map(|s| s.uid()).collect();
        let maps: HashSet<MapLabels> = objects
            .iter()
            .map(|sync| MapLabels::cluster(&sync.name_any()))
            .collect();
        context.memory.retain(&live);
        context
            .base
            .metrics
            .forget_maps_except(ObjectScope::Cluster, &maps);
        context
            .base
            .sources
            .forget_except("ClusterModelCostMapSync", &live);
        crate::locks::lock(&context.copies).retain(|uid, _| live.contains(uid));
    }
}

fn error_policy(
    sync: Arc<ClusterModelCostMapSync>,
    error: &Error,
    _: Arc<ClusterContext>,
) -> Action {
    warn!(name = sync.name_any(), %error, "cluster reconcile failed; retrying");
    Action::requeue(Duration::from_secs(15))
}

async fn reconcile(
    sync: Arc<ClusterModelCostMapSync>,
    context: Arc<ClusterContext>,
) -> Result<Action, Error> {
    let span = info_span!("reconcile", clustermodelcostmapsync = %sync.name_any());
    let result = ClusterReconciler::new(&sync, &context)?
        .reconcile()
        .instrument(span)
        .await;
    context.base.metrics.reconciles.inc();
    result
}

/// One reconcile of one ClusterModelCostMapSync.
struct ClusterReconciler<'a> {
    sync: &'a ClusterModelCostMapSync,
    context: &'a ClusterContext,
    /// The newer of the object's status and the one this operator last wrote.
    status: Option<ModelCostMapSyncStatus>,
    uid: String,
    owner: OwnerReference,
    config_map: String,
    key: String,
    now: Timestamp,
}

/// The map to write into the namespaces, and the artifact status names for it.
struct Published {
    map: Arc<HeldMap>,
    artifact: Artifact,
}

impl<'a> ClusterReconciler<'a> {
    fn new(sync: &'a ClusterModelCostMapSync, context: &'a ClusterContext) -> Result<Self, Error> {
        let owner = sync.controller_owner_ref(&()).ok_or(Error::NoNamespace)?;
        let uid = sync.uid().unwrap_or_default();
        let written = context
            .memory
            .read(&uid, |m| m.written_status.clone())
            .flatten();
        let observed = sync.status.as_ref().map(|s| &s.sync);
        Ok(ClusterReconciler {
            status: newer_status(observed, sync.resource_version(), written),
            sync,
            context,
            uid,
            owner,
            config_map: sync.config_map_name().to_owned(),
            key: sync.spec.sync.key().to_owned(),
            now: whole_seconds_now(),
        })
    }

    async fn reconcile(self) -> Result<Action, Error> {
        let spec = &self.sync.spec;
        let checked = spec
            .unsupported()
            .and_then(|()| spec.sync.interval())
            .and_then(|interval| Ok((interval, selector(self.sync)?)));
        let (interval, selector) = match checked {
            Ok(checked) => checked,
            Err(err) => {
                // Nothing to schedule with: say so once, and wait for the spec to change.
                let generation = self.sync.metadata.generation;
                if status::says_invalid_spec(self.status.as_ref(), generation) {
                    return Ok(Action::await_change());
                }
                let attempt = self.attempt(schedule::MIN_INTERVAL, self.failures());
                let next = status::next_status(
                    self.status.as_ref(),
                    Outcome::Failed(SyncError::Spec(err)),
                    &attempt,
                );
                self.finish(next.status, next.events, None).await?;
                return Ok(Action::await_change());
            }
        };
        let selected = self.selected_namespaces(&selector).await?;
        let copies = self.copies().await?;
        if self.adopt_interrupted_write(&copies).await? {
            return Ok(Action::requeue(Duration::ZERO));
        }
        let last_good = self.last_good(&copies).await;
        let status = self.status.as_ref();
        let decision = schedule::decide(&schedule::Inputs {
            now: self.now,
            generation: self.sync.metadata.generation,
            suspended: spec.sync.suspend,
            sync_request: self.sync.sync_request(),
            status,
            has_last_good: last_good.is_some(),
            retrying: status.is_some_and(selection::retrying),
            overrides_changed: false,
            overrides_edited: false,
            source_news: self.context.base.sources.has_news(&self.uid),
        });
        let published = |map: &Option<Arc<HeldMap>>| {
            let artifact = self.status.as_ref()?.artifact.clone()?;
            Some(Published {
                map: map.clone()?,
                artifact,
            })
        };
        match decision {
            Decision::Suspended => {
                let suspended = status::suspended(
                    self.status.as_ref(),
                    self.sync.metadata.generation,
                    self.now,
                );
                let written = self
                    .write_copies(&selected, &copies, published(&last_good))
                    .await;
                self.finish(suspended, Vec::new(), Some(written)).await?;
                Ok(Action::await_change())
            }
            Decision::Wait(remaining) => {
                let written = self
                    .write_copies(&selected, &copies, published(&last_good))
                    .await;
                let status = self.status.clone().unwrap_or_default();
                let wait = selection::next_look(&written, remaining);
                self.finish(status, Vec::new(), Some(written)).await?;
                Ok(Action::requeue(wait))
            }
            Decision::Sync(cause) => {
                info!(?cause, namespaces = selected.len(), "syncing");
                let started = Instant::now();
                let revision = last_good
                    .as_ref()
                    .and(self.status.as_ref())
                    .and_then(|s| s.artifact.as_ref()?.revision.clone())
                    .filter(|_| cause != schedule::SyncCause::SpecChanged);
                let asked_fresh = matches!(
                    cause,
                    schedule::SyncCause::SpecChanged | schedule::SyncCause::Requested
                );
                let (outcome, to_write) = match self
                    .sync_once(last_good.as_ref(), revision, asked_fresh)
                    .await
                {
                    Ok((outcome, Some(new))) => {
                        self.record_pending(&new.artifact).await?;
                        (outcome, Some(new))
                    }
                    Ok((outcome, None)) => (outcome, published(&last_good)),
                    Err(error) => (Outcome::Failed(error), published(&last_good)),
                };
                let written = self.write_copies(&selected, &copies, to_write).await;
                let result = match &outcome {
                    Outcome::NotModified => SyncResult::NotModified,
                    Outcome::Unchanged { .. } => SyncResult::Unchanged,
                    Outcome::Updated { .. } => SyncResult::Updated,
                    Outcome::Failed(error) => {
                        warn!(reason = %error.reason(), error = %error, "sync failed; every ConfigMap keeps the last good map");
                        SyncResult::Failed
                    }
                };
                let seconds = started.elapsed().as_secs_f64();
                let metrics = &self.context.base.metrics;
                metrics.count_sync(result, seconds);
                let attempt = self.attempt(interval, self.failures());
                let next = status::next_status(self.status.as_ref(), outcome, &attempt);
                let labels = MapLabels::cluster(&self.sync.name_any());
                metrics.record_interval(&labels, interval);
                if let Some(models) = next.published_models() {
                    metrics.record_map(&labels, models, self.now.as_second());
                }
                self.context
                    .memory
                    .update(&self.uid, |m| m.consecutive_failures = next.failures);
                let wait = next.wait.map(|wait| selection::next_look(&written, wait));
                self.finish(next.status, next.events, Some(written)).await?;
                Ok(wait.map_or_else(Action::await_change, Action::requeue))
            }
        }
    }

    fn failures(&self) -> u32 {
        self.context
            .memory
            .read(&self.uid, |m| m.consecutive_failures)
            .unwrap_or(0)
    }

    fn attempt(&self, interval: Duration, failures_before: u32) -> Attempt<'_> {
        Attempt {
            generation: self.sync.metadata.generation,
            sync_request: self.sync.sync_request(),
            started: self.now,
            finished: whole_seconds_now(),
            interval,
            failures_before,
            retry_backoff: self.context.base.retry_backoff,
            last_good_lost: false,
            config_map: &self.config_map,
        }
    }

    /// The namespaces the selector picks, except those being deleted (nothing can be
    /// written there).
    async fn selected_namespaces(&self, selector: &Selector) -> Result<BTreeSet<String>, Error> {
        let namespaces = Api::<Namespace>::all(self.context.base.client.clone())
            .list_metadata(&ListParams::default().labels_from(selector))
            .await?;
        let selected: BTreeSet<String> = namespaces
            .items
            .iter()
            .filter(|ns| ns.metadata.deletion_timestamp.is_none())
            .map(|ns| ns.name_any())
            .collect();
        crate::locks::lock(&self.context.copies)
            .entry(self.uid.clone())
            .or_default()
            .selected = selected.clone();
        Ok(selected)
    }

    /// Every ConfigMap of the target's name, in any namespace, by namespace: metadata only.
    async fn copies(
        &self,
    ) -> Result<BTreeMap<String, (Copy, PartialObjectMeta<ConfigMap>)>, Error> {
        let params = ListParams::default().fields(&format!("metadata.name={}", self.config_map));
        let listed = Api::<ConfigMap>::all(self.context.base.client.clone())
            .list_metadata(&params)
            .await?;
        Ok(listed
            .items
            .into_iter()
            .filter_map(|cm| {
                let namespace = cm.namespace()?;
                Some((namespace, (self.copy_of(&cm), cm)))
            })
            .collect())
    }

    fn copy_of(&self, cm: &PartialObjectMeta<ConfigMap>) -> Copy {
        let controller = cm
            .owner_references()
            .iter()
            .find(|owner| owner.controller == Some(true));
        match controller {
            Some(owner) if is_cluster_owner(owner) && owner.name == self.sync.name_any() => {
                Copy::Ours {
                    digest: cm.annotations().get(DIGEST_ANNOTATION).cloned(),
                    version: self.versions_of(cm),
                }
            }
            Some(owner) => {
                let namespace = match owner.kind.as_str() {
                    "ClusterModelCostMapSync" => String::new(),
                    _ => format!("{}/", cm.namespace().unwrap_or_default()),
                };
                Copy::Others(format!("{} {namespace}{}", owner.kind, owner.name))
            }
            None => Copy::Others("no controller (not written by this operator)".to_owned()),
        }
    }

    /// The resourceVersions of a copy whose first ConfigMap is `first`: its own, then its
    /// chunks' as the watch last saw them, in one string. None when a chunk is not seen
    /// (missing, or not watched yet): the copy is then written again.
    fn versions_of(&self, first: &PartialObjectMeta<ConfigMap>) -> Option<String> {
        let namespace = first.namespace()?;
        let count = chunk_count_of(&first.metadata).ok().flatten().unwrap_or(1);
        let mut versions = vec![first.resource_version()?];
        for index in 1..count {
            let chunk = ObjectRef::new(&chunk_name(&self.config_map, index)).within(&namespace);
            versions.push(self.context.watched.get(&chunk)?.resource_version()?);
        }
        Some(versions.join(","))
    }

    /// The last good map named by status: from memory (this object's, or the copy another
    /// object with the same map holds), or read back from one of the copies (checked
    /// against the digest). None when no copy holds exactly those bytes.
    async fn last_good(
        &self,
        copies: &BTreeMap<String, (Copy, PartialObjectMeta<ConfigMap>)>,
    ) -> Option<Arc<HeldMap>> {
        let digest = self.status.as_ref()?.artifact.as_ref()?.digest.clone();
        let held = self.context.memory.last_good(&self.uid, &digest);
        let map = match held.or_else(|| self.context.base.held.get(&digest)) {
            Some(map) => map,
            None => self.read_copy_holding(copies, &digest).await?,
        };
        self.context
            .memory
            .remember_last_good(&self.uid, map.clone());
        Some(map)
    }

    /// The map `digest` read back from the first of our copies that holds exactly its
    /// bytes (its annotation says so, and the bytes are checked).
    async fn read_copy_holding(
        &self,
        copies: &BTreeMap<String, (Copy, PartialObjectMeta<ConfigMap>)>,
        digest: &str,
    ) -> Option<Arc<HeldMap>> {
        let max_bytes = self.context.base.sources.policy().max_body_bytes;
        let client = self.context.base.client.clone();
        let candidates = copies.iter().filter(|(_, (copy, _))| {
            matches!(copy, Copy::Ours { digest: Some(held), .. } if held == digest)
        });
        for (namespace, _) in candidates {
            let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
            let Ok(held) = read_held(&api, &self.config_map).await else {
                continue;
            };
            let read = read_stored(&held, &self.key, max_bytes).ok().flatten();
            if let Some(map) = read.filter(|map| map.digest() == digest) {
                return Some(self.context.base.held.hold(map, digest.to_owned(), None));
            }
        }
        None
    }

    /// Finishes a content change that a restart interrupted after some copies were
    /// written and before the status that records them: status names the map as pending
    /// and a copy holds exactly its bytes, so this operator validated it. It becomes the
    /// last good map (the next map is guarded against it; the copies that still hold the
    /// earlier one get it without a fetch). True when it did.
    async fn adopt_interrupted_write(
        &self,
        copies: &BTreeMap<String, (Copy, PartialObjectMeta<ConfigMap>)>,
    ) -> Result<bool, Error> {
        let Some(status) = self.status.as_ref() else {
            return Ok(false);
        };
        let Some(pending) = status.pending_artifact.clone() else {
            return Ok(false);
        };
        if status
            .artifact
            .as_ref()
            .is_some_and(|a| a.digest == pending.digest)
        {
            return Ok(false);
        }
        let Some(map) = self.read_copy_holding(copies, &pending.digest).await else {
            // No copy was written: the pending record is dropped at the next status write.
            return Ok(false);
        };
        self.context.memory.remember_last_good(&self.uid, map);
        info!(digest = %pending.digest, "adopted the map whose write a restart interrupted");
        self.context.base.metrics.record_map(
            &MapLabels::cluster(&self.sync.name_any()),
            i64::from(pending.models),
            self.now.as_second(),
        );
        let (status, notice) = status::adopted(
            status,
            pending,
            self.sync.metadata.generation,
            self.now,
            &self.config_map,
        );
        self.finish(status, vec![notice], None).await?;
        Ok(true)
    }

    /// Fetch (shared with every object on the same source), overrides, prepare (once per
    /// distinct input): the map to publish, when the source sent a new one. `asked_fresh`:
    /// a requested sync or a new spec asks the source rather than take a recent answer.
    async fn sync_once(
        &self,
        last_good: Option<&Arc<HeldMap>>,
        revision: Option<String>,
        asked_fresh: bool,
    ) -> Result<(Outcome, Option<Published>), SyncError> {
        let spec = &self.sync.spec.sync;
        let overrides = match spec.overrides.models.is_empty() {
            true => Overrides::new(Vec::new()),
            false => Overrides::new(vec![inline_layer(&spec.overrides.models)?]),
        };
        let news = self.context.base.sources.has_news(&self.uid);
        let max_age = answer_max_age(news, spec.interval().ok(), asked_fresh);
        let request = SharedRequest {
            fetch: FetchRequest {
                url: &spec.source.url,
                headers: &[],
                timeout: spec.timeout()?,
                revision: revision.as_deref(),
            },
            follower: &self.uid,
            kind: "ClusterModelCostMapSync",
            max_age,
        };
        let body = match self.context.base.sources.fetch(&request).await? {
            SharedOutcome::NotModified => return Ok((Outcome::NotModified, None)),
            SharedOutcome::Fetched(body) => body,
        };
        let ToPublish {
            bytes,
            digest,
            applied,
            fetched_models,
        } = ToPublish::of(&body, &overrides);
        let overrides_status = super::attempt::overrides_status(&overrides, &applied);
        let source_models = fetched_models.map(|models| i32::try_from(models).unwrap_or(i32::MAX));
        let source = |models: i32| SourceMap {
            digest: body.digest.clone(),
            git_blob_id: body.git_blob_id.clone(),
            revision: body.revision.clone(),
            models: source_models.unwrap_or(models),
        };
        if last_good.is_some_and(|map| map.digest() == digest) {
            let models = self
                .status
                .as_ref()
                .and_then(|s| s.artifact.as_ref())
                .map_or(0, |a| a.models);
            return Ok((
                Outcome::Unchanged {
                    revision: body.revision.clone(),
                    source: Some(source(models)),
                    overrides: overrides_status,
                },
                None,
            ));
        }
        let against = match last_good {
            Some(map) => Some(Against::republished(map, &overrides).await?),
            None => None,
        };
        let rules = crate::sync::validate::Rules::from(&spec.validation);
        let accept_digest = self.sync.accept_digest().map(str::to_owned);
        let prepared = self
            .context
            .base
            .prepared(bytes, digest, against, rules, accept_digest)
            .await?;
        let artifact = status::artifact_of(
            &prepared.map,
            prepared.accepted.models,
            overrides.is_empty().then(|| body.git_blob_id.clone()),
            body.revision.clone(),
            self.now,
        );
        self.context
            .memory
            .remember_last_good(&self.uid, Arc::clone(&prepared.map));
        let outcome = Outcome::Updated {
            artifact: artifact.clone(),
            change: prepared.accepted.change.clone(),
            replaced: None,
            overridden: prepared.accepted.overridden.clone(),
            source: Some(source(artifact.models)),
            overrides: overrides_status,
            history: None,
        };
        let new = Published {
            map: Arc::clone(&prepared.map),
            artifact,
        };
        Ok((outcome, Some(new)))
    }

    /// Records in status the map about to be written, so that the endpoint serves each
    /// copy as soon as it lands (status vouches for it).
    async fn record_pending(&self, artifact: &Artifact) -> Result<(), Error> {
        let mut status = self.status.clone().unwrap_or_default();
        status.pending_artifact = Some(artifact.clone());
        let namespaces = self.sync.status.as_ref().and_then(|s| s.namespaces.clone());
        self.write_status(ClusterModelCostMapSyncStatus {
            sync: status,
            namespaces,
        })
        .await
    }

    /// Writes `published` into the selected namespaces that need it; the plan, with the
    /// writes that failed moved to failing.
    async fn write_copies(
        &self,
        selected: &BTreeSet<String>,
        copies: &BTreeMap<String, (Copy, PartialObjectMeta<ConfigMap>)>,
        published: Option<Published>,
    ) -> selection::Plan {
        let found: BTreeMap<String, Copy> = copies
            .iter()
            .map(|(namespace, (copy, _))| (namespace.clone(), copy.clone()))
            .collect();
        let written = crate::locks::lock(&self.context.copies)
            .get(&self.uid)
            .map(|c| c.written.clone())
            .unwrap_or_default();
        let digest = published.as_ref().map(|p| p.artifact.digest.as_str());
        let mut plan = selection::plan(selected, &found, digest, &written, &self.config_map);
        let Some(published) = published else {
            return plan;
        };
        let identity = self.identity(&published.artifact);
        let to_write = std::mem::take(&mut plan.write);
        let results: Vec<(String, Result<Option<String>, String>)> =
            futures::stream::iter(to_write)
                .map(|namespace| {
                    let (identity, map) = (&identity, published.map.stored());
                    async move {
                        let result = self.write_copy(&namespace, map, identity).await;
                        (namespace, result)
                    }
                })
                .buffer_unordered(CONCURRENT_WRITES)
                .collect()
                .await;
        let mut restored = Vec::new();
        let mut remembered = crate::locks::lock(&self.context.copies);
        let remembered = remembered.entry(self.uid.clone()).or_default();
        for (namespace, result) in results {
            match result {
                Ok(version) => {
                    if let Some(version) = version {
                        remembered.written.insert(namespace.clone(), version);
                    }
                    if matches!(found.get(&namespace), Some(Copy::Ours { digest: Some(d), .. }) if d == &published.artifact.digest)
                    {
                        restored.push(namespace.clone());
                    }
                    plan.holding.push(namespace);
                }
                Err(message) => plan.failing.push(NamespaceFailure {
                    namespace,
                    reason: NamespaceReason::WriteFailed.as_str().to_owned(),
                    message,
                }),
            }
        }
        remembered
            .written
            .retain(|namespace, _| selected.contains(namespace));
        if !restored.is_empty() {
            debug!(namespaces = ?restored, "wrote ConfigMaps that were edited, or not known to hold the map");
        }
        plan
    }

    /// Writes one copy (in chunks when it needs them); its new resourceVersions.
    async fn write_copy(
        &self,
        namespace: &str,
        map: &StoredMap,
        identity: &MapIdentity,
    ) -> Result<Option<String>, String> {
        let target = TargetRef {
            name: self.config_map.clone(),
            namespace: namespace.to_owned(),
            key: self.key.clone(),
            owner: self.owner.clone(),
        };
        let rendered = render_config_maps(&target, map, identity).map_err(|err| err.to_string())?;
        let client = &self.context.base.client;
        let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
        let exists = |name: &str| {
            let key = ObjectRef::new(name).within(namespace);
            self.context.watched.get(&key).is_some()
        };
        match write_config_maps(client, &api, write_order(&rendered), &[&self.key], exists).await {
            // Written chunks first; kept first first, as [`Self::versions_of`] reads them.
            Ok(mut versions) => {
                versions.rotate_right(1);
                let versions: Vec<String> = versions.into_iter().map(|(_, v)| v).collect();
                Ok((versions.len() == rendered.len()).then(|| versions.join(",")))
            }
            Err(failed) => Err(format!(
                "writing ConfigMap {}: {}",
                failed.name,
                api_error_message(&failed.error)
            )),
        }
    }

    fn identity(&self, artifact: &Artifact) -> MapIdentity {
        identity(artifact, &self.sync.spec.sync.source.url)
    }

    /// Sums the namespaces up into status, records the Events and writes status when it
    /// changed. `plan`: the namespaces of this reconcile (None: keep what status says).
    async fn finish(
        &self,
        mut status: ModelCostMapSyncStatus,
        events: Vec<Notice>,
        plan: Option<selection::Plan>,
    ) -> Result<(), Error> {
        for notice in events {
            self.publish(notice).await;
        }
        let namespaces = match plan {
            Some(plan) => Some(selection::summary(&plan)),
            None => self.sync.status.as_ref().and_then(|s| s.namespaces.clone()),
        };
        if let Some(namespaces) = &namespaces {
            selection::set_ready(
                &mut status,
                namespaces,
                self.sync.metadata.generation,
                self.now,
            );
        }
        self.write_status(ClusterModelCostMapSyncStatus {
            sync: status,
            namespaces,
        })
        .await
    }

    /// Server-side applies the whole status; skipped when nothing changed.
    async fn write_status(&self, status: ClusterModelCostMapSyncStatus) -> Result<(), Error> {
        if self.sync.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api = Api::<ClusterModelCostMapSync>::all(self.context.base.client.clone());
        let written = super::apply_status(&api, &self.sync.name_any(), &status).await?;
        self.context.memory.record_write(
            &self.uid,
            status.sync,
            written.resource_version(),
            self.sync.resource_version(),
        );
        Ok(())
    }

    /// Records an Event (in the `default` namespace, where kube puts the Events of
    /// cluster-scoped objects); a failure to record is logged, never fatal.
    async fn publish(&self, notice: Notice) {
        let object = self.sync.object_ref(&());
        self.context.base.publish(notice, &object).await;
    }
}
