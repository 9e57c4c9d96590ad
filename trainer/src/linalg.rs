//! Dense f32 products (the `gemm` crate, single-threaded per call) and the quantized linear
//! layer's forward and input-gradient products, which dequantize the frozen weight a tile of
//! rows at a time (never the whole matrix) and split the tiles over the rayon pool.

use rayon::prelude::*;
use rayon::ThreadPool;
use tailor::model::qmatrix::QMatrix;

use candle_core::quantized::GgmlDType;
use tailor::kernels::{cast_blocks, BlockQ4_1, BlockQ8_0};

use crate::kernels::{dequantize_q4_1, dequantize_q8_0, gemm_bcast, has_bcast_kernel, zeros};

/// A strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct M<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> M<'a> {
    /// Row-major `[rows, cols]`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, rs: cols, cs: 1 }
    }
    /// The transpose (a view, nothing moves).
    pub fn t(self) -> Self {
        Self { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    /// Columns `c0..c0+n` of every row.
    pub fn cols(self, c0: usize, n: usize) -> Self {
        let start = if self.rows == 0 || n == 0 { 0 } else { c0 * self.cs };
        Self { data: &self.data[start..], cols: n, ..self }
    }
    fn check(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "gemm: {what} view out of bounds");
        }
    }
}

/// `c = alpha·c + beta·a·b` (`c` row-major `[a.rows, b.cols]`; `acc == false` ignores its
/// old contents, `alpha` is then unused).
pub(crate) fn gemm(c: &mut [f32], a: M<'_>, b: M<'_>, acc: bool, beta: f32) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions");
    assert!(c.len() >= m * n, "gemm: output size");
    a.check("lhs");
    b.check("rhs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: every index the views can touch was bounds-checked above (`check`), `c` holds
    // `m·n` values written row-major with strides (1, n), and `c` cannot alias `a` or `b`
    // (a unique borrow against shared ones).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Rows per dequantized tile: about 64k values (256 KB), a multiple of 16.
fn tile_rows(cols: usize) -> usize {
    (65_536 / cols.max(1)).clamp(16, 512).next_multiple_of(16)
}

/// Height of the forward pass's tiles of an `out`-row weight: at most about [`tile_rows`],
/// a multiple of 16 (the kernel's half vector), and as many tiles as a multiple of `threads`
/// (balanced work). With this crate's kernel a forward output is one tile's dot product, so
/// the tiling does not change the arithmetic.
fn fwd_tile_rows(out: usize, cols: usize, threads: usize) -> usize {
    let tiles = out.div_ceil(tile_rows(cols)).next_multiple_of(threads.max(1));
    out.div_ceil(tiles).next_multiple_of(16)
}

/// Rows `r0..r1` of `w` as dense f32 (`Q4_1` and `Q8_0`, the types of the shipped model, by
/// [`crate::kernels`]; other types through `QMatrix::dequantize_row`). Same arithmetic as
/// ggml's (`q·d + m`, `q·d`): bit-identical results.
pub(crate) fn dequantize_tile(w: &QMatrix, r0: usize, r1: usize, buf: &mut Vec<f32>) {
    let cols = w.cols();
    buf.resize((r1 - r0) * cols, 0.0);
    let bytes = &w.bytes()[r0 * w.row_bytes()..r1 * w.row_bytes()];
    match w.dtype() {
        GgmlDType::Q4_1 => {
            if let Some(blocks) = cast_blocks::<BlockQ4_1>(bytes) {
                dequantize_q4_1(blocks, buf);
                return;
            }
        }
        GgmlDType::Q8_0 => {
            if let Some(blocks) = cast_blocks::<BlockQ8_0>(bytes) {
                dequantize_q8_0(blocks, buf);
                return;
            }
        }
        _ => {}
    }
    for (i, r) in (r0..r1).enumerate() {
        w.dequantize_row(r, &mut buf[i * cols..(i + 1) * cols]);
    }
}

/// `y[n, out] = x[n, in] · Wᵀ`. Each task dequantizes a tile of weight rows, transposes it
/// in cache (`[in, rows]`) and multiplies `x` by it into its own `[n, rows]` block, which is
/// then copied into its columns of `y`: neither `x` nor `y` is transposed. Each output sums
/// `x[t, c]·W[o, c]` over `c` in order.
pub(crate) fn qlinear_fwd(pool: &ThreadPool, w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) {
    let (out, cols) = (w.rows(), w.cols());
    assert_eq!(x.len(), n * cols, "qlinear: input size");
    assert_eq!(y.len(), n * out, "qlinear: output size");
    if n == 0 || out == 0 {
        return;
    }
    // The `gemm` crate's sums may depend on a tile's height, so without this crate's kernel the
    // tiles do not follow the thread count (8 tiles' worth: balanced for 1, 2, 4 or 8 threads).
    let tr = fwd_tile_rows(out, cols, if has_bcast_kernel() { pool.current_num_threads() } else { 8 });
    // Allocated here, not on the workers (glibc's per-thread arenas would keep it).
    let mut blocks = zeros(pool, n * out);
    pool.install(|| {
        blocks.par_chunks_mut(tr * n).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(buf, bt), (ti, block)| {
                let r0 = ti * tr;
                let r1 = (r0 + tr).min(out);
                let rows = r1 - r0;
                dequantize_tile(w, r0, r1, buf);
                if has_bcast_kernel() {
                    bt.resize(rows * cols, 0.0);
                    transpose_seq(buf, rows, cols, bt);
                    gemm_bcast(n, rows, cols, M::new(x, n, cols), bt, rows, block, rows, false, 1.0);
                } else {
                    // The `gemm` crate packs its operands itself: the tile is read transposed
                    // in place (a transposing copy was ~9% of a training step on AVX2).
                    gemm(block, M::new(x, n, cols), M::new(buf, rows, cols).t(), false, 1.0);
                }
            },
        )
    });
    let copy = |(t, row): (usize, &mut [f32])| {
        for (ti, block) in blocks.chunks(tr * n).enumerate() {
            let rows = block.len() / n;
            row[ti * tr..ti * tr + rows].copy_from_slice(&block[t * rows..(t + 1) * rows]);
        }
    };
    if n * out < 1 << 16 {
        y.chunks_mut(out).enumerate().for_each(copy);
    } else {
        pool.install(|| y.par_chunks_mut(out).enumerate().for_each(copy));
    }
}

/// `dst[c, r] = src[r, c]` for `src` `[rows, cols]`, on this thread.
fn transpose_seq(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const B: usize = 16;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// `dst[c, r] = src[r, c]` for `src` `[rows, cols]`, blocks of `dst` rows in parallel.
pub(crate) fn transpose_into(pool: &ThreadPool, src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert_eq!(src.len(), rows * cols);
    assert_eq!(dst.len(), rows * cols);
    if rows == 0 || cols == 0 {
        return;
    }
    const B: usize = 16;
    let one = |(bi, chunk): (usize, &mut [f32])| {
        let c0 = bi * B;
        let nc = chunk.len() / rows;
        for r0 in (0..rows).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                let s = &src[r * cols + c0..r * cols + c0 + nc];
                for (c, &v) in s.iter().enumerate() {
                    chunk[c * rows + r] = v;
                }
            }
        }
    };
    if rows * cols < 1 << 16 {
        dst.chunks_mut(B * rows).enumerate().for_each(one);
    } else {
        pool.install(|| dst.par_chunks_mut(B * rows).enumerate().for_each(one));
    }
}

/// Fixed number of partial sums of the input gradient: the result does not depend on how
/// rayon schedules the work (the run is deterministic).
const PARTS: usize = 4;

/// `dx[n, in] += dy[n, out] · W[out, in]`.
pub(crate) fn qlinear_bwd(pool: &ThreadPool, w: &QMatrix, dy: &[f32], n: usize, dx: &mut [f32]) {
    let (out, cols) = (w.rows(), w.cols());
    assert_eq!(dy.len(), n * out, "qlinear backward: dy size");
    assert_eq!(dx.len(), n * cols, "qlinear backward: dx size");
    // Every part gets the same number of tiles of equal height (balanced work), each tile at
    // most ~256k values (1 MB): tall tiles mean fewer passes over the partial sums.
    let max_rows = (262_144 / cols.max(1)).max(4);
    let per_part = out.div_ceil(PARTS).div_ceil(max_rows).max(1);
    let tiles = PARTS * per_part;
    let tr = out.div_ceil(tiles).max(1);
    // Part 0 adds into `dx` itself, the others into partial sums added to it in order.
    // Allocated here, not on the workers (glibc's per-thread arenas would keep it).
    let mut partials = zeros(pool, (PARTS - 1) * n * cols);
    let used: Vec<bool> = pool.install(|| rayon::iter::once(&mut dx[..])
        .chain(partials.par_chunks_mut(n * cols))
        .enumerate()
        .map(|(p, acc)| {
            let mut buf = Vec::new();
            let mut first = p > 0;
            for ti in p * per_part..(p + 1) * per_part {
                let r0 = (ti * tr).min(out);
                let r1 = (r0 + tr).min(out);
                if r0 == r1 {
                    break;
                }
                dequantize_tile(w, r0, r1, &mut buf);
                let dyv = M { data: dy, rows: n, cols: out, rs: out, cs: 1 }.cols(r0, r1 - r0);
                gemm_bcast(n, cols, r1 - r0, dyv, &buf, cols, acc, cols, !first, 1.0);
                first = false;
            }
            p > 0 && !first
        })
        .collect());
    for (p, _) in partials.chunks_exact(n * cols).zip(&used[1..]).filter(|(_, &u)| u) {
        for (d, s) in dx.iter_mut().zip(p) {
            *d += s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap()
    }

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        c
    }

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    #[test]
    fn gemm_strided_matches_naive() {
        let (m, k, n) = (7, 13, 5);
        let a = vals(m * k, 1);
        let bt = vals(n * k, 2); // stored [n, k], used transposed
        let mut b = vec![0f32; k * n];
        transpose_into(&pool(), &bt, n, k, &mut b);
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![1f32; m * n];
        gemm(&mut c, M::new(&a, m, k), M::new(&bt, n, k).t(), false, 1.0);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        // accumulate with beta
        gemm(&mut c, M::new(&a, m, k), M::new(&b, k, n), true, -1.0);
        assert!(c.iter().all(|x| x.abs() < 1e-4));
    }

    #[test]
    fn tile_dequantization_is_bit_identical_to_the_sdk() {
        for dt in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::F32] {
            let (rows, cols) = (7, 96);
            let w = QMatrix::quantize(dt, rows, cols, &vals(rows * cols, 9)).unwrap();
            let mut buf = Vec::new();
            dequantize_tile(&w, 2, 6, &mut buf);
            let mut want = vec![0f32; 4 * cols];
            for r in 2..6 {
                w.dequantize_row(r, &mut want[(r - 2) * cols..(r - 1) * cols]);
            }
            assert_eq!(buf, want, "{dt:?}");
        }
    }

    #[test]
    fn qlinear_matches_dequantized_dense() {
        let (out, cols, n) = (300, 64, 5);
        let w = QMatrix::quantize(GgmlDType::Q8_0, out, cols, &vals(out * cols, 3)).unwrap();
        let wd = w.dequantize();
        let x = vals(n * cols, 4);
        let mut y = vec![0f32; n * out];
        qlinear_fwd(&pool(), &w, &x, n, &mut y);
        let mut wt = vec![0f32; out * cols];
        transpose_into(&pool(), &wd, out, cols, &mut wt);
        let want = naive(&x, &wt, n, cols, out);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let dy = vals(n * out, 5);
        let mut dx = vec![0.5f32; n * cols];
        qlinear_bwd(&pool(), &w, &dy, n, &mut dx);
        let want = naive(&dy, &wd, n, out, cols);
        for (a, b) in dx.iter().zip(&want) {
            assert!((a - 0.5 - b).abs() < 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// The forward's tiling follows the thread count; its results do not (nor do the
    /// backward's), bit for bit, on odd shapes.
    #[test]
    fn qlinear_does_not_depend_on_the_thread_count() {
        for &(out, cols, n) in &[(37usize, 32usize, 1usize), (300, 64, 5), (1000, 96, 50)] {
            let w = QMatrix::quantize(GgmlDType::Q4_1, out, cols, &vals(out * cols, 7)).unwrap();
            let x = vals(n * cols, 8);
            let dy = vals(n * out, 9);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut y = vec![0f32; n * out];
                qlinear_fwd(&pool, &w, &x, n, &mut y);
                let mut dx = vec![0.25f32; n * cols];
                qlinear_bwd(&pool, &w, &dy, n, &mut dx);
                (y, dx)
            };
            let one = run(1);
            assert_eq!(run(2), one, "{out}x{cols}, n {n}");
            assert_eq!(run(3), one, "{out}x{cols}, n {n}");
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release -p tailor-trainer dequant_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn dequant_speed() {
        let (rows, cols) = (128usize, 576usize);
        let vals: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let w = QMatrix::quantize(GgmlDType::Q4_1, rows, cols, &vals).unwrap();
        let (mut buf, mut bt) = (Vec::new(), vec![0f32; rows * cols]);
        let reps = 2000;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            dequantize_tile(&w, 0, rows, &mut buf);
        }
        let deq = t.elapsed().as_secs_f64() / (reps * rows * cols) as f64 * 1e9;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            transpose_seq(&buf, rows, cols, &mut bt);
        }
        let tr = t.elapsed().as_secs_f64() / (reps * rows * cols) as f64 * 1e9;
        eprintln!("Q4_1 dequantize {deq:.3} ns/value, tile transpose {tr:.3} ns/value");
    }
}
