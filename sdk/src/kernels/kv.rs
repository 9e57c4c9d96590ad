//! Kernels for attention over a quantized KV cache: `out += w · v_j` with `v_j` a row of
//! `Q8_0` or `Q4_0` blocks (llama.cpp's flash-attention path for quantized values: the row is
//! dequantized and accumulated in f32). Scores against quantized keys use the matrix kernels
//! ([`Kernels::dot_q8_0_q8_0`](super::Kernels), `dot_q4_0_q8_0`) on the query quantized to
//! `Q8_0`, as llama.cpp does.
//!
//! One portable body per operation, written so that LLVM vectorizes it, compiled twice on
//! x86-64 (baseline SSE2 and AVX2+FMA+F16C, chosen at run time) and once on AArch64 (NEON is
//! baseline there). The scalar references are [`axpy_q8_0_ref`] and [`axpy_q4_0_ref`].

use super::blocks::{BlockQ4_0, BlockQ8_0, QK};
use super::scalar::f16_to_f32;

/// `y[i] += alpha·v[i]` for the `32 · x.len()` values of `Q8_0` blocks `x` (reference).
pub fn axpy_q8_0_ref(alpha: f32, x: &[BlockQ8_0], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK, "axpy_q8_0: length mismatch");
    for (b, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = alpha * f16_to_f32(b.d);
        for (yi, &q) in yb.iter_mut().zip(&b.qs) {
            *yi += d * f32::from(q);
        }
    }
}

/// `y[i] += alpha·v[i]` for the `32 · x.len()` values of `Q4_0` blocks `x` (reference).
pub fn axpy_q4_0_ref(alpha: f32, x: &[BlockQ4_0], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK, "axpy_q4_0: length mismatch");
    for (b, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = alpha * f16_to_f32(b.d);
        for j in 0..QK / 2 {
            yb[j] += d * (f32::from(b.qs[j] & 0x0f) - 8.0);
            yb[j + QK / 2] += d * (f32::from(b.qs[j] >> 4) - 8.0);
        }
    }
}

#[inline(always)]
fn axpy_q8_0_body(alpha: f32, x: &[BlockQ8_0], y: &mut [f32]) {
    for (b, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = alpha * f16_to_f32(b.d);
        let yb: &mut [f32; QK] = yb.try_into().expect("a block of 32");
        for j in 0..QK {
            yb[j] += d * f32::from(b.qs[j]);
        }
    }
}

#[inline(always)]
fn axpy_q4_0_body(alpha: f32, x: &[BlockQ4_0], y: &mut [f32]) {
    for (b, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = alpha * f16_to_f32(b.d);
        let yb: &mut [f32; QK] = yb.try_into().expect("a block of 32");
        let mut v = [0f32; QK];
        for j in 0..QK / 2 {
            v[j] = f32::from(b.qs[j] & 0x0f) - 8.0;
            v[j + QK / 2] = f32::from(b.qs[j] >> 4) - 8.0;
        }
        for j in 0..QK {
            yb[j] += d * v[j];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_q8_0_avx2(alpha: f32, x: &[BlockQ8_0], y: &mut [f32]) {
    axpy_q8_0_body(alpha, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_q4_0_avx2(alpha: f32, x: &[BlockQ4_0], y: &mut [f32]) {
    axpy_q4_0_body(alpha, x, y)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
    })
}

/// `y[i] += alpha·v[i]` for the values of `Q8_0` blocks `x`; `y.len()` must be `32 · x.len()`.
/// Agrees with [`axpy_q8_0_ref`] up to fused rounding (one rounding per element instead of two).
pub fn axpy_q8_0(alpha: f32, x: &[BlockQ8_0], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK, "axpy_q8_0: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        return unsafe { axpy_q8_0_avx2(alpha, x, y) };
    }
    axpy_q8_0_body(alpha, x, y)
}

/// `y[i] += alpha·v[i]` for the values of `Q4_0` blocks `x`; `y.len()` must be `32 · x.len()`.
pub fn axpy_q4_0(alpha: f32, x: &[BlockQ4_0], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK, "axpy_q4_0: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        return unsafe { axpy_q4_0_avx2(alpha, x, y) };
    }
    axpy_q4_0_body(alpha, x, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::scalar::{quantize_row_q4_0, quantize_row_q8_0};

    fn random(n: usize) -> Vec<f32> {
        (0..n).map(|_| rand::random::<f32>() * 4.0 - 2.0).collect()
    }

    #[test]
    fn fast_axpy_matches_the_reference() {
        for blocks in [1, 2, 5] {
            let x = random(blocks * QK);
            let alpha = rand::random::<f32>() - 0.5;
            let mut q8 = vec![BlockQ8_0::default(); blocks];
            quantize_row_q8_0(&x, &mut q8);
            let mut q4 = vec![BlockQ4_0::default(); blocks];
            quantize_row_q4_0(&x, &mut q4);
            let y0 = random(blocks * QK);
            let (mut a, mut b) = (y0.clone(), y0.clone());
            axpy_q8_0(alpha, &q8, &mut a);
            axpy_q8_0_ref(alpha, &q8, &mut b);
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "q8_0: {p} vs {q}");
            }
            let (mut a, mut b) = (y0.clone(), y0);
            axpy_q4_0(alpha, &q4, &mut a);
            axpy_q4_0_ref(alpha, &q4, &mut b);
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "q4_0: {p} vs {q}");
            }
        }
    }

    #[test]
    fn reference_dequantizes_like_the_scalar_module() {
        let x = random(2 * QK);
        let mut q8 = vec![BlockQ8_0::default(); 2];
        quantize_row_q8_0(&x, &mut q8);
        let mut deq = vec![0.0; 2 * QK];
        crate::kernels::scalar::dequantize_row_q8_0(&q8, &mut deq);
        let mut y = vec![0.0; 2 * QK];
        axpy_q8_0_ref(1.0, &q8, &mut y);
        assert_eq!(y, deq);
    }
}
