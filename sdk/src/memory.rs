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
    /// Run the memory-reading adapter ([`crate::memory_reader`]) on top of the session's
    /// adapters for generations with memories in the prompt, when the engine has one.
    pub reader: bool,
    /// Conversation memory: [`Session::chat`](crate::Session::chat) stores each finished
    /// turn's user message in the profile as an episodic memory (metadata
    /// `{"kind": "conversation", ...}` with the answer and the time), so that what was said
    /// long ago, after it has slid out of the context window, is still retrieved when
    /// relevant. Off by default; `tailor chat --profile` turns it on.
    pub record_turns: bool,
}

impl Default for MemoryPromptConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            limit: 3,
            token_budget: 256,
            min_similarity: Some(0.2),
            header: "Facts the user told you earlier (use them when relevant):".into(),
            reader: true,
            record_turns: false,
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

fn memory_line(text: &str) -> String {
    format!("\n- {}", text.trim())
}

/// The block of memories as it goes into the system prompt: `header`, then one `- text` line
/// per memory. Training data that shows memories to the model renders them with this, so that
/// it sees what inference shows.
pub fn memory_block(header: &str, texts: &[&str]) -> String {
    let mut block = header.to_string();
    for t in texts {
        block.push_str(&memory_line(t));
    }
    block
}

/// The memories relevant to the last user message of `messages` (leaving out the ids in
/// `exclude`, e.g. turns still in the context window) and the [`memory_block`] that puts them
/// in the system prompt (`None` when none was retrieved). The block takes at most
/// `cfg.token_budget` tokens and at most a quarter of the `context` window.
pub(crate) fn recall(
    messages: &[ChatMessage],
    store: &SharedMemory,
    cfg: &MemoryPromptConfig,
    tokenizer: &Tokenizer,
    exclude: &[i64],
    context: usize,
) -> Result<(Option<String>, Vec<RecalledMemory>)> {
    let budget = cfg.token_budget.min(context / 4);
    let Some(query) = messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()) else {
        return Ok((None, Vec::new()));
    };
    if !cfg.enabled || cfg.limit == 0 || query.trim().is_empty() {
        return Ok((None, Vec::new()));
    }
    let mut q = SearchQuery::new(query, cfg.limit + exclude.len().min(16));
    q.min_similarity = cfg.min_similarity;
    let hits = store.lock().unwrap_or_else(|e| e.into_inner()).search(&q)?;
    let mut used = Vec::new();
    let mut spent = 0;
    for h in hits.into_iter().filter(|h| !exclude.contains(&h.memory.id)) {
        if used.len() == cfg.limit {
            break;
        }
        let cost = tokenizer.encode(&memory_line(&h.memory.text), false)?.len();
        if spent + cost > budget {
            continue;
        }
        spent += cost;
        used.push(RecalledMemory { id: h.memory.id, text: h.memory.text, score: h.score });
    }
    if used.is_empty() {
        return Ok((None, used));
    }
    let texts: Vec<&str> = used.iter().map(|m| m.text.as_str()).collect();
    Ok((Some(memory_block(&cfg.header, &texts)), used))
}

/// Whether a user message is worth keeping as a conversation memory: not a question or a
/// command to the assistant, and long enough to state something.
pub(crate) fn worth_recording(user: &str) -> bool {
    let t = user.trim();
    t.split_whitespace().count() >= 3 && !t.ends_with('?') && !t.starts_with('/')
}

/// Stores a finished turn as a conversation memory; returns its id.
pub(crate) fn record_turn(store: &SharedMemory, user: &str, answer: &str) -> Result<i64> {
    let memory = tailor_memory::NewMemory::new(user.trim()).metadata(serde_json::json!({
        "kind": "conversation",
        "answer": answer,
    }));
    Ok(store.lock().unwrap_or_else(|e| e.into_inner()).add(memory)?.id)
}

/// `messages` with a [`memory_block`] appended to the first system message (or made the system
/// message when there is none), as every chat generation with memories is prompted.
pub fn with_memories(messages: &[ChatMessage], block: &str) -> Vec<ChatMessage> {
    let mut out = messages.to_vec();
    match out.first_mut() {
        Some(m) if m.role == "system" => {
            m.content = format!("{}\n\n{block}", m.content);
        }
        _ => out.insert(0, ChatMessage::system(block)),
    }
    out
}
