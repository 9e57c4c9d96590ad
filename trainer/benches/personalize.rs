//! The personalization benchmark (not a test; prints figures and JSON): from feedback on 20
//! made-up facts about a user (`data/facts.json`: each fact corrected in three phrasings of
//! the question, 60 feedback events), `train_profile` trains a new adapter version within a
//! time limit on the real model, and the gate decides. Reported:
//! - held-out NLL before/after (the gate's split: every 5th correction, never trained on; the
//!   goal is at least 30% lower) and the general-text NLL change (goal: under 5%);
//! - on a fourth phrasing of each fact that is in no feedback at all (the *paraphrase* set):
//!   NLL before/after and how many greedy answers state the fact, with sample answers.
//!
//! ```text
//! cargo bench -p tailor-trainer --bench personalize -- [--model M.gguf] [--threads 2]
//!     [--seconds 120] [--epochs E] [--lr LR] [--rank R] [--facts 20] [--replay F]
//! ```
//!
//! (`E`, `LR`, `R`, `F` default to [`PersonalOptions::default`]'s.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tailor::adapters::peft::{self, LoadOptions};
use tailor::adapters::{LoraAdapter, LoraSet};
use tailor::profile::testing::HashEmbedder;
use tailor::profile::{FeedbackKind, MemoryConfig, MemoryStore, NewFeedback};
use tailor::{ChatMessage, Engine, EngineConfig, Flow, GenerateParams, LoraHook, Prompt};
use tailor_trainer::personal::{train_profile, Decision, PersonalOptions};
use tailor_trainer::{mean_nll, score_answers, SftExample};

#[derive(Deserialize)]
struct Facts {
    facts: Vec<Fact>,
}

#[derive(Deserialize)]
struct Fact {
    asked: Vec<String>,
    paraphrase: String,
    answer: String,
    keyword: String,
}

struct Args {
    model: Option<PathBuf>,
    threads: usize,
    seconds: f64,
    epochs: usize,
    lr: f32,
    rank: usize,
    facts: usize,
    replay: f32,
}

fn parse() -> Result<Args> {
    let d = PersonalOptions::default();
    let mut a = Args {
        model: None,
        threads: 2,
        seconds: 120.0,
        epochs: d.train.epochs,
        lr: d.train.learning_rate,
        rank: d.train.lora_rank,
        facts: 20,
        replay: d.replay,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--model" => a.model = Some(val("--model")?.into()),
            "--threads" => a.threads = val("--threads")?.parse()?,
            "--seconds" => a.seconds = val("--seconds")?.parse()?,
            "--epochs" => a.epochs = val("--epochs")?.parse()?,
            "--lr" => a.lr = val("--lr")?.parse()?,
            "--rank" => a.rank = val("--rank")?.parse()?,
            "--facts" => a.facts = val("--facts")?.parse()?,
            "--replay" => a.replay = val("--replay")?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// Greedy answers to `questions`, with `adapter` or the base alone.
fn answers(engine: &Engine, adapter: Option<&LoraAdapter>, questions: &[&str]) -> Result<Vec<String>> {
    let mut s = engine.new_session();
    if let Some(a) = adapter {
        let set = LoraSet::new().with(Arc::new(a.clone()), 1.0);
        s.set_hooks(LoraHook::from_set(engine, &set)?.into_hooks());
    }
    let mut params = GenerateParams::default();
    params.max_tokens = 24;
    questions
        .iter()
        .map(|q| Ok(s.generate(&Prompt::Chat(vec![ChatMessage::user(*q)]), &params, &mut |_| Flow::Continue)?.text.trim().to_string()))
        .collect()
}

fn main() -> Result<()> {
    let args = parse()?;
    let model = match args.model.clone() {
        Some(m) => m,
        None => {
            let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(tailor::ModelCache::default_root).context("no cache dir")?;
            tailor::ModelCache::new(root).base_model_path()
        }
    };
    let mut ec = EngineConfig::default();
    ec.threads = args.threads;
    let engine = Engine::load(&model, ec).with_context(|| format!("loading {} (run `tailor models fetch`)", model.display()))?;
    let facts: Facts = serde_json::from_str(include_str!("../data/facts.json"))?;
    let facts = &facts.facts[..args.facts.min(facts.facts.len())];

    let dir = std::env::temp_dir().join(format!("tailor-personalize-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut store = MemoryStore::open(dir.join("profile.db"), Arc::new(HashEmbedder::new(16, 0)), MemoryConfig::default())?;
    for f in facts {
        for q in &f.asked {
            store.add_feedback(NewFeedback::new(q, "I'm sorry, I don't know that.", FeedbackKind::Correction { corrected: f.answer.clone() }))?;
        }
    }

    // The paraphrase set: in no feedback.
    let paraphrases: Vec<&str> = facts.iter().map(|f| f.paraphrase.as_str()).collect();
    let para_examples = facts
        .iter()
        .map(|f| {
            Ok(SftExample {
                prompt_tokens: engine.tokenize(&engine.render_chat(&[ChatMessage::user(&f.paraphrase)])?)?,
                answer_tokens: engine.tokenize(&format!("{}<|im_end|>", f.answer))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let para_before = mean_nll(&score_answers(&engine, None, &para_examples, args.threads)?);
    let before = answers(&engine, None, &paraphrases)?;

    let mut options = PersonalOptions::default();
    options.train.max_seconds = Some(args.seconds);
    options.train.epochs = args.epochs;
    options.train.learning_rate = args.lr;
    if args.rank != options.train.lora_rank {
        options.train.lora_alpha *= args.rank as f64 / options.train.lora_rank as f64;
        options.train.lora_rank = args.rank;
    }
    options.train.threads = args.threads;
    options.replay = args.replay;
    let start = Instant::now();
    let mut last = Instant::now();
    let outcome = train_profile(&engine, &mut store, &dir.join("profile.db.adapters"), &options, &mut |p| {
        if last.elapsed().as_secs_f64() > 10.0 {
            eprintln!("step {}/{} loss {:.3} {:.0} tok/s", p.step, p.total_steps, p.loss, p.tokens_per_s);
            last = Instant::now();
        }
        Flow::Continue
    })?;
    let wall = start.elapsed().as_secs_f64();
    let m = &outcome.metrics;
    println!(
        "trained {} of {} steps on {} examples ({} held out, {} replay paragraphs) in {:.1} s ({:?}), {:.0} tok/s; train + gate {:.1} s",
        m.steps,
        m.total_steps,
        outcome.train_examples,
        outcome.held_out_examples,
        outcome.replay_examples,
        m.elapsed.as_secs_f64(),
        m.stop,
        m.tokens_per_s,
        wall
    );
    let held_change = outcome.held_out_after / outcome.held_out_before - 1.0;
    println!(
        "held-out NLL {:.3} -> {:.3} ({:+.1}%, goal <= -30%); general-text NLL {:.4} -> {:.4} ({:+.2}%, goal < +5%)",
        outcome.held_out_before,
        outcome.held_out_after,
        held_change * 100.0,
        outcome.general_before,
        outcome.general_after,
        outcome.general_change() * 100.0
    );
    let adapter = match &outcome.decision {
        Decision::Promoted { version, path } => {
            println!("promoted {version}");
            Some(peft::load(path, &LoadOptions::new())?)
        }
        Decision::Refused { reason } => {
            println!("refused: {reason}");
            None
        }
        _ => None,
    };
    let mut report = serde_json::json!({
        "facts": facts.len(),
        "steps": m.steps,
        "train_s": m.elapsed.as_secs_f64(),
        "tokens_per_s": m.tokens_per_s,
        "held_out_nll_before": outcome.held_out_before,
        "held_out_nll_after": outcome.held_out_after,
        "held_out_change": held_change,
        "general_nll_change": outcome.general_change(),
        "promoted": outcome.promoted(),
        "paraphrase_nll_before": para_before,
    });
    if let Some(a) = &adapter {
        let para_after = mean_nll(&score_answers(&engine, Some(a), &para_examples, args.threads)?);
        let after = answers(&engine, Some(a), &paraphrases)?;
        let hits = |ans: &[String]| ans.iter().zip(facts).filter(|(a, f)| a.to_lowercase().contains(&f.keyword.to_lowercase())).count();
        println!(
            "paraphrases (in no feedback): NLL {para_before:.3} -> {para_after:.3} ({:+.1}%); greedy answers stating the fact: before {}/{n}, after {}/{n}",
            (para_after / para_before - 1.0) * 100.0,
            hits(&before),
            hits(&after),
            n = facts.len()
        );
        for ((q, b), a) in paraphrases.iter().zip(&before).zip(&after).take(6) {
            println!("  Q: {q}\n     before: {b:?}\n     after:  {a:?}");
        }
        report["paraphrase_nll_after"] = para_after.into();
        report["paraphrase_hits_before"] = hits(&before).into();
        report["paraphrase_hits_after"] = hits(&after).into();
    }
    println!("{report}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
