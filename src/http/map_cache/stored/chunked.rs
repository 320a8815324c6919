//! Maps stored in chunks, as the map cache sees them: each managed ConfigMap's chunks,
//! and the maps put together from a first ConfigMap and the chunk ConfigMaps it names.
//!
//! A map is put together only from a complete set whose annotations agree, and only kept
//! when its bytes hash to the digest the first names; whether it is served is then decided
//! like any stored map's, by the digest status vouches for. A set that mixes two maps (an
//! update half written: the chunks are written before the first) puts nothing together, so
//! the map served before stays served.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use tracing::debug;

use super::StoredMaps;
use crate::http::map_cache::ObjectId;
use crate::http::maps::ServedMap;
use crate::layout::DIGEST_ANNOTATION;
use crate::layout::chunks::{chunk_count, chunk_key, chunk_name, gz_key};
use crate::layout::read::assemble_gzip;

/// One chunk as a ConfigMap holds it.
#[derive(Debug, Clone)]
pub(in crate::http::map_cache) struct ChunkPart {
    /// The map's key (file name without `.gz.NNN`).
    key: String,
    /// Its index, from 0.
    index: usize,
    /// On the first: how many chunks it names.
    count: Option<usize>,
    /// The digest its ConfigMap's annotation names (a hint: the bytes are checked).
    digest: Option<String>,
    gz: Bytes,
}

/// The chunks a ConfigMap holds: each `<key>.gz.NNN`.
pub(in crate::http::map_cache) fn chunk_parts(cm: &ConfigMap) -> Vec<ChunkPart> {
    let digest = cm.annotations().get(DIGEST_ANNOTATION).cloned();
    let count = chunk_count(cm).ok().flatten();
    cm.binary_data
        .iter()
        .flatten()
        .filter_map(|(name, gz)| {
            let (gz_name, index) = name.rsplit_once('.')?;
            let key = gz_name.strip_suffix(".gz")?;
            let index: usize = index.parse().ok()?;
            // Only the exact spelling the operator writes (`.007`, not `.7`).
            (name == &chunk_key(key, index)).then(|| ChunkPart {
                key: key.to_owned(),
                index,
                count: count.filter(|_| index == 0 && !has_gz(cm, key)),
                digest: digest.clone(),
                gz: Bytes::from(gz.0.clone()),
            })
        })
        .collect()
}

/// A ConfigMap holding `<key>.gz` holds its map whole: chunks beside it are not its map.
fn has_gz(cm: &ConfigMap, key: &str) -> bool {
    cm.binary_data
        .as_ref()
        .is_some_and(|data| data.contains_key(&gz_key(key)))
}

/// The maps put together from chunks, remembered with what they were put together from, so
/// that an event about another ConfigMap costs no decompression.
#[derive(Default)]
pub(in crate::http::map_cache) struct Assemblies {
    by_first: HashMap<(ObjectId, String), Assembly>,
}

/// One attempt to put a map together.
struct Assembly {
    /// What it was put together from: the digest named, the owner and the chunks.
    from: (String, String, Vec<Bytes>),
    /// The map, when the chunks made the map named.
    map: Option<Arc<ServedMap>>,
}

impl Assemblies {
    /// Puts together the map of every first ConfigMap in `items` (in `namespace`, or in
    /// all) whose chunks are all there, decompressing at most `max_bytes`, and records it in
    /// the first's [`StoredMaps::assembled`].
    pub(in crate::http::map_cache) fn refresh(
        &mut self,
        items: &mut HashMap<ObjectId, StoredMaps>,
        namespace: Option<&str>,
        max_bytes: u64,
        known: impl Fn(&str, &StoredMaps) -> bool,
    ) {
        let in_scope = |ns: &str| namespace.is_none_or(|namespace| namespace == ns);
        for ((ns, _), stored) in items.iter_mut() {
            if in_scope(ns) {
                stored.assembled.clear();
            }
        }
        let mut found = Vec::new();
        let chunk_sets = items
            .iter()
            .filter(|((ns, _), stored)| in_scope(ns) && known(ns, stored));
        for ((namespace, name), stored) in chunk_sets {
            for first in stored.chunks.iter().filter(|part| part.index == 0) {
                let Some(count) = first.count else { continue };
                let Some(digest) = first.digest.clone() else {
                    continue;
                };
                let parts = (0..count)
                    .map(|index| {
                        let id = (namespace.clone(), chunk_name(name, index));
                        let holder = items.get(&id)?;
                        let part = holder
                            .chunks
                            .iter()
                            .find(|part| part.key == first.key && part.index == index)?;
                        // The same owner, and the same map named: else a half-written set.
                        (holder.owner_uid == stored.owner_uid
                            && part.digest.as_deref() == Some(digest.as_str()))
                        .then(|| part.gz.clone())
                    })
                    .collect::<Option<Vec<Bytes>>>();
                let Some(parts) = parts else {
                    debug!(namespace, config_map = %name, key = %first.key, "chunks incomplete or of two maps: not put together");
                    continue;
                };
                let id = ((namespace.clone(), name.clone()), first.key.clone());
                found.push((id, (digest, stored.owner_uid.clone(), parts)));
            }
        }
        let mut seen = HashSet::new();
        for (id, from) in found {
            let map = self.assembled(&id, from, max_bytes);
            if let (Some(map), Some(stored)) = (map, items.get_mut(&id.0)) {
                stored.assembled.push((id.1.clone(), map));
            }
            seen.insert(id);
        }
        self.by_first
            .retain(|id, _| !in_scope(&id.0.0) || seen.contains(id));
    }

    /// The map put together from `from`, remembered.
    fn assembled(
        &mut self,
        id: &(ObjectId, String),
        from: (String, String, Vec<Bytes>),
        max_bytes: u64,
    ) -> Option<Arc<ServedMap>> {
        if let Some(known) = self.by_first.get(id).filter(|known| known.from == from) {
            return known.map.clone();
        }
        let parts: Vec<&[u8]> = from.2.iter().map(Bytes::as_ref).collect();
        let map = match assemble_gzip(&parts, &from.0, max_bytes) {
            Ok((gz, size)) => {
                // Checked without keeping the plain bytes: they are decompressed on the first
                // request that needs them (most clients take the gzip).
                Some(Arc::new(ServedMap::from_checked_gzip(
                    Bytes::from(gz),
                    from.0.clone(),
                    size,
                )))
            }
            Err(err) => {
                debug!(namespace = %id.0.0, config_map = %id.0.1, %err, "not serving these chunks");
                None
            }
        };
        self.by_first.insert(
            id.clone(),
            Assembly {
                from,
                map: map.clone(),
            },
        );
        map
    }
}

#[cfg(test)]
mod tests {
    use crate::digest::sha256_digest;
    use crate::http::map_cache::MapCache;
    use crate::http::map_cache::tests::{key, listed, sync};
    use crate::layout::chunks::{CHUNK_BYTES, MAX_CONFIG_MAP_PAYLOAD};
    use crate::layout::gzip::StoredMap;
    use crate::layout::render::fixtures::rendered_for;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;

    const MAX: u64 = 64 << 20;

    /// A map whose gzip takes about `chunks` chunks: entries of pseudo-random hex, which
    /// compresses to about half.
    fn big_map(chunks: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut map = serde_json::Map::new();
        let mut size = 0;
        while size < chunks * CHUNK_BYTES * 2 {
            let name = format!("model-{:016x}", next());
            let note = format!("{:016x}{:016x}", next(), next());
            size += name.len() + note.len() + 14;
            map.insert(name, serde_json::json!({ "note": note }));
        }
        serde_json::to_vec(&map).unwrap()
    }

    /// The ConfigMaps of `bytes` in chunks, as the target `litellm` of `litellm`.
    fn rendered(bytes: &[u8]) -> Vec<ConfigMap> {
        let map = StoredMap::from_bytes(bytes.to_vec());
        assert!(map.gz.len() > MAX_CONFIG_MAP_PAYLOAD, "a map in chunks");
        rendered_for("litellm", "litellm", bytes)
    }

    fn served(cache: &MapCache) -> Option<String> {
        cache
            .get(&key("litellm"))
            .map(|map| map.digest().to_owned())
    }

    #[test]
    fn a_complete_chunk_set_is_served_byte_exact() {
        let a = big_map(3, 7);
        let cms = rendered(&a);
        assert!(cms.len() >= 3);
        let cache = listed(vec![sync("litellm", &a, None)], cms);
        let map = cache.get(&key("litellm")).expect("served");
        assert_eq!(map.plain().unwrap().as_ref(), a.as_slice());
        assert_eq!(
            map.gz().as_ref(),
            StoredMap::from_bytes(a.clone()).gz.as_slice()
        );
    }

    #[test]
    fn a_half_written_update_serves_the_last_complete_map_until_the_first_flips() {
        let (a, b) = (big_map(2, 7), big_map(2, 11));
        let (old, new) = (rendered(&a), rendered(&b));
        let cache = listed(vec![sync("litellm", &a, Some(&b))], old);
        assert_eq!(served(&cache), Some(sha256_digest(&a)));
        // The operator writes the chunks first: while the first still names a, the set
        // mixes two maps and a stays served.
        for cm in &new[1..] {
            cache.on_config_map_event("", Ok(Event::Apply(cm.clone())), MAX);
            assert_eq!(served(&cache), Some(sha256_digest(&a)));
        }
        cache.on_config_map_event("", Ok(Event::Apply(new[0].clone())), MAX);
        assert_eq!(served(&cache), Some(sha256_digest(&b)));
    }

    #[test]
    fn a_status_that_names_the_next_map_before_its_chunks_are_all_here_leaves_no_gap() {
        let (a, b) = (big_map(2, 7), big_map(2, 11));
        let (old, new) = (rendered(&a), rendered(&b));
        let cache = listed(vec![sync("litellm", &a, None)], old);
        // The operator wrote every ConfigMap, then status; status came before the last
        // ConfigMaps (the first among them), so the set here mixes two maps.
        cache.on_config_map_event("", Ok(Event::Apply(new[1].clone())), MAX);
        cache.on_sync_event("", Ok(Event::Apply(sync("litellm", &b, None))));
        assert_eq!(served(&cache), Some(sha256_digest(&a)));
        for cm in new[2..].iter().chain([&new[0]]) {
            cache.on_config_map_event("", Ok(Event::Apply(cm.clone())), MAX);
        }
        assert_eq!(served(&cache), Some(sha256_digest(&b)));
    }

    #[test]
    fn a_mixed_set_is_never_served_even_when_its_annotations_agree() {
        let (a, b) = (big_map(2, 7), big_map(2, 11));
        let (old, new) = (rendered(&a), rendered(&b));
        let vouching = || vec![sync("litellm", &a, Some(&b))];
        // A chunk of b relabelled as a's: the annotations agree, the bytes do not.
        let mut forged = new[1].clone();
        forged.metadata.annotations = old[1].metadata.annotations.clone();
        let mut mixed = old.clone();
        mixed[1] = forged;
        assert_eq!(
            served(&listed(vouching(), mixed)),
            None,
            "a cache that never saw a whole set serves none"
        );
        // The first of b with a chunk of a, status vouching for both.
        let mut mixed = new.clone();
        mixed[1] = old[1].clone();
        assert_eq!(served(&listed(vouching(), mixed)), None);
        // A chunk missing.
        let incomplete = old[..old.len() - 1].to_vec();
        assert_eq!(served(&listed(vouching(), incomplete)), None);
    }

    #[test]
    fn chunks_left_over_from_a_larger_map_are_ignored() {
        let (a, small) = (big_map(3, 7), br#"{"a": {}}"#.to_vec());
        let mut cms = rendered(&a);
        cms[0] = rendered_for("litellm", "litellm", &small).remove(0);
        let cache = listed(vec![sync("litellm", &small, None)], cms);
        assert_eq!(served(&cache), Some(sha256_digest(&small)));
    }

    #[test]
    fn an_event_in_another_namespace_leaves_the_map_served() {
        let a = big_map(2, 7);
        let cache = listed(vec![sync("litellm", &a, None)], rendered(&a));
        let mut elsewhere = rendered_for("litellm", "litellm", b"{}").remove(0);
        elsewhere.metadata.namespace = Some("team-b".into());
        cache.on_config_map_event("", Ok(Event::Apply(elsewhere)), MAX);
        assert_eq!(served(&cache), Some(sha256_digest(&a)));
    }
}
