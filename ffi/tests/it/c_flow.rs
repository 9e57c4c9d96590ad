//! `tests/c/flow.c`: the whole flow from C on the real model, then under valgrind.

use tailor::testing::TempDir;

use crate::support::{compile_c, crate_dir, real_model, run, run_any, tiny_model, which, Under};

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

/// The valgrind runs can fail: a program that leaks a returned string and an engine does.
#[test]
fn valgrind_catches_a_leak() {
    if !which("valgrind") || cfg!(target_arch = "aarch64") {
        eprintln!("NOTICE: valgrind not installed (or cross build); valgrind_catches_a_leak skipped");
        return;
    }
    let dir = TempDir::new("ffi-c-leak");
    let exe = dir.path("leak");
    compile_c(&[crate_dir().join("tests/c/leak.c")], &exe);
    let model = tiny_model(&dir);
    let (out, text) = run_any(&exe, &[model.to_str().unwrap()], Under::Valgrind);
    assert_eq!(out.status.code(), Some(99), "valgrind should report the leak:\n{text}");
    assert!(text.contains("definitely lost"), "{text}");
}
