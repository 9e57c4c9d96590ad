//! The key/value cache of one session, preallocated to the context size.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// Keys and values of every layer for positions `0..len`, stored as f16 (as llama.cpp does:
/// half the memory of f32, and the same rounding as the peer we compare with).
///
/// Layout: `[layer][kv_head][position][head_dim]`, so that attention for one head reads one
/// contiguous run. The buffers are allocated zeroed at full size once; the operating system
/// backs pages only as positions are written, so a short conversation costs little memory.
#[derive(Debug)]
pub struct KvCache {
    n_layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    /// f16 bits (a `u16` buffer so that the zeroed allocation stays lazy).
    k: Vec<u16>,
    v: Vec<u16>,
}

impl KvCache {
    /// A cache for `capacity` positions.
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        let n = n_layers * n_kv_heads * capacity * head_dim;
        Self { n_layers, n_kv_heads, head_dim, capacity, len: 0, k: vec![0u16; n], v: vec![0u16; n] }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position from `len` on (keeps a prefix for reuse).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Marks `n` more positions as written (after a forward wrote them).
    pub(crate) fn advance(&mut self, n: usize) {
        assert!(self.len + n <= self.capacity, "KV cache overflow");
        self.len += n;
    }

    fn base(&self, layer: usize, head: usize) -> usize {
        debug_assert!(layer < self.n_layers && head < self.n_kv_heads);
        (layer * self.n_kv_heads + head) * self.capacity * self.head_dim
    }

    /// Writes key and value of `head` at `pos` for `layer`.
    pub(crate) fn write(&mut self, layer: usize, head: usize, pos: usize, k: &[f32], v: &[f32]) {
        let o = self.base(layer, head) + pos * self.head_dim;
        self.k[o..o + self.head_dim].reinterpret_cast_mut::<f16>().convert_from_f32_slice(k);
        self.v[o..o + self.head_dim].reinterpret_cast_mut::<f16>().convert_from_f32_slice(v);
    }

    /// Keys and values (f16 bits) of `head` for positions `0..upto` of `layer`.
    pub(crate) fn head(&self, layer: usize, head: usize, upto: usize) -> (&[u16], &[u16]) {
        let o = self.base(layer, head);
        let e = o + upto * self.head_dim;
        (&self.k[o..e], &self.v[o..e])
    }

    /// Bytes allocated (virtual; resident memory grows with [`Self::len`]).
    pub fn allocated_bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<u16>()
    }
}
