//! Long-term memory in the prompt: before each chat turn, the memories most relevant to the
//! user's message are retrieved from the profile store (`tailor-memory`) and placed in the
//! system prompt, within a token budget. The ids used come back with the answer
//! ([`crate::Generation::memories`]) so an app can show why the model knew.
//!
//! The block is appended to the conversation's first system message (or becomes one), so a
//! follow-up turn whose retrieved set is unchanged still reuses the whole cached prefix; a
//! changed set re-runs the prompt from the system message on.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tailor_memory::{MemoryStore, SearchQuery};

use crate::text::chat_template::ChatMessage;
use crate::text::tokenizer::Tokenizer;
use crate::Result;

/// A profile store shared between the app (which adds and forgets memories) and sessions.
pub type SharedMemory = Arc<Mutex<MemoryStore>>;

/// How memories are put into prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MemoryPromptConfig {
    /// The off switch: `false` retrieves nothing.
    pub enabled: bool,
    /// At most this many memories per turn.
    pub limit: usize,
    /// At most this many tokens of memory text (whole memories; the best-ranked first).
    pub token_budget: usize,
    /// Leave out memories whose cosine similarity to the user's message is below this.
    pub min_similarity: Option<f32>,
    /// The line that introduces the memories.
    pub header: String,
}

impl Default for MemoryPromptConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            limit: 3,
            token_budget: 256,
            min_similarity: Some(0.2),
            header: "Facts the user told you earlier (use them when relevant):".into(),
        }
    }
}

/// A memory placed in a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecalledMemory {
    /// Its id in the profile store.
    pub id: i64,
    /// Its text.
    pub text: String,
    /// Its retrieval score.
    pub score: f32,
}

/// `messages` with the memories relevant to the last user message added to the system
/// prompt, and the memories used.
pub(crate) fn augment(
    messages: &[ChatMessage],
    store: &SharedMemory,
    cfg: &MemoryPromptConfig,
    tokenizer: &Tokenizer,
) -> Result<(Vec<ChatMessage>, Vec<RecalledMemory>)> {
    let Some(query) = messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()) else {
        return Ok((messages.to_vec(), Vec::new()));
    };
    if !cfg.enabled || cfg.limit == 0 || query.trim().is_empty() {
        return Ok((messages.to_vec(), Vec::new()));
    }
    let mut q = SearchQuery::new(query, cfg.limit);
    q.min_similarity = cfg.min_similarity;
    let hits = store.lock().unwrap_or_else(|e| e.into_inner()).search(&q)?;
    let mut used = Vec::new();
    let mut block = cfg.header.clone();
    let mut spent = 0;
    for h in hits {
        let line = format!("\n- {}", h.memory.text.trim());
        let cost = tokenizer.encode(&line, false)?.len();
        if spent + cost > cfg.token_budget {
            continue;
        }
        spent += cost;
        block.push_str(&line);
        used.push(RecalledMemory { id: h.memory.id, text: h.memory.text, score: h.score });
    }
    if used.is_empty() {
        return Ok((messages.to_vec(), used));
    }
    let mut out = messages.to_vec();
    match out.first_mut() {
        Some(m) if m.role == "system" => {
            m.content = format!("{}\n\n{block}", m.content);
        }
        _ => out.insert(0, ChatMessage::system(block)),
    }
    Ok((out, used))
}
