//! The pure part of the agent: from the files of a mounted ConfigMap to a validated map to
//! serve. [`read_map`] (= [`read_file`], [`unpack`], [`Unpacked::validate`]) never yields a
//! half-written or invalid map; [`Checker`] is the state between two looks at the directory
//! (what is served, which file was seen last), deciding whether a look found a new map, the
//! same one or a refusal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::bounded::{BoundedError, read_at_most};
use crate::digest::sha256_digest;
use crate::http::maps::ServedMap;
use crate::layout::chunks::{
    ChunkError, ChunkManifest, checked_count, chunk_key, gz_key, manifest_key,
};
use crate::layout::gzip::{GunzipError, StoredMap, gunzip_bounded};
use crate::layout::read::{ReadError, assemble};
use crate::sync::SyncError;
use crate::sync::validate::Rules;

/// Why a look at the directory did not give a map to serve.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// Neither `<key>.gz`, chunks, nor `<key>` is there (yet).
    #[error("neither {gz}, {manifest} nor {key} is in {dir}", gz = gz_key(key), manifest = manifest_key(key))]
    Missing {
        /// The directory.
        dir: PathBuf,
        /// The plain key.
        key: String,
    },
    /// A file is there but could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A file, or what it decompresses to, is larger than allowed.
    #[error("{path} holds more than {max_bytes} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max_bytes: u64,
    },
    /// The gz file does not decompress.
    #[error("{path}: {error}")]
    Gzip {
        /// The file.
        path: PathBuf,
        /// Why.
        error: GunzipError,
    },
    /// A map in chunks whose chunks do not make the map its manifest names: a missing
    /// chunk, or chunks of two maps (the ConfigMaps of a volume are updated one by one).
    #[error("{path}: {error}")]
    Chunks {
        /// The manifest.
        path: PathBuf,
        /// Why.
        error: ChunkError,
    },
    /// The map is not one LiteLLM (or our rules) would accept.
    #[error("{path}: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        error: SyncError,
    },
    /// The map is valid, but not one the ModelCostMapSync's status names (an edited
    /// ConfigMap, or the status not written yet).
    #[error(
        "map {digest} is not one that ModelCostMapSync {sync} names in its status ({}): not served",
        if named.is_empty() { "it names none yet".to_owned() } else { named.join(", ") }
    )]
    NotNamed {
        /// The map's digest.
        digest: String,
        /// `namespace/name` of the ModelCostMapSync.
        sync: String,
        /// The digests its status names.
        named: Vec<String>,
    },
}

/// How a map file is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// `<key>.gz`: gzip of the map (written by the operator while it fits one ConfigMap).
    Gzip,
    /// `<key>`: the map verbatim (written beside the gzip when it fits).
    Plain,
    /// `<key>.gz.000`, `<key>.gz.001`, ...: a gzip in chunks, put together, with the
    /// manifest `<key>.gz.chunks` naming their count and the map's digest.
    Chunks {
        /// The digest the manifest names: what the chunks must make.
        digest: String,
    },
}

/// One map file as read from the directory.
#[derive(Debug, Clone)]
pub struct MapFile {
    /// The path read (through the kubelet's symlinks).
    pub path: PathBuf,
    /// How its bytes are stored.
    pub encoding: Encoding,
    /// Its bytes.
    pub bytes: Bytes,
}

/// A validated map, ready to serve.
#[derive(Debug)]
pub struct LoadedMap {
    /// The map.
    pub map: ServedMap,
    /// How many models it holds.
    pub models: usize,
    /// The file it came from.
    pub path: PathBuf,
}

/// A map file decompressed, not yet validated.
#[derive(Debug)]
pub struct Unpacked {
    file: MapFile,
    plain: Vec<u8>,
    digest: String,
}

impl Unpacked {
    /// `sha256:<hex>` of the plain map.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Validates the map and makes it ready to serve.
    ///
    /// Only the gzip is kept for a gz file; the plain bytes are decompressed again on the
    /// first request that needs them ([`ServedMap`]), so the agent does not hold 3.5 MB it
    /// rarely sends.
    pub fn validate(self, rules: &Rules) -> Result<LoadedMap, MapError> {
        let Unpacked {
            file,
            plain,
            digest,
        } = self;
        let invalid = |error| MapError::Invalid {
            path: file.path.clone(),
            error,
        };
        // The parsed tree is several times the map's size: it lives only inside accept.
        let models = crate::sync::accept(&plain, rules, None, None)
            .map_err(invalid)?
            .models;
        let map = match file.encoding {
            Encoding::Gzip | Encoding::Chunks { .. } => {
                ServedMap::from_checked_gzip(file.bytes, digest, plain.len() as u64)
            }
            // The verbatim key is only written for small maps: keeping both copies is cheap.
            Encoding::Plain => ServedMap::from_stored(StoredMap::from_bytes(plain)),
        };
        Ok(LoadedMap {
            map,
            models,
            path: file.path,
        })
    }
}

/// Reads the map file of `key` in `dir`: `<key>.gz` when there, else the chunks its
/// manifest names, else `<key>`. Each is opened once through the kubelet's
/// `<key> -> ..data/<key>` symlink, so the bytes all come from one `..<timestamp>`
/// directory even while the kubelet swaps `..data`.
pub fn read_file(dir: &Path, key: &str, max_bytes: u64) -> Result<MapFile, MapError> {
    let gz = dir.join(gz_key(key));
    if let Some(bytes) = read_bounded(&gz, max_bytes)? {
        return Ok(MapFile {
            path: gz,
            encoding: Encoding::Gzip,
            bytes: Bytes::from(bytes),
        });
    }
    if let Some(file) = read_chunks(dir, key, max_bytes)? {
        return Ok(file);
    }
    let plain = dir.join(key);
    if let Some(bytes) = read_bounded(&plain, max_bytes)? {
        return Ok(MapFile {
            path: plain,
            encoding: Encoding::Plain,
            bytes: Bytes::from(bytes),
        });
    }
    Err(MapError::Missing {
        dir: dir.to_owned(),
        key: key.to_owned(),
    })
}

/// The chunks of `key`, put together, when `dir` holds its manifest (a projected volume of
/// the chunk ConfigMaps puts every `<key>.gz.NNN` in one directory). The files are read
/// from the `..<timestamp>` directory `..data` points to when there is one, so that all
/// come from one version of the volume; the digest check catches the rest (a kubelet that
/// updated one ConfigMap of the set and not yet another).
fn read_chunks(dir: &Path, key: &str, max_bytes: u64) -> Result<Option<MapFile>, MapError> {
    let base = std::fs::canonicalize(dir.join("..data")).unwrap_or_else(|_| dir.to_owned());
    let manifest_path = dir.join(manifest_key(key));
    let Some(manifest) = read_bounded(&base.join(manifest_key(key)), 4096)? else {
        return Ok(None);
    };
    let chunk_error = |error| MapError::Chunks {
        path: manifest_path.clone(),
        error,
    };
    let manifest: ChunkManifest = serde_json::from_slice(&manifest).map_err(|err| {
        chunk_error(ChunkError::BadCount {
            count: format!("unreadable ({err})"),
        })
    })?;
    checked_count(manifest.chunks).map_err(chunk_error)?;
    let mut gz = Vec::new();
    for index in 0..manifest.chunks {
        let name = chunk_key(key, index);
        let part = read_bounded(&base.join(&name), max_bytes)?.ok_or_else(|| {
            chunk_error(ChunkError::Missing {
                index,
                count: manifest.chunks,
                name,
            })
        })?;
        gz.extend_from_slice(&part);
    }
    Ok(Some(MapFile {
        path: manifest_path,
        encoding: Encoding::Chunks {
            digest: manifest.digest,
        },
        bytes: Bytes::from(gz),
    }))
}

/// The bytes of `path`, `None` when it (or the symlink's target) does not exist.
fn read_bounded(path: &Path, max_bytes: u64) -> Result<Option<Vec<u8>>, MapError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(MapError::Read {
                path: path.to_owned(),
                error,
            });
        }
    };
    match read_at_most(file, max_bytes) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(BoundedError::TooLarge { max_bytes }) => Err(MapError::TooLarge {
            path: path.to_owned(),
            max_bytes,
        }),
        Err(BoundedError::Io(error)) => Err(MapError::Read {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Decompresses a map file (at most `max_bytes`) and computes the map's digest, so that the
/// caller can tell a new map from a re-compressed copy before paying for validation.
pub fn unpack(file: MapFile, max_bytes: u64) -> Result<Unpacked, MapError> {
    let gunzip_error = |error| match error {
        GunzipError::TooLarge { max_bytes } => MapError::TooLarge {
            path: file.path.clone(),
            max_bytes,
        },
        error @ GunzipError::Corrupt(_) => MapError::Gzip {
            path: file.path.clone(),
            error,
        },
    };
    let (plain, digest) = match &file.encoding {
        Encoding::Plain => (file.bytes.to_vec(), sha256_digest(&file.bytes)),
        Encoding::Gzip => {
            let plain = gunzip_bounded(&file.bytes, max_bytes).map_err(gunzip_error)?;
            let digest = sha256_digest(&plain);
            (plain, digest)
        }
        // Put together as every reader of chunks does: the digest the manifest names, or
        // nothing.
        Encoding::Chunks { digest } => {
            let map = assemble(&[&file.bytes], digest, max_bytes).map_err(|err| match err {
                ReadError::Unreadable(error) => gunzip_error(error),
                ReadError::Chunks(error) => MapError::Chunks {
                    path: file.path.clone(),
                    error,
                },
            })?;
            (map.bytes.to_vec(), digest.clone())
        }
    };
    Ok(Unpacked {
        digest,
        file,
        plain,
    })
}

/// Reads, decompresses and validates the map of `key` in `dir`.
pub fn read_map(
    dir: &Path,
    key: &str,
    rules: &Rules,
    max_bytes: u64,
) -> Result<LoadedMap, MapError> {
    unpack(read_file(dir, key, max_bytes)?, max_bytes)?.validate(rules)
}

/// What one look at the directory found.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing new: the same file as last time, or the same problem as last time.
    Unchanged,
    /// A different file holding the map already served (e.g. re-compressed).
    SameMap,
    /// A new valid map, now served.
    Serving {
        /// The map.
        map: Arc<ServedMap>,
        /// Its model count.
        models: usize,
        /// The file it came from.
        path: PathBuf,
        /// The digest of the map served before; `None` for the first map.
        previous: Option<String>,
    },
    /// No map from this look: the previous map (if any) stays served.
    Refused(MapError),
}

/// What the agent remembers between two looks at the directory.
#[derive(Debug)]
pub struct Checker {
    dir: PathBuf,
    key: String,
    rules: Rules,
    max_bytes: u64,
    served: Option<Arc<ServedMap>>,
    /// Digest of the raw file last decoded, so a re-check of the same file costs one read
    /// and one hash, and an invalid file is reported once, not every re-check.
    last_file: Option<String>,
    /// The last refusal, reported once until something else happens.
    last_problem: Option<String>,
    /// With `--verify-with`: the ModelCostMapSync, and the digests its status names.
    named: Option<(String, Vec<String>)>,
}

impl Checker {
    /// A checker that has seen nothing yet.
    pub fn new(dir: PathBuf, key: String, rules: Rules, max_bytes: u64) -> Checker {
        Checker {
            dir,
            key,
            rules,
            max_bytes,
            served: None,
            last_file: None,
            last_problem: None,
            named: None,
        }
    }

    /// Serves from now on only maps that `sync` (`namespace/name`) names in its status;
    /// it names none until [`Checker::set_named`] says otherwise.
    pub fn require_named(&mut self, sync: String) {
        self.named = Some((sync, Vec::new()));
    }

    /// What the ModelCostMapSync's status names now. A change makes the next look decode
    /// the file again: a map refused before may be named now.
    pub fn set_named(&mut self, digests: Vec<String>) {
        if let Some((_, named)) = &mut self.named
            && *named != digests
        {
            *named = digests;
            self.last_file = None;
        }
    }

    /// The map served now.
    pub fn served(&self) -> Option<&Arc<ServedMap>> {
        self.served.as_ref()
    }

    /// Digest of the raw file last decoded.
    pub fn last_file(&self) -> Option<&str> {
        self.last_file.as_deref()
    }

    /// The last refusal, if nothing was served since.
    pub fn last_problem(&self) -> Option<&str> {
        self.last_problem.as_deref()
    }

    /// Looks at the directory once.
    pub fn check(&mut self) -> Outcome {
        let file = match read_file(&self.dir, &self.key, self.max_bytes) {
            Ok(file) => file,
            Err(err) => {
                // Whatever comes back later is looked at afresh.
                self.last_file = None;
                return self.refused(err);
            }
        };
        let file_digest = sha256_digest(&file.bytes);
        if self.last_file.as_deref() == Some(file_digest.as_str()) {
            return Outcome::Unchanged;
        }
        self.last_file = Some(file_digest);
        let unpacked = match unpack(file, self.max_bytes) {
            Ok(unpacked) => unpacked,
            Err(err) => return self.refused(err),
        };
        let current = self.served.as_ref().map(|map| map.digest().to_owned());
        if current.as_deref() == Some(unpacked.digest()) {
            self.last_problem = None;
            return Outcome::SameMap;
        }
        if let Some((sync, named)) = &self.named
            && !named.iter().any(|digest| digest == unpacked.digest())
        {
            let err = MapError::NotNamed {
                digest: unpacked.digest().to_owned(),
                sync: sync.clone(),
                named: named.clone(),
            };
            return self.refused(err);
        }
        match unpacked.validate(&self.rules) {
            Err(err) => self.refused(err),
            Ok(loaded) => {
                self.last_problem = None;
                let map = Arc::new(loaded.map);
                self.served = Some(Arc::clone(&map));
                Outcome::Serving {
                    map,
                    models: loaded.models,
                    path: loaded.path,
                    previous: current,
                }
            }
        }
    }

    fn refused(&mut self, err: MapError) -> Outcome {
        let message = err.to_string();
        if self.last_problem.as_deref() == Some(message.as_str()) {
            return Outcome::Unchanged;
        }
        self.last_problem = Some(message);
        Outcome::Refused(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use serde_json::json;

    const KEY: &str = "map.json";

    fn map_bytes(models: usize, cost: f64) -> Vec<u8> {
        let entries: serde_json::Map<String, serde_json::Value> = (0..models)
            .map(|i| {
                (
                    format!("model-{i}"),
                    json!({"max_tokens": 4096, "input_cost_per_token": cost,
                           "litellm_provider": "openai", "mode": "chat"}),
                )
            })
            .collect();
        serde_json::to_vec(&entries).unwrap()
    }

    fn gzip(bytes: &[u8], level: Compression) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), level);
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn checker(dir: &Path) -> Checker {
        Checker::new(dir.to_owned(), KEY.into(), Rules::default(), 1 << 20)
    }

    fn serving(outcome: Outcome) -> (Arc<ServedMap>, Option<String>) {
        match outcome {
            Outcome::Serving { map, previous, .. } => (map, previous),
            other => panic!("expected a new map, got {other:?}"),
        }
    }

    #[test]
    fn the_gz_key_is_preferred_and_the_verbatim_key_is_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let plain = map_bytes(60, 1e-6);
        std::fs::write(dir.path().join(KEY), &plain).unwrap();
        let loaded = read_map(dir.path(), KEY, &Rules::default(), 1 << 20).unwrap();
        assert_eq!(loaded.path, dir.path().join(KEY));
        assert_eq!(loaded.models, 60);
        assert_eq!(loaded.map.plain().unwrap(), plain);

        let other = map_bytes(70, 1e-6);
        std::fs::write(
            dir.path().join("map.json.gz"),
            gzip(&other, Compression::fast()),
        )
        .unwrap();
        let loaded = read_map(dir.path(), KEY, &Rules::default(), 1 << 20).unwrap();
        assert_eq!(loaded.path, dir.path().join("map.json.gz"));
        assert_eq!(loaded.models, 70);
        assert_eq!(loaded.map.plain().unwrap(), other);
        assert_eq!(loaded.map.digest(), sha256_digest(&other));
    }

    #[test]
    fn a_dangling_gz_symlink_falls_back_to_the_verbatim_key() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("..data/map.json.gz", dir.path().join("map.json.gz")).unwrap();
        std::fs::write(dir.path().join(KEY), map_bytes(60, 1e-6)).unwrap();
        let loaded = read_map(dir.path(), KEY, &Rules::default(), 1 << 20).unwrap();
        assert_eq!(loaded.path, dir.path().join(KEY));
    }

    #[test]
    fn missing_truncated_invalid_and_oversized_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let read = || read_map(dir.path(), KEY, &Rules::default(), 1 << 20).unwrap_err();
        assert!(matches!(read(), MapError::Missing { .. }), "{}", read());
        assert!(
            read()
                .to_string()
                .contains("neither map.json.gz, map.json.gz.chunks nor map.json")
        );

        let gz_path = dir.path().join("map.json.gz");
        let gz = gzip(&map_bytes(60, 1e-6), Compression::best());
        std::fs::write(&gz_path, &gz[..gz.len() / 2]).unwrap();
        assert!(matches!(read(), MapError::Gzip { .. }), "{}", read());

        let plain = map_bytes(60, 1e-6);
        std::fs::write(
            &gz_path,
            gzip(&plain[..plain.len() - 10], Compression::best()),
        )
        .unwrap();
        let err = read();
        assert!(err.to_string().contains("truncated"), "{err}");

        std::fs::write(&gz_path, gzip(&map_bytes(10, 1e-6), Compression::best())).unwrap();
        let err = read();
        assert!(
            err.to_string()
                .contains("10 models, fewer than minModels 50"),
            "{err}"
        );

        std::fs::write(&gz_path, gzip(&map_bytes(60, -1.0), Compression::best())).unwrap();
        assert!(
            read().to_string().contains("costs are finite"),
            "{}",
            read()
        );

        // A gzip bomb stops at the limit.
        std::fs::write(&gz_path, gzip(&vec![b' '; 2 << 20], Compression::best())).unwrap();
        assert!(matches!(read(), MapError::TooLarge { .. }), "{}", read());
    }

    #[test]
    fn a_file_larger_than_the_limit_is_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY), map_bytes(60, 1e-6)).unwrap();
        let err = read_map(dir.path(), KEY, &Rules::default(), 100).unwrap_err();
        assert!(
            matches!(err, MapError::TooLarge { max_bytes: 100, .. }),
            "{err}"
        );
    }

    #[test]
    fn the_checker_serves_the_first_map_then_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let gz_path = dir.path().join("map.json.gz");
        let mut checker = checker(dir.path());

        // Nothing there: refused once, then quiet until something else happens.
        assert!(matches!(
            checker.check(),
            Outcome::Refused(MapError::Missing { .. })
        ));
        assert!(matches!(checker.check(), Outcome::Unchanged));
        assert!(checker.served().is_none());

        let first = map_bytes(60, 1e-6);
        std::fs::write(&gz_path, gzip(&first, Compression::best())).unwrap();
        let (map, previous) = serving(checker.check());
        assert_eq!(map.digest(), sha256_digest(&first));
        assert_eq!(previous, None, "the first map is no change");
        assert_eq!(checker.last_problem(), None);
        assert!(matches!(checker.check(), Outcome::Unchanged));

        // Same map, compressed differently: the file is new, the map is not.
        std::fs::write(&gz_path, gzip(&first, Compression::fast())).unwrap();
        assert!(matches!(checker.check(), Outcome::SameMap));
        assert_eq!(
            checker.last_file(),
            Some(sha256_digest(&gzip(&first, Compression::fast())).as_str())
        );

        // An invalid map is refused once and the first stays served.
        std::fs::write(&gz_path, gzip(&map_bytes(10, 1e-6), Compression::best())).unwrap();
        let Outcome::Refused(err) = checker.check() else {
            panic!("an invalid map must be refused");
        };
        assert!(matches!(err, MapError::Invalid { .. }), "{err}");
        assert!(matches!(checker.check(), Outcome::Unchanged));
        assert_eq!(checker.served().unwrap().digest(), sha256_digest(&first));
        assert!(checker.last_problem().unwrap().contains("10 models"));

        let second = map_bytes(60, 2e-6);
        std::fs::write(&gz_path, gzip(&second, Compression::best())).unwrap();
        let (map, previous) = serving(checker.check());
        assert_eq!(map.digest(), sha256_digest(&second));
        assert_eq!(previous, Some(sha256_digest(&first)));
        assert_eq!(checker.last_problem(), None);
    }

    #[test]
    fn files_that_vanish_and_come_back_unchanged_are_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let gz_path = dir.path().join("map.json.gz");
        let gz = gzip(&map_bytes(60, 1e-6), Compression::best());
        std::fs::write(&gz_path, &gz).unwrap();
        let mut checker = checker(dir.path());
        serving(checker.check());
        std::fs::remove_file(&gz_path).unwrap();
        assert!(matches!(
            checker.check(),
            Outcome::Refused(MapError::Missing { .. })
        ));
        assert!(checker.served().is_some(), "the last good map stays served");
        std::fs::write(&gz_path, &gz).unwrap();
        assert!(matches!(checker.check(), Outcome::SameMap));
    }

    #[test]
    fn with_verification_only_a_map_status_names_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let gz_path = dir.path().join("map.json.gz");
        let good = map_bytes(60, 1e-6);
        std::fs::write(&gz_path, gzip(&good, Compression::best())).unwrap();
        let mut checker = checker(dir.path());
        checker.require_named("llm/litellm".into());
        let Outcome::Refused(err) = checker.check() else {
            panic!("status names no map yet");
        };
        assert!(
            err.to_string().contains(
                "not one that ModelCostMapSync llm/litellm names in its status (it names none yet)"
            ),
            "{err}"
        );
        assert!(matches!(checker.check(), Outcome::Unchanged));
        checker.set_named(vec![sha256_digest(&good)]);
        serving(checker.check());

        // A valid map put in the ConfigMap by hand: refused, the named one stays served.
        let tampered = map_bytes(60, 9e-6);
        std::fs::write(&gz_path, gzip(&tampered, Compression::best())).unwrap();
        assert!(matches!(
            checker.check(),
            Outcome::Refused(MapError::NotNamed { .. })
        ));
        assert_eq!(checker.served().unwrap().digest(), sha256_digest(&good));
        // Once status names it (the operator wrote it), it is served.
        checker.set_named(vec![sha256_digest(&good), sha256_digest(&tampered)]);
        let (map, _) = serving(checker.check());
        assert_eq!(map.digest(), sha256_digest(&tampered));
    }

    /// Writes `map` as the operator's chunk ConfigMaps land in a projected volume: the
    /// manifest and the gzip in `count` byte ranges.
    fn write_chunks(dir: &Path, map: &[u8], count: usize) -> Vec<Vec<u8>> {
        let gz = gzip(map, Compression::best());
        let size = gz.len().div_ceil(count);
        let parts: Vec<Vec<u8>> = gz.chunks(size).map(<[u8]>::to_vec).collect();
        assert_eq!(parts.len(), count);
        for (index, part) in parts.iter().enumerate() {
            std::fs::write(dir.join(format!("map.json.gz.{index:03}")), part).unwrap();
        }
        let manifest = json!({"chunks": count, "digest": sha256_digest(map)});
        std::fs::write(dir.join("map.json.gz.chunks"), manifest.to_string()).unwrap();
        parts
    }

    #[test]
    fn chunks_are_put_together_byte_exact_and_a_mixed_set_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = map_bytes(60, 1e-6);
        let old_parts = write_chunks(dir.path(), &first, 3);
        let mut checker = checker(dir.path());
        let (map, _) = serving(checker.check());
        assert_eq!(map.digest(), sha256_digest(&first));
        assert_eq!(map.plain().unwrap(), first);
        assert_eq!(
            map.gz().as_ref(),
            gzip(&first, Compression::best()).as_slice()
        );

        // The kubelet has updated the first ConfigMap (manifest and chunk 0) and the last,
        // not yet the middle one: refused, the first map stays served.
        let second = map_bytes(61, 1e-6);
        write_chunks(dir.path(), &second, 3);
        std::fs::write(dir.path().join("map.json.gz.001"), &old_parts[1]).unwrap();
        let Outcome::Refused(err) = checker.check() else {
            panic!("a mixed set must be refused");
        };
        assert!(
            matches!(
                err,
                MapError::Chunks {
                    error: ChunkError::Mixed { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("mix two maps"), "{err}");
        assert_eq!(checker.served().unwrap().digest(), sha256_digest(&first));

        // A chunk the manifest names is missing.
        write_chunks(dir.path(), &second, 3);
        std::fs::remove_file(dir.path().join("map.json.gz.002")).unwrap();
        let Outcome::Refused(err) = checker.check() else {
            panic!("an incomplete set must be refused");
        };
        assert!(
            err.to_string()
                .contains("chunk 2 of 3 (map.json.gz.002) is missing"),
            "{err}"
        );

        write_chunks(dir.path(), &second, 3);
        let (map, previous) = serving(checker.check());
        assert_eq!(map.plain().unwrap(), second);
        assert_eq!(previous, Some(sha256_digest(&first)));
    }

    #[test]
    fn a_whole_gz_wins_over_chunks_left_over_from_a_larger_map() {
        let dir = tempfile::tempdir().unwrap();
        write_chunks(dir.path(), &map_bytes(70, 1e-6), 2);
        let small = map_bytes(60, 1e-6);
        std::fs::write(
            dir.path().join("map.json.gz"),
            gzip(&small, Compression::best()),
        )
        .unwrap();
        let loaded = read_map(dir.path(), KEY, &Rules::default(), 1 << 20).unwrap();
        assert_eq!(loaded.map.plain().unwrap(), small);
    }

    #[test]
    fn a_manifest_naming_too_many_chunks_reads_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("map.json.gz.chunks"),
            json!({"chunks": 5000, "digest": "sha256:00"}).to_string(),
        )
        .unwrap();
        let err = read_map(dir.path(), KEY, &Rules::default(), 1 << 20).unwrap_err();
        assert!(
            matches!(
                err,
                MapError::Chunks {
                    error: ChunkError::BadCount { .. },
                    ..
                }
            ),
            "{err}"
        );
    }
}
