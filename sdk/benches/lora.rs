//! `cargo bench -p tailor --bench lora [-- --rounds N --tokens N --threads N]`
//!
//! On the real model (`$TAILOR_HOME`'s cache, or `$TAILOR_MODEL`):
//! 1. decode tok/s with no adapter and with a random rank-8 adapter on all seven projections
//!    of every layer, in alternating rounds in this one process; medians and their ratio;
//! 2. swap latency while a second thread generates with a session that follows the registry:
//!    `insert` (shape checks + the one copy that prepares the weights), `activate` (publishing
//!    a new set: the atomic swap itself), and the wait until the next generation starts
//!    with the new set; medians and p90 over the rounds.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tailor::{AdapterRegistry, Engine, EngineConfig, Flow, GenerateParams, ModelCache, Prompt};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let model = match std::env::var_os("TAILOR_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(ModelCache::default_root).expect("a cache dir");
            ModelCache::new(root).base_model_path()
        }
    };
    let (rounds, tokens, threads) = (arg("--rounds", 7), arg("--tokens", 128), arg("--threads", 0));
    let mut cfg = EngineConfig::default();
    cfg.threads = threads;
    let engine = Engine::load(&model, cfg)?;
    let prompt: Vec<u32> = (0..32).map(|i| 1000 + i * 37).collect();
    let mut params = GenerateParams::default();
    params.max_tokens = tokens;
    params.ignore_eos = true;

    // 1. Decode speed, base vs rank-8 on all projections, alternating.
    let reg = AdapterRegistry::new(&engine);
    reg.insert("r8", tailor::testing::random_lora(&engine, 8, 0.01, 1)?)?;
    reg.activate(&[("r8", 1.0)])?;
    let mut with = engine.new_session();
    with.follow(reg.clone());
    let mut base = engine.new_session();
    let (mut tb, mut tl) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (s, out) in [(&mut base, &mut tb), (&mut with, &mut tl)] {
            s.clear_cache();
            let g = s.generate(&Prompt::Tokens(prompt.clone()), &params, &mut |_| Flow::Continue)?;
            out.push(g.timings.decode_tok_per_s());
        }
    }
    let (mb, ml) = (quantile(&mut tb, 0.5), quantile(&mut tl, 0.5));
    println!("decode, {} threads, {tokens} tokens, median of {rounds} alternating rounds:", engine.threads());
    println!("  base               {mb:>8.1} tok/s");
    println!("  rank-8 LoRA, all 7 {ml:>8.1} tok/s   ratio {:.3}", ml / mb);

    // 2. Swap latency while another thread generates.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bg = {
        let (engine, reg, stop, prompt, done) = (engine.clone(), reg.clone(), stop.clone(), prompt.clone(), done.clone());
        std::thread::spawn(move || -> tailor::Result<usize> {
            let mut s = engine.new_session();
            s.follow(reg);
            let mut p = GenerateParams::default();
            p.max_tokens = 8;
            p.ignore_eos = true;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                s.clear_cache();
                s.generate(&Prompt::Tokens(prompt.clone()), &p, &mut |_| Flow::Continue)?;
                n += 1;
                done.fetch_add(1, Ordering::SeqCst);
            }
            Ok(n)
        })
    };
    let adapters: Vec<_> = (0..rounds.max(5)).map(|i| tailor::testing::random_lora(&engine, 8, 0.01, 100 + i as u64)).collect::<Result<_, _>>()?;
    let (mut ins, mut act) = (Vec::new(), Vec::new());
    for (i, a) in adapters.into_iter().enumerate() {
        let name = format!("a{i}");
        // Swap in the middle of the other session's generations.
        let seen = done.load(Ordering::SeqCst);
        while done.load(Ordering::SeqCst) == seen {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let t = Instant::now();
        reg.insert(&name, a)?;
        ins.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        reg.activate(&[(name.as_str(), 1.0)])?;
        act.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stop.store(true, Ordering::Relaxed);
    let generations = bg.join().expect("background thread")?;
    println!("swap of a rank-8 all-projection adapter while another session generates ({generations} generations ran):");
    println!("  insert (check + prepare)  median {:>7.3} ms  p90 {:>7.3} ms", quantile(&mut ins, 0.5), quantile(&mut ins, 0.9));
    println!("  activate (atomic swap)    median {:>7.3} ms  p90 {:>7.3} ms", quantile(&mut act, 0.5), quantile(&mut act, 0.9));
    println!("  a running generation keeps its set; the next one (next token boundary of a new generation) uses the new set");
    Ok(())
}
