//! Memories retrieved into the system prompt (a tiny model, the real MiniLM embedder and a
//! real SQLite profile on disk).

use std::sync::{Arc, Mutex};

use candle_core::quantized::GgmlDType;
use tailor::profile::{BertEmbedder, MemoryConfig, MemoryStore, NewMemory};
use tailor::{ChatMessage, Flow, GenerateParams, MemoryPromptConfig, ModelCache, Prompt};

use crate::common::{spec, tiny, TempDir};

fn embedder() -> Arc<BertEmbedder> {
    let root = std::env::var_os("TAILOR_HOME").map(std::path::PathBuf::from).or_else(ModelCache::default_root).expect("a cache dir");
    let dir = ModelCache::new(root).embedder_dir();
    Arc::new(BertEmbedder::load(&dir).unwrap_or_else(|e| panic!("the embedder at {} ({e}): run `tailor models fetch`", dir.display())))
}

fn greedy(n: usize) -> GenerateParams {
    let mut p = GenerateParams::default();
    p.max_tokens = n;
    p.ignore_eos = true;
    p
}

#[test]
fn relevant_memories_go_into_the_system_prompt_within_the_budget() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, 11), 1);
    let dir = TempDir::new("memory-prompt");
    let mut store = MemoryStore::open(dir.path("profile.db"), embedder(), MemoryConfig::default()).unwrap();
    let facts = ["I have a golden retriever called Biscuit.", "My blood type is O negative.", "I live in Porto, near the river."];
    let ids: Vec<i64> = facts.iter().map(|f| store.add(NewMemory::new(*f)).unwrap().id).collect();
    let shared = Arc::new(Mutex::new(store));
    let question = vec![ChatMessage::system("Be brief."), ChatMessage::user("What is the name of my dog?")];

    let mut plain = engine.new_session();
    let without = plain.generate(&Prompt::Chat(question.clone()), &greedy(2), &mut |_| Flow::Continue).unwrap();
    assert!(without.memories.is_empty());

    let mut s = engine.new_session();
    s.set_memory(Some(shared.clone()), MemoryPromptConfig::default());
    let with = s.generate(&Prompt::Chat(question.clone()), &greedy(2), &mut |_| Flow::Continue).unwrap();
    assert_eq!(with.memories.first().map(|m| m.id), Some(ids[0]), "the dog fact ranks first: {:?}", with.memories);
    assert!(with.memories.len() <= MemoryPromptConfig::default().limit);
    // The prompt is the conversation with the memories appended to its system message.
    let mut cfg = MemoryPromptConfig::default();
    let mut expected = question.clone();
    let lines: String = with.memories.iter().map(|m| format!("\n- {}", m.text)).collect();
    expected[0].content = format!("Be brief.\n\n{}{lines}", cfg.header);
    assert_eq!(with.prompt_tokens, s.prompt_tokens(&Prompt::Chat(expected)).unwrap().len());
    assert!(with.prompt_tokens > without.prompt_tokens);

    // A budget too small for any memory, and the off switch: nothing retrieved.
    cfg.token_budget = 3;
    s.set_memory(Some(shared.clone()), cfg.clone());
    let g = s.generate(&Prompt::Chat(question.clone()), &greedy(2), &mut |_| Flow::Continue).unwrap();
    assert!(g.memories.is_empty());
    assert_eq!(g.prompt_tokens, without.prompt_tokens);
    cfg.token_budget = 256;
    cfg.enabled = false;
    s.set_memory(Some(shared.clone()), cfg);
    assert!(s.generate(&Prompt::Chat(question.clone()), &greedy(2), &mut |_| Flow::Continue).unwrap().memories.is_empty());

    // A forgotten memory is never retrieved again.
    shared.lock().unwrap().forget(ids[0]).unwrap();
    s.set_memory(Some(shared.clone()), MemoryPromptConfig::default());
    let g = s.generate(&Prompt::Chat(question), &greedy(2), &mut |_| Flow::Continue).unwrap();
    assert!(g.memories.iter().all(|m| m.id != ids[0]));
}

/// The memory-reading adapter runs only on the base it was trained for, only while memories
/// are in the prompt, and `reader: false` switches it off: then the logits of a prompt with
/// memories are exactly those of the base on the same tokens.
#[test]
fn the_memory_reader_runs_on_its_base_while_memories_are_in_the_prompt() {
    let (_d, _p, tiny_engine) = tiny(spec(GgmlDType::Q8_0, 64, 12), 1);
    assert!(tiny_engine.memory_reader().is_none(), "trained for SmolLM2 only");
    let engine = crate::real_model::engine();
    assert!(engine.memory_reader().is_some(), "the shipped reader matches the real model's fingerprint");

    let dir = TempDir::new("memory-reader");
    let mut store = MemoryStore::open(dir.path("profile.db"), embedder(), MemoryConfig::default()).unwrap();
    store.add(NewMemory::new("Q: What is my cat's name? A: Your cat is called Tavimor.")).unwrap();
    store.add(NewMemory::new("My sister lives in Bergen.")).unwrap();
    let shared = Arc::new(Mutex::new(store));
    let ask = |reader: bool, question: &str| {
        let mut cfg = MemoryPromptConfig::default();
        cfg.reader = reader;
        let mut s = engine.new_session();
        s.set_memory(Some(shared.clone()), cfg);
        let mut p = GenerateParams::default();
        p.max_tokens = 16;
        let g = s.generate(&Prompt::Chat(vec![ChatMessage::user(question)]), &p, &mut |_| Flow::Continue).unwrap();
        (g, s)
    };
    let (with, mut s) = ask(true, "Do you know what my cat is called?");
    assert!(!with.memories.is_empty());
    assert!(with.text.contains("Tavimor"), "{:?}", with.text);
    // Off: the same prompt runs on the base alone (bit-identical logits).
    let (without, mut off) = ask(false, "Do you know what my cat is called?");
    assert_eq!(without.prompt_tokens, with.prompt_tokens);
    let tokens = off.cached_tokens()[..without.prompt_tokens].to_vec();
    let base = engine.new_session().logits_all(&tokens).unwrap();
    assert_eq!(off.logits_all(&tokens).unwrap(), base);
    // A session that used the reader and then runs tokens directly runs the base again.
    assert_eq!(s.logits_all(&tokens).unwrap(), base);
}
