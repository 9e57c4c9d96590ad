//! Helpers shared by the test modules.

use std::path::PathBuf;

use candle_core::quantized::GgmlDType;
use tailor::testing::TinyModel;
use tailor::{Engine, EngineConfig};

pub use tailor::testing::TempDir;

/// Writes a tiny model and loads it.
pub fn tiny(spec: TinyModel, threads: usize) -> (TempDir, PathBuf, Engine) {
    let dir = TempDir::new("tiny");
    let path = dir.path("tiny.gguf");
    spec.write(&path).unwrap();
    let mut cfg = EngineConfig::default();
    cfg.threads = threads;
    cfg.prefill_chunk = 7; // odd chunking exercises the chunked prefill
    let engine = Engine::load(&path, cfg).unwrap();
    (dir, path, engine)
}

pub fn spec(dtype: GgmlDType, d_model: usize, seed: u64) -> TinyModel {
    let mut s = TinyModel::default();
    s.dtype = dtype;
    s.embd_dtype = dtype;
    s.d_model = d_model;
    s.ffn_dim = if d_model.is_multiple_of(256) { 512 } else { 128 };
    s.seed = seed;
    s
}
