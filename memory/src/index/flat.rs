//! The vectors of an index: `(id, vector)` rows, the vectors back to back in one contiguous
//! `f32` matrix, and the exact scan over it (SIMD dot products, a bounded heap for the top
//! `k`, split over threads when the matrix is large).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::hnsw::{Cand, Rows};
use super::simd::kernel;

/// A filter on node ids that threads can share.
pub type Allow<'a> = &'a (dyn Fn(usize) -> bool + Sync);

/// `(id, vector)` rows; row `i` is `data[i * dim..(i + 1) * dim]`.
#[derive(Clone, Default)]
pub(super) struct Vectors {
    pub(super) dim: usize,
    pub(super) ids: Vec<usize>,
    pub(super) data: Vec<f32>,
}

/// Matrices at least this many values are scanned on several threads (≈ 5,000 × 384).
const PARALLEL_VALUES: usize = 2_000_000;

impl Vectors {
    /// No rows, room for `capacity`.
    pub(super) fn with_capacity(dim: usize, capacity: usize) -> Self {
        Vectors { dim, ids: Vec::with_capacity(capacity), data: Vec::with_capacity(capacity * dim) }
    }

    /// Rows from pairs (each vector of length `dim`, checked by the caller).
    pub(super) fn from_items(dim: usize, items: &[(usize, Vec<f32>)]) -> Self {
        let mut v = Vectors::with_capacity(dim, items.len());
        for (id, x) in items {
            v.push(*id, x);
        }
        v
    }

    /// Appends a row.
    pub(super) fn push(&mut self, id: usize, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        self.ids.push(id);
        self.data.extend_from_slice(v);
    }

    /// Number of rows.
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Row `i`'s vector.
    pub(super) fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The matrix as the graph sees it.
    pub(super) fn rows(&self) -> Rows<'_> {
        Rows { data: &self.data, dim: self.dim }
    }

    /// The `k` rows most similar to `q` whose id `ok` accepts, best first (ties by id), as
    /// `(id, similarity)`.
    pub(super) fn exact(&self, q: &[f32], k: usize, ok: Allow<'_>, threads: usize) -> Vec<(usize, f32)> {
        if k == 0 || self.dim == 0 || q.len() != self.dim {
            return Vec::new();
        }
        let n = self.len();
        let threads = if n * self.dim >= PARALLEL_VALUES { threads.clamp(1, 8) } else { 1 };
        let mut top: Vec<Cand> = if threads == 1 {
            self.scan(q, k, ok, 0..n)
        } else {
            let per = n.div_ceil(threads);
            std::thread::scope(|s| {
                let parts: Vec<_> = (0..threads)
                    .map(|t| {
                        let r = (t * per).min(n)..((t + 1) * per).min(n);
                        s.spawn(move || self.scan(q, k, ok, r))
                    })
                    .collect();
                parts.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
            })
        };
        let mut out: Vec<(usize, f32)> = top.drain(..).map(|c| (self.ids[c.id as usize], c.sim)).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
        out
    }

    /// The top `k` of rows `range` (unordered).
    fn scan(&self, q: &[f32], k: usize, ok: Allow<'_>, range: std::ops::Range<usize>) -> Vec<Cand> {
        let dot = kernel().0;
        let mut heap: BinaryHeap<Reverse<Cand>> = BinaryHeap::with_capacity(k + 1);
        for i in range {
            let s = dot(q, self.row(i));
            if heap.len() >= k && heap.peek().is_some_and(|w| s <= w.0.sim) {
                continue;
            }
            if !ok(self.ids[i]) {
                continue;
            }
            heap.push(Reverse(Cand { sim: s, id: i as u32 }));
            if heap.len() > k {
                heap.pop();
            }
        }
        heap.into_iter().map(|r| r.0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::simd::dot_scalar;
    use crate::testing::random_unit;

    fn reference(v: &Vectors, q: &[f32], k: usize, ok: &dyn Fn(usize) -> bool) -> Vec<usize> {
        let mut all: Vec<(usize, f32)> =
            (0..v.len()).filter(|&i| ok(v.ids[i])).map(|i| (v.ids[i], dot_scalar(q, v.row(i)))).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.into_iter().take(k).map(|x| x.0).collect()
    }

    #[test]
    fn exact_scan_is_the_sorted_reference_serial_and_parallel() {
        let dim = 24;
        let items: Vec<(usize, Vec<f32>)> = (0..700).map(|i| (3 * i + 1, random_unit(dim, 11 + i as u64))).collect();
        let v = Vectors::from_items(dim, &items);
        let odd = |id: usize| id % 2 == 1;
        let all = |_: usize| true;
        for (s, k) in [(1u64, 1usize), (2, 10), (3, 100), (4, 700), (5, 1000)] {
            let q = random_unit(dim, 10_000 + s);
            for ok in [&odd as Allow<'_>, &all] {
                let want = reference(&v, &q, k, ok);
                for threads in [1, 3] {
                    let got: Vec<usize> = match threads {
                        1 => v.exact(&q, k, ok, 1).into_iter().map(|x| x.0).collect(),
                        _ => {
                            // Force the parallel path on a small matrix.
                            let mut top: Vec<Cand> = Vec::new();
                            let per = v.len().div_ceil(threads);
                            for t in 0..threads {
                                top.extend(v.scan(&q, k, ok, (t * per).min(v.len())..((t + 1) * per).min(v.len())));
                            }
                            let mut out: Vec<(usize, f32)> = top.into_iter().map(|c| (v.ids[c.id as usize], c.sim)).collect();
                            out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                            out.into_iter().take(k).map(|x| x.0).collect()
                        }
                    };
                    assert_eq!(got, want, "k = {k}, threads = {threads}");
                }
            }
        }
        assert!(v.exact(&items[0].1, 0, &all, 1).is_empty());
        assert!(Vectors::with_capacity(dim, 0).exact(&items[0].1, 5, &all, 2).is_empty());
    }

    #[test]
    fn large_scan_on_threads_matches_one_thread() {
        let dim = 384;
        let n = PARALLEL_VALUES / dim + 100;
        let items: Vec<(usize, Vec<f32>)> = (0..n).map(|i| (i, random_unit(dim, i as u64))).collect();
        let v = Vectors::from_items(dim, &items);
        let q = random_unit(dim, 1 << 33);
        let all = |_: usize| true;
        assert_eq!(v.exact(&q, 10, &all, 2), v.exact(&q, 10, &all, 1));
    }
}
