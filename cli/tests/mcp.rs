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

/// Raw JSON-RPC on the 2025-06-18 revision (as Claude Desktop speaks it): every stdout line is
/// a JSON-RPC message, a line that is not JSON and a wrongly typed argument end nothing, and the
/// server exits cleanly when the client closes stdin. A model that cannot load fails at start
/// with the reason on stderr and nothing on stdout.
#[test]
fn raw_protocol_and_startup_errors() {
    use std::io::Write;
    use std::process::Stdio;
    let cache = model_cache();
    let dir = tailor::testing::TempDir::new("mcp-raw");
    let profile = dir.0.join("me.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tailor"))
        .args(["mcp", "--threads", "2", "--profile"])
        .arg(&profile)
        .arg("--model")
        .arg(cache.base_model_path())
        .env("TAILOR_HOME", cache.root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // Sends one line; with an id, reads until its answer (every line must be JSON-RPC).
    let mut call = |line: &str, id: Option<i64>| -> serde_json::Value {
        use std::io::BufRead;
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let Some(id) = id else { return serde_json::Value::Null };
        loop {
            let mut l = String::new();
            assert!(stdout.read_line(&mut l).unwrap() > 0, "stdout closed before the answer to {id}");
            let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON on stdout ({e}): {l}"));
            assert_eq!(v["jsonrpc"], "2.0", "{l}");
            if v["id"].as_i64() == Some(id) {
                return v;
            }
        }
    };
    let init = call(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#,
        Some(1),
    );
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(init["result"]["serverInfo"]["name"], "tailor");
    call(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#, None);
    call("this is not JSON", None);
    let bad = call(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"recall","arguments":{"query":5}}}"#, Some(2));
    assert_eq!(bad["result"]["isError"], true, "{bad}");
    let added = call(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"remember","arguments":{"text":"I live in Lyon."}}}"#, Some(3));
    assert_eq!(added["result"]["structuredContent"]["action"], "inserted", "{added}");
    let read = call(r#"{"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"memory://1"}}"#, Some(4));
    assert_eq!(read["result"]["contents"][0]["text"], "I live in Lyon.", "{read}");
    let pong = call(r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#, Some(5));
    assert!(pong["result"].is_object(), "{pong}");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{rest}");
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_tailor"))
        .args(["mcp", "--profile"])
        .arg(&profile)
        .args(["--model", "/nonexistent/model.gguf"])
        .env("TAILOR_HOME", cache.root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("/nonexistent/model.gguf") && !stderr.contains("panicked"), "{stderr}");
}
