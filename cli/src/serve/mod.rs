//! `tailor serve`: an OpenAI-compatible HTTP server (axum) over the base model and each
//! profile's personal model, with Tailor's extensions under `/v1/tailor/`.
//!
//! - `/v1/models`, `/v1/chat/completions` (streamed as SSE or not; tools, structured outputs,
//!   `n` choices), `/v1/completions`, `/v1/embeddings`, `/v1/responses` ([`responses`]), in
//!   OpenAI's request, response and error shapes ([`openai`], [`error`]);
//! - generations run on blocking threads, at most `--parallel` at once; a client that goes
//!   away cancels its generation ([`generate`]);
//! - the prefix cache keeps recent conversations' KV caches so a follow-up turn only prefills
//!   what is new ([`pool`]); `usage.prompt_tokens_details.cached_tokens` reports the reuse;
//! - `/v1/tailor/`: stats, feedback, memories, adapters and steering, training
//!   ([`tailor_api`]); feedback starts a background training run by itself once
//!   `--auto-train-after` new events have come in.

mod error;
mod generate;
mod openai;
mod pool;
mod responses;
mod routes;
mod state;
mod tailor_api;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use clap::Args;
use tailor::profile::{BertEmbedder, MemoryConfig, MemoryStore};
use tailor_trainer::{AutoTrain, PersonalModel};

use crate::ModelArgs;
use error::ApiError;
use pool::SessionPool;
use state::{AppState, Embedder, Limits, Model, Stats};

/// `tailor serve`.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the address is printed on standard error).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every request (default: $TAILOR_API_KEY if set).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// A profile to serve as its own personal model, `PATH` (id `personal:<file stem>`) or
    /// `NAME=PATH` (id `personal:NAME`). Repeatable.
    #[arg(long, value_name = "[NAME=]PATH")]
    profile: Vec<String>,
    /// The base model's id (default: the GGUF file's stem, e.g. SmolLM2-135M-Instruct.Q4_1).
    #[arg(long)]
    model_id: Option<String>,
    /// Generations that run at once; more requests wait for a slot.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Idle conversations (KV caches) kept for prefix reuse (each holds at most --ctx tokens,
    /// about 23 KiB per token for SmolLM2-135M).
    #[arg(long, default_value_t = 8)]
    pool_size: usize,
    /// Never reuse a KV cache across requests (every prompt is prefilled from scratch).
    #[arg(long)]
    no_prefix_cache: bool,
    /// Cap on max_tokens, and the default when a chat request gives none.
    #[arg(long, default_value_t = 1024)]
    max_tokens_limit: usize,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Train each profile in the background once this many new feedback events have come in
    /// through `POST /v1/tailor/feedback` (0: never by itself; `POST /v1/tailor/training`
    /// still starts a run). A run pauses between steps while generations run; a promoted
    /// version is hot-swapped in.
    #[arg(long, value_name = "N", default_value_t = 3)]
    auto_train_after: usize,
    #[command(flatten)]
    model: ModelArgs,
}

/// Splits `[NAME=]PATH` into the model id and the path.
fn profile_id(spec: &str) -> Result<(String, PathBuf)> {
    let (name, path) = match spec.split_once('=') {
        Some((n, p)) if !n.is_empty() && !n.contains('/') => (n.to_string(), PathBuf::from(p)),
        _ => {
            let p = PathBuf::from(spec);
            let stem = p.file_stem().context("--profile: the path has no file name")?.to_string_lossy().into_owned();
            (stem, p)
        }
    };
    Ok((format!("personal:{name}"), path))
}

fn build_state(args: &ServeArgs) -> Result<AppState> {
    let engine = args.model.load()?;
    let model_path = args.model.path()?;
    let base_id = match &args.model_id {
        Some(id) => id.clone(),
        None => model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "base".into()),
    };
    let base = Model::base(base_id.clone(), &engine);
    // --adapter / --steer: the base model's active set.
    let mut active = Vec::new();
    for (i, spec) in args.model.adapter.iter().enumerate() {
        let (path, w) = crate::path_and_weight(spec)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| format!("adapter{i}"));
        base.registry().load(&name, &path).with_context(|| format!("loading adapter {}", path.display()))?;
        active.push((name, w));
    }
    let set: Vec<(&str, f32)> = active.iter().map(|(n, w)| (n.as_str(), *w)).collect();
    base.registry().activate(&set)?;
    if let Some(spec) = &args.model.steer {
        let (path, scale) = crate::path_and_weight(spec)?;
        let v = crate::load_steering(&engine, &path).with_context(|| format!("loading steering vector {}", path.display()))?;
        let name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "steer".into());
        base.insert_steering(&name, v).map_err(|e| anyhow::anyhow!(e.message))?;
        base.registry().activate_steering(&[(name.as_str(), scale, args.model.steer_layer_range(&engine)?)])?;
    }

    let cache = crate::model_cache()?;
    let emb_dir = cache.embedder_dir();
    let embedder = if emb_dir.exists() {
        let model = Arc::new(BertEmbedder::load(&emb_dir).with_context(|| format!("loading the embedder at {}", emb_dir.display()))?);
        let tokenizer = tokenizers::Tokenizer::from_file(emb_dir.join("tokenizer.json")).ok().map(|mut t| {
            t.with_padding(None);
            t
        });
        let id = emb_dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "embedder".into());
        Some(Embedder { id, model, tokenizer })
    } else {
        eprintln!("tailor serve: no embedder at {} — /v1/embeddings is off (run `tailor models fetch`)", emb_dir.display());
        None
    };

    let mut models = BTreeMap::new();
    let mut profiles = BTreeMap::new();
    models.insert(base_id.clone(), Arc::new(base));
    for spec in &args.profile {
        let (id, path) = profile_id(spec)?;
        let Some(e) = &embedder else { bail!("--profile needs the embedder: run `tailor models fetch`") };
        if models.contains_key(&id) {
            bail!("two models named `{id}`: give the profiles names (--profile NAME=PATH)");
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let store = MemoryStore::open(&path, e.model.clone(), MemoryConfig::default()).with_context(|| format!("opening the profile {}", path.display()))?;
        let pm = PersonalModel::open(&engine, store, &path).with_context(|| format!("opening the personal model of {}", path.display()))?;
        pm.set_auto_train(auto_train(args.auto_train_after));
        if let Some(v) = pm.active_version().ok().flatten() {
            eprintln!("tailor serve: {id}: adapter version {v}");
        }
        models.insert(id.clone(), Arc::new(Model::personal(id.clone(), pm)));
        profiles.insert(id, path);
    }

    let fp = engine.base_fingerprint();
    let fingerprint = format!("tailor-{}", &fp.as_str()[..fp.as_str().len().min(12)]);
    let context = engine.session_with(tailor::SessionConfig::with_context(args.model.ctx)).context_length();
    let api_key = args.api_key.clone().or_else(|| std::env::var("TAILOR_API_KEY").ok().filter(|k| !k.is_empty()));
    Ok(AppState {
        engine,
        base_id,
        models,
        embedder,
        pool: SessionPool::new(if args.no_prefix_cache { 0 } else { args.pool_size }),
        prefix_cache: !args.no_prefix_cache,
        limits: Limits { max_body_bytes: args.max_body_bytes, max_tokens: args.max_tokens_limit.max(1), context, max_embedding_inputs: 256 },
        stats: Stats::default(),
        slots: Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1))),
        started: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        api_key,
        profiles,
        fingerprint,
    })
}

/// `--auto-train-after N`: a run after `N` new feedback events, with the profile defaults
/// (`0`: off).
fn auto_train(after: usize) -> AutoTrain {
    let mut auto = AutoTrain::default();
    auto.enabled = after > 0;
    auto.min_new_feedback = after.max(1);
    auto
}

/// At shutdown: asks the profiles' running training jobs to stop after their current step
/// (their checkpoints stay, so the next run resumes) and gives them a few seconds to.
fn stop_training(state: &AppState) {
    let running: Vec<_> = state
        .models
        .values()
        .filter_map(|m| Some((m.id.as_str(), m.personal_model()?.training_job()?)))
        .filter(|(_, j)| !j.is_finished())
        .collect();
    for (id, job) in &running {
        eprintln!("tailor serve: {id}: stopping its training run");
        job.cancel();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while running.iter().any(|(_, j)| !j.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for (id, job) in &running {
        if !job.is_finished() {
            eprintln!("tailor serve: {id}: the training run did not stop in time; it ends with the server (its last checkpoint stays)");
        }
    }
}

/// Constant-time comparison of the presented key with the configured one.
fn key_matches(given: &[u8], want: &[u8]) -> bool {
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| key_matches(g.trim().as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// The routes.
fn router(state: Arc<AppState>) -> Router {
    use tailor_api as t;
    Router::new()
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{*id}", get(routes::model))
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/responses", post(responses::create))
        .route("/v1/embeddings", post(routes::embeddings))
        .route("/v1/tailor/stats", get(t::stats))
        .route("/v1/tailor/feedback", post(t::feedback_add).get(t::feedback_list))
        .route("/v1/tailor/feedback/{id}", delete(t::feedback_forget))
        .route("/v1/tailor/memories", post(t::memory_add).get(t::memory_list))
        .route("/v1/tailor/memories/search", post(t::memory_search))
        .route("/v1/tailor/memories/{id}", delete(t::memory_forget))
        .route("/v1/tailor/adapters", get(t::adapters_list))
        .route("/v1/tailor/adapters/load", post(t::adapters_load))
        .route("/v1/tailor/adapters/activate", post(t::adapters_activate))
        .route("/v1/tailor/adapters/unload", post(t::adapters_unload))
        .route("/v1/tailor/adapters/rollback", post(t::adapters_rollback))
        .route("/v1/tailor/steering/load", post(t::steering_load))
        .route("/v1/tailor/training", post(t::training_start).get(t::training_status))
        .route("/v1/tailor/training/cancel", post(t::training_cancel))
        .fallback(routes::fallback)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("tailor serve: shutting down (finishing the requests in flight)");
}

/// Runs the server until Ctrl-C or SIGTERM; requests in flight finish first.
pub(crate) fn run(args: ServeArgs) -> Result<()> {
    let state = Arc::new(build_state(&args)?);
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| std::net::ToSocketAddrs::to_socket_addrs(&(args.host.as_str(), args.port)).map_err(anyhow::Error::from)?.next().context("--host resolves to nothing"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the async runtime")?;
    let served = state.clone();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        let ids: Vec<&str> = state.models.keys().map(String::as_str).collect();
        eprintln!("tailor serve: models {}", ids.join(", "));
        if !addr.ip().is_loopback() && state.api_key.is_none() {
            eprintln!("tailor serve: WARNING: listening on {} without --api-key", addr.ip());
        }
        eprintln!("tailor serve: listening on http://{local}/v1");
        axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await.context("serving")
    })?;
    stop_training(&served);
    eprintln!("tailor serve: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_ids() {
        assert_eq!(profile_id("/tmp/me.db").unwrap(), ("personal:me".to_string(), PathBuf::from("/tmp/me.db")));
        assert_eq!(profile_id("work=/tmp/w.db").unwrap(), ("personal:work".to_string(), PathBuf::from("/tmp/w.db")));
    }

    #[test]
    fn api_keys_compare_exactly() {
        assert!(key_matches(b"secret", b"secret"));
        assert!(!key_matches(b"secreT", b"secret"));
        assert!(!key_matches(b"secret1", b"secret"));
        assert!(!key_matches(b"", b"secret"));
    }
}
