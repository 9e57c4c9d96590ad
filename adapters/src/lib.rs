//! LoRA adapters for Tailor: the types, the math that applies them over a frozen base, and
//! PEFT-compatible files.
//!
//! - [`LoraConfig`] is PEFT's `adapter_config.json`, read and written as-is (unknown fields
//!   round-trip), with Tailor's own record ([`TailorMeta`]: base fingerprint, version,
//!   creation time) under a `tailor` key PEFT ignores.
//! - [`LoraAdapter`] holds one A/B pair ([`LoraWeights`]) per targeted (layer,
//!   [`Target`]) and adds `weight·scale·B(A·x)` to a projection's output; `scale` is
//!   `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
//! - [`LoraSet`] is several adapters active at once with weights; the `tailor` crate wraps
//!   one in its `LinearDelta` hook.
//! - [`peft`] loads and saves PEFT's directory layout (`adapter_config.json` +
//!   `adapter_model.safetensors`) with every check a hostile file needs, and saves
//!   atomically.
//!
//! - [`gguf_lora`] exports (and imports) llama.cpp's GGUF LoRA layout, for `llama-cli --lora`.
//! - [`merge()`] combines adapters (weighted sum, TIES, DARE) into one of a chosen rank by SVD.
//! - [`linalg`] is the small dense f64 algebra behind it (QR, Jacobi SVD, symmetric
//!   eigendecomposition), public for the federated aggregation.
//! - [`QkLayout`] maps `lora_B` rows of the query/key projections between PEFT's order and
//!   a llama GGUF's permuted order.
//! - [`SteeringVector`] is one direction per layer for activation steering, saved as
//!   safetensors + JSON and exchanged with llama.cpp / repeng as a control-vector GGUF
//!   ([`steering`]).
//!
//! This crate does not depend on the `tailor` crate: dependencies point `adapters ← sdk`.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use tailor_adapters::{LoraAdapter, LoraConfig, LoraSet, LoraWeights, Target};
//!
//! # fn main() -> tailor_adapters::Result<()> {
//! // A rank-1 adapter on the query projection of layer 0 (in = 3, out = 2), alpha = 2.
//! let mut adapter = LoraAdapter::new(LoraConfig::new(1, 2.0, &[Target::Q]))?;
//! let a = vec![1.0, 0.0, 1.0]; // [r, in]
//! let b = vec![0.5, -1.0]; //     [out, r]
//! adapter.insert(0, Target::Q, LoraWeights::new(1, 3, 2, a, b)?)?;
//!
//! let set = LoraSet::new().with(Arc::new(adapter), 1.0);
//! let x = [1.0, 5.0, 2.0]; //      one token
//! let mut y = [10.0, 10.0]; //     the base output W·x
//! assert!(set.applies_to(0, Target::Q));
//! set.add_delta(0, Target::Q, &x, 1, &mut y);
//! // A·x = 3, scale = 2/1, B·(2·3) = [3, -6]
//! assert_eq!(y, [13.0, 4.0]);
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod fsio;
mod gguf;
pub mod gguf_lora;
pub mod layout;
pub mod linalg;
mod lora;
pub mod merge;
pub mod peft;
pub mod steering;
mod target;

pub use config::{
    BaseFingerprint, LayerSelection, LoraConfig, TailorMeta, TargetModules, TAILOR_FORMAT_VERSION,
};
pub use error::{Error, ErrorKind, Result};
pub use layout::QkLayout;
pub use lora::{LoraAdapter, LoraSet, LoraWeights};
pub use merge::{merge, MergeMethod, MergeOptions};
pub use steering::{SteeringMeta, SteeringVector};
pub use target::Target;
