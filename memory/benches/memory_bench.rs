//! Memory benchmark (a plain program, not a test): index and store figures at scale.
//!
//! ```text
//! cargo bench -p tailor-memory --bench memory_bench -- [N] [EMBED_SAMPLE] [SECTIONS] [QUERIES]
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
//! SECTIONS picks parts: a comma list of `random,clustered,peer,store,embed` (default all).
//! `peer` runs `benches/hnswlib_peer.py` (hnswlib + numpy) on the clustered vectors with
//! `$TAILOR_BENCH_PYTHON` (default `python3`) and prints its figures beside ours.

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

/// hnswlib's figures from `benches/hnswlib_peer.py` on the same vectors, if Python with
/// hnswlib is there (`$TAILOR_BENCH_PYTHON`, default `python3`).
fn peer(vectors: &[(usize, Vec<f32>)], queries: &[Vec<f32>]) -> Option<std::collections::HashMap<String, String>> {
    let dir = bench_dir().ok()?;
    let write = |name: &str, rows: &mut dyn Iterator<Item = &Vec<f32>>| -> Option<PathBuf> {
        let p = dir.join(name);
        let mut bytes = Vec::new();
        for r in rows {
            bytes.extend(r.iter().flat_map(|x| x.to_le_bytes()));
        }
        std::fs::write(&p, bytes).ok()?;
        Some(p)
    };
    let v = write("vectors.f32", &mut vectors.iter().map(|x| &x.1))?;
    let q = write("queries.f32", &mut queries.iter())?;
    let python = std::env::var("TAILOR_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/hnswlib_peer.py");
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&v)
        .arg(&q)
        .arg(DIM.to_string())
        .arg(threads.to_string())
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            println!("(peer skipped: {python} {}: {})", script.display(), String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or(""));
            return None;
        }
        Err(e) => {
            println!("(peer skipped: {python}: {e})");
            return None;
        }
    };
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ' ');
                (f.next()? == "peer").then_some(())?;
                Some((f.next()?.to_string(), f.next()?.to_string()))
            })
            .collect(),
    )
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Index-only figures on one data set.
fn index_bench(name: &str, vectors: &[(usize, Vec<f32>)], queries: &[Vec<f32>], with_peer: bool) -> anyhow::Result<()> {
    let n = vectors.len();
    let n_queries = queries.len();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cfg = IndexConfig::default();
    println!(
        "\n== index only, {name} (tailor HNSW, M = {}, ef_construction = {}, dot kernel {}) ==",
        cfg.max_connections,
        cfg.ef_construction,
        tailor_memory::dot_kernel()
    );
    let tail = (n / 20).clamp(1, 2_000).min(n);
    let rss_before = rss_mb();
    let t = Instant::now();
    let mut index = VectorIndex::build(DIM, cfg.clone(), 0, &vectors[..n - tail]);
    let build = t.elapsed();
    let build_rate = (n - tail) as f64 / build.as_secs_f64();
    println!(
        "bulk build of {} vectors (= rebuild): {:.2} s ({build_rate:.0} vectors/s on {threads} threads)",
        n - tail,
        build.as_secs_f64(),
    );
    let t = Instant::now();
    for (id, v) in &vectors[n - tail..] {
        index.insert(*id, v)?;
    }
    let inc = t.elapsed();
    println!("incremental insert of the last {tail} (one thread): {:.0} inserts/s", tail as f64 / inc.as_secs_f64());
    let raw = (n * DIM * 4) as f64;
    println!(
        "index memory: {:.1} MB = {:.2}x the raw f32 vectors ({:.1} MB); process RSS grew {:.1} MB",
        index.memory_bytes() as f64 / 1e6,
        index.memory_bytes() as f64 / raw,
        raw / 1e6,
        rss_mb() - rss_before
    );

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
    let exact_p50 = pct(exact_lat.clone(), 0.5);
    println!("exact search (SIMD scan, {threads} threads): p50 {} p99 {}", ms(exact_p50), ms(pct(exact_lat, 0.99)));
    let mut ours = Vec::new();
    for ef in [16, 32, 48, 64, 96, 128] {
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
        let (p50, p99) = (pct(lat.clone(), 0.5), pct(lat, 0.99));
        println!("hnsw ef_search {ef:>3}: recall@10 {recall:.3}  p50 {}  p99 {}", ms(p50), ms(p99));
        ours.push((ef, recall, p99));
    }
    if let Some((ef, recall, p99)) = ours.iter().find(|x| x.1 >= 0.95) {
        println!("=> vector query at recall@10 >= 0.95: ef {ef}, recall {recall:.3}, p99 {}", ms(*p99));
    }
    if with_peer {
        if let Some(p) = peer(vectors, queries) {
            let f = |k: &str| p.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
            println!("peer ({}), same vectors and queries:", p.get("version").map_or("hnswlib", |s| s.as_str()));
            println!(
                "  build {:.0} vectors/s on {threads} threads (ours {build_rate:.0}/s, {:.2}x)",
                f("build_per_s"),
                build_rate / f("build_per_s")
            );
            println!(
                "  numpy exact scan p50 {:.3} ms (ours {}, {:.2}x faster)",
                f("exact_p50_ms"),
                ms(exact_p50),
                f("exact_p50_ms") / (exact_p50.as_secs_f64() * 1e3)
            );
            for ef in [32, 64, 96] {
                let mine = ours.iter().find(|x| x.0 == ef).map_or(f64::NAN, |x| x.2.as_secs_f64() * 1e3);
                println!(
                    "  hnswlib ef {ef}: recall@10 {:.3} p50 {:.3} ms p99 {:.3} ms (ours p99 {mine:.3} ms)",
                    f(&format!("ef{ef}_recall")),
                    f(&format!("ef{ef}_p50_ms")),
                    f(&format!("ef{ef}_p99_ms"))
                );
            }
        }
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
    let sections = args.get(2).cloned().unwrap_or_else(|| "random,clustered,peer,store,embed".into());
    let on = |name: &str| sections.split(',').any(|s| s == name);
    let n_queries: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("memory_bench: N = {n}, dim {DIM}, {n_queries} queries, {threads} threads");

    // ---------------- index only ----------------
    if on("random") {
        let random: Vec<(usize, Vec<f32>)> = (0..n).map(|i| (i + 1, random_unit(DIM, i as u64))).collect();
        let queries: Vec<Vec<f32>> = (0..n_queries).map(|i| random_unit(DIM, 1 << 40 | i as u64)).collect();
        index_bench("random unit vectors (worst case: no structure)", &random, &queries, false)?;
    }
    if on("clustered") {
        let clustered = Clustered::new();
        let vectors: Vec<(usize, Vec<f32>)> = (0..n).map(|i| (i + 1, clustered.vector(i as u64))).collect();
        let queries: Vec<Vec<f32>> = (0..n_queries).map(|i| clustered.vector(1 << 40 | i as u64)).collect();
        index_bench("clustered vectors (1,000 clusters, like embeddings)", &vectors, &queries, on("peer"))?;
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
    let singles = 2_000.min(n);
    let bulk = n - singles;
    let query_text = |i: usize| format!("something about {} number", WORDS[i % 10]);
    {
        let mut store = MemoryStore::open(&path, emb.clone(), config.clone())?;
        let t = Instant::now();
        for chunk in (0..bulk).collect::<Vec<_>>().chunks(1000) {
            store.add_many(chunk.iter().map(|&i| NewMemory::new(text(i))).collect())?;
        }
        let d = t.elapsed();
        println!("add_many (batches of 1000): {:.0} memories/s ({:.1} s)", bulk as f64 / d.as_secs_f64(), d.as_secs_f64());
        let t = Instant::now();
        for i in bulk..n {
            store.add(NewMemory::new(text(i)))?;
        }
        let d = t.elapsed();
        println!("single add (index + SQLite, one transaction each): {:.0} memories/s over {singles}", singles as f64 / d.as_secs_f64());
        let mut lat = Vec::new();
        for i in 0..200 {
            let q = SearchQuery::new(query_text(i), 10).track_access(false);
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
        println!("close (saves the index): {:.2} s", t.elapsed().as_secs_f64());
    }
    let db_bytes = dir_size(&path);
    let index_dir = dir.join("profile.db.hnsw");
    let graph_bytes = dir_size(&index_dir);
    println!(
        "file size: database {:.1} MB ({:.0} bytes/memory), saved index {:.1} MB",
        db_bytes as f64 / 1e6,
        db_bytes as f64 / n as f64,
        graph_bytes as f64 / 1e6
    );
    let first_query = |store: &mut MemoryStore| -> anyhow::Result<Duration> {
        let t = Instant::now();
        store.search(&SearchQuery::new(query_text(3), 10).track_access(false))?;
        Ok(t.elapsed())
    };
    let t = Instant::now();
    let mut store = MemoryStore::open(&path, emb.clone(), config.clone())?;
    let open = t.elapsed();
    let q = first_query(&mut store)?;
    println!(
        "open with the saved index: {} + first query {} = {} (graph in use: {})",
        ms(open),
        ms(q),
        ms(open + q),
        store.index_ready()
    );
    // Changes since the save: keep the saved file of this generation aside, add 1,000
    // memories (the close saves a newer one), put the old file back: the open catches up.
    let saved_file = index_dir.join("index.bin");
    let old = dir.join("index.bin.old");
    std::fs::copy(&saved_file, &old)?;
    store.add_many((n..n + 1000).map(|i| NewMemory::new(text(i))).collect())?;
    store.close()?;
    std::fs::copy(&old, &saved_file)?;
    let t = Instant::now();
    let mut store = MemoryStore::open(&path, emb.clone(), config.clone())?;
    let open = t.elapsed();
    let q = first_query(&mut store)?;
    println!("open with a saved index 1,000 memories behind (catch-up): {} + first query {}", ms(open), ms(q));
    drop(store);
    std::fs::remove_dir_all(&index_dir)?;
    let t = Instant::now();
    let mut store = MemoryStore::open(&path, emb, config.clone())?;
    let open = t.elapsed();
    let q = first_query(&mut store)?;
    let t2 = Instant::now();
    store.wait_for_index();
    println!(
        "open without a saved index: {} + first query (exact, graph building in the background) {}; graph ready {:.2} s later",
        ms(open),
        ms(q),
        t2.elapsed().as_secs_f64() + q.as_secs_f64()
    );
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
