//! Helpers for tests and benchmarks: a deterministic pseudo-random embedder that needs no
//! model, and random unit vectors.

use sha2::{Digest, Sha256};

use crate::embedder::{normalize, Embed};
use crate::error::Result;

/// An embedder giving each distinct text its own pseudo-random unit vector (a hash of the
/// text and a seed), so distinct texts are nearly orthogonal and equal texts collide exactly.
/// Searching with it is searching random vectors: the index can be checked against an exact
/// scan without loading a model.
#[derive(Debug, Clone)]
pub struct HashEmbedder {
    dim: usize,
    seed: u64,
    model_id: String,
}

impl HashEmbedder {
    /// Vectors of length `dim`; a different `seed` gives different vectors.
    pub fn new(dim: usize, seed: u64) -> Self {
        HashEmbedder { dim, seed, model_id: format!("hash-{dim}-{seed}") }
    }

    /// The vector this embedder gives `text`.
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut h = Sha256::new();
        h.update(self.seed.to_le_bytes());
        h.update(text.as_bytes());
        let d = h.finalize();
        random_unit(self.dim, u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8])))
    }
}

impl Embed for HashEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| self.vector(t)).collect())
    }
}

/// A pseudo-random unit vector (Gaussian components, normalised) from `seed`.
pub fn random_unit(dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            // Box-Muller from two uniforms in (0, 1].
            let u1 = ((next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            let u2 = (next() >> 11) as f64 / (1u64 << 53) as f64;
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    normalize(&mut v);
    v
}
