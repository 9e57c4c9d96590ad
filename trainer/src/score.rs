//! Scoring answers with the training forward (for held-out loss, evaluation gates and DPO
//! margins): the same f32 math the trainer differentiates.

use tailor::adapters::LoraAdapter;
use tailor::Engine;

use crate::config::SftExample;
use crate::model::{Keep, Net};
use crate::params::LoraParams;
use crate::train_loop::sequence;
use crate::Result;

/// Log-probability of one answer given its prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnswerScore {
    /// `Σ log p(answer token | everything before it)`.
    pub logprob: f64,
    /// Answer tokens scored.
    pub tokens: usize,
}

impl AnswerScore {
    /// Mean negative log-likelihood per answer token.
    pub fn nll(&self) -> f64 {
        -self.logprob / self.tokens.max(1) as f64
    }
}

/// Scores every example's answer under the base plus `adapter` (`None`: the base alone), on
/// `threads` worker threads (`0`: the engine's). Sequences longer than the model's context
/// are cut.
pub fn score_answers(engine: &Engine, adapter: Option<&LoraAdapter>, examples: &[SftExample], threads: usize) -> Result<Vec<AnswerScore>> {
    let params = adapter.map(|a| LoraParams::from_adapter(a, engine.base_shapes(), engine.qk_layout())).transpose()?;
    let threads = if threads == 0 { engine.threads().max(1) } else { threads };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| crate::Error::invalid_config(format!("worker threads: {e}")))?;
    let net = Net::new(engine.model_config(), engine.weights(), &pool);
    {
        examples
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let s = sequence(&e.prompt_tokens, &e.answer_tokens, net.context_length().max(2));
                if s.targets.is_empty() {
                    return Ok(AnswerScore { logprob: 0.0, tokens: 0 });
                }
                let (logp, _) = net.forward(&s.tokens, &s.targets, params.as_ref(), Keep::Nothing).map_err(|err| match err {
                    crate::Error::InvalidExample { reason, .. } => crate::Error::InvalidExample { index, reason },
                    other => other,
                })?;
                Ok(AnswerScore { logprob: logp.iter().map(|&x| x as f64).sum(), tokens: logp.len() })
            })
            .collect()
    }
}

/// Mean answer-token NLL over `examples` (token-weighted).
pub fn mean_nll(scores: &[AnswerScore]) -> f64 {
    let (lp, n) = scores.iter().fold((0.0, 0usize), |(a, b), s| (a + s.logprob, b + s.tokens));
    -lp / n.max(1) as f64
}
