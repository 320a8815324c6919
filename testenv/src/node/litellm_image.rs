//! The LiteLLM proxy image under the tag the examples use, `ghcr.io/berriai/litellm:main-stable`:
//! a Debian bookworm rootfs from debootstrap (cached as a tarball, the slow part) with the
//! project's pinned `litellm[proxy]` installed by pip inside it, and upstream's entrypoint
//! (a script in /app/docker that execs `litellm` with the arguments, `--port 4000` by default).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use super::image::{ImageSpec, write_docker_archive};
use super::images::images_dir;
use crate::lock::FileLock;
use crate::process::run_capture;

/// The image name the examples and LiteLLM's docs use.
pub const LITELLM_IMAGE: &str = "ghcr.io/berriai/litellm:main-stable";
const SUITE: &str = "bookworm";
/// python3 with its full standard library and pip (to install LiteLLM inside the rootfs).
const PACKAGES: &str = "python3,python3-pip,ca-certificates";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Upstream's entrypoint is a shell script run from WORKDIR /app that execs `litellm "$@"`
/// (with optional tracing wrappers this image does not carry).
const ENTRYPOINT_SCRIPT: &str =
    "#!/bin/sh\n# Runs the LiteLLM proxy with the container's arguments.\nexec litellm \"$@\"\n";

/// The image's spec: upstream's WORKDIR, ENTRYPOINT, CMD and EXPOSE.
pub fn litellm_image_spec() -> ImageSpec {
    let mut spec = ImageSpec::new(LITELLM_IMAGE, &["docker/prod_entrypoint.sh"]);
    spec.working_dir = "/app".into();
    spec.cmd = vec!["--port".into(), "4000".into()];
    spec.exposed_ports = vec!["4000/tcp".into()];
    spec
}

/// The docker archive of the LiteLLM image with `requirement` (e.g.
/// `litellm[proxy]==1.108.0`), made unless one for the same requirement exists.
pub fn litellm_image_archive(requirement: &str) -> Result<PathBuf> {
    let dir = images_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = FileLock::acquire(
        &dir.join("litellm.lock"),
        "waiting for another process that is making the LiteLLM image...",
    )?;
    let out = dir.join("litellm.tar");
    let stamp_file = dir.join("litellm.stamp");
    let stamp = format!(
        "{requirement}\n{:?}\n{ENTRYPOINT_SCRIPT}",
        litellm_image_spec()
    );
    if out.is_file() && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(out);
    }
    let base = base_rootfs_tarball(&dir)?;
    let started = Instant::now();
    let root = dir.join("litellm.rootfs");
    remove_dir(&root)?;
    std::fs::create_dir_all(&root)?;
    let mut archive = tar::Archive::new(File::open(&base)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive
        .unpack(&root)
        .with_context(|| format!("unpacking {}", base.display()))?;
    // pip inside the rootfs, so the installed scripts and compiled files are the image's own;
    // it needs the host's resolver to reach PyPI (or PIP_INDEX_URL, passed on).
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))
        .context("copying /etc/resolv.conf into the rootfs")?;
    // The host's trust store too (pip's own setting if there is one): a machine behind a
    // TLS-inspecting proxy trusts a CA that the fresh rootfs does not know. Removed after.
    let host_ca = std::env::var_os("PIP_CERT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let pip_ca = root.join("tmp/pip-ca.crt");
    std::fs::copy(&host_ca, &pip_ca)
        .with_context(|| format!("copying {} into the rootfs", host_ca.display()))?;
    let mut pip = Command::new("chroot");
    pip.arg(&root)
        .args([
            "python3",
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--break-system-packages",
        ])
        .arg(requirement)
        // Every variable pip and requests read for their trust store, else a host path set
        // in the environment wins and means the rootfs's own bundle inside the chroot.
        .env("PIP_CERT", "/tmp/pip-ca.crt")
        .env("REQUESTS_CA_BUNDLE", "/tmp/pip-ca.crt")
        .env("SSL_CERT_FILE", "/tmp/pip-ca.crt")
        // A host wheel directory means nothing inside the rootfs.
        .env_remove("PIP_FIND_LINKS");
    run_capture(
        &mut pip,
        &format!("pip install {requirement} in the LiteLLM rootfs"),
    )?;
    std::fs::remove_file(&pip_ca)?;
    std::fs::remove_file(root.join("etc/resolv.conf"))?;
    let app = root.join("app/docker");
    std::fs::create_dir_all(&app)?;
    let script = app.join("prod_entrypoint.sh");
    std::fs::write(&script, ENTRYPOINT_SCRIPT)?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    write_docker_archive(&root, &litellm_image_spec(), &out)?;
    remove_dir(&root)?;
    std::fs::write(&stamp_file, stamp)?;
    eprintln!(
        "made {LITELLM_IMAGE} with {requirement} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// The debootstrap'd rootfs as a tarball, made once (minutes: download and unpack).
fn base_rootfs_tarball(dir: &Path) -> Result<PathBuf> {
    let tarball = dir.join(format!("debian-{SUITE}-python.tar"));
    if tarball.is_file() {
        return Ok(tarball);
    }
    let started = Instant::now();
    let root = dir.join("debootstrap.rootfs");
    remove_dir(&root)?;
    // The image is made before the node comes up (which installs what it needs): the
    // packages, debootstrap among them, are installed here too when missing.
    super::ensure_packages()?;
    eprintln!("debootstrap {SUITE} ({PACKAGES}) for the LiteLLM image (a few minutes, once)...");
    run_capture(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
            .arg(&root)
            .arg(mirror()),
        "debootstrap (the LiteLLM image needs the debootstrap package)",
    )?;
    // What no image needs: package caches and lists, docs, man pages, locales.
    for cache in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
    ] {
        remove_dir(&root.join(cache))?;
        std::fs::create_dir_all(root.join(cache))?;
    }
    let partial = tarball.with_extension("partial");
    let mut builder = tar::Builder::new(BufWriter::new(File::create(&partial)?));
    // Keep symlinks as symlinks: the rootfs is full of absolute ones that point at the host
    // when followed.
    builder.follow_symlinks(false);
    builder.append_dir_all(".", &root)?;
    builder.into_inner()?;
    std::fs::rename(&partial, &tarball)?;
    remove_dir(&root)?;
    eprintln!(
        "debootstrap'd {} in {:.0} s",
        tarball.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(tarball)
}

/// The Debian mirror apt uses here (deb822 `URIs:` or a `deb` line), else deb.debian.org.
fn mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(entries.flatten().map(|e| e.path()));
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|line| {
            let line = line.trim();
            let uri = line.strip_prefix("URIs:").map(str::trim).or_else(|| {
                line.strip_prefix("deb ")
                    .and_then(|l| l.split_whitespace().next())
            })?;
            uri.trim_end_matches('/')
                .ends_with("/debian")
                .then(|| uri.to_owned())
        })
        .next()
        .unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}
