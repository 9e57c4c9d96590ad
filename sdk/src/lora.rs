//! LoRA adapters (`tailor-adapters`) on the decode path: the [`LinearDelta`] hook over a
//! [`LoraSet`], and what an adapter needs to know about the base it runs on (its shapes and a
//! fingerprint).

use sha2::{Digest, Sha256};
use tailor_adapters::peft::BaseShapes;
use tailor_adapters::{BaseFingerprint, LoraSet, Target};

use crate::decode::hooks::{Hooks, LinearDelta, Proj};
use crate::decode::forward::Transformer;
use crate::engine::Engine;

/// The adapters' name for one of our projections.
pub fn target_of(proj: Proj) -> Target {
    match proj {
        Proj::Q => Target::Q,
        Proj::K => Target::K,
        Proj::V => Target::V,
        Proj::O => Target::O,
        Proj::Gate => Target::Gate,
        Proj::Up => Target::Up,
        Proj::Down => Target::Down,
    }
}

/// A weighted set of LoRA adapters as a decode-path hook: `y += Σ wᵢ·sᵢ·Bᵢ(Aᵢ·x)` on every
/// projection an adapter targets, unmerged over the quantized base.
#[derive(Debug, Clone, Default)]
pub struct LoraHook {
    set: LoraSet,
}

impl LoraHook {
    /// Wraps a set.
    pub fn new(set: LoraSet) -> Self {
        Self { set }
    }

    /// The set.
    pub fn set(&self) -> &LoraSet {
        &self.set
    }

    /// Session hooks running this set (and no steering).
    pub fn into_hooks(self) -> Hooks {
        Hooks { linear: Some(std::sync::Arc::new(self)), residual: None }
    }
}

impl LinearDelta for LoraHook {
    fn applies_to(&self, layer: usize, proj: Proj) -> bool {
        self.set.applies_to(layer, target_of(proj))
    }

    fn add_delta(&self, layer: usize, proj: Proj, x: &[f32], n_tokens: usize, out: &mut [f32]) {
        self.set.add_delta(layer, target_of(proj), x, n_tokens, out);
    }
}

impl Engine {
    /// The base's projection shapes, to validate adapters against.
    pub fn base_shapes(&self) -> BaseShapes {
        let c = self.model_config();
        BaseShapes { n_layers: c.n_layers, d_model: c.d_model, q_dim: c.n_heads * c.head_dim, kv_dim: c.kv_dim(), ffn_dim: c.ffn_dim }
    }

    /// A fingerprint of the base weights an adapter was trained on: SHA-256 over the
    /// hyper-parameters, the type and shape of every projection, and the bytes of the token
    /// embedding and of every layer's first and last projection rows. Two files that differ only
    /// in metadata such as `general.name` share it; a requantized or different model does not.
    pub fn base_fingerprint(&self) -> BaseFingerprint {
        BaseFingerprint(fingerprint(&self.inner.model))
    }
}

pub(crate) fn fingerprint(m: &Transformer) -> String {
    let c = &m.cfg;
    let mut h = Sha256::new();
    h.update(format!(
        "{}|{}|{}|{}|{}|{}|{}|{}|{}|",
        c.architecture, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size, c.rope_base
    ));
    let mut feed = |name: &str, q: &crate::model::qmatrix::QMatrix, all: bool| {
        h.update(format!("{name}:{:?}:{}x{}|", q.dtype(), q.rows(), q.cols()));
        let b = q.bytes();
        if all {
            h.update(b);
        } else {
            let rb = q.row_bytes();
            h.update(&b[..rb]);
            h.update(&b[b.len() - rb..]);
        }
    };
    feed("token_embd", &m.w.token_embd, true);
    for (i, l) in m.w.layers.iter().enumerate() {
        for (n, q) in [("q", &l.wq), ("k", &l.wk), ("v", &l.wv), ("o", &l.wo), ("g", &l.w_gate), ("u", &l.w_up), ("d", &l.w_down)] {
            feed(&format!("{i}.{n}"), q, false);
        }
    }
    let d = h.finalize();
    format!("sha256:{}", d.iter().map(|b| format!("{b:02x}")).collect::<String>())
}
