//! Row order of the query and key projections: Hugging Face checkpoints (and so PEFT
//! adapters) keep each head's rotary pairs as halves `(i, i + d/2)`, while llama.cpp's
//! converter permutes the rows of `q_proj` / `k_proj` of llama-architecture models so that the
//! pairs are adjacent `(2i, 2i + 1)`. An adapter's `lora_B` for those projections (its rows
//! are output rows) must be permuted the same way to run on a GGUF llama base, and back to be
//! saved for PEFT. `lora_A` is untouched (the input side does not change).
//!
//! The permutation is llama.cpp's `permute(w, n_head)`: reshape the rows as
//! `[n_head, 2, head_dim/2]`, swap the last two axes.

use crate::target::Target;

/// How a base model file orders the output rows of its query and key projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QkLayout {
    /// As in the Hugging Face checkpoint (GGUF files of NeoX-RoPE models such as Qwen2).
    #[default]
    Hf,
    /// Permuted by llama.cpp's converter for interleaved RoPE (GGUF `llama` files).
    Interleaved {
        /// Query heads.
        n_heads: usize,
        /// Key/value heads.
        n_kv_heads: usize,
    },
}

impl QkLayout {
    /// The number of heads whose rows are permuted for `target`, if any.
    fn heads(self, target: Target) -> Option<usize> {
        match (self, target) {
            (QkLayout::Interleaved { n_heads, .. }, Target::Q) => Some(n_heads),
            (QkLayout::Interleaved { n_kv_heads, .. }, Target::K) => Some(n_kv_heads),
            _ => None,
        }
    }

    /// For each row of the model file's layout, the Hugging Face row it holds (`None` when
    /// `target` is not permuted or `out` is not a whole number of even-width heads).
    pub fn file_to_hf_rows(self, target: Target, out: usize) -> Option<Vec<usize>> {
        let heads = self.heads(target)?;
        if heads == 0 || out % heads != 0 || (out / heads) % 2 != 0 {
            return None;
        }
        let hd = out / heads;
        let half = hd / 2;
        Some(
            (0..out)
                .map(|row| {
                    let (h, j) = (row / hd, row % hd);
                    // File row (h, i, s) with j = 2i + s holds HF row (h, s, i).
                    h * hd + (j % 2) * half + j / 2
                })
                .collect(),
        )
    }

    /// `B` (`[out, r]`, rows in Hugging Face order) with its rows in the model file's order.
    pub fn hf_to_file(self, target: Target, b: &[f32], out: usize, r: usize) -> Vec<f32> {
        match self.file_to_hf_rows(target, out) {
            None => b.to_vec(),
            Some(map) => map.iter().flat_map(|&src| b[src * r..(src + 1) * r].iter().copied()).collect(),
        }
    }

    /// The inverse of [`hf_to_file`](Self::hf_to_file).
    pub fn file_to_hf(self, target: Target, b: &[f32], out: usize, r: usize) -> Vec<f32> {
        match self.file_to_hf_rows(target, out) {
            None => b.to_vec(),
            Some(map) => {
                let mut hf = vec![0f32; b.len()];
                for (row, &dst) in map.iter().enumerate() {
                    hf[dst * r..(dst + 1) * r].copy_from_slice(&b[row * r..(row + 1) * r]);
                }
                hf
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `permute`, written the numpy way: reshape, swap axes, reshape.
    fn numpy_permute(w: &[f32], n_head: usize, out: usize, cols: usize) -> Vec<f32> {
        let half = out / n_head / 2;
        let mut res = vec![0f32; w.len()];
        // res[h, i, s, :] = w[h, s, i, :]
        for h in 0..n_head {
            for s in 0..2 {
                for i in 0..half {
                    let src = (h * 2 + s) * half + i;
                    let dst = (h * half + i) * 2 + s;
                    res[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        res
    }

    #[test]
    fn matches_llama_cpp_permute_and_inverts() {
        let layout = QkLayout::Interleaved { n_heads: 3, n_kv_heads: 1 };
        for (target, heads, out) in [(Target::Q, 3, 24), (Target::K, 1, 8)] {
            let r = 2;
            let b: Vec<f32> = (0..out * r).map(|i| i as f32).collect();
            let file = layout.hf_to_file(target, &b, out, r);
            assert_eq!(file, numpy_permute(&b, heads, out, r), "{target:?}");
            assert_eq!(layout.file_to_hf(target, &file, out, r), b);
        }
        let b: Vec<f32> = (0..16).map(|i| i as f32).collect();
        assert_eq!(layout.hf_to_file(Target::V, &b, 8, 2), b);
        assert_eq!(QkLayout::Hf.hf_to_file(Target::Q, &b, 8, 2), b);
    }
}
