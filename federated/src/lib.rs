//! Federated aggregation of on-device LoRA updates for Tailor.
//!
//! Each client of a round sends an [`Update`]: its adapter (the delta `ΔWᵢ = sᵢ·Bᵢ·Aᵢ` per
//! targeted layer and projection, in PEFT's layout on disk, with the base fingerprint) and its
//! sample count. [`aggregate`] screens the round, clips, combines and optionally noises:
//!
//! - **Screening.** An update with NaN/Inf, a shape other than the base's (or the round
//!   majority's), another base fingerprint, an unknown or missing target, zero samples, a
//!   duplicate name or a norm above `max_norm_ratio ×` the round's median is refused — the
//!   [`Refusal`] names the client and the reason — and the round goes on with the rest.
//! - **Methods** ([`Method`]), weights `wᵢ` = sample counts normalised:
//!   - `Exact`: `Σ wᵢ·ΔWᵢ` in factor form — the `B`s and `A`s stacked, a thin QR of each,
//!     the small core `R_B·R_Aᵀ` decomposed ([`tailor_adapters::linalg`]) — refactored to
//!     rank R: exact when `R ≥ Σ rᵢ` (heterogeneous ranks allowed), the optimal rank-R
//!     approximation (Eckart–Young) otherwise, with the truncation residual reported. When
//!     `Σ rᵢ` exceeds the projection's width the dense `out × in` sum is factored instead.
//!   - `FedIt` (Zhang et al. 2023): `A`s and `B`s averaged separately (biased).
//!   - `Ffa` (FFA-LoRA, Sun et al. 2024): `A` frozen and shared, `B`s averaged (exact).
//!
//!   The [`Report`] gives, per method, the Frobenius error against the exact weighted sum.
//!   With [`Robust::Median`] / [`Robust::TrimmedMean`] the coordinate-wise statistic of the
//!   dense deltas replaces the mean.
//! - **Privacy.** Per-client clipping of `‖ΔW‖_F` computed from the factors
//!   ([`update_norm`], [`clip_update`]); Gaussian noise `N(0, (σ·C·max wᵢ)²)` — `σ·C/n` with
//!   equal weights — at the server ([`DpMode::Central`]: on the dense delta of each pair,
//!   then truncated SVD, for the exact method; on `B` for FFA) or at each client
//!   ([`privatize_local`]); a seeded ChaCha20 generator ([`dp`]); and the RDP accountant
//!   ([`accountant`]) for `(ε, δ)` after T rounds at sampling rate q.
//!
//! # Example
//! ```
//! use tailor_adapters::{LoraAdapter, LoraConfig, LoraWeights, Target};
//! use tailor_federated::{aggregate, AggregateOptions, Method, Update};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two clients, rank 1, on the query projection of layer 0 (in = 3, out = 2).
//! let client = |a: [f32; 3], b: [f32; 2]| -> tailor_adapters::Result<LoraAdapter> {
//!     let mut ad = LoraAdapter::new(LoraConfig::new(1, 1.0, &[Target::Q]))?;
//!     ad.insert(0, Target::Q, LoraWeights::new(1, 3, 2, a.to_vec(), b.to_vec())?)?;
//!     Ok(ad)
//! };
//! let updates = vec![
//!     Update::new("alice", client([1.0, 0.0, 0.0], [1.0, 0.0])?, 30),
//!     Update::new("bob", client([0.0, 1.0, 0.0], [0.0, 1.0])?, 10),
//! ];
//! let round = aggregate(&updates, &AggregateOptions::new(Method::Exact))?;
//! assert_eq!(round.accepted, ["alice", "bob"]);
//! assert_eq!(round.report.rank, 2); // Σ rᵢ: exact
//! // ΔW = 0.75·e₀e₀ᵀ + 0.25·e₁e₁ᵀ.
//! let w = round.adapter.get(0, Target::Q).unwrap();
//! let dw = |o: usize, i: usize| (0..2).map(|k| w.b()[o * 2 + k] * w.a()[k * 3 + i]).sum::<f32>();
//! assert!((dw(0, 0) - 0.75).abs() < 1e-6 && (dw(1, 1) - 0.25).abs() < 1e-6 && dw(0, 1).abs() < 1e-6);
//!
//! // (ε, δ) after 100 rounds at σ = 1.1, q = 0.1.
//! let (eps, _order) = tailor_federated::accountant::epsilon(1.1, 0.1, 100, 1e-5)?;
//! assert!(eps > 0.0);
//! # Ok(())
//! # }
//! ```

pub mod accountant;
mod aggregate;
pub mod dp;
mod error;
mod methods;
mod refusal;
mod update;

#[cfg(test)]
mod tests;

pub use aggregate::{aggregate, AggregateOptions, Aggregation, ClientReport, LayerReport, Method, Report, Robust};
pub use dp::{privatize_local, DpMode};
pub use error::{Error, ErrorKind, Result};
pub use refusal::{Refusal, RefusalReason};
pub use update::{clip_update, update_norm, Update};
