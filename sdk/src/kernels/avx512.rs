//! The zmm kernels of the `avx512vnni` set (AVX512-VNNI), `Q4_1 × Q8_1`: the two-rows ×
//! four-tokens prefill kernel and the single-row decode kernel.
//!
//! [`vec_dot2x4_q4_1_q8_1`] multiplies two weight rows by four tokens' activations: eight dot
//! products, each bit-identical to the single-token ymm kernel of the `avx512vnni` set
//! ([`super::avx2`]'s `dot_q4_1_q8_1_from`). On the Xeon (Sapphire Rapids class) it was built
//! on, 1.28× the throughput of two ymm `dot4` calls at 1536 wide rows and 1.13× at 576
//! (`benches/kernels.rs`); the fixed cost per call (loading constants, de-interleaving and
//! summing eight accumulators) weighs more on short rows.
//!
//! [`vec_dot_q4_1_q8_1`] is the single-token dot (decode: every weight row against one
//! activation row), bit-identical to the same ymm kernel: four blocks per iteration, two zmm
//! block pairs laid out as below; the `d, m` and `d, s` words of the four blocks are gathered
//! from the data loads with two `vpermi2d`, converted by one `vcvtph2ps` and multiplied by
//! one `vmulps` (the ymm kernel converts and multiplies per block), the products stored on a
//! scratch line and read back by `vbroadcastsd` per pair, the `m·s` pair sums added to a
//! scalar in the ymm kernel's order. About 26 vector µops per four blocks on the two vector
//! ports that run while 512-bit µops are in flight (the ymm kernel: ~13 per block on three).
//! Measured against the ymm kernel (`cargo bench -p tailor --bench kernels -- decode`, two
//! runs): 1.34–1.35× at 1536 wide rows, 1.08–1.14× at 576, 1.02–1.12× at 512; the call's
//! fixed cost (constants, the latency of the first scales, de-interleaving, the ymm tail of
//! `n % 4` blocks) weighs on short rows.
//! `Q8_0 × Q8_0` and `Q4_0 × Q8_0` keep the ymm kernels: without a nibble unpack to share
//! they need about as many µops per block on zmm (sign trick with `vpabsb`, `vpmovb2m` and a
//! masked `vpsubb`; 2-byte scales off the dword grid), so two ports of zmm would not beat
//! three of ymm.
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
//! [`vec_dot2x4_q4_1_q8_1`] and [`vec_dot_q4_1_q8_1`] may only be called when the CPU supports AVX2, FMA, F16C,
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

/// A zmm accumulator's interleaved lanes back to the ymm kernel's two: even lanes to `acc0`,
/// odd ones to `acc1`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn deinterleave(acc: &[f32; 16]) -> [__m256; 2] {
    // SAFETY: the loads read the 16 floats of `acc`; register-only AVX2 intrinsics otherwise.
    unsafe {
        let a = acc.as_ptr();
        let (lo, hi) = (_mm256_loadu_ps(a), _mm256_loadu_ps(a.add(8)));
        // The shuffles leave 64-bit chunks in order 0, 2, 1, 3, which the permutes put back.
        let even = _mm256_castps_pd(_mm256_shuffle_ps::<0x88>(lo, hi));
        let odd = _mm256_castps_pd(_mm256_shuffle_ps::<0xDD>(lo, hi));
        [
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(even)),
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(odd)),
        ]
    }
}

/// The eight dot products of two `Q4_1` rows with four `Q8_1` rows, over the shortest length;
/// each bit-identical to `avx2::dot_q4_1_q8_1_from::<AVX512_VNNI>` (from zeros) of its row
/// and token. See
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
                [acc0[t], acc1[t]] = deinterleave(&st.acc[4 * r + t]);
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

/// Index vectors of the single-row loop ([`vec_dot_q4_1_q8_1`]), loaded once per call.
#[repr(C, align(64))]
struct Consts1 {
    /// `vpermd` of the quad's first 64 weight bytes: pair 0's nibble dwords `1..5` and `6..10`
    /// interleaved, twice (as `Consts::idx_x`, all from the one load).
    idx_x0: [u32; 16],
    /// `vpermi2d` of the two token loads: `[d, s]` of blocks 0..4 (dwords 0 and 9 of each) in
    /// lanes 4..8.
    idx_ys: [u32; 16],
    /// `vpermi2d` of the quad's first 64 weight bytes and the above: `[d, m]` of blocks 0..4
    /// (dwords 0, 5, 10, 15) in lanes 0..4, the tokens' in lanes 4..8.
    idx_s: [u32; 16],
    /// `vpshufb`: f16 words `[d0, m0, .., d3, m3]` to `[d0, .., d3, m0, .., m3]` per 128 bits.
    shuf: [u8; 32],
}

static CONSTS1: Consts1 = Consts1 {
    idx_x0: [1, 6, 2, 7, 3, 8, 4, 9, 1, 6, 2, 7, 3, 8, 4, 9],
    idx_ys: [0, 0, 0, 0, 0, 9, 16, 25, 0, 0, 0, 0, 0, 0, 0, 0],
    idx_s: [0, 5, 10, 15, 20, 21, 22, 23, 0, 0, 0, 0, 0, 0, 0, 0],
    shuf: [
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, //
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
    ],
};

/// What the single-row asm loop leaves behind, and its scratch line.
#[repr(C, align(64))]
struct State1 {
    /// The accumulator, lanes interleaved (`acc0`, `acc1`).
    acc: [f32; 16],
    /// `Σ m·s` so far in lane 0 (the ymm kernel's `summs` lane 1).
    summs: [f32; 16],
    /// The quad's `[dx·dy(0..4), mx·sy(0..4)]`, then the same plus its neighbour
    /// (`mx·sy(0) + mx·sy(1)` in lane 12, `mx·sy(2) + mx·sy(3)` in lane 14).
    scratch: [f32; 16],
}

/// `Σ x·y` of a `Q4_1` and a `Q8_1` row over the shortest length, bit-identical to
/// `avx2::dot_q4_1_q8_1_from::<AVX512_VNNI>` from zeros (the ymm single-row kernel): four
/// blocks per iteration (two zmm pairs, as in [`vec_dot2x4_q4_1_q8_1`]), the f16 scales of
/// all four converted and multiplied by one `vcvtph2ps` and one `vmulps`; the last `n % 4`
/// blocks by the ymm loop. See the module's safety contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let n = x.len().min(y.len());
    let quads = n / 4;
    let mut st = State1 {
        acc: [0.0; 16],
        summs: [0.0; 16],
        scratch: [0.0; 16],
    };
    if quads > 0 {
        // SAFETY: the module contract gives every instruction used. Per quad `q < n / 4` the
        // loads read token bytes `144q..144q + 64`, `+64..+72`, `+72..+136`, `+136..+144` and
        // weight bytes `80q..80q + 64`, `+40..+72`, `+72..+80`: inside the first
        // `4q + 4 <= n` blocks. `st` is 64-byte aligned (`repr(align(64))`) for the aligned
        // stores; the constants too. All vector registers the asm touches are declared
        // clobbered; the pointer registers are in-out.
        unsafe {
            asm!(
                "vmovdqa32 zmm24, [{c}]",
                "vmovdqa32 zmm25, [{c} + 64]",
                "vmovdqa32 zmm26, [{c} + 128]",
                "vmovdqa32 zmm23, [{c1}]",
                "vmovdqa32 zmm27, [{c1} + 64]",
                "vmovdqa32 zmm28, [{c1} + 128]",
                "vmovdqu8 ymm29, [{c1} + 192]",
                "mov {tmp:e}, 0x0F0F0F0F",
                "vpbroadcastd zmm30, {tmp:e}",
                "vpxord zmm16, zmm16, zmm16",
                "vxorps xmm15, xmm15, xmm15",
                "2:",
                // Tokens: blocks 0, 1 in zmm0 + xmm2, blocks 2, 3 in zmm1 + xmm3. Weights:
                // blocks 0..3 from zmm4 (all four's d, m; pair 0's nibbles), pair 1's
                // nibbles from ymm5 + xmm6.
                "vmovdqu32 zmm0, [{y}]",
                "vmovdqu32 zmm1, [{y} + 72]",
                "vmovq xmm2, qword ptr [{y} + 64]",
                "vmovq xmm3, qword ptr [{y} + 136]",
                "vmovdqu32 zmm4, [{x}]",
                "vmovdqu ymm5, [{x} + 40]",
                "vmovq xmm6, qword ptr [{x} + 72]",
                // Scales: words [dx0..3, mx0..3, dy0..3, sy0..3] to f32, then
                // [dx·dy(0..4), mx·sy(0..4)] to the scratch line with the pair sums of m·s.
                "vmovdqa32 zmm8, zmm27",
                "vpermi2d zmm8, zmm0, zmm1",
                "vmovdqa32 zmm9, zmm28",
                "vpermi2d zmm9, zmm4, zmm8",
                "vpshufb ymm9, ymm9, ymm29",
                "vcvtph2ps zmm9, ymm9",
                "vextractf64x4 ymm10, zmm9, 1",
                "vmulps ymm10, ymm10, ymm9",
                "vpermilps ymm11, ymm10, 0xB1",
                "vaddps ymm11, ymm11, ymm10",
                "vmovaps [{st} + 128], ymm10",
                "vmovaps [{st} + 160], ymm11",
                "vaddss xmm15, xmm15, dword ptr [{st} + 176]",
                "vaddss xmm15, xmm15, dword ptr [{st} + 184]",
                // Pair 0 (blocks 0, 1).
                "vpermt2d zmm0, zmm24, zmm2",
                "vpermd zmm4, zmm23, zmm4",
                "vpsrlvd zmm4, zmm4, zmm26",
                "vpandd zmm4, zmm4, zmm30",
                "vpxord zmm12, zmm12, zmm12",
                "vpdpbusd zmm12, zmm4, zmm0",
                "vcvtdq2ps zmm12, zmm12",
                "vbroadcastsd zmm13, qword ptr [{st} + 128]",
                "vfmadd231ps zmm16, zmm12, zmm13",
                // Pair 1 (blocks 2, 3).
                "vpermt2d zmm1, zmm24, zmm3",
                "vpermt2d zmm5, zmm25, zmm6",
                "vpsrlvd zmm5, zmm5, zmm26",
                "vpandd zmm5, zmm5, zmm30",
                "vpxord zmm14, zmm14, zmm14",
                "vpdpbusd zmm14, zmm5, zmm1",
                "vcvtdq2ps zmm14, zmm14",
                "vbroadcastsd zmm7, qword ptr [{st} + 136]",
                "vfmadd231ps zmm16, zmm14, zmm7",
                "add {x}, 80",
                "add {y}, 144",
                "dec {n}",
                "jnz 2b",
                "vmovaps [{st}], zmm16",
                "vmovss [{st} + 64], xmm15",
                "vzeroupper",
                c = in(reg) &CONSTS,
                c1 = in(reg) &CONSTS1,
                st = in(reg) std::ptr::addr_of_mut!(st),
                x = inout(reg) x.as_ptr() => _,
                y = inout(reg) y.as_ptr() => _,
                n = inout(reg) quads => _,
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
    let done = 4 * quads;
    // SAFETY: AVX2/FMA/F16C intrinsics and `avx2` helpers on a function compiled with them;
    // `deinterleave` reads `st.acc`; the module contract covers the ymm loop with
    // `AVX512_VNNI`.
    unsafe {
        let summs = _mm_setr_ps(0.0, st.summs[0], 0.0, 0.0);
        avx2::dot_q4_1_q8_1_from::<AVX512_VNNI>(
            deinterleave(&st.acc),
            summs,
            &x[done..n],
            &y[done..n],
        )
    }
}
