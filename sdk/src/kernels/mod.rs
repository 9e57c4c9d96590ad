//! Quantized dot-product kernels with runtime instruction-set dispatch.
//!
//! A quantized linear layer computes, for every output row, the dot product of a row of
//! quantized weights (`Q4_0`, `Q4_1` or `Q8_0` blocks, viewed in place in the GGUF with
//! [`cast_blocks`]) with the activation vector quantized once per token to `Q8_0` / `Q8_1`.
//! [`Kernels`] bundles those operations as plain function pointers for the best instruction
//! set the CPU has, found at run time (no `-C target-cpu` needed):
//!
//! | name | CPU | byte products |
//! | --- | --- | --- |
//! | `avx512vnni` | x86-64 with AVX2, FMA, F16C, AVX512-VNNI, AVX512F/BW/VL | `vpdpbusd` (EVEX, ymm; zmm in `dot_q4_1_q8_1` and `dot2x4_q4_1_q8_1`) |
//! | `avxvnni` | x86-64 with AVX2, FMA, F16C, AVX-VNNI | `vpdpbusd` (VEX) |
//! | `avx2` | x86-64 with AVX2, FMA, F16C | `vpmaddubsw` + `vpmaddwd` |
//! | `neon+dotprod` | AArch64 with the dot product extension | `sdot` |
//! | `neon` | any AArch64 | `smull` + `sadalp` |
//! | `scalar` | anything | [`scalar`], the reference |
//!
//! For attention against the f16 KV cache, `dot_f32_f16` (score `q · k_j`) and `axpy_f16`
//! (`out += w_j · v_j`) read the f16 rows in place, converting eight values per instruction
//! (`vcvtph2ps` with F16C on x86-64, `fcvtl` on AArch64) into f32 FMAs; no row is converted
//! through memory first. The VNNI sets use the AVX2 ones.
//!
//! For prefill, the `dot4_*` kernels multiply one weight row by four tokens' activations in
//! one call, unpacking each weight block once, and `dot2x4_q4_1_q8_1` two weight rows by four
//! tokens (loading the activations once for both rows; in the `avx512vnni` set a zmm kernel
//! with two blocks per register, 1.13–1.28× the throughput of two `dot4` calls); each result is
//! bit-identical to the single-token kernel of the same set.
//!
//! The decode path multiplies most weights through [`interleaved`] instead: the matrices
//! repacked at load into 16-row tiles so that one activation load feeds 16 rows; the row
//! kernels here remain for other types, odd row counts, CPUs without interleaved kernels and
//! `EngineConfig::repack = false`.
//!
//! The scalar module follows ggml's generic C and is kept as the reference every fast kernel
//! is tested against. The activation quantizers use ggml's x86 SIMD arithmetic
//! (`id = 127 / amax`, ties rounded to even), on every platform, so results match llama.cpp
//! on x86 and are identical across our kernel sets: the fast quantizers are bit-identical to
//! the scalar ones (for finite inputs); the
//! fast dot products differ only by f32 summation order, for 8-bit values in `-127..=127`
//! (all ggml's quantizers produce; like ggml's, the x86 kernels mishandle `-128`).
//!
//! ```
//! use tailor::kernels::{scalar, BlockQ4_1, BlockQ8_1, Kernels, QK};
//!
//! let k = Kernels::detect();
//! let w: Vec<f32> = (0..2 * QK).map(|i| (i as f32 * 0.37).sin()).collect();
//! let x: Vec<f32> = (0..2 * QK).map(|i| (i as f32 * 0.11).cos()).collect();
//!
//! let mut wq = vec![BlockQ4_1::default(); 2];
//! scalar::quantize_row_q4_1(&w, &mut wq); // weights normally come quantized in the GGUF
//! let mut xq = vec![BlockQ8_1::default(); 2];
//! (k.quantize_q8_1)(&x, &mut xq);
//!
//! let dot = (k.dot_q4_1_q8_1)(&wq, &xq);
//! let exact = (k.dot_f32)(&w, &x);
//! assert!((dot - exact).abs() < 0.05 * exact.abs().max(1.0), "{} on {dot} vs {exact}", k.name());
//! ```

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod blocks;
pub mod interleaved;
#[cfg(target_arch = "x86_64")]
mod interleaved_x86;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod kv;
pub mod scalar;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::OnceLock;

pub use blocks::{
    blocks_as_bytes, cast_blocks, Block, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK,
};

/// A set of kernels for one instruction set: plain, safe function pointers.
///
/// Get one with [`Kernels::detect`] (best for this CPU, chosen once) or
/// [`Kernels::scalar`]; call a field like a function: `(k.dot_q4_0_q8_0)(w, x)`.
///
/// # Panics
/// Every kernel panics on slices of mismatched lengths: quantizers need
/// `x.len() == 32 * y.len()`, block dot products `x.len() == y.len()` (blocks; for the
/// `dot4_*` ones, for each of the four `y` rows; for `dot2x4_q4_1_q8_1`, for both `x` rows
/// and each `y` row), `dot_f32` and `dot_f32_f16`
/// `a.len() == b.len()`, `axpy_f16` `x.len() == y.len()`.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct Kernels {
    name: &'static str,
    /// Quantizes `32 * y.len()` floats to `Q8_0` with ggml's x86 arithmetic (bit-identical to
    /// [`scalar::quantize_row_q8_0`]).
    pub quantize_q8_0: fn(x: &[f32], y: &mut [BlockQ8_0]),
    /// Quantizes `32 * y.len()` floats to `Q8_1` with ggml's x86 arithmetic (bit-identical to
    /// [`scalar::quantize_row_q8_1`]).
    pub quantize_q8_1: fn(x: &[f32], y: &mut [BlockQ8_1]),
    /// Dot product of a `Q4_0` row with a `Q8_0` row of as many blocks.
    pub dot_q4_0_q8_0: fn(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32,
    /// Dot product of a `Q4_1` row with a `Q8_1` row of as many blocks.
    pub dot_q4_1_q8_1: fn(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32,
    /// Dot product of two `Q8_0` rows of as many blocks.
    pub dot_q8_0_q8_0: fn(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32,
    /// Dot product of two f32 slices of equal length.
    pub dot_f32: fn(a: &[f32], b: &[f32]) -> f32,
    /// Dot products of one `Q4_0` row with four `Q8_0` rows (four tokens) of as many blocks:
    /// `dot4_q4_0_q8_0(x, [y0, y1, y2, y3])[t] == dot_q4_0_q8_0(x, yt)`, bit for bit (the
    /// weight block is unpacked once for the four tokens; the sums run in the same order).
    pub dot4_q4_0_q8_0: fn(x: &[BlockQ4_0], y: [&[BlockQ8_0]; 4]) -> [f32; 4],
    /// Dot products of one `Q4_1` row with four `Q8_1` rows (four tokens) of as many blocks,
    /// bit for bit [`dot_q4_1_q8_1`](Self::dot_q4_1_q8_1) of each.
    pub dot4_q4_1_q8_1: fn(x: &[BlockQ4_1], y: [&[BlockQ8_1]; 4]) -> [f32; 4],
    /// Dot products of one `Q8_0` row with four `Q8_0` rows (four tokens) of as many blocks,
    /// bit for bit [`dot_q8_0_q8_0`](Self::dot_q8_0_q8_0) of each.
    pub dot4_q8_0_q8_0: fn(x: &[BlockQ8_0], y: [&[BlockQ8_0]; 4]) -> [f32; 4],
    /// Dot products of two `Q4_1` rows (two weight rows) with four `Q8_1` rows (four tokens),
    /// all of as many blocks: `dot2x4_q4_1_q8_1(x0, x1, y)[r][t] == dot_q4_1_q8_1(xr, yt)`,
    /// bit for bit (so `[dot4_q4_1_q8_1(x0, y), dot4_q4_1_q8_1(x1, y)]` too). A zmm kernel in
    /// the `avx512vnni` set, two `dot4` calls in the others.
    #[allow(clippy::type_complexity)] // spelled out: the signature is the documentation
    pub dot2x4_q4_1_q8_1:
        fn(x0: &[BlockQ4_1], x1: &[BlockQ4_1], y: [&[BlockQ8_1]; 4]) -> [[f32; 4]; 2],
    /// `Σ a[i]·f32(b[i])` with `b` holding f16 bits (`half::f16::to_bits`), f32 accumulation
    /// in a kernel-specific order (an attention score `q · k_j` against the f16 KV cache;
    /// reference [`scalar::vec_dot_f32_f16`]).
    pub dot_f32_f16: fn(a: &[f32], b: &[u16]) -> f32,
    /// `y[i] += alpha·f32(x[i])` with `x` holding f16 bits, fused (one rounding per element):
    /// bit-identical in every set to [`scalar::vec_axpy_f16`] (`alpha.mul_add(x, y)`).
    pub axpy_f16: fn(alpha: f32, x: &[u16], y: &mut [f32]),
}

impl Kernels {
    /// The best kernels for this CPU, detected on first call and cached.
    pub fn detect() -> &'static Kernels {
        static BEST: OnceLock<&'static Kernels> = OnceLock::new();
        BEST.get_or_init(|| Self::available()[0])
    }

    /// The scalar reference kernels ([`scalar`]), available everywhere.
    pub fn scalar() -> &'static Kernels {
        &SCALAR
    }

    /// Every kernel set this CPU can run, best first; the last one is always
    /// [`Kernels::scalar`]. For tests and benchmarks that compare them.
    pub fn available() -> Vec<&'static Kernels> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                // AVX512-VNNI first: its `Q4_1` kernels (zmm) are faster than AVX-VNNI's, its
                // other single-row kernels the same (the same instructions on ymm).
                if x86::has_avx512() {
                    all.push(&x86::AVX512_VNNI);
                }
                if std::is_x86_feature_detected!("avxvnni") {
                    all.push(&x86::AVX_VNNI);
                }
                all.push(&x86::AVX2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                all.push(&arm::NEON_DOTPROD);
            }
            all.push(&arm::NEON);
        }
        all.push(&SCALAR);
        all
    }

    /// Which instruction set these kernels use: `"avx512vnni"`, `"avxvnni"`, `"avx2"`,
    /// `"neon+dotprod"`, `"neon"` or `"scalar"`.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernels")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Block `i` of each of four rows: what a four-token kernel multiplies one weight block with.
/// Spelled out rather than `rows.map(..)`, which LLVM does not always inline into the loops.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn column<B>(rows: [&[B]; 4], i: usize) -> [&B; 4] {
    [&rows[0][i], &rows[1][i], &rows[2][i], &rows[3][i]]
}

/// The scalar reference set. Its functions check lengths themselves.
static SCALAR: Kernels = Kernels {
    name: "scalar",
    quantize_q8_0: scalar::quantize_row_q8_0,
    quantize_q8_1: scalar::quantize_row_q8_1,
    dot_q4_0_q8_0: scalar::vec_dot_q4_0_q8_0,
    dot_q4_1_q8_1: scalar::vec_dot_q4_1_q8_1,
    dot_q8_0_q8_0: scalar::vec_dot_q8_0_q8_0,
    dot_f32: scalar::vec_dot_f32,
    dot4_q4_0_q8_0: scalar::vec_dot4_q4_0_q8_0,
    dot4_q4_1_q8_1: scalar::vec_dot4_q4_1_q8_1,
    dot4_q8_0_q8_0: scalar::vec_dot4_q8_0_q8_0,
    dot2x4_q4_1_q8_1: scalar::vec_dot2x4_q4_1_q8_1,
    dot_f32_f16: scalar::vec_dot_f32_f16,
    axpy_f16: scalar::vec_axpy_f16,
};

/// Builds a `static Kernels` of safe wrappers around one ISA module's `unsafe fn`s.
///
/// The wrappers check slice lengths (as the scalar functions do) and call the unsafe kernel.
/// Soundness: the wrappers are private to the static's initializer, and the statics are
/// private to this module and only handed out by [`Kernels::available`] after the features
/// the kernels need were detected on this CPU. `$present` re-checks that in debug builds.
macro_rules! simd_kernels {
    ($stat:ident, $name:literal, $isa:ident, $k:expr, present = $present:expr) => {
        pub(super) static $stat: Kernels = {
            fn quantize_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
                assert_eq!(x.len(), y.len() * QK, "quantize_q8_0: length mismatch");
                debug_assert!($present);
                // SAFETY: only reachable through this static, handed out after detecting
                // the CPU features the kernel needs (see `simd_kernels!`).
                unsafe { $isa::quantize_row_q8_0(x, y) }
            }
            fn quantize_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
                assert_eq!(x.len(), y.len() * QK, "quantize_q8_1: length mismatch");
                debug_assert!($present);
                // SAFETY: as above.
                unsafe { $isa::quantize_row_q8_1(x, y) }
            }
            fn dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
                assert_eq!(x.len(), y.len(), "dot_q4_0_q8_0: length mismatch");
                debug_assert!($present);
                // SAFETY: as above.
                unsafe { $isa::vec_dot_q4_0_q8_0::<{ $k }>(x, y) }
            }
            fn dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
                assert_eq!(x.len(), y.len(), "dot_q4_1_q8_1: length mismatch");
                debug_assert!($present);
                // SAFETY: as above.
                unsafe { $isa::vec_dot_q4_1_q8_1::<{ $k }>(x, y) }
            }
            fn dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
                assert_eq!(x.len(), y.len(), "dot_q8_0_q8_0: length mismatch");
                debug_assert!($present);
                // SAFETY: as above.
                unsafe { $isa::vec_dot_q8_0_q8_0::<{ $k }>(x, y) }
            }
            fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
                assert_eq!(a.len(), b.len(), "dot_f32: length mismatch");
                debug_assert!($present);
                // SAFETY: as above.
                unsafe { $isa::vec_dot_f32(a, b) }
            }
            fn dot4_q4_0_q8_0(x: &[BlockQ4_0], y: [&[BlockQ8_0]; 4]) -> [f32; 4] {
                for yt in y {
                    assert_eq!(x.len(), yt.len(), "dot4_q4_0_q8_0: length mismatch");
                }
                debug_assert!($present);
                // SAFETY: as above.
                unsafe { $isa::vec_dot4_q4_0_q8_0::<{ $k }>(x, y) }
            }
            fn dot4_q4_1_q8_1(x: &[BlockQ4_1], y: [&[BlockQ8_1]; 4]) -> [f32; 4] {
                for yt in y {
                    assert_eq!(x.len(), yt.len(), "dot4_q4_1_q8_1: length mismatch");
                }
                debug_assert!($present);
                // SAFETY: as above.
                unsafe { $isa::vec_dot4_q4_1_q8_1::<{ $k }>(x, y) }
            }
            fn dot4_q8_0_q8_0(x: &[BlockQ8_0], y: [&[BlockQ8_0]; 4]) -> [f32; 4] {
                for yt in y {
                    assert_eq!(x.len(), yt.len(), "dot4_q8_0_q8_0: length mismatch");
                }
                debug_assert!($present);
                // SAFETY: as above.
                unsafe { $isa::vec_dot4_q8_0_q8_0::<{ $k }>(x, y) }
            }
            fn dot2x4_q4_1_q8_1(
                x0: &[BlockQ4_1],
                x1: &[BlockQ4_1],
                y: [&[BlockQ8_1]; 4],
            ) -> [[f32; 4]; 2] {
                assert_eq!(x0.len(), x1.len(), "dot2x4_q4_1_q8_1: length mismatch");
                for yt in y {
                    assert_eq!(x0.len(), yt.len(), "dot2x4_q4_1_q8_1: length mismatch");
                }
                debug_assert!($present);
                // SAFETY: as above.
                unsafe { $isa::vec_dot2x4_q4_1_q8_1::<{ $k }>(x0, x1, y) }
            }
            fn dot_f32_f16(a: &[f32], b: &[u16]) -> f32 {
                assert_eq!(a.len(), b.len(), "dot_f32_f16: length mismatch");
                debug_assert!($present);
                // SAFETY: as above.
                unsafe { $isa::vec_dot_f32_f16(a, b) }
            }
            fn axpy_f16(alpha: f32, x: &[u16], y: &mut [f32]) {
                assert_eq!(x.len(), y.len(), "axpy_f16: length mismatch");
                debug_assert!($present);
                // SAFETY: as above.
                unsafe { $isa::axpy_f16(alpha, x, y) }
            }
            Kernels {
                name: $name,
                quantize_q8_0,
                quantize_q8_1,
                dot_q4_0_q8_0,
                dot_q4_1_q8_1,
                dot_q8_0_q8_0,
                dot_f32,
                dot4_q4_0_q8_0,
                dot4_q4_1_q8_1,
                dot4_q8_0_q8_0,
                dot2x4_q4_1_q8_1,
                dot_f32_f16,
                axpy_f16,
            }
        };
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{avx2, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, Kernels, QK};

    fn has_avx2() -> bool {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }

    /// What the `avx512vnni` set needs besides AVX2: VNNI for `vpdpbusd` on ymm (EVEX, so
    /// AVX512VL), F and BW for the zmm two-row kernel (`vpermw`, zmm registers).
    pub(super) fn has_avx512() -> bool {
        std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
    }

    simd_kernels!(AVX2, "avx2", avx2, avx2::MADDUBS, present = has_avx2());
    simd_kernels!(
        AVX_VNNI,
        "avxvnni",
        avx2,
        avx2::AVX_VNNI,
        present = has_avx2() && std::is_x86_feature_detected!("avxvnni")
    );
    simd_kernels!(
        AVX512_VNNI,
        "avx512vnni",
        avx2,
        avx2::AVX512_VNNI,
        present = has_avx2() && has_avx512()
    );
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{neon, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, Kernels, QK};

    simd_kernels!(NEON, "neon", neon, neon::VMULL, present = true);
    simd_kernels!(
        NEON_DOTPROD,
        "neon+dotprod",
        neon,
        neon::DOTPROD,
        present = std::arch::is_aarch64_feature_detected!("dotprod")
    );
}
