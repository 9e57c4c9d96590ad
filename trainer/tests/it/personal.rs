//! Personalization from a profile: feedback → data, the gate, promotion, forgetting, rollback.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use tailor::profile::testing::HashEmbedder;
use tailor::profile::{FeedbackKind, MemoryConfig, MemoryStore, NewFeedback};
use tailor::adapters::peft::{self, LoadOptions};
use tailor::adapters::LoraSet;
use tailor::{AdapterRegistry, Hooks, LoraHook, Session};
use tailor_trainer::personal::{
    active_adapter, adapters_dir, feedback_to_data, purge_tainted, rollback, sync_registry, train_profile, Decision, Outcome,
    PersonalOptions,
};
use tailor_trainer::Flow;

use crate::common::{tiny, TempDir};

fn store(dir: &TempDir) -> MemoryStore {
    MemoryStore::open(dir.path("profile.db"), Arc::new(HashEmbedder::new(16, 0)), MemoryConfig::default()).unwrap()
}

fn options(steps: usize, lr: f32) -> PersonalOptions {
    let mut o = PersonalOptions::default();
    o.train.lora_rank = 4;
    o.train.lora_alpha = 8.0;
    o.train.learning_rate = lr;
    o.train.max_steps = Some(steps);
    o.train.seed = 7;
    o.train.threads = 2;
    // Tiny random models: a few distillation answers, no specificity set (they know nothing),
    // and the old 5% general-text limit these small runs were tuned for.
    o.distill = 4;
    o.distill_tokens = 8;
    o.max_specificity_loss = None;
    o.max_general_increase = 0.05;
    o
}

fn add(s: &mut MemoryStore, prompt: &str, answer: &str, kind: FeedbackKind) -> i64 {
    s.add_feedback(NewFeedback::new(prompt, answer, kind)).unwrap()
}

fn correction(c: &str) -> FeedbackKind {
    FeedbackKind::Correction { corrected: c.into() }
}

fn train(engine: &tailor::Engine, s: &mut MemoryStore, dir: &Path, o: &PersonalOptions) -> Outcome {
    let out = train_profile(engine, s, dir, o, &mut |_| Flow::Continue).unwrap();
    eprintln!(
        "{:?}: held-out {:.4} -> {:.4}, general {:.4} -> {:.4} ({:+.2}%)",
        out.decision,
        out.held_out_before,
        out.held_out_after,
        out.general_before,
        out.general_after,
        out.general_change() * 100.0
    );
    out
}

/// Syncs the registry to the profile, then checks that `running` (a session following the
/// registry, mid-conversation) now runs exactly the version at `want`, or the base alone.
fn synced(engine: &tailor::Engine, reg: &AdapterRegistry, s: &MemoryStore, adapters: &Path, running: &mut Session, want: Option<&Path>) {
    let version = sync_registry(reg, s, adapters, "profile").unwrap();
    assert_eq!(version.as_deref(), want.map(|p| p.file_name().unwrap().to_str().unwrap()));
    let probe = engine.tokenize("my cat is called").unwrap();
    let mut reference = engine.new_session();
    if let Some(dir) = want {
        let adapter = Arc::new(peft::load(dir, &LoadOptions::new()).unwrap());
        let hook = LoraHook::from_set(engine, &LoraSet::new().with(adapter, 1.0)).unwrap();
        reference.set_hooks(Hooks { linear: Some(Arc::new(hook)), residual: None });
    }
    assert_eq!(running.logits_all(&probe).unwrap(), reference.logits_all(&probe).unwrap());
}

#[test]
fn adapters_live_beside_their_profile() {
    assert_eq!(adapters_dir(Path::new("/p/alice.db")), Path::new("/p/alice.db.adapters"));
    assert_ne!(adapters_dir(Path::new("/p/alice.db")), adapters_dir(Path::new("/p/bob.db")));
    assert_eq!(adapters_dir(Path::new("me.db")), Path::new("me.db.adapters"));
}

#[test]
fn feedback_maps_to_sft_dpo_and_held_out() {
    let (_m, engine) = tiny(GgmlDType::Q8_0, 1);
    let dir = TempDir::new("map");
    let mut s = store(&dir);
    let up = add(&mut s, "favourite colour?", "Green.", FeedbackKind::ThumbsUp);
    let down = add(&mut s, "What is my cat's name?", "Tom.", FeedbackKind::ThumbsDown);
    let old = add(&mut s, "What is my cat's name?", "Tom.", correction("Your cat is called Felix."));
    let corr = add(&mut s, "what is my cat's name", "Tom.", correction("Your cat is called Zanzibar."));
    let _lone = add(&mut s, "weather?", "Sunny.", FeedbackKind::ThumbsDown);
    let pref = add(&mut s, "greet me", "Hi.", FeedbackKind::Preference { chosen: "Hello, Ana!".into(), rejected: "Hi.".into() });
    let fb = s.list_feedback(&Default::default()).unwrap();
    let d = feedback_to_data(&engine, &fb, &options(1, 1e-3)).unwrap();
    assert_eq!(d.skipped, 1);
    assert_eq!(d.feedback_ids, [up, down, old, corr, pref]);
    let p = |t: &str| engine.tokenize(&engine.render_chat(&[tailor::ChatMessage::user(t)]).unwrap()).unwrap();
    let a = |t: &str| engine.tokenize(&format!("{t}<|im_end|>")).unwrap();
    // The question as asked comes first, then its paraphrases, all with the same answer.
    assert_eq!(d.train.sft[0].prompt_tokens, p("favourite colour?"));
    assert_eq!(d.train.sft[0].answer_tokens, a("Green."));
    let cat: Vec<_> = d.train.sft.iter().filter(|e| e.answer_tokens == a("Your cat is called Zanzibar.")).collect();
    assert!(cat.len() >= 10, "{} examples", cat.len());
    assert!(cat.iter().any(|e| e.prompt_tokens == p("What is the name of my cat?")));
    // The older correction of the same question is replaced by the newer one.
    assert!(!d.train.sft.iter().any(|e| e.answer_tokens == a("Your cat is called Felix.")));
    // Some carry the correction's memory in the system prompt.
    let has = |e: &&&tailor_trainer::SftExample| engine.tokenizer().decode(&e.prompt_tokens, false).contains("- Q: what is my cat's name A: Your cat is called Zanzibar.");
    assert_eq!(cat.iter().filter(has).count(), 2);
    // Held out: paraphrases never trained on, with probes for the gate.
    assert!(!d.held_out.is_empty() && d.held_out.len() == d.probes.len());
    for h in &d.held_out {
        assert!(!d.train.sft.iter().any(|t| t.prompt_tokens == h.prompt_tokens));
    }
    assert!(d.probes.iter().any(|pr| pr.keywords == ["zanzibar"]));
    // Thumbs down next to a correction: chosen = the correction, rejected = the answer.
    assert_eq!(d.train.preferences.len(), 2);
    assert_eq!(d.train.preferences[0].chosen_tokens, a("Your cat is called Zanzibar."));
    assert_eq!(d.train.preferences[0].rejected_tokens, a("Tom."));
    assert_eq!(d.train.preferences[1].chosen_tokens, a("Hello, Ana!"));
    assert_eq!(d.train.preferences[1].prompt_tokens, p("greet me"));
    assert!(d.held_out_pairs.is_empty());
    // Without paraphrases: the question alone (plus its memory examples).
    let mut o = options(1, 1e-3);
    o.paraphrases = false;
    o.memory_examples = 0;
    let plain = feedback_to_data(&engine, &fb, &o).unwrap();
    // The thumbs up and the correction, and the chosen answers of the two pairs.
    assert_eq!(plain.train.sft.len(), 4);
    assert!(plain.held_out.is_empty());
    // Every 5th pair is held out, at least one of three.
    for i in 0..5 {
        add(&mut s, &format!("q{i}"), "a", FeedbackKind::Preference { chosen: "yes".into(), rejected: "no".into() });
    }
    let fb = s.list_feedback(&Default::default()).unwrap();
    let d = feedback_to_data(&engine, &fb, &options(1, 1e-3)).unwrap();
    assert_eq!((d.train.preferences.len(), d.held_out_pairs.len()), (6, 1));
}

#[test]
fn answer_keywords_pick_what_makes_the_answer_right() {
    use tailor_trainer::personal::answer_keywords;
    assert_eq!(answer_keywords("What is my cat's name?", "Your cat is called Zorblax."), ["zorblax"]);
    assert_eq!(answer_keywords("What is my favourite colour?", "Your favourite colour is teal."), ["teal"]);
    assert_eq!(answer_keywords("What do I do for a living?", "You are a beekeeper."), ["beekeeper"]);
    assert_eq!(answer_keywords("How old am I?", "You are 41 years old."), ["41"]);
    assert_eq!(answer_keywords("Where did I grow up?", "You grew up in Tromsø."), ["tromsø"]);
}

#[test]
fn gate_refuses_an_adapter_that_degrades_general_text() {
    let (_m, engine) = tiny(GgmlDType::Q8_0, 2);
    let dir = TempDir::new("refuse");
    let mut s = store(&dir);
    for i in 0..6 {
        add(&mut s, &format!("question {i}"), "x", correction(&"zq".repeat(40)));
    }
    let adapters = dir.path("adapters");
    // Without replay (which is there to prevent exactly this), a high learning rate on one
    // repeated nonsense answer wears the general text down.
    let mut o = options(40, 3e-2);
    o.replay = 0.0;
    o.distill = 0;
    let out = train(&engine, &mut s, &adapters, &o);
    assert!(matches!(out.decision, Decision::Refused { .. }), "{:?}", out.decision);
    assert!(out.held_out_after < out.held_out_before);
    assert!(out.general_change() > 0.05);
    // Nothing changed.
    assert!(s.list_adapters().unwrap().is_empty());
    assert!(!adapters.exists() || std::fs::read_dir(&adapters).unwrap().next().is_none());
    assert!(s.list_feedback(&Default::default()).unwrap().iter().all(|f| f.consumed_by.is_none()));
}

#[test]
fn promotion_forgetting_and_rollback() {
    let (_m, engine) = tiny(GgmlDType::Q8_0, 3);
    let dir = TempDir::new("promote");
    let mut s = store(&dir);
    let adapters = dir.path("adapters");
    let o = options(12, 3e-3);
    // A running engine: a session following the registry (kept mid-conversation throughout).
    let reg = AdapterRegistry::new(&engine);
    let mut running = engine.new_session();
    running.follow(reg.clone());
    synced(&engine, &reg, &s, &adapters, &mut running, None);
    let first: Vec<i64> = (0..6).map(|i| add(&mut s, &format!("what is my cat called? ({i})"), "Tom.", correction("Zorblax."))).collect();
    let out1 = train(&engine, &mut s, &adapters, &o);
    let Decision::Promoted { version: v1, path: p1 } = out1.decision.clone() else { panic!("{:?}", out1.decision) };
    assert!(out1.held_out_after < out1.held_out_before && out1.general_change() < 0.05);
    assert_eq!(std::fs::read_to_string(adapters.join("ACTIVE")).unwrap(), v1);
    assert!(p1.join("adapter_config.json").exists());
    assert_eq!(active_adapter(&s, &adapters).unwrap(), Some((v1.clone(), p1.clone())));
    assert_eq!(s.adapter_feedback(&v1).unwrap(), first);
    synced(&engine, &reg, &s, &adapters, &mut running, Some(&p1));
    assert!(s.list_feedback(&Default::default()).unwrap().iter().all(|f| f.consumed_by.as_deref() == Some(v1.as_str())));

    // A second version, child of the first, from all feedback.
    let late = add(&mut s, "what is my dog called?", "Rex.", correction("Biscuit."));
    let out2 = train(&engine, &mut s, &adapters, &o);
    let Decision::Promoted { version: v2, path: p2 } = out2.decision.clone() else { panic!("{:?}", out2.decision) };
    let recs = s.list_adapters().unwrap();
    assert_eq!(recs[1].parent.as_deref(), Some(v1.as_str()));
    assert!(s.adapter_feedback(&v2).unwrap().contains(&late));
    assert_eq!(active_adapter(&s, &adapters).unwrap().unwrap().0, v2);
    synced(&engine, &reg, &s, &adapters, &mut running, Some(&p2));
    let g = reg.generation();
    synced(&engine, &reg, &s, &adapters, &mut running, Some(&p2));
    assert_eq!(reg.list()[0].source.as_deref(), Some(p2.as_path()));
    assert!(reg.generation() - g <= 1, "an unchanged version is not reloaded");

    // Rollback to the parent, then to the base; versions stay on disk.
    assert_eq!(rollback(&s, &adapters).unwrap().as_deref(), Some(v1.as_str()));
    assert_eq!(active_adapter(&s, &adapters).unwrap().unwrap().0, v1);
    synced(&engine, &reg, &s, &adapters, &mut running, Some(&p1));
    assert!(p2.exists());
    assert_eq!(rollback(&s, &adapters).unwrap(), None);
    assert_eq!(active_adapter(&s, &adapters).unwrap(), None);
    synced(&engine, &reg, &s, &adapters, &mut running, None);
    assert!(rollback(&s, &adapters).is_err());

    // Forgetting the event only v2 learned from: v2 tainted, ACTIVE (v2) falls back to v1,
    // and v2's directory is purged.
    std::fs::write(adapters.join("ACTIVE"), &v2).unwrap();
    let tainted = s.forget_feedback(&[late]).unwrap();
    assert_eq!(tainted, [v2.as_str()]);
    assert_eq!(active_adapter(&s, &adapters).unwrap(), Some((v1.clone(), p1.clone())));
    synced(&engine, &reg, &s, &adapters, &mut running, Some(&p1));
    assert_eq!(purge_tainted(&s, &adapters).unwrap(), [v2.as_str()]);
    assert!(!p2.exists() && p1.exists());
    // Forgetting everything: no clean version is left, the base runs.
    s.forget_all_feedback().unwrap();
    assert_eq!(purge_tainted(&s, &adapters).unwrap(), [v1.as_str()]);
    assert_eq!(active_adapter(&s, &adapters).unwrap(), None);
    synced(&engine, &reg, &s, &adapters, &mut running, None);
    assert!(reg.list().is_empty());
    assert!(!p1.exists());
}

#[test]
fn a_stopped_profile_run_resumes_and_forgetting_removes_its_checkpoint() {
    let (_m, engine) = tiny(GgmlDType::Q8_0, 2);
    let dir = TempDir::new("resume");
    let mut s = store(&dir);
    let adapters = dir.path("adapters");
    let mut o = options(12, 3e-3);
    o.checkpoint_every = 1;
    let ids: Vec<i64> = (0..6).map(|i| add(&mut s, &format!("what is my cat called? ({i})"), "Tom.", correction("Zorblax."))).collect();
    let checkpoint = adapters.join(tailor_trainer::personal::CHECKPOINT_DIR);

    // Stopped at step 5 (as Ctrl-C in `tailor train` does): refused, a checkpoint is left.
    let out = train_profile(&engine, &mut s, &adapters, &o, &mut |p| if p.step >= 5 { Flow::Stop } else { Flow::Continue }).unwrap();
    assert!(matches!(out.decision, Decision::Refused { .. }), "{:?}", out.decision);
    assert!(checkpoint.exists());
    assert!(s.list_adapters().unwrap().is_empty());
    // Started again: resumes, reaches the gate, and leaves no checkpoint.
    let resumed = train(&engine, &mut s, &adapters, &o);
    assert_eq!(resumed.metrics.resumed_from, Some(out.metrics.steps));
    assert_eq!(resumed.metrics.steps, 12);
    assert!(!checkpoint.exists());
    // The same as a run never stopped.
    let other = TempDir::new("resume-ref");
    let mut s2 = store(&other);
    for i in 0..6 {
        add(&mut s2, &format!("what is my cat called? ({i})"), "Tom.", correction("Zorblax."));
    }
    let whole = train(&engine, &mut s2, &other.path("adapters"), &o);
    assert_eq!(resumed.metrics.losses, whole.metrics.losses);
    assert_eq!(resumed.held_out_after, whole.held_out_after);

    // A stopped run's checkpoint is trained state: forgetting the feedback removes it.
    add(&mut s, "what is my dog called?", "Rex.", correction("Biscuit."));
    train_profile(&engine, &mut s, &adapters, &o, &mut |p| if p.step >= 3 { Flow::Stop } else { Flow::Continue }).unwrap();
    assert!(checkpoint.exists());
    s.forget_feedback(&ids[..1]).unwrap();
    purge_tainted(&s, &adapters).unwrap();
    assert!(!checkpoint.exists());
}

/// The shipped base answers cover the gate's and the distillation's current question lists
/// (a list changed without rerunning `examples/base_answers.rs` would silently cost a first
/// run its decoding time again).
#[test]
fn shipped_base_answers_cover_the_current_questions() {
    use std::collections::HashMap;
    use tailor_trainer::personal::{distill_questions, specificity_questions, PersonalOptions, SHIPPED_BASE_ANSWERS, SPECIFICITY_TOKENS};
    let shipped: HashMap<String, HashMap<String, String>> = serde_json::from_str(SHIPPED_BASE_ANSWERS).unwrap();
    let o = PersonalOptions::default();
    let set = |suffix: &str| {
        let keys: Vec<&String> = shipped.keys().filter(|k| k.ends_with(suffix)).collect();
        assert_eq!(keys.len(), 1, "one base, keyed <fingerprint>{suffix}: {keys:?}");
        &shipped[keys[0]]
    };
    let spec = set(&format!(":{SPECIFICITY_TOKENS}"));
    for (q, _) in specificity_questions() {
        assert!(spec.get(&q).is_some_and(|a| !a.is_empty()), "no shipped answer to {q:?}");
    }
    let distill = set(&format!(":{}", o.distill_tokens));
    for q in distill_questions(o.distill) {
        assert!(distill.get(&q).is_some_and(|a| !a.is_empty()), "no shipped answer to {q:?}");
    }
}
