//! Finding the built library, compiling C programs against it, running them (under qemu when
//! cross-testing, under valgrind when asked), and the models they run on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tailor::testing::{TempDir, TinyModel};
use tailor::ModelCache;

/// The directory holding the `libtailor_ffi.so` built with this test binary: `cargo test
/// -p tailor-ffi` builds the library's every crate type into the test binary's own
/// directory (`target/[TRIPLE/]release/deps`), in the same invocation, so the library tested
/// is always the one built from the sources now (`target/release/libtailor_ffi.so` is only
/// refreshed by `cargo build`).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target/<profile>/deps").to_path_buf();
    assert!(
        dir.join("libtailor_ffi.so").exists(),
        "{} has no libtailor_ffi.so (cargo test -p tailor-ffi builds it beside the tests)",
        dir.display()
    );
    dir
}

/// The crate's directory.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether this test binary is an AArch64 build run on another host under qemu-user: then C
/// programs are built with the cross compiler and run under `qemu-aarch64`.
fn cross_aarch64() -> bool {
    cfg!(target_arch = "aarch64") && which("aarch64-linux-gnu-gcc")
}

/// Whether `program` is on PATH.
pub fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Compiles C sources (from `tests/c/` or `examples/c/`) into `out`, against `include/` and
/// the shared library (with an rpath to it). Panics with the compiler's output on failure.
pub fn compile_c(sources: &[PathBuf], out: &Path) {
    let cc = if cross_aarch64() { "aarch64-linux-gnu-gcc".to_string() } else { std::env::var("CC").unwrap_or_else(|_| "cc".into()) };
    let lib = lib_dir();
    let mut cmd = Command::new(&cc);
    cmd.args(["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg("-I")
        .arg(crate_dir().join("tests/c"))
        .args(sources)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,--disable-new-dtags,-rpath,{}", lib.display()))
        .arg("-ltailor_ffi")
        .arg("-o")
        .arg(out);
    let output = cmd.output().unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(
        output.status.success(),
        "{cc} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// How to run a compiled program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Under {
    /// Directly (or under qemu when cross-testing).
    Plain,
    /// Under valgrind's memcheck: leaks and invalid accesses fail the run.
    Valgrind,
}

/// Runs `program` with `args`; panics (printing its output) unless it exits 0.
pub fn run(program: &Path, args: &[&str], under: Under) -> Output {
    let (output, text) = run_any(program, args, under);
    assert!(output.status.success(), "{text}");
    eprintln!("{text}");
    output
}

/// Runs `program` with `args` and returns its output and a printable account of it.
pub fn run_any(program: &Path, args: &[&str], under: Under) -> (Output, String) {
    let mut cmd = match under {
        Under::Valgrind => {
            let mut c = Command::new("valgrind");
            c.args([
                "--error-exitcode=99",
                "--leak-check=full",
                "--show-leak-kinds=definite,indirect",
                "--errors-for-leak-kinds=definite,indirect",
                "--track-origins=no",
                "--quiet",
            ]);
            let supp = crate_dir().join("tests/valgrind.supp");
            c.arg(format!("--suppressions={}", supp.display()));
            // Extra options for investigating a failure, e.g. `--gen-suppressions=all`.
            if let Ok(extra) = std::env::var("TAILOR_FFI_VALGRIND_ARGS") {
                c.args(extra.split_whitespace());
            }
            c.arg(program);
            c
        }
        Under::Plain if cross_aarch64() => {
            let mut c = Command::new("qemu-aarch64");
            c.args(["-L", "/usr/aarch64-linux-gnu"]).arg(program);
            c
        }
        Under::Plain => Command::new(program),
    };
    // cargo test puts target/<profile> on LD_LIBRARY_PATH, which would win over the rpath and
    // load a stale library from an earlier `cargo build`.
    cmd.args(args).env_remove("LD_LIBRARY_PATH");
    let output = cmd.output().unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    let text = format!(
        "--- {:?} {:?} ({:?}) exited {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>(),
        under,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

/// The model cache (`$TAILOR_HOME`, default `~/.cache/tailor`), as the `tailor` binary sees it.
pub fn model_cache() -> ModelCache {
    let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(ModelCache::default_root).expect("a cache directory");
    ModelCache::new(root)
}

/// The real model and embedder; panics with the fetch command when they are missing.
pub fn real_model() -> (PathBuf, PathBuf) {
    let cache = model_cache();
    let (model, embedder) = (cache.base_model_path(), cache.embedder_dir());
    assert!(
        model.exists() && embedder.exists(),
        "the real model is missing under {}: run `cargo run --release -p tailor-cli -- models fetch`",
        cache.root().display()
    );
    (model, embedder)
}

/// A tiny random llama GGUF written into `dir` (fast under valgrind and qemu).
pub fn tiny_model(dir: &TempDir) -> PathBuf {
    let path = dir.path("tiny.gguf");
    let mut tiny = TinyModel::default();
    tiny.context_length = 512;
    tiny.write(&path).expect("write the tiny model");
    path
}
