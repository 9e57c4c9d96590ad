//! The flat backend (iOS): the vectors in one contiguous array, every search an exact scan.
//!
//! `hnsw_rs` does not build for iOS (its `mmap-rs` dependency uses a macOS-only libc
//! function), so there the index is a plain list. A search is an exact scan: O(n) dot
//! products, fine for one person's memories, with recall 1. Nothing is saved: the index is derived
//! data, rebuilt from SQLite (the source of truth) each time a store is opened.
//!
//! The module is plain Rust and compiled on every target, so its tests run on the host
//! (against the exact scan of the HNSW backend); only iOS uses it.

use std::collections::HashSet;
use std::path::Path;

use super::{dot, Graph, Header, VectorIndex};
use crate::config::IndexConfig;
use crate::error::Result;

/// `(id, vector)` pairs, vectors of length `dim` back to back in `data`.
pub(super) struct FlatGraph {
    dim: usize,
    ids: Vec<usize>,
    data: Vec<f32>,
}

impl FlatGraph {
    fn points(&self) -> impl Iterator<Item = (usize, &[f32])> {
        // `max(1)`: `chunks_exact(0)` panics; with `dim == 0` there is no data to chunk.
        self.ids.iter().copied().zip(self.data.chunks_exact(self.dim.max(1)))
    }
}

impl Graph for FlatGraph {
    const EXACT: bool = true;

    fn new(dim: usize, _cfg: &IndexConfig, capacity: usize) -> Self {
        FlatGraph { dim, ids: Vec::with_capacity(capacity), data: Vec::with_capacity(capacity * dim) }
    }

    fn insert(&mut self, id: usize, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        self.ids.push(id);
        self.data.extend_from_slice(v);
    }

    fn insert_many(&mut self, items: &[(usize, Vec<f32>)]) {
        self.ids.reserve(items.len());
        self.data.reserve(items.len() * self.dim);
        for (id, v) in items {
            self.insert(*id, v);
        }
    }

    fn for_each(&self, f: &mut dyn FnMut(usize, &[f32])) {
        for (id, v) in self.points() {
            f(id, v);
        }
    }

    fn search(&self, q: &[f32], k: usize, _ef: usize, ok: &dyn Fn(usize) -> bool) -> Vec<(usize, f32)> {
        let mut all: Vec<(usize, f32)> =
            self.points().filter(|(id, _)| ok(*id)).map(|(id, v)| (id, dot(q, v))).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    /// Saves nothing; removes a dump an earlier build may have left, so no stale vectors
    /// linger on disk.
    fn save(&self, dir: &Path, _header: &Header<'_>, _nodes: usize, _tombstones: &HashSet<usize>) -> Result<()> {
        VectorIndex::remove_saved(dir);
        Ok(())
    }

    fn load(_dir: &Path, _header: &Header<'_>) -> Option<(Self, usize, HashSet<usize>)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_unit;

    fn items(n: usize, dim: usize, seed: u64) -> Vec<(usize, Vec<f32>)> {
        (0..n).map(|i| (3 * i + 1, random_unit(dim, seed + i as u64))).collect()
    }

    #[test]
    fn search_is_the_exact_scan() {
        let dim = 24;
        let items = items(700, dim, 11);
        // Whatever backend `VectorIndex` uses here, `exact` is its exact scan.
        let cfg = IndexConfig { exact_below: usize::MAX, ..Default::default() };
        let reference = VectorIndex::build(dim, cfg.clone(), 0, &items);
        let mut flat = FlatGraph::new(dim, &cfg, 0);
        flat.insert_many(&items[..400]);
        for (id, v) in &items[400..] {
            flat.insert(*id, v);
        }
        let odd = |id: usize| id % 2 == 1;
        let all = |_: usize| true;
        for (s, k) in [(1u64, 1usize), (2, 10), (3, 100), (4, 700), (5, 1000)] {
            let q = random_unit(dim, 10_000 + s);
            for ok in [&odd as &dyn Fn(usize) -> bool, &all] {
                let got = flat.search(&q, k, 0, ok);
                assert_eq!(got, reference.exact(&q, k, ok), "k = {k}");
                assert_eq!(got.len(), k.min(items.iter().filter(|(id, _)| ok(*id)).count()));
            }
        }
        assert!(flat.search(&items[0].1, 0, 0, &all).is_empty());
    }

    #[test]
    fn for_each_yields_every_point_in_insertion_order() {
        let items = items(50, 8, 3);
        let mut flat = FlatGraph::new(8, &IndexConfig::default(), 50);
        flat.insert_many(&items);
        let mut seen = Vec::new();
        flat.for_each(&mut |id, v| seen.push((id, v.to_vec())));
        assert_eq!(seen, items);
        let empty = FlatGraph::new(8, &IndexConfig::default(), 0);
        empty.for_each(&mut |_, _| panic!("no point in an empty graph"));
    }

    #[test]
    fn save_removes_a_stale_dump_and_load_finds_nothing() {
        let dir = std::env::temp_dir().join(format!("tailor-flat-index-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("manifest.json"), b"{}").unwrap();
        let mut flat = FlatGraph::new(4, &IndexConfig::default(), 1);
        flat.insert(1, &[1.0, 0.0, 0.0, 0.0]);
        let header = Header { profile_id: "p", generation: 1, dim: 4 };
        flat.save(&dir, &header, 1, &HashSet::new()).unwrap();
        assert!(!dir.exists());
        assert!(FlatGraph::load(&dir, &header).is_none());
    }
}
