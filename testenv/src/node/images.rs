//! The node's images, made locally (no registry, no container engine) as docker archives under
//! `target/node/images/` and imported into containerd's `k8s.io` namespace: pause, busybox
//! (Debian's busybox-static), CoreDNS and the operator under the names users see.

use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::image::{ImageSpec, write_docker_archive};
use super::{BUSYBOX_IMAGE, COREDNS_IMAGE, PAUSE_IMAGE};
use crate::process::run_capture;

/// The operator image's repository (the chart's `image.repository`).
pub const OPERATOR_REPOSITORY: &str = "ghcr.io/costmap-operator/costmap-operator";
/// The non-root user of the operator image (distroless' `nonroot`, as the Dockerfile says).
const OPERATOR_USER: &str = "65532:65532";

const PAUSE_C: &str = include_str!("pause.c");

/// One image: its spec, the archive, and how to make its root filesystem.
pub(crate) struct Image {
    pub spec: ImageSpec,
    /// Files whose content decides the image (binaries copied in); their size and mtime go
    /// into the stamp, so a rebuilt binary makes a new image.
    inputs: Vec<PathBuf>,
    fill: fn(&Path, &[PathBuf]) -> Result<()>,
}

/// Where the archives and the root filesystems they are made from live.
pub(crate) fn images_dir() -> PathBuf {
    crate::target_dir().join("node").join("images")
}

pub(crate) fn pause() -> Image {
    Image {
        spec: ImageSpec::new(PAUSE_IMAGE, &["/pause"]),
        inputs: Vec::new(),
        fill: fill_pause,
    }
}

pub(crate) fn busybox() -> Image {
    let mut spec = ImageSpec::new(BUSYBOX_IMAGE, &[]);
    spec.cmd = vec!["sh".into()];
    Image {
        spec,
        inputs: vec![PathBuf::from("/bin/busybox")],
        fill: fill_busybox,
    }
}

pub(crate) fn coredns(coredns_bin: &Path) -> Image {
    Image {
        spec: ImageSpec::new(COREDNS_IMAGE, &["/coredns"]),
        inputs: vec![coredns_bin.to_owned()],
        fill: fill_single_binary,
    }
}

/// The operator image's spec: what the Dockerfile's final stage says (user, entrypoint, cmd,
/// exposed port), under the chart's `repository:appVersion`.
pub fn operator_image_spec() -> Result<ImageSpec> {
    let mut spec = ImageSpec::new(
        &format!("{OPERATOR_REPOSITORY}:{}", chart_app_version()?),
        &["/costmap-operator"],
    );
    spec.user = OPERATOR_USER.into();
    spec.cmd = vec!["run".into()];
    spec.exposed_ports = vec!["8080/tcp".into()];
    Ok(spec)
}

/// The operator image's docker archive, made from `release_binary` (cached by its size and
/// mtime). Refuses when the image would differ from what the Dockerfile says.
pub fn operator_image_archive(release_binary: &Path) -> Result<PathBuf> {
    let spec = operator_image_spec()?;
    let dockerfile_path = crate::workspace_root().join("Dockerfile");
    let dockerfile = std::fs::read_to_string(&dockerfile_path)
        .with_context(|| format!("reading {}", dockerfile_path.display()))?;
    check_spec_against_dockerfile(&spec, &dockerfile)
        .context("the operator image and the Dockerfile disagree")?;
    Image {
        spec,
        inputs: vec![release_binary.to_owned()],
        fill: fill_operator,
    }
    .archive()
}

/// The chart's `appVersion` (the operator image's default tag).
pub fn chart_app_version() -> Result<String> {
    let chart = crate::workspace_root().join("charts/costmap-operator/Chart.yaml");
    let text =
        std::fs::read_to_string(&chart).with_context(|| format!("reading {}", chart.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .with_context(|| format!("no appVersion in {}", chart.display()))
}

impl Image {
    /// The docker archive of this image, made unless the one there has the same stamp.
    pub(crate) fn archive(&self) -> Result<PathBuf> {
        let dir = images_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = file_name(&self.spec.reference);
        let out = dir.join(format!("{name}.tar"));
        let stamp_file = dir.join(format!("{name}.stamp"));
        let stamp = self.stamp()?;
        if out.is_file() && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
            return Ok(out);
        }
        let root = dir.join(format!("{name}.rootfs"));
        remove_dir(&root)?;
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        (self.fill)(&root, &self.inputs)
            .with_context(|| format!("making the root filesystem of {}", self.spec.reference))?;
        write_docker_archive(&root, &self.spec, &out)?;
        remove_dir(&root)?;
        std::fs::write(&stamp_file, stamp)
            .with_context(|| format!("writing {}", stamp_file.display()))?;
        Ok(out)
    }

    fn stamp(&self) -> Result<String> {
        let mut hasher = DefaultHasher::new();
        hasher.write(format!("{:?}", self.spec).as_bytes());
        hasher.write(PAUSE_C.as_bytes());
        for input in &self.inputs {
            let meta = std::fs::metadata(input)
                .with_context(|| format!("{} is missing", input.display()))?;
            hasher.write(input.as_os_str().as_encoded_bytes());
            hasher.write_u64(meta.len());
            hasher.write(format!("{:?}", meta.modified().ok()).as_bytes());
        }
        Ok(format!("{:016x}\n", hasher.finish()))
    }
}

/// `ghcr.io/a/b:1.0` -> `ghcr.io_a_b_1.0`.
fn file_name(reference: &str) -> String {
    reference.replace(['/', ':'], "_")
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn fill_pause(root: &Path, _: &[PathBuf]) -> Result<()> {
    let source = root.with_extension("c");
    std::fs::write(&source, PAUSE_C)?;
    let result = run_capture(
        Command::new("gcc")
            .args(["-O2", "-static", "-s", "-o"])
            .arg(root.join("pause"))
            .arg(&source),
        "gcc -static pause.c (the pause image needs gcc and libc6-dev)",
    );
    let _ = std::fs::remove_file(&source);
    result.map(|_| ())
}

fn fill_busybox(root: &Path, inputs: &[PathBuf]) -> Result<()> {
    let busybox = inputs.first().context("no busybox")?;
    let listing = run_capture(Command::new(busybox).arg("--list"), "busybox --list")?;
    for dir in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    for applet in listing.split_whitespace().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    set_mode(&root.join("tmp"), 0o1777)
}

fn fill_single_binary(root: &Path, inputs: &[PathBuf]) -> Result<()> {
    let binary = inputs.first().context("no binary")?;
    let name = binary.file_name().context("a binary without a name")?;
    std::fs::copy(binary, root.join(name))
        .with_context(|| format!("copying {}", binary.display()))?;
    Ok(())
}

/// The release binary plus exactly the shared libraries `ldd` says it loads (this machine has
/// no musl target for a static build), the nonroot user and a world-writable /tmp, like
/// distroless/static:nonroot.
fn fill_operator(root: &Path, inputs: &[PathBuf]) -> Result<()> {
    let binary = inputs.first().context("no operator binary")?;
    std::fs::copy(binary, root.join("costmap-operator"))
        .with_context(|| format!("copying {}", binary.display()))?;
    let ldd = run_capture(Command::new("ldd").arg(binary), "ldd costmap-operator")?;
    for library in shared_libraries(&ldd) {
        let inside = root.join(library.strip_prefix("/").unwrap_or(&library));
        if let Some(parent) = inside.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // fs::copy follows the symlinks (libc.so.6 -> libc-2.36.so) to the real file.
        std::fs::copy(&library, &inside)
            .with_context(|| format!("copying {}", library.display()))?;
    }
    std::fs::create_dir_all(root.join("etc/ssl/certs"))?;
    std::fs::create_dir_all(root.join("tmp"))?;
    std::fs::create_dir_all(root.join("home/nonroot"))?;
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n")?;
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.is_file() {
        std::fs::copy(bundle, root.join("etc/ssl/certs/ca-certificates.crt"))?;
    }
    set_mode(&root.join("tmp"), 0o1777)
}

/// The absolute paths of the libraries in `ldd` output (`libc.so.6 => /lib/.../libc.so.6
/// (0x...)` and the loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file).
fn shared_libraries(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Imports docker archives into containerd's `k8s.io` namespace (the one its CRI plugin uses).
pub(crate) fn import(socket: &Path, archives: &[PathBuf]) -> Result<()> {
    for archive in archives {
        run_capture(
            Command::new("ctr")
                .arg("--address")
                .arg(socket)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(archive),
            &format!("ctr images import {}", archive.display()),
        )?;
    }
    Ok(())
}

/// Checks that a built image does what the Dockerfile says, since no engine here can run it.
fn check_spec_against_dockerfile(spec: &ImageSpec, dockerfile: &str) -> Result<()> {
    // The final stage: everything after the last FROM.
    let stage = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .context("the Dockerfile has no FROM")?;
    let instruction = |name: &str| -> Option<String> {
        stage
            .lines()
            .filter_map(|l| l.strip_prefix(name).map(|rest| rest.trim().to_owned()))
            .next_back()
    };
    let json_list = |name: &str| -> Result<Vec<String>> {
        let value = instruction(name).with_context(|| format!("no {name} in the final stage"))?;
        serde_json::from_str(&value).with_context(|| format!("{name} {value} is not a JSON list"))
    };
    let user = instruction("USER ").context("no USER in the final stage")?;
    let expose = instruction("EXPOSE ").context("no EXPOSE in the final stage")?;
    let expose: Vec<String> = expose
        .split_whitespace()
        .map(|p| {
            if p.contains('/') {
                p.to_owned()
            } else {
                format!("{p}/tcp")
            }
        })
        .collect();
    if spec.user != user {
        bail!("the Dockerfile runs as {user}, the image as {}", spec.user);
    }
    if spec.entrypoint != json_list("ENTRYPOINT ")? {
        bail!("ENTRYPOINT differs: image {:?}", spec.entrypoint);
    }
    if spec.cmd != json_list("CMD ")? {
        bail!("CMD differs: image {:?}", spec.cmd);
    }
    if spec.exposed_ports != expose {
        bail!(
            "EXPOSE {expose:?} in the Dockerfile, {:?} in the image",
            spec.exposed_ports
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_image_matches_the_dockerfile() {
        let dockerfile =
            std::fs::read_to_string(crate::workspace_root().join("Dockerfile")).unwrap();
        let spec = operator_image_spec().unwrap();
        check_spec_against_dockerfile(&spec, &dockerfile).unwrap();
        assert!(
            spec.reference
                .starts_with("ghcr.io/costmap-operator/costmap-operator:")
        );
    }

    #[test]
    fn a_drift_from_the_dockerfile_is_caught() {
        let dockerfile =
            std::fs::read_to_string(crate::workspace_root().join("Dockerfile")).unwrap();
        let mut spec = operator_image_spec().unwrap();
        spec.user = "0:0".into();
        assert!(check_spec_against_dockerfile(&spec, &dockerfile).is_err());
        let mut spec = operator_image_spec().unwrap();
        spec.exposed_ports = vec!["8090/tcp".into()];
        assert!(check_spec_against_dockerfile(&spec, &dockerfile).is_err());
        let mut spec = operator_image_spec().unwrap();
        spec.entrypoint = vec!["/bin/sh".into()];
        assert!(check_spec_against_dockerfile(&spec, &dockerfile).is_err());
    }

    #[test]
    fn ldd_output_gives_the_library_files() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x7f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            shared_libraries(ldd),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
