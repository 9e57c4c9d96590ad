//! Feedback events and adapter lineage: what the trainer reads and writes.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use crate::error::{Error, Result};
use crate::store::{json_col, MemoryStore, Write};
use crate::types::{
    now_millis, AdapterRecord, Feedback, FeedbackAdded, FeedbackKind, FeedbackQuery, MemoryId, NewFeedback,
};

const FEEDBACK_COLUMNS: &str =
    "id, turn_id, prompt, answer, kind, corrected, chosen, rejected, created_at, consumed_by, consumed_at";

fn feedback_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Feedback> {
    let kind: String = r.get(4)?;
    let kind = match kind.as_str() {
        "thumbs_up" => FeedbackKind::ThumbsUp,
        "thumbs_down" => FeedbackKind::ThumbsDown,
        "correction" => FeedbackKind::Correction { corrected: r.get(5)? },
        _ => FeedbackKind::Preference { chosen: r.get(6)?, rejected: r.get(7)? },
    };
    Ok(Feedback {
        id: r.get(0)?,
        turn_id: r.get(1)?,
        prompt: r.get(2)?,
        answer: r.get(3)?,
        kind,
        created_at: r.get(8)?,
        consumed_by: r.get(9)?,
        consumed_at: r.get(10)?,
    })
}

fn adapter_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AdapterRecord> {
    Ok(AdapterRecord { version: r.get(0)?, parent: r.get(1)?, created_at: r.get(2)?, metrics: json_col(r, 3)?, tainted_at: r.get(4)? })
}

/// The `kind` column and the optional text columns of a feedback kind.
pub(crate) fn feedback_params(kind: &FeedbackKind) -> (&'static str, Option<&String>, Option<&String>, Option<&String>) {
    match kind {
        FeedbackKind::ThumbsUp => ("thumbs_up", None, None, None),
        FeedbackKind::ThumbsDown => ("thumbs_down", None, None, None),
        FeedbackKind::Correction { corrected } => ("correction", Some(corrected), None, None),
        FeedbackKind::Preference { chosen, rejected } => ("preference", None, Some(chosen), Some(rejected)),
    }
}

impl MemoryStore {
    /// Records a feedback event; returns its id. A correction is also mirrored into a memory
    /// (see [`add_feedback_mirrored`](Self::add_feedback_mirrored)).
    pub fn add_feedback(&mut self, feedback: NewFeedback) -> Result<i64> {
        Ok(self.add_feedback_mirrored(feedback)?.id)
    }

    /// Records a feedback event and, for a [`FeedbackKind::Correction`] (with
    /// [`MemoryConfig::mirror_corrections`](crate::MemoryConfig::mirror_corrections), the
    /// default), a memory of it, in one transaction: both or neither (a memory that cannot be
    /// stored, e.g. longer than [`MemoryConfig::max_text_bytes`](crate::MemoryConfig::max_text_bytes),
    /// fails the whole call).
    ///
    /// The memory's text is `Q: {prompt} A: {corrected}` (both trimmed), its metadata
    /// `{"source": "correction", "feedback_id": <id>, "prompt": <prompt>}`. If an earlier
    /// mirrored correction asked the same question (its prompt equal after lowercasing,
    /// collapsing whitespace and dropping trailing punctuation, or the two prompts' embeddings
    /// with cosine ≥ 0.9), that memory is updated instead (the newest correction wins, the
    /// older text stays in its [`history`](Self::history)) and linked to this event too. The
    /// generic near-duplicate merge ([`MemoryConfig::dedup_threshold`](crate::MemoryConfig::dedup_threshold))
    /// does not apply to mirrored memories, so corrections of different questions stay apart.
    ///
    /// [`forget_feedback`](Self::forget_feedback) of any event a memory is linked to forgets
    /// the memory; [`forget`](Self::forget) of the memory keeps the events.
    pub fn add_feedback_mirrored(&mut self, feedback: NewFeedback) -> Result<FeedbackAdded> {
        let max = self.config.max_text_bytes * 4;
        let (kind, corrected, chosen, rejected) = feedback_params(&feedback.kind);
        let texts = [Some(&feedback.prompt), Some(&feedback.answer), corrected, chosen, rejected];
        let texts: Vec<&String> = texts.into_iter().flatten().collect();
        if feedback.prompt.trim().is_empty() {
            return Err(Error::EmptyText);
        }
        if let Some(t) = texts.iter().find(|t| t.len() > max) {
            return Err(Error::TextTooLong { len: t.len(), max });
        }
        let mirror = match (&feedback.kind, self.config.mirror_corrections) {
            (FeedbackKind::Correction { corrected }, true) => self.prepare_mirror(&feedback.prompt, corrected)?,
            _ => None,
        };
        let mut w = Write::begin(&mut self.conn, &*self.embedder, &self.index)?;
        w.tx.execute(
            "INSERT INTO feedback (turn_id, prompt, answer, kind, corrected, chosen, rejected, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![feedback.turn_id, feedback.prompt, feedback.answer, kind, corrected, chosen, rejected, w.now],
        )?;
        let id = w.tx.last_insert_rowid();
        let memory = match &mirror {
            Some(m) => Some(w.mirror(m, id, &self.prompt_vectors)?),
            None => None,
        };
        let changes = w.commit()?;
        self.apply(changes)?;
        if let Some(m) = mirror {
            self.mirrored(m);
        }
        Ok(FeedbackAdded { id, memory })
    }

    /// The memories mirrored from a feedback event (see
    /// [`add_feedback_mirrored`](Self::add_feedback_mirrored)), in id order; empty for an
    /// event that was not mirrored or is unknown.
    pub fn feedback_memories(&self, feedback_id: i64) -> Result<Vec<MemoryId>> {
        let mut stmt =
            self.conn.prepare_cached("SELECT memory_id FROM memory_feedback WHERE feedback_id = ?1 ORDER BY memory_id")?;
        let rows = stmt.query_map([feedback_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One feedback event.
    pub fn get_feedback(&self, id: i64) -> Result<Feedback> {
        self.conn
            .query_row(&format!("SELECT {FEEDBACK_COLUMNS} FROM feedback WHERE id = ?1"), [id], feedback_from_row)
            .optional()?
            .ok_or(Error::FeedbackNotFound { id })
    }

    /// Feedback events in id order.
    pub fn list_feedback(&self, query: &FeedbackQuery) -> Result<Vec<Feedback>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {FEEDBACK_COLUMNS} FROM feedback
             WHERE id > ?1 AND (?2 = 0 OR consumed_by IS NULL) ORDER BY id LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![query.after.unwrap_or(0), query.unconsumed_only as i64, query.limit.min(1_000_000) as i64],
            feedback_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Marks feedback events as consumed by an adapter version (all or none: an unknown id
    /// gives [`Error::FeedbackNotFound`] and nothing changes), and, when that version is
    /// recorded, links them to it (see [`forget_feedback`](Self::forget_feedback)); record the
    /// version first. Returns how many changed.
    pub fn mark_feedback_consumed(&mut self, ids: &[i64], adapter_version: &str) -> Result<usize> {
        if adapter_version.is_empty() {
            return Err(Error::invalid("adapter version is empty"));
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_millis();
        {
            let mut up = tx.prepare_cached("UPDATE feedback SET consumed_by = ?2, consumed_at = ?3 WHERE id = ?1")?;
            let mut link = tx.prepare_cached(
                "INSERT OR IGNORE INTO adapter_feedback (version, feedback_id)
                 SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM adapters WHERE version = ?1)",
            )?;
            for &id in ids {
                if up.execute(params![id, adapter_version, now])? == 0 {
                    return Err(Error::FeedbackNotFound { id });
                }
                link.execute(params![adapter_version, id])?;
            }
        }
        tx.commit()?;
        Ok(ids.len())
    }

    /// The feedback events a memory was mirrored from, in id order (empty for a memory of the
    /// user's own).
    pub(crate) fn memory_feedback_ids(&self, memory_id: MemoryId) -> Result<Vec<i64>> {
        let mut stmt =
            self.conn.prepare_cached("SELECT feedback_id FROM memory_feedback WHERE memory_id = ?1 ORDER BY feedback_id")?;
        let rows = stmt.query_map([memory_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a trained adapter version in the lineage. `parent` must be recorded already.
    pub fn record_adapter(&mut self, version: &str, parent: Option<&str>, metrics: serde_json::Value) -> Result<AdapterRecord> {
        if version.is_empty() {
            return Err(Error::invalid("adapter version is empty"));
        }
        let metrics = match metrics {
            serde_json::Value::Null => serde_json::json!({}),
            m @ serde_json::Value::Object(_) => m,
            _ => return Err(Error::InvalidMetadata { reason: "adapter metrics must be a JSON object".into() }),
        };
        let created_at = now_millis();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = |v: &str| -> rusqlite::Result<bool> {
            tx.query_row("SELECT count(*) FROM adapters WHERE version = ?1", [v], |r| r.get::<_, i64>(0)).map(|n| n > 0)
        };
        if exists(version)? {
            return Err(Error::AdapterExists { version: version.into() });
        }
        if let Some(p) = parent {
            if !exists(p)? {
                return Err(Error::AdapterNotFound { version: p.into() });
            }
        }
        tx.execute(
            "INSERT INTO adapters (version, parent, created_at, metrics) VALUES (?1, ?2, ?3, ?4)",
            params![version, parent, created_at, metrics.to_string()],
        )?;
        tx.commit()?;
        Ok(AdapterRecord { version: version.into(), parent: parent.map(Into::into), created_at, metrics, tainted_at: None })
    }

    /// The adapter lineage, oldest first.
    pub fn list_adapters(&self) -> Result<Vec<AdapterRecord>> {
        let mut stmt = self.conn.prepare_cached("SELECT version, parent, created_at, metrics, tainted_at FROM adapters ORDER BY created_at, rowid")?;
        let rows = stmt.query_map([], adapter_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest adapter version that never learned from forgotten feedback, if any: the one
    /// to run after a forget.
    pub fn newest_clean_adapter(&self) -> Result<Option<AdapterRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT version, parent, created_at, metrics, tainted_at FROM adapters
                 WHERE tainted_at IS NULL ORDER BY created_at DESC, rowid DESC LIMIT 1",
                [],
                adapter_from_row,
            )
            .optional()?)
    }

    /// The feedback events `version` learned from (ids; some may be forgotten since, which
    /// is what makes a version tainted).
    pub fn adapter_feedback(&self, version: &str) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare_cached("SELECT feedback_id FROM adapter_feedback WHERE version = ?1 ORDER BY feedback_id")?;
        let rows = stmt.query_map([version], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets feedback events: their rows (prompt, answer, corrections) are deleted, every
    /// memory mirrored from one of them is forgotten (with its history, full-text entry and
    /// graph node, as by [`forget`](Self::forget)), and every adapter version that learned
    /// from one of them is marked tainted, all in one transaction; the WAL is checkpointed so
    /// the text leaves it too. A memory updated by several corrections goes when any of them
    /// is forgotten (its history holds them all). Unknown ids are skipped. Returns the
    /// versions newly tainted (the app deletes their weight files and falls back to
    /// [`newest_clean_adapter`](Self::newest_clean_adapter); the next training run no longer
    /// sees the events).
    pub fn forget_feedback(&mut self, ids: &[i64]) -> Result<Vec<String>> {
        let mut w = Write::begin(&mut self.conn, &*self.embedder, &self.index)?;
        let now = w.now;
        let mut tainted = Vec::new();
        let mut memories: Vec<MemoryId> = Vec::new();
        {
            let tx = &w.tx;
            let mut del = tx.prepare_cached("DELETE FROM feedback WHERE id = ?1")?;
            let mut who = tx.prepare_cached(
                "SELECT a.version FROM adapter_feedback f JOIN adapters a ON a.version = f.version
                 WHERE f.feedback_id = ?1 AND a.tainted_at IS NULL",
            )?;
            let mut mark = tx.prepare_cached("UPDATE adapters SET tainted_at = ?2 WHERE version = ?1 AND tainted_at IS NULL")?;
            let mut linked = tx.prepare_cached("SELECT memory_id FROM memory_feedback WHERE feedback_id = ?1")?;
            for &id in ids {
                del.execute([id])?;
                let versions: Vec<String> = who.query_map([id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
                for v in versions {
                    if mark.execute(params![v, now])? > 0 {
                        tainted.push(v);
                    }
                }
                for m in linked.query_map([id], |r| r.get(0))? {
                    memories.push(m?);
                }
            }
        }
        memories.sort_unstable();
        memories.dedup();
        w.delete(&memories)?;
        let changes = w.commit()?;
        self.forgotten(changes, true)?;
        Ok(tainted)
    }

    /// Forgets every feedback event and every memory mirrored from one
    /// ([`forget_feedback`](Self::forget_feedback) of all).
    pub fn forget_all_feedback(&mut self) -> Result<Vec<String>> {
        let ids: Vec<i64> = {
            let mut stmt = self.conn.prepare("SELECT id FROM feedback")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        // Versions that learned from events forgotten earlier are tainted already; links to
        // ids no longer present are covered by the same query.
        let linked: Vec<i64> = {
            let mut stmt = self.conn.prepare("SELECT DISTINCT feedback_id FROM adapter_feedback")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        // And memories mirrored from events whose row is gone some other way (none should be).
        let mirrored: Vec<i64> = {
            let mut stmt = self.conn.prepare("SELECT DISTINCT feedback_id FROM memory_feedback")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut all = ids;
        all.extend(linked);
        all.extend(mirrored);
        all.sort_unstable();
        all.dedup();
        self.forget_feedback(&all)
    }
}
