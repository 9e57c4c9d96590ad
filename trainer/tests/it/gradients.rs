//! LoRA gradients against finite differences and against candle autograd on the dense
//! (dequantized) model.

use std::collections::BTreeMap;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, Var, D};
use tailor::adapters::{LoraAdapter, Target};
use tailor::model::qmatrix::QMatrix;
use tailor::Engine;
use tailor_trainer::testing::{loss, loss_and_grads};

use crate::common::{fresh_seed, random_tokens, tiny};

fn targets_after(tokens: &[u32], first: usize) -> Vec<(usize, u32)> {
    (first..tokens.len()).map(|i| (i - 1, tokens[i])).collect()
}

/// Flat (A then B, per pair in adapter order) view of an adapter's parameters.
fn flat(a: &LoraAdapter) -> Vec<f32> {
    a.iter().flat_map(|(_, w)| w.a().iter().chain(w.b()).copied().collect::<Vec<_>>()).collect()
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Central differences (step 1e-2, f32 forward) on 48 random coordinates of A and B of a
/// random adapter on an F32 tiny model: relative L2 error under 3%.
#[test]
fn gradients_match_finite_differences() {
    use rand::{Rng, SeedableRng};
    let seed = fresh_seed();
    let (_d, engine) = tiny(GgmlDType::F32, seed);
    let tokens = random_tokens(&engine, 12, seed);
    let targets = targets_after(&tokens, 4);
    let adapter = tailor::testing::random_lora(&engine, 3, 0.3, seed + 7).unwrap();
    let (_, grads) = loss_and_grads(&engine, &adapter, &tokens, &targets, false).unwrap();
    let keys: Vec<(usize, Target)> = adapter.iter().map(|(k, _)| k).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut got, mut fd) = (Vec::new(), Vec::new());
    let eps = 1e-2f32;
    for _ in 0..48 {
        let (l, t) = keys[rng.random_range(0..keys.len())];
        let on_b = rng.random_bool(0.5);
        let w = adapter.get(l, t).unwrap();
        let i = rng.random_range(0..if on_b { w.b().len() } else { w.a().len() });
        let eval = |delta: f32| {
            let mut a = adapter.clone();
            let w = a.get_mut(l, t).unwrap();
            if on_b { w.b_mut()[i] += delta } else { w.a_mut()[i] += delta }
            loss(&engine, Some(&a), &tokens, &targets).unwrap()
        };
        fd.push(((eval(eps) - eval(-eps)) / (2.0 * eps as f64)) as f32);
        let g = grads.get(l, t).unwrap();
        got.push(if on_b { g.b()[i] } else { g.a()[i] });
    }
    let err = rel_l2(&got, &fd);
    assert!(err < 0.03, "seed {seed}: relative L2 error {err}\nanalytic {got:?}\nfinite differences {fd:?}");
}

fn dense(m: &QMatrix) -> Tensor {
    Tensor::from_vec(m.dequantize(), (m.rows(), m.cols()), &Device::Cpu).unwrap()
}

/// The same loss written with candle ops on the dequantized weights, differentiated by
/// candle's autograd. Returns the loss and the gradients of every (layer, target)'s A and B
/// (B's rows in PEFT order).
type PairGrads = BTreeMap<(usize, Target), (Vec<f32>, Vec<f32>)>;

fn candle_reference(engine: &Engine, adapter: &LoraAdapter, tokens: &[u32], targets: &[(usize, u32)]) -> (f64, PairGrads) {
    let dev = Device::Cpu;
    let cfg = engine.model_config();
    let w = engine.weights();
    let layout = engine.qk_layout();
    let s = adapter.scale() as f64;
    let (n, hd, nh, nkv) = (tokens.len(), cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
    let group = nh / nkv;
    let mut vars: BTreeMap<(usize, Target), (Var, Var)> = BTreeMap::new();
    for ((l, t), lw) in adapter.iter() {
        let (r, i, o) = (lw.r(), lw.in_features(), lw.out_features());
        let a = Var::from_tensor(&Tensor::from_vec(lw.a().to_vec(), (r, i), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::from_vec(layout.hf_to_file(t, lw.b(), o, r), (o, r), &dev).unwrap()).unwrap();
        vars.insert((l, t), (a, b));
    }
    let lin = |x: &Tensor, wm: &QMatrix, l: usize, t: Target| -> Tensor {
        let y = x.matmul(&dense(wm).t().unwrap()).unwrap();
        match vars.get(&(l, t)) {
            None => y,
            Some((a, b)) => {
                let u = x.matmul(&a.as_tensor().t().unwrap()).unwrap();
                (y + (u.matmul(&b.as_tensor().t().unwrap()).unwrap() * s).unwrap()).unwrap()
            }
        }
    };
    let rms = |x: &Tensor, g: &[f32]| -> Tensor {
        let g = Tensor::from_vec(g.to_vec(), (1, g.len()), &dev).unwrap();
        let r = x.sqr().unwrap().mean_keepdim(1).unwrap().affine(1.0, cfg.rms_eps as f64).unwrap().sqrt().unwrap().recip().unwrap();
        x.broadcast_mul(&r).unwrap().broadcast_mul(&g).unwrap()
    };
    // RoPE (interleaved pairs, as llama GGUF files need).
    let half = hd / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..n {
        for i in 0..half {
            let f = (cfg.rope_base as f64).powf(-2.0 * i as f64 / cfg.rope_dims as f64);
            cos.push((p as f64 * f).cos() as f32);
            sin.push((p as f64 * f).sin() as f32);
        }
    }
    let cos = Tensor::from_vec(cos, (n, 1, half, 1), &dev).unwrap();
    let sin = Tensor::from_vec(sin, (n, 1, half, 1), &dev).unwrap();
    let rope = |x: &Tensor, heads: usize| -> Tensor {
        let x = x.reshape((n, heads, half, 2)).unwrap();
        let (a, b) = (x.narrow(3, 0, 1).unwrap(), x.narrow(3, 1, 1).unwrap());
        let ya = (a.broadcast_mul(&cos).unwrap() - b.broadcast_mul(&sin).unwrap()).unwrap();
        let yb = (a.broadcast_mul(&sin).unwrap() + b.broadcast_mul(&cos).unwrap()).unwrap();
        Tensor::cat(&[ya, yb], 3).unwrap().reshape((n, heads * hd)).unwrap()
    };
    let mask: Vec<f32> = (0..n * n).map(|i| if i % n > i / n { -1e9 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (1, n, n), &dev).unwrap();
    let softmax_last = |x: &Tensor| -> Tensor {
        let m = x.max_keepdim(D::Minus1).unwrap().detach();
        let e = x.broadcast_sub(&m).unwrap().exp().unwrap();
        e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
    };
    let ids = Tensor::from_vec(tokens.to_vec(), n, &dev).unwrap();
    let mut x = dense(&w.token_embd).index_select(&ids, 0).unwrap();
    for (l, lw) in w.layers.iter().enumerate() {
        let xn = rms(&x, &lw.attn_norm);
        let q = rope(&lin(&xn, &lw.wq, l, Target::Q), nh);
        let k = rope(&lin(&xn, &lw.wk, l, Target::K), nkv);
        let v = lin(&xn, &lw.wv, l, Target::V);
        let heads = |t: &Tensor, kv: bool| -> Tensor {
            let t = if kv {
                t.reshape((n, nkv, 1, hd)).unwrap().broadcast_as((n, nkv, group, hd)).unwrap().contiguous().unwrap().reshape((n, nh, hd)).unwrap()
            } else {
                t.reshape((n, nh, hd)).unwrap()
            };
            t.transpose(0, 1).unwrap().contiguous().unwrap()
        };
        let (q3, k3, v3) = (heads(&q, false), heads(&k, true), heads(&v, true));
        let scores = (q3.matmul(&k3.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap().broadcast_add(&mask).unwrap();
        let att = softmax_last(&scores).matmul(&v3).unwrap();
        let att = att.transpose(0, 1).unwrap().contiguous().unwrap().reshape((n, nh * hd)).unwrap();
        x = (x + lin(&att, &lw.wo, l, Target::O)).unwrap();
        let xn = rms(&x, &lw.ffn_norm);
        let g = lin(&xn, &lw.w_gate, l, Target::Gate);
        let sig = g.neg().unwrap().exp().unwrap().affine(1.0, 1.0).unwrap().recip().unwrap();
        let h = ((g * sig).unwrap() * lin(&xn, &lw.w_up, l, Target::Up)).unwrap();
        x = (x + lin(&h, &lw.w_down, l, Target::Down)).unwrap();
    }
    let xn = rms(&x, &w.output_norm);
    let pos = Tensor::from_vec(targets.iter().map(|&(p, _)| p as u32).collect::<Vec<_>>(), targets.len(), &dev).unwrap();
    let logits = xn.index_select(&pos, 0).unwrap().matmul(&dense(&w.output).t().unwrap()).unwrap();
    let m = logits.max_keepdim(1).unwrap().detach();
    let lse = (logits.broadcast_sub(&m).unwrap().exp().unwrap().sum_keepdim(1).unwrap().log().unwrap() + m).unwrap();
    let logp = logits.broadcast_sub(&lse).unwrap();
    let vocab = cfg.vocab_size;
    let mut onehot = vec![0f32; targets.len() * vocab];
    for (i, &(_, t)) in targets.iter().enumerate() {
        onehot[i * vocab + t as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (targets.len(), vocab), &dev).unwrap();
    let loss = (logp * onehot).unwrap().sum_all().unwrap().neg().unwrap();
    let grads = loss.backward().unwrap();
    let value = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let mut out = BTreeMap::new();
    for ((l, t), (a, b)) in &vars {
        let ga = grads.get(a.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gb = grads.get(b.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (o, r) = b.as_tensor().dims2().unwrap();
        out.insert((*l, *t), (ga, layout.file_to_hf(*t, &gb, o, r)));
    }
    (value, out)
}

/// Every LoRA gradient equals candle autograd's on the dequantized model (Q8_0 tiny model,
/// f32 arithmetic both sides, different summation orders): relative L2 error under 1e-3 over
/// all parameters and per (layer, target) under 1e-2; the loss within 1e-4 relative.
/// Activation checkpointing gives the same gradients bit for bit.
#[test]
fn gradients_match_candle_autograd_on_the_dense_model() {
    let seed = fresh_seed();
    let (_d, engine) = tiny(GgmlDType::Q8_0, seed);
    let tokens = random_tokens(&engine, 70, seed); // > 48: several causal row blocks
    let targets = targets_after(&tokens, 30);
    let adapter = tailor::testing::random_lora(&engine, 4, 0.3, seed + 3).unwrap();
    let (ours, grads) = loss_and_grads(&engine, &adapter, &tokens, &targets, false).unwrap();
    let (want, reference) = candle_reference(&engine, &adapter, &tokens, &targets);
    assert!(((ours - want) / want).abs() < 1e-4, "seed {seed}: loss {ours} vs candle {want}");
    let (mut all_got, mut all_want) = (Vec::new(), Vec::new());
    for ((l, t), g) in grads.iter() {
        let (ra, rb) = &reference[&(l, t)];
        for (got, want, name) in [(g.a(), ra, "A"), (g.b(), rb, "B")] {
            let e = rel_l2(got, want);
            assert!(e < 1e-2, "seed {seed}: layer {l} {t:?} {name}: relative L2 error {e}");
            all_got.extend_from_slice(got);
            all_want.extend_from_slice(want);
        }
    }
    let e = rel_l2(&all_got, &all_want);
    assert!(e < 1e-3, "seed {seed}: relative L2 error {e} over all LoRA parameters");

    let (ck_loss, ck) = loss_and_grads(&engine, &adapter, &tokens, &targets, true).unwrap();
    assert_eq!(ck_loss, ours, "seed {seed}");
    assert_eq!(flat(&ck), flat(&grads), "seed {seed}: checkpointing changed the gradients");
}
