//! Aggregation time and peak memory vs number of clients, exact vs FedIT, on synthetic
//! rank-8 updates of SmolLM2-135M's shape (30 layers, d = 576, the trainer's default targets:
//! all seven projections), and the bytes a client sends per round vs full fine-tuning.
//!
//! `cargo bench -p tailor-federated --bench aggregate -- [CLIENTS,...] [--exact-max N] [--runs K]`
//! (defaults `8,64,512`, exact up to 512 clients, 3 runs; median reported). Prints a markdown table.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use tailor_adapters::{LoraAdapter, LoraConfig, LoraWeights, Target};
use tailor_federated::{aggregate, AggregateOptions, Method, Update};

/// Counts live heap bytes and their peak.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const LAYERS: usize = 30;
/// SmolLM2-135M's parameter count (tied embeddings).
const MODEL_PARAMS: u64 = 134_515_008;

fn dims(t: Target) -> (usize, usize) {
    match t {
        Target::Q | Target::O => (576, 576),
        Target::K | Target::V => (576, 192),
        Target::Gate | Target::Up => (576, 1536),
        Target::Down => (1536, 576),
    }
}

fn client(rng: &mut impl Rng, r: usize) -> LoraAdapter {
    let mut a = LoraAdapter::new(LoraConfig::new(r, 16.0, &Target::ALL)).unwrap();
    for l in 0..LAYERS {
        for t in Target::ALL {
            let (i, o) = dims(t);
            let av = (0..r * i).map(|_| rng.random_range(-0.05f32..0.05)).collect();
            let bv = (0..o * r).map(|_| rng.random_range(-0.01f32..0.01)).collect();
            a.insert(l, t, LoraWeights::new(r, i, o, av, bv).unwrap()).unwrap();
        }
    }
    a
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut counts = vec![8usize, 64, 512];
    let mut exact_max = 512;
    let mut runs = 3;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--exact-max" => exact_max = it.next().and_then(|s| s.parse().ok()).unwrap_or(exact_max),
            "--runs" => runs = it.next().and_then(|s| s.parse().ok()).unwrap_or(runs),
            s if s.contains(',') || s.parse::<usize>().is_ok() => counts = s.split(',').filter_map(|x| x.parse().ok()).collect(),
            _ => {}
        }
    }
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let one = client(&mut rng, 8);
    let sent = tailor_adapters::peft::to_safetensors_bytes(&one).unwrap().len();
    println!("| clients | method | rank R | median time (s) | peak extra heap (MiB) | inputs (MiB) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for &n in &counts {
        let updates: Vec<Update> = (0..n).map(|i| Update::new(format!("c{i}"), client(&mut rng, 8), 10 + i as u64 % 7)).collect();
        let inputs = LIVE.load(Ordering::Relaxed);
        let mut cases = vec![(Method::FedIt, None)];
        if n <= exact_max {
            cases.push((Method::Exact, Some((8 * n).min(576))));
            cases.extend([8, 64].map(|r| (Method::Exact, Some(r))));
        }
        for (method, rank) in cases {
            let mut opts = AggregateOptions::new(method);
            opts.rank = rank;
            opts.report_error = false;
            let mut times = Vec::new();
            let mut peak = 0;
            for _ in 0..runs {
                let base = LIVE.load(Ordering::Relaxed);
                PEAK.store(base, Ordering::Relaxed);
                let t = Instant::now();
                let agg = aggregate(&updates, &opts).unwrap();
                times.push(t.elapsed().as_secs_f64());
                drop(agg);
                peak = peak.max(PEAK.load(Ordering::Relaxed) - base);
            }
            times.sort_by(f64::total_cmp);
            let r = rank.map_or("8 (clients')".to_owned(), |r| r.to_string());
            println!(
                "| {n} | {method} | {r} | {:.3} | {:.1} | {:.0} |",
                times[times.len() / 2],
                peak as f64 / (1 << 20) as f64,
                inputs as f64 / (1 << 20) as f64
            );
        }
    }
    println!();
    println!(
        "Bytes a client sends per round: {sent} (rank-8 adapter, f32 safetensors, {} parameters) vs full fine-tuning {} (f16, {MODEL_PARAMS} parameters): {:.1}×.",
        one.num_parameters(),
        MODEL_PARAMS * 2,
        (MODEL_PARAMS * 2) as f64 / sent as f64
    );
}
