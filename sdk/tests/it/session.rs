//! Sessions: KV-cache reuse, chunked prefill, stop conditions, streaming, cancellation,
//! hooks, threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use tailor::{
    ChatMessage, Error, FinishReason, Flow, GenerateParams, Hooks, LinearDelta, LowRank, LowRankTerm, Proj, Prompt,
    ResidualHook,
    SessionConfig,
};

use crate::common::{spec, tiny};

fn greedy(max_tokens: usize) -> GenerateParams {
    let mut p = GenerateParams::default();
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    p
}

#[test]
fn engine_and_session_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<tailor::Engine>();
    send_sync::<tailor::CancelHandle>();
    send::<tailor::Session>();
}

#[test]
fn incremental_prefill_and_decode_equal_full_recompute_exactly() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q4_1, 64, rand::random()), 2);
    let tokens: Vec<u32> = (0..30).map(|i| (i * 7 + 3) % 260).collect();
    let vocab = engine.model_config().vocab_size;
    let full = engine.new_session().logits_all(&tokens).unwrap();
    // Same tokens fed as a prefix, then one by one, then a chunk: the cache reuse path.
    let mut s = engine.new_session();
    let mut last = s.feed(&tokens[..11]).unwrap();
    assert_eq!(last, full[10 * vocab..11 * vocab]);
    for (i, &t) in tokens[11..20].iter().enumerate() {
        last = s.feed(&[t]).unwrap();
        assert_eq!(last, full[(11 + i) * vocab..(12 + i) * vocab], "position {}", 11 + i);
    }
    last = s.feed(&tokens[20..]).unwrap();
    assert_eq!(last, full[29 * vocab..30 * vocab]);
}

#[test]
fn thread_count_does_not_change_results() {
    let sp = spec(GgmlDType::Q8_0, 64, rand::random());
    let (_d1, _p1, e1) = tiny(sp.clone(), 1);
    let (_d2, _p2, e3) = tiny(sp, 3);
    let tokens: Vec<u32> = (0..25).map(|i| (i * 13 + 1) % 260).collect();
    assert_eq!(e1.new_session().logits_all(&tokens).unwrap(), e3.new_session().logits_all(&tokens).unwrap());
}

#[test]
fn follow_up_turn_reuses_the_cache_and_matches_a_fresh_session() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, rand::random()), 2);
    let mut s = engine.new_session();
    let p = greedy(12);
    let first = s.chat("the answer", &p, &mut |_| Flow::Continue).unwrap();
    assert_eq!(first.reused_tokens, 0);
    let second = s.chat("in there", &p, &mut |_| Flow::Continue).unwrap();
    assert!(second.reused_tokens > first.prompt_tokens, "reused {} of {}", second.reused_tokens, second.prompt_tokens);
    // A fresh session given the whole conversation generates the same answer.
    let mut fresh = engine.new_session();
    let mut msgs = s.history()[..3].to_vec();
    assert_eq!(msgs[2], ChatMessage::user("in there"));
    msgs.truncate(3);
    let again = fresh.generate(&Prompt::Chat(msgs), &p, &mut |_| Flow::Continue).unwrap();
    assert_eq!(again.reused_tokens, 0);
    assert_eq!(again.token_ids, second.token_ids);
}

#[test]
fn streaming_stop_strings_and_limits() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, rand::random()), 2);
    let mut s = engine.new_session();
    let prompt = Prompt::Text("<|im_start|>user\nthe there in a<|im_end|>\n".into());
    let mut streamed = String::new();
    let g = s.generate(&prompt, &greedy(40), &mut |ev| {
        streamed.push_str(ev.text);
        Flow::Continue
    }).unwrap();
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.token_ids.len(), 40);
    assert_eq!(streamed, g.text);
    assert_eq!(g.text, engine.tokenizer().decode(&g.token_ids, true));

    // Stop at a piece of that text: the answer is the text before it.
    let chars: Vec<(usize, char)> = g.text.char_indices().collect();
    if chars.len() >= 6 {
        let (a, _) = chars[chars.len() / 2];
        let b = chars.get(chars.len() / 2 + 2).map_or(g.text.len(), |c| c.0);
        let stop = g.text[a..b].to_string();
        let cut = g.text.find(&stop).unwrap();
        let mut p = greedy(40);
        p.stop = vec![stop.clone()];
        let mut streamed = String::new();
        let h = s.generate(&prompt, &p, &mut |ev| {
            streamed.push_str(ev.text);
            Flow::Continue
        }).unwrap();
        assert_eq!(h.finish_reason, FinishReason::Stop, "stop {stop:?}");
        assert_eq!(h.text, g.text[..cut]);
        assert_eq!(streamed, h.text);
        assert!(h.reused_tokens > 0);
    }

    // The callback stops generation.
    let mut n = 0;
    let h = s.generate(&prompt, &greedy(40), &mut |_| {
        n += 1;
        if n == 5 { Flow::Stop } else { Flow::Continue }
    }).unwrap();
    assert_eq!(h.finish_reason, FinishReason::Callback);
    assert_eq!(h.token_ids.len(), 5);
}

#[test]
fn context_limits_are_enforced() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, rand::random()), 1);
    let mut s = engine.session_with(SessionConfig::with_context(16).with_policy(tailor::ContextPolicy::Stop));
    let too_long = Prompt::Tokens((0..17).collect());
    match s.generate(&too_long, &greedy(4), &mut |_| Flow::Continue) {
        Err(Error::ContextOverflow { needed: 17, context: 16 }) => {}
        other => panic!("{other:?}"),
    }
    let g = s.generate(&Prompt::Tokens((3..13).collect()), &greedy(100), &mut |_| Flow::Continue).unwrap();
    assert_eq!(g.finish_reason, FinishReason::ContextFull);
    assert_eq!(g.prompt_tokens + g.token_ids.len(), 17, "the last token needs no cache slot");
    assert!(matches!(s.generate(&Prompt::Text(String::new()), &greedy(4), &mut |_| Flow::Continue), Err(Error::EmptyPrompt)));
    assert!(matches!(s.generate(&Prompt::Tokens(vec![1, 99_999]), &greedy(4), &mut |_| Flow::Continue), Err(Error::InvalidArgument { .. })));
    let mut bad = greedy(4);
    bad.sampling.top_p = 0.0;
    assert!(matches!(s.generate(&Prompt::Tokens(vec![5]), &bad, &mut |_| Flow::Continue), Err(Error::InvalidArgument { .. })));
}

#[test]
fn cancel_from_another_thread() {
    let mut sp = spec(GgmlDType::Q8_0, 64, rand::random());
    sp.context_length = 4096;
    let (_d, _p, engine) = tiny(sp, 1);
    let mut s = engine.new_session();
    let cancel = s.cancel_handle();
    let started = Arc::new(AtomicUsize::new(0));
    let st = started.clone();
    let t = std::thread::spawn(move || {
        while st.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        cancel.cancel();
    });
    let g = s.generate(&Prompt::Tokens(vec![5, 6, 7]), &greedy(3000), &mut |_| {
        started.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(1));
        Flow::Continue
    }).unwrap();
    t.join().unwrap();
    assert_eq!(g.finish_reason, FinishReason::Cancelled);
    assert!(g.token_ids.len() < 3000);
    // The next generation is not affected by the old cancel.
    let h = s.generate(&Prompt::Tokens(vec![5, 6, 7]), &greedy(3), &mut |_| Flow::Continue).unwrap();
    assert_eq!(h.finish_reason, FinishReason::Length);
}

/// Terms whose `B` is zero (with negative zeros): they run through the fused kernel and must
/// leave the base bit-identical.
struct ZeroDelta {
    terms: Vec<Vec<LowRankTerm>>,
    calls: AtomicUsize,
}
impl ZeroDelta {
    fn new(engine: &tailor::Engine) -> Self {
        let shapes = engine.base_shapes();
        let terms = Proj::ALL
            .iter()
            .map(|p| {
                let (i, o) = shapes.in_out(tailor::lora::target_of(*p));
                let a: Vec<f32> = (0..2 * i).map(|j| (j as f32 * 0.37).sin()).collect();
                let bt: Vec<f32> = (0..2 * o).map(|j| if j % 3 == 0 { -0.0 } else { 0.0 }).collect();
                vec![LowRankTerm { factors: Arc::new(LowRank::new(2, i, o, &a, &bt).unwrap()), scale: 1.5 }]
            })
            .collect();
        Self { terms, calls: AtomicUsize::new(0) }
    }
}
impl LinearDelta for ZeroDelta {
    fn terms(&self, _: usize, proj: Proj) -> &[LowRankTerm] {
        self.calls.fetch_add(1, Ordering::SeqCst);
        &self.terms[Proj::ALL.iter().position(|p| *p == proj).unwrap()]
    }
}

struct Steer {
    layer: usize,
    scale: f32,
    calls: AtomicUsize,
}
impl ResidualHook for Steer {
    fn applies_to(&self, layer: usize) -> bool {
        layer == self.layer
    }
    fn after_layer(&self, layer: usize, hidden: &mut [f32], _n: usize) {
        assert_eq!(layer, self.layer);
        self.calls.fetch_add(1, Ordering::SeqCst);
        for (i, h) in hidden.iter_mut().enumerate() {
            *h += self.scale * ((i % 7) as f32 - 3.0);
        }
    }
}

#[test]
fn zero_hooks_are_exactly_the_base_and_nonzero_ones_act() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q4_1, 64, rand::random()), 2);
    let tokens: Vec<u32> = (0..9).map(|i| (i * 31 + 5) % 260).collect();
    let base = engine.new_session().logits_all(&tokens).unwrap();
    let mut s = engine.new_session();
    let delta = Arc::new(ZeroDelta::new(&engine));
    let steer0 = Arc::new(Steer { layer: 1, scale: 0.0, calls: AtomicUsize::new(0) });
    s.set_hooks(Hooks { linear: Some(delta.clone()), residual: Some(steer0.clone()) });
    assert_eq!(s.logits_all(&tokens).unwrap(), base);
    assert_eq!(delta.calls.load(Ordering::SeqCst), 7 * engine.model_config().n_layers * 2, "2 prefill chunks of 7");
    assert_eq!(steer0.calls.load(Ordering::SeqCst), 2);
    let steer = Arc::new(Steer { layer: 0, scale: 0.5, calls: AtomicUsize::new(0) });
    s.set_hooks(Hooks { linear: None, residual: Some(steer) });
    assert_ne!(s.logits_all(&tokens).unwrap(), base);
}

#[test]
fn concurrent_sessions_share_one_engine() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, rand::random()), 2);
    let prompts: Vec<Vec<u32>> = (0..4).map(|k| (0..8).map(|i| (i * 17 + k * 29 + 3) % 260).collect()).collect();
    let serial: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| engine.new_session().generate(&Prompt::Tokens(p.clone()), &greedy(16), &mut |_| Flow::Continue).unwrap().token_ids)
        .collect();
    let handles: Vec<_> = prompts
        .into_iter()
        .map(|p| {
            let e = engine.clone();
            std::thread::spawn(move || {
                e.new_session().generate(&Prompt::Tokens(p), &greedy(16), &mut |_| Flow::Continue).unwrap().token_ids
            })
        })
        .collect();
    let parallel: Vec<Vec<u32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(serial, parallel);
}

#[test]
fn logprobs_are_consistent() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, rand::random()), 2);
    let mut p = greedy(6);
    p.logprobs = Some(3);
    let g = engine.new_session().generate(&Prompt::Tokens(vec![7, 8, 9]), &p, &mut |_| Flow::Continue).unwrap();
    let lp = g.logprobs.unwrap();
    assert_eq!(lp.len(), 6);
    for (entry, &id) in lp.iter().zip(&g.token_ids) {
        assert_eq!(entry.top_logprobs.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(entry.top_logprobs[0].logprob, entry.logprob);
        assert_eq!(entry.bytes, engine.tokenizer().token_bytes(id));
        assert!(entry.top_logprobs.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(entry.logprob <= 0.0);
    }
}

#[test]
fn stop_strings_never_split_characters_in_random_text() {
    // The tiny model's byte tokens make text full of multi-byte characters and U+FFFD; stop
    // strings of every length must be searched on character boundaries.
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, rand::random()), 2);
    let mut s = engine.new_session();
    for seed in 0..40u64 {
        let mut p = greedy(30);
        p.sampling.temperature = 1.5;
        p.sampling.seed = Some(seed);
        p.stop = vec!["zq".into(), "\u{FFFD}\u{FFFD}\u{FFFD}".into(), "é!".into(), "x".repeat((seed % 5) as usize + 1)];
        let mut streamed = String::new();
        let g = s.generate(&Prompt::Tokens(vec![5, 200, 201, 202]), &p, &mut |ev| {
            streamed.push_str(ev.text);
            Flow::Continue
        }).unwrap();
        assert_eq!(streamed, g.text, "seed {seed}");
        for stop in &p.stop {
            assert!(!g.text.contains(stop.as_str()), "seed {seed}: {stop:?} in {:?}", g.text);
        }
    }
}
