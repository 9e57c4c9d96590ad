//! The vector index: an `hnsw_rs` graph over the memories' embeddings, derived from SQLite.
//!
//! Nodes are keyed by a memory's `vec_id` (a fresh id each time a memory is (re-)embedded), so
//! a forgotten or re-embedded memory's old node is *tombstoned*: filtered out of every search
//! at once and dropped when the graph is compacted (rebuilt) after tombstones pass
//! [`IndexConfig::compact_fraction`]. While few vectors are live, search is an exact scan.
//!
//! The graph can be saved beside the database (`<db>.hnsw/`) with a manifest naming the
//! profile and the database's `index_generation`; at open it is used only when both match,
//! otherwise it is rebuilt from SQLite (the source of truth).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use hnsw_rs::prelude::{AnnT, Distance, Hnsw, HnswIo};
use serde::{Deserialize, Serialize};

use crate::config::IndexConfig;
use crate::error::{Error, Result};

/// Cosine distance on unit vectors: `1 - a·b`, clamped at 0 (hnsw_rs' `DistDot` asserts on
/// rounding above 1).
#[derive(Debug, Default, Clone, Copy)]
pub struct CosineDistance;

impl Distance<f32> for CosineDistance {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

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

type Graph = Hnsw<'static, f32, CosineDistance>;

/// The graph and its tombstones. Public for benchmarks and tools; a [`crate::MemoryStore`]
/// owns one and keeps it in step with SQLite.
pub struct VectorIndex {
    dim: usize,
    cfg: IndexConfig,
    graph: Graph,
    tombstones: HashSet<usize>,
    nodes: usize,
    /// The database `index_generation` this index reflects.
    pub(crate) generation: i64,
    /// Changed since loaded or saved.
    pub(crate) dirty: bool,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    profile_id: String,
    generation: i64,
    dim: usize,
    nodes: usize,
    tombstones: Vec<usize>,
    graph_bytes: u64,
    data_bytes: u64,
}

const MANIFEST_FORMAT: u32 = 1;
const BASENAME: &str = "graph";

fn new_graph(cfg: &IndexConfig, capacity: usize) -> Graph {
    Hnsw::new(cfg.max_connections.clamp(4, 255), capacity.max(1024), 16, cfg.ef_construction, CosineDistance)
}

impl VectorIndex {
    /// An index over `(vec_id, vector)` pairs (vectors of length `dim`, unit length), built
    /// on all cores; `generation` is the database generation it reflects.
    pub fn build(dim: usize, cfg: IndexConfig, generation: i64, items: &[(usize, Vec<f32>)]) -> Self {
        let graph = new_graph(&cfg, items.len());
        let refs: Vec<(&Vec<f32>, usize)> = items.iter().map(|(id, v)| (v, *id)).collect();
        if refs.len() > 64 {
            graph.parallel_insert(&refs);
        } else {
            for (v, id) in refs {
                graph.insert_slice((v, id));
            }
        }
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
        self.graph.insert_slice((v, vec_id));
        self.nodes += 1;
        self.dirty = true;
        Ok(())
    }

    /// Adds many nodes (in parallel when there are many).
    pub fn insert_many(&mut self, items: &[(usize, Vec<f32>)]) -> Result<()> {
        if let Some((_, v)) = items.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(Error::DimensionMismatch { expected: self.dim, actual: v.len() });
        }
        if items.len() > 64 {
            let refs: Vec<(&Vec<f32>, usize)> = items.iter().map(|(id, v)| (v, *id)).collect();
            self.graph.parallel_insert(&refs);
        } else {
            for (id, v) in items {
                self.graph.insert_slice((v, *id));
            }
        }
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
        if self.nodes == 0 {
            // hnsw_rs' point iterator unwraps the entry point: never iterate an empty graph.
            return Vec::new();
        }
        self.graph
            .get_point_indexation()
            .into_iter()
            .filter(|p| !self.tombstones.contains(&p.get_origin_id()))
            .map(|p| (p.get_origin_id(), p.get_v().to_vec()))
            .collect()
    }

    /// Whether there is no live vector.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a search now scans exactly.
    pub fn is_exact(&self) -> bool {
        self.len() < self.cfg.exact_below
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
        let filter = |id: &usize| ok(*id);
        let mut hits: Vec<(usize, f32)> = self
            .graph
            .search_filter(q, k, ef, Some(&filter))
            .into_iter()
            .map(|n| (n.d_id, 1.0 - n.distance))
            .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(k);
        hits
    }

    /// Exact scan over all live nodes.
    pub fn exact(&self, q: &[f32], k: usize, ok: &dyn Fn(usize) -> bool) -> Vec<(usize, f32)> {
        if self.nodes == 0 {
            return Vec::new();
        }
        let mut all: Vec<(usize, f32)> = self
            .graph
            .get_point_indexation()
            .into_iter()
            .filter(|p| ok(p.get_origin_id()))
            .map(|p| (p.get_origin_id(), dot(q, p.get_v())))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    /// Saves the graph to `dir` (replacing what is there) for a database at `generation`.
    /// Written to a temporary folder first and renamed, so `dir` is whole or absent.
    pub fn save(&self, dir: &Path, profile_id: &str) -> Result<()> {
        if self.nodes == 0 {
            // Nothing to save (and hnsw_rs cannot dump an empty graph): the next open builds
            // the empty index in no time.
            VectorIndex::remove_saved(dir);
            return Ok(());
        }
        let tmp = tmp_dir(dir);
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let dumped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.graph.file_dump(&tmp, BASENAME)
        }));
        match dumped {
            Ok(Ok(name)) if name == BASENAME => {}
            Ok(Ok(name)) => return Err(Error::Corrupt { reason: format!("hnsw dump renamed to {name}") }),
            Ok(Err(e)) => return Err(Error::io(&tmp, std::io::Error::other(e.to_string()))),
            Err(_) => return Err(Error::io(&tmp, std::io::Error::other("hnsw dump panicked"))),
        }
        let size = |ext: &str| -> Result<u64> {
            let p = tmp.join(format!("{BASENAME}.hnsw.{ext}"));
            let f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
            f.sync_all().map_err(|e| Error::io(&p, e))?;
            Ok(f.metadata().map_err(|e| Error::io(&p, e))?.len())
        };
        let mut tombstones: Vec<usize> = self.tombstones.iter().copied().collect();
        tombstones.sort_unstable();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            profile_id: profile_id.to_owned(),
            generation: self.generation,
            dim: self.dim,
            nodes: self.nodes,
            tombstones,
            graph_bytes: size("graph")?,
            data_bytes: size("data")?,
        };
        let mpath = tmp.join("manifest.json");
        let json = serde_json::to_vec(&manifest).map_err(|e| Error::io(&mpath, e.into()))?;
        write_synced(&mpath, &json)?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
        if let Some(parent) = dir.parent() {
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Loads a saved graph if its manifest matches `profile_id`, `generation` and `dim`;
    /// `None` when absent, stale or unreadable (the caller rebuilds).
    pub fn load(dir: &Path, profile_id: &str, generation: i64, dim: usize, cfg: &IndexConfig) -> Option<Self> {
        let manifest: Manifest = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
        let size = |ext: &str| std::fs::metadata(dir.join(format!("{BASENAME}.hnsw.{ext}"))).ok().map(|m| m.len());
        if manifest.format != MANIFEST_FORMAT
            || manifest.profile_id != profile_id
            || manifest.generation != generation
            || manifest.dim != dim
            || size("graph")? != manifest.graph_bytes
            || size("data")? != manifest.data_bytes
        {
            return None;
        }
        // The loaded graph borrows its loader; the loader (paths and options, no data: no
        // mmap) is leaked so the graph can live as long as the store.
        let graph: Graph = std::panic::catch_unwind(|| {
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, BASENAME)));
            io.load_hnsw::<f32, CosineDistance>()
        })
        .ok()?
        .ok()?;
        if graph.get_nb_point() != manifest.nodes {
            return None;
        }
        Some(VectorIndex {
            dim,
            cfg: cfg.clone(),
            graph,
            tombstones: manifest.tombstones.into_iter().collect(),
            nodes: manifest.nodes,
            generation,
            dirty: false,
        })
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

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
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
