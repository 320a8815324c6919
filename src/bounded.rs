//! Reading at most so many bytes: files, decompressed streams and stored gzips can hold
//! anything (a ConfigMap edited by hand, a gzip bomb), and none is read whole before its
//! size is known.

use std::io::Read;

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub enum BoundedError {
    /// There was more than allowed.
    #[error("more than {max_bytes} bytes")]
    TooLarge {
        /// The limit.
        max_bytes: u64,
    },
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads `reader` to its end, but never more than `max_bytes` (and one byte to tell).
pub fn read_at_most(reader: impl Read, max_bytes: u64) -> Result<Vec<u8>, BoundedError> {
    read_at_most_into(reader, max_bytes, Vec::new())
}

/// [`read_at_most`] into `bytes` (its capacity reserved by the caller).
pub fn read_at_most_into(
    reader: impl Read,
    max_bytes: u64,
    mut bytes: Vec<u8>,
) -> Result<Vec<u8>, BoundedError> {
    reader
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(BoundedError::TooLarge { max_bytes });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_limit_and_no_further() {
        assert_eq!(read_at_most(&b"abc"[..], 3).unwrap(), b"abc");
        assert!(matches!(
            read_at_most(&b"abcd"[..], 3),
            Err(BoundedError::TooLarge { max_bytes: 3 })
        ));
        let endless = std::io::repeat(b'x');
        assert!(read_at_most(endless, 1024).is_err(), "stops at the limit");
    }
}
