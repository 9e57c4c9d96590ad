//! `tailor mcp` driven over stdio by the official MCP Python client (PyPI `mcp`, in a venv this
//! test makes under target/): the tools listed, remember → recall → forget, the memory
//! resources, feedback, tool errors, and the real SmolLM2 answering with a remembered fact
//! that was retrieved into its prompt. Needs python3 with venv, the package index, and the
//! fetched models (`tailor models fetch`, which scripts/test.sh runs first).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The venv with the `mcp` client, made once (a marker file records a finished install).
fn venv_python() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mcp-venv");
    let python = dir.join("bin").join("python");
    let marker = dir.join(".mcp-installed");
    if marker.exists() {
        return python;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ok = Command::new("python3").args(["-m", "venv"]).arg(&dir).status().expect("python3 runs");
    assert!(ok.success(), "python3 -m venv failed");
    let ok = Command::new(&python).args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "mcp>=2.3,<3"]).status().unwrap();
    assert!(ok.success(), "pip install mcp failed");
    std::fs::write(&marker, b"").unwrap();
    python
}

fn model_cache() -> tailor::ModelCache {
    let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(tailor::ModelCache::default_root).expect("a cache dir");
    tailor::ModelCache::new(root)
}

/// Runs the client script in `mode` against a fresh profile; returns its findings.
fn drive(python: &Path, mode: &str, ask: bool) -> serde_json::Value {
    let cache = model_cache();
    assert!(cache.base_model_path().exists(), "the real model is missing at {}: run `tailor models fetch`", cache.base_model_path().display());
    let dir = tailor::testing::TempDir::new("mcp");
    let profile = dir.0.join("me.db");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_py/client.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg(env!("CARGO_BIN_EXE_tailor")).arg(&profile).arg(mode);
    cmd.arg("--model").arg(cache.base_model_path());
    cmd.env("TAILOR_HOME", cache.root());
    if ask {
        cmd.arg("--ask");
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the MCP client failed ({mode}):\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{mode}: {stdout}");
    serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn official_python_client_over_stdio() {
    let python = venv_python();
    // The protocol the client picks by itself (server/discover, falling back to initialize).
    let auto = drive(&python, "auto", true);
    let answer = &auto["answer"];
    assert!(answer["answer"].as_str().unwrap().contains("Biscuit"), "{answer}");
    assert_eq!(auto["tools"].as_array().unwrap().len(), 5);
    // The initialize handshake, as assistants on the 2025 revisions connect.
    let legacy = drive(&python, "legacy", false);
    assert!(legacy["protocol_version"].as_str().unwrap().starts_with("2025-"), "{legacy}");
}
