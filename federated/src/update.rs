//! A client's update and its norm, computed from the factors.

use std::path::Path;

use tailor_adapters::linalg::{dot, Mat};
use tailor_adapters::peft::{self, LoadOptions};
use tailor_adapters::LoraAdapter;

use crate::error::Result;

/// One client's contribution to a round: its adapter (the delta `ΔW = scale·B·A` per
/// targeted layer and projection, with its config and base fingerprint) and how many
/// samples it trained on (its weight, normalised over the round).
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The client's name (reports and refusals use it).
    pub client: String,
    /// The adapter, in PEFT's layout when on disk.
    pub adapter: LoraAdapter,
    /// Number of local training samples.
    pub samples: u64,
}

impl Update {
    /// An update of `client` with `samples` samples.
    pub fn new(client: impl Into<String>, adapter: LoraAdapter, samples: u64) -> Self {
        Self { client: client.into(), adapter, samples }
    }

    /// Loads the PEFT adapter directory `dir` (see [`peft::load`]; `opts` checks shapes and
    /// fingerprint) as `client`'s update.
    pub fn load(client: impl Into<String>, dir: &Path, samples: u64, opts: &LoadOptions) -> Result<Self> {
        Ok(Self::new(client, peft::load(dir, opts)?, samples))
    }
}

/// `‖scale·B·A‖_F` summed over the adapter's pairs (the square root of the sum of squares),
/// computed from the factors: `‖B·A‖²_F = Σᵢⱼ (BᵀB)ᵢⱼ·(A·Aᵀ)ᵢⱼ` with two `r × r` Gram
/// matrices, never the dense `out × in` delta. NaN if a factor holds NaN.
pub fn update_norm(adapter: &LoraAdapter) -> f64 {
    let s = adapter.scale() as f64;
    let sq: f64 = adapter
        .iter()
        .map(|(_, w)| pair_norm_sq(w.b(), w.a(), w.r(), w.in_features(), w.out_features()))
        .sum();
    if sq.is_nan() { f64::NAN } else { s.abs() * sq.max(0.0).sqrt() }
}

/// `‖B·A‖²_F` from the `r × r` Gram matrices.
pub(crate) fn pair_norm_sq(b: &[f32], a: &[f32], r: usize, d_in: usize, d_out: usize) -> f64 {
    let gb = Mat::from_f32(d_out, r, b).gram_cols();
    let ga = Mat::from_f32(r, d_in, a).gram_rows();
    dot(gb.as_slice(), ga.as_slice())
}

/// `‖scale·B‖_F` over all pairs: what FFA-LoRA clips and noises (its `A` is frozen and
/// public).
pub(crate) fn b_norm(adapter: &LoraAdapter) -> f64 {
    let s = adapter.scale() as f64;
    let sq: f64 = adapter.iter().flat_map(|(_, w)| w.b().iter()).map(|&x| x as f64 * x as f64).sum();
    s.abs() * sq.sqrt()
}

/// Scales every `B` of `adapter` by `factor`.
pub(crate) fn scale_b(adapter: &mut LoraAdapter, factor: f64) {
    let keys: Vec<_> = adapter.iter().map(|(k, _)| k).collect();
    for (l, t) in keys {
        if let Some(w) = adapter.get_mut(l, t) {
            w.b_mut().iter_mut().for_each(|x| *x = (*x as f64 * factor) as f32);
        }
    }
}

/// The factor `min(1, max_norm / norm)` for an update of norm `norm` (0 when the norm is
/// not finite: such an update is dropped to zero rather than passed on).
pub(crate) fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    let max_norm = max_norm.max(0.0);
    if !norm.is_finite() {
        0.0
    } else if norm > max_norm {
        max_norm / norm
    } else {
        1.0
    }
}

/// Clips the update to `‖ΔW‖_F ≤ max_norm` (the norm of [`update_norm`]) by scaling every
/// `B`; returns the factor applied (1 when it was within the bound). A negative `max_norm`
/// counts as 0; an update whose norm is not finite is scaled by 0.
pub fn clip_update(adapter: &mut LoraAdapter, max_norm: f64) -> f64 {
    let f = clip_factor(update_norm(adapter), max_norm);
    if f != 1.0 {
        scale_b(adapter, f);
    }
    f
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use tailor_adapters::{LoraConfig, LoraWeights, Target};

    /// A rank-`r` adapter with fresh uniform(-1, 1) factors on `targets` of `layers` layers,
    /// with widths `dims(target) = (in, out)`.
    pub(crate) fn random_adapter(
        rng: &mut impl Rng,
        r: usize,
        alpha: f64,
        layers: usize,
        targets: &[Target],
        dims: impl Fn(Target) -> (usize, usize),
    ) -> LoraAdapter {
        let mut a = LoraAdapter::new(LoraConfig::new(r, alpha, targets)).unwrap();
        for l in 0..layers {
            for &t in targets {
                let (i, o) = dims(t);
                let av = (0..r * i).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                let bv = (0..o * r).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                a.insert(l, t, LoraWeights::new(r, i, o, av, bv).unwrap()).unwrap();
            }
        }
        a
    }

    /// The dense `scale·B·A` of one pair, in f64.
    pub(crate) fn dense(adapter: &LoraAdapter, l: usize, t: Target) -> Vec<f64> {
        let w = adapter.get(l, t).unwrap();
        let (r, i, o) = (w.r(), w.in_features(), w.out_features());
        let s = adapter.scale() as f64;
        let mut d = vec![0f64; o * i];
        for oo in 0..o {
            for k in 0..r {
                for ii in 0..i {
                    d[oo * i + ii] += s * w.b()[oo * r + k] as f64 * w.a()[k * i + ii] as f64;
                }
            }
        }
        d
    }

    fn dense_norm(adapter: &LoraAdapter) -> f64 {
        adapter.iter().map(|((l, t), _)| dense(adapter, l, t).iter().map(|x| x * x).sum::<f64>()).sum::<f64>().sqrt()
    }

    #[test]
    fn norm_from_factors_is_the_dense_norm_and_clipping_bounds_it() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(rand::random());
        for r in [1, 3, 8] {
            let dims = |t: Target| if t == Target::K { (9, 4) } else { (7, 11) };
            let mut a = random_adapter(&mut rng, r, 2.0 * r as f64, 2, &[Target::Q, Target::K], dims);
            let (n, d) = (update_norm(&a), dense_norm(&a));
            assert!((n - d).abs() <= 1e-12 * d, "r = {r}: {n} vs {d}");
            let f = clip_update(&mut a, n / 3.0);
            assert!((f - 1.0 / 3.0).abs() < 1e-12);
            assert!((update_norm(&a) - n / 3.0).abs() < 1e-6 * n, "clipped to the bound (f32 factors)");
            assert_eq!(clip_update(&mut a, n), 1.0, "within the bound: unchanged");
            assert_eq!(clip_update(&mut a, -1.0), 0.0);
            assert_eq!(update_norm(&a), 0.0);
        }
    }
}
