//! The f32 product the two big trainer products reduce to: `C (+)= A·B` with `B` and `C`
//! row-major (rows contiguous) and `A` any strided view, each `A` element broadcast against a
//! row of `B` (the weight tile in the backward pass, the transposed activations in the
//! forward pass).
//!
//! On x86-64 CPUs with AVX-512F a register-blocked kernel (12 rows × 32 columns of `C` in 24
//! zmm accumulators, masked loads/stores at the edges) does it; elsewhere the `gemm` crate
//! (whose AVX-512 kernels need a nightly compiler) does: on AVX2 + FMA its packed kernels
//! matched or beat a 6 × 16 register-blocked one (measured on an AMD EPYC, 52–86 against
//! 68–91 GFLOP/s on the trainer's shapes). Both are tested against a naive triple loop.
//!
//! Also here: dequantizing `Q4_1` and `Q8_0` blocks to f32 (AVX-512F or AVX2, else a scalar
//! loop kept as the reference; bit-identical, tested), and zeroed buffers written by the pool.

use std::mem::MaybeUninit;

use half::f16;
use rayon::prelude::*;
use rayon::ThreadPool;
use tailor::kernels::{BlockQ4_1, BlockQ8_0};

use crate::linalg::{gemm, M};

/// `len` zeros. A big buffer is allocated on this thread (memory allocated on rayon's workers
/// lands in glibc's per-thread arenas, which keep it) but zeroed by the pool's workers, so
/// that the zeroing is not serial work.
pub(crate) fn zeros(pool: &ThreadPool, len: usize) -> Vec<f32> {
    if len < 1 << 16 {
        return vec![0f32; len];
    }
    let mut v: Vec<f32> = Vec::with_capacity(len);
    pool.install(|| v.spare_capacity_mut()[..len].par_chunks_mut(1 << 14).for_each(|c| c.fill(MaybeUninit::new(0.0))));
    // SAFETY: the capacity is at least `len` and its first `len` values were all written
    // just above.
    unsafe { v.set_len(len) };
    v
}

/// `Q4_1` blocks to f32, 32 values a block: `q·d + m` as ggml computes it (a product, then a
/// sum).
///
/// # Panics
/// If `out` holds fewer than `32 · blocks.len()` values.
pub(crate) fn dequantize_q4_1(blocks: &[BlockQ4_1], out: &mut [f32]) {
    assert!(out.len() >= 32 * blocks.len(), "dequantize: output size");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked above); `out` holds 32 values per block.
        unsafe { avx512::dequantize_q4_1(blocks, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above); `out` holds 32 values per block.
        unsafe { avx2::dequantize_q4_1(blocks, out) };
        return;
    }
    dequantize_q4_1_scalar(blocks, out);
}

/// `Q8_0` blocks to f32: `q·d`.
///
/// # Panics
/// If `out` holds fewer than `32 · blocks.len()` values.
pub(crate) fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    assert!(out.len() >= 32 * blocks.len(), "dequantize: output size");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: as in `dequantize_q4_1`.
        unsafe { avx512::dequantize_q8_0(blocks, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: as above, with AVX2.
        unsafe { avx2::dequantize_q8_0(blocks, out) };
        return;
    }
    dequantize_q8_0_scalar(blocks, out);
}

fn dequantize_q4_1_scalar(blocks: &[BlockQ4_1], out: &mut [f32]) {
    for (b, out) in blocks.iter().zip(out.chunks_exact_mut(32)) {
        let (d, m) = (f16::from_bits(b.d).to_f32(), f16::from_bits(b.m).to_f32());
        let (lo, hi) = out.split_at_mut(16);
        for j in 0..16 {
            lo[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            hi[j] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

fn dequantize_q8_0_scalar(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (b, out) in blocks.iter().zip(out.chunks_exact_mut(32)) {
        let d = f16::from_bits(b.d).to_f32();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// Whether [`gemm_bcast`] runs this crate's own kernel (AVX-512F), which needs `B` row-major;
/// otherwise it hands the product to the `gemm` crate, which takes any strides, and a caller
/// holding `Bᵀ` can skip transposing it.
pub(crate) fn has_bcast_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return true;
    }
    false
}

/// `c[i·ldc + j] (+)= alpha · Σ_p a(i, p) · b[p·ldb + j]` for `i < m`, `j < n`, `p < k`.
///
/// # Panics
/// If a view reaches past its slice.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bcast(m: usize, n: usize, k: usize, a: M<'_>, b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, acc: bool, alpha: f32) {
    assert_eq!((a.rows, a.cols), (m, k), "gemm_bcast: lhs shape");
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= ldb && n <= ldc, "gemm_bcast: row strides");
    assert!((m - 1) * ldc + n <= c.len(), "gemm_bcast: output size");
    if k > 0 {
        assert!((k - 1) * ldb + n <= b.len(), "gemm_bcast: rhs size");
        assert!((m - 1) * a.rs + (k - 1) * a.cs < a.data.len(), "gemm_bcast: lhs size");
    }
    #[cfg(target_arch = "x86_64")]
    if k > 0 && has_bcast_kernel() {
        // SAFETY: the CPU has AVX-512F (checked above) and every index the kernel touches is
        // inside the slices (the bounds were asserted above; masked lanes are not accessed).
        unsafe { avx512::gemm_bcast(m, n, k, a.data.as_ptr(), a.rs, a.cs, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, acc, alpha) };
        return;
    }
    portable(m, n, k, a, b, ldb, c, ldc, acc, alpha);
}

#[allow(clippy::too_many_arguments)]
fn portable(m: usize, n: usize, k: usize, a: M<'_>, b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, acc: bool, alpha: f32) {
    if ldc == n && ldb == n {
        gemm(c, a, M::new(&b[..k * n], k, n), acc, alpha);
        return;
    }
    let mut tmp = vec![0f32; m * n];
    let bv = M { data: b, rows: k, cols: n, rs: ldb, cs: 1 };
    gemm(&mut tmp, a, bv, false, alpha);
    for i in 0..m {
        let row = &mut c[i * ldc..i * ldc + n];
        let t = &tmp[i * n..(i + 1) * n];
        if acc {
            row.iter_mut().zip(t).for_each(|(x, y)| *x += y);
        } else {
            row.copy_from_slice(t);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use half::f16;
    use tailor::kernels::{BlockQ4_1, BlockQ8_0};

    /// # Safety
    /// The CPU has AVX-512F and `out` holds `32 · blocks.len()` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dequantize_q4_1(blocks: &[BlockQ4_1], out: &mut [f32]) {
        let low = _mm512_set1_epi32(0x0F);
        for (i, b) in blocks.iter().enumerate() {
            let (d, m) = (_mm512_set1_ps(f16::from_bits(b.d).to_f32()), _mm512_set1_ps(f16::from_bits(b.m).to_f32()));
            // SAFETY: `qs` is 16 bytes (an unaligned load); block i's 32 outputs are inside
            // `out` (the caller's contract).
            unsafe {
                let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(b.qs.as_ptr().cast()));
                let lo = _mm512_cvtepi32_ps(_mm512_and_si512(q, low));
                let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(q));
                let o = out.as_mut_ptr().add(32 * i);
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_mul_ps(lo, d), m));
                _mm512_storeu_ps(o.add(16), _mm512_add_ps(_mm512_mul_ps(hi, d), m));
            }
        }
    }

    /// # Safety
    /// As [`dequantize_q4_1`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
        for (i, b) in blocks.iter().enumerate() {
            let d = _mm512_set1_ps(f16::from_bits(b.d).to_f32());
            // SAFETY: `qs` is 32 bytes (two unaligned 16-byte loads); the 32 outputs are inside
            // `out`.
            unsafe {
                let p = b.qs.as_ptr().cast::<__m128i>();
                let q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p)));
                let q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(1))));
                let o = out.as_mut_ptr().add(32 * i);
                _mm512_storeu_ps(o, _mm512_mul_ps(q0, d));
                _mm512_storeu_ps(o.add(16), _mm512_mul_ps(q1, d));
            }
        }
    }

    const MR: usize = 12;
    const NR: usize = 32;

    /// # Safety
    /// The CPU has AVX-512F; `a(i, p) = *a.add(i·a_rs + p·a_cs)` for `i < m`, `p < k`,
    /// `b.add(p·ldb + j)` for `p < k`, `j < n` and `c.add(i·ldc + j)` for `i < m`, `j < n`
    /// are valid (and `c` does not overlap `a` or `b`).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_bcast(m: usize, n: usize, k: usize, a: *const f32, a_rs: usize, a_cs: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize, acc: bool, alpha: f32) {
        let mut j = 0;
        while j < n {
            let nr = (n - j).min(NR);
            let (m0, m1): (u16, u16) = if nr >= 16 { (0xFFFF, ((1u32 << (nr - 16)) - 1) as u16) } else { (((1u32 << nr) - 1) as u16, 0) };
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(MR);
                // SAFETY: rows i..i+mr and columns j..j+nr are inside the caller's ranges.
                unsafe {
                    let (ap, bp, cp) = (a.add(i * a_rs), b.add(j), c.add(i * ldc + j));
                    macro_rules! go {
                        ($($r:literal)*) => {
                            match mr { $($r => micro::<$r>(k, ap, a_rs, a_cs, bp, ldb, cp, ldc, m0, m1, acc, alpha),)* _ => unreachable!() }
                        };
                    }
                    go!(1 2 3 4 5 6 7 8 9 10 11 12);
                }
                i += mr;
            }
            j += nr;
        }
    }

    /// One `R × 32` block of `C` (lanes outside `m0`/`m1` untouched).
    ///
    /// # Safety
    /// As [`gemm_bcast`] for the block's `R` rows and the columns the masks select.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro<const R: usize>(k: usize, a: *const f32, a_rs: usize, a_cs: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize, m0: u16, m1: u16, acc: bool, alpha: f32) {
        let mut c0 = [_mm512_setzero_ps(); R];
        let mut c1 = [_mm512_setzero_ps(); R];
        for p in 0..k {
            // SAFETY: p < k, masked-off lanes are not read (no fault).
            unsafe {
                let brow = b.add(p * ldb);
                let b0 = _mm512_maskz_loadu_ps(m0, brow);
                let b1 = _mm512_maskz_loadu_ps(m1, brow.add(16));
                let ap = a.add(p * a_cs);
                for r in 0..R {
                    // A broadcast straight from memory (a load, no FP-pipe work); `alpha` is
                    // applied once per output below, not once per product.
                    let av = _mm512_set1_ps(*ap.add(r * a_rs));
                    c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
                    c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
                }
            }
        }
        let scale = (alpha != 1.0).then(|| _mm512_set1_ps(alpha));
        for r in 0..R {
            // SAFETY: row r < R of the block; only the masked lanes are read and written.
            unsafe {
                let cr = c.add(r * ldc);
                let (mut x0, mut x1) = (c0[r], c1[r]);
                if let Some(s) = scale {
                    x0 = _mm512_mul_ps(x0, s);
                    x1 = _mm512_mul_ps(x1, s);
                }
                if acc {
                    x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, cr));
                    x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, cr.add(16)));
                }
                _mm512_mask_storeu_ps(cr, m0, x0);
                _mm512_mask_storeu_ps(cr.add(16), m1, x1);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;
    use tailor::kernels::{BlockQ4_1, BlockQ8_0};

    /// The low eight bytes of `v` (unsigned) to f32.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn u8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
    }

    /// # Safety
    /// The CPU has AVX2 and `out` holds `32 · blocks.len()` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dequantize_q4_1(blocks: &[BlockQ4_1], out: &mut [f32]) {
        let low = _mm_set1_epi8(0x0F);
        for (i, b) in blocks.iter().enumerate() {
            let (d, m) = (_mm256_set1_ps(f16::from_bits(b.d).to_f32()), _mm256_set1_ps(f16::from_bits(b.m).to_f32()));
            // SAFETY: `qs` is 16 bytes (an unaligned load); block i's 32 outputs are inside
            // `out` (the caller's contract). A product then a sum, as ggml (no FMA).
            unsafe {
                let q = _mm_loadu_si128(b.qs.as_ptr().cast());
                let lo = _mm_and_si128(q, low);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), low);
                let o = out.as_mut_ptr().add(32 * i);
                _mm256_storeu_ps(o, _mm256_add_ps(_mm256_mul_ps(u8x8(lo), d), m));
                _mm256_storeu_ps(o.add(8), _mm256_add_ps(_mm256_mul_ps(u8x8(_mm_srli_si128::<8>(lo)), d), m));
                _mm256_storeu_ps(o.add(16), _mm256_add_ps(_mm256_mul_ps(u8x8(hi), d), m));
                _mm256_storeu_ps(o.add(24), _mm256_add_ps(_mm256_mul_ps(u8x8(_mm_srli_si128::<8>(hi)), d), m));
            }
        }
    }

    /// # Safety
    /// As [`dequantize_q4_1`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
        for (i, b) in blocks.iter().enumerate() {
            let d = _mm256_set1_ps(f16::from_bits(b.d).to_f32());
            // SAFETY: `qs` is 32 bytes (four unaligned 8-byte loads); the 32 outputs are inside
            // `out`.
            unsafe {
                let p = b.qs.as_ptr();
                let o = out.as_mut_ptr().add(32 * i);
                for h in 0..4 {
                    let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(8 * h).cast())));
                    _mm256_storeu_ps(o.add(8 * h), _mm256_mul_ps(q, d));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The detected dequantization (AVX-512 where there is one) equals the scalar loop bit for
    /// bit, on blocks with every nibble / byte value and assorted scales and offsets.
    #[test]
    fn dequantization_matches_the_scalar_loop() {
        let q4: Vec<BlockQ4_1> = (0..37u16)
            .map(|i| BlockQ4_1 {
                d: f16::from_f32(0.013 * (i as f32 - 18.0)).to_bits(),
                m: f16::from_f32(-0.4 + 0.021 * i as f32).to_bits(),
                qs: std::array::from_fn(|j| (j as u8).wrapping_mul(17).wrapping_add(i as u8 * 29)),
            })
            .collect();
        let q8: Vec<BlockQ8_0> = (0..37u16)
            .map(|i| BlockQ8_0 { d: f16::from_f32(0.007 * (i as f32 - 11.0)).to_bits(), qs: std::array::from_fn(|j| (j as u8).wrapping_mul(37).wrapping_add(i as u8 * 71) as i8) })
            .collect();
        let (mut fast, mut want) = (vec![0f32; 32 * 37], vec![1f32; 32 * 37]);
        dequantize_q4_1(&q4, &mut fast);
        dequantize_q4_1_scalar(&q4, &mut want);
        assert_eq!(fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        dequantize_q8_0(&q8, &mut fast);
        dequantize_q8_0_scalar(&q8, &mut want);
        assert_eq!(fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        // The AVX2 kernels also where AVX-512 is the detected path.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 detected; `fast` holds 32 values per block.
            unsafe { avx2::dequantize_q4_1(&q4, &mut fast) };
            dequantize_q4_1_scalar(&q4, &mut want);
            assert_eq!(fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            // SAFETY: as above.
            unsafe { avx2::dequantize_q8_0(&q8, &mut fast) };
            dequantize_q8_0_scalar(&q8, &mut want);
            assert_eq!(fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        }
    }

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// Both paths (the detected one and the portable one) against a naive loop, over edge
    /// sizes, strided `A`, padded row strides, and accumulation. Tolerance: 1e-4 relative to
    /// `Σ|a·b|` (f32 sums in different orders).
    #[test]
    fn matches_naive_on_edge_shapes() {
        for &(m, n, k) in &[(1, 1, 1), (13, 37, 5), (12, 32, 64), (25, 16, 3), (7, 70, 33), (3, 15, 0)] {
            let (ldb, ldc) = (n + 3, n + 5);
            let a_store = vals(k * m + 1, 1); // A read transposed: a(i, p) = a_store[p·m + i]
            let a = M { data: &a_store, rows: m, cols: k, rs: 1, cs: m };
            let b = vals(k.max(1) * ldb, 2);
            for acc in [false, true] {
                let init = vals(m * ldc, 3);
                let mut want = init.clone();
                for i in 0..m {
                    for j in 0..n {
                        let s: f32 = 0.5 * (0..k).map(|p| a_store[p * m + i] * b[p * ldb + j]).sum::<f32>();
                        want[i * ldc + j] = if acc { init[i * ldc + j] + s } else { s };
                    }
                }
                for fast in [true, false] {
                    let mut c = init.clone();
                    if fast {
                        gemm_bcast(m, n, k, a, &b, ldb, &mut c, ldc, acc, 0.5);
                    } else {
                        portable(m, n, k, a, &b, ldb, &mut c, ldc, acc, 0.5);
                    }
                    for (idx, (x, y)) in c.iter().zip(&want).enumerate() {
                        let tol = 1e-4 * (k as f32 + 1.0);
                        assert!((x - y).abs() <= tol, "{m}x{n}x{k} acc {acc} fast {fast} @{idx}: {x} vs {y}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release -p tailor-trainer kernel_gflops -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn kernel_gflops() {
        for &(m, n, k) in &[(112usize, 256usize, 576usize), (112, 50, 576), (112, 512, 576), (256, 576, 112), (50, 576, 112), (512, 576, 112), (256, 576, 48)] {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; k * n];
            let mut c = vec![0f32; m * n];
            let reps = 200;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                gemm_bcast(m, n, k, M::new(&a, m, k), &b, n, &mut c, n, true, 1.0);
            }
            let fast = 2.0 * (m * n * k * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                gemm(&mut c, M::new(&a, m, k), M::new(&b, k, n), true, 1.0);
            }
            let crate_ = 2.0 * (m * n * k * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
            eprintln!("{m}x{n}x{k}: kernel {fast:.1} GFLOP/s, gemm crate {crate_:.1} GFLOP/s");
        }
    }
}
