//! Search against brute force: equal on small stores (exact scan), recall@10 on a larger one
//! (HNSW), and the same results after a restart (saved graph) and after deletions.

use std::collections::HashSet;

use rand::{Rng, SeedableRng};
use tailor_memory::testing::HashEmbedder;
use tailor_memory::{dot, MemoryConfig, MemoryStore, NewMemory, SearchMode, SearchQuery};

use crate::common::*;

fn config(exact_below: usize) -> MemoryConfig {
    let mut c = MemoryConfig::default();
    c.dedup_threshold = None;
    c.index.exact_below = exact_below;
    c
}

fn brute_force(emb: &HashEmbedder, texts: &[(i64, String)], q: &str, k: usize) -> Vec<i64> {
    let qv = emb.vector(q);
    let mut all: Vec<(i64, f32)> = texts.iter().map(|(id, t)| (*id, dot(&qv, &emb.vector(t)))).collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.into_iter().take(k).map(|x| x.0).collect()
}

#[test]
fn small_store_search_equals_brute_force() {
    let seed = fresh_seed("small_store_search_equals_brute_force");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tmp_dir("search-exact");
    let emb = HashEmbedder::new(64, seed);
    let mut s = MemoryStore::open(dir.join("p.db"), std::sync::Arc::new(emb.clone()), config(2_000)).unwrap();
    let n = rng.random_range(50..400);
    let texts: Vec<String> = (0..n).map(|i| format!("memory {i} {}", rng.random::<u64>())).collect();
    let out = s.add_many(texts.iter().map(NewMemory::new).collect()).unwrap();
    let mut live: Vec<(i64, String)> = out.iter().map(|o| o.id).zip(texts.iter().cloned()).collect();
    // Forget a random tenth.
    for _ in 0..n / 10 {
        let i = rng.random_range(0..live.len());
        let (id, _) = live.remove(i);
        s.forget(id).unwrap();
    }
    for _ in 0..20 {
        let q = format!("query {}", rng.random::<u64>());
        let k = rng.random_range(1..30);
        let got: Vec<i64> = s.search(&SearchQuery::new(&q, k).mode(SearchMode::Vector)).unwrap().iter().map(|h| h.memory.id).collect();
        assert_eq!(got, brute_force(&emb, &live, &q, k), "query {q}, k {k}");
    }
}

#[test]
fn hnsw_recall_at_10_on_5000_random_vectors_and_after_restart() {
    let seed = fresh_seed("hnsw_recall");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tmp_dir("search-recall");
    let emb = HashEmbedder::new(64, seed);
    let path = dir.join("p.db");
    let mut s = MemoryStore::open(&path, std::sync::Arc::new(emb.clone()), config(100)).unwrap();
    let texts: Vec<String> = (0..5000).map(|i| format!("m{i}-{}", rng.random::<u64>())).collect();
    let ids: Vec<i64> = s.add_many(texts.iter().map(NewMemory::new).collect()).unwrap().iter().map(|o| o.id).collect();
    let mut live: Vec<(i64, String)> = ids.into_iter().zip(texts).collect();
    let forgotten: Vec<i64> = live.drain(..250).map(|(id, _)| id).collect();
    for id in &forgotten {
        s.forget(*id).unwrap();
    }
    let forgotten: HashSet<i64> = forgotten.into_iter().collect();
    let queries: Vec<String> = (0..100).map(|i| format!("q{i}-{}", rng.random::<u64>())).collect();
    let recall = |s: &mut MemoryStore| -> f64 {
        let mut found = 0;
        for q in &queries {
            let got: Vec<i64> = s.search(&SearchQuery::new(q, 10).mode(SearchMode::Vector).track_access(false)).unwrap().iter().map(|h| h.memory.id).collect();
            assert!(got.iter().all(|id| !forgotten.contains(id)), "a forgotten memory came back");
            let truth: HashSet<i64> = brute_force(&emb, &live, q, 10).into_iter().collect();
            found += got.iter().filter(|id| truth.contains(id)).count();
        }
        found as f64 / (10 * queries.len()) as f64
    };
    let r1 = recall(&mut s);
    eprintln!("recall@10 = {r1:.3}");
    assert!(r1 >= 0.9, "recall@10 {r1}");
    s.persist_index().unwrap();
    drop(s);
    assert!(dir.join("p.db.hnsw/manifest.json").is_file());
    let mut s = MemoryStore::open(&path, std::sync::Arc::new(emb.clone()), config(100)).unwrap();
    let r2 = recall(&mut s);
    assert!(r2 >= 0.9, "recall@10 after reload {r2}");
    // A write makes the saved graph stale: it is deleted, and the next open rebuilds.
    s.add(NewMemory::new("one more")).unwrap();
    assert!(!dir.join("p.db.hnsw").exists());
}
