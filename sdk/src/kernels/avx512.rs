//! The two-rows × four-tokens `Q4_1 × Q8_1` prefill kernel on zmm registers (AVX512-VNNI).
//!
//! [`vec_dot2x4_q4_1_q8_1`] multiplies two weight rows by four tokens' activations: eight dot
//! products, each bit-identical to the single-token ymm kernel of the `avx512vnni` set
//! ([`super::avx2`]'s `vec_dot_q4_1_q8_1`). On the Xeon (Sapphire Rapids class) it was built
//! on, 1.28× the throughput of two ymm `dot4` calls at 1536 wide rows and 1.13× at 576
//! (`benches/kernels.rs`); the fixed cost per call (loading constants, de-interleaving and
//! summing eight accumulators) weighs more on short rows.
//!
//! # Why bit-identical
//! The ymm kernel keeps two accumulators, `acc0` for even blocks and `acc1` for odd ones, each
//! eight f32 lanes; lane `g` of a block is the integer dot of its bytes `4g..4g + 4` (`vpdpbusd`)
//! converted to f32, added with one FMA scaled by `dx·dy`. Here a zmm accumulator holds both:
//! lane `2g` is `acc0`'s lane `g` and lane `2g + 1` is `acc1`'s, and every iteration takes a
//! block pair `(i, i + 1)` with the bytes interleaved the same way (dword `g` of block `i` in
//! lane `2g`, of block `i + 1` in lane `2g + 1`). The scale vector is the 64-bit pair
//! `[dx·dy(i), dx·dy(i + 1)]` broadcast, so each lane sees exactly the FMAs of the ymm kernel,
//! in the same order. The `m·s` terms go through `summs += (m·s(i) + m·s(i + 1))` as there; a
//! lone last block, the de-interleaving and the horizontal sums are done afterwards by the
//! ymm code itself (`super::avx2`).
//!
//! # Per block pair
//! One zmm load of 64 bytes from each token's block `i` (its `d, s`, its 32 bytes and block
//! `i + 1`'s `d, s` and first 24 bytes) plus the last 8 bytes: the `d, s` words of the four
//! tokens are gathered with two `vpermi2d` for one `vcvtph2ps`, the bytes interleaved with one
//! `vpermt2d` per token; per weight row, one `vpermt2d` + shift + mask unpacks both blocks'
//! nibbles, and one `vpermw` + `vcvtph2ps` + multiply gives the eight scale products, stored
//! on a scratch line and read back with `vbroadcastsd`; then per token `vpdpbusd`,
//! `vcvtdq2ps` and one FMA: about 55 vector µops per pair of blocks for 16 block products.
//! With 512-bit µops in flight only two vector ports run, so that is the bound; the 24 µops
//! of the products themselves cannot shrink without changing the accumulation order. A
//! compiler-scheduled version of the same loop with AVX-512 intrinsics (not on our MSRV) was
//! measured at the same speed.
//!
//! `vpdpbusd` on zmm, and every AVX-512 instruction here, is inline assembly: the AVX-512
//! target features and intrinsics are not stable on our MSRV. The asm block names the zmm
//! registers it uses and declares all 32 clobbered (so the compiler keeps nothing in them
//! across it, whatever target features the caller has), and ends with `vzeroupper`.
//!
//! # Safety
//! [`vec_dot2x4_q4_1_q8_1`] may only be called when the CPU supports AVX2, FMA, F16C,
//! AVX512F, AVX512BW, AVX512VL and AVX512-VNNI. Slices are only read within bounds;
//! mismatched lengths are truncated to the shortest one.

#![allow(unused_unsafe)]

use std::arch::asm;
use std::arch::x86_64::*;

use super::avx2::{self, AVX512_VNNI};
use super::blocks::{BlockQ4_1, BlockQ8_1};
use super::column;

/// Index vectors and masks of the asm loop, loaded into registers once per call.
#[repr(C, align(64))]
struct Consts {
    /// `vpermt2d` of one token's block pair: lane `2g` = block `i`'s byte dword `g` (dword
    /// `1 + g` of the 64-byte load), lane `2g + 1` = block `i + 1`'s (pair dword `10 + g`:
    /// the load's up to dword 15, then dwords 0 and 1 of the 8-byte load, indices 16, 17).
    idx_y: [u32; 16],
    /// `vpermt2d` of one weight row's block pair (40 bytes: a 32-byte and an 8-byte load):
    /// nibble dwords `1..5` of block `i` and `6..10` of block `i + 1` (8 and 9 from the 8-byte
    /// load: indices 16, 17), interleaved, twice (the second copy gives the high nibbles).
    idx_x: [u32; 16],
    /// `vpsrlvd` counts: 0 for the low-nibble half, 4 for the high one.
    shift: [u32; 16],
    /// `vpermi2d` of two tokens' 64-byte loads: `[d, s]` of block `i` (dword 0) and `i + 1`
    /// (dword 9) of the first token, then of the second.
    idx_s: [u32; 16],
    /// `vpshufb`: f16 words `[d(i), s(i), d(i+1), s(i+1)]` to `[d(i), d(i+1), s(i), s(i+1)]`.
    shuf: [u8; 32],
    /// `vpermw` of a weight row's pair: `[dx(i), dx(i+1), mx(i), mx(i+1)]` (words 0, 10, 1, 11)
    /// four times.
    idx_w: [u16; 16],
}

static CONSTS: Consts = Consts {
    idx_y: [1, 10, 2, 11, 3, 12, 4, 13, 5, 14, 6, 15, 7, 16, 8, 17],
    idx_x: [1, 6, 2, 7, 3, 16, 4, 17, 1, 6, 2, 7, 3, 16, 4, 17],
    shift: [0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4],
    idx_s: [0, 9, 16, 25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    shuf: [
        0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15, //
        0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15,
    ],
    idx_w: [0, 10, 1, 11, 0, 10, 1, 11, 0, 10, 1, 11, 0, 10, 1, 11],
};

/// What the asm loop leaves behind, and its scratch line.
#[repr(C, align(64))]
struct State {
    /// Accumulators of row `r`, token `t` at `4r + t`, lanes interleaved (`acc0`, `acc1`).
    acc: [[f32; 16]; 8],
    /// `summs` of row `r`: token `t`'s `Σ m·s` in lane `4t + 2`.
    summs: [[f32; 16]; 2],
    /// Per row, the pair's scale products `[dx·dy(i), dx·dy(i+1), mx·sy(i), mx·sy(i+1)]` of
    /// tokens 0..4, re-read by `vbroadcastsd`.
    scratch: [[f32; 16]; 2],
}

/// The eight dot products of two `Q4_1` rows with four `Q8_1` rows, over the shortest length;
/// each bit-identical to `avx2::vec_dot_q4_1_q8_1::<AVX512_VNNI>` of its row and token. See
/// the module's safety contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot2x4_q4_1_q8_1(
    x0: &[BlockQ4_1],
    x1: &[BlockQ4_1],
    y: [&[BlockQ8_1]; 4],
) -> [[f32; 4]; 2] {
    let n = y
        .iter()
        .fold(x0.len().min(x1.len()), |n, yt| n.min(yt.len()));
    let pairs = n / 2;
    let mut st = State {
        acc: [[0.0; 16]; 8],
        summs: [[0.0; 16]; 2],
        scratch: [[0.0; 16]; 2],
    };
    if pairs > 0 {
        // SAFETY: the module contract gives every instruction used. Per pair `p < n / 2` the
        // loads read, from each token's row, bytes `72p..72p + 64` and `72p + 64..72p + 72`,
        // and from each weight row bytes `40p..40p + 32` and `40p + 32..40p + 40`: inside the
        // first `2p + 2 <= n` blocks. `st` is 64-byte aligned (`repr(align(64))`) for the
        // aligned stores; the constants too. All vector and mask registers the asm touches
        // are declared clobbered; the pointer registers are in-out.
        unsafe {
            asm!(
                "vmovdqa32 zmm24, [{c}]",
                "vmovdqa32 zmm25, [{c} + 64]",
                "vmovdqa32 zmm26, [{c} + 128]",
                "vmovdqa32 zmm27, [{c} + 192]",
                "vmovdqu8 ymm28, [{c} + 256]",
                "vmovdqu16 ymm29, [{c} + 288]",
                "mov {tmp:e}, 0x0F0F0F0F",
                "vpbroadcastd zmm30, {tmp:e}",
                "vpxord zmm16, zmm16, zmm16",
                "vpxord zmm17, zmm17, zmm17",
                "vpxord zmm18, zmm18, zmm18",
                "vpxord zmm19, zmm19, zmm19",
                "vpxord zmm20, zmm20, zmm20",
                "vpxord zmm21, zmm21, zmm21",
                "vpxord zmm22, zmm22, zmm22",
                "vpxord zmm23, zmm23, zmm23",
                "vpxord zmm14, zmm14, zmm14",
                "vpxord zmm15, zmm15, zmm15",
                "2:",
                // The four tokens' block pairs: bytes 0..64 in zmm0..3, 64..72 in xmm4..7.
                "vmovdqu32 zmm0, [{y0}]",
                "vmovdqu32 zmm1, [{y1}]",
                "vmovdqu32 zmm2, [{y2}]",
                "vmovdqu32 zmm3, [{y3}]",
                "vmovq xmm4, qword ptr [{y0} + 64]",
                "vmovq xmm5, qword ptr [{y1} + 64]",
                "vmovq xmm6, qword ptr [{y2} + 64]",
                "vmovq xmm7, qword ptr [{y3} + 64]",
                // Token scales: zmm31 = f32 [dy(i), dy(i+1), sy(i), sy(i+1)] of tokens 0..4.
                "vmovdqa32 zmm8, zmm27",
                "vpermi2d zmm8, zmm0, zmm1",
                "vmovdqa32 zmm9, zmm27",
                "vpermi2d zmm9, zmm2, zmm3",
                "vinserti128 ymm8, ymm8, xmm9, 1",
                "vpshufb ymm8, ymm8, ymm28",
                "vcvtph2ps zmm31, ymm8",
                // Token bytes, interleaved: zmm0..3.
                "vpermt2d zmm0, zmm24, zmm4",
                "vpermt2d zmm1, zmm24, zmm5",
                "vpermt2d zmm2, zmm24, zmm6",
                "vpermt2d zmm3, zmm24, zmm7",
                // Row 0: scale products to the scratch line, m·s into zmm14, then the dots.
                "vmovdqu ymm8, [{x0}]",
                "vmovq xmm9, qword ptr [{x0} + 32]",
                "vpermw ymm10, ymm29, ymm8",
                "vpermt2d zmm8, zmm25, zmm9",
                "vpsrlvd zmm8, zmm8, zmm26",
                "vpandd zmm9, zmm8, zmm30",
                "vcvtph2ps zmm10, ymm10",
                "vmulps zmm10, zmm10, zmm31",
                "vmovaps [{st} + 640], zmm10",
                "vpsrlq zmm11, zmm10, 32",
                "vaddps zmm11, zmm11, zmm10",
                "vaddps zmm14, zmm14, zmm11",
                "vpxord zmm4, zmm4, zmm4",
                "vpdpbusd zmm4, zmm9, zmm0",
                "vcvtdq2ps zmm4, zmm4",
                "vbroadcastsd zmm8, qword ptr [{st} + 640]",
                "vfmadd231ps zmm16, zmm4, zmm8",
                "vpxord zmm5, zmm5, zmm5",
                "vpdpbusd zmm5, zmm9, zmm1",
                "vcvtdq2ps zmm5, zmm5",
                "vbroadcastsd zmm10, qword ptr [{st} + 656]",
                "vfmadd231ps zmm17, zmm5, zmm10",
                "vpxord zmm6, zmm6, zmm6",
                "vpdpbusd zmm6, zmm9, zmm2",
                "vcvtdq2ps zmm6, zmm6",
                "vbroadcastsd zmm11, qword ptr [{st} + 672]",
                "vfmadd231ps zmm18, zmm6, zmm11",
                "vpxord zmm7, zmm7, zmm7",
                "vpdpbusd zmm7, zmm9, zmm3",
                "vcvtdq2ps zmm7, zmm7",
                "vbroadcastsd zmm12, qword ptr [{st} + 688]",
                "vfmadd231ps zmm19, zmm7, zmm12",
                // Row 1: the same into zmm15 and zmm20..23.
                "vmovdqu ymm8, [{x1}]",
                "vmovq xmm9, qword ptr [{x1} + 32]",
                "vpermw ymm10, ymm29, ymm8",
                "vpermt2d zmm8, zmm25, zmm9",
                "vpsrlvd zmm8, zmm8, zmm26",
                "vpandd zmm9, zmm8, zmm30",
                "vcvtph2ps zmm10, ymm10",
                "vmulps zmm10, zmm10, zmm31",
                "vmovaps [{st} + 704], zmm10",
                "vpsrlq zmm11, zmm10, 32",
                "vaddps zmm11, zmm11, zmm10",
                "vaddps zmm15, zmm15, zmm11",
                "vpxord zmm4, zmm4, zmm4",
                "vpdpbusd zmm4, zmm9, zmm0",
                "vcvtdq2ps zmm4, zmm4",
                "vbroadcastsd zmm8, qword ptr [{st} + 704]",
                "vfmadd231ps zmm20, zmm4, zmm8",
                "vpxord zmm5, zmm5, zmm5",
                "vpdpbusd zmm5, zmm9, zmm1",
                "vcvtdq2ps zmm5, zmm5",
                "vbroadcastsd zmm10, qword ptr [{st} + 720]",
                "vfmadd231ps zmm21, zmm5, zmm10",
                "vpxord zmm6, zmm6, zmm6",
                "vpdpbusd zmm6, zmm9, zmm2",
                "vcvtdq2ps zmm6, zmm6",
                "vbroadcastsd zmm11, qword ptr [{st} + 736]",
                "vfmadd231ps zmm22, zmm6, zmm11",
                "vpxord zmm7, zmm7, zmm7",
                "vpdpbusd zmm7, zmm9, zmm3",
                "vcvtdq2ps zmm7, zmm7",
                "vbroadcastsd zmm12, qword ptr [{st} + 752]",
                "vfmadd231ps zmm23, zmm7, zmm12",
                "add {x0}, 40",
                "add {x1}, 40",
                "add {y0}, 72",
                "add {y1}, 72",
                "add {y2}, 72",
                "add {y3}, 72",
                "dec {n}",
                "jnz 2b",
                "vmovaps [{st}], zmm16",
                "vmovaps [{st} + 64], zmm17",
                "vmovaps [{st} + 128], zmm18",
                "vmovaps [{st} + 192], zmm19",
                "vmovaps [{st} + 256], zmm20",
                "vmovaps [{st} + 320], zmm21",
                "vmovaps [{st} + 384], zmm22",
                "vmovaps [{st} + 448], zmm23",
                "vmovaps [{st} + 512], zmm14",
                "vmovaps [{st} + 576], zmm15",
                "vzeroupper",
                c = in(reg) &CONSTS,
                st = in(reg) std::ptr::addr_of_mut!(st),
                x0 = inout(reg) x0.as_ptr() => _,
                x1 = inout(reg) x1.as_ptr() => _,
                y0 = inout(reg) y[0].as_ptr() => _,
                y1 = inout(reg) y[1].as_ptr() => _,
                y2 = inout(reg) y[2].as_ptr() => _,
                y3 = inout(reg) y[3].as_ptr() => _,
                n = inout(reg) pairs => _,
                tmp = out(reg) _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
                out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
                out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
                out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
                out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
                options(nostack),
            );
        }
    }
    let x = [x0, x1];
    let mut out = [[0.0; 4]; 2];
    for (r, out) in out.iter_mut().enumerate() {
        // SAFETY: AVX2/FMA/F16C intrinsics and `avx2` helpers on a function compiled with
        // them; the loads read the 16 floats of `st.acc[..]`; the module contract covers
        // `block4_q4_1_q8_1::<AVX512_VNNI>`; `n - 1` is in bounds of every row.
        unsafe {
            let mut acc0 = [_mm256_setzero_ps(); 4];
            let mut acc1 = [_mm256_setzero_ps(); 4];
            for t in 0..4 {
                let a = st.acc[4 * r + t].as_ptr();
                let (lo, hi) = (_mm256_loadu_ps(a), _mm256_loadu_ps(a.add(8)));
                // Even lanes to acc0, odd to acc1; the shuffles leave 64-bit chunks in order
                // 0, 2, 1, 3, which the permutes put back.
                let even = _mm256_castps_pd(_mm256_shuffle_ps::<0x88>(lo, hi));
                let odd = _mm256_castps_pd(_mm256_shuffle_ps::<0xDD>(lo, hi));
                acc0[t] = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(even));
                acc1[t] = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(odd));
            }
            let s = &st.summs[r];
            let mut ms = [s[2], s[6], s[10], s[14]];
            if n % 2 == 1 {
                // The lone last block goes into acc0, as in the ymm loop.
                let p = avx2::block4_q4_1_q8_1::<AVX512_VNNI>(
                    &mut acc0,
                    &x[r][n - 1],
                    column(y, n - 1),
                );
                let mut pm = [0.0f32; 8];
                _mm256_storeu_ps(pm.as_mut_ptr(), p);
                for (m, p) in ms.iter_mut().zip(pm.iter().skip(1).step_by(2)) {
                    *m += p;
                }
            }
            for t in 0..4 {
                out[t] = avx2::hsum_float_8(_mm256_add_ps(acc0[t], acc1[t])) + ms[t];
            }
        }
    }
    out
}
