//! The vector index over the memories' embeddings, derived from SQLite.
//!
//! Nodes are keyed by a memory's `vec_id` (a fresh id each time a memory is (re-)embedded), so
//! a forgotten or re-embedded memory's old node is *tombstoned*: filtered out of every search
//! at once and dropped when the index is compacted after tombstones pass
//! [`IndexConfig::compact_fraction`]. While few vectors are live, search is an exact scan.
//!
//! The same pure-Rust code runs on every target (iOS and Android included):
//! - `flat`: the vectors, back to back in one contiguous `f32` matrix, and the exact scan;
//! - `hnsw`: our HNSW graph (links only, over the matrix's rows), built on all cores;
//! - `simd`: the dot product (AVX2 + FMA, NEON, or portable, chosen at run time);
//! - `file`: the saved index (`<db>.hnsw/index.bin`): vectors, graph, tombstones, the
//!   profile and the database `index_generation` it reflects, and a checksum.
//!
//! When no graph can be trusted, [`VectorIndex::build_in_background`] builds one on another
//! thread while searches scan exactly; [`VectorIndex::poll`] adopts it when done.

use std::collections::HashSet;
use std::path::Path;
use std::thread::JoinHandle;

use crate::config::IndexConfig;
use crate::error::{Error, Result};

mod file;
mod flat;
mod hnsw;
pub mod simd;

use flat::Vectors;
use hnsw::Hnsw;

pub use flat::Allow;

/// Dot product of two vectors of equal length, with the fastest SIMD kernel of this CPU
/// (see [`simd`]).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    simd::dot(a, b)
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A graph being built on another thread over the rows the index had when it started.
struct Pending {
    handle: JoinHandle<Hnsw>,
}

/// The vectors, their graph and their tombstones. Public for benchmarks and tools; a
/// [`crate::MemoryStore`] owns one and keeps it in step with SQLite.
pub struct VectorIndex {
    dim: usize,
    cfg: IndexConfig,
    vectors: Vectors,
    /// Over rows `0..graph.len()`; `None` while a graph is being built in the background.
    graph: Option<Hnsw>,
    pending: Option<Pending>,
    tombstones: HashSet<usize>,
    /// The database `index_generation` this index reflects.
    pub(crate) generation: i64,
    /// Changed since loaded or saved.
    pub(crate) dirty: bool,
}

impl VectorIndex {
    /// An index over `(vec_id, vector)` pairs (vectors of length `dim`, unit length), its
    /// graph built now on all cores; `generation` is the database generation it reflects.
    pub fn build(dim: usize, cfg: IndexConfig, generation: i64, items: &[(usize, Vec<f32>)]) -> Self {
        let vectors = Vectors::from_items(dim, items);
        let graph = Some(Hnsw::build(vectors.rows(), cfg.max_connections, cfg.ef_construction, threads()));
        VectorIndex { dim, cfg, vectors, graph, pending: None, tombstones: HashSet::new(), generation, dirty: true }
    }

    /// Like [`VectorIndex::build`], but when there are at least
    /// [`IndexConfig::exact_below`] vectors the graph is built on another thread: searches
    /// scan exactly until [`VectorIndex::poll`] (or [`VectorIndex::wait`]) adopts it.
    pub fn build_in_background(dim: usize, cfg: IndexConfig, generation: i64, items: &[(usize, Vec<f32>)]) -> Self {
        if items.len() < cfg.exact_below {
            return Self::build(dim, cfg, generation, items);
        }
        let vectors = Vectors::from_items(dim, items);
        let mut index =
            VectorIndex { dim, cfg, vectors, graph: None, pending: None, tombstones: HashSet::new(), generation, dirty: true };
        index.start_background();
        index
    }

    fn start_background(&mut self) {
        let snapshot = self.vectors.data.clone();
        let (dim, m, efc) = (self.dim, self.cfg.max_connections, self.cfg.ef_construction);
        let spawned = std::thread::Builder::new()
            .name("tailor-index-build".into())
            .spawn(move || Hnsw::build(hnsw::Rows { data: &snapshot, dim }, m, efc, threads()));
        match spawned {
            Ok(handle) => {
                self.graph = None;
                self.pending = Some(Pending { handle });
            }
            // No thread to be had: build here.
            Err(_) => self.graph = Some(Hnsw::build(self.vectors.rows(), m, efc, threads())),
        }
    }

    /// Adopts a graph finished in the background (linking the rows added meanwhile); whether
    /// the index has a whole graph now.
    pub fn poll(&mut self) -> bool {
        if self.pending.as_ref().is_some_and(|p| p.handle.is_finished()) {
            self.wait();
        }
        self.graph.is_some()
    }

    /// Waits for a graph being built in the background, and adopts it.
    pub fn wait(&mut self) {
        let Some(p) = self.pending.take() else { return };
        let mut g = match p.handle.join() {
            Ok(g) => g,
            // The builder panicked (a bug): build again here.
            Err(_) => Hnsw::new(self.cfg.max_connections, self.cfg.ef_construction),
        };
        g.extend(self.vectors.rows(), threads());
        self.graph = Some(g);
    }

    /// Whether a graph is being built in the background.
    pub fn is_building(&self) -> bool {
        self.pending.is_some()
    }

    /// Sets the search candidate list size.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.cfg.ef_search = ef.max(1);
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        self.vectors.len().saturating_sub(self.tombstones.len())
    }

    /// Every node ever inserted and not compacted away (tombstoned ones included).
    pub fn nodes(&self) -> usize {
        self.vectors.len()
    }

    /// The live `vec_id`s.
    pub fn live_ids(&self) -> impl Iterator<Item = usize> + '_ {
        self.vectors.ids.iter().copied().filter(|id| !self.tombstones.contains(id))
    }

    /// Bytes in use: the vectors, the ids, the graph's links and the tombstones (reserved
    /// but untouched capacity is not counted: it is not resident).
    pub fn memory_bytes(&self) -> usize {
        self.vectors.data.len() * 4
            + self.vectors.ids.len() * 8
            + self.graph.as_ref().map_or(0, |g| g.link_bytes())
            + self.tombstones.capacity() * 16
    }

    fn check_dim(&self, v: &[f32]) -> Result<()> {
        if v.len() != self.dim {
            return Err(Error::DimensionMismatch { expected: self.dim, actual: v.len() });
        }
        Ok(())
    }

    /// Adds a node.
    pub fn insert(&mut self, vec_id: usize, v: &[f32]) -> Result<()> {
        self.check_dim(v)?;
        self.vectors.push(vec_id, v);
        if let Some(g) = &mut self.graph {
            g.extend(self.vectors.rows(), 1);
        }
        self.dirty = true;
        Ok(())
    }

    /// Adds many nodes (linked in parallel when there are many).
    pub fn insert_many(&mut self, items: &[(usize, Vec<f32>)]) -> Result<()> {
        if let Some((_, v)) = items.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(Error::DimensionMismatch { expected: self.dim, actual: v.len() });
        }
        if items.is_empty() {
            return Ok(());
        }
        for (id, v) in items {
            self.vectors.push(*id, v);
        }
        if let Some(g) = &mut self.graph {
            g.extend(self.vectors.rows(), threads());
        }
        self.dirty = true;
        Ok(())
    }

    /// Hides a node from every later search (see [`VectorIndex::maybe_compact`]).
    pub fn remove(&mut self, vec_id: usize) {
        if self.tombstones.insert(vec_id) {
            self.dirty = true;
        }
    }

    /// Rebuilds the index without tombstoned nodes if they exceed the configured fraction.
    pub fn maybe_compact(&mut self) {
        let t = self.tombstones.len();
        if t > 0 && (t as f32) > self.cfg.compact_fraction * self.vectors.len() as f32 {
            self.compact();
        }
    }

    /// Rebuilds the index from its live nodes (the graph in the background when large).
    pub fn compact(&mut self) {
        self.wait();
        let live: Vec<(usize, Vec<f32>)> = (0..self.vectors.len())
            .filter(|&i| !self.tombstones.contains(&self.vectors.ids[i]))
            .map(|i| (self.vectors.ids[i], self.vectors.row(i).to_vec()))
            .collect();
        *self = VectorIndex::build_in_background(self.dim, self.cfg.clone(), self.generation, &live);
    }

    /// Whether there is no live vector.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a search now scans exactly (few vectors, or the graph still being built).
    pub fn is_exact(&self) -> bool {
        self.len() < self.cfg.exact_below || self.graph.as_ref().is_none_or(|g| g.len() != self.vectors.len())
    }

    /// The `k` nodes most similar to `q` (cosine, best first) among those `allow` accepts.
    pub fn search(&self, q: &[f32], k: usize, allow: Option<Allow<'_>>) -> Vec<(usize, f32)> {
        if k == 0 || q.len() != self.dim {
            return Vec::new();
        }
        let ok = |id: usize| !self.tombstones.contains(&id) && allow.is_none_or(|f| f(id));
        match (&self.graph, self.is_exact()) {
            (Some(g), false) => {
                let ids = &self.vectors.ids;
                let ok_row = |i: u32| ok(ids[i as usize]);
                let ef = self.cfg.ef_search.max(k);
                let mut hits: Vec<(usize, f32)> =
                    g.search(self.vectors.rows(), q, k, ef, &ok_row).into_iter().map(|c| (ids[c.id as usize], c.sim)).collect();
                hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                hits
            }
            _ => self.vectors.exact(q, k, &ok, threads()),
        }
    }

    /// Exact scan over all live nodes `ok` accepts, best first.
    pub fn exact(&self, q: &[f32], k: usize, ok: Allow<'_>) -> Vec<(usize, f32)> {
        let ok = |id: usize| !self.tombstones.contains(&id) && ok(id);
        self.vectors.exact(q, k, &ok, threads())
    }

    /// Saves the index to `dir/index.bin` (replacing what is there, atomically) for a
    /// database at its generation. A graph still being built is not saved (the vectors are:
    /// the next load builds the graph again).
    pub fn save(&self, dir: &Path, profile_id: &str) -> Result<()> {
        let graph = self.graph.as_ref().filter(|g| g.len() == self.vectors.len());
        let bytes = file::encode(
            profile_id,
            self.generation,
            graph.map_or(self.cfg.max_connections.clamp(2, 128), |g| g.m),
            graph.map_or(self.cfg.ef_construction.max(1), |g| g.ef_construction),
            &self.vectors,
            &self.tombstones,
            graph,
        );
        file::write_atomic(dir, &bytes)
    }

    /// Loads a saved index if it is whole and matches `profile_id`, `generation` and `dim`;
    /// `None` when absent, stale, damaged or unreadable (the caller rebuilds).
    pub fn load(dir: &Path, profile_id: &str, generation: i64, dim: usize, cfg: &IndexConfig) -> Option<Self> {
        Self::load_any(dir, profile_id, dim, cfg).filter(|i| i.generation == generation)
    }

    /// Loads a saved index of any generation (its [`VectorIndex::generation`] says which) for
    /// a caller that catches it up with the database; `None` when absent, of another profile
    /// or dimension, damaged or unreadable. A saved index without a graph (or built with
    /// other graph settings) gets one built in the background.
    pub fn load_any(dir: &Path, profile_id: &str, dim: usize, cfg: &IndexConfig) -> Option<Self> {
        let bytes = std::fs::read(dir.join(file::FILE)).ok()?;
        let (saved, m, efc) = file::decode(&bytes, dim)?;
        drop(bytes);
        if saved.profile_id != profile_id {
            return None;
        }
        let same_settings = m == cfg.max_connections.clamp(2, 128) && efc == cfg.ef_construction.max(1);
        let mut index = VectorIndex {
            dim,
            cfg: cfg.clone(),
            vectors: saved.vectors,
            graph: saved.graph.filter(|_| same_settings),
            pending: None,
            tombstones: saved.tombstones,
            generation: saved.generation,
            dirty: false,
        };
        if index.graph.is_none() && index.vectors.len() > 0 {
            if index.vectors.len() < cfg.exact_below {
                index.graph = Some(Hnsw::build(index.vectors.rows(), cfg.max_connections, cfg.ef_construction, threads()));
            } else {
                index.start_background();
            }
        }
        Some(index)
    }

    /// The database generation this index reflects.
    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// Deletes a saved index (e.g. after forget_all, so no stale vectors linger on disk).
    pub fn remove_saved(dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
    }
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
            idx.wait();
            assert_eq!(idx.nodes(), 200);
            assert!(idx.tombstones.is_empty());
            assert_eq!(idx.search(&q, 300, None).len(), 200);
        }
    }

    #[test]
    fn background_build_searches_exactly_meanwhile_and_catches_up() {
        let dim = 16;
        let items: Vec<(usize, Vec<f32>)> = (0..3_000).map(|i| (i + 1, random_unit(dim, 40 + i as u64))).collect();
        let mut idx = VectorIndex::build_in_background(dim, cfg(100), 7, &items[..2_500]);
        let q = items[10].1.clone();
        // Whatever the builder's progress, the answers are right.
        assert_eq!(idx.search(&q, 1, None)[0].0, 11);
        idx.insert_many(&items[2_500..]).unwrap();
        idx.remove(11);
        idx.wait();
        assert!(!idx.is_building() && !idx.is_exact());
        assert_eq!(idx.len(), 2_999);
        let hits = idx.search(&items[2_900].1, 5, None);
        assert_eq!(hits[0].0, 2_901, "a row added during the build is in the graph");
        assert!(idx.search(&q, 50, None).iter().all(|h| h.0 != 11));
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tailor-index-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn save_load_round_trip_and_stale_or_damaged_files_are_refused() {
        let dir = temp_dir("roundtrip");
        let items: Vec<(usize, Vec<f32>)> = (0..500).map(|i| (i + 1, random_unit(16, 7 + i as u64))).collect();
        let mut idx = VectorIndex::build(16, cfg(0), 42, &items);
        idx.remove(3);
        idx.save(&dir, "p").unwrap();
        let back = VectorIndex::load(&dir, "p", 42, 16, &cfg(0)).expect("loads");
        assert!(!back.is_building(), "the saved graph is used as is");
        assert_eq!(back.len(), 499);
        for j in 0..20 {
            let q = random_unit(16, 900 + j);
            assert_eq!(back.search(&q, 5, None), idx.search(&q, 5, None));
        }
        assert!(VectorIndex::load(&dir, "p", 43, 16, &cfg(0)).is_none(), "stale generation");
        assert_eq!(VectorIndex::load_any(&dir, "p", 16, &cfg(0)).map(|i| i.generation()), Some(42));
        assert!(VectorIndex::load(&dir, "other", 42, 16, &cfg(0)).is_none(), "other profile");
        assert!(VectorIndex::load(&dir, "p", 42, 17, &cfg(0)).is_none(), "other dimension");
        let mut other = cfg(0);
        other.max_connections = 8;
        let rebuilt = VectorIndex::load(&dir, "p", 42, 16, &other).expect("vectors reused");
        assert!(rebuilt.graph.is_some() || rebuilt.is_building(), "other settings: the graph is rebuilt");
        let bytes = std::fs::read(dir.join(file::FILE)).unwrap();
        std::fs::write(dir.join(file::FILE), &bytes[..bytes.len() / 2]).unwrap();
        assert!(VectorIndex::load(&dir, "p", 42, 16, &cfg(0)).is_none(), "truncated");
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 3] ^= 0x40;
        std::fs::write(dir.join(file::FILE), &flipped).unwrap();
        assert!(VectorIndex::load(&dir, "p", 42, 16, &cfg(0)).is_none(), "damaged");
        std::fs::write(dir.join(file::FILE), b"").unwrap();
        assert!(VectorIndex::load(&dir, "p", 42, 16, &cfg(0)).is_none(), "empty");
        VectorIndex::remove_saved(&dir);
        assert!(!dir.exists());
        assert!(VectorIndex::load(&dir, "p", 42, 16, &cfg(0)).is_none(), "absent");
    }

    #[test]
    fn an_index_saved_while_building_keeps_its_vectors() {
        let dir = temp_dir("building");
        let items: Vec<(usize, Vec<f32>)> = (0..400).map(|i| (i + 1, random_unit(8, i as u64))).collect();
        let idx = VectorIndex::build_in_background(8, cfg(10), 3, &items);
        idx.save(&dir, "p").unwrap();
        let mut back = VectorIndex::load(&dir, "p", 3, 8, &cfg(10)).expect("loads");
        back.wait();
        assert_eq!(back.len(), 400);
        assert_eq!(back.search(&items[9].1, 1, None)[0].0, 10);
        VectorIndex::remove_saved(&dir);
    }
}
