//! AArch64 kernels: NEON, with the `sdot` instruction when the CPU has it.
//!
//! The dot products follow ggml's NEON code (`ggml-cpu/arch/arm/quants.c`): two blocks per
//! iteration into two float accumulators, nibbles unpacked with `vandq_u8`/`vshrq_n_u8`,
//! 16 byte products per instruction summed into four i32 lanes, either by `sdot`
//! (`K = DOTPROD`, ARMv8.2 dot product extension, only after
//! `is_aarch64_feature_detected!("dotprod")`) or by `vmull_s8` + `vpaddlq_s16` (`K = VMULL`,
//! ggml's fallback `ggml_vdotq_s32`). `sdot` and the f16 conversions (`fcvtl`, `fcvt`, both
//! base ARMv8) are emitted with inline assembly: the Rust intrinsics for them are unstable.
//!
//! The four-token kernels (`vec_dot4_*`, for prefill) unpack each weight block once for four
//! tokens' blocks, with the single-token loop's two accumulators per token and its order of
//! operations, so each token's result is bit-identical to a single-token call.
//!
//! The quantizers use ggml's x86 SIMD arithmetic, as the scalar reference does on every
//! platform (so results match llama.cpp on x86 and are identical across our kernel sets):
//! `id = 127 / amax`, rounding with `vcvtnq_s32_f32` (to nearest, ties to even, as x86's
//! `_mm256_round_ps`); they are bit-identical to the scalar reference for finite inputs.
//!
//! # Safety
//! NEON is part of every AArch64 target Rust supports; the only CPU requirement is the dot
//! product extension for `K = DOTPROD`. Slices are only read within bounds; mismatched
//! lengths are truncated to the shorter one.

// Register-only intrinsics are safe to call inside `#[target_feature]` functions since Rust
// 1.87; the workspace's MSRV (1.85) still needs them in `unsafe` blocks, so keep those.
#![allow(unused_unsafe)]

use std::arch::aarch64::*;
use std::arch::asm;

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use super::column;

/// Byte products summed with `vmull_s8` + `vpaddlq_s16` (any AArch64 CPU).
pub(super) const VMULL: u8 = 0;
/// Byte products summed with `sdot` (needs the `dotprod` extension).
pub(super) const DOTPROD: u8 = 1;

/// `acc + Σ` of groups of four byte products `a·b` per i32 lane (ggml's `ggml_vdotq_s32`).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn vdot<const K: u8>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: NEON is enabled; `sdot` is only reached with K = DOTPROD, which callers use only
    // once the CPU was found to have the extension (module contract). Registers only.
    unsafe {
        if K == DOTPROD {
            let mut r = acc;
            asm!(".arch_extension dotprod", "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
                 inout(vreg) r, in(vreg) a, in(vreg) b, options(pure, nomem, nostack, preserves_flags));
            r
        } else {
            // |a·b| ≤ 128·128 fits i16, so the widening products cannot overflow.
            let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let p1 = vmull_s8(vget_high_s8(a), vget_high_s8(b));
            vaddq_s32(acc, vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)))
        }
    }
}

/// Four f16 bit patterns (`a` in lane 0 .. `d` in lane 3) to f32, exactly.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn f16x4_to_f32(a: u16, b: u16, c: u16, d: u16) -> float32x4_t {
    let bits = u64::from(a) | (u64::from(b) << 16) | (u64::from(c) << 32) | (u64::from(d) << 48);
    // SAFETY: `fcvtl` (half to single, base ARMv8 FP) on registers only.
    unsafe {
        let h = vcreate_u16(bits);
        let r: float32x4_t;
        asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) r, in(vreg) h,
             options(pure, nomem, nostack, preserves_flags));
        r
    }
}

/// f32 to f16 bits with the default rounding mode, round to nearest even (as
/// `half::f16::from_f32`).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn f32_to_f16(x: f32) -> u16 {
    let r: u16;
    // SAFETY: `fcvt` (single to half, base ARMv8 FP) on registers only.
    unsafe {
        asm!("fcvt {0:h}, {1:s}", out(vreg) r, in(vreg) x, options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// Loads 16 packed bytes and splits them into low nibbles (values 0..16) and high nibbles
/// (values 16..32), each in `0..16`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn nibbles(qs: &[u8; QK / 2]) -> (int8x16_t, int8x16_t) {
    // SAFETY: `qs` is 16 readable bytes; the load reads exactly those.
    unsafe {
        let v = vld1q_u8(qs.as_ptr());
        (
            vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))),
            vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)),
        )
    }
}

/// Loads 32 signed bytes as two halves.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_i8x32(qs: &[i8; QK]) -> (int8x16_t, int8x16_t) {
    // SAFETY: `qs` is 32 readable bytes; the loads read bytes 0..16 and 16..32.
    unsafe { (vld1q_s8(qs.as_ptr()), vld1q_s8(qs.as_ptr().add(16))) }
}

/// i32 lanes of one `Q4_0 × Q8_0` block product.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block_q4_0_q8_0<const K: u8>(xb: &BlockQ4_0, yb: &BlockQ8_0) -> int32x4_t {
    // SAFETY: helpers of this module on registers / the blocks' own bytes.
    unsafe {
        let s8 = vdupq_n_s8(8);
        let (l, h) = nibbles(&xb.qs);
        let (yl, yh) = load_i8x32(&yb.qs);
        vdot::<K>(
            vdot::<K>(vdupq_n_s32(0), vsubq_s8(l, s8), yl),
            vsubq_s8(h, s8),
            yh,
        )
    }
}

/// i32 lanes of one `Q4_1 × Q8_1` block product (without the offset term).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block_q4_1_q8_1<const K: u8>(xb: &BlockQ4_1, yb: &BlockQ8_1) -> int32x4_t {
    // SAFETY: helpers of this module on registers / the blocks' own bytes.
    unsafe {
        let (l, h) = nibbles(&xb.qs);
        let (yl, yh) = load_i8x32(&yb.qs);
        vdot::<K>(vdot::<K>(vdupq_n_s32(0), l, yl), h, yh)
    }
}

/// i32 lanes of one `Q8_0 × Q8_0` block product.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block_q8_0_q8_0<const K: u8>(xb: &BlockQ8_0, yb: &BlockQ8_0) -> int32x4_t {
    // SAFETY: helpers of this module on registers / the blocks' own bytes.
    unsafe {
        let (xl, xh) = load_i8x32(&xb.qs);
        let (yl, yh) = load_i8x32(&yb.qs);
        vdot::<K>(vdot::<K>(vdupq_n_s32(0), xl, yl), xh, yh)
    }
}

/// Shared loop of the `Q?_0` dot products: two blocks per iteration, scale `dx·dy` per block.
macro_rules! dot_blocks {
    ($x:expr, $y:expr, $block:ident::<$k:ident>) => {{
        let (x, y) = ($x, $y);
        let n = x.len().min(y.len());
        let mut sumv0 = vdupq_n_f32(0.0);
        let mut sumv1 = vdupq_n_f32(0.0);
        let mut i = 0;
        while i + 1 < n {
            let (x0, x1, y0, y1) = (&x[i], &x[i + 1], &y[i], &y[i + 1]);
            let s = f16x4_to_f32(x0.d, y0.d, x1.d, y1.d);
            // Lanes 0 and 2: dx0·dy0 and dx1·dy1 (exact: products of two f16 values).
            let d = vmulq_f32(s, vrev64q_f32(s));
            let p0 = $block::<$k>(x0, y0);
            let p1 = $block::<$k>(x1, y1);
            sumv0 = vfmaq_laneq_f32::<0>(sumv0, vcvtq_f32_s32(p0), d);
            sumv1 = vfmaq_laneq_f32::<2>(sumv1, vcvtq_f32_s32(p1), d);
            i += 2;
        }
        if i < n {
            let s = f16x4_to_f32(x[i].d, y[i].d, 0, 0);
            let d = vmulq_f32(s, vrev64q_f32(s));
            sumv0 = vfmaq_laneq_f32::<0>(sumv0, vcvtq_f32_s32($block::<$k>(&x[i], &y[i])), d);
        }
        vaddvq_f32(sumv0) + vaddvq_f32(sumv1)
    }};
}

/// `Σ x·y` over `min(x.len(), y.len())` blocks; see the module's safety contract.
#[target_feature(enable = "neon")]
pub(super) unsafe fn vec_dot_q4_0_q8_0<const K: u8>(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    // SAFETY: register-only NEON and helpers of this module; indices are below `n`, the
    // shorter length; the module contract (dotprod present for K = DOTPROD) is ours.
    unsafe { dot_blocks!(x, y, block_q4_0_q8_0::<K>) }
}

/// `Σ x·y` over `min(x.len(), y.len())` blocks; see the module's safety contract.
#[target_feature(enable = "neon")]
pub(super) unsafe fn vec_dot_q8_0_q8_0<const K: u8>(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe { dot_blocks!(x, y, block_q8_0_q8_0::<K>) }
}

/// `Σ x·y` over `min(x.len(), y.len())` blocks; see the module's safety contract.
#[target_feature(enable = "neon")]
pub(super) unsafe fn vec_dot_q4_1_q8_1<const K: u8>(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let n = x.len().min(y.len());
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe {
        let mut sumv0 = vdupq_n_f32(0.0);
        let mut sumv1 = vdupq_n_f32(0.0);
        // Lanes 1 and 3 accumulate mx·sy (ggml's `summs`).
        let mut summs = vdupq_n_f32(0.0);
        let mut i = 0;
        while i < n {
            let (x0, y0) = (&x[i], &y[i]);
            // [dx, mx, dy, sy] · [dy, sy, dx, mx] -> lane 0: dx·dy, lane 1: mx·sy.
            let s = f16x4_to_f32(x0.d, x0.m, y0.d, y0.s);
            let p = vmulq_f32(s, vextq_f32::<2>(s, s));
            let q0 = vcvtq_f32_s32(block_q4_1_q8_1::<K>(x0, y0));
            if i + 1 < n {
                let (x1, y1) = (&x[i + 1], &y[i + 1]);
                let s1 = f16x4_to_f32(x1.d, x1.m, y1.d, y1.s);
                let p1 = vmulq_f32(s1, vextq_f32::<2>(s1, s1));
                let q1 = vcvtq_f32_s32(block_q4_1_q8_1::<K>(x1, y1));
                summs = vaddq_f32(summs, vaddq_f32(p, p1));
                sumv0 = vfmaq_laneq_f32::<0>(sumv0, q0, p);
                sumv1 = vfmaq_laneq_f32::<0>(sumv1, q1, p1);
                i += 2;
            } else {
                summs = vaddq_f32(summs, p);
                sumv0 = vfmaq_laneq_f32::<0>(sumv0, q0, p);
                i += 1;
            }
        }
        vaddvq_f32(sumv0) + vaddvq_f32(sumv1) + vgetq_lane_f32::<1>(summs)
    }
}

/// i32 lanes of two byte halves `(l, h)` of one weight block against four tokens' blocks.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot4_halves<const K: u8>(
    l: int8x16_t,
    h: int8x16_t,
    y: [&[i8; QK]; 4],
) -> [int32x4_t; 4] {
    // SAFETY: helpers of this module on registers / the blocks' own bytes.
    unsafe {
        let dot = |y: &[i8; QK]| {
            let (yl, yh) = load_i8x32(y);
            vdot::<K>(vdot::<K>(vdupq_n_s32(0), l, yl), h, yh)
        };
        [dot(y[0]), dot(y[1]), dot(y[2]), dot(y[3])]
    }
}

/// `sumv[t] += dx·dy_t · q[t]` for the four tokens, as the single-token `dot_blocks!` does.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn fma4_q0(sumv: &mut [float32x4_t; 4], dx: u16, dy: [u16; 4], q: [int32x4_t; 4]) {
    // SAFETY: register-only NEON and helpers of this module.
    unsafe {
        // [dy0, dy1, dy2, dy3] · dx: lane t is dx·dy_t (exact).
        let s = f16x4_to_f32(dy[0], dy[1], dy[2], dy[3]);
        let d = vmulq_laneq_f32::<0>(s, f16x4_to_f32(dx, 0, 0, 0));
        sumv[0] = vfmaq_laneq_f32::<0>(sumv[0], vcvtq_f32_s32(q[0]), d);
        sumv[1] = vfmaq_laneq_f32::<1>(sumv[1], vcvtq_f32_s32(q[1]), d);
        sumv[2] = vfmaq_laneq_f32::<2>(sumv[2], vcvtq_f32_s32(q[2]), d);
        sumv[3] = vfmaq_laneq_f32::<3>(sumv[3], vcvtq_f32_s32(q[3]), d);
    }
}

/// One `Q4_0` weight block against block `i` of four tokens, nibbles unpacked once.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block4_q4_0_q8_0<const K: u8>(
    sumv: &mut [float32x4_t; 4],
    xb: &BlockQ4_0,
    y: [&BlockQ8_0; 4],
) {
    // SAFETY: helpers of this module on registers / the blocks' own bytes.
    unsafe {
        let s8 = vdupq_n_s8(8);
        let (l, h) = nibbles(&xb.qs);
        let q = dot4_halves::<K>(
            vsubq_s8(l, s8),
            vsubq_s8(h, s8),
            [&y[0].qs, &y[1].qs, &y[2].qs, &y[3].qs],
        );
        fma4_q0(sumv, xb.d, [y[0].d, y[1].d, y[2].d, y[3].d], q);
    }
}

/// One `Q8_0` weight block against block `i` of four tokens, loaded once.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block4_q8_0_q8_0<const K: u8>(
    sumv: &mut [float32x4_t; 4],
    xb: &BlockQ8_0,
    y: [&BlockQ8_0; 4],
) {
    // SAFETY: helpers of this module on registers / the blocks' own bytes.
    unsafe {
        let (xl, xh) = load_i8x32(&xb.qs);
        let q = dot4_halves::<K>(xl, xh, [&y[0].qs, &y[1].qs, &y[2].qs, &y[3].qs]);
        fma4_q0(sumv, xb.d, [y[0].d, y[1].d, y[2].d, y[3].d], q);
    }
}

/// Shared loop of the four-token `Q?_0` dot products: the single-token loop (`dot_blocks!`)
/// run for four tokens at once, blocks of even index into `sumv0`, odd into `sumv1`, so every
/// token's sum is rounded exactly as in the single-token kernel.
macro_rules! dot4_blocks {
    ($x:expr, $y:expr, $block:ident::<$k:ident>) => {{
        let (x, y) = ($x, $y);
        let n = y.iter().fold(x.len(), |n, yt| n.min(yt.len()));
        let mut sumv0 = [vdupq_n_f32(0.0); 4];
        let mut sumv1 = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 1 < n {
            $block::<$k>(&mut sumv0, &x[i], column(y, i));
            $block::<$k>(&mut sumv1, &x[i + 1], column(y, i + 1));
            i += 2;
        }
        if i < n {
            $block::<$k>(&mut sumv0, &x[i], column(y, i));
        }
        [
            vaddvq_f32(sumv0[0]) + vaddvq_f32(sumv1[0]),
            vaddvq_f32(sumv0[1]) + vaddvq_f32(sumv1[1]),
            vaddvq_f32(sumv0[2]) + vaddvq_f32(sumv1[2]),
            vaddvq_f32(sumv0[3]) + vaddvq_f32(sumv1[3]),
        ]
    }};
}

/// `Σ x·y_t` for four rows `y_t` over the shortest length; bit-identical to four calls of
/// [`vec_dot_q4_0_q8_0`]. See the module's safety contract.
#[target_feature(enable = "neon")]
pub(super) unsafe fn vec_dot4_q4_0_q8_0<const K: u8>(
    x: &[BlockQ4_0],
    y: [&[BlockQ8_0]; 4],
) -> [f32; 4] {
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe { dot4_blocks!(x, y, block4_q4_0_q8_0::<K>) }
}

/// `Σ x·y_t` for four rows `y_t` over the shortest length; bit-identical to four calls of
/// [`vec_dot_q8_0_q8_0`]. See the module's safety contract.
#[target_feature(enable = "neon")]
pub(super) unsafe fn vec_dot4_q8_0_q8_0<const K: u8>(
    x: &[BlockQ8_0],
    y: [&[BlockQ8_0]; 4],
) -> [f32; 4] {
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe { dot4_blocks!(x, y, block4_q8_0_q8_0::<K>) }
}

/// One `Q4_1` weight block against block `i` of four tokens: `sumv[t] += dx·dy_t · Σ qx·qy_t`
/// as in the single-token loop, the nibbles unpacked once. Returns
/// `([dx·dy0, mx·sy0, dx·dy1, mx·sy1], [dx·dy2, mx·sy2, dx·dy3, mx·sy3])`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block4_q4_1_q8_1<const K: u8>(
    sumv: &mut [float32x4_t; 4],
    xb: &BlockQ4_1,
    y: [&BlockQ8_1; 4],
) -> (float32x4_t, float32x4_t) {
    // SAFETY: helpers of this module on registers / the blocks' own bytes.
    unsafe {
        let xs = f16x4_to_f32(xb.d, xb.m, xb.d, xb.m);
        let p01 = vmulq_f32(xs, f16x4_to_f32(y[0].d, y[0].s, y[1].d, y[1].s));
        let p23 = vmulq_f32(xs, f16x4_to_f32(y[2].d, y[2].s, y[3].d, y[3].s));
        let (l, h) = nibbles(&xb.qs);
        let q = dot4_halves::<K>(l, h, [&y[0].qs, &y[1].qs, &y[2].qs, &y[3].qs]);
        sumv[0] = vfmaq_laneq_f32::<0>(sumv[0], vcvtq_f32_s32(q[0]), p01);
        sumv[1] = vfmaq_laneq_f32::<2>(sumv[1], vcvtq_f32_s32(q[1]), p01);
        sumv[2] = vfmaq_laneq_f32::<0>(sumv[2], vcvtq_f32_s32(q[2]), p23);
        sumv[3] = vfmaq_laneq_f32::<2>(sumv[3], vcvtq_f32_s32(q[3]), p23);
        (p01, p23)
    }
}

/// `Σ x·y_t` for four rows `y_t` over the shortest length; bit-identical to four calls of
/// [`vec_dot_q4_1_q8_1`]. See the module's safety contract.
#[target_feature(enable = "neon")]
pub(super) unsafe fn vec_dot4_q4_1_q8_1<const K: u8>(
    x: &[BlockQ4_1],
    y: [&[BlockQ8_1]; 4],
) -> [f32; 4] {
    let n = y.iter().fold(x.len(), |n, yt| n.min(yt.len()));
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe {
        let mut sumv0 = [vdupq_n_f32(0.0); 4];
        let mut sumv1 = [vdupq_n_f32(0.0); 4];
        // Lanes 1 and 3 accumulate mx·sy (ggml's `summs`) of tokens 0 and 1 in `summs01`, of
        // tokens 2 and 3 in `summs23`, block pairs added first as in the single-token loop.
        let (mut summs01, mut summs23) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
        let mut i = 0;
        while i + 1 < n {
            let (a01, a23) = block4_q4_1_q8_1::<K>(&mut sumv0, &x[i], column(y, i));
            let (b01, b23) = block4_q4_1_q8_1::<K>(&mut sumv1, &x[i + 1], column(y, i + 1));
            summs01 = vaddq_f32(summs01, vaddq_f32(a01, b01));
            summs23 = vaddq_f32(summs23, vaddq_f32(a23, b23));
            i += 2;
        }
        if i < n {
            let (a01, a23) = block4_q4_1_q8_1::<K>(&mut sumv0, &x[i], column(y, i));
            summs01 = vaddq_f32(summs01, a01);
            summs23 = vaddq_f32(summs23, a23);
        }
        [
            vaddvq_f32(sumv0[0]) + vaddvq_f32(sumv1[0]) + vgetq_lane_f32::<1>(summs01),
            vaddvq_f32(sumv0[1]) + vaddvq_f32(sumv1[1]) + vgetq_lane_f32::<3>(summs01),
            vaddvq_f32(sumv0[2]) + vaddvq_f32(sumv1[2]) + vgetq_lane_f32::<1>(summs23),
            vaddvq_f32(sumv0[3]) + vaddvq_f32(sumv1[3]) + vgetq_lane_f32::<3>(summs23),
        ]
    }
}

/// The eight dot products of two weight rows with four tokens over the shortest length: two
/// four-token calls, so each is bit-identical to [`vec_dot_q4_1_q8_1`] of its row and token
/// (NEON's 32 registers would hold a fused kernel's 16 accumulators, but there is no AArch64
/// machine here to show it faster). See the module's safety contract.
#[target_feature(enable = "neon")]
pub(super) unsafe fn vec_dot2x4_q4_1_q8_1<const K: u8>(
    x0: &[BlockQ4_1],
    x1: &[BlockQ4_1],
    y: [&[BlockQ8_1]; 4],
) -> [[f32; 4]; 2] {
    let n = x0.len().min(x1.len());
    // SAFETY: the module contract is ours.
    unsafe {
        [
            vec_dot4_q4_1_q8_1::<K>(&x0[..n], y),
            vec_dot4_q4_1_q8_1::<K>(&x1[..n], y),
        ]
    }
}

/// `Σ a·b` over `min(a.len(), b.len())` values: four 4-lane FMA accumulators.
#[target_feature(enable = "neon")]
pub(super) unsafe fn vec_dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: every load reads 4 floats at offsets `i..i + 4` with `i + 4 <= n`, inside both
    // slices; the tail is read through safe indexing.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let j = i + 4 * k;
                *acc = vfmaq_f32(*acc, vld1q_f32(pa.add(j)), vld1q_f32(pb.add(j)));
            }
            i += 16;
        }
        while i + 4 <= n {
            acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
            i += 4;
        }
        let mut s = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        for j in i..n {
            s += a[j] * b[j];
        }
        s
    }
}

/// One block quantized to 32 i32 lanes (`round_ties_even(x · 127 / amax)`), and `d`, exactly
/// as the scalar reference computes them.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn quantize_block(xb: &[f32]) -> ([int32x4_t; 8], f32) {
    debug_assert_eq!(xb.len(), QK);
    let p = xb.as_ptr();
    // SAFETY: `xb` holds 32 floats (chunks_exact in the callers); loads read p[0..32].
    unsafe {
        let mut v = [vdupq_n_f32(0.0); 8];
        for (j, v) in v.iter_mut().enumerate() {
            *v = vld1q_f32(p.add(4 * j));
        }
        let mut m = vabsq_f32(v[0]);
        for &vj in &v[1..] {
            m = vmaxq_f32(m, vabsq_f32(vj));
        }
        let amax = vmaxvq_f32(m);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let id = if id.is_finite() { id } else { 0.0 };
        let mut q = [vdupq_n_s32(0); 8];
        for (q, &vj) in q.iter_mut().zip(&v) {
            // Round to nearest, ties to even (x86's `_mm256_round_ps`, not C's roundf).
            *q = vcvtnq_s32_f32(vmulq_n_f32(vj, id));
        }
        (q, d)
    }
}

/// Narrows 32 i32 lanes (each in `-127..=127`) to bytes, in order, and stores them.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn store_i8x32(q: &[int32x4_t; 8], out: &mut [i8; QK]) {
    // SAFETY: register-only narrowing; the stores write exactly the 32 bytes of `out`.
    unsafe {
        let h = [
            vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1])),
            vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3])),
            vcombine_s16(vmovn_s32(q[4]), vmovn_s32(q[5])),
            vcombine_s16(vmovn_s32(q[6]), vmovn_s32(q[7])),
        ];
        vst1q_s8(
            out.as_mut_ptr(),
            vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1])),
        );
        vst1q_s8(
            out.as_mut_ptr().add(16),
            vcombine_s8(vmovn_s16(h[2]), vmovn_s16(h[3])),
        );
    }
}

/// Quantizes `min(x.len() / 32, y.len())` blocks; bit-identical to the scalar reference.
#[target_feature(enable = "neon")]
pub(super) unsafe fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: helpers of this module; `xb` is 32 floats, `yb.qs` 32 bytes.
        unsafe {
            let (q, d) = quantize_block(xb);
            yb.d = f32_to_f16(d);
            store_i8x32(&q, &mut yb.qs);
        }
    }
}

/// Quantizes `min(x.len() / 32, y.len())` blocks; bit-identical to the scalar reference.
#[target_feature(enable = "neon")]
pub(super) unsafe fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: helpers of this module; `xb` is 32 floats, `yb.qs` 32 bytes.
        unsafe {
            let (q, d) = quantize_block(xb);
            yb.d = f32_to_f16(d);
            let s = vaddq_s32(
                vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])),
                vaddq_s32(vaddq_s32(q[4], q[5]), vaddq_s32(q[6], q[7])),
            );
            yb.s = f32_to_f16(d * vaddvq_s32(s) as f32);
            store_i8x32(&q, &mut yb.qs);
        }
    }
}

/// Eight f16 bit patterns to f32, exactly (`fcvtl`, `fcvtl2`; subnormals included).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn f16x8_to_f32(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    // SAFETY: half-to-single conversions (base ARMv8 FP) on registers only.
    unsafe {
        let (lo, hi): (float32x4_t, float32x4_t);
        asm!("fcvtl {0:v}.4s, {1:v}.4h", lateout(vreg) lo, in(vreg) h,
             options(pure, nomem, nostack, preserves_flags));
        asm!("fcvtl2 {0:v}.4s, {1:v}.8h", lateout(vreg) hi, in(vreg) h,
             options(pure, nomem, nostack, preserves_flags));
        (lo, hi)
    }
}

/// `acc[k] += a[4k..4k + 4] · f32(b[4k..4k + 4])` for `k < 4`: 16 values, four FMA chains.
///
/// # Safety
/// `pa` and `pb` point at 16 readable values each.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn fma_f32_f16_x16(acc: &mut [float32x4_t; 4], pa: *const f32, pb: *const u16) {
    // SAFETY: the caller guarantees 16 readable values behind both pointers; the loads read
    // `0..16` of each.
    unsafe {
        let (b0, b1) = f16x8_to_f32(vld1q_u16(pb));
        let (b2, b3) = f16x8_to_f32(vld1q_u16(pb.add(8)));
        acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa), b0);
        acc[1] = vfmaq_f32(acc[1], vld1q_f32(pa.add(4)), b1);
        acc[2] = vfmaq_f32(acc[2], vld1q_f32(pa.add(8)), b2);
        acc[3] = vfmaq_f32(acc[3], vld1q_f32(pa.add(12)), b3);
    }
}

/// `Σ a[i]·f32(b[i])` over `min(a.len(), b.len())` values, `b` holding f16 bits: four 4-lane
/// FMA accumulators, 16 values per iteration; a tail of fewer than 16 goes through one more
/// iteration on zero-padded copies (zeros add nothing).
#[target_feature(enable = "neon")]
pub(super) unsafe fn vec_dot_f32_f16(a: &[f32], b: &[u16]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: each `fma_f32_f16_x16` call reads 16 values at `i..i + 16` with `i + 16 <= n`
    // (inside both slices), or the 16-value padded buffers.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            fma_f32_f16_x16(&mut acc, pa.add(i), pb.add(i));
            i += 16;
        }
        if i < n {
            let (mut ta, mut tb) = ([0.0f32; 16], [0u16; 16]);
            ta[..n - i].copy_from_slice(&a[i..n]);
            tb[..n - i].copy_from_slice(&b[i..n]);
            fma_f32_f16_x16(&mut acc, ta.as_ptr(), tb.as_ptr());
        }
        vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ))
    }
}

/// `y[i] = alpha·f32(x[i]) + y[i]` for `i < 8`, one rounding (`fmla`).
///
/// # Safety
/// `px` points at 8 readable values, `py` at 8 writable ones.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn axpy_f16_x8(alpha: float32x4_t, px: *const u16, py: *mut f32) {
    // SAFETY: the caller guarantees the 8 values behind each pointer.
    unsafe {
        let (x0, x1) = f16x8_to_f32(vld1q_u16(px));
        vst1q_f32(py, vfmaq_f32(vld1q_f32(py), alpha, x0));
        vst1q_f32(py.add(4), vfmaq_f32(vld1q_f32(py.add(4)), alpha, x1));
    }
}

/// `y[i] = alpha·f32(x[i]) + y[i]` (fused, one rounding: bit-identical to the scalar
/// reference's `f32::mul_add`) over `min(x.len(), y.len())` values, `x` holding f16 bits; a
/// tail of fewer than 8 goes through zero-padded copies.
#[target_feature(enable = "neon")]
pub(super) unsafe fn axpy_f16(alpha: f32, x: &[u16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    // SAFETY: each `axpy_f16_x8` call touches the 8 values at `i..i + 8` with `i + 8 <= n`
    // (inside both slices), or the 8-value padded buffers. `py` is not used after `y` is
    // indexed again.
    unsafe {
        let av = vdupq_n_f32(alpha);
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
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
