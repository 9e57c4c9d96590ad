//! `tailor serve` driven by the official OpenAI Python client (PyPI `openai`, in a venv this
//! test makes under target/): chat streamed and not, logprobs, completions, embeddings,
//! OpenAI-shaped errors, 8 concurrent streams, a client disconnect cancelling its generation,
//! the prefix cache on a follow-up turn, the personal model's memories, feedback, training
//! jobs (one started by feedback on its own, answers going on meanwhile), and per-request
//! adapters. Then the assistant features, with the same client (serve_py/assistant.py, and
//! `jsonschema` validating what the model made): function tools streamed and not with a round
//! trip, structured output, `n`, seeds, logit_bias, penalties, the sampling defaults, the
//! Responses API and 16 concurrent requests queueing for the slots. Plus raw-HTTP checks of
//! the API key, the body limit and a graceful SIGTERM. Needs python3 with venv, the package
//! index, and the fetched models (`tailor models fetch`, which scripts/test.sh runs first).

mod common;

use common::{model_cache, venv_python};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the Python scripts' venv holds (one venv, shared by the tests that use it).
const SERVE_VENV: &str = "openai==2.54.0 jsonschema==4.25.1";

/// A running `tailor serve`, killed when dropped; its standard error is collected.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let cache = model_cache();
        assert!(cache.base_model_path().exists(), "the real model is missing at {}: run `tailor models fetch`", cache.base_model_path().display());
        let mut child = Command::new(env!("CARGO_BIN_EXE_tailor"))
            .args(["serve", "--port", "0", "--ctx", "2048", "--threads", "2", "--max-tokens-limit", "256"])
            .args(extra)
            .env("TAILOR_HOME", cache.root())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("tailor serve starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(a.trim_end_matches("/v1").to_string());
                }
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("the server did not start:\n{}", log.lock().unwrap()));
        Server { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// One raw HTTP/1.1 request; returns (status, body).
    fn http(&self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> (u16, String) {
        http(&self.addr, method, path, headers, body)
    }

    /// SIGTERM, then the exit status within `timeout`.
    fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t.elapsed() < timeout, "the server did not stop on SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One raw HTTP/1.1 request to `addr`; returns (status, body).
fn http(addr: &str, method: &str, path: &str, headers: &[&str], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; a reset then is fine.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn official_openai_python_client() {
    let python = venv_python("serve-venv", SERVE_VENV);
    let dir = tailor::testing::TempDir::new("serve");
    // A random rank-4 adapter in PEFT's layout, to load and choose per request.
    let engine = tailor::Engine::load(model_cache().base_model_path(), tailor::EngineConfig::default()).unwrap();
    let adapter = tailor::testing::random_lora(&engine, 4, 0.5, 1).unwrap();
    let adapter_dir = dir.0.join("noise");
    tailor::adapters::peft::save(&adapter, &adapter_dir).unwrap();
    drop(engine);
    // A steering vector from contrasting pairs, made by `tailor steer compute`.
    let pairs = dir.0.join("pairs.json");
    std::fs::write(
        &pairs,
        r#"[["I love this, it is wonderful and kind.", "I hate this, it is awful and cruel."],
            ["What a lovely, happy day!", "What a miserable, gloomy day."],
            ["Thank you so much, you are great.", "Go away, you are useless."]]"#,
    )
    .unwrap();
    let steering = dir.0.join("kind.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_tailor"))
        .args(["steer", "compute", "--pairs"])
        .arg(&pairs)
        .arg("--out")
        .arg(&steering)
        .env("TAILOR_HOME", model_cache().root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let profile = dir.0.join("me.db");
    let mut server = Server::start(&["--profile", profile.to_str().unwrap(), "--parallel", "8"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_py/client.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}/v1", server.addr))
        .arg("--adapter")
        .arg(&adapter_dir)
        .arg("--steering")
        .arg(&steering)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the OpenAI client failed:\n{stderr}\n--- server:\n{}", server.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stderr}\n{stdout}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let stats = &summary["stats"];
    assert_eq!(stats["cancelled"], 1, "{summary}");
    assert_eq!(stats["failed"], 0, "{summary}");
    assert_eq!(stats["active"], 0, "{summary}");
    assert!(stats["pool_hits"].as_u64().unwrap() >= 1, "{summary}");
    let f = &summary["follow_up"];
    assert!(f["cached_tokens"].as_u64().unwrap() * 2 > f["prompt_tokens"].as_u64().unwrap(), "{summary}");
    assert!(!server.log().contains("panicked"), "{}", server.log());

    // Ctrl-C / SIGTERM: a clean stop.
    let status = server.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(server.log().contains("tailor serve: stopped"), "{}", server.log());
}

/// Tool calls, structured output, `n`, seeds and logit_bias, penalties, the sampling defaults,
/// the Responses API and load, with the official client against a server with the default
/// settings (so `--parallel` 8: the 16 concurrent requests of the script queue for slots).
#[test]
fn assistant_features_with_the_official_client() {
    let python = venv_python("serve-venv", SERVE_VENV);
    let server = Server::start(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_py/assistant.py");
    let t = Instant::now();
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}/v1", server.addr))
        .env("TAILOR_BIN", env!("CARGO_BIN_EXE_tailor"))
        .env("TAILOR_HOME", model_cache().root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the OpenAI client failed:\n{stderr}\n--- server:\n{}", server.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stderr}\n{stdout}\n({:.1} s)", t.elapsed().as_secs_f64());
    let summary: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let stats = &summary["stats"];
    assert_eq!(stats["failed"], 0, "{summary}");
    assert_eq!(stats["cancelled"], 0, "{summary}");
    assert_eq!(stats["active"], 0, "{summary}");
    assert_eq!(summary["load"]["ok"], 16, "{summary}");
    assert!(summary["load"]["peak_active"].as_u64().unwrap() <= 8, "{summary}");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// `--auto-train-after 0`: feedback never starts a training run by itself (the default path,
/// a run started by the third event, is in the Python client's checks).
#[test]
fn auto_train_can_be_turned_off() {
    let dir = tailor::testing::TempDir::new("serve-auto-off");
    let profile = dir.0.join("me.db");
    let server = Server::start(&["--profile", profile.to_str().unwrap(), "--auto-train-after", "0"]);
    for i in 0..4 {
        let body = serde_json::json!({"prompt": format!("Question {i}?"), "answer": "No idea.", "kind": "correction", "corrected": format!("Answer {i}.")});
        let (status, body) = server.http("POST", "/v1/tailor/feedback", &["Content-Type: application/json"], body.to_string().as_bytes());
        assert_eq!(status, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["training"]["started"], false, "{v}");
    }
    let (status, body) = server.http("GET", "/v1/tailor/training", &[], b"");
    assert_eq!(status, 404, "no run should have started: {body}");
}

#[test]
fn api_key_body_limit_and_unknown_routes() {
    let server = Server::start(&["--api-key", "s3cret", "--max-body-bytes", "1000"]);
    let chat = br#"{"model": "x", "messages": [{"role": "user", "content": "Hi"}]}"#;
    let (status, body) = server.http("POST", "/v1/chat/completions", &["Content-Type: application/json"], chat);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_api_key"), "{body}");
    let (status, body) = server.http("GET", "/v1/models", &["Authorization: Bearer wrong"], b"");
    assert_eq!(status, 401, "{body}");
    let (status, body) = server.http("GET", "/v1/models", &["Authorization: Bearer s3cret"], b"");
    assert_eq!(status, 200, "{body}");
    let models: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["object"], "list");
    // The model id is checked before any generation: 404 in OpenAI's shape.
    let (status, body) = server.http("POST", "/v1/chat/completions", &["Authorization: Bearer s3cret", "Content-Type: application/json"], chat);
    assert_eq!(status, 404, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "model_not_found");
    // Past the body limit: 413.
    let big = vec![b' '; 5000];
    let (status, body) = server.http("POST", "/v1/chat/completions", &["Authorization: Bearer s3cret", "Content-Type: application/json"], &big);
    assert_eq!(status, 413, "{body}");
    let (status, body) = server.http("GET", "/v1/nowhere", &["Authorization: Bearer s3cret"], b"");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"error\""), "{body}");
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let mut server = Server::start(&[]);
    let (_, models) = server.http("GET", "/v1/models", &[], b"");
    let models: serde_json::Value = serde_json::from_str(&models).unwrap();
    let id = models["data"][0]["id"].as_str().unwrap().to_string();
    let addr = server.addr.clone();
    let body = serde_json::json!({"model": id, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 48, "temperature": 0}).to_string();
    let request = std::thread::spawn(move || http(&addr, "POST", "/v1/completions", &["Content-Type: application/json"], body.as_bytes()));
    let t = Instant::now();
    loop {
        let (_, stats) = server.http("GET", "/v1/tailor/stats", &[], b"");
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        if stats["active"] == 1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the generation never started: {stats}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = server.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status:?}\n{}", server.log());
    let (code, body) = request.join().unwrap();
    assert_eq!(code, 200, "{body}\n{}", server.log());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 48, "the request in flight was cut short: {v}");
    assert!(TcpStream::connect(&server.addr).is_err(), "still accepting after SIGTERM");
}
