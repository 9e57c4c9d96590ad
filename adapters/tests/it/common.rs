//! Helpers shared by the test modules: temporary directories, random adapters, raw files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use tailor_adapters::peft::BaseShapes;
use tailor_adapters::{LoraAdapter, LoraConfig, LoraWeights, Target};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "tailor-adapters-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh seed, printed so a failure can be replayed.
pub fn rng() -> (StdRng, u64) {
    let seed: u64 = rand::random();
    eprintln!("seed = {seed}");
    (StdRng::seed_from_u64(seed), seed)
}

/// Small llama-like widths (heads 4 × 8, 2 KV heads, MLP 40).
pub const SHAPES: BaseShapes =
    BaseShapes { n_layers: 3, d_model: 24, q_dim: 32, kv_dim: 16, ffn_dim: 40 };

pub fn random_vec(rng: &mut StdRng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

/// A random adapter of rank `r` on `targets` of every layer of [`SHAPES`].
pub fn random_adapter(rng: &mut StdRng, r: usize, alpha: f64, targets: &[Target]) -> LoraAdapter {
    let mut a = LoraAdapter::new(LoraConfig::new(r, alpha, targets)).unwrap();
    for layer in 0..SHAPES.n_layers {
        for &t in targets {
            let (i, o) = SHAPES.in_out(t);
            let w =
                LoraWeights::new(r, i, o, random_vec(rng, r * i, 1.0), random_vec(rng, o * r, 1.0))
                    .unwrap();
            a.insert(layer, t, w).unwrap();
        }
    }
    a
}

/// An owned tensor for [`write_safetensors`].
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn f32(name: impl Into<String>, shape: &[usize], values: &[f32]) -> Self {
        RawTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

pub fn safetensors_bytes(tensors: &[RawTensor]) -> Vec<u8> {
    let views: Vec<_> = tensors
        .iter()
        .map(|t| (t.name.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap()))
        .collect();
    safetensors::serialize(views, Some(HashMap::from([("format".to_owned(), "pt".to_owned())])))
        .unwrap()
}

/// Writes an adapter directory from raw parts (config JSON text and tensors).
pub fn write_raw(dir: &Path, config_json: &str, tensors: &[RawTensor]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config_json).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), safetensors_bytes(tensors)).unwrap();
}

/// Names of the entries of `dir`, sorted.
pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
