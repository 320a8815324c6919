//! Real LiteLLM cost maps, byte for byte as a release ships them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::lock::FileLock;
use crate::process::run_capture;

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
