//! x86-64 kernels: AVX2 + FMA + F16C, with optional VNNI dot instructions.
//!
//! The dot products follow ggml's AVX2 code (`ggml-cpu/arch/x86/quants.c`):
//! `bytes_from_nibbles_32`, the sign trick that turns a signed×signed byte product into the
//! unsigned×signed one x86 has, `_mm256_maddubs_epi16` + `_mm256_madd_epi16` for 32 products
//! into eight i32 lanes, f16 scales through `_mm_cvtph_ps`, and one FMA per block into a
//! float accumulator; unlike ggml, two blocks per iteration go into two accumulators, as one
//! FMA chain per block is latency-bound (~20% faster here). With VNNI the byte products are summed by one `vpdpbusd` instead
//! (`K = AVX_VNNI`: VEX encoding, Alder Lake and later; `K = AVX512_VNNI`: EVEX encoding on
//! ymm registers, Ice Lake / Zen 4 and later, needs AVX512VL; that set's two-row kernel is
//! the zmm one of [`super::avx512`], which also needs AVX512F and AVX512BW). `vpdpbusd` is
//! emitted with inline assembly so that no AVX-512 target feature has to be enabled at
//! compile time.
//!
//! The four-token kernels (`vec_dot4_*`, for prefill) unpack each weight block (nibbles to
//! bytes, `|x|` for the sign trick, f16 scales to f32) once and apply it to four tokens'
//! blocks. They keep the single-token loop's two accumulators per token (8 of the 16 ymm
//! registers; no spills) and its order of operations, so each token's result is bit-identical
//! to a single-token call. An eight-token variant was measured and not kept: with 16 ymm
//! registers it either spills or gives up bit-identity, and it did not beat two four-token
//! calls consistently (0.92–1.12×). For the same reason the two-row × four-token kernel
//! (`vec_dot2x4_q4_1_q8_1`) is two four-token calls here (a ymm version with its 16
//! accumulators measured 0.96–1.01× of that), except in the AVX512-VNNI set, whose zmm kernel
//! ([`super::avx512`]) has two blocks per register and 32 registers.
//!
//! The quantizers use ggml's x86 SIMD arithmetic, as the scalar reference does on every
//! platform (so results match llama.cpp on x86 and are identical across our kernel sets):
//! `d = amax / 127`, `id = 127 / amax`, `q = round_ties_even(x · id)` with `_mm256_round_ps`,
//! `s = d · Σq`; they are bit-identical to the scalar reference for finite inputs.
//!
//! # Safety
//! Every function here may only be called when the CPU supports AVX2, FMA and F16C, and
//! for `K = AVX_VNNI` also AVX-VNNI, for `K = AVX512_VNNI` also AVX512-VNNI, AVX512F,
//! AVX512BW and AVX512VL.
//! Slices are only read within bounds; mismatched lengths are truncated to the shorter one.

// Register-only intrinsics are safe to call inside `#[target_feature]` functions since Rust
// 1.87; the workspace's MSRV (1.85) still needs them in `unsafe` blocks, so keep those.
#![allow(unused_unsafe)]

use std::arch::asm;
use std::arch::x86_64::*;

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use super::column;

/// Byte products summed with `_mm256_maddubs_epi16` + `_mm256_madd_epi16` (plain AVX2).
pub(super) const MADDUBS: u8 = 0;
/// Byte products summed with VEX-encoded `vpdpbusd` (AVX-VNNI).
pub(super) const AVX_VNNI: u8 = 1;
/// Byte products summed with EVEX-encoded `vpdpbusd` on ymm (AVX512-VNNI + AVX512VL).
pub(super) const AVX512_VNNI: u8 = 2;

/// For each i32 lane `k`: `Σ_{i<4} a[4k+i]·b[4k+i]`, `a` unsigned bytes, `b` signed bytes.
///
/// With `MADDUBS` the pairwise i16 sums saturate above 32767; callers keep `a·b` pairs below
/// that (|a| ≤ 128 and |b| ≤ 127, which ggml's quantizers guarantee).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_sum_us8<const K: u8>(a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled on this function; the VNNI instructions are only reached with
    // K = AVX_VNNI / AVX512_VNNI, which callers only use once the CPU was found to have them
    // (module contract). The asm reads and writes registers only.
    unsafe {
        match K {
            AVX_VNNI => {
                let mut acc = _mm256_setzero_si256();
                asm!("{{vex}} vpdpbusd {acc}, {a}, {b}", acc = inout(ymm_reg) acc, a = in(ymm_reg) a,
                     b = in(ymm_reg) b, options(pure, nomem, nostack, preserves_flags));
                acc
            }
            AVX512_VNNI => {
                let mut acc = _mm256_setzero_si256();
                asm!("vpdpbusd {acc}, {a}, {b}", acc = inout(ymm_reg) acc, a = in(ymm_reg) a,
                     b = in(ymm_reg) b, options(pure, nomem, nostack, preserves_flags));
                acc
            }
            _ => _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)),
        }
    }
}

/// Signed×signed byte products summed into eight f32 lanes (ggml's `mul_sum_i8_pairs_float`):
/// `|x|` times `y` with `x`'s sign.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_sum_i8_pairs_float<const K: u8>(x: __m256i, y: __m256i) -> __m256 {
    // SAFETY: register-only AVX2 intrinsics on a function compiled with AVX2; `mul_sum_us8`
    // has this module's contract, which our caller upholds.
    unsafe {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        _mm256_cvtepi32_ps(mul_sum_us8::<K>(ax, sy))
    }
}

/// 16 packed bytes to 32 bytes in `0..16`: low nibbles first, then high nibbles (ggml order).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes_from_nibbles_32(qs: &[u8; QK / 2]) -> __m256i {
    // SAFETY: `qs` is 16 readable bytes, the unaligned load reads exactly those; AVX2 is
    // enabled on this function.
    unsafe {
        let tmp = _mm_loadu_si128(qs.as_ptr().cast());
        let bytes = _mm256_set_m128i(_mm_srli_epi16::<4>(tmp), tmp);
        _mm256_and_si256(_mm256_set1_epi8(0x0F), bytes)
    }
}

/// Loads 32 signed bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_i8x32(qs: &[i8; QK]) -> __m256i {
    // SAFETY: `qs` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) }
}

/// Scale products of two block pairs: `(f16(a0)·f16(b0), f16(a1)·f16(b1))`, each broadcast
/// to eight lanes (products of two f16 values are exact in f32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_products(a0: u16, b0: u16, a1: u16, b1: u16) -> (__m256, __m256) {
    // SAFETY: register-only F16C/AVX2 intrinsics on a function compiled with them.
    unsafe {
        let lo = u32::from(a0) | (u32::from(b0) << 16);
        let hi = u32::from(a1) | (u32::from(b1) << 16);
        let v = _mm_cvtph_ps(_mm_cvtsi64_si128(
            (u64::from(lo) | (u64::from(hi) << 32)) as i64,
        ));
        // Lanes 0 and 2: a0·b0 and a1·b1.
        let p = _mm_mul_ps(v, _mm_movehdup_ps(v));
        (
            _mm256_broadcastss_ps(p),
            _mm256_broadcastss_ps(_mm_movehl_ps(p, p)),
        )
    }
}

/// Sum of the eight lanes (ggml's `hsum_float_8`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_float_8(x: __m256) -> f32 {
    // SAFETY: register-only AVX intrinsics on a function compiled with AVX2.
    unsafe {
        let mut res = _mm256_extractf128_ps::<1>(x);
        res = _mm_add_ps(res, _mm256_castps256_ps128(x));
        res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }
}

/// Shared loop of the dot products: two blocks per iteration into two accumulators (one
/// FMA chain per block would be latency-bound), a lone last block into the first.
/// `$block(xb, yb)` gives the eight f32 lanes of one block's integer dot.
macro_rules! dot_blocks {
    ($x:expr, $y:expr, $block:ident::<$k:ident>) => {{
        let (x, y) = ($x, $y);
        let n = x.len().min(y.len());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 1 < n {
            let (x0, x1, y0, y1) = (&x[i], &x[i + 1], &y[i], &y[i + 1]);
            let (d0, d1) = scale_products(x0.d, y0.d, x1.d, y1.d);
            acc0 = _mm256_fmadd_ps(d0, $block::<$k>(x0, y0), acc0);
            acc1 = _mm256_fmadd_ps(d1, $block::<$k>(x1, y1), acc1);
            i += 2;
        }
        if i < n {
            let (d0, _) = scale_products(x[i].d, y[i].d, 0, 0);
            acc0 = _mm256_fmadd_ps(d0, $block::<$k>(&x[i], &y[i]), acc0);
        }
        hsum_float_8(_mm256_add_ps(acc0, acc1))
    }};
}

/// Eight f32 lanes of one `Q4_0 × Q8_0` block's integer dot.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_q4_0_q8_0<const K: u8>(xb: &BlockQ4_0, yb: &BlockQ8_0) -> __m256 {
    // SAFETY: helpers of this module on the blocks' own bytes; module contract is ours.
    unsafe {
        let qx = _mm256_sub_epi8(bytes_from_nibbles_32(&xb.qs), _mm256_set1_epi8(8));
        mul_sum_i8_pairs_float::<K>(qx, load_i8x32(&yb.qs))
    }
}

/// Eight f32 lanes of one `Q8_0 × Q8_0` block's integer dot.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_q8_0_q8_0<const K: u8>(xb: &BlockQ8_0, yb: &BlockQ8_0) -> __m256 {
    // SAFETY: helpers of this module on the blocks' own bytes; module contract is ours.
    unsafe { mul_sum_i8_pairs_float::<K>(load_i8x32(&xb.qs), load_i8x32(&yb.qs)) }
}

/// `Σ x·y` over `min(x.len(), y.len())` blocks; see the module's safety contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q4_0_q8_0<const K: u8>(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    // SAFETY: register-only intrinsics and helpers of this module on a function compiled
    // with their features; indices are below the shorter length; the module contract (VNNI
    // present for K != MADDUBS) is ours.
    unsafe { dot_blocks!(x, y, block_q4_0_q8_0::<K>) }
}

/// `Σ x·y` over `min(x.len(), y.len())` blocks; see the module's safety contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q8_0_q8_0<const K: u8>(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe { dot_blocks!(x, y, block_q8_0_q8_0::<K>) }
}

/// `Σ x·y` over `min(x.len(), y.len())` blocks; see the module's safety contract. With
/// `K = AVX512_VNNI` the zmm kernel of [`super::avx512`] (bit-identical to the ymm loop).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q4_1_q8_1<const K: u8>(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    // SAFETY: the module contract is ours; for K = AVX512_VNNI it includes AVX512F/BW, which
    // the zmm kernel needs besides.
    unsafe {
        if K == AVX512_VNNI {
            super::avx512::vec_dot_q4_1_q8_1(x, y)
        } else {
            let zero = _mm256_setzero_ps();
            dot_q4_1_q8_1_from::<K>([zero, zero], _mm_setzero_ps(), x, y)
        }
    }
}

/// The ymm `Q4_1 × Q8_1` loop from a given state: accumulators `acc` (even, odd blocks) and
/// `summs` (lane 1: `Σ mx·sy`), over `min(x.len(), y.len())` blocks, the first of them taken
/// as even. `vec_dot_q4_1_q8_1` starts it from zeros; the zmm kernel finishes its rows with
/// it. See the module's safety contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_1_q8_1_from<const K: u8>(
    acc: [__m256; 2],
    mut summs: __m128,
    x: &[BlockQ4_1],
    y: &[BlockQ8_1],
) -> f32 {
    let n = x.len().min(y.len());
    let [mut acc0, mut acc1] = acc;
    // SAFETY: register-only intrinsics and helpers of this module on a function compiled
    // with their features; indices are below the shorter length; the module contract (VNNI
    // present for K != MADDUBS) is ours.
    unsafe {
        let mut i = 0;
        while i + 1 < n {
            let (p0, q0) = block_q4_1_q8_1::<K>(&x[i], &y[i]);
            let (p1, q1) = block_q4_1_q8_1::<K>(&x[i + 1], &y[i + 1]);
            summs = _mm_add_ps(summs, _mm_add_ps(p0, p1));
            acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(p0), q0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_broadcastss_ps(p1), q1, acc1);
            i += 2;
        }
        if i < n {
            let (p0, q0) = block_q4_1_q8_1::<K>(&x[i], &y[i]);
            summs = _mm_add_ps(summs, p0);
            acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(p0), q0, acc0);
        }
        hsum_float_8(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(_mm_movehdup_ps(summs))
    }
}

/// One `Q4_1 × Q8_1` block: returns `[dx·dy, mx·sy, ..]` and the eight f32 lanes of the
/// integer dot.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_q4_1_q8_1<const K: u8>(xb: &BlockQ4_1, yb: &BlockQ8_1) -> (__m128, __m256) {
    // SAFETY: helpers of this module on the blocks' own bytes; module contract is ours.
    unsafe {
        let xbits = u32::from(xb.d) | (u32::from(xb.m) << 16);
        let ybits = u32::from(yb.d) | (u32::from(yb.s) << 16);
        // [dx, mx, dy, sy] · [dy, sy, dy, sy] -> lane 0: dx·dy, lane 1: mx·sy.
        let v = _mm_cvtph_ps(_mm_cvtsi64_si128(
            (u64::from(xbits) | (u64::from(ybits) << 32)) as i64,
        ));
        let p = _mm_mul_ps(v, _mm_movehl_ps(v, v));
        let q = _mm256_cvtepi32_ps(mul_sum_us8::<K>(
            bytes_from_nibbles_32(&xb.qs),
            load_i8x32(&yb.qs),
        ));
        (p, q)
    }
}

/// Lane `L` of `v` in all eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn splat_lane<const L: i32>(v: __m256) -> __m256 {
    // SAFETY: register-only AVX2 intrinsics on a function compiled with AVX2.
    unsafe { _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(L)) }
}

/// `[dx·dy0, dx·dy1, dx·dy2, dx·dy3]` in lanes 0..4 (exact, as in `scale_products`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales4(dx: u16, dy: [u16; 4]) -> __m256 {
    let ybits = dy
        .iter()
        .rev()
        .fold(0u64, |bits, &d| (bits << 16) | u64::from(d));
    let xbits = u64::from(dx) * 0x0001_0001_0001_0001;
    // SAFETY: register-only F16C/AVX2 intrinsics on a function compiled with them.
    unsafe {
        // [dy0, dy1, dy2, dy3, dx, dx, dx, dx]
        let v = _mm256_cvtph_ps(_mm_set_epi64x(xbits as i64, ybits as i64));
        _mm256_castps128_ps256(_mm_mul_ps(
            _mm256_castps256_ps128(v),
            _mm256_extractf128_ps::<1>(v),
        ))
    }
}

/// One weight block (signed bytes `x`) against four tokens' blocks: for each token `t`,
/// `acc[t] += d[t] · Σ x·y_t` with `d[t]` lane `t` of `d`, computed exactly as
/// `mul_sum_i8_pairs_float` and the FMA of the single-token loop, `|x|` taken once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fma4_i8<const K: u8>(acc: &mut [__m256; 4], d: __m256, x: __m256i, y: [&[i8; QK]; 4]) {
    // SAFETY: register-only AVX2 intrinsics and helpers of this module on a function
    // compiled with their features; module contract is ours.
    unsafe {
        let ax = _mm256_sign_epi8(x, x);
        let dot = |y: &[i8; QK]| {
            _mm256_cvtepi32_ps(mul_sum_us8::<K>(ax, _mm256_sign_epi8(load_i8x32(y), x)))
        };
        acc[0] = _mm256_fmadd_ps(splat_lane::<0>(d), dot(y[0]), acc[0]);
        acc[1] = _mm256_fmadd_ps(splat_lane::<1>(d), dot(y[1]), acc[1]);
        acc[2] = _mm256_fmadd_ps(splat_lane::<2>(d), dot(y[2]), acc[2]);
        acc[3] = _mm256_fmadd_ps(splat_lane::<3>(d), dot(y[3]), acc[3]);
    }
}

/// One `Q4_0` weight block against block `i` of the four tokens (see `fma4_i8`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block4_q4_0_q8_0<const K: u8>(acc: &mut [__m256; 4], xb: &BlockQ4_0, y: [&BlockQ8_0; 4]) {
    // SAFETY: helpers of this module on the blocks' own bytes; module contract is ours.
    unsafe {
        let qx = _mm256_sub_epi8(bytes_from_nibbles_32(&xb.qs), _mm256_set1_epi8(8));
        let d = scales4(xb.d, [y[0].d, y[1].d, y[2].d, y[3].d]);
        fma4_i8::<K>(acc, d, qx, [&y[0].qs, &y[1].qs, &y[2].qs, &y[3].qs]);
    }
}

/// One `Q8_0` weight block against block `i` of the four tokens (see `fma4_i8`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block4_q8_0_q8_0<const K: u8>(acc: &mut [__m256; 4], xb: &BlockQ8_0, y: [&BlockQ8_0; 4]) {
    // SAFETY: helpers of this module on the blocks' own bytes; module contract is ours.
    unsafe {
        let d = scales4(xb.d, [y[0].d, y[1].d, y[2].d, y[3].d]);
        fma4_i8::<K>(
            acc,
            d,
            load_i8x32(&xb.qs),
            [&y[0].qs, &y[1].qs, &y[2].qs, &y[3].qs],
        );
    }
}

/// Shared loop of the four-token dot products: the single-token loop (`dot_blocks!`) run for
/// four tokens at once, blocks of even index into `acc0`, odd into `acc1`, so every token's
/// sum is rounded exactly as in the single-token kernel.
macro_rules! dot4_blocks {
    ($x:expr, $y:expr, $block:ident::<$k:ident>) => {{
        let (x, y) = ($x, $y);
        let n = y.iter().fold(x.len(), |n, yt| n.min(yt.len()));
        let mut acc0 = [_mm256_setzero_ps(); 4];
        let mut acc1 = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 1 < n {
            $block::<$k>(&mut acc0, &x[i], column(y, i));
            $block::<$k>(&mut acc1, &x[i + 1], column(y, i + 1));
            i += 2;
        }
        if i < n {
            $block::<$k>(&mut acc0, &x[i], column(y, i));
        }
        [
            hsum_float_8(_mm256_add_ps(acc0[0], acc1[0])),
            hsum_float_8(_mm256_add_ps(acc0[1], acc1[1])),
            hsum_float_8(_mm256_add_ps(acc0[2], acc1[2])),
            hsum_float_8(_mm256_add_ps(acc0[3], acc1[3])),
        ]
    }};
}

/// `Σ x·y_t` for four rows `y_t` over the shortest length; bit-identical to four calls of
/// [`vec_dot_q4_0_q8_0`]. See the module's safety contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot4_q4_0_q8_0<const K: u8>(
    x: &[BlockQ4_0],
    y: [&[BlockQ8_0]; 4],
) -> [f32; 4] {
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe { dot4_blocks!(x, y, block4_q4_0_q8_0::<K>) }
}

/// `Σ x·y_t` for four rows `y_t` over the shortest length; bit-identical to four calls of
/// [`vec_dot_q8_0_q8_0`]. See the module's safety contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot4_q8_0_q8_0<const K: u8>(
    x: &[BlockQ8_0],
    y: [&[BlockQ8_0]; 4],
) -> [f32; 4] {
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe { dot4_blocks!(x, y, block4_q8_0_q8_0::<K>) }
}

/// One `Q4_1` weight block against block `i` of the four tokens: `acc[t] += dx·dy_t · Σ qx·qy_t`
/// as in `block_q4_1_q8_1`, the nibbles unpacked once. Returns
/// `[dx·dy0, mx·sy0, dx·dy1, mx·sy1, .., mx·sy3]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn block4_q4_1_q8_1<const K: u8>(
    acc: &mut [__m256; 4],
    xb: &BlockQ4_1,
    y: [&BlockQ8_1; 4],
) -> __m256 {
    let ds = |b: &BlockQ8_1| (u32::from(b.d) | (u32::from(b.s) << 16)) as i32;
    // SAFETY: helpers of this module on the blocks' own bytes; module contract is ours.
    unsafe {
        let xs = _mm256_cvtph_ps(_mm_set1_epi32(
            (u32::from(xb.d) | (u32::from(xb.m) << 16)) as i32,
        ));
        let ys = _mm256_cvtph_ps(_mm_setr_epi32(ds(y[0]), ds(y[1]), ds(y[2]), ds(y[3])));
        let p = _mm256_mul_ps(xs, ys);
        let qx = bytes_from_nibbles_32(&xb.qs);
        let dot = |y: &[i8; QK]| _mm256_cvtepi32_ps(mul_sum_us8::<K>(qx, load_i8x32(y)));
        acc[0] = _mm256_fmadd_ps(splat_lane::<0>(p), dot(&y[0].qs), acc[0]);
        acc[1] = _mm256_fmadd_ps(splat_lane::<2>(p), dot(&y[1].qs), acc[1]);
        acc[2] = _mm256_fmadd_ps(splat_lane::<4>(p), dot(&y[2].qs), acc[2]);
        acc[3] = _mm256_fmadd_ps(splat_lane::<6>(p), dot(&y[3].qs), acc[3]);
        p
    }
}

/// `Σ x·y_t` for four rows `y_t` over the shortest length; bit-identical to four calls of
/// [`vec_dot_q4_1_q8_1`]. See the module's safety contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot4_q4_1_q8_1<const K: u8>(
    x: &[BlockQ4_1],
    y: [&[BlockQ8_1]; 4],
) -> [f32; 4] {
    let n = y.iter().fold(x.len(), |n, yt| n.min(yt.len()));
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe {
        let mut acc0 = [_mm256_setzero_ps(); 4];
        let mut acc1 = [_mm256_setzero_ps(); 4];
        // Lanes 1, 3, 5, 7 accumulate mx·sy of tokens 0..4, as `summs` of the single loop.
        let mut summs = _mm256_setzero_ps();
        let mut i = 0;
        while i + 1 < n {
            let p0 = block4_q4_1_q8_1::<K>(&mut acc0, &x[i], column(y, i));
            let p1 = block4_q4_1_q8_1::<K>(&mut acc1, &x[i + 1], column(y, i + 1));
            summs = _mm256_add_ps(summs, _mm256_add_ps(p0, p1));
            i += 2;
        }
        if i < n {
            let p0 = block4_q4_1_q8_1::<K>(&mut acc0, &x[i], column(y, i));
            summs = _mm256_add_ps(summs, p0);
        }
        let mut ms = [0.0f32; 8];
        _mm256_storeu_ps(ms.as_mut_ptr(), summs);
        [
            hsum_float_8(_mm256_add_ps(acc0[0], acc1[0])) + ms[1],
            hsum_float_8(_mm256_add_ps(acc0[1], acc1[1])) + ms[3],
            hsum_float_8(_mm256_add_ps(acc0[2], acc1[2])) + ms[5],
            hsum_float_8(_mm256_add_ps(acc0[3], acc1[3])) + ms[7],
        ]
    }
}

/// The eight dot products of two weight rows with four tokens, over the shortest length, each
/// bit-identical to [`vec_dot_q4_1_q8_1`] of its row and token: with `K = AVX512_VNNI` the zmm
/// kernel of [`super::avx512`], otherwise two four-token calls (a ymm two-row kernel needs 16
/// accumulators, all 16 ymm registers, and measured no faster). See the module's safety
/// contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot2x4_q4_1_q8_1<const K: u8>(
    x0: &[BlockQ4_1],
    x1: &[BlockQ4_1],
    y: [&[BlockQ8_1]; 4],
) -> [[f32; 4]; 2] {
    let n = x0.len().min(x1.len());
    // SAFETY: the module contract is ours; for K = AVX512_VNNI it includes AVX512F/BW, which
    // the zmm kernel needs besides.
    unsafe {
        if K == AVX512_VNNI {
            super::avx512::vec_dot2x4_q4_1_q8_1(&x0[..n], &x1[..n], y)
        } else {
            [
                vec_dot4_q4_1_q8_1::<K>(&x0[..n], y),
                vec_dot4_q4_1_q8_1::<K>(&x1[..n], y),
            ]
        }
    }
}

/// `Σ a·b` over `min(a.len(), b.len())` values: four 8-lane FMA accumulators.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: every load reads 8 floats at offsets `i..i + 8` with `i + 8 <= n`, inside both
    // slices; the tail is read through safe indexing. Intrinsics need AVX2/FMA, enabled here.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let j = i + 8 * k;
                *acc =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(j)), _mm256_loadu_ps(pb.add(j)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum_float_8(sum);
        for j in i..n {
            s += a[j] * b[j];
        }
        s
    }
}

/// Loads one block of 32 floats, returns it with `d = amax / 127` and `id = 127 / amax` (0
/// when `amax = 0` or the quotient overflows), computed exactly as the scalar reference does.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_q8_block(xb: &[f32]) -> ([__m256; 4], f32, f32) {
    debug_assert_eq!(xb.len(), QK);
    let p = xb.as_ptr();
    // SAFETY: `xb` holds 32 floats (chunks_exact in the callers); loads read p[0..32].
    // Register-only AVX intrinsics otherwise.
    unsafe {
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for &vi in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, vi));
        }
        let mut m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        (v, d, if id.is_finite() { id } else { 0.0 })
    }
}

/// `round_ties_even(v * id)` per lane as i32, as ggml: `_mm256_round_ps` to nearest (ties
/// to even, whatever MXCSR says), then an exact conversion.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_even(v: __m256, id: __m256) -> __m256i {
    // SAFETY: register-only AVX intrinsics on a function compiled with AVX2.
    unsafe {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v, id)))
    }
}

/// Packs four vectors of eight i32 (each in `-127..=127`) into 32 bytes, in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_i32_to_i8(i: [__m256i; 4]) -> __m256i {
    // SAFETY: register-only AVX2 intrinsics on a function compiled with AVX2.
    unsafe {
        let a = _mm256_packs_epi32(i[0], i[1]);
        let b = _mm256_packs_epi32(i[2], i[3]);
        let c = _mm256_packs_epi16(a, b);
        // The packs work per 128-bit half; this restores element order (as ggml).
        _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// f32 to f16 bits, round to nearest even (as `half::f16::from_f32`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_to_f16(x: f32) -> u16 {
    // SAFETY: register-only F16C intrinsics on a function compiled with F16C.
    unsafe {
        _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x))) as u16
    }
}

/// Quantizes `min(x.len() / 32, y.len())` blocks; bit-identical to the scalar reference.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: helpers of this module on a function with their features; `xb` is 32
        // floats; the store writes exactly the 32 bytes of `yb.qs`.
        unsafe {
            let (v, d, id) = load_q8_block(xb);
            yb.d = f32_to_f16(d);
            let idv = _mm256_set1_ps(id);
            let q = [
                round_even(v[0], idv),
                round_even(v[1], idv),
                round_even(v[2], idv),
                round_even(v[3], idv),
            ];
            _mm256_storeu_si256(yb.qs.as_mut_ptr().cast(), pack_i32_to_i8(q));
        }
    }
}

/// Quantizes `min(x.len() / 32, y.len())` blocks; bit-identical to the scalar reference.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: as in `quantize_row_q8_0`.
        unsafe {
            let (v, d, id) = load_q8_block(xb);
            yb.d = f32_to_f16(d);
            let idv = _mm256_set1_ps(id);
            let q = [
                round_even(v[0], idv),
                round_even(v[1], idv),
                round_even(v[2], idv),
                round_even(v[3], idv),
            ];
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let mut s4 = _mm_add_epi32(_mm256_extracti128_si256::<1>(s), _mm256_castsi256_si128(s));
            s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01>(s4));
            let sum = _mm_cvtsi128_si32(s4);
            yb.s = f32_to_f16(d * sum as f32);
            _mm256_storeu_si256(yb.qs.as_mut_ptr().cast(), pack_i32_to_i8(q));
        }
    }
}

/// `acc[k] += a[8k..8k + 8] · f32(b[8k..8k + 8])` for `k < 4`: 32 values, four FMA chains.
///
/// # Safety
/// AVX2, FMA and F16C; `pa` and `pb` point at 32 readable values each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fma_f32_f16_x32(acc: &mut [__m256; 4], pa: *const f32, pb: *const u16) {
    // SAFETY: the caller guarantees 32 readable values behind both pointers; the offsets
    // `8k..8k + 8` for `k < 4` stay inside them. `vcvtph2ps` converts every f16 (subnormals
    // included) exactly.
    unsafe {
        for (k, acc) in acc.iter_mut().enumerate() {
            let bv = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(8 * k).cast()));
            *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(8 * k)), bv, *acc);
        }
    }
}

/// `Σ a[i]·f32(b[i])` over `min(a.len(), b.len())` values, `b` holding f16 bits: four 8-lane
/// FMA accumulators, 32 values per iteration; a tail of fewer than 32 goes through one more
/// iteration on zero-padded copies (zeros add nothing).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_f32_f16(a: &[f32], b: &[u16]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: AVX2/FMA/F16C are enabled here; each `fma_f32_f16_x32` call reads 32 values at
    // `i..i + 32` with `i + 32 <= n` (inside both slices), or the 32-value padded buffers.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            fma_f32_f16_x32(&mut acc, pa.add(i), pb.add(i));
            i += 32;
        }
        if i < n {
            let (mut ta, mut tb) = ([0.0f32; 32], [0u16; 32]);
            ta[..n - i].copy_from_slice(&a[i..n]);
            tb[..n - i].copy_from_slice(&b[i..n]);
            fma_f32_f16_x32(&mut acc, ta.as_ptr(), tb.as_ptr());
        }
        hsum_float_8(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }
}

/// `y[i] = alpha·f32(x[i]) + y[i]` for `i < 8`, one rounding (FMA).
///
/// # Safety
/// AVX2, FMA and F16C; `px` points at 8 readable values, `py` at 8 writable ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16_x8(alpha: __m256, px: *const u16, py: *mut f32) {
    // SAFETY: the caller guarantees the 8 values behind each pointer.
    unsafe {
        let xv = _mm256_cvtph_ps(_mm_loadu_si128(px.cast()));
        _mm256_storeu_ps(py, _mm256_fmadd_ps(alpha, xv, _mm256_loadu_ps(py)));
    }
}

/// `y[i] = alpha·f32(x[i]) + y[i]` (fused, one rounding: bit-identical to the scalar
/// reference's `f32::mul_add`) over `min(x.len(), y.len())` values, `x` holding f16 bits; a
/// tail of fewer than 8 goes through zero-padded copies.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy_f16(alpha: f32, x: &[u16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    // SAFETY: AVX2/FMA/F16C are enabled here; each `axpy_f16_x8` call touches the 8 values
    // at `i..i + 8` with `i + 8 <= n` (inside both slices), or the 8-value padded buffers.
    // `py` is not used after `y` is indexed again.
    unsafe {
        let av = _mm256_set1_ps(alpha);
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            axpy_f16_x8(av, px.add(i), py.add(i));
            axpy_f16_x8(av, px.add(i + 8), py.add(i + 8));
            i += 16;
        }
        if i + 8 <= n {
            axpy_f16_x8(av, px.add(i), py.add(i));
            i += 8;
        }
        if i < n {
            let (mut tx, mut ty) = ([0u16; 8], [0.0f32; 8]);
            tx[..n - i].copy_from_slice(&x[i..n]);
            ty[..n - i].copy_from_slice(&y[i..n]);
            axpy_f16_x8(av, tx.as_ptr(), ty.as_mut_ptr());
            y[i..n].copy_from_slice(&ty[..n - i]);
        }
    }
}
