//! One endless conversation on the real model: a chat three times longer than its window
//! (1,024 tokens, a q8_0 KV cache) never hits `context_full`, its answers stay English text
//! without loops, and, with conversation memory on, a fact said at the start is recalled into
//! the prompt after it has slid out of the window.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tailor::profile::{BertEmbedder, MemoryConfig, MemoryStore};
use tailor::{ChatMessage, Engine, EngineConfig, FinishReason, Flow, GenerateParams, KvCacheType, MemoryPromptConfig, ModelCache, SessionConfig};

/// Passages of the conversation (written for this test).
const PASSAGES: [&str; 6] = [
    "The river town of Varnholm builds wooden boats every winter. Carpenters steam oak planks until they bend, fit them to the frames, and seal the seams with tar before the ice melts in spring.",
    "A beekeeper checks her hives once a week in summer. She looks for the queen, counts the frames of capped honey, and adds a new box on top when the bees run out of room.",
    "The night train from the capital to the coast stops at nine stations. Passengers sleep in narrow bunks, and the conductor wakes them with tea half an hour before the sea comes into view.",
    "Glassblowers gather molten glass on the end of a long pipe, blow a bubble into it, and turn it constantly so that it stays round while they shape the rim with wet wooden tools.",
    "In the mountain village the bakery opens at five. The baker shapes rye loaves by hand, scores them with a razor, and bakes them on stone until the crust cracks as it cools.",
    "An old observatory on the hill has a brass telescope that students still use. On clear nights they track the moons of Jupiter and sketch their positions in a notebook.",
];

fn content_words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() > 5).map(str::to_lowercase).collect()
}

/// Share of repeated 4-grams of words (a loop shows as a share near 1).
fn repeated_4grams(text: &str) -> f64 {
    let w: Vec<&str> = text.split_whitespace().collect();
    if w.len() < 8 {
        return 0.0;
    }
    let grams: Vec<_> = w.windows(4).collect();
    let unique: std::collections::HashSet<_> = grams.iter().collect();
    1.0 - unique.len() as f64 / grams.len() as f64
}

#[test]
fn a_conversation_three_times_the_window_slides_and_remembers() {
    let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(ModelCache::default_root).expect("a cache dir");
    let cache = ModelCache::new(root);
    assert!(cache.base_model_path().exists(), "the real model is missing: run `tailor models fetch`");
    let mut ec = EngineConfig::default();
    let ty = match std::env::var("DBG_KV").as_deref() { Ok("f16") => KvCacheType::F16, _ => KvCacheType::Q8_0 };
    ec.cache_type_k = ty;
    ec.cache_type_v = ty;
    let engine = Engine::load(cache.base_model_path(), ec).unwrap();
    let dir = std::env::temp_dir().join(format!("tailor-long-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let embedder = Arc::new(BertEmbedder::load(&cache.embedder_dir()).unwrap());
    let store = Arc::new(Mutex::new(MemoryStore::open(dir.join("profile.db"), embedder, MemoryConfig::default()).unwrap()));

    let window = 1024;
    let mut s = engine.session_with(SessionConfig::with_context(window));
    assert_eq!(s.cache_types(), (ty, ty));
    let mut mc = MemoryPromptConfig::default();
    mc.record_turns = true;
    s.set_memory(Some(store.clone()), mc);
    s.set_history(vec![ChatMessage::system("You are a helpful assistant. Answer briefly.")]);
    // Greedy, with the model's recommended repetition penalty as the loop guard (what `chat`
    // runs, at temperature 0).
    let mut params = GenerateParams::default();
    params.sampling = engine.recommended_sampling();
    params.sampling.temperature = 0.0;
    params.max_tokens = 40;

    let fact = "My sister Ada is a vet in Leeds and plays the cello.";
    s.chat(fact, &params, &mut |_| Flow::Continue).unwrap();
    let (mut passed, mut dropped, mut turns) = (0usize, 0usize, 0usize);
    let mut on_topic = 0usize;
    while passed < 3 * window {
        let p = PASSAGES[turns % PASSAGES.len()];
        let g = s.chat(&format!("Read this: {p} Now tell me in one sentence what the passage is about."), &params, &mut |_| Flow::Continue).unwrap();
        assert_ne!(g.finish_reason, FinishReason::ContextFull);
        assert!(g.prompt_tokens + g.token_ids.len() <= window + 1);
        assert!(repeated_4grams(&g.text) < 0.5, "turn {turns} loops: {:?}", g.text);
        assert!(g.text.chars().filter(|c| c.is_ascii_alphabetic()).count() * 2 > g.text.len(), "turn {turns}: {:?}", g.text);
        let words = content_words(p);
        if content_words(&g.text).iter().filter(|w| words.contains(w)).count() >= 1 {
            on_topic += 1;
        }
        passed += g.prompt_tokens - g.reused_tokens + g.token_ids.len();
        dropped += g.dropped_messages;
        turns += 1;
    }
    assert!(dropped > 0 && s.history().iter().all(|m| m.content != fact), "the first turn slid out ({dropped} dropped)");
    // Not asserted: in a long run of near-identical requests this 135M model starts copying an
    // earlier answer (with or without sliding: it begins before the first drop); reported.
    eprintln!("{turns} turns, {passed} tokens through a {window}-token window, {dropped} messages dropped, {on_topic} answers share a word with their passage");
    assert!(on_topic >= 6, "the first passages are answered ({on_topic} of {turns})");

    let g = s.chat("Which city does my sister work in?", &params, &mut |_| Flow::Continue).unwrap();
    eprintln!("after sliding: {:?} (memories {:?})", g.text, g.memories.iter().map(|m| &m.text).collect::<Vec<_>>());
    assert!(g.memories.iter().any(|m| m.text == fact), "the fact was recalled: {:?}", g.memories);
    // Not asserted: whether the 135M model answers from the recalled memory rather than from
    // the passages filling its window (it often does not; the e2e personalization test checks
    // answering from memory in a short conversation).
    let _ = std::fs::remove_dir_all(&dir);
}
