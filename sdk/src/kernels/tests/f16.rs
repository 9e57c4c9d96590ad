//! f16 attention kernels (`dot_f32_f16`, `axpy_f16`): every fast set against the scalar
//! reference, the scalar reference against f64; tolerances in the parent module's table.

use half::f16;
use rand::rngs::StdRng;
use rand::Rng;

use super::{check_close, fast_kernels, fresh_rng, random_row, U};
use crate::kernels::{scalar, Kernels};

/// Lengths around every loop step (8 and 16 values per x86 / NEON step, 32 per x86 dot
/// iteration), a head width (64) and long rows.
const LENS: [usize; 16] = [
    0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 100, 129, 1000,
];

/// A random finite f16 (infinities and NaN excluded) as bits, from a mix of classes: any
/// finite bit pattern, subnormals, ordinary attention-sized values, large ones, zeros.
fn random_f16(rng: &mut StdRng) -> u16 {
    let sign = if rng.random() { 0x8000 } else { 0 };
    match rng.random_range(0..8) {
        0 => loop {
            let b: u16 = rng.random();
            if b & 0x7C00 != 0x7C00 {
                break b;
            }
        },
        1 => sign | rng.random_range(1..0x400u16),
        2 => sign | rng.random_range(0x6000..0x7C00u16), // 512 ..= 65504
        3 => sign,
        _ => f16::from_f32(rng.random_range(-4.0f32..4.0)).to_bits(),
    }
}

fn random_f16_row(rng: &mut StdRng, n: usize) -> Vec<u16> {
    (0..n).map(|_| random_f16(rng)).collect()
}

/// A query row: f32 values rounded to f16 (what attention passes), or arbitrary f32.
fn random_query(rng: &mut StdRng, n: usize) -> Vec<f32> {
    if rng.random_range(0..3) == 0 {
        random_row(rng, n)
    } else {
        random_f16_row(rng, n)
            .into_iter()
            .map(|b| f16::from_bits(b).to_f32())
            .collect()
    }
}

fn f(bits: u16) -> f64 {
    f16::from_bits(bits).to_f64()
}

/// `Σ |a_i·b_i|` in f64 (exact for f16-valued `a`: products of 11-bit significands).
fn abs_sum(a: &[f32], b: &[u16]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) * f(y)).abs())
        .sum()
}

#[test]
fn fast_f32_f16_dot_matches_scalar() {
    let (mut rng, seed) = fresh_rng();
    let fast = fast_kernels();
    for n in LENS {
        for _ in 0..20 {
            let a = random_query(&mut rng, n);
            let b = random_f16_row(&mut rng, n);
            let want = scalar::vec_dot_f32_f16(&a, &b);
            let tol = (n as f64 / 8.0 + 32.0) * U * abs_sum(&a, &b) + n as f64 * 2f64.powi(-149);
            for k in &fast {
                let got = (k.dot_f32_f16)(&a, &b);
                check_close("f32·f16", k.name(), seed, got, want, tol);
            }
        }
    }
}

#[test]
fn scalar_f32_f16_dot_matches_f64() {
    let (mut rng, seed) = fresh_rng();
    for n in LENS {
        for _ in 0..20 {
            let a = random_query(&mut rng, n);
            let b = random_f16_row(&mut rng, n);
            let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| f64::from(x) * f(y)).sum();
            // One rounding per f32 product, f64 accumulation, one final rounding to f32.
            let tol = 2.0 * U * abs_sum(&a, &b) + U * exact.abs() + n as f64 * 2f64.powi(-149);
            let got = scalar::vec_dot_f32_f16(&a, &b);
            check_close("f32·f16 vs f64", "scalar", seed, got, exact as f32, tol);
        }
    }
}

#[test]
fn f32_f16_dot_known_values() {
    // 1·1 + 2·2^-24 (smallest subnormal) + 3·65504 (largest finite) + 0.5·(-2)
    let a = [1.0f32, 2.0, 3.0, 0.5];
    let b = [0x3C00u16, 0x0001, 0x7BFF, 0xC000];
    let want = 1.0 + 2.0 * 2f32.powi(-24) + 196_512.0 - 1.0;
    for k in Kernels::available() {
        assert_eq!((k.dot_f32_f16)(&a, &b), want, "[{}]", k.name());
    }
}

/// `alpha` classes: zero, ±1, ordinary, tiny enough for f32 subnormal results, large.
fn random_alpha(rng: &mut StdRng) -> f32 {
    match rng.random_range(0..7) {
        0 => 0.0,
        1 => 1.0,
        2 => -1.0,
        3 => rng.random_range(-1e-38f32..1e-38),
        4 => rng.random_range(-1e4f32..1e4),
        _ => rng.random_range(-1.0f32..1.0),
    }
}

#[test]
fn fast_axpy_f16_is_bit_identical_to_scalar() {
    let (mut rng, seed) = fresh_rng();
    let fast = fast_kernels();
    for n in LENS {
        for _ in 0..20 {
            let alpha = random_alpha(&mut rng);
            let x = random_f16_row(&mut rng, n);
            let y0 = random_row(&mut rng, n);
            let mut want = y0.clone();
            scalar::vec_axpy_f16(alpha, &x, &mut want);
            for k in &fast {
                let mut got = y0.clone();
                (k.axpy_f16)(alpha, &x, &mut got);
                for i in 0..n {
                    assert_eq!(
                        got[i].to_bits(),
                        want[i].to_bits(),
                        "axpy_f16 [{}] seed {seed}: n {n}, i {i}: alpha {alpha:e}, x {:e}, \
                         y {:e}: got {:e}, want {:e}",
                        k.name(),
                        f(x[i]),
                        y0[i],
                        got[i],
                        want[i]
                    );
                }
            }
        }
    }
}

#[test]
fn scalar_axpy_f16_matches_f64() {
    let (mut rng, seed) = fresh_rng();
    for n in LENS {
        let alpha = random_alpha(&mut rng);
        let x = random_f16_row(&mut rng, n);
        let y0 = random_row(&mut rng, n);
        let mut got = y0.clone();
        scalar::vec_axpy_f16(alpha, &x, &mut got);
        for i in 0..n {
            // alpha·x is exact in f64 (24 + 11 significant bits), so f64 `mul + add` rounds
            // once unless the sum needs more than 53 bits; `as f32` then rounds to f32. That
            // double rounding can only differ from fma on exact f64 ties, which the check
            // tolerates as a 1-ulp difference.
            let exact = f64::from(alpha) * f(x[i]) + f64::from(y0[i]);
            let want = exact as f32;
            let ulp = f64::from(want.abs().max(f32::MIN_POSITIVE)) * 2.0 * U;
            assert!(
                (f64::from(got[i]) - exact).abs() <= ulp.max(2f64.powi(-149)),
                "seed {seed}: n {n}, i {i}: got {:e}, f64 {exact:e}",
                got[i]
            );
        }
    }
}

#[test]
fn f16_kernels_reject_mismatched_lengths() {
    for k in Kernels::available() {
        let r = std::panic::catch_unwind(|| (k.dot_f32_f16)(&[0.0; 3], &[0; 4]));
        assert!(r.is_err(), "dot_f32_f16 [{}]", k.name());
        let r = std::panic::catch_unwind(|| (k.axpy_f16)(1.0, &[0; 4], &mut [0.0; 3]));
        assert!(r.is_err(), "axpy_f16 [{}]", k.name());
    }
}
