//! LoRA adapters on the decode path against a dense recomputation: the same model with
//! `W + w·s·BA` written into its (f32) weights.

use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tailor::adapters::{LoraAdapter, LoraSet, Target};
use tailor::{Engine, EngineConfig, Hooks, LoraHook};

use crate::common::{spec, tiny, TempDir};

/// A random rank-`r` adapter on every projection of every layer (entries in ±0.3).
pub fn random_adapter(engine: &Engine, r: usize, seed: u64) -> LoraAdapter {
    tailor::testing::random_lora(engine, r, 0.3, seed).unwrap()
}

/// Row `row` of a llama GGUF's q/k weight holds this row of the Hugging Face weight (llama.cpp's
/// converter reshapes rows as `[heads, 2, head_dim/2]` and swaps the last two axes).
fn hf_row(row: usize, out: usize, heads: usize) -> usize {
    let hd = out / heads;
    let (h, j) = (row / hd, row % hd);
    h * hd + (j % 2) * (hd / 2) + j / 2
}

/// Writes a copy of the GGUF at `src` (metadata as is) with every tensor passed through `f`
/// (given the file's metadata, the tensor's name and the tensor).
pub fn rewrite_gguf(src: &std::path::Path, dst: &std::path::Path, mut f: impl FnMut(&[(String, Value)], &str, QTensor) -> QTensor) {
    let mut file = std::fs::File::open(src).unwrap();
    let ct = gguf_file::Content::read(&mut file).unwrap();
    let md: Vec<(String, Value)> = ct.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    let tensors: Vec<QTensor> = names.iter().map(|n| f(&md, n, ct.tensor(&mut file, n, &Device::Cpu).unwrap())).collect();
    let mut out = std::fs::File::create(dst).unwrap();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = names.iter().map(String::as_str).zip(tensors.iter()).collect();
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
}

/// Writes a copy of the f32 GGUF at `src` with every targeted weight replaced by
/// `W + weight·scale·B·A` (the adapter's q/k rows in PEFT's order, mapped to the file's).
pub fn merged_copy(src: &std::path::Path, dst: &std::path::Path, adapter: &LoraAdapter, weight: f32) {
    let s = adapter.scale() * weight;
    rewrite_gguf(src, dst, |md, name, q| {
        let heads = |key: &str| md.iter().find(|(k, _)| k == key).unwrap().1.to_u32().unwrap() as usize;
        let hit = name.strip_prefix("blk.").and_then(|rest| {
            let (l, t) = rest.split_once('.')?;
            let t = Target::from_gguf_name(t.strip_suffix(".weight")?)?;
            Some((l.parse::<usize>().ok()?, t))
        });
        let Some(((_, t), lw)) = hit.and_then(|(l, t)| Some(((l, t), adapter.get(l, t)?))) else { return q };
        let w = q.dequantize(&Device::Cpu).unwrap();
        let (rows, cols) = w.dims2().unwrap();
        let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (r, a, b) = (lw.r(), lw.a(), lw.b());
        let src_row = |o: usize| match t {
            Target::Q => hf_row(o, rows, heads("llama.attention.head_count")),
            Target::K => hf_row(o, rows, heads("llama.attention.head_count_kv")),
            _ => o,
        };
        for o in 0..rows {
            let ob = src_row(o);
            for i in 0..cols {
                let d: f64 = (0..r).map(|k| b[ob * r + k] as f64 * a[k * cols + i] as f64).sum();
                v[o * cols + i] += (s as f64 * d) as f32;
            }
        }
        QTensor::quantize(&Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap(), GgmlDType::F32).unwrap()
    });
}

/// Tolerance: the hook adds `s·B(A·x)` in f32 after the base product, the merged model sums
/// `(W + sBA)·x` in one go, so they differ by f32 rounding (~1e-6 relative), which the f16
/// rounding of q/K/V can turn into one f16 step (2⁻¹¹ relative) here and there: max |Δ| ≤ 0.5%
/// of the logit range.
#[test]
fn lora_hook_equals_the_merged_dense_model() {
    let seed = rand::random::<u64>();
    let (dir, path, engine) = tiny(spec(GgmlDType::F32, 64, seed), 2);
    let adapter = Arc::new(random_adapter(&engine, 4, seed));
    let tokens: Vec<u32> = (0..20).map(|i| (i * 19 + 7) % 260).collect();
    let vocab = engine.model_config().vocab_size;

    let mut s = engine.new_session();
    s.set_hooks(LoraHook::from_set(&engine, &LoraSet::new().with(adapter.clone(), 0.7)).unwrap().into_hooks());
    let hooked = s.logits_all(&tokens).unwrap();

    let merged_path = dir.path("merged.gguf");
    merged_copy(&path, &merged_path, &adapter, 0.7);
    let merged = Engine::load(&merged_path, EngineConfig::default()).unwrap();
    let want = merged.new_session().logits_all(&tokens).unwrap();
    let base = engine.new_session().logits_all(&tokens).unwrap();
    assert_ne!(hooked, base, "the adapter changes the logits");
    let mut worst = 0f32;
    for p in 0..tokens.len() {
        let (g, w) = (&hooked[p * vocab..(p + 1) * vocab], &want[p * vocab..(p + 1) * vocab]);
        let range = w.iter().cloned().fold(f32::NEG_INFINITY, f32::max) - w.iter().cloned().fold(f32::INFINITY, f32::min);
        let diff = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        worst = worst.max(diff / range);
        assert!(diff <= 0.005 * range, "seed {seed} pos {p}: |Δ| {diff} of {range}");
    }
    eprintln!("LoRA hook vs merged dense model: worst |Δ| {:.4}% of the range", 100.0 * worst);
}

#[test]
fn zero_b_and_zero_weight_leave_the_base_bit_identical() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q4_1, 64, rand::random()), 2);
    let tokens: Vec<u32> = (0..12).map(|i| (i * 23 + 1) % 260).collect();
    let base = engine.new_session().logits_all(&tokens).unwrap();
    let mut a = random_adapter(&engine, 8, 1);
    let mut s = engine.new_session();
    s.set_hooks(LoraHook::from_set(&engine, &LoraSet::new().with(Arc::new(a.clone()), 0.0)).unwrap().into_hooks());
    assert_eq!(s.logits_all(&tokens).unwrap(), base, "weight 0");
    for layer in 0..engine.model_config().n_layers {
        for t in Target::ALL {
            a.get_mut(layer, t).unwrap().b_mut().fill(0.0);
        }
    }
    s.set_hooks(LoraHook::from_set(&engine, &LoraSet::new().with(Arc::new(a), 1.0)).unwrap().into_hooks());
    assert_eq!(s.logits_all(&tokens).unwrap(), base, "B = 0");
    s.set_hooks(Hooks::none());
    assert_eq!(s.logits_all(&tokens).unwrap(), base);
}

#[test]
fn fingerprint_tells_bases_apart() {
    let (_d1, _p1, e1) = tiny(spec(GgmlDType::Q8_0, 64, 1), 1);
    let (_d2, _p2, e2) = tiny(spec(GgmlDType::Q8_0, 64, 1), 1);
    let (_d3, _p3, e3) = tiny(spec(GgmlDType::Q8_0, 64, 2), 1);
    assert_eq!(e1.base_fingerprint(), e2.base_fingerprint());
    assert_ne!(e1.base_fingerprint(), e3.base_fingerprint());
    assert!(e1.base_fingerprint().as_str().starts_with("sha256:"));
    let _ = TempDir::new("unused");
}
