//! `tailor bench`: load time, prefill and decode throughput, time to first token and peak
//! resident memory, each repeat in a fresh process so memory and load figures are honest.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use tailor::{Flow, GenerateParams, Prompt};

use crate::ModelArgs;

/// Options of `tailor bench`.
#[derive(Args, Clone)]
pub(crate) struct BenchArgs {
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to generate (end-of-generation ignored).
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Fresh-process repeats; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Run with a random rank-R LoRA adapter on all seven projections of every layer (to
    /// measure the adapter's cost).
    #[arg(long, value_name = "R")]
    lora_rank: Option<usize>,
    #[command(flatten)]
    model: ModelArgs,
}

/// One run's figures (the same fields as bench/llamacpp_peer.py prints).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Figures {
    engine: String,
    threads: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    load_ms: f64,
    prefill_tok_per_s: f64,
    decode_tok_per_s: f64,
    ttft_ms: f64,
    peak_rss_mb: f64,
    /// Per-token decode latency (percentiles and histogram); with several runs, the run with
    /// the median decode speed.
    #[serde(default)]
    token_latency: Option<crate::latency::Latency>,
}

const PARAGRAPH: &str = "The quick brown fox jumps over the lazy dog while the river runs quietly under the old stone bridge. \
Scientists study how small language models learn from data, and engineers measure how fast they run on phones and laptops. ";

fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage writes into the struct we pass; RUSAGE_SELF is always valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as f64 / 1024.0 // kilobytes on Linux
}

pub(crate) fn bench_once(a: BenchArgs) -> Result<()> {
    let t = Instant::now();
    let engine = a.model.load()?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let tok = engine.tokenizer();
    let mut ids = Vec::new();
    while ids.len() < a.prompt_tokens {
        ids.extend(tok.encode(PARAGRAPH, false)?);
    }
    ids.truncate(a.prompt_tokens);
    let mut session = a.model.session(&engine)?;
    if let Some(r) = a.lora_rank {
        let reg = tailor::AdapterRegistry::new(&engine);
        reg.insert("random", tailor::testing::random_lora(&engine, r, 0.01, 1)?)?;
        reg.activate(&[("random", 1.0)])?;
        session.follow(reg);
    }
    let mut params = GenerateParams::default();
    params.max_tokens = a.gen_tokens;
    params.ignore_eos = true;
    let mut clock = crate::latency::TokenClock::new();
    let g = session.generate(&Prompt::Tokens(ids), &params, &mut |_| {
        clock.tick();
        Flow::Continue
    })?;
    if g.token_ids.len() != a.gen_tokens {
        bail!("generated {} tokens, wanted {}", g.token_ids.len(), a.gen_tokens);
    }
    let f = Figures {
        engine: "tailor".into(),
        threads: engine.threads(),
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        load_ms,
        prefill_tok_per_s: g.timings.prefill_tok_per_s(),
        decode_tok_per_s: g.timings.decode_tok_per_s(),
        ttft_ms: g.timings.ttft_ms,
        peak_rss_mb: peak_rss_mb(),
        token_latency: Some(crate::latency::Latency::of(clock.take())),
    };
    println!("{}", serde_json::to_string(&f)?);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

pub(crate) fn bench(a: BenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the tailor binary")?;
    let model = a.model.path()?;
    let mut runs = Vec::new();
    for i in 0..a.repeat.max(1) {
        let out = Command::new(&exe)
            .args(["bench-once", "--prompt-tokens", &a.prompt_tokens.to_string(), "--gen-tokens", &a.gen_tokens.to_string()])
            .args(["--threads", &a.model.threads.to_string(), "--ctx", &a.model.ctx.to_string()])
            .args(["--cache-type", a.model.cache_type.as_str()])
            .args(a.model.cpu_mask.iter().flat_map(|m| ["--cpu-mask", m.as_str()]))
            .args(a.model.adapter.iter().flat_map(|s| ["--adapter", s.as_str()]))
            .args(a.model.steer.iter().flat_map(|s| ["--steer", s.as_str()]))
            .args(a.model.steer_layers.iter().flat_map(|s| ["--steer-layers", s.as_str()]))
            .args(a.model.repack.then_some("--repack"))
            .args(a.lora_rank.iter().flat_map(|r| ["--lora-rank".to_string(), r.to_string()]))
            .arg("--model")
            .arg(&model)
            .output()
            .context("running bench-once")?;
        if !out.status.success() {
            bail!("bench run {i} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let f: Figures = serde_json::from_slice(&out.stdout).context("parsing bench-once output")?;
        if !a.json {
            eprintln!(
                "run {i}: load {:.0} ms · prefill {:.1} tok/s · decode {:.1} tok/s · ttft {:.1} ms · peak RSS {:.1} MB",
                f.load_ms, f.prefill_tok_per_s, f.decode_tok_per_s, f.ttft_ms, f.peak_rss_mb
            );
        }
        runs.push(f);
    }
    let pick = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
    let m = Figures {
        engine: "tailor".into(),
        threads: runs[0].threads,
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        load_ms: pick(|f| f.load_ms),
        prefill_tok_per_s: pick(|f| f.prefill_tok_per_s),
        decode_tok_per_s: pick(|f| f.decode_tok_per_s),
        ttft_ms: pick(|f| f.ttft_ms),
        peak_rss_mb: pick(|f| f.peak_rss_mb),
        token_latency: {
            let mut by_speed: Vec<&Figures> = runs.iter().collect();
            by_speed.sort_by(|a, b| a.decode_tok_per_s.total_cmp(&b.decode_tok_per_s));
            by_speed[by_speed.len() / 2].token_latency.clone()
        },
    };
    if a.json {
        println!("{}", serde_json::to_string(&m)?);
    } else {
        println!(
            "median of {} runs, {} threads, prompt {} tokens, {} generated:\n  load      {:>8.0} ms\n  prefill   {:>8.1} tok/s\n  decode    {:>8.1} tok/s\n  ttft      {:>8.1} ms\n  peak RSS  {:>8.1} MB",
            runs.len(), m.threads, m.prompt_tokens, m.gen_tokens, m.load_ms, m.prefill_tok_per_s, m.decode_tok_per_s, m.ttft_ms, m.peak_rss_mb
        );
        if let Some(l) = &m.token_latency {
            println!("  per token p50 {:.2} ms · p90 {:.2} ms · p99 {:.2} ms · max {:.2} ms", l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms);
        }
    }
    Ok(())
}
