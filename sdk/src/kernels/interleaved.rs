//! Weights repacked at load into 16-row interleaved tiles, and the matrix-times-vector
//! kernels over them (llama.cpp's `ggml-cpu/repack.cpp` idea, in a layout of our own).
//!
//! A row-major GGML matrix makes a kernel load the activation once per weight row. Here 16
//! rows are interleaved per 32-column block, so that one 4-byte group of activations feeds
//! all 16 rows in one instruction: with VNNI, `vpdpbusd zmm, w, x{1to16}` does 64 byte
//! products for 16 rows at once, the activation dword broadcast straight from memory.
//!
//! # Layout
//! Rows are taken in groups of [`ROWS`] (matrices whose row count is not a multiple of 16
//! are not repacked). For group `g` and block `b` (columns `32b..32b + 32`), tile
//! `g·bpr + b` holds:
//!
//! - `Q4_1`: 256 bytes of quants, four 64-byte chunks; in chunk `c`, bytes `4i..4i + 4` are
//!   row `i`'s packed bytes `qs[4c..4c + 4]` unchanged: their low nibbles are columns
//!   `4c..4c + 4` and their high nibbles columns `16 + 4c..16 + 4c + 4`. Scales: 32 f16
//!   words, `d` of the 16 rows then `m` of the 16 rows.
//! - `Q8_0`: 512 bytes of quants, eight 64-byte chunks; in chunk `k`, bytes `4i..4i + 4` are
//!   row `i`'s `qs[4k..4k + 4]` plus 128 (so unsigned, `0..=255`, the operand `vpdpbusd`
//!   wants unsigned). Scales: 16 f16 words, `d` of the 16 rows.
//!
//! Quants and scales are two arrays, so every 64-byte chunk is cache-line aligned. The
//! repacked matrix has exactly the size of the original.
//!
//! # Arithmetic
//! Activations are `Q8_0` blocks (ggml's quantizer), with per block `d` as f32, `c = d·Σq`
//! and `s128 = 128·Σq` precomputed ([`ActQ8`]). Per tile and token, the 16 integer dots
//! `isum` are exact in i32; then, per row, in this order:
//!
//! - `Q4_1`: `acc = fma(isum, dw·dx, acc)`, `acc = fma(mw, c, acc)`
//!   (`Σ (dw·q + mw)·dx·a = dw·dx·Σ q·a + mw·(dx·Σ a)`);
//! - `Q8_0`: `isum = Σ (w + 128)·a − s128`, `acc = fma(isum, dw·dx, acc)`.
//!
//! Every kernel set does exactly these operations in this order, so all of them are
//! bit-identical to [`gemm_q4_1_scalar`] / [`gemm_q8_0_scalar`], the references; those are
//! in turn tested against a dense f32 product with the dequantized weights.

use super::blocks::{BlockQ4_1, BlockQ8_0};

/// Rows per interleaved group.
pub const ROWS: usize = 16;

/// One cache line of repacked quants (64-byte aligned storage for the tiles).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line(pub [u8; 64]);

impl Default for Line {
    fn default() -> Self {
        Line([0; 64])
    }
}

/// Lines of quants per tile (`Q4_1`: 4, `Q8_0`: 8).
pub const LINES_Q4_1: usize = 4;
/// Lines of quants per `Q8_0` tile.
pub const LINES_Q8_0: usize = 8;
/// f16 scale words per `Q4_1` tile (`d` then `m` of 16 rows).
pub const SCALES_Q4_1: usize = 32;
/// f16 scale words per `Q8_0` tile.
pub const SCALES_Q8_0: usize = 16;

/// Activations of `n` tokens for the interleaved kernels: `Q8_0` blocks (`n·bpr`, token-major)
/// and per block `d` (f32), `c = d·Σq` and `s128 = 128·Σq`.
#[derive(Clone, Copy, Debug)]
pub struct ActQ8<'a> {
    /// The quantized activations, `bpr` blocks per token.
    pub q: &'a [BlockQ8_0],
    /// `d` of each block as f32.
    pub d: &'a [f32],
    /// `d·Σq` of each block (f32).
    pub c: &'a [f32],
    /// `128·Σq` of each block.
    pub s128: &'a [i32],
    /// Blocks per token.
    pub bpr: usize,
}

impl ActQ8<'_> {
    /// Number of tokens.
    pub fn tokens(&self) -> usize {
        if self.bpr == 0 { 0 } else { self.q.len() / self.bpr }
    }

    fn check(&self) {
        let n = self.q.len();
        assert!(self.bpr > 0 && n.is_multiple_of(self.bpr), "ActQ8: blocks not a multiple of bpr");
        assert!(self.d.len() == n && self.c.len() == n && self.s128.len() == n, "ActQ8: side arrays");
    }
}

/// Fills the side arrays of [`ActQ8`] from quantized blocks.
pub fn act_sides(q: &[BlockQ8_0], d: &mut [f32], c: &mut [f32], s128: &mut [i32]) {
    assert!(d.len() == q.len() && c.len() == q.len() && s128.len() == q.len(), "act_sides: lengths");
    for (i, b) in q.iter().enumerate() {
        let s: i32 = b.qs.iter().map(|&v| v as i32).sum();
        let df = half::f16::from_bits(b.d).to_f32();
        d[i] = df;
        c[i] = df * s as f32;
        s128[i] = 128 * s;
    }
}

/// Repacks `rows` rows of `bpr` `Q4_1` blocks (`rows % 16 == 0`) into tiles.
pub fn repack_q4_1(src: &[BlockQ4_1], rows: usize, bpr: usize, qs: &mut [Line], sc: &mut [u16]) {
    assert!(rows.is_multiple_of(ROWS) && src.len() == rows * bpr, "repack_q4_1: shape");
    let tiles = rows / ROWS * bpr;
    assert!(qs.len() == tiles * LINES_Q4_1 && sc.len() == tiles * SCALES_Q4_1, "repack_q4_1: output size");
    for g in 0..rows / ROWS {
        for b in 0..bpr {
            let t = g * bpr + b;
            for i in 0..ROWS {
                let blk = &src[(g * ROWS + i) * bpr + b];
                for c in 0..LINES_Q4_1 {
                    qs[t * LINES_Q4_1 + c].0[4 * i..4 * i + 4].copy_from_slice(&blk.qs[4 * c..4 * c + 4]);
                }
                sc[t * SCALES_Q4_1 + i] = blk.d;
                sc[t * SCALES_Q4_1 + ROWS + i] = blk.m;
            }
        }
    }
}

/// Repacks `rows` rows of `bpr` `Q8_0` blocks (`rows % 16 == 0`) into tiles.
pub fn repack_q8_0(src: &[BlockQ8_0], rows: usize, bpr: usize, qs: &mut [Line], sc: &mut [u16]) {
    assert!(rows.is_multiple_of(ROWS) && src.len() == rows * bpr, "repack_q8_0: shape");
    let tiles = rows / ROWS * bpr;
    assert!(qs.len() == tiles * LINES_Q8_0 && sc.len() == tiles * SCALES_Q8_0, "repack_q8_0: output size");
    for g in 0..rows / ROWS {
        for b in 0..bpr {
            let t = g * bpr + b;
            for i in 0..ROWS {
                let blk = &src[(g * ROWS + i) * bpr + b];
                for k in 0..LINES_Q8_0 {
                    for j in 0..4 {
                        qs[t * LINES_Q8_0 + k].0[4 * i + j] = (blk.qs[4 * k + j] as u8) ^ 0x80;
                    }
                }
                sc[t * SCALES_Q8_0 + i] = blk.d;
            }
        }
    }
}

fn f16(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// The reference: one 16-row group of a repacked `Q4_1` matrix (`qs`: `bpr·4` lines, `sc`:
/// `bpr·32` words) times every token of `x`; `out[t·16 + i]` is row `i`, token `t`.
pub fn gemm_q4_1_scalar(qs: &[Line], sc: &[u16], x: &ActQ8<'_>, out: &mut [f32]) {
    x.check();
    let (bpr, n) = (x.bpr, x.tokens());
    assert!(qs.len() == bpr * LINES_Q4_1 && sc.len() == bpr * SCALES_Q4_1 && out.len() == n * ROWS, "gemm_q4_1: lengths");
    for t in 0..n {
        let mut acc = [0f32; ROWS];
        for b in 0..bpr {
            let xb = &x.q[t * bpr + b];
            let (dx, c) = (x.d[t * bpr + b], x.c[t * bpr + b]);
            for (i, a) in acc.iter_mut().enumerate() {
                let mut isum = 0i32;
                for ch in 0..LINES_Q4_1 {
                    for j in 0..4 {
                        let byte = qs[b * LINES_Q4_1 + ch].0[4 * i + j];
                        isum += (byte & 0x0F) as i32 * xb.qs[4 * ch + j] as i32;
                        isum += (byte >> 4) as i32 * xb.qs[16 + 4 * ch + j] as i32;
                    }
                }
                let (dw, mw) = (f16(sc[b * SCALES_Q4_1 + i]), f16(sc[b * SCALES_Q4_1 + ROWS + i]));
                *a = (isum as f32).mul_add(dw * dx, *a);
                *a = mw.mul_add(c, *a);
            }
        }
        out[t * ROWS..(t + 1) * ROWS].copy_from_slice(&acc);
    }
}

/// The reference: one 16-row group of a repacked `Q8_0` matrix (`qs`: `bpr·8` lines, `sc`:
/// `bpr·16` words) times every token of `x`; `out[t·16 + i]` is row `i`, token `t`.
pub fn gemm_q8_0_scalar(qs: &[Line], sc: &[u16], x: &ActQ8<'_>, out: &mut [f32]) {
    x.check();
    let (bpr, n) = (x.bpr, x.tokens());
    assert!(qs.len() == bpr * LINES_Q8_0 && sc.len() == bpr * SCALES_Q8_0 && out.len() == n * ROWS, "gemm_q8_0: lengths");
    for t in 0..n {
        let mut acc = [0f32; ROWS];
        for b in 0..bpr {
            let xb = &x.q[t * bpr + b];
            let dx = x.d[t * bpr + b];
            for (i, a) in acc.iter_mut().enumerate() {
                let mut isum = 0i32;
                for k in 0..LINES_Q8_0 {
                    for j in 0..4 {
                        isum += qs[b * LINES_Q8_0 + k].0[4 * i + j] as i32 * xb.qs[4 * k + j] as i32;
                    }
                }
                isum -= x.s128[t * bpr + b];
                let dw = f16(sc[b * SCALES_Q8_0 + i]);
                *a = (isum as f32).mul_add(dw * dx, *a);
            }
        }
        out[t * ROWS..(t + 1) * ROWS].copy_from_slice(&acc);
    }
}

/// A kernel over one 16-row group: `(qs, sc, x, out)` as [`gemm_q4_1_scalar`].
pub type GemmFn = fn(qs: &[Line], sc: &[u16], x: &ActQ8<'_>, out: &mut [f32]);

/// The interleaved kernels of one instruction set.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Interleaved {
    name: &'static str,
    /// `Q4_1` tiles times `Q8_0` activations.
    pub gemm_q4_1: GemmFn,
    /// `Q8_0` tiles times `Q8_0` activations.
    pub gemm_q8_0: GemmFn,
}

impl Interleaved {
    /// A set from its two kernels.
    pub(super) const fn new(name: &'static str, gemm_q4_1: GemmFn, gemm_q8_0: GemmFn) -> Self {
        Self { name, gemm_q4_1, gemm_q8_0 }
    }

    /// The instruction set: `"avx512vnni"`, `"avxvnni"`, `"avx2"` or `"scalar"`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The scalar references.
    pub fn scalar() -> &'static Interleaved {
        &SCALAR
    }

    /// Every set this CPU runs, best first, the scalar one last.
    pub fn available() -> Vec<&'static Interleaved> {
        let mut v: Vec<&'static Interleaved> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        v.extend(super::interleaved_x86::available());
        v.push(&SCALAR);
        v
    }

    /// The best set for this CPU when it is worth repacking for (a SIMD one), else `None`:
    /// the matrices then stay in their row-major layout and the row kernels run.
    pub fn detect() -> Option<&'static Interleaved> {
        static BEST: std::sync::OnceLock<Option<&'static Interleaved>> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Self::available().into_iter().find(|k| k.name != "scalar"))
    }
}

static SCALAR: Interleaved = Interleaved::new("scalar", gemm_q4_1_scalar, gemm_q8_0_scalar);

/// Checks the arguments of a fast kernel (the same assertions as the references).
#[cfg(target_arch = "x86_64")]
pub(super) fn check_args(qs: &[Line], sc: &[u16], x: &ActQ8<'_>, out: &[f32], lines: usize, scales: usize) {
    x.check();
    let (bpr, n) = (x.bpr, x.tokens());
    assert!(qs.len() == bpr * lines && sc.len() == bpr * scales && out.len() == n * ROWS, "interleaved gemm: lengths");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{scalar, QK};
    use rand::{Rng, SeedableRng};

    struct Case {
        rows: usize,
        n: usize,
        w: Vec<f32>,
        x: Vec<f32>,
    }

    fn case(rng: &mut impl Rng, rows: usize, bpr: usize, n: usize) -> Case {
        let w = (0..rows * bpr * QK).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x = (0..n * bpr * QK).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        Case { rows, n, w, x }
    }

    struct Act {
        q: Vec<BlockQ8_0>,
        d: Vec<f32>,
        c: Vec<f32>,
        s: Vec<i32>,
    }

    fn act(x: &[f32]) -> Act {
        let nb = x.len() / QK;
        let mut q = vec![BlockQ8_0::default(); nb];
        scalar::quantize_row_q8_0(x, &mut q);
        let (mut d, mut c, mut s) = (vec![0.0; nb], vec![0.0; nb], vec![0; nb]);
        act_sides(&q, &mut d, &mut c, &mut s);
        Act { q, d, c, s }
    }

    /// Dense `Σ w·x` in f64 with the dequantized weights and activations, and `Σ |w·x|`.
    fn dense(wd: &[f32], xd: &[f32], cols: usize, r: usize, t: usize) -> (f64, f64) {
        let (mut s, mut m) = (0f64, 0f64);
        for k in 0..cols {
            let p = wd[r * cols + k] as f64 * xd[t * cols + k] as f64;
            s += p;
            m += p.abs();
        }
        (s, m)
    }

    /// The references against dense f64 products of the dequantized operands (tolerance
    /// 1e-5·Σ|w·x|: only f32 rounding of scales and sums), and every fast set bit for bit
    /// against the references, on fresh random inputs, for 1..=9 tokens.
    #[test]
    fn kernels_match_reference_and_dense() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        for &(rows, bpr) in &[(16, 1), (32, 18), (48, 3), (16, 48)] {
            for n in 1..=9 {
                let cs = case(&mut rng, rows, bpr, n);
                let cols = bpr * QK;
                let a = act(&cs.x);
                let mut xd = vec![0f32; n * cols];
                scalar::dequantize_row_q8_0(&a.q, &mut xd);
                let x = ActQ8 { q: &a.q, d: &a.d, c: &a.c, s128: &a.s, bpr };
                // Q4_1
                let mut w41 = vec![BlockQ4_1::default(); cs.rows * bpr];
                scalar::quantize_row_q4_1(&cs.w, &mut w41);
                let mut wd = vec![0f32; cs.rows * cols];
                scalar::dequantize_row_q4_1(&w41, &mut wd);
                let tiles = rows / ROWS * bpr;
                let (mut qs, mut sc) = (vec![Line::default(); tiles * LINES_Q4_1], vec![0u16; tiles * SCALES_Q4_1]);
                repack_q4_1(&w41, rows, bpr, &mut qs, &mut sc);
                for g in 0..rows / ROWS {
                    let q = &qs[g * bpr * LINES_Q4_1..(g + 1) * bpr * LINES_Q4_1];
                    let s = &sc[g * bpr * SCALES_Q4_1..(g + 1) * bpr * SCALES_Q4_1];
                    let mut want = vec![0f32; cs.n * ROWS];
                    gemm_q4_1_scalar(q, s, &x, &mut want);
                    for t in 0..n {
                        for i in 0..ROWS {
                            let (e, m) = dense(&wd, &xd, cols, g * ROWS + i, t);
                            let got = want[t * ROWS + i] as f64;
                            assert!((got - e).abs() <= 1e-5 * m + 1e-6, "q4_1 ref row {i} tok {t}: {got} vs {e}");
                        }
                    }
                    for k in Interleaved::available() {
                        let mut got = vec![0f32; n * ROWS];
                        (k.gemm_q4_1)(q, s, &x, &mut got);
                        assert_eq!(got, want, "q4_1 {} rows {rows} bpr {bpr} n {n}", k.name());
                    }
                }
                // Q8_0
                let mut w80 = vec![BlockQ8_0::default(); cs.rows * bpr];
                scalar::quantize_row_q8_0(&cs.w, &mut w80);
                if rng.random_bool(0.5) {
                    w80[0].qs[3] = -128; // what a file may hold
                }
                scalar::dequantize_row_q8_0(&w80, &mut wd);
                let (mut qs, mut sc) = (vec![Line::default(); tiles * LINES_Q8_0], vec![0u16; tiles * SCALES_Q8_0]);
                repack_q8_0(&w80, rows, bpr, &mut qs, &mut sc);
                for g in 0..rows / ROWS {
                    let q = &qs[g * bpr * LINES_Q8_0..(g + 1) * bpr * LINES_Q8_0];
                    let s = &sc[g * bpr * SCALES_Q8_0..(g + 1) * bpr * SCALES_Q8_0];
                    let mut want = vec![0f32; n * ROWS];
                    gemm_q8_0_scalar(q, s, &x, &mut want);
                    for t in 0..n {
                        for i in 0..ROWS {
                            let (e, m) = dense(&wd, &xd, cols, g * ROWS + i, t);
                            let got = want[t * ROWS + i] as f64;
                            assert!((got - e).abs() <= 1e-5 * m + 1e-6, "q8_0 ref row {i} tok {t}: {got} vs {e}");
                        }
                    }
                    for k in Interleaved::available() {
                        let mut got = vec![0f32; n * ROWS];
                        (k.gemm_q8_0)(q, s, &x, &mut got);
                        assert_eq!(got, want, "q8_0 {} rows {rows} bpr {bpr} n {n}", k.name());
                    }
                }
            }
        }
    }
}
