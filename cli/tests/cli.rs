//! The `tailor` binary end to end on a tiny model written by the test.

use std::path::PathBuf;
use std::process::Command;

use tailor::testing::TinyModel;

fn tiny() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tailor-cli-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny.gguf");
    TinyModel::default().write(&model).unwrap();
    (dir, model)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

fn tailor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tailor")).args(args).output().unwrap()
}

#[test]
fn tokenize_generate_json_and_errors() {
    let (dir, model) = tiny();
    let m = model.to_str().unwrap();

    let out = tailor(&["tokenize", "<|im_start|>user the", "--model", m]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids[0], 1, "control token parsed");

    let out = tailor(&["generate", "hi", "--model", m, "--json", "--logprobs", "2", "--max-tokens", "5", "--ignore-eos", "--threads", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 5);
    assert!(v["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(v["decode_tok_per_s"].as_f64().unwrap() > 0.0);
    let lp = v["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lp.len(), 5);
    assert_eq!(lp[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert!(lp[0]["logprob"].as_f64().unwrap() <= 0.0);

    let out = tailor(&["generate", "hi", "--model", m, "--raw", "--max-tokens", "3", "--ignore-eos"]);
    assert!(out.status.success());

    // Constrained answers: a JSON schema from a file, a regex, a Lark grammar.
    let schema = dir.join("schema.json");
    std::fs::write(&schema, r#"{"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["ok", "n"], "additionalProperties": false}"#).unwrap();
    let out = tailor(&["generate", "hi", "--model", m, "--json-schema", schema.to_str().unwrap(), "--temperature", "1", "--seed", "3", "--max-tokens", "40", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let answer: serde_json::Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
    assert!(answer["ok"].is_boolean() && (1..=9).contains(&answer["n"].as_i64().unwrap()), "{answer}");
    let out = tailor(&["generate", "hi", "--model", m, "--regex", "[xyz]{3}", "--max-tokens", "10"]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(text.len() == 3 && text.bytes().all(|b| b"xyz".contains(&b)), "{text:?}");
    let lark = dir.join("g.lark");
    std::fs::write(&lark, "start: \"on\" | \"off\"").unwrap();
    let out = tailor(&["generate", "hi", "--model", m, "--grammar", lark.to_str().unwrap(), "--max-tokens", "10"]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(text == "on" || text == "off", "{text:?}");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"type\": 12}").unwrap();

    // Bad input: a clear message and a failing exit status, never a panic.
    for (args, needle) in [
        (vec!["generate", "", "--raw", "--model", m], "empty"),
        (vec!["generate", "x", "--model", "/nonexistent.gguf"], "not found"),
        (vec!["generate", "the the the the", "--raw", "--model", m, "--ctx", "2"], "context"),
        (vec!["generate", "x", "--model", m, "--top-p", "0"], "top_p"),
        (vec!["generate", "x", "--model", m, "--json-schema", bad.to_str().unwrap()], "grammar"),
        (vec!["generate", "x", "--model", m, "--regex", "(open"], "grammar"),
    ] {
        let out = tailor(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn adapters_from_the_command_line() {
    use tailor::adapters::{peft, LoraAdapter, LoraConfig, LoraWeights, Target};
    let (dir, model) = tiny();
    let m = model.to_str().unwrap();
    // A small adapter on q and v of every layer, saved in PEFT's layout.
    let engine = tailor::Engine::load(&model, tailor::EngineConfig::default()).unwrap();
    let shapes = engine.base_shapes();
    let mut a = LoraAdapter::new(LoraConfig::new(2, 4.0, &[Target::Q, Target::V])).unwrap();
    for layer in 0..shapes.n_layers {
        for t in [Target::Q, Target::V] {
            let (i, o) = shapes.in_out(t);
            let wave = |n: usize| (0..n).map(|k| ((k * 7919 % 13) as f32 - 6.0) * 0.1).collect::<Vec<f32>>();
            a.insert(layer, t, LoraWeights::new(2, i, o, wave(2 * i), wave(2 * o)).unwrap()).unwrap();
        }
    }
    let ad = dir.join("adapter");
    peft::save(&a, &ad).unwrap();

    let out = tailor(&["adapter", "inspect", ad.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["targets"], serde_json::json!(["q_proj", "v_proj"]));
    assert_eq!(v["config"]["r"], 2);

    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "the", "--raw", "--model", m, "--json", "--max-tokens", "6", "--ignore-eos", "--logprobs", "1"];
        args.extend_from_slice(extra);
        let out = tailor(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // Token ids and the log-probability of each: any change in the logits shows.
        (v["token_ids"].clone(), v["logprobs"]["content"].as_array().unwrap().iter().map(|c| c["logprob"].as_f64().unwrap()).collect::<Vec<_>>())
    };
    let spec0 = format!("{}:0", ad.display());
    let spec1 = format!("{}:3", ad.display());
    assert_eq!(run(&[]), run(&["--adapter", &spec0]), "weight 0 is the base");
    assert_ne!(run(&[]), run(&["--adapter", &spec1]), "the adapter changes the output");

    let out = tailor(&["generate", "x", "--model", m, "--adapter", "/nonexistent/adapter"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("adapter"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn steering_from_the_command_line() {
    let (dir, model) = tiny();
    let m = model.to_str().unwrap();
    let pairs = dir.join("pairs.json");
    std::fs::write(&pairs, r#"[["the there", "in on"], ["there the", "on in"]]"#).unwrap();
    for out in ["vec.safetensors", "vec.gguf"] {
        let path = dir.join(out);
        let o = tailor(&["steer", "compute", "--pairs", pairs.to_str().unwrap(), "--out", path.to_str().unwrap(), "--model", m]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let run = |extra: &[&str]| {
            let mut args = vec!["generate", "the", "--raw", "--model", m, "--json", "--max-tokens", "4", "--ignore-eos", "--logprobs", "1"];
            args.extend_from_slice(extra);
            let o = tailor(&args);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            v["logprobs"]["content"].as_array().unwrap().iter().map(|c| c["logprob"].as_f64().unwrap()).collect::<Vec<_>>()
        };
        let zero = format!("{}:0", path.display());
        let strong = format!("{}:3", path.display());
        assert_eq!(run(&[]), run(&["--steer", &zero]), "{out}: scale 0 is the base");
        assert_ne!(run(&[]), run(&["--steer", &strong, "--steer-layers", "1-1"]), "{out}: the vector acts");
    }
    let o = tailor(&["generate", "x", "--model", m, "--steer", "/nonexistent.safetensors"]);
    assert!(!o.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn adapter_list_merge_export_inspect() {
    let (dir, model) = tiny();
    let m = model.to_str().unwrap();
    let engine = tailor::Engine::load(&model, tailor::EngineConfig::default()).unwrap();
    let adapters = dir.join("adapters");
    for (name, seed) in [("a", 1), ("b", 2)] {
        let mut a = tailor::testing::random_lora(&engine, 2, 0.05, seed).unwrap();
        a.set_base_fingerprint(engine.base_fingerprint());
        tailor::adapters::peft::save(&a, &adapters.join(name)).unwrap();
    }
    let a_dir = adapters.join("a");
    let b_dir = adapters.join("b");
    let merged = adapters.join("ab");
    let spec = |p: &PathBuf, w: &str| format!("{}:{w}", p.display());
    let out = tailor(&["adapter", "merge", &spec(&a_dir, "0.7"), &spec(&b_dir, "0.3"), "--out", merged.to_str().unwrap(), "--rank", "4", "--model", m]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tailor(&["adapter", "list", adapters.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "ab", "b"]);
    assert_eq!(list[1]["rank"], 4);
    let gguf = dir.join("ab.gguf");
    let out = tailor(&["adapter", "export", merged.to_str().unwrap(), "--out", gguf.to_str().unwrap(), "--model", m]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tailor(&["adapter", "inspect", gguf.to_str().unwrap(), "--model", m]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rank"], 4);
    assert_eq!(v["modules"], list[1]["modules"]);
    let out = tailor(&["generate", "hi", "--model", m, "--adapter", &spec(&merged, "1"), "--max-tokens", "3", "--ignore-eos"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tailor(&["adapter", "merge", a_dir.to_str().unwrap(), b_dir.to_str().unwrap(), "--method", "ties", "--density", "0.3", "--out", adapters.join("t").to_str().unwrap(), "--model", m]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Errors: unknown method, a missing adapter.
    let out = tailor(&["adapter", "merge", a_dir.to_str().unwrap(), "--method", "avg", "--out", adapters.join("x").to_str().unwrap(), "--model", m]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("linear, ties or dare"));
    let out = tailor(&["adapter", "inspect", adapters.join("nope").to_str().unwrap()]);
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tailor memory ...` on a fresh profile (the real MiniLM embedder, fetched by CI).
#[test]
fn memory_add_search_forget_export_import() {
    let (dir, _model) = tiny();
    let p = dir.join("profile.db");
    let p = p.to_str().unwrap();
    for text in ["I have a golden retriever called Biscuit.", "My blood type is O negative.", "I live in Porto."] {
        let out = tailor(&["memory", "add", text, "--profile", p]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = tailor(&["memory", "search", "What is my dog called?", "--json", "--limit", "2", "--profile", p]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 2);
    assert_eq!(hits[0]["text"], "I have a golden retriever called Biscuit.");
    let dog = hits[0]["id"].as_i64().unwrap().to_string();
    let out = tailor(&["memory", "forget", &dog, "--profile", p]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tailor(&["memory", "list", "--json", "--profile", p]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Biscuit"));
    let export = dir.join("export.json");
    assert!(tailor(&["memory", "export", "--out", export.to_str().unwrap(), "--profile", p]).status.success());
    let other = dir.join("other.db");
    let out = tailor(&["memory", "import", export.to_str().unwrap(), "--profile", other.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tailor(&["memory", "list", "--json", "--profile", other.to_str().unwrap()]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    // Bad input: clear errors.
    let out = tailor(&["memory", "add", "", "--profile", p]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("empty"));
    let out = tailor(&["memory", "add", "x", "--metadata", "{bad", "--profile", p]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("JSON"));
    // Feedback: add three kinds, forget one, list.
    for args in [vec!["--thumbs", "up"], vec!["--correction", "Zanzibar"], vec!["--chosen", "c", "--rejected", "r"]] {
        let mut a = vec!["feedback", "add", "--prompt", "my cat's name?", "--answer", "Tom", "--profile", p];
        a.extend(args);
        let out = tailor(&a);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(tailor(&["feedback", "forget", "2", "--profile", p]).status.success());
    let out = tailor(&["feedback", "list", "--profile", p]);
    let fb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = fb.as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["thumbs_up", "preference"]);
    let out = tailor(&["feedback", "add", "--prompt", "q", "--answer", "a", "--profile", p]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("exactly one"));
    let out = tailor(&["memory", "list", "--profile", dir.join("tiny.gguf").to_str().unwrap()]);
    assert!(!out.status.success(), "a GGUF is not a profile");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `generate --profile` puts the relevant memories in the prompt and reports them (`--json`,
/// or a line on stderr); `--no-memory` leaves them out; a correction recorded with `feedback
/// add` is a memory the next answer gets.
#[test]
fn generate_uses_the_profiles_memories() {
    let (dir, model) = tiny();
    let (m, p) = (model.to_str().unwrap(), dir.join("profile.db"));
    let p = p.to_str().unwrap();
    let out = tailor(&["memory", "add", "I have a golden retriever called Biscuit.", "--profile", p]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dog = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"].as_i64().unwrap();
    let used = |extra: &[&str]| -> Vec<i64> {
        let mut a = vec!["generate", "What is my dog called?", "--profile", p, "--model", m, "--json", "--max-tokens", "2", "--threads", "2"];
        a.extend(extra);
        let out = tailor(&a);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["memories"].as_array().unwrap().iter().map(|x| x["id"].as_i64().unwrap()).collect()
    };
    assert_eq!(used(&[]), [dog]);
    assert!(used(&["--no-memory"]).is_empty());
    let out = tailor(&["generate", "What is my dog called?", "--profile", p, "--model", m, "--max-tokens", "2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("[memories: #{dog}]")), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tailor(&["generate", "What is my dog called?", "--profile", p, "--model", m, "--max-tokens", "2", "--no-memory"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("[memories:"), "{}", String::from_utf8_lossy(&out.stderr));

    let out = tailor(&["feedback", "add", "--prompt", "Where do I live?", "--answer", "Paris.", "--correction", "You live in Porto.", "--profile", p]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mirrored = fb["memory"]["id"].as_i64().unwrap_or_else(|| panic!("no mirrored memory: {fb}"));
    let mut a = vec!["generate", "Where do I live?", "--profile", p, "--model", m, "--json", "--max-tokens", "2"];
    let out = tailor(&a);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &v["memories"][0];
    assert_eq!((first["id"].as_i64(), first["text"].as_str()), (Some(mirrored), Some("Q: Where do I live? A: You live in Porto.")), "{v}");
    a.push("--no-memory");
    let v: serde_json::Value = serde_json::from_slice(&tailor(&a).stdout).unwrap();
    assert_eq!(v["memories"], serde_json::json!([]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tailor train` on a tiny model: three feedback events, three steps, an outcome printed
/// (promoted or refused); then `generate --profile`, `adapter rollback` and `feedback forget`.
#[test]
fn train_from_feedback_then_rollback() {
    let (dir, model) = tiny();
    let (m, p) = (model.to_str().unwrap(), dir.join("profile.db"));
    let p = p.to_str().unwrap();
    for args in [vec!["--thumbs", "up"], vec!["--correction", "Zanzibar"], vec!["--chosen", "Zanzibar", "--rejected", "Tom"]] {
        let mut a = vec!["feedback", "add", "--prompt", "my cat's name?", "--answer", "Tom", "--profile", p];
        a.extend(args);
        let out = tailor(&a);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = tailor(&["train", "--max-steps", "3", "--profile", p, "--model", m, "--threads", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("held-out paraphrases") && stdout.contains("answer NLL") && stdout.contains("general-text NLL"), "{stdout}");
    assert!(stdout.contains("promoted") || stdout.contains("refused"), "{stdout}");
    let out = tailor(&["generate", "hi", "--profile", p, "--model", m, "--max-tokens", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    if stdout.contains("promoted") {
        let out = tailor(&["adapter", "rollback", "--profile", p]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("base model"), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(tailor(&["feedback", "forget", "--all", "--profile", p]).status.success());
        let left = std::fs::read_dir(dir.join("profile.db.adapters")).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count();
        assert_eq!(left, 0, "forgotten feedback leaves no adapter behind");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
