//! The HNSW backend (every target but iOS): an `hnsw_rs` graph, saved beside the database as
//! an `hnsw_rs` dump plus a manifest.

use std::collections::HashSet;
use std::path::Path;

use hnsw_rs::prelude::{AnnT, Distance, Hnsw, HnswIo};
use serde::{Deserialize, Serialize};

use super::{dot, tmp_dir, Graph, Header, VectorIndex};
use crate::config::IndexConfig;
use crate::error::{Error, Result};

/// Cosine distance on unit vectors: `1 - a·b`, clamped at 0 (hnsw_rs' `DistDot` asserts on
/// rounding above 1). Not available on iOS, which has no HNSW graph.
#[derive(Debug, Default, Clone, Copy)]
pub struct CosineDistance;

impl Distance<f32> for CosineDistance {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

/// The graph of the HNSW backend.
pub(super) struct HnswGraph(Hnsw<'static, f32, CosineDistance>);

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

impl Graph for HnswGraph {
    const EXACT: bool = false;

    fn new(_dim: usize, cfg: &IndexConfig, capacity: usize) -> Self {
        HnswGraph(Hnsw::new(
            cfg.max_connections.clamp(4, 255),
            capacity.max(1024),
            16,
            cfg.ef_construction,
            CosineDistance,
        ))
    }

    fn insert(&mut self, id: usize, v: &[f32]) {
        self.0.insert_slice((v, id));
    }

    fn insert_many(&mut self, items: &[(usize, Vec<f32>)]) {
        if items.len() > 64 {
            let refs: Vec<(&Vec<f32>, usize)> = items.iter().map(|(id, v)| (v, *id)).collect();
            self.0.parallel_insert(&refs);
        } else {
            for (id, v) in items {
                self.0.insert_slice((v, *id));
            }
        }
    }

    fn for_each(&self, f: &mut dyn FnMut(usize, &[f32])) {
        if self.0.get_nb_point() == 0 {
            // hnsw_rs' point iterator unwraps the entry point: never iterate an empty graph.
            return;
        }
        for p in self.0.get_point_indexation() {
            f(p.get_origin_id(), p.get_v());
        }
    }

    fn search(&self, q: &[f32], k: usize, ef: usize, ok: &dyn Fn(usize) -> bool) -> Vec<(usize, f32)> {
        let filter = |id: &usize| ok(*id);
        self.0.search_filter(q, k, ef, Some(&filter)).into_iter().map(|n| (n.d_id, 1.0 - n.distance)).collect()
    }

    fn save(&self, dir: &Path, header: &Header<'_>, nodes: usize, tombstones: &HashSet<usize>) -> Result<()> {
        if nodes == 0 {
            // Nothing to save (and hnsw_rs cannot dump an empty graph): the next open builds
            // the empty index in no time.
            VectorIndex::remove_saved(dir);
            return Ok(());
        }
        let tmp = tmp_dir(dir);
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let dumped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.file_dump(&tmp, BASENAME)));
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
        let mut tombstones: Vec<usize> = tombstones.iter().copied().collect();
        tombstones.sort_unstable();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            profile_id: header.profile_id.to_owned(),
            generation: header.generation,
            dim: header.dim,
            nodes,
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

    fn load(dir: &Path, header: &Header<'_>) -> Option<(Self, usize, HashSet<usize>)> {
        let manifest: Manifest = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
        let size = |ext: &str| std::fs::metadata(dir.join(format!("{BASENAME}.hnsw.{ext}"))).ok().map(|m| m.len());
        if manifest.format != MANIFEST_FORMAT
            || manifest.profile_id != header.profile_id
            || manifest.generation != header.generation
            || manifest.dim != header.dim
            || size("graph")? != manifest.graph_bytes
            || size("data")? != manifest.data_bytes
        {
            return None;
        }
        // The loaded graph borrows its loader; the loader (paths and options, no data: no
        // mmap) is leaked so the graph can live as long as the store.
        let graph: Hnsw<'static, f32, CosineDistance> = std::panic::catch_unwind(|| {
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, BASENAME)));
            io.load_hnsw::<f32, CosineDistance>()
        })
        .ok()?
        .ok()?;
        if graph.get_nb_point() != manifest.nodes {
            return None;
        }
        Some((HnswGraph(graph), manifest.nodes, manifest.tombstones.into_iter().collect()))
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}
