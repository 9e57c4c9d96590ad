//! The per-(layer, projection) math of each aggregation method, in f64.

use rand::Rng;
use rand_distr::StandardNormal;
use tailor_adapters::linalg::{dot, sym_eig, thin_qr, Mat};
use tailor_adapters::LoraWeights;

/// One client's pair with the coefficient of its `B·A` in the exact sum
/// (`weight · scale · clip factor`).
#[derive(Clone, Copy)]
pub(crate) struct Part<'a> {
    pub w: &'a LoraWeights,
    pub coef: f64,
}

/// One output pair and what the report says about it.
pub(crate) struct PairOut {
    /// `[out, rank]`, row-major.
    pub b: Vec<f32>,
    /// `[rank, in]`, row-major.
    pub a: Vec<f32>,
    /// `‖Σ coefᵢ·Bᵢ·Aᵢ‖_F` (the exact weighted sum, after clipping, before noise).
    pub exact_norm: f64,
    /// `‖result − exact sum‖_F` (`None` when not computed).
    pub error: Option<f64>,
    /// Exact method: the Frobenius norm of the singular values dropped by the rank cap.
    pub truncation_residual: Option<f64>,
}

/// `[out, N]` with columns `coefᵢ·Bᵢ` and `[N, in]` with rows `Aᵢ`.
fn stack(parts: &[Part<'_>], d_out: usize, d_in: usize) -> (Mat, Mat) {
    let n: usize = parts.iter().map(|p| p.w.r()).sum();
    let mut bc = Mat::zeros(d_out, n);
    let mut ac = Mat::zeros(n, d_in);
    let mut col = 0;
    for p in parts {
        let r = p.w.r();
        for o in 0..d_out {
            let row = &mut bc.row_mut(o)[col..col + r];
            for (x, b) in row.iter_mut().zip(&p.w.b()[o * r..(o + 1) * r]) {
                *x = p.coef * *b as f64;
            }
        }
        for k in 0..r {
            for (x, a) in ac.row_mut(col + k).iter_mut().zip(&p.w.a()[k * d_in..(k + 1) * d_in]) {
                *x = *a as f64;
            }
        }
        col += r;
    }
    (bc, ac)
}

/// `‖Σ coefᵢ·Bᵢ·Aᵢ‖_F` in factor form (`Σ (BᵀB)∘(AAᵀ)` over the stacked factors) or from
/// the dense sum, whichever costs fewer flops.
pub(crate) fn sum_norm(parts: &[Part<'_>], d_out: usize, d_in: usize) -> f64 {
    let (bc, ac) = stack(parts, d_out, d_in);
    let n = bc.cols();
    if n * (d_out + d_in) <= 2 * d_out * d_in {
        dot(bc.gram_cols().as_slice(), ac.gram_rows().as_slice()).max(0.0).sqrt()
    } else {
        bc.matmul(&ac).frobenius()
    }
}

/// The dense `Σ coefᵢ·Bᵢ·Aᵢ`.
pub(crate) fn dense_sum(parts: &[Part<'_>], d_out: usize, d_in: usize) -> Mat {
    let (bc, ac) = stack(parts, d_out, d_in);
    bc.matmul(&ac)
}

/// Adds `N(0, std²)` to every entry.
pub(crate) fn add_noise(m: &mut Mat, std: f64, rng: &mut impl Rng) {
    if std > 0.0 {
        for x in m.as_mut_slice() {
            let z: f64 = rng.sample(StandardNormal);
            *x += std * z;
        }
    }
}

/// The best rank-`rank` factors of `c` (`[p, q]`): `(left [p, rank], right [rank, q],
/// eigenvalues of the smaller Gram matrix, descending = squared singular values)`, from the
/// eigendecomposition of `cᵀc` or `ccᵀ` ([`sym_eig`]). The singular values are split evenly
/// (`left = U·√S`, `right = √S·Vᵀ`); components below `1e-12·σ₁` are left zero.
pub(crate) fn decompose(c: &Mat, rank: usize) -> (Mat, Mat, Vec<f64>) {
    let (p, q) = (c.rows(), c.cols());
    let mut left = Mat::zeros(p, rank);
    let mut right = Mat::zeros(rank, q);
    let small_right = q <= p;
    let g = if small_right { c.gram_cols() } else { c.gram_rows() };
    let (lambda, vecs) = sym_eig(&g);
    let s: Vec<f64> = lambda.iter().map(|l| l.max(0.0).sqrt()).collect();
    let s1 = s.first().copied().unwrap_or(0.0);
    let kept: Vec<usize> = (0..rank.min(s.len())).filter(|&k| s[k] > 1e-12 * s1 && s[k] > 0.0).collect();
    // The kept eigenvectors as columns.
    let mut vk = Mat::zeros(vecs.cols(), kept.len());
    for (j, &k) in kept.iter().enumerate() {
        for (i, x) in vecs.row(k).iter().enumerate() {
            vk.set(i, j, *x);
        }
    }
    if small_right {
        // c·v = σ·u: left column = c·v/√σ, right row = √σ·vᵀ.
        let cv = c.matmul(&vk); // [p, kept]
        for (j, &k) in kept.iter().enumerate() {
            let root = s[k].sqrt();
            for i in 0..p {
                left.set(i, k, cv.get(i, j) / root);
            }
            for (x, v) in right.row_mut(k).iter_mut().zip(vecs.row(k)) {
                *x = root * v;
            }
        }
    } else {
        // uᵀ·c = σ·vᵀ: left column = √σ·u, right row = uᵀc/√σ.
        let utc = vk.transpose().matmul(c); // [kept, q]
        for (j, &k) in kept.iter().enumerate() {
            let root = s[k].sqrt();
            for (i, u) in vecs.row(k).iter().enumerate() {
                left.set(i, k, root * u);
            }
            for (x, v) in right.row_mut(k).iter_mut().zip(utc.row(j)) {
                *x = v / root;
            }
        }
    }
    (left, right, lambda)
}

fn to_f32(m: &Mat) -> Vec<f32> {
    m.as_slice().iter().map(|&x| x as f32).collect()
}

/// `sqrt(Σ_{k ≥ rank} max(λₖ, 0))`.
fn tail(lambda: &[f64], rank: usize) -> f64 {
    lambda.iter().skip(rank).map(|l| l.max(0.0)).sum::<f64>().sqrt()
}

/// Exact: `Σ coefᵢ·Bᵢ·Aᵢ` refactored to `rank` (optimal in Frobenius norm; exact when
/// `rank ≥ Σ rᵢ`). Without noise and with `Σ rᵢ ≤ min(out, in)` it never forms the dense
/// sum: thin QR of both stacked factors, the `N × N` core `R_B·R_Aᵀ`, its decomposition.
/// Otherwise (more stacked rank than the projection's width, or central noise) it factors
/// the dense `out × in` sum, with `N(0, std²)` added to every entry when `noise` is given.
pub(crate) fn exact_pair(
    parts: &[Part<'_>],
    d_out: usize,
    d_in: usize,
    rank: usize,
    noise: Option<(f64, &mut rand_chacha::ChaCha20Rng)>,
) -> PairOut {
    let n: usize = parts.iter().map(|p| p.w.r()).sum();
    if noise.is_none() && n <= d_out.min(d_in) {
        let (bc, ac) = stack(parts, d_out, d_in);
        let (qb, rb) = thin_qr(&bc);
        let (qa, ra) = thin_qr(&ac.transpose());
        let core = rb.matmul(&ra.transpose());
        let exact_norm = core.frobenius();
        let (left, right, lambda) = decompose(&core, rank);
        let residual = tail(&lambda, rank);
        return PairOut {
            b: to_f32(&qb.matmul(&left)),
            a: to_f32(&right.matmul(&qa.transpose())),
            exact_norm,
            error: Some(residual),
            truncation_residual: Some(residual),
        };
    }
    let exact = dense_sum(parts, d_out, d_in);
    let exact_norm = exact.frobenius();
    match noise {
        None => {
            let (left, right, lambda) = decompose(&exact, rank);
            let residual = tail(&lambda, rank);
            PairOut {
                b: to_f32(&left),
                a: to_f32(&right),
                exact_norm,
                error: Some(residual),
                truncation_residual: Some(residual),
            }
        }
        Some((std, rng)) => {
            let mut noisy = exact.clone();
            add_noise(&mut noisy, std, rng);
            let (left, right, lambda) = decompose(&noisy, rank);
            let mut diff = left.matmul(&right);
            for (x, e) in diff.as_mut_slice().iter_mut().zip(exact.as_slice()) {
                *x -= e;
            }
            PairOut {
                b: to_f32(&left),
                a: to_f32(&right),
                exact_norm,
                error: Some(diff.frobenius()),
                truncation_residual: Some(tail(&lambda, rank)),
            }
        }
    }
}

/// FedIT: `B̄ = Σ coefᵢ·Bᵢ / s_out` and `Ā = Σ weightᵢ·Aᵢ`, ranks zero-padded to `rank`; `weights[i]` is client i's normalised
/// weight. The error against the exact sum is computed when `report_error`.
pub(crate) fn fedit_pair(
    parts: &[Part<'_>],
    weights: &[f64],
    d_out: usize,
    d_in: usize,
    rank: usize,
    s_out: f64,
    report_error: bool,
) -> PairOut {
    let mut b = vec![0f64; d_out * rank];
    let mut a = vec![0f64; rank * d_in];
    for (p, &wt) in parts.iter().zip(weights) {
        let r = p.w.r();
        for o in 0..d_out {
            for k in 0..r {
                b[o * rank + k] += p.coef / s_out * p.w.b()[o * r + k] as f64;
            }
        }
        for (x, y) in a[..r * d_in].iter_mut().zip(p.w.a()) {
            *x += wt * *y as f64;
        }
    }
    finish_factored(parts, b, a, d_out, d_in, rank, s_out, report_error)
}

/// FFA-LoRA: the shared `A` (the first part's; screening made them equal) and
/// `B̄ = Σ coefᵢ·Bᵢ / s_out`, plus `N(0, std²)/s_out` on every entry of `B̄` when `noise`.
pub(crate) fn ffa_pair(
    parts: &[Part<'_>],
    d_out: usize,
    d_in: usize,
    s_out: f64,
    noise: Option<(f64, &mut rand_chacha::ChaCha20Rng)>,
    report_error: bool,
) -> PairOut {
    let rank = parts[0].w.r();
    let mut b = vec![0f64; d_out * rank];
    for p in parts {
        for (x, y) in b.iter_mut().zip(p.w.b()) {
            *x += p.coef / s_out * *y as f64;
        }
    }
    if let Some((std, rng)) = noise {
        let mut m = Mat::from_vec(d_out, rank, b);
        add_noise(&mut m, std / s_out, rng);
        b = m.into_vec();
    }
    let a = parts[0].w.a().iter().map(|&x| x as f64).collect();
    finish_factored(parts, b, a, d_out, d_in, rank, s_out, report_error)
}

#[allow(clippy::too_many_arguments)]
fn finish_factored(
    parts: &[Part<'_>],
    b: Vec<f64>,
    a: Vec<f64>,
    d_out: usize,
    d_in: usize,
    rank: usize,
    s_out: f64,
    report_error: bool,
) -> PairOut {
    let b32: Vec<f32> = b.iter().map(|&x| x as f32).collect();
    let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
    let (mut exact_norm, mut error) = (f64::NAN, None);
    if report_error {
        exact_norm = sum_norm(parts, d_out, d_in);
        // The result in f32, as it is saved; the difference in factor form.
        let out = LoraWeights::new(rank, d_in, d_out, a32.clone(), b32.clone());
        if let Ok(out) = out {
            let mut terms: Vec<Part<'_>> = parts.iter().map(|p| Part { w: p.w, coef: -p.coef }).collect();
            terms.push(Part { w: &out, coef: s_out });
            error = Some(sum_norm(&terms, d_out, d_in));
        }
    }
    PairOut { b: b32, a: a32, exact_norm, error, truncation_residual: None }
}

/// Coordinate-wise median (`trim = None`) or trimmed mean (dropping `⌊trim·n⌋` values at
/// each end) of the clients' dense deltas `sᵢ·fᵢ·Bᵢ·Aᵢ` (unweighted: one client, one
/// value), refactored to `rank`. `unweighted[i]` is `sᵢ·fᵢ`; the error is against the
/// weighted exact sum (`parts`).
pub(crate) fn robust_pair(
    parts: &[Part<'_>],
    unweighted: &[f64],
    d_out: usize,
    d_in: usize,
    rank: usize,
    trim: Option<f64>,
) -> PairOut {
    let n = parts.len();
    let mut out = Mat::zeros(d_out, d_in);
    let mut rows = vec![0f64; n * d_in];
    let mut column = vec![0f64; n];
    for o in 0..d_out {
        rows.iter_mut().for_each(|x| *x = 0.0);
        for (i, (p, &c)) in parts.iter().zip(unweighted).enumerate() {
            let r = p.w.r();
            let row = &mut rows[i * d_in..(i + 1) * d_in];
            for k in 0..r {
                let bk = c * p.w.b()[o * r + k] as f64;
                for (x, a) in row.iter_mut().zip(&p.w.a()[k * d_in..(k + 1) * d_in]) {
                    *x += bk * *a as f64;
                }
            }
        }
        for j in 0..d_in {
            for i in 0..n {
                column[i] = rows[i * d_in + j];
            }
            column.sort_by(f64::total_cmp);
            let v = match trim {
                None => crate::refusal::median(&column),
                Some(t) => {
                    let cut = ((t * n as f64).floor() as usize).min((n - 1) / 2);
                    let kept = &column[cut..n - cut];
                    kept.iter().sum::<f64>() / kept.len() as f64
                }
            };
            out.set(o, j, v);
        }
    }
    let exact = dense_sum(parts, d_out, d_in);
    let (left, right, lambda) = decompose(&out, rank);
    let mut diff = left.matmul(&right);
    for (x, e) in diff.as_mut_slice().iter_mut().zip(exact.as_slice()) {
        *x -= e;
    }
    PairOut {
        b: to_f32(&left),
        a: to_f32(&right),
        exact_norm: exact.frobenius(),
        error: Some(diff.frobenius()),
        truncation_residual: Some(tail(&lambda, rank)),
    }
}
