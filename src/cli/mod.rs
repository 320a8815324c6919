//! The commands beside the operator: [`check`] (one map) and [`diff`] (a new map against the
//! last good one, for a mirror's CI) judge maps as it would; [`crd`] prints a CRD; [`plugin`]
//! is `kubectl costmap`. [`args`] holds every subcommand's arguments.

pub mod args;
pub mod check;
pub mod crd;
pub mod diff;
pub mod plugin;

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

use crate::bounded::{BoundedError, read_at_most};
use crate::digest::Digests;
use crate::sync::fetch::{FetchError, FetchOutcome, FetchRequest, Fetcher};

/// Writes `text` to standard output. A reader that went away first (`check ... | head -2`)
/// is no error of ours: the rest is dropped quietly, as other command-line tools do, where
/// `print!` would panic.
pub fn print_out(text: impl fmt::Display) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match write!(out, "{text}").and_then(|()| out.flush()) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::from(err).context("writing to standard output"))
        }
        _ => Ok(()),
    }
}

/// Why a map could not be had at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
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
}

/// A map read from a URL or a file.
pub struct Loaded {
    pub bytes: Vec<u8>,
    /// The bytes' identities when they were hashed as they arrived (a fetched body).
    pub digests: Option<Digests>,
}

impl Loaded {
    /// The bytes' identities: as they arrived, or computed now.
    pub fn digests(&self) -> Digests {
        self.digests
            .clone()
            .unwrap_or_else(|| Digests::of(&self.bytes))
    }
}

/// The bytes of `source`: an http(s) URL, fetched with the operator's client and limits, or
/// a file, read with the same size cap.
pub async fn load(source: &str, fetcher: &Fetcher, timeout: Duration) -> Result<Loaded, LoadError> {
    // Anything with a scheme is a URL, so `ftp://...` or `file://...` is refused as a URL
    // rather than looked up as a relative file path.
    if source.contains("://") {
        let request = FetchRequest {
            url: source,
            headers: &[],
            timeout,
            revision: None,
        };
        return Ok(match fetcher.fetch(&request).await? {
            FetchOutcome::Fetched { body, digests, .. } => Loaded {
                bytes: body.into(),
                digests: Some(digests),
            },
            // No validator was sent, so a 304 is the server's error.
            FetchOutcome::NotModified => Loaded {
                bytes: Vec::new(),
                digests: None,
            },
        });
    }
    Ok(Loaded {
        bytes: read_file(source, fetcher.policy().max_body_bytes)?,
        digests: None,
    })
}

/// `source` as `check` and `diff` print it: a URL without userinfo, query or fragment (the
/// operator's map-url carries its read token in the query), a file path as given.
pub fn shown_source(source: &str) -> String {
    match url::Url::parse(source) {
        Ok(url) if source.contains("://") => crate::sync::fetch::sanitize_url(&url),
        _ => source.to_owned(),
    }
}

fn read_file(path: &str, max_bytes: u64) -> Result<Vec<u8>, LoadError> {
    let read_error = |reason: String| LoadError::Read {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|err| read_error(err.to_string()))?;
    read_at_most(file, max_bytes).map_err(|err| match err {
        BoundedError::TooLarge { max_bytes } => {
            read_error(format!("larger than the {max_bytes}-byte limit"))
        }
        BoundedError::Io(err) => read_error(err.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_shown_without_their_token() {
        assert_eq!(
            shown_source("http://op.ns.svc:8080/maps/llm/x/m.json?token=v1.secret"),
            "http://op.ns.svc:8080/maps/llm/x/m.json"
        );
        assert_eq!(shown_source("maps/old.json"), "maps/old.json");
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
