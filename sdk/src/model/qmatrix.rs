//! Weight matrices held in GGML block formats, viewed in place (in the memory-mapped GGUF or
//! in an owned buffer), and the quantized matrix multiplication of the decode path.
//!
//! The formats the decode path runs most (Q4_0, Q4_1, Q8_0, F32) go through our own kernels
//! ([`crate::kernels`], chosen at run time for AVX2/NEON); every other GGML type candle knows
//! (Q5_0, Q5_1, the K-quants, F16, BF16) goes through candle's `GgmlType::vec_dot`.

use std::sync::Arc;

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::GgmlDType;
use half::{bf16, f16};
use memmap2::Mmap;

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::decode::hooks::LowRankTerm;
use crate::decode::team::{Par, SharedOut};
use crate::kernels::interleaved::{self, ActQ8, Interleaved, Line, ROWS};
use crate::kernels::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, Kernels};
use crate::{Error, Result};

/// Bytes behind a matrix: a region of a mapped file, or an owned buffer (8-byte aligned).
#[derive(Clone)]
enum Storage {
    Mapped(Arc<Mmap>),
    Owned(Arc<Vec<u64>>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => bytemuck::cast_slice(v),
        }
    }
}

/// A copy of a matrix in 16-row interleaved tiles ([`interleaved`]) with the kernels to run it.
struct Packed {
    qs: Vec<Line>,
    sc: Vec<u16>,
    kern: &'static Interleaved,
    lines: usize,
    scales: usize,
}

/// A `[rows, cols]` weight matrix in a GGML type (row-major: one row = one output feature).
///
/// [`QMatrix::repack`] adds a copy in 16-row interleaved tiles, which the matrix products
/// then use; the row-major bytes stay the reference for everything else (embedding lookups,
/// training, dequantization).
#[derive(Clone)]
pub struct QMatrix {
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    storage: Storage,
    offset: usize,
    len: usize,
    packed: Option<Arc<Packed>>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QMatrix")
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

/// Which activation format a weight type's dot product consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    F32,
    Q8_0,
    Q8_1,
    Candle(GgmlDType),
}

fn lane(dtype: GgmlDType) -> Lane {
    match dtype {
        GgmlDType::F32 => Lane::F32,
        GgmlDType::Q4_0 | GgmlDType::Q8_0 => Lane::Q8_0,
        GgmlDType::Q4_1 => Lane::Q8_1,
        other => Lane::Candle(other),
    }
}

/// Runs `$body` with `$T` bound to candle's block type for `$dtype` (types without a kernel of
/// our own).
macro_rules! with_candle_type {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            GgmlDType::F32 => { type $T = f32; $body }
            GgmlDType::F16 => { type $T = f16; $body }
            GgmlDType::BF16 => { type $T = bf16; $body }
            GgmlDType::Q4_0 => { type $T = k_quants::BlockQ4_0; $body }
            GgmlDType::Q4_1 => { type $T = k_quants::BlockQ4_1; $body }
            GgmlDType::Q5_0 => { type $T = k_quants::BlockQ5_0; $body }
            GgmlDType::Q5_1 => { type $T = k_quants::BlockQ5_1; $body }
            GgmlDType::Q8_0 => { type $T = k_quants::BlockQ8_0; $body }
            GgmlDType::Q8_1 => { type $T = k_quants::BlockQ8_1; $body }
            GgmlDType::Q2K => { type $T = k_quants::BlockQ2K; $body }
            GgmlDType::Q3K => { type $T = k_quants::BlockQ3K; $body }
            GgmlDType::Q4K => { type $T = k_quants::BlockQ4K; $body }
            GgmlDType::Q5K => { type $T = k_quants::BlockQ5K; $body }
            GgmlDType::Q6K => { type $T = k_quants::BlockQ6K; $body }
            GgmlDType::Q8K => { type $T = k_quants::BlockQ8K; $body }
        }
    };
}

/// Views `bytes` as a slice of `T`. Callers have checked length and alignment.
fn cast<T>(bytes: &[u8]) -> &[T] {
    assert!(bytes.len().is_multiple_of(std::mem::size_of::<T>()));
    assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
    // SAFETY: length and alignment checked above; all GGML block types (and f32/f16/bf16) are
    // plain `repr(C)` data valid for any bit pattern.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / std::mem::size_of::<T>()) }
}

fn cast_mut<T>(bytes: &mut [u8]) -> &mut [T] {
    assert!(bytes.len().is_multiple_of(std::mem::size_of::<T>()));
    assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
    // SAFETY: as in `cast`; the slice is uniquely borrowed.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut T, bytes.len() / std::mem::size_of::<T>()) }
}

fn align_of_dtype(dtype: GgmlDType) -> usize {
    with_candle_type!(dtype, T => std::mem::align_of::<T>())
}

impl QMatrix {
    /// A view of `len` bytes at `offset` in a mapped file.
    pub(crate) fn from_mapped(
        name: &str,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    ) -> Result<Self> {
        let m = Self { dtype, rows, cols, storage: Storage::Mapped(map), offset, len, packed: None };
        m.validate(name)?;
        if !(m.bytes().as_ptr() as usize).is_multiple_of(align_of_dtype(dtype)) {
            // A file with odd alignment still loads: copy this tensor into an aligned buffer.
            return Self::from_bytes(name, dtype, rows, cols, m.bytes());
        }
        Ok(m)
    }

    /// A matrix owning a copy of `bytes` (GGML blocks of `dtype`, row-major).
    pub fn from_bytes(name: &str, dtype: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        let mut buf = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..bytes.len()].copy_from_slice(bytes);
        let m = Self { dtype, rows, cols, storage: Storage::Owned(Arc::new(buf)), offset: 0, len: bytes.len(), packed: None };
        m.validate(name)?;
        Ok(m)
    }

    /// Quantizes a dense row-major `[rows, cols]` f32 matrix into `dtype` (for tests, tools and
    /// adapters; the model's own weights come from the file).
    pub fn quantize(dtype: GgmlDType, rows: usize, cols: usize, data: &[f32]) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(Error::invalid(format!("quantize: {} values for a {rows}x{cols} matrix", data.len())));
        }
        if !cols.is_multiple_of(dtype.block_size()) {
            return Err(Error::invalid(format!("quantize: {cols} columns is not a multiple of the {dtype:?} block size")));
        }
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let mut buf = vec![0u64; (rows * row_bytes).div_ceil(8)];
        {
            let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..rows * row_bytes];
            with_candle_type!(dtype, T => {
                let blocks = cast_mut::<T>(bytes);
                T::from_float(data, blocks);
            });
        }
        Ok(Self { dtype, rows, cols, storage: Storage::Owned(Arc::new(buf)), offset: 0, len: rows * row_bytes, packed: None })
    }

    fn validate(&self, name: &str) -> Result<()> {
        let bs = self.dtype.block_size();
        if !self.cols.is_multiple_of(bs) {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: vec![self.rows, self.cols.next_multiple_of(bs)],
                actual: vec![self.rows, self.cols],
            });
        }
        if matches!(self.dtype, GgmlDType::Q8_1) {
            return Err(Error::UnsupportedTensorType { name: name.into(), dtype: "Q8_1".into() });
        }
        let expected = self.rows * self.row_bytes();
        if self.len != expected {
            return Err(Error::InvalidGguf {
                path: name.into(),
                reason: format!("tensor holds {} bytes, {} expected", self.len, expected),
            });
        }
        Ok(())
    }

    /// GGML element type.
    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }
    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }
    /// The raw GGML bytes, row-major.
    pub fn bytes(&self) -> &[u8] {
        &self.storage.bytes()[self.offset..self.offset + self.len]
    }
    fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.bytes()[r * rb..(r + 1) * rb]
    }

    /// Adds a copy in 16-row interleaved tiles for the best interleaved kernels of this CPU, if
    /// it has some and the matrix is `Q4_1` or `Q8_0` with a multiple of 16 rows; returns
    /// whether it did. The copy has the size of the matrix; the row-major bytes are read once
    /// (for a mapped file, the caller may then drop their pages, see `GgufFile::release_pages`).
    pub fn repack(&mut self) -> bool {
        match Interleaved::detect() {
            Some(k) => self.repack_with(k),
            None => false,
        }
    }

    /// [`QMatrix::repack`] for a given kernel set (tests compare the sets).
    pub fn repack_with(&mut self, kern: &'static Interleaved) -> bool {
        if !self.rows.is_multiple_of(ROWS) || self.rows == 0 {
            return false;
        }
        let bpr = self.cols / 32;
        let tiles = self.rows / ROWS * bpr;
        let packed = match self.dtype {
            GgmlDType::Q4_1 => {
                let (lines, scales) = (interleaved::LINES_Q4_1, interleaved::SCALES_Q4_1);
                let (mut qs, mut sc) = (vec![Line::default(); tiles * lines], vec![0u16; tiles * scales]);
                interleaved::repack_q4_1(cast::<BlockQ4_1>(self.bytes()), self.rows, bpr, &mut qs, &mut sc);
                Packed { qs, sc, kern, lines, scales }
            }
            GgmlDType::Q8_0 => {
                let (lines, scales) = (interleaved::LINES_Q8_0, interleaved::SCALES_Q8_0);
                let (mut qs, mut sc) = (vec![Line::default(); tiles * lines], vec![0u16; tiles * scales]);
                interleaved::repack_q8_0(cast::<BlockQ8_0>(self.bytes()), self.rows, bpr, &mut qs, &mut sc);
                Packed { qs, sc, kern, lines, scales }
            }
            _ => return false,
        };
        self.packed = Some(Arc::new(packed));
        if let Storage::Mapped(m) = &self.storage {
            // Drop the pages just read, so the copy does not double RSS even at its peak; a
            // later read of the row-major bytes faults them back in.
            // SAFETY: the mapping is read-only, so DONTNEED loses nothing (see
            // `GgufFile::release_pages`).
            let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, self.offset, self.len) };
        }
        true
    }

    /// Whether the matrix products use an interleaved copy ([`QMatrix::repack`]).
    pub fn is_repacked(&self) -> bool {
        self.packed.is_some()
    }

    /// Bytes held by the interleaved copy (0 without one).
    pub fn repacked_bytes(&self) -> usize {
        self.packed.as_ref().map_or(0, |p| p.qs.len() * 64 + p.sc.len() * 2)
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let row = self.row(r);
        with_candle_type!(self.dtype, T => T::to_float(cast::<T>(row), &mut out[..self.cols]))
    }

    /// The whole matrix as dense f32 (reference computations and tools; the decode path never
    /// does this).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, chunk) in out.chunks_mut(self.cols).enumerate() {
            self.dequantize_row(r, chunk);
        }
        out
    }
}

/// An input batch `[n, cols]` quantized once into every activation format the matrices it
/// multiplies need (q, k and v share one quantization).
pub(crate) struct Prepared<'a> {
    x: &'a [f32],
    n: usize,
    cols: usize,
    q8_0: Vec<BlockQ8_0>,
    q8_1: Vec<BlockQ8_1>,
    candle: Vec<(GgmlDType, Vec<u64>)>,
    /// Side arrays of `q8_0` for the interleaved kernels (`d`, `d·Σq`, `128·Σq` per block).
    il_d: Vec<f32>,
    il_c: Vec<f32>,
    il_s: Vec<i32>,
}

impl<'a> Prepared<'a> {
    /// Quantizes `x` (`[n, cols]`) for the given weights.
    pub(crate) fn new(x: &'a [f32], n: usize, cols: usize, mats: &[&QMatrix]) -> Self {
        debug_assert_eq!(x.len(), n * cols);
        let k = Kernels::detect();
        let mut p = Prepared {
            x, n, cols, q8_0: Vec::new(), q8_1: Vec::new(), candle: Vec::new(),
            il_d: Vec::new(), il_c: Vec::new(), il_s: Vec::new(),
        };
        for m in mats {
            // Interleaved tiles take Q8_0 activations (plus side arrays, below).
            let l = if m.packed.is_some() { Lane::Q8_0 } else { lane(m.dtype) };
            match l {
                Lane::F32 => {}
                Lane::Q8_0 if p.q8_0.is_empty() => {
                    p.q8_0 = vec![bytemuck::Zeroable::zeroed(); n * cols / 32];
                    for (xr, yr) in x.chunks(cols).zip(p.q8_0.chunks_mut(cols / 32)) {
                        (k.quantize_q8_0)(xr, yr)
                    }
                }
                Lane::Q8_1 if p.q8_1.is_empty() => {
                    p.q8_1 = vec![bytemuck::Zeroable::zeroed(); n * cols / 32];
                    for (xr, yr) in x.chunks(cols).zip(p.q8_1.chunks_mut(cols / 32)) {
                        (k.quantize_q8_1)(xr, yr)
                    }
                }
                Lane::Candle(dt) if !p.candle.iter().any(|(d, _)| *d == dt) => {
                    let buf = with_candle_type!(dt, T => quantize_for::<T>(x, n, cols));
                    p.candle.push((dt, buf));
                }
                _ => {}
            }
        }
        if mats.iter().any(|m| m.packed.is_some()) {
            let nb = p.q8_0.len();
            (p.il_d, p.il_c, p.il_s) = (vec![0.0; nb], vec![0.0; nb], vec![0; nb]);
            interleaved::act_sides(&p.q8_0, &mut p.il_d, &mut p.il_c, &mut p.il_s);
        }
        p
    }

    fn act(&self) -> ActQ8<'_> {
        ActQ8 { q: &self.q8_0, d: &self.il_d, c: &self.il_c, s128: &self.il_s, bpr: self.cols / 32 }
    }
}

fn quantize_for<T: GgmlType>(x: &[f32], n: usize, cols: usize) -> Vec<u64> {
    type V<T> = <T as GgmlType>::VecDotType;
    let per_row = cols / V::<T>::BLCK_SIZE * std::mem::size_of::<V<T>>();
    let mut buf = vec![0u64; (n * per_row).div_ceil(8)];
    let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..n * per_row];
    for (xr, yr) in x.chunks(cols).zip(bytes.chunks_mut(per_row)) {
        V::<T>::from_float(xr, cast_mut::<V<T>>(yr));
    }
    buf
}

/// One matrix product of a batch: `out[n, w.rows] = x[n, cols] · wᵀ`, plus low-rank terms.
pub(crate) struct MatJob<'a> {
    pub(crate) w: &'a QMatrix,
    pub(crate) out: &'a mut [f32],
    /// Added to `out` by the same worker right after it computes a chunk of rows.
    pub(crate) delta: Delta<'a>,
}

/// Low-rank terms to add to a product: for term `i`, `out[t, :] += Σ_k u[t, k]·Bᵢᵀ[k, :]`
/// where `u` is the term's `[n, rank]` slice of `u` (already `scale·A·x`, in term order).
#[derive(Clone, Copy, Default)]
pub(crate) struct Delta<'a> {
    pub(crate) terms: &'a [LowRankTerm],
    pub(crate) u: &'a [f32],
}

impl<'a> MatJob<'a> {
    /// A product without delta.
    pub(crate) fn new(w: &'a QMatrix, out: &'a mut [f32]) -> Self {
        Self { w, out, delta: Delta::default() }
    }
}

/// Adds rows `r0..r1` of the delta's terms to `out` (`[n, rows]`), skipping exact zeros.
///
/// # Safety
/// As [`rows_into`]: nobody else writes rows `r0..r1` of `out` during the call.
unsafe fn delta_rows(d: &Delta<'_>, n: usize, rows: usize, r0: usize, r1: usize, out: SharedOut) {
    const BLOCK: usize = 256;
    let kern = Kernels::detect();
    let mut acc = [0f32; BLOCK];
    for t in 0..n {
        let mut s = r0;
        while s < r1 {
            let e = (s + BLOCK).min(r1);
            let acc = &mut acc[..e - s];
            acc.fill(0.0);
            let mut off = 0;
            for term in d.terms {
                let f = &term.factors;
                let r = f.rank();
                let u = &d.u[off + t * r..off + (t + 1) * r];
                off += n * r;
                for (k, &uk) in u.iter().enumerate() {
                    (kern.axpy_f16)(uk, &f.bt()[k * rows + s..k * rows + e], acc);
                }
            }
            for (i, &a) in acc.iter().enumerate() {
                if a != 0.0 {
                    // SAFETY: t < n and s + i < r1 <= rows: inside the caller's buffer, in the
                    // rows the caller owns.
                    unsafe { *out.0.add(t * rows + s + i) += a };
                }
            }
            s = e;
        }
    }
}

/// Computes every job, the rows of all jobs split evenly over the members of `par`.
pub(crate) fn matmul(par: Par<'_>, input: &Prepared<'_>, jobs: &mut [MatJob<'_>]) {
    const MAX_JOBS: usize = 4;
    assert!(jobs.len() <= MAX_JOBS, "matmul: at most {MAX_JOBS} jobs per call");
    let mut parts: [Option<(&QMatrix, SharedOut, Delta<'_>)>; MAX_JOBS] = [None; MAX_JOBS];
    let mut total = 0;
    for (j, job) in jobs.iter_mut().enumerate() {
        assert_eq!(job.w.cols, input.cols, "matmul: input width");
        assert_eq!(job.out.len(), input.n * job.w.rows, "matmul: output size");
        let mut u_len = 0;
        for t in job.delta.terms {
            assert_eq!((t.factors.d_in(), t.factors.d_out()), (job.w.cols, job.w.rows), "matmul: low-rank term shape");
            u_len += input.n * t.factors.rank();
        }
        assert_eq!(job.delta.u.len(), u_len, "matmul: low-rank input size");
        parts[j] = Some((job.w, SharedOut::new(job.out), job.delta));
        // Each job starts on the 16-row grid of the concatenation (chunks are multiples of
        // 16), so chunks never split an interleaved group.
        total = (total + job.w.rows).next_multiple_of(ROWS);
    }
    let n = par.size();
    // Members take chunks of rows from a shared counter, so a member slowed down (by the
    // serial work it did before, or by the OS) does not hold the others up.
    // About eight chunks per member for balance, and at most ~4k row-token products per chunk
    // so that the last chunk of a long prefill does not keep the others waiting.
    let chunk = if n == 1 {
        total
    } else {
        // A multiple of 16: interleaved matrices run in 16-row groups.
        (total / (n * 8)).min(4096 / input.n.max(1)).clamp(16, 256).next_multiple_of(16)
    };
    let next = AtomicUsize::new(0);
    par.run(&|_tid| loop {
        let s = next.fetch_add(chunk, Ordering::Relaxed);
        if s >= total {
            break;
        }
        let e = (s + chunk).min(total);
        let mut base = 0;
        for &(w, out, delta) in parts.iter().map_while(Option::as_ref) {
            let (r0, r1) = (s.max(base) - base, e.min(base + w.rows).saturating_sub(base));
            if r0 < r1 {
                // SAFETY: rows s..e of the concatenated jobs belong to this chunk alone (the
                // counter hands each out once) and the outputs outlive `run`; the delta's shapes
                // were checked above.
                unsafe {
                    rows_into(w, input, r0, r1, out);
                    if !delta.terms.is_empty() {
                        delta_rows(&delta, input.n, w.rows, r0, r1, out);
                    }
                }
            }
            base = (base + w.rows).next_multiple_of(ROWS);
        }
    });
}

/// Computes rows `r0..r1` of `w` against every token of `input`, writing `out[t*rows + r]`.
///
/// # Safety
/// `out` must point to a buffer of `input.n * w.rows` floats that no one else writes in the
/// rows `r0..r1` during the call.
unsafe fn rows_into(w: &QMatrix, input: &Prepared<'_>, r0: usize, r1: usize, out: SharedOut) {
    if let Some(p) = &w.packed {
        let (g0, g1) = (r0.div_ceil(ROWS), r1 / ROWS);
        if g0 < g1 {
            // Rows outside whole groups (a chunk boundary off the 16-row grid) take the
            // row kernels on the row-major bytes.
            // SAFETY: forwarded contract, on sub-ranges of r0..r1.
            unsafe {
                rows_into_rowmajor(w, input, r0, g0 * ROWS, out);
                packed_rows(w, p, input, g0, g1, out);
                rows_into_rowmajor(w, input, g1 * ROWS, r1, out);
            }
            return;
        }
    }
    // SAFETY: forwarded contract.
    unsafe { rows_into_rowmajor(w, input, r0, r1, out) }
}

/// Groups `g0..g1` of an interleaved matrix against every token of `input`.
///
/// # Safety
/// As [`rows_into`] for rows `16·g0..16·g1`.
unsafe fn packed_rows(w: &QMatrix, p: &Packed, input: &Prepared<'_>, g0: usize, g1: usize, out: SharedOut) {
    const TOK: usize = 64;
    let bpr = w.cols / 32;
    let act = input.act();
    let mut buf = [0f32; TOK * ROWS];
    for t0 in (0..input.n).step_by(TOK) {
        let nt = (input.n - t0).min(TOK);
        let o = t0 * bpr;
        let a = ActQ8 {
            q: &act.q[o..o + nt * bpr],
            d: &act.d[o..o + nt * bpr],
            c: &act.c[o..o + nt * bpr],
            s128: &act.s128[o..o + nt * bpr],
            bpr,
        };
        for g in g0..g1 {
            let qs = &p.qs[g * bpr * p.lines..(g + 1) * bpr * p.lines];
            let sc = &p.sc[g * bpr * p.scales..(g + 1) * bpr * p.scales];
            let buf = &mut buf[..nt * ROWS];
            if w.dtype == GgmlDType::Q4_1 { (p.kern.gemm_q4_1)(qs, sc, &a, buf) } else { (p.kern.gemm_q8_0)(qs, sc, &a, buf) }
            for t in 0..nt {
                // SAFETY: token t0 + t < n, rows 16g..16g + 16 < rows: inside the caller's
                // buffer, in rows the caller owns.
                unsafe {
                    std::ptr::copy_nonoverlapping(buf[t * ROWS..].as_ptr(), out.0.add((t0 + t) * w.rows + g * ROWS), ROWS)
                };
            }
        }
    }
}

/// [`rows_into`] with the row kernels on the row-major bytes.
///
/// # Safety
/// As [`rows_into`].
unsafe fn rows_into_rowmajor(w: &QMatrix, input: &Prepared<'_>, r0: usize, r1: usize, out: SharedOut) {
    if r0 >= r1 {
        return;
    }
    let k = Kernels::detect();
    let (n, cols, rows) = (input.n, input.cols, w.rows);
    let put = |t: usize, r: usize, v: f32| {
        // SAFETY: t < n and r < rows, inside the caller's buffer; disjointness is the
        // caller's contract. (The field, not `ptr()`: capturing the bare pointer here measured
        // ~12% faster decoding.)
        unsafe { *out.0.add(t * rows + r) = v };
    };
    match lane(w.dtype) {
        Lane::F32 => {
            let wf = cast::<f32>(w.bytes());
            for r in r0..r1 {
                let wr = &wf[r * cols..(r + 1) * cols];
                for t in 0..n {
                    put(t, r, (k.dot_f32)(wr, &input.x[t * cols..(t + 1) * cols]));
                }
            }
        }
        Lane::Q8_0 => {
            if w.dtype == GgmlDType::Q4_0 {
                blocks_rows(cast::<BlockQ4_0>(w.bytes()), &input.q8_0, cols / 32, n, r0, r1, k.dot_q4_0_q8_0, k.dot4_q4_0_q8_0, None, &put);
            } else {
                blocks_rows(cast::<BlockQ8_0>(w.bytes()), &input.q8_0, cols / 32, n, r0, r1, k.dot_q8_0_q8_0, k.dot4_q8_0_q8_0, None, &put);
            }
        }
        Lane::Q8_1 => {
            blocks_rows(cast::<BlockQ4_1>(w.bytes()), &input.q8_1, cols / 32, n, r0, r1, k.dot_q4_1_q8_1, k.dot4_q4_1_q8_1, Some(k.dot2x4_q4_1_q8_1), &put);
        }
        Lane::Candle(dt) => {
            let acts = &input.candle.iter().find(|(d, _)| *d == dt).expect("input prepared for this dtype").1;
            with_candle_type!(dt, T => candle_rows::<T>(w, acts, n, r0, r1, &put))
        }
    }
}

/// Rows `r0..r1` of a block-quantized matrix against `n` quantized tokens: groups of four
/// tokens per pass over a weight row (the row's blocks are unpacked once for all four; two rows
/// at a time where the kernel set has a two-row kernel), the remaining tokens one by one. Every
/// kernel gives bit-identical results to the single dot, so batching never changes numerics.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::type_complexity)]
fn blocks_rows<W, A>(
    wb: &[W],
    xq: &[A],
    bpr: usize,
    n: usize,
    r0: usize,
    r1: usize,
    dot: fn(&[W], &[A]) -> f32,
    dot4: fn(&[W], [&[A]; 4]) -> [f32; 4],
    dot2x4: Option<fn(&[W], &[W], [&[A]; 4]) -> [[f32; 4]; 2]>,
    put: &impl Fn(usize, usize, f32),
) {
    let tok = |t: usize| &xq[t * bpr..(t + 1) * bpr];
    let row = |r: usize| &wb[r * bpr..(r + 1) * bpr];
    let n4 = n / 4 * 4;
    let mut r = r0;
    if let Some(dot2x4) = dot2x4 {
        while r + 2 <= r1 && n4 > 0 {
            for t in (0..n4).step_by(4) {
                let v = dot2x4(row(r), row(r + 1), [tok(t), tok(t + 1), tok(t + 2), tok(t + 3)]);
                for (dr, vr) in v.into_iter().enumerate() {
                    for (i, v) in vr.into_iter().enumerate() {
                        put(t + i, r + dr, v);
                    }
                }
            }
            for t in n4..n {
                put(t, r, dot(row(r), tok(t)));
                put(t, r + 1, dot(row(r + 1), tok(t)));
            }
            r += 2;
        }
    }
    for r in r..r1 {
        let wr = row(r);
        for t in (0..n4).step_by(4) {
            let v = dot4(wr, [tok(t), tok(t + 1), tok(t + 2), tok(t + 3)]);
            for (i, v) in v.into_iter().enumerate() {
                put(t + i, r, v);
            }
        }
        for t in n4..n {
            put(t, r, dot(wr, tok(t)));
        }
    }
}

fn candle_rows<T: GgmlType>(w: &QMatrix, acts: &[u64], n: usize, r0: usize, r1: usize, put: &impl Fn(usize, usize, f32)) {
    type V<T> = <T as GgmlType>::VecDotType;
    let cols = w.cols;
    let wb = cast::<T>(w.bytes());
    let bpr = cols / T::BLCK_SIZE;
    let vpr = cols / V::<T>::BLCK_SIZE;
    let all = bytemuck::cast_slice::<u64, u8>(acts);
    let xs = cast::<V<T>>(&all[..n * vpr * std::mem::size_of::<V<T>>()]);
    for r in r0..r1 {
        let wr = &wb[r * bpr..(r + 1) * bpr];
        for t in 0..n {
            put(t, r, T::vec_dot(cols, wr, &xs[t * vpr..(t + 1) * vpr]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn dense_matmul(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * rows];
        for t in 0..n {
            for r in 0..rows {
                out[t * rows + r] = (0..cols).map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    /// Every weight type against a dense f32 product with the dequantized weight. Tolerance:
    /// the activations are quantized to 8 bits (Q8_0/Q8_1/Q8_K, relative error ≤ 1/254 per
    /// element) or to f16/bf16, so |err| ≤ tol · Σ|w·x| with tol 1e-2 (bf16 2e-2).
    #[test]
    fn matmul_matches_dense_for_every_type() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        let types = [
            GgmlDType::F32, GgmlDType::F16, GgmlDType::BF16, GgmlDType::Q4_0, GgmlDType::Q4_1,
            GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0, GgmlDType::Q2K, GgmlDType::Q3K,
            GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K,
        ];
        for dt in types {
            let (rows, cols, n) = (37, 512, 3);
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
            let q = QMatrix::quantize(dt, rows, cols, &w).unwrap();
            let wd = q.dequantize();
            let want = dense_matmul(&wd, &x, rows, cols, n);
            let mut got = vec![0f32; n * rows];
            let p = Prepared::new(&x, n, cols, &[&q]);
            matmul(Par::Serial, &p, &mut [MatJob::new(&q, &mut got)]);
            let tol = if dt == GgmlDType::BF16 { 2e-2 } else { 1e-2 };
            for t in 0..n {
                for r in 0..rows {
                    let mag: f32 = (0..cols).map(|c| (wd[r * cols + c] * x[t * cols + c]).abs()).sum();
                    let (g, e) = (got[t * rows + r], want[t * rows + r]);
                    assert!((g - e).abs() <= tol * mag + 1e-6, "{dt:?} row {r} tok {t}: {g} vs {e} (mag {mag})");
                }
            }
        }
    }

    /// Repacked matrices (every interleaved set this CPU runs, several matrices per call with
    /// widths off the 16-row grid, two threads) against the row-major product: the same
    /// integer dots; the row-major `Q4_1` path rounds the activations' `d·Σq` to f16 (ggml's
    /// `Q8_1`), the interleaved one keeps it in f32, so within 1e-3·Σ|w·x|.
    #[test]
    fn repacked_matmul_matches_row_major() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        let team = crate::decode::team::Team::new(2).unwrap();
        for k in Interleaved::available() {
            for n in [1, 3, 4, 7, 70] {
                let cols = 96;
                let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                let shapes = [(GgmlDType::Q4_1, 48), (GgmlDType::Q4_0, 20), (GgmlDType::Q8_0, 32), (GgmlDType::Q4_1, 400)];
                let mut plain = Vec::new();
                let mut packed = Vec::new();
                for (dt, rows) in shapes {
                    let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                    let q = QMatrix::quantize(dt, rows, cols, &w).unwrap();
                    let mut p = q.clone();
                    let did = p.repack_with(k);
                    assert_eq!(did, rows % 16 == 0 && dt != GgmlDType::Q4_0);
                    plain.push(q);
                    packed.push(p);
                }
                let run = |mats: &[QMatrix], par: Par<'_>| {
                    let refs: Vec<&QMatrix> = mats.iter().collect();
                    let p = Prepared::new(&x, n, cols, &refs);
                    let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; n * m.rows()]).collect();
                    let (a, b) = outs.split_at_mut(2);
                    let (o0, o1) = a.split_at_mut(1);
                    let (o2, o3) = b.split_at_mut(1);
                    matmul(par, &p, &mut [
                        MatJob::new(&mats[0], &mut o0[0]),
                        MatJob::new(&mats[1], &mut o1[0]),
                        MatJob::new(&mats[2], &mut o2[0]),
                        MatJob::new(&mats[3], &mut o3[0]),
                    ]);
                    outs
                };
                let want = run(&plain, Par::Serial);
                let got = run(&packed, Par::Team(&team));
                for (j, m) in plain.iter().enumerate() {
                    let wd = m.dequantize();
                    for t in 0..n {
                        for r in 0..m.rows() {
                            let mag: f32 = (0..cols).map(|c| (wd[r * cols + c] * x[t * cols + c]).abs()).sum();
                            let (g, e) = (got[j][t * m.rows() + r], want[j][t * m.rows() + r]);
                            assert!((g - e).abs() <= 1e-3 * mag + 1e-6, "{} mat {j} row {r} tok {t}: {g} vs {e}", k.name());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(QMatrix::quantize(GgmlDType::Q4_1, 2, 30, &[0.0; 60]).is_err());
        assert!(QMatrix::quantize(GgmlDType::Q4_1, 2, 32, &[0.0; 63]).is_err());
        assert!(QMatrix::from_bytes("t", GgmlDType::Q4_1, 2, 32, &[0u8; 39]).is_err());
    }
}
