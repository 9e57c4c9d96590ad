//! `tests/c/flow.c`: the whole flow from C on the real model, then under valgrind.

use tailor::testing::TempDir;

use crate::support::{compile_c, crate_dir, real_model, run, tiny_model, which, Under};

fn build(dir: &TempDir) -> std::path::PathBuf {
    let exe = dir.path("flow");
    compile_c(&[crate_dir().join("tests/c/flow.c")], &exe);
    exe
}

/// The real model, plain run (under qemu on an AArch64 cross build, with the tiny model).
#[test]
fn c_flow_real_model() {
    let dir = TempDir::new("ffi-c-flow");
    let exe = build(&dir);
    let (model, embedder) = real_model();
    let model = if cfg!(target_arch = "aarch64") { tiny_model(&dir) } else { model };
    let out = run(&exe, &[model.to_str().unwrap(), dir.0.to_str().unwrap(), embedder.to_str().unwrap()], Under::Plain);
    assert!(String::from_utf8_lossy(&out.stdout).contains("flow: ok"));
}

/// The same flow under valgrind (no leaks, no invalid accesses), on a tiny model.
#[test]
fn c_flow_valgrind() {
    if !which("valgrind") || cfg!(target_arch = "aarch64") {
        eprintln!("NOTICE: valgrind not installed (or cross build); c_flow_valgrind skipped");
        return;
    }
    let dir = TempDir::new("ffi-c-flow-vg");
    let exe = build(&dir);
    let (_, embedder) = real_model();
    let model = tiny_model(&dir);
    let out = run(&exe, &[model.to_str().unwrap(), dir.0.to_str().unwrap(), embedder.to_str().unwrap(), "8"], Under::Valgrind);
    assert!(String::from_utf8_lossy(&out.stdout).contains("flow: ok"));
}
