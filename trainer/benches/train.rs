//! Training throughput and peak memory on a real model (not a test; prints JSON).
//!
//! ```text
//! cargo bench -p tailor-trainer --bench train -- --model M.gguf [--threads 2] [--seq 256] [--steps 6] [--checkpointing]
//! cargo bench -p tailor-trainer --bench train -- --model M.gguf --short 64 [--batch 16] [--pack 512] ...
//! ```
//!
//! One SFT example of `seq` tokens (one prompt token, `seq - 1` answer tokens: the loss covers
//! the same `seq - 1` predictions as a causal-LM loss with `labels = input_ids`), rank 8 on all
//! seven projections, f32 LoRA parameters, AdamW, batch 1. The first step is a warm-up and is
//! not timed. Peak RSS is the process's `VmHWM` (Linux); `cpu_s_per_step` is user + system
//! CPU time per timed step (less sensitive than wall time to other load on a shared machine).
//!
//! `--short N`: the feedback case instead: `N` chat-templated question + one-sentence answer
//! examples of 30–80 tokens (the loss on the answer only), `--batch` of them per optimizer
//! step, packed into passes of `--pack` tokens (`0`: one pass per example). Throughput counts
//! the tokens of the timed steps' examples. `--dump-examples PATH` writes them (JSON
//! `TrainData`) for `bench/peft_train.py --examples PATH`.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use tailor::{Engine, EngineConfig, Flow};
use tailor_trainer::{SftExample, TrainConfig, TrainData, Trainer};

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`, 100 ticks/s).
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() -> Result<()> {
    let mut model = None;
    let (mut threads, mut seq, mut steps, mut ckpt) = (2usize, 256usize, 6usize, false);
    let (mut short, mut batch, mut pack, mut dump) = (0usize, 16usize, None::<usize>, None::<String>);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = args.next(),
            "--threads" => threads = args.next().context("--threads N")?.parse()?,
            "--seq" => seq = args.next().context("--seq N")?.parse()?,
            "--steps" => steps = args.next().context("--steps N")?.parse()?,
            "--checkpointing" => ckpt = true,
            "--short" => short = args.next().context("--short N")?.parse()?,
            "--batch" => batch = args.next().context("--batch N")?.parse()?,
            "--pack" => pack = Some(args.next().context("--pack TOKENS")?.parse()?),
            "--dump-examples" => dump = Some(args.next().context("--dump-examples PATH")?),
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    let model = model.context("--model PATH is required")?;
    let mut ec = EngineConfig::default();
    ec.threads = threads;
    let engine = Engine::load(&model, ec)?;
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/prompt.txt")).unwrap_or_else(|_| "The quick brown fox jumps over the lazy dog. ".into());
    let mut tokens = Vec::new();
    while tokens.len() < seq {
        tokens.extend(engine.tokenize(&text)?);
    }
    tokens.truncate(seq);
    let data = if short > 0 {
        TrainData::sft(short_examples(&engine, &text, short)?)
    } else {
        TrainData::sft(vec![SftExample { prompt_tokens: tokens[..1].to_vec(), answer_tokens: tokens[1..].to_vec() }])
    };
    if let Some(path) = &dump {
        // For bench/peft_train.py --examples: the same token ids on the PEFT side.
        std::fs::write(path, serde_json::to_vec(&data)?).with_context(|| format!("writing {path}"))?;
    }
    let mut c = TrainConfig::default();
    c.lora_rank = 8;
    c.lora_alpha = 16.0;
    c.learning_rate = 1e-4;
    // Constant learning rate, no weight decay, clipping at 1.0: what bench/peft_train.py does,
    // so the two loss curves can be compared step by step.
    c.warmup_steps = 0;
    c.min_lr_ratio = 1.0;
    c.weight_decay = 0.0;
    c.max_steps = Some(steps + 1);
    c.max_seq_len = if short > 0 { 512 } else { seq };
    c.threads = threads;
    c.activation_checkpointing = ckpt;
    if short > 0 {
        c.batch_size = batch;
    }
    if let Some(p) = pack {
        c.pack_tokens = p;
    }
    let pack_tokens = c.pack_tokens;
    if std::env::var_os("TRAIN_BENCH_PREFILL").is_some() {
        let mut s = engine.new_session();
        for _ in 0..3 {
            let t = Instant::now();
            s.logits_all(&tokens)?;
            eprintln!("decode-path forward (all logits) of {seq} tokens: {:.3} s", t.elapsed().as_secs_f64());
        }
        let net_t = Instant::now();
        tailor_trainer::testing::loss(&engine, None, &tokens, &(1..seq).map(|i| (i - 1, tokens[i])).collect::<Vec<_>>())?;
        eprintln!("training forward (no tape) of {seq} tokens: {:.3} s", net_t.elapsed().as_secs_f64());
    }
    let trainer = Trainer::new(&engine, c)?;
    let mut t0 = None;
    let mut cpu0 = None;
    let mut warmup_tokens = 0f64;
    let mut losses = Vec::new();
    let start = Instant::now();
    let out = trainer.train(&data, &mut |p| {
        if p.step == 1 {
            t0 = Some(Instant::now());
            cpu0 = cpu_seconds();
            warmup_tokens = (p.tokens_per_s * p.elapsed.as_secs_f64()).round();
        }
        losses.push(p.loss);
        eprintln!("step {}/{} loss {:.4} {:.1} tok/s", p.step, p.total_steps, p.loss, p.tokens_per_s);
        Flow::Continue
    })?;
    let timed = t0.context("no step ran")?.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu0).map(|(a, b)| (a - b) / steps as f64);
    let timed_tokens = out.metrics.trained_tokens as f64 - warmup_tokens;
    let lens: Vec<usize> = data.sft.iter().map(|e| e.prompt_tokens.len() + e.answer_tokens.len()).collect();
    let tps = timed_tokens / timed;
    println!(
        "{}",
        serde_json::json!({
            "engine": "tailor",
            "threads": threads,
            "seq": if short > 0 { serde_json::Value::Null } else { seq.into() },
            "short_examples": short,
            "batch": if short > 0 { batch } else { 1 },
            "pack_tokens": pack_tokens,
            "example_tokens": {
                "min": lens.iter().min(),
                "mean": lens.iter().sum::<usize>() as f64 / lens.len() as f64,
                "max": lens.iter().max(),
                "answer_mean": data.sft.iter().map(|e| e.answer_tokens.len()).sum::<usize>() as f64 / lens.len() as f64,
            },
            "timed_tokens": timed_tokens,
            "timed_steps": steps,
            "s_per_step": timed / steps as f64,
            "cpu_s_per_step": cpu,
            "tokens_per_s": tps,
            "peak_rss_mb": peak_rss_mb(),
            "activation_checkpointing": ckpt,
            "losses": losses,
            "total_s": start.elapsed().as_secs_f64(),
            "lora_params": out.adapter.num_parameters(),
        })
    );
    Ok(())
}

/// `n` feedback-like examples: a chat-templated question (the model's own template, with its
/// default system prompt) and a one-sentence answer closed by `<|im_end|>`, 30–80 tokens in
/// all, taken from the sentences of `text`.
fn short_examples(engine: &Engine, text: &str, n: usize) -> Result<Vec<SftExample>> {
    let sentences: Vec<&str> = text.split_inclusive(". ").map(str::trim).filter(|s| s.split_whitespace().count() >= 4).collect();
    anyhow::ensure!(sentences.len() >= 2, "the bench text has too few sentences");
    let mut out = Vec::with_capacity(n);
    let mut i = 0usize;
    while out.len() < n {
        let s = sentences[i % sentences.len()];
        let words: Vec<&str> = s.split_whitespace().collect();
        // Questions of different lengths about the sentence; the next sentence is the answer.
        let k = 2 + i % 5;
        let question = format!("What comes after \"{}\"?", words[..k.min(words.len())].join(" "));
        let prompt_tokens = engine.tokenize(&engine.render_chat(&[tailor::ChatMessage::user(question)])?)?;
        // Answers of 3 to 30 words: one sentence or the start of one.
        let answer: Vec<&str> = sentences[(i + 1) % sentences.len()].split_whitespace().take(3 + (i * 7) % 28).collect();
        let mut answer_tokens = engine.tokenize(&format!("{}<|im_end|>", answer.join(" ")))?;
        i += 1;
        let max_answer = 80usize.saturating_sub(prompt_tokens.len());
        if max_answer < 4 {
            continue;
        }
        answer_tokens.truncate(max_answer);
        if prompt_tokens.len() + answer_tokens.len() >= 30 {
            out.push(SftExample { prompt_tokens, answer_tokens });
        }
    }
    Ok(out)
}
