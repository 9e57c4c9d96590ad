//! `tests/c/flow.c`: the whole flow from C on the real model, then under valgrind.

use std::path::{Path, PathBuf};

use tailor::adapters::{SteeringMeta, SteeringVector};
use tailor::testing::TempDir;
use tailor::{Engine, EngineConfig};

use crate::support::{compile_c, crate_dir, real_model, run, run_any, tiny_model, which, Under};

/// A steering vector for `model` (pseudo-random unit directions on layers 0 and 1, so a
/// scale of 8 changes a greedy answer), saved in `dir`.
fn steering_vector(model: &Path, dir: &TempDir) -> PathBuf {
    let engine = Engine::load(model, EngineConfig::default()).expect("load the model");
    let d = engine.model_config().d_model;
    let mut v = SteeringVector::new(d, SteeringMeta::now("test", "ffi flow", None)).expect("vector");
    for layer in 0..2 {
        let mut dir: Vec<f32> = (0..d).map(|i| (((i * 7919 + layer * 104_729) % 1000) as f32 / 500.0) - 1.0).collect();
        let norm = dir.iter().map(|x| x * x).sum::<f32>().sqrt();
        dir.iter_mut().for_each(|x| *x /= norm);
        v.insert(layer, dir).expect("direction");
    }
    let path = dir.path("push.safetensors");
    v.save(&path).expect("save the steering vector");
    path
}

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
    let steer = steering_vector(&model, &dir);
    let args = [model.to_str().unwrap(), dir.0.to_str().unwrap(), embedder.to_str().unwrap(), "24", steer.to_str().unwrap()];
    let out = run(&exe, &args, Under::Plain);
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
    let steer = steering_vector(&model, &dir);
    let args = [model.to_str().unwrap(), dir.0.to_str().unwrap(), embedder.to_str().unwrap(), "8", steer.to_str().unwrap()];
    let out = run(&exe, &args, Under::Valgrind);
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
