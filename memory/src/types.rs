//! The plain data the store takes and returns. Every result type is `serde`-able so the C ABI,
//! the CLI and the HTTP server can hand it out as JSON unchanged.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A memory's id: the SQLite rowid. Ids are never reused, also after a memory is forgotten.
pub type MemoryId = i64;

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// The current time in [`Millis`].
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One stored memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Its id.
    pub id: MemoryId,
    /// What the user told.
    pub text: String,
    /// Free-form JSON object given by the app (source, tags, ...). `{}` when none.
    pub metadata: serde_json::Value,
    /// When it was first stored.
    pub created_at: Millis,
    /// When its text or metadata last changed.
    pub updated_at: Millis,
    /// How many times search returned it.
    pub access_count: i64,
    /// When search last returned it.
    pub last_accessed_at: Option<Millis>,
    /// Importance in `[0, 1]` (default 0.5), used by importance weighting in search.
    pub importance: f32,
}

/// A memory to add (or the new contents for an update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NewMemory {
    /// The text. Must not be empty and must fit [`crate::MemoryConfig::max_text_bytes`].
    pub text: String,
    /// A JSON object, or `null` for none.
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// Importance in `[0, 1]`; `None` keeps the default (0.5) or, on update, the old value.
    #[serde(default)]
    pub importance: Option<f32>,
    /// Creation time; `None` is now. (Imports and tests set it.)
    #[serde(default)]
    pub created_at: Option<Millis>,
}

impl NewMemory {
    /// A memory with this text and no metadata.
    pub fn new(text: impl Into<String>) -> Self {
        NewMemory { text: text.into(), metadata: serde_json::Value::Null, importance: None, created_at: None }
    }

    /// Sets the metadata (a JSON object).
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the metadata from JSON text, as the C ABI and the CLI receive it.
    pub fn metadata_json(mut self, json: &str) -> Result<Self> {
        self.metadata = serde_json::from_str(json)
            .map_err(|e| Error::InvalidMetadata { reason: format!("not valid JSON: {e}") })?;
        Ok(self)
    }

    /// Sets the importance, clamped to `[0, 1]` on write.
    pub fn importance(mut self, importance: f32) -> Self {
        self.importance = Some(importance);
        self
    }

    /// Sets the creation time.
    pub fn created_at(mut self, at: Millis) -> Self {
        self.created_at = Some(at);
        self
    }
}

/// What [`crate::MemoryStore::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddAction {
    /// A new memory was stored.
    Inserted,
    /// A near-duplicate existed; it was updated instead (its old text went to history).
    Updated,
    /// The very same text existed; nothing but its timestamp changed.
    Unchanged,
}

/// The outcome of an add.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AddOutcome {
    /// The memory now holding the text.
    pub id: MemoryId,
    /// Whether it was inserted or merged into a near-duplicate.
    pub action: AddAction,
    /// Cosine similarity to the near-duplicate, when merged.
    pub similarity: Option<f32>,
}

/// One superseded version of a memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The text before the change.
    pub text: String,
    /// The metadata before the change.
    pub metadata: serde_json::Value,
    /// When it was replaced.
    pub superseded_at: Millis,
}

/// A metadata condition. Keys are top-level keys of the metadata object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
#[non_exhaustive]
pub enum Filter {
    /// `metadata[key] == value` (string, number, bool; `null` matches a missing key too).
    Eq {
        /// The key.
        key: String,
        /// The value.
        value: serde_json::Value,
    },
    /// The key is present (with any non-null value).
    Exists {
        /// The key.
        key: String,
    },
    /// Every condition holds.
    And {
        /// The conditions.
        all: Vec<Filter>,
    },
    /// At least one condition holds.
    Or {
        /// The conditions.
        any: Vec<Filter>,
    },
}

impl Filter {
    /// `metadata[key] == value`.
    pub fn eq(key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        Filter::Eq { key: key.into(), value: value.into() }
    }
}

/// Which retrievers a search uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SearchMode {
    /// Vector (embedding) and full-text (BM25) fused by reciprocal rank.
    #[default]
    Hybrid,
    /// Vector search only: results in cosine order.
    Vector,
    /// Full-text (FTS5 BM25) only.
    Lexical,
}

/// A search request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SearchQuery {
    /// The query text.
    pub text: String,
    /// At most this many results.
    pub limit: usize,
    /// Which retrievers.
    pub mode: SearchMode,
    /// Metadata condition the results must meet.
    pub filter: Option<Filter>,
    /// Drop results whose cosine similarity to the query is below this.
    pub min_similarity: Option<f32>,
    /// Weight of recency: the fused score is multiplied by `1 + w · 2^(-age / half_life)`.
    pub recency_weight: f32,
    /// Half-life for recency weighting, in days.
    pub recency_half_life_days: f32,
    /// Weight of importance: the fused score is multiplied by `1 + w · importance`.
    pub importance_weight: f32,
    /// Count the results as accessed (access count, last access). Default true.
    pub track_access: bool,
}

impl Default for SearchQuery {
    fn default() -> Self {
        SearchQuery {
            text: String::new(),
            limit: 5,
            mode: SearchMode::Hybrid,
            filter: None,
            min_similarity: None,
            recency_weight: 0.0,
            recency_half_life_days: 30.0,
            importance_weight: 0.0,
            track_access: true,
        }
    }
}

impl SearchQuery {
    /// A hybrid search for `text` returning up to `limit` results.
    pub fn new(text: impl Into<String>, limit: usize) -> Self {
        SearchQuery { text: text.into(), limit, ..Default::default() }
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: SearchMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the metadata filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Sets the minimum cosine similarity.
    pub fn min_similarity(mut self, min: f32) -> Self {
        self.min_similarity = Some(min);
        self
    }

    /// Sets recency weighting.
    pub fn recency(mut self, weight: f32, half_life_days: f32) -> Self {
        self.recency_weight = weight;
        self.recency_half_life_days = half_life_days;
        self
    }

    /// Sets importance weighting.
    pub fn importance(mut self, weight: f32) -> Self {
        self.importance_weight = weight;
        self
    }

    /// Sets whether results count as accessed.
    pub fn track_access(mut self, on: bool) -> Self {
        self.track_access = on;
        self
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The memory.
    pub memory: Memory,
    /// The ranking score (fused reciprocal rank, times the weights; cosine in vector mode).
    pub score: f32,
    /// Cosine similarity between the query's and the memory's embeddings.
    pub similarity: f32,
    /// Rank in the vector results (0-based), if it was among them.
    pub vector_rank: Option<usize>,
    /// Rank in the full-text results (0-based), if it was among them.
    pub lexical_rank: Option<usize>,
}

/// A page of [`crate::MemoryStore::list`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// Memories in id order.
    pub memories: Vec<Memory>,
    /// Pass as `after` to get the next page; `None` at the end.
    pub next_after: Option<MemoryId>,
}

/// What a feedback event says about an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum FeedbackKind {
    /// The answer was good.
    ThumbsUp,
    /// The answer was bad.
    ThumbsDown,
    /// The user wrote what the answer should have been.
    Correction {
        /// The corrected answer.
        corrected: String,
    },
    /// The user chose between two answers.
    Preference {
        /// The preferred answer.
        chosen: String,
        /// The rejected answer.
        rejected: String,
    },
}

/// A feedback event to record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NewFeedback {
    /// The sdk's turn id, if any.
    #[serde(default)]
    pub turn_id: Option<String>,
    /// The turn's prompt (user text).
    pub prompt: String,
    /// The model's answer.
    pub answer: String,
    /// What the user said about it.
    #[serde(flatten)]
    pub kind: FeedbackKind,
}

impl NewFeedback {
    /// A feedback event on one turn.
    pub fn new(prompt: impl Into<String>, answer: impl Into<String>, kind: FeedbackKind) -> Self {
        NewFeedback { turn_id: None, prompt: prompt.into(), answer: answer.into(), kind }
    }

    /// Sets the turn id.
    pub fn turn_id(mut self, id: impl Into<String>) -> Self {
        self.turn_id = Some(id.into());
        self
    }
}

/// What [`crate::MemoryStore::add_feedback_mirrored`] did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FeedbackAdded {
    /// The new feedback event's id.
    pub id: i64,
    /// The memory the event was mirrored into, for a correction (with
    /// [`crate::MemoryConfig::mirror_corrections`] on): [`AddAction::Inserted`] for a new
    /// question, [`AddAction::Updated`] when an earlier correction of the same question was
    /// overwritten (its `similarity` is then the cosine between the two prompts' embeddings).
    /// `None` for other kinds, or a correction whose corrected text is blank.
    pub memory: Option<AddOutcome>,
}

/// A stored feedback event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// Its id.
    pub id: i64,
    /// The sdk's turn id, if any.
    pub turn_id: Option<String>,
    /// The turn's prompt.
    pub prompt: String,
    /// The model's answer.
    pub answer: String,
    /// What the user said.
    #[serde(flatten)]
    pub kind: FeedbackKind,
    /// When it was recorded.
    pub created_at: Millis,
    /// The adapter version that has trained on it, if any.
    pub consumed_by: Option<String>,
    /// When it was consumed.
    pub consumed_at: Option<Millis>,
}

/// Which feedback events to list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct FeedbackQuery {
    /// Only events no adapter has consumed yet.
    pub unconsumed_only: bool,
    /// Only events with an id above this (paging).
    pub after: Option<i64>,
    /// At most this many.
    pub limit: usize,
}

impl Default for FeedbackQuery {
    fn default() -> Self {
        FeedbackQuery { unconsumed_only: false, after: None, limit: 1000 }
    }
}

impl FeedbackQuery {
    /// Events not yet consumed by any adapter, up to `limit`.
    pub fn unconsumed(limit: usize) -> Self {
        FeedbackQuery { unconsumed_only: true, after: None, limit }
    }
}

/// One adapter version in the lineage (written by the trainer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRecord {
    /// The adapter version (unique).
    pub version: String,
    /// The version it was trained from, if any (must be recorded already).
    pub parent: Option<String>,
    /// When it was recorded.
    pub created_at: Millis,
    /// Evaluation metrics and training facts (a JSON object).
    pub metrics: serde_json::Value,
    /// When feedback this version learned from was forgotten: the version must not be used
    /// any more (its weights hold what the user asked to forget). `None` while clean.
    #[serde(default)]
    pub tainted_at: Option<Millis>,
}

/// Changes to a memory; `None` fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MemoryUpdate {
    /// New text (re-embedded; the old text goes to history).
    pub text: Option<String>,
    /// New metadata object (replaces the old one, which goes to history).
    pub metadata: Option<serde_json::Value>,
    /// New importance.
    pub importance: Option<f32>,
}

impl MemoryUpdate {
    /// Replaces the text.
    pub fn text(text: impl Into<String>) -> Self {
        MemoryUpdate { text: Some(text.into()), ..Default::default() }
    }

    /// Also replaces the metadata.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Also sets the importance.
    pub fn with_importance(mut self, importance: f32) -> Self {
        self.importance = Some(importance);
        self
    }
}
