//! The key/value cache of one session, preallocated to the context size, stored as f16 or
//! quantized to `Q8_0` / `Q4_0` (llama.cpp's `-ctk` / `-ctv` cache types).

use std::fmt;
use std::str::FromStr;

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use serde::{Deserialize, Serialize};

use crate::kernels::{scalar, BlockQ4_0, BlockQ8_0, Kernels, QK};
use crate::{Error, Result};

/// How keys or values are stored in the KV cache.
///
/// | type | bytes per 32 values | as |
/// | --- | --- | --- |
/// | `f16` | 64 | llama.cpp's default |
/// | `q8_0` | 34 | `-ctk q8_0` / `-ctv q8_0`: one f16 scale and 32 `i8` per block |
/// | `q4_0` | 18 | `-ctk q4_0` / `-ctv q4_0`: one f16 scale and 32 nibbles per block |
///
/// The quantized types need a head dimension that is a multiple of 32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvCacheType {
    /// Half floats (the default).
    #[default]
    #[serde(rename = "f16")]
    F16,
    /// 8-bit blocks of 32 with an f16 scale.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit blocks of 32 with an f16 scale.
    #[serde(rename = "q4_0")]
    Q4_0,
}

impl KvCacheType {
    /// The name llama.cpp uses (`f16`, `q8_0`, `q4_0`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
        }
    }

    /// Bytes one head's row of `head_dim` values takes.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            Self::F16 => 2 * head_dim,
            Self::Q8_0 => head_dim / QK * std::mem::size_of::<BlockQ8_0>(),
            Self::Q4_0 => head_dim / QK * std::mem::size_of::<BlockQ4_0>(),
        }
    }

    /// Checks that this type can store rows of `head_dim` values (the quantized types need a
    /// multiple of 32); the error names the model's head dimension.
    pub fn check_head_dim(self, head_dim: usize) -> Result<()> {
        if self != Self::F16 && head_dim % QK != 0 {
            return Err(Error::invalid(format!(
                "KV cache type {self} needs a head dimension that is a multiple of {QK}; this model's is {head_dim}"
            )));
        }
        Ok(())
    }

    /// Parses `"k,v"` or a single type for both (`--cache-type q8_0,f16`).
    pub fn parse_pair(s: &str) -> Result<(Self, Self)> {
        match s.split_once(',') {
            Some((k, v)) => Ok((k.trim().parse()?, v.trim().parse()?)),
            None => {
                let t: Self = s.trim().parse()?;
                Ok((t, t))
            }
        }
    }
}

impl fmt::Display for KvCacheType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvCacheType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q4_0" | "q4" => Ok(Self::Q4_0),
            other => Err(Error::invalid(format!("unknown KV cache type {other:?} (expected f16, q8_0 or q4_0)"))),
        }
    }
}

/// One head's rows for positions `0..upto`, in the cache's storage type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rows<'a> {
    /// f16 bits, `head_dim` per position.
    F16(&'a [u16]),
    /// `head_dim / 32` blocks per position.
    Q8_0(&'a [BlockQ8_0]),
    /// `head_dim / 32` blocks per position.
    Q4_0(&'a [BlockQ4_0]),
}

/// The keys or the values of every layer: `[layer][kv_head][position][row]`.
struct Plane {
    ty: KvCacheType,
    /// Words (`u16`) per position of one head.
    row_words: usize,
    /// A `u16` buffer (alignment 2, as the blocks need) so that the zeroed allocation stays lazy.
    data: Vec<u16>,
}

impl Plane {
    fn new(ty: KvCacheType, heads_total: usize, capacity: usize, head_dim: usize) -> Self {
        let row_words = ty.row_bytes(head_dim) / 2;
        Self { ty, row_words, data: vec![0u16; heads_total * capacity * row_words] }
    }

    fn rows(&self, start: usize, end: usize) -> Rows<'_> {
        let words = &self.data[start * self.row_words..end * self.row_words];
        match self.ty {
            KvCacheType::F16 => Rows::F16(words),
            KvCacheType::Q8_0 => Rows::Q8_0(bytemuck::cast_slice(words)),
            KvCacheType::Q4_0 => Rows::Q4_0(bytemuck::cast_slice(words)),
        }
    }

    /// Stores `x` (one head's row) as row `r`.
    fn put(&mut self, r: usize, x: &[f32], k: &Kernels) {
        let words = &mut self.data[r * self.row_words..(r + 1) * self.row_words];
        match self.ty {
            KvCacheType::F16 => words.reinterpret_cast_mut::<f16>().convert_from_f32_slice(x),
            KvCacheType::Q8_0 => (k.quantize_q8_0)(x, bytemuck::cast_slice_mut(words)),
            KvCacheType::Q4_0 => scalar::quantize_row_q4_0(x, bytemuck::cast_slice_mut(words)),
        }
    }

    /// Row `r` as f32.
    fn get(&self, r: usize, out: &mut [f32]) {
        let words = &self.data[r * self.row_words..(r + 1) * self.row_words];
        match self.ty {
            KvCacheType::F16 => words.reinterpret_cast::<f16>().convert_to_f32_slice(out),
            KvCacheType::Q8_0 => scalar::dequantize_row_q8_0(bytemuck::cast_slice(words), out),
            KvCacheType::Q4_0 => scalar::dequantize_row_q4_0(bytemuck::cast_slice(words), out),
        }
    }
}

/// Keys and values of every layer for positions `0..len`, stored as f16 (as llama.cpp does:
/// half the memory of f32, and the same rounding as the peer we compare with) or quantized
/// ([`KvCacheType`]).
///
/// Layout: `[layer][kv_head][position][head_dim]`, so that attention for one head reads one
/// contiguous run. The buffers are allocated zeroed at full size once; the operating system
/// backs pages only as positions are written, so a short conversation costs little memory.
pub struct KvCache {
    n_layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    k: Plane,
    v: Plane,
}

impl fmt::Debug for KvCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvCache")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("k", &self.k.ty)
            .field("v", &self.v.ty)
            .finish()
    }
}

impl KvCache {
    /// An f16 cache for `capacity` positions.
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        Self::with_types(n_layers, n_kv_heads, head_dim, capacity, KvCacheType::F16, KvCacheType::F16)
            .expect("an f16 cache fits any head dimension")
    }

    /// A cache for `capacity` positions storing keys as `k` and values as `v`; a quantized
    /// type needs `head_dim` to be a multiple of 32.
    pub fn with_types(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        k: KvCacheType,
        v: KvCacheType,
    ) -> Result<Self> {
        k.check_head_dim(head_dim)?;
        v.check_head_dim(head_dim)?;
        let heads = n_layers * n_kv_heads;
        Ok(Self {
            n_layers,
            n_kv_heads,
            head_dim,
            capacity,
            len: 0,
            k: Plane::new(k, heads, capacity, head_dim),
            v: Plane::new(v, heads, capacity, head_dim),
        })
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

    /// The storage types of keys and values.
    pub fn types(&self) -> (KvCacheType, KvCacheType) {
        (self.k.ty, self.v.ty)
    }

    /// Bytes one position takes (keys and values of every layer and head).
    pub fn bytes_per_token(&self) -> usize {
        self.n_layers * self.n_kv_heads * 2 * (self.k.row_words + self.v.row_words)
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

    fn row(&self, layer: usize, head: usize, pos: usize) -> usize {
        debug_assert!(layer < self.n_layers && head < self.n_kv_heads && pos < self.capacity);
        (layer * self.n_kv_heads + head) * self.capacity + pos
    }

    /// Writes key and value of `head` at `pos` for `layer`.
    pub(crate) fn write(&mut self, layer: usize, head: usize, pos: usize, k: &[f32], v: &[f32], kern: &Kernels) {
        let r = self.row(layer, head, pos);
        self.k.put(r, k, kern);
        self.v.put(r, v, kern);
    }

    /// Keys and values of `head` for positions `0..upto` of `layer`.
    pub(crate) fn head(&self, layer: usize, head: usize, upto: usize) -> (Rows<'_>, Rows<'_>) {
        let r = self.row(layer, head, 0);
        (self.k.rows(r, r + upto), self.v.rows(r, r + upto))
    }

    /// The key of `head` at `pos` of `layer`, as f32 (tests).
    pub fn key(&self, layer: usize, head: usize, pos: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.head_dim];
        self.k.get(self.row(layer, head, pos), &mut out);
        out
    }

    /// Drops positions `keep..keep + discard` and moves the later ones down by `discard`
    /// (llama.cpp's context shift). Keys carry their position in their rotation, so each
    /// moved key is passed to `rerotate` (which must rotate it back by `discard` positions);
    /// quantized keys are dequantized for that and quantized again. Values move as they are.
    pub(crate) fn shift(&mut self, keep: usize, discard: usize, rerotate: &dyn Fn(&mut [f32]), kern: &Kernels) {
        let end = self.len;
        if discard == 0 || keep >= end {
            return;
        }
        let discard = discard.min(end - keep);
        let moved = end - keep - discard;
        let mut buf = vec![0.0f32; self.head_dim];
        for l in 0..self.n_layers {
            for h in 0..self.n_kv_heads {
                let base = self.row(l, h, 0);
                for p in 0..moved {
                    let (from, to) = (base + keep + discard + p, base + keep + p);
                    self.k.get(from, &mut buf);
                    rerotate(&mut buf);
                    self.k.put(to, &buf, kern);
                    let w = self.v.row_words;
                    self.v.data.copy_within(from * w..(from + 1) * w, to * w);
                }
            }
        }
        self.len = keep + moved;
    }

    /// Bytes allocated (virtual; resident memory grows with [`Self::len`]).
    pub fn allocated_bytes(&self) -> usize {
        (self.k.data.len() + self.v.data.len()) * std::mem::size_of::<u16>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_size() {
        assert_eq!(KvCacheType::parse_pair("q8_0").unwrap(), (KvCacheType::Q8_0, KvCacheType::Q8_0));
        assert_eq!(KvCacheType::parse_pair("q4_0, f16").unwrap(), (KvCacheType::Q4_0, KvCacheType::F16));
        assert!(KvCacheType::parse_pair("q5_1").is_err());
        assert_eq!(KvCacheType::F16.row_bytes(64), 128);
        assert_eq!(KvCacheType::Q8_0.row_bytes(64), 68);
        assert_eq!(KvCacheType::Q4_0.row_bytes(64), 36);
        assert!(KvCacheType::Q8_0.row_bytes(64) * 2 < KvCacheType::F16.row_bytes(64) * 2);
        assert!(KvCache::with_types(1, 1, 48, 4, KvCacheType::Q8_0, KvCacheType::F16).is_err());
    }

    #[test]
    fn rows_round_trip_within_the_type_error() {
        let kern = Kernels::detect();
        for ty in [KvCacheType::F16, KvCacheType::Q8_0, KvCacheType::Q4_0] {
            let mut c = KvCache::with_types(2, 2, 64, 8, ty, ty).unwrap();
            let x: Vec<f32> = (0..64).map(|i| ((i * 7919 % 61) as f32 - 30.0) / 10.0).collect();
            c.write(1, 1, 3, &x, &x, kern);
            c.advance(4);
            let back = c.key(1, 1, 3);
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let tol = match ty {
                KvCacheType::F16 => 2e-3 * amax,
                KvCacheType::Q8_0 => amax / 127.0,
                KvCacheType::Q4_0 => amax / 7.0,
            };
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{ty}: {a} vs {b}");
            }
            assert_eq!(c.bytes_per_token(), 2 * 2 * 2 * ty.row_bytes(64));
        }
    }

    #[test]
    fn shift_moves_rows_down_and_rerotates_keys() {
        let kern = Kernels::scalar();
        let mut c = KvCache::with_types(1, 1, 32, 10, KvCacheType::F16, KvCacheType::F16).unwrap();
        for p in 0..10 {
            let x = vec![p as f32; 32];
            c.write(0, 0, p, &x, &x, kern);
        }
        c.advance(10);
        c.shift(2, 3, &|k: &mut [f32]| k.iter_mut().for_each(|x| *x += 100.0), kern);
        assert_eq!(c.len(), 7);
        assert_eq!(c.key(0, 0, 1)[0], 1.0, "kept positions are untouched");
        assert_eq!(c.key(0, 0, 2)[0], 105.0, "position 5 moved to 2 and was re-rotated");
        assert_eq!(c.key(0, 0, 6)[0], 109.0);
        let (_, v) = c.head(0, 0, 7);
        let Rows::F16(v) = v else { panic!() };
        assert_eq!(f16::from_bits(v[2 * 32]).to_f32(), 5.0, "values move as they are");
    }
}
