//! `costmap-operator check`: the operator's fetch and validation, run once on a file or URL
//! (and, with `--against`, its guards against a last good map).

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use super::args::CheckArgs;
use super::{LoadError, Loaded, load};
use crate::digest::Digests;
use crate::sync::SyncError;
use crate::sync::fetch::Fetcher;
use crate::sync::validate::summary::MapSummary;
use crate::sync::validate::{IndexedMap, Rules};

/// What `check` reports about a valid map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Models (top-level keys minus reserved keys).
    pub models: usize,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// Git blob id (LiteLLM's `source_revision`).
    pub git_blob_id: String,
    /// Bytes, uncompressed.
    pub size: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "models:      {}", self.models)?;
        writeln!(f, "digest:      {}", self.digest)?;
        writeln!(f, "git blob id: {}", self.git_blob_id)?;
        write!(f, "size:        {} bytes", self.size)
    }
}

/// Why a map failed the check.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The map (or the last good map) could not be had.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The last good map given with `--against` is not a valid map itself.
    #[error("the last good map {path} is not a valid map: {error}")]
    LastGood {
        /// Where it came from.
        path: String,
        /// Why.
        error: SyncError,
    },
    /// The map is refused.
    #[error(transparent)]
    Invalid(#[from] SyncError),
}

/// Reads `source` (an http(s) URL, else a file path) with the operator's limits and
/// validates it with `rules`, as a first sync would; with `against`, as a sync after that
/// last good map would (the guards then compare the two).
pub async fn check(
    source: &str,
    against: Option<&str>,
    fetcher: &Fetcher,
    rules: &Rules,
    timeout: Duration,
) -> Result<Summary, CheckError> {
    let loaded = load(source, fetcher, timeout).await?;
    let last_good = match against {
        Some(path) => {
            let last_good = load(path, fetcher, timeout).await?;
            let parsed =
                parse_last_good(&last_good.bytes).map_err(|error| CheckError::LastGood {
                    path: path.to_owned(),
                    error,
                })?;
            Some(parsed)
        }
        None => None,
    };
    summarize(&loaded, rules, last_good.as_ref())
}

/// A last good map, which must pass the structure rules itself, as the guards see it.
pub fn parse_last_good(bytes: &[u8]) -> Result<MapSummary, SyncError> {
    let rules = Rules {
        min_models: 1,
        ..Rules::default()
    };
    Ok(IndexedMap::read(bytes)?.validated(&rules)?)
}

/// Validates bytes already read, as the operator would after `last_good` (a first sync
/// without it).
pub fn summarize(
    loaded: &Loaded,
    rules: &Rules,
    last_good: Option<&MapSummary>,
) -> Result<Summary, CheckError> {
    // A file's bytes are hashed on a second thread while they are validated.
    let (accepted, digests) = std::thread::scope(|scope| {
        let digests = loaded
            .digests
            .is_none()
            .then(|| scope.spawn(|| Digests::of(&loaded.bytes)));
        let accepted = crate::sync::accept(&loaded.bytes, rules, last_good, None);
        let digests = match digests.map(|hashing| hashing.join()) {
            Some(Ok(digests)) => digests,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => loaded.digests(),
        };
        (accepted, digests)
    });
    let accepted = accepted?;
    Ok(Summary {
        models: accepted.models,
        digest: digests.sha256,
        git_blob_id: digests.git_blob_id,
        size: loaded.bytes.len(),
    })
}

/// Runs `check` as the command line asks; exit 0 valid, 1 refused.
pub async fn run(args: CheckArgs) -> ExitCode {
    let rules = args.rules.rules();
    let result = match args.fetch.local_fetcher() {
        Ok(fetcher) => check(
            &args.source,
            args.against.as_deref(),
            &fetcher,
            &rules,
            args.timeout,
        )
        .await
        .map_err(anyhow::Error::from),
        Err(err) => Err(err),
    };
    match result {
        Ok(summary) => {
            let shown = super::shown_source(&args.source);
            match super::print_out(format_args!("valid map: {shown}\n{summary}\n")) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(1)
                }
            }
        }
        Err(err) => {
            eprintln!(
                "invalid map: {}\n{err:#}",
                super::shown_source(&args.source)
            );
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_digest;
    use crate::sync::validate::tests::sample_map;

    #[test]
    fn summary_of_a_valid_map() {
        let bytes = sample_map(60).to_string().into_bytes();
        let loaded = Loaded {
            bytes: bytes.clone(),
            digests: None,
        };
        let summary = summarize(&loaded, &Rules::default(), None).unwrap();
        assert_eq!(summary.models, 60);
        assert_eq!(summary.size, bytes.len());
        assert_eq!(summary.digest, sha256_digest(&bytes));
        assert!(summary.to_string().contains("models:      60"));
    }
}
