//! The vector index over the memories' embeddings, derived from SQLite.
//!
//! Nodes are keyed by a memory's `vec_id` (a fresh id each time a memory is (re-)embedded), so
//! a forgotten or re-embedded memory's old node is *tombstoned*: filtered out of every search
//! at once and dropped when the graph is compacted (rebuilt) after tombstones pass
//! [`IndexConfig::compact_fraction`]. While few vectors are live, search is an exact scan.
//!
//! The vectors live in a [`Graph`], one of two backends chosen by target:
//! - everywhere but iOS, an `hnsw_rs` HNSW graph (`hnsw`). It can be saved beside the
//!   database (`<db>.hnsw/`) with a manifest naming the profile and the database's
//!   `index_generation`; at open it is used only when both match, otherwise it is rebuilt from
//!   SQLite (the source of truth).
//! - on iOS, where `hnsw_rs` does not build, a flat list (`flat`): every search is an exact
//!   scan (O(n), fine for one person's memories) and nothing is saved; the index is rebuilt
//!   from SQLite at every open.
//!
//! Tombstones, compaction and the exact scan are shared by both.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::config::IndexConfig;
use crate::error::{Error, Result};

// Plain Rust, compiled (and unit-tested) on every target; only iOS uses it.
#[cfg_attr(not(target_os = "ios"), allow(dead_code))]
mod flat;
#[cfg(not(target_os = "ios"))]
mod hnsw;

#[cfg(target_os = "ios")]
type Backend = flat::FlatGraph;
#[cfg(not(target_os = "ios"))]
type Backend = hnsw::HnswGraph;
#[cfg(not(target_os = "ios"))]
pub use hnsw::CosineDistance;

/// Dot product with eight independent accumulators (vectorised by the compiler).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        // Fixed-size arrays: no bounds checks, one SIMD multiply-add per lane group.
        let (x, y): (&[f32; 8], &[f32; 8]) = (x.try_into().unwrap_or(&[0.0; 8]), y.try_into().unwrap_or(&[0.0; 8]));
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// What a saved graph must match to be loaded.
// Read only by the HNSW backend: the flat one (iOS) saves nothing.
#[cfg_attr(target_os = "ios", allow(dead_code))]
struct Header<'a> {
    profile_id: &'a str,
    generation: i64,
    dim: usize,
}

/// Where a [`VectorIndex`] keeps its vectors: every node ever inserted (tombstones are the
/// index's business), keyed by `vec_id`, with unit-length vectors.
trait Graph: Sized {
    /// Whether [`Graph::search`] is itself an exact scan (then the index always scans).
    const EXACT: bool;
    /// An empty graph for vectors of length `dim`, sized for about `capacity` nodes.
    fn new(dim: usize, cfg: &IndexConfig, capacity: usize) -> Self;
    /// Adds a node.
    fn insert(&mut self, id: usize, v: &[f32]);
    /// Adds many nodes (in parallel when the backend can).
    fn insert_many(&mut self, items: &[(usize, Vec<f32>)]);
    /// Calls `f` with every node.
    fn for_each(&self, f: &mut dyn FnMut(usize, &[f32]));
    /// Up to `k` nodes `ok` accepts, near `q` (cosine similarity), in any order; `ef` is the
    /// candidate list size of an approximate search.
    fn search(&self, q: &[f32], k: usize, ef: usize, ok: &dyn Fn(usize) -> bool) -> Vec<(usize, f32)>;
    /// Saves the graph with its node count and tombstones to `dir` (whole or absent).
    fn save(&self, dir: &Path, header: &Header<'_>, nodes: usize, tombstones: &HashSet<usize>) -> Result<()>;
    /// A graph saved by [`Graph::save`] with the same header, with its node count and
    /// tombstones; `None` when absent, stale or unreadable.
    fn load(dir: &Path, header: &Header<'_>) -> Option<(Self, usize, HashSet<usize>)>;
}

/// The vectors and their tombstones. Public for benchmarks and tools; a [`crate::MemoryStore`]
/// owns one and keeps it in step with SQLite.
///
/// On iOS the vectors are a flat list: [`VectorIndex::search`] is always exact,
/// [`VectorIndex::save`] saves nothing and [`VectorIndex::load`] finds nothing (the index is
/// rebuilt from SQLite at open).
pub struct VectorIndex {
    dim: usize,
    cfg: IndexConfig,
    graph: Backend,
    tombstones: HashSet<usize>,
    nodes: usize,
    /// The database `index_generation` this index reflects.
    pub(crate) generation: i64,
    /// Changed since loaded or saved.
    pub(crate) dirty: bool,
}

impl VectorIndex {
    /// An index over `(vec_id, vector)` pairs (vectors of length `dim`, unit length), built
    /// on all cores; `generation` is the database generation it reflects.
    pub fn build(dim: usize, cfg: IndexConfig, generation: i64, items: &[(usize, Vec<f32>)]) -> Self {
        let mut graph = Backend::new(dim, &cfg, items.len());
        graph.insert_many(items);
        VectorIndex { dim, cfg, graph, tombstones: HashSet::new(), nodes: items.len(), generation, dirty: true }
    }

    /// Sets the search candidate list size.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.cfg.ef_search = ef.max(1);
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        self.nodes - self.tombstones.len()
    }

    /// Adds a node.
    pub fn insert(&mut self, vec_id: usize, v: &[f32]) -> Result<()> {
        if v.len() != self.dim {
            return Err(Error::DimensionMismatch { expected: self.dim, actual: v.len() });
        }
        self.graph.insert(vec_id, v);
        self.nodes += 1;
        self.dirty = true;
        Ok(())
    }

    /// Adds many nodes (in parallel when there are many).
    pub fn insert_many(&mut self, items: &[(usize, Vec<f32>)]) -> Result<()> {
        if let Some((_, v)) = items.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(Error::DimensionMismatch { expected: self.dim, actual: v.len() });
        }
        self.graph.insert_many(items);
        self.nodes += items.len();
        self.dirty = true;
        Ok(())
    }

    /// Hides a node from every later search (see [`VectorIndex::maybe_compact`]).
    pub fn remove(&mut self, vec_id: usize) {
        if self.tombstones.insert(vec_id) {
            self.dirty = true;
        }
    }

    /// Rebuilds the graph without tombstoned nodes if they exceed the configured fraction.
    pub fn maybe_compact(&mut self) {
        let t = self.tombstones.len();
        if t > 0 && (t as f32) > self.cfg.compact_fraction * self.nodes as f32 {
            self.compact();
        }
    }

    /// Rebuilds the graph from its live nodes.
    pub fn compact(&mut self) {
        let live = self.live_vectors();
        *self = VectorIndex::build(self.dim, self.cfg.clone(), self.generation, &live);
    }

    fn live_vectors(&self) -> Vec<(usize, Vec<f32>)> {
        let mut live = Vec::with_capacity(self.len());
        self.graph.for_each(&mut |id, v| {
            if !self.tombstones.contains(&id) {
                live.push((id, v.to_vec()));
            }
        });
        live
    }

    /// Whether there is no live vector.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a search now scans exactly (always on iOS).
    pub fn is_exact(&self) -> bool {
        Backend::EXACT || self.len() < self.cfg.exact_below
    }

    /// The `k` nodes most similar to `q` (cosine, best first) among those `allow` accepts.
    pub fn search(&self, q: &[f32], k: usize, allow: Option<&dyn Fn(usize) -> bool>) -> Vec<(usize, f32)> {
        if k == 0 || q.len() != self.dim {
            return Vec::new();
        }
        let ok = |id: usize| !self.tombstones.contains(&id) && allow.is_none_or(|f| f(id));
        if self.is_exact() {
            return self.exact(q, k, &ok);
        }
        let ef = self.cfg.ef_search.max(k);
        let mut hits = self.graph.search(q, k, ef, &ok);
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(k);
        hits
    }

    /// Exact scan over all live nodes.
    pub fn exact(&self, q: &[f32], k: usize, ok: &dyn Fn(usize) -> bool) -> Vec<(usize, f32)> {
        let mut all: Vec<(usize, f32)> = Vec::new();
        self.graph.for_each(&mut |id, v| {
            if ok(id) {
                all.push((id, dot(q, v)));
            }
        });
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    /// Saves the graph to `dir` (replacing what is there) for a database at `generation`.
    /// Written to a temporary folder first and renamed, so `dir` is whole or absent.
    ///
    /// On iOS nothing is saved (the index is derived data, rebuilt from SQLite at open): any
    /// graph saved in `dir` is removed.
    pub fn save(&self, dir: &Path, profile_id: &str) -> Result<()> {
        let header = Header { profile_id, generation: self.generation, dim: self.dim };
        self.graph.save(dir, &header, self.nodes, &self.tombstones)
    }

    /// Loads a saved graph if its manifest matches `profile_id`, `generation` and `dim`;
    /// `None` when absent, stale or unreadable (the caller rebuilds). Always `None` on iOS.
    pub fn load(dir: &Path, profile_id: &str, generation: i64, dim: usize, cfg: &IndexConfig) -> Option<Self> {
        let (graph, nodes, tombstones) = Backend::load(dir, &Header { profile_id, generation, dim })?;
        Some(VectorIndex { dim, cfg: cfg.clone(), graph, tombstones, nodes, generation, dirty: false })
    }

    /// Deletes a saved graph (e.g. after forget_all, so no stale vectors linger on disk).
    pub fn remove_saved(dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(tmp_dir(dir));
    }
}

fn tmp_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    dir.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_unit;

    fn cfg(exact_below: usize) -> IndexConfig {
        IndexConfig { exact_below, ..Default::default() }
    }

    #[test]
    fn dot_matches_naive() {
        for n in [0, 1, 7, 8, 9, 384] {
            let a = random_unit(n.max(1), n as u64);
            let b = random_unit(n.max(1), 100 + n as u64);
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-5);
        }
    }

    #[test]
    fn tombstones_hide_at_once_and_compaction_drops_them() {
        let items: Vec<(usize, Vec<f32>)> = (0..300).map(|i| (i, random_unit(32, i as u64))).collect();
        for exact_below in [0, 10_000] {
            let mut idx = VectorIndex::build(32, cfg(exact_below), 0, &items);
            let q = items[5].1.clone();
            assert_eq!(idx.search(&q, 1, None)[0].0, 5);
            idx.remove(5);
            assert!(idx.search(&q, 300, None).iter().all(|h| h.0 != 5));
            for i in 0..100 {
                idx.remove(i);
            }
            idx.maybe_compact();
            assert_eq!(idx.nodes, 200);
            assert!(idx.tombstones.is_empty());
            assert_eq!(idx.search(&q, 300, None).len(), 200);
        }
    }

    #[test]
    #[cfg(not(target_os = "ios"))]
    fn save_load_round_trip_and_stale_dump_is_refused() {
        let dir = std::env::temp_dir().join(format!("tailor-index-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let items: Vec<(usize, Vec<f32>)> = (0..500).map(|i| (i + 1, random_unit(16, 7 + i as u64))).collect();
        let mut idx = VectorIndex::build(16, cfg(0), 42, &items);
        idx.remove(3);
        idx.save(&dir, "p").unwrap();
        let back = VectorIndex::load(&dir, "p", 42, 16, &cfg(0)).expect("loads");
        assert_eq!(back.len(), 499);
        let q = &items[10].1;
        assert_eq!(back.search(q, 5, None), idx.search(q, 5, None));
        assert!(VectorIndex::load(&dir, "p", 43, 16, &cfg(0)).is_none(), "stale generation");
        assert!(VectorIndex::load(&dir, "other", 42, 16, &cfg(0)).is_none(), "other profile");
        std::fs::write(dir.join("graph.hnsw.data"), b"truncated").unwrap();
        assert!(VectorIndex::load(&dir, "p", 42, 16, &cfg(0)).is_none(), "damaged dump");
        VectorIndex::remove_saved(&dir);
        assert!(!dir.exists());
    }
}
