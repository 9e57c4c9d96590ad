//! Scalar reference kernels, kept forever (like candle's `vec_dot_unopt`).
//!
//! Each function follows ggml's generic C (`quantize_row_*_ref`, `dequantize_row_*`,
//! `ggml_vec_dot_*_generic`) operation for operation, so results match ggml's reference
//! path bit for bit, except the activation quantizers [`quantize_row_q8_0`] and
//! [`quantize_row_q8_1`], which follow ggml's x86 SIMD arithmetic (`127 / amax`, ties to
//! even) so that results match llama.cpp on x86. The SIMD kernels are tested against these.
//!
//! Every function takes whole blocks: a row of `n` values is `n / 32` blocks.
//!
//! # Panics
//! Every function panics if its slices disagree in length (`x.len() != 32 * y.len()` for
//! quantize/dequantize, `x.len() != y.len()` for block dot products and for each of the four
//! rows of the `vec_dot4_*` ones, and of both weight rows of [`vec_dot2x4_q4_1_q8_1`],
//! `a.len() != b.len()` for [`vec_dot_f32`]).

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use half::f16;

#[inline]
pub(crate) fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

#[inline]
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// Scale of one block for the 8-bit quantizers: `(d, id)` with `d = amax / 127` (stored as
/// f16) and `id = 127 / amax` (0 when `amax = 0`), as ggml's x86 SIMD quantizers compute
/// them (`quantize_row_q8_{0,1}` in `ggml-cpu/arch/x86/quants.c`). Not `1 / d`, as ggml's
/// generic C has: the two differ in the last bit for some `amax`.
///
/// `id` is also 0 when `127 / amax` overflows (`amax < 127 / f32::MAX ≈ 3.7e-37`): the block
/// then quantizes to zeros (`d` rounds to f16 zero anyway), where ggml's x86 code would
/// store `-128`s next to `d = 0`.
#[inline]
fn q8_scale(xb: &[f32]) -> (f32, f32) {
    let amax = xb.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (d, if id.is_finite() { id } else { 0.0 })
}

/// Quantizes `x` (`32 * y.len()` values) to `Q8_0` with ggml's x86 SIMD arithmetic, on every
/// platform, so results match llama.cpp on x86 and are identical across our kernel sets:
/// per block `amax = max |x|`, `d = f16(amax / 127)`, `q = round_ties_even(x · (127 / amax))`
/// (`_mm256_round_ps(.., _MM_ROUND_NEAREST)`). A block with `amax = 0`, or with `amax` so
/// small (< 3.7e-37) that `127 / amax` overflows, quantizes to zeros (ggml's x86 code stores
/// `-128`s next to `d = 0` for the latter). ggml's generic C (`quantize_row_q8_0_ref`)
/// differs: `q = roundf(x / d)`, ties away from zero.
///
/// Non-finite inputs (NaN, ±inf) give unspecified (but valid) blocks, which may differ
/// between kernel sets.
pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), y.len() * QK, "quantize_row_q8_0: length mismatch");
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, id) = q8_scale(xb);
        yb.d = f32_to_f16(d);
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
        }
    }
}

/// Quantizes `x` (`32 * y.len()` values) to `Q8_1` with ggml's x86 SIMD arithmetic, as
/// [`quantize_row_q8_0`], plus `s = f16(d · Σq)` with `d` the f32 scale before its f16
/// rounding.
pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_eq!(x.len(), y.len() * QK, "quantize_row_q8_1: length mismatch");
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, id) = q8_scale(xb);
        yb.d = f32_to_f16(d);
        let mut sum = 0i32;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
            sum += i32::from(*q);
        }
        yb.s = f32_to_f16(d * sum as f32);
    }
}

/// Quantizes `x` to `Q4_0`, as ggml's `quantize_row_q4_0_ref`: `d = max / -8` where `max` is
/// the value of largest magnitude, `q = min(15, trunc(x / d + 8.5))`.
///
/// Not a hot path (weights come quantized in the GGUF); here to build test weights and
/// fixtures the way ggml does.
pub fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
    assert_eq!(x.len(), y.len() * QK, "quantize_row_q4_0: length mismatch");
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16(d);
        for j in 0..QK / 2 {
            let lo = ((xb[j] * id + 8.5) as i8).min(15) as u8;
            let hi = ((xb[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            yb.qs[j] = lo | (hi << 4);
        }
    }
}

/// Quantizes `x` to `Q4_1`, as ggml's `quantize_row_q4_1_ref`: `m = min`,
/// `d = (max - min) / 15`, `q = min(15, trunc((x - m) / d + 0.5))`.
///
/// Not a hot path; see [`quantize_row_q4_0`].
pub fn quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1]) {
    assert_eq!(x.len(), y.len() * QK, "quantize_row_q4_1: length mismatch");
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16(d);
        yb.m = f32_to_f16(min);
        for j in 0..QK / 2 {
            let lo = (((xb[j] - min) * id + 0.5) as i8).min(15) as u8;
            let hi = (((xb[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            yb.qs[j] = lo | (hi << 4);
        }
    }
}

/// Dequantizes `Q4_0` blocks into `32 * x.len()` values: `(q - 8) * d`.
pub fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK,
        "dequantize_row_q4_0: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_to_f32(xb.d);
        for (j, &q) in xb.qs.iter().enumerate() {
            yb[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
            yb[j + QK / 2] = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }
}

/// Dequantizes `Q4_1` blocks into `32 * x.len()` values: `q * d + m`.
pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK,
        "dequantize_row_q4_1: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_to_f32(xb.d);
        let m = f16_to_f32(xb.m);
        for (j, &q) in xb.qs.iter().enumerate() {
            yb[j] = f32::from(q & 0x0F) * d + m;
            yb[j + QK / 2] = f32::from(q >> 4) * d + m;
        }
    }
}

/// Dequantizes `Q8_0` blocks into `32 * x.len()` values: `q * d`.
pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK,
        "dequantize_row_q8_0: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_to_f32(xb.d);
        for (v, &q) in yb.iter_mut().zip(&xb.qs) {
            *v = f32::from(q) * d;
        }
    }
}

/// Dequantizes `Q8_1` blocks into `32 * x.len()` values: `q * d` (`s` is redundant).
pub fn dequantize_row_q8_1(x: &[BlockQ8_1], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK,
        "dequantize_row_q8_1: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_to_f32(xb.d);
        for (v, &q) in yb.iter_mut().zip(&xb.qs) {
            *v = f32::from(q) * d;
        }
    }
}

/// `Σ x·y` over `x.len() == y.len()` blocks, as ggml's `ggml_vec_dot_q4_0_q8_0_generic`:
/// an exact integer dot per block, scaled by `dx·dy`, summed in f32 in block order.
pub fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q4_0_q8_0: length mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let (mut sumi0, mut sumi1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let v0 = i32::from(xb.qs[j] & 0x0F) - 8;
            let v1 = i32::from(xb.qs[j] >> 4) - 8;
            sumi0 += v0 * i32::from(yb.qs[j]);
            sumi1 += v1 * i32::from(yb.qs[j + QK / 2]);
        }
        let sumi = sumi0 + sumi1;
        sumf += sumi as f32 * f16_to_f32(xb.d) * f16_to_f32(yb.d);
    }
    sumf
}

/// `Σ x·y` over `x.len() == y.len()` blocks, as ggml's `ggml_vec_dot_q4_1_q8_1_generic`:
/// per block `dx·dy·Σ qx·qy + mx·sy` (the offset enters through `Q8_1`'s `s`).
pub fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q4_1_q8_1: length mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let (mut sumi0, mut sumi1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let v0 = i32::from(xb.qs[j] & 0x0F);
            let v1 = i32::from(xb.qs[j] >> 4);
            sumi0 += v0 * i32::from(yb.qs[j]);
            sumi1 += v1 * i32::from(yb.qs[j + QK / 2]);
        }
        let sumi = sumi0 + sumi1;
        sumf += (f16_to_f32(xb.d) * f16_to_f32(yb.d)) * sumi as f32
            + f16_to_f32(xb.m) * f16_to_f32(yb.s);
    }
    sumf
}

/// `Σ x·y` over `x.len() == y.len()` blocks, as ggml's `ggml_vec_dot_q8_0_q8_0_generic`.
pub fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q8_0_q8_0: length mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let sumi: i32 = xb
            .qs
            .iter()
            .zip(&yb.qs)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
        sumf += sumi as f32 * (f16_to_f32(xb.d) * f16_to_f32(yb.d));
    }
    sumf
}

/// Four dot products of one `Q4_0` row with four `Q8_0` rows (four tokens) of as many blocks:
/// [`vec_dot_q4_0_q8_0`] four times (the reference the fast multi-token kernels are tested
/// against).
pub fn vec_dot4_q4_0_q8_0(x: &[BlockQ4_0], y: [&[BlockQ8_0]; 4]) -> [f32; 4] {
    for yt in y {
        assert_eq!(x.len(), yt.len(), "vec_dot4_q4_0_q8_0: length mismatch");
    }
    y.map(|yt| vec_dot_q4_0_q8_0(x, yt))
}

/// Four dot products of one `Q4_1` row with four `Q8_1` rows of as many blocks:
/// [`vec_dot_q4_1_q8_1`] four times.
pub fn vec_dot4_q4_1_q8_1(x: &[BlockQ4_1], y: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    for yt in y {
        assert_eq!(x.len(), yt.len(), "vec_dot4_q4_1_q8_1: length mismatch");
    }
    y.map(|yt| vec_dot_q4_1_q8_1(x, yt))
}

/// Four dot products of one `Q8_0` row with four `Q8_0` rows of as many blocks:
/// [`vec_dot_q8_0_q8_0`] four times.
pub fn vec_dot4_q8_0_q8_0(x: &[BlockQ8_0], y: [&[BlockQ8_0]; 4]) -> [f32; 4] {
    for yt in y {
        assert_eq!(x.len(), yt.len(), "vec_dot4_q8_0_q8_0: length mismatch");
    }
    y.map(|yt| vec_dot_q8_0_q8_0(x, yt))
}

/// Eight dot products of two `Q4_1` rows (two weight rows) with four `Q8_1` rows (four
/// tokens), all of as many blocks: `[[x0·y_t; 4], [x1·y_t; 4]]`, i.e. [`vec_dot_q4_1_q8_1`]
/// eight times.
pub fn vec_dot2x4_q4_1_q8_1(
    x0: &[BlockQ4_1],
    x1: &[BlockQ4_1],
    y: [&[BlockQ8_1]; 4],
) -> [[f32; 4]; 2] {
    assert_eq!(x0.len(), x1.len(), "vec_dot2x4_q4_1_q8_1: length mismatch");
    [vec_dot4_q4_1_q8_1(x0, y), vec_dot4_q4_1_q8_1(x1, y)]
}

/// `Σ a·b` for `a.len() == b.len()`, as ggml's generic `ggml_vec_dot_f32`: products in f32,
/// accumulated in f64, rounded once to f32 at the end.
pub fn vec_dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vec_dot_f32: length mismatch");
    let mut sum = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        sum += f64::from(x * y);
    }
    sum as f32
}

/// `Σ a[i]·f32(b[i])` for `a.len() == b.len()`, `b` holding f16 bits (an attention score
/// `q · k_j` against an f16 KV cache): each f16 converted exactly, products in f32 (exact when
/// `a` holds f16 values), accumulated in f64 and rounded once, as [`vec_dot_f32`].
pub fn vec_dot_f32_f16(a: &[f32], b: &[u16]) -> f32 {
    assert_eq!(a.len(), b.len(), "vec_dot_f32_f16: length mismatch");
    let mut sum = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        sum += f64::from(x * f16_to_f32(y));
    }
    sum as f32
}

/// `y[i] += alpha·f32(x[i])` for `x.len() == y.len()`, `x` holding f16 bits (accumulating
/// `w_j · v_j` against an f16 KV cache), fused: `alpha.mul_add(x, y)`, one rounding, as the
/// SIMD kernels' FMA (so they agree bit for bit).
pub fn vec_axpy_f16(alpha: f32, x: &[u16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "vec_axpy_f16: length mismatch");
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = alpha.mul_add(f16_to_f32(xi), *yi);
    }
}
