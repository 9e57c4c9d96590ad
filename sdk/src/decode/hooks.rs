//! The two extension points of the forward pass: an additive delta on any linear projection
//! (LoRA) and an addition to the residual stream after any layer (steering vectors).

use std::sync::Arc;

/// A linear projection inside a transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proj {
    /// Attention query projection (`q_proj`, GGUF `attn_q`).
    Q,
    /// Attention key projection (`k_proj`, GGUF `attn_k`).
    K,
    /// Attention value projection (`v_proj`, GGUF `attn_v`).
    V,
    /// Attention output projection (`o_proj`, GGUF `attn_output`).
    O,
    /// MLP gate projection (`gate_proj`, GGUF `ffn_gate`).
    Gate,
    /// MLP up projection (`up_proj`, GGUF `ffn_up`).
    Up,
    /// MLP down projection (`down_proj`, GGUF `ffn_down`).
    Down,
}

impl Proj {
    /// All projections, in forward order.
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];
}

/// One low-rank term of a projection's delta: `y += scale·B(A·x)`, with `A` as
/// `[rank, d_in]` and `B` stored transposed as `bt`, `[rank, d_out]` (row-major, rows in the
/// order of the model file's output rows). LoRA adapters are made of these.
///
/// Both factors are stored as f16 (bits, `half::f16::to_bits`): the delta is read from memory
/// at every token like the base weights, and half the bytes keep a rank-8 adapter on every
/// projection near the base's speed. The products accumulate in f32. f16 keeps 11 significant
/// bits (relative rounding 2⁻¹¹, far below the base's 4-bit quantization error); values
/// beyond its range (|v| > 65504) are refused by [`LowRank::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct LowRank {
    rank: usize,
    d_in: usize,
    d_out: usize,
    a: Vec<u16>,
    bt: Vec<u16>,
}

impl LowRank {
    /// The largest magnitude f16 holds.
    pub const MAX_ABS: f32 = 65504.0;

    /// Rounds `a` (`[rank, d_in]`) and `bt` (`[rank, d_out]`) to f16; `None` if a length is
    /// wrong, a dimension is zero, or a value is not finite or beyond [`Self::MAX_ABS`].
    pub fn new(rank: usize, d_in: usize, d_out: usize, a: &[f32], bt: &[f32]) -> Option<Self> {
        use half::slice::HalfFloatSliceExt;
        let ok = rank > 0 && d_in > 0 && d_out > 0 && Some(a.len()) == rank.checked_mul(d_in) && Some(bt.len()) == rank.checked_mul(d_out);
        // `!(|x| <= MAX)` also catches NaN.
        let in_range = |v: &[f32]| v.iter().fold(true, |ok, x| ok & (x.abs() <= Self::MAX_ABS));
        if !ok || !in_range(a) || !in_range(bt) {
            return None;
        }
        let half = |v: &[f32]| {
            let mut h = vec![half::f16::ZERO; v.len()];
            h.convert_from_f32_slice(v);
            h.into_iter().map(half::f16::to_bits).collect()
        };
        Some(Self { rank, d_in, d_out, a: half(a), bt: half(bt) })
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// `A`, `[rank, d_in]`, f16 bits.
    pub fn a(&self) -> &[u16] {
        &self.a
    }

    /// `Bᵀ`, `[rank, d_out]`, f16 bits.
    pub fn bt(&self) -> &[u16] {
        &self.bt
    }
}

/// A [`LowRank`] factor pair with the scale it runs at (adapter weight × `alpha / r`).
#[derive(Debug, Clone)]
pub struct LowRankTerm {
    /// The factors (shared between sets that use the same adapter).
    pub factors: Arc<LowRank>,
    /// The scale.
    pub scale: f32,
}

/// An additive delta on linear projections: for `y = W·x` the forward computes
/// `y += Σ scaleᵢ·Bᵢ(Aᵢ·x)` over the terms this returns, inside the same parallel pass as the
/// base product. LoRA adapters implement this ([`crate::LoraHook`]).
///
/// An output element whose delta is exactly zero is left untouched, so a term whose `B` is
/// zero leaves the base bit-identical.
pub trait LinearDelta: Send + Sync {
    /// The terms on `proj` of `layer` (empty: none). Their widths must be the projection's.
    fn terms(&self, layer: usize, proj: Proj) -> &[LowRankTerm];
}

/// An addition to the residual stream after a transformer block (activation steering).
pub trait ResidualHook: Send + Sync {
    /// Whether this hook touches the output of `layer`.
    fn applies_to(&self, layer: usize) -> bool;

    /// Called with the residual stream `hidden` (`[n_tokens, d_model]`) after block `layer`;
    /// may add to it (or just read it, e.g. to collect activations).
    fn after_layer(&self, layer: usize, hidden: &mut [f32], n_tokens: usize);
}

/// The hooks a session runs with. Cloning is cheap (reference counts).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Deltas on linear projections (LoRA).
    pub linear: Option<Arc<dyn LinearDelta>>,
    /// Additions to the residual stream (steering).
    pub residual: Option<Arc<dyn ResidualHook>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("linear", &self.linear.is_some())
            .field("residual", &self.residual.is_some())
            .finish()
    }
}

impl Hooks {
    /// No hooks: the base model.
    pub fn none() -> Self {
        Self::default()
    }
}

/// Hooks that change while sessions run (an adapter registry). A session that follows a source
/// takes one snapshot at the start of each generation: a running generation keeps the set it
/// started with, and an update applies to the next generation of every session (whose cache,
/// built with the old set, is then recomputed). No output ever mixes two sets.
pub trait HookSource: Send + Sync {
    /// The current hooks and a generation number that changes whenever they do.
    fn snapshot(&self) -> (u64, Hooks);
}
