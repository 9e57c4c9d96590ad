//! `examples/c/chat.c` compiles against the header and library, and chats (on a tiny model,
//! with a profile: a memory, a turn, feedback).

use std::io::Write;
use std::process::{Command, Stdio};

use tailor::testing::TempDir;

use crate::support::{compile_c, crate_dir, lib_dir, real_model, tiny_model};

#[test]
fn c_chat_example_builds_and_chats() {
    let dir = TempDir::new("ffi-example");
    let exe = dir.path("chat");
    compile_c(&[crate_dir().join("../examples/c/chat.c")], &exe);
    if cfg!(target_arch = "aarch64") {
        return; // compiled; running is covered by the flow test under qemu
    }
    let (_, embedder) = real_model();
    let model = tiny_model(&dir);
    let mut child = Command::new(&exe)
        .arg(&model)
        .arg(dir.path("me.db"))
        .arg(&embedder)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the chat example");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"/remember My dog is called Biscuit.\nHello there\n/fix Hi! How can I help?\n/quit\n")
        .expect("write to the chat");
    let out = child.wait_with_output().expect("chat output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(stdout.contains("(memory 1 stored)"), "{stdout}");
    assert!(stdout.contains("(feedback stored)"), "{stdout}");
}

/// The static library links into a C program as an iOS app links it (`libtailor_ffi.a` and
/// the system libraries Rust's std needs), and that program runs.
#[test]
fn c_chat_example_links_statically() {
    if cfg!(target_arch = "aarch64") {
        return;
    }
    let dir = TempDir::new("ffi-static");
    let exe = dir.path("chat-static");
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join("../examples/c/chat.c"))
        .arg(lib_dir().join("libtailor_ffi.a"))
        .args(["-lpthread", "-ldl", "-lm", "-lrt", "-lgcc_s", "-o"])
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(out.status.success(), "static link failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let model = tiny_model(&dir);
    let mut child = Command::new(&exe).arg(&model).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run");
    child.stdin.take().expect("stdin").write_all(b"Hi\n/quit\n").expect("write");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
