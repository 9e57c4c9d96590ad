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
    let (u, s, v) = svd(&core);
    assemble(&qb.matmul(&u), &s, &qa.matmul(&v), rank)
}

/// `B = U·√S`, `A = √S·Vᵀ`, keeping the `rank` largest singular values (zero-padded).
fn assemble(u: &Mat, s: &[f64], v: &Mat, rank: usize) -> (Vec<f32>, Vec<f32>) {
    let (d_out, d_in) = (u.rows, v.rows);
    let mut b = vec![0f32; d_out * rank];
    let mut a = vec![0f32; rank * d_in];
    for k in 0..rank.min(s.len()) {
        let root = s[k].max(0.0).sqrt();
        if root == 0.0 {
            continue;
        }
        for o in 0..d_out {
            b[o * rank + k] = (u.get(o, k) * root) as f32;
        }
        for i in 0..d_in {
            a[k * d_in + i] = (v.get(i, k) * root) as f32;
        }
    }
    (b, a)
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
    let mat = Mat { rows, cols, v: m.to_vec() };
    let k = (rank + 8).min(rows).min(cols);
    let mut rng = SplitMix(seed);
    let omega = Mat { rows: cols, cols: k, v: (0..cols * k).map(|_| rng.unit() * 2.0 - 1.0).collect() };
    let mut q = thin_qr(&mat.matmul(&omega)).0; // [rows, k]
    let mt = mat.transpose();
    for _ in 0..2 {
        let z = thin_qr(&mt.matmul(&q)).0; // [cols, k]
        q = thin_qr(&mat.matmul(&z)).0;
    }
    // m ≈ Q·(Qᵀm); Qᵀm = [k, cols]; its transpose = Qz·Rz, so Qᵀm = Rzᵀ·Qzᵀ.
    let small_t = mt.matmul(&q); // [cols, k] = (Qᵀm)ᵀ
    let (qz, rz) = thin_qr(&small_t); // [cols, kz], [kz, k]
    let (u, s, v) = svd(&rz.transpose()); // [k, kz] = U S Vᵀ
    // Qᵀm = U S Vᵀ Qzᵀ, so m ≈ (Q U) S (Qz V)ᵀ.
    assemble(&q.matmul(&u), &s, &qz.matmul(&v), rank)
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

// ------------------------------------------------------------------------- dense f64 algebra

/// A row-major f64 matrix.
#[derive(Debug, Clone)]
struct Mat {
    rows: usize,
    cols: usize,
    v: Vec<f64>,
}

impl Mat {
    fn zeros(rows: usize, cols: usize) -> Self {
        Self { rows, cols, v: vec![0.0; rows * cols] }
    }
    fn get(&self, r: usize, c: usize) -> f64 {
        self.v[r * self.cols + c]
    }
    fn set(&mut self, r: usize, c: usize, x: f64) {
        self.v[r * self.cols + c] = x;
    }
    fn transpose(&self) -> Mat {
        let mut t = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                t.set(c, r, self.get(r, c));
            }
        }
        t
    }
    fn matmul(&self, o: &Mat) -> Mat {
        assert_eq!(self.cols, o.rows, "matmul shapes");
        let mut m = Mat::zeros(self.rows, o.cols);
        for r in 0..self.rows {
            let out = &mut m.v[r * o.cols..(r + 1) * o.cols];
            for k in 0..self.cols {
                let x = self.v[r * self.cols + k];
                if x != 0.0 {
                    for (y, b) in out.iter_mut().zip(&o.v[k * o.cols..(k + 1) * o.cols]) {
                        *y += x * b;
                    }
                }
            }
        }
        m
    }
}

/// Thin QR by Householder reflections: `m = Q·R`, `Q` `[rows, k]` with orthonormal columns,
/// `R` `[k, cols]` upper triangular, `k = min(rows, cols)`.
fn thin_qr(m: &Mat) -> (Mat, Mat) {
    let (rows, cols) = (m.rows, m.cols);
    let k = rows.min(cols);
    let mut r = m.clone();
    let mut vs: Vec<Vec<f64>> = Vec::with_capacity(k);
    for j in 0..k {
        let norm = (j..rows).map(|i| r.get(i, j).powi(2)).sum::<f64>().sqrt();
        let mut v: Vec<f64> = (j..rows).map(|i| r.get(i, j)).collect();
        if norm > 0.0 {
            let alpha = if v[0] >= 0.0 { -norm } else { norm };
            v[0] -= alpha;
            let vn = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if vn > 0.0 {
                v.iter_mut().for_each(|x| *x /= vn);
                for c in j..cols {
                    let dot: f64 = (j..rows).map(|i| v[i - j] * r.get(i, c)).sum();
                    for i in j..rows {
                        let x = r.get(i, c) - 2.0 * v[i - j] * dot;
                        r.set(i, c, x);
                    }
                }
            } else {
                v.iter_mut().for_each(|x| *x = 0.0);
            }
        } else {
            v.iter_mut().for_each(|x| *x = 0.0);
        }
        vs.push(v);
    }
    // Q = H₀·H₁·…·H_{k-1} applied to the first k columns of the identity.
    let mut q = Mat::zeros(rows, k);
    for c in 0..k {
        q.set(c, c, 1.0);
    }
    for j in (0..k).rev() {
        let v = &vs[j];
        for c in 0..k {
            let dot: f64 = (j..rows).map(|i| v[i - j] * q.get(i, c)).sum();
            if dot != 0.0 {
                for i in j..rows {
                    let x = q.get(i, c) - 2.0 * v[i - j] * dot;
                    q.set(i, c, x);
                }
            }
        }
    }
    let mut rr = Mat::zeros(k, cols);
    for i in 0..k {
        for c in i..cols {
            rr.set(i, c, r.get(i, c));
        }
    }
    (q, rr)
}

/// SVD of a small matrix by one-sided Jacobi: `m = U·diag(S)·Vᵀ` with `S` descending, `U`
/// `[rows, n]`, `V` `[cols, n]`, `n = min(rows, cols)`.
fn svd(m: &Mat) -> (Mat, Vec<f64>, Mat) {
    if m.rows < m.cols {
        let (u, s, v) = svd(&m.transpose());
        return (v, s, u);
    }
    let (rows, n) = (m.rows, m.cols);
    let mut a = m.clone(); // columns converge to U·S
    let mut v = Mat::zeros(n, n);
    for i in 0..n {
        v.set(i, i, 1.0);
    }
    for _sweep in 0..60 {
        let mut off = 0f64;
        for p in 0..n {
            for q in p + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0f64, 0f64, 0f64);
                for i in 0..rows {
                    let (x, y) = (a.get(i, p), a.get(i, q));
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                off = off.max(gamma.abs() / (alpha * beta).sqrt());
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for i in 0..rows {
                    let (x, y) = (a.get(i, p), a.get(i, q));
                    a.set(i, p, c * x - s * y);
                    a.set(i, q, s * x + c * y);
                }
                for i in 0..n {
                    let (x, y) = (v.get(i, p), v.get(i, q));
                    v.set(i, p, c * x - s * y);
                    v.set(i, q, s * x + c * y);
                }
            }
        }
        if off <= 1e-15 {
            break;
        }
    }
    let mut order: Vec<(f64, usize)> = (0..n).map(|j| ((0..rows).map(|i| a.get(i, j).powi(2)).sum::<f64>().sqrt(), j)).collect();
    order.sort_by(|x, y| y.0.total_cmp(&x.0));
    let mut u = Mat::zeros(rows, n);
    let mut vv = Mat::zeros(n, n);
    let mut s = Vec::with_capacity(n);
    for (k, &(sv, j)) in order.iter().enumerate() {
        s.push(sv);
        for i in 0..rows {
            u.set(i, k, if sv > 0.0 { a.get(i, j) / sv } else { 0.0 });
        }
        for i in 0..n {
            vv.set(i, k, v.get(i, j));
        }
    }
    (u, s, vv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_mat(rows: usize, cols: usize, rng: &mut SplitMix) -> Mat {
        Mat { rows, cols, v: (0..rows * cols).map(|_| rng.unit() * 2.0 - 1.0).collect() }
    }

    fn max_abs_diff(a: &Mat, b: &Mat) -> f64 {
        a.v.iter().zip(&b.v).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn qr_and_svd_reconstruct() {
        let mut rng = SplitMix(rand::random());
        for (r, c) in [(7, 3), (3, 7), (12, 12), (1, 5), (40, 9)] {
            let m = rand_mat(r, c, &mut rng);
            let (q, rr) = thin_qr(&m);
            assert!(max_abs_diff(&q.matmul(&rr), &m) < 1e-12, "qr {r}x{c}");
            let qtq = q.transpose().matmul(&q);
            for i in 0..qtq.rows {
                for j in 0..qtq.cols {
                    assert!((qtq.get(i, j) - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
                }
            }
            let (u, s, v) = svd(&m);
            let mut us = u.clone();
            for i in 0..us.rows {
                for k in 0..s.len() {
                    us.set(i, k, u.get(i, k) * s[k]);
                }
            }
            assert!(max_abs_diff(&us.matmul(&v.transpose()), &m) < 1e-10, "svd {r}x{c}");
            assert!(s.windows(2).all(|w| w[0] >= w[1]));
        }
    }
}
