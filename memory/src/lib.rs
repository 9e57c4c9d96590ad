//! `tailor-memory`: the on-device profile store of Tailor.
//!
//! One SQLite file per user holds what the user told the assistant (memories, with the
//! history of their changes), the feedback events the trainer learns from, and the lineage of
//! the adapters it trained. Memories are embedded ([`BertEmbedder`]: any sentence-transformers
//! BERT folder, all-MiniLM-L6-v2 by default) into an HNSW graph derived from SQLite, and found
//! again by hybrid search (vector + FTS5 BM25, fused by reciprocal rank). Forgetting removes
//! a memory from the file, the full-text index and the graph, for good.
//!
//! A correction recorded as feedback is mirrored into a memory in the same transaction
//! ([`MemoryStore::add_feedback_mirrored`]), so the next prompt can use it before any adapter
//! has learned it; a later correction of the same question updates that memory, and
//! forgetting the feedback forgets it.
//!
//! On iOS, where `hnsw_rs` does not build, the vector index is a flat list instead: search is
//! always exact (O(n) dot products, fine for one person's memories) and the index is not saved
//! beside the database but rebuilt from SQLite at every open (see [`VectorIndex`]).
//!
//! With the cargo feature `encryption` the file is a SQLCipher database keyed by the host app
//! ([`MemoryStore::open_encrypted`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use tailor_memory::{BertEmbedder, MemoryConfig, MemoryStore, NewMemory, SearchQuery};
//!
//! # fn main() -> Result<(), tailor_memory::Error> {
//! let embedder = Arc::new(BertEmbedder::load("/path/to/models/all-minilm-l6-v2")?);
//! let mut store = MemoryStore::open("/path/to/profile.db", embedder, MemoryConfig::default())?;
//! store.add(NewMemory::new("My sister Anna lives in Lisbon."))?;
//! for hit in store.search(&SearchQuery::new("Where does my sister live?", 3))? {
//!     println!("{:.3} {}", hit.score, hit.memory.text);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Threading: [`MemoryStore`] is `Send`, not `Sync` (one SQLite connection); an [`Embed`]
//! implementation is `Send + Sync` and can be shared (`Arc`) by every store of a process.

mod config;
mod embedder;
mod error;
mod exchange;
mod index;
mod key;
mod mirror;
mod records;
mod retrieval;
mod schema;
mod store;
pub mod testing;
mod types;

pub use config::{IndexConfig, MemoryConfig};
pub use embedder::{normalize, BertEmbedder, Embed, Pooling};
pub use error::{Error, ErrorKind, Result};
pub use exchange::{Export, ExportedMemory, ImportReport, EXPORT_FORMAT, EXPORT_VERSION};
#[cfg(not(target_os = "ios"))]
pub use index::CosineDistance;
pub use index::{dot, VectorIndex};
pub use key::EncryptionKey;
pub use retrieval::RRF_K;
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use store::MemoryStore;
pub use types::{
    now_millis, AddAction, AddOutcome, AdapterRecord, Feedback, FeedbackAdded, FeedbackKind, FeedbackQuery, Filter, HistoryEntry,
    Memory, MemoryId, MemoryUpdate, Millis, NewFeedback, NewMemory, Page, SearchHit, SearchMode, SearchQuery,
};

/// Whether this build can open encrypted profiles (cargo feature `encryption`).
pub const ENCRYPTION_AVAILABLE: bool = cfg!(feature = "encryption");

#[allow(dead_code)]
fn assert_thread_rules() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<MemoryStore>();
    send_sync::<BertEmbedder>();
    send_sync::<Error>();
}
