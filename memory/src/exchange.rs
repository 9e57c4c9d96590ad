//! Export and import: the user's own copy of their profile as versioned JSON.
//!
//! Embeddings are not exported (they belong to a model, not to the user); import embeds again.

use std::collections::HashMap;

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::records::feedback_params;
use crate::store::{MemoryStore, Write};
use crate::types::{now_millis, AdapterRecord, Feedback, HistoryEntry, Memory, Millis, NewMemory};

/// `format` of an export file.
pub const EXPORT_FORMAT: &str = "tailor-memory-export";
/// The export version this build writes (and the newest it reads).
pub const EXPORT_VERSION: u32 = 1;

/// A whole profile as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Export {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// [`EXPORT_VERSION`] when written by this build.
    pub version: u32,
    /// When it was written.
    pub exported_at: Millis,
    /// Every memory with its history.
    pub memories: Vec<ExportedMemory>,
    /// Every feedback event.
    #[serde(default)]
    pub feedback: Vec<Feedback>,
    /// The adapter lineage.
    #[serde(default)]
    pub adapters: Vec<AdapterRecord>,
}

/// A memory and its superseded versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedMemory {
    /// The memory.
    #[serde(flatten)]
    pub memory: Memory,
    /// Its history, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// The feedback events (ids in this export's `feedback`) it was mirrored from; empty for
    /// a memory of the user's own. Import links the copy to the imported events, so that
    /// forgetting one forgets the copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feedback_ids: Vec<i64>,
}

/// What an import added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Memories added (new ids).
    pub memories: usize,
    /// Feedback events added.
    pub feedback: usize,
    /// Adapter versions added (versions already present are skipped).
    pub adapters: usize,
}

impl MemoryStore {
    /// The whole profile (memories with history, feedback, adapter lineage).
    pub fn export(&self) -> Result<Export> {
        let mut memories = Vec::new();
        let mut after = None;
        loop {
            let page = self.list(after, 1000)?;
            for m in page.memories {
                let history = self.history(m.id)?;
                let feedback_ids = self.memory_feedback_ids(m.id)?;
                memories.push(ExportedMemory { memory: m, history, feedback_ids });
            }
            match page.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        let feedback = self.list_feedback(&crate::types::FeedbackQuery { limit: usize::MAX, ..Default::default() })?;
        Ok(Export {
            format: EXPORT_FORMAT.into(),
            version: EXPORT_VERSION,
            exported_at: now_millis(),
            memories,
            feedback,
            adapters: self.list_adapters()?,
        })
    }

    /// [`MemoryStore::export`] as pretty JSON.
    pub fn export_json(&self) -> Result<String> {
        serde_json::to_string_pretty(&self.export()?).map_err(|e| Error::invalid(format!("export: {e}")))
    }

    /// Adds an export's contents to this profile (all or nothing: one transaction). Memories
    /// get new ids, keep their timestamps, importance, history and links to the imported
    /// feedback events, and are embedded with this store's embedder; they are not merged with
    /// near-duplicates. Feedback events get new ids too (a mirrored memory's
    /// `metadata.feedback_id` follows).
    pub fn import(&mut self, export: &Export) -> Result<ImportReport> {
        if export.format != EXPORT_FORMAT {
            return Err(Error::InvalidExport { reason: format!("format is `{}`, not `{EXPORT_FORMAT}`", export.format) });
        }
        if export.version == 0 || export.version > EXPORT_VERSION {
            return Err(Error::InvalidExport {
                reason: format!("version {} (this build reads 1..={EXPORT_VERSION})", export.version),
            });
        }
        let news: Vec<NewMemory> = export
            .memories
            .iter()
            .map(|m| {
                NewMemory::new(m.memory.text.clone())
                    .metadata(m.memory.metadata.clone())
                    .importance(m.memory.importance)
                    .created_at(m.memory.created_at)
            })
            .collect();
        let prepared = self.prepare(news)?;
        let mut w = Write::begin(&mut self.conn, &*self.embedder, &self.index)?;
        let mut feedback_ids = HashMap::new();
        for f in &export.feedback {
            let (kind, corrected, chosen, rejected) = feedback_params(&f.kind);
            w.tx.execute(
                "INSERT INTO feedback (turn_id, prompt, answer, kind, corrected, chosen, rejected, created_at,
                                       consumed_by, consumed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![f.turn_id, f.prompt, f.answer, kind, corrected, chosen, rejected, f.created_at, f.consumed_by, f.consumed_at],
            )?;
            feedback_ids.insert(f.id, w.tx.last_insert_rowid());
        }
        for (m, new) in export.memories.iter().zip(&prepared) {
            let id = w.insert(new)?;
            // Timestamps, access counts, history and feedback links of the new row.
            w.tx.execute(
                "UPDATE memories SET updated_at = ?2, access_count = ?3, last_accessed_at = ?4 WHERE id = ?1",
                params![id, m.memory.updated_at, m.memory.access_count, m.memory.last_accessed_at],
            )?;
            for h in &m.history {
                w.tx.execute(
                    "INSERT INTO memory_history (memory_id, text, metadata, superseded_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, h.text, h.metadata.to_string(), h.superseded_at],
                )?;
            }
            for old in &m.feedback_ids {
                if let Some(new) = feedback_ids.get(old) {
                    w.tx.execute("INSERT OR IGNORE INTO memory_feedback (memory_id, feedback_id) VALUES (?1, ?2)", params![id, new])?;
                }
            }
            let old = m.memory.metadata.get("feedback_id").and_then(|v| v.as_i64());
            if let Some(new) = old.filter(|o| m.feedback_ids.contains(o)).and_then(|o| feedback_ids.get(&o)) {
                w.tx.execute("UPDATE memories SET metadata = json_set(metadata, '$.feedback_id', ?2) WHERE id = ?1", params![id, new])?;
            }
        }
        let mut adapters = 0;
        for a in &export.adapters {
            adapters += w.tx.execute(
                "INSERT OR IGNORE INTO adapters (version, parent, created_at, metrics) VALUES (?1, ?2, ?3, ?4)",
                params![a.version, a.parent, a.created_at, a.metrics.to_string()],
            )?;
        }
        let changes = w.commit()?;
        self.apply(changes)?;
        Ok(ImportReport { memories: prepared.len(), feedback: export.feedback.len(), adapters })
    }

    /// [`MemoryStore::import`] from JSON text.
    pub fn import_json(&mut self, json: &str) -> Result<ImportReport> {
        let export: Export = serde_json::from_str(json).map_err(|e| Error::InvalidExport { reason: e.to_string() })?;
        self.import(&export)
    }
}
