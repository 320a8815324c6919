//! Content identities of a map: the sha256 digest and the git blob id LiteLLM reports.

use bytes::Bytes;
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

/// Both identities, computed while a body arrives rather than in a pass after it, on a
/// blocking thread of their own: the task receiving the body does not wait for the hash,
/// and hashing a 35 MB map (about 40 ms) never holds an async worker. The git blob id
/// starts with the body's length: with a length announced up front (an identity-encoded
/// body's Content-Length) it streams too; without one, or when the body turns out another
/// length, it is computed from the whole body at the end.
pub struct StreamingDigests {
    /// Chunks not sent yet, and their bytes: sent a batch at a time, since waking the
    /// hashing thread per network chunk (16 KiB) cost more than the hashing.
    batch: Vec<Bytes>,
    batched: usize,
    batches: tokio::sync::mpsc::Sender<Vec<Bytes>>,
    hashed: tokio::task::JoinHandle<Hashers>,
}

impl StreamingDigests {
    /// The bytes of one batch.
    const BATCH_BYTES: usize = 256 * 1024;
    /// A few batches may wait to be hashed; past that, the receiving task waits, so that
    /// chunks hashed late never pile up beside the body.
    const WAITING_BATCHES: usize = 4;

    /// Starts the hashing thread (on tokio's blocking pool: a runtime must be running).
    pub fn new(announced_len: Option<u64>) -> StreamingDigests {
        let (batches, mut arriving) =
            tokio::sync::mpsc::channel::<Vec<Bytes>>(Self::WAITING_BATCHES);
        let hashed = tokio::task::spawn_blocking(move || {
            let mut hashers = Hashers::new(announced_len);
            while let Some(batch) = arriving.blocking_recv() {
                for chunk in batch {
                    hashers.update(&chunk);
                }
            }
            hashers
        });
        StreamingDigests {
            batch: Vec::new(),
            batched: 0,
            batches,
            hashed,
        }
    }

    /// The next piece of the body.
    pub async fn update(&mut self, chunk: Bytes) {
        self.batched += chunk.len();
        self.batch.push(chunk);
        if self.batched >= Self::BATCH_BYTES {
            self.send_batch().await;
        }
    }

    async fn send_batch(&mut self) {
        self.batched = 0;
        let batch = std::mem::take(&mut self.batch);
        // The hasher only stops when this side is done: a send fails only if it panicked,
        // and then [`Self::finish`] hashes the whole body instead.
        let _ = self.batches.send(batch).await;
    }

    /// The identities of `body`, which must be every piece given to [`Self::update`].
    pub async fn finish(mut self, body: &[u8]) -> Digests {
        self.send_batch().await;
        drop(self.batches);
        match self.hashed.await {
            Ok(hashers) => hashers.finish(body),
            Err(_) => Digests::of(body),
        }
    }
}

/// The hashes of a body so far.
struct Hashers {
    sha256: Sha256,
    blob: Option<(u64, Sha1)>,
    seen: u64,
}

impl Hashers {
    fn new(announced_len: Option<u64>) -> Hashers {
        let blob = announced_len.map(|len| (len, blob_hasher(len)));
        Hashers {
            sha256: Sha256::new(),
            blob,
            seen: 0,
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        self.sha256.update(chunk);
        if let Some((_, blob)) = &mut self.blob {
            blob.update(chunk);
        }
        self.seen = self.seen.saturating_add(chunk.len() as u64);
    }

    fn finish(self, body: &[u8]) -> Digests {
        let git_blob_id = match self.blob {
            Some((len, blob)) if len == self.seen => hex::encode(blob.finalize()),
            _ => git_blob_id(body),
        };
        Digests {
            sha256: format!("sha256:{}", hex::encode(self.sha256.finalize())),
            git_blob_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streamed_digests_equal_the_whole_body_s_with_any_announced_length() {
        let body: Vec<u8> = (0..100_000u32).map(|n| (n % 251) as u8).collect();
        let whole = Digests::of(&body);
        let len = body.len() as u64;
        for announced in [Some(len), None, Some(len - 1), Some(len + 1), Some(0)] {
            for chunk in [1, 7, 4096, 100_000] {
                let mut streaming = StreamingDigests::new(announced);
                for piece in body.chunks(chunk) {
                    streaming.update(Bytes::copy_from_slice(piece)).await;
                }
                assert_eq!(
                    streaming.finish(&body).await,
                    whole,
                    "{announced:?} {chunk}"
                );
            }
        }
        let mut empty = StreamingDigests::new(Some(0));
        empty.update(Bytes::new()).await;
        assert_eq!(empty.finish(b"").await, Digests::of(b""));
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
