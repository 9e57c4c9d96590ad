//! Kernels for attention over a quantized KV cache: `out += w · v_j` with `v_j` a row of
//! `Q8_0` or `Q4_0` blocks (llama.cpp's flash-attention path for quantized values: the row is
//! dequantized and accumulated in f32). Scores against quantized keys use the matrix kernels
//! ([`Kernels::dot_q8_0_q8_0`](super::Kernels), `dot_q4_0_q8_0`) on the query quantized to
//! `Q8_0`, as llama.cpp does.
//!
//! On x86-64 with AVX2+FMA+F16C (checked at run time) the blocks are widened eight bytes at a
//! time (`vpmovsxbd`, `vcvtdq2ps`) into FMAs; elsewhere a portable body written so that LLVM
//! vectorizes it (NEON is baseline on AArch64). The scalar references are [`axpy_q8_0_ref`]
//! and [`axpy_q4_0_ref`].

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

/// `y[0..8] += d · f32(q[0..8])` for eight `i8` at `q`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fma_i8x8(d: std::arch::x86_64::__m256, q: std::arch::x86_64::__m128i, y: *mut f32) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees 8 floats at `y`.
    unsafe {
        let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
        _mm256_storeu_ps(y, _mm256_fmadd_ps(d, v, _mm256_loadu_ps(y)));
    }
}

/// `y[0..32] += d · f32(v)` for the 32 `i8` values `v` held as `lo` (0..16) and `hi` (16..32).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fma_i8x32(d: std::arch::x86_64::__m256, lo: std::arch::x86_64::__m128i, hi: std::arch::x86_64::__m128i, y: *mut f32) {
    use std::arch::x86_64::_mm_unpackhi_epi64;
    // SAFETY: the caller guarantees 32 floats at `y`.
    unsafe {
        fma_i8x8(d, lo, y);
        fma_i8x8(d, _mm_unpackhi_epi64(lo, lo), y.add(8));
        fma_i8x8(d, hi, y.add(16));
        fma_i8x8(d, _mm_unpackhi_epi64(hi, hi), y.add(24));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_q8_0_avx2(alpha: f32, x: &[BlockQ8_0], y: &mut [f32]) {
    use std::arch::x86_64::*;
    for (b, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        // SAFETY: `b.qs` holds 32 bytes, `yb` 32 floats (length checked by the caller).
        unsafe {
            let d = _mm256_set1_ps(alpha * f16_to_f32(b.d));
            let q = _mm256_loadu_si256(b.qs.as_ptr().cast());
            fma_i8x32(d, _mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q), yb.as_mut_ptr());
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_q4_0_avx2(alpha: f32, x: &[BlockQ4_0], y: &mut [f32]) {
    use std::arch::x86_64::*;
    for (b, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        // SAFETY: `b.qs` holds 16 bytes, `yb` 32 floats (length checked by the caller).
        unsafe {
            let d = _mm256_set1_ps(alpha * f16_to_f32(b.d));
            let q = _mm_loadu_si128(b.qs.as_ptr().cast());
            let m = _mm_set1_epi8(0x0f);
            let eight = _mm_set1_epi8(8);
            // Values 0..16 are the low nibbles, 16..32 the high ones, each minus 8.
            let lo = _mm_sub_epi8(_mm_and_si128(q, m), eight);
            let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16::<4>(q), m), eight);
            fma_i8x32(d, lo, hi, yb.as_mut_ptr());
        }
    }
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

/// Attention scores against f16 keys: `out[j] = scale · Σᵢ q[i]·f32(keys[j·hd + i])` for the
/// `out.len()` keys (f32 sums; the f16 rows read in place), bit for bit what
/// [`super::Kernels::dot_f32_f16`] gives each key on x86-64. One call for all keys: with AVX2
/// the query stays in registers while the keys stream by.
pub fn scores_f16(kern: &super::Kernels, q: &[f32], keys: &[u16], scale: f32, out: &mut [f32]) {
    let hd = q.len();
    assert!(keys.len() >= out.len() * hd, "scores_f16: {} keys of {hd} need {} values", out.len(), out.len() * hd);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2/FMA/F16C are present (checked); lengths checked above.
        match hd {
            32 => return unsafe { scores_f16_avx2::<4>(q, keys, scale, out) },
            64 => return unsafe { scores_f16_avx2::<8>(q, keys, scale, out) },
            128 => return unsafe { scores_f16_avx2::<16>(q, keys, scale, out) },
            _ => {}
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = (kern.dot_f32_f16)(q, &keys[j * hd..(j + 1) * hd]) * scale;
    }
}

/// Attention output over f16 values: `out[i] = fma(w[j], f32(values[j·hd + i]), out[i])` for
/// `j` in order (bit for bit [`super::Kernels::axpy_f16`] called once per value row); the
/// accumulator stays in registers with AVX2.
pub fn weighted_sum_f16(kern: &super::Kernels, w: &[f32], values: &[u16], out: &mut [f32]) {
    let hd = out.len();
    assert!(values.len() >= w.len() * hd, "weighted_sum_f16: {} rows of {hd} need {} values", w.len(), w.len() * hd);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2/FMA/F16C are present (checked); lengths checked above.
        match hd {
            32 => return unsafe { weighted_sum_f16_avx2::<4>(w, values, out) },
            64 => return unsafe { weighted_sum_f16_avx2::<8>(w, values, out) },
            128 => return unsafe { weighted_sum_f16_avx2::<16>(w, values, out) },
            _ => {}
        }
    }
    for (j, &wj) in w.iter().enumerate() {
        (kern.axpy_f16)(wj, &values[j * hd..(j + 1) * hd], out);
    }
}

/// [`scores_f16`] for `hd = 8·C`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_f16_avx2<const C: usize>(q: &[f32], keys: &[u16], scale: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY: the caller checked `q.len() == 8·C` and `keys.len() >= out.len()·8·C`.
    unsafe {
        let mut qv = [_mm256_setzero_ps(); C];
        for (c, v) in qv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(q.as_ptr().add(8 * c));
        }
        let mut kp = keys.as_ptr();
        for o in out.iter_mut() {
            // Chunk c into accumulator c % 4, summed as (0 + 1) + (2 + 3): the order of the
            // row kernel (`dot_f32_f16`), so scores are bit-identical to it.
            let mut acc = [_mm256_setzero_ps(); 4];
            for c in 0..C {
                acc[c % 4] = _mm256_fmadd_ps(qv[c], _mm256_cvtph_ps(_mm_loadu_si128(kp.add(8 * c).cast())), acc[c % 4]);
            }
            let a = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let h = _mm_add_ps(_mm256_extractf128_ps::<1>(a), _mm256_castps256_ps128(a));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_movehdup_ps(h));
            *o = _mm_cvtss_f32(h) * scale;
            kp = kp.add(8 * C);
        }
    }
}

/// [`weighted_sum_f16`] for `hd = 8·C`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_sum_f16_avx2<const C: usize>(w: &[f32], values: &[u16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY: the caller checked `out.len() == 8·C` and `values.len() >= w.len()·8·C`.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); C];
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(out.as_ptr().add(8 * c));
        }
        let mut vp = values.as_ptr();
        for &wj in w {
            let wv = _mm256_set1_ps(wj);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128(vp.add(8 * c).cast())), *a);
            }
            vp = vp.add(8 * C);
        }
        for (c, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), *a);
        }
    }
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
    fn attention_kernels_match_the_row_kernels() {
        use half::f16;
        let kern = crate::kernels::Kernels::scalar();
        for hd in [16, 32, 64, 128] {
            let n = 1 + (rand::random::<u32>() % 40) as usize;
            let q = random(hd);
            let rows: Vec<u16> = random(n * hd).iter().map(|&x| f16::from_f32(x).to_bits()).collect();
            let mut fast = vec![0.0; n];
            scores_f16(crate::kernels::Kernels::detect(), &q, &rows, 0.125, &mut fast);
            for (j, f) in fast.iter().enumerate() {
                let r = crate::kernels::scalar::vec_dot_f32_f16(&q, &rows[j * hd..(j + 1) * hd]) * 0.125;
                assert!((f - r).abs() <= 1e-5 * (1.0 + r.abs()), "hd {hd} key {j}: {f} vs {r}");
                let row = (crate::kernels::Kernels::detect().dot_f32_f16)(&q, &rows[j * hd..(j + 1) * hd]) * 0.125;
                if hd % 32 == 0 {
                    assert_eq!(*f, row, "hd {hd} key {j}: bit-identical to the row kernel");
                }
            }
            let w = random(n);
            let start = random(hd);
            let (mut a, mut b) = (start.clone(), start);
            weighted_sum_f16(crate::kernels::Kernels::detect(), &w, &rows, &mut a);
            for (j, &wj) in w.iter().enumerate() {
                (kern.axpy_f16)(wj, &rows[j * hd..(j + 1) * hd], &mut b);
            }
            assert_eq!(a, b, "hd {hd}: the weighted sum is the axpy sequence bit for bit");
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
