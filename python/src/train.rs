//! `tailor.train_lora` and `tailor.mean_nll`: SFT through the frozen quantized base
//! (`tailor_trainer::Trainer`) and the answer-token NLL it minimises.

use std::str::FromStr;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tailor::adapters::Target;
use tailor::{ChatMessage, Engine};
use tailor_trainer::{Flow, SftExample, StopReason, TrainConfig, TrainData, Trainer};

use crate::adapter::PyAdapter;
use crate::engine::PyEngine;
use crate::errors::{detach, Error, Result};

/// Prompt/answer pairs as token sequences. With `chat_template` the prompt is a user message in
/// the model's chat template (ending with the assistant's turn) and the answer is closed by the
/// end-of-turn token, as the profile trainer builds its examples; without, both are tokenized
/// as they are.
pub(crate) fn sft_examples(engine: &Engine, examples: &[(String, String)], chat_template: bool) -> Result<Vec<SftExample>> {
    examples
        .iter()
        .map(|(prompt, answer)| {
            Ok(if chat_template {
                SftExample {
                    prompt_tokens: engine.tokenize(&engine.render_chat(&[ChatMessage::user(prompt.clone())])?)?,
                    answer_tokens: engine.tokenize(&format!("{answer}<|im_end|>"))?,
                }
            } else {
                SftExample { prompt_tokens: engine.tokenize(prompt)?, answer_tokens: engine.tokenize(answer)? }
            })
        })
        .collect()
}

fn stop_name(s: &StopReason) -> String {
    let debug = format!("{s:?}");
    let name = debug.split([' ', '(', '{']).next().unwrap_or("").to_owned();
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// Trains a LoRA adapter on prompt/answer pairs; returns it and the run's metrics.
#[pyfunction]
#[pyo3(signature = (
    engine, examples, *, steps = 20, learning_rate = 1e-3, rank = 8, alpha = 16.0, targets = None, init = None,
    freeze_a = false, frozen_rank = 0, seed = 0, batch_size = 1, chat_template = true, warmup_steps = 0, max_seq_len = 512, threads = 0
))]
#[allow(clippy::too_many_arguments)]
pub fn train_lora<'py>(
    py: Python<'py>,
    engine: Bound<'py, PyEngine>,
    examples: Vec<(String, String)>,
    steps: usize,
    learning_rate: f32,
    rank: usize,
    alpha: f64,
    targets: Option<Vec<String>>,
    init: Option<Bound<'py, PyAdapter>>,
    freeze_a: bool,
    frozen_rank: usize,
    seed: u64,
    batch_size: usize,
    chat_template: bool,
    warmup_steps: usize,
    max_seq_len: usize,
    threads: usize,
) -> PyResult<(PyAdapter, Bound<'py, PyDict>)> {
    let mut config = TrainConfig::default();
    config.max_steps = Some(steps);
    config.learning_rate = learning_rate;
    config.lora_rank = rank;
    config.lora_alpha = alpha;
    if let Some(t) = targets {
        config.targets = t.iter().map(|n| Target::from_str(n)).collect::<std::result::Result<_, _>>().map_err(Error::from)?;
    }
    config.freeze_a = freeze_a;
    config.frozen_rank = frozen_rank;
    config.seed = seed;
    config.batch_size = batch_size;
    config.warmup_steps = warmup_steps;
    config.max_seq_len = max_seq_len;
    config.threads = threads;
    let init = init.map(|a| a.get().inner.clone());
    let e = engine.get();
    let out = detach(py, move || {
        let data = TrainData::sft(sft_examples(&e.engine, &examples, chat_template)?);
        let mut trainer = Trainer::new(&e.engine, config)?;
        if let Some(a) = init {
            trainer = trainer.with_initial_adapter((*a).clone())?;
        }
        Ok(trainer.train(&data, &mut |_| Flow::Continue)?)
    })?;
    let m = &out.metrics;
    let d = PyDict::new(py);
    d.set_item("steps", m.steps)?;
    d.set_item("total_steps", m.total_steps)?;
    d.set_item("final_loss", m.losses.last().copied().map(f64::from))?;
    d.set_item("losses", m.losses.clone())?;
    d.set_item("tokens_per_s", m.tokens_per_s)?;
    d.set_item("trained_tokens", m.trained_tokens)?;
    d.set_item("seconds", m.elapsed.as_secs_f64())?;
    d.set_item("stop", stop_name(&m.stop))?;
    Ok((PyAdapter::new(out.adapter), d))
}

/// Mean answer-token negative log-likelihood of prompt/answer pairs under the base plus
/// `adapter` (token-weighted, the training forward's f32 math).
#[pyfunction]
#[pyo3(signature = (engine, examples, *, adapter = None, chat_template = true))]
pub fn mean_nll(
    py: Python<'_>,
    engine: Bound<'_, PyEngine>,
    examples: Vec<(String, String)>,
    adapter: Option<Bound<'_, PyAdapter>>,
    chat_template: bool,
) -> PyResult<f64> {
    let adapter = adapter.map(|a| a.get().inner.clone());
    let e = engine.get();
    detach(py, move || {
        if examples.is_empty() {
            return Err(Error::invalid("no examples to score"));
        }
        let ex = sft_examples(&e.engine, &examples, chat_template)?;
        let scores = tailor_trainer::score_answers(&e.engine, adapter.as_deref(), &ex, 0)?;
        Ok(tailor_trainer::mean_nll(&scores))
    })
}
