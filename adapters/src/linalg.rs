//! Small dense f64 linear algebra for LoRA factor arithmetic: a row-major [`Mat`], thin QR
//! by Householder reflections ([`thin_qr`]), the SVD by one-sided Jacobi ([`svd`]), the
//! symmetric eigendecomposition by Householder tridiagonalisation and implicit QL
//! ([`sym_eig`]), and the split of a factorisation into LoRA factors ([`split_sqrt`]).
//!
//! These are the building blocks of [`merge`](crate::merge()) and of the federated
//! aggregation in `tailor-federated`: a weighted sum of LoRA deltas
//! `Σ cᵢ·Bᵢ·Aᵢ = [c₁B₁ … cₙBₙ]·[A₁; …; Aₙ]` is factored without forming the dense matrix
//! by a thin QR of each stacked factor and the SVD of the small core `R_B·R_Aᵀ`.
//!
//! Everything is plain Rust, single-threaded and deterministic (no randomness, a fixed
//! order of operations). Inner loops run over contiguous rows: the QR and the Jacobi SVD
//! work on the transpose internally, so columns are contiguous there.
//!
//! Accuracy: [`thin_qr`] and [`svd`] are backward stable (reconstruction error a few ulps of
//! the matrix norm). [`sym_eig`] is backward stable too; used on a Gram matrix `MᵀM` to get
//! the singular values of `M`, it resolves them to about `sqrt(ε)·σ_max` absolutely
//! (`ε = 2⁻⁵²`), which is what a truncation needs, at about a fifth of the Jacobi cost.
//!
//! # Example
//! ```
//! use tailor_adapters::linalg::{svd, Mat};
//!
//! let m = Mat::from_vec(2, 2, vec![3.0, 0.0, 0.0, -4.0]);
//! let s = svd(&m);
//! assert!((s.s[0] - 4.0).abs() < 1e-12 && (s.s[1] - 3.0).abs() < 1e-12);
//! ```

/// A row-major f64 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    rows: usize,
    cols: usize,
    v: Vec<f64>,
}

impl Mat {
    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self { rows, cols, v: vec![0.0; rows * cols] }
    }

    /// The `n × n` identity.
    pub fn identity(n: usize) -> Self {
        let mut m = Self::zeros(n, n);
        for i in 0..n {
            m.set(i, i, 1.0);
        }
        m
    }

    /// Wraps row-major `values`.
    ///
    /// # Panics
    /// If `values.len() != rows * cols` (a caller bug).
    pub fn from_vec(rows: usize, cols: usize, values: Vec<f64>) -> Self {
        assert_eq!(values.len(), rows * cols, "Mat::from_vec: length is not rows × cols");
        Self { rows, cols, v: values }
    }

    /// Row-major f32 `values` widened to f64.
    ///
    /// # Panics
    /// If `values.len() != rows * cols`.
    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> Self {
        Self::from_vec(rows, cols, values.iter().map(|&x| x as f64).collect())
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The values, row-major.
    pub fn as_slice(&self) -> &[f64] {
        &self.v
    }

    /// The values, row-major, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f64] {
        &mut self.v
    }

    /// The values, row-major, taken.
    pub fn into_vec(self) -> Vec<f64> {
        self.v
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> &[f64] {
        &self.v[r * self.cols..(r + 1) * self.cols]
    }

    /// Row `r`, mutable.
    pub fn row_mut(&mut self, r: usize) -> &mut [f64] {
        &mut self.v[r * self.cols..(r + 1) * self.cols]
    }

    /// The entry at (`r`, `c`).
    pub fn get(&self, r: usize, c: usize) -> f64 {
        self.v[r * self.cols + c]
    }

    /// Sets the entry at (`r`, `c`).
    pub fn set(&mut self, r: usize, c: usize, x: f64) {
        self.v[r * self.cols + c] = x;
    }

    /// The transpose.
    pub fn transpose(&self) -> Mat {
        let mut t = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                t.v[c * self.rows + r] = self.v[r * self.cols + c];
            }
        }
        t
    }

    /// `self · o`.
    ///
    /// # Panics
    /// If the inner dimensions differ.
    pub fn matmul(&self, o: &Mat) -> Mat {
        assert_eq!(self.cols, o.rows, "matmul shapes");
        let mut m = Mat::zeros(self.rows, o.cols);
        for r in 0..self.rows {
            let out = &mut m.v[r * o.cols..(r + 1) * o.cols];
            for k in 0..self.cols {
                let x = self.v[r * self.cols + k];
                if x != 0.0 {
                    axpy(x, &o.v[k * o.cols..(k + 1) * o.cols], out);
                }
            }
        }
        m
    }

    /// `selfᵀ · self` (`cols × cols`, symmetric), by rank-one updates over the rows.
    pub fn gram_cols(&self) -> Mat {
        let n = self.cols;
        let mut g = Mat::zeros(n, n);
        for r in 0..self.rows {
            let x = self.row(r);
            for i in 0..n {
                if x[i] != 0.0 {
                    axpy(x[i], &x[i..], &mut g.v[i * n + i..(i + 1) * n]);
                }
            }
        }
        g.mirror_upper();
        g
    }

    /// `self · selfᵀ` (`rows × rows`, symmetric), by dot products of rows.
    pub fn gram_rows(&self) -> Mat {
        let n = self.rows;
        let mut g = Mat::zeros(n, n);
        for i in 0..n {
            for j in i..n {
                g.v[i * n + j] = dot(self.row(i), self.row(j));
            }
        }
        g.mirror_upper();
        g
    }

    /// Copies the upper triangle onto the lower one.
    fn mirror_upper(&mut self) {
        let n = self.rows;
        for i in 0..n {
            for j in 0..i {
                self.v[i * n + j] = self.v[j * n + i];
            }
        }
    }

    /// The Frobenius norm.
    pub fn frobenius(&self) -> f64 {
        dot(&self.v, &self.v).sqrt()
    }
}

/// `y += a·x`.
#[inline]
pub fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `Σ xᵢ·yᵢ` with four independent accumulators (a fixed order, so deterministic).
#[inline]
pub fn dot(x: &[f64], y: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..4 {
            acc[l] += a[l] * b[l];
        }
    }
    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for (a, b) in xr.iter().zip(yr) {
        s += a * b;
    }
    s
}

/// Thin QR by Householder reflections: `m = Q·R`, `Q` `[rows, k]` with orthonormal columns,
/// `R` `[k, cols]` upper triangular, `k = min(rows, cols)`.
pub fn thin_qr(m: &Mat) -> (Mat, Mat) {
    let (rows, cols) = (m.rows, m.cols);
    let k = rows.min(cols);
    // Column j of the working matrix is row j of `t`.
    let mut t = m.transpose();
    let mut vs: Vec<Vec<f64>> = Vec::with_capacity(k);
    for j in 0..k {
        let col = &t.v[j * rows + j..(j + 1) * rows];
        let norm = dot(col, col).sqrt();
        let mut v: Vec<f64> = col.to_vec();
        let mut keep = false;
        if norm > 0.0 {
            let alpha = if v[0] >= 0.0 { -norm } else { norm };
            v[0] -= alpha;
            let vn = dot(&v, &v).sqrt();
            if vn > 0.0 {
                v.iter_mut().for_each(|x| *x /= vn);
                keep = true;
            }
        }
        if keep {
            for c in j..cols {
                let colc = &mut t.v[c * rows + j..(c + 1) * rows];
                let d = dot(&v, colc);
                axpy(-2.0 * d, &v, colc);
            }
        } else {
            v.iter_mut().for_each(|x| *x = 0.0);
        }
        vs.push(v);
    }
    // Q = H₀·H₁·…·H_{k-1} applied to the first k columns of the identity; column c of Q is
    // row c of `qt`.
    let mut qt = Mat::zeros(k, rows);
    for c in 0..k {
        qt.set(c, c, 1.0);
    }
    for j in (0..k).rev() {
        let v = &vs[j];
        for c in 0..k {
            let qc = &mut qt.v[c * rows + j..(c + 1) * rows];
            let d = dot(v, qc);
            if d != 0.0 {
                axpy(-2.0 * d, v, qc);
            }
        }
    }
    let mut rr = Mat::zeros(k, cols);
    for i in 0..k {
        for c in i..cols {
            rr.set(i, c, t.v[c * rows + i]);
        }
    }
    (qt.transpose(), rr)
}

/// A thin singular value decomposition `m = U·diag(s)·Vᵀ`.
#[derive(Debug, Clone)]
pub struct Svd {
    /// Left singular vectors, `[rows, n]`, orthonormal columns.
    pub u: Mat,
    /// Singular values, descending, `n = min(rows, cols)` of them.
    pub s: Vec<f64>,
    /// Right singular vectors, `[cols, n]`, orthonormal columns.
    pub v: Mat,
}

/// SVD of a small matrix by one-sided Jacobi (accurate to a few ulps even for tiny singular
/// values; `O(n³)` per sweep, about 6–10 sweeps): `m = U·diag(S)·Vᵀ` with `S` descending.
pub fn svd(m: &Mat) -> Svd {
    if m.rows < m.cols {
        let s = svd(&m.transpose());
        return Svd { u: s.v, s: s.s, v: s.u };
    }
    let (rows, n) = (m.rows, m.cols);
    // Columns of the working matrix (converging to U·S) are rows of `a`; likewise for V.
    let mut a = m.transpose();
    let mut v = Mat::identity(n);
    for _sweep in 0..60 {
        let mut off = 0f64;
        for p in 0..n {
            for q in p + 1..n {
                let (ap, aq) = (a.row(p), a.row(q));
                let (alpha, beta, gamma) = (dot(ap, ap), dot(aq, aq), dot(ap, aq));
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                off = off.max(gamma.abs() / (alpha * beta).sqrt());
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = if zeta == 0.0 {
                    1.0
                } else {
                    zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt())
                };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate_rows(&mut a, p, q, c, s);
                rotate_rows(&mut v, p, q, c, s);
            }
        }
        if off <= 1e-15 {
            break;
        }
    }
    let mut order: Vec<(f64, usize)> = (0..n).map(|j| (dot(a.row(j), a.row(j)).sqrt(), j)).collect();
    order.sort_by(|x, y| y.0.total_cmp(&x.0));
    let mut u = Mat::zeros(rows, n);
    let mut vv = Mat::zeros(n, n);
    let mut s = Vec::with_capacity(n);
    for (k, &(sv, j)) in order.iter().enumerate() {
        s.push(sv);
        for i in 0..rows {
            u.set(i, k, if sv > 0.0 { a.get(j, i) / sv } else { 0.0 });
        }
        for i in 0..n {
            vv.set(i, k, v.get(j, i));
        }
    }
    Svd { u, s, v: vv }
}

/// Rows `p < q` of `m` ← `(c·x − s·y, s·x + c·y)`.
fn rotate_rows(m: &mut Mat, p: usize, q: usize, c: f64, s: f64) {
    let cols = m.cols;
    let (head, tail) = m.v.split_at_mut(q * cols);
    let x = &mut head[p * cols..(p + 1) * cols];
    let y = &mut tail[..cols];
    for (x, y) in x.iter_mut().zip(y.iter_mut()) {
        let (a, b) = (*x, *y);
        *x = c * a - s * b;
        *y = s * a + c * b;
    }
}

/// Eigendecomposition of a symmetric matrix: `m = Σ λₖ·vₖ·vₖᵀ`, the eigenvalues descending
/// and **row** `k` of the returned matrix the unit eigenvector `vₖ`. Householder reduction to
/// tridiagonal form and the implicit QL algorithm (Bowdler, Martin, Reinsch and Wilkinson's
/// `tred2`/`tql2`, as in EISPACK and JAMA), about `9n³` flops. Only the lower triangle of
/// `m` is read.
///
/// # Panics
/// If `m` is not square.
pub fn sym_eig(m: &Mat) -> (Vec<f64>, Mat) {
    assert_eq!(m.rows, m.cols, "sym_eig needs a square matrix");
    let n = m.rows;
    if n == 0 {
        return (Vec::new(), Mat::zeros(0, 0));
    }
    // `w` is the transpose of JAMA's V throughout, so every inner loop runs along a row.
    let mut w = m.transpose();
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    tred2(&mut w, &mut d, &mut e);
    tql2(&mut w, &mut d, &mut e);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].total_cmp(&d[i]));
    let mut vecs = Mat::zeros(n, n);
    for (k, &j) in order.iter().enumerate() {
        vecs.row_mut(k).copy_from_slice(w.row(j));
    }
    (order.iter().map(|&j| d[j]).collect(), vecs)
}

#[allow(clippy::needless_range_loop)] // index-for-index the published algorithm
/// Householder tridiagonalisation; `w` holds Vᵀ (JAMA's `V[a][b]` is `w[b][a]`).
fn tred2(w: &mut Mat, d: &mut [f64], e: &mut [f64]) {
    let n = w.rows;
    let at = |w: &Mat, a: usize, b: usize| w.v[b * n + a];
    for j in 0..n {
        d[j] = at(w, n - 1, j);
    }
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = at(w, i - 1, j);
                w.v[j * n + i] = 0.0; // V[i][j]
                w.v[i * n + j] = 0.0; // V[j][i]
            }
        } else {
            for x in d[..i].iter_mut() {
                *x /= scale;
                h += *x * *x;
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].iter_mut().for_each(|x| *x = 0.0);
            for j in 0..i {
                f = d[j];
                w.v[i * n + j] = f; // V[j][i] = f
                g = e[j] + w.v[j * n + j] * f;
                // V[k][j] for k in j+1..i is row j of w.
                let row = &w.v[j * n + j + 1..j * n + i];
                g += dot(row, &d[j + 1..i]);
                axpy(f, row, &mut e[j + 1..i]);
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                let (f, g) = (d[j], e[j]);
                let row = &mut w.v[j * n + j..j * n + i];
                for (x, (ek, dk)) in row.iter_mut().zip(e[j..i].iter().zip(&d[j..i])) {
                    *x -= f * ek + g * dk;
                }
                d[j] = at(w, i - 1, j);
                w.v[j * n + i] = 0.0; // V[i][j]
            }
        }
        d[i] = h;
    }
    // Accumulate the transformations.
    for i in 0..n - 1 {
        w.v[i * n + n - 1] = w.v[i * n + i]; // V[n-1][i] = V[i][i]
        w.v[i * n + i] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = w.v[(i + 1) * n + k] / h; // V[k][i+1]
            }
            for j in 0..=i {
                let g = dot(&w.v[(i + 1) * n..(i + 1) * n + i + 1], &w.v[j * n..j * n + i + 1]);
                axpy(-g, &d[..=i], &mut w.v[j * n..j * n + i + 1]);
            }
        }
        for k in 0..=i {
            w.v[(i + 1) * n + k] = 0.0; // V[k][i+1]
        }
    }
    for j in 0..n {
        d[j] = w.v[j * n + n - 1]; // V[n-1][j]
        w.v[j * n + n - 1] = 0.0;
    }
    w.v[(n - 1) * n + n - 1] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL on the tridiagonal `(d, e)`, accumulating into the rows of `w`.
fn tql2(w: &mut Mat, d: &mut [f64], e: &mut [f64]) {
    let n = w.rows;
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1 = 0f64;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n {
            if e[m].abs() <= eps * tst1 {
                break;
            }
            m += 1;
        }
        if m == n {
            m = n - 1;
        }
        if m > l {
            let mut iter = 0;
            loop {
                iter += 1;
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for x in d[l + 2..].iter_mut() {
                    *x -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    // Columns i, i+1 of V are rows i, i+1 of w.
                    let (head, tail) = w.v.split_at_mut((i + 1) * n);
                    let vi = &mut head[i * n..];
                    let vi1 = &mut tail[..n];
                    for (a, b) in vi.iter_mut().zip(vi1.iter_mut()) {
                        let hb = *b;
                        *b = s * *a + c * hb;
                        *a = c * *a - s * hb;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 || iter >= 64 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
}

/// LoRA factors of `U·diag(s)·Vᵀ` at `rank`: `B = U·√S` (`[rows of U, rank]`) and
/// `A = √S·Vᵀ` (`[rank, rows of V]`), row-major f32, keeping the `rank` largest singular
/// values and zero-padding when there are fewer.
pub fn split_sqrt(u: &Mat, s: &[f64], v: &Mat, rank: usize) -> (Vec<f32>, Vec<f32>) {
    let (d_out, d_in) = (u.rows, v.rows);
    let mut b = vec![0f32; d_out * rank];
    let mut a = vec![0f32; rank * d_in];
    for k in 0..rank.min(s.len()) {
        let root = s[k].max(0.0).sqrt();
        if root == 0.0 {
            continue;
        }
        for o in 0..d_out {
            b[o * rank + k] = (u.get(o, k) * root) as f32;
        }
        for i in 0..d_in {
            a[k * d_in + i] = (v.get(i, k) * root) as f32;
        }
    }
    (b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64, for test inputs.
    struct Rng(u64);
    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn rand_mat(rows: usize, cols: usize, rng: &mut Rng) -> Mat {
        Mat::from_vec(rows, cols, (0..rows * cols).map(|_| rng.unit() * 2.0 - 1.0).collect())
    }

    fn max_abs_diff(a: &Mat, b: &Mat) -> f64 {
        a.v.iter().zip(&b.v).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    fn assert_orthonormal_cols(q: &Mat, tol: f64) {
        let qtq = q.transpose().matmul(q);
        assert!(max_abs_diff(&qtq, &Mat::identity(q.cols)) < tol);
    }

    #[test]
    fn qr_and_svd_reconstruct() {
        let mut rng = Rng(rand::random());
        for (r, c) in [(7, 3), (3, 7), (12, 12), (1, 5), (40, 9)] {
            let m = rand_mat(r, c, &mut rng);
            let (q, rr) = thin_qr(&m);
            assert!(max_abs_diff(&q.matmul(&rr), &m) < 1e-12, "qr {r}x{c}");
            assert_orthonormal_cols(&q, 1e-12);
            let Svd { u, s, v } = svd(&m);
            let mut us = u.clone();
            for i in 0..us.rows {
                for k in 0..s.len() {
                    us.set(i, k, u.get(i, k) * s[k]);
                }
            }
            assert!(max_abs_diff(&us.matmul(&v.transpose()), &m) < 1e-10, "svd {r}x{c}");
            assert!(s.windows(2).all(|w| w[0] >= w[1]));
        }
    }

    #[test]
    fn sym_eig_reconstructs_and_matches_svd() {
        let mut rng = Rng(rand::random());
        for n in [1, 2, 3, 10, 33, 70] {
            let x = rand_mat(n + 5, n, &mut rng);
            let g = x.gram_cols();
            assert!(max_abs_diff(&g, &x.transpose().matmul(&x)) < 1e-12);
            let (vals, vecs) = sym_eig(&g);
            assert!(vals.windows(2).all(|w| w[0] >= w[1]));
            assert_orthonormal_cols(&vecs.transpose(), 1e-11);
            // Σ λ v vᵀ = G.
            let mut back = Mat::zeros(n, n);
            for k in 0..n {
                for i in 0..n {
                    for j in 0..n {
                        back.v[i * n + j] += vals[k] * vecs.get(k, i) * vecs.get(k, j);
                    }
                }
            }
            assert!(max_abs_diff(&back, &g) < 1e-10 * (1.0 + vals[0]), "n = {n}");
            // The eigenvalues of XᵀX are the squared singular values of X.
            let s = svd(&x).s;
            for (l, s) in vals.iter().zip(&s) {
                assert!((l - s * s).abs() < 1e-10 * (1.0 + vals[0]), "n = {n}: {l} vs {}", s * s);
            }
        }
        // A matrix with repeated and zero eigenvalues, and an indefinite one.
        let d = Mat::from_vec(3, 3, vec![2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(sym_eig(&d).0, vec![2.0, 2.0, 0.0]);
        let m = Mat::from_vec(2, 2, vec![0.0, 1.0, 1.0, 0.0]);
        let (vals, _) = sym_eig(&m);
        assert!((vals[0] - 1.0).abs() < 1e-15 && (vals[1] + 1.0).abs() < 1e-15);
        assert_eq!(rand_mat(4, 6, &mut rng).gram_rows().rows(), 4);
    }
}
