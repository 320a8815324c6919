//! A docker-archive writer (the `docker save` format that `ctr images import` reads):
//! `manifest.json`, one config JSON and one uncompressed layer tar whose files are owned by
//! 0:0, so images are made from a directory without a container engine or a registry.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

/// What an image runs: the parts of an image config that the Dockerfile also says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The name users see, e.g. `ghcr.io/costmap-operator/costmap-operator:0.1.0`.
    pub reference: String,
    /// `USER` (numeric, so `runAsNonRoot` can check it), or empty for root.
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// `EXPOSE`, e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
    pub working_dir: String,
}

impl ImageSpec {
    /// An image that runs `entrypoint` as root with nothing else set.
    pub fn new(reference: &str, entrypoint: &[&str]) -> ImageSpec {
        ImageSpec {
            reference: reference.to_owned(),
            user: String::new(),
            entrypoint: entrypoint.iter().map(|s| (*s).to_owned()).collect(),
            cmd: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            exposed_ports: Vec::new(),
            working_dir: String::new(),
        }
    }

    /// The image config JSON (OCI/Docker v1) for a single layer with `diff_id`.
    fn config_json(&self, diff_id: &str) -> serde_json::Value {
        let exposed: serde_json::Map<String, serde_json::Value> = self
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), json!({})))
            .collect();
        json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "User": self.user,
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": self.env,
                "ExposedPorts": exposed,
                "WorkingDir": self.working_dir,
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "costmap-operator testenv (local image)"}],
        })
    }
}

/// Writes `rootfs` as a docker archive at `out` for `spec`. Files keep their modes; owners
/// become 0:0 and times 0 so the same tree gives the same layer digest.
pub fn write_docker_archive(rootfs: &Path, spec: &ImageSpec, out: &Path) -> Result<()> {
    let layer_path = out.with_extension("layer.tar");
    write_layer(rootfs, &layer_path).with_context(|| {
        format!(
            "writing the layer of {} from {}",
            spec.reference,
            rootfs.display()
        )
    })?;
    let layer_digest = sha256_file(&layer_path)?;
    let config = serde_json::to_vec(&spec.config_json(&format!("sha256:{layer_digest}")))?;
    let config_digest = hex(&Sha256::digest(&config));
    let config_name = format!("{config_digest}.json");
    let layer_name = format!("{layer_digest}/layer.tar");
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [spec.reference],
        "Layers": [layer_name],
    }]))?;

    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut archive = tar::Builder::new(BufWriter::new(file));
    append_bytes(&mut archive, "manifest.json", &manifest)?;
    append_bytes(&mut archive, &config_name, &config)?;
    let mut layer = File::open(&layer_path)?;
    let mut header = file_header(layer.metadata()?.len(), 0o644);
    archive
        .append_data(&mut header, &layer_name, &mut layer)
        .context("adding the layer")?;
    archive.into_inner()?.flush()?;
    std::fs::remove_file(&layer_path).with_context(|| format!("removing {}", layer_path.display()))
}

fn write_layer(rootfs: &Path, out: &Path) -> Result<()> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut layer = tar::Builder::new(BufWriter::new(file));
    let mut entries = Vec::new();
    walk(rootfs, &mut entries)?;
    // Sorted, so a parent directory comes before what is in it and the digest is stable.
    entries.sort();
    for path in entries {
        let name = path
            .strip_prefix(rootfs)
            .context("a path outside the rootfs")?;
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target = std::fs::read_link(&path)?;
            let mut header = header(tar::EntryType::Symlink, 0, 0o777);
            layer.append_link(&mut header, name, &target)?;
        } else if file_type.is_dir() {
            let mut header = header(tar::EntryType::Directory, 0, mode);
            layer.append_data(&mut header, name, std::io::empty())?;
        } else if file_type.is_file() {
            let mut header = file_header(meta.len(), mode);
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            layer.append_data(&mut header, name, file)?;
        }
        // Device nodes, fifos and sockets are left out: the runtime makes /dev itself.
    }
    layer.into_inner()?.flush()?;
    Ok(())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let is_dir = entry.file_type()?.is_dir();
        out.push(path.clone());
        if is_dir {
            walk(&path, out)?;
        }
    }
    Ok(())
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn file_header(size: u64, mode: u32) -> tar::Header {
    header(tar::EntryType::Regular, size, mode)
}

fn append_bytes<W: Write>(archive: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut header = file_header(bytes.len() as u64, 0o644);
    archive
        .append_data(&mut header, name, bytes)
        .with_context(|| format!("adding {name}"))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_has_manifest_config_and_a_root_owned_layer() {
        let dir = std::env::temp_dir().join(format!("testenv-image-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("tool", root.join("bin/alias")).unwrap();
        let mut spec = ImageSpec::new("localhost/t:1", &["/bin/tool"]);
        spec.user = "65532:65532".into();
        spec.exposed_ports = vec!["8080/tcp".into()];
        let out = dir.join("t.tar");
        write_docker_archive(&root, &spec, &out).unwrap();

        let mut names = Vec::new();
        let mut manifest = String::new();
        let mut layer = Vec::new();
        let mut config = String::new();
        for entry in tar::Archive::new(File::open(&out).unwrap())
            .entries()
            .unwrap()
        {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            match name.as_str() {
                "manifest.json" => entry.read_to_string(&mut manifest).map(|_| ()).unwrap(),
                n if n.ends_with("layer.tar") => entry.read_to_end(&mut layer).map(|_| ()).unwrap(),
                n if n.ends_with(".json") => entry.read_to_string(&mut config).map(|_| ()).unwrap(),
                _ => {}
            }
            names.push(name);
        }
        let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "localhost/t:1");
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["config"]["Entrypoint"][0], "/bin/tool");
        assert!(config["config"]["ExposedPorts"].get("8080/tcp").is_some());
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", hex(&Sha256::digest(&layer)))
        );
        let mut layer_entries = Vec::new();
        for entry in tar::Archive::new(layer.as_slice()).entries().unwrap() {
            let entry = entry.unwrap();
            assert_eq!(
                (entry.header().uid().unwrap(), entry.header().gid().unwrap()),
                (0, 0)
            );
            layer_entries.push(entry.path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(layer_entries, ["bin", "bin/alias", "bin/tool"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
