//! Helpers shared by the CLI's behaviour tests: the venvs holding the official Python clients
//! and the model cache.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The python of a venv under the target dir named `name` with `requirements` installed (one
/// requirement, or several separated by whitespace, e.g. `"openai==2.54.0 jsonschema==4.25.1"`),
/// made once (a marker file naming the requirements records a finished install). Tests of one
/// binary run on parallel threads and may share a venv: one makes it while the others wait.
pub fn venv_python(name: &str, requirements: &str) -> PathBuf {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = dir.join("bin").join("python");
    let marker = dir.join(".installed");
    if std::fs::read_to_string(&marker).is_ok_and(|r| r == requirements) {
        return python;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ok = Command::new("python3").args(["-m", "venv"]).arg(&dir).status().expect("python3 runs");
    assert!(ok.success(), "python3 -m venv failed");
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(requirements.split_whitespace())
        .status()
        .unwrap();
    assert!(ok.success(), "pip install {requirements} failed");
    std::fs::write(&marker, requirements).unwrap();
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
