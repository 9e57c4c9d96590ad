//! Hooks for this crate's tests and benchmarks (not a stable API).

use tailor::adapters::LoraAdapter;
use tailor::Engine;

use crate::model::{Keep, Net};
use crate::params::LoraParams;
use crate::Result;

/// `Σ -log p(target)` of `tokens` under the base plus `adapter`, and its gradient with respect
/// to every LoRA parameter, as an adapter of the same shape (PEFT layout) holding the
/// gradients of A and B.
pub fn loss_and_grads(
    engine: &Engine,
    adapter: &LoraAdapter,
    tokens: &[u32],
    targets: &[(usize, u32)],
    checkpointing: bool,
) -> Result<(f64, LoraAdapter)> {
    let pool = pool()?;
    let net = Net::new(engine.model_config(), engine.weights(), &pool);
    let params = LoraParams::from_adapter(adapter, engine.base_shapes(), engine.qk_layout())?;
    let keep = if checkpointing { Keep::LayerInputs } else { Keep::All };
    let (logp, tape) = net.forward(tokens, targets, Some(&params), keep)?;
    let mut grads = vec![0f32; params.len()];
    net.backward(tape.expect("kept"), 1.0, &params, &mut grads);
    let mut g = params.clone();
    g.data = grads;
    Ok((-logp.iter().map(|&x| x as f64).sum::<f64>(), g.to_adapter(None)?))
}

/// `Σ -log p(target)` under the base plus `adapter` (no gradient).
pub fn loss(engine: &Engine, adapter: Option<&LoraAdapter>, tokens: &[u32], targets: &[(usize, u32)]) -> Result<f64> {
    let pool = pool()?;
    let net = Net::new(engine.model_config(), engine.weights(), &pool);
    let params = adapter.map(|a| LoraParams::from_adapter(a, engine.base_shapes(), engine.qk_layout())).transpose()?;
    let (logp, _) = net.forward(tokens, targets, params.as_ref(), Keep::Nothing)?;
    Ok(-logp.iter().map(|&x| x as f64).sum::<f64>())
}

/// Log-softmax of every position's logits (`[n, vocab]`) from the training forward, to check
/// it against the decode path's `Session::logits_all`.
pub fn log_softmax_all(engine: &Engine, adapter: Option<&LoraAdapter>, tokens: &[u32]) -> Result<Vec<f32>> {
    let pool = pool()?;
    let net = Net::new(engine.model_config(), engine.weights(), &pool);
    let params = adapter.map(|a| LoraParams::from_adapter(a, engine.base_shapes(), engine.qk_layout())).transpose()?;
    net.log_softmax_all(tokens, params.as_ref())
}

fn pool() -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().map_err(|e| crate::Error::invalid_config(e.to_string()))
}
