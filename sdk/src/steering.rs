//! Steering vectors (`tailor-adapters`' [`SteeringVector`]) on the decode path: the
//! [`ResidualHook`] that adds `scale·v_layer` to the residual stream, and [`compute_steering`],
//! which derives a vector from contrasting prompt pairs.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use tailor_adapters::{SteeringMeta, SteeringVector};

use crate::decode::hooks::{Hooks, ResidualHook};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::session::Prompt;

/// A steering vector as a decode-path hook: after every block `l` in `layers` for which the
/// vector has a direction, `scale·v_l` is added to every token's residual. A scale of 0 adds
/// nothing at all (the call is skipped), so logits are bit-identical to the base.
#[derive(Debug, Clone)]
pub struct SteeringHook {
    /// The directions.
    pub vector: Arc<SteeringVector>,
    /// The multiplier (negative steers the other way).
    pub scale: f32,
    /// The blocks (0-based, inclusive) it applies after.
    pub layers: RangeInclusive<usize>,
}

impl SteeringHook {
    /// Applies `vector` with `scale` after every block in `layers`.
    pub fn new(vector: Arc<SteeringVector>, scale: f32, layers: RangeInclusive<usize>) -> Self {
        Self { vector, scale, layers }
    }

    /// Session hooks running this vector (and no LoRA); set `linear` to run both.
    pub fn into_hooks(self) -> Hooks {
        Hooks { linear: None, residual: Some(Arc::new(self)) }
    }
}

impl ResidualHook for SteeringHook {
    fn applies_to(&self, layer: usize) -> bool {
        self.scale != 0.0 && self.layers.contains(&layer) && self.vector.layer(layer).is_some()
    }

    fn after_layer(&self, layer: usize, hidden: &mut [f32], n_tokens: usize) {
        if !self.applies_to(layer) {
            return;
        }
        let Some(v) = self.vector.layer(layer) else { return };
        let d = v.len();
        for row in hidden.chunks_exact_mut(d).take(n_tokens) {
            for (h, x) in row.iter_mut().zip(v) {
                *h += self.scale * x;
            }
        }
    }
}

/// Several steering vectors at once, each with its scale and layers: their additions are
/// summed in order. Cloning is cheap.
#[derive(Debug, Clone, Default)]
pub struct SteeringSet {
    hooks: Vec<SteeringHook>,
}

impl SteeringSet {
    /// The set of `hooks`; those with scale 0 are dropped (bit-identical to the base).
    pub fn new(hooks: Vec<SteeringHook>) -> Self {
        Self { hooks: hooks.into_iter().filter(|h| h.scale != 0.0).collect() }
    }

    /// Whether the set adds nothing.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// The vectors with their scales and layers.
    pub fn hooks(&self) -> &[SteeringHook] {
        &self.hooks
    }
}

impl ResidualHook for SteeringSet {
    fn applies_to(&self, layer: usize) -> bool {
        self.hooks.iter().any(|h| h.applies_to(layer))
    }

    fn after_layer(&self, layer: usize, hidden: &mut [f32], n_tokens: usize) {
        for h in &self.hooks {
            h.after_layer(layer, hidden, n_tokens);
        }
    }
}

/// How [`compute_steering`] turns per-pair activation differences into one direction per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SteeringMethod {
    /// Mean over pairs of (positive − negative).
    #[default]
    Mean,
    /// First principal direction of the per-pair differences (uncentered: the top eigenvector
    /// of `Σ dᵢdᵢᵀ`, by power iteration started from the mean difference), signed to point
    /// the way of the mean difference and scaled to the mean difference's projection on it, so
    /// scales mean the same as with [`SteeringMethod::Mean`].
    Pca,
}

/// Which activations of a prompt [`compute_steering`] reads after each block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Readout {
    /// The residual at the prompt's last token (what repeng and llama.cpp's generator use).
    #[default]
    LastToken,
    /// The mean of the residual over the prompt's tokens.
    MeanOverTokens,
}

/// Options of [`compute_steering`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct SteeringOptions {
    /// Mean difference or PCA.
    pub method: SteeringMethod,
    /// Which activations to read.
    pub readout: Readout,
    /// A description stored in the vector's metadata (e.g. "sentiment").
    pub source: String,
}

impl SteeringOptions {
    /// Options with `method` and the defaults otherwise.
    pub fn with_method(method: SteeringMethod) -> Self {
        Self { method, ..Self::default() }
    }
}

/// What [`Collector`] keeps of one layer: the running sum over tokens, their count, the last row.
#[derive(Clone)]
struct LayerStats {
    sum: Vec<f64>,
    count: usize,
    last: Vec<f32>,
}

/// Reads the residual after every block (chunked prefill calls it once per chunk).
struct Collector {
    d: usize,
    state: Mutex<Vec<LayerStats>>,
}

impl ResidualHook for Collector {
    fn applies_to(&self, _layer: usize) -> bool {
        true
    }

    fn after_layer(&self, layer: usize, hidden: &mut [f32], n_tokens: usize) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(LayerStats { sum, count, last }) = st.get_mut(layer) else { return };
        for row in hidden.chunks_exact(self.d).take(n_tokens) {
            for (s, x) in sum.iter_mut().zip(row) {
                *s += *x as f64;
            }
            last.copy_from_slice(row);
        }
        *count += n_tokens;
    }
}

/// Per-layer activations of one prompt (`[n_layers][d_model]`).
fn activations(engine: &Engine, text: &str, readout: Readout) -> Result<Vec<Vec<f64>>> {
    let c = engine.model_config();
    let (n_layers, d) = (c.n_layers, c.d_model);
    let col = Arc::new(Collector { d, state: Mutex::new(vec![LayerStats { sum: vec![0.0; d], count: 0, last: vec![0.0; d] }; n_layers]) });
    let mut s = engine.new_session();
    s.set_hooks(Hooks { linear: None, residual: Some(col.clone()) });
    let tokens = s.prompt_tokens(&Prompt::Text(text.to_owned()))?;
    if tokens.is_empty() {
        return Err(Error::InvalidArgument { reason: format!("prompt {text:?} has no tokens") });
    }
    s.feed(&tokens)?;
    drop(s);
    let st = col.state.lock().unwrap_or_else(|e| e.into_inner());
    Ok(st
        .iter()
        .map(|st| match readout {
            Readout::LastToken => st.last.iter().map(|x| *x as f64).collect(),
            Readout::MeanOverTokens => st.sum.iter().map(|x| x / st.count.max(1) as f64).collect(),
        })
        .collect())
}

/// Computes a steering vector from `(positive, negative)` prompt pairs: each prompt is run
/// (as plain text, BOS added as the tokenizer does) through a fresh session with a hook that
/// reads the residual after every block ([`SteeringOptions::readout`]; by default at the last
/// token), and each layer's direction is the mean of (positive − negative) over the pairs, or
/// its PCA variant ([`SteeringMethod::Pca`]). The result has a direction for every layer and
/// records the engine's base fingerprint.
pub fn compute_steering(engine: &Engine, pairs: &[(String, String)], options: &SteeringOptions) -> Result<SteeringVector> {
    if pairs.is_empty() {
        return Err(Error::InvalidArgument { reason: "compute_steering needs at least one prompt pair".into() });
    }
    let c = engine.model_config();
    let (n_layers, d) = (c.n_layers, c.d_model);
    // diffs[layer][pair] = positive − negative
    let mut diffs = vec![Vec::with_capacity(pairs.len()); n_layers];
    for (pos, neg) in pairs {
        let p = activations(engine, pos, options.readout)?;
        let n = activations(engine, neg, options.readout)?;
        for (l, (p, n)) in p.iter().zip(&n).enumerate() {
            diffs[l].push(p.iter().zip(n).map(|(a, b)| a - b).collect::<Vec<f64>>());
        }
    }
    let method = match options.method {
        SteeringMethod::Mean => "mean_diff",
        SteeringMethod::Pca => "pca_diff",
    };
    let source = if options.source.is_empty() { format!("{} prompt pairs", pairs.len()) } else { options.source.clone() };
    let meta = SteeringMeta::now(method, source, Some(engine.base_fingerprint().0));
    let mut v = SteeringVector::new(d, meta)?;
    for (l, ds) in diffs.iter().enumerate() {
        let mean = mean_of(ds, d);
        let dir = match options.method {
            SteeringMethod::Mean => mean,
            SteeringMethod::Pca => pca_direction(ds, &mean),
        };
        v.insert(l, dir.iter().map(|x| *x as f32).collect())?;
    }
    Ok(v)
}

fn mean_of(rows: &[Vec<f64>], d: usize) -> Vec<f64> {
    let mut m = vec![0.0; d];
    for r in rows {
        for (a, b) in m.iter_mut().zip(r) {
            *a += b;
        }
    }
    let n = rows.len().max(1) as f64;
    m.iter_mut().for_each(|a| *a /= n);
    m
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Top eigenvector `u` of `Σ dᵢdᵢᵀ` (power iteration from the mean, deterministic), signed so
/// that `u·mean ≥ 0`, returned as `(u·mean)·u`.
pub(crate) fn pca_direction(rows: &[Vec<f64>], mean: &[f64]) -> Vec<f64> {
    let d = mean.len();
    let start = if dot(mean, mean) > 0.0 { mean.to_vec() } else { rows.iter().find(|r| dot(r, r) > 0.0).cloned().unwrap_or_else(|| vec![0.0; d]) };
    let norm = dot(&start, &start).sqrt();
    if norm == 0.0 {
        return vec![0.0; d];
    }
    let mut u: Vec<f64> = start.iter().map(|x| x / norm).collect();
    for _ in 0..500 {
        let mut w = vec![0.0; d];
        for r in rows {
            let p = dot(r, &u);
            for (a, b) in w.iter_mut().zip(r) {
                *a += p * b;
            }
        }
        let n = dot(&w, &w).sqrt();
        if n == 0.0 {
            break;
        }
        w.iter_mut().for_each(|x| *x /= n);
        let change: f64 = w.iter().zip(&u).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        u = w;
        if change < 1e-12 {
            break;
        }
    }
    let mut proj = dot(&u, mean);
    if proj < 0.0 {
        u.iter_mut().for_each(|x| *x = -*x);
        proj = -proj;
    }
    u.iter().map(|x| x * proj).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_dominant_direction_with_the_means_sign() {
        // Differences mostly along x (one pair the other way); the mean is (2, 0).
        let rows = vec![vec![3.0, 0.1], vec![2.0, -0.1], vec![4.0, 0.0], vec![-1.0, 0.0]];
        let mean = mean_of(&rows, 2);
        let v = pca_direction(&rows, &mean);
        assert!(v[0] > 0.0 && v[1].abs() < 0.1 * v[0], "{v:?}");
        assert!((v[0] - mean[0]).abs() < 0.05, "scaled to the mean's projection: {v:?} vs {mean:?}");
        let neg: Vec<Vec<f64>> = rows.iter().map(|r| r.iter().map(|x| -x).collect()).collect();
        let vn = pca_direction(&neg, &mean_of(&neg, 2));
        assert!(vn[0] < 0.0);
    }
}
