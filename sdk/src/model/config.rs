//! Hyper-parameters of a llama-family model, read from GGUF metadata.

use serde::Serialize;

use super::gguf::GgufFile;
use crate::{Error, Result};

/// How rotary position embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF llama files (their q/k weights are permuted for it).
    Interleaved,
    /// Halves `(i, i + d/2)`: GPT-NeoX style, used by Qwen2 GGUF files.
    Neox,
}

/// The hyper-parameters the decode path needs.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ModelConfig {
    /// `general.architecture` (`llama` or `qwen2`).
    pub architecture: String,
    /// `general.name`, if the file has one.
    pub name: Option<String>,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Attention heads for queries.
    pub n_heads: usize,
    /// Attention heads for keys and values (grouped-query attention).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Hidden width of the MLP.
    pub ffn_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// Number of dimensions of a head that are rotated.
    pub rope_dims: usize,
    /// Pairing of rotated dimensions.
    pub rope_style: RopeStyle,
    /// Whether the output projection is the token embedding (tied).
    pub tied_embeddings: bool,
}

impl ModelConfig {
    /// Reads the hyper-parameters of a llama-family model. Any other architecture is an
    /// [`Error::UnsupportedArchitecture`].
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.get_str("general.architecture")?.to_string();
        let rope_style = match arch.as_str() {
            "llama" => RopeStyle::Interleaved,
            "qwen2" => RopeStyle::Neox,
            _ => return Err(Error::UnsupportedArchitecture { arch }),
        };
        let k = |s: &str| format!("{arch}.{s}");
        let d_model = g.get_usize(&k("embedding_length"))?;
        let n_layers = g.get_usize(&k("block_count"))?;
        let n_heads = g.get_usize(&k("attention.head_count"))?;
        let n_kv_heads = g.get_usize_opt(&k("attention.head_count_kv"))?.unwrap_or(n_heads);
        let ffn_dim = g.get_usize(&k("feed_forward_length"))?;
        let bad = |key: String, reason: &str| Error::Metadata { key, reason: reason.into() };
        if d_model == 0 || n_layers == 0 || n_heads == 0 || n_kv_heads == 0 || ffn_dim == 0 {
            return Err(bad(k("embedding_length"), "zero dimension in the model's hyper-parameters"));
        }
        if d_model % n_heads != 0 {
            return Err(bad(k("attention.head_count"), "does not divide embedding_length"));
        }
        if n_heads % n_kv_heads != 0 {
            return Err(bad(k("attention.head_count_kv"), "does not divide attention.head_count"));
        }
        // Every block has at least nine tensors (two norms, four attention and three MLP
        // projections): a larger count is a lie, refused before anything is sized by it.
        if n_layers > g.tensors().len() / 9 {
            return Err(bad(k("block_count"), &format!("{n_layers} blocks, but the file has {} tensors", g.tensors().len())));
        }
        let head_dim = g.get_usize_opt(&k("attention.key_length"))?.unwrap_or(d_model / n_heads);
        if head_dim.checked_mul(n_heads) != Some(d_model) {
            return Err(bad(k("attention.key_length"), "heads of a width other than d_model / n_heads are not supported"));
        }
        let rope_dims = g.get_usize_opt(&k("rope.dimension_count"))?.unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(bad(k("rope.dimension_count"), "must be even and at most the head width"));
        }
        let embd = g.entry("token_embd.weight")?;
        let vocab_size = match g.get_usize_opt(&k("vocab_size"))? {
            Some(v) => v,
            None => *embd.shape.first().unwrap_or(&0),
        };
        Ok(Self {
            name: g.get_str("general.name").ok().map(str::to_string),
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            context_length: g.get_usize_opt(&k("context_length"))?.unwrap_or(2048),
            rms_eps: g.get_f32_opt(&k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            rope_base: g.get_f32_opt(&k("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_dims,
            rope_style,
            tied_embeddings: !g.tensors().contains_key("output.weight"),
            architecture: arch,
        })
    }

    /// RoPE inverse frequencies `1 / base^(2i/rope_dims)` as ggml computes them
    /// (`theta_scale = base^(-2/n_dims)` accumulated in f32), divided by the file's frequency
    /// factors (`rope_freqs`, Llama 3) when it has them.
    pub fn rope_inv_freq(&self, freq_factors: Option<&[f32]>) -> Vec<f32> {
        let theta_scale = self.rope_base.powf(-2.0 / self.rope_dims as f32);
        let mut t = 1f32;
        (0..self.rope_dims / 2)
            .map(|i| {
                let v = t / freq_factors.map_or(1.0, |f| f[i]);
                t *= theta_scale;
                v
            })
            .collect()
    }

    /// Width of the key (and value) projection output.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
