//! `tailor mcp` driven over stdio by the official MCP Python client (PyPI `mcp`, in a venv this
//! test makes under target/): the tools listed, remember → recall → forget, the memory
//! resources, feedback, tool errors, and the real SmolLM2 answering with a remembered fact
//! that was retrieved into its prompt; feedback starting a background training run, answers
//! going on meanwhile. Needs python3 with venv, the package index, and the
//! fetched models (`tailor models fetch`, which scripts/test.sh runs first).

mod common;

use common::{model_cache, venv_python};
use std::path::Path;
use std::process::Command;

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
    let python = venv_python("mcp-venv", "mcp==2.3.0");
    // The protocol the client picks by itself (server/discover, falling back to initialize).
    let auto = drive(&python, "auto", true);
    let answer = &auto["answer"];
    assert!(answer["answer"].as_str().unwrap().contains("Biscuit"), "{answer}");
    assert_eq!(auto["tools"].as_array().unwrap().len(), 5);
    // The initialize handshake, as assistants on the 2025 revisions connect.
    let legacy = drive(&python, "legacy", false);
    assert!(legacy["protocol_version"].as_str().unwrap().starts_with("2025-"), "{legacy}");
}

/// `tailor mcp` spoken to in raw JSON-RPC lines.
struct Raw {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Raw {
    /// Starts `tailor mcp --profile PROFILE` on the real model with `extra` arguments and runs
    /// the 2025-06-18 `initialize` handshake (as Claude Desktop speaks it).
    fn start(profile: &Path, extra: &[&str]) -> Raw {
        use std::process::Stdio;
        let cache = model_cache();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tailor"))
            .args(["mcp", "--threads", "2", "--profile"])
            .arg(profile)
            .arg("--model")
            .arg(cache.base_model_path())
            .args(extra)
            .env("TAILOR_HOME", cache.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut raw = Raw { child, stdin, stdout };
        let init = raw.call(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#,
            Some(1),
        );
        assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
        assert_eq!(init["result"]["serverInfo"]["name"], "tailor");
        raw.call(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#, None);
        raw
    }

    /// Sends one line; with an id, reads until its answer (every line must be JSON-RPC).
    fn call(&mut self, line: &str, id: Option<i64>) -> serde_json::Value {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let Some(id) = id else { return serde_json::Value::Null };
        loop {
            let mut l = String::new();
            assert!(self.stdout.read_line(&mut l).unwrap() > 0, "stdout closed before the answer to {id}");
            let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON on stdout ({e}): {l}"));
            assert_eq!(v["jsonrpc"], "2.0", "{l}");
            if v["id"].as_i64() == Some(id) {
                return v;
            }
        }
    }

    /// `tools/call` NAME with ARGS (JSON) as request `id`; the result.
    fn tool(&mut self, id: i64, name: &str, args: serde_json::Value) -> serde_json::Value {
        let req = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args}});
        self.call(&req.to_string(), Some(id))["result"].clone()
    }

    /// Closes stdin: the server must exit cleanly, with nothing but JSON-RPC left on stdout.
    /// Returns its stderr.
    fn finish(mut self) -> String {
        drop(self.stdin);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut rest).unwrap();
        assert!(rest.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{rest}");
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(status.success(), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }
}

/// Raw JSON-RPC: every stdout line is a JSON-RPC message, a line that is not JSON and a
/// wrongly typed argument end nothing, and the server exits cleanly when the client closes
/// stdin. A model that cannot load fails at start with the reason on stderr and nothing on
/// stdout.
#[test]
fn raw_protocol_and_startup_errors() {
    let dir = tailor::testing::TempDir::new("mcp-raw");
    let profile = dir.0.join("me.db");
    let mut raw = Raw::start(&profile, &[]);
    raw.call("this is not JSON", None);
    let bad = raw.tool(2, "recall", serde_json::json!({"query": 5}));
    assert_eq!(bad["isError"], true, "{bad}");
    let added = raw.tool(3, "remember", serde_json::json!({"text": "I live in Lyon."}));
    assert_eq!(added["structuredContent"]["action"], "inserted", "{added}");
    let read = raw.call(r#"{"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"memory://1"}}"#, Some(4));
    assert_eq!(read["result"]["contents"][0]["text"], "I live in Lyon.", "{read}");
    let pong = raw.call(r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#, Some(5));
    assert!(pong["result"].is_object(), "{pong}");
    // notifications/cancelled stops a long answer (the next question is answered after it).
    let long = serde_json::json!({"question": "Count from 1 to 1000, one number per line.", "max_tokens": 1024});
    raw.call(&serde_json::json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "ask_personal_model", "arguments": long}}).to_string(), None);
    std::thread::sleep(std::time::Duration::from_millis(500));
    raw.call(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":6,"reason":"test"}}"#, None);
    let next = raw.tool(7, "ask_personal_model", serde_json::json!({"question": "Say hi.", "max_tokens": 4}));
    assert_eq!(next["isError"], false, "{next}");
    let stderr = raw.finish();
    let line = stderr.lines().find(|l| l.contains("cancelled by the client")).unwrap_or_else(|| panic!("no cancel in {stderr}"));
    let tokens: usize = line.split_whitespace().rev().nth(1).unwrap().parse().unwrap();
    eprintln!("{line}");
    assert!(tokens < 1024, "{line}");

    let cache = model_cache();
    for (args, needle) in [
        (vec!["--model", "/nonexistent/model.gguf"], "/nonexistent/model.gguf"),
        (vec!["--model", cache.base_model_path().to_str().unwrap(), "--adapter", "/nonexistent/adapter"], "adapter"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tailor"))
            .args(["mcp", "--profile"])
            .arg(&profile)
            .args(&args)
            .env("TAILOR_HOME", cache.root())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr.contains(needle) && !stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// The default path (`--auto-train-after 3`): the third new feedback event starts a training
/// run in the background and says so; `ask_personal_model` answers while it goes on (the run
/// pauses between steps for generations); closing stdin stops the run and the server exits
/// cleanly. `--auto-train-after 0`: no run by itself.
#[test]
fn feedback_starts_background_training() {
    let dir = tailor::testing::TempDir::new("mcp-auto");
    let feedback = |raw: &mut Raw, id: i64, i: usize| {
        let fb = serde_json::json!({"prompt": format!("What is my cat called? ({i})"), "answer": "Tom.", "correction": "Your cat is called Zorblax."});
        let r = raw.tool(id, "give_feedback", fb);
        assert_eq!(r["isError"], false, "{r}");
        r["structuredContent"]["training"]["started"].as_bool().unwrap_or_else(|| panic!("no training.started in {r}"))
    };
    let mut raw = Raw::start(&dir.0.join("me.db"), &[]);
    let started: Vec<bool> = (0..3).map(|i| feedback(&mut raw, 2 + i as i64, i)).collect();
    assert_eq!(started, [false, false, true]);
    let t = std::time::Instant::now();
    let r = raw.tool(10, "ask_personal_model", serde_json::json!({"question": "What is my cat called?", "max_tokens": 16}));
    assert_eq!(r["isError"], false, "{r}");
    assert!(!r["structuredContent"]["answer"].as_str().unwrap().is_empty(), "{r}");
    eprintln!("answered in {:?} while training: {}", t.elapsed(), r["structuredContent"]);
    assert!(!feedback(&mut raw, 11, 3), "a run going on starts no other");
    let stderr = raw.finish();
    assert!(stderr.contains("new feedback started a background training run"), "{stderr}");
    assert!(stderr.contains("stopping the background training run"), "the run had ended before the client left:\n{stderr}");

    let mut raw = Raw::start(&dir.0.join("off.db"), &["--auto-train-after", "0"]);
    let started: Vec<bool> = (0..3).map(|i| feedback(&mut raw, 2 + i as i64, i)).collect();
    assert_eq!(started, [false, false, false]);
    let stderr = raw.finish();
    assert!(!stderr.contains("started a background training run"), "{stderr}");
}

/// `--adapter` runs a PEFT adapter beside the profile's own version: the answer changes, and
/// weight 0 is the base exactly.
#[test]
fn extra_adapter_changes_the_answer() {
    use tailor::adapters::{peft, LoraAdapter, LoraConfig, LoraWeights, Target};
    let cache = model_cache();
    let engine = tailor::Engine::load(cache.base_model_path(), tailor::EngineConfig::default()).unwrap();
    let shapes = engine.base_shapes();
    let mut a = LoraAdapter::new(LoraConfig::new(2, 4.0, &[Target::Q, Target::V])).unwrap();
    let wave = |n: usize| (0..n).map(|k| ((k * 7919 % 13) as f32 - 6.0) * 0.05).collect::<Vec<f32>>();
    for layer in 0..shapes.n_layers {
        for t in [Target::Q, Target::V] {
            let (i, o) = shapes.in_out(t);
            a.insert(layer, t, LoraWeights::new(2, i, o, wave(2 * i), wave(2 * o)).unwrap()).unwrap();
        }
    }
    let dir = tailor::testing::TempDir::new("mcp-adapter");
    let ad = dir.0.join("adapter");
    peft::save(&a, &ad).unwrap();
    let answer = |extra: &[&str]| {
        let mut raw = Raw::start(&dir.0.join("me.db"), extra);
        let r = raw.tool(2, "ask_personal_model", serde_json::json!({"question": "What is the capital of France?", "max_tokens": 12}));
        assert_eq!(r["isError"], false, "{r}");
        raw.finish();
        r["structuredContent"]["answer"].as_str().unwrap().to_string()
    };
    let base = answer(&[]);
    assert_eq!(answer(&["--adapter", &format!("{}:0", ad.display())]), base, "weight 0 is the base");
    assert_ne!(answer(&["--adapter", &format!("{}:4", ad.display())]), base, "the adapter changes the answer");
}
