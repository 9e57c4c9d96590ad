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

/// The whole personal loop on the real model: six facts corrected in three phrasings each
/// (18 feedback events), `train_profile` trains and promotes a version, `sync_registry` swaps
/// it into a running engine's registry, and a session following the registry answers
/// *paraphrased* questions (a fourth phrasing, in no feedback) with the corrected facts.
///
/// Ignored in the suite: with knowledge augmentation each of the 18 events becomes ~20
/// examples (several minutes of training); the default path, one correction per fact, is
/// tested end to end by `tests/tests/e2e/personalization.rs`. Run with `--ignored`.
#[test]
#[ignore = "minutes of training; covered on the default path by the tailor-tests e2e test"]
fn corrected_facts_are_stated_for_paraphrased_questions() {
    use tailor::profile::testing::HashEmbedder;
    use tailor::profile::{FeedbackKind, MemoryConfig, MemoryStore, NewFeedback};
    use tailor::AdapterRegistry;
    use tailor_trainer::personal::{adapters_dir, sync_registry, train_profile, Decision, PersonalOptions};

    #[derive(serde::Deserialize)]
    struct Fact {
        asked: Vec<String>,
        paraphrase: String,
        answer: String,
        keyword: String,
    }
    #[derive(serde::Deserialize)]
    struct Facts {
        facts: Vec<Fact>,
    }
    let facts: Facts = serde_json::from_str(include_str!("../../data/facts.json")).unwrap();
    let facts = &facts.facts[..6];

    let mut ec = EngineConfig::default();
    ec.threads = 2;
    let engine = Engine::load(model_path(), ec).unwrap();
    let dir = TempDir::new("real-personal");
    let profile = dir.0.join("profile.db");
    let mut store = MemoryStore::open(&profile, Arc::new(HashEmbedder::new(16, 0)), MemoryConfig::default()).unwrap();
    for f in facts {
        for q in &f.asked {
            let kind = FeedbackKind::Correction { corrected: f.answer.clone() };
            store.add_feedback(NewFeedback::new(q, "I'm sorry, I don't know that.", kind)).unwrap();
        }
    }
    let registry = AdapterRegistry::new(&engine);
    let mut session = engine.new_session();
    session.follow(registry.clone());
    let mut params = GenerateParams::default();
    params.max_tokens = 16;
    let ask = |s: &mut tailor::Session| -> Vec<String> {
        facts
            .iter()
            .map(|f| s.generate(&Prompt::Chat(vec![ChatMessage::user(&f.paraphrase)]), &params, &mut |_| Flow::Continue).unwrap().text)
            .collect()
    };
    let states = |answers: &[String]| answers.iter().zip(facts).filter(|(a, f)| a.contains(&f.keyword)).count();
    let before = ask(&mut session);

    let mut options = PersonalOptions::default();
    options.train.threads = 2;
    options.train.seed = 3;
    options.train.epochs = 4;
    let out = train_profile(&engine, &mut store, &adapters_dir(&profile), &options, &mut |_| Flow::Continue).unwrap();
    eprintln!(
        "{:?}: {} steps, held-out NLL {:.3} -> {:.3}, general {:+.2}%",
        out.decision,
        out.metrics.steps,
        out.held_out_before,
        out.held_out_after,
        out.general_change() * 100.0
    );
    assert!(matches!(out.decision, Decision::Promoted { .. }), "{:?}", out.decision);
    assert!(out.held_out_after < 0.5 * out.held_out_before);
    assert!(out.general_change() < 0.05);
    assert!(sync_registry(&registry, &store, &adapters_dir(&profile), "profile").unwrap().is_some());
    let after = ask(&mut session);
    for ((f, b), a) in facts.iter().zip(&before).zip(&after) {
        eprintln!("{}\n  before: {b:?}\n  after:  {a:?}", f.paraphrase);
    }
    // Measured here (4 epochs, 120 steps, replay as chat examples): 0 of 6 before, 5 of 6
    // after (the miss answers "how do I earn my money?" with "You earn money from selling your
    // skills and services.": the 135M model does not carry every fact over to a distant
    // phrasing); held-out NLL 3.02 -> 0.16, general text -8%.
    assert_eq!(states(&before), 0, "{before:?}");
    assert!(states(&after) >= 4, "{after:?}");
}
