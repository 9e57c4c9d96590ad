//! The trainable LoRA parameters as one flat f32 vector (what the optimizer, the gradient
//! clipping and the checkpoints see), with the slot of every (layer, target) pair in it.
//!
//! `B` is kept in the base file's row order (for a llama GGUF the query/key rows are
//! permuted, see [`QkLayout`]); conversion to and from PEFT's order happens only at the
//! boundary ([`LoraParams::from_adapter`], [`LoraParams::to_adapter`]).

use tailor::adapters::peft::BaseShapes;
use tailor::adapters::{BaseFingerprint, LoraAdapter, LoraConfig, LoraWeights, QkLayout, Target};

use crate::rng::Rng;
use crate::{Error, Result};

/// Where one A/B pair lives in the flat vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Offset of `A` (`[r, in]`, row-major).
    pub a: usize,
    /// Offset of `B` (`[out, r]`, row-major, file row order).
    pub b: usize,
    pub r: usize,
    pub d_in: usize,
    pub d_out: usize,
}

/// Target index in forward order (`Target::ALL`).
pub(crate) fn target_index(t: Target) -> usize {
    Target::ALL.iter().position(|&x| x == t).unwrap_or(0)
}

/// All LoRA parameters of a run.
#[derive(Debug, Clone)]
pub(crate) struct LoraParams {
    pub data: Vec<f32>,
    /// `slots[layer][target_index]`.
    pub slots: Vec<[Option<Slot>; 7]>,
    /// `alpha / r` (or rsLoRA's `alpha / sqrt(r)`).
    pub scale: f32,
    config: LoraConfig,
    layout: QkLayout,
}

impl LoraParams {
    /// A fresh adapter: `A` Kaiming-uniform as PEFT initialises it (`a = √5`, so bounds
    /// `±1/√in`), `B` zero.
    pub fn init(shapes: BaseShapes, layout: QkLayout, r: usize, alpha: f64, targets: &[Target], rng: &mut Rng) -> Result<Self> {
        if r == 0 {
            return Err(Error::invalid_config("lora_rank must be at least 1"));
        }
        if targets.is_empty() {
            return Err(Error::invalid_config("at least one LoRA target is needed"));
        }
        let config = LoraConfig::new(r, alpha, targets);
        let scale = config.scale();
        let mut p = Self { data: Vec::new(), slots: vec![[None; 7]; shapes.n_layers], scale, config, layout };
        for l in 0..shapes.n_layers {
            for &t in Target::ALL.iter().filter(|t| targets.contains(t)) {
                let (d_in, d_out) = shapes.in_out(t);
                let slot = Slot { a: p.data.len(), b: p.data.len() + r * d_in, r, d_in, d_out };
                let bound = 1.0 / (d_in as f32).sqrt();
                p.data.extend((0..r * d_in).map(|_| (2.0 * rng.next_f32() - 1.0) * bound));
                p.data.extend(std::iter::repeat_n(0.0, d_out * r));
                p.slots[l][target_index(t)] = Some(slot);
            }
        }
        Ok(p)
    }

    /// Parameters starting from an existing (PEFT-ordered) adapter.
    pub fn from_adapter(adapter: &LoraAdapter, shapes: BaseShapes, layout: QkLayout) -> Result<Self> {
        let mut p = Self {
            data: Vec::new(),
            slots: vec![[None; 7]; shapes.n_layers],
            scale: adapter.scale(),
            config: adapter.config().clone(),
            layout,
        };
        for ((l, t), w) in adapter.iter() {
            if l >= shapes.n_layers || shapes.in_out(t) != (w.in_features(), w.out_features()) {
                return Err(Error::invalid_config(format!("initial adapter's {t:?} of layer {l} does not fit the base")));
            }
            let r = w.r();
            let slot = Slot { a: p.data.len(), b: p.data.len() + r * w.in_features(), r, d_in: w.in_features(), d_out: w.out_features() };
            p.data.extend_from_slice(w.a());
            p.data.extend(layout.hf_to_file(t, w.b(), w.out_features(), r));
            p.slots[l][target_index(t)] = Some(slot);
        }
        if p.data.is_empty() {
            return Err(Error::invalid_config("the initial adapter is empty"));
        }
        Ok(p)
    }

    /// The adapter in PEFT's layout.
    pub fn to_adapter(&self, fingerprint: Option<BaseFingerprint>) -> Result<LoraAdapter> {
        let mut ad = LoraAdapter::new(self.config.clone())?;
        if let Some(f) = fingerprint {
            ad.set_base_fingerprint(f);
        }
        for (l, row) in self.slots.iter().enumerate() {
            for (ti, s) in row.iter().enumerate() {
                let Some(s) = s else { continue };
                let t = Target::ALL[ti];
                let a = self.data[s.a..s.a + s.r * s.d_in].to_vec();
                let b = self.layout.file_to_hf(t, &self.data[s.b..s.b + s.d_out * s.r], s.d_out, s.r);
                ad.insert(l, t, LoraWeights::new(s.r, s.d_in, s.d_out, a, b)?)?;
            }
        }
        Ok(ad)
    }

    pub fn slot(&self, layer: usize, t: Target) -> Option<Slot> {
        self.slots.get(layer).and_then(|r| r[target_index(t)])
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_round_trip_keeps_peft_order() {
        let shapes = BaseShapes { n_layers: 2, d_model: 8, q_dim: 8, kv_dim: 4, ffn_dim: 16 };
        let layout = QkLayout::Interleaved { n_heads: 2, n_kv_heads: 1 };
        let mut rng = Rng::new(7);
        let mut p = LoraParams::init(shapes, layout, 2, 4.0, &Target::ALL, &mut rng).unwrap();
        for (i, v) in p.data.iter_mut().enumerate() {
            *v = i as f32;
        }
        let ad = p.to_adapter(None).unwrap();
        // B of q is stored permuted: exported rows are in HF order.
        let s = p.slot(0, Target::Q).unwrap();
        let file_b = &p.data[s.b..s.b + s.d_out * s.r];
        assert_eq!(layout.hf_to_file(Target::Q, ad.get(0, Target::Q).unwrap().b(), 8, 2), file_b);
        let back = LoraParams::from_adapter(&ad, shapes, layout).unwrap();
        assert_eq!(back.data, p.data);
        assert_eq!(back.scale, 2.0);
    }

    #[test]
    fn init_is_kaiming_uniform_a_and_zero_b() {
        let shapes = BaseShapes { n_layers: 1, d_model: 64, q_dim: 64, kv_dim: 32, ffn_dim: 128 };
        let p = LoraParams::init(shapes, QkLayout::Hf, 4, 8.0, &[Target::Down], &mut Rng::new(1)).unwrap();
        let s = p.slot(0, Target::Down).unwrap();
        let a = &p.data[s.a..s.a + 4 * 128];
        let bound = 1.0 / (128f32).sqrt();
        assert!(a.iter().all(|x| x.abs() <= bound) && a.iter().any(|x| x.abs() > 0.5 * bound));
        assert!(p.data[s.b..s.b + 64 * 4].iter().all(|&x| x == 0.0));
    }
}
