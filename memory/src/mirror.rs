//! Corrections mirrored into memories.
//!
//! A correction recorded as feedback becomes a memory `Q: <prompt> A: <corrected>` in the same
//! transaction as the feedback row, so the very next prompt can retrieve it, long before an
//! adapter has learned it. The memory is linked (`memory_feedback`) to every event it came
//! from; forgetting one of them forgets the memory.
//!
//! A correction of a question corrected before updates the earlier memory (newest answer
//! wins, the old one goes to its history) instead of adding a second, contradicting one. "The
//! same question" is decided on the prompts alone, never on the memory texts: the generic
//! near-duplicate merge would see "Q: What is my cat's name? A: Zorblax" and "Q: What is my
//! dog's name? A: Rex" as close, yet they are different facts.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, Connection};

use crate::embedder::Embed;
use crate::error::{Error, Result};
use crate::index::dot;
use crate::store::{MemoryStore, Prepared, Write};
use crate::types::{AddAction, AddOutcome, MemoryId};

/// Two prompts whose embeddings have at least this cosine ask the same question.
pub(crate) const SAME_QUESTION_SIMILARITY: f32 = 0.9;

/// A correction checked and embedded before its write transaction.
pub(crate) struct Mirror {
    /// The memory text, `Q: <prompt> A: <corrected>` (both trimmed).
    text: String,
    text_vector: Vec<f32>,
    /// The prompt as the user gave it (kept in the metadata).
    prompt: String,
    /// The trimmed prompt: what is embedded and the key of the prompt vector cache.
    key: String,
    prompt_vector: Vec<f32>,
}

/// The memory text of a correction.
pub(crate) fn memory_text(prompt: &str, corrected: &str) -> String {
    format!("Q: {} A: {}", prompt.trim(), corrected.trim())
}

/// The metadata of a mirrored memory.
fn metadata(feedback_id: i64, prompt: &str) -> serde_json::Value {
    serde_json::json!({ "source": "correction", "feedback_id": feedback_id, "prompt": prompt })
}

/// A prompt reduced for comparison: lowercase, runs of whitespace as one space, trailing
/// punctuation (and symbols) and whitespace dropped.
pub(crate) fn normalize_prompt(prompt: &str) -> String {
    let lower = prompt.to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let joined = words.join(" ");
    joined.trim_end_matches(|c: char| c.is_whitespace() || !c.is_alphanumeric()).to_owned()
}

/// An earlier correction that has a mirrored memory.
struct Candidate {
    memory_id: MemoryId,
    feedback_id: i64,
    prompt: String,
}

/// Every (memory, feedback) link with the feedback's prompt: the earlier corrections a new
/// one may repeat. (A memory linked to several events appears once per event: each of their
/// prompts counts.)
fn candidates(conn: &Connection) -> Result<Vec<Candidate>> {
    let mut stmt = conn.prepare_cached(
        "SELECT mf.memory_id, mf.feedback_id, f.prompt
         FROM memory_feedback mf JOIN feedback f ON f.id = mf.feedback_id
         ORDER BY mf.feedback_id",
    )?;
    let rows = stmt.query_map([], |r| Ok(Candidate { memory_id: r.get(0)?, feedback_id: r.get(1)?, prompt: r.get(2)? }))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl MemoryStore {
    /// Checks and embeds a correction's memory before the write transaction (the memory text,
    /// the prompt, and the prompts of earlier corrections not embedded yet, in one batch).
    pub(crate) fn prepare_mirror(&mut self, prompt: &str, corrected: &str) -> Result<Option<Mirror>> {
        if corrected.trim().is_empty() {
            return Ok(None);
        }
        let text = memory_text(prompt, corrected);
        self.check_text(&text)?;
        // The real id is known only inside the transaction; no id is longer than this one.
        self.metadata_json(&metadata(i64::MAX, prompt))?;

        let key = prompt.trim().to_owned();
        let earlier: HashSet<String> = candidates(&self.conn)?.into_iter().map(|c| c.prompt.trim().to_owned()).collect();
        // Prompts no longer linked (their memory or event was forgotten) leave the cache.
        self.prompt_vectors.retain(|p, _| earlier.contains(p));
        let missing: Vec<&str> = earlier.iter().map(String::as_str).filter(|p| !self.prompt_vectors.contains_key(*p) && *p != key).collect();
        let mut batch = vec![text.as_str(), key.as_str()];
        batch.extend(&missing);
        let mut vectors = self.embed(&batch)?.into_iter();
        let (Some(text_vector), Some(prompt_vector)) = (vectors.next(), vectors.next()) else {
            return Err(Error::invalid("embedder returned too few vectors"));
        };
        let fresh: Vec<(String, Vec<f32>)> = missing.iter().map(|p| p.to_string()).zip(vectors).collect();
        self.prompt_vectors.extend(fresh);
        Ok(Some(Mirror { text, text_vector, prompt: prompt.to_owned(), key, prompt_vector }))
    }

    /// After the commit: the new prompt's vector joins the cache.
    pub(crate) fn mirrored(&mut self, m: Mirror) {
        self.prompt_vectors.insert(m.key, m.prompt_vector);
    }
}

impl Write<'_> {
    /// Writes a correction's memory inside the feedback's transaction: updates the memory of
    /// an earlier correction of the same question, or inserts a new one; links it to
    /// `feedback_id`.
    pub(crate) fn mirror(&mut self, m: &Mirror, feedback_id: i64, cache: &HashMap<String, Vec<f32>>) -> Result<AddOutcome> {
        let meta = metadata(feedback_id, &m.prompt).to_string();
        let outcome = match self.same_question(m, cache)? {
            Some((id, similarity)) => {
                self.update(id, Some((&m.text, m.text_vector.clone())), Some(meta), None)?;
                AddOutcome { id, action: AddAction::Updated, similarity: Some(similarity) }
            }
            None => {
                let new = Prepared {
                    text: m.text.clone(),
                    metadata: Some(meta),
                    importance: None,
                    created_at: None,
                    vector: m.text_vector.clone(),
                };
                AddOutcome { id: self.insert(&new)?, action: AddAction::Inserted, similarity: None }
            }
        };
        self.tx.execute(
            "INSERT OR IGNORE INTO memory_feedback (memory_id, feedback_id) VALUES (?1, ?2)",
            params![outcome.id, feedback_id],
        )?;
        self.mirrored_vecs = None;
        Ok(outcome)
    }

    /// The memory of an earlier correction asking the same question, with the cosine of the
    /// two prompts. A prompt equal after [`normalize_prompt`] wins over one that is only
    /// similar; among equals, the most similar, then the newest event.
    fn same_question(&self, m: &Mirror, cache: &HashMap<String, Vec<f32>>) -> Result<Option<(MemoryId, f32)>> {
        let norm = normalize_prompt(&m.prompt);
        let mut best: Option<((bool, f32, i64), MemoryId)> = None;
        for c in candidates(&self.tx)? {
            let key = c.prompt.trim();
            let sim = match cache.get(key) {
                Some(v) => dot(&m.prompt_vector, v),
                None if key == m.key => dot(&m.prompt_vector, &m.prompt_vector),
                // Linked by another connection after `prepare_mirror` read the links.
                None => dot(&m.prompt_vector, &embed_one(self.embedder(), key)?),
            };
            let equal = normalize_prompt(&c.prompt) == norm;
            if !equal && sim < SAME_QUESTION_SIMILARITY {
                continue;
            }
            let rank = (equal, sim, c.feedback_id);
            if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                best = Some((rank, c.memory_id));
            }
        }
        Ok(best.map(|((_, sim, _), id)| (id, sim)))
    }
}

fn embed_one(embedder: &dyn Embed, text: &str) -> Result<Vec<f32>> {
    let v = embedder.embed(&[text])?.into_iter().next().ok_or_else(|| Error::invalid("embedder returned no vector"))?;
    if v.len() != embedder.dim() {
        return Err(Error::DimensionMismatch { expected: embedder.dim(), actual: v.len() });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_normalise_case_space_and_trailing_punctuation() {
        assert_eq!(normalize_prompt("  What is my  CAT's\tname?! "), "what is my cat's name");
        assert_eq!(normalize_prompt("what is my cat's name"), "what is my cat's name");
        assert_eq!(normalize_prompt("Wie heißt meine Katze？"), "wie heißt meine katze");
        assert_eq!(normalize_prompt("Où est-il ... ?"), "où est-il");
        assert_ne!(normalize_prompt("What is my cat's name?"), normalize_prompt("What is my dog's name?"));
        assert_eq!(normalize_prompt("?!"), "");
    }

    #[test]
    fn memory_text_is_question_and_answer_trimmed() {
        assert_eq!(memory_text("  What is my cat's name?\n", " Zorblax. "), "Q: What is my cat's name? A: Zorblax.");
    }
}
