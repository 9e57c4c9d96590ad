//! `tests/py/flow.py`: the flow from Python through ctypes (standard library only).

use std::process::Command;

use tailor::testing::TempDir;

use crate::support::{crate_dir, lib_dir, real_model, which};

#[test]
fn python_ctypes_flow_real_model() {
    if cfg!(target_arch = "aarch64") || !which("python3") {
        eprintln!("NOTICE: python3 missing (or cross build); python_ctypes_flow_real_model skipped");
        return;
    }
    let dir = TempDir::new("ffi-python");
    let (model, embedder) = real_model();
    let lib = lib_dir().join("libtailor_ffi.so");
    let output = Command::new("python3")
        .arg(crate_dir().join("tests/py/flow.py"))
        .args([&lib, &model, &dir.0, &embedder])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run python3");
    let text = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("{text}");
    assert!(output.status.success() && text.contains("python flow: ok"), "python flow failed:\n{text}");
}
