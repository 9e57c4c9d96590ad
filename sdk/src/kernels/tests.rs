//! Kernel tests: every fast kernel the CPU can run against the scalar reference, and the
//! scalar reference against f64 dot products of dequantized and of original rows.
//!
//! Inputs are fresh random data each run; the seed is in every failure message (paste it
//! into `rng_from` to replay a failure).
//!
//! # Tolerances
//! `u = 2^-24` is the f32 unit roundoff. Recursive summation in which no partial sum goes
//! through more than `k` roundings is off by at most `γ_k · Σ|terms| ≈ k·u·Σ|terms|`
//! (Higham, *Accuracy and Stability of Numerical Algorithms*, §3–4). All integer parts are
//! exact (block sums ≤ 32·128·128 < 2^24 convert to f32 exactly; products of two f16 values
//! are exact in f32), so only the float accumulation differs between kernels:
//!
//! | check | bound on `|a - b|` | why |
//! | --- | --- | --- |
//! | fast vs scalar, `q4_0·q8_0`, `q8_0·q8_0`, `q4_1·q8_1` (`nb` blocks) | `2(nb + 8)·u·B`, `B = Σ_b |dx·dy|·Σ_j |qx_j·qy_j| + |mx·sy|` | scalar: ≤ `nb + 2` roundings per term; SIMD: one FMA per block per lane, ≤ 5 for reductions and the separate `m·s` sum |
//! | four-token `dot4_*` vs four scalar single dots | as fast vs scalar, per token | same sums |
//! | four-token `dot4_*` vs four single dots of the same set | **bit-identical** | same per-token accumulators, same order |
//! | two-row `dot2x4_q4_1_q8_1` vs eight single dots of the same set (and vs scalar: as `dot4`) | **bit-identical** | same per-output accumulators and order: the zmm kernel keeps the two ymm accumulators in interleaved lanes |
//! | fast vs scalar, `f32` (`n` values) | `(n/8 + 32)·u·Σ|a_i·b_i|` | SIMD lanes ≥ 8 (chains ≤ n/8), ≤ 15 tail and 5 reduction steps; the scalar reference sums in f64 (1 rounding per product, 1 at the end) |
//! | fast vs scalar, `f32 · f16` (`dot_f32_f16`, `n` values; [`f16`] tests) | `(n/8 + 32)·u·Σ|a_i·b_i| + n·2^-149` | as `f32`: each FMA chain ≤ n/16 + 1 steps (16 lanes), ≤ 5 reduction steps, the zero-padded tail adds exact zeros; f16 → f32 is exact; `n·2^-149` covers products that are f32 subnormals |
//! | fast vs scalar, `axpy_f16` | **bit-identical** (every bit, subnormal results included) | both compute `fma(alpha, f32(x), y)`, one rounding per element: the SIMD sets with FMA instructions, the scalar reference with `f32::mul_add` |
//! | scalar vs f64 dot of the dequantized rows | `(nb + 4)·u·B` (+ `2^-11·|m·s|` per block for `q4_1`: `s` is `d·Σq` rounded to f16) | as above |
//! | quantizers fast vs scalar | **bit-identical** (no ±1 allowance, ties included) | every set computes ggml's x86 arithmetic: the same `d = amax/127`, `id = 127/amax`, `q` rounded half to even, `s = d·Σq` |
//! | scalar quantizers vs ggml's x86 code spelled out (`ggml_x86_q8_1`) | **bit-identical** | the same arithmetic written independently (magic-number rounding) |
//! | scalar vs f64 dot of the original rows | `Σ_j e_w,j·|x_j| + |ŵ_j|·e_x,j` + rounding | per-value quantization error: `q8`: `d/2 + 127·|d - f16(d)|`; `q4_0`: `|d| + 8·|d - f16(d)|` (the value opposite the largest one clamps from +8 to +7); `q4_1`: `d/2 + 15·|d - f16(d)| + |m - f16(m)|`, each + `8u·(|x| + scale)` for f32 rounding |

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::scalar::{self, f16_to_f32, f32_to_f16};
use super::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, Kernels, QK};

mod f16;
mod multi_token;

/// f32 unit roundoff.
const U: f64 = 1.0 / (1u64 << 24) as f64;
/// Block counts: 1, 2, 3 (odd tails of 2-block loops), 18 (576 / 32, SmolLM2's d_model) and
/// 48 (1536 / 32, its FFN width).
const LENS: [usize; 5] = [1, 2, 3, 18, 48];

fn fresh_rng() -> (StdRng, u64) {
    let seed: u64 = rand::rng().random();
    (rng_from(seed), seed)
}

fn rng_from(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn fast_kernels() -> Vec<&'static Kernels> {
    Kernels::available()
        .into_iter()
        .filter(|k| k.name() != "scalar")
        .collect()
}

/// A random f16 scale: zero, subnormal, small, ordinary or large, either sign.
fn random_scale(rng: &mut StdRng) -> u16 {
    let mag = match rng.random_range(0..8) {
        0 => return 0,
        1 => return rng.random_range(1..0x400u16) | if rng.random() { 0x8000 } else { 0 },
        2 => 10f32.powf(rng.random_range(-4.0..-2.0)),
        3 => 10f32.powf(rng.random_range(2.0..4.8)),
        _ => 10f32.powf(rng.random_range(-3.0..0.0)),
    };
    f32_to_f16(if rng.random() { mag } else { -mag })
}

fn random_q4_0(rng: &mut StdRng, n: usize) -> Vec<BlockQ4_0> {
    (0..n)
        .map(|_| BlockQ4_0 {
            d: random_scale(rng),
            qs: rng.random(),
        })
        .collect()
}

fn random_q4_1(rng: &mut StdRng, n: usize) -> Vec<BlockQ4_1> {
    (0..n)
        .map(|_| BlockQ4_1 {
            d: random_scale(rng),
            m: random_scale(rng),
            qs: rng.random(),
        })
        .collect()
}

/// ggml's quantizers produce values in -127..=127 only.
fn random_qs8(rng: &mut StdRng) -> [i8; QK] {
    std::array::from_fn(|_| rng.random_range(-127..=127))
}

fn random_q8_0(rng: &mut StdRng, n: usize) -> Vec<BlockQ8_0> {
    (0..n)
        .map(|_| BlockQ8_0 {
            d: random_scale(rng),
            qs: random_qs8(rng),
        })
        .collect()
}

/// `s = f16(d·Σq)` as ggml stores it; scales are redrawn while `s` would overflow f16 (the
/// quantizer cannot produce that for activations below ~2000 in magnitude).
fn random_q8_1(rng: &mut StdRng, n: usize) -> Vec<BlockQ8_1> {
    (0..n)
        .map(|_| {
            let qs = random_qs8(rng);
            let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
            loop {
                let d = random_scale(rng);
                let s = f32_to_f16(f16_to_f32(d) * sum as f32);
                if f16_to_f32(s).is_finite() {
                    break BlockQ8_1 { d, s, qs };
                }
            }
        })
        .collect()
}

/// A random row: values of one magnitude class (including all-zero rows and huge ones).
fn random_row(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let scale = match rng.random_range(0..6) {
        0 => 0.0,
        1 => 1e-6,
        2 => 1e4,
        _ => 1.0,
    };
    (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect()
}

/// Signed nibble values of a block, in element order.
fn nibbles(qs: &[u8; QK / 2]) -> [i32; QK] {
    std::array::from_fn(|j| {
        if j < QK / 2 {
            i32::from(qs[j] & 0x0F)
        } else {
            i32::from(qs[j - QK / 2] >> 4)
        }
    })
}

fn f(bits: u16) -> f64 {
    f64::from(f16_to_f32(bits))
}

/// `Σ_b |dx·dy|·Σ_j |qx_j·qy_j|` given per-block scale products and value pairs.
fn abs_bound(blocks: impl Iterator<Item = (f64, [i32; QK], [i32; QK])>) -> f64 {
    blocks
        .map(|(d, a, b)| {
            d.abs()
                * a.iter()
                    .zip(&b)
                    .map(|(x, y)| f64::from((x * y).abs()))
                    .sum::<f64>()
        })
        .sum()
}

fn bound_q4_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f64 {
    abs_bound(x.iter().zip(y).map(|(a, b)| {
        (
            f(a.d) * f(b.d),
            nibbles(&a.qs).map(|q| q - 8),
            b.qs.map(i32::from),
        )
    }))
}

fn bound_q4_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f64 {
    let dots = abs_bound(
        x.iter()
            .zip(y)
            .map(|(a, b)| (f(a.d) * f(b.d), nibbles(&a.qs), b.qs.map(i32::from))),
    );
    dots + x
        .iter()
        .zip(y)
        .map(|(a, b)| (f(a.m) * f(b.s)).abs())
        .sum::<f64>()
}

fn bound_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f64 {
    abs_bound(
        x.iter()
            .zip(y)
            .map(|(a, b)| (f(a.d) * f(b.d), a.qs.map(i32::from), b.qs.map(i32::from))),
    )
}

fn check_close(what: &str, kernel: &str, seed: u64, got: f32, want: f32, tol: f64) {
    let diff = (f64::from(got) - f64::from(want)).abs();
    assert!(
        diff <= tol,
        "{what} [{kernel}] seed {seed}: got {got:e}, want {want:e}, |diff| {diff:e} > tol {tol:e}"
    );
}

#[test]
fn detect_picks_the_first_available() {
    let all = Kernels::available();
    eprintln!("available kernels: {all:?}");
    assert_eq!(Kernels::detect().name(), all[0].name());
    assert_eq!(all.last().map(|k| k.name()), Some("scalar"));
    assert_eq!(Kernels::scalar().name(), "scalar");
    let known = [
        "avxvnni",
        "avx512vnni",
        "avx2",
        "neon+dotprod",
        "neon",
        "scalar",
    ];
    for k in &all {
        assert!(known.contains(&k.name()), "{k:?}");
    }
    #[cfg(target_arch = "aarch64")]
    assert!(all.iter().any(|k| k.name() == "neon"));
}

#[test]
fn fast_dots_match_scalar() {
    let (mut rng, seed) = fresh_rng();
    let fast = fast_kernels();
    for _ in 0..20 {
        for nb in LENS {
            let tol = |b: f64| 2.0 * (nb as f64 + 8.0) * U * b;

            let (x, y) = (random_q4_0(&mut rng, nb), random_q8_0(&mut rng, nb));
            let want = scalar::vec_dot_q4_0_q8_0(&x, &y);
            for k in &fast {
                check_close(
                    "q4_0·q8_0",
                    k.name(),
                    seed,
                    (k.dot_q4_0_q8_0)(&x, &y),
                    want,
                    tol(bound_q4_0(&x, &y)),
                );
            }

            let (x, y) = (random_q4_1(&mut rng, nb), random_q8_1(&mut rng, nb));
            let want = scalar::vec_dot_q4_1_q8_1(&x, &y);
            for k in &fast {
                check_close(
                    "q4_1·q8_1",
                    k.name(),
                    seed,
                    (k.dot_q4_1_q8_1)(&x, &y),
                    want,
                    tol(bound_q4_1(&x, &y)),
                );
            }

            let (x, y) = (random_q8_0(&mut rng, nb), random_q8_0(&mut rng, nb));
            let want = scalar::vec_dot_q8_0_q8_0(&x, &y);
            for k in &fast {
                check_close(
                    "q8_0·q8_0",
                    k.name(),
                    seed,
                    (k.dot_q8_0_q8_0)(&x, &y),
                    want,
                    tol(bound_q8_0(&x, &y)),
                );
            }
        }
    }
}

/// The `avx512vnni` set's zmm single-token `Q4_1` dot (four blocks per iteration, the rest by
/// the ymm loop) against the ymm dots of the `avxvnni` and `avx2` sets: bit for bit, at every
/// length up to 13 blocks (every tail) and the model widths; and against scalar (tolerance as
/// `fast_dots_match_scalar`). The other single dots of all x86 sets are compared bit for bit
/// too (one ymm arithmetic; no sums saturate for values in `-127..=127`).
#[test]
fn x86_single_dots_are_bit_identical_across_sets() {
    let (mut rng, seed) = fresh_rng();
    let fast: Vec<&Kernels> = fast_kernels()
        .into_iter()
        .filter(|k| ["avx512vnni", "avxvnni", "avx2"].contains(&k.name()))
        .collect();
    let lens = (1..=13).chain([18, 48]);
    for _ in 0..20 {
        for nb in lens.clone() {
            let tol = 2.0 * (nb as f64 + 8.0) * U;
            let (x, y) = (random_q4_1(&mut rng, nb), random_q8_1(&mut rng, nb));
            let want = scalar::vec_dot_q4_1_q8_1(&x, &y);
            let dots: Vec<f32> = fast.iter().map(|k| (k.dot_q4_1_q8_1)(&x, &y)).collect();
            let (x0, y0) = (random_q4_0(&mut rng, nb), random_q8_0(&mut rng, nb));
            let dots0: Vec<f32> = fast.iter().map(|k| (k.dot_q4_0_q8_0)(&x0, &y0)).collect();
            let (x8, y8) = (random_q8_0(&mut rng, nb), random_q8_0(&mut rng, nb));
            let dots8: Vec<f32> = fast.iter().map(|k| (k.dot_q8_0_q8_0)(&x8, &y8)).collect();
            for (i, k) in fast.iter().enumerate() {
                let name = k.name();
                check_close(
                    "q4_1·q8_1",
                    name,
                    seed,
                    dots[i],
                    want,
                    tol * bound_q4_1(&x, &y),
                );
                for (what, d) in [
                    ("q4_1·q8_1", &dots),
                    ("q4_0·q8_0", &dots0),
                    ("q8_0·q8_0", &dots8),
                ] {
                    assert_eq!(
                        d[i].to_bits(),
                        d[0].to_bits(),
                        "{what}, {nb} blocks, seed {seed}: {name} gives {:e}, {} {:e}",
                        d[i],
                        fast[0].name(),
                        d[0]
                    );
                }
            }
        }
    }
}

#[test]
fn fast_dots_on_extreme_values_match_scalar() {
    // All-max magnitudes: nibbles 0 (-8 for q4_0) and 15, q8 values ±127, against every sign.
    let fast = fast_kernels();
    for nb in LENS {
        for (qa, qb) in [
            (0x00u8, 127i8),
            (0x00, -127),
            (0xFF, 127),
            (0xFF, -127),
            (0x0F, -127),
        ] {
            let d = f32_to_f16(0.5);
            let x4 = vec![
                BlockQ4_0 {
                    d,
                    qs: [qa; QK / 2]
                };
                nb
            ];
            let x41 = vec![
                BlockQ4_1 {
                    d,
                    m: f32_to_f16(-3.0),
                    qs: [qa; QK / 2]
                };
                nb
            ];
            let y8 = vec![BlockQ8_0 { d, qs: [qb; QK] }; nb];
            let x8 = vec![
                BlockQ8_0 {
                    d,
                    qs: [qb.wrapping_neg(); QK]
                };
                nb
            ];
            let s = f32_to_f16(0.5 * 32.0 * f32::from(qb));
            let y81 = vec![BlockQ8_1 { d, s, qs: [qb; QK] }; nb];
            for k in &fast {
                let name = k.name();
                // Exact in f32: all terms are small integers times powers of two.
                assert_eq!(
                    (k.dot_q4_0_q8_0)(&x4, &y8),
                    scalar::vec_dot_q4_0_q8_0(&x4, &y8),
                    "{name}"
                );
                assert_eq!(
                    (k.dot_q4_1_q8_1)(&x41, &y81),
                    scalar::vec_dot_q4_1_q8_1(&x41, &y81),
                    "{name}"
                );
                assert_eq!(
                    (k.dot_q8_0_q8_0)(&x8, &y8),
                    scalar::vec_dot_q8_0_q8_0(&x8, &y8),
                    "{name}"
                );
                let want = scalar::vec_dot_q4_0_q8_0(&x4, &y8);
                assert_eq!((k.dot4_q4_0_q8_0)(&x4, [&y8; 4]), [want; 4], "{name}");
                let want = scalar::vec_dot_q4_1_q8_1(&x41, &y81);
                assert_eq!((k.dot4_q4_1_q8_1)(&x41, [&y81; 4]), [want; 4], "{name}");
                let got = (k.dot2x4_q4_1_q8_1)(&x41, &x41, [&y81; 4]);
                assert_eq!(got, [[want; 4]; 2], "{name}");
                let want = scalar::vec_dot_q8_0_q8_0(&x8, &y8);
                assert_eq!((k.dot4_q8_0_q8_0)(&x8, [&y8; 4]), [want; 4], "{name}");
            }
        }
    }
}

#[test]
fn fast_f32_dot_matches_scalar() {
    let (mut rng, seed) = fresh_rng();
    let fast = fast_kernels();
    for n in [0usize, 1, 3, 7, 8, 9, 16, 31, 33, 100, 576, 1536, 1537] {
        for _ in 0..10 {
            let a = random_row(&mut rng, n);
            let b: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let want = scalar::vec_dot_f32(&a, &b);
            let abs: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs())
                .sum();
            let tol = (n as f64 / 8.0 + 32.0) * U * abs;
            for k in &fast {
                check_close("f32", k.name(), seed, (k.dot_f32)(&a, &b), want, tol);
            }
        }
    }
}

/// Rows that exercise the quantizers' corner cases, plus random ones.
fn quantizer_rows(rng: &mut StdRng, nb: usize) -> Vec<Vec<f32>> {
    let n = nb * QK;
    let mut rows = vec![random_row(rng, n), random_row(rng, n), vec![0.0; n]];
    // Exact .5 ties: amax = 127·2^e gives d = 2^e and id = 127/amax = 2^-e exactly, so
    // x = (k + 0.5)·2^e lands on k + 0.5. Ties go to even (roundf would send them away from 0).
    for e in [0, -3, 5] {
        let s = 2f32.powi(e);
        rows.push(
            (0..n)
                .map(|i| {
                    if i % QK == 0 {
                        127.0 * s
                    } else {
                        ((i % 254) as f32 - 126.5) * s
                    }
                })
                .collect(),
        );
    }
    // Huge (d overflows f16), tiny (d underflows f16), mixed signs with -0.0.
    rows.push(
        (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0) * 1e10)
            .collect(),
    );
    rows.push(
        (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0) * 1e-30)
            .collect(),
    );
    // So tiny (subnormal) that 127 / amax overflows: blocks of zeros.
    rows.push(
        (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0) * 1e-39)
            .collect(),
    );
    rows.push(
        (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    -0.0
                } else {
                    rng.random_range(-1.0f32..1.0)
                }
            })
            .collect(),
    );
    rows
}

#[test]
fn fast_quantizers_are_bit_identical_to_scalar() {
    let (mut rng, seed) = fresh_rng();
    let fast = fast_kernels();
    for nb in LENS {
        for x in quantizer_rows(&mut rng, nb) {
            let mut want0 = vec![BlockQ8_0::default(); nb];
            let mut want1 = vec![BlockQ8_1::default(); nb];
            scalar::quantize_row_q8_0(&x, &mut want0);
            scalar::quantize_row_q8_1(&x, &mut want1);
            for k in &fast {
                let mut got0 = vec![BlockQ8_0::default(); nb];
                let mut got1 = vec![BlockQ8_1::default(); nb];
                (k.quantize_q8_0)(&x, &mut got0);
                (k.quantize_q8_1)(&x, &mut got1);
                assert_eq!(got0, want0, "q8_0 [{}] seed {seed}", k.name());
                assert_eq!(got1, want1, "q8_1 [{}] seed {seed}", k.name());
            }
        }
    }
}

#[test]
fn fast_quantizers_match_scalar_around_every_tie() {
    // One block per k = -127..=126 with d = 1 (amax 127): values at k + 0.5 and the floats
    // just around it, where round-half-away, round-half-even and `x + 0.5` differ.
    let mut x = Vec::new();
    for k in -127..=126 {
        let t = k as f32 + 0.5;
        let mut b = vec![127.0f32];
        for ulps in -4i32..=4 {
            b.push(f32::from_bits((t.to_bits() as i32 + ulps) as u32));
            b.push(-f32::from_bits((t.to_bits() as i32 + ulps) as u32));
        }
        b.extend([
            k as f32,
            0.49999997,
            -0.49999997,
            0.5,
            -0.5,
            0.0,
            -0.0,
            1.0,
            -1.0,
            126.5,
            -126.5,
            2.5,
            -2.5,
        ]);
        assert_eq!(b.len(), QK);
        x.extend(b);
    }
    let nb = x.len() / QK;
    let mut want = vec![BlockQ8_0::default(); nb];
    scalar::quantize_row_q8_0(&x, &mut want);
    for k in fast_kernels() {
        let mut got = vec![BlockQ8_0::default(); nb];
        (k.quantize_q8_0)(&x, &mut got);
        assert_eq!(got, want, "[{}]", k.name());
    }
}

#[test]
fn scalar_quantizers_round_ties_to_even() {
    let mut x = vec![0.0f32; QK];
    x[0] = 127.0; // d = 1, id = 1
    x[1] = 0.5;
    x[2] = -2.5;
    x[3] = 126.5;
    x[4] = 1.5;
    let mut y = [BlockQ8_0::default()];
    scalar::quantize_row_q8_0(&x, &mut y);
    assert_eq!(f16_to_f32(y[0].d), 1.0);
    assert_eq!(&y[0].qs[..5], &[127, 0, -2, 126, 2]);
    let mut y1 = [BlockQ8_1::default()];
    scalar::quantize_row_q8_1(&x, &mut y1);
    assert_eq!(y1[0].qs, y[0].qs);
    assert_eq!(f16_to_f32(y1[0].s), 253.0);
}

/// ggml's x86 `quantize_row_q8_1` (AVX2 branch of `ggml-cpu/arch/x86/quants.c`) spelled out
/// independently of the kernels: `id = 127 / amax`, rounding to nearest even by adding and
/// removing 1.5·2^23 (exact for |v| < 2^22 under the default rounding mode), `s = d·Σq`.
/// Where `127 / amax` overflows (amax < 3.7e-37), ggml stores `-128`s next to `d = 0`; the
/// kernels store a zero block, and so does this spelling.
fn ggml_x86_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    const MAGIC: f32 = 12_582_912.0;
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        if id.is_infinite() {
            *yb = BlockQ8_1::default();
            continue;
        }
        yb.d = f32_to_f16(d);
        let mut sum = 0i32;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = ((v * id + MAGIC) - MAGIC) as i8;
            sum += i32::from(*q);
        }
        yb.s = f32_to_f16(d * sum as f32);
    }
}

#[test]
fn quantizers_match_ggml_x86_arithmetic() {
    let (mut rng, seed) = fresh_rng();
    let all = Kernels::available();
    for nb in LENS {
        let mut rows = quantizer_rows(&mut rng, nb);
        // Values whose product with 127 / amax rounds differently from x / (amax / 127).
        rows.push(
            (0..nb * QK)
                .map(|_| rng.random_range(-1.0f32..1.0) * 10f32.powf(rng.random_range(-3.0..3.0)))
                .collect(),
        );
        for x in rows {
            let mut want = vec![BlockQ8_1::default(); nb];
            ggml_x86_q8_1(&x, &mut want);
            for k in &all {
                let mut got = vec![BlockQ8_1::default(); nb];
                (k.quantize_q8_1)(&x, &mut got);
                assert_eq!(got, want, "q8_1 [{}] seed {seed}", k.name());
                let mut got0 = vec![BlockQ8_0::default(); nb];
                (k.quantize_q8_0)(&x, &mut got0);
                for (b0, b1) in got0.iter().zip(&want) {
                    assert_eq!(
                        (b0.d, b0.qs),
                        (b1.d, b1.qs),
                        "q8_0 [{}] seed {seed}",
                        k.name()
                    );
                }
            }
        }
    }
}

#[test]
fn quantizers_zero_blocks_too_tiny_to_scale() {
    // amax = 1e-39 (subnormal): 127 / amax overflows f32.
    let mut x = vec![0.0f32; 2 * QK];
    for (i, v) in x.iter_mut().enumerate() {
        *v = if i % 2 == 0 { 1e-39 } else { -7e-40 };
    }
    x[QK] = 1.0; // the second block is ordinary
    for k in Kernels::available() {
        let mut y = [BlockQ8_1::default(); 2];
        (k.quantize_q8_1)(&x, &mut y);
        assert_eq!(y[0], BlockQ8_1::default(), "[{}]", k.name());
        assert_eq!(y[1].qs[0], 127, "[{}]", k.name());
    }
}

#[test]
fn scalar_dots_match_f64_dot_of_dequantized_rows() {
    let (mut rng, seed) = fresh_rng();
    for _ in 0..20 {
        for nb in LENS {
            let n = nb * QK;
            let (mut a, mut b) = (vec![0.0f32; n], vec![0.0f32; n]);
            let dot64 = |a: &[f32], b: &[f32]| -> f32 {
                a.iter()
                    .zip(b)
                    .map(|(&x, &y)| f64::from(x) * f64::from(y))
                    .sum::<f64>() as f32
            };
            let tol = |bound: f64| (nb as f64 + 4.0) * U * bound;

            let (x, y) = (random_q4_0(&mut rng, nb), random_q8_0(&mut rng, nb));
            scalar::dequantize_row_q4_0(&x, &mut a);
            scalar::dequantize_row_q8_0(&y, &mut b);
            let got = scalar::vec_dot_q4_0_q8_0(&x, &y);
            check_close(
                "q4_0·q8_0 vs dequantized",
                "scalar",
                seed,
                got,
                dot64(&a, &b),
                tol(bound_q4_0(&x, &y)),
            );

            let (x, y) = (random_q8_0(&mut rng, nb), random_q8_0(&mut rng, nb));
            scalar::dequantize_row_q8_0(&x, &mut a);
            scalar::dequantize_row_q8_0(&y, &mut b);
            let got = scalar::vec_dot_q8_0_q8_0(&x, &y);
            check_close(
                "q8_0·q8_0 vs dequantized",
                "scalar",
                seed,
                got,
                dot64(&a, &b),
                tol(bound_q8_0(&x, &y)),
            );

            // Dequantized q4_1 values `q·d + m` round once in f32 (u·|a_j·b_j| in the dot), and
            // `s` is `d·Σq` rounded to f16 (2^-11 relative, 2^-25 absolute when subnormal).
            let (x, y) = (random_q4_1(&mut rng, nb), random_q8_1(&mut rng, nb));
            scalar::dequantize_row_q4_1(&x, &mut a);
            scalar::dequantize_row_q8_1(&y, &mut b);
            let got = scalar::vec_dot_q4_1_q8_1(&x, &y);
            let s_err: f64 = x
                .iter()
                .zip(&y)
                .map(|(xb, yb)| {
                    let sum: i32 = yb.qs.iter().map(|&q| i32::from(q)).sum();
                    f(xb.m).abs() * ((f(yb.d) * f64::from(sum)).abs() / 2048.0 + 2f64.powi(-25))
                })
                .sum();
            let deq_err: f64 = U * a
                .iter()
                .zip(&b)
                .map(|(&p, &q)| f64::from(p * q).abs())
                .sum::<f64>();
            let want = dot64(&a, &b);
            let tol = tol(bound_q4_1(&x, &y)) + s_err + 2.0 * deq_err + U * f64::from(want.abs());
            check_close("q4_1·q8_1 vs dequantized", "scalar", seed, got, want, tol);
        }
    }
}

/// Per-value error bounds of the quantizers for one block of `x`, from the f32 scale the
/// quantizer computed and the f16 scale it stored.
fn q8_err(xb: &[f32], d16: u16) -> f64 {
    let amax = xb.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    let d = f64::from(amax / 127.0);
    0.5 * d + 127.0 * (d - f(d16)).abs() + 8.0 * U * f64::from(amax)
}

fn q4_0_err(xb: &[f32], d16: u16) -> f64 {
    let amax = xb.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    let d = f64::from(amax / 8.0);
    d + 8.0 * (d - f(d16).abs()).abs() + 8.0 * U * f64::from(amax)
}

fn q4_1_err(xb: &[f32], b: &BlockQ4_1) -> f64 {
    let min = xb.iter().fold(f32::MAX, |a, &v| a.min(v));
    let max = xb.iter().fold(-f32::MAX, |a, &v| a.max(v));
    let d = f64::from((max - min) / 15.0);
    let amax = f64::from(max.abs().max(min.abs()));
    0.5 * d
        + 15.0 * (d - f(b.d)).abs()
        + (f64::from(min) - f(b.m)).abs()
        + 8.0 * U * (amax + 15.0 * d)
}

#[test]
fn quantized_dots_stay_within_quantization_error() {
    let (mut rng, seed) = fresh_rng();
    for _ in 0..10 {
        for nb in LENS {
            let n = nb * QK;
            // Moderate magnitudes so that scales are normal f16 numbers.
            let scale_w = 10f32.powf(rng.random_range(-2.0..1.0));
            let scale_x = 10f32.powf(rng.random_range(-2.0..2.0));
            let w: Vec<f32> = (0..n)
                .map(|_| rng.random_range(-1.0f32..1.0) * scale_w)
                .collect();
            let x: Vec<f32> = (0..n)
                .map(|_| rng.random_range(-1.0f32..1.0) * scale_x)
                .collect();
            let exact: f64 = w
                .iter()
                .zip(&x)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();

            let mut x80 = vec![BlockQ8_0::default(); nb];
            let mut x81 = vec![BlockQ8_1::default(); nb];
            scalar::quantize_row_q8_0(&x, &mut x80);
            scalar::quantize_row_q8_1(&x, &mut x81);
            let mut xd = vec![0.0f32; n];
            scalar::dequantize_row_q8_0(&x80, &mut xd);
            let ex: Vec<f64> = x
                .chunks(QK)
                .zip(&x80)
                .flat_map(|(c, b)| [q8_err(c, b.d); QK])
                .collect();
            for (j, (&v, &vd)) in x.iter().zip(&xd).enumerate() {
                assert!(
                    f64::from((v - vd).abs()) <= ex[j],
                    "q8_0 value {j} seed {seed}: {v} -> {vd}"
                );
            }
            for ((b0, b1), c) in x80.iter().zip(&x81).zip(x.chunks(QK)) {
                assert_eq!((b0.d, b0.qs), (b1.d, b1.qs));
                let sum: i32 = b1.qs.iter().map(|&q| i32::from(q)).sum();
                let d = c.iter().fold(0.0f32, |a, &v| a.max(v.abs())) / 127.0;
                assert_eq!(b1.s, f32_to_f16(sum as f32 * d), "q8_1 s, seed {seed}");
            }

            // Error of Σ w·x from per-value errors: Σ e_w·|x| + |ŵ|·e_x, plus rounding slack.
            // The scalar dot's own rounding is `(nb + 4)·u·B` as in the dequantized-rows test;
            // 4u·Σ|ŵ·x̂| covers the f32 rounding of the dequantized values themselves.
            let dot_bound = |wd: &[f32], ew: &[f64], b: f64| -> f64 {
                let q: f64 = (0..n)
                    .map(|j| ew[j] * f64::from(x[j].abs()) + f64::from(wd[j].abs()) * ex[j])
                    .sum();
                let mag: f64 = (0..n)
                    .map(|j| f64::from(wd[j].abs()) * f64::from(xd[j].abs()))
                    .sum();
                q + (nb as f64 + 4.0) * U * b + 4.0 * U * mag + U * exact.abs()
            };
            let mut wd = vec![0.0f32; n];

            let mut w40 = vec![BlockQ4_0::default(); nb];
            scalar::quantize_row_q4_0(&w, &mut w40);
            scalar::dequantize_row_q4_0(&w40, &mut wd);
            let ew: Vec<f64> = w
                .chunks(QK)
                .zip(&w40)
                .flat_map(|(c, b)| [q4_0_err(c, b.d); QK])
                .collect();
            for j in 0..n {
                assert!(
                    f64::from((w[j] - wd[j]).abs()) <= ew[j],
                    "q4_0 value {j} seed {seed}: {} -> {}",
                    w[j],
                    wd[j]
                );
            }
            let got = scalar::vec_dot_q4_0_q8_0(&w40, &x80);
            check_close(
                "q4_0·q8_0 vs f64",
                "scalar",
                seed,
                got,
                exact as f32,
                dot_bound(&wd, &ew, bound_q4_0(&w40, &x80)),
            );

            let mut w41 = vec![BlockQ4_1::default(); nb];
            scalar::quantize_row_q4_1(&w, &mut w41);
            scalar::dequantize_row_q4_1(&w41, &mut wd);
            let ew: Vec<f64> = w
                .chunks(QK)
                .zip(&w41)
                .flat_map(|(c, b)| [q4_1_err(c, b); QK])
                .collect();
            for j in 0..n {
                assert!(
                    f64::from((w[j] - wd[j]).abs()) <= ew[j],
                    "q4_1 value {j} seed {seed}: {} -> {}",
                    w[j],
                    wd[j]
                );
            }
            // `s` rounding (2^-11 relative) adds |m·s|/2048 per block.
            let s_err: f64 = w41
                .iter()
                .zip(&x81)
                .map(|(a, b)| (f(a.m) * f(b.s)).abs() / 2048.0)
                .sum();
            let got = scalar::vec_dot_q4_1_q8_1(&w41, &x81);
            check_close(
                "q4_1·q8_1 vs f64",
                "scalar",
                seed,
                got,
                exact as f32,
                dot_bound(&wd, &ew, bound_q4_1(&w41, &x81)) + s_err,
            );

            let mut w80 = vec![BlockQ8_0::default(); nb];
            scalar::quantize_row_q8_0(&w, &mut w80);
            scalar::dequantize_row_q8_0(&w80, &mut wd);
            let ew: Vec<f64> = w
                .chunks(QK)
                .zip(&w80)
                .flat_map(|(c, b)| [q8_err(c, b.d); QK])
                .collect();
            let got = scalar::vec_dot_q8_0_q8_0(&w80, &x80);
            check_close(
                "q8_0·q8_0 vs f64",
                "scalar",
                seed,
                got,
                exact as f32,
                dot_bound(&wd, &ew, bound_q8_0(&w80, &x80)),
            );
        }
    }
}

#[test]
fn dequantize_known_values() {
    // q4_0: (q - 8)·d, low nibbles are values 0..16, high nibbles 16..32.
    let mut qs = [0u8; QK / 2];
    qs[0] = 0xF0; // value 0: q = 0 -> -8; value 16: q = 15 -> 7
    let x = [BlockQ4_0 {
        d: f32_to_f16(0.5),
        qs,
    }];
    let mut y = [0.0f32; QK];
    scalar::dequantize_row_q4_0(&x, &mut y);
    assert_eq!((y[0], y[16], y[1]), (-4.0, 3.5, -4.0));

    let x = [BlockQ4_1 {
        d: f32_to_f16(2.0),
        m: f32_to_f16(-1.0),
        qs,
    }];
    scalar::dequantize_row_q4_1(&x, &mut y);
    assert_eq!((y[0], y[16], y[1]), (-1.0, 29.0, -1.0));

    let x = [BlockQ8_0 {
        d: f32_to_f16(0.25),
        qs: std::array::from_fn(|i| i as i8 - 16),
    }];
    scalar::dequantize_row_q8_0(&x, &mut y);
    assert_eq!((y[0], y[31]), (-4.0, 3.75));
}

#[test]
#[should_panic(expected = "length mismatch")]
fn detected_dot_rejects_mismatched_lengths() {
    let x = vec![BlockQ4_0::default(); 2];
    let y = vec![BlockQ8_0::default(); 3];
    let _ = (Kernels::detect().dot_q4_0_q8_0)(&x, &y);
}

#[test]
fn dot4s_reject_mismatched_lengths() {
    let x = vec![BlockQ4_1::default(); 2];
    let (good, bad) = (vec![BlockQ8_1::default(); 2], vec![BlockQ8_1::default(); 3]);
    for k in Kernels::available() {
        for t in 0..4 {
            let mut y = [&good[..]; 4];
            y[t] = &bad;
            let r = std::panic::catch_unwind(|| (k.dot4_q4_1_q8_1)(&x, y));
            let msg = r.expect_err("no panic");
            let msg = msg.downcast_ref::<String>().map_or("", String::as_str);
            assert!(
                msg.contains("length mismatch"),
                "[{}] token {t}: {msg}",
                k.name()
            );
        }
        let short = vec![BlockQ4_1::default(); 1];
        for (x0, x1, y) in [
            (&x, &short, [&good[..]; 4]),
            (&short, &x, [&good[..]; 4]),
            (&x, &x, [&good[..], &good, &good, &bad]),
        ] {
            let r = std::panic::catch_unwind(|| (k.dot2x4_q4_1_q8_1)(x0, x1, y));
            let msg = r.expect_err("no panic");
            let msg = msg.downcast_ref::<String>().map_or("", String::as_str);
            assert!(msg.contains("length mismatch"), "[{}]: {msg}", k.name());
        }
        let x = vec![BlockQ8_0::default(); 1];
        let y = vec![BlockQ8_0::default(); 2];
        let r = std::panic::catch_unwind(|| (k.dot4_q8_0_q8_0)(&x, [&x, &x, &x, &y]));
        assert!(r.is_err(), "[{}]", k.name());
        let x = vec![BlockQ4_0::default(); 1];
        let r = std::panic::catch_unwind(|| (k.dot4_q4_0_q8_0)(&x, [&y, &y, &y, &y]));
        assert!(r.is_err(), "[{}]", k.name());
    }
}

#[test]
#[should_panic(expected = "length mismatch")]
fn detected_quantizer_rejects_mismatched_lengths() {
    let x = vec![0.0f32; 33];
    let mut y = vec![BlockQ8_0::default(); 1];
    (Kernels::detect().quantize_q8_0)(&x, &mut y);
}
