//! Our HNSW graph (Malkov & Yashunin, 2016): the links only. The vectors stay in the index's
//! contiguous matrix ([`super::flat::Vectors`]) and every call borrows it, so the graph adds
//! about `4 · 2M` bytes per node to the vectors (1.1× the raw f32 vectors at 384-d, M = 16).
//!
//! - Similarity is the dot product (the vectors are unit length, so it is the cosine), through
//!   the SIMD kernel of [`super::simd`].
//! - Neighbours are chosen with the paper's heuristic (algorithm 4, as hnswlib does); layer 0
//!   keeps up to `2M` links, upper layers `M`.
//! - Building is parallel: each node's links sit behind their own lock, no thread ever holds
//!   two, and nodes are handed to the threads through an atomic counter (hnswlib's scheme).
//! - Node levels come from a seeded generator keyed by the node number, so a graph is the same
//!   on every target for the same insertion order; the saved format is in [`super::file`].

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Mutex, MutexGuard};

use super::simd::{kernel, prefetch, DotFn};

/// A node's links, one list per level it is on (`0..=level`).
pub(super) type Links = Vec<Vec<u32>>;

/// The HNSW links over the rows of a vector matrix (node `i` is row `i`).
pub(super) struct Hnsw {
    /// Links per node on upper levels (`M`); layer 0 keeps `2M`.
    pub(super) m: usize,
    pub(super) ef_construction: usize,
    links: Vec<Mutex<Links>>,
    /// The entry point and the top level (`None` while empty).
    entry: Mutex<Option<(u32, usize)>>,
}

/// A candidate: a node and its similarity to the query (ordered by similarity, then node).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Cand {
    pub(super) sim: f32,
    pub(super) id: u32,
}

impl Eq for Cand {}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sim.total_cmp(&other.sim).then(other.id.cmp(&self.id))
    }
}

/// Per-thread "visited" marks, reset in O(1) by moving to the next epoch.
struct Visited {
    marks: Vec<u16>,
    epoch: u16,
}

thread_local! {
    static VISITED: RefCell<Visited> = const { RefCell::new(Visited { marks: Vec::new(), epoch: 0 }) };
}

impl Visited {
    fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `i`; whether it was unmarked.
    #[inline]
    fn insert(&mut self, i: u32) -> bool {
        let m = &mut self.marks[i as usize];
        if *m == self.epoch {
            false
        } else {
            *m = self.epoch;
            true
        }
    }
}

fn lock(m: &Mutex<Links>) -> MutexGuard<'_, Links> {
    // A panic while a list was being replaced leaves a whole (old or new) list: go on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The level of node `i`: `floor(-ln(u) · mL)` with `mL = 1 / ln(M)`, `u` from a
/// splitmix64 of `i` (the same on every machine), capped at 16.
pub(super) fn level_of(i: usize, m: usize) -> usize {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64; // in (0, 1]
    let ml = 1.0 / (m.max(2) as f64).ln();
    ((-u.ln() * ml) as usize).min(16)
}

/// The matrix a graph is over: `n` rows of `dim` values.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub(super) data: &'a [f32],
    pub(super) dim: usize,
}

impl<'a> Rows<'a> {
    #[inline]
    fn row(&self, i: u32) -> &'a [f32] {
        let s = i as usize * self.dim;
        &self.data[s..s + self.dim]
    }

    fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }
}

impl Hnsw {
    /// An empty graph.
    pub(super) fn new(m: usize, ef_construction: usize) -> Self {
        Hnsw { m: m.clamp(2, 128), ef_construction: ef_construction.max(1), links: Vec::new(), entry: Mutex::new(None) }
    }

    /// A graph over every row of `rows`, built on `threads` threads.
    pub(super) fn build(rows: Rows<'_>, m: usize, ef_construction: usize, threads: usize) -> Self {
        let mut g = Hnsw::new(m, ef_construction);
        g.extend(rows, threads);
        g
    }

    /// A graph from saved parts (checked by the caller: every link `< links.len()`, the
    /// entry's level the highest).
    pub(super) fn from_parts(m: usize, ef_construction: usize, links: Vec<Links>, entry: Option<(u32, usize)>) -> Self {
        Hnsw { m, ef_construction, links: links.into_iter().map(Mutex::new).collect(), entry: Mutex::new(entry) }
    }

    /// Nodes in the graph (rows `0..len()`).
    pub(super) fn len(&self) -> usize {
        self.links.len()
    }

    /// The entry point and top level.
    pub(super) fn entry(&self) -> Option<(u32, usize)> {
        *self.entry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` with each node's links.
    pub(super) fn for_each_links(&self, f: &mut dyn FnMut(&Links)) {
        for l in &self.links {
            f(&lock(l));
        }
    }

    /// Adds the rows of `rows` past [`Hnsw::len`] (in parallel when there are many).
    pub(super) fn extend(&mut self, rows: Rows<'_>, threads: usize) {
        let start = self.len();
        let end = rows.len();
        if end <= start {
            return;
        }
        self.links.extend((start..end).map(|i| Mutex::new(vec![Vec::new(); level_of(i, self.m) + 1])));
        let mut next = start;
        if self.entry().is_none() {
            self.insert(rows, start as u32, kernel().0);
            next += 1;
        }
        let threads = threads.max(1).min((end - next) / 256 + 1);
        if threads <= 1 {
            for i in next..end {
                self.insert(rows, i as u32, kernel().0);
            }
            return;
        }
        let counter = AtomicUsize::new(next);
        let this = &*self;
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let dot = kernel().0;
                    loop {
                        let i = counter.fetch_add(1, AtomicOrdering::Relaxed);
                        if i >= end {
                            break;
                        }
                        this.insert(rows, i as u32, dot);
                    }
                });
            }
        });
    }

    /// Links node `i` (whose link lists exist, empty) into the graph.
    fn insert(&self, rows: Rows<'_>, i: u32, dot: DotFn) {
        let q = rows.row(i);
        let level = lock(&self.links[i as usize]).len() - 1;
        let Some((ep, top)) = ({
            let mut e = self.entry.lock().unwrap_or_else(|e| e.into_inner());
            let cur = *e;
            if cur.is_none() {
                *e = Some((i, level));
            }
            cur
        }) else {
            return;
        };
        let mut cur = Cand { sim: dot(q, rows.row(ep)), id: ep };
        for lev in (level + 1..=top).rev() {
            cur = self.greedy(rows, q, cur, lev, dot);
        }
        let mut eps = vec![cur];
        let mut nbrs = Vec::new();
        for lev in (0..=level.min(top)).rev() {
            let mut found = self.search_layer(rows, q, &eps, self.ef_construction, lev, None, dot);
            // Another thread may have linked a neighbour back to `i` already: not itself.
            found.retain(|c| c.id != i);
            if found.is_empty() {
                continue;
            }
            select(rows, &found, self.m, dot, &mut nbrs);
            let cap = if lev == 0 { 2 * self.m } else { self.m };
            self.set_own(rows, i, lev, &nbrs, cap, dot);
            for c in &nbrs {
                self.link(rows, c.id, Cand { sim: c.sim, id: i }, lev, cap, dot);
            }
            eps = found;
        }
        if level > top {
            let mut e = self.entry.lock().unwrap_or_else(|e| e.into_inner());
            if e.is_none_or(|(_, t)| level > t) {
                *e = Some((i, level));
            }
        }
    }

    /// Sets node `i`'s list at `lev` to `nbrs`, keeping the links other threads added to it
    /// meanwhile (a node is reachable on a level as soon as its upper level is linked; an
    /// overwrite would drop their reverse links and could leave them unreachable), pruned
    /// with the heuristic when over `cap`.
    fn set_own(&self, rows: Rows<'_>, i: u32, lev: usize, nbrs: &[Cand], cap: usize, dot: DotFn) {
        let mut l = lock(&self.links[i as usize]);
        let Some(list) = l.get_mut(lev) else { return };
        let others: Vec<u32> = list.iter().copied().filter(|x| *x != i && !nbrs.iter().any(|c| c.id == *x)).collect();
        if nbrs.len() + others.len() <= cap {
            *list = nbrs.iter().map(|c| c.id).chain(others).collect();
            return;
        }
        let v = rows.row(i);
        let mut cands: Vec<Cand> = nbrs.iter().copied().chain(others.iter().map(|&x| Cand { sim: dot(v, rows.row(x)), id: x })).collect();
        cands.sort_unstable_by(|a, b| b.cmp(a));
        let mut kept = Vec::with_capacity(cap);
        select(rows, &cands, cap, dot, &mut kept);
        *list = kept.iter().map(|c| c.id).collect();
    }

    /// Adds `new` to `node`'s list at `lev`, pruning it with the heuristic when full.
    fn link(&self, rows: Rows<'_>, node: u32, new: Cand, lev: usize, cap: usize, dot: DotFn) {
        if node == new.id {
            return;
        }
        // The pruning (O(cap²) dot products) runs without the lock, on a copy of the list: a
        // thread descheduled while holding a lock would stall every search passing the node.
        // If the list changed meanwhile, once more; then under the lock.
        for attempt in 0..3 {
            let snapshot: Vec<u32> = {
                let mut l = lock(&self.links[node as usize]);
                let Some(list) = l.get_mut(lev) else { return };
                if list.contains(&new.id) {
                    return;
                }
                if list.len() < cap {
                    list.push(new.id);
                    return;
                }
                if attempt == 2 {
                    let kept = prune(rows, node, list, new, cap, dot);
                    *list = kept;
                    return;
                }
                list.clone()
            };
            let kept = prune(rows, node, &snapshot, new, cap, dot);
            let mut l = lock(&self.links[node as usize]);
            let Some(list) = l.get_mut(lev) else { return };
            if *list == snapshot {
                *list = kept;
                return;
            }
        }
    }

    /// Greedy walk to a local best on one level.
    fn greedy(&self, rows: Rows<'_>, q: &[f32], mut cur: Cand, lev: usize, dot: DotFn) -> Cand {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if let Some(l) = lock(&self.links[cur.id as usize]).get(lev) {
                buf.extend_from_slice(l);
            }
            let mut moved = false;
            for &nb in &buf {
                let s = dot(q, rows.row(nb));
                if s > cur.sim {
                    cur = Cand { sim: s, id: nb };
                    moved = true;
                }
            }
            if !moved {
                return cur;
            }
        }
    }

    /// The `ef` best nodes found from `eps` on level `lev`, best first; with `ok`, only nodes
    /// it accepts are returned (the others are still walked through).
    #[allow(clippy::too_many_arguments)]
    fn search_layer(
        &self,
        rows: Rows<'_>,
        q: &[f32],
        eps: &[Cand],
        ef: usize,
        lev: usize,
        ok: Option<&dyn Fn(u32) -> bool>,
        dot: DotFn,
    ) -> Vec<Cand> {
        VISITED.with(|v| {
            let mut visited = v.borrow_mut();
            visited.reset(self.links.len());
            let mut todo: BinaryHeap<Cand> = BinaryHeap::with_capacity(ef * 2);
            let mut best: BinaryHeap<Reverse<Cand>> = BinaryHeap::with_capacity(ef + 1);
            for &e in eps {
                if visited.insert(e.id) {
                    todo.push(e);
                    if ok.is_none_or(|f| f(e.id)) {
                        best.push(Reverse(e));
                    }
                }
            }
            while best.len() > ef {
                best.pop();
            }
            let mut buf: Vec<u32> = Vec::with_capacity(2 * self.m);
            while let Some(c) = todo.pop() {
                if best.len() >= ef && best.peek().is_some_and(|w| c.sim < w.0.sim) {
                    break;
                }
                buf.clear();
                if let Some(l) = lock(&self.links[c.id as usize]).get(lev) {
                    buf.extend(l.iter().copied().filter(|&nb| visited.insert(nb)));
                }
                for &nb in &buf {
                    prefetch(rows.row(nb));
                }
                for &nb in &buf {
                    let s = dot(q, rows.row(nb));
                    if best.len() < ef || best.peek().is_some_and(|w| s > w.0.sim) {
                        let cand = Cand { sim: s, id: nb };
                        todo.push(cand);
                        if ok.is_none_or(|f| f(nb)) {
                            best.push(Reverse(cand));
                            if best.len() > ef {
                                best.pop();
                            }
                        }
                    }
                }
            }
            let mut out: Vec<Cand> = best.into_iter().map(|r| r.0).collect();
            out.sort_unstable_by(|a, b| b.cmp(a));
            out
        })
    }

    /// Up to `k` nodes near `q` that `ok` accepts, best first, with candidate list `ef`.
    pub(super) fn search(&self, rows: Rows<'_>, q: &[f32], k: usize, ef: usize, ok: &dyn Fn(u32) -> bool) -> Vec<Cand> {
        let Some((ep, top)) = self.entry() else { return Vec::new() };
        let dot = kernel().0;
        let mut cur = Cand { sim: dot(q, rows.row(ep)), id: ep };
        for lev in (1..=top).rev() {
            cur = self.greedy(rows, q, cur, lev, dot);
        }
        let mut found = self.search_layer(rows, q, &[cur], ef.max(k), 0, Some(ok), dot);
        found.truncate(k);
        found
    }

    /// Bytes of links (for memory accounting).
    pub(super) fn link_bytes(&self) -> usize {
        let mut b = 0;
        self.for_each_links(&mut |l| b += 24 + l.iter().map(|v| 24 + 4 * v.capacity()).sum::<usize>());
        b + self.links.len() * std::mem::size_of::<Mutex<Links>>()
    }

    /// A node's links, for tests.
    #[cfg(test)]
    pub(super) fn links_of(&self, i: usize) -> Links {
        lock(&self.links[i]).clone()
    }

    /// The node numbers, for tests.
    #[cfg(test)]
    pub(super) fn range(&self) -> std::ops::Range<usize> {
        0..self.len()
    }
}

/// `node`'s links `list` plus `new`, cut to `cap` with the heuristic.
fn prune(rows: Rows<'_>, node: u32, list: &[u32], new: Cand, cap: usize, dot: DotFn) -> Vec<u32> {
    let v = rows.row(node);
    let mut cands: Vec<Cand> = list.iter().map(|&x| Cand { sim: dot(v, rows.row(x)), id: x }).collect();
    cands.push(new);
    cands.sort_unstable_by(|a, b| b.cmp(a));
    let mut kept = Vec::with_capacity(cap);
    select(rows, &cands, cap, dot, &mut kept);
    kept.iter().map(|c| c.id).collect()
}

/// The neighbour heuristic: walk `cands` (best first) and keep one unless a kept node is
/// closer to it than the query is; at most `m` (hnswlib's `getNeighborsByHeuristic2`). Lists
/// are not filled up with the candidates left out: full lists make every later link a prune
/// (O(m²) dot products), which tripled the build time, and reachability does not need it
/// (the test `every_node_is_found_by_its_own_vector`).
fn select(rows: Rows<'_>, cands: &[Cand], m: usize, dot: DotFn, out: &mut Vec<Cand>) {
    out.clear();
    for &c in cands {
        if out.len() >= m {
            break;
        }
        let v = rows.row(c.id);
        if out.iter().all(|r| dot(v, rows.row(r.id)) < c.sim) {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_unit;

    fn matrix(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        (0..n).flat_map(|i| random_unit(dim, seed.wrapping_mul(31) ^ (i as u64) << 8)).collect()
    }

    fn exact(rows: Rows<'_>, q: &[f32], k: usize) -> Vec<u32> {
        let mut all: Vec<Cand> = (0..rows.len() as u32).map(|i| Cand { sim: super::super::simd::dot_scalar(q, rows.row(i)), id: i }).collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        all.into_iter().take(k).map(|c| c.id).collect()
    }

    #[test]
    fn links_are_in_range_and_capped() {
        let dim = 16;
        let data = matrix(3_000, dim, 5);
        let rows = Rows { data: &data, dim };
        let g = Hnsw::build(rows, 8, 64, 2);
        assert_eq!(g.range(), 0..3_000);
        let (ep, top) = g.entry().expect("entry");
        assert_eq!(g.links_of(ep as usize).len() - 1, top);
        for i in 0..g.len() {
            let l = g.links_of(i);
            assert_eq!(l.len() - 1, level_of(i, 8));
            for (lev, list) in l.iter().enumerate() {
                assert!(list.len() <= if lev == 0 { 16 } else { 8 });
                assert!(list.iter().all(|&x| (x as usize) < g.len() && x as usize != i));
                assert!(list.iter().all(|&x| g.links_of(x as usize).len() > lev), "link to a node without level {lev}");
            }
            assert!(!l[0].is_empty(), "node {i} is isolated");
        }
    }

    #[test]
    fn recall_against_brute_force_on_fresh_random_vectors() {
        // Fresh random inputs each run. Random vectors are the hardest case (no structure to
        // navigate); at 5,000 × 32-d with M = 16 and ef = 64, recall@10 is ~0.98: the bound
        // 0.9 leaves room for unlucky draws.
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(3);
        let dim = 32;
        let data = matrix(5_000, dim, seed);
        let rows = Rows { data: &data, dim };
        let mut g = Hnsw::build(Rows { data: &data[..4_000 * dim], dim }, 16, 100, 2);
        g.extend(rows, 1);
        let mut found = 0;
        let queries = 200;
        for j in 0..queries {
            let q = random_unit(dim, seed ^ 0xDEAD_0000 ^ j);
            let truth = exact(rows, &q, 10);
            let got = g.search(rows, &q, 10, 64, &|_| true);
            assert_eq!(got.len(), 10);
            assert!(got.windows(2).all(|w| w[0].sim >= w[1].sim), "best first");
            found += got.iter().filter(|c| truth.contains(&c.id)).count();
        }
        let recall = found as f64 / (10 * queries) as f64;
        assert!(recall >= 0.9, "recall@10 {recall} (seed {seed})");
    }

    #[test]
    fn every_node_is_found_by_its_own_vector() {
        // Reachability: a node the pruning left without in-links would never be found.
        for (n, dim, m) in [(600usize, 32usize, 16usize), (3_000, 32, 16), (2_000, 8, 4)] {
            let data = matrix(n, dim, 17 + n as u64);
            let rows = Rows { data: &data, dim };
            let mut g = Hnsw::build(Rows { data: &data[..n / 2 * dim], dim }, m, 200, 2);
            g.extend(rows, 1);
            let missed: Vec<u32> =
                (0..n as u32).filter(|&i| g.search(rows, rows.row(i), 1, 96, &|_| true).first().map(|c| c.id) != Some(i)).collect();
            assert!(missed.is_empty(), "n {n} dim {dim} m {m}: {} nodes not found: {missed:?}", missed.len());
        }
    }

    #[test]
    fn filtered_search_returns_only_accepted_nodes() {
        let dim = 8;
        let data = matrix(2_000, dim, 9);
        let rows = Rows { data: &data, dim };
        let g = Hnsw::build(rows, 8, 50, 2);
        let q = random_unit(dim, 77);
        let got = g.search(rows, &q, 20, 100, &|i| i % 3 == 0);
        assert_eq!(got.len(), 20);
        assert!(got.iter().all(|c| c.id % 3 == 0));
        assert!(g.search(rows, &q, 5, 10, &|_| false).is_empty());
        assert!(Hnsw::new(8, 10).search(rows, &q, 5, 10, &|_| true).is_empty());
    }
}
