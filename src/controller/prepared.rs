//! New maps prepared once: however many objects (namespaced or cluster-wide) ask about the
//! same map against the same last good map under the same rules, one parses, validates,
//! judges and compresses it, and the others take its answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::budget::ByteBudget;
use crate::digest::sha256_digest;
use crate::memo::Memo;
use crate::sync::fetch::shared::SourceBody;
use crate::sync::overrides::{Applied, Overrides, apply};
use crate::sync::store::{HeldMap, MapStore};
use crate::sync::validate::summary::MapSummary;
use crate::sync::validate::{IndexedMap, Rules};
use crate::sync::{Accepted, NotAccepted, SyncError, prepare};

/// The map to publish from a fetched body, and what the overrides did to it.
pub(super) struct ToPublish {
    pub(super) bytes: Bytes,
    pub(super) digest: String,
    pub(super) applied: Applied,
    /// The fetched map's model count, when the overrides changed it (else it is the
    /// published map's, known without parsing again).
    pub(super) fetched_models: Option<usize>,
}

impl ToPublish {
    /// Without overrides the published map is the fetched one: no copy, no second hash.
    pub(super) fn of(fetched: &SourceBody, overrides: &Overrides) -> ToPublish {
        if overrides.is_empty() {
            return ToPublish {
                bytes: fetched.bytes.clone(),
                digest: fetched.digest.clone(),
                applied: Applied::default(),
                fetched_models: None,
            };
        }
        let published = apply(&fetched.bytes, overrides);
        let fetched_models = (published.applied != Applied::default())
            .then(|| {
                IndexedMap::read(&fetched.bytes)
                    .ok()
                    .map(|map| map.model_count())
            })
            .flatten();
        ToPublish {
            digest: sha256_digest(&published.bytes),
            bytes: Bytes::from(published.bytes),
            applied: published.applied,
            fetched_models,
        }
    }
}

/// How old an answer of a shared source a sync takes: the answer that brought news, however
/// long ago; one from within the interval for a scheduled sync (so the source is asked once
/// per interval); none, but a fetch in flight, for a sync someone asked for or a new spec.
pub(super) fn answer_max_age(
    news: bool,
    interval: Option<Duration>,
    asked_fresh: bool,
) -> Duration {
    match interval {
        _ if news => Duration::MAX,
        Some(interval) if !asked_fresh => interval,
        _ => Duration::ZERO,
    }
}

/// The map a new one is judged against.
pub(super) enum Against {
    /// The last good map as it is (no overrides, or the same ones).
    Held(Arc<HeldMap>),
    /// The last good map with other overrides merged in.
    Republished { digest: String, bytes: Vec<u8> },
}

impl Against {
    /// The last good map with `overrides` merged in: itself when that changes nothing.
    pub(super) async fn republished(
        map: &Arc<HeldMap>,
        overrides: &Overrides,
    ) -> Result<Against, SyncError> {
        if overrides.is_empty() {
            return Ok(Against::Held(Arc::clone(map)));
        }
        let (held, overrides) = (Arc::clone(map), overrides.clone());
        let republished = tokio::task::spawn_blocking(move || {
            let bytes = apply(&held.stored().bytes, &overrides).bytes;
            let digest = sha256_digest(&bytes);
            if digest == held.digest() {
                Against::Held(held)
            } else {
                Against::Republished { digest, bytes }
            }
        });
        republished
            .await
            .map_err(|join_error| SyncError::Interrupted {
                what: "merging the overrides",
                detail: join_error.to_string(),
            })
    }

    fn digest(&self) -> &str {
        match self {
            Against::Held(map) => map.digest(),
            Against::Republished { digest, .. } => digest,
        }
    }

    /// Its summary (parsed now if never before): CPU, so called off the async workers.
    fn summary(&self) -> Option<Arc<MapSummary>> {
        match self {
            Against::Held(map) => map.summary(),
            Against::Republished { bytes, .. } => IndexedMap::read(bytes)
                .ok()
                .map(|map| Arc::new(map.into_summary())),
        }
    }
}

/// What preparing a map depends on: the same inputs give the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PrepareInputs {
    digest: String,
    against: Option<String>,
    rules: Rules,
    accept_digest: Option<String>,
}

/// A map prepared and held, with how it was accepted.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) map: Arc<HeldMap>,
    pub(super) accepted: Accepted,
}

/// What preparing answers, shared by every object that asked.
pub(super) type PrepareAnswer = Result<Arc<Prepared>, NotAccepted>;

/// How many prepared maps are kept for the objects that come after the first: each answer
/// holds a map (about 4 MB today), and the objects of one round share one or two.
const PREPARED_MAPS: usize = 2;

/// Prepares new maps, once for every object with the same inputs.
pub(super) struct Preparer {
    /// New maps prepared for some object: the others with the same inputs take the answer.
    memo: Memo<PrepareInputs, PrepareAnswer>,
    /// How many maps may be prepared (parsed, validated, compressed) at once.
    slots: Semaphore,
    /// How many bytes of maps may be prepared at once, half the largest accepted size: a
    /// map takes its size, so two maps over a quarter of that size are never parsed side by
    /// side (each costs about five times its size while parsed), while maps of today's
    /// size still are.
    budget: ByteBudget,
    /// One preparation at a time per tenant (namespace; cluster objects are one tenant):
    /// the budgets above are first come, first served, so without this a tenant with many
    /// objects on large maps would queue them all ahead of another tenant's one.
    tenants: TenantGates,
    /// Where a prepared map is held (once, by digest).
    held: Arc<MapStore>,
}

impl Preparer {
    /// A preparer that holds its maps in `held`, `concurrent` at a time, and maps of up to
    /// `max_map_bytes` one at a time once they are large.
    pub(super) fn new(held: Arc<MapStore>, concurrent: usize, max_map_bytes: u64) -> Preparer {
        Preparer {
            memo: Memo::new(PREPARED_MAPS),
            slots: Semaphore::new(concurrent.max(1)),
            budget: ByteBudget::new(max_map_bytes / 2),
            tenants: TenantGates::default(),
            held,
        }
    }

    /// The new map `bytes` (with `digest`) accepted against `against` under `rules`, or
    /// why not: worked out once for every caller with the same inputs, on a blocking
    /// thread, at most `--concurrent-syncs` at once.
    pub(super) async fn prepared(
        &self,
        tenant: &str,
        bytes: Bytes,
        digest: String,
        against: Option<Against>,
        rules: Rules,
        accept_digest: Option<String>,
    ) -> Result<Arc<Prepared>, SyncError> {
        let inputs = PrepareInputs {
            digest,
            against: against.as_ref().map(|a| a.digest().to_owned()),
            rules,
            accept_digest,
        };
        let answer = self
            .memo
            .get_or_try(inputs.clone(), || {
                self.prepare(tenant, bytes, against, inputs)
            })
            .await?;
        Ok(answer?)
    }

    /// Forgets the prepared maps nobody holds but this memory (every object moved on from
    /// them): a map two versions old would otherwise stay in memory until two more maps are
    /// prepared, beside the last good map and the next one being fetched.
    pub(super) fn forget_unheld(&self) {
        // Held: by an object that asked and is still writing it (the answer itself), or by
        // an object's last good map (the map).
        self.memo.retain(|answer| match answer {
            Ok(prepared) => Arc::strong_count(prepared) > 1 || Arc::strong_count(&prepared.map) > 1,
            Err(_) => true,
        });
    }

    async fn prepare(
        &self,
        tenant: &str,
        bytes: Bytes,
        against: Option<Against>,
        inputs: PrepareInputs,
    ) -> Result<PrepareAnswer, SyncError> {
        // Preparing holds the new map, its parsed form and its gzip: tens of MiB. Bounding
        // how many run at once bounds the operator's memory, however many distinct maps
        // come due together. Fetches are not counted here (bodies being received have a
        // budget of their own): a hanging source must not hold up the others.
        let gate = self.tenants.gate(tenant);
        let _turn = gate.lock().await;
        let _slot = self.slots.acquire().await;
        let _budget = self.budget.reserve(None, bytes.len() as u64).await;
        let held = Arc::clone(&self.held);
        let prepared = tokio::task::spawn_blocking(move || {
            let summary = against.as_ref().and_then(Against::summary);
            drop(against);
            let answer = prepare(
                bytes,
                &inputs.rules,
                summary.as_deref(),
                inputs.accept_digest.as_deref(),
            )
            .map(|prepared| {
                let summary = Some(Arc::new(prepared.summary));
                let map = held.hold(prepared.map, inputs.digest, summary);
                Arc::new(Prepared {
                    map,
                    accepted: prepared.accepted,
                })
            });
            crate::heap::release_freed_memory();
            answer
        });
        prepared.await.map_err(|join_error| SyncError::Interrupted {
            what: "validation",
            detail: join_error.to_string(),
        })
    }
}

/// A gate per tenant, kept while someone holds or waits at it.
#[derive(Default)]
struct TenantGates {
    gates: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl TenantGates {
    /// `tenant`'s gate; gates nobody uses any more are dropped on the way.
    fn gate(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = crate::locks::lock(&self.gates);
        gates.retain(|_, gate| Arc::strong_count(gate) > 1);
        Arc::clone(gates.entry(tenant.to_owned()).or_default())
    }
}
