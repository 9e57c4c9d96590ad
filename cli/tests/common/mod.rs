//! Helpers shared by the CLI's behaviour tests: the venvs holding the official Python clients
//! and the model cache.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The python of a venv under the target dir named `name` with `requirement` installed, made
/// once (a marker file naming the requirement records a finished install).
pub fn venv_python(name: &str, requirement: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = dir.join("bin").join("python");
    let marker = dir.join(".installed");
    if std::fs::read_to_string(&marker).is_ok_and(|r| r == requirement) {
        return python;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ok = Command::new("python3").args(["-m", "venv"]).arg(&dir).status().expect("python3 runs");
    assert!(ok.success(), "python3 -m venv failed");
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", requirement])
        .status()
        .unwrap();
    assert!(ok.success(), "pip install {requirement} failed");
    std::fs::write(&marker, requirement).unwrap();
    python
}

/// The model cache (`$TAILOR_HOME`, else the default), with the real model checked present.
pub fn model_cache() -> tailor::ModelCache {
    let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(tailor::ModelCache::default_root).expect("a cache dir");
    let cache = tailor::ModelCache::new(root);
    assert!(
        cache.base_model_path().exists(),
        "the real model is missing at {}: run `tailor models fetch`",
        cache.base_model_path().display()
    );
    cache
}
