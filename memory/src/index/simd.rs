//! Dot products of `f32` vectors: a scalar reference kept forever and the fast kernels chosen
//! at run time (AVX2 + FMA on x86-64, NEON on AArch64), each tested against the reference.
//!
//! Every distance of the index and every row of the exact scan goes through [`dot`]; the
//! kernel is picked once per process ([`kernel`]) and its name is in [`kernel_name`].

use std::sync::OnceLock;

/// A dot-product kernel: `a · b` for slices of equal length.
pub type DotFn = fn(&[f32], &[f32]) -> f32;

/// The scalar reference: one accumulator, in order. Slow; kept as the ground truth the
/// SIMD kernels are tested against.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Portable fallback: eight independent accumulators (auto-vectorised by the compiler).
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// AVX2 + FMA: four 8-lane accumulators (32 values per step), then the tail.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: only handed out by `super::kernel` after `is_x86_feature_detected!` found
        // both AVX2 and FMA on this CPU.
        unsafe { dot_avx2(a, b) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut i = 0;
        // SAFETY: every load reads 8 floats at offsets `i..i + 8` with `i + 8 <= n` (the
        // loop bounds), inside both slices; unaligned loads need no alignment.
        unsafe {
            let (mut s0, mut s1, mut s2, mut s3) =
                (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
            while i + 32 <= n {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
                s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), s1);
                s2 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 16)), _mm256_loadu_ps(pb.add(i + 16)), s2);
                s3 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 24)), _mm256_loadu_ps(pb.add(i + 24)), s3);
                i += 32;
            }
            while i + 8 <= n {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
                i += 8;
            }
            let s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
            let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
            let mut total = _mm_cvtss_f32(h);
            while i < n {
                total += *pa.add(i) * *pb.add(i);
                i += 1;
            }
            total
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    /// NEON (always present on AArch64): four 4-lane accumulators (16 values per step).
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut i = 0;
        // SAFETY: NEON is part of the AArch64 baseline; every load reads 4 floats at offsets
        // `i..i + 4` with `i + 4 <= n` (the loop bounds), inside both slices.
        unsafe {
            let (mut s0, mut s1, mut s2, mut s3) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0), vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            while i + 16 <= n {
                s0 = vfmaq_f32(s0, vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
                s1 = vfmaq_f32(s1, vld1q_f32(pa.add(i + 4)), vld1q_f32(pb.add(i + 4)));
                s2 = vfmaq_f32(s2, vld1q_f32(pa.add(i + 8)), vld1q_f32(pb.add(i + 8)));
                s3 = vfmaq_f32(s3, vld1q_f32(pa.add(i + 12)), vld1q_f32(pb.add(i + 12)));
                i += 16;
            }
            while i + 4 <= n {
                s0 = vfmaq_f32(s0, vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
                i += 4;
            }
            let mut total = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
            while i < n {
                total += *pa.add(i) * *pb.add(i);
                i += 1;
            }
            total
        }
    }
}

/// The fastest kernel this CPU runs, with its name (detected once per process).
pub fn kernel() -> (DotFn, &'static str) {
    static KERNEL: OnceLock<(DotFn, &'static str)> = OnceLock::new();
    *KERNEL.get_or_init(detect)
}

/// The name of the kernel [`dot`] uses here: `"avx2+fma"`, `"neon"` or `"portable"`.
pub fn kernel_name() -> &'static str {
    kernel().1
}

fn detect() -> (DotFn, &'static str) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        return (avx2::dot, "avx2+fma");
    }
    #[cfg(target_arch = "aarch64")]
    return (neon::dot, "neon");
    #[allow(unreachable_code)]
    (dot_portable, "portable")
}

/// Asks the CPU to start loading the first cache lines of `v` (a row about to be compared);
/// a no-op where stable Rust has no prefetch instruction (AArch64).
#[inline]
pub fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = v.as_ptr() as *const i8;
        // Four 64-byte lines: the hardware prefetcher follows the rest of the row.
        for line in 0..v.len().min(64).div_ceil(16) {
            // SAFETY: a prefetch is a hint that never faults; the address is inside `v`
            // (`line * 16 < v.len()` floats from its start). SSE is baseline on x86-64.
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(p.add(line * 64));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// `a · b` with the fastest kernel this CPU runs (slices of equal length; a longer slice's
/// extra values are ignored).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (kernel().0)(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_unit;

    /// Every kernel compiled for this machine (the detected one, and the others it can run).
    fn kernels() -> Vec<(DotFn, &'static str)> {
        let mut k: Vec<(DotFn, &'static str)> = vec![(dot_portable, "portable"), kernel()];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            k.push((avx2::dot, "avx2+fma"));
        }
        #[cfg(target_arch = "aarch64")]
        k.push((neon::dot, "neon"));
        k
    }

    #[test]
    fn kernels_match_the_scalar_reference() {
        // Fresh inputs each run: lengths around every unroll boundary, unit and unnormalised.
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        for n in [1usize, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 383, 384, 385, 1024] {
            let a = random_unit(n, seed ^ n as u64);
            let b: Vec<f32> = random_unit(n, seed.rotate_left(17) ^ n as u64).iter().map(|x| x * 3.0).collect();
            let reference = dot_scalar(&a, &b) as f64;
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            // |a| = 1, |b| = 3: f32 rounding over n terms stays far below 1e-5 · sqrt(n) · 3.
            let tol = 1e-5 * (n as f64).sqrt() * 3.0 + 1e-6;
            assert!((reference - exact).abs() < tol, "reference n = {n}");
            for (k, name) in kernels() {
                let got = k(&a, &b) as f64;
                assert!((got - exact).abs() < tol, "{name} n = {n}: {got} vs {exact} (seed {seed})");
            }
        }
        for (k, name) in kernels() {
            assert_eq!(k(&[], &[]), 0.0, "{name} on empty slices");
        }
    }

    #[test]
    fn a_kernel_is_picked() {
        let name = kernel_name();
        assert!(["avx2+fma", "neon", "portable"].contains(&name));
        #[cfg(target_arch = "aarch64")]
        assert_eq!(name, "neon");
    }
}
