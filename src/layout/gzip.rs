//! The map as stored: its exact bytes and their gzip. A ConfigMap holds at most 1 MiB and
//! the map is 3.5 MB, so it is always stored gzipped; whatever is read back is decompressed
//! with a bound, as anyone who can edit a ConfigMap can put a gzip bomb in it.

use std::io::Write;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::digest::sha256_digest;
use bytes::Bytes;

/// The map as stored: its exact bytes and their gzip.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMap {
    /// The exact bytes fetched, shared (not copied) with the fetched body they came from.
    pub bytes: Bytes,
    /// gzip of `bytes`, as written to (or read from) the ConfigMap.
    pub gz: Vec<u8>,
}

/// Why a stored gzip could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    /// It decompresses to more than allowed (a hand edit, or a gzip bomb).
    #[error("it decompresses to more than {max_bytes} bytes")]
    TooLarge {
        /// The limit.
        max_bytes: u64,
    },
    /// It is not a gzip, or it is cut short.
    #[error("not a valid gzip: {0}")]
    Corrupt(std::io::Error),
}

/// Decompresses `gz`, stopping as soon as it yields more than `max_bytes`: whatever stored
/// it (a ConfigMap edited by hand, a mounted file) could hold anything.
pub fn gunzip_bounded(gz: &[u8], max_bytes: u64) -> Result<Vec<u8>, GunzipError> {
    crate::bounded::read_at_most(GzDecoder::new(gz), max_bytes).map_err(|err| match err {
        crate::bounded::BoundedError::TooLarge { max_bytes } => GunzipError::TooLarge { max_bytes },
        crate::bounded::BoundedError::Io(err) => GunzipError::Corrupt(err),
    })
}

/// The gzip level of stored maps. On the 3.5 MB map (flate2 with zlib-rs, `cargo bench
/// --bench pipeline -- "gzip level"`): level 6 is 184,140 bytes in 18 ms, level 9 177,477
/// bytes (3.6% smaller) in 34 ms; miniz_oxide, the default backend, took 73 ms at level 9.
const GZIP_LEVEL: u32 = 6;

impl StoredMap {
    /// Compresses the fetched bytes for storage.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> StoredMap {
        let bytes = bytes.into();
        let gz = gzip(&bytes);
        StoredMap { bytes, gz }
    }

    /// The `sha256:<hex>` digest of the bytes.
    pub fn digest(&self) -> String {
        sha256_digest(&self.bytes)
    }
}

/// The gzip of `bytes`, as stored.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 16),
        Compression::new(GZIP_LEVEL),
    );
    // Writing into a Vec cannot fail.
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .unwrap_or_default()
}
