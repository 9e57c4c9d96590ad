//! Merging LoRA adapters into one, for sharing or for federated aggregation.
//!
//! Every method combines, per (layer, projection), the adapters' deltas
//! `ΔWᵢ = sᵢ·Bᵢ·Aᵢ` (with `sᵢ` the adapter's `alpha / r`) weighted by `wᵢ`, and factors the
//! result back to a rank-`r` adapter by SVD (the best rank-`r` approximation in Frobenius
//! norm; exact when the sum's rank is at most `r`):
//!
//! - [`MergeMethod::Linear`]: `Σ wᵢ·ΔWᵢ`, computed without ever forming a dense matrix: the
//!   sum is `[w₁s₁B₁ … wₙsₙBₙ]·[A₁; …; Aₙ]`, whose SVD comes from two thin QR factorisations
//!   and the SVD of a small `R×R` core (`R = Σ rᵢ`).
//! - [`MergeMethod::Ties`] (Yadav et al., 2023): each weighted `ΔWᵢ` trimmed to its largest
//!   `density` fraction of entries by magnitude, a sign elected per entry (the sign of the
//!   trimmed sum), and the entries that agree with it averaged.
//! - [`MergeMethod::Dare`] (Yu et al., 2023): each weighted `ΔWᵢ` with entries dropped at
//!   random with probability `1 − density` and the rest rescaled by `1 / density`, then summed.
//!
//! The linear algebra (thin QR, Jacobi SVD) is [`crate::linalg`].
//!
//! TIES and DARE work on dense `out × in` matrices, one projection at a time, and factor them
//! with a randomised range finder (two power iterations) followed by the same small SVD.
//!
//! The merged adapter has rank `r`, `alpha = r` (scale 1; the factors carry the magnitudes,
//! split evenly between `A` and `B`), the union of the inputs' target modules, and a pair for
//! every (layer, projection) of the union of the inputs' layers and projections (zero where no
//! input has one); `layers_to_transform` lists those layers when an input restricts its own.

use std::collections::BTreeSet;

use crate::config::{BaseFingerprint, LayerSelection, LoraConfig};
use crate::error::{Error, Result};
use crate::linalg::{split_sqrt, svd, thin_qr, Mat};
use crate::lora::{LoraAdapter, LoraWeights};
use crate::target::Target;

/// How deltas are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum MergeMethod {
    /// Weighted sum.
    Linear,
    /// TIES: trim to the top `density` fraction by magnitude, elect signs, disjoint mean.
    Ties {
        /// Fraction of each delta's entries kept, in `(0, 1]`.
        density: f32,
    },
    /// DARE: drop entries at random, keep `density` of them rescaled by `1 / density`, sum.
    Dare {
        /// Fraction kept, in `(0, 1]`.
        density: f32,
        /// Seed of the random drop (the merge is deterministic given it).
        seed: u64,
    },
}

/// Options of [`merge`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MergeOptions {
    /// Rank of the result; `None`: the largest input rank.
    pub rank: Option<usize>,
    /// How deltas are combined.
    pub method: MergeMethod,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self { rank: None, method: MergeMethod::Linear }
    }
}

impl MergeOptions {
    /// Linear merge at `rank`.
    pub fn linear(rank: Option<usize>) -> Self {
        Self { rank, method: MergeMethod::Linear }
    }

    /// The options with `method`.
    pub fn with_method(mut self, method: MergeMethod) -> Self {
        self.method = method;
        self
    }
}

/// Merges `inputs` (adapter, weight) into one adapter as described in the [module
/// docs](self). The inputs must agree on every shape and, when they record one, on the base
/// fingerprint (which the result records).
pub fn merge(inputs: &[(&LoraAdapter, f32)], opts: &MergeOptions) -> Result<LoraAdapter> {
    if inputs.is_empty() {
        return Err(Error::invalid("merge needs at least one adapter"));
    }
    if let MergeMethod::Ties { density } | MergeMethod::Dare { density, .. } = opts.method {
        if !(density > 0.0 && density <= 1.0) {
            return Err(Error::invalid(format!("merge density {density} is not in (0, 1]")));
        }
    }
    if let Some((_, w)) = inputs.iter().find(|(_, w)| !w.is_finite()) {
        return Err(Error::invalid(format!("merge weight {w} is not finite")));
    }
    let mut fingerprint: Option<&BaseFingerprint> = None;
    for (a, _) in inputs {
        if let Some(f) = a.config().base_fingerprint() {
            match fingerprint {
                Some(g) if g != f => {
                    return Err(Error::BaseMismatch { expected: g.to_string(), actual: f.to_string() })
                }
                _ => fingerprint = Some(f),
            }
        }
    }
    let rank = opts.rank.unwrap_or_else(|| inputs.iter().map(|(a, _)| a.config().r).max().unwrap_or(1));
    if rank == 0 {
        return Err(Error::invalid("merge rank must be at least 1"));
    }
    // Every (layer, target) of the union grid, so the result covers what its config selects.
    let present: BTreeSet<(usize, Target)> = inputs.iter().flat_map(|(a, _)| a.iter().map(|(k, _)| k)).collect();
    let layers: BTreeSet<usize> = present.iter().map(|(l, _)| *l).collect();
    let targets: BTreeSet<Target> = present.iter().map(|(_, t)| *t).collect();
    let keys: Vec<(usize, Target)> = layers.iter().flat_map(|l| targets.iter().map(move |t| (*l, *t))).collect();
    let mut shapes = std::collections::BTreeMap::new();
    for (a, _) in inputs {
        for ((_, t), lw) in a.iter() {
            shapes.entry(t).or_insert((lw.in_features(), lw.out_features()));
        }
    }
    let mut config = LoraConfig::new(rank, rank as f64, &targets.iter().copied().collect::<Vec<_>>());
    if let Some(f) = fingerprint {
        config.set_base_fingerprint(f.clone());
    }
    if inputs.iter().any(|(a, _)| a.config().layers_to_transform.is_some()) {
        config.layers_to_transform = Some(LayerSelection::Many(layers.iter().copied().collect()));
    }
    let mut out = LoraAdapter::new(config)?;
    for (pair_index, &(layer, t)) in keys.iter().enumerate() {
        let parts: Vec<(&LoraWeights, f64)> = inputs
            .iter()
            .filter_map(|(a, w)| a.get(layer, t).map(|lw| (lw, *w as f64 * a.scale() as f64)))
            .collect();
        let (d_in, d_out) = shapes[&t];
        if parts.is_empty() {
            out.insert(layer, t, LoraWeights::zeros(rank, d_in, d_out)?)?;
            continue;
        }
        if let Some((lw, _)) = parts.iter().find(|(lw, _)| (lw.in_features(), lw.out_features()) != (d_in, d_out)) {
            return Err(Error::Shape {
                name: t.module_path(layer),
                expected: vec![d_out, d_in],
                actual: vec![lw.out_features(), lw.in_features()],
            });
        }
        let (b, a) = match opts.method {
            MergeMethod::Linear => linear_pair(&parts, rank, d_in, d_out),
            method => {
                let dense = combine_dense(&parts, d_in, d_out, method, pair_index as u64);
                factor_dense(&dense, d_out, d_in, rank, 0x5eed ^ pair_index as u64)
            }
        };
        out.insert(layer, t, LoraWeights::new(rank, d_in, d_out, a, b)?)?;
    }
    Ok(out)
}

// ------------------------------------------------------------------------- linear, factored

/// `Σ cᵢ·Bᵢ·Aᵢ` refactored to rank `rank`; returns `(B [out, rank], A [rank, in])` in f32.
fn linear_pair(parts: &[(&LoraWeights, f64)], rank: usize, d_in: usize, d_out: usize) -> (Vec<f32>, Vec<f32>) {
    let big_r: usize = parts.iter().map(|(lw, _)| lw.r()).sum();
    // Bc: [out, R] column blocks cᵢ·Bᵢ; Ac: [R, in] row blocks Aᵢ.
    let mut bc = Mat::zeros(d_out, big_r);
    let mut act = Mat::zeros(d_in, big_r); // Acᵀ
    let mut col = 0;
    for (lw, c) in parts {
        let r = lw.r();
        for o in 0..d_out {
            for k in 0..r {
                bc.set(o, col + k, c * lw.b()[o * r + k] as f64);
            }
        }
        for k in 0..r {
            for i in 0..d_in {
                act.set(i, col + k, lw.a()[k * d_in + i] as f64);
            }
        }
        col += r;
    }
    let (qb, rb) = thin_qr(&bc); // [out, kb], [kb, R]
    let (qa, ra) = thin_qr(&act); // [in, ka], [ka, R]
    let core = rb.matmul(&ra.transpose()); // [kb, ka]
    let crate::linalg::Svd { u, s, v } = svd(&core);
    split_sqrt(&qb.matmul(&u), &s, &qa.matmul(&v), rank)
}

// ------------------------------------------------------------------------- TIES and DARE

fn combine_dense(parts: &[(&LoraWeights, f64)], d_in: usize, d_out: usize, method: MergeMethod, salt: u64) -> Vec<f64> {
    let deltas: Vec<Vec<f64>> = parts
        .iter()
        .map(|(lw, c)| {
            let r = lw.r();
            let mut d = vec![0f64; d_out * d_in];
            for o in 0..d_out {
                let row = &mut d[o * d_in..(o + 1) * d_in];
                for k in 0..r {
                    let bk = c * lw.b()[o * r + k] as f64;
                    if bk != 0.0 {
                        for (x, ak) in row.iter_mut().zip(&lw.a()[k * d_in..(k + 1) * d_in]) {
                            *x += bk * *ak as f64;
                        }
                    }
                }
            }
            d
        })
        .collect();
    let n = d_out * d_in;
    match method {
        MergeMethod::Ties { density } => {
            let trimmed: Vec<Vec<f64>> = deltas.into_iter().map(|d| trim(d, density)).collect();
            (0..n)
                .map(|e| {
                    let sign = trimmed.iter().map(|d| d[e]).sum::<f64>().signum();
                    let (mut sum, mut count) = (0.0, 0usize);
                    for d in &trimmed {
                        if d[e] != 0.0 && d[e].signum() == sign {
                            sum += d[e];
                            count += 1;
                        }
                    }
                    if count == 0 { 0.0 } else { sum / count as f64 }
                })
                .collect()
        }
        MergeMethod::Dare { density, seed } => {
            let keep = density as f64;
            let mut out = vec![0f64; n];
            for (i, d) in deltas.iter().enumerate() {
                let mut rng = SplitMix(seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
                for (o, x) in out.iter_mut().zip(d) {
                    if rng.unit() < keep {
                        *o += x / keep;
                    }
                }
            }
            out
        }
        MergeMethod::Linear => {
            let mut out = vec![0f64; n];
            for d in &deltas {
                out.iter_mut().zip(d).for_each(|(o, x)| *o += x);
            }
            out
        }
    }
}

/// Keeps the `density` fraction of entries largest in magnitude, zeroing the rest.
fn trim(mut d: Vec<f64>, density: f32) -> Vec<f64> {
    let keep = ((d.len() as f64 * density as f64).ceil() as usize).clamp(1, d.len());
    if keep < d.len() {
        let mut mags: Vec<f64> = d.iter().map(|x| x.abs()).collect();
        let (_, nth, _) = mags.select_nth_unstable_by(d.len() - keep, f64::total_cmp);
        let threshold = *nth;
        let mut kept = 0;
        // Ties at the threshold: keep the first ones met, up to `keep` in all.
        let above = d.iter().filter(|x| x.abs() > threshold).count();
        let mut at_threshold = keep - above.min(keep);
        for x in d.iter_mut() {
            let m = x.abs();
            if m > threshold || (m == threshold && at_threshold > 0 && { at_threshold -= 1; true }) {
                kept += 1;
            } else {
                *x = 0.0;
            }
        }
        debug_assert!(kept <= keep);
    }
    d
}

/// Best rank-`rank` factors of the dense `[rows, cols]` matrix `m` (randomised range finder
/// with oversampling and two power iterations, then an exact SVD of the projection).
fn factor_dense(m: &[f64], rows: usize, cols: usize, rank: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mat = Mat::from_vec(rows, cols, m.to_vec());
    let k = (rank + 8).min(rows).min(cols);
    let mut rng = SplitMix(seed);
    let omega = Mat::from_vec(cols, k, (0..cols * k).map(|_| rng.unit() * 2.0 - 1.0).collect());
    let mut q = thin_qr(&mat.matmul(&omega)).0; // [rows, k]
    let mt = mat.transpose();
    for _ in 0..2 {
        let z = thin_qr(&mt.matmul(&q)).0; // [cols, k]
        q = thin_qr(&mat.matmul(&z)).0;
    }
    // m ≈ Q·(Qᵀm); Qᵀm = [k, cols]; its transpose = Qz·Rz, so Qᵀm = Rzᵀ·Qzᵀ.
    let small_t = mt.matmul(&q); // [cols, k] = (Qᵀm)ᵀ
    let (qz, rz) = thin_qr(&small_t); // [cols, kz], [kz, k]
    let crate::linalg::Svd { u, s, v } = svd(&rz.transpose()); // [k, kz] = U S Vᵀ
    // Qᵀm = U S Vᵀ Qzᵀ, so m ≈ (Q U) S (Qz V)ᵀ.
    split_sqrt(&q.matmul(&u), &s, &qz.matmul(&v), rank)
}

/// A small deterministic generator (SplitMix64), so merges are reproducible everywhere.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
