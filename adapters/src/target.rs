//! The seven linear projections of a llama block an adapter can target, and their names in
//! PEFT (Hugging Face module paths) and in GGUF (llama.cpp tensor names).

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A linear projection inside a transformer block. Same set, same order as the `tailor`
/// crate's `Proj`; the sdk maps one onto the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Attention output projection.
    O,
    /// MLP gate projection.
    Gate,
    /// MLP up projection.
    Up,
    /// MLP down projection.
    Down,
}

impl Target {
    /// All targets, in forward order.
    pub const ALL: [Target; 7] =
        [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// The PEFT / Hugging Face module name: `q_proj`, `k_proj`, `v_proj`, `o_proj`,
    /// `gate_proj`, `up_proj`, `down_proj`.
    pub fn peft_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The Hugging Face sub-module holding the projection: `self_attn` or `mlp`.
    pub fn peft_parent(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            Target::Gate | Target::Up | Target::Down => "mlp",
        }
    }

    /// The module path inside a llama model, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn module_path(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}", self.peft_parent(), self.peft_name())
    }

    /// The GGUF (llama.cpp) tensor stem: `attn_q`, `attn_k`, `attn_v`, `attn_output`,
    /// `ffn_gate`, `ffn_up`, `ffn_down` (as in `blk.3.attn_q.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    /// The target whose PEFT module name is `name` (`"q_proj"` → [`Target::Q`]).
    pub fn from_peft_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.peft_name() == name)
    }

    /// The target whose GGUF tensor stem is `name` (`"attn_q"` → [`Target::Q`]).
    pub fn from_gguf_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.gguf_name() == name)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.peft_name())
    }
}

impl FromStr for Target {
    type Err = Error;

    /// Parses a PEFT name (`q_proj`) or a GGUF stem (`attn_q`).
    fn from_str(s: &str) -> Result<Self, Error> {
        Target::from_peft_name(s)
            .or_else(|| Target::from_gguf_name(s))
            .ok_or_else(|| Error::unsupported(format!("projection `{s}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Target::ALL {
            assert_eq!(Target::from_peft_name(t.peft_name()), Some(t));
            assert_eq!(Target::from_gguf_name(t.gguf_name()), Some(t));
            assert_eq!(t.to_string().parse::<Target>().unwrap(), t);
        }
        assert_eq!(Target::Down.module_path(29), "model.layers.29.mlp.down_proj");
        assert_eq!(Target::O.module_path(0), "model.layers.0.self_attn.o_proj");
        assert!("lm_head".parse::<Target>().is_err());
    }
}
