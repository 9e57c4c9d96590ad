//! `tailor.Engine` and `tailor.Session`: a loaded model and conversations on it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::prelude::*;
use tailor::adapters::LoraAdapter;
use tailor::{ChatMessage, Engine, EngineConfig, Flow, GenerateParams, Hooks, LoraHook, ModelCache, PreparedLora, Prompt, SessionConfig};

use crate::adapter::PyAdapter;
use crate::convert::record_to_py;
use crate::errors::{catch, detach, Error, Kind, Result};

/// The model cache root: `$TAILOR_HOME`, else the platform cache directory (as the CLI does).
pub fn model_cache() -> Result<ModelCache> {
    let root = match std::env::var_os("TAILOR_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => ModelCache::default_root().ok_or_else(|| Error::new(Kind::NotFound, "no cache directory on this platform: set TAILOR_HOME"))?,
    };
    Ok(ModelCache::new(root))
}

/// A loaded model (`tailor::Engine`), shared by every session, thread and training run.
#[pyclass(module = "tailor", name = "Engine", frozen)]
pub struct PyEngine {
    pub(crate) engine: Engine,
    path: PathBuf,
    fingerprint: OnceLock<String>,
}

/// Generation settings as the CLI builds them from its flags.
pub(crate) fn params(max_tokens: usize, temperature: f32, seed: u64) -> GenerateParams {
    let mut p = GenerateParams::default();
    p.sampling.temperature = temperature;
    p.sampling.seed = Some(seed);
    p.max_tokens = max_tokens;
    p
}

/// The grammar of the `json_schema` (a dict or JSON text), `regex` or `grammar` (Lark)
/// keyword arguments; at most one may be given.
pub(crate) fn grammar_arg(json_schema: Option<&Bound<'_, PyAny>>, regex: Option<String>, grammar: Option<String>) -> Result<Option<tailor::Grammar>> {
    let given = usize::from(json_schema.is_some()) + usize::from(regex.is_some()) + usize::from(grammar.is_some());
    if given > 1 {
        return Err(Error::invalid("give at most one of json_schema, regex and grammar"));
    }
    if let Some(s) = json_schema {
        let v = match s.extract::<String>() {
            Ok(text) => serde_json::from_str(&text).map_err(|e| Error::invalid(format!("json_schema: not JSON: {e}")))?,
            Err(_) => crate::convert::from_py(s, "json_schema")?,
        };
        return Ok(Some(tailor::Grammar::JsonSchema(v)));
    }
    Ok(regex.map(tailor::Grammar::Regex).or(grammar.map(tailor::Grammar::Lark)))
}

impl PyEngine {
    /// The base fingerprint (computed once).
    pub(crate) fn fingerprint_str(&self) -> &str {
        self.fingerprint.get_or_init(|| self.engine.base_fingerprint().0)
    }

    /// Session hooks running `adapter` alone (weight 1), after checking it belongs to this base.
    pub(crate) fn hooks_for(&self, adapter: Option<Arc<LoraAdapter>>) -> Result<Hooks> {
        let Some(adapter) = adapter else { return Ok(Hooks::none()) };
        if let Some(fp) = adapter.config().base_fingerprint() {
            if fp.as_str() != self.fingerprint_str() {
                return Err(Error::new(
                    Kind::Incompatible,
                    format!("the adapter was trained on the base {fp}, this engine's base is {}", self.fingerprint_str()),
                ));
            }
        }
        let prepared = PreparedLora::new(&self.engine, adapter)?;
        Ok(LoraHook::new(&[(Arc::new(prepared), 1.0)]).into_hooks())
    }
}

fn adapter_arc(adapter: Option<&Bound<'_, PyAdapter>>) -> Option<Arc<LoraAdapter>> {
    adapter.map(|a| a.get().inner.clone())
}

#[pymethods]
impl PyEngine {
    /// Loads a llama-family GGUF model (default: the cached SmolLM2, see `default_model_path`).
    /// `cache_type` is the KV cache storage of its sessions: `"f16"` (default), `"q8_0"`,
    /// `"q4_0"`, or `"k,v"` for different key and value types.
    #[new]
    #[pyo3(signature = (model_path = None, *, threads = None, context_length = None, cache_type = None))]
    fn new(
        py: Python<'_>,
        model_path: Option<PathBuf>,
        threads: Option<usize>,
        context_length: Option<usize>,
        cache_type: Option<String>,
    ) -> PyResult<Self> {
        let path = match model_path {
            Some(p) => p,
            None => {
                let p = model_cache()?.base_model_path();
                if !p.exists() {
                    return Err(Error::new(
                        Kind::NotFound,
                        format!("no model at {} — run `tailor models fetch` first, or pass model_path", p.display()),
                    )
                    .into());
                }
                p
            }
        };
        let mut cfg = EngineConfig::default();
        if let Some(t) = threads {
            cfg.threads = t;
        }
        if let Some(c) = context_length {
            cfg.context_length = c;
        }
        if let Some(t) = cache_type {
            (cfg.cache_type_k, cfg.cache_type_v) = tailor::KvCacheType::parse_pair(&t).map_err(Error::from)?;
        }
        let p = path.clone();
        let engine = detach(py, move || Engine::load(&p, cfg).map_err(|e| Error::from(e).context(&p)))?;
        Ok(PyEngine { engine, path, fingerprint: OnceLock::new() })
    }

    /// The base fingerprint adapters record (`tailor.base_fingerprint` in adapter_config.json).
    #[getter]
    fn fingerprint(&self, py: Python<'_>) -> PyResult<String> {
        detach(py, || Ok(self.fingerprint_str().to_owned()))
    }

    /// The GGUF file this engine loaded.
    #[getter]
    fn model_path(&self) -> String {
        self.path.display().to_string()
    }

    /// Worker threads of the matrix products.
    #[getter]
    fn threads(&self) -> usize {
        self.engine.threads()
    }

    /// The model's hyper-parameters (`architecture`, `n_layers`, `d_model`, `vocab_size`,
    /// `context_length`, ...).
    #[getter]
    fn model_config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        record_to_py(py, self.engine.model_config())
    }

    /// Token ids of `text` (control tokens written in it are parsed).
    fn tokenize(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        detach(py, || Ok(self.engine.tokenize(text)?))
    }

    /// The text of token ids (`skip_control`: leave control tokens out).
    #[pyo3(signature = (ids, *, skip_control = false))]
    fn detokenize(&self, py: Python<'_>, ids: Vec<u32>, skip_control: bool) -> PyResult<String> {
        let vocab = self.engine.model_config().vocab_size;
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(format!("token id {bad} outside the vocabulary of {vocab}")).into());
        }
        detach(py, || Ok(self.engine.tokenizer().decode(&ids, skip_control)))
    }

    /// A chat prompt as the model's template renders it (system message optional), ending with
    /// the assistant's turn: the text `generate` runs when `raw` is false.
    #[pyo3(signature = (prompt, *, system = None))]
    fn chat_prompt(&self, prompt: &str, system: Option<String>) -> PyResult<String> {
        Ok(catch(|| Ok(self.engine.render_chat(&messages(prompt, system))?))?)
    }

    /// Generates an answer to `prompt` (a user message in the model's chat template, after
    /// `system` if given; `raw`: the text as is). Greedy at temperature 0. `json_schema` (a
    /// dict or JSON text), `regex` or `grammar` (Lark) constrain the answer: it always
    /// parses. The GIL is released while decoding.
    #[pyo3(signature = (prompt, *, max_tokens = 128, temperature = 0.0, seed = 0, system = None, adapter = None, raw = false, json_schema = None, regex = None, grammar = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: String,
        max_tokens: usize,
        temperature: f32,
        seed: u64,
        system: Option<String>,
        adapter: Option<Bound<'_, PyAdapter>>,
        raw: bool,
        json_schema: Option<Bound<'_, PyAny>>,
        regex: Option<String>,
        grammar: Option<String>,
    ) -> PyResult<String> {
        if raw && system.is_some() {
            return Err(Error::invalid("a raw prompt has no system message (pass raw=False or leave system out)").into());
        }
        let adapter = adapter_arc(adapter.as_ref());
        let mut p = params(max_tokens, temperature, seed);
        p.grammar = grammar_arg(json_schema.as_ref(), regex, grammar)?;
        detach(py, move || {
            let mut session = self.engine.session_with(SessionConfig::default());
            session.set_hooks(self.hooks_for(adapter)?);
            let prompt = if raw { Prompt::Text(prompt) } else { Prompt::Chat(messages(&prompt, system)) };
            let g = session.generate(&prompt, &p, &mut |_| Flow::Continue)?;
            Ok(g.text)
        })
    }

    /// A conversation (its own KV cache) with an optional system prompt and adapter.
    /// `cache_type` overrides the engine's KV cache storage (`"q8_0"`, `"k,v"`, ...); a
    /// conversation longer than `context_length` keeps going, its oldest turns dropped.
    #[pyo3(signature = (*, system = None, adapter = None, context_length = None, cache_type = None))]
    fn session(
        &self,
        py: Python<'_>,
        system: Option<String>,
        adapter: Option<Bound<'_, PyAdapter>>,
        context_length: Option<usize>,
        cache_type: Option<String>,
    ) -> PyResult<PySession> {
        let adapter = adapter_arc(adapter.as_ref());
        detach(py, move || {
            let mut config = context_length.map(SessionConfig::with_context).unwrap_or_default();
            if let Some(t) = cache_type {
                let (k, v) = tailor::KvCacheType::parse_pair(&t)?;
                config = config.with_cache_types(k, v);
            }
            let mut session = self.engine.try_session_with(config)?;
            session.set_hooks(self.hooks_for(adapter)?);
            let s = PySession { inner: Mutex::new(session), system };
            s.reset_inner()?;
            Ok(s)
        })
    }

    fn __repr__(&self) -> String {
        let c = self.engine.model_config();
        format!("Engine({:?}, {} layers, d_model={})", self.path.display().to_string(), c.n_layers, c.d_model)
    }
}

/// `[system?, user]`.
pub(crate) fn messages(prompt: &str, system: Option<String>) -> Vec<ChatMessage> {
    let mut m = Vec::new();
    if let Some(s) = system {
        m.push(ChatMessage::system(s));
    }
    m.push(ChatMessage::user(prompt));
    m
}

/// One conversation (`tailor::Session`): the history and the KV cache it reuses across turns.
/// One call at a time: a second thread calling while one generates gets `BusyError`.
#[pyclass(module = "tailor", name = "Session", frozen)]
pub struct PySession {
    pub(crate) inner: Mutex<tailor::Session>,
    pub(crate) system: Option<String>,
}

impl PySession {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, tailor::Session>> {
        match self.inner.try_lock() {
            Ok(g) => Ok(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(Error::new(Kind::Busy, "the session is generating on another thread")),
        }
    }

    pub(crate) fn reset_inner(&self) -> Result<()> {
        let mut s = self.lock()?;
        s.set_history(self.system.iter().map(|t| ChatMessage::system(t.clone())).collect());
        s.clear_cache();
        Ok(())
    }
}

#[pymethods]
impl PySession {
    /// Sends a user message and returns the answer, both appended to the history; only the
    /// tokens the cache does not hold yet are run. The GIL is released while decoding.
    /// `json_schema`, `regex`, `grammar`: as `Engine.generate`.
    #[pyo3(signature = (text, *, max_tokens = 128, temperature = 0.0, seed = 0, json_schema = None, regex = None, grammar = None))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        text: String,
        max_tokens: usize,
        temperature: f32,
        seed: u64,
        json_schema: Option<Bound<'_, PyAny>>,
        regex: Option<String>,
        grammar: Option<String>,
    ) -> PyResult<String> {
        let mut p = params(max_tokens, temperature, seed);
        p.grammar = grammar_arg(json_schema.as_ref(), regex, grammar)?;
        detach(py, move || {
            let mut s = self.lock()?;
            let g = s.chat(&text, &p, &mut |_| Flow::Continue)?;
            Ok(g.text)
        })
    }

    /// Forgets the conversation (the system prompt stays) and the cache.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        detach(py, || self.reset_inner())
    }

    /// The conversation so far: `(role, content)` pairs, the system prompt first if any.
    #[getter]
    fn history(&self) -> PyResult<Vec<(String, String)>> {
        let s = self.lock()?;
        Ok(s.history().iter().map(|m| (m.role.clone(), m.content.clone())).collect())
    }

    /// Tokens the KV cache holds.
    #[getter]
    fn cached_tokens(&self) -> PyResult<usize> {
        Ok(self.lock()?.cached_tokens().len())
    }

    fn __repr__(&self) -> String {
        match self.inner.try_lock() {
            Ok(s) => format!("Session({} messages, {} cached tokens)", s.history().len(), s.cached_tokens().len()),
            Err(_) => "Session(generating)".into(),
        }
    }
}
