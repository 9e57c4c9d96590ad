//! `cargo bench -p tailor --bench grammar [-- --rounds N --tokens N --threads N]`
//!
//! The cost of grammar-constrained decoding on the real model: decode tok/s of the same
//! chat prompt unconstrained and under (a) a JSON schema whose answer is one long string (the
//! mask over 49k tokens at every step, inside a string: the common case of structured output),
//! (b) a nested schema with enums, integers and arrays, (c) a forced tool call; rounds
//! alternate in this one process; medians and ratios against unconstrained. Every
//! constrained run is cut at `--tokens` (the schemas ask for more text than that), so the
//! runs decode the same number of tokens.

use std::path::PathBuf;

use serde_json::json;
use tailor::{ChatMessage, Engine, EngineConfig, Flow, GenerateParams, Grammar, ModelCache, Prompt, Tool, ToolChoice, ToolSet};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let model = match std::env::var_os("TAILOR_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(ModelCache::default_root).expect("a cache dir");
            ModelCache::new(root).base_model_path()
        }
    };
    let (rounds, tokens, threads) = (arg("--rounds", 7), arg("--tokens", 128), arg("--threads", 0));
    let mut cfg = EngineConfig::default();
    cfg.threads = threads;
    let engine = Engine::load(&model, cfg)?;
    let prompt = Prompt::Chat(vec![ChatMessage::user("Write a long story about a lighthouse keeper, as JSON.")]);

    let long_string = json!({"type": "object", "properties": {"story": {"type": "string", "minLength": 2000}}, "required": ["story"], "additionalProperties": false});
    let nested = json!({"type": "object", "properties": {
        "characters": {"type": "array", "minItems": 40, "items": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["keeper", "sailor", "child", "ghost"]}, "alive": {"type": "boolean"}},
            "required": ["name", "age", "role", "alive"], "additionalProperties": false}}},
        "required": ["characters"], "additionalProperties": false});
    let tool = Tool::new("write_story", Some("Saves a story".into()), json!({"properties": {"title": {"type": "string", "maxLength": 40}, "text": {"type": "string", "minLength": 2000}}, "required": ["title", "text"]}))?;

    let mut cases: Vec<(&str, GenerateParams)> = Vec::new();
    let mut base = GenerateParams::default();
    base.max_tokens = tokens;
    base.ignore_eos = true;
    cases.push(("unconstrained", base.clone()));
    let mut p = base.clone();
    p.ignore_eos = false;
    p.grammar = Some(Grammar::json_schema(long_string));
    cases.push(("json schema, long string", p.clone()));
    p.grammar = Some(Grammar::json_schema(nested));
    cases.push(("json schema, nested", p.clone()));
    p.grammar = None;
    p.tools = Some(ToolSet::new(vec![tool], ToolChoice::Required, false)?);
    cases.push(("forced tool call", p));

    let mut speeds = vec![Vec::new(); cases.len()];
    let mut counts = vec![0usize; cases.len()];
    let mut session = engine.new_session();
    // Warm up (builds the grammar engine's token trie once).
    for (_, p) in &cases {
        session.clear_cache();
        session.generate(&prompt, p, &mut |_| Flow::Continue)?;
    }
    for _ in 0..rounds {
        for (i, (_, p)) in cases.iter().enumerate() {
            session.clear_cache();
            let g = session.generate(&prompt, p, &mut |_| Flow::Continue)?;
            speeds[i].push(g.timings.decode_tok_per_s());
            counts[i] = g.token_ids.len();
        }
    }
    println!("grammar-constrained decoding, {} threads, {tokens} tokens, median of {rounds} alternating rounds", engine.threads());
    println!("| case | decode tok/s | vs unconstrained | tokens |");
    println!("| --- | --- | --- | --- |");
    let base_speed = median(&mut speeds[0].clone());
    for (i, (name, _)) in cases.iter().enumerate() {
        let m = median(&mut speeds[i]);
        println!("| {name} | {m:.1} | {:.3}x | {} |", m / base_speed, counts[i]);
    }
    Ok(())
}
