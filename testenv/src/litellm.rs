//! Real LiteLLM: cost maps byte for byte as a release ships them, and virtualenvs with the
//! real package installed from PyPI.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::lock::FileLock;
use crate::process::{run_capture, tail};

/// Where a LiteLLM wheel keeps the map it falls back to when it cannot fetch the live one.
const MAP_IN_WHEEL: &str = "litellm/model_prices_and_context_window_backup.json";

/// The path of the exact `model_prices_and_context_window_backup.json` bytes shipped in
/// LiteLLM `version`, cached as `target/litellm/litellm-VERSION.json`.
///
/// The first call per version downloads the wheel from PyPI (`python3 -m pip download`, so
/// pip's index settings apply) into `target/litellm/wheels` and extracts the file; later calls
/// only check that it exists. Concurrent callers wait on a file lock.
pub fn litellm_map(version: &str) -> Result<PathBuf> {
    check_version(version)?;
    let dir = crate::target_dir().join("litellm");
    let map = dir.join(format!("litellm-{version}.json"));
    if map.is_file() {
        return Ok(map);
    }
    let _lock = FileLock::acquire(
        &dir.join(".lock"),
        "waiting for another process that is downloading a LiteLLM wheel...",
    )?;
    if map.is_file() {
        return Ok(map);
    }
    let wheel = match find_wheel(&dir.join("wheels"), version) {
        Some(wheel) => wheel,
        None => download_wheel(&dir.join("wheels"), version)?,
    };
    extract_map(&wheel, &map)?;
    Ok(map)
}

/// Versions go into a pip requirement and a file name, so only version characters pass.
fn check_version(version: &str) -> Result<()> {
    let ok = !version.is_empty()
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    if !ok {
        bail!("{version:?} is not a LiteLLM version such as 1.110.2");
    }
    Ok(())
}

fn find_wheel(wheels: &Path, version: &str) -> Option<PathBuf> {
    let prefix = format!("litellm-{version}-");
    std::fs::read_dir(wheels)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
}

fn download_wheel(wheels: &Path, version: &str) -> Result<PathBuf> {
    eprintln!(
        "downloading the litellm {version} wheel from PyPI into {}...",
        wheels.display()
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input", "--quiet"])
        .arg(format!("litellm=={version}"))
        .arg("-d")
        .arg(wheels);
    run_capture(
        &mut cmd,
        &format!("python3 -m pip download litellm=={version}"),
    )
    .context("litellm_map needs python3 with pip and access to PyPI (or PIP_INDEX_URL)")?;
    find_wheel(wheels, version).with_context(|| {
        format!(
            "pip reported success but no litellm-{version}-*.whl is in {}",
            wheels.display()
        )
    })
}

/// Copies the map out of the wheel (a zip) with python3's zipfile, through a temporary file
/// so an interrupted extraction never leaves a truncated map behind.
fn extract_map(wheel: &Path, map: &Path) -> Result<()> {
    const SCRIPT: &str = "import sys, zipfile\n\
        data = zipfile.ZipFile(sys.argv[1]).read(sys.argv[2])\n\
        open(sys.argv[3], 'wb').write(data)\n";
    let partial = map.with_extension("json.partial");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SCRIPT])
        .arg(wheel)
        .arg(MAP_IN_WHEEL)
        .arg(&partial);
    run_capture(
        &mut cmd,
        &format!("extracting {MAP_IN_WHEEL} from {}", wheel.display()),
    )?;
    std::fs::rename(&partial, map).with_context(|| format!("writing {}", map.display()))
}

/// The venv the tests use to run the LiteLLM library (`import litellm`).
pub const LITELLM_LIB_VENV: (&str, &str) = ("lib", "litellm==1.110.2");

/// The venv the tests use to run a LiteLLM proxy (`litellm --port P`). `litellm[proxy]` 1.110.2
/// does not resolve from PyPI (one of its pinned extras is not published), 1.108.0 does.
pub const LITELLM_PROXY_VENV: (&str, &str) = ("proxy", "litellm[proxy]==1.108.0");

/// An older proxy the callback module (`integrations/litellm/costmap_reload.py`) is tested
/// with too: 1.106.12 (1.104.9, also with a `source_revision`, does not resolve from PyPI:
/// its pinned litellm-proxy-extras 0.4.102.post2 is not published).
pub const LITELLM_OLDER_PROXY_VENV: (&str, &str) = ("proxy-1_106", "litellm[proxy]==1.106.12");

/// The type checker the callback module is held to (`mypy --strict`, run against each proxy
/// venv's LiteLLM by `tests/litellm.rs`).
pub const MYPY_VENV: (&str, &str) = ("mypy", "mypy==2.4.1");

/// Written into a venv last, holding the requirement: a venv without it (a pip install that
/// failed or was interrupted) or with another requirement is rebuilt from scratch.
const VENV_STAMP: &str = ".costmap-venv";

/// A Python virtualenv `target/litellm/venvs/NAME` with the pinned `requirement` installed
/// (for example `litellm==1.110.2` or `litellm[proxy]==1.108.0`); returns the venv's directory
/// (its interpreter is `bin/python`).
///
/// The first call creates it with `python3 -m venv` and `pip install REQUIREMENT` (pip's index
/// settings apply) and stamps it with the requirement; later calls only check the stamp.
/// Concurrent callers, in any process, wait on a file lock. A failed install is an error
/// carrying the tail of pip's log, which stays in `target/litellm/venvs/NAME.log`.
pub fn litellm_venv(name: &str, requirement: &str) -> Result<PathBuf> {
    check_venv_name(name)?;
    check_requirement(requirement)?;
    let venvs = crate::target_dir().join("litellm").join("venvs");
    let venv = venvs.join(name);
    let stamp = format!("{requirement}\n");
    if venv_is_fresh(&venv, &stamp) {
        return Ok(venv);
    }
    let _lock = FileLock::acquire(
        &venvs.join(format!("{name}.lock")),
        &format!("waiting for another process that is installing {requirement} into {name}..."),
    )?;
    if venv_is_fresh(&venv, &stamp) {
        return Ok(venv);
    }
    create_venv(&venv, requirement, &venvs.join(format!("{name}.log")))?;
    std::fs::write(venv.join(VENV_STAMP), &stamp)
        .with_context(|| format!("writing {}", venv.join(VENV_STAMP).display()))?;
    Ok(venv)
}

fn venv_is_fresh(venv: &Path, stamp: &str) -> bool {
    std::fs::read_to_string(venv.join(VENV_STAMP)).is_ok_and(|s| s == stamp)
        && venv.join("bin").join("python").is_file()
}

/// Names become a directory name.
fn check_venv_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !ok {
        bail!("{name:?} is not a venv name (letters, digits, - and _)");
    }
    Ok(())
}

/// One pinned requirement: `NAME[EXTRAS]==VERSION`, so the venv is reproducible and the stamp
/// means something.
fn check_requirement(requirement: &str) -> Result<()> {
    let pinned = requirement.split_once("==").is_some_and(|(name, version)| {
        let name_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '[' | ']' | ',')
            });
        name_ok && check_version(version).is_ok()
    });
    if !pinned {
        bail!("{requirement:?} is not one pinned requirement such as litellm[proxy]==1.108.0");
    }
    Ok(())
}

/// Creates the venv from scratch (a half-built one is removed first) and installs into it,
/// with pip's whole output in `log`.
fn create_venv(venv: &Path, requirement: &str, log: &Path) -> Result<()> {
    let started = Instant::now();
    eprintln!(
        "creating the Python venv {} with {requirement} (pip log: {})...",
        venv.display(),
        log.display()
    );
    if venv.exists() {
        std::fs::remove_dir_all(venv)
            .with_context(|| format!("removing the stale venv {}", venv.display()))?;
    }
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "venv"]).arg(venv);
    run_capture(&mut cmd, &format!("python3 -m venv {}", venv.display()))
        .context("litellm_venv needs python3 with the venv module")?;

    let output = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(venv.join("bin").join("python"));
    cmd.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
    ])
    .arg(requirement)
    .stdin(Stdio::null())
    .stdout(
        output
            .try_clone()
            .context("duplicating the log file handle")?,
    )
    .stderr(output);
    let status = cmd
        .status()
        .with_context(|| format!("starting pip install {requirement}"))?;
    if !status.success() {
        bail!(
            "pip install {requirement} into {} failed ({status}); it needs access to PyPI (or \
             PIP_INDEX_URL). The end of {}:\n{}",
            venv.display(),
            log.display(),
            tail(log, 40)
        );
    }
    eprintln!(
        "installed {requirement} into {} in {:.1} s",
        venv.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked() {
        for good in ["1.110.2", "1.80.0rc1", "1.2.3+local"] {
            check_version(good).unwrap();
        }
        for bad in ["", "latest", "1.0 ; rm", "../1", "1.0/x"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn venv_names_and_requirements_are_checked() {
        for good in ["lib", "proxy", "lib_2-x"] {
            check_venv_name(good).unwrap();
        }
        for bad in ["", "../x", "a b", "x/y"] {
            assert!(check_venv_name(bad).is_err(), "{bad}");
        }
        for good in [
            "litellm==1.110.2",
            "litellm[proxy]==1.108.0",
            "a[b,c]==1.0rc1",
        ] {
            check_requirement(good).unwrap();
        }
        for bad in [
            "litellm",
            "litellm>=1.0",
            "litellm==",
            "==1.0",
            "litellm==1.0; x",
            "-e .==1",
            "-r==1.0",
        ] {
            assert!(check_requirement(bad).is_err(), "{bad}");
        }
    }

    /// Sizes published with the two releases the operator's tests use.
    #[test]
    fn maps_are_the_exact_release_bytes() {
        let expected = [("1.110.2", 3_483_222), ("1.108.0", 2_965_453)];
        for (version, size) in expected {
            let map = litellm_map(version).unwrap();
            assert_eq!(std::fs::metadata(&map).unwrap().len(), size, "{version}");
        }
    }
}
