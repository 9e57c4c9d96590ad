//! The weights of a llama-family model, viewed in place in the mapped GGUF.

use super::config::ModelConfig;
use super::gguf::GgufFile;
use super::qmatrix::QMatrix;
use crate::Result;

/// One transformer block.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// RMSNorm gain before attention.
    pub attn_norm: Vec<f32>,
    /// Query projection `[n_heads·head_dim, d_model]`.
    pub wq: QMatrix,
    /// Key projection `[n_kv_heads·head_dim, d_model]`.
    pub wk: QMatrix,
    /// Value projection `[n_kv_heads·head_dim, d_model]`.
    pub wv: QMatrix,
    /// Attention output projection `[d_model, n_heads·head_dim]`.
    pub wo: QMatrix,
    /// Optional q/k/v biases (Qwen2).
    pub bq: Option<Vec<f32>>,
    /// Key bias.
    pub bk: Option<Vec<f32>>,
    /// Value bias.
    pub bv: Option<Vec<f32>>,
    /// RMSNorm gain before the MLP.
    pub ffn_norm: Vec<f32>,
    /// MLP gate projection `[ffn_dim, d_model]`.
    pub w_gate: QMatrix,
    /// MLP up projection `[ffn_dim, d_model]`.
    pub w_up: QMatrix,
    /// MLP down projection `[d_model, ffn_dim]`.
    pub w_down: QMatrix,
}

/// All weights of the model.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// Token embedding `[vocab, d_model]` (rows dequantized on lookup).
    pub token_embd: QMatrix,
    /// Output projection `[vocab, d_model]` (the embedding itself when tied).
    pub output: QMatrix,
    /// Final RMSNorm gain.
    pub output_norm: Vec<f32>,
    /// Per-dimension-pair RoPE frequency divisors (Llama 3 long-context scaling), if present.
    pub rope_freqs: Option<Vec<f32>>,
    /// The transformer blocks.
    pub layers: Vec<LayerWeights>,
}

impl ModelWeights {
    /// Repacks every projection and the output head into 16-row interleaved tiles where this
    /// CPU has interleaved kernels ([`QMatrix::repack`]); returns the bytes of the copies. The
    /// token embedding keeps its row-major bytes (lookups read one row); a tied head gets its
    /// own interleaved copy.
    pub fn repack(&mut self) -> usize {
        let mut bytes = 0;
        for l in &mut self.layers {
            for m in [&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.w_gate, &mut l.w_up, &mut l.w_down] {
                m.repack();
                bytes += m.repacked_bytes();
            }
        }
        self.output.repack();
        bytes + self.output.repacked_bytes()
    }

    /// Views every weight of `cfg`'s model in `g`, checking each shape.
    pub fn from_gguf(g: &GgufFile, cfg: &ModelConfig) -> Result<Self> {
        let (d, kv, ff, v) = (cfg.d_model, cfg.kv_dim(), cfg.ffn_dim, cfg.vocab_size);
        let qd = cfg.n_heads * cfg.head_dim;
        let token_embd = g.matrix("token_embd.weight", v, d)?;
        let output = if cfg.tied_embeddings { token_embd.clone() } else { g.matrix("output.weight", v, d)? };
        let bias = |name: String, len: usize| -> Result<Option<Vec<f32>>> {
            if g.tensors().contains_key(&name) { g.vector(&name, len).map(Some) } else { Ok(None) }
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(LayerWeights {
                attn_norm: g.vector(&n("attn_norm.weight"), d)?,
                wq: g.matrix(&n("attn_q.weight"), qd, d)?,
                wk: g.matrix(&n("attn_k.weight"), kv, d)?,
                wv: g.matrix(&n("attn_v.weight"), kv, d)?,
                wo: g.matrix(&n("attn_output.weight"), d, qd)?,
                bq: bias(n("attn_q.bias"), qd)?,
                bk: bias(n("attn_k.bias"), kv)?,
                bv: bias(n("attn_v.bias"), kv)?,
                ffn_norm: g.vector(&n("ffn_norm.weight"), d)?,
                w_gate: g.matrix(&n("ffn_gate.weight"), ff, d)?,
                w_up: g.matrix(&n("ffn_up.weight"), ff, d)?,
                w_down: g.matrix(&n("ffn_down.weight"), d, ff)?,
            });
        }
        let rope_freqs = bias("rope_freqs.weight".into(), cfg.rope_dims / 2)?;
        Ok(Self { token_embd, output, output_norm: g.vector("output_norm.weight", d)?, rope_freqs, layers })
    }
}
