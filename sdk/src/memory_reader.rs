//! The memory-reading adapter: a small LoRA, shipped inside the library, that teaches
//! SmolLM2-135M-Instruct to answer from the memories in its prompt.
//!
//! At 135M parameters the base model, shown the right fact among three in its system prompt,
//! answers only about a quarter of paraphrased questions with it; with this adapter active it
//! reads them (figures in `sdk/data/memory-reader/README.md`, made by the program
//! `trainer/examples/train_reader.rs`, which trained it on synthetic facts only). A session runs
//! it on top of its other adapters for every generation that has memories in its prompt
//! ([`crate::MemoryPromptConfig::reader`]); other base models have no reader (the adapter
//! carries the fingerprint of the base it was trained on, and is used only on that base).

use std::path::Path;
use std::sync::Arc;

use tailor_adapters::peft::{self, LoadOptions};
use tailor_adapters::LoraConfig;

use crate::decode::hooks::{Hooks, LinearDelta, LowRankTerm, Proj};
use crate::lora::{LoraHook, PreparedLora};
use crate::Engine;

const CONFIG: &str = include_str!("../data/memory-reader/adapter_config.json");
const WEIGHTS: &[u8] = include_bytes!("../data/memory-reader/adapter_model.safetensors");

/// Parses the shipped adapter and prepares it for `engine`, if it was trained on its base.
pub(crate) fn load(engine: &Engine) -> Option<Arc<PreparedLora>> {
    let path = Path::new("memory-reader/adapter_model.safetensors");
    let config = LoraConfig::from_json(CONFIG, Path::new("memory-reader/adapter_config.json")).ok()?;
    let fingerprint = engine.base_fingerprint();
    if config.base_fingerprint() != Some(&fingerprint) {
        return None;
    }
    let opts = LoadOptions::new().with_shapes(engine.base_shapes()).with_fingerprint(fingerprint);
    let adapter = peft::from_parts(config, WEIGHTS, path, &opts).ok()?;
    PreparedLora::new(engine, Arc::new(adapter)).ok().map(Arc::new)
}

/// `hooks` with the reader's terms added to its linear deltas (steering unchanged).
pub(crate) fn stack(engine: &Engine, hooks: &Hooks, reader: &Arc<PreparedLora>) -> Hooks {
    let n_layers = engine.model_config().n_layers;
    let extra = LoraHook::new(&[(reader.clone(), 1.0)]);
    let mut terms: Vec<Vec<LowRankTerm>> = Vec::with_capacity(n_layers * Proj::ALL.len());
    for layer in 0..n_layers {
        for &p in Proj::ALL.iter() {
            let mut v: Vec<LowRankTerm> = hooks.linear.as_ref().map(|l| l.terms(layer, p).to_vec()).unwrap_or_default();
            v.extend_from_slice(extra.terms(layer, p));
            terms.push(v);
        }
    }
    Hooks { linear: Some(Arc::new(Stacked(terms)) as Arc<dyn LinearDelta>), residual: hooks.residual.clone() }
}

/// Linear deltas of several hooks, concatenated per projection.
struct Stacked(Vec<Vec<LowRankTerm>>);

impl LinearDelta for Stacked {
    fn terms(&self, layer: usize, proj: Proj) -> &[LowRankTerm] {
        self.0.get(layer * Proj::ALL.len() + proj as usize).map_or(&[], Vec::as_slice)
    }
}
