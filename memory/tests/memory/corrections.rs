//! Corrections mirrored into memories: usable at once, one memory per question (newest answer
//! wins), forgotten with their feedback, all or nothing.

use std::sync::Arc;

use rusqlite::Connection;
use serde_json::json;
use tailor_memory::{
    AddAction, Error, FeedbackKind, FeedbackQuery, MemoryConfig, MemoryStore, NewFeedback, NewMemory, SearchMode,
    SearchQuery,
};

use crate::common::*;

fn correction(prompt: &str, corrected: &str) -> NewFeedback {
    NewFeedback::new(prompt, "I don't know.", FeedbackKind::Correction { corrected: corrected.into() })
}

/// A second connection to the store's file, for looking at (or sabotaging) the raw tables.
fn raw(s: &MemoryStore) -> Connection {
    Connection::open(s.path()).unwrap()
}

fn count(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// With the real embedder: the correction is retrievable by a question in other words right
/// after `add_feedback`, the same question asked differently updates it, and a different
/// question (close in embedding space: cosine ≈ 0.76) stays a separate memory.
#[test]
fn correction_is_found_at_once_by_a_paraphrase_with_minilm() {
    let dir = tmp_dir("corrections-minilm");
    let mut s = MemoryStore::open(dir.join("p.db"), minilm() as Arc<_>, MemoryConfig::default()).unwrap();
    for fact in ["I live in Porto.", "My sister Anna is a dentist.", "I drive a red Fiat Panda.", "My dog Rex is a beagle."] {
        s.add(NewMemory::new(fact)).unwrap();
    }
    let added = s.add_feedback_mirrored(correction("What is my cat's name?", "Your cat is called Zorblax.")).unwrap();
    let m = added.memory.expect("a correction is mirrored");
    assert_eq!(m.action, AddAction::Inserted);
    let mem = s.get(m.id).unwrap();
    assert_eq!(mem.text, "Q: What is my cat's name? A: Your cat is called Zorblax.");
    assert_eq!(mem.metadata, json!({"source": "correction", "feedback_id": added.id, "prompt": "What is my cat's name?"}));
    assert_eq!(s.feedback_memories(added.id).unwrap(), vec![m.id]);

    for q in ["How is my cat called?", "Do you remember what my kitty is named?"] {
        let hits = s.search(&SearchQuery::new(q, 3)).unwrap();
        eprintln!("{q} -> {:?}", hits.iter().map(|h| &h.memory.text).collect::<Vec<_>>());
        assert_eq!(hits[0].memory.id, m.id, "{q}");
    }

    // The same question in other words (prompt cosine ≈ 0.97): the memory is updated.
    let again = s.add_feedback_mirrored(correction("What is the name of my cat?", "Zorblax the Second.")).unwrap();
    let up = again.memory.unwrap();
    assert_eq!((up.id, up.action), (m.id, AddAction::Updated));
    assert!(up.similarity.unwrap() >= 0.9, "{up:?}");
    assert_eq!(s.get(m.id).unwrap().text, "Q: What is the name of my cat? A: Zorblax the Second.");
    assert_eq!(s.history(m.id).unwrap()[0].text, mem.text);

    // A different question, close in embedding space, is a memory of its own.
    let dog = s.add_feedback_mirrored(correction("What is my dog's name?", "Rex.")).unwrap().memory.unwrap();
    assert_eq!(dog.action, AddAction::Inserted);
    assert_ne!(dog.id, m.id);
    assert_eq!(s.len().unwrap(), 6);
    let hits = s.search(&SearchQuery::new("what's my cat called", 1)).unwrap();
    assert_eq!(hits[0].memory.text, "Q: What is the name of my cat? A: Zorblax the Second.");
}

#[test]
fn same_question_updates_one_memory_newest_wins() {
    let dir = tmp_dir("corrections-same");
    let mut s = hash_store(&dir, 32, MemoryConfig::default());
    let first = s.add_feedback_mirrored(correction("What is my cat's name?", "Zorblax")).unwrap();
    let id = first.memory.unwrap().id;
    // Equal after lowercasing, collapsing whitespace and dropping the trailing punctuation.
    let second = s.add_feedback_mirrored(correction("  what is my   CAT'S name ?! ", " Mittens ")).unwrap();
    let out = second.memory.unwrap();
    assert_eq!((out.id, out.action), (id, AddAction::Updated));
    assert_eq!(s.len().unwrap(), 1);
    let m = s.get(id).unwrap();
    assert_eq!(m.text, "Q: what is my   CAT'S name ?! A: Mittens");
    assert_eq!(m.metadata["feedback_id"], json!(second.id));
    assert_eq!(m.metadata["prompt"], json!("  what is my   CAT'S name ?! "));
    let h = s.history(id).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].text, "Q: What is my cat's name? A: Zorblax");
    assert_eq!(h[0].metadata["feedback_id"], json!(first.id));
    // Linked to both events; the newest text is what search finds.
    assert_eq!(s.feedback_memories(first.id).unwrap(), vec![id]);
    assert_eq!(s.feedback_memories(second.id).unwrap(), vec![id]);
    let hit = &s.search(&SearchQuery::new("Mittens", 1).mode(SearchMode::Lexical)).unwrap()[0];
    assert_eq!(hit.memory.id, id);
    assert!(s.search(&SearchQuery::new("Zorblax", 1).mode(SearchMode::Lexical)).unwrap().is_empty());
    let v = &s.search(&SearchQuery::new(m.text.clone(), 1).mode(SearchMode::Vector)).unwrap()[0];
    assert!(v.memory.id == id && v.similarity > 0.999, "the graph holds the new text's vector");
    // A third time, the same again (after a restart: the prompt rule needs no cache).
    drop(s);
    let mut s = hash_store(&dir, 32, MemoryConfig::default());
    let third = s.add_feedback_mirrored(correction("What is my cat's name", "Mittens, really")).unwrap();
    assert_eq!(third.memory.unwrap().id, id);
    assert_eq!(s.history(id).unwrap().len(), 2);
    assert_eq!(s.len().unwrap(), 1);
}

/// Different questions stay apart even when the generic near-duplicate merge would take
/// anything, and a plain memory never merges into (or absorbs) a mirrored one.
#[test]
fn different_questions_stay_two_memories() {
    let dir = tmp_dir("corrections-different");
    let mut config = MemoryConfig::default();
    config.dedup_threshold = Some(-1.0);
    let mut s = hash_store(&dir, 32, config);
    let cat = s.add_feedback_mirrored(correction("What is my cat's name?", "Zorblax")).unwrap().memory.unwrap();
    let dog = s.add_feedback_mirrored(correction("What is my dog's name?", "Rex")).unwrap().memory.unwrap();
    assert_eq!((cat.action, dog.action), (AddAction::Inserted, AddAction::Inserted));
    assert_ne!(cat.id, dog.id);
    let plain = s.add(NewMemory::new("Q: What is my cat's name? A: Zorblax")).unwrap();
    assert_eq!(plain.action, AddAction::Inserted, "a plain add does not merge into a correction");
    let plain2 = s.add(NewMemory::new("anything at all")).unwrap();
    assert_eq!((plain2.id, plain2.action), (plain.id, AddAction::Updated), "plain memories still merge");
    let fish = s.add_feedback_mirrored(correction("What is my fish's name?", "Bubbles")).unwrap().memory.unwrap();
    assert_eq!(fish.action, AddAction::Inserted, "a correction does not merge into a plain memory");
    assert_eq!(s.len().unwrap(), 4);
    assert_eq!(s.get(cat.id).unwrap().text, "Q: What is my cat's name? A: Zorblax");
    assert_eq!(s.get(dog.id).unwrap().text, "Q: What is my dog's name? A: Rex");
}

#[test]
fn only_corrections_are_mirrored_and_the_switch_turns_it_off() {
    let dir = tmp_dir("corrections-kinds");
    let mut s = hash_store(&dir, 16, MemoryConfig::default());
    for kind in [
        FeedbackKind::ThumbsUp,
        FeedbackKind::ThumbsDown,
        FeedbackKind::Preference { chosen: "c".into(), rejected: "r".into() },
        FeedbackKind::Correction { corrected: "  ".into() },
    ] {
        let added = s.add_feedback_mirrored(NewFeedback::new("p", "a", kind)).unwrap();
        assert!(added.memory.is_none());
        assert!(s.feedback_memories(added.id).unwrap().is_empty());
    }
    assert_eq!(s.len().unwrap(), 0);
    drop(s);

    let config: MemoryConfig = serde_json::from_str("{}").unwrap();
    assert!(config.mirror_corrections, "on by default, also when absent from a saved config");
    let config: MemoryConfig = serde_json::from_str(r#"{"mirror_corrections": false}"#).unwrap();
    let mut s = MemoryStore::open(dir.join("off.db"), Arc::new(tailor_memory::testing::HashEmbedder::new(16, 1)), config).unwrap();
    let id = s.add_feedback(correction("What is my cat's name?", "Zorblax")).unwrap();
    assert!(s.get_feedback(id).is_ok());
    assert_eq!(s.len().unwrap(), 0);
}

/// `forget_feedback` takes the mirrored memory with it: row, history, full-text entry,
/// vector, link; nothing of it is left in the file or comes back after a restart.
#[test]
fn forgetting_feedback_forgets_its_memory_and_history() {
    let dir = tmp_dir("corrections-forget");
    let path = dir.join("profile.db");
    let mut s = hash_store(&dir, 32, MemoryConfig::default());
    for i in 0..20 {
        s.add(NewMemory::new(format!("filler memory number {i}"))).unwrap();
    }
    let f1 = s.add_feedback(correction("What is my PIN?", "quokka-4921")).unwrap();
    let f2 = s.add_feedback(correction("what is my pin", "xylophone-1234")).unwrap();
    let other = s.add_feedback_mirrored(correction("What is my cat's name?", "Zorblax")).unwrap();
    let id = s.feedback_memories(f1).unwrap()[0];
    assert_eq!(s.feedback_memories(f2).unwrap(), vec![id]);
    assert_eq!(s.history(id).unwrap().len(), 1);
    let text = s.get(id).unwrap().text;

    assert!(s.forget_feedback(&[f2]).unwrap().is_empty());
    assert!(matches!(s.get(id), Err(Error::MemoryNotFound { .. })));
    assert!(s.get_feedback(f1).is_ok(), "the other event stays (only its memory went)");
    assert!(s.feedback_memories(f1).unwrap().is_empty());
    assert!(s.search(&SearchQuery::new("quokka xylophone", 5)).unwrap().iter().all(|h| h.memory.id != id));
    let v = s.search(&SearchQuery::new(text.clone(), 30).mode(SearchMode::Vector)).unwrap();
    assert!(v.iter().all(|h| h.memory.id != id && h.similarity < 0.99));
    {
        let c = raw(&s);
        assert_eq!(count(&c, "SELECT count(*) FROM memories WHERE text LIKE '%quokka%' OR text LIKE '%xylophone%'"), 0);
        assert_eq!(count(&c, "SELECT count(*) FROM memory_history WHERE text LIKE '%quokka%' OR text LIKE '%xylophone%'"), 0);
        assert_eq!(count(&c, &format!("SELECT count(*) FROM memory_history WHERE memory_id = {id}")), 0);
        assert_eq!(count(&c, "SELECT count(*) FROM memories_fts WHERE memories_fts MATCH 'quokka OR xylophone OR pin'"), 0);
        assert_eq!(count(&c, &format!("SELECT count(*) FROM memory_feedback WHERE memory_id = {id}")), 0);
        assert_eq!(count(&c, "SELECT count(*) FROM feedback"), 2);
    }
    assert!(!file_contains(&path, b"xylophone"), "the forgotten correction lingers in the file");
    // `quokka` is still in f1's feedback row; forgetting it clears the file.
    s.forget_feedback(&[f1]).unwrap();
    assert!(!file_contains(&path, b"quokka"), "the forgotten history lingers in the file");
    drop(s);

    let mut s = hash_store(&dir, 32, MemoryConfig::default());
    assert!(matches!(s.get(id), Err(Error::MemoryNotFound { .. })));
    let v = s.search(&SearchQuery::new(text, 30).mode(SearchMode::Vector)).unwrap();
    assert!(v.iter().all(|h| h.memory.id != id));
    // The same question again is a new memory (nothing links to the old one).
    let again = s.add_feedback_mirrored(correction("What is my PIN?", "new-pin")).unwrap().memory.unwrap();
    assert_eq!(again.action, AddAction::Inserted);
    assert!(again.id > id);

    // forget_all_feedback takes every mirrored memory, and only those.
    let cat = s.feedback_memories(other.id).unwrap()[0];
    s.forget_all_feedback().unwrap();
    assert!(s.get(cat).is_err() && s.get(again.id).is_err());
    assert_eq!(s.len().unwrap(), 20);
    let c = raw(&s);
    assert_eq!(count(&c, "SELECT count(*) FROM memory_feedback"), 0);
    assert_eq!(count(&c, "SELECT count(*) FROM memories_fts WHERE memories_fts MATCH 'zorblax OR pin'"), 0);
    s.integrity_check().unwrap();
}

#[test]
fn forgetting_the_memory_keeps_the_feedback() {
    let dir = tmp_dir("corrections-forget-memory");
    let mut s = hash_store(&dir, 16, MemoryConfig::default());
    let added = s.add_feedback_mirrored(correction("What is my cat's name?", "Zorblax")).unwrap();
    let id = added.memory.unwrap().id;
    s.forget(id).unwrap();
    assert!(s.get_feedback(added.id).is_ok());
    assert!(s.feedback_memories(added.id).unwrap().is_empty());
    // The next correction of that question starts a new memory.
    let next = s.add_feedback_mirrored(correction("What is my cat's name?", "Mittens")).unwrap().memory.unwrap();
    assert_eq!(next.action, AddAction::Inserted);
    assert!(s.history(next.id).unwrap().is_empty());
    assert_eq!(s.list_feedback(&FeedbackQuery::default()).unwrap().len(), 2);
}

/// Both rows or neither: a memory that cannot be stored fails the feedback too, before or
/// inside the transaction, on insert and on update; the vector index stays consistent.
#[test]
fn a_failed_mirror_writes_neither_row() {
    let dir = tmp_dir("corrections-atomic");
    let mut s = hash_store(&dir, 16, MemoryConfig::default());
    let feedback = |s: &MemoryStore| s.list_feedback(&FeedbackQuery::default()).unwrap().len();

    // Fits the feedback limit (4 × max_text_bytes), not the memory limit.
    let long = "z".repeat(s.config().max_text_bytes);
    let e = s.add_feedback(correction("What is my cat's name?", &long)).unwrap_err();
    assert!(matches!(e, Error::TextTooLong { .. }), "{e}");
    assert_eq!((feedback(&s), s.len().unwrap()), (0, 0));

    // A failure inside the transaction, after both rows are written: rolled back.
    let c = raw(&s);
    c.execute_batch("CREATE TRIGGER fail_link BEFORE INSERT ON memory_feedback BEGIN SELECT RAISE(ABORT, 'injected'); END;").unwrap();
    let e = s.add_feedback(correction("What is my cat's name?", "Zorblax")).unwrap_err();
    assert!(e.to_string().contains("injected"), "{e}");
    assert_eq!((feedback(&s), s.len().unwrap()), (0, 0));
    assert!(s.search(&SearchQuery::new("Q: What is my cat's name? A: Zorblax", 3).mode(SearchMode::Vector)).unwrap().is_empty());
    c.execute_batch("DROP TRIGGER fail_link;").unwrap();

    let first = s.add_feedback_mirrored(correction("What is my cat's name?", "Zorblax")).unwrap();
    let id = first.memory.unwrap().id;
    // The update path: the history row cannot be written.
    c.execute_batch("CREATE TRIGGER fail_history BEFORE INSERT ON memory_history BEGIN SELECT RAISE(ABORT, 'injected'); END;").unwrap();
    assert!(s.add_feedback(correction("what is my cat's name", "Mittens")).is_err());
    assert_eq!((feedback(&s), s.len().unwrap()), (1, 1));
    assert_eq!(s.get(id).unwrap().text, "Q: What is my cat's name? A: Zorblax");
    assert!(s.history(id).unwrap().is_empty());
    assert_eq!(count(&c, "SELECT count(*) FROM memory_feedback"), 1);
    c.execute_batch("DROP TRIGGER fail_history;").unwrap();
    let v = &s.search(&SearchQuery::new("Q: What is my cat's name? A: Zorblax", 1).mode(SearchMode::Vector)).unwrap()[0];
    assert!(v.memory.id == id && v.similarity > 0.999, "the graph kept the committed vector");

    assert_eq!(s.add_feedback_mirrored(correction("what is my cat's name", "Mittens")).unwrap().memory.unwrap().id, id);
    let v = &s.search(&SearchQuery::new("Q: what is my cat's name A: Mittens", 1).mode(SearchMode::Vector)).unwrap()[0];
    assert!(v.memory.id == id && v.similarity > 0.999);
    s.integrity_check().unwrap();
}

/// Export and import keep a mirror tied to its events (under their new ids), so forgetting an
/// imported event forgets the imported memory too.
#[test]
fn export_import_keeps_the_links() {
    let dir = tmp_dir("corrections-export");
    let mut s = hash_store(&dir, 16, MemoryConfig::default());
    s.add_feedback(NewFeedback::new("p", "a", FeedbackKind::ThumbsUp)).unwrap();
    s.add_feedback(correction("What is my cat's name?", "Zorblax")).unwrap();
    let last = s.add_feedback(correction("what is my cat's name", "Mittens")).unwrap();
    s.add(NewMemory::new("My own memory.")).unwrap();
    let export = s.export().unwrap();
    assert_eq!(export.memories[0].feedback_ids.len(), 2);
    assert!(export.memories[1].feedback_ids.is_empty());
    assert!(!serde_json::to_string(&export.memories[1]).unwrap().contains("feedback_ids"), "old readers see no new field");

    let dir2 = tmp_dir("corrections-import");
    let mut t = hash_store(&dir2, 16, MemoryConfig::default());
    t.add_feedback(NewFeedback::new("here before", "a", FeedbackKind::ThumbsDown)).unwrap();
    let r = t.import(&export).unwrap();
    assert_eq!((r.memories, r.feedback), (2, 3));
    let ids: Vec<i64> = t.list_feedback(&FeedbackQuery::default()).unwrap().iter().map(|f| f.id).collect();
    assert_eq!(ids.len(), 4);
    let (first, newest) = (ids[2], ids[3]);
    assert_ne!(newest, last, "the events got new ids");
    let mirror = t.feedback_memories(newest).unwrap();
    assert_eq!(t.feedback_memories(first).unwrap(), mirror);
    let m = t.get(mirror[0]).unwrap();
    assert_eq!(m.metadata["feedback_id"], json!(newest), "metadata follows the new id");
    assert_eq!(t.history(m.id).unwrap()[0].text, "Q: What is my cat's name? A: Zorblax");
    // The imported mirror takes part in the prompt rule like any other.
    let again = t.add_feedback_mirrored(correction("WHAT IS MY CAT'S NAME?", "Mittens II")).unwrap().memory.unwrap();
    assert_eq!((again.id, again.action), (m.id, AddAction::Updated));
    t.forget_feedback(&[first]).unwrap();
    assert!(t.get(m.id).is_err());
    assert_eq!(t.len().unwrap(), 1);
}
