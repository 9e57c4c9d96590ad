//! LoRA adapters in memory and the math that applies them: `out += w·s·B(A·x)`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::LoraConfig;
use crate::error::{Error, Result};
use crate::target::Target;

/// One A/B pair: `A` is `[r, in_features]`, `B` is `[out_features, r]`, both row-major f32
/// (PEFT's `lora_A.weight` / `lora_B.weight` layout). The lengths are fixed at construction,
/// so the math never indexes out of bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraWeights {
    a: Vec<f32>,
    b: Vec<f32>,
    r: usize,
    in_features: usize,
    out_features: usize,
}

impl LoraWeights {
    /// Wraps `a` (`[r, in_features]`) and `b` (`[out_features, r]`); [`Error::Shape`] if a
    /// length does not match (the names are `lora_A` / `lora_B`).
    pub fn new(
        r: usize,
        in_features: usize,
        out_features: usize,
        a: Vec<f32>,
        b: Vec<f32>,
    ) -> Result<Self> {
        if r == 0 || in_features == 0 || out_features == 0 {
            return Err(Error::invalid("LoRA rank and dimensions must be at least 1"));
        }
        let (Some(a_len), Some(b_len)) = (r.checked_mul(in_features), out_features.checked_mul(r))
        else {
            return Err(Error::invalid("LoRA dimensions overflow"));
        };
        if a.len() != a_len {
            return Err(Error::Shape {
                name: "lora_A".into(),
                expected: vec![r, in_features],
                actual: vec![a.len()],
            });
        }
        if b.len() != b_len {
            return Err(Error::Shape {
                name: "lora_B".into(),
                expected: vec![out_features, r],
                actual: vec![b.len()],
            });
        }
        Ok(LoraWeights { a, b, r, in_features, out_features })
    }

    /// All-zero A and B of the given shape (a trainer initialises A itself).
    pub fn zeros(r: usize, in_features: usize, out_features: usize) -> Result<Self> {
        Self::new(
            r,
            in_features,
            out_features,
            vec![0.0; r * in_features],
            vec![0.0; out_features * r],
        )
    }

    /// The rank.
    pub fn r(&self) -> usize {
        self.r
    }

    /// Input width of the projection.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Output width of the projection.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// `A`, `[r, in_features]` row-major.
    pub fn a(&self) -> &[f32] {
        &self.a
    }

    /// `B`, `[out_features, r]` row-major.
    pub fn b(&self) -> &[f32] {
        &self.b
    }

    /// `A`, mutable (length fixed).
    pub fn a_mut(&mut self) -> &mut [f32] {
        &mut self.a
    }

    /// `B`, mutable (length fixed).
    pub fn b_mut(&mut self) -> &mut [f32] {
        &mut self.b
    }

    /// Whether every value of A and B is finite.
    pub fn is_finite(&self) -> bool {
        self.a.iter().chain(&self.b).all(|v| v.is_finite())
    }

    /// `out += factor·B(A·x)` for `n` tokens: `x` is `[n, in_features]`, `out` is
    /// `[n, out_features]`, both row-major. An output element whose delta is exactly zero is
    /// left untouched, so `B = 0` (or `factor = 0`) leaves `out` bit-identical, `-0.0`
    /// included.
    ///
    /// # Panics
    /// If `x` or `out` is not `n` rows of the projection's width (a caller bug).
    pub fn add_delta(&self, x: &[f32], n: usize, out: &mut [f32], factor: f32) {
        let (r, d_in, d_out) = (self.r, self.in_features, self.out_features);
        assert_eq!(x.len(), n * d_in, "LoRA input is not [n, in_features]");
        assert_eq!(out.len(), n * d_out, "LoRA output is not [n, out_features]");
        if factor == 0.0 || n == 0 {
            return;
        }
        SCRATCH.with(|cell| {
            let mut tmp = cell.borrow_mut();
            tmp.clear();
            tmp.resize(n * r, 0.0);
            // tmp[t, k] = factor · (A[k, :] · x[t, :]): contiguous rows of both.
            for (xt, tt) in x.chunks_exact(d_in).zip(tmp.chunks_exact_mut(r)) {
                for (ak, tk) in self.a.chunks_exact(d_in).zip(tt.iter_mut()) {
                    *tk = factor * dot(ak, xt);
                }
            }
            // out[t, o] += B[o, :] · tmp[t, :]: contiguous rows of both, r long.
            for (tt, ot) in tmp.chunks_exact(r).zip(out.chunks_exact_mut(d_out)) {
                for (bo, oo) in self.b.chunks_exact(r).zip(ot.iter_mut()) {
                    let d = dot(bo, tt);
                    if d != 0.0 {
                        *oo += d;
                    }
                }
            }
        });
    }
}

thread_local! {
    /// Per-thread `[n, r]` intermediate, reused across calls (one per token per projection).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Dot product with eight independent accumulators (the compiler keeps them in one vector
/// register; the summation order is fixed, so results are deterministic).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// A LoRA adapter: its config and one A/B pair per targeted (layer, projection).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    config: LoraConfig,
    scale: f32,
    layers: BTreeMap<(usize, Target), LoraWeights>,
}

impl LoraAdapter {
    /// An adapter with no weights yet; [`Error::InvalidConfig`] / [`Error::Unsupported`] if
    /// the config fails [`LoraConfig::validate`].
    pub fn new(config: LoraConfig) -> Result<Self> {
        config.validate(Path::new("<in memory>"))?;
        let scale = config.scale();
        Ok(LoraAdapter { config, scale, layers: BTreeMap::new() })
    }

    /// Adds (or replaces) the pair for `target` of `layer`. Its rank must be the config's `r`
    /// ([`Error::Shape`]) and its values finite ([`Error::NonFinite`]).
    pub fn insert(&mut self, layer: usize, target: Target, weights: LoraWeights) -> Result<()> {
        let name = target.module_path(layer);
        if weights.r() != self.config.r {
            return Err(Error::Shape {
                name: format!("{name}.lora_A"),
                expected: vec![self.config.r, weights.in_features()],
                actual: vec![weights.r(), weights.in_features()],
            });
        }
        if !weights.is_finite() {
            return Err(Error::NonFinite { name });
        }
        self.layers.insert((layer, target), weights);
        Ok(())
    }

    /// The config.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Records the base this adapter belongs to (see [`LoraConfig::set_base_fingerprint`]).
    pub fn set_base_fingerprint(&mut self, fingerprint: crate::config::BaseFingerprint) {
        self.config.set_base_fingerprint(fingerprint);
    }

    /// The scale `alpha / r` (or `alpha / sqrt(r)`) applied to every delta.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The pair for `target` of `layer`, if the adapter has one.
    pub fn get(&self, layer: usize, target: Target) -> Option<&LoraWeights> {
        self.layers.get(&(layer, target))
    }

    /// The pair for `target` of `layer`, mutable (for training).
    pub fn get_mut(&mut self, layer: usize, target: Target) -> Option<&mut LoraWeights> {
        self.layers.get_mut(&(layer, target))
    }

    /// Every pair, ordered by layer then projection.
    pub fn iter(&self) -> impl Iterator<Item = ((usize, Target), &LoraWeights)> {
        self.layers.iter().map(|(k, v)| (*k, v))
    }

    /// Number of A/B pairs.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the adapter has no pairs.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Number of trainable parameters (all A and B values).
    pub fn num_parameters(&self) -> usize {
        self.layers.values().map(|w| w.a.len() + w.b.len()).sum()
    }

    /// Whether the adapter has a pair for `target` of `layer`.
    pub fn applies_to(&self, layer: usize, target: Target) -> bool {
        self.layers.contains_key(&(layer, target))
    }

    /// `out += weight·scale·B(A·x)` for `n` tokens (`x`: `[n, in]`, `out`: `[n, out]`);
    /// nothing when the adapter does not target this projection.
    ///
    /// # Panics
    /// If the buffers are not `n` rows of the pair's widths.
    pub fn add_delta(
        &self,
        layer: usize,
        target: Target,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        weight: f32,
    ) {
        if let Some(w) = self.layers.get(&(layer, target)) {
            w.add_delta(x, n, out, weight * self.scale);
        }
    }
}

/// Several adapters active at once, each with a weight: the delta is
/// `Σᵢ wᵢ·sᵢ·Bᵢ(Aᵢ·x)`. Cloning is cheap (reference counts); the sdk wraps one in its
/// `LinearDelta` hook and swaps whole sets atomically.
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    entries: Vec<(Arc<LoraAdapter>, f32)>,
}

impl LoraSet {
    /// An empty set (the base model).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `adapter` with `weight`.
    pub fn push(&mut self, adapter: Arc<LoraAdapter>, weight: f32) {
        self.entries.push((adapter, weight));
    }

    /// Builder form of [`push`](Self::push).
    pub fn with(mut self, adapter: Arc<LoraAdapter>, weight: f32) -> Self {
        self.push(adapter, weight);
        self
    }

    /// The adapters and their weights, in order.
    pub fn entries(&self) -> &[(Arc<LoraAdapter>, f32)] {
        &self.entries
    }

    /// Number of adapters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set holds no adapter.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether some adapter with a non-zero weight targets `target` of `layer`.
    pub fn applies_to(&self, layer: usize, target: Target) -> bool {
        self.entries.iter().any(|(a, w)| *w != 0.0 && a.applies_to(layer, target))
    }

    /// Adds every adapter's weighted delta to `out`, in order (`x`: `[n, in]`, `out`:
    /// `[n, out]`).
    ///
    /// # Panics
    /// If the buffers are not `n` rows of the projection's widths.
    pub fn add_delta(&self, layer: usize, target: Target, x: &[f32], n: usize, out: &mut [f32]) {
        for (a, w) in &self.entries {
            if *w != 0.0 {
                a.add_delta(layer, target, x, n, out, *w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_can_be_shared_across_threads() {
        fn check<T: Send + Sync>() {}
        check::<LoraSet>();
        check::<LoraAdapter>();
    }

    #[test]
    fn dot_matches_naive() {
        for len in [0, 1, 7, 8, 9, 17, 576] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - naive).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn zero_b_leaves_output_bit_identical() {
        let w =
            LoraWeights::new(2, 3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![0.0; 4]).unwrap();
        let x = [1.0, 1e20, -3.0, 0.5, 0.25, -1e-30];
        let mut out = [-0.0, 1.5, f32::MIN_POSITIVE, -7.0];
        let before = out.map(f32::to_bits);
        w.add_delta(&x, 2, &mut out, 3.0);
        assert_eq!(out.map(f32::to_bits), before);
    }

    #[test]
    fn wrong_lengths_are_shape_errors() {
        assert!(matches!(
            LoraWeights::new(2, 3, 2, vec![0.0; 5], vec![0.0; 4]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            LoraWeights::new(2, 3, 2, vec![0.0; 6], vec![0.0; 3]),
            Err(Error::Shape { .. })
        ));
    }
}
