//! The privacy accountant: Rényi DP of the sampled Gaussian mechanism and its conversion
//! to `(ε, δ)`.
//!
//! One round of DP federated averaging — each client included with probability `q`, each
//! update clipped to `C`, Gaussian noise of standard deviation `σ·C` on their sum — is the
//! Poisson-subsampled Gaussian mechanism with noise multiplier `σ`. Its RDP at order `α` is
//! computed as in Mironov, Talwar and Zhang, *Rényi Differential Privacy of the Sampled
//! Gaussian Mechanism* (2019), the computation of tensorflow-privacy, Google's
//! `dp_accounting` (`rdp/rdp_privacy_accountant.py`) and Opacus (`analysis/rdp.py`):
//! integer orders by the binomial expansion of `A_α` in log space, fractional orders by the
//! two series over the halves split at `z₀ = σ²·ln(1/q − 1) + ½` (Sec. 3.3 of the paper),
//! `q = 1` as the plain Gaussian `α/(2σ²)`. RDP composes additively over rounds.
//!
//! The conversion to `(ε, δ)` is the improved one of Canonne, Kamath and Steinke (2020,
//! Prop. 12; also Asoodeh et al. 2020): `ε = rdp − (ln δ + ln α)/(α − 1) + ln((α − 1)/α)`,
//! minimised over the orders — the formula of Opacus ≥ 1.0 (`privacy_analysis.
//! get_privacy_spent`) and of `dp_accounting` (`compute_epsilon`). Like `dp_accounting`,
//! orders `α ≤ 1.01` are skipped (the bound is unstable there), an order whose RDP
//! satisfies `δ² + expm1(−rdp) > 0` gives `ε = 0` (the bound through the KL divergence),
//! and ε is at least 0. With the default orders ([`DEFAULT_ORDERS`], `dp_accounting`'s:
//! Opacus' defaults plus 11 and 128…1024) the result equals `dp_accounting`'s
//! `RdpAccountant` within floating-point rounding; the integration test
//! `cli/tests/federated.rs` checks it against `dp-accounting==0.6.0`.

use crate::error::{Error, Result};

/// The orders `α` used by [`epsilon`]: `1.1, 1.2, …, 10.9`, `11, …, 63`, `128, 256, 512,
/// 1024` (`dp_accounting`'s `DEFAULT_RDP_ORDERS`).
pub fn default_orders() -> Vec<f64> {
    let mut o: Vec<f64> = (1..100).map(|x| 1.0 + x as f64 / 10.0).collect();
    o.extend((11..64).map(|x| x as f64));
    o.extend([128.0, 256.0, 512.0, 1024.0]);
    o
}

/// The number of orders in [`default_orders`].
pub const DEFAULT_ORDERS: usize = 99 + 53 + 4;

/// RDP of one step of the Poisson-subsampled Gaussian mechanism (sampling rate `q`, noise
/// multiplier `sigma`) at each of `orders` (each > 1). Infinite when `sigma == 0` (and
/// `q > 0`) or for an infinite order, 0 when `q == 0`; NaN for arguments out of domain
/// (`q` outside `[0, 1]`, `sigma < 0`, an order ≤ 1).
pub fn rdp_subsampled_gaussian(q: f64, sigma: f64, orders: &[f64]) -> Vec<f64> {
    orders.iter().map(|&alpha| rdp_one(q, sigma, alpha)).collect()
}

fn rdp_one(q: f64, sigma: f64, alpha: f64) -> f64 {
    if !(0.0..=1.0).contains(&q) || sigma.is_nan() || sigma < 0.0 || alpha.is_nan() || alpha <= 1.0 {
        return f64::NAN;
    }
    if q == 0.0 {
        return 0.0;
    }
    if alpha.is_infinite() || sigma == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 && alpha < 1e9 {
        log_a_int(q, sigma, alpha as u64)
    } else {
        log_a_frac(q, sigma, alpha)
    };
    log_a / (alpha - 1.0)
}

/// `ln(eˣ + eʸ)`.
fn log_add(x: f64, y: f64) -> f64 {
    let (a, b) = (x.min(y), x.max(y));
    if a == f64::NEG_INFINITY {
        return b;
    }
    (a - b).exp().ln_1p() + b
}

/// `ln C(n, k)` through `ln Γ`.
fn log_comb(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// `ln erfc(x)`, accurate far into the tail.
fn log_erfc(x: f64) -> f64 {
    let r = libm::erfc(x);
    if r > 0.0 {
        return r.ln();
    }
    // The asymptotic series at infinity (as tensorflow-privacy does where erfc underflows).
    -std::f64::consts::PI.ln() / 2.0 - x.ln() - x * x - 0.5 * x.powi(-2) + 0.625 * x.powi(-4)
        - 37.0 / 24.0 * x.powi(-6)
        + 353.0 / 64.0 * x.powi(-8)
}

/// `ln A_α` for integer `α`: `Σᵢ C(α, i)·qⁱ·(1 − q)^(α−i)·exp((i² − i)/(2σ²))`.
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let (lq, l1mq) = (q.ln(), (-q).ln_1p());
    let mut log_a = f64::NEG_INFINITY;
    for i in 0..=alpha {
        let i = i as f64;
        let a = alpha as f64;
        let s = log_comb(a, i) + i * lq + (a - i) * l1mq + (i * i - i) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, s);
    }
    log_a
}

/// `ln A_α` for fractional `α`: the two series of Mironov et al. (Sec. 3.3), summed until
/// both terms decrease and are below `e⁻³⁰` of the total (at most 1000 terms; an order that
/// does not converge counts as infinite, so it is never the minimiser).
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let (lq, l1mq) = (q.ln(), (-q).ln_1p());
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let s2 = std::f64::consts::SQRT_2 * sigma;
    for i in 0..1000 {
        let i = i as f64;
        let log_coef = log_comb(alpha, i);
        let j = alpha - i;
        let log_t0 = log_coef + i * lq + j * l1mq;
        let log_t1 = log_coef + j * lq + i * l1mq;
        let log_e0 = 0.5f64.ln() + log_erfc((i - z0) / s2);
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / s2);
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

/// `(ε, order)` from RDP values at `orders` for a target `δ` (the conversion in the
/// [module docs](self)). [`Error::InvalidOptions`] if the lengths differ, `δ` is not in
/// `(0, 1)`, or an order is below 1.
pub fn epsilon_from_rdp(orders: &[f64], rdp: &[f64], delta: f64) -> Result<(f64, f64)> {
    if orders.len() != rdp.len() || orders.is_empty() {
        return Err(Error::options("orders and RDP values must be non-empty and of one length"));
    }
    if !(delta > 0.0 && delta < 1.0) {
        return Err(Error::options(format!("delta {delta} is not in (0, 1)")));
    }
    let mut best = (f64::INFINITY, orders[0]);
    for (&a, &r) in orders.iter().zip(rdp) {
        if a.is_nan() || a < 1.0 {
            return Err(Error::options(format!("RDP order {a} is below 1")));
        }
        let eps = if r.is_nan() {
            f64::INFINITY
        } else if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best.0 {
            best = (eps, a);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

/// `(ε, best order)` after `rounds` rounds of the sampled Gaussian mechanism with
/// `noise_multiplier` `σ` (noise std / clipping bound) and `sample_rate` `q` (the chance a
/// client takes part in a round), at `delta`, over [`default_orders`]. ε is infinite when
/// `σ = 0`. [`Error::InvalidOptions`] for `σ < 0`, `q` outside `[0, 1]` or `δ` outside
/// `(0, 1)`.
pub fn epsilon(noise_multiplier: f64, sample_rate: f64, rounds: u64, delta: f64) -> Result<(f64, f64)> {
    if noise_multiplier.is_nan() || noise_multiplier < 0.0 {
        return Err(Error::options(format!("noise multiplier {noise_multiplier} is negative or NaN")));
    }
    if !(0.0..=1.0).contains(&sample_rate) {
        return Err(Error::options(format!("sample rate {sample_rate} is not in [0, 1]")));
    }
    let orders = default_orders();
    let rdp: Vec<f64> = rdp_subsampled_gaussian(sample_rate, noise_multiplier, &orders)
        .into_iter()
        .map(|r| if rounds == 0 { 0.0 } else { r * rounds as f64 })
        .collect();
    epsilon_from_rdp(&orders, &rdp, delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sampling_is_the_plain_gaussian() {
        let orders = default_orders();
        assert_eq!(orders.len(), DEFAULT_ORDERS);
        for sigma in [0.5, 1.0, 3.7] {
            for (r, a) in rdp_subsampled_gaussian(1.0, sigma, &orders).iter().zip(&orders) {
                assert_eq!(*r, a / (2.0 * sigma * sigma));
            }
        }
    }

    #[test]
    fn subsampled_rdp_is_below_the_gaussian_and_monotone() {
        let orders = [1.5, 2.0, 2.5, 3.0, 8.0, 8.5, 32.0];
        let sigma = 1.1;
        let full = rdp_subsampled_gaussian(1.0, sigma, &orders);
        let mut prev = vec![0.0; orders.len()];
        // (At large q the two series of a fractional order converge too slowly, as in
        // dp_accounting, and the order counts as infinite.)
        for q in [0.001, 0.01, 0.05, 0.1] {
            let r = rdp_subsampled_gaussian(q, sigma, &orders);
            for k in 0..orders.len() {
                assert!(r[k] > prev[k] && r[k] <= full[k] * (1.0 + 1e-12), "q {q} order {}: {}", orders[k], r[k]);
            }
            // RDP is non-decreasing in the order.
            assert!(r.windows(2).all(|w| w[1] >= w[0] * (1.0 - 1e-9)), "q {q}: {r:?}");
            prev = r;
        }
    }

    #[test]
    fn integer_and_fractional_paths_agree_near_integers() {
        // The two-series path at α = k ± 1e-6 brackets the binomial path at α = k.
        for (q, sigma) in [(0.01, 1.0), (0.2, 2.0), (0.05, 0.8)] {
            for k in [2.0, 3.0, 10.0] {
                let mid = rdp_one(q, sigma, k);
                let lo = rdp_one(q, sigma, k - 1e-6);
                let hi = rdp_one(q, sigma, k + 1e-6);
                assert!((lo - mid).abs() < 1e-4 * mid && (hi - mid).abs() < 1e-4 * mid, "{q} {sigma} {k}: {lo} {mid} {hi}");
            }
        }
    }

    #[test]
    fn epsilon_behaves() {
        let (e1, _) = epsilon(1.0, 0.01, 100, 1e-5).unwrap();
        let (e2, _) = epsilon(1.0, 0.01, 1000, 1e-5).unwrap();
        let (e3, _) = epsilon(2.0, 0.01, 1000, 1e-5).unwrap();
        assert!(0.0 < e1 && e1 < e2 && e3 < e2, "{e1} {e2} {e3}");
        assert_eq!(epsilon(0.0, 0.01, 10, 1e-5).unwrap().0, f64::INFINITY);
        assert_eq!(epsilon(1.0, 0.0, 10, 1e-5).unwrap().0, 0.0);
        assert_eq!(epsilon(1.0, 0.5, 0, 1e-5).unwrap().0, 0.0);
        // The plain Gaussian, one step: ε = min_α α/(2σ²) + ln(1 − 1/α) − ln(δα)/(α − 1).
        let sigma: f64 = 5.0;
        let want = default_orders()
            .into_iter()
            .map(|a| a / (2.0 * sigma * sigma) + (-1.0 / a).ln_1p() - (1e-5 * a).ln() / (a - 1.0))
            .fold(f64::INFINITY, f64::min);
        assert!((epsilon(sigma, 1.0, 1, 1e-5).unwrap().0 - want).abs() < 1e-12);
        for bad in [epsilon(-1.0, 0.1, 1, 1e-5), epsilon(1.0, 1.5, 1, 1e-5), epsilon(1.0, 0.1, 1, 0.0), epsilon(1.0, 0.1, 1, 1.0)] {
            assert!(matches!(bad, Err(Error::InvalidOptions { .. })));
        }
    }
}
