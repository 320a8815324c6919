//! `costmap-operator check`: the operator's fetch and validation, run once on a file or URL.

use std::fmt;
use std::io::Read;
use std::time::Duration;

use crate::digest::{git_blob_id, sha256_digest};
use crate::fetch::{FetchError, FetchOutcome, FetchRequest, Fetcher};
use crate::validate::{ModelMap, Rules, ValidationError, validate};

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
    /// The URL could not be fetched.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The file could not be read.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The map is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// Reads `source` (an http(s) URL, else a file path) with the operator's limits and
/// validates it with `rules`.
pub async fn check(
    source: &str,
    fetcher: &Fetcher,
    rules: &Rules,
    timeout: Duration,
) -> Result<Summary, CheckError> {
    // Anything with a scheme is a URL, so `ftp://...` or `file://...` is refused as a URL
    // rather than looked up as a relative file path.
    let bytes = if source.contains("://") {
        let request = FetchRequest {
            url: source,
            headers: &[],
            timeout,
            revision: None,
        };
        match fetcher.fetch(&request).await? {
            FetchOutcome::Fetched { body, .. } => body.to_vec(),
            // No validator was sent, so a 304 is the server's error.
            FetchOutcome::NotModified => Vec::new(),
        }
    } else {
        read_file(source, fetcher.policy().max_body_bytes)?
    };
    summarize(&bytes, rules)
}

/// Validates bytes already read.
pub fn summarize(bytes: &[u8], rules: &Rules) -> Result<Summary, CheckError> {
    let map = ModelMap::parse(bytes)?;
    validate(&map, rules, None)?;
    Ok(Summary {
        models: map.model_count(),
        digest: sha256_digest(bytes),
        git_blob_id: git_blob_id(bytes),
        size: bytes.len(),
    })
}

fn read_file(path: &str, max_bytes: u64) -> Result<Vec<u8>, CheckError> {
    let read_error = |reason: String| CheckError::Read {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|err| read_error(err.to_string()))?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| read_error(err.to_string()))?;
    if bytes.len() as u64 > max_bytes {
        return Err(read_error(format!(
            "larger than the {max_bytes}-byte limit"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::sample_map;

    #[test]
    fn summary_of_a_valid_map() {
        let bytes = sample_map(60).to_string().into_bytes();
        let summary = summarize(&bytes, &Rules::default()).unwrap();
        assert_eq!(summary.models, 60);
        assert_eq!(summary.size, bytes.len());
        assert_eq!(summary.digest, sha256_digest(&bytes));
        assert!(summary.to_string().contains("models:      60"));
    }

    #[test]
    fn files_over_the_limit_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        std::fs::write(&path, vec![b' '; 2048]).unwrap();
        let err = read_file(path.to_str().unwrap(), 1024).unwrap_err();
        assert!(
            err.to_string().contains("larger than the 1024-byte limit"),
            "{err}"
        );
        let missing = read_file("/nonexistent/map.json", 1024).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("reading /nonexistent/map.json"),
            "{missing}"
        );
    }
}
