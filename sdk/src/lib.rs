//! Tailor: a frozen quantized llama-family model on a decode path of our own, ready to be made
//! personal on the device.
//!
//! The [`Engine`] loads a GGUF file (weights stay memory-mapped) and is shared by any number of
//! [`Session`]s, each a conversation with its own KV cache. Generation streams whole-UTF-8
//! text through a callback that can stop it, and a [`CancelHandle`] stops it from another
//! thread.
//!
//! ```no_run
//! use tailor::{Engine, EngineConfig, Flow, GenerateParams, ModelCache};
//!
//! # fn main() -> tailor::Result<()> {
//! let cache = ModelCache::new(ModelCache::default_root().expect("a cache dir"));
//! let engine = Engine::load(cache.base_model_path(), EngineConfig::default())?;
//! let mut session = engine.new_session();
//! let answer = session.chat("What is the capital of France?", &GenerateParams::default(), &mut |ev| {
//!     print!("{}", ev.text);
//!     Flow::Continue
//! })?;
//! println!("\n[{} tokens, {:.0} tok/s]", answer.token_ids.len(), answer.timings.decode_tok_per_s());
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod affinity;
pub mod decode;
mod engine;
mod error;
pub mod grammar;
pub mod kernels;
pub mod lora;
pub mod memory;
pub mod memory_reader;
pub mod model;
pub mod model_files;
pub mod registry;
mod session;
pub mod steering;
pub mod testing;
pub mod text;

pub use decode::kv_cache::KvCacheType;
pub use decode::hooks::{HookSource, Hooks, LinearDelta, LowRank, LowRankTerm, Proj, ResidualHook};
pub use decode::sampler::SamplingParams;
pub use engine::{Engine, EngineConfig};
pub use lora::{LoraHook, PreparedLora};
pub use steering::{compute_steering, Readout, SteeringHook, SteeringMethod, SteeringOptions, SteeringSet};
pub use registry::{AdapterInfo, AdapterRegistry};
pub use tailor_adapters as adapters;
pub use tailor_memory as profile;
pub use memory::{MemoryPromptConfig, RecalledMemory, SharedMemory};
pub use error::{Error, ErrorKind, Result};
pub use grammar::Grammar;
pub use model::config::ModelConfig;
pub use model_files::ModelCache;
pub use session::{
    CancelHandle, ContextPolicy, FinishReason, Flow, GenerateParams, Generation, Prompt, Session, SessionConfig, Timings,
    TokenEvent, TokenLogprob, TopLogprob,
};
pub use text::chat_template::ChatMessage;
pub use text::tokenizer::Tokenizer;
pub use text::tools::{Tool, ToolCall, ToolChoice, ToolDelta, ToolSet, ToolStream};
