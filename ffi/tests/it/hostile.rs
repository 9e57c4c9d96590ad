//! `tests/c/hostile.c`: NULL for every pointer argument, invalid UTF-8 and JSON, a freed
//! session's cancel token, a session used from two threads, concurrent sessions on one engine.

use tailor::testing::TempDir;

use crate::support::{compile_c, crate_dir, real_model, run, tiny_model, which, Under};

fn build(dir: &TempDir) -> std::path::PathBuf {
    let exe = dir.path("hostile");
    compile_c(&[crate_dir().join("tests/c/hostile.c")], &exe);
    exe
}

#[test]
fn c_hostile_calls_real_model() {
    let dir = TempDir::new("ffi-c-hostile");
    let exe = build(&dir);
    let (model, embedder) = real_model();
    let model = if cfg!(target_arch = "aarch64") { tiny_model(&dir) } else { model };
    let out = run(&exe, &[model.to_str().unwrap(), dir.0.to_str().unwrap(), embedder.to_str().unwrap()], Under::Plain);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hostile: ok"));
}

#[test]
fn c_hostile_calls_valgrind() {
    if !which("valgrind") || cfg!(target_arch = "aarch64") {
        eprintln!("NOTICE: valgrind not installed (or cross build); c_hostile_calls_valgrind skipped");
        return;
    }
    let dir = TempDir::new("ffi-c-hostile-vg");
    let exe = build(&dir);
    let (_, embedder) = real_model();
    let model = tiny_model(&dir);
    let out = run(&exe, &[model.to_str().unwrap(), dir.0.to_str().unwrap(), embedder.to_str().unwrap()], Under::Valgrind);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hostile: ok"));
}
