//! Writes `trainer/data/base-answers.json`: the default base model's greedy answers to the
//! gate's specificity questions (`SPECIFICITY_TOKENS`) and to the distillation questions (40 tokens),
//! which `personal` ships so that a profile's first training run does not decode them (~20 s
//! on two cores). Derived data: rerun after changing either question list or the default model.
//!
//! ```text
//! cargo run --release -p tailor-trainer --example base_answers -- [--model M.gguf] [--out trainer/data/base-answers.json]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result};
use tailor::{Engine, EngineConfig, ModelCache};
use tailor_trainer::personal::{distill_questions, greedy_answers, specificity_questions, PersonalOptions, SPECIFICITY_TOKENS};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut out) = (None::<PathBuf>, PathBuf::from("trainer/data/base-answers.json"));
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = Some(args.next().context("--model PATH")?.into()),
            "--out" => out = args.next().context("--out PATH")?.into(),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let model = match model {
        Some(m) => m,
        None => {
            let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(ModelCache::default_root).context("no cache dir")?;
            ModelCache::new(root).base_model_path()
        }
    };
    let engine = Engine::load(&model, EngineConfig::default()).with_context(|| format!("loading {}", model.display()))?;
    let o = PersonalOptions::default();
    let fp = engine.base_fingerprint().as_str().to_string();
    let mut all: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let sets: [(Vec<String>, usize); 2] =
        [(specificity_questions().into_iter().map(|(q, _)| q).collect(), SPECIFICITY_TOKENS), (distill_questions(o.distill), o.distill_tokens)];
    for (questions, max_tokens) in sets {
        let answers = greedy_answers(&engine, None, &questions, max_tokens)?;
        let entry = all.entry(format!("{fp}:{max_tokens}")).or_default();
        entry.extend(questions.into_iter().zip(answers));
    }
    // The same layout as the gate cache (a map of maps), sorted for stable diffs.
    let _: HashMap<String, HashMap<String, String>> = serde_json::from_str(&serde_json::to_string(&all)?)?;
    std::fs::write(&out, serde_json::to_string_pretty(&all)? + "\n")?;
    eprintln!("wrote {} ({} sets)", out.display(), all.len());
    Ok(())
}
