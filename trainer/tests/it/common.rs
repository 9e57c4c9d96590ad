//! Helpers shared by the test modules.

use candle_core::quantized::GgmlDType;
use tailor::testing::TinyModel;
use tailor::{Engine, EngineConfig};

pub use tailor::testing::TempDir;

/// A tiny model of `dtype` (weights from `seed`), loaded with 2 threads.
pub fn tiny(dtype: GgmlDType, seed: u64) -> (TempDir, Engine) {
    let mut s = TinyModel::default();
    s.dtype = dtype;
    s.embd_dtype = dtype;
    s.seed = seed;
    s.weight_scale = 0.3;
    let dir = TempDir::new("tiny");
    let path = dir.path("tiny.gguf");
    s.write(&path).unwrap();
    let mut cfg = EngineConfig::default();
    cfg.threads = 2;
    let engine = Engine::load(&path, cfg).unwrap();
    (dir, engine)
}

/// A fresh seed, to be printed with any failure.
pub fn fresh_seed() -> u64 {
    rand::random::<u64>() % 1_000_000
}

/// `n` random tokens of `engine`'s vocabulary.
pub fn random_tokens(engine: &Engine, n: usize, seed: u64) -> Vec<u32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v = engine.model_config().vocab_size as u32;
    (0..n).map(|_| rng.random_range(0..v)).collect()
}
