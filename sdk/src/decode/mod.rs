//! The decode path: forward pass, KV cache, hooks, sampler.

pub mod forward;
pub mod hooks;
pub mod kv_cache;
pub mod sampler;
pub(crate) mod team;
