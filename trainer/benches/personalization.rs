//! The personalization benchmark (a program, not a test): does feedback change the answers?
//!
//! On the real model, the real embedder and a real profile file, as a user would: N facts
//! (`data/facts.json`, default 10) are each corrected **once**, in one phrasing, through the
//! profile store (which mirrors every correction into a memory). Then, on three other
//! phrasings of each question that are in no feedback (hand-written, never generated):
//! - **base**: the base model alone;
//! - **memory only**: right after the feedback, before any training (memories in the prompt,
//!   read with the memory-reading adapter);
//! - `PersonalModel::train` with `PersonalOptions::default()`, timed;
//! - **adapter only** (memory off) and **both**;
//! - specificity (unrelated questions the base answers right, lost by the adapter) and the
//!   general-text NLL change, from the gate;
//! - preferences: a second profile gets six chosen/rejected pairs whose chosen answers open
//!   with one phrase; the gate's held-out margin before/after, and how many answers to four
//!   new prompts open with it.
//!
//! Prints a Markdown table and writes it (with JSON) to `--out` (default, from the workspace root:
//! `bench/results/personalization.md`).
//!
//! ```text
//! cargo bench -p tailor-trainer --bench personalization -- [--model M.gguf] [--facts 10]
//!     [--threads 2] [--out bench/results/personalization.md] [--lr LR] [--epochs E] [--batch B] [--accum N] [--no-prefs | --only-prefs]
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tailor::profile::{BertEmbedder, FeedbackKind, MemoryConfig, MemoryStore, NewFeedback};
use tailor::{ChatMessage, Engine, EngineConfig, Flow, GenerateParams, MemoryPromptConfig, ModelCache, Prompt};
use tailor_trainer::augment::paraphrase;
use tailor_trainer::personal::PersonalOptions;
use tailor_trainer::PersonalModel;

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

#[derive(Deserialize)]
struct Prefs {
    opening: String,
    pairs: Vec<Pair>,
    new_prompts: Vec<String>,
}

#[derive(Deserialize)]
struct Pair {
    prompt: String,
    chosen: String,
    rejected: String,
}

struct Args {
    model: Option<PathBuf>,
    facts: usize,
    threads: usize,
    out: PathBuf,
    lr: Option<f32>,
    epochs: Option<usize>,
    batch: Option<usize>,
    accum: Option<usize>,
    prefs: bool,
    replay: Option<f32>,
    distill: Option<usize>,
    paraphrases: Option<usize>,
    pref_sft: Option<bool>,
    dpo_beta: Option<f32>,
    only_prefs: bool,
    distill_tokens: Option<usize>,
}

fn parse() -> Result<Args> {
    let mut a = Args { model: None, facts: 10, threads: 2, out: concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results/personalization.md").into(), lr: None, epochs: None, batch: None, accum: None, prefs: true, replay: None, distill: None, paraphrases: None, pref_sft: None, dpo_beta: None, only_prefs: false, distill_tokens: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--model" => a.model = Some(val("--model")?.into()),
            "--facts" => a.facts = val("--facts")?.parse()?,
            "--threads" => a.threads = val("--threads")?.parse()?,
            "--out" => a.out = val("--out")?.into(),
            "--lr" => a.lr = Some(val("--lr")?.parse()?),
            "--epochs" => a.epochs = Some(val("--epochs")?.parse()?),
            "--batch" => a.batch = Some(val("--batch")?.parse()?),
            "--accum" => a.accum = Some(val("--accum")?.parse()?),
            "--no-prefs" => a.prefs = false,
            "--only-prefs" => a.only_prefs = true,
            "--distill-tokens" => a.distill_tokens = Some(val("--distill-tokens")?.parse()?),
            "--replay" => a.replay = Some(val("--replay")?.parse()?),
            "--distill" => a.distill = Some(val("--distill")?.parse()?),
            "--paraphrases" => a.paraphrases = Some(val("--paraphrases")?.parse()?),
            "--pref-sft" => a.pref_sft = Some(val("--pref-sft")?.parse()?),
            "--dpo-beta" => a.dpo_beta = Some(val("--dpo-beta")?.parse()?),
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Greedy answers of `me`'s sessions (memory on or off) or of the base alone.
fn ask(engine: &Engine, me: Option<&PersonalModel>, memory: bool, questions: &[&str]) -> Result<Vec<String>> {
    let mut s = match me {
        Some(m) => {
            let mut s = m.new_session();
            if !memory {
                let mut c = MemoryPromptConfig::default();
                c.enabled = false;
                s.set_memory(None, c);
            }
            s
        }
        None => engine.new_session(),
    };
    let mut params = GenerateParams::default();
    params.max_tokens = 32;
    questions
        .iter()
        .map(|q| Ok(s.generate(&Prompt::Chat(vec![ChatMessage::user(*q)]), &params, &mut |_| Flow::Continue)?.text.trim().to_string()))
        .collect()
}

/// Median decode tok/s of three 64-token generations on a fresh session.
fn decode_speed(engine: &Engine) -> Result<f64> {
    let mut params = GenerateParams::default();
    params.max_tokens = 64;
    params.ignore_eos = true;
    let mut v: Vec<f64> = (0..3)
        .map(|_| {
            let mut s = engine.new_session();
            let g = s.generate(&Prompt::Chat(vec![ChatMessage::user("Tell me a story about a lighthouse.")]), &params, &mut |_| Flow::Continue)?;
            Ok(g.timings.decode_tok_per_s())
        })
        .collect::<Result<_>>()?;
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[1])
}

/// `PersonalOptions::default()` with the command line's overrides.
fn options_from(args: &Args) -> PersonalOptions {
    let mut options = PersonalOptions::default();
    options.train.threads = args.threads;
    if let Some(lr) = args.lr {
        options.train.learning_rate = lr;
    }
    if let Some(b) = args.batch {
        options.train.batch_size = b;
    }
    if let Some(n) = args.accum {
        options.train.grad_accum_steps = n;
    }
    if let Some(e) = args.epochs {
        options.train.epochs = e;
    }
    if let Some(r) = args.replay {
        options.replay = r;
    }
    if let Some(d) = args.distill {
        options.distill = d;
    }
    if let Some(t) = args.distill_tokens {
        options.distill_tokens = t;
    }
    if let Some(p) = args.paraphrases {
        options.max_paraphrases = p;
    }
    if let Some(p) = args.pref_sft {
        options.preference_sft = p;
    }
    if let Some(b) = args.dpo_beta {
        options.train.dpo_beta = b;
    }
    options
}

/// The preference run on a second profile: its table rows, JSON, and decode tok/s of a request
/// idle and while the run trains in the background.
fn preferences(engine: &Engine, embedder: &Arc<BertEmbedder>, dir: &std::path::Path, options: &PersonalOptions) -> Result<(String, serde_json::Value, (f64, f64))> {
    let prefs: Prefs = serde_json::from_str(include_str!("../data/preferences.json"))?;
    let p2 = dir.join("prefs.db");
    let store = MemoryStore::open(&p2, embedder.clone(), MemoryConfig::default())?;
    let pm = PersonalModel::open(&engine, store, &p2)?;
    for p in &prefs.pairs {
        let kind = FeedbackKind::Preference { chosen: p.chosen.clone(), rejected: p.rejected.clone() };
        pm.store().lock().unwrap().add_feedback(NewFeedback::new(&p.prompt, &p.rejected, kind))?;
    }
    let new: Vec<&str> = prefs.new_prompts.iter().map(String::as_str).collect();
    let opens = |ans: &[String]| ans.iter().filter(|a| a.starts_with(&prefs.opening)).count();
    let before = ask(&engine, None, false, &new)?;
    // Decode speed of a user's request, idle and while this profile trains in the
    // background (the run pauses between steps while a generation runs).
    let idle = decode_speed(&engine)?;
    let t = Instant::now();
    let job = pm.start_training(options.clone())?;
    while job.status().step == 0 && !job.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let busy = decode_speed(&engine)?;
    let status = job.wait();
    let secs = t.elapsed().as_secs_f64();
    eprintln!("decode idle {idle:.0} tok/s, during background training {busy:.0} tok/s ({:.2}x); the run paused {:.1} s", busy / idle, status.paused_seconds);
    let po = job.outcome().context("the preference run ended without an outcome")?;
    if let (false, Some(a)) = (po.promoted(), &po.adapter) {
        pm.registry().insert("refused", (**a).clone())?;
        pm.registry().set_weight("refused", Some(1.0))?;
    }
    let after = ask(&engine, Some(&pm), false, &new)?;
    eprintln!("preferences: {:?}: {}; new prompts opening with {:?}: {} -> {} of {}", po.decision, po.summary(), prefs.opening, opens(&before), opens(&after), new.len());
    for a in &after {
        eprintln!("  {a:?}");
    }
    let pref_row = format!(
        "| preference margin, held-out pair (log-prob chosen − rejected) | {:+.2} | {:+.2} | {} |\n| new prompts answered in the preferred style ({:?}) | {}/{} | {}/{} | trained {:.0} s |\n",
        po.margin_before.unwrap_or(f64::NAN),
        po.margin_after.unwrap_or(f64::NAN),
        if po.promoted() { "promoted".to_string() } else { format!("refused: {}", match &po.decision { tailor_trainer::personal::Decision::Refused { reason } => reason.as_str(), _ => "" }) },
        prefs.opening,
        opens(&before),
        new.len(),
        opens(&after),
        new.len(),
        secs
    );
    let pref_json = serde_json::json!({
        "margin_before": po.margin_before, "margin_after": po.margin_after, "promoted": po.promoted(),
        "style_before": opens(&before), "style_after": opens(&after), "new_prompts": new.len(), "train_s": secs,
    });
    Ok((pref_row, pref_json, (idle, busy)))
}

fn main() -> Result<()> {
    let args = parse()?;
    let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(ModelCache::default_root).context("no cache dir")?;
    let cache = ModelCache::new(root);
    let model = args.model.clone().unwrap_or_else(|| cache.base_model_path());
    let mut ec = EngineConfig::default();
    ec.threads = args.threads;
    let engine = Engine::load(&model, ec).with_context(|| format!("loading {} (run `tailor models fetch`)", model.display()))?;
    let embedder = Arc::new(BertEmbedder::load(cache.embedder_dir()).context("the embedder (run `tailor models fetch`)")?);
    let facts: Facts = serde_json::from_str(include_str!("../data/facts.json"))?;
    let facts = &facts.facts[..args.facts.min(facts.facts.len())];
    let dir = std::env::temp_dir().join(format!("tailor-personalization-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    if args.only_prefs {
        let (row, json, (idle, busy)) = preferences(&engine, &embedder, &dir, &options_from(&args))?;
        println!("{row}| decode idle / during background training | {idle:.0} | {busy:.0} | |\n\n{json}");
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }

    // One correction per fact, in one phrasing.
    let profile = dir.join("me.db");
    let store = MemoryStore::open(&profile, embedder.clone(), MemoryConfig::default())?;
    let me = PersonalModel::open(&engine, store, &profile)?;
    for f in facts {
        let kind = FeedbackKind::Correction { corrected: f.answer.clone() };
        me.store().lock().unwrap().add_feedback(NewFeedback::new(&f.asked[0], "I'm sorry, I don't know that.", kind))?;
    }
    let memories = me.store().lock().unwrap().len()?;
    let mut questions: Vec<&str> = Vec::new();
    let mut keys: Vec<&str> = Vec::new();
    for f in facts {
        for q in f.asked[1..].iter().chain(std::iter::once(&f.paraphrase)) {
            questions.push(q);
            keys.push(&f.keyword);
        }
    }
    // How many evaluation questions the augmentation happens to generate word for word.
    let norm = |s: &str| s.trim().trim_end_matches(['?', '.']).to_lowercase();
    let generated: usize = facts
        .iter()
        .map(|f| {
            let p = paraphrase(&f.asked[0], &f.answer);
            f.asked[1..].iter().chain(std::iter::once(&f.paraphrase)).filter(|q| p.train.iter().any(|t| norm(t) == norm(q))).count()
        })
        .sum();
    let hits = |ans: &[String]| ans.iter().zip(&keys).filter(|(a, k)| a.to_lowercase().contains(&k.to_lowercase())).count();
    let n = questions.len();

    let base = ask(&engine, None, false, &questions)?;
    let mem_only = ask(&engine, Some(&me), true, &questions)?;
    eprintln!("base {}/{n}, memory only {}/{n} ({memories} memories mirrored)", hits(&base), hits(&mem_only));

    let options = options_from(&args);
    let t = Instant::now();
    let mut last = Instant::now();
    let outcome = me.train(&options, &mut |p| {
        if last.elapsed().as_secs_f64() > 15.0 {
            eprintln!("step {}/{} loss {:.3} {:.0} tok/s", p.step, p.total_steps, p.loss, p.tokens_per_s);
            last = Instant::now();
        }
        Flow::Continue
    })?;
    let wall = t.elapsed().as_secs_f64();
    eprintln!("{:?}: {}", outcome.decision, outcome.summary());
    for (q, b, a) in &outcome.specificity_changes {
        eprintln!("  lost: {q}\n    base: {b:?}\n    now:  {a:?}");
    }
    // A refused version is judged too (its adapter, run by hand), so a sweep sees what the
    // gate turned down; the table says which it was.
    let refused = !outcome.promoted();
    if let (true, Some(a)) = (refused, &outcome.adapter) {
        me.registry().insert("refused", (**a).clone())?;
        me.registry().set_weight("refused", Some(1.0))?;
    }
    let adapter_only = ask(&engine, Some(&me), false, &questions)?;
    let both = ask(&engine, Some(&me), true, &questions)?;
    if refused && outcome.adapter.is_some() {
        me.registry().unload("refused")?;
    }
    for (i, q) in questions.iter().enumerate() {
        if !adapter_only[i].to_lowercase().contains(&keys[i].to_lowercase()) {
            eprintln!("adapter only missed: {q} (wants {}): {:?}", keys[i], adapter_only[i]);
        }
    }
    for (i, q) in questions.iter().enumerate().take(9) {
        eprintln!("Q: {q}\n  base:    {:?}\n  memory:  {:?}\n  adapter: {:?}\n  both:    {:?}", base[i], mem_only[i], adapter_only[i], both[i]);
    }
    let m = &outcome.metrics;

    // Preferences.
    let (pref_row, pref_json, bg) = if args.prefs {
        let (row, json, bg) = preferences(&engine, &embedder, &dir, &options)?;
        (row, json, Some(bg))
    } else {
        ("| preference margin (held-out pair) | not run | | |\n".to_string(), serde_json::Value::Null, None)
    };

    let pct = |k: usize| 100.0 * k as f64 / n as f64;
    let table = format!(
        "| {n_f} facts, each corrected once; {n} paraphrased questions in no feedback | right | |\n| --- | --- | --- |\n\
         | base model | {b}/{n} ({bp:.0}%) | |\n\
         | memory only (right after `feedback add`, before training) | {mo}/{n} ({mop:.0}%) | target ≥ 85% |\n\
         | adapter only (memory off), after `train` with defaults{rf} | {ao}/{n} ({aop:.0}%) | target ≥ 90% |\n\
         | adapter + memory | {bo}/{n} ({bop:.0}%) | |\n\n\
         | training and gate | | | |\n| --- | --- | --- | --- |\n\
         | decision | {dec} | | |\n\
         | training | {steps} steps, {ts:.0} s | {tps:.0} trained tok/s | data {prep:.0} s + gate {gate:.0} s, {wall:.0} s in all (target ≤ 120 s of training) |\n\
         | gate: held-out paraphrases (generated, not these) answered right | {pb}/{pn} | {pa}/{pn} | |\n\
         | specificity: unrelated questions the base answers right, lost | {sl}/{sb} | | target ≤ 1 in 10 |\n\
         | general-text NLL | {gb:.4} | {ga:.4} | {gc:+.2}% (target ≤ +3%) |\n\
         {pref_row}\
         {bg_row}\
         | peak RSS of the whole benchmark | {rss:.0} MiB | | |\n\n\
         Evaluation questions the augmentation generates word for word: {generated} of {n}. Run:\n\
         `cargo bench -p tailor-trainer --bench personalization` ({threads} threads).\n",
        n_f = facts.len(),
        b = hits(&base),
        bp = pct(hits(&base)),
        mo = hits(&mem_only),
        mop = pct(hits(&mem_only)),
        ao = hits(&adapter_only),
        aop = pct(hits(&adapter_only)),
        bo = hits(&both),
        rf = if refused { " (the version the gate refused)" } else { "" },
        bop = pct(hits(&both)),
        dec = match &outcome.decision {
            tailor_trainer::personal::Decision::Promoted { version, .. } => format!("promoted {version}"),
            tailor_trainer::personal::Decision::Refused { reason } => format!("refused: {reason}"),
            _ => "?".into(),
        },
        steps = m.steps,
        ts = m.elapsed.as_secs_f64(),
        tps = m.tokens_per_s,
        prep = outcome.prepare_seconds,
        gate = outcome.gate_seconds,
        wall = wall,
        pb = outcome.probes_right_before,
        pa = outcome.probes_right_after,
        pn = outcome.probes,
        sl = outcome.specificity_lost,
        sb = outcome.specificity_base_right,
        gb = outcome.general_before,
        ga = outcome.general_after,
        gc = outcome.general_change() * 100.0,
        rss = peak_rss_mib(),
        threads = args.threads,
        bg_row = match bg {
            Some((i, b)) => format!("| decode of a request: idle / while a run trains in the background | {i:.0} tok/s | {b:.0} tok/s | {:.2}x (target ≥ 0.8x) |\n", b / i),
            None => String::new(),
        },
    );
    println!("{table}");
    let json = serde_json::json!({
        "facts": facts.len(), "questions": n, "base": hits(&base), "memory_only": hits(&mem_only),
        "adapter_only": hits(&adapter_only), "both": hits(&both), "promoted": outcome.promoted(),
        "train_s": m.elapsed.as_secs_f64(), "steps": m.steps, "tokens_per_s": m.tokens_per_s,
        "prepare_s": outcome.prepare_seconds, "gate_s": outcome.gate_seconds,
        "probes": [outcome.probes_right_before, outcome.probes_right_after, outcome.probes],
        "specificity_lost": outcome.specificity_lost, "specificity_base_right": outcome.specificity_base_right,
        "general_nll_change": outcome.general_change(), "peak_rss_mib": peak_rss_mib(), "preferences": pref_json,
        "generated_word_for_word": generated,
    });
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, format!("{table}\n```json\n{json}\n```\n"))?;
    eprintln!("wrote {}", args.out.display());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
