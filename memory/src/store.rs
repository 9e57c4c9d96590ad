//! [`MemoryStore`]: opening a profile, adding, updating and forgetting memories.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::config::MemoryConfig;
use crate::embedder::Embed;
use crate::error::{Error, Result};
use crate::index::{dot, VectorIndex};
use crate::key::EncryptionKey;
use crate::schema::{self, Key};
use crate::types::{
    now_millis, AddAction, AddOutcome, HistoryEntry, Memory, MemoryId, MemoryUpdate, Millis, NewMemory, Page,
};

/// One user's profile: memories (with history, full-text and vector index), feedback events
/// and adapter lineage, in one SQLite file.
///
/// `Send` but not `Sync` (like the SQLite connection inside): use it from one thread at a time,
/// or behind a `Mutex`. Open one store per file per process; another process writing the same
/// file is noticed at the next search (the vector index is rebuilt).
pub struct MemoryStore {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    pub(crate) embedder: Arc<dyn Embed>,
    pub(crate) config: MemoryConfig,
    pub(crate) index: VectorIndex,
    pub(crate) profile_id: String,
    /// A saved graph exists on disk for the current generation.
    saved: bool,
    /// Embeddings of the prompts of mirrored corrections, by prompt text (derived data for
    /// matching a new correction to an earlier one; cleared whenever something is forgotten).
    pub(crate) prompt_vectors: HashMap<String, Vec<f32>>,
}

/// Index changes made inside a transaction, applied to the graph after it commits.
#[derive(Default)]
pub(crate) struct Changes {
    inserts: Vec<(usize, Vec<f32>)>,
    removes: Vec<usize>,
    /// (generation before, generation after) when the embeddings changed.
    generation: Option<(i64, i64)>,
}

impl Changes {
    fn touches_vectors(&self) -> bool {
        !self.inserts.is_empty() || !self.removes.is_empty()
    }
}

impl MemoryStore {
    /// Opens (or creates) the profile at `path`.
    pub fn open(path: impl AsRef<Path>, embedder: Arc<dyn Embed>, config: MemoryConfig) -> Result<Self> {
        Self::open_inner(path.as_ref(), Key::None, embedder, config)
    }

    /// Opens (or creates) an encrypted profile. A wrong key gives [`Error::WrongKey`] and
    /// leaves the file as it was. Needs the cargo feature `encryption`
    /// ([`Error::EncryptionUnavailable`] otherwise). The vector graph is never saved beside an
    /// encrypted profile (it would hold the embeddings in clear); it is rebuilt at open.
    pub fn open_encrypted(
        path: impl AsRef<Path>,
        key: &EncryptionKey,
        embedder: Arc<dyn Embed>,
        mut config: MemoryConfig,
    ) -> Result<Self> {
        config.index.persist = false;
        Self::open_inner(path.as_ref(), Key::Some(key), embedder, config)
    }

    fn open_inner(path: &Path, key: Key<'_>, embedder: Arc<dyn Embed>, config: MemoryConfig) -> Result<Self> {
        let conn = schema::open(path, key, config.busy_timeout_ms)?;
        let profile_id = meta(&conn, "profile_id")?;
        let dim = embedder.dim();
        let empty = VectorIndex::build(dim, config.index.clone(), -1, &[]);
        let mut store = MemoryStore {
            conn,
            path: path.to_path_buf(),
            embedder,
            config,
            index: empty,
            profile_id,
            saved: false,
            prompt_vectors: HashMap::new(),
        };
        store.reembed_stale()?;
        let generation = meta_i64(&store.conn, "index_generation")?;
        let saved = match store.config.index.persist {
            true => VectorIndex::load(&store.index_dir(), &store.profile_id, generation, dim, &store.config.index),
            false => None,
        };
        match saved {
            Some(index) => {
                store.index = index;
                store.saved = true;
            }
            None => store.rebuild_index()?,
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration.
    pub fn config(&self) -> &MemoryConfig {
        &self.config
    }

    /// The embedder.
    pub fn embedder(&self) -> &Arc<dyn Embed> {
        &self.embedder
    }

    /// Where the vector graph is saved: `<db>.hnsw/`.
    pub fn index_dir(&self) -> PathBuf {
        let mut name = self.path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".hnsw");
        self.path.with_file_name(name)
    }

    /// Number of memories.
    pub fn len(&self) -> Result<usize> {
        Ok(self.conn.query_row("SELECT count(*) FROM memories", [], |r| r.get::<_, i64>(0))? as usize)
    }

    /// Whether there is no memory.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Runs SQLite's `PRAGMA integrity_check` ([`Error::Corrupt`] unless it says `ok`).
    pub fn integrity_check(&self) -> Result<()> {
        schema::integrity_check(&self.conn)
    }

    /// Adds a memory. A near-duplicate of an existing memory (cosine ≥
    /// [`MemoryConfig::dedup_threshold`]) updates that memory instead, keeping its old text in
    /// history.
    pub fn add(&mut self, memory: NewMemory) -> Result<AddOutcome> {
        Ok(self.add_many(vec![memory])?.remove(0))
    }

    /// Adds several memories in one transaction (all or none), embedding them in batches.
    pub fn add_many(&mut self, memories: Vec<NewMemory>) -> Result<Vec<AddOutcome>> {
        let prepared = self.prepare(memories)?;
        let dedup = self.config.dedup_threshold;
        let mut w = Write::begin(&mut self.conn, &*self.embedder, &self.index)?;
        let outcomes = prepared.iter().map(|m| w.add(m, dedup)).collect::<Result<Vec<_>>>()?;
        let changes = w.commit()?;
        self.apply(changes)?;
        Ok(outcomes)
    }

    /// Checks and embeds memories before a write (embedding is the slow part; it is done
    /// before the write lock is taken).
    pub(crate) fn prepare(&self, memories: Vec<NewMemory>) -> Result<Vec<Prepared>> {
        let mut metas = Vec::with_capacity(memories.len());
        for m in &memories {
            self.check_text(&m.text)?;
            metas.push(self.metadata_json(&m.metadata)?);
        }
        let texts: Vec<&str> = memories.iter().map(|m| m.text.as_str()).collect();
        let vectors = self.embed(&texts)?;
        Ok(memories
            .into_iter()
            .zip(metas)
            .zip(vectors)
            .map(|((m, meta), vector)| Prepared {
                metadata: if m.metadata.is_null() { None } else { Some(meta) },
                text: m.text,
                importance: m.importance.map(|i| i.clamp(0.0, 1.0)),
                created_at: m.created_at,
                vector,
            })
            .collect())
    }

    /// The memory with this id.
    pub fn get(&self, id: MemoryId) -> Result<Memory> {
        self.conn
            .query_row(&format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE id = ?1"), [id], memory_from_row)
            .optional()?
            .ok_or(Error::MemoryNotFound { id })
    }

    /// Changes a memory's text, metadata or importance. The superseded text and metadata are
    /// kept in its history (with the time of the change) until the memory is forgotten.
    pub fn update(&mut self, id: MemoryId, update: MemoryUpdate) -> Result<Memory> {
        if let Some(t) = &update.text {
            self.check_text(t)?;
        }
        let meta = update.metadata.as_ref().map(|m| self.metadata_json(m)).transpose()?;
        let vector = match &update.text {
            Some(t) => Some(self.embed(&[t.as_str()])?.remove(0)),
            None => None,
        };
        let mut w = Write::begin(&mut self.conn, &*self.embedder, &self.index)?;
        let exists: bool = w.tx.query_row("SELECT count(*) FROM memories WHERE id = ?1", [id], |r| r.get::<_, i64>(0))? > 0;
        if !exists {
            return Err(Error::MemoryNotFound { id });
        }
        let text = update.text.as_deref().zip(vector);
        w.update(id, text, meta, update.importance.map(|i| i.clamp(0.0, 1.0)))?;
        let changes = w.commit()?;
        self.apply(changes)?;
        self.get(id)
    }

    /// The superseded versions of a memory, oldest first.
    pub fn history(&self, id: MemoryId) -> Result<Vec<HistoryEntry>> {
        self.get(id)?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT text, metadata, superseded_at FROM memory_history WHERE memory_id = ?1 ORDER BY superseded_at, id",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(HistoryEntry { text: r.get(0)?, metadata: json_col(r, 1)?, superseded_at: r.get(2)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Memories in id order, `limit` at a time, after the id `after` (`None`: from the start).
    pub fn list(&self, after: Option<MemoryId>, limit: usize) -> Result<Page> {
        let limit = limit.clamp(1, 10_000);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MEMORY_COLUMNS} FROM memories WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))?;
        let memories: Vec<Memory> = stmt
            .query_map(params![after.unwrap_or(0), limit as i64 + 1], memory_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        let mut memories = memories;
        let next_after = if memories.len() > limit {
            memories.truncate(limit);
            memories.last().map(|m| m.id)
        } else {
            None
        };
        Ok(Page { memories, next_after })
    }

    /// Forgets a memory for good: its text, history, embedding, full-text entry and index
    /// node. The write-ahead log is checkpointed and freed pages are zeroed, so the text does
    /// not linger in the file.
    pub fn forget(&mut self, id: MemoryId) -> Result<()> {
        if self.forget_ids(&[id])? == 0 {
            return Err(Error::MemoryNotFound { id });
        }
        Ok(())
    }

    /// Forgets every memory whose metadata matches `filter`; returns how many.
    pub fn forget_where(&mut self, filter: &crate::types::Filter) -> Result<usize> {
        let ids = self.ids_matching(filter)?;
        self.forget_ids(&ids)
    }

    /// Forgets every memory (feedback and adapter lineage stay); returns how many. With
    /// [`MemoryConfig::vacuum_on_forget_all`] the file is vacuumed afterwards.
    pub fn forget_all(&mut self) -> Result<usize> {
        let mut changes = Changes::default();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute("DELETE FROM memories", [])?;
        bump_generation(&tx, &mut changes)?;
        tx.commit()?;
        self.prompt_vectors.clear();
        self.index = VectorIndex::build(self.embedder.dim(), self.config.index.clone(), -1, &[]);
        self.index.generation = changes.generation.map(|g| g.1).unwrap_or(-1);
        VectorIndex::remove_saved(&self.index_dir());
        self.saved = false;
        self.conn.execute_batch("INSERT INTO memories_fts(memories_fts) VALUES ('optimize');")?;
        if self.config.vacuum_on_forget_all {
            self.conn.execute_batch("VACUUM;")?;
        }
        self.checkpoint()?;
        Ok(n)
    }

    pub(crate) fn forget_ids(&mut self, ids: &[MemoryId]) -> Result<usize> {
        let mut w = Write::begin(&mut self.conn, &*self.embedder, &self.index)?;
        let n = w.delete(ids)?;
        let changes = w.commit()?;
        self.forgotten(changes, n > 0)?;
        Ok(n)
    }

    /// After a committed write that forgot something: applies its index changes, drops the
    /// cached prompt vectors (derived from what may be forgotten now) and, with `checkpoint`,
    /// checkpoints the WAL so the deleted text leaves it.
    pub(crate) fn forgotten(&mut self, changes: Changes, checkpoint: bool) -> Result<()> {
        self.prompt_vectors.clear();
        self.apply(changes)?;
        if checkpoint {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Saves the vector graph beside the database so the next open loads it instead of
    /// rebuilding. Done on drop too; a no-op unless [`crate::IndexConfig::persist`] is set.
    pub fn persist_index(&mut self) -> Result<()> {
        if self.saved || !self.config.index.persist {
            return Ok(());
        }
        self.index.maybe_compact();
        self.index.save(&self.index_dir(), &self.profile_id)?;
        self.saved = true;
        self.index.dirty = false;
        Ok(())
    }

    /// Rebuilds the vector graph from the embeddings in SQLite.
    pub fn rebuild_index(&mut self) -> Result<()> {
        let generation = meta_i64(&self.conn, "index_generation")?;
        let dim = self.embedder.dim();
        let mut stmt = self.conn.prepare("SELECT vec_id, embedding FROM memories WHERE vec_id IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut items = Vec::new();
        for row in rows {
            let (vec_id, blob) = row?;
            let v = from_blob(&blob);
            if v.len() != dim {
                return Err(Error::Corrupt { reason: format!("embedding of vec_id {vec_id} has {} values, expected {dim}", v.len()) });
            }
            items.push((vec_id as usize, v));
        }
        drop(stmt);
        self.index = VectorIndex::build(dim, self.config.index.clone(), generation, &items);
        VectorIndex::remove_saved(&self.index_dir());
        self.saved = false;
        Ok(())
    }

    /// Consumes the store, saving the index when configured.
    pub fn close(mut self) -> Result<()> {
        self.save_if_worthwhile()
    }

    fn save_if_worthwhile(&mut self) -> Result<()> {
        if self.config.index.persist && !self.saved && self.index.len() >= self.config.index.exact_below {
            self.persist_index()?;
        }
        Ok(())
    }

    /// Applies committed index changes to the graph.
    pub(crate) fn apply(&mut self, changes: Changes) -> Result<()> {
        let Some((before, after)) = changes.generation else {
            return Ok(());
        };
        if self.saved {
            // The saved graph is stale now, and may hold vectors of forgotten memories.
            VectorIndex::remove_saved(&self.index_dir());
            self.saved = false;
        }
        if before != self.index.generation {
            // Another connection changed embeddings since we built the graph.
            return self.rebuild_index();
        }
        for r in changes.removes {
            self.index.remove(r);
        }
        self.index.insert_many(&changes.inserts)?;
        self.index.generation = after;
        self.index.maybe_compact();
        Ok(())
    }

    /// Rebuilds the graph if another connection changed the embeddings.
    pub(crate) fn sync_index(&mut self) -> Result<()> {
        if meta_i64(&self.conn, "index_generation")? != self.index.generation {
            self.rebuild_index()?;
        }
        Ok(())
    }

    pub(crate) fn checkpoint(&self) -> Result<()> {
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    pub(crate) fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let vs = self.embedder.embed(texts)?;
        let dim = self.embedder.dim();
        if vs.len() != texts.len() {
            return Err(Error::invalid(format!("embedder returned {} vectors for {} texts", vs.len(), texts.len())));
        }
        for v in &vs {
            if v.len() != dim {
                return Err(Error::DimensionMismatch { expected: dim, actual: v.len() });
            }
        }
        Ok(vs)
    }

    pub(crate) fn check_text(&self, text: &str) -> Result<()> {
        if text.trim().is_empty() {
            return Err(Error::EmptyText);
        }
        if text.len() > self.config.max_text_bytes {
            return Err(Error::TextTooLong { len: text.len(), max: self.config.max_text_bytes });
        }
        Ok(())
    }

    pub(crate) fn metadata_json(&self, m: &serde_json::Value) -> Result<String> {
        let s = match m {
            serde_json::Value::Null => return Ok("{}".into()),
            serde_json::Value::Object(_) => m.to_string(),
            _ => return Err(Error::InvalidMetadata { reason: "metadata must be a JSON object".into() }),
        };
        if s.len() > self.config.max_metadata_bytes {
            return Err(Error::InvalidMetadata {
                reason: format!("{} bytes, more than the limit of {}", s.len(), self.config.max_metadata_bytes),
            });
        }
        Ok(s)
    }

    /// Re-embeds memories stored by another embedding model (or none).
    fn reembed_stale(&mut self) -> Result<()> {
        let model = self.embedder.model_id().to_owned();
        let dim = self.embedder.dim() as i64;
        loop {
            let batch: Vec<(MemoryId, String)> = {
                let mut stmt = self.conn.prepare(
                    "SELECT id, text FROM memories
                     WHERE embedding IS NULL OR embedding_model IS NOT ?1 OR embedding_dim IS NOT ?2 LIMIT 256",
                )?;
                let rows = stmt.query_map(params![model, dim], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            if batch.is_empty() {
                return Ok(());
            }
            let texts: Vec<&str> = batch.iter().map(|(_, t)| t.as_str()).collect();
            let vectors = self.embed(&texts)?;
            let mut changes = Changes::default();
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for ((id, _), v) in batch.iter().zip(vectors) {
                let vec_id = alloc_vec_id(&tx)?;
                tx.execute(
                    "UPDATE memories SET embedding = ?2, embedding_model = ?3, embedding_dim = ?4, vec_id = ?5 WHERE id = ?1",
                    params![id, to_blob(&v), model, dim, vec_id as i64],
                )?;
            }
            bump_generation(&tx, &mut changes)?;
            tx.commit()?;
        }
    }

    /// Memory ids for graph node ids.
    pub(crate) fn memory_ids_for(&self, vec_ids: &[usize]) -> Result<Vec<Option<MemoryId>>> {
        let mut stmt = self.conn.prepare_cached("SELECT id FROM memories WHERE vec_id = ?1")?;
        vec_ids
            .iter()
            .map(|&v| Ok(stmt.query_row([v as i64], |r| r.get(0)).optional()?))
            .collect()
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        // Best effort: a failed save only means the next open rebuilds.
        let _ = self.save_if_worthwhile();
    }
}

/// A memory checked and embedded by [`MemoryStore::prepare`], ready to be written.
pub(crate) struct Prepared {
    pub(crate) text: String,
    /// The metadata JSON; `None` when none was given (an update then keeps the old one).
    pub(crate) metadata: Option<String>,
    pub(crate) importance: Option<f32>,
    pub(crate) created_at: Option<Millis>,
    pub(crate) vector: Vec<f32>,
}

/// One write transaction (`BEGIN IMMEDIATE`) on the memory tables, and the index changes it
/// makes. Other writes (feedback rows, links) go through [`Write::tx`] in the same
/// transaction. [`Write::commit`] hands back the changes for [`MemoryStore::apply`], which the
/// caller runs after the commit; dropped uncommitted, everything rolls back and the graph is
/// as it was.
///
/// It borrows the store's fields separately (not the store) so the caller can still read its
/// configuration while the transaction is open.
pub(crate) struct Write<'a> {
    pub(crate) tx: Transaction<'a>,
    embedder: &'a dyn Embed,
    index: &'a VectorIndex,
    changes: Changes,
    /// One timestamp for everything this transaction writes.
    pub(crate) now: Millis,
    /// A deletion happened: the generation moves even if no vector was removed.
    deleted: bool,
    /// Graph nodes of memories mirrored from feedback (see [`Write::add`]); loaded when first
    /// needed, reset by the writes that change the set (a mirror written, a memory deleted).
    pub(crate) mirrored_vecs: Option<HashSet<usize>>,
}

impl<'a> Write<'a> {
    pub(crate) fn begin(conn: &'a mut Connection, embedder: &'a dyn Embed, index: &'a VectorIndex) -> Result<Self> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        Ok(Write { tx, embedder, index, changes: Changes::default(), now: now_millis(), deleted: false, mirrored_vecs: None })
    }

    /// The store's embedder.
    pub(crate) fn embedder(&self) -> &dyn Embed {
        self.embedder
    }

    /// Adds a plain memory: with `dedup` set, a near-duplicate (cosine ≥ `dedup`) among the
    /// plain memories is updated instead. Memories mirrored from feedback are never merged
    /// this way (their own rule is in `MemoryStore::add_feedback_mirrored`), in either
    /// direction: a plain add must not rewrite a correction, nor tie a user's own memory to a
    /// feedback event whose forgetting would delete it.
    pub(crate) fn add(&mut self, m: &Prepared, dedup: Option<f32>) -> Result<AddOutcome> {
        let dup = match dedup {
            Some(t) => {
                if self.mirrored_vecs.is_none() {
                    self.mirrored_vecs = Some(mirrored_vec_ids(&self.tx)?);
                }
                let skip = self.mirrored_vecs.as_ref().expect("loaded above");
                nearest(&self.tx, self.index, &self.changes, skip, &m.vector)?.filter(|(_, s)| *s >= t)
            }
            None => None,
        };
        let Some((id, sim)) = dup else {
            let id = self.insert(m)?;
            return Ok(AddOutcome { id, action: AddAction::Inserted, similarity: None });
        };
        let old_text: String = self.tx.query_row("SELECT text FROM memories WHERE id = ?1", [id], |r| r.get(0))?;
        if old_text == m.text {
            self.tx.execute("UPDATE memories SET updated_at = ?2 WHERE id = ?1", params![id, self.now])?;
            if let Some(i) = m.importance {
                self.tx.execute("UPDATE memories SET importance = ?2 WHERE id = ?1", params![id, i])?;
            }
            Ok(AddOutcome { id, action: AddAction::Unchanged, similarity: Some(sim) })
        } else {
            self.update(id, Some((&m.text, m.vector.clone())), m.metadata.clone(), m.importance)?;
            Ok(AddOutcome { id, action: AddAction::Updated, similarity: Some(sim) })
        }
    }

    /// Inserts a new memory row; returns its id.
    pub(crate) fn insert(&mut self, m: &Prepared) -> Result<MemoryId> {
        let vec_id = alloc_vec_id(&self.tx)?;
        let created = m.created_at.unwrap_or(self.now);
        self.tx.execute(
            "INSERT INTO memories (text, metadata, created_at, updated_at, importance,
                                   embedding, embedding_model, embedding_dim, vec_id)
             VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                m.text,
                m.metadata.as_deref().unwrap_or("{}"),
                created,
                m.importance.unwrap_or(0.5),
                to_blob(&m.vector),
                self.embedder.model_id(),
                m.vector.len() as i64,
                vec_id as i64
            ],
        )?;
        self.changes.inserts.push((vec_id, m.vector.clone()));
        Ok(self.tx.last_insert_rowid())
    }

    /// Updates a memory (which must exist), moving its old text and metadata to history.
    pub(crate) fn update(
        &mut self,
        id: MemoryId,
        text: Option<(&str, Vec<f32>)>,
        metadata: Option<String>,
        importance: Option<f32>,
    ) -> Result<()> {
        update_row(&self.tx, self.embedder, &mut self.changes, id, text, metadata, importance, self.now)
    }

    /// Deletes memories with their history, full-text entries (triggers) and feedback links
    /// (cascade); their graph nodes go at apply. Unknown ids are skipped. Returns how many.
    pub(crate) fn delete(&mut self, ids: &[MemoryId]) -> Result<usize> {
        let mut n = 0;
        {
            let mut sel = self.tx.prepare_cached("SELECT vec_id FROM memories WHERE id = ?1")?;
            let mut del = self.tx.prepare_cached("DELETE FROM memories WHERE id = ?1")?;
            for &id in ids {
                let vec_id: Option<Option<i64>> = sel.query_row([id], |r| r.get(0)).optional()?;
                if let Some(v) = vec_id {
                    del.execute([id])?;
                    n += 1;
                    if let Some(v) = v {
                        let v = v as usize;
                        // A node inserted earlier in this transaction never reaches the graph.
                        match self.changes.inserts.iter().position(|(i, _)| *i == v) {
                            Some(pos) => {
                                self.changes.inserts.remove(pos);
                            }
                            None => self.changes.removes.push(v),
                        }
                    }
                }
            }
        }
        if n > 0 {
            self.deleted = true;
            self.mirrored_vecs = None;
        }
        Ok(n)
    }

    /// Commits (moving the index generation when embeddings changed); the returned changes
    /// are for [`MemoryStore::apply`].
    pub(crate) fn commit(mut self) -> Result<Changes> {
        if self.deleted || self.changes.touches_vectors() {
            bump_generation(&self.tx, &mut self.changes)?;
        }
        self.tx.commit()?;
        Ok(self.changes)
    }
}

/// Graph nodes of the memories linked to feedback events.
fn mirrored_vec_ids(tx: &Transaction<'_>) -> Result<HashSet<usize>> {
    let mut stmt = tx.prepare_cached(
        "SELECT vec_id FROM memories WHERE vec_id IS NOT NULL AND id IN (SELECT memory_id FROM memory_feedback)",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
    Ok(rows.map(|r| r.map(|v| v as usize)).collect::<rusqlite::Result<_>>()?)
}

/// The most similar live memory to `v` among the committed graph and this transaction's
/// pending inserts, leaving out the nodes in `skip`.
fn nearest(
    tx: &Transaction<'_>,
    index: &VectorIndex,
    changes: &Changes,
    skip: &HashSet<usize>,
    v: &[f32],
) -> Result<Option<(MemoryId, f32)>> {
    let removed: HashSet<usize> = changes.removes.iter().copied().collect();
    let allow = |id: usize| !removed.contains(&id) && !skip.contains(&id);
    let mut best: Option<(usize, f32)> = index.search(v, 1, Some(&allow)).into_iter().next();
    for (id, pv) in changes.inserts.iter().filter(|(id, _)| !skip.contains(id)) {
        let s = dot(v, pv);
        if best.is_none_or(|b| s > b.1) {
            best = Some((*id, s));
        }
    }
    let Some((vec_id, sim)) = best else { return Ok(None) };
    let id: Option<MemoryId> =
        tx.query_row("SELECT id FROM memories WHERE vec_id = ?1", [vec_id as i64], |r| r.get(0)).optional()?;
    Ok(id.map(|id| (id, sim)))
}

/// Updates a row inside a transaction, moving the old text/metadata to history.
#[allow(clippy::too_many_arguments)]
fn update_row(
    tx: &Transaction<'_>,
    embedder: &dyn Embed,
    changes: &mut Changes,
    id: MemoryId,
    text: Option<(&str, Vec<f32>)>,
    metadata: Option<String>,
    importance: Option<f32>,
    now: i64,
) -> Result<()> {
    let (old_text, old_meta, old_vec): (String, String, Option<i64>) = tx.query_row(
        "SELECT text, metadata, vec_id FROM memories WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let text_changed = text.as_ref().is_some_and(|(t, _)| *t != old_text);
    let meta_changed = metadata.as_ref().is_some_and(|m| {
        serde_json::from_str::<serde_json::Value>(m).ok() != serde_json::from_str::<serde_json::Value>(&old_meta).ok()
    });
    if text_changed || meta_changed {
        tx.execute(
            "INSERT INTO memory_history (memory_id, text, metadata, superseded_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, old_text, old_meta, now],
        )?;
        tx.execute("UPDATE memories SET updated_at = ?2 WHERE id = ?1", params![id, now])?;
    }
    if let (true, Some((t, v))) = (text_changed, text) {
        let vec_id = alloc_vec_id(tx)?;
        tx.execute(
            "UPDATE memories SET text = ?2, embedding = ?3, embedding_model = ?4, embedding_dim = ?5, vec_id = ?6
             WHERE id = ?1",
            params![id, t, to_blob(&v), embedder.model_id(), v.len() as i64, vec_id as i64],
        )?;
        if let Some(old) = old_vec {
            let old = old as usize;
            if let Some(pos) = changes.inserts.iter().position(|(i, _)| *i == old) {
                changes.inserts.remove(pos);
            } else {
                changes.removes.push(old);
            }
        }
        changes.inserts.push((vec_id, v));
    }
    if let (true, Some(m)) = (meta_changed, metadata) {
        tx.execute("UPDATE memories SET metadata = ?2 WHERE id = ?1", params![id, m])?;
    }
    if let Some(i) = importance {
        tx.execute("UPDATE memories SET importance = ?2 WHERE id = ?1", params![id, i])?;
    }
    Ok(())
}

pub(crate) const MEMORY_COLUMNS: &str =
    "id, text, metadata, created_at, updated_at, access_count, last_accessed_at, importance";

pub(crate) fn memory_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Memory> {
    Ok(Memory {
        id: r.get(0)?,
        text: r.get(1)?,
        metadata: json_col(r, 2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
        access_count: r.get(5)?,
        last_accessed_at: r.get(6)?,
        importance: r.get::<_, f64>(7)? as f32,
    })
}

pub(crate) fn json_col(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<serde_json::Value> {
    let s: String = r.get(i)?;
    serde_json::from_str(&s).map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
}

pub(crate) fn meta(conn: &Connection, key: &str) -> Result<String> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::Corrupt { reason: format!("meta key `{key}` missing") })
}

pub(crate) fn meta_i64(conn: &Connection, key: &str) -> Result<i64> {
    meta(conn, key)?.parse().map_err(|_| Error::Corrupt { reason: format!("meta key `{key}` is not a number") })
}

fn alloc_vec_id(tx: &Transaction<'_>) -> Result<usize> {
    let id: i64 = tx.query_row(
        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'next_vec_id' RETURNING CAST(value AS INTEGER) - 1",
        [],
        |r| r.get(0),
    )?;
    Ok(id as usize)
}

fn bump_generation(tx: &Transaction<'_>, changes: &mut Changes) -> Result<()> {
    let after: i64 = tx.query_row(
        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'index_generation' RETURNING CAST(value AS INTEGER)",
        [],
        |r| r.get(0),
    )?;
    changes.generation = Some((after - 1, after));
    Ok(())
}

pub(crate) fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
