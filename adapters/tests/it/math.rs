//! The LoRA delta against a dense f64 recomputation, the B = 0 identity, and scaling.

use std::sync::Arc;

use rand::Rng;
use tailor_adapters::{LoraAdapter, LoraConfig, LoraSet, LoraWeights, Target};

use crate::common::{random_vec, rng};

/// `x·(W + f·BA)ᵀ − x·Wᵀ` in f64 (with a random dense `W`, as the issue states it), and the
/// same sum over absolute values, which bounds the rounding error of the f32 path.
fn dense_reference(
    w: &[f32],
    lw: &LoraWeights,
    factor: f64,
    x: &[f32],
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (r, d_in, d_out) = (lw.r(), lw.in_features(), lw.out_features());
    let (a, b) = (lw.a(), lw.b());
    let mut delta = vec![0f64; n * d_out];
    let mut bound = vec![0f64; n * d_out];
    for o in 0..d_out {
        // Row o of W + f·BA, in f64.
        let mut merged = vec![0f64; d_in];
        for (i, m) in merged.iter_mut().enumerate() {
            let ba: f64 = (0..r).map(|k| b[o * r + k] as f64 * a[k * d_in + i] as f64).sum();
            *m = w[o * d_in + i] as f64 + factor * ba;
        }
        for t in 0..n {
            let xt = &x[t * d_in..(t + 1) * d_in];
            let with: f64 = merged.iter().zip(xt).map(|(m, x)| m * *x as f64).sum();
            let base: f64 = (0..d_in).map(|i| w[o * d_in + i] as f64 * xt[i] as f64).sum();
            delta[t * d_out + o] = with - base;
            let abs: f64 = (0..r)
                .map(|k| {
                    let ax: f64 =
                        (0..d_in).map(|i| (a[k * d_in + i] as f64 * xt[i] as f64).abs()).sum();
                    (b[o * r + k] as f64).abs() * ax
                })
                .sum();
            bound[t * d_out + o] = factor.abs() * abs;
        }
    }
    (delta, bound)
}

/// Tolerance: the f32 path sums `in/8 + 8` terms per lane for A·x, then `r` for B·tmp, plus
/// a few roundings (the factor, the final add); each rounding costs at most `ε` of the
/// absolute sum. The f64 reference itself is exact to ~1e-12 of the bound, far below that.
fn tolerance(d_in: usize, r: usize, bound: f64) -> f64 {
    ((d_in / 8 + 8 + r + 4) as f64) * f32::EPSILON as f64 * bound + 1e-30
}

#[test]
fn delta_matches_dense_f64_recomputation() {
    let (mut rng, seed) = rng();
    for &(r, d_in, d_out, n) in
        &[(1, 1, 1, 1), (5, 37, 13, 4), (8, 576, 192, 3), (16, 576, 1536, 2), (64, 1536, 576, 1)]
    {
        let alpha = rng.random_range(1.0..64.0f64).round();
        let mut cfg = LoraConfig::new(r, alpha, &[Target::Up]);
        cfg.use_rslora = rng.random_bool(0.5);
        let mut adapter = LoraAdapter::new(cfg.clone()).unwrap();
        let lw = LoraWeights::new(
            r,
            d_in,
            d_out,
            random_vec(&mut rng, r * d_in, 0.1),
            random_vec(&mut rng, d_out * r, 0.1),
        )
        .unwrap();
        adapter.insert(4, Target::Up, lw.clone()).unwrap();
        let w = random_vec(&mut rng, d_out * d_in, 0.5);
        let x = random_vec(&mut rng, n * d_in, 2.0);
        let weight = rng.random_range(-1.5..1.5f32);

        let mut out = vec![0f32; n * d_out];
        adapter.add_delta(4, Target::Up, &x, n, &mut out, weight);
        let factor = weight as f64 * cfg.scale() as f64;
        let (want, bound) = dense_reference(&w, &lw, factor, &x, n);
        for j in 0..out.len() {
            let err = (out[j] as f64 - want[j]).abs();
            let tol = tolerance(d_in, r, bound[j]);
            assert!(
                err <= tol,
                "seed {seed} r={r} in={d_in} out={d_out}: element {j}: got {} want {} (err {err:e} > tol {tol:e})",
                out[j],
                want[j]
            );
        }
    }
}

#[test]
fn set_sums_weighted_adapters() {
    let (mut rng, seed) = rng();
    let (d_in, d_out, n) = (48, 20, 3);
    let mk = |rng: &mut rand::rngs::StdRng, r: usize, alpha: f64, rs: bool| {
        let mut cfg = LoraConfig::new(r, alpha, &[Target::V]);
        cfg.use_rslora = rs;
        let mut a = LoraAdapter::new(cfg).unwrap();
        let lw = LoraWeights::new(
            r,
            d_in,
            d_out,
            random_vec(rng, r * d_in, 0.2),
            random_vec(rng, d_out * r, 0.2),
        )
        .unwrap();
        a.insert(1, Target::V, lw).unwrap();
        a
    };
    let a1 = Arc::new(mk(&mut rng, 8, 16.0, false));
    let a2 = Arc::new(mk(&mut rng, 4, 8.0, true));
    let set = LoraSet::new().with(a1.clone(), 0.7).with(a2.clone(), -1.3);
    let x = random_vec(&mut rng, n * d_in, 1.0);
    let base = random_vec(&mut rng, n * d_out, 3.0);
    let mut out = base.clone();
    set.add_delta(1, Target::V, &x, n, &mut out);

    let w = vec![0f32; d_out * d_in];
    let (d1, b1) =
        dense_reference(&w, a1.get(1, Target::V).unwrap(), 0.7 * a1.scale() as f64, &x, n);
    let (d2, b2) =
        dense_reference(&w, a2.get(1, Target::V).unwrap(), -1.3 * a2.scale() as f64, &x, n);
    for j in 0..out.len() {
        let want = base[j] as f64 + d1[j] + d2[j];
        let tol = tolerance(d_in, 8, b1[j] + b2[j] + base[j].abs() as f64);
        assert!((out[j] as f64 - want).abs() <= tol, "seed {seed} element {j}");
    }
    // Projections and layers no adapter targets are untouched, and not reported.
    assert!(!set.applies_to(0, Target::V) && !set.applies_to(1, Target::Q));
    let mut o2 = base.clone();
    set.add_delta(0, Target::V, &x, n, &mut o2);
    assert_eq!(o2, base);
}

#[test]
fn zero_b_is_the_base_bit_for_bit() {
    let (mut rng, _) = rng();
    let (r, d_in, d_out, n) = (8, 64, 24, 5);
    let mut adapter = LoraAdapter::new(LoraConfig::new(r, 16.0, &Target::ALL)).unwrap();
    let lw =
        LoraWeights::new(r, d_in, d_out, random_vec(&mut rng, r * d_in, 1.0), vec![0.0; d_out * r])
            .unwrap();
    adapter.insert(0, Target::Q, lw).unwrap();
    let adapter = Arc::new(adapter);
    let set = LoraSet::new().with(adapter.clone(), 1.0).with(adapter, -2.5);
    let x = random_vec(&mut rng, n * d_in, 4.0);
    let mut base = random_vec(&mut rng, n * d_out, 4.0);
    base[0] = -0.0;
    base[1] = 0.0;
    base[2] = f32::MIN_POSITIVE / 4.0; // subnormal
    let mut out = base.clone();
    set.add_delta(0, Target::Q, &x, n, &mut out);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&out), bits(&base));

    // A zero weight on a non-zero adapter is also the base, and not even reported.
    let (mut rng2, _) = crate::common::rng();
    let live = Arc::new(crate::common::random_adapter(&mut rng2, 4, 8.0, &[Target::Q]));
    let set = LoraSet::new().with(live, 0.0);
    assert!(!set.applies_to(0, Target::Q));
    let x = random_vec(&mut rng2, 24, 1.0);
    let mut out = vec![-0.0f32; 32];
    set.add_delta(0, Target::Q, &x, 1, &mut out);
    assert!(out.iter().all(|v| v.to_bits() == (-0.0f32).to_bits()));
}

#[test]
fn rslora_scales_by_inverse_sqrt_rank() {
    let (mut rng, _) = rng();
    let (r, d_in, d_out) = (16, 32, 8);
    let lw = LoraWeights::new(
        r,
        d_in,
        d_out,
        random_vec(&mut rng, r * d_in, 1.0),
        random_vec(&mut rng, d_out * r, 1.0),
    )
    .unwrap();
    let run = |rs: bool| {
        let mut cfg = LoraConfig::new(r, 8.0, &[Target::K]);
        cfg.use_rslora = rs;
        let mut a = LoraAdapter::new(cfg).unwrap();
        a.insert(0, Target::K, lw.clone()).unwrap();
        let x: Vec<f32> = (0..d_in).map(|i| i as f32 / 8.0).collect();
        let mut out = vec![0f32; d_out];
        a.add_delta(0, Target::K, &x, 1, &mut out, 1.0);
        (a.scale(), out)
    };
    let (s_plain, plain) = run(false);
    let (s_rs, rs) = run(true);
    assert_eq!(s_plain, 0.5); // 8 / 16
    assert_eq!(s_rs, 2.0); //    8 / sqrt(16)
                           // Powers of two: the ratio is exact.
    for (p, q) in plain.iter().zip(&rs) {
        assert_eq!(*q, 4.0 * p);
    }
}
