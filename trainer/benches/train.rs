//! Training throughput and peak memory on a real model (not a test; prints JSON).
//!
//! ```text
//! cargo bench -p tailor-trainer --bench train -- --model M.gguf [--threads 2] [--seq 256] [--steps 6] [--checkpointing]
//! ```
//!
//! One SFT example of `seq` tokens (one prompt token, `seq - 1` answer tokens: the loss covers
//! the same `seq - 1` predictions as a causal-LM loss with `labels = input_ids`), rank 8 on all
//! seven projections, f32 LoRA parameters, AdamW, batch 1. The first step is a warm-up and is
//! not timed. Peak RSS is the process's `VmHWM` (Linux); `cpu_s_per_step` is user + system
//! CPU time per timed step (less sensitive than wall time to other load on a shared machine).

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
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = args.next(),
            "--threads" => threads = args.next().context("--threads N")?.parse()?,
            "--seq" => seq = args.next().context("--seq N")?.parse()?,
            "--steps" => steps = args.next().context("--steps N")?.parse()?,
            "--checkpointing" => ckpt = true,
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
    let data = TrainData::sft(vec![SftExample { prompt_tokens: tokens[..1].to_vec(), answer_tokens: tokens[1..].to_vec() }]);
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
    c.max_seq_len = seq;
    c.threads = threads;
    c.activation_checkpointing = ckpt;
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
    let mut losses = Vec::new();
    let start = Instant::now();
    let out = trainer.train(&data, &mut |p| {
        if p.step == 1 {
            t0 = Some(Instant::now());
            cpu0 = cpu_seconds();
        }
        losses.push(p.loss);
        eprintln!("step {}/{} loss {:.4} {:.1} tok/s", p.step, p.total_steps, p.loss, p.tokens_per_s);
        Flow::Continue
    })?;
    let timed = t0.context("no step ran")?.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu0).map(|(a, b)| (a - b) / steps as f64);
    let tps = (steps * seq) as f64 / timed;
    println!(
        "{}",
        serde_json::json!({
            "engine": "tailor",
            "threads": threads,
            "seq": seq,
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
