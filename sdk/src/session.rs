//! A [`Session`]: one conversation with its KV cache, generating with streaming, stop
//! conditions and cancellation.
//!
//! # Context policy
//! A session holds at most its context window of tokens (prompt and answer). With
//! [`ContextPolicy::Slide`] (the default) a conversation never hits that wall:
//! - a chat prompt that does not fit (with room for the answer) loses its oldest exchanges,
//!   never the system prompt (with its memories) nor the last user message; the
//!   [`Generation::dropped_messages`] says how many went, and [`Session::chat`] drops them from
//!   its history (with conversation memory on, they were stored in the profile and come back
//!   when relevant);
//! - an answer that fills the window shifts the cache as llama.cpp's context shift does: the
//!   system prompt's tokens (at least [`SessionConfig::sink_tokens`], StreamingLLM's attention
//!   sinks) stay, the older half of the rest goes, and the kept keys are rotated to their new
//!   positions instead of being run again;
//! - a prompt that shares a run of tokens with the cache after a gap (turns dropped in the
//!   middle) reuses that run by shifting it into place.
//!
//! A raw text or token prompt longer than the window, or a last user message that alone does
//! not fit, is rejected with [`Error::ContextOverflow`] before any work. With
//! [`ContextPolicy::Stop`] nothing is dropped: a prompt that does not fit is rejected and a
//! generation that fills the window stops with [`FinishReason::ContextFull`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::decode::forward::{Logits, Scratch};
use crate::decode::hooks::{HookSource, Hooks};
use crate::decode::kv_cache::{KvCache, KvCacheType};
use crate::decode::sampler::{log_softmax, Sampler, SamplingParams};
use crate::decode::team::Par;
use crate::engine::Engine;
use crate::memory::{MemoryPromptConfig, RecalledMemory, SharedMemory};
use crate::grammar::Grammar;
use crate::text::chat_template::ChatMessage;
use crate::text::tools::{ToolDelta, ToolStream};
use crate::{Error, Result};

/// What a session does at the end of its context window (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextPolicy {
    /// Drop the oldest exchanges of a chat prompt and shift the cache during an answer.
    #[default]
    Slide,
    /// Refuse prompts that do not fit; end a generation that fills the window
    /// ([`FinishReason::ContextFull`]).
    Stop,
}

/// Settings of one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Context window in tokens (`None`: the engine's default). Clamped to the model's.
    pub context_length: Option<usize>,
    /// How keys are stored in the KV cache (`None`: the engine's [`EngineConfig::cache_type_k`](crate::EngineConfig)).
    pub cache_type_k: Option<KvCacheType>,
    /// How values are stored in the KV cache (`None`: the engine's).
    pub cache_type_v: Option<KvCacheType>,
    /// What happens at the end of the window.
    pub context_policy: ContextPolicy,
    /// Tokens at the start of the cache a context shift always keeps, when the prompt has no
    /// longer system part (StreamingLLM's attention sinks).
    pub sink_tokens: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { context_length: None, cache_type_k: None, cache_type_v: None, context_policy: ContextPolicy::Slide, sink_tokens: 4 }
    }
}

impl SessionConfig {
    /// A session with a context window of `n` tokens.
    pub fn with_context(n: usize) -> Self {
        Self { context_length: Some(n), ..Self::default() }
    }

    /// Stores keys as `k` and values as `v` in the KV cache.
    pub fn with_cache_types(mut self, k: KvCacheType, v: KvCacheType) -> Self {
        self.cache_type_k = Some(k);
        self.cache_type_v = Some(v);
        self
    }

    /// Sets the [`ContextPolicy`].
    pub fn with_policy(mut self, policy: ContextPolicy) -> Self {
        self.context_policy = policy;
        self
    }
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// Raw text, used as is (no template); control tokens written in it are parsed.
    Text(String),
    /// Token ids, used as is.
    Tokens(Vec<u32>),
    /// A conversation, rendered with the model's chat template and a generation prompt.
    Chat(Vec<ChatMessage>),
}

/// Settings of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct GenerateParams {
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// At most this many new tokens.
    pub max_tokens: usize,
    /// Stop as soon as the text contains one of these (the stop string is not returned).
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Report the log-probability of each generated token and the `top` most likely
    /// alternatives (`Some(0)`: only the chosen token's).
    pub logprobs: Option<usize>,
    /// Constrain the answer to a grammar (JSON Schema, any JSON object, regex, Lark); the
    /// generation ends by itself once the grammar is complete. With `tools` (and a choice
    /// other than `none`) only a JSON Schema or JSON object may be given: it constrains the
    /// answer when the model answers instead of calling.
    pub grammar: Option<crate::grammar::Grammar>,
    /// Tools the model may call, for [`Prompt::Chat`] prompts ([`crate::text::tools`]): the
    /// definitions go into the prompt, the answer is constrained to calls or a response, and
    /// the [`Generation`] carries the calls.
    pub tools: Option<crate::text::tools::ToolSet>,
}

impl GenerateParams {
    /// The grammar a chat answer follows: with tools that may be called, calls or a response
    /// (`grammar`, a JSON schema or JSON object, constrains the response); otherwise `grammar`.
    /// A regex or Lark grammar beside callable tools is an invalid argument.
    pub fn answer_grammar(&self) -> Result<Option<Grammar>> {
        let Some(tools) = self.tools.as_ref().filter(|t| t.active()) else { return Ok(self.grammar.clone()) };
        let response = match &self.grammar {
            None => None,
            Some(Grammar::JsonSchema(s)) => Some(s.clone()),
            Some(Grammar::JsonObject) => Some(serde_json::json!({"type": "object"})),
            Some(_) => return Err(Error::invalid("with tools, the answer's grammar must be a JSON schema or a JSON object")),
        };
        Ok(tools.grammar(response.as_ref()))
    }
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self { sampling: SamplingParams::default(), max_tokens: 256, stop: Vec::new(), ignore_eos: false, logprobs: None, grammar: None, tools: None }
    }
}

/// Whether generation goes on after a streamed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// Stop now ([`FinishReason::Callback`]).
    Stop,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context window is full.
    ContextFull,
    /// The token callback returned [`Flow::Stop`].
    Callback,
    /// Cancelled through a [`CancelHandle`].
    Cancelled,
}

/// One alternative at a position, in OpenAI's `top_logprobs` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The token's text (lossy UTF-8).
    pub token: String,
    /// Natural-log probability under the model.
    pub logprob: f32,
    /// The token's bytes.
    pub bytes: Vec<u8>,
}

/// A generated token's log-probability, in OpenAI's `logprobs.content[]` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text (lossy UTF-8).
    pub token: String,
    /// Natural-log probability under the model (before sampling transforms).
    pub logprob: f32,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position.
    pub top_logprobs: Vec<TopLogprob>,
}

/// A streamed piece of a generation.
#[derive(Debug)]
#[non_exhaustive]
pub struct TokenEvent<'a> {
    /// The token just generated.
    pub token_id: u32,
    /// Index of the token in the answer.
    pub index: usize,
    /// Text that became final with this token: whole UTF-8 characters only; may be empty
    /// (a character still incomplete, or text held back while it may begin a stop string).
    pub text: &'a str,
    /// The token's log-probabilities, when asked for.
    pub logprob: Option<&'a TokenLogprob>,
    /// With [`GenerateParams::tools`]: calls that began and their arguments' new text (the
    /// answer's text to the user comes in `text`, the tool format's JSON taken off).
    pub tool_deltas: &'a [crate::text::tools::ToolDelta],
}

/// Time spent, in milliseconds, and rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Prompt tokens actually run (excludes the reused prefix).
    pub prefill_tokens: usize,
    /// Time to run them.
    pub prefill_ms: f64,
    /// Tokens run one by one after the first generated token.
    pub decode_tokens: usize,
    /// Time for those.
    pub decode_ms: f64,
    /// From the call to the first generated token.
    pub ttft_ms: f64,
}

impl Timings {
    /// Prompt tokens per second.
    pub fn prefill_tok_per_s(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill_ms)
    }
    /// Generated tokens per second (after the first).
    pub fn decode_tok_per_s(&self) -> f64 {
        rate(self.decode_tokens, self.decode_ms)
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 { n as f64 * 1000.0 / ms } else { 0.0 }
}

/// The result of a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// Generated token ids (without the end-of-generation token).
    pub token_ids: Vec<u32>,
    /// Generated text (without a matched stop string).
    pub text: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were reused from the session's cache.
    pub reused_tokens: usize,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Time spent.
    pub timings: Timings,
    /// Per-token log-probabilities, when asked for.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// The memories retrieved into the prompt (empty without a profile store or when none
    /// was relevant).
    pub memories: Vec<RecalledMemory>,
    /// With [`GenerateParams::tools`]: the calls the model made (then `text` is empty, or
    /// holds the answer to the user when it answered instead).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::text::tools::ToolCall>,
    /// Messages of a chat prompt left out because the conversation no longer fitted the
    /// window (the oldest exchanges after the system prompt; [`ContextPolicy::Slide`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_messages: usize,
    /// Context shifts during the answer (each dropped the older half of the cache after the
    /// kept start).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub context_shifts: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Stops a session's generation from another thread. `Send + Sync`, cheap to clone; it
/// outlives its session harmlessly (cancelling a dropped session does nothing).
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// Asks the generation in progress to stop at the next token (or prefill chunk). A
    /// request made while no generation runs is cleared when the next one starts.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a cancel is pending.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// One conversation: a KV cache and the tokens it holds. `Send` (move it to any thread) but
/// used by one thread at a time (`&mut self`). Follow-up prompts that extend what the cache
/// holds only run their new tokens.
pub struct Session {
    engine: Engine,
    cache: KvCache,
    cached: Vec<u32>,
    scratch: Scratch,
    hooks: Hooks,
    /// Where hooks come from when they follow a registry, and the generation in use.
    source: Option<(Arc<dyn HookSource>, u64)>,
    cancel: CancelHandle,
    history: Vec<ChatMessage>,
    memory: Option<(SharedMemory, MemoryPromptConfig)>,
    /// The hooks plus the memory reader, while the cache holds a prompt with memories that
    /// was run with them (`None`: the cache was built with `hooks` alone).
    with_reader: Option<Hooks>,
    policy: ContextPolicy,
    sinks: usize,
    /// Conversation memories this session recorded, with their user message: left out of
    /// retrieval while that message is still in the prompt.
    recorded: Vec<(i64, String)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("cached_tokens", &self.cached.len()).field("context", &self.cache.capacity()).finish()
    }
}

impl Session {
    pub(crate) fn new(engine: Engine, config: SessionConfig) -> Result<Self> {
        let ctx = engine.context_for(config.context_length);
        let c = &engine.inner.model.cfg;
        let ec = &engine.inner.config;
        let (tk, tv) = (config.cache_type_k.unwrap_or(ec.cache_type_k), config.cache_type_v.unwrap_or(ec.cache_type_v));
        let cache = KvCache::with_types(c.n_layers, c.n_kv_heads, c.head_dim, ctx, tk, tv)?;
        Ok(Self {
            engine,
            cache,
            cached: Vec::new(),
            scratch: Scratch::default(),
            hooks: Hooks::none(),
            source: None,
            cancel: CancelHandle::default(),
            history: Vec::new(),
            memory: None,
            with_reader: None,
            policy: config.context_policy,
            sinks: config.sink_tokens,
            recorded: Vec::new(),
        })
    }

    /// How the KV cache stores keys and values.
    pub fn cache_types(&self) -> (KvCacheType, KvCacheType) {
        self.cache.types()
    }

    /// Bytes of KV cache one token takes in this session.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.cache.bytes_per_token()
    }

    /// The engine this session runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Context window in tokens.
    pub fn context_length(&self) -> usize {
        self.cache.capacity()
    }

    /// The tokens whose keys and values the cache holds.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// A handle that cancels this session's generations from another thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// The hooks (LoRA deltas, steering) this session runs with.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// Replaces the hooks (and stops following a [`HookSource`]). The cache was computed with
    /// the old ones, so it is cleared.
    pub fn set_hooks(&mut self, hooks: Hooks) {
        self.hooks = hooks;
        self.source = None;
        self.clear_cache();
    }

    /// Follows `source` (e.g. an [`crate::AdapterRegistry`]): each generation (and each
    /// [`Session::feed`] / [`Session::logits_all`]) starts with the source's current hooks;
    /// when they changed since the cache was built, the cache is recomputed.
    pub fn follow(&mut self, source: Arc<dyn HookSource>) {
        self.source = Some((source, u64::MAX));
        self.refresh_hooks();
    }

    /// Takes the source's current hooks if they changed.
    fn refresh_hooks(&mut self) {
        if let Some((src, seen)) = &mut self.source {
            let (generation, hooks) = src.snapshot();
            if generation != *seen {
                *seen = generation;
                self.hooks = hooks;
                self.cache.truncate(0);
                self.cached.clear();
                self.with_reader = None;
            }
        }
    }

    /// Drops cached positions `keep..keep + discard` and moves the later ones down, re-rotating
    /// their keys (what a sliding generation does when the window is full; exposed for hosts
    /// that manage the window themselves and for benchmarks). Out-of-range values are clamped.
    pub fn shift_context(&mut self, keep: usize, discard: usize) {
        let keep = keep.min(self.cached.len());
        let discard = discard.min(self.cached.len() - keep);
        self.engine.inner.model.shift_cache(&mut self.cache, keep, discard);
        self.cached.drain(keep..keep + discard);
    }

    /// Forgets the cached tokens (the conversation history is kept).
    pub fn clear_cache(&mut self) {
        self.cache.truncate(0);
        self.cached.clear();
        self.with_reader = None;
    }

    /// Switches the memory reader on or off for what runs next; the cache, built with the
    /// other setting, is cleared when it changes.
    fn use_reader(&mut self, on: bool) {
        if on == self.with_reader.is_some() {
            return;
        }
        let stacked = match (on, self.engine.memory_reader()) {
            (true, Some(r)) => Some(crate::memory_reader::stack(&self.engine, &self.hooks, &r)),
            _ => None,
        };
        self.clear_cache();
        self.with_reader = stacked;
    }

    /// Retrieves from `store` into the system prompt of every [`Prompt::Chat`] generation
    /// (see [`crate::memory`]); `None` turns memory off.
    pub fn set_memory(&mut self, store: Option<SharedMemory>, config: MemoryPromptConfig) {
        self.memory = store.map(|s| (s, config));
    }

    /// The conversation so far (for [`Session::chat`]).
    pub fn history(&self) -> &[ChatMessage] {
        &self.history
    }

    /// Replaces the conversation (e.g. to set a system prompt or restore a saved one).
    pub fn set_history(&mut self, history: Vec<ChatMessage>) {
        self.history = history;
    }

    /// Sends a user message in the session's conversation and generates the answer, which is
    /// appended to the history. Only the tokens the cache does not hold yet are run.
    pub fn chat(
        &mut self,
        user: &str,
        params: &GenerateParams,
        on_token: &mut dyn FnMut(&TokenEvent<'_>) -> Flow,
    ) -> Result<Generation> {
        let mut messages = self.history.clone();
        messages.push(ChatMessage::user(user));
        let g = self.generate(&Prompt::Chat(messages), params, on_token)?;
        if g.dropped_messages > 0 {
            let first = self.history.iter().take_while(|m| m.role == "system").count();
            let n = g.dropped_messages.min(self.history.len() - first);
            self.history.drain(first..first + n);
        }
        self.history.push(ChatMessage::user(user));
        self.history.push(ChatMessage::assistant(g.text.clone()));
        if let Some((store, cfg)) = &self.memory {
            if cfg.record_turns && crate::memory::worth_recording(user) {
                let id = crate::memory::record_turn(store, user, &g.text)?;
                self.recorded.push((id, user.trim().to_string()));
            }
        }
        let history = &self.history;
        self.recorded.retain(|(_, text)| history.iter().any(|m| m.role == "user" && m.content.trim() == text));
        Ok(g)
    }

    /// Tokenizes a prompt as [`Session::generate`] would.
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let inner = &self.engine.inner;
        match prompt {
            Prompt::Text(t) => inner.tokenizer.encode(t, true),
            Prompt::Tokens(t) => Ok(t.clone()),
            Prompt::Chat(m) => inner.tokenizer.encode(&inner.template.render(m, true)?, true),
        }
    }

    /// Logits of every position of `tokens` run from an empty cache (for tests and
    /// evaluation; `[n, vocab]` row-major). Leaves the cache holding `tokens`.
    pub fn logits_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.refresh_hooks();
        self.clear_cache();
        self.run(tokens, Logits::All)?;
        Ok(self.scratch.logits.clone())
    }

    /// Runs `tokens` after what the cache holds and returns the logits of every one of them
    /// (`[tokens.len(), vocab]`; for evaluating long texts chunk by chunk).
    pub fn feed_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.refresh_hooks();
        self.use_reader(false);
        self.run(tokens, Logits::All)?;
        Ok(std::mem::take(&mut self.scratch.logits))
    }

    /// Runs `tokens` after what the cache holds and returns the last position's logits.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.refresh_hooks();
        self.use_reader(false);
        self.run(tokens, Logits::Last)?;
        Ok(self.scratch.logits.clone())
    }

    /// Renders `messages` (with the memory `block` in the system prompt) to tokens; with
    /// [`ContextPolicy::Slide`], when they do not fit with room for the answer, without their
    /// oldest exchanges (down to a quarter of the window below the limit, so that the next
    /// turns fit again without dropping more each time). Returns the tokens and how many
    /// messages were dropped.
    fn fit_chat(&self, messages: &[ChatMessage], block: Option<&str>, params: &GenerateParams) -> Result<(Vec<u32>, usize)> {
        let ctx = self.cache.capacity();
        let mut tokens = self.render_chat(messages, block, params, true)?;
        let room = params.max_tokens.min(ctx / 4).max(1);
        if self.policy == ContextPolicy::Stop || tokens.len() + room <= ctx {
            return Ok((tokens, 0));
        }
        let target = ctx.saturating_sub(room + ctx / 4).max(1);
        let first = messages.iter().take_while(|m| m.role == "system").count();
        let last_user = messages.iter().rposition(|m| m.role == "user").unwrap_or(messages.len().saturating_sub(1));
        let mut end = first;
        while tokens.len() > target && end < last_user {
            // One exchange: up to the next user message.
            end += 1;
            while end < last_user && messages[end].role != "user" {
                end += 1;
            }
            let mut kept = messages[..first].to_vec();
            kept.extend_from_slice(&messages[end..]);
            tokens = self.render_chat(&kept, block, params, true)?;
        }
        Ok((tokens, end - first))
    }

    fn render_chat(&self, messages: &[ChatMessage], block: Option<&str>, params: &GenerateParams, add_generation_prompt: bool) -> Result<Vec<u32>> {
        let inner = &self.engine.inner;
        let with_block;
        let messages = match block {
            Some(b) => {
                with_block = crate::memory::with_memories(messages, b);
                &with_block[..]
            }
            None => messages,
        };
        let text = match &params.tools {
            Some(t) => inner.template.render_with_tools(messages, Some(t), add_generation_prompt)?,
            None => inner.template.render(messages, add_generation_prompt)?,
        };
        inner.tokenizer.encode(&text, true)
    }

    /// How many leading tokens of `tokens` are the conversation's system part (its system
    /// messages with the memory block, as the template renders them alone), capped at half
    /// the window so that a shift always frees room.
    fn system_tokens(&self, messages: &[ChatMessage], block: Option<&str>, tokens: &[u32]) -> usize {
        let first = messages.iter().take_while(|m| m.role == "system").count();
        let params = GenerateParams::default();
        let n = match self.render_chat(&messages[..first], block, &params, false) {
            Ok(sys) => sys.iter().zip(tokens).take_while(|(a, b)| a == b).count(),
            Err(_) => 0,
        };
        if n * 2 > self.cache.capacity() { 0 } else { n }
    }

    /// Whether a context shift can free room (the policy allows it and the cache holds more
    /// than what it keeps).
    fn slides(&self, keep: usize) -> bool {
        self.policy == ContextPolicy::Slide && self.cached.len() > self.shift_keep(keep) + 1
    }

    fn shift_keep(&self, keep: usize) -> usize {
        keep.min(self.cache.capacity() / 2)
    }

    /// Context shift: keeps the first `keep` tokens, drops the older half of the rest.
    fn shift(&mut self, keep: usize) {
        let keep = self.shift_keep(keep);
        let discard = ((self.cached.len() - keep) / 2).max(1);
        self.shift_context(keep, discard);
    }

    fn run(&mut self, tokens: &[u32], want: Logits) -> Result<()> {
        let inner = self.engine.inner.clone();
        let chunk = inner.config.prefill_chunk;
        if self.cached.len() + tokens.len() > self.cache.capacity() {
            return Err(Error::ContextOverflow { needed: self.cached.len() + tokens.len(), context: self.cache.capacity() });
        }
        let mut all = Vec::new();
        let pieces: Vec<&[u32]> = tokens.chunks(chunk).collect();
        for (i, piece) in pieces.iter().enumerate() {
            if self.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let last = i + 1 == pieces.len();
            let w = match want {
                Logits::All => Logits::All,
                Logits::Last if last => Logits::Last,
                _ => Logits::None,
            };
            let team = inner.team.try_lock();
            let par = match &team {
                Ok(t) => Par::Team(t),
                // Another session holds the team: run alone instead of waiting (with several
                // sessions busy, the cores are busy anyway).
                Err(_) => Par::Serial,
            };
            let hooks = self.with_reader.as_ref().unwrap_or(&self.hooks);
            inner.model.forward(piece, &mut self.cache, hooks, &mut self.scratch, w, par)?;
            drop(team);
            self.cached.extend_from_slice(piece);
            if want == Logits::All {
                all.extend_from_slice(&self.scratch.logits);
            }
        }
        if want == Logits::All {
            self.scratch.logits = all;
        }
        Ok(())
    }

    /// Generates from `prompt`, streaming through `on_token`.
    ///
    /// The prompt is the whole context: the longest prefix of it the cache already holds is
    /// reused, the rest is run. Returns [`Error::EmptyPrompt`] or [`Error::ContextOverflow`]
    /// for a prompt that cannot run; otherwise the generation, whatever ended it.
    pub fn generate(
        &mut self,
        prompt: &Prompt,
        params: &GenerateParams,
        on_token: &mut dyn FnMut(&TokenEvent<'_>) -> Flow,
    ) -> Result<Generation> {
        let start = Instant::now();
        let _running = Running::start(&self.engine);
        self.cancel.0.store(false, Ordering::SeqCst);
        self.refresh_hooks();
        params.sampling.validate().map_err(Error::invalid)?;
        // Compile the grammar before any work, so a bad one fails at once.
        let tools = params.tools.as_ref().filter(|t| t.active() && matches!(prompt, Prompt::Chat(_)));
        let grammar = if tools.is_some() { params.answer_grammar()? } else { params.grammar.clone() };
        let mut constraint = match &grammar {
            Some(g) => Some(crate::grammar::Constraint::new(&*self.engine.grammar_factory()?, g)?),
            None => None,
        };
        let mut tool_stream = tools.map(|_| ToolStream::new());
        let (block, memories) = match (prompt, &self.memory) {
            (Prompt::Chat(messages), Some((store, cfg))) => {
                let exclude: Vec<i64> = self
                    .recorded
                    .iter()
                    .filter(|(_, t)| messages.iter().any(|m| m.role == "user" && m.content.trim() == t))
                    .map(|(id, _)| *id)
                    .collect();
                crate::memory::recall(messages, store, cfg, &self.engine.inner.tokenizer, &exclude, self.cache.capacity())?
            }
            _ => (None, Vec::new()),
        };
        let reader = !memories.is_empty() && self.memory.as_ref().is_some_and(|(_, c)| c.reader);
        self.use_reader(reader && self.engine.memory_reader().is_some());
        let ctx = self.cache.capacity();
        let (tokens, dropped_messages) = match prompt {
            Prompt::Chat(messages) => self.fit_chat(messages, block.as_deref(), params)?,
            p => (self.prompt_tokens(p)?, 0),
        };
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if tokens.len() > ctx {
            return Err(Error::ContextOverflow { needed: tokens.len(), context: ctx });
        }
        let vocab = self.engine.inner.model.cfg.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(format!("token id {bad} outside the vocabulary of {vocab}")));
        }
        // What a context shift keeps: the system part of a chat prompt, at least the sinks.
        let keep = match prompt {
            Prompt::Chat(messages) => self.system_tokens(messages, block.as_deref(), &tokens),
            _ => 0,
        }
        .max(self.sinks);

        // Reuse the longest cached prefix, keeping at least one token to run for logits; after
        // a gap (turns dropped in the middle), reuse the run that follows it by shifting it.
        let mut common = self.cached.iter().zip(&tokens).take_while(|(a, b)| a == b).count().min(tokens.len() - 1);
        if self.policy == ContextPolicy::Slide {
            if let Some((gap, run)) = shifted_run(&self.cached, &tokens, common) {
                // Only the run moves: what follows it is dropped first.
                self.cache.truncate(common + gap + run);
                self.cached.truncate(common + gap + run);
                self.engine.inner.model.shift_cache(&mut self.cache, common, gap);
                self.cached.drain(common..common + gap);
                common = (common + run).min(tokens.len() - 1);
            }
        }
        self.cache.truncate(common);
        self.cached.truncate(common);
        let mut timings = Timings { prefill_tokens: tokens.len() - common, ..Timings::default() };
        let mut out = Generation {
            token_ids: Vec::new(),
            text: String::new(),
            prompt_tokens: tokens.len(),
            reused_tokens: common,
            finish_reason: FinishReason::Length,
            timings: Timings::default(),
            logprobs: params.logprobs.map(|_| Vec::new()),
            memories,
            tool_calls: Vec::new(),
            dropped_messages,
            context_shifts: 0,
        };
        match self.run(&tokens[common..], Logits::Last) {
            Ok(()) => {}
            Err(Error::Cancelled) => {
                out.finish_reason = FinishReason::Cancelled;
                out.timings = timings;
                return Ok(out);
            }
            Err(e) => return Err(e),
        }
        timings.prefill_ms = ms(start);

        let inner = self.engine.inner.clone();
        let tok = &inner.tokenizer;
        let mut sampler = Sampler::new(params.sampling.clone());
        let mut stream = tok.decode_stream(true);
        let mut history = tokens.clone();
        let mut emitted = 0usize;
        let stop_max = params.stop.iter().map(String::len).max().unwrap_or(0);
        let mut decode_start = None;
        let mut logits = std::mem::take(&mut self.scratch.logits);

        let reason = loop {
            if params.max_tokens == 0 {
                break FinishReason::Length;
            }
            let lp = params.logprobs.map(|top| logprob_of(tok, &logits, top));
            if let Some(c) = constraint.as_mut() {
                c.mask(&mut logits)?;
            }
            let id = sampler.sample(&mut logits, &history);
            let index = out.token_ids.len();
            if index == 0 {
                timings.ttft_ms = ms(start);
                decode_start = Some(Instant::now());
            }
            if !params.ignore_eos && tok.end_of_generation().contains(&id) {
                break FinishReason::Stop;
            }
            let lp = lp.map(|f| f(id));
            let mut grammar_done = false;
            if let Some(c) = constraint.as_mut() {
                c.commit(id)?;
                grammar_done = c.is_finished();
            }
            out.token_ids.push(id);
            history.push(id);
            out.text.push_str(&stream.step(tok, id));
            let at_length = out.token_ids.len() >= params.max_tokens;
            let at_ctx = self.cached.len() + 1 > ctx && !self.slides(keep);
            if at_length || at_ctx || grammar_done {
                out.text.push_str(&stream.finish());
            }
            // Stop strings: cut the text at the first match; hold back a tail that may
            // still become one.
            let mut search_from = emitted.saturating_sub(stop_max);
            while !out.text.is_char_boundary(search_from) {
                search_from -= 1;
            }
            let hit = params.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| out.text[search_from..].find(s.as_str()).map(|i| search_from + i)).min();
            let final_text = hit.is_some() || at_length || at_ctx || grammar_done;
            if let Some(cut) = hit {
                out.text.truncate(cut);
            }
            let ready = if final_text { out.text.len() } else { safe_len(&out.text, &params.stop) };
            let ready = ready.max(emitted);
            let piece = &out.text[emitted..ready];
            let (content, deltas);
            let (text, tool_deltas) = match tool_stream.as_mut() {
                None => (piece, &[][..]),
                Some(ts) => {
                    let mut d = ts.push(piece);
                    if final_text {
                        d.extend(ts.finish());
                    }
                    content = d.iter().filter_map(|x| if let ToolDelta::Content(t) = x { Some(t.as_str()) } else { None }).collect::<String>();
                    deltas = d.into_iter().filter(|x| !matches!(x, ToolDelta::Content(_))).collect::<Vec<_>>();
                    (content.as_str(), &deltas[..])
                }
            };
            let flow = on_token(&TokenEvent { token_id: id, index, text, logprob: lp.as_ref(), tool_deltas });
            emitted = ready;
            if let (Some(v), Some(lp)) = (out.logprobs.as_mut(), lp) {
                v.push(lp);
            }
            if hit.is_some() || grammar_done {
                break FinishReason::Stop;
            }
            if at_length {
                break FinishReason::Length;
            }
            if at_ctx {
                break FinishReason::ContextFull;
            }
            if flow == Flow::Stop {
                break FinishReason::Callback;
            }
            if self.cancel.is_cancelled() {
                break FinishReason::Cancelled;
            }
            if self.cached.len() + 1 > ctx {
                self.shift(keep);
                out.context_shifts += 1;
            }
            self.scratch.logits = logits;
            match self.run(&[id], Logits::Last) {
                Ok(()) => {}
                Err(Error::Cancelled) => {
                    logits = std::mem::take(&mut self.scratch.logits);
                    break FinishReason::Cancelled;
                }
                Err(e) => return Err(e),
            }
            timings.decode_tokens += 1;
            logits = std::mem::take(&mut self.scratch.logits);
        };
        self.scratch.logits = logits;
        if let Some(t) = decode_start {
            timings.decode_ms = ms(t);
        }
        out.finish_reason = reason;
        out.timings = timings;
        if let Some(mut ts) = tool_stream {
            if let Some(rest) = out.text.strip_prefix(ts.raw()).map(str::to_string) {
                ts.push(&rest);
            }
            let (content, calls) = ts.output();
            out.text = content;
            out.tool_calls = calls;
        }
        Ok(out)
    }
}

/// Shortest run of cached tokens worth shifting into place after a gap.
const MIN_SHIFTED_RUN: usize = 16;

/// After the common prefix `common` of `cached` and `tokens`: the gap in `cached` after which
/// the longest run of it continues `tokens` (`(gap, run)`), when that run is worth reusing.
fn shifted_run(cached: &[u32], tokens: &[u32], common: usize) -> Option<(usize, usize)> {
    let want = tokens.get(common..).filter(|w| !w.is_empty())?;
    let mut best: Option<(usize, usize)> = None;
    for s in common + 1..cached.len() {
        if cached[s] != want[0] {
            continue;
        }
        let run = cached[s..].iter().zip(want).take_while(|(a, b)| a == b).count();
        if run >= MIN_SHIFTED_RUN && best.is_none_or(|(_, r)| run > r) {
            best = Some((s - common, run));
            if s + run == cached.len() {
                break;
            }
        }
    }
    best
}

/// Counts a generation in [`Engine::generations_running`] while it lives.
struct Running(Arc<crate::engine::Inner>);

impl Running {
    fn start(engine: &Engine) -> Self {
        engine.inner.generating.fetch_add(1, Ordering::SeqCst);
        Running(engine.inner.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.generating.fetch_sub(1, Ordering::SeqCst);
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Length of the prefix of `text` that cannot be the start of a stop string (on a char
/// boundary).
fn safe_len(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for s in stops {
        for k in (1..s.len().min(text.len() + 1)).rev() {
            if text.is_char_boundary(text.len() - k) && s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                hold = hold.max(k);
                break;
            }
        }
    }
    text.len() - hold
}

/// Log-probabilities of a position, computed once; returns a closure picking the chosen one.
fn logprob_of<'a>(tok: &'a crate::text::tokenizer::Tokenizer, logits: &[f32], top: usize) -> impl FnOnce(u32) -> TokenLogprob + 'a {
    let ls = log_softmax(logits);
    let mut idx: Vec<u32> = (0..ls.len() as u32).collect();
    let k = top.min(idx.len());
    if k > 0 {
        idx.select_nth_unstable_by(k - 1, |a, b| ls[*b as usize].total_cmp(&ls[*a as usize]));
        idx.truncate(k);
        idx.sort_by(|a, b| ls[*b as usize].total_cmp(&ls[*a as usize]));
    } else {
        idx.clear();
    }
    let entry = move |id: u32, lp: f32| {
        let bytes = tok.token_bytes(id).to_vec();
        (String::from_utf8_lossy(&bytes).into_owned(), lp, bytes)
    };
    let tops: Vec<TopLogprob> = idx
        .iter()
        .map(|&i| {
            let (token, logprob, bytes) = entry(i, ls[i as usize]);
            TopLogprob { token, logprob, bytes }
        })
        .collect();
    move |id| {
        let (token, logprob, bytes) = entry(id, ls.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY));
        TokenLogprob { token, logprob, bytes, top_logprobs: tops }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_len_holds_back_stop_prefixes() {
        let stops = vec!["\nUser:".to_string()];
        assert_eq!(safe_len("Hello\nUs", &stops), 5);
        assert_eq!(safe_len("Hello", &stops), 5);
        assert_eq!(safe_len("Hello\n", &stops), 5);
        assert_eq!(safe_len("héllo", &["lo!".to_string()]), "héllo".len() - 2);
    }

    #[test]
    fn stop_strings_next_to_multibyte_text() {
        // A stop string after multi-byte characters: the search window must start on a
        // character boundary.
        assert_eq!(safe_len("日本語のテ", &["テキスト".to_string()]), "日本語の".len());
    }
}
