//! An exclusive advisory file lock (flock), held until dropped.
//!
//! Several test binaries, test threads and xtask may build or download the same things at once;
//! flock serializes them across processes and, because each lock opens its own file
//! description, across threads of one process too. The kernel releases it if the holder dies.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result};

/// Holds an exclusive flock on a file until dropped.
pub(crate) struct FileLock {
    // Closing the file releases the lock.
    _file: File,
}

impl FileLock {
    /// Takes the lock on `path` (created if missing), blocking while another holder has it.
    /// `waiting` is printed to stderr once if the lock is busy, so a wait is never silent.
    pub(crate) fn acquire(path: &Path, waiting: &str) -> Result<FileLock> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        if !flock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
            eprintln!("{waiting}");
            flock(&file, libc::LOCK_EX)?;
        }
        Ok(FileLock { _file: file })
    }
}

/// Returns Ok(false) when a non-blocking lock is busy.
fn flock(file: &File, operation: libc::c_int) -> Result<bool> {
    loop {
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err).context("flock"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_waits_for_the_first() {
        let dir = std::env::temp_dir().join(format!("testenv-lock-{}", std::process::id()));
        let path = dir.join("lock");
        let first = FileLock::acquire(&path, "").unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        assert!(!flock(&file, libc::LOCK_EX | libc::LOCK_NB).unwrap());
        drop(first);
        assert!(flock(&file, libc::LOCK_EX | libc::LOCK_NB).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
