//! x86-64 kernels over the 16-row interleaved tiles of [`super::interleaved`].
//!
//! - `avx512vnni`: one zmm holds a 64-byte chunk, i.e. 4 bytes of each of the 16 rows; one
//!   `vpdpbusd zmm, w, x{1to16}` (the activation dword broadcast from memory) does 64 byte
//!   products. Per tile and token: `Q4_1` 4 loads + 12 unpack ops (shared by up to four
//!   tokens) and 8 `vpdpbusd`, 1 add, 1 convert, 1 multiply, 2 FMAs; `Q8_0` 8 loads (shared)
//!   and 8 `vpdpbusd`, 2 adds, 1 convert, 1 multiply, 1 FMA. The row-major kernel it replaces
//!   spent ~13 vector µops per row and block (~200 per 16 rows).
//! - `avxvnni` and `avx2`: the same on ymm, one 8-row half of the group at a time; with plain
//!   AVX2 the byte products are `vpmaddubsw` (eight summed in i16: `Q4_1` quants are
//!   `0..=15`, so pairs stay below 3810 and eight of them below 32767) then one `vpmaddwd`;
//!   `Q8_0` weights (stored `+128`) are turned back to signed and go through ggml's sign trick.
//!
//! Up to four tokens share one unpack of a tile (prefill); every result is bit-identical to
//! the scalar reference (integer dots are exact, the float steps are the same operations in
//! the same order).
//!
//! # Safety
//! The `unsafe fn`s need the CPU features in their `target_feature` lists; the statics that
//! wrap them are only handed out by [`available`] after detecting those features.

use std::arch::x86_64::*;

use super::blocks::BlockQ8_0;
use super::interleaved::{check_args, ActQ8, Interleaved, Line, LINES_Q4_1, LINES_Q8_0, ROWS, SCALES_Q4_1, SCALES_Q8_0};

/// Byte products summed with VEX `vpdpbusd` on ymm.
const AVX_VNNI: u8 = 1;
/// Byte products summed with `vpmaddubsw` + `vpmaddwd`.
const MADDUBS: u8 = 0;

/// The sets this CPU can run, best first.
pub(super) fn available() -> Vec<&'static Interleaved> {
    let mut v: Vec<&'static Interleaved> = Vec::new();
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
    if !avx2 {
        return v;
    }
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
        v.push(&AVX512);
    }
    if is_x86_feature_detected!("avxvnni") {
        v.push(&AVXVNNI);
    }
    v.push(&AVX2);
    v
}

/// Where token `t`'s block `b` lives: its quants, `d`, `c` and `s128`.
#[derive(Clone, Copy)]
struct Ptrs {
    q: *const BlockQ8_0,
    d: *const f32,
    c: *const f32,
    s: *const i32,
    bpr: usize,
}

impl Ptrs {
    fn new(x: &ActQ8<'_>, t0: usize) -> Self {
        let o = t0 * x.bpr;
        Ptrs { q: x.q[o..].as_ptr(), d: x.d[o..].as_ptr(), c: x.c[o..].as_ptr(), s: x.s128[o..].as_ptr(), bpr: x.bpr }
    }
    /// Dword `k` (bytes `4k..4k + 4`) of token `t`'s block `b`, as an i32.
    #[inline(always)]
    unsafe fn dword(self, t: usize, b: usize, k: usize) -> i32 {
        // SAFETY: caller keeps t, b in range; `qs` starts 2 bytes into the block, k < 8.
        unsafe { std::ptr::read_unaligned((self.q.add(t * self.bpr + b) as *const u8).add(2 + 4 * k) as *const i32) }
    }
    #[inline(always)]
    unsafe fn at<T: Copy>(p: *const T, bpr: usize, t: usize, b: usize) -> T {
        // SAFETY: caller keeps t, b in range.
        unsafe { *p.add(t * bpr + b) }
    }
}

/// Runs `kern::<NT>` over the tokens in groups of four, then the rest.
macro_rules! by_fours {
    ($kern:ident, $qs:expr, $sc:expr, $x:expr, $out:expr) => {{
        let n = $x.tokens();
        let mut t = 0;
        while t + 4 <= n {
            // SAFETY: lengths checked by the caller (`check_args`); tokens t..t+4 exist.
            unsafe { $kern::<4>($qs, $sc, Ptrs::new($x, t), $out[t * ROWS..].as_mut_ptr()) };
            t += 4;
        }
        // SAFETY: as above for the remaining 1..=3 tokens.
        unsafe {
            match n - t {
                3 => $kern::<3>($qs, $sc, Ptrs::new($x, t), $out[t * ROWS..].as_mut_ptr()),
                2 => $kern::<2>($qs, $sc, Ptrs::new($x, t), $out[t * ROWS..].as_mut_ptr()),
                1 => $kern::<1>($qs, $sc, Ptrs::new($x, t), $out[t * ROWS..].as_mut_ptr()),
                _ => {}
            }
        }
    }};
}

// ---------------------------------------------------------------- AVX512-VNNI (zmm)

/// Bytes ahead of the current tile that the zmm kernels prefetch (the tiles of a group, and of
/// the next group, are contiguous).
const PREFETCH: usize = 1024;

/// Prefetches `lines` cache lines `PREFETCH` bytes past `p` (no fault past the end: a
/// prefetch never faults, and the address is formed with wrapping arithmetic).
#[inline(always)]
unsafe fn prefetch(p: *const u8, lines: usize) {
    for l in 0..lines {
        // SAFETY: a prefetch hint reads nothing architecturally and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + 64 * l) as *const i8) };
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_1_zmm<const NT: usize>(qs: &[Line], sc: &[u16], x: Ptrs, out: *mut f32) {
    let m4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); NT];
    for b in 0..x.bpr {
        // SAFETY: `qs` has bpr·4 lines (64-byte aligned), `sc` bpr·32 words (checked by the
        // caller); the activation reads are in range by `Ptrs`' contract.
        unsafe {
            let p = qs.as_ptr().add(b * LINES_Q4_1) as *const __m512i;
            prefetch(p as *const u8, LINES_Q4_1);
            let (v0, v1, v2, v3) = (_mm512_load_si512(p), _mm512_load_si512(p.add(1)), _mm512_load_si512(p.add(2)), _mm512_load_si512(p.add(3)));
            let lo = [_mm512_and_si512(v0, m4), _mm512_and_si512(v1, m4), _mm512_and_si512(v2, m4), _mm512_and_si512(v3, m4)];
            let hi = [
                _mm512_and_si512(_mm512_srli_epi16::<4>(v0), m4),
                _mm512_and_si512(_mm512_srli_epi16::<4>(v1), m4),
                _mm512_and_si512(_mm512_srli_epi16::<4>(v2), m4),
                _mm512_and_si512(_mm512_srli_epi16::<4>(v3), m4),
            ];
            let s = sc.as_ptr().add(b * SCALES_Q4_1);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(s as *const __m256i));
            let mw = _mm512_cvtph_ps(_mm256_loadu_si256(s.add(ROWS) as *const __m256i));
            for (t, a) in acc.iter_mut().enumerate() {
                let bc = |k: usize| _mm512_set1_epi32(x.dword(t, b, k));
                let z = _mm512_setzero_si512();
                let mut s0 = _mm512_dpbusd_epi32(z, lo[0], bc(0));
                let mut s1 = _mm512_dpbusd_epi32(z, hi[0], bc(4));
                s0 = _mm512_dpbusd_epi32(s0, lo[1], bc(1));
                s1 = _mm512_dpbusd_epi32(s1, hi[1], bc(5));
                s0 = _mm512_dpbusd_epi32(s0, lo[2], bc(2));
                s1 = _mm512_dpbusd_epi32(s1, hi[2], bc(6));
                s0 = _mm512_dpbusd_epi32(s0, lo[3], bc(3));
                s1 = _mm512_dpbusd_epi32(s1, hi[3], bc(7));
                let isum = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                let k = _mm512_mul_ps(dw, _mm512_set1_ps(Ptrs::at(x.d, x.bpr, t, b)));
                *a = _mm512_fmadd_ps(isum, k, *a);
                *a = _mm512_fmadd_ps(mw, _mm512_set1_ps(Ptrs::at(x.c, x.bpr, t, b)), *a);
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: the caller's `out` has 16 floats per token of this call.
        unsafe { _mm512_storeu_ps(out.add(t * ROWS), *a) };
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0_zmm<const NT: usize>(qs: &[Line], sc: &[u16], x: Ptrs, out: *mut f32) {
    let mut acc = [_mm512_setzero_ps(); NT];
    for b in 0..x.bpr {
        // SAFETY: as in `q4_1_zmm`, with bpr·8 lines and bpr·16 words.
        unsafe {
            let p = qs.as_ptr().add(b * LINES_Q8_0) as *const __m512i;
            prefetch(p as *const u8, LINES_Q8_0);
            let w: [__m512i; 8] = std::array::from_fn(|k| _mm512_load_si512(p.add(k)));
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(sc.as_ptr().add(b * SCALES_Q8_0) as *const __m256i));
            for (t, a) in acc.iter_mut().enumerate() {
                let bc = |k: usize| _mm512_set1_epi32(x.dword(t, b, k));
                let z = _mm512_setzero_si512();
                let mut s0 = _mm512_dpbusd_epi32(z, w[0], bc(0));
                let mut s1 = _mm512_dpbusd_epi32(z, w[4], bc(4));
                s0 = _mm512_dpbusd_epi32(s0, w[1], bc(1));
                s1 = _mm512_dpbusd_epi32(s1, w[5], bc(5));
                s0 = _mm512_dpbusd_epi32(s0, w[2], bc(2));
                s1 = _mm512_dpbusd_epi32(s1, w[6], bc(6));
                s0 = _mm512_dpbusd_epi32(s0, w[3], bc(3));
                s1 = _mm512_dpbusd_epi32(s1, w[7], bc(7));
                let i = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(Ptrs::at(x.s, x.bpr, t, b)));
                let k = _mm512_mul_ps(dw, _mm512_set1_ps(Ptrs::at(x.d, x.bpr, t, b)));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), k, *a);
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: as in `q4_1_zmm`.
        unsafe { _mm512_storeu_ps(out.add(t * ROWS), *a) };
    }
}

fn gemm_q4_1_avx512(qs: &[Line], sc: &[u16], x: &ActQ8<'_>, out: &mut [f32]) {
    check_args(qs, sc, x, out, LINES_Q4_1, SCALES_Q4_1);
    by_fours!(q4_1_zmm, qs, sc, x, out);
}

fn gemm_q8_0_avx512(qs: &[Line], sc: &[u16], x: &ActQ8<'_>, out: &mut [f32]) {
    check_args(qs, sc, x, out, LINES_Q8_0, SCALES_Q8_0);
    by_fours!(q8_0_zmm, qs, sc, x, out);
}

static AVX512: Interleaved = Interleaved::new("avx512vnni", gemm_q4_1_avx512, gemm_q8_0_avx512);

// ---------------------------------------------------------------- AVX2 / AVX-VNNI (ymm)

/// Dword-wise dot of unsigned bytes `a` with signed bytes `b`, added to `acc`.
#[inline(always)]
unsafe fn dp<const K: u8>(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: K = AVX_VNNI only from the `avxvnni` kernels, compiled with that feature and
    // handed out after detecting it; the rest is AVX2.
    unsafe {
        if K == AVX_VNNI {
            dpbusd_vex(acc, a, b)
        } else {
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)))
        }
    }
}

#[inline]
#[target_feature(enable = "avxvnni,avx2")]
unsafe fn dpbusd_vex(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, a, b)
}

macro_rules! ymm_kernels {
    ($q41:ident, $q80:ident, $feat:literal) => {
        #[target_feature(enable = $feat)]
        unsafe fn $q41<const K: u8, const NT: usize>(qs: &[Line], sc: &[u16], x: Ptrs, out: *mut f32) {
            let m4 = _mm256_set1_epi8(0x0F);
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); NT];
                for b in 0..x.bpr {
                    // SAFETY: as in `q4_1_zmm`; half `h` is bytes 32h..32h + 32 of each line.
                    unsafe {
                        let p = (qs.as_ptr().add(b * LINES_Q4_1) as *const u8).add(32 * h);
                        let v: [__m256i; 4] = std::array::from_fn(|c| _mm256_load_si256(p.add(64 * c) as *const __m256i));
                        let lo: [__m256i; 4] = std::array::from_fn(|c| _mm256_and_si256(v[c], m4));
                        let hi: [__m256i; 4] = std::array::from_fn(|c| _mm256_and_si256(_mm256_srli_epi16::<4>(v[c]), m4));
                        let s = sc.as_ptr().add(b * SCALES_Q4_1 + 8 * h);
                        let dw = _mm256_cvtph_ps(_mm_loadu_si128(s as *const __m128i));
                        let mw = _mm256_cvtph_ps(_mm_loadu_si128(s.add(ROWS) as *const __m128i));
                        for (t, a) in acc.iter_mut().enumerate() {
                            let bc = |k: usize| _mm256_set1_epi32(x.dword(t, b, k));
                            let isum = if K == MADDUBS {
                                // Eight pair sums of ≤ 2·15·127 each: no i16 saturation.
                                let mut s16 = _mm256_maddubs_epi16(lo[0], bc(0));
                                for c in 1..4 {
                                    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(lo[c], bc(c)));
                                }
                                for c in 0..4 {
                                    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(hi[c], bc(4 + c)));
                                }
                                _mm256_madd_epi16(s16, _mm256_set1_epi16(1))
                            } else {
                                let z = _mm256_setzero_si256();
                                let mut s0 = dp::<K>(z, lo[0], bc(0));
                                let mut s1 = dp::<K>(z, hi[0], bc(4));
                                for c in 1..4 {
                                    s0 = dp::<K>(s0, lo[c], bc(c));
                                    s1 = dp::<K>(s1, hi[c], bc(4 + c));
                                }
                                _mm256_add_epi32(s0, s1)
                            };
                            let k = _mm256_mul_ps(dw, _mm256_set1_ps(Ptrs::at(x.d, x.bpr, t, b)));
                            *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), k, *a);
                            *a = _mm256_fmadd_ps(mw, _mm256_set1_ps(Ptrs::at(x.c, x.bpr, t, b)), *a);
                        }
                    }
                }
                for (t, a) in acc.iter().enumerate() {
                    // SAFETY: the caller's `out` has 16 floats per token of this call.
                    unsafe { _mm256_storeu_ps(out.add(t * ROWS + 8 * h), *a) };
                }
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn $q80<const K: u8, const NT: usize>(qs: &[Line], sc: &[u16], x: Ptrs, out: *mut f32) {
            let flip = _mm256_set1_epi8(-128);
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); NT];
                for b in 0..x.bpr {
                    // SAFETY: as in `q8_0_zmm`; half `h` as in the `Q4_1` kernel.
                    unsafe {
                        let p = (qs.as_ptr().add(b * LINES_Q8_0) as *const u8).add(32 * h);
                        let w: [__m256i; 8] = std::array::from_fn(|k| _mm256_load_si256(p.add(64 * k) as *const __m256i));
                        let dw = _mm256_cvtph_ps(_mm_loadu_si128(sc.as_ptr().add(b * SCALES_Q8_0 + 8 * h) as *const __m128i));
                        for (t, a) in acc.iter_mut().enumerate() {
                            let bc = |k: usize| _mm256_set1_epi32(x.dword(t, b, k));
                            let i = if K == MADDUBS {
                                // Σ (w+128)·a − 128·Σa = Σ w·a: signed weights, sign trick.
                                let mut s = _mm256_setzero_si256();
                                for k in 0..8 {
                                    let ws = _mm256_xor_si256(w[k], flip);
                                    let y = _mm256_sign_epi8(bc(k), ws);
                                    s = dp::<MADDUBS>(s, _mm256_sign_epi8(ws, ws), y);
                                }
                                s
                            } else {
                                let z = _mm256_setzero_si256();
                                let mut s0 = dp::<K>(z, w[0], bc(0));
                                let mut s1 = dp::<K>(z, w[4], bc(4));
                                for k in 1..4 {
                                    s0 = dp::<K>(s0, w[k], bc(k));
                                    s1 = dp::<K>(s1, w[4 + k], bc(4 + k));
                                }
                                _mm256_sub_epi32(_mm256_add_epi32(s0, s1), _mm256_set1_epi32(Ptrs::at(x.s, x.bpr, t, b)))
                            };
                            let k = _mm256_mul_ps(dw, _mm256_set1_ps(Ptrs::at(x.d, x.bpr, t, b)));
                            *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), k, *a);
                        }
                    }
                }
                for (t, a) in acc.iter().enumerate() {
                    // SAFETY: as in the `Q4_1` kernel.
                    unsafe { _mm256_storeu_ps(out.add(t * ROWS + 8 * h), *a) };
                }
            }
        }
    };
}

ymm_kernels!(q4_1_ymm_vnni, q8_0_ymm_vnni, "avxvnni,avx2,fma,f16c");
ymm_kernels!(q4_1_ymm, q8_0_ymm, "avx2,fma,f16c");

unsafe fn q4_1_vnni<const NT: usize>(qs: &[Line], sc: &[u16], x: Ptrs, out: *mut f32) {
    // SAFETY: forwarded contract (AVX-VNNI detected).
    unsafe { q4_1_ymm_vnni::<AVX_VNNI, NT>(qs, sc, x, out) }
}
unsafe fn q8_0_vnni<const NT: usize>(qs: &[Line], sc: &[u16], x: Ptrs, out: *mut f32) {
    // SAFETY: forwarded contract (AVX-VNNI detected).
    unsafe { q8_0_ymm_vnni::<AVX_VNNI, NT>(qs, sc, x, out) }
}
unsafe fn q4_1_avx2<const NT: usize>(qs: &[Line], sc: &[u16], x: Ptrs, out: *mut f32) {
    // SAFETY: forwarded contract (AVX2 detected).
    unsafe { q4_1_ymm::<MADDUBS, NT>(qs, sc, x, out) }
}
unsafe fn q8_0_avx2<const NT: usize>(qs: &[Line], sc: &[u16], x: Ptrs, out: *mut f32) {
    // SAFETY: forwarded contract (AVX2 detected).
    unsafe { q8_0_ymm::<MADDUBS, NT>(qs, sc, x, out) }
}

fn gemm_q4_1_avxvnni(qs: &[Line], sc: &[u16], x: &ActQ8<'_>, out: &mut [f32]) {
    check_args(qs, sc, x, out, LINES_Q4_1, SCALES_Q4_1);
    by_fours!(q4_1_vnni, qs, sc, x, out);
}
fn gemm_q8_0_avxvnni(qs: &[Line], sc: &[u16], x: &ActQ8<'_>, out: &mut [f32]) {
    check_args(qs, sc, x, out, LINES_Q8_0, SCALES_Q8_0);
    by_fours!(q8_0_vnni, qs, sc, x, out);
}
fn gemm_q4_1_avx2(qs: &[Line], sc: &[u16], x: &ActQ8<'_>, out: &mut [f32]) {
    check_args(qs, sc, x, out, LINES_Q4_1, SCALES_Q4_1);
    by_fours!(q4_1_avx2, qs, sc, x, out);
}
fn gemm_q8_0_avx2(qs: &[Line], sc: &[u16], x: &ActQ8<'_>, out: &mut [f32]) {
    check_args(qs, sc, x, out, LINES_Q8_0, SCALES_Q8_0);
    by_fours!(q8_0_avx2, qs, sc, x, out);
}

static AVXVNNI: Interleaved = Interleaved::new("avxvnni", gemm_q4_1_avxvnni, gemm_q8_0_avxvnni);
static AVX2: Interleaved = Interleaved::new("avx2", gemm_q4_1_avx2, gemm_q8_0_avx2);
