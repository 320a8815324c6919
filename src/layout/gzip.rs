//! The map as stored: its exact bytes and their gzip. A ConfigMap holds at most 1 MiB and
//! the map is 3.5 MB, so it is always stored gzipped; whatever is read back is decompressed
//! with a bound, as anyone who can edit a ConfigMap can put a gzip bomb in it.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::digest::sha256_digest;
use bytes::Bytes;
use sha2::{Digest, Sha256};

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
    // Sized up front from the gzip's own record of its length (unchecked: at most
    // `max_bytes`), so a 35 MB map is not read into a buffer doubled to 64 MB on the way.
    let announced = announced_len(gz).min(max_bytes);
    let capacity = usize::try_from(announced).unwrap_or(0);
    crate::bounded::read_at_most_into(GzDecoder::new(gz), max_bytes, Vec::with_capacity(capacity))
        .map_err(bounded_error)
}

/// The `sha256:<hex>` digest and length of what `gz` decompresses to, never holding more
/// of it than one buffer: to check a stored map without keeping (or even building) its
/// plain bytes. Bounded as [`gunzip_bounded`].
pub fn gunzip_digest(gz: &[u8], max_bytes: u64) -> Result<(String, u64), GunzipError> {
    let mut hasher = Sha256::new();
    let mut decoder = GzDecoder::new(gz).take(max_bytes.saturating_add(1));
    let size = std::io::copy(&mut decoder, &mut hasher).map_err(GunzipError::Corrupt)?;
    if size > max_bytes {
        return Err(GunzipError::TooLarge { max_bytes });
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

/// The length a gzip says it holds (its last four bytes, modulo 4 GiB; anyone could have
/// written them).
fn announced_len(gz: &[u8]) -> u64 {
    match gz.len().checked_sub(4).and_then(|at| gz.get(at..)) {
        Some(&[a, b, c, d]) => u64::from(u32::from_le_bytes([a, b, c, d])),
        _ => 0,
    }
}

fn bounded_error(err: crate::bounded::BoundedError) -> GunzipError {
    match err {
        crate::bounded::BoundedError::TooLarge { max_bytes } => GunzipError::TooLarge { max_bytes },
        crate::bounded::BoundedError::Io(err) => GunzipError::Corrupt(err),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gunzip_digest_is_the_plain_bytes_digest_and_size_and_is_bounded() {
        let plain: Vec<u8> = (0..300_000u32).flat_map(|n| n.to_le_bytes()).collect();
        let stored = StoredMap::from_bytes(plain.clone());
        let max = plain.len() as u64;
        assert_eq!(
            gunzip_digest(&stored.gz, max).unwrap(),
            (sha256_digest(&plain), max)
        );
        assert_eq!(gunzip_bounded(&stored.gz, max).unwrap(), plain);
        assert!(matches!(
            gunzip_digest(&stored.gz, max - 1),
            Err(GunzipError::TooLarge { .. })
        ));
        assert!(matches!(
            gunzip_digest(&stored.gz[..stored.gz.len() / 2], max),
            Err(GunzipError::Corrupt(_))
        ));
        // A trailer that lies about the length changes nothing but the first reservation.
        let mut lying = stored.gz.clone();
        let at = lying.len() - 4;
        lying[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            gunzip_bounded(&lying, max).is_err(),
            "the trailer is checked"
        );
    }
}
