//! A map read back from the ConfigMaps that hold it, in either layout: the gzip of one
//! ConfigMap, or chunks put together and checked against the digest the first names. And
//! whether ConfigMaps as read still hold what a rendering sets (a hand edit is put back).
//!
//! The ConfigMaps are the only store of the last good map, so an operator restart loses
//! nothing: it reads the map back, checks it against the digest in status and carries on.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::chunks::{ChunkError, chunk_count, chunk_key, chunk_name, gz_key};
use super::gzip::{GunzipError, StoredMap, gunzip_bounded, gunzip_digest};
use super::{CHUNKS_ANNOTATION, DIGEST_ANNOTATION, GIT_BLOB_ID_ANNOTATION, MODELS_ANNOTATION};

/// Why a map could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stored gzip could not be decompressed.
    #[error("the stored gzip is unreadable: {0}")]
    Unreadable(#[from] GunzipError),
    /// The chunks of a map stored in chunks do not make that map.
    #[error(transparent)]
    Chunks(#[from] ChunkError),
}

/// Reads the map back from a ConfigMap's gz key, decompressing at most `max_bytes`: a
/// ConfigMap edited by hand could hold anything.
pub fn read_stored_map(
    config_map: &ConfigMap,
    key: &str,
    max_bytes: u64,
) -> Result<Option<StoredMap>, ReadError> {
    let Some(gz) = config_map
        .binary_data
        .as_ref()
        .and_then(|data| data.get(&gz_key(key)))
    else {
        return Ok(None);
    };
    Ok(Some(StoredMap {
        bytes: gunzip_bounded(&gz.0, max_bytes)?.into(),
        gz: gz.0.clone(),
    }))
}

/// The ConfigMaps that may hold one stored map, as read from the cluster: the first (the
/// target's, or a history slot's) at index 0, then the chunk ConfigMaps its annotation
/// names, each `None` when it is not there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeldConfigMaps {
    /// By chunk index.
    pub maps: Vec<Option<ConfigMap>>,
}

impl HeldConfigMaps {
    /// A map held in one ConfigMap (or none).
    pub fn single(first: Option<ConfigMap>) -> HeldConfigMaps {
        HeldConfigMaps { maps: vec![first] }
    }

    /// The first ConfigMap, named by the target.
    pub fn first(&self) -> Option<&ConfigMap> {
        self.get(0)
    }

    /// The ConfigMap of chunk `index`.
    pub fn get(&self, index: usize) -> Option<&ConfigMap> {
        self.maps.get(index)?.as_ref()
    }

    /// Whether one of them is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.maps
            .iter()
            .flatten()
            .any(|cm| cm.metadata.name.as_deref() == Some(name))
    }
}

/// Reads the map back from the ConfigMaps that hold it, in either layout, decompressing at
/// most `max_bytes`. Chunks must make exactly the map whose digest the first names; `None`
/// when the first holds no map of `key`.
pub fn read_stored(
    held: &HeldConfigMaps,
    key: &str,
    max_bytes: u64,
) -> Result<Option<StoredMap>, ReadError> {
    let Some(first) = held.first() else {
        return Ok(None);
    };
    if let Some(map) = read_stored_map(first, key, max_bytes)? {
        return Ok(Some(map));
    }
    let Some(count) = chunk_count(first)? else {
        return Ok(None);
    };
    let first_name = first.metadata.name.clone().unwrap_or_default();
    let parts = (0..count)
        .map(|index| {
            held.get(index)
                .and_then(|cm| cm.binary_data.as_ref()?.get(&chunk_key(key, index)))
                .map(|gz| gz.0.as_slice())
                .ok_or_else(|| ChunkError::Missing {
                    index,
                    count,
                    name: chunk_name(&first_name, index),
                })
        })
        .collect::<Result<Vec<&[u8]>, ChunkError>>()?;
    let expected = first
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(DIGEST_ANNOTATION))
        .map_or("", String::as_str);
    assemble(&parts, expected, max_bytes).map(Some)
}

/// Puts chunks together: the map they make, when it is exactly the map of `expected` (its
/// digest). Chunks of two maps (an update half written) make another gzip, or none.
pub fn assemble(parts: &[&[u8]], expected: &str, max_bytes: u64) -> Result<StoredMap, ReadError> {
    let gz = parts.concat();
    let bytes = gunzip_bounded(&gz, max_bytes).map_err(|err| unreadable(err, expected))?;
    let map = StoredMap {
        bytes: bytes.into(),
        gz,
    };
    is_expected(map.digest(), expected)?;
    Ok(map)
}

/// [`assemble`] for a reader that keeps only the gzip: the chunks' gzip and the size of the
/// map it holds, checked without building the map.
pub fn assemble_gzip(
    parts: &[&[u8]],
    expected: &str,
    max_bytes: u64,
) -> Result<(Vec<u8>, u64), ReadError> {
    let gz = parts.concat();
    let (digest, size) = gunzip_digest(&gz, max_bytes).map_err(|err| unreadable(err, expected))?;
    is_expected(digest, expected)?;
    Ok((gz, size))
}

/// Chunks whose gzip does not decompress: too large, or the pieces of two maps.
fn unreadable(err: GunzipError, expected: &str) -> ReadError {
    match err {
        err @ GunzipError::TooLarge { .. } => err.into(),
        GunzipError::Corrupt(err) => ChunkError::Mixed {
            expected: expected.to_owned(),
            actual: format!("none (not a valid gzip: {err})"),
        }
        .into(),
    }
}

fn is_expected(actual: String, expected: &str) -> Result<(), ReadError> {
    if actual != expected {
        return Err(ChunkError::Mixed {
            expected: expected.to_owned(),
            actual,
        }
        .into());
    }
    Ok(())
}

/// Whether `held` still holds every ConfigMap of `desired` (see [`holds_rendered`]).
pub fn holds_all(held: &HeldConfigMaps, desired: &[ConfigMap]) -> bool {
    stale(held, desired).next().is_none()
}

/// The ConfigMaps of `desired` that `held` does not hold (any more), in [`write_order`]:
/// what to write to put the map back.
pub fn stale<'a>(
    held: &'a HeldConfigMaps,
    desired: &'a [ConfigMap],
) -> impl Iterator<Item = &'a ConfigMap> {
    let held_at = |index: usize, desired: &ConfigMap| {
        held.get(index)
            .is_some_and(|actual| holds_rendered(actual, desired))
    };
    let first_stale = desired.first().filter(|first| !held_at(0, first));
    desired
        .iter()
        .enumerate()
        .skip(1)
        .filter(move |(index, cm)| !held_at(*index, cm))
        .map(|(_, cm)| cm)
        .chain(first_stale)
}

/// Whether `actual` still holds everything `desired` sets: our label, owner reference,
/// identity annotations and keys. Fields other writers added are left alone.
pub fn holds_rendered(actual: &ConfigMap, desired: &ConfigMap) -> bool {
    fn contains<V: PartialEq>(
        actual: Option<&BTreeMap<String, V>>,
        desired: Option<&BTreeMap<String, V>>,
        keys: impl Fn(&str) -> bool,
    ) -> bool {
        let empty = BTreeMap::new();
        let actual = actual.unwrap_or(&empty);
        desired
            .unwrap_or(&empty)
            .iter()
            .filter(|(key, _)| keys(key))
            .all(|(key, value)| actual.get(key) == Some(value))
    }
    let identity_annotation = |key: &str| {
        [
            DIGEST_ANNOTATION,
            GIT_BLOB_ID_ANNOTATION,
            MODELS_ANNOTATION,
            CHUNKS_ANNOTATION,
        ]
        .contains(&key)
    };
    let owner_kept = desired
        .metadata
        .owner_references
        .iter()
        .flatten()
        .all(|owner| {
            actual
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == owner.uid && o.controller == owner.controller)
        });
    // A verbatim key we do not render must not linger either (it would serve a stale map).
    let rendered_data = |k: &String| desired.data.as_ref().is_some_and(|d| d.contains_key(k));
    let no_stale_verbatim = actual.data.as_ref().is_none_or(|data| {
        data.keys()
            .all(|k| rendered_data(k) || !desired_keys(desired).contains(k))
    });
    owner_kept
        && no_stale_verbatim
        && contains(
            actual.metadata.labels.as_ref(),
            desired.metadata.labels.as_ref(),
            |_| true,
        )
        && contains(
            actual.metadata.annotations.as_ref(),
            desired.metadata.annotations.as_ref(),
            identity_annotation,
        )
        && contains(actual.data.as_ref(), desired.data.as_ref(), |_| true)
        && contains(
            actual.binary_data.as_ref(),
            desired.binary_data.as_ref(),
            |_| true,
        )
}

/// The plain keys a rendered ConfigMap may hold: `<key>` for each `<key>.gz` or chunk
/// `<key>.gz.NNN`.
fn desired_keys(desired: &ConfigMap) -> Vec<String> {
    desired
        .binary_data
        .iter()
        .flatten()
        .filter_map(|(gz, _)| {
            gz.strip_suffix(".gz")
                .or_else(|| gz.rsplit_once(".gz.").map(|(key, _)| key))
                .map(str::to_owned)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::UPDATED_AT_ANNOTATION;
    use crate::layout::render::fixtures::*;
    use crate::layout::render::render_config_maps;
    use k8s_openapi::ByteString;

    #[test]
    fn chunks_read_back_byte_exact_and_a_mixed_or_incomplete_set_is_refused() {
        let (a, b) = (map_of_chunks(2), map_of_chunks(3));
        let rendered_a = render_config_maps(&target(), &a, &identity(&a)).unwrap();
        let rendered_b = render_config_maps(&target(), &b, &identity(&b)).unwrap();
        let read = read_stored(&held(&rendered_a), "map.json", 64 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(read, a);

        // The chunks of b written, the first not yet: the first names a.
        let mut half = held(&rendered_b);
        half.maps[0] = Some(rendered_a[0].clone());
        let err = read_stored(&half, "map.json", 64 << 20).unwrap_err();
        assert!(
            matches!(err, ReadError::Chunks(ChunkError::Mixed { .. })),
            "{err}"
        );
        assert!(err.to_string().contains(&a.digest()), "{err}");
        // The first of b, one chunk of a.
        let mut mixed = held(&rendered_b);
        mixed.maps[1] = Some(rendered_a[1].clone());
        assert!(read_stored(&mixed, "map.json", 64 << 20).is_err());
        // A chunk ConfigMap gone.
        let mut incomplete = held(&rendered_a);
        incomplete.maps[1] = None;
        let err = read_stored(&incomplete, "map.json", 64 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("chunk 1 of {} (litellm-1) is missing", rendered_a.len())
        );
        // The decompressed size is bounded as for one ConfigMap.
        let err = read_stored(&held(&rendered_a), "map.json", 1 << 20).unwrap_err();
        assert!(matches!(
            err,
            ReadError::Unreadable(GunzipError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_chunk_count_out_of_range_is_refused_before_anything_is_read() {
        let mut first = ConfigMap::default();
        assert_eq!(chunk_count(&first), Ok(None));
        for (count, ok) in [
            ("2", true),
            ("100", true),
            ("1", false),
            ("101", false),
            ("x", false),
        ] {
            first.metadata.annotations =
                Some(BTreeMap::from([(CHUNKS_ANNOTATION.into(), count.into())]));
            assert_eq!(chunk_count(&first).is_ok(), ok, "{count}");
        }
    }

    #[test]
    fn a_chunk_set_is_held_only_while_every_configmap_is() {
        let map = map_of_chunks(2);
        let rendered = render_config_maps(&target(), &map, &identity(&map)).unwrap();
        let mut actual = held(&rendered);
        assert!(holds_all(&actual, &rendered));
        // One chunk edited: it alone is stale.
        actual.maps[1]
            .as_mut()
            .unwrap()
            .binary_data
            .as_mut()
            .unwrap()
            .insert("map.json.gz.001".into(), ByteString(b"edited".to_vec()));
        let stale_names: Vec<_> = stale(&actual, &rendered)
            .map(|cm| cm.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(stale_names, ["litellm-1"]);
        // Nothing there: every one, the first last.
        let nothing = HeldConfigMaps::single(None);
        let stale_names: Vec<_> = stale(&nothing, &rendered)
            .map(|cm| cm.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(stale_names.len(), rendered.len());
        assert_eq!(stale_names.last().unwrap(), "litellm");
        // A plain copy added by hand beside the manifest would serve a stale map.
        let mut verbatim = held(&rendered);
        verbatim.maps[0]
            .as_mut()
            .unwrap()
            .data
            .as_mut()
            .unwrap()
            .insert("map.json".into(), "{}".into());
        assert!(!holds_all(&verbatim, &rendered));
    }

    #[test]
    fn reading_back_is_bounded_and_tolerates_garbage() {
        let bomb = StoredMap::from_bytes(vec![b'0'; 2 << 20]);
        let cm = rendered(&StoredMap {
            bytes: Default::default(),
            gz: bomb.gz,
        });
        let err = read_stored_map(&cm, "map.json", 1 << 20).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");

        let mut garbage = rendered(&StoredMap::from_bytes(b"{}".to_vec()));
        garbage
            .binary_data
            .as_mut()
            .unwrap()
            .insert("map.json.gz".into(), ByteString(b"not gzip".to_vec()));
        assert!(read_stored_map(&garbage, "map.json", 1 << 20).is_err());
        assert!(
            read_stored_map(&ConfigMap::default(), "map.json", 1 << 20)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn hand_edits_to_our_fields_are_detected_and_others_ignored() {
        let map = StoredMap::from_bytes(br#"{"a": {}}"#.to_vec());
        let desired = rendered(&map);
        assert!(holds_rendered(&desired, &desired));

        let mut extra = desired.clone();
        extra
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("team".into(), "x".into());
        extra
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(UPDATED_AT_ANNOTATION.into(), "x".into());
        assert!(
            holds_rendered(&extra, &desired),
            "foreign annotations are not ours to police"
        );

        let mut edited = desired.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("map.json".into(), "{}".into());
        assert!(!holds_rendered(&edited, &desired));

        let mut digest_edited = desired.clone();
        digest_edited
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DIGEST_ANNOTATION.into(), "x".into());
        assert!(!holds_rendered(&digest_edited, &desired));

        let mut orphaned = desired.clone();
        orphaned.metadata.owner_references = None;
        assert!(!holds_rendered(&orphaned, &desired));

        let mut gz_only = desired.clone();
        gz_only.data = None;
        let mut stale_verbatim = gz_only.clone();
        stale_verbatim.data = Some(BTreeMap::from([("map.json".into(), "old".into())]));
        assert!(!holds_rendered(&stale_verbatim, &gz_only));
    }
}
