//! What a run trains on and how.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tailor::adapters::Target;

/// Settings of a training run. `Default` is a sensible on-device SFT/DPO run; serde reads and
/// writes it (missing fields take their defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct TrainConfig {
    /// LoRA rank `r`.
    pub lora_rank: usize,
    /// LoRA `alpha` (scale `alpha / r`).
    pub lora_alpha: f64,
    /// Projections that get an A/B pair, in every layer (serialized by PEFT name:
    /// `q_proj`, ..., `down_proj`).
    #[serde(with = "target_names")]
    pub targets: Vec<Target>,
    /// Peak learning rate.
    pub learning_rate: f32,
    /// Decoupled weight decay of AdamW (applied as `p -= lr·wd·p`).
    pub weight_decay: f32,
    /// AdamW `beta1`.
    pub adam_beta1: f32,
    /// AdamW `beta2`.
    pub adam_beta2: f32,
    /// AdamW `eps`.
    pub adam_eps: f32,
    /// Linear warm-up steps before the cosine decay.
    pub warmup_steps: usize,
    /// The cosine decays to `learning_rate · min_lr_ratio` at the last step.
    pub min_lr_ratio: f32,
    /// Gradients are scaled down to this global L2 norm when above it (`0` = no clipping).
    pub max_grad_norm: f32,
    /// Examples per micro-batch (each is run as its own sequence; no padding).
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before one optimizer step.
    pub grad_accum_steps: usize,
    /// Passes over the data (the step budget is `epochs · ceil(examples / per step)`).
    pub epochs: usize,
    /// Caps the number of optimizer steps (also fixes the schedule's length).
    pub max_steps: Option<usize>,
    /// Stops (after the step in progress) once this many seconds have passed.
    pub max_seconds: Option<f64>,
    /// Sequences (prompt + answer) are cut to this many tokens, keeping the start.
    pub max_seq_len: usize,
    /// SFT examples of one optimizer step are packed, in order, into passes of up to this
    /// many tokens (and within `max_activation_mib`): one forward and backward pass runs them
    /// all, each attending only to itself with positions from 0, so the loss and gradients
    /// are those of separate passes up to f32 rounding (the LoRA gradients sum in another
    /// order), while the frozen weights are dequantized once per pass instead of once per
    /// example. A longer example runs alone; DPO pairs always run unpacked. `0` = one example
    /// per pass.
    pub pack_tokens: usize,
    /// Train `B` only: every `A` keeps its initial value (the seeded Kaiming init, or the
    /// initial adapter's `A`), as FFA-LoRA's clients do so that averaging the `B`s of
    /// several clients sharing one `A` is exactly the average of their deltas.
    pub freeze_a: bool,
    /// The first `frozen_rank` rank components of every A/B pair (rows of `A`, columns of
    /// `B`) keep their initial values; only the rest train. With an initial adapter whose
    /// first components are a fixed low-rank term and the rest trainable factors, this trains
    /// the factors on top of the frozen term: FLoRA's stacking (a fresh LoRA on top of an
    /// earlier adapter) or FedEx-LoRA's residual (the federated harness's clients train the
    /// global factors on top of the server's exact-aggregation residual). `0` = nothing
    /// frozen; otherwise every pair's rank must exceed it.
    pub frozen_rank: usize,
    /// DPO temperature `beta`.
    pub dpo_beta: f32,
    /// What DPO's reference policy is.
    pub dpo_reference: DpoReference,
    /// Weight of the DPO loss when a run has both kinds of examples.
    pub dpo_weight: f32,
    /// Seed of the LoRA initialisation and the data order.
    pub seed: u64,
    /// Keep only each layer's input and recompute its activations in the backward pass
    /// (about 1/10 of the activation memory for ~1/3 more compute).
    pub activation_checkpointing: bool,
    /// Memory budget for one sequence's saved activations, in MiB (both sequences of a DPO
    /// pair together). Sequences whose full activations would not fit are trained with
    /// activation checkpointing; an example that does not fit even then is refused
    /// (`InvalidExample`) before training starts. `None` = no limit.
    pub max_activation_mib: Option<usize>,
    /// Worker threads (`0` = as many as the engine uses).
    pub threads: usize,
    /// Where checkpoints go (`None` = no checkpoints).
    pub checkpoint_dir: Option<PathBuf>,
    /// Write a checkpoint every this many optimizer steps (`0` = only when the run stops).
    pub checkpoint_every: usize,
    /// Continue from the checkpoint in `checkpoint_dir` if there is one.
    pub resume: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lora_rank: 8,
            lora_alpha: 16.0,
            targets: Target::ALL.to_vec(),
            learning_rate: 2e-4,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            warmup_steps: 0,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            batch_size: 1,
            grad_accum_steps: 1,
            epochs: 1,
            max_steps: None,
            max_seconds: None,
            max_seq_len: 512,
            pack_tokens: 512,
            freeze_a: false,
            frozen_rank: 0,
            dpo_beta: 0.1,
            dpo_reference: DpoReference::Base,
            dpo_weight: 1.0,
            seed: 0,
            activation_checkpointing: false,
            max_activation_mib: None,
            threads: 0,
            checkpoint_dir: None,
            checkpoint_every: 0,
            resume: true,
        }
    }
}

/// The reference policy of DPO: the same forward with the trained adapter switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DpoReference {
    /// The base model alone.
    #[default]
    Base,
    /// The base plus the initial adapter (`Trainer::with_initial_adapter`, e.g. the version
    /// being replaced), frozen; the base when there is none.
    InitialAdapter,
}

mod target_names {
    use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};
    use tailor::adapters::Target;

    pub fn serialize<S: Serializer>(t: &[Target], s: S) -> Result<S::Ok, S::Error> {
        t.iter().map(|t| t.peft_name()).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Target>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|n| Target::from_peft_name(n).ok_or_else(|| D::Error::custom(format!("unknown LoRA target {n:?}"))))
            .collect()
    }
}

/// Supervised example: the loss is the cross-entropy of the answer tokens only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftExample {
    /// The context (chat-templated prompt), not scored.
    pub prompt_tokens: Vec<u32>,
    /// The answer the model should give.
    pub answer_tokens: Vec<u32>,
}

/// Preference pair for DPO: the same prompt with a preferred and a rejected answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceExample {
    /// The context, not scored.
    pub prompt_tokens: Vec<u32>,
    /// The preferred answer.
    pub chosen_tokens: Vec<u32>,
    /// The rejected answer.
    pub rejected_tokens: Vec<u32>,
}

/// Everything one run trains on. Both lists may be used at once: each optimizer step's loss
/// is the mean SFT token loss of its SFT examples plus `dpo_weight` times the mean DPO loss
/// of its pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainData {
    /// Supervised examples.
    pub sft: Vec<SftExample>,
    /// Preference pairs.
    pub preferences: Vec<PreferenceExample>,
}

impl TrainData {
    /// SFT examples only.
    pub fn sft(examples: Vec<SftExample>) -> Self {
        Self { sft: examples, preferences: Vec::new() }
    }
    /// Preference pairs only.
    pub fn preferences(pairs: Vec<PreferenceExample>) -> Self {
        Self { sft: Vec::new(), preferences: pairs }
    }
    /// Number of examples (SFT examples + pairs).
    pub fn len(&self) -> usize {
        self.sft.len() + self.preferences.len()
    }
    /// Whether there is nothing to train on.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_fills_defaults() {
        let c = TrainConfig { lora_rank: 4, dpo_beta: 0.5, ..TrainConfig::default() };
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&s).unwrap(), c);
        let partial: TrainConfig = serde_json::from_str(r#"{"lora_rank": 2}"#).unwrap();
        assert_eq!(partial.lora_rank, 2);
        assert_eq!(partial.learning_rate, TrainConfig::default().learning_rate);
    }
}
