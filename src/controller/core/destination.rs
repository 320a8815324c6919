//! Where a map is written, and how status sums it up: what differs between the two kinds,
//! behind one trait. A ModelCostMapSync writes one target (and its chunks) in its own
//! namespace and keeps a history ring of it; a ClusterModelCostMapSync writes the same
//! ConfigMap into every namespace its selector picks, and says in status which hold it.
//!
//! Every call a reconcile makes to the API server about the map's ConfigMaps, the object's
//! status and its Events goes through here, so the core's decisions are tested with a
//! destination that records instead of writing.

use std::future::Future;
use std::time::Duration;

use crate::api::{HistoryEntry, ModelCostMapSyncStatus, SpecError};
use crate::controller::context::Error;
use crate::controller::status::Notice;
use crate::layout::MapIdentity;
use crate::layout::gzip::StoredMap;
use crate::sync::SyncError;

/// A ConfigMap that did not hold the published map and was written again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PutBack {
    /// The first ConfigMap put back (a chunk alone may have been stale).
    pub(crate) config_map: String,
    /// It was gone, rather than edited.
    pub(crate) deleted: bool,
}

/// A status write, as the API server took it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AppliedStatus {
    /// The status written (the kind's own summary merged in).
    pub(crate) status: ModelCostMapSyncStatus,
    /// The object's resourceVersion after the write.
    pub(crate) version: Option<String>,
}

/// Where one object's map is written.
pub(crate) trait Destination: Send + Sync {
    /// What is wrong with this kind's own spec fields, if anything (the fields both kinds
    /// share are checked by the core).
    fn spec_error(&self) -> Option<SpecError> {
        None
    }

    /// Reads what the places hold now, before anything is decided. `expected` is the
    /// published map's identity when memory holds that map and nothing is pending: a place
    /// this operator wrote with it, unchanged since, need not be read.
    fn look(
        &mut self,
        expected: Option<&MapIdentity>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The map `digest`, read back from a place that holds exactly its bytes (`history`:
    /// the ring status names); none when no place does.
    fn read_back(
        &self,
        digest: &str,
        history: &[HistoryEntry],
    ) -> impl Future<Output = Option<StoredMap>> + Send;

    /// What a place held while status named no map, for the Event of a first sync.
    fn unvouched(&self) -> Option<String>;

    /// Makes every place hold the published map `map`: writes where it is missing, edited
    /// or older. What it put back, if anything.
    fn converge(
        &mut self,
        map: &StoredMap,
        identity: &MapIdentity,
    ) -> impl Future<Output = Result<Option<PutBack>, SyncError>> + Send;

    /// Checks, before anything of a new map is written (its pending record in status
    /// included), that no ConfigMap it would go to is someone else's: `entry` is the map as
    /// history would keep it, `previous` the ring status names. A place that belongs to
    /// another fails the sync with `OwnedByAnother`, unless the kind says so per place.
    fn check_places(
        &self,
        _map: &StoredMap,
        _entry: &HistoryEntry,
        _previous: &[HistoryEntry],
    ) -> impl Future<Output = Result<(), SyncError>> + Send {
        async { Ok(()) }
    }

    /// Writes a map just accepted into every place.
    fn write_new(
        &mut self,
        map: &StoredMap,
        identity: &MapIdentity,
    ) -> impl Future<Output = Result<(), SyncError>> + Send;

    /// Whether a history ring is kept (so `costmap.dev/reject-digest` applies).
    fn keeps_history(&self) -> bool {
        false
    }

    /// Keeps a map just published in the history ring as `entry`; the ring after it
    /// (newest first), or none when it stays as `previous` says (no ring, or the slot
    /// could not be written: the map is published all the same).
    fn keep_in_history(
        &self,
        _map: &StoredMap,
        _identity: &MapIdentity,
        _entry: HistoryEntry,
        _previous: &[HistoryEntry],
    ) -> impl Future<Output = Option<Vec<HistoryEntry>>> + Send {
        async { None }
    }

    /// Writes `status`, summed up with where the map got to, unless the object already
    /// has it (then none: nothing was written).
    fn write_status(
        &self,
        status: ModelCostMapSyncStatus,
    ) -> impl Future<Output = Result<Option<AppliedStatus>, kube::Error>> + Send;

    /// How soon to look again for the places' sake: a write that failed is retried sooner
    /// than the next sync.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// Records an Event about the object; a failure to record is logged, never fatal.
    fn record(&self, notice: Notice) -> impl Future<Output = ()> + Send;
}
