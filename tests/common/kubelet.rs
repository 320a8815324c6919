//! A ConfigMap volume as the kubelet writes it (its `AtomicWriter`): every version of the
//! files in a `..<timestamp>` directory, a `..data` symlink to the current one, swapped with
//! a rename, and one `<key> -> ..data/<key>` symlink per key.

use std::path::{Path, PathBuf};

/// A mounted ConfigMap directory.
pub struct ConfigMapVolume {
    dir: PathBuf,
    versions: usize,
}

/// A version written but not yet made current.
pub struct Staged {
    name: String,
    keys: Vec<String>,
}

impl ConfigMapVolume {
    /// An empty volume in `dir` (which must exist).
    pub fn new(dir: &Path) -> ConfigMapVolume {
        ConfigMapVolume {
            dir: dir.to_owned(),
            versions: 0,
        }
    }

    /// Writes `files` into a new `..<timestamp>` directory without touching `..data`.
    pub fn stage(&mut self, files: &[(&str, &[u8])]) -> Staged {
        self.versions += 1;
        let name = format!("..2026_11_25_21_00_00.{:09}", self.versions);
        let version = self.dir.join(&name);
        std::fs::create_dir(&version).unwrap();
        for (key, bytes) in files {
            std::fs::write(version.join(key), bytes).unwrap();
        }
        Staged {
            name,
            keys: files.iter().map(|(key, _)| key.to_string()).collect(),
        }
    }

    /// Makes a staged version current, as the kubelet does: `..data_tmp` -> version, renamed
    /// over `..data`; then the key links; then the old version is removed.
    pub fn swap(&mut self, staged: Staged) {
        let data = self.dir.join("..data");
        let old = std::fs::read_link(&data).ok();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&staged.name, &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        for key in &staged.keys {
            let link = self.dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(key), &link).unwrap();
            }
        }
        if let Some(old) = old.filter(|old| old != Path::new(&staged.name)) {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }

    /// Stages and swaps in one go.
    pub fn write(&mut self, files: &[(&str, &[u8])]) {
        let staged = self.stage(files);
        self.swap(staged);
    }

    /// Writes every key of `config_map` (data and binaryData), as the kubelet mounts it.
    pub fn mount(&mut self, config_map: &k8s_openapi::api::core::v1::ConfigMap) {
        self.mount_projected(std::slice::from_ref(config_map));
    }

    /// Writes every key of every ConfigMap in one version, as the kubelet mounts a
    /// projected volume of several ConfigMaps (the chunks of a map) in one directory.
    pub fn mount_projected(&mut self, config_maps: &[k8s_openapi::api::core::v1::ConfigMap]) {
        let files: Vec<(&str, &[u8])> = config_maps
            .iter()
            .flat_map(|config_map| {
                let binary = config_map.binary_data.iter().flatten();
                let text = config_map.data.iter().flatten();
                binary
                    .map(|(key, value)| (key.as_str(), value.0.as_slice()))
                    .chain(text.map(|(key, value)| (key.as_str(), value.as_bytes())))
            })
            .collect();
        self.write(&files);
    }
}

/// gzip of `bytes`, as the operator stores the map.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    costmap_operator::layout::gzip::StoredMap::from_bytes(bytes.to_vec()).gz
}
