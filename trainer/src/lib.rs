//! LoRA training on the device, through Tailor's frozen quantized base.
//!
//! The trainer runs its own forward pass over the base model an [`tailor::Engine`] loaded —
//! the decode path's math, in f32, with its activations kept — and a backward pass that
//! carries gradients through every frozen quantized projection (`dX = dY·W`, the weight
//! dequantized one tile of rows at a time; no dense copy of the model is made), through
//! attention, RoPE, RMSNorm and the SiLU MLP, to the LoRA `A`/`B` matrices, the only
//! parameters that change. Activation checkpointing (per layer) is an option.
//!
//! Objectives:
//! - **SFT** ([`SftExample`]): cross-entropy on the answer tokens only;
//! - **DPO** ([`PreferenceExample`]): `-log σ(β·((log π(c) − log π_ref(c)) − (log π(r) −
//!   log π_ref(r))))`, the reference being the same forward with the adapter switched off
//!   (the base, or the base plus the initial adapter: [`DpoReference`]).
//!
//! The loop ([`Trainer`]): AdamW with decoupled weight decay, linear warm-up + cosine decay,
//! global gradient-norm clipping, gradient accumulation, a seed (A Kaiming-uniform as PEFT
//! initialises it, B zero); a progress callback after every step that can stop the run, a
//! [`CancelHandle`] usable from any thread, limits on steps and time, and checkpoints written
//! atomically from which a killed run resumes and ends bit-identical to an uninterrupted run
//! (the arithmetic does not depend on the number of threads or on scheduling).
//!
//! The result is a [`tailor_adapters::LoraAdapter`] in PEFT's layout (q/k rows mapped back
//! from the GGUF's permuted order), ready for `tailor_adapters::peft::save` or the engine's
//! adapter registry.
//!
//! ```no_run
//! use tailor::{Engine, EngineConfig, Flow};
//! use tailor_trainer::{SftExample, TrainConfig, TrainData, Trainer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::load("model.gguf", EngineConfig::default())?;
//! let data = TrainData::sft(vec![SftExample {
//!     prompt_tokens: engine.tokenize("Q: my dog's name?\nA:")?,
//!     answer_tokens: engine.tokenize(" Rex")?,
//! }]);
//! let mut config = TrainConfig::default();
//! config.max_steps = Some(20);
//! config.learning_rate = 1e-3;
//! let out = Trainer::new(&engine, config)?.train(&data, &mut |p| {
//!     println!("step {}/{} loss {:.3} {:.0} tok/s eta {:?}", p.step, p.total_steps, p.loss, p.tokens_per_s, p.eta);
//!     Flow::Continue
//! })?;
//! tailor::adapters::peft::save(&out.adapter, "my-adapter".as_ref())?;
//! # Ok(())
//! # }
//! ```
//!
//! `TrainConfig` is `#[non_exhaustive]`: build it from `TrainConfig::default()` and set
//! fields, or deserialize it.

pub mod augment;
mod checkpoint;
mod config;
mod error;
mod kernels;
mod linalg;
mod model;
mod optim;
mod options_json;
mod params;
mod topics;
pub mod personal;
pub mod synth;
mod personal_model;
mod rng;
mod score;
mod train_loop;

pub use checkpoint::FILE_NAME as CHECKPOINT_FILE_NAME;
pub use config::{DpoReference, PreferenceExample, SftExample, TrainConfig, TrainData};
pub use error::{Error, ErrorKind, Result};
pub use personal_model::{AutoTrain, JobState, PersonalModel, TrainingJob, TrainingStatus};
pub use score::{mean_nll, score_answers, AnswerScore};
pub use tailor::Flow;
pub use train_loop::{CancelHandle, Progress, StopReason, TrainJob, TrainMetrics, TrainOutput, Trainer};

#[doc(hidden)]
pub mod testing;
