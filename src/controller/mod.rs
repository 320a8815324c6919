//! The reconciler: the only module that talks to the Kubernetes API.
//!
//! One sync is fetch -> validate -> diff -> render -> apply ConfigMap -> notify consumers ->
//! status. The pure stages live in their own modules; this one reads the cluster, decides
//! with [`schedule::decide`], calls them, and writes the results. [`reach`] tells the
//! consumers (LiteLLM proxies, workloads to restart).

mod reach;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{Artifact, ModelCostMapSync, ModelCostMapSyncStatus, SpecError};
use crate::conditions::{self, Reason};
use crate::consumers::ProxyClient;
use crate::diff::{MapChange, diff};
use crate::digest::{git_blob_id, sha256_digest};
use crate::fetch::{
    FetchError, FetchOutcome, FetchRequest, Fetcher, sanitize_url, validate_source_url,
};
use crate::map_cache::MapCache;
use crate::metrics::{MapLabels, Metrics, SyncResult};
use crate::render::{
    MANAGED_BY, MANAGED_BY_LABEL, MapIdentity, RenderError, StoredMap, TargetRef, gunzip_bounded,
    holds_rendered, read_stored_map, render_config_map,
};
use crate::schedule::{self, Decision, SyncCause};
use crate::scope;
use crate::validate::{ModelMap, Rules, ValidationError, shrink_guard_by_count, validate};

/// Field manager of every server-side apply this operator makes.
pub const FIELD_MANAGER: &str = "costmap-operator";
/// How many new model names an Event lists.
const EVENT_MODEL_NAMES: usize = 10;
/// The longest a source's `Retry-After` defers the next sync: a hostile or broken value
/// must not stop syncing for good (a sync request still goes through at once).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Errors that end a reconcile early; the error policy retries them with backoff. Sync
/// failures (a bad source, a refused map) are not errors here: they are recorded in status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A spec field the CRD should have refused.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The object has no namespace (it is namespaced, so the API server never sends this).
    #[error("object has no namespace")]
    NoNamespace,
}

/// What the reconciler needs, shared by every reconcile.
pub struct Context {
    client: Client,
    fetcher: Fetcher,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    proxies: ProxyClient,
    maps: MapCache,
    /// How many maps may be prepared (parsed, validated, compressed) at once.
    sync_slots: Semaphore,
    /// First wait after a failed sync.
    retry_backoff: Duration,
    memory: Mutex<HashMap<String, Memory>>,
}

/// What the operator remembers per object between reconciles. All of it can be rebuilt from
/// the cluster, so a restart loses nothing.
#[derive(Default)]
struct Memory {
    /// The last good map, gzipped (a twentieth of its size), so that a deleted ConfigMap is
    /// restored without a fetch.
    last_good: Option<RememberedMap>,
    /// Failed syncs in a row, for the retry backoff.
    consecutive_failures: u32,
    /// The status this operator last wrote. The object a reconcile gets comes from a watch
    /// cache that can lag behind our own write; deciding on a stale status would fetch twice.
    written_status: Option<WrittenStatus>,
    /// Consumer checks since the map last changed, for the recheck backoff.
    consumer_checks: u32,
}

/// A status this operator wrote, the resourceVersion the write produced, and the versions
/// it supersedes: the object it was decided on, and what earlier writes of ours produced.
#[derive(Clone)]
struct WrittenStatus {
    status: ModelCostMapSyncStatus,
    version: Option<String>,
    superseded: Vec<String>,
}

/// How many superseded versions are remembered: a sync writes status at most three times.
const SUPERSEDED_VERSIONS: usize = 8;

/// A last good map kept between reconciles.
#[derive(Clone)]
struct RememberedMap {
    digest: String,
    gz: Bytes,
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
}

impl Context {
    /// A context for `client`, fetching with `fetcher`.
    pub fn new(client: Client, fetcher: Fetcher, settings: Settings) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: settings.instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            fetcher,
            metrics: settings.metrics,
            proxies: settings.proxies,
            maps: settings.maps,
            sync_slots: Semaphore::new(settings.concurrent_syncs.max(1)),
            retry_backoff: settings.retry_backoff,
            memory: Mutex::new(HashMap::new()),
        }
    }

    fn remembered<T>(&self, uid: &str, read: impl FnOnce(&Memory) -> T) -> Option<T> {
        crate::locks::lock(&self.memory).get(uid).map(read)
    }

    fn remember(&self, uid: &str, update: impl FnOnce(&mut Memory)) {
        update(
            crate::locks::lock(&self.memory)
                .entry(uid.to_owned())
                .or_default(),
        );
    }
}

/// Runs the controller, one per watched namespace (or one for the cluster), until `stop`
/// is cancelled; in-flight reconciles finish first.
pub async fn run(client: Client, fetcher: Fetcher, settings: Settings, stop: CancellationToken) {
    let scopes = scope::scopes(&settings.namespaces);
    let context = Arc::new(Context::new(client.clone(), fetcher, settings));
    let controllers = scopes.into_iter().map(|scope| {
        run_scope(
            client.clone(),
            scope,
            context.clone(),
            stop.clone().cancelled_owned(),
        )
    });
    join_all(controllers).await;
}

async fn run_scope(
    client: Client,
    scope: Option<String>,
    context: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let scope = scope.as_deref();
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let controller = Controller::new(
        scope::api::<ModelCostMapSync>(&client, scope),
        watcher::Config::default(),
    );
    // A proxy pod that appears behind a Service is checked as it appears.
    let syncs_by_service = reach::SyncsByService::new(controller.store());
    controller
        .owns(scope::api::<ConfigMap>(&client, scope), managed)
        .watches(
            scope::api::<EndpointSlice>(&client, scope),
            watcher::Config::default(),
            move |slice| syncs_by_service.of(&slice),
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                debug!(error = %err, "reconcile ended with an error");
            }
        })
        .await;
}

fn error_policy(sync: Arc<ModelCostMapSync>, error: &Error, _: Arc<Context>) -> Action {
    warn!(namespace = sync.namespace().unwrap_or_default(), name = sync.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(15))
}

async fn reconcile(sync: Arc<ModelCostMapSync>, context: Arc<Context>) -> Result<Action, Error> {
    let namespace = sync.namespace().ok_or(Error::NoNamespace)?;
    // Not `name`: JSON logs put the span's own name under that key.
    let span = info_span!("reconcile", namespace = %namespace, modelcostmapsync = %sync.name_any());
    let result = Reconciler::new(&sync, &context, namespace)?
        .reconcile()
        .instrument(span)
        .await;
    context.metrics.reconciles.inc();
    result
}

/// One reconcile of one object.
struct Reconciler<'a> {
    sync: &'a ModelCostMapSync,
    /// The newer of the object's status and the one this operator last wrote.
    status: Option<ModelCostMapSyncStatus>,
    context: &'a Context,
    config_maps: Api<ConfigMap>,
    target: TargetRef,
    uid: String,
    interval: Duration,
    now: Timestamp,
    /// Status names a last good map that neither memory nor the ConfigMap holds (the
    /// ConfigMap was deleted or edited while nothing held a copy).
    last_good_lost: bool,
}

/// How a sync attempt ended.
enum Outcome {
    /// The source answered 304 for the last good map's revision.
    NotModified,
    /// The source re-sent the last good map's bytes.
    Unchanged { revision: Option<String> },
    /// A new map was validated and written.
    Updated {
        artifact: Artifact,
        /// What it changed against the last good map.
        change: Option<MapChange>,
        /// When there was no last good map to compare with: what the ConfigMap held.
        replaced: Option<String>,
    },
    /// The attempt failed; the ConfigMap keeps the last good map.
    Failed {
        reason: Reason,
        message: String,
        /// How long the source asked us to wait before asking again.
        retry_after: Option<Duration>,
    },
}

impl<'a> Reconciler<'a> {
    fn new(
        sync: &'a ModelCostMapSync,
        context: &'a Context,
        namespace: String,
    ) -> Result<Self, Error> {
        let owner = sync.controller_owner_ref(&()).ok_or(Error::NoNamespace)?;
        let uid = sync.uid().unwrap_or_default();
        let written = context
            .remembered(&uid, |m| m.written_status.clone())
            .flatten();
        Ok(Reconciler {
            sync,
            status: newer_status(sync.status.as_ref(), sync.resource_version(), written),
            context,
            config_maps: Api::namespaced(context.client.clone(), &namespace),
            target: TargetRef {
                name: sync.config_map_name().to_owned(),
                namespace,
                key: sync.spec.key().to_owned(),
                owner,
            },
            uid,
            interval: sync.spec.interval()?,
            now: whole_seconds_now(),
            last_good_lost: false,
        })
    }

    async fn reconcile(mut self) -> Result<Action, Error> {
        let config_map = self.config_maps.get_opt(&self.target.name).await?;
        if let Some(action) = self.adopt_interrupted_write(config_map.as_ref()).await? {
            return Ok(action);
        }
        let last_good = self.last_good(config_map.as_ref());
        self.last_good_lost = self.artifact().is_some() && last_good.is_none();
        let status = self.status.as_ref();
        let decision = schedule::decide(&schedule::Inputs {
            now: self.now,
            generation: self.sync.metadata.generation,
            suspended: self.sync.spec.suspend,
            sync_request: self.sync.sync_request(),
            status,
            has_last_good: last_good.is_some(),
            retrying: status.is_some_and(|s| conditions::is_ready(&s.conditions) == Some(false)),
        });
        match decision {
            Decision::Suspended => {
                self.write_suspended_status().await?;
                Ok(Action::await_change())
            }
            Decision::Wait(remaining) => {
                if let Some(last_good) = &last_good {
                    self.restore_if_changed(config_map.as_ref(), last_good)
                        .await?;
                }
                let recheck = self.recheck_consumers().await?;
                Ok(Action::requeue(
                    recheck.map_or(remaining, |r| r.min(remaining)),
                ))
            }
            Decision::Sync(cause) => {
                info!(?cause, "syncing");
                let holds_last_good = match (&last_good, &config_map) {
                    (Some(map), Some(cm)) => self
                        .desired(map)
                        .is_some_and(|desired| holds_rendered(cm, &desired)),
                    _ => false,
                };
                let started = Instant::now();
                let outcome = self
                    .sync_once(last_good.as_deref(), holds_last_good, config_map.as_ref())
                    .await;
                let next = self
                    .write_outcome(cause, outcome, started.elapsed())
                    .await?;
                Ok(Action::requeue(next))
            }
        }
    }

    /// Finishes a content change that a restart interrupted between the ConfigMap write and
    /// the status write: status names the map as pending, and the ConfigMap holds exactly
    /// its bytes, so it was validated and written by this operator. It becomes the last good
    /// map (the next map is guarded against it), and the proxies are told. Nothing is
    /// fetched or written to the ConfigMap.
    async fn adopt_interrupted_write(
        &mut self,
        config_map: Option<&ConfigMap>,
    ) -> Result<Option<Action>, Error> {
        let Some(pending) = self
            .status
            .as_ref()
            .and_then(|status| status.pending_artifact.clone())
        else {
            return Ok(None);
        };
        if self.artifact().is_some_and(|a| a.digest == pending.digest) {
            return Ok(None);
        }
        let max_bytes = self.context.fetcher.policy().max_body_bytes;
        let held = config_map
            .and_then(|cm| {
                read_stored_map(cm, &self.target.key, max_bytes)
                    .ok()
                    .flatten()
            })
            .filter(|held| held.digest() == pending.digest);
        let Some(held) = held else {
            // The write never happened: the ConfigMap still holds the artifact (or lost it,
            // which the usual path handles); the pending record is dropped at the next write.
            return Ok(None);
        };
        self.remember_last_good(&held);
        let mut status = self.status.clone().unwrap_or_default();
        let message = synced_message(Some(&pending), "written before the operator restarted");
        conditions::set_condition(
            &mut status.conditions,
            conditions::ready(
                true,
                Reason::Synced,
                message,
                self.sync.metadata.generation,
                self.now,
            ),
        );
        let note = format!(
            "ConfigMap {}: {} models, map {}; its write was interrupted by an operator restart \
             and is complete now (what it changed is not known)",
            self.target.name, pending.models, pending.digest
        );
        info!(digest = %pending.digest, "adopted the map whose write a restart interrupted");
        self.publish(EventType::Normal, "MapUpdated", note).await;
        self.context.metrics.record_map(
            &self.map_labels(),
            i64::from(pending.models),
            self.now.as_second(),
        );
        status.artifact = Some(pending);
        status.pending_artifact = None;
        status.last_change = None;
        // The proxies may not have been told before the restart.
        self.reach_consumers(&mut status, reach::Mode::ReloadStale)
            .await;
        self.write_status(status.clone()).await?;
        self.status = Some(status);
        Ok(Some(Action::requeue(Duration::ZERO)))
    }

    /// The last good map named by `status.artifact`, from memory or read back from the
    /// ConfigMap. None when neither holds exactly those bytes.
    fn last_good(&self, config_map: Option<&ConfigMap>) -> Option<Arc<StoredMap>> {
        let digest = &self.status.as_ref()?.artifact.as_ref()?.digest;
        let max_bytes = self.context.fetcher.policy().max_body_bytes;
        let remembered = self
            .context
            .remembered(&self.uid, |m| m.last_good.clone())
            .flatten()
            .filter(|map| &map.digest == digest);
        if let Some(map) = remembered {
            // Checked against the digest when it was remembered.
            let bytes = gunzip_bounded(&map.gz, max_bytes).ok()?;
            return Some(Arc::new(StoredMap {
                bytes,
                gz: map.gz.to_vec(),
            }));
        }
        let read = read_stored_map(config_map?, &self.target.key, max_bytes).ok()??;
        if &sha256_digest(&read.bytes) != digest {
            return None;
        }
        self.remember_last_good(&read);
        Some(Arc::new(read))
    }

    fn remember_last_good(&self, map: &StoredMap) {
        let remembered = RememberedMap {
            digest: map.digest(),
            gz: Bytes::copy_from_slice(&map.gz),
        };
        self.context
            .remember(&self.uid, |m| m.last_good = Some(remembered));
    }

    fn identity(&self, artifact: &Artifact) -> MapIdentity {
        MapIdentity {
            digest: artifact.digest.clone(),
            git_blob_id: artifact.git_blob_id.clone(),
            models: artifact.models,
            source_url: redacted(&self.sync.spec.source.url),
            updated_at: artifact.last_update_time.0.to_string(),
        }
    }

    /// The ConfigMap as it should be for the last good map in status. None when there is
    /// no artifact, or it no longer renders (it did when it was stored).
    fn desired(&self, map: &StoredMap) -> Option<ConfigMap> {
        render_config_map(&self.target, map, &self.identity(self.artifact()?)).ok()
    }

    fn artifact(&self) -> Option<&Artifact> {
        self.status.as_ref()?.artifact.as_ref()
    }

    /// Puts the last good map back when the ConfigMap was deleted or edited by hand. This
    /// is not a sync: nothing is fetched.
    async fn restore_if_changed(
        &self,
        actual: Option<&ConfigMap>,
        last_good: &StoredMap,
    ) -> Result<(), Error> {
        let Some(desired) = self.desired(last_good) else {
            return Ok(());
        };
        if actual.is_some_and(|actual| holds_rendered(actual, &desired)) {
            return Ok(());
        }
        self.apply_config_map(&desired).await?;
        // Distinct reasons, because Events with the same reason merge into one series that
        // keeps the first note.
        let (reason, what) = match actual {
            Some(_) => ("Restored", "edited"),
            None => ("Recreated", "deleted"),
        };
        info!(config_map = %self.target.name, what, "restored the ConfigMap");
        self.publish(
            EventType::Normal,
            reason,
            format!(
                "ConfigMap {} was {what}; restored the last good map",
                self.target.name
            ),
        )
        .await;
        Ok(())
    }

    async fn apply_config_map(&self, config_map: &ConfigMap) -> Result<ConfigMap, kube::Error> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.config_maps
            .patch(&self.target.name, &params, &Patch::Apply(config_map))
            .await
    }

    /// Fetch, validate, diff, render, apply.
    async fn sync_once(
        &self,
        last_good: Option<&StoredMap>,
        holds_last_good: bool,
        config_map: Option<&ConfigMap>,
    ) -> Outcome {
        let headers = match self.source_headers().await {
            Ok(headers) => headers,
            Err(message) => return Outcome::failed(Reason::FetchFailed, message),
        };
        // A validator only makes sense while the cluster holds the map it validates.
        let revision = holds_last_good
            .then(|| self.artifact().and_then(|a| a.revision.as_deref()))
            .flatten();
        let timeout = match self.sync.spec.timeout() {
            Ok(timeout) => timeout,
            Err(err) => return Outcome::failed(Reason::FetchFailed, err.to_string()),
        };
        let request = FetchRequest {
            url: &self.sync.spec.source.url,
            headers: &headers,
            timeout,
            revision,
        };
        let (body, revision) = match self.context.fetcher.fetch(&request).await {
            Ok(FetchOutcome::NotModified) => return Outcome::NotModified,
            Ok(FetchOutcome::Fetched { body, revision }) => {
                self.context.metrics.fetched_bytes.inc_by(body.len() as u64);
                (body, revision)
            }
            Err(err) => return fetch_failure(&err),
        };
        if let Some(map) = last_good.filter(|map| map.bytes == body.as_ref()) {
            if let Some(artifact) = self.artifact().filter(|_| !holds_last_good)
                && let Err(failure) = self.write_map(map, artifact).await
            {
                return failure;
            }
            return Outcome::Unchanged { revision };
        }
        if let Some(artifact) = self.artifact().filter(|_| last_good.is_none())
            && sha256_digest(&body) == artifact.digest
        {
            return self.restore_from_source(body, revision, artifact).await;
        }
        let replaced = match last_good {
            Some(_) => None,
            None => self.unverified_predecessor(config_map),
        };
        self.accept_new_map(body.to_vec(), revision, last_good, replaced)
            .await
    }

    /// The source sent the last good map again while the cluster had lost it (ConfigMap
    /// deleted or edited, no copy in memory): puts it back.
    async fn restore_from_source(
        &self,
        body: Bytes,
        revision: Option<String>,
        artifact: &Artifact,
    ) -> Outcome {
        let compressed = tokio::task::spawn_blocking(move || StoredMap::from_bytes(body.to_vec()));
        let map = match compressed.await {
            Ok(map) => map,
            Err(join_error) => {
                let message = format!("compressing the map did not finish: {join_error}");
                return Outcome::failed(Reason::WriteFailed, message);
            }
        };
        if let Err(failure) = self.write_map(&map, artifact).await {
            return failure;
        }
        self.remember_last_good(&map);
        info!(config_map = %self.target.name, "restored the last good map from the source");
        self.publish(
            EventType::Normal,
            "Restored",
            format!(
                "ConfigMap {} did not hold the last good map {}; restored it from the source",
                self.target.name, artifact.digest
            ),
        )
        .await;
        Outcome::Unchanged { revision }
    }

    /// With no last good map to compare a new one with: what the ConfigMap held instead,
    /// for the Event (a sync is "first" only when the cluster holds no map at all).
    fn unverified_predecessor(&self, config_map: Option<&ConfigMap>) -> Option<String> {
        if let Some(artifact) = self.artifact() {
            return Some(format!(
                "the ConfigMap no longer held the last good map {} (deleted or edited while \
                 no copy was held), so the new map was checked against its model count only",
                artifact.digest
            ));
        }
        let max_bytes = self.context.fetcher.policy().max_body_bytes;
        let held = read_stored_map(config_map?, &self.target.key, max_bytes)
            .ok()
            .flatten()?;
        Some(format!(
            "replaced map {} that this operator cannot vouch for (status did not name it)",
            held.digest()
        ))
    }

    /// Validates a new map and, when it passes, writes it.
    async fn accept_new_map(
        &self,
        bytes: Vec<u8>,
        revision: Option<String>,
        last_good: Option<&StoredMap>,
        replaced: Option<String>,
    ) -> Outcome {
        let rules = Rules {
            min_models: usize::try_from(self.sync.spec.validation.min_models).unwrap_or(1),
            max_removed_percent: u32::try_from(self.sync.spec.validation.max_removed_percent)
                .unwrap_or(0),
        };
        let last_good_bytes = last_good.map(|map| map.bytes.clone());
        // Preparing holds the fetched body, the last good map and two parsed maps: tens of
        // MiB. Bounding how many run at once bounds the operator's memory, however many
        // objects come due together (at start-up, all of them). Fetches are not counted:
        // a hanging source must not hold up the others.
        let slot = self.context.sync_slots.acquire().await;
        // Parsing, validating and compressing 3.5 MB takes a few hundred ms of CPU: keep it
        // off the async workers that serve HTTP.
        let checked = tokio::task::spawn_blocking(move || {
            let prepared = prepare_new_map(bytes, &rules, last_good_bytes.as_deref());
            crate::heap::release_freed_memory();
            prepared
        })
        .await;
        drop(slot);
        let prepared = match checked {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(err)) => {
                let reason = match err {
                    ValidationError::InvalidMap(_) => Reason::InvalidMap,
                    ValidationError::ShrinkGuard(_) => Reason::ShrinkGuard,
                };
                return Outcome::failed(reason, err.to_string());
            }
            Err(join_error) => {
                return Outcome::failed(
                    Reason::InvalidMap,
                    format!("validation did not finish: {join_error}"),
                );
            }
        };
        let artifact = Artifact {
            digest: prepared.map.digest(),
            git_blob_id: git_blob_id(&prepared.map.bytes),
            revision,
            size: i64::try_from(prepared.map.bytes.len()).unwrap_or(i64::MAX),
            models: i32::try_from(prepared.models).unwrap_or(i32::MAX),
            last_update_time: Time(self.now),
        };
        // The map's bytes are gone from the cluster: a count is all that is left to guard
        // against.
        if let Some(lost) = self.artifact().filter(|_| self.last_good_lost)
            && let Err(err) = shrink_guard_by_count(
                prepared.models,
                usize::try_from(lost.models).unwrap_or(0),
                &rules,
            )
        {
            return Outcome::failed(Reason::ShrinkGuard, err.to_string());
        }
        if let Err(failure) = self.record_pending(&artifact).await {
            return failure;
        }
        if let Err(failure) = self.write_map(&prepared.map, &artifact).await {
            return failure;
        }
        self.remember_last_good(&prepared.map);
        Outcome::Updated {
            artifact,
            change: prepared.change,
            replaced,
        }
    }

    /// Records in status the map about to be written, before the ConfigMap write: an
    /// operator restarted in between then finds a map it validated in the ConfigMap.
    async fn record_pending(&self, artifact: &Artifact) -> Result<(), Outcome> {
        let mut status = self.status.clone().unwrap_or_default();
        status.pending_artifact = Some(artifact.clone());
        self.write_status(status).await.map_err(|err| {
            let message = format!(
                "recording the new map in status before writing ConfigMap {}: {}",
                self.target.name,
                match &err {
                    Error::Kube(err) => api_error_message(err),
                    other => other.to_string(),
                }
            );
            Outcome::failed(Reason::WriteFailed, message)
        })
    }

    /// Renders and applies the ConfigMap for `map`; the error is the failed outcome.
    async fn write_map(&self, map: &StoredMap, artifact: &Artifact) -> Result<(), Outcome> {
        let desired =
            render_config_map(&self.target, map, &self.identity(artifact)).map_err(|err| {
                let reason = match err {
                    RenderError::TooLarge { .. } => Reason::TooLarge,
                    RenderError::Unreadable(_) => Reason::WriteFailed,
                };
                Outcome::failed(reason, err.to_string())
            })?;
        self.apply_config_map(&desired)
            .await
            .map(|_| ())
            .map_err(|err| {
                let message = format!(
                    "writing ConfigMap {}: {}",
                    self.target.name,
                    api_error_message(&err)
                );
                Outcome::failed(Reason::WriteFailed, message)
            })
    }

    /// Request headers from `spec.source.headersSecretRef`. Errors name the Secret, never
    /// its values.
    async fn source_headers(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        let Some(secret_ref) = &self.sync.spec.source.headers_secret_ref else {
            return Ok(Vec::new());
        };
        let secrets: Api<Secret> =
            Api::namespaced(self.context.client.clone(), &self.target.namespace);
        let secret = secrets
            .get_opt(&secret_ref.name)
            .await
            .map_err(|err| {
                format!(
                    "reading headers Secret {}: {}",
                    secret_ref.name,
                    api_error_message(&err)
                )
            })?
            .ok_or_else(|| format!("headers Secret {} not found", secret_ref.name))?;
        Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name, value.0))
            .collect())
    }

    /// Writes status for a sync attempt and records Events. Returns the time until the next
    /// sync is due.
    async fn write_outcome(
        &self,
        cause: SyncCause,
        outcome: Outcome,
        took: Duration,
    ) -> Result<Duration, Error> {
        let seconds = took.as_secs_f64();
        let mut status = self.status.clone().unwrap_or_default();
        status.observed_generation = self.sync.metadata.generation;
        status.last_attempt_time = Some(Time(self.now));
        if let Some(request) = self.sync.sync_request() {
            status.last_handled_sync_request = Some(request.to_owned());
        }
        let generation = self.sync.metadata.generation;
        let metrics = &self.context.metrics;
        let mode = reach::Mode::after(cause, &outcome);
        let succeeded = !matches!(outcome, Outcome::Failed { .. });
        // Waits count from the end of the attempt: an attempt that took longer than its
        // backoff (a hanging source) must not be followed at once by the next.
        let finished = whole_seconds_now();
        let wait = match outcome {
            Outcome::NotModified | Outcome::Unchanged { .. } => {
                self.context
                    .remember(&self.uid, |m| m.consecutive_failures = 0);
                if let Outcome::Unchanged { revision } = outcome {
                    metrics.count_sync(SyncResult::Unchanged, seconds);
                    if let Some(artifact) = status.artifact.as_mut().filter(|_| revision.is_some())
                    {
                        artifact.revision = revision;
                    }
                } else {
                    metrics.count_sync(SyncResult::NotModified, seconds);
                }
                status.last_sync_time = Some(Time(self.now));
                let message = synced_message(status.artifact.as_ref(), "unchanged");
                conditions::set_condition(
                    &mut status.conditions,
                    conditions::ready(true, Reason::Synced, message, generation, self.now),
                );
                self.interval
            }
            Outcome::Updated {
                artifact,
                change,
                replaced,
            } => {
                metrics.count_sync(SyncResult::Updated, seconds);
                self.context
                    .remember(&self.uid, |m| m.consecutive_failures = 0);
                let (reason, note) = match (&change, replaced) {
                    (Some(change), _) => (
                        "MapUpdated",
                        format!(
                            "{} models; {}",
                            artifact.models,
                            change.summary(EVENT_MODEL_NAMES)
                        ),
                    ),
                    (None, Some(replaced)) => (
                        "MapUpdated",
                        format!("{} models; {replaced}", artifact.models),
                    ),
                    (None, None) => (
                        "MapSynced",
                        format!("first sync: {} models", artifact.models),
                    ),
                };
                info!(cause = ?cause, digest = %artifact.digest, models = artifact.models, "map written: {note}");
                self.publish(
                    EventType::Normal,
                    reason,
                    format!("ConfigMap {}: {note}", self.target.name),
                )
                .await;
                status.last_change = change.map(|c| c.to_status());
                let message = synced_message(Some(&artifact), "updated");
                status.artifact = Some(artifact);
                status.last_sync_time = Some(Time(self.now));
                conditions::set_condition(
                    &mut status.conditions,
                    conditions::ready(true, Reason::Synced, message, generation, self.now),
                );
                self.interval
            }
            Outcome::Failed {
                reason,
                mut message,
                retry_after,
            } => {
                metrics.count_sync(SyncResult::Failed, seconds);
                let mut failures = 0;
                self.context.remember(&self.uid, |m| {
                    m.consecutive_failures += 1;
                    failures = m.consecutive_failures;
                });
                let backoff = schedule::retry_after_failure(
                    failures,
                    self.context.retry_backoff,
                    self.interval,
                );
                let asked = retry_after.map(|wait| wait.min(MAX_RETRY_AFTER));
                let wait = asked.map_or(backoff, |asked| asked.max(backoff));
                if let Some(asked) = asked.filter(|asked| *asked > backoff) {
                    message.push_str(&format!(
                        "; the source asked to wait {} (Retry-After), so the next attempt is at {}",
                        humantime::format_duration(asked),
                        finished + SignedDuration::try_from(asked).unwrap_or(SignedDuration::MAX)
                    ));
                }
                if let Some(artifact) = status.artifact.as_ref().filter(|_| self.last_good_lost) {
                    message.push_str(&format!(
                        "; ConfigMap {} does not hold the last good map {} (deleted or edited) \
                         and is not served; it is restored at the next good fetch",
                        self.target.name, artifact.digest
                    ));
                }
                warn!(reason = reason.as_str(), error = %message, "sync failed; the ConfigMap keeps the last good map");
                self.publish(EventType::Warning, reason.as_str(), message.clone())
                    .await;
                conditions::set_condition(
                    &mut status.conditions,
                    conditions::ready(false, reason, message, generation, self.now),
                );
                wait
            }
        };
        status.pending_artifact = None;
        let next = finished + SignedDuration::try_from(wait).unwrap_or(SignedDuration::MAX);
        status.next_sync_time = Some(Time(next));
        if let Some(artifact) = status.artifact.as_ref().filter(|_| succeeded) {
            let models = i64::from(artifact.models);
            metrics.record_map(&self.map_labels(), models, self.now.as_second());
        }
        let recheck = self.reach_consumers(&mut status, mode).await;
        self.write_status(status).await?;
        Ok(recheck.map_or(wait, |r| r.min(wait)))
    }

    async fn write_suspended_status(&self) -> Result<(), Error> {
        let mut status = self.status.clone().unwrap_or_default();
        let ready = conditions::is_ready(&status.conditions).unwrap_or(false);
        let message =
            "syncing is suspended (spec.suspend); the ConfigMap keeps the map it holds".to_owned();
        conditions::set_condition(
            &mut status.conditions,
            conditions::ready(
                ready,
                Reason::Suspended,
                message,
                self.sync.metadata.generation,
                self.now,
            ),
        );
        status.observed_generation = self.sync.metadata.generation;
        status.next_sync_time = None;
        self.write_status(status).await
    }

    /// Server-side applies the whole status; skipped when nothing changed, so a reconcile
    /// with nothing to do writes nothing.
    async fn write_status(&self, status: ModelCostMapSyncStatus) -> Result<(), Error> {
        if self.sync.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<ModelCostMapSync> =
            Api::namespaced(self.context.client.clone(), &self.target.namespace);
        let patch = json!({
            "apiVersion": "costmap.dev/v1alpha1",
            "kind": "ModelCostMapSync",
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = api
            .patch_status(&self.sync.name_any(), &params, &Patch::Apply(&patch))
            .await?;
        self.context.remember(&self.uid, |m| {
            let mut superseded = m
                .written_status
                .take()
                .map(|previous| {
                    let mut versions = previous.superseded;
                    versions.extend(previous.version);
                    versions
                })
                .unwrap_or_default();
            superseded.extend(self.sync.resource_version());
            superseded.dedup();
            let excess = superseded.len().saturating_sub(SUPERSEDED_VERSIONS);
            superseded.drain(..excess);
            m.written_status = Some(WrittenStatus {
                status,
                version: written.resource_version(),
                superseded,
            });
        });
        Ok(())
    }

    /// This object, as metrics label it.
    fn map_labels(&self) -> MapLabels {
        MapLabels {
            namespace: self.target.namespace.clone(),
            name: self.sync.name_any(),
        }
    }

    /// Records an Event; a failure to record is logged, never fatal.
    async fn publish(&self, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note, 1000)),
            action: "Sync".to_owned(),
            secondary: None,
        };
        if let Err(err) = self
            .context
            .recorder
            .publish(&event, &self.sync.object_ref(&()))
            .await
        {
            warn!(error = %err, "could not record an Event");
        }
    }
}

/// The status to decide on: the object's, or our last write when the object is older.
///
/// The object comes from a watch cache that can lag behind our own writes: a reconcile right
/// after a write may get the very object that write was decided on, or what an earlier
/// write of the same sync produced (the pending record). Deciding on its status would sync a
/// second time, or take our own half-done write for one a restart interrupted. So a version
/// our last write supersedes is replaced by that write. Any other version is someone else's
/// write after ours, unless its attempt time is older than ours (attempt times have whole
/// seconds, which is why versions come first).
fn newer_status(
    observed: Option<&ModelCostMapSyncStatus>,
    observed_version: Option<String>,
    written: Option<WrittenStatus>,
) -> Option<ModelCostMapSyncStatus> {
    let attempt = |status: &ModelCostMapSyncStatus| status.last_attempt_time.as_ref().map(|t| t.0);
    match (observed, written) {
        (Some(observed), Some(written))
            if observed_version
                .as_ref()
                .is_some_and(|version| written.superseded.contains(version))
                || (written.version != observed_version
                    && attempt(&written.status) > attempt(observed)) =>
        {
            Some(written.status)
        }
        (None, written) => written.map(|w| w.status),
        (observed, _) => observed.cloned(),
    }
}

impl Outcome {
    fn failed(reason: Reason, message: String) -> Outcome {
        Outcome::Failed {
            reason,
            message,
            retry_after: None,
        }
    }
}

/// Now, in whole seconds, as metav1.Time stores it: a status kept in memory must compare
/// equal to the same status read back from the API server.
fn whole_seconds_now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now())
}

/// The CPU-heavy part of accepting a new map.
struct PreparedMap {
    map: StoredMap,
    models: usize,
    change: Option<MapChange>,
}

fn prepare_new_map(
    bytes: Vec<u8>,
    rules: &Rules,
    last_good: Option<&[u8]>,
) -> Result<PreparedMap, ValidationError> {
    let parsed = ModelMap::parse(&bytes)?;
    // The last good map passed validation when it was stored; if it no longer parses (an
    // older operator's rules), compare against nothing rather than refuse every new map.
    let last_good = last_good.and_then(|bytes| ModelMap::parse(bytes).ok());
    validate(&parsed, rules, last_good.as_ref())?;
    let change = last_good.as_ref().map(|old| diff(old, &parsed));
    Ok(PreparedMap {
        models: parsed.model_count(),
        map: StoredMap::from_bytes(bytes),
        change,
    })
}

fn fetch_failure(err: &FetchError) -> Outcome {
    let reason = if err.is_too_large() {
        Reason::TooLarge
    } else {
        Reason::FetchFailed
    };
    Outcome::Failed {
        reason,
        message: err.to_string(),
        retry_after: err.retry_after(),
    }
}

fn synced_message(artifact: Option<&Artifact>, what: &str) -> String {
    match artifact {
        Some(a) => format!(
            "{} models, {} bytes, {} ({what})",
            a.models, a.size, a.digest
        ),
        None => format!("source {what}"),
    }
}

fn redacted(url: &str) -> String {
    validate_source_url(url)
        .map(|url| sanitize_url(&url))
        .unwrap_or_else(|_| "<invalid URL>".to_owned())
}

/// The API server's message for an error, without the request it answered.
fn api_error_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempted_at(second: i64, models: i32) -> ModelCostMapSyncStatus {
        ModelCostMapSyncStatus {
            last_attempt_time: Some(Time(Timestamp::from_second(second).unwrap())),
            observed_generation: Some(i64::from(models)),
            ..ModelCostMapSyncStatus::default()
        }
    }

    #[test]
    fn our_last_write_wins_over_the_versions_it_supersedes() {
        let before = attempted_at(100, 1);
        let ours = WrittenStatus {
            status: attempted_at(100, 2),
            version: Some("43".into()),
            // Decided on 41; an earlier write of the same sync (the pending record) made 42.
            superseded: vec!["41".into(), "42".into()],
        };
        let decide = |observed: &ModelCostMapSyncStatus, version: &str| {
            newer_status(Some(observed), Some(version.into()), Some(ours.clone()))
        };
        // The watch re-delivers the object our write was decided on, or our own earlier
        // write: ours, though all attempts fall in the same second.
        assert_eq!(decide(&before, "41"), Some(ours.status.clone()));
        assert_eq!(
            decide(&attempted_at(100, 9), "42"),
            Some(ours.status.clone())
        );
        // Our write itself: the same status either way.
        assert_eq!(decide(&ours.status, "43"), Some(ours.status.clone()));
        // An older attempt: ours.
        assert_eq!(
            decide(&attempted_at(99, 1), "40"),
            Some(ours.status.clone())
        );
        // Someone edited status after us (same second, newer object): theirs.
        let edited = attempted_at(100, 3);
        assert_eq!(decide(&edited, "44"), Some(edited.clone()));
        assert_eq!(
            decide(&attempted_at(101, 4), "45"),
            Some(attempted_at(101, 4))
        );
        assert_eq!(
            newer_status(None, None, Some(ours.clone())),
            Some(ours.status)
        );
        assert_eq!(
            newer_status(Some(&edited), Some("44".into()), None),
            Some(edited)
        );
    }
}
