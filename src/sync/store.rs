//! Maps held once, by digest. A thousand objects on one source hold one copy of the last
//! good map (its bytes, its gzip, its summary), not a thousand: each holds an `Arc` to the
//! copy here, and a copy nobody holds any more is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::layout::gzip::StoredMap;
use crate::locks::lock;
use crate::sync::validate::IndexedMap;
use crate::sync::validate::summary::MapSummary;

/// A map held in memory: its bytes and gzip, and its summary once someone needed it.
#[derive(Debug)]
pub struct HeldMap {
    stored: StoredMap,
    digest: String,
    summary: OnceLock<Option<Arc<MapSummary>>>,
}

impl HeldMap {
    /// The exact bytes and their gzip.
    pub fn stored(&self) -> &StoredMap {
        &self.stored
    }

    /// `sha256:<hex>` of the bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What the guards and the diff judge the next map against; parsed once, on first use
    /// (CPU: call it off the async workers). None for bytes that do not parse as a map
    /// (kept by an older operator with other rules): the next map is then compared with
    /// nothing rather than refused.
    pub fn summary(&self) -> Option<Arc<MapSummary>> {
        self.summary
            .get_or_init(|| {
                IndexedMap::read(&self.stored.bytes)
                    .ok()
                    .map(|map| Arc::new(map.into_summary()))
            })
            .clone()
    }
}

/// Every map held, by digest.
#[derive(Debug, Default)]
pub struct MapStore {
    held: Mutex<HashMap<String, Weak<HeldMap>>>,
}

impl MapStore {
    /// Holds `stored`, whose bytes have `digest`, or returns the copy already held (and
    /// drops this one). A known `summary` is kept with it.
    pub fn hold(
        &self,
        stored: StoredMap,
        digest: String,
        summary: Option<Arc<MapSummary>>,
    ) -> Arc<HeldMap> {
        let mut held = lock(&self.held);
        held.retain(|_, map| map.strong_count() > 0);
        if let Some(map) = held.get(&digest).and_then(Weak::upgrade) {
            if let Some(summary) = summary {
                // Already known is as good: both are the summary of the same bytes.
                let _ = map.summary.set(Some(summary));
            }
            return map;
        }
        let map = Arc::new(HeldMap {
            stored,
            digest: digest.clone(),
            summary: summary.map(Some).map(OnceLock::from).unwrap_or_default(),
        });
        held.insert(digest, Arc::downgrade(&map));
        map
    }

    /// The map with `digest`, when someone holds it.
    pub fn get(&self, digest: &str) -> Option<Arc<HeldMap>> {
        lock(&self.held).get(digest).and_then(Weak::upgrade)
    }

    /// How many distinct maps are held.
    pub fn len(&self) -> usize {
        lock(&self.held)
            .values()
            .filter(|map| map.strong_count() > 0)
            .count()
    }

    /// Whether no map is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::validate::tests::sample_map;

    #[test]
    fn one_copy_per_digest_while_someone_holds_it() {
        let store = MapStore::default();
        let bytes = sample_map(3).to_string().into_bytes();
        let digest = crate::digest::sha256_digest(&bytes);
        let first = store.hold(StoredMap::from_bytes(bytes.clone()), digest.clone(), None);
        let second = store.hold(StoredMap::from_bytes(bytes), digest.clone(), None);
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(store.len(), 1);
        assert_eq!(first.summary().map(|s| s.model_count()), Some(3));
        drop((first, second));
        assert!(store.get(&digest).is_none());
        assert!(store.is_empty());
    }

    #[test]
    fn bytes_that_are_no_map_have_no_summary() {
        let store = MapStore::default();
        let held = store.hold(StoredMap::from_bytes(b"[]".to_vec()), "d".into(), None);
        assert!(held.summary().is_none());
    }
}
