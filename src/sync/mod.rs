//! The stages of one sync, pure functions with plain unit tests:
//!
//! - [`fetch`]: a bounded, conditional GET of the source (its [`fetch::address`] is the SSRF
//!   guard);
//! - [`validate`]: the structure rules every map must pass, and the [`validate::guards`]
//!   that compare it with the last good map;
//! - [`overrides`]: your prices merged over the fetched map, which makes the published map;
//! - [`diff`]: what a new map changes;
//! - [`crate::layout::render`]: the ConfigMaps that store the map (the layout every reader
//!   shares is [`crate::layout`]);
//! - [`schedule`]: when to fetch at all;
//! - [`store`]: maps held once in memory, by digest.

pub mod diff;
mod error;
pub mod fetch;
pub mod overrides;
pub mod schedule;
pub mod store;
pub mod validate;

pub use error::{NotAccepted, SecretError, SyncError};

use crate::layout::gzip::{StoredMap, gzip};
use validate::summary::MapSummary;
use validate::{IndexedMap, Rules};

/// What accepting a map found: enough to describe it, not the map itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// How many models it holds.
    pub models: usize,
    /// What it changes against the last good map; none on a first sync.
    pub change: Option<diff::MapChange>,
    /// The guards' refusals that the accept-digest annotation overrode; empty when every
    /// guard accepted the map.
    pub overridden: Vec<validate::guards::Refusal>,
}

/// Parses a map once and accepts it, or says why not: the structure rules, then the guards
/// (against the last good map, when there is one), and what changed. A map the guards refuse
/// is accepted all the same when its digest is `accept_digest` (the annotation). The
/// operator (through [`prepare`]), `check` and the agent all accept maps here, so they agree
/// on what a good map is.
pub fn accept(
    bytes: &[u8],
    rules: &Rules,
    last_good: Option<&MapSummary>,
    accept_digest: Option<&str>,
) -> Result<Accepted, SyncError> {
    Ok(judge(bytes, rules, last_good, accept_digest)?.0)
}

/// [`accept`], and the new map's summary: what the next map is judged against.
fn judge(
    bytes: &[u8],
    rules: &Rules,
    last_good: Option<&MapSummary>,
    accept_digest: Option<&str>,
) -> Result<(Accepted, MapSummary), NotAccepted> {
    // One pass over the bytes: the rules checked and the index kept, no tree built.
    let summary = IndexedMap::read(bytes)?.validated(rules)?;
    let report = validate::guards::price_report(&summary, last_good);
    let refusals = validate::guards::refusals(&summary, last_good, &report, rules);
    if !refusals.is_empty() {
        let digest = crate::digest::sha256_digest(bytes);
        if accept_digest != Some(digest.as_str()) {
            return Err(NotAccepted::Refused {
                refusals,
                digest,
                accept_digest: accept_digest.map(str::to_owned),
            });
        }
    }
    let accepted = Accepted {
        models: summary.model_count(),
        change: last_good.map(|old| diff::diff(old, &summary).with_prices(&report)),
        overridden: refusals,
    };
    Ok((accepted, summary))
}

/// A new map, accepted and ready to store: its bytes, their gzip, and what it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedMap {
    /// The exact bytes and their gzip.
    pub map: StoredMap,
    /// How it was accepted.
    pub accepted: Accepted,
    /// What the next map is judged against.
    pub summary: MapSummary,
}

/// The CPU-heavy part of accepting a new map: [`accept`] against the last good map's
/// summary, and gzip.
pub fn prepare(
    bytes: bytes::Bytes,
    rules: &Rules,
    last_good: Option<&MapSummary>,
    accept_digest: Option<&str>,
) -> Result<PreparedMap, NotAccepted> {
    // Judging and compressing are independent: side by side, on two cores, a new map
    // takes the longer of the two, not their sum.
    let (judged, gz) = std::thread::scope(|scope| {
        let compressing = scope.spawn(|| gzip(&bytes));
        let judged = judge(&bytes, rules, last_good, accept_digest);
        let gz = compressing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (judged, gz)
    });
    let (accepted, summary) = judged?;
    Ok(PreparedMap {
        map: StoredMap { bytes, gz },
        accepted,
        summary,
    })
}
