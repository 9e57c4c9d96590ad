//! LoRA adapters (`tailor-adapters`) on the decode path: an adapter prepared for one base
//! ([`PreparedLora`]: `lora_B` rows in the GGUF's order, transposed for the fused kernel, f16),
//! the [`LinearDelta`] hook over a weighted set of them ([`LoraHook`]), and what an adapter
//! needs to know about the base it runs on (its shapes, q/k row layout and a fingerprint).

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tailor_adapters::peft::BaseShapes;
use tailor_adapters::{BaseFingerprint, LoraAdapter, LoraSet, QkLayout, Target};

use crate::decode::forward::Transformer;
use crate::decode::hooks::{Hooks, LinearDelta, LowRank, LowRankTerm, Proj};
use crate::engine::Engine;
use crate::model::config::RopeStyle;
use crate::{Error, Result};

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

fn slot(layer: usize, proj: Proj) -> usize {
    // `Proj` is declared in `Proj::ALL`'s order, so its discriminant is its index there.
    layer * Proj::ALL.len() + proj as usize
}

/// An adapter prepared to run on one engine's base: its shapes checked, `lora_B` of the query
/// and key projections permuted to the GGUF's row order ([`QkLayout`]), `B` transposed, pairs
/// whose `B` is all zeros dropped (so they leave the base bit-identical). Build it once per
/// adapter (it copies the weights); activating sets of prepared adapters copies nothing.
#[derive(Debug)]
pub struct PreparedLora {
    adapter: Arc<LoraAdapter>,
    table: Vec<Option<Arc<LowRank>>>,
}

impl PreparedLora {
    /// Prepares `adapter` for `engine`'s base; [`Error::Adapter`] (a shape error) if a pair
    /// does not fit the base.
    pub fn new(engine: &Engine, adapter: Arc<LoraAdapter>) -> Result<Self> {
        let shapes = engine.base_shapes();
        let layout = engine.qk_layout();
        let pairs: Vec<_> = adapter.iter().collect();
        for &((layer, t), w) in &pairs {
            let (i, o) = shapes.in_out(t);
            if layer >= shapes.n_layers || w.in_features() != i || w.out_features() != o {
                return Err(Error::Adapter(tailor_adapters::Error::Shape {
                    name: t.module_path(layer),
                    expected: vec![o, i],
                    actual: vec![w.out_features(), w.in_features()],
                }));
            }
        }
        // Converting is memory-bound copying: split the pairs over the engine's threads.
        let workers = engine.threads().clamp(1, pairs.len().max(1));
        let per = pairs.len().div_ceil(workers).max(1);
        let prepared: Vec<Result<Vec<(usize, Arc<LowRank>)>>> = std::thread::scope(|sc| {
            let handles: Vec<_> = pairs.chunks(per).map(|chunk| sc.spawn(move || prepare_pairs(chunk, layout))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        let mut table = vec![None; shapes.n_layers * Proj::ALL.len()];
        for part in prepared {
            for (i, lr) in part? {
                table[i] = Some(lr);
            }
        }
        Ok(Self { adapter, table })
    }

    /// The adapter as loaded (PEFT's row order).
    pub fn adapter(&self) -> &Arc<LoraAdapter> {
        &self.adapter
    }
}

/// Converts shape-checked pairs to f16 factors (`Bᵀ` in the file's row order), skipping pairs
/// whose `B` is zero; returns (table slot, factors).
fn prepare_pairs(pairs: &[((usize, Target), &tailor_adapters::LoraWeights)], layout: QkLayout) -> Result<Vec<(usize, Arc<LowRank>)>> {
    let mut out = Vec::with_capacity(pairs.len());
    let mut bt = Vec::new();
    for &((layer, t), w) in pairs {
        if w.b().iter().all(|v| *v == 0.0) {
            continue;
        }
        let (r, i, o) = (w.r(), w.in_features(), w.out_features());
        // Bᵀ with the file's row order: bt[k, row] = B[hf_row(row), k].
        let rows = layout.file_to_hf_rows(t, o);
        bt.clear();
        bt.resize(r * o, 0.0);
        for row in 0..o {
            let src = rows.as_ref().map_or(row, |m| m[row]);
            for (k, v) in w.b()[src * r..(src + 1) * r].iter().enumerate() {
                bt[k * o + row] = *v;
            }
        }
        let proj = Proj::ALL.into_iter().find(|p| target_of(*p) == t).expect("every target is a projection");
        let lr = LowRank::new(r, i, o, w.a(), &bt).ok_or_else(|| {
            Error::Adapter(tailor_adapters::Error::invalid(format!(
                "{}: a value is beyond ±{} (the decode path stores adapters as f16)",
                t.module_path(layer),
                LowRank::MAX_ABS
            )))
        })?;
        out.push((slot(layer, proj), Arc::new(lr)));
    }
    Ok(out)
}

/// A weighted set of prepared LoRA adapters as a decode-path hook: `y += Σ wᵢ·sᵢ·Bᵢ(Aᵢ·x)` on
/// every projection an adapter targets, unmerged over the quantized base, computed inside the
/// base product's parallel pass.
#[derive(Debug, Clone, Default)]
pub struct LoraHook {
    terms: Vec<Vec<LowRankTerm>>,
}

impl LoraHook {
    /// The hook for `entries` (adapter, weight); adapters with weight 0 are left out. Cheap: it
    /// shares the prepared weights.
    pub fn new(entries: &[(Arc<PreparedLora>, f32)]) -> Self {
        let slots = entries.iter().map(|(p, _)| p.table.len()).max().unwrap_or(0);
        let mut terms = vec![Vec::new(); slots];
        for (p, w) in entries {
            if *w == 0.0 {
                continue;
            }
            let scale = w * p.adapter.scale();
            for (i, f) in p.table.iter().enumerate() {
                if let Some(f) = f {
                    terms[i].push(LowRankTerm { factors: f.clone(), scale });
                }
            }
        }
        Self { terms }
    }

    /// Prepares every adapter of `set` for `engine` and makes the hook (for one-off use; a
    /// registry prepares each adapter once).
    pub fn from_set(engine: &Engine, set: &LoraSet) -> Result<Self> {
        let entries = set
            .entries()
            .iter()
            .map(|(a, w)| Ok((Arc::new(PreparedLora::new(engine, a.clone())?), *w)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::new(&entries))
    }

    /// Whether the hook changes nothing.
    pub fn is_empty(&self) -> bool {
        self.terms.iter().all(Vec::is_empty)
    }

    /// Session hooks running this set (and no steering).
    pub fn into_hooks(self) -> Hooks {
        Hooks { linear: Some(Arc::new(self)), residual: None }
    }
}

impl LinearDelta for LoraHook {
    fn terms(&self, layer: usize, proj: Proj) -> &[LowRankTerm] {
        self.terms.get(slot(layer, proj)).map_or(&[], Vec::as_slice)
    }
}

impl Engine {
    /// The base's projection shapes, to validate adapters against.
    pub fn base_shapes(&self) -> BaseShapes {
        let c = self.model_config();
        BaseShapes { n_layers: c.n_layers, d_model: c.d_model, q_dim: c.n_heads * c.head_dim, kv_dim: c.kv_dim(), ffn_dim: c.ffn_dim }
    }

    /// How the base orders the rows of its query and key projections relative to PEFT
    /// adapters (permuted for interleaved RoPE, as llama.cpp converts llama models).
    pub fn qk_layout(&self) -> QkLayout {
        let c = self.model_config();
        match c.rope_style {
            RopeStyle::Interleaved => QkLayout::Interleaved { n_heads: c.n_heads, n_kv_heads: c.n_kv_heads },
            RopeStyle::Neox => QkLayout::Hf,
        }
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
