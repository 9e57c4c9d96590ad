//! `tailor bench-context`: figures for long conversations. Not a test; nothing asserts a time.
//!
//! Sections (`--sections`, a comma list):
//! - `kv`: for each KV cache type, bytes per token, the mean negative log-likelihood (and
//!   perplexity) of a fixed text (`--text`, default GPL-3 as Debian ships it: plain English,
//!   the same bytes on every machine) run through one cache of 2,048 tokens, how often its
//!   most likely next token there equals the first type's, and greedy agreement with the first
//!   type over 128 generated tokens (one early near-tie makes the rest differ);
//! - `speed`: decode tok/s (64 tokens) with the context already holding ~512 / 2k / 8k tokens,
//!   for each cache type, and decode at the longest context over decode at the shortest;
//! - `shift`: a context shift of half a full 8k cache (keys re-rotated in place) against
//!   running the kept tokens again;
//! - `sustained`: `--minutes` of continuous generation on one sliding session: tok/s and
//!   per-token latency p50/p90/p99 for each minute, so throttling or drift shows;
//! - `chat`: a conversation of ~20k tokens on an 8k window, greedy: turns, messages dropped,
//!   context shifts, `context_full` count, a loop check on the answers and whether the last
//!   answer is about the last turn.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tailor::{ChatMessage, Engine, FinishReason, Flow, GenerateParams, KvCacheType, Prompt, SessionConfig};

use crate::latency::{Latency, TokenClock};
use crate::ModelArgs;

/// Arguments of `tailor bench-context`.
#[derive(Args)]
pub(crate) struct ContextBenchArgs {
    /// Sections to run: kv, speed, shift, sustained, chat.
    #[arg(long, default_value = "kv,speed,shift")]
    sections: String,
    /// A fixed text for the likelihood and the prompts.
    #[arg(long, default_value = "/usr/share/common-licenses/GPL-3")]
    text: PathBuf,
    /// Contexts (tokens already held) at which decode speed is measured.
    #[arg(long, default_value = "512,2048,8192")]
    contexts: String,
    /// KV cache types to compare (each for keys and values).
    #[arg(long, default_value = "f16,q8_0,q4_0")]
    types: String,
    /// Minutes of the sustained run.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

fn greedy(n: usize) -> GenerateParams {
    let mut p = GenerateParams::default();
    p.max_tokens = n;
    p.ignore_eos = true;
    p
}

fn text_tokens(engine: &Engine, path: &PathBuf, n: usize) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let once = engine.tokenizer().encode(&text, false)?;
    if once.is_empty() {
        bail!("{} has no tokens", path.display());
    }
    Ok(once.iter().copied().cycle().take(n).collect())
}

fn session(engine: &Engine, ctx: usize, ty: KvCacheType) -> Result<tailor::Session> {
    Ok(engine.try_session_with(SessionConfig::with_context(ctx).with_cache_types(ty, ty))?)
}

/// Mean NLL (nats per token) of `tokens` run through one session, 256 tokens at a time, and
/// the most likely next token at each position.
fn nll(engine: &Engine, tokens: &[u32], ty: KvCacheType) -> Result<(f64, Vec<u32>)> {
    let vocab = engine.model_config().vocab_size;
    let mut s = session(engine, tokens.len() + 1, ty)?;
    let (mut sum, mut n) = (0f64, 0usize);
    let mut top = Vec::with_capacity(tokens.len());
    for (c, chunk) in tokens.chunks(256).enumerate() {
        let logits = s.feed_all(chunk)?;
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            let Some(&next) = tokens.get(c * 256 + i + 1) else { break };
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            top.push(row.iter().position(|&x| x == max).unwrap_or(0) as u32);
            let lse = max as f64 + row.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln();
            sum += lse - row[next as usize] as f64;
            n += 1;
        }
    }
    Ok((sum / n as f64, top))
}

fn kv(engine: &Engine, a: &ContextBenchArgs, types: &[KvCacheType]) -> Result<Value> {
    let tokens = text_tokens(engine, &a.text, 2048)?;
    let prompt = tokens[..1024].to_vec();
    let mut rows = Vec::new();
    let mut reference: Option<(f64, Vec<u32>)> = None;
    let mut reference_top: Option<Vec<u32>> = None;
    for &ty in types {
        let (nll, top) = nll(engine, &tokens, ty)?;
        let ref_top = reference_top.get_or_insert_with(|| top.clone());
        let top1 = top.iter().zip(ref_top.iter()).filter(|(a, b)| a == b).count() as f64 / top.len() as f64;
        let g = session(engine, 2048, ty)?.generate(&Prompt::Tokens(prompt.clone()), &greedy(128), &mut |_| Flow::Continue)?;
        let (f16_nll, f16_tokens) = reference.get_or_insert_with(|| (nll, g.token_ids.clone())).clone();
        let same = g.token_ids.iter().zip(&f16_tokens).filter(|(a, b)| a == b).count();
        let first_diff = g.token_ids.iter().zip(&f16_tokens).take_while(|(a, b)| a == b).count();
        let bytes = session(engine, 16, ty)?.kv_bytes_per_token();
        rows.push(json!({
            "type": ty.name(), "kv_bytes_per_token": bytes, "nll": nll, "perplexity": nll.exp(),
            "nll_vs_first": nll - f16_nll, "greedy_agreement": same as f64 / f16_tokens.len() as f64,
            "greedy_first_divergence": first_diff, "top1_agreement": top1,
        }));
        if !a.json {
            eprintln!(
                "kv {:>5}: {:>6} B/token · NLL {:.4} (ppl {:.2}, {:+.4} vs {}) · next-token argmax agreement {top1:.4} · greedy agreement {:.3} (first divergence at {first_diff})",
                ty.name(), bytes, nll, nll.exp(), nll - f16_nll, types[0].name(), same as f64 / f16_tokens.len() as f64
            );
        }
    }
    Ok(Value::Array(rows))
}

fn speed(engine: &Engine, a: &ContextBenchArgs, types: &[KvCacheType]) -> Result<Value> {
    let contexts: Vec<usize> = a.contexts.split(',').map(|c| c.trim().parse()).collect::<Result<_, _>>().context("--contexts")?;
    let max = engine.model_config().context_length;
    let longest = *contexts.iter().max().unwrap_or(&512);
    let text = text_tokens(engine, &a.text, longest)?;
    let mut rows = Vec::new();
    for &ty in types {
        let mut first = None;
        for &c in &contexts {
            let ctx = (c + 64).min(max);
            let held = ctx - 65;
            let mut s = session(engine, ctx, ty)?;
            let g = s.generate(&Prompt::Tokens(text[..held].to_vec()), &greedy(64), &mut |_| Flow::Continue)?;
            let tps = g.timings.decode_tok_per_s();
            let base = *first.get_or_insert(tps);
            rows.push(json!({"type": ty.name(), "context": held, "decode_tok_per_s": tps, "prefill_tok_per_s": g.timings.prefill_tok_per_s(), "vs_shortest": tps / base}));
            if !a.json {
                eprintln!("speed {:>5} at {held:>5} tokens: decode {tps:>6.1} tok/s ({:.3}x of the shortest) · prefill {:.1} tok/s", ty.name(), tps / base, g.timings.prefill_tok_per_s());
            }
        }
    }
    Ok(Value::Array(rows))
}

fn shift(engine: &Engine, a: &ContextBenchArgs, types: &[KvCacheType]) -> Result<Value> {
    let ctx = engine.model_config().context_length.min(8192);
    let text = text_tokens(engine, &a.text, ctx)?;
    let mut rows = Vec::new();
    for &ty in types {
        let mut s = session(engine, ctx, ty)?;
        s.feed(&text[..ctx - 1])?;
        let keep = 4;
        let discard = (ctx - 1 - keep) / 2;
        let t = Instant::now();
        s.shift_context(keep, discard);
        let shift_ms = t.elapsed().as_secs_f64() * 1e3;
        let kept = s.cached_tokens().to_vec();
        let mut fresh = session(engine, ctx, ty)?;
        let t = Instant::now();
        fresh.feed(&kept)?;
        let prefill_ms = t.elapsed().as_secs_f64() * 1e3;
        rows.push(json!({"type": ty.name(), "context": ctx - 1, "kept": kept.len(), "shift_ms": shift_ms, "reprefill_ms": prefill_ms, "speedup": prefill_ms / shift_ms}));
        if !a.json {
            eprintln!("shift {:>5}: drop {discard} of {} tokens in {shift_ms:.1} ms vs {prefill_ms:.0} ms to run the {} kept again ({:.0}x)", ty.name(), ctx - 1, kept.len(), prefill_ms / shift_ms);
        }
    }
    Ok(Value::Array(rows))
}

fn sustained(engine: &Engine, a: &ContextBenchArgs) -> Result<Value> {
    let ty = KvCacheType::parse_pair(&a.model.cache_type)?.0;
    let text = text_tokens(engine, &a.text, 256)?;
    let mut s = session(engine, 4096, ty)?;
    let total = std::time::Duration::from_secs_f64(a.minutes * 60.0);
    let start = Instant::now();
    let mut minute_start = start;
    let mut clock = TokenClock::new();
    let mut minutes = Vec::new();
    let mut tokens_in_minute = 0usize;
    let mut params = greedy(usize::MAX);
    params.sampling = engine.recommended_sampling();
    params.sampling.seed = Some(1);
    let close = |minutes: &mut Vec<Value>, clock: &mut TokenClock, n: usize, t0: Instant| {
        let l = Latency::of(clock.take());
        let secs = t0.elapsed().as_secs_f64();
        let row = json!({"minute": minutes.len() + 1, "tokens": n, "tok_per_s": n as f64 / secs, "p50_ms": l.p50_ms, "p90_ms": l.p90_ms, "p99_ms": l.p99_ms, "max_ms": l.max_ms});
        if !a.json {
            eprintln!("minute {:>2}: {:>6.1} tok/s · per-token p50 {:.2} ms · p90 {:.2} ms · p99 {:.2} ms · max {:.1} ms", minutes.len() + 1, n as f64 / secs, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms);
        }
        minutes.push(row);
    };
    let g = s.generate(&Prompt::Tokens(text), &params, &mut |_| {
        clock.tick();
        tokens_in_minute += 1;
        if minute_start.elapsed().as_secs_f64() >= 60.0 {
            close(&mut minutes, &mut clock, tokens_in_minute, minute_start);
            tokens_in_minute = 0;
            minute_start = Instant::now();
        }
        if start.elapsed() >= total { Flow::Stop } else { Flow::Continue }
    })?;
    if tokens_in_minute > 0 && minute_start.elapsed().as_secs_f64() > 5.0 {
        close(&mut minutes, &mut clock, tokens_in_minute, minute_start);
    }
    let rates: Vec<f64> = minutes.iter().filter_map(|m| m["tok_per_s"].as_f64()).collect();
    let (lo, hi) = rates.iter().fold((f64::MAX, 0f64), |(l, h), &r| (l.min(r), h.max(r)));
    if !a.json {
        eprintln!("sustained: {} tokens in {:.1} min, {} context shifts, slowest minute {:.3}x of the fastest", g.token_ids.len(), start.elapsed().as_secs_f64() / 60.0, g.context_shifts, lo / hi);
    }
    Ok(json!({"cache_type": ty.name(), "tokens": g.token_ids.len(), "context_shifts": g.context_shifts, "minutes": minutes, "slowest_over_fastest": lo / hi}))
}

/// Share of repeated 4-grams in `text`'s words (a loop shows as a share near 1).
fn repeated_4grams(text: &str) -> f64 {
    let w: Vec<&str> = text.split_whitespace().collect();
    if w.len() < 8 {
        return 0.0;
    }
    let grams: Vec<_> = w.windows(4).collect();
    let unique: std::collections::HashSet<_> = grams.iter().collect();
    1.0 - unique.len() as f64 / grams.len() as f64
}

fn chat(engine: &Engine, a: &ContextBenchArgs) -> Result<Value> {
    let ty = KvCacheType::parse_pair(&a.model.cache_type)?.0;
    let ctx = engine.model_config().context_length.min(8192);
    let text = std::fs::read_to_string(&a.text).with_context(|| format!("reading {}", a.text.display()))?;
    let paragraphs: Vec<&str> = text.split("\n\n").map(str::trim).filter(|p| p.split_whitespace().count() > 30).collect();
    let mut s = session(engine, ctx, ty)?;
    s.set_history(vec![ChatMessage::system("You are a helpful assistant. Answer in one or two sentences.")]);
    let mut params = greedy(48);
    params.ignore_eos = false;
    let (mut passed, mut dropped, mut shifts, mut full, mut turns) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut worst_loop = 0f64;
    let t = Instant::now();
    let mut last = None;
    while passed < 20_000 {
        let p = paragraphs[turns % paragraphs.len()];
        let user = format!("Here is a passage:\n{p}\nSummarise it in one sentence.");
        let g = s.chat(&user, &params, &mut |_| Flow::Continue)?;
        passed += g.prompt_tokens - g.reused_tokens + g.token_ids.len();
        dropped += g.dropped_messages;
        shifts += g.context_shifts;
        full += usize::from(g.finish_reason == FinishReason::ContextFull);
        worst_loop = worst_loop.max(repeated_4grams(&g.text));
        turns += 1;
        last = Some(g);
    }
    let final_q = "Tell me about a lighthouse keeper who counts ships.";
    let g = s.chat(final_q, &params, &mut |_| Flow::Continue)?;
    let on_topic = ["lighthouse", "keeper", "ship"].iter().any(|w| g.text.to_lowercase().contains(w));
    let secs = t.elapsed().as_secs_f64();
    if !a.json {
        eprintln!(
            "chat: {turns} turns, {passed} tokens through an {ctx}-token window in {secs:.0} s · {dropped} messages dropped · {shifts} shifts · context_full {full} · worst repeated-4-gram share {worst_loop:.2} · last answer on topic: {on_topic}\n  last answer: {:?}",
            g.text
        );
    }
    let _ = last;
    Ok(json!({"turns": turns, "tokens": passed, "window": ctx, "dropped_messages": dropped, "context_shifts": shifts, "context_full": full, "worst_repeated_4gram_share": worst_loop, "last_answer_on_topic": on_topic, "last_answer": g.text, "seconds": secs}))
}

/// Runs the sections asked for.
pub(crate) fn run(a: ContextBenchArgs) -> Result<()> {
    let engine = a.model.load()?;
    let types: Vec<KvCacheType> = a.types.split(',').map(|t| t.trim().parse()).collect::<Result<_, _>>()?;
    let mut out = serde_json::Map::new();
    out.insert("threads".into(), json!(engine.threads()));
    out.insert("cpus".into(), json!(engine.cpus()));
    for section in a.sections.split(',').map(str::trim) {
        let v = match section {
            "kv" => kv(&engine, &a, &types)?,
            "speed" => speed(&engine, &a, &types)?,
            "shift" => shift(&engine, &a, &types)?,
            "sustained" => sustained(&engine, &a)?,
            "chat" => chat(&engine, &a)?,
            other => bail!("unknown section {other:?} (kv, speed, shift, sustained, chat)"),
        };
        out.insert(section.into(), v);
    }
    if a.json {
        println!("{}", Value::Object(out));
    }
    Ok(())
}
