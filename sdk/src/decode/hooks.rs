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

/// An additive delta on linear projections: for `y = W·x` the forward computes
/// `y += delta(x)`. LoRA adapters implement this (`delta(x) = s·B(A·x)`).
///
/// Implementations must be deterministic and must not keep references to the buffers.
pub trait LinearDelta: Send + Sync {
    /// Whether this delta touches `proj` of `layer` at all (lets the forward skip the call).
    fn applies_to(&self, layer: usize, proj: Proj) -> bool;

    /// Adds the delta to `out` (`[n_tokens, out_features]`, row-major) given the projection's
    /// input `x` (`[n_tokens, in_features]`, the same f32 values the base matmul consumed).
    fn add_delta(&self, layer: usize, proj: Proj, x: &[f32], n_tokens: usize, out: &mut [f32]);
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
