//! GGML block layouts, byte for byte.
//!
//! Every block stores 32 values. Scales are IEEE half floats kept as their raw bits (`u16`),
//! so each struct has alignment 2 and no padding: a slice of blocks can be viewed in place in
//! a memory-mapped GGUF file (tensor data there is 32-byte aligned) with [`cast_blocks`].
//!
//! 4-bit blocks use ggml's nibble order: value `j` (0..16) is the low nibble of `qs[j]` and
//! value `j + 16` is the high nibble of `qs[j]`.

use bytemuck::{Pod, Zeroable};

/// Number of values in one block, for all four block types here (ggml's `QK4_0`, `QK4_1`,
/// `QK8_0`, `QK8_1`).
pub const QK: usize = 32;

/// `Q4_0`: 32 values `q * d` with `q` in `-8..=7` stored as `q + 8` in 4 bits (ggml
/// `block_q4_0`, 18 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale `d`, f16 bits.
    pub d: u16,
    /// Packed nibbles: value `j` in the low nibble of `qs[j]`, value `j + 16` in its high nibble.
    pub qs: [u8; QK / 2],
}

/// `Q4_1`: 32 values `q * d + m` with `q` in `0..=15` (ggml `block_q4_1`, 20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale `d`, f16 bits.
    pub d: u16,
    /// Offset (minimum) `m`, f16 bits.
    pub m: u16,
    /// Packed nibbles: value `j` in the low nibble of `qs[j]`, value `j + 16` in its high nibble.
    pub qs: [u8; QK / 2],
}

/// `Q8_0`: 32 values `q * d` with `q` an `i8` (ggml `block_q8_0`, 34 bytes).
///
/// ggml's quantizers only produce `q` in `-127..=127`; the SIMD dot products rely on that
/// (as ggml's do) and may differ from the scalar reference on blocks holding `-128`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale `d`, f16 bits.
    pub d: u16,
    /// The quantized values.
    pub qs: [i8; QK],
}

/// `Q8_1`: like [`BlockQ8_0`] plus `s = d * sum(qs)` (as f16), which lets a `Q4_1` dot product
/// apply the weight's offset `m` once per block (ggml `block_q8_1`, 36 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// Scale `d`, f16 bits.
    pub d: u16,
    /// `d * sum(qs)`, f16 bits.
    pub s: u16,
    /// The quantized values.
    pub qs: [i8; QK],
}

// Byte-identical to ggml: sizes and alignment are part of the on-disk format.
const _: () = {
    assert!(std::mem::size_of::<BlockQ4_0>() == 18);
    assert!(std::mem::size_of::<BlockQ4_1>() == 20);
    assert!(std::mem::size_of::<BlockQ8_0>() == 34);
    assert!(std::mem::size_of::<BlockQ8_1>() == 36);
    assert!(std::mem::align_of::<BlockQ4_0>() == 2);
    assert!(std::mem::align_of::<BlockQ4_1>() == 2);
    assert!(std::mem::align_of::<BlockQ8_0>() == 2);
    assert!(std::mem::align_of::<BlockQ8_1>() == 2);
};

// Zeroed blocks are valid (`d = 0`); `Default` for the 32-byte arrays is not derivable.
impl Default for BlockQ8_0 {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl Default for BlockQ8_1 {
    fn default() -> Self {
        Self::zeroed()
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::BlockQ4_0 {}
    impl Sealed for super::BlockQ4_1 {}
    impl Sealed for super::BlockQ8_0 {}
    impl Sealed for super::BlockQ8_1 {}
}

/// A GGML quantization block: plain bytes (any bit pattern is a valid block), 32 values.
///
/// Sealed: implemented by the four block types of this module only.
pub trait Block: Pod + sealed::Sealed {
    /// Number of values the block holds.
    const BLOCK_LEN: usize = QK;
    /// The `ggml_type` id used in GGUF tensor infos (`Q4_0` = 2, `Q4_1` = 3, `Q8_0` = 8,
    /// `Q8_1` = 9).
    const GGML_TYPE: u32;
    /// ggml's name of the type, e.g. `"q4_0"`.
    const NAME: &'static str;
}

impl Block for BlockQ4_0 {
    const GGML_TYPE: u32 = 2;
    const NAME: &'static str = "q4_0";
}

impl Block for BlockQ4_1 {
    const GGML_TYPE: u32 = 3;
    const NAME: &'static str = "q4_1";
}

impl Block for BlockQ8_0 {
    const GGML_TYPE: u32 = 8;
    const NAME: &'static str = "q8_0";
}

impl Block for BlockQ8_1 {
    const GGML_TYPE: u32 = 9;
    const NAME: &'static str = "q8_1";
}

/// Views raw tensor bytes as blocks, without copying.
///
/// Returns `None` if `bytes.len()` is not a multiple of the block size or `bytes` is not
/// 2-byte aligned (GGUF tensor data is 32-byte aligned, so a tensor in a mapped file always
/// passes).
pub fn cast_blocks<B: Block>(bytes: &[u8]) -> Option<&[B]> {
    bytemuck::try_cast_slice(bytes).ok()
}

/// Views blocks as their raw bytes (the GGUF encoding), without copying.
pub fn blocks_as_bytes<B: Block>(blocks: &[B]) -> &[u8] {
    bytemuck::cast_slice(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_ggml() {
        let b = BlockQ4_1 {
            d: 0x1234,
            m: 0x5678,
            qs: std::array::from_fn(|i| i as u8),
        };
        let bytes = blocks_as_bytes(std::slice::from_ref(&b));
        // Little-endian f16 fields first, then the nibbles.
        assert_eq!(&bytes[..4], &[0x34, 0x12, 0x78, 0x56]);
        assert_eq!(bytes[4], 0);
        assert_eq!(bytes[19], 15);

        let q = BlockQ8_1 {
            d: 1,
            s: 2,
            qs: [-3; QK],
        };
        let bytes = blocks_as_bytes(std::slice::from_ref(&q));
        assert_eq!(&bytes[..5], &[1, 0, 2, 0, 0xfd]);
    }

    #[test]
    fn cast_checks_length_and_alignment() {
        // A u16 buffer guarantees 2-byte alignment of its start.
        let buf = vec![0u16; 64];
        let bytes: &[u8] = bytemuck::cast_slice(&buf);
        assert_eq!(
            cast_blocks::<BlockQ4_0>(&bytes[..36]).map(<[_]>::len),
            Some(2)
        );
        assert_eq!(
            cast_blocks::<BlockQ8_0>(&bytes[..34]).map(<[_]>::len),
            Some(1)
        );
        assert_eq!(
            cast_blocks::<BlockQ8_1>(&bytes[..0]).map(<[_]>::len),
            Some(0)
        );
        assert!(cast_blocks::<BlockQ4_0>(&bytes[..35]).is_none());
        assert!(cast_blocks::<BlockQ4_1>(&bytes[1..21]).is_none());
        assert_eq!(
            cast_blocks::<BlockQ4_1>(&bytes[2..22]).map(<[_]>::len),
            Some(1)
        );
    }
}
