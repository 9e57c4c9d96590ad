//! The store's API: add, get, update with history, forget (for good), list, export/import,
//! feedback, adapter lineage.

use serde_json::json;
use tailor_memory::{
    AddAction, Error, FeedbackKind, FeedbackQuery, Filter, MemoryConfig, MemoryUpdate, NewFeedback, NewMemory,
    SearchMode, SearchQuery,
};

use crate::common::*;

#[test]
fn add_get_update_history_and_restart() {
    let dir = tmp_dir("api-basic");
    let mut s = hash_store(&dir, 32, MemoryConfig::default());
    let a = s.add(NewMemory::new("I live in Porto").metadata(json!({"source": "chat"})).importance(0.9)).unwrap();
    assert_eq!(a.action, AddAction::Inserted);
    let m = s.get(a.id).unwrap();
    assert_eq!((m.text.as_str(), m.metadata["source"].as_str(), m.importance), ("I live in Porto", Some("chat"), 0.9));

    let up = s.update(a.id, MemoryUpdate::text("I live in Lisbon now").with_metadata(json!({"source": "settings"}))).unwrap();
    assert_eq!(up.text, "I live in Lisbon now");
    let h = s.history(a.id).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].text, "I live in Porto");
    assert_eq!(h[0].metadata["source"], "chat");
    assert!(h[0].superseded_at >= m.created_at);

    // Search finds the new text, not the old one (vector and full text).
    let hits = s.search(&SearchQuery::new("I live in Lisbon now", 5).mode(SearchMode::Vector)).unwrap();
    assert_eq!(hits[0].memory.id, a.id);
    assert!((hits[0].similarity - 1.0).abs() < 1e-5);
    let lex = s.search(&SearchQuery::new("Porto", 5).mode(SearchMode::Lexical)).unwrap();
    assert!(lex.is_empty(), "old text still in the full-text index: {lex:?}");
    assert_eq!(s.search(&SearchQuery::new("Lisbon", 5).mode(SearchMode::Lexical)).unwrap()[0].memory.id, a.id);

    drop(s);
    let s = hash_store(&dir, 32, MemoryConfig::default());
    assert_eq!(s.get(a.id).unwrap().text, "I live in Lisbon now");
    assert_eq!(s.history(a.id).unwrap().len(), 1);
    assert_eq!(s.get(a.id).unwrap().access_count, 2, "the two searches above counted");
    s.integrity_check().unwrap();
}

#[test]
fn identical_add_is_merged_not_duplicated() {
    let dir = tmp_dir("api-dedup");
    let mut s = hash_store(&dir, 32, MemoryConfig::default());
    let a = s.add(NewMemory::new("I have a dog called Rex")).unwrap();
    let b = s.add(NewMemory::new("I have a dog called Rex")).unwrap();
    assert_eq!((b.id, b.action), (a.id, AddAction::Unchanged));
    assert_eq!(s.len().unwrap(), 1);
    // Two different texts in one batch stay two memories.
    let out = s.add_many(vec![NewMemory::new("one"), NewMemory::new("two"), NewMemory::new("one")]).unwrap();
    assert_eq!(out[2].id, out[0].id);
    assert_eq!(s.len().unwrap(), 3);
}

#[test]
fn forget_removes_text_history_fts_and_vector_for_good() {
    let dir = tmp_dir("api-forget");
    let path = dir.join("profile.db");
    let secret = "my bank PIN is 4921-zebra-quokka";
    let id;
    {
        let mut s = hash_store(&dir, 32, MemoryConfig::default());
        for i in 0..30 {
            s.add(NewMemory::new(format!("filler memory number {i}"))).unwrap();
        }
        id = s.add(NewMemory::new("the PIN is old-value-xylophone")).unwrap().id;
        s.update(id, MemoryUpdate::text(secret)).unwrap();
        assert!(s.search(&SearchQuery::new("quokka", 3).mode(SearchMode::Lexical)).unwrap().iter().any(|h| h.memory.id == id));
        s.forget(id).unwrap();
        assert!(matches!(s.get(id), Err(Error::MemoryNotFound { .. })));
        assert!(matches!(s.history(id), Err(Error::MemoryNotFound { .. })));
        assert!(matches!(s.forget(id), Err(Error::MemoryNotFound { .. })));
        let v = s.search(&SearchQuery::new(secret, 40).mode(SearchMode::Vector)).unwrap();
        assert!(v.iter().all(|h| h.memory.id != id));
        assert!(s.search(&SearchQuery::new("quokka xylophone", 5)).unwrap().iter().all(|h| h.memory.id != id));
    }
    assert!(!file_contains(&path, b"quokka"), "forgotten text lingers in the database file");
    assert!(!file_contains(&path, b"xylophone"), "forgotten history lingers in the database file");
    let mut s = hash_store(&dir, 32, MemoryConfig::default());
    assert!(matches!(s.get(id), Err(Error::MemoryNotFound { .. })));
    let v = s.search(&SearchQuery::new(secret, 40).mode(SearchMode::Vector)).unwrap();
    assert!(v.iter().all(|h| h.memory.id != id));
    // Ids are not reused.
    assert!(s.add(NewMemory::new("new one")).unwrap().id > id);
    s.integrity_check().unwrap();
}

#[test]
fn forget_by_filter_and_forget_all() {
    let dir = tmp_dir("api-forget-filter");
    let mut s = hash_store(&dir, 32, MemoryConfig::default());
    for i in 0..10 {
        let topic = if i % 2 == 0 { "work" } else { "home" };
        s.add(NewMemory::new(format!("fact {i}")).metadata(json!({"topic": topic, "n": i, "pinned": i == 3}))).unwrap();
    }
    assert_eq!(s.ids_matching(&Filter::eq("pinned", true)).unwrap().len(), 1);
    assert_eq!(s.ids_matching(&Filter::eq("n", 4)).unwrap().len(), 1);
    assert_eq!(s.forget_where(&Filter::eq("topic", "work")).unwrap(), 5);
    let hits = s.search(&SearchQuery::new("fact 2", 10).mode(SearchMode::Vector)).unwrap();
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h.memory.metadata["topic"] == "home"));
    let filtered = s.search(&SearchQuery::new("fact 3", 10).filter(Filter::eq("n", 7))).unwrap();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].memory.text, "fact 7");
    assert_eq!(s.forget_all().unwrap(), 5);
    assert!(s.is_empty().unwrap());
    assert!(s.search(&SearchQuery::new("fact 3", 10)).unwrap().is_empty());
    drop(s);
    let mut s = hash_store(&dir, 32, MemoryConfig::default());
    assert!(s.search(&SearchQuery::new("fact 3", 10)).unwrap().is_empty());
    assert!(!file_contains(&dir.join("profile.db"), b"fact 7"));
}

#[test]
fn list_pages_through_everything() {
    let dir = tmp_dir("api-list");
    let mut s = hash_store(&dir, 16, MemoryConfig::default());
    let ids: Vec<i64> = s.add_many((0..25).map(|i| NewMemory::new(format!("m{i}"))).collect()).unwrap().iter().map(|o| o.id).collect();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let p = s.list(after, 10).unwrap();
        seen.extend(p.memories.iter().map(|m| m.id));
        match p.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[test]
fn recency_and_importance_weighting_reorder_ties() {
    let dir = tmp_dir("api-weights");
    let mut s = hash_store(&dir, 16, MemoryConfig::default());
    let day = 86_400_000;
    let now = tailor_memory::now_millis();
    let old = s.add(NewMemory::new("coffee order: flat white").created_at(now - 400 * day).importance(0.1)).unwrap().id;
    let new = s.add(NewMemory::new("coffee order: oat latte").created_at(now).importance(0.1)).unwrap().id;
    let imp = s.add(NewMemory::new("coffee order: espresso").created_at(now - 400 * day).importance(1.0)).unwrap().id;
    let q = |s: &mut tailor_memory::MemoryStore, q: SearchQuery| -> i64 { s.search(&q.mode(SearchMode::Lexical)).unwrap()[0].memory.id };
    let _ = old;
    assert_eq!(q(&mut s, SearchQuery::new("coffee order", 3).recency(2.0, 30.0)), new);
    assert_eq!(q(&mut s, SearchQuery::new("coffee order", 3).importance(2.0)), imp);
}

#[test]
fn export_import_round_trip() {
    let dir = tmp_dir("api-export");
    let mut s = hash_store(&dir, 16, MemoryConfig::default());
    let a = s.add(NewMemory::new("first text").metadata(json!({"k": "v"}))).unwrap().id;
    s.update(a, MemoryUpdate::text("second text")).unwrap();
    s.add(NewMemory::new("another")).unwrap();
    s.add_feedback(NewFeedback::new("q", "a", FeedbackKind::Correction { corrected: "better".into() })).unwrap();
    s.record_adapter("v1", None, json!({"loss": 0.5})).unwrap();
    let json = s.export_json().unwrap();
    assert!(json.contains("\"format\": \"tailor-memory-export\""));

    let dir2 = tmp_dir("api-import");
    let mut t = hash_store(&dir2, 16, MemoryConfig::default());
    let r = t.import_json(&json).unwrap();
    // Two memories and the correction's mirror.
    assert_eq!((r.memories, r.feedback, r.adapters), (3, 1, 1));
    let e1 = s.export().unwrap();
    let e2 = t.export().unwrap();
    let strip = |e: &tailor_memory::Export| -> Vec<(String, serde_json::Value, i64, Vec<String>)> {
        e.memories.iter().map(|m| (m.memory.text.clone(), m.memory.metadata.clone(), m.memory.created_at, m.history.iter().map(|h| h.text.clone()).collect())).collect()
    };
    assert_eq!(strip(&e1), strip(&e2));
    assert_eq!(e1.adapters, e2.adapters);
    assert_eq!(t.search(&SearchQuery::new("second text", 1).mode(SearchMode::Vector)).unwrap()[0].memory.text, "second text");
    // The mirror is linked to the imported event: forgetting it forgets the copy.
    let f = t.list_feedback(&FeedbackQuery::default()).unwrap()[0].id;
    let mirrored = t.feedback_memories(f).unwrap();
    assert_eq!(mirrored.len(), 1);
    assert_eq!(t.get(mirrored[0]).unwrap().metadata["feedback_id"], json!(f));
    t.forget_feedback(&[f]).unwrap();
    assert_eq!(t.len().unwrap(), 2);
    assert!(matches!(t.import_json("{\"format\": \"x\", \"version\": 1, \"exported_at\": 0, \"memories\": []}"), Err(Error::InvalidExport { .. })));
    assert!(matches!(t.import_json("{\"format\": \"tailor-memory-export\", \"version\": 99, \"exported_at\": 0, \"memories\": []}"), Err(Error::InvalidExport { .. })));
    assert!(matches!(t.import_json("not json"), Err(Error::InvalidExport { .. })));
}

#[test]
fn feedback_and_adapter_lineage() {
    let dir = tmp_dir("api-feedback");
    let mut s = hash_store(&dir, 16, MemoryConfig::default());
    let f1 = s.add_feedback(NewFeedback::new("p1", "a1", FeedbackKind::ThumbsUp).turn_id("t1")).unwrap();
    let f2 = s
        .add_feedback(NewFeedback::new("p2", "a2", FeedbackKind::Preference { chosen: "c".into(), rejected: "r".into() }))
        .unwrap();
    let f3 = s.add_feedback(NewFeedback::new("p3", "a3", FeedbackKind::ThumbsDown)).unwrap();
    assert_eq!(s.get_feedback(f1).unwrap().turn_id.as_deref(), Some("t1"));
    assert_eq!(s.list_feedback(&FeedbackQuery::unconsumed(10)).unwrap().len(), 3);
    assert!(matches!(s.mark_feedback_consumed(&[f1, 999], "v1"), Err(Error::FeedbackNotFound { id: 999 })));
    assert_eq!(s.list_feedback(&FeedbackQuery::unconsumed(10)).unwrap().len(), 3, "all or nothing");
    s.mark_feedback_consumed(&[f1, f2], "v1").unwrap();
    let left = s.list_feedback(&FeedbackQuery::unconsumed(10)).unwrap();
    assert_eq!(left.iter().map(|f| f.id).collect::<Vec<_>>(), vec![f3]);
    let f = s.get_feedback(f2).unwrap();
    assert_eq!(f.consumed_by.as_deref(), Some("v1"));
    assert_eq!(f.kind, FeedbackKind::Preference { chosen: "c".into(), rejected: "r".into() });
    let js = serde_json::to_value(&f).unwrap();
    assert_eq!(js["kind"], "preference");

    s.record_adapter("v1", None, json!({"win_rate": 0.6})).unwrap();
    s.record_adapter("v2", Some("v1"), json!({})).unwrap();
    assert!(matches!(s.record_adapter("v2", Some("v1"), json!({})), Err(Error::AdapterExists { .. })));
    assert!(matches!(s.record_adapter("v3", Some("nope"), json!({})), Err(Error::AdapterNotFound { .. })));
    let l = s.list_adapters().unwrap();
    assert_eq!(l.iter().map(|a| (a.version.as_str(), a.parent.as_deref())).collect::<Vec<_>>(), vec![("v1", None), ("v2", Some("v1"))]);
}

#[test]
fn a_new_embedding_model_reembeds_at_open() {
    let dir = tmp_dir("api-reembed");
    let path = dir.join("profile.db");
    let id = {
        let mut s = tailor_memory::MemoryStore::open(&path, std::sync::Arc::new(tailor_memory::testing::HashEmbedder::new(32, 1)), MemoryConfig::default()).unwrap();
        s.add(NewMemory::new("the embedder changes")).unwrap().id
    };
    let mut s = tailor_memory::MemoryStore::open(&path, std::sync::Arc::new(tailor_memory::testing::HashEmbedder::new(16, 2)), MemoryConfig::default()).unwrap();
    let hits = s.search(&SearchQuery::new("the embedder changes", 1).mode(SearchMode::Vector)).unwrap();
    assert_eq!(hits[0].memory.id, id);
    assert!((hits[0].similarity - 1.0).abs() < 1e-5, "stored vector is the new model's");
}

/// Forgetting feedback reaches the adapters that learned from it: the events are gone from
/// the file, every version that saw one is tainted, the newest clean version is the fallback,
/// and it all survives a restart.
#[test]
fn forgetting_feedback_taints_the_versions_that_learned_from_it() {
    let dir = tmp_dir("api-forget-feedback");
    let path = dir.join("profile.db");
    let (_f1, f2, f3) = {
        let mut s = hash_store(&dir, 16, MemoryConfig::default());
        let f1 = s.add_feedback(NewFeedback::new("my cat's name?", "Tom", FeedbackKind::Correction { corrected: "Zanzibar-the-cat".into() })).unwrap();
        let f2 = s.add_feedback(NewFeedback::new("p2", "a2", FeedbackKind::ThumbsUp)).unwrap();
        let f3 = s.add_feedback(NewFeedback::new("p3", "a3", FeedbackKind::ThumbsUp)).unwrap();
        s.record_adapter("v1", None, json!({})).unwrap();
        s.mark_feedback_consumed(&[f2], "v1").unwrap();
        s.record_adapter("v2", Some("v1"), json!({})).unwrap();
        s.mark_feedback_consumed(&[f1, f2], "v2").unwrap();
        s.record_adapter("v3", Some("v2"), json!({})).unwrap();
        s.mark_feedback_consumed(&[f1, f2, f3], "v3").unwrap();
        assert_eq!(s.adapter_feedback("v3").unwrap(), vec![f1, f2, f3]);
        assert_eq!(s.newest_clean_adapter().unwrap().unwrap().version, "v3");
        let tainted = s.forget_feedback(&[f1]).unwrap();
        assert_eq!(tainted, vec!["v2".to_string(), "v3".to_string()]);
        assert!(matches!(s.get_feedback(f1), Err(Error::FeedbackNotFound { .. })));
        assert_eq!(s.newest_clean_adapter().unwrap().unwrap().version, "v1");
        assert!(s.forget_feedback(&[f1]).unwrap().is_empty(), "forgetting again changes nothing");
        (f1, f2, f3)
    };
    let bytes = std::fs::read(&path).unwrap();
    assert!(!bytes.windows(16).any(|w| w == b"Zanzibar-the-cat"), "the forgotten correction is gone from the file");
    let mut s = hash_store(&dir, 16, MemoryConfig::default());
    let l = s.list_adapters().unwrap();
    let flags: Vec<(&str, bool)> = l.iter().map(|a| (a.version.as_str(), a.tainted_at.is_some())).collect();
    assert_eq!(flags, vec![("v1", false), ("v2", true), ("v3", true)]);
    let rest: Vec<i64> = s.list_feedback(&FeedbackQuery::unconsumed(10)).unwrap().iter().map(|f| f.id).collect();
    assert!(rest.is_empty() && s.get_feedback(f3).is_ok());
    // Forgetting everything taints the last clean version too.
    assert_eq!(s.forget_all_feedback().unwrap(), vec!["v1".to_string()]);
    assert!(s.newest_clean_adapter().unwrap().is_none());
    assert!(s.get_feedback(f2).is_err());
}
