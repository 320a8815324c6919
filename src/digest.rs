//! Content identities of a map: the sha256 digest and the git blob id LiteLLM reports.

use bytes::{Bytes, BytesMut};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of the exact bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The git blob id of the bytes, `sha1("blob <len>\0" + bytes)`: what a LiteLLM proxy
/// reports as `source_revision` after loading exactly these bytes.
pub fn git_blob_id(bytes: &[u8]) -> String {
    let mut hasher = blob_hasher(bytes.len() as u64);
    hasher.update(bytes);
    hex::encode(hasher.finalize())
}

/// A git blob id's hasher for a body of `len` bytes, its header given.
fn blob_hasher(len: u64) -> Sha1 {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {len}\0").as_bytes());
    hasher
}

/// Both identities of one body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// `sha256:<hex>`, as [`sha256_digest`].
    pub sha256: String,
    /// As [`git_blob_id`].
    pub git_blob_id: String,
}

impl Digests {
    /// Both identities of bytes already whole.
    pub fn of(bytes: &[u8]) -> Digests {
        Digests {
            sha256: sha256_digest(bytes),
            git_blob_id: git_blob_id(bytes),
        }
    }
}

/// A body being received, and both its identities computed while it arrives rather than
/// in a pass after it, on a blocking thread of their own: the task receiving the body does
/// not wait for the hashes, and hashing a 35 MB map (about 40 ms) never holds an async
/// worker.
///
/// Each piece is copied into the body's own buffer at once, and the hashing thread is
/// handed filled parts of that buffer, never the network's chunks: a chunk kept until it
/// is hashed keeps the client's read buffer alive, which then reads every next chunk into
/// freshly mapped memory (on the 3.5 MB map, 600 more page faults than the bytes need).
/// The thread puts the parts back together, without a copy when room for the whole body
/// was reserved. (Two threads, one per hash, were no faster on two cores: they took the
/// receiving task's core.)
///
/// The git blob id starts with the body's length: with a length announced up front (an
/// identity-encoded body's Content-Length) it streams too; without one, or when the body
/// turns out another length, it is computed from the whole body at the end.
pub struct HashingBody {
    /// Received and not handed to the hashing thread yet.
    unsent: BytesMut,
    received: u64,
    parts: tokio::sync::mpsc::UnboundedSender<BytesMut>,
    hashed: tokio::task::JoinHandle<Hashed>,
    announced_len: Option<u64>,
}

/// What the hashing thread returns: the hashes, and the body put back together.
struct Hashed {
    sha256: Sha256,
    blob: Option<Sha1>,
    whole: BytesMut,
}

impl HashingBody {
    /// The bytes of one part: waking the hashing thread per network chunk (16 KiB) cost
    /// more than the hashing. The parts are the body itself, so those waiting to be hashed
    /// cost no memory beside it.
    const PART_BYTES: usize = 256 * 1024;

    /// Starts the hashing thread (on tokio's blocking pool: a runtime must be running),
    /// with room for `capacity` bytes reserved.
    pub fn new(capacity: usize, announced_len: Option<u64>) -> HashingBody {
        let (parts, mut arriving) = tokio::sync::mpsc::unbounded_channel::<BytesMut>();
        let hashed = tokio::task::spawn_blocking(move || {
            let mut hashed = Hashed {
                sha256: Sha256::new(),
                blob: announced_len.map(blob_hasher),
                whole: BytesMut::new(),
            };
            while let Some(part) = arriving.blocking_recv() {
                hashed.sha256.update(&part);
                if let Some(blob) = &mut hashed.blob {
                    blob.update(&part);
                }
                hashed.whole.unsplit(part);
            }
            hashed
        });
        HashingBody {
            unsent: BytesMut::with_capacity(capacity),
            received: 0,
            parts,
            hashed,
            announced_len,
        }
    }

    /// The bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The next piece of the body.
    pub fn extend(&mut self, piece: &[u8]) {
        self.unsent.extend_from_slice(piece);
        self.received = self.received.saturating_add(piece.len() as u64);
        if self.unsent.len() >= Self::PART_BYTES {
            self.send_part();
        }
    }

    fn send_part(&mut self) {
        // The thread only stops when this side is done: a send fails only if it panicked,
        // and [`Self::finish`] passes that panic on.
        let _ = self.parts.send(self.unsent.split());
    }

    /// The whole body and its identities.
    pub async fn finish(mut self) -> (Bytes, Digests) {
        self.send_part();
        drop(self.parts);
        let hashed = joined(self.hashed.await);
        let body = hashed.whole.freeze();
        let git_blob_id = match hashed.blob {
            Some(blob) if self.announced_len == Some(self.received) => hex::encode(blob.finalize()),
            _ => {
                let whole = body.clone();
                joined(tokio::task::spawn_blocking(move || git_blob_id(&whole)).await)
            }
        };
        let digests = Digests {
            sha256: format!("sha256:{}", hex::encode(hashed.sha256.finalize())),
            git_blob_id,
        };
        (body, digests)
    }
}

/// What a blocking task returned; its panic, passed on.
fn joined<T>(result: Result<T, tokio::task::JoinError>) -> T {
    result.unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_hashed_as_it_arrives_is_the_body_and_its_digests_with_any_announced_length() {
        let body: Vec<u8> = (0..1_000_000u32).map(|n| (n % 251) as u8).collect();
        let whole = Digests::of(&body);
        let len = body.len() as u64;
        for announced in [Some(len), None, Some(len - 1), Some(len + 1), Some(0)] {
            // Room for all of it, for part of it (it grows while parts are out), for none.
            for capacity in [body.len(), 300_000, 0] {
                for piece in [1, 7, 16_384, 1_000_000] {
                    let mut streaming = HashingBody::new(capacity, announced);
                    for bytes in body.chunks(piece) {
                        streaming.extend(bytes);
                    }
                    assert_eq!(streaming.received(), len);
                    let (received, digests) = streaming.finish().await;
                    let case = format!("{announced:?} {capacity} {piece}");
                    assert_eq!(digests, whole, "{case}");
                    assert!(received == body, "{case}: the body came back changed");
                }
            }
        }
        let mut empty = HashingBody::new(0, Some(0));
        empty.extend(b"");
        assert_eq!(empty.received(), 0);
        assert_eq!(empty.finish().await, (Bytes::new(), Digests::of(b"")));
    }

    #[test]
    fn git_blob_id_matches_git_hash_object() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            git_blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        // `git hash-object /dev/null`
        assert_eq!(git_blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }

    #[test]
    fn sha256_digest_is_prefixed_hex() {
        assert_eq!(
            sha256_digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
