//! What the server holds: the engine, the served models (the base and each profile's personal
//! model), the embedder, the prefix-cache pool, limits and counters.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tailor::adapters::{LoraAdapter, SteeringVector};
use tailor::profile::BertEmbedder;
use tailor::{AdapterRegistry, Engine, Hooks, LoraHook, PreparedLora, Session, SessionConfig, SteeringHook, SteeringSet};
use tailor_trainer::PersonalModel;

use super::error::ApiError;
use super::openai::{AdapterChoice, SteeringChoice};
use super::pool::{PoolKey, SessionPool};

/// Bounds on what one request may ask for.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Request body size in bytes.
    pub(crate) max_body_bytes: usize,
    /// `max_tokens` cap (and the default when a chat request gives none).
    pub(crate) max_tokens: usize,
    /// Context window of each session (prompt + answer).
    pub(crate) context: usize,
    /// Texts per embeddings request.
    pub(crate) max_embedding_inputs: usize,
}

/// An adapter prepared for this engine, with the loaded weights it was made from (compared by
/// pointer to notice a reload under the same name).
type Prepared = (Arc<LoraAdapter>, Arc<PreparedLora>);

/// What a served model id stands for.
pub(crate) enum Kind {
    /// The base model, following the server's registry (`--adapter`, `--steer`, and what
    /// `/v1/tailor/adapters` loads and activates).
    Base,
    /// A profile's personal model: its promoted adapter, memories in the prompt, feedback and
    /// training.
    Personal(Arc<PersonalModel>),
}

/// One served model.
pub(crate) struct Model {
    pub(crate) id: String,
    pub(crate) kind: Kind,
    registry: Arc<AdapterRegistry>,
    /// Steering vectors loaded for this model, by name (the registry keeps its own copies for
    /// the active set; these serve per-request choices).
    steering: Mutex<BTreeMap<String, Arc<SteeringVector>>>,
    /// Adapters prepared for per-request sets, by name, with the loaded weights they came from.
    prepared: Mutex<BTreeMap<String, Prepared>>,
}

impl Model {
    pub(crate) fn base(id: String, engine: &Engine) -> Self {
        Self::new(id, Kind::Base, AdapterRegistry::new(engine))
    }

    pub(crate) fn personal(id: String, pm: Arc<PersonalModel>) -> Self {
        let reg = pm.registry().clone();
        Self::new(id, Kind::Personal(pm), reg)
    }

    fn new(id: String, kind: Kind, registry: Arc<AdapterRegistry>) -> Self {
        Model { id, kind, registry, steering: Mutex::new(BTreeMap::new()), prepared: Mutex::new(BTreeMap::new()) }
    }

    /// The registry sessions of this model follow.
    pub(crate) fn registry(&self) -> &Arc<AdapterRegistry> {
        &self.registry
    }

    /// The personal model, if this is one.
    pub(crate) fn personal_model(&self) -> Option<&Arc<PersonalModel>> {
        match &self.kind {
            Kind::Personal(pm) => Some(pm),
            Kind::Base => None,
        }
    }

    /// Adds a steering vector under `name` (and to the registry).
    pub(crate) fn insert_steering(&self, name: &str, v: SteeringVector) -> Result<(), ApiError> {
        self.registry.insert_steering(name, v.clone())?;
        lock(&self.steering).insert(name.to_string(), Arc::new(v));
        Ok(())
    }

    /// The steering vectors loaded, by name.
    pub(crate) fn steering_names(&self) -> Vec<String> {
        lock(&self.steering).keys().cloned().collect()
    }

    fn prepared(&self, engine: &Engine, name: &str) -> Result<Arc<PreparedLora>, ApiError> {
        let adapter = self.registry.get(name).ok_or_else(|| ApiError::invalid("tailor.adapters", format!("no adapter named `{name}` is loaded for model `{}`", self.id)))?;
        let mut p = lock(&self.prepared);
        if let Some((a, prep)) = p.get(name) {
            if Arc::ptr_eq(a, &adapter) {
                return Ok(prep.clone());
            }
        }
        let prep = Arc::new(PreparedLora::new(engine, adapter.clone())?);
        p.insert(name.to_string(), (adapter, prep.clone()));
        Ok(prep)
    }

    /// The hooks of a per-request choice and the key naming them (with the identity of the
    /// loaded weights, so a reloaded adapter never reuses a cache computed with the old one).
    pub(crate) fn selection(
        &self,
        engine: &Engine,
        adapters: &[AdapterChoice],
        steering: &[SteeringChoice],
    ) -> Result<(Hooks, String), ApiError> {
        let mut key = String::new();
        let mut entries = Vec::new();
        for a in adapters {
            let prep = self.prepared(engine, &a.name)?;
            key.push_str(&format!("a:{}@{:p}*{:08x};", a.name, Arc::as_ptr(&prep), a.weight.to_bits()));
            entries.push((prep, a.weight));
        }
        let n_layers = engine.model_config().n_layers;
        let mut hooks = Vec::new();
        for s in steering {
            let v = lock(&self.steering)
                .get(&s.name)
                .cloned()
                .ok_or_else(|| ApiError::invalid("tailor.steering", format!("no steering vector named `{}` is loaded for model `{}`", s.name, self.id)))?;
            let [first, last] = s.layers.unwrap_or([0, n_layers - 1]);
            if first > last || last >= n_layers {
                return Err(ApiError::invalid("tailor.steering", format!("steering `{}`: layers [{first}, {last}] outside 0..{n_layers}", s.name)));
            }
            key.push_str(&format!("s:{}@{:p}*{:08x}[{first}-{last}];", s.name, Arc::as_ptr(&v), s.scale.to_bits()));
            hooks.push(SteeringHook::new(v, s.scale, first..=last));
        }
        let lora = LoraHook::new(&entries);
        let set = SteeringSet::new(hooks);
        let h = Hooks {
            linear: if lora.is_empty() { None } else { Some(Arc::new(lora)) },
            residual: if set.is_empty() { None } else { Some(Arc::new(set)) },
        };
        Ok((h, key))
    }

    /// A new session of this model: following its registry, or with `hooks` fixed; memories
    /// retrieved into chat prompts when `memory` (personal models).
    pub(crate) fn new_session(&self, engine: &Engine, context: usize, hooks: Option<Hooks>, memory: bool) -> Session {
        let cfg = SessionConfig::with_context(context);
        let mut s = match &self.kind {
            Kind::Personal(pm) => pm.session_with(cfg),
            Kind::Base => {
                let mut s = engine.session_with(cfg);
                s.follow(self.registry.clone());
                s
            }
        };
        if !memory {
            s.set_memory(None, tailor::MemoryPromptConfig::default());
        }
        if let Some(h) = hooks {
            s.set_hooks(h);
        }
        s
    }
}

/// Counters, for `/v1/tailor/stats` and the tests.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) requests: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) completed: AtomicU64,
    /// Generations stopped because their client went away.
    pub(crate) cancelled: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) prompt_tokens: AtomicU64,
    /// Prompt tokens whose KV came from a pooled session's cache.
    pub(crate) cached_tokens: AtomicU64,
    pub(crate) completion_tokens: AtomicU64,
    /// Generations that reused a pooled session.
    pub(crate) pool_hits: AtomicU64,
    pub(crate) pool_misses: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Serialize)]
pub(crate) struct StatsView {
    requests: u64,
    active: u64,
    completed: u64,
    cancelled: u64,
    failed: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
    completion_tokens: u64,
    pool_hits: u64,
    pool_misses: u64,
    pool_idle_sessions: usize,
    pool_capacity: usize,
}

impl Stats {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn view(&self, pool: &SessionPool) -> StatsView {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsView {
            requests: g(&self.requests),
            active: g(&self.active),
            completed: g(&self.completed),
            cancelled: g(&self.cancelled),
            failed: g(&self.failed),
            prompt_tokens: g(&self.prompt_tokens),
            cached_tokens: g(&self.cached_tokens),
            completion_tokens: g(&self.completion_tokens),
            pool_hits: g(&self.pool_hits),
            pool_misses: g(&self.pool_misses),
            pool_idle_sessions: pool.len(),
            pool_capacity: pool.capacity(),
        }
    }
}

/// The embeddings model.
pub(crate) struct Embedder {
    /// Its id in `/v1/models`.
    pub(crate) id: String,
    pub(crate) model: Arc<BertEmbedder>,
    /// Its tokenizer, to count `usage.prompt_tokens` (padding off).
    pub(crate) tokenizer: Option<tokenizers::Tokenizer>,
}

/// Everything the handlers share.
pub(crate) struct AppState {
    pub(crate) engine: Engine,
    pub(crate) base_id: String,
    /// Served models by id (the base first in `/v1/models`).
    pub(crate) models: BTreeMap<String, Arc<Model>>,
    pub(crate) embedder: Option<Embedder>,
    pub(crate) pool: SessionPool,
    /// Whether the pool is used at all (`--no-prefix-cache` turns it off).
    pub(crate) prefix_cache: bool,
    pub(crate) limits: Limits,
    pub(crate) stats: Stats,
    /// Generations allowed to run at once; the rest wait for a slot.
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    /// Unix seconds at start (`created` of the models).
    pub(crate) started: u64,
    pub(crate) api_key: Option<String>,
    /// Profile files by model id (for `/v1/models` metadata).
    pub(crate) profiles: BTreeMap<String, PathBuf>,
    /// `system_fingerprint`: the base model's fingerprint, shortened.
    pub(crate) fingerprint: String,
}

impl AppState {
    /// The served model `id`, or a 404.
    pub(crate) fn model(&self, id: &str) -> Result<&Arc<Model>, ApiError> {
        self.models.get(id).ok_or_else(|| ApiError::model_not_found(id))
    }

    /// The personal model `id` names, or the only one when `id` is absent.
    pub(crate) fn personal(&self, id: Option<&str>) -> Result<(&Arc<Model>, &Arc<PersonalModel>), ApiError> {
        let m = match id {
            Some(id) => self.model(id)?,
            None => {
                let mut personal = self.models.values().filter(|m| m.personal_model().is_some());
                match (personal.next(), personal.next()) {
                    (Some(m), None) => m,
                    (None, _) => return Err(ApiError::invalid("model", "this server serves no profile (start it with --profile PATH)")),
                    (Some(_), Some(_)) => return Err(ApiError::invalid("model", "several profiles are served: name one with `model`")),
                }
            }
        };
        let pm = m.personal_model().ok_or_else(|| ApiError::invalid("model", format!("`{}` is not a personal model (no profile)", m.id)))?;
        Ok((m, pm))
    }

    /// The pool key of a request.
    pub(crate) fn key(model: &Model, selection: Option<String>, memory: bool) -> PoolKey {
        PoolKey { model: model.id.clone(), selection, memory }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
