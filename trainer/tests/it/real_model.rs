//! On the real SmolLM2-135M-Instruct (fetched by `tailor models fetch`, which CI runs first;
//! the test fails without it): an adapter trained here on one fact, saved as PEFT files and
//! loaded back into the decode path, makes the greedy answer state the fact. Checks the whole
//! chain on a real llama GGUF, including the q/k row order of `lora_B`.

use std::path::PathBuf;
use std::sync::Arc;

use tailor::adapters::{peft, LoraSet};
use tailor::{ChatMessage, Engine, EngineConfig, GenerateParams, LoraHook, Prompt};
use tailor_trainer::{mean_nll, score_answers, Flow, SftExample, TrainConfig, TrainData, Trainer};

use crate::common::TempDir;

fn model_path() -> PathBuf {
    let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(tailor::ModelCache::default_root).expect("a cache dir");
    let p = tailor::ModelCache::new(root).base_model_path();
    assert!(p.exists(), "the real model is missing at {}: run `tailor models fetch`", p.display());
    p
}

#[test]
fn trained_adapter_states_the_fact_on_the_decode_path() {
    let path = model_path();
    let mut ec = EngineConfig::default();
    ec.threads = 2;
    let engine = Engine::load(&path, ec).unwrap();
    let question = vec![ChatMessage::user("What is the name of my cat?")];
    let prompt = engine.tokenize(&engine.render_chat(&question).unwrap()).unwrap();
    let answer = engine.tokenize("Your cat is called Zorblax.<|im_end|>").unwrap();
    let ex = vec![SftExample { prompt_tokens: prompt, answer_tokens: answer }];
    let before = mean_nll(&score_answers(&engine, None, &ex, 2).unwrap());

    let mut c = TrainConfig::default();
    c.max_steps = Some(25);
    c.learning_rate = 1e-3;
    c.threads = 2;
    let out = Trainer::new(&engine, c).unwrap().train(&TrainData::sft(ex.clone()), &mut |_| Flow::Continue).unwrap();
    let after = mean_nll(&score_answers(&engine, Some(&out.adapter), &ex, 2).unwrap());
    assert!(after < 0.2 * before, "answer NLL {before} -> {after}");

    let dir = TempDir::new("real");
    peft::save(&out.adapter, &dir.0).unwrap();
    let opts = peft::LoadOptions::new().with_shapes(engine.base_shapes()).with_fingerprint(engine.base_fingerprint());
    let loaded = peft::load(&dir.0, &opts).unwrap();
    let mut s = engine.new_session();
    s.set_hooks(LoraHook::from_set(&engine, &LoraSet::new().with(Arc::new(loaded), 1.0)).unwrap().into_hooks());
    let mut params = GenerateParams::default();
    params.max_tokens = 20;
    let g = s.generate(&Prompt::Chat(question), &params, &mut |_| tailor::Flow::Continue).unwrap();
    eprintln!("answer NLL {before:.3} -> {after:.3}; greedy answer with the adapter: {:?}", g.text);
    assert!(g.text.contains("Zorblax"), "{:?}", g.text);
    // A paraphrase, for information only (one training example does not promise it).
    let para = vec![ChatMessage::user("Do you remember what my cat is called?")];
    let g = s.generate(&Prompt::Chat(para), &params, &mut |_| tailor::Flow::Continue).unwrap();
    eprintln!("paraphrased question: {:?}", g.text);
}
