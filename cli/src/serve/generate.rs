//! Running one generation on a blocking thread: a session from the pool (or a new one), tokens
//! streamed through a channel, the session returned to the pool afterwards. `n` choices run
//! one after another on that session, so the prompt's prefill is done once and reused from the
//! KV cache by every later choice. A request whose
//! client goes away (its response future or SSE stream dropped) cancels its generation, in
//! prefill through the session's cancel handle and in decoding at the next token.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tailor::{CancelHandle, FinishReason, Flow, GenerateParams, Generation, Hooks, Prompt, TokenLogprob, ToolDelta};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::openai::Checked;
use super::pool::PoolKey;
use super::state::{AppState, Model, Stats};

/// What the generation thread sends.
pub(crate) enum Event {
    /// Text that became final in choice `choice` (may be empty when only log-probabilities or
    /// tool-call pieces come with it).
    Token { choice: usize, text: String, logprob: Option<TokenLogprob>, deltas: Vec<ToolDelta> },
    /// The end: the generation of every choice, or why it failed.
    Done(Result<Vec<Generation>, ApiError>),
}

/// A generation to run.
pub(crate) struct Job {
    pub(crate) model: Arc<Model>,
    pub(crate) key: PoolKey,
    /// The request's own adapter/steering hooks (`None`: the model's registry).
    pub(crate) hooks: Option<Hooks>,
    pub(crate) memory: bool,
    pub(crate) prompt: Prompt,
    /// The prompt's tokens before memories are added (matched against pooled sessions).
    pub(crate) tokens: Vec<u32>,
    pub(crate) params: GenerateParams,
    pub(crate) use_pool: bool,
    /// Choices to generate.
    pub(crate) n: usize,
}

#[derive(Default)]
struct Cancel {
    gone: AtomicBool,
    done: AtomicBool,
    handle: Mutex<Option<CancelHandle>>,
}

/// Cancels its generation when dropped before the generation ended: held by the response
/// future (non-streamed) or the SSE stream, which the server drops when the client goes away.
pub(crate) struct CancelGuard(Arc<Cancel>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.0.done.load(Ordering::SeqCst) {
            self.0.gone.store(true, Ordering::SeqCst);
            if let Some(h) = self.0.handle.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                h.cancel();
            }
        }
    }
}

/// Checks the prompt's length against the context and settles `max_tokens`; builds the job.
pub(crate) fn prepare(state: &AppState, model: Arc<Model>, prompt: Prompt, tokens: Vec<u32>, checked: Checked, prompt_param: &'static str) -> Result<Job, ApiError> {
    let ctx = state.limits.context;
    let n = tokens.len();
    if n == 0 {
        return Err(ApiError::invalid(prompt_param, "The prompt is empty."));
    }
    if n >= ctx {
        return Err(ApiError::invalid_code(
            prompt_param,
            "context_length_exceeded",
            format!("This model's maximum context length is {ctx} tokens. However, your prompt is {n} tokens."),
        ));
    }
    let mut params = checked.params;
    params.max_tokens = match checked.max_tokens {
        Some(m) if n + m > ctx => {
            return Err(ApiError::invalid_code(
                "max_tokens",
                "context_length_exceeded",
                format!("This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({n} in the prompt, {m} for the completion).", n + m),
            ));
        }
        Some(m) => m,
        None => state.limits.max_tokens.min(ctx - n),
    };
    let t = &checked.tailor;
    let memory = t.memory.unwrap_or(true) && model.personal_model().is_some();
    let (hooks, selection) = if t.adapters.is_some() || t.steering.is_some() {
        let (h, k) = model.selection(&state.engine, t.adapters.as_deref().unwrap_or_default(), t.steering.as_deref().unwrap_or_default())?;
        (Some(h), Some(k))
    } else {
        (None, None)
    };
    let vocab = state.engine.model_config().vocab_size;
    if let Some((id, _)) = params.sampling.logit_bias.iter().find(|(id, _)| *id as usize >= vocab) {
        return Err(ApiError::invalid("logit_bias", format!("Invalid 'logit_bias': token id {id} is outside the vocabulary of {vocab}.")));
    }
    let key = AppState::key(&model, selection, memory);
    let use_pool = state.prefix_cache && t.prefix_cache.unwrap_or(true);
    Ok(Job { model, key, hooks, memory, prompt, tokens, params, use_pool, n: checked.n })
}

/// Waits for a generation slot, then starts `job` on a blocking thread. The receiver yields
/// tokens and then one [`Event::Done`]; dropping the guard cancels.
pub(crate) async fn start(state: Arc<AppState>, job: Job) -> Result<(mpsc::Receiver<Event>, CancelGuard), ApiError> {
    let permit = state.slots.clone().acquire_owned().await.map_err(|_| ApiError::unavailable("the server is shutting down"))?;
    let (tx, rx) = mpsc::channel(256);
    let cancel = Arc::new(Cancel::default());
    let c = cancel.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let stats = &state.stats;
        Stats::add(&stats.active, 1);
        let started = Instant::now();
        let model_id = job.model.id.clone();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| run(&state, job, &tx, &c))).unwrap_or_else(|_| Err(ApiError::internal("the generation panicked (a bug)")));
        stats.active.fetch_sub(1, Ordering::Relaxed);
        let gone = c.gone.load(Ordering::SeqCst);
        match &r {
            Ok(gs) => {
                for g in gs {
                    Stats::add(&stats.prompt_tokens, g.prompt_tokens as u64);
                    Stats::add(&stats.cached_tokens, g.reused_tokens as u64);
                    Stats::add(&stats.completion_tokens, g.token_ids.len() as u64);
                }
                let g = &gs[0];
                if gone || gs.iter().any(|g| g.finish_reason == FinishReason::Cancelled) {
                    Stats::add(&stats.cancelled, 1);
                } else {
                    Stats::add(&stats.completed, 1);
                }
                eprintln!(
                    "[serve] {model_id}: prompt {} ({} cached) · {} tokens{} · {:?}{} · ttft {:.0} ms · {:.0} ms",
                    g.prompt_tokens,
                    g.reused_tokens,
                    g.token_ids.len(),
                    if gs.len() > 1 { format!(" ×{} choices", gs.len()) } else { String::new() },
                    g.finish_reason,
                    if gone { " (client gone)" } else { "" },
                    g.timings.ttft_ms,
                    started.elapsed().as_secs_f64() * 1000.0
                );
            }
            Err(e) if gone => {
                Stats::add(&stats.cancelled, 1);
                eprintln!("[serve] {model_id}: client gone before generation ({})", e.message);
            }
            Err(e) => {
                Stats::add(&stats.failed, 1);
                eprintln!("[serve] {model_id}: error {}", e.message);
            }
        }
        c.done.store(true, Ordering::SeqCst);
        let _ = tx.blocking_send(Event::Done(r));
    });
    Ok((rx, CancelGuard(cancel)))
}

fn run(state: &AppState, job: Job, tx: &mpsc::Sender<Event>, cancel: &Cancel) -> Result<Vec<Generation>, ApiError> {
    let pooled = if job.use_pool { state.pool.take(&job.key, &job.tokens) } else { None };
    Stats::add(if pooled.is_some() { &state.stats.pool_hits } else { &state.stats.pool_misses }, 1);
    let mut session = match pooled {
        Some(s) => s,
        None => job.model.new_session(&state.engine, state.limits.context, job.hooks.clone(), job.memory),
    };
    *cancel.handle.lock().unwrap_or_else(|e| e.into_inner()) = Some(session.cancel_handle());
    if cancel.gone.load(Ordering::SeqCst) {
        return Err(ApiError::invalid(None, "the client went away"));
    }
    let mut result = Ok(Vec::with_capacity(job.n));
    for choice in 0..job.n {
        // Each choice draws its own numbers: seed + choice when a seed was given.
        let mut params = job.params.clone();
        params.sampling.seed = params.sampling.seed.map(|s| s.wrapping_add(choice as u64));
        let r = session.generate(&job.prompt, &params, &mut |ev| {
            if cancel.gone.load(Ordering::SeqCst) {
                return Flow::Stop;
            }
            if !ev.text.is_empty() || ev.logprob.is_some() || !ev.tool_deltas.is_empty() {
                let e = Event::Token { choice, text: ev.text.to_string(), logprob: ev.logprob.cloned(), deltas: ev.tool_deltas.to_vec() };
                if tx.blocking_send(e).is_err() {
                    cancel.gone.store(true, Ordering::SeqCst);
                    return Flow::Stop;
                }
            }
            Flow::Continue
        });
        match r {
            Ok(g) => {
                let stop = g.finish_reason == FinishReason::Cancelled || cancel.gone.load(Ordering::SeqCst);
                if let Ok(v) = result.as_mut() {
                    v.push(g);
                }
                if stop {
                    break;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if job.use_pool {
        let mut held = job.tokens;
        // The session's cache ends with the last choice.
        if let Some(g) = result.as_ref().ok().and_then(|v| v.last()) {
            held.extend_from_slice(&g.token_ids);
        }
        state.pool.put(job.key, session, held);
    }
    Ok(result?)
}

/// Collects a whole generation (non-streamed responses): one per choice.
pub(crate) async fn collect(mut rx: mpsc::Receiver<Event>) -> Result<Vec<Generation>, ApiError> {
    while let Some(e) = rx.recv().await {
        if let Event::Done(r) = e {
            return r;
        }
    }
    Err(ApiError::internal("the generation thread ended without an answer"))
}
