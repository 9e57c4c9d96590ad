//! Memory benchmark (a plain program, not a test): index and store figures at scale.
//!
//! ```text
//! cargo bench -p tailor-memory --bench memory_bench -- [N] [EMBED_SAMPLE] [SECTIONS]
//! ```
//!
//! N (default 100,000) vectors of dimension 384, twice: random unit vectors (the worst case
//! for any graph index: no structure to navigate) and clustered vectors (like embeddings):
//! - index only: bulk build (all cores) = rebuild time, incremental single-thread inserts,
//!   query latency p50/p99 and recall@10 against exact search (the peer, timed in the same
//!   run) for several `ef_search`;
//! - store: N memories through `MemoryStore::add_many` with a hash embedder (SQLite + FTS5 +
//!   index, no model), file size, open time with the saved graph and with a rebuild, hybrid
//!   search latency;
//! - real embedder (all-MiniLM-L6-v2 from `$TAILOR_HOME`, if present): embed + insert rate on
//!   EMBED_SAMPLE (default 1,000) sentences and end-to-end query latency.
//!
//! SECTIONS picks parts: a comma list of `random,clustered,store,embed` (default all).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tailor_memory::testing::random_unit;
use tailor_memory::{
    normalize, BertEmbedder, Embed, IndexConfig, MemoryConfig, MemoryStore, NewMemory, SearchMode, SearchQuery,
    VectorIndex,
};

const DIM: usize = 384;

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn dir_size(p: &Path) -> u64 {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p).map(|r| r.flatten().map(|e| dir_size(&e.path())).sum()).unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Index-only figures on one data set.
fn index_bench(name: &str, vectors: &[(usize, Vec<f32>)], queries: &[Vec<f32>]) -> anyhow::Result<()> {
    let n = vectors.len();
    let n_queries = queries.len();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cfg = IndexConfig::default();
    println!(
        "\n== index only, {name} (hnsw_rs, M = {}, ef_construction = {}) ==",
        cfg.max_connections, cfg.ef_construction
    );
    let tail = (n / 20).clamp(1, 2_000).min(n);
    let t = Instant::now();
    let mut index = VectorIndex::build(DIM, cfg.clone(), 0, &vectors[..n - tail]);
    let build = t.elapsed();
    println!(
        "bulk build of {} vectors (= rebuild): {:.2} s ({:.0} vectors/s on {threads} threads)",
        n - tail,
        build.as_secs_f64(),
        (n - tail) as f64 / build.as_secs_f64()
    );
    let t = Instant::now();
    for (id, v) in &vectors[n - tail..] {
        index.insert(*id, v)?;
    }
    let inc = t.elapsed();
    println!("incremental insert of the last {tail} (one thread): {:.0} inserts/s", tail as f64 / inc.as_secs_f64());

    let all = |_: usize| true;
    let mut exact_lat = Vec::with_capacity(n_queries);
    let truth: Vec<Vec<usize>> = queries
        .iter()
        .map(|q| {
            let t = Instant::now();
            let r = index.exact(q, 10, &all);
            exact_lat.push(t.elapsed());
            r.into_iter().map(|x| x.0).collect()
        })
        .collect();
    println!("exact search (peer): p50 {} p99 {}", ms(pct(exact_lat.clone(), 0.5)), ms(pct(exact_lat, 0.99)));
    for ef in [32, 64, 96, 128, 256] {
        index.set_ef_search(ef);
        let mut lat = Vec::with_capacity(n_queries);
        let mut found = 0;
        for (q, t10) in queries.iter().zip(&truth) {
            let t = Instant::now();
            let r = index.search(q, 10, None);
            lat.push(t.elapsed());
            found += r.iter().filter(|x| t10.contains(&x.0)).count();
        }
        let recall = found as f64 / (10 * n_queries) as f64;
        println!(
            "hnsw ef_search {ef:>3}: recall@10 {recall:.3}  p50 {}  p99 {}",
            ms(pct(lat.clone(), 0.5)),
            ms(pct(lat, 0.99))
        );
    }
    Ok(())
}

/// Vectors with structure, like sentence embeddings: `CLUSTERS` random centres, each vector a
/// centre plus Gaussian noise (cosine to its centre ≈ 0.7), normalised.
struct Clustered {
    centres: Vec<Vec<f32>>,
}

const CLUSTERS: usize = 1_000;

impl Clustered {
    fn new() -> Self {
        Clustered { centres: (0..CLUSTERS).map(|c| random_unit(DIM, 7 << 50 | c as u64)).collect() }
    }

    fn vector(&self, seed: u64) -> Vec<f32> {
        let c = &self.centres[(seed % CLUSTERS as u64) as usize];
        let noise = random_unit(DIM, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xABCD);
        let mut v: Vec<f32> = c.iter().zip(&noise).map(|(a, b)| a + b).collect();
        normalize(&mut v);
        v
    }
}

/// An embedder giving texts clustered vectors (by a hash of the text): store figures without
/// a model, on data an index can navigate like real embeddings.
struct ClusteredEmbedder(Clustered);

impl Embed for ClusteredEmbedder {
    fn model_id(&self) -> &str {
        "clustered-bench"
    }

    fn dim(&self) -> usize {
        DIM
    }

    fn embed(&self, texts: &[&str]) -> tailor_memory::Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                t.hash(&mut h);
                self.0.vector(h.finish())
            })
            .collect())
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let embed_sample: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let sections = args.get(2).cloned().unwrap_or_else(|| "random,clustered,store,embed".into());
    let on = |name: &str| sections.split(',').any(|s| s == name);
    let n_queries = 1_000;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("memory_bench: N = {n}, dim {DIM}, {n_queries} queries, {threads} threads");

    // ---------------- index only ----------------
    if on("random") {
        let random: Vec<(usize, Vec<f32>)> = (0..n).map(|i| (i + 1, random_unit(DIM, i as u64))).collect();
        let queries: Vec<Vec<f32>> = (0..n_queries).map(|i| random_unit(DIM, 1 << 40 | i as u64)).collect();
        index_bench("random unit vectors (worst case: no structure)", &random, &queries)?;
    }
    if on("clustered") {
        let clustered = Clustered::new();
        let vectors: Vec<(usize, Vec<f32>)> = (0..n).map(|i| (i + 1, clustered.vector(i as u64))).collect();
        let queries: Vec<Vec<f32>> = (0..n_queries).map(|i| clustered.vector(1 << 40 | i as u64)).collect();
        index_bench("clustered vectors (1,000 clusters, like embeddings)", &vectors, &queries)?;
    }

    // ---------------- store ----------------
    if on("store") {
        store_bench(n)?;
    }
    if on("embed") {
        embed_bench(embed_sample)?;
    }
    Ok(())
}

fn text(i: usize) -> String {
    format!("memory {i}: something about {} and {} number {}", WORDS[i % 10], WORDS[(i / 10) % 10], i * 7919)
}

const WORDS: [&str; 10] = ["coffee", "sister", "Lisbon", "marathon", "allergy", "guitar", "rent", "Japan", "cello", "dog"];

fn bench_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tailor-memory-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn store_bench(n: usize) -> anyhow::Result<()> {
    println!("\n== store (SQLite + FTS5 + index; clustered hash embedder, no model) ==");
    let dir = bench_dir()?;
    let path = dir.join("profile.db");
    let emb = Arc::new(ClusteredEmbedder(Clustered::new()));
    let mut config = MemoryConfig::default();
    config.dedup_threshold = None;
    {
        let mut store = MemoryStore::open(&path, emb.clone(), config.clone())?;
        let t = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            store.add_many(chunk.iter().map(|&i| NewMemory::new(text(i))).collect())?;
        }
        let d = t.elapsed();
        println!("add_many (batches of 1000): {:.0} memories/s ({:.1} s)", n as f64 / d.as_secs_f64(), d.as_secs_f64());
        let mut lat = Vec::new();
        for i in 0..200 {
            let q = SearchQuery::new(format!("something about {} number", WORDS[i % 10]), 10).track_access(false);
            let t = Instant::now();
            store.search(&q)?;
            lat.push(t.elapsed());
        }
        println!("hybrid search (vector + BM25 + fuse + rows): p50 {} p99 {}", ms(pct(lat.clone(), 0.5)), ms(pct(lat, 0.99)));
        let mut lat = Vec::new();
        for i in 0..200 {
            let q = SearchQuery::new(text(i * 13), 10).mode(SearchMode::Vector).track_access(false);
            let t = Instant::now();
            store.search(&q)?;
            lat.push(t.elapsed());
        }
        println!("vector search through the store: p50 {} p99 {}", ms(pct(lat.clone(), 0.5)), ms(pct(lat, 0.99)));
        let t = Instant::now();
        store.close()?;
        println!("close (saves the graph): {:.2} s", t.elapsed().as_secs_f64());
    }
    let db_bytes = dir_size(&path);
    let graph_bytes = dir_size(&dir.join("profile.db.hnsw"));
    println!(
        "file size: database {:.1} MB ({:.0} bytes/memory), saved graph {:.1} MB",
        db_bytes as f64 / 1e6,
        db_bytes as f64 / n as f64,
        graph_bytes as f64 / 1e6
    );
    let t = Instant::now();
    let store = MemoryStore::open(&path, emb.clone(), config.clone())?;
    println!("open with the saved graph: {:.2} s", t.elapsed().as_secs_f64());
    drop(store);
    std::fs::remove_dir_all(dir.join("profile.db.hnsw"))?;
    let t = Instant::now();
    let store = MemoryStore::open(&path, emb, config.clone())?;
    println!("open with a rebuild from SQLite: {:.2} s", t.elapsed().as_secs_f64());
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn embed_bench(embed_sample: usize) -> anyhow::Result<()> {
    let home = std::env::var_os("TAILOR_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tailor"));
    let folder = home.join("models/all-minilm-l6-v2");
    if !folder.join("model.safetensors").is_file() {
        println!("\n(real embedder skipped: {} missing; run `tailor models fetch`)", folder.display());
        return Ok(());
    }
    println!("\n== real embedder (all-MiniLM-L6-v2 on candle, CPU) ==");
    let bert = Arc::new(BertEmbedder::load(&folder)?);
    let dir = bench_dir()?;
    let mut store = MemoryStore::open(dir.join("real.db"), bert, MemoryConfig::default())?;
    let t = Instant::now();
    let sentences: Vec<NewMemory> = (0..embed_sample).map(|i| NewMemory::new(text(i))).collect();
    for chunk in sentences.chunks(100) {
        store.add_many(chunk.to_vec())?;
    }
    let d = t.elapsed();
    println!("embed + insert (add_many, batches of 100): {:.1} memories/s over {embed_sample}", embed_sample as f64 / d.as_secs_f64());
    let t = Instant::now();
    for i in 0..50 {
        store.add(NewMemory::new(format!("single memory {i} about {}", WORDS[i % 10])))?;
    }
    println!("embed + insert (add, one at a time): {:.1} memories/s", 50.0 / t.elapsed().as_secs_f64());
    let mut lat = Vec::new();
    for i in 0..100 {
        let q = SearchQuery::new(format!("what do I know about {}?", WORDS[i % 10]), 5).track_access(false);
        let t = Instant::now();
        store.search(&q)?;
        lat.push(t.elapsed());
    }
    println!("hybrid search incl. query embedding: p50 {} p99 {}", ms(pct(lat.clone(), 0.5)), ms(pct(lat, 0.99)));
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
