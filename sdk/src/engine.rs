//! The [`Engine`]: one loaded model, shared by every session and thread.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::decode::forward::Transformer;
use crate::decode::kv_cache::KvCacheType;
use crate::decode::team::Team;
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::model::weights::ModelWeights;
use crate::session::{Session, SessionConfig};
use crate::text::chat_template::{ChatMessage, ChatTemplate};
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};

/// How to load and run a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Worker threads for the matrix products (`0`: one per available core).
    pub threads: usize,
    /// Default context window of new sessions, in tokens (clamped to the model's own).
    pub context_length: usize,
    /// Prompt tokens run per forward call during prefill (bounds scratch memory).
    pub prefill_chunk: usize,
    /// How new sessions store keys in their KV cache (llama.cpp's `-ctk`).
    pub cache_type_k: KvCacheType,
    /// How new sessions store values in their KV cache (llama.cpp's `-ctv`).
    pub cache_type_v: KvCacheType,
    /// Cores the worker threads run on (`None`: chosen by [`crate::affinity`]: the fastest
    /// cores of a heterogeneous CPU, no pinning on a symmetric one). Like llama.cpp's
    /// `--cpu-mask`.
    pub cpus: Option<Vec<usize>>,
    /// Repack the `Q4_1`/`Q8_0` weights at load into 16-row interleaved tiles for the
    /// VNNI/AVX2 kernels, where the CPU has them (about the weights' size in owned memory;
    /// the mapped file's pages are then released, so RSS does not double). Off by default
    /// until its figures and the whole suite are confirmed on an idle machine.
    pub repack: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            context_length: 4096,
            prefill_chunk: 256,
            cache_type_k: KvCacheType::F16,
            cache_type_v: KvCacheType::F16,
            cpus: None,
            repack: false,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) model: Transformer,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) template: ChatTemplate,
    /// The worker team; a session that finds it busy (another session is running a
    /// forward) runs on its own thread alone rather than waiting.
    pub(crate) team: std::sync::Mutex<Team>,
    pub(crate) config: EngineConfig,
    threads: usize,
    /// The cores the workers are pinned to (`None`: placed by the OS).
    cpus: Option<Vec<usize>>,
    load_time: Duration,
    /// The memory-reading adapter, prepared on first use (`None`: not trained for this base).
    pub(crate) reader: std::sync::OnceLock<Option<Arc<crate::lora::PreparedLora>>>,
    /// llguidance's view of the tokenizer, built on the first constrained generation.
    pub(crate) grammar: std::sync::OnceLock<std::result::Result<Arc<crate::grammar::GrammarFactory>, String>>,
    /// Sampling settings for conversations ([`Engine::recommended_sampling`]).
    recommended: crate::decode::sampler::SamplingParams,
    /// Generations running now on any session of this engine.
    pub(crate) generating: std::sync::atomic::AtomicUsize,
}

/// A loaded model. Cheap to clone (shared weights), `Send + Sync`: any number of
/// [`Session`]s on any threads run on one engine. The weights stay memory-mapped from the
/// GGUF file, which must not be modified while an engine uses it.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("model", &self.inner.model.cfg).finish()
    }
}

impl Engine {
    /// Loads a llama-family GGUF model.
    ///
    /// Errors: [`Error::NotFound`], [`Error::InvalidGguf`] (truncated or corrupt),
    /// [`Error::UnsupportedArchitecture`], [`Error::TensorShape`], [`Error::MissingTensor`],
    /// [`Error::Tokenizer`], [`Error::ChatTemplate`].
    pub fn load(path: impl AsRef<Path>, config: EngineConfig) -> Result<Self> {
        let start = Instant::now();
        if config.prefill_chunk == 0 || config.context_length == 0 {
            return Err(Error::invalid("prefill_chunk and context_length must be positive"));
        }
        let g = GgufFile::open(path)?;
        let cfg = ModelConfig::from_gguf(&g)?;
        let mut weights = ModelWeights::from_gguf(&g, &cfg)?;
        if config.repack && weights.repack() > 0 {
            g.release_pages();
        }
        let tokenizer = Tokenizer::from_gguf(&g)?;
        if tokenizer.vocab_size() > cfg.vocab_size {
            return Err(Error::Metadata {
                key: "tokenizer.ggml.tokens".into(),
                reason: format!("{} tokens for an embedding of {} rows", tokenizer.vocab_size(), cfg.vocab_size),
            });
        }
        let template = ChatTemplate::from_gguf(&g, &tokenizer)?;
        let recommended = recommended_sampling(&g);
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.threads
        };
        let cpus = match &config.cpus {
            Some(c) if c.is_empty() => return Err(Error::invalid("the CPU list is empty")),
            Some(c) => Some(c.clone()),
            None => crate::affinity::fastest(&crate::affinity::cores(), threads),
        };
        let team = Team::with_cpus(threads, cpus.as_deref())
            .map_err(|e| Error::invalid(format!("cannot start {threads} worker threads: {e}")))?;
        // A cache type the model's head dimension cannot take is an error now, not per session.
        config.cache_type_k.check_head_dim(cfg.head_dim)?;
        config.cache_type_v.check_head_dim(cfg.head_dim)?;
        let model = Transformer::new(cfg, weights);
        Ok(Self {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                template,
                team: std::sync::Mutex::new(team),
                config,
                threads,
                load_time: start.elapsed(),
                cpus,
                reader: std::sync::OnceLock::new(),
                grammar: std::sync::OnceLock::new(),
                recommended,
                generating: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }

    /// The memory-reading adapter that sessions run while memories are in the prompt
    /// ([`crate::memory_reader`]), if one was trained for this base (SmolLM2-135M-Instruct
    /// Q4_1); prepared on the first call.
    pub fn memory_reader(&self) -> Option<Arc<crate::lora::PreparedLora>> {
        self.inner.reader.get_or_init(|| crate::memory_reader::load(self)).clone()
    }

    /// How to sample a conversation with this model when the caller does not say: the
    /// model's own recommendation where its GGUF carries one (llama.cpp's
    /// `general.sampling.temp`, `top_k`, `top_p`, `min_p`, `penalty_repeat`,
    /// `penalty_last_n` keys), the rest from [`SamplingParams::chat`](crate::SamplingParams::chat)
    /// (SmolLM2's recommended temperature 0.2 and top-p 0.9, with min-p 0.05 and a repetition
    /// penalty of 1.1 as a loop guard). `chat` and `serve` use it when no temperature is given.
    pub fn recommended_sampling(&self) -> crate::decode::sampler::SamplingParams {
        self.inner.recommended.clone()
    }

    /// The grammar engine for this model's tokenizer (built on first use).
    pub(crate) fn grammar_factory(&self) -> Result<Arc<crate::grammar::GrammarFactory>> {
        self.inner
            .grammar
            .get_or_init(|| crate::grammar::GrammarFactory::new(&self.inner.tokenizer).map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(|reason| Error::Grammar { reason })
    }

    /// Checks that `grammar` compiles for this model (what a server does before accepting a
    /// request); the error names the problem.
    pub fn check_grammar(&self, grammar: &crate::grammar::Grammar) -> Result<()> {
        crate::grammar::Constraint::new(&*self.grammar_factory()?, grammar).map(|_| ())
    }

    /// How many generations are running now on sessions of this engine (background work such
    /// as training pauses while this is non-zero, so a user's request gets the cores).
    pub fn generations_running(&self) -> usize {
        self.inner.generating.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The model's hyper-parameters.
    pub fn model_config(&self) -> &ModelConfig {
        &self.inner.model.cfg
    }

    /// The frozen base weights (memory-mapped, quantized), for code that runs its own math
    /// over them (the trainer's forward and backward).
    pub fn weights(&self) -> &crate::model::weights::ModelWeights {
        &self.inner.model.w
    }

    /// The configuration the engine was loaded with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Worker threads used for the matrix products.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// The cores the worker threads are pinned to (`None`: the OS places them).
    pub fn cpus(&self) -> Option<&[usize]> {
        self.inner.cpus.as_deref()
    }

    /// How long [`Engine::load`] took.
    pub fn load_time(&self) -> Duration {
        self.inner.load_time
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// The model's chat template.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.inner.template
    }

    /// Tokenizes `text`, parsing control tokens written in it (see [`Tokenizer::encode`]).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.inner.tokenizer.encode(text, true)
    }

    /// Renders a conversation with the model's template, ending with the assistant's turn.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        self.inner.template.render(messages, true)
    }

    /// A new session with the engine's default context window and cache types.
    pub fn new_session(&self) -> Session {
        self.session_with(SessionConfig::default())
    }

    /// A new session with explicit settings. A quantized cache type this model's head
    /// dimension cannot take (not a multiple of 32) falls back to f16; use
    /// [`Engine::try_session_with`] to get the error instead.
    pub fn session_with(&self, config: SessionConfig) -> Session {
        match Session::new(self.clone(), config.clone()) {
            Ok(s) => s,
            Err(_) => {
                let mut f16 = config;
                f16.cache_type_k = Some(KvCacheType::F16);
                f16.cache_type_v = Some(KvCacheType::F16);
                Session::new(self.clone(), f16).expect("an f16 cache fits every model")
            }
        }
    }

    /// A new session with explicit settings; [`Error::InvalidArgument`] for a cache type the
    /// model cannot take.
    pub fn try_session_with(&self, config: SessionConfig) -> Result<Session> {
        Session::new(self.clone(), config)
    }

    pub(crate) fn context_for(&self, requested: Option<usize>) -> usize {
        requested
            .unwrap_or(self.inner.config.context_length)
            .min(self.inner.model.cfg.context_length)
            .max(1)
    }
}

/// [`Engine::recommended_sampling`] from a file's `general.sampling.*` keys.
fn recommended_sampling(g: &GgufFile) -> crate::decode::sampler::SamplingParams {
    let mut s = crate::decode::sampler::SamplingParams::chat();
    let f = |k: &str| g.get_f32_opt(k).ok().flatten().filter(|v| v.is_finite());
    let u = |k: &str| g.get_usize_opt(k).ok().flatten();
    if let Some(t) = f("general.sampling.temp").filter(|t| *t >= 0.0) {
        s.temperature = t;
    }
    if let Some(p) = f("general.sampling.top_p").filter(|p| *p > 0.0 && *p <= 1.0) {
        s.top_p = p;
    }
    if let Some(p) = f("general.sampling.min_p").filter(|p| (0.0..=1.0).contains(p)) {
        s.min_p = p;
    }
    if let Some(r) = f("general.sampling.penalty_repeat").filter(|r| *r > 0.0) {
        s.repeat_penalty = r;
    }
    if let Some(k) = u("general.sampling.top_k") {
        s.top_k = k;
    }
    if let Some(n) = u("general.sampling.penalty_last_n") {
        s.repeat_last_n = n;
    }
    s
}
