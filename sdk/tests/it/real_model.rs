//! Behaviour on the real SmolLM2-135M-Instruct GGUF (fetched by `tailor models fetch`, which
//! `.ci/run` does): tokenizer and greedy generation against llama.cpp golden files, logits
//! against candle-transformers' `quantized_llama`.
//!
//! The model is found at `$TAILOR_MODEL`, else in `$TAILOR_HOME`'s cache, else in the
//! platform cache directory. These tests fail (they do not skip) when it is missing.

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use serde::Deserialize;
use tailor::{ChatMessage, Engine, EngineConfig, Flow, GenerateParams, ModelCache, Prompt};

pub fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TAILOR_MODEL") {
        return PathBuf::from(p);
    }
    let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(ModelCache::default_root).expect("a cache dir");
    let p = ModelCache::new(root).base_model_path();
    assert!(p.exists(), "the real model is missing at {}: run `tailor models fetch` (or set TAILOR_MODEL)", p.display());
    p
}

pub fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let mut c = EngineConfig::default();
        c.threads = 2;
        Engine::load(model_path(), c).unwrap()
    })
}

fn data(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[derive(Deserialize)]
struct TokCase {
    text: String,
    ids: Vec<u32>,
}
#[derive(Deserialize)]
struct TokGolden {
    cases: Vec<TokCase>,
}

#[test]
fn tokenizer_matches_llama_cpp() {
    let g: TokGolden = serde_json::from_str(&data("tokenizer_golden.json")).unwrap();
    assert!(g.cases.len() >= 20);
    let mut bad = Vec::new();
    for c in &g.cases {
        let ids = engine().tokenize(&c.text).unwrap();
        if ids != c.ids {
            bad.push(format!("{:?}: ours {:?} llama.cpp {:?}", c.text, ids, c.ids));
        }
    }
    assert!(bad.is_empty(), "{} of {} differ:\n{}", bad.len(), g.cases.len(), bad.join("\n"));
}

#[derive(Deserialize)]
struct GreedyCase {
    messages: Vec<ChatMessage>,
    prompt: String,
    prompt_ids: Vec<u32>,
    output_ids: Vec<u32>,
    top5: Vec<Vec<(u32, f32)>>,
}
#[derive(Deserialize)]
struct GreedyGolden {
    n_predict: usize,
    cases: Vec<GreedyCase>,
}

/// Greedy decoding equals llama.cpp's token for token until a near tie. Both quantize
/// activations to 8 bits the way ggml's x86 code does, keep K and V in f16 and round the query
/// and the attention weights to f16, and run the same Q4_1/Q8_0 integer dot products; but the
/// f32 sums (dot products, RMSNorm, softmax, the f16 dot of `q·k`) run in other orders and
/// llama.cpp's f32 `expf`/`silu` are not ours, which moves logits by ~0.1–0.2. Greedy decoding
/// turns that into a different token wherever two candidates are that close. A divergence is
/// accepted only at such a near tie: our token within 0.5 of llama.cpp's choice in llama.cpp's
/// logits, and its choice within 0.5 of ours in our logits. The test prints where it happens
/// (measured: 2 of 5 conversations identical to the end; the others after 11, 4 and 3 tokens,
/// at gaps of 0.22, 0.09 and 0.15 in llama.cpp's own logits).
#[test]
fn greedy_generation_matches_llama_cpp() {
    let g: GreedyGolden = serde_json::from_str(&data("greedy_golden.json")).unwrap();
    let mut exact = 0;
    for (ci, c) in g.cases.iter().enumerate() {
        let prompt = engine().render_chat(&c.messages).unwrap();
        assert_eq!(prompt, c.prompt, "case {ci}: chat template");
        assert_eq!(engine().tokenize(&prompt).unwrap(), c.prompt_ids, "case {ci}: prompt tokens");
        let mut p = GenerateParams::default();
        p.max_tokens = g.n_predict;
        p.logprobs = Some(5);
        let out = engine().new_session().generate(&Prompt::Tokens(c.prompt_ids.clone()), &p, &mut |_| Flow::Continue).unwrap();
        // llama.cpp's list ends with the end-of-generation token it stopped at; ours does not.
        let mut ours = out.token_ids.clone();
        if out.finish_reason == tailor::FinishReason::Stop {
            ours.push(*c.output_ids.last().unwrap());
            assert!(engine().tokenizer().end_of_generation().contains(ours.last().unwrap()), "case {ci}: stopped without EOS");
        }
        let first_diff = ours.iter().zip(&c.output_ids).position(|(a, b)| a != b);
        match first_diff {
            None => {
                assert_eq!(ours.len(), c.output_ids.len(), "case {ci}: length");
                exact += 1;
            }
            Some(i) => {
                let top = &c.top5[i];
                let ours = out.token_ids[i];
                let gap = top.iter().find(|(id, _)| *id == ours).map(|(_, l)| top[0].1 - l);
                eprintln!(
                    "case {ci}: identical for {i} tokens, then ours {ours} vs llama.cpp {} (llama.cpp's logit gap between them: {gap:?})",
                    c.output_ids[i]
                );
                let gap = gap.unwrap_or_else(|| panic!("case {ci}: token {i}: our choice {ours} is not in llama.cpp's top 5"));
                assert!(gap < 0.5, "case {ci}: divergence at token {i} where llama.cpp's choice is clear (gap {gap})");
                // And symmetrically in our logits (log-probabilities differ from logits by a
                // constant per position, so their differences are logit gaps).
                let lp = &out.logprobs.as_ref().unwrap()[i];
                let theirs = String::from_utf8_lossy(engine().tokenizer().token_bytes(c.output_ids[i])).into_owned();
                let our_gap = lp.top_logprobs.iter().find(|t| t.token == theirs).map(|t| lp.logprob - t.logprob);
                let our_gap = our_gap.unwrap_or_else(|| panic!("case {ci}: token {i}: llama.cpp's choice is not in our top 5"));
                assert!(our_gap < 0.5, "case {ci}: token {i}: our margin over llama.cpp's choice is {our_gap}");
                eprintln!("  (our margin over llama.cpp's choice: {our_gap:.3})");
            }
        }
    }
    eprintln!("{exact}/{} conversations identical to llama.cpp", g.cases.len());
}

/// Logits at every position of a chat prompt against candle-transformers' reference on the same
/// file. Both quantize activations to 8 bits before each quantized matmul, with different
/// rounding, so over 30 layers the logits drift apart by quantization noise: max |Δ| ≤ 5% of
/// the logit range, ≤ 1.5 among tokens within 10 of the best (both carry the
/// noise of 8-bit activations; see `logits_match_a_dense_recomputation` for the dense reference), argmax equal at ≥ 90% of
/// positions and different only where the reference's top-2 margin is under 0.5.
#[test]
fn logits_match_candle_reference_on_the_real_model() {
    let e = engine();
    let ids = e.tokenize(&e.render_chat(&[ChatMessage::user("Name three colours of the rainbow.")]).unwrap()).unwrap();
    let mut f = std::fs::File::open(model_path()).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut m = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
    let ours = e.new_session().logits_all(&ids).unwrap();
    let vocab = e.model_config().vocab_size;
    let mut agree = 0;
    let mut worst_top = 0f32;
    for (i, &t) in ids.iter().enumerate() {
        let x = Tensor::new(&[t], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let want = m.forward(&x, i).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let got = &ours[i * vocab..(i + 1) * vocab];
        let hi = want.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lo = want.iter().cloned().fold(f32::INFINITY, f32::min);
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff <= 0.05 * (hi - lo), "position {i}: max |Δ| {diff}, range {}", hi - lo);
        // Where it matters (tokens within 10 of the best), the two agree much more closely.
        let top_diff = got.iter().zip(&want).filter(|(_, w)| **w > hi - 10.0).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(top_diff <= 1.5, "position {i}: |Δ| {top_diff} among the likely tokens");
        worst_top = worst_top.max(top_diff);
        let am = |v: &[f32]| v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (j, &x)| if x > b.1 { (j, x) } else { b }).0;
        if am(got) == am(&want) {
            agree += 1;
        } else {
            let mut s = want.clone();
            s.sort_by(|a, b| b.total_cmp(a));
            assert!(s[0] - s[1] <= 0.5, "position {i}: argmax differs with a clear margin");
        }
    }
    eprintln!("top-1 agreement with candle reference: {agree}/{}; worst |Δ| among likely tokens {worst_top:.3}", ids.len());
    assert!(agree * 10 >= ids.len() * 9, "top-1 agreement {agree}/{}", ids.len());
}

#[test]
fn end_of_generation_tokens_are_llama_cpps() {
    #[derive(Deserialize)]
    struct Eog {
        eos_ids: Vec<u32>,
    }
    let g: Eog = serde_json::from_str(&data("greedy_golden.json")).unwrap();
    let mut ours = engine().tokenizer().end_of_generation().to_vec();
    ours.sort_unstable();
    assert_eq!(ours, g.eos_ids);
}

#[test]
fn multi_turn_chat_reuses_the_cache() {
    let e = engine();
    let mut s = e.new_session();
    let mut p = GenerateParams::default();
    p.max_tokens = 24;
    let a = s.chat("What is the capital of France?", &p, &mut |_| Flow::Continue).unwrap();
    assert!(!a.text.is_empty());
    let b = s.chat("And of Germany?", &p, &mut |_| Flow::Continue).unwrap();
    assert!(b.reused_tokens >= a.prompt_tokens, "reused {} of {}", b.reused_tokens, b.prompt_tokens);
    assert!(b.prompt_tokens - b.reused_tokens < 20, "only the new turn is prefilled");
}

/// A dense recomputation, independent of both quantized paths: every weight dequantized to f32
/// once, activations kept in f64, plain loops. Ours differs from it only by the 8-bit
/// quantization of activations before each quantized matmul (as llama.cpp does), which over 30
/// layers moves logits by up to ~1: ≤ 1.2 among the tokens within 10 of the best, ≤ 5% of the
/// logit range overall, same argmax unless the dense top-2 margin is under 1.2. (Measured:
/// 0.44–0.95 among likely tokens over the first 12 positions.)
#[test]
fn logits_match_a_dense_recomputation() {
    use tailor::model::gguf::GgufFile;
    use tailor::model::weights::ModelWeights;
    let e = engine();
    let g = GgufFile::open(model_path()).unwrap();
    let cfg = e.model_config().clone();
    let w = ModelWeights::from_gguf(&g, &cfg).unwrap();
    let ids = e.tokenize(&e.render_chat(&[ChatMessage::user("Tell me a joke about cats.")]).unwrap()).unwrap();
    let ids = &ids[..12.min(ids.len())];
    let (d, hd, nh, nkv) = (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
    let dense = |m: &tailor::model::qmatrix::QMatrix| m.dequantize();
    let matvec = |m: &[f32], x: &[f64], rows: usize| -> Vec<f64> {
        (0..rows).map(|r| m[r * x.len()..(r + 1) * x.len()].iter().zip(x).map(|(a, b)| *a as f64 * b).sum()).collect()
    };
    let rms = |x: &[f64], gain: &[f32]| -> Vec<f64> {
        let s = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + cfg.rms_eps as f64).sqrt();
        x.iter().zip(gain).map(|(v, g)| v / s * *g as f64).collect()
    };
    let rope = |v: &mut [f64], pos: usize| {
        for i in 0..hd / 2 {
            let theta = pos as f64 * (cfg.rope_base as f64).powf(-2.0 * i as f64 / hd as f64);
            let (c, s) = (theta.cos(), theta.sin());
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            v[2 * i] = a * c - b * s;
            v[2 * i + 1] = a * s + b * c;
        }
    };
    let layers: Vec<_> = w
        .layers
        .iter()
        .map(|l| (dense(&l.wq), dense(&l.wk), dense(&l.wv), dense(&l.wo), dense(&l.w_gate), dense(&l.w_up), dense(&l.w_down)))
        .collect();
    let embd = dense(&w.token_embd);
    let mut keys = vec![Vec::<Vec<f64>>::new(); cfg.n_layers];
    let mut vals = vec![Vec::<Vec<f64>>::new(); cfg.n_layers];
    let ours = e.new_session().logits_all(ids).unwrap();
    let vocab = cfg.vocab_size;
    let mut worst = 0f64;
    for (pos, &t) in ids.iter().enumerate() {
        let mut x: Vec<f64> = embd[t as usize * d..(t as usize + 1) * d].iter().map(|v| *v as f64).collect();
        for (l, lw) in w.layers.iter().enumerate() {
            let (wq, wk, wv, wo, wg, wu, wd) = &layers[l];
            let xn = rms(&x, &lw.attn_norm);
            let mut q = matvec(wq, &xn, nh * hd);
            let mut k = matvec(wk, &xn, nkv * hd);
            let v = matvec(wv, &xn, nkv * hd);
            for h in 0..nh {
                rope(&mut q[h * hd..(h + 1) * hd], pos);
            }
            for h in 0..nkv {
                rope(&mut k[h * hd..(h + 1) * hd], pos);
            }
            keys[l].push(k);
            vals[l].push(v);
            let mut att = vec![0f64; nh * hd];
            for h in 0..nh {
                let kh = h / (nh / nkv);
                let sc: Vec<f64> = keys[l].iter().map(|k| (0..hd).map(|i| q[h * hd + i] * k[kh * hd + i]).sum::<f64>() / (hd as f64).sqrt()).collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let ex: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = ex.iter().sum();
                for (j, v) in vals[l].iter().enumerate() {
                    for i in 0..hd {
                        att[h * hd + i] += ex[j] / z * v[kh * hd + i];
                    }
                }
            }
            let o = matvec(wo, &att, d);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let xn = rms(&x, &lw.ffn_norm);
            let gt = matvec(wg, &xn, cfg.ffn_dim);
            let up = matvec(wu, &xn, cfg.ffn_dim);
            let h: Vec<f64> = gt.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let dn = matvec(wd, &h, d);
            x.iter_mut().zip(&dn).for_each(|(a, b)| *a += b);
        }
        let xn = rms(&x, &w.output_norm);
        let want = matvec(&embd, &xn, vocab);
        let got = &ours[pos * vocab..(pos + 1) * vocab];
        let hi = want.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lo = want.iter().cloned().fold(f64::INFINITY, f64::min);
        let all = got.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0f64, f64::max);
        let top = got.iter().zip(&want).filter(|(_, w)| **w > hi - 10.0).map(|(a, b)| (*a as f64 - b).abs()).fold(0f64, f64::max);
        eprintln!("position {pos}: |Δ| {top:.3} among likely tokens, {all:.3} overall (range {:.1})", hi - lo);
        assert!(top <= 1.2, "position {pos}: |Δ| {top} among likely tokens");
        assert!(all <= 0.05 * (hi - lo), "position {pos}: |Δ| {all} overall");
        let am = |v: &[f64]| v.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (j, &x)| if x > b.1 { (j, x) } else { b });
        let (gw, _) = am(&got.iter().map(|v| *v as f64).collect::<Vec<_>>());
        let (ww, wv) = am(&want);
        if gw != ww {
            assert!(wv - want[gw] < 1.2, "position {pos}: argmax {gw} vs dense {ww}");
        }
        worst = worst.max(top);
    }
    eprintln!("worst |Δ| among likely tokens vs the dense recomputation: {worst:.3}");
}
