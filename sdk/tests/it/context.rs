//! Long conversations: quantized KV caches, the sliding context (chat prompts that lose their
//! oldest exchanges, context shifts during an answer, cache runs shifted into place) and
//! conversation memory.

use std::sync::{Arc, Mutex};

use candle_core::quantized::GgmlDType;
use tailor::profile::{BertEmbedder, MemoryConfig, MemoryStore};
use tailor::{
    ChatMessage, ContextPolicy, Engine, EngineConfig, FinishReason, Flow, GenerateParams, KvCacheType,
    MemoryPromptConfig, ModelCache, Prompt, SessionConfig,
};

use crate::common::{spec, tiny, TempDir};

fn greedy(max_tokens: usize) -> GenerateParams {
    let mut p = GenerateParams::default();
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    p
}

/// A tiny model whose heads have 32 dimensions (what the quantized caches need).
fn tiny32(layers: usize, seed: u64) -> (TempDir, std::path::PathBuf, Engine) {
    let mut s = spec(GgmlDType::Q8_0, 128, seed);
    s.n_layers = layers;
    tiny(s, 2)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn quantized_caches_stay_close_to_f16_and_take_less_memory() {
    let (_d, _p, engine) = tiny32(2, rand::random());
    let tokens: Vec<u32> = (0..60).map(|_| rand::random::<u32>() % 250 + 3).collect();
    let f16 = engine.new_session().logits_all(&tokens).unwrap();
    let spread = f16.iter().fold(0f32, |m, x| m.max(x.abs()));
    let f16_bytes = engine.new_session().kv_bytes_per_token();
    for (ty, tol) in [(KvCacheType::Q8_0, 0.02), (KvCacheType::Q4_0, 0.15)] {
        let mut s = engine.try_session_with(SessionConfig::default().with_cache_types(ty, ty)).unwrap();
        assert_eq!(s.cache_types(), (ty, ty));
        let q = s.logits_all(&tokens).unwrap();
        let d = max_abs_diff(&q, &f16);
        assert!(d <= tol * spread, "{ty}: logits differ by {d} (largest logit {spread})");
        assert!(d > 0.0, "{ty}: the cache type was not used");
        // Incremental decode over the quantized cache equals the full recompute.
        let mut inc = engine.try_session_with(SessionConfig::default().with_cache_types(ty, ty)).unwrap();
        inc.feed(&tokens[..40]).unwrap();
        let last = inc.feed(&tokens[40..]).unwrap();
        let vocab = engine.model_config().vocab_size;
        assert!(max_abs_diff(&last, &q[59 * vocab..]) < 1e-3 * spread.max(1.0));
        assert_eq!(s.kv_bytes_per_token() * 64, f16_bytes * ty.row_bytes(32), "{ty}");
    }
    // Mixed types are allowed; a head dimension the blocks do not divide is refused.
    assert!(engine.try_session_with(SessionConfig::default().with_cache_types(KvCacheType::Q8_0, KvCacheType::F16)).is_ok());
    let (_d2, _p2, hd16) = tiny(spec(GgmlDType::Q8_0, 64, 1), 1);
    assert!(hd16.try_session_with(SessionConfig::default().with_cache_types(KvCacheType::Q8_0, KvCacheType::Q8_0)).is_err());
    assert_eq!(hd16.session_with(SessionConfig::default().with_cache_types(KvCacheType::Q8_0, KvCacheType::Q8_0)).cache_types().0, KvCacheType::F16);
    let mut cfg = EngineConfig::default();
    cfg.cache_type_k = KvCacheType::Q4_0;
    assert!(Engine::load(_p2, cfg).is_err(), "an engine-wide cache type the model cannot take fails at load");
}

#[test]
fn stop_policy_ends_at_the_window_and_slide_goes_on() {
    let (_d, _p, engine) = tiny32(2, rand::random());
    let prompt = Prompt::Tokens((3..13).collect());
    let mut stop = engine.session_with(SessionConfig::with_context(32).with_policy(ContextPolicy::Stop));
    let g = stop.generate(&prompt, &greedy(100), &mut |_| Flow::Continue).unwrap();
    assert_eq!(g.finish_reason, FinishReason::ContextFull);
    assert_eq!(g.context_shifts, 0);

    let mut slide = engine.session_with(SessionConfig::with_context(32));
    let g = slide.generate(&prompt, &greedy(100), &mut |_| Flow::Continue).unwrap();
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.token_ids.len(), 100);
    assert!(g.context_shifts >= 3, "{} shifts", g.context_shifts);
    assert!(slide.cached_tokens().len() <= 32);
    assert_eq!(&slide.cached_tokens()[..4], &[3, 4, 5, 6], "the attention sinks stay");
}

/// With one layer, keys and values depend only on the tokens and their positions, so a cache
/// shifted in place must equal the cache of the kept tokens run afresh (up to the f16
/// rounding of the re-rotated keys): the next token's log-probability checks it.
#[test]
fn a_shifted_cache_equals_a_fresh_run_of_the_kept_tokens() {
    for ty in [KvCacheType::F16, KvCacheType::Q8_0] {
        let (_d, _p, engine) = tiny32(1, rand::random());
        let cfg = SessionConfig::with_context(40).with_cache_types(ty, ty);
        let mut s = engine.session_with(cfg.clone());
        let prompt: Vec<u32> = (0..30).map(|i| (i * 17 + 5) % 250 + 3).collect();
        let mut p = greedy(30);
        p.logprobs = Some(0);
        let g = s.generate(&Prompt::Tokens(prompt.clone()), &p, &mut |_| Flow::Continue).unwrap();
        assert!(g.context_shifts >= 1);
        // The cache now holds the kept tokens; the last generated token is not run yet.
        let kept = s.cached_tokens().to_vec();
        let last = *g.token_ids.last().unwrap();
        let shifted = s.feed(&[last]).unwrap();
        let mut fresh_tokens = kept.clone();
        fresh_tokens.push(last);
        let fresh = engine.session_with(cfg).logits_all(&fresh_tokens).unwrap();
        let vocab = engine.model_config().vocab_size;
        let fresh_last = &fresh[(fresh_tokens.len() - 1) * vocab..];
        let spread = fresh_last.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(&shifted, fresh_last);
        let tol = if ty == KvCacheType::F16 { 0.01 } else { 0.03 };
        assert!(d <= tol * spread, "{ty}: shifted logits differ by {d} (largest {spread})");
    }
}

#[test]
fn a_chat_longer_than_the_window_drops_old_turns_and_reuses_the_rest() {
    let (_d, _p, engine) = tiny32(2, rand::random());
    let mut s = engine.session_with(SessionConfig::with_context(160));
    s.set_history(vec![ChatMessage::system("You are terse.")]);
    let mut dropped = 0;
    let mut reused_after_drop = Vec::new();
    for turn in 0..40 {
        let g = s.chat(&format!("turn {turn}: tell me the weather there"), &greedy(6), &mut |_| Flow::Continue).unwrap();
        assert!(g.prompt_tokens + g.token_ids.len() <= 160 + 1);
        if g.dropped_messages > 0 {
            dropped += g.dropped_messages;
            reused_after_drop.push(g.reused_tokens);
        }
        assert_eq!(s.history()[0].role, "system", "the system prompt stays");
        assert_eq!(s.history().last().unwrap().role, "assistant");
    }
    assert!(dropped >= 20, "{dropped} messages dropped over 40 turns");
    assert!(s.history().len() < 40, "the history is bounded: {}", s.history().len());
    // After a drop, the turns that stayed were shifted into place, not run again.
    let system = s.prompt_tokens(&Prompt::Chat(vec![ChatMessage::system("You are terse.")])).unwrap().len();
    assert!(reused_after_drop.iter().all(|&r| r > system + 16), "reused after drops: {reused_after_drop:?} (system {system})");
    // The last message alone too long for the window is still an error.
    let long = "word ".repeat(400);
    assert!(matches!(s.chat(&long, &greedy(4), &mut |_| Flow::Continue), Err(tailor::Error::ContextOverflow { .. })));
}

fn embedder() -> Arc<BertEmbedder> {
    let root = std::env::var_os("TAILOR_HOME").map(std::path::PathBuf::from).or_else(ModelCache::default_root).expect("a cache dir");
    let dir = ModelCache::new(root).embedder_dir();
    Arc::new(BertEmbedder::load(&dir).unwrap_or_else(|e| panic!("the embedder at {} ({e}): run `tailor models fetch`", dir.display())))
}

#[test]
fn conversation_memory_brings_back_what_slid_out_of_the_window() {
    let (_d, _p, engine) = tiny32(2, 5);
    let dir = TempDir::new("conversation-memory");
    let store = MemoryStore::open(dir.path("profile.db"), embedder(), MemoryConfig::default()).unwrap();
    let shared = Arc::new(Mutex::new(store));
    let mut cfg = MemoryPromptConfig::default();
    cfg.record_turns = true;
    let mut s = engine.session_with(SessionConfig::with_context(600));
    s.set_memory(Some(shared.clone()), cfg);
    let fact = "My sister Ada lives in Lisbon and plays the cello.";
    s.chat(fact, &greedy(4), &mut |_| Flow::Continue).unwrap();
    let id = {
        let st = shared.lock().unwrap();
        let page = st.list(None, 10).unwrap();
        let m = page.memories.iter().find(|m| m.text == fact).expect("the turn was stored");
        assert_eq!(m.metadata["kind"], "conversation");
        m.id
    };
    // While the turn is in the window it is not retrieved again.
    let g = s.chat("Where does my sister live?", &greedy(4), &mut |_| Flow::Continue).unwrap();
    assert!(g.memories.iter().all(|m| m.id != id), "{:?}", g.memories);
    // Questions are not stored as memories.
    assert_eq!(shared.lock().unwrap().len().unwrap(), 1);
    let mut seen_drop = false;
    for i in 0..30 {
        let g = s.chat(&format!("Note number {i}: the bus was late again this morning"), &greedy(4), &mut |_| Flow::Continue).unwrap();
        seen_drop |= g.dropped_messages > 0;
    }
    assert!(seen_drop);
    assert!(s.history().iter().all(|m| m.content != fact), "the fact slid out of the window");
    let g = s.chat("Where does my sister live?", &greedy(4), &mut |_| Flow::Continue).unwrap();
    assert_eq!(g.memories.first().map(|m| m.id), Some(id), "{:?}", g.memories);
    // Forgotten like any memory.
    shared.lock().unwrap().forget(id).unwrap();
    let g = s.chat("Where does my sister live?", &greedy(4), &mut |_| Flow::Continue).unwrap();
    assert!(g.memories.iter().all(|m| m.id != id));
}
