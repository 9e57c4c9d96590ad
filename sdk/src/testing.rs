//! Tiny llama models written on the fly, for fast tests here and in the crates built on this
//! one. A [`TinyModel`] is a real GGUF file (weights random, tokenizer a real byte-level BPE)
//! that every part of the SDK loads like any other model. [`mutate`] turns real files into
//! hostile ones for property tests of the parsers of untrusted bytes.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

pub mod mutate;

/// Shape and encoding of a tiny model.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TinyModel {
    /// Residual width (a multiple of the weight type's block size).
    pub d_model: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// MLP width.
    pub ffn_dim: usize,
    /// Type of the projection weights.
    pub dtype: GgmlDType,
    /// Type of the token embedding.
    pub embd_dtype: GgmlDType,
    /// Whether the output projection is the embedding.
    pub tied: bool,
    /// `llama.context_length`.
    pub context_length: usize,
    /// `general.architecture` (anything but `llama` tests rejection).
    pub architecture: String,
    /// Seed of the random weights.
    pub seed: u64,
    /// Scale of the random weights.
    pub weight_scale: f32,
    /// `llama.rope.freq_base`.
    pub rope_base: f32,
    /// Write q/k/v biases (as Qwen2 models have).
    pub qkv_bias: bool,
}

impl Default for TinyModel {
    fn default() -> Self {
        Self {
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 128,
            dtype: GgmlDType::Q8_0,
            embd_dtype: GgmlDType::Q8_0,
            tied: true,
            context_length: 256,
            architecture: "llama".into(),
            seed: 0,
            weight_scale: 0.15,
            rope_base: 10_000.0,
            qkv_bias: false,
        }
    }
}

/// Control tokens of the tiny vocabulary (ids 0, 1, 2, as in SmolLM2).
pub const TINY_CONTROL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Merges of the tiny vocabulary (byte-level symbols; `Ġ` is a space).
const TINY_MERGES: [(&str, &str); 10] = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"), ("r", "e"), ("Ġthe", "r"),
];

impl TinyModel {
    /// Number of tokens in the tiny vocabulary.
    pub fn vocab_size(&self) -> usize {
        TINY_CONTROL.len() + 256 + TINY_MERGES.len()
    }

    /// Writes the model to `path` as GGUF.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let dev = Device::Cpu;
        let (d, ff, hd) = (self.d_model, self.ffn_dim, self.d_model / self.n_heads);
        let kv = self.n_kv_heads * hd;
        let vocab = self.vocab_size();
        let mut rand_t = |rows: usize, cols: usize, scale: f32| -> Result<Tensor> {
            let v: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect();
            Ok(Tensor::from_vec(v, (rows, cols), &dev)?)
        };
        let q = |t: Tensor, dt: GgmlDType| -> Result<QTensor> { Ok(QTensor::quantize(&t, dt)?) };
        let s = self.weight_scale;
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        tensors.push(("token_embd.weight".into(), q(rand_t(vocab, d, 1.0)?, self.embd_dtype)?));
        for l in 0..self.n_layers {
            let n = |x: &str| format!("blk.{l}.{x}");
            let norm = |rng: &mut rand::rngs::StdRng| -> Result<Tensor> {
                let v: Vec<f32> = (0..d).map(|_| 1.0 + rng.random_range(-0.2f32..0.2)).collect();
                Ok(Tensor::from_vec(v, d, &dev)?)
            };
            let mut r2 = rand::rngs::StdRng::seed_from_u64(self.seed.wrapping_add(1000 + l as u64));
            tensors.push((n("attn_norm.weight"), q(norm(&mut r2)?, GgmlDType::F32)?));
            tensors.push((n("ffn_norm.weight"), q(norm(&mut r2)?, GgmlDType::F32)?));
            if self.qkv_bias {
                for (name, len) in [("attn_q.bias", d), ("attn_k.bias", kv), ("attn_v.bias", kv)] {
                    let b: Vec<f32> = (0..len).map(|_| r2.random_range(-0.5f32..0.5)).collect();
                    tensors.push((n(name), q(Tensor::from_vec(b, len, &dev)?, GgmlDType::F32)?));
                }
            }
            tensors.push((n("attn_q.weight"), q(rand_t(d, d, s)?, self.dtype)?));
            tensors.push((n("attn_k.weight"), q(rand_t(kv, d, s)?, self.dtype)?));
            tensors.push((n("attn_v.weight"), q(rand_t(kv, d, s)?, self.dtype)?));
            tensors.push((n("attn_output.weight"), q(rand_t(d, d, s)?, self.dtype)?));
            tensors.push((n("ffn_gate.weight"), q(rand_t(ff, d, s)?, self.dtype)?));
            tensors.push((n("ffn_up.weight"), q(rand_t(ff, d, s)?, self.dtype)?));
            tensors.push((n("ffn_down.weight"), q(rand_t(d, ff, s)?, self.dtype)?));
        }
        tensors.push(("output_norm.weight".into(), q(Tensor::ones(d, candle_core::DType::F32, &dev)?, GgmlDType::F32)?));
        if !self.tied {
            tensors.push(("output.weight".into(), q(rand_t(vocab, d, 1.0)?, self.dtype)?));
        }

        let bytes = crate::text::tokenizer::byte_chars();
        let mut tokens: Vec<String> = TINY_CONTROL.iter().map(|s| s.to_string()).collect();
        tokens.extend(bytes.iter().map(|c| c.to_string()));
        tokens.extend(TINY_MERGES.iter().map(|(a, b)| format!("{a}{b}")));
        let mut types = vec![3i32; TINY_CONTROL.len()];
        types.resize(tokens.len(), 1);
        let a = &self.architecture;
        let md: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(a.clone())),
            ("general.name".into(), Value::String("tiny-test-llama".into())),
            (format!("{a}.embedding_length"), Value::U32(d as u32)),
            (format!("{a}.block_count"), Value::U32(self.n_layers as u32)),
            (format!("{a}.feed_forward_length"), Value::U32(ff as u32)),
            (format!("{a}.attention.head_count"), Value::U32(self.n_heads as u32)),
            (format!("{a}.attention.head_count_kv"), Value::U32(self.n_kv_heads as u32)),
            (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
            (format!("{a}.rope.freq_base"), Value::F32(self.rope_base)),
            (format!("{a}.rope.dimension_count"), Value::U32(hd as u32)),
            (format!("{a}.context_length"), Value::U32(self.context_length as u32)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
            (
                "tokenizer.ggml.merges".into(),
                Value::Array(TINY_MERGES.iter().map(|(a, b)| Value::String(format!("{a} {b}"))).collect()),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ];
        let tmp = path.with_extension("gguf.tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
            let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
            gguf_file::write(&mut f, &md_refs, &t_refs)?;
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        Ok(())
    }
}

/// A random rank-`r` LoRA adapter on all seven projections of every layer of `engine`'s base
/// (entries uniform in `±scale`, from `seed`): for tests and for measuring an adapter's cost.
pub fn random_lora(engine: &crate::Engine, r: usize, scale: f32, seed: u64) -> Result<tailor_adapters::LoraAdapter> {
    use tailor_adapters::{LoraAdapter, LoraConfig, LoraWeights, Target};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let shapes = engine.base_shapes();
    let mut a = LoraAdapter::new(LoraConfig::new(r, 2.0 * r as f64, &Target::ALL))?;
    for layer in 0..shapes.n_layers {
        for t in Target::ALL {
            let (i, o) = shapes.in_out(t);
            let av: Vec<f32> = (0..r * i).map(|_| rng.random_range(-scale..scale)).collect();
            let bv: Vec<f32> = (0..o * r).map(|_| rng.random_range(-scale..scale)).collect();
            a.insert(layer, t, LoraWeights::new(r, i, o, av, bv)?)?;
        }
    }
    Ok(a)
}

/// A temporary directory (unique per process and call) removed with everything in it when
/// dropped: for tests.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `tailor-test-{tag}-{pid}-{random}` in the system's temporary directory.
    ///
    /// # Panics
    /// If the directory cannot be created.
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("tailor-test-{tag}-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        Self(p)
    }

    /// `name` inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
