//! Configuration of a profile store.

use serde::{Deserialize, Serialize};

/// How a [`crate::MemoryStore`] behaves. `Default` gives the settings the SDK ships with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Longest memory text accepted, in bytes (UTF-8).
    pub max_text_bytes: usize,
    /// Largest metadata object accepted, in bytes of JSON.
    pub max_metadata_bytes: usize,
    /// An add whose embedding has cosine ≥ this with an existing memory updates that memory
    /// instead of inserting (`None`: never merge).
    pub dedup_threshold: Option<f32>,
    /// The vector index.
    pub index: IndexConfig,
    /// SQLite busy timeout in milliseconds.
    pub busy_timeout_ms: u64,
    /// Run `VACUUM` after [`crate::MemoryStore::forget_all`] so the file shrinks and no freed
    /// page survives (secure_delete already zeroes them).
    pub vacuum_on_forget_all: bool,
    /// Mirror every correction recorded with [`crate::MemoryStore::add_feedback`] into a
    /// memory `Q: <prompt> A: <corrected>` in the same transaction, so the next prompt can
    /// retrieve it before any training. A later correction of the same question (equal after
    /// lowercasing, collapsing whitespace and dropping trailing punctuation, or prompt
    /// embeddings with cosine ≥ 0.9) updates that memory instead; forgetting the feedback
    /// forgets the memory. Default true.
    pub mirror_corrections: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_text_bytes: 16 * 1024,
            max_metadata_bytes: 16 * 1024,
            dedup_threshold: Some(0.95),
            index: IndexConfig::default(),
            busy_timeout_ms: 5_000,
            vacuum_on_forget_all: true,
            mirror_corrections: true,
        }
    }
}

/// The HNSW index and when it is used. (On iOS the index is a flat exact scan: only
/// `compact_fraction` applies there, and nothing is saved.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct IndexConfig {
    /// While the store holds fewer live vectors than this, search is exact (brute force).
    pub exact_below: usize,
    /// HNSW links per node (`M`).
    pub max_connections: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// Candidate list size while searching (raised to the number of results asked).
    pub ef_search: usize,
    /// Rebuild the graph when deleted (tombstoned) nodes exceed this fraction of all nodes.
    pub compact_fraction: f32,
    /// Save the graph beside the database (`<db>.hnsw/`) on close so the next open loads it
    /// instead of rebuilding. Only done when the store holds at least `exact_below` vectors.
    pub persist: bool,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            exact_below: 2_000,
            max_connections: 24,
            ef_construction: 200,
            ef_search: 96,
            compact_fraction: 0.2,
            persist: true,
        }
    }
}
