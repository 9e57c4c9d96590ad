//! Search: vector (HNSW or exact) and full-text (FTS5 BM25) retrieval fused by reciprocal
//! rank, with metadata filters, recency and importance weighting and a similarity threshold.

use std::collections::{HashMap, HashSet};

use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, TransactionBehavior};

use crate::error::{Error, Result};
use crate::index::dot;
use crate::store::{from_blob, memory_from_row, MemoryStore, MEMORY_COLUMNS};
use crate::types::{now_millis, Filter, MemoryId, SearchHit, SearchMode, SearchQuery};

/// The `k` of reciprocal rank fusion: `score = Σ 1 / (k + rank)` with ranks from 1.
pub const RRF_K: f32 = 60.0;

/// Words left out of full-text queries (they match nearly every memory).
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "did", "do", "does", "for", "from", "had", "has", "have",
    "how", "i", "in", "is", "it", "its", "me", "my", "of", "on", "or", "our", "so", "that", "the", "their", "them",
    "there", "they", "this", "to", "was", "we", "were", "what", "when", "where", "which", "who", "whom", "why",
    "will", "with", "you", "your", "i'm", "am", "about", "any", "tell", "know",
];

impl MemoryStore {
    /// Searches the memories. See [`SearchQuery`] for the knobs; results are best first.
    pub fn search(&mut self, query: &SearchQuery) -> Result<Vec<SearchHit>> {
        if query.text.trim().is_empty() {
            return Err(Error::invalid("the search query is empty"));
        }
        if query.text.len() > self.config.max_text_bytes {
            return Err(Error::TextTooLong { len: query.text.len(), max: self.config.max_text_bytes });
        }
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        self.sync_index()?;
        let q = self.embed(&[query.text.as_str()])?.remove(0);
        let allowed: Option<HashSet<MemoryId>> = query.filter.as_ref().map(|f| self.ids_matching(f)).transpose()?.map(|v| v.into_iter().collect());
        let pool = (query.limit * 4).max(20);

        let mut vector_ranked: Vec<MemoryId> = Vec::new();
        if query.mode != SearchMode::Lexical {
            let allowed_vecs: Option<HashSet<usize>> = match &allowed {
                Some(ids) => Some(self.vec_ids_of(ids)?),
                None => None,
            };
            let allow = |v: usize| allowed_vecs.as_ref().is_none_or(|s| s.contains(&v));
            let hits = match &allowed_vecs {
                // A selective filter starves a filtered graph search; scan the few allowed
                // vectors exactly instead (they are live: the set comes from SQLite).
                Some(set) if set.len() < self.config.index.exact_below => self.index.exact(&q, pool, &allow),
                _ => self.index.search(&q, pool, Some(&allow)),
            };
            let vec_ids: Vec<usize> = hits.iter().map(|h| h.0).collect();
            vector_ranked = self.memory_ids_for(&vec_ids)?.into_iter().flatten().collect();
        }
        let mut lexical_ranked: Vec<MemoryId> = Vec::new();
        if query.mode != SearchMode::Vector {
            if let Some(fts) = fts_query(&query.text) {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?1 ORDER BY rank LIMIT ?2",
                )?;
                let limit = if allowed.is_some() { pool * 8 } else { pool } as i64;
                let rows = stmt.query_map(rusqlite::params![fts, limit], |r| r.get::<_, i64>(0))?;
                for id in rows {
                    let id = id?;
                    if allowed.as_ref().is_none_or(|s| s.contains(&id)) {
                        lexical_ranked.push(id);
                    }
                }
                lexical_ranked.truncate(pool);
            }
        }

        // Fuse.
        let mut cands: HashMap<MemoryId, (Option<usize>, Option<usize>)> = HashMap::new();
        for (r, id) in vector_ranked.iter().enumerate() {
            cands.entry(*id).or_default().0 = Some(r);
        }
        for (r, id) in lexical_ranked.iter().enumerate() {
            cands.entry(*id).or_default().1 = Some(r);
        }
        let now = now_millis();
        let mut hits = Vec::with_capacity(cands.len());
        let mut stmt = self.conn.prepare_cached(&format!("SELECT {MEMORY_COLUMNS}, embedding FROM memories WHERE id = ?1"))?;
        for (id, (vr, lr)) in cands {
            let (memory, blob) = stmt.query_row([id], |r| Ok((memory_from_row(r)?, r.get::<_, Vec<u8>>(8)?)))?;
            let similarity = dot(&q, &from_blob(&blob));
            if query.min_similarity.is_some_and(|m| similarity < m) {
                continue;
            }
            let mut score = match query.mode {
                SearchMode::Vector => similarity,
                _ => vr.map_or(0.0, |r| 1.0 / (RRF_K + 1.0 + r as f32)) + lr.map_or(0.0, |r| 1.0 / (RRF_K + 1.0 + r as f32)),
            };
            if query.recency_weight > 0.0 {
                let age_days = (now - memory.updated_at).max(0) as f32 / 86_400_000.0;
                let half = query.recency_half_life_days.max(1e-3);
                score *= 1.0 + query.recency_weight * 0.5f32.powf(age_days / half);
            }
            if query.importance_weight > 0.0 {
                score *= 1.0 + query.importance_weight * memory.importance;
            }
            hits.push(SearchHit { memory, score, similarity, vector_rank: vr, lexical_rank: lr });
        }
        drop(stmt);
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.memory.id.cmp(&b.memory.id)));
        hits.truncate(query.limit);

        if query.track_access && !hits.is_empty() {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut up = tx.prepare_cached(
                    "UPDATE memories SET access_count = access_count + 1, last_accessed_at = ?2 WHERE id = ?1",
                )?;
                for h in &mut hits {
                    up.execute(rusqlite::params![h.memory.id, now])?;
                    h.memory.access_count += 1;
                    h.memory.last_accessed_at = Some(now);
                }
            }
            tx.commit()?;
        }
        Ok(hits)
    }

    /// Ids of the memories whose metadata matches `filter`.
    pub fn ids_matching(&self, filter: &Filter) -> Result<Vec<MemoryId>> {
        let mut params = Vec::new();
        let cond = filter_sql(filter, &mut params)?;
        let mut stmt = self.conn.prepare(&format!("SELECT id FROM memories WHERE {cond} ORDER BY id"))?;
        let rows = stmt.query_map(params_from_iter(params.iter()), |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn vec_ids_of(&self, ids: &HashSet<MemoryId>) -> Result<HashSet<usize>> {
        let mut stmt = self.conn.prepare_cached("SELECT vec_id FROM memories WHERE id = ?1 AND vec_id IS NOT NULL")?;
        let mut out = HashSet::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = rusqlite::OptionalExtension::optional(stmt.query_row([id], |r| r.get::<_, i64>(0)))? {
                out.insert(v as usize);
            }
        }
        Ok(out)
    }
}

/// An FTS5 query matching any content word of `text` (each quoted, so user text can never be
/// FTS syntax); `None` when there is no such word.
pub(crate) fn fts_query(text: &str) -> Option<String> {
    let mut seen = HashSet::new();
    let terms: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .filter(|w| seen.insert(w.clone()))
        .map(|w| format!("\"{w}\""))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" OR "))
}

/// SQL condition on `memories.metadata` for `filter`, pushing its parameters.
pub(crate) fn filter_sql(filter: &Filter, params: &mut Vec<SqlValue>) -> Result<String> {
    let path = |key: &str| -> Result<SqlValue> {
        if key.is_empty() || key.contains('"') || key.chars().any(char::is_control) {
            return Err(Error::invalid(format!("metadata filter key {key:?} is empty or has a quote")));
        }
        Ok(SqlValue::Text(format!("$.\"{key}\"")))
    };
    Ok(match filter {
        Filter::Eq { key, value } => {
            params.push(path(key)?);
            match value {
                serde_json::Value::Null => "json_extract(metadata, ?) IS NULL".into(),
                serde_json::Value::Bool(b) => {
                    params.push(SqlValue::Integer(*b as i64));
                    "json_extract(metadata, ?) = ?".into()
                }
                serde_json::Value::Number(n) => {
                    params.push(match n.as_i64() {
                        Some(i) => SqlValue::Integer(i),
                        None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
                    });
                    "json_extract(metadata, ?) = ?".into()
                }
                serde_json::Value::String(s) => {
                    params.push(SqlValue::Text(s.clone()));
                    "json_extract(metadata, ?) = ?".into()
                }
                other => {
                    params.push(SqlValue::Text(other.to_string()));
                    "json_extract(metadata, ?) = json(?)".into()
                }
            }
        }
        Filter::Exists { key } => {
            params.push(path(key)?);
            "json_extract(metadata, ?) IS NOT NULL".into()
        }
        Filter::And { all } if all.is_empty() => "1".into(),
        Filter::Or { any } if any.is_empty() => "0".into(),
        Filter::And { all } => {
            let parts = all.iter().map(|f| filter_sql(f, params)).collect::<Result<Vec<_>>>()?;
            format!("({})", parts.join(" AND "))
        }
        Filter::Or { any } => {
            let parts = any.iter().map(|f| filter_sql(f, params)).collect::<Result<Vec<_>>>()?;
            format!("({})", parts.join(" OR "))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts_query_quotes_words_and_drops_stopwords() {
        assert_eq!(fts_query("What is my sister's NAME?").as_deref(), Some("\"sister\" OR \"s\" OR \"name\""));
        assert_eq!(fts_query("\"; DROP TABLE memories; --"), Some("\"drop\" OR \"table\" OR \"memories\"".into()));
        assert_eq!(fts_query("what is it?"), None);
    }

    #[test]
    fn filter_keys_cannot_inject() {
        let mut p = Vec::new();
        assert!(filter_sql(&Filter::eq("a\"b", 1), &mut p).is_err());
        let sql = filter_sql(&Filter::And { all: vec![Filter::eq("a", "x"), Filter::Exists { key: "b".into() }] }, &mut p).unwrap();
        assert_eq!(sql, "(json_extract(metadata, ?) = ? AND json_extract(metadata, ?) IS NOT NULL)");
        assert_eq!(p.len(), 3);
    }
}
