//! Grammar-constrained decoding: every answer sampled under a grammar, over many schemas
//! and seeds, parses and validates (checked by a validator written here, independent of
//! llguidance); regexes and Lark grammars match; tools' calls validate against their schemas;
//! bad grammars are clear errors; the real model answers a schema.

use candle_core::quantized::GgmlDType;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tailor::{ChatMessage, Error, FinishReason, Flow, GenerateParams, Grammar, Prompt, SamplingParams, Tool, ToolChoice, ToolDelta, ToolSet};

use crate::common::{spec, tiny};

/// The subset of JSON Schema the test schemas use, validated by hand.
fn validate(v: &Value, s: &Value) -> Result<(), String> {
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        return if any.iter().any(|x| validate(v, x).is_ok()) { Ok(()) } else { Err(format!("{v} matches no anyOf branch")) };
    }
    if let Some(c) = s.get("const") {
        return if v == c { Ok(()) } else { Err(format!("{v} != const {c}")) };
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return if e.contains(v) { Ok(()) } else { Err(format!("{v} not in enum")) };
    }
    let ty = s.get("type").and_then(Value::as_str);
    match ty {
        Some("object") => {
            let o = v.as_object().ok_or(format!("{v} is not an object"))?;
            let props = s.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
            for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !o.contains_key(r.as_str().unwrap()) {
                    return Err(format!("{v} lacks required {r}"));
                }
            }
            for (k, x) in o {
                match props.get(k) {
                    Some(ps) => validate(x, ps)?,
                    None if s.get("additionalProperties") == Some(&Value::Bool(false)) => return Err(format!("extra property {k}")),
                    None => {}
                }
            }
        }
        Some("array") => {
            let a = v.as_array().ok_or(format!("{v} is not an array"))?;
            if let Some(m) = s.get("minItems").and_then(Value::as_u64) {
                if (a.len() as u64) < m {
                    return Err(format!("{v}: fewer than {m} items"));
                }
            }
            if let Some(m) = s.get("maxItems").and_then(Value::as_u64) {
                if a.len() as u64 > m {
                    return Err(format!("{v}: more than {m} items"));
                }
            }
            if let Some(items) = s.get("items") {
                for x in a {
                    validate(x, items)?;
                }
            }
        }
        Some("string") => {
            let t = v.as_str().ok_or(format!("{v} is not a string"))?;
            let n = t.chars().count() as u64;
            if s.get("maxLength").and_then(Value::as_u64).is_some_and(|m| n > m) || s.get("minLength").and_then(Value::as_u64).is_some_and(|m| n < m) {
                return Err(format!("{v}: length {n} out of bounds"));
            }
        }
        Some("integer") => {
            let i = v.as_i64().ok_or(format!("{v} is not an integer"))?;
            if s.get("minimum").and_then(Value::as_i64).is_some_and(|m| i < m) || s.get("maximum").and_then(Value::as_i64).is_some_and(|m| i > m) {
                return Err(format!("{v} out of range"));
            }
        }
        Some("number") => {
            v.as_f64().ok_or(format!("{v} is not a number"))?;
        }
        Some("boolean") => {
            v.as_bool().ok_or(format!("{v} is not a boolean"))?;
        }
        Some("null") => {
            if !v.is_null() {
                return Err(format!("{v} is not null"));
            }
        }
        _ => {}
    }
    Ok(())
}

/// A random schema of bounded size (strings bounded so a random model ends them).
fn random_schema(r: &mut rand::rngs::StdRng, depth: usize) -> Value {
    let pick = if depth == 0 { r.random_range(0..6) } else { r.random_range(0..8) };
    match pick {
        0 => json!({"type": "string", "maxLength": r.random_range(0..6)}),
        1 => json!({"type": "integer", "minimum": -50, "maximum": r.random_range(0..1000)}),
        2 => json!({"type": "boolean"}),
        3 => json!({"enum": ["red", "green", 7, null]}),
        // (no unbounded "number": this random model writes "3333…" until the limit)
        4 => json!({"type": "array", "items": {"type": "null"}, "maxItems": 2}),
        5 => json!({"const": "fixed"}),
        6 => {
            let n = r.random_range(1..4);
            let mut props = serde_json::Map::new();
            for i in 0..n {
                props.insert(format!("k{i}"), random_schema(r, depth - 1));
            }
            let keys: Vec<Value> = props.keys().take(r.random_range(0..=n)).map(|k| json!(k)).collect();
            json!({"type": "object", "properties": props, "required": keys, "additionalProperties": false})
        }
        _ => json!({"type": "array", "items": random_schema(r, depth - 1), "minItems": 1, "maxItems": r.random_range(1..4)}),
    }
}

fn sampled(max_tokens: usize, seed: u64) -> GenerateParams {
    let mut p = GenerateParams::default();
    p.max_tokens = max_tokens;
    let mut s = SamplingParams::default();
    s.temperature = 1.0;
    s.seed = Some(seed);
    p.sampling = s;
    p
}

#[test]
fn every_sampled_answer_under_a_schema_parses_and_validates() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, 11), 1);
    let run_seed: u64 = rand::random();
    let mut r = rand::rngs::StdRng::seed_from_u64(run_seed);
    let mut session = engine.new_session();
    let mut stopped = 0;
    for case in 0..40 {
        let schema = json!({"type": "object", "properties": {"a": random_schema(&mut r, 2), "b": random_schema(&mut r, 1)}, "required": ["a", "b"], "additionalProperties": false});
        let mut p = sampled(160, r.random());
        p.grammar = Some(Grammar::json_schema(schema.clone()));
        let g = session.generate(&Prompt::Text("<|im_start|>user\nJSON please".into()), &p, &mut |_| Flow::Continue).unwrap();
        if g.finish_reason == FinishReason::Length {
            continue;
        }
        assert_eq!(g.finish_reason, FinishReason::Stop, "case {case} (run seed {run_seed})");
        stopped += 1;
        let v: Value = serde_json::from_str(&g.text).unwrap_or_else(|e| panic!("case {case} (run seed {run_seed}): {e}: {:?} under {schema}", g.text));
        validate(&v, &schema).unwrap_or_else(|e| panic!("case {case} (run seed {run_seed}): {e}: {} under {schema}", g.text));
        // Compact, one line: no free whitespace.
        assert!(!g.text.contains('\n') && !g.text.contains("  "), "{:?}", g.text);
    }
    assert!(stopped >= 38, "only {stopped}/40 answers ended (run seed {run_seed})");
}

#[test]
fn regexes_and_lark_grammars_are_matched_whole() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, 12), 1);
    let mut session = engine.new_session();
    for seed in 0..12 {
        let mut p = sampled(40, seed);
        p.grammar = Some(Grammar::Regex("[a-c]{2,5}-[0-9]{3}".into()));
        let g = session.generate(&Prompt::Text("x".into()), &p, &mut |_| Flow::Continue).unwrap();
        let (head, tail) = g.text.split_once('-').unwrap_or_else(|| panic!("{:?}", g.text));
        assert!((2..=5).contains(&head.len()) && head.bytes().all(|b| (b'a'..=b'c').contains(&b)), "{:?}", g.text);
        assert!(tail.len() == 3 && tail.bytes().all(|b| b.is_ascii_digit()), "{:?}", g.text);
        assert_eq!(g.finish_reason, FinishReason::Stop);

        let mut p = sampled(40, seed);
        p.grammar = Some(Grammar::Lark("start: answer \".\"\nanswer: \"yes\" | \"no\" | NUMBER\nNUMBER: /[1-9][0-9]?/".into()));
        let g = session.generate(&Prompt::Text("y".into()), &p, &mut |_| Flow::Continue).unwrap();
        let a = g.text.strip_suffix('.').unwrap_or_else(|| panic!("{:?}", g.text));
        assert!(a == "yes" || a == "no" || (a.parse::<u32>().is_ok_and(|n| (1..100).contains(&n)) && !a.starts_with('0')), "{:?}", g.text);
    }
}

#[test]
fn bad_grammars_are_clear_errors_before_any_work() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, 13), 1);
    let mut session = engine.new_session();
    for g in [
        Grammar::Lark("start: undefined_rule".into()),
        Grammar::Regex("(unclosed".into()),
        Grammar::json_schema(json!(["not", "a", "schema"])),
        Grammar::json_schema(json!({"$ref": "#/$defs/missing"})),
    ] {
        let mut p = sampled(8, 1);
        p.grammar = Some(g.clone());
        let e = session.generate(&Prompt::Text("x".into()), &p, &mut |_| Flow::Continue).unwrap_err();
        assert!(matches!(e, Error::Grammar { .. }), "{g:?}: {e}");
        assert_eq!(e.kind(), tailor::ErrorKind::InvalidArgument);
        assert!(engine.check_grammar(&g).is_err());
        assert!(session.cached_tokens().is_empty(), "nothing was run for {g:?}");
    }
}

fn tools() -> Vec<Tool> {
    vec![
        Tool::from_openai(&json!({"type": "function", "function": {"name": "set_alarm", "parameters": {"type": "object",
            "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23}, "label": {"type": "string", "maxLength": 6}},
            "required": ["hour"], "additionalProperties": false}}}))
        .unwrap(),
        Tool::new("lights", Some("Lights on or off".into()), json!({"properties": {"on": {"type": "boolean"}}, "required": ["on"]})).unwrap(),
    ]
}

#[test]
fn tool_calls_validate_and_stream_as_deltas() {
    let mut sp = spec(GgmlDType::Q8_0, 64, 14);
    sp.context_length = 2048; // the tool list in a byte-level vocabulary is long
    let (_d, _p, engine) = tiny(sp, 1);
    let mut session = engine.new_session();
    let msgs = vec![ChatMessage::user("Wake me at 7")];
    let mut calls_seen = 0;
    for seed in 0..16 {
        let choice = match seed % 3 {
            0 => ToolChoice::Required,
            1 => ToolChoice::Function("lights".into()),
            _ => ToolChoice::Auto,
        };
        let set = ToolSet::new(tools(), choice.clone(), seed % 2 == 0).unwrap();
        let mut p = sampled(120, seed);
        p.tools = Some(set.clone());
        let (mut names, mut args, mut content) = (Vec::new(), Vec::<String>::new(), String::new());
        let g = session
            .generate(&Prompt::Chat(msgs.clone()), &p, &mut |ev| {
                content.push_str(ev.text);
                for d in ev.tool_deltas {
                    match d {
                        ToolDelta::CallStart { name, .. } => {
                            names.push(name.clone());
                            args.push(String::new());
                        }
                        ToolDelta::Arguments { index, text } => args[*index].push_str(text),
                        ToolDelta::Content(_) => panic!("content comes in `text`"),
                    }
                }
                Flow::Continue
            })
            .unwrap();
        if g.finish_reason == FinishReason::Length {
            continue;
        }
        assert_eq!(g.finish_reason, FinishReason::Stop, "seed {seed}");
        assert_eq!(content, g.text);
        if choice != ToolChoice::Auto {
            assert!(!g.tool_calls.is_empty(), "seed {seed}: {choice:?} must call");
        }
        if !set.parallel {
            assert!(g.tool_calls.len() <= 1);
        }
        assert_eq!(names, g.tool_calls.iter().map(|c| c.name.clone()).collect::<Vec<_>>());
        for (c, streamed) in g.tool_calls.iter().zip(&args) {
            assert_eq!(&c.arguments, streamed);
            let tool = tools().into_iter().find(|t| t.name == c.name).unwrap();
            if let ToolChoice::Function(f) = &choice {
                assert_eq!(&c.name, f);
            }
            let v: Value = serde_json::from_str(&c.arguments).unwrap();
            validate(&v, &tool.parameters).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            calls_seen += 1;
        }
    }
    assert!(calls_seen >= 8, "{calls_seen}");
}

#[test]
fn the_real_model_answers_a_schema() {
    let engine = crate::real_model::engine();
    let mut session = engine.new_session();
    let schema = json!({"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population_millions": {"type": "number"},
        "continent": {"enum": ["Europe", "Asia", "Africa", "America", "Oceania"]}},
        "required": ["city", "country", "continent"], "additionalProperties": false});
    let mut p = GenerateParams::default();
    p.max_tokens = 96;
    p.grammar = Some(Grammar::json_schema(schema.clone()));
    let msgs = vec![ChatMessage::user("Describe Paris as JSON with city, country, population_millions and continent.")];
    let g = session.generate(&Prompt::Chat(msgs), &p, &mut |_| Flow::Continue).unwrap();
    assert_eq!(g.finish_reason, FinishReason::Stop, "{:?}", g.text);
    let v: Value = serde_json::from_str(&g.text).unwrap();
    validate(&v, &schema).unwrap();
    assert_eq!(v["continent"], "Europe", "{}", g.text);
}
