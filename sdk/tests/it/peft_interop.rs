//! Interoperability with the real `peft` library (fixtures made by `scripts/peft_golden.sh`):
//! an adapter PEFT saved loads here and changes the logits as PEFT computes on the
//! dequantized base; an adapter Tailor saved loads in PEFT (checked by the script) and here.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use safetensors::SafeTensors;
use tailor::adapters::peft::{self, LoadOptions};
use tailor::adapters::{LoraAdapter, LoraSet, Target};
use tailor::{Engine, EngineConfig, LoraHook};

use crate::real_model::{engine, model_path};

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/peft").join(name)
}

fn load_engine(path: &std::path::Path) -> Engine {
    let mut c = EngineConfig::default();
    c.threads = 2;
    Engine::load(path, c).unwrap()
}

/// The same model with every tensor dequantized to f32 (what PEFT runs on): written to a
/// temporary file, mapped, and the file removed.
fn f32_engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let tmp = std::env::temp_dir().join(format!("tailor-dequantized-{}.gguf", std::process::id()));
        dequantized_copy(&model_path(), &tmp);
        let e = load_engine(&tmp);
        let _ = std::fs::remove_file(&tmp);
        e
    })
}

/// Writes an all-f32 copy of the GGUF at `src` (every tensor dequantized).
fn dequantized_copy(src: &std::path::Path, dst: &std::path::Path) {
    use candle_core::quantized::{GgmlDType, QTensor};
    crate::lora::rewrite_gguf(src, dst, |_, _, q| QTensor::quantize(&q.dequantize(&candle_core::Device::Cpu).unwrap(), GgmlDType::F32).unwrap());
}


struct Expected {
    tokens: Vec<u32>,
    ids: Vec<usize>,
    /// `[positions, ids]` logits from PEFT.
    base: Vec<f32>,
    peft_made: Vec<f32>,
    tailor_saved: Vec<f32>,
}

fn expected() -> Expected {
    let bytes = std::fs::read(dir("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let i64s = |n: &str| st.tensor(n).unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
    let f32s = |n: &str| st.tensor(n).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
    Expected {
        tokens: i64s("tokens").into_iter().map(|t| t as u32).collect(),
        ids: i64s("ids").into_iter().map(|t| t as usize).collect(),
        base: f32s("base"),
        peft_made: f32s("peft_made"),
        tailor_saved: f32s("tailor_saved"),
    }
}

/// Our logits at every position for the expected ids, with `adapter` (or none).
fn our_logits(engine: &Engine, e: &Expected, adapter: Option<LoraAdapter>) -> Vec<f32> {
    let mut s = engine.new_session();
    if let Some(a) = adapter {
        s.set_hooks(LoraHook::from_set(engine, &LoraSet::new().with(Arc::new(a), 1.0)).unwrap().into_hooks());
    }
    let all = s.logits_all(&e.tokens).unwrap();
    let vocab = engine.model_config().vocab_size;
    (0..e.tokens.len()).flat_map(|p| e.ids.iter().map(move |&i| (p, i))).map(|(p, i)| all[p * vocab + i]).collect()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn sub(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn load(name: &str) -> LoraAdapter {
    let e = engine();
    peft::load(&dir(name), &LoadOptions::new().with_shapes(e.base_shapes()).with_fingerprint(e.base_fingerprint())).unwrap()
}

/// Tolerances. On the dequantized (f32) base our logits equal PEFT's to ~4e-4 (relative L2;
/// the f16 KV cache and f16 rounding of queries, as in llama.cpp, are the difference), and
/// the adapter's effect (logits with it minus logits without) agrees to ~1.4% (the adapter
/// runs as f16 factors): we allow 3%.
/// Leaving the q/k rows in PEFT's order on the GGUF's permuted rows (the bug this guards
/// against) measures far outside that (checked). On the Q4_1 base, activation quantization
/// (Q8_1, as llama.cpp) moves the base logits by ~2% and does not cancel in the effect, which
/// is much smaller than the logits: there the effect agrees only roughly (measured ~0.6
/// relative, cosine ~0.85; we require a cosine above 0.7).
const F32_BASE_TOL: f64 = 2e-3;
const EFFECT_TOL: f64 = 0.03;

fn with_unmapped_qk(mut a: LoraAdapter, engine: &Engine) -> LoraAdapter {
    let layout = engine.qk_layout();
    let layers: Vec<usize> = a.iter().map(|((l, _), _)| l).collect();
    for l in layers {
        for t in [Target::Q, Target::K] {
            if let Some(w) = a.get_mut(l, t) {
                let (o, r) = (w.out_features(), w.r());
                let un = layout.file_to_hf(t, w.b(), o, r);
                w.b_mut().copy_from_slice(&un);
            }
        }
    }
    a
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn a_peft_adapter_changes_logits_as_peft_computes() {
    let e = expected();
    let want = sub(&e.peft_made, &e.base);
    // On the dequantized base, as PEFT ran.
    let f = f32_engine();
    let base = our_logits(f, &e, None);
    let base_gap = rel(&base, &e.base);
    assert!(base_gap <= F32_BASE_TOL, "f32 base vs PEFT's base: {base_gap}");
    let err = rel(&sub(&our_logits(f, &e, Some(load("peft_made"))), &base), &want);
    let err_wrong = rel(&sub(&our_logits(f, &e, Some(with_unmapped_qk(load("peft_made"), f))), &base), &want);
    // On the Q4_1 base.
    let q = engine();
    let qbase = our_logits(q, &e, None);
    let qeff = sub(&our_logits(q, &e, Some(load("peft_made"))), &qbase);
    let (qerr, qcos) = (rel(&qeff, &want), cosine(&qeff, &want));
    eprintln!(
        "PEFT interop: f32 base vs PEFT {base_gap:.2e}; effect rel error {err:.4} (q/k rows unmapped: {err_wrong:.4}); \
         on Q4_1: base vs PEFT {:.4}, effect rel error {qerr:.3}, cosine {qcos:.3}",
        rel(&qbase, &e.base)
    );
    assert!(err <= EFFECT_TOL, "adapter effect differs from PEFT's by {err:.4}");
    assert!(err_wrong > 5.0 * EFFECT_TOL, "the check cannot tell a wrong q/k mapping ({err_wrong:.4})");
    assert!(qcos > 0.7, "on the quantized base the effect is not PEFT's ({qcos:.3})");
}

#[test]
fn a_tailor_saved_adapter_is_the_same_adapter_in_peft_and_here() {
    let e = expected();
    // In PEFT (the script loaded our file with PeftModel.from_pretrained):
    let in_peft = rel(&sub(&e.tailor_saved, &e.base), &sub(&e.peft_made, &e.base));
    assert!(in_peft < 1e-3, "PEFT: Tailor-saved vs PEFT-made effect {in_peft}");
    // Here: it carries our fingerprint (checked on load) and acts like the original (on the
    // f32 base; its factors differ from the original's by the SVD refactoring, f32 rounding).
    let saved = load("tailor_saved");
    assert_eq!(saved.config().base_fingerprint(), Some(&engine().base_fingerprint()));
    let f = f32_engine();
    let base = our_logits(f, &e, None);
    let a = sub(&our_logits(f, &e, Some(saved)), &base);
    let b = sub(&our_logits(f, &e, Some(load("peft_made"))), &base);
    assert!(rel(&a, &b) < 0.01, "Tailor-saved vs PEFT-made effect here: {}", rel(&a, &b));
}

/// `scripts/llamacpp_lora_golden.py` exported `peft_made` with `tailor adapter export` and ran
/// it in llama.cpp (`lora_path`, the loader of `llama-cli --lora`), token by token: llama.cpp
/// accepted every tensor (it refuses wrong names or shapes). Its CPU build here runs Q4_1
/// through AMX/repacked kernels, so its base logits differ from ours by ~1.7% (relative L2)
/// and, as against PEFT on the quantized base, the effect agrees only in direction: cosine
/// above 0.7 (measured ~0.81). Quantization noise dominates here, so this shows that llama.cpp
/// runs the file and agrees in direction; the q/k mapping itself is checked on the f32 base
/// against PEFT above.
#[test]
fn the_llama_cpp_export_acts_in_llama_cpp_as_here() {
    let e = expected();
    let bytes = std::fs::read(dir("llamacpp.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| st.tensor(n).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
    let (lbase, llora) = (f32s("base"), f32s("lora"));
    let q = engine();
    let base = our_logits(q, &e, None);
    let eff = sub(&our_logits(q, &e, Some(load("peft_made"))), &base);
    let wrong = sub(&our_logits(q, &e, Some(with_unmapped_qk(load("peft_made"), q))), &base);
    let want = sub(&llora, &lbase);
    let (base_gap, cos, cos_wrong) = (rel(&base, &lbase), cosine(&eff, &want), cosine(&wrong, &want));
    eprintln!("llama.cpp LoRA: base vs llama.cpp {base_gap:.2e}; adapter effect cosine {cos:.3} (q/k rows unmapped: {cos_wrong:.3})");
    assert!(base_gap < 0.05, "base logits vs llama.cpp: {base_gap}");
    assert!(cos > 0.7, "adapter effect vs llama.cpp: cosine {cos}");
}
