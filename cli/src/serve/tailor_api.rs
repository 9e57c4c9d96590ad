//! Tailor's own endpoints under `/v1/tailor/`: stats, feedback, memories, adapters and
//! steering, training jobs. A personal model is named by `model` (in the body for POST, in the
//! query for GET and DELETE); it may be left out when the server serves one profile. Errors
//! have OpenAI's shape.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tailor::profile::{FeedbackQuery, NewFeedback, NewMemory, SearchQuery};
use tailor_trainer::personal::PersonalOptions;
use tailor_trainer::PersonalModel;

use super::error::ApiError;
use super::openai::{parse, AdapterChoice, SteeringChoice};
use super::routes::{body, St};
use super::state::AppState;

type Res = Result<Json<Value>, ApiError>;

/// `?model=` of GET and DELETE requests.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ModelQuery {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<usize>,
}

fn store(pm: &PersonalModel) -> std::sync::MutexGuard<'_, tailor::profile::MemoryStore> {
    pm.store().lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs blocking store work (SQLite, embedding) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("worker thread failed: {e}")))?
}

fn personal(state: &Arc<AppState>, model: Option<&str>) -> Result<Arc<PersonalModel>, ApiError> {
    Ok(state.personal(model)?.1.clone())
}

/// `GET /v1/tailor/stats`.
pub(crate) async fn stats(State(state): St) -> Json<Value> {
    Json(json!(state.stats.view(&state.pool)))
}

#[derive(Deserialize)]
struct FeedbackBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(flatten)]
    feedback: NewFeedback,
}

/// `POST /v1/tailor/feedback`: `{"model"?, "prompt", "answer", "kind": "thumbs_up" |
/// "thumbs_down" | "correction" (+ "corrected") | "preference" (+ "chosen", "rejected"),
/// "turn_id"?}` → `{"id", "memory_id", "training": {"started"}}`: a correction is also stored
/// as a memory (in the prompt of the next relevant question), `memory_id` is its id (`null`
/// for other kinds). `training.started` is true when this event started a background training
/// run (`--auto-train-after` new events came in); `GET /v1/tailor/training` follows it.
pub(crate) async fn feedback_add(State(state): St, b: Result<Bytes, BytesRejection>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: FeedbackBody = parse(&body(b)?)?;
    let (m, pm) = state.personal(req.model.as_deref())?;
    let (id, pm) = (m.id.clone(), pm.clone());
    let (added, started) = blocking(move || {
        let (added, job) = pm.add_feedback(req.feedback)?;
        Ok((added, job.is_some()))
    })
    .await?;
    if started {
        eprintln!("tailor serve: {id}: new feedback started a background training run");
    }
    Ok((StatusCode::CREATED, Json(json!({"id": added.id, "memory_id": added.memory.map(|m| m.id), "training": {"started": started}}))))
}

/// `GET /v1/tailor/feedback?model=&after=&limit=`.
pub(crate) async fn feedback_list(State(state): St, Query(q): Query<ModelQuery>) -> Res {
    let pm = personal(&state, q.model.as_deref())?;
    let mut fq = FeedbackQuery::default();
    fq.after = q.after;
    fq.limit = q.limit.unwrap_or(100).min(1000);
    let list = blocking(move || Ok(store(&pm).list_feedback(&fq)?)).await?;
    Ok(Json(json!({"object": "list", "data": list})))
}

/// `DELETE /v1/tailor/feedback/{id}`: forgets it; every adapter version that learned from it
/// is tainted and deleted, the model falls back to the newest clean one.
pub(crate) async fn feedback_forget(State(state): St, Path(id): Path<i64>, Query(q): Query<ModelQuery>) -> Res {
    let pm = personal(&state, q.model.as_deref())?;
    let tainted = blocking(move || Ok(pm.forget_feedback(&[id])?)).await?;
    Ok(Json(json!({"id": id, "deleted": true, "tainted_versions": tainted})))
}

#[derive(Deserialize)]
struct MemoryBody {
    #[serde(default)]
    model: Option<String>,
    text: String,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    importance: Option<f32>,
}

/// `POST /v1/tailor/memories`: `{"model"?, "text", "metadata"?, "importance"?}` → the add's
/// outcome (`id`, `action`: inserted | updated | unchanged).
pub(crate) async fn memory_add(State(state): St, b: Result<Bytes, BytesRejection>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: MemoryBody = parse(&body(b)?)?;
    let pm = personal(&state, req.model.as_deref())?;
    let mut m = NewMemory::new(req.text);
    if let Some(md) = req.metadata {
        m = m.metadata(md);
    }
    if let Some(i) = req.importance {
        m = m.importance(i);
    }
    let out = blocking(move || Ok(store(&pm).add(m)?)).await?;
    Ok((StatusCode::CREATED, Json(json!(out))))
}

/// `GET /v1/tailor/memories?model=&after=&limit=`: a page in id order.
pub(crate) async fn memory_list(State(state): St, Query(q): Query<ModelQuery>) -> Res {
    let pm = personal(&state, q.model.as_deref())?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let page = blocking(move || Ok(store(&pm).list(q.after, limit)?)).await?;
    Ok(Json(json!({"object": "list", "data": page.memories, "next_after": page.next_after})))
}

#[derive(Deserialize)]
struct SearchBody {
    #[serde(default)]
    model: Option<String>,
    query: String,
    #[serde(default)]
    limit: Option<usize>,
}

/// `POST /v1/tailor/memories/search`: `{"model"?, "query", "limit"?}` → hits (memory, score,
/// similarity), best first (hybrid vector + full-text search).
pub(crate) async fn memory_search(State(state): St, b: Result<Bytes, BytesRejection>) -> Res {
    let req: SearchBody = parse(&body(b)?)?;
    let pm = personal(&state, req.model.as_deref())?;
    let q = SearchQuery::new(req.query, req.limit.unwrap_or(5).clamp(1, 100));
    let hits = blocking(move || Ok(store(&pm).search(&q)?)).await?;
    Ok(Json(json!({"object": "list", "data": hits})))
}

/// `DELETE /v1/tailor/memories/{id}`: forgets it (text, history, embedding, index entry).
pub(crate) async fn memory_forget(State(state): St, Path(id): Path<i64>, Query(q): Query<ModelQuery>) -> Res {
    let pm = personal(&state, q.model.as_deref())?;
    blocking(move || Ok(store(&pm).forget(id)?)).await?;
    Ok(Json(json!({"id": id, "deleted": true})))
}

fn model_for<'a>(state: &'a AppState, model: Option<&str>) -> Result<&'a Arc<super::state::Model>, ApiError> {
    state.model(model.unwrap_or(&state.base_id))
}

fn adapters_view(m: &super::state::Model) -> Value {
    let steering: Vec<Value> = m
        .registry()
        .list_steering()
        .into_iter()
        .map(|(name, scale)| json!({"name": name, "active_scale": scale}))
        .collect();
    json!({"model": m.id, "adapters": m.registry().list(), "steering": steering, "loaded_steering": m.steering_names()})
}

/// `GET /v1/tailor/adapters?model=` (default: the base): adapters and steering vectors held,
/// with the active weights and scales.
pub(crate) async fn adapters_list(State(state): St, Query(q): Query<ModelQuery>) -> Res {
    Ok(Json(adapters_view(model_for(&state, q.model.as_deref())?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    #[serde(default)]
    model: Option<String>,
    name: String,
    /// A PEFT adapter directory, or a steering vector file.
    path: std::path::PathBuf,
}

/// `POST /v1/tailor/adapters/load`: `{"model"?, "name", "path"}` loads a PEFT adapter
/// directory (checked against the base) under `name`, inactive.
pub(crate) async fn adapters_load(State(state): St, b: Result<Bytes, BytesRejection>) -> Res {
    let req: LoadBody = parse(&body(b)?)?;
    let m = model_for(&state, req.model.as_deref())?.clone();
    let m2 = m.clone();
    blocking(move || Ok(m2.registry().load(&req.name, &req.path)?)).await?;
    Ok(Json(adapters_view(&m)))
}

/// `POST /v1/tailor/steering/load`: `{"model"?, "name", "path"}` loads a steering vector
/// (`.safetensors` + `.json`, or a llama.cpp control-vector `.gguf`) under `name`, inactive.
pub(crate) async fn steering_load(State(state): St, b: Result<Bytes, BytesRejection>) -> Res {
    let req: LoadBody = parse(&body(b)?)?;
    let m = model_for(&state, req.model.as_deref())?.clone();
    let (m2, engine) = (m.clone(), state.engine.clone());
    blocking(move || {
        let v = crate::load_steering(&engine, &req.path).map_err(|e| ApiError::invalid("path", format!("{e:#}")))?;
        m2.insert_steering(&req.name, v)
    })
    .await?;
    Ok(Json(adapters_view(&m)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    #[serde(default)]
    model: Option<String>,
    name: String,
}

/// `POST /v1/tailor/adapters/unload`: `{"model"?, "name"}` removes an adapter (and from the
/// active set); generations running with it finish with it.
pub(crate) async fn adapters_unload(State(state): St, b: Result<Bytes, BytesRejection>) -> Res {
    let req: NameBody = parse(&body(b)?)?;
    let m = model_for(&state, req.model.as_deref())?;
    m.registry().unload(&req.name).map_err(|e| ApiError::not_found(e.to_string()))?;
    Ok(Json(adapters_view(m)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelBody {
    #[serde(default)]
    model: Option<String>,
}

/// `POST /v1/tailor/adapters/rollback`: `{"model"?}` makes the profile's previous adapter
/// version (or the base) active → `{"active_version"}`.
pub(crate) async fn adapters_rollback(State(state): St, b: Result<Bytes, BytesRejection>) -> Res {
    let req: ModelBody = parse(&body(b)?)?;
    let (m, pm) = state.personal(req.model.as_deref())?;
    let (id, pm) = (m.id.clone(), pm.clone());
    let version = blocking(move || Ok(pm.rollback()?)).await?;
    Ok(Json(json!({"model": id, "active_version": version})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    #[serde(default)]
    model: Option<String>,
    /// The new active adapter set (absent: unchanged; `[]`: none).
    #[serde(default)]
    adapters: Option<Vec<AdapterChoice>>,
    /// The new active steering set (absent: unchanged; `[]`: none).
    #[serde(default)]
    steering: Option<Vec<SteeringChoice>>,
}

/// `POST /v1/tailor/adapters/activate`: `{"model"?, "adapters": [{"name", "weight"}],
/// "steering": [{"name", "scale", "layers": [first, last]}]}`, each set swapped atomically;
/// generations running keep the set they started with.
pub(crate) async fn adapters_activate(State(state): St, b: Result<Bytes, BytesRejection>) -> Res {
    let req: ActivateBody = parse(&body(b)?)?;
    let m = model_for(&state, req.model.as_deref())?;
    if let Some(set) = &req.adapters {
        let set: Vec<(&str, f32)> = set.iter().map(|a| (a.name.as_str(), a.weight)).collect();
        m.registry().activate(&set)?;
    }
    if let Some(set) = &req.steering {
        let n = state.engine.model_config().n_layers;
        let set: Vec<(&str, f32, std::ops::RangeInclusive<usize>)> = set
            .iter()
            .map(|s| {
                let [a, b] = s.layers.unwrap_or([0, n - 1]);
                (s.name.as_str(), s.scale, a..=b)
            })
            .collect();
        m.registry().activate_steering(&set)?;
    }
    Ok(Json(adapters_view(m)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_steps: Option<usize>,
    #[serde(default)]
    max_seconds: Option<f64>,
}

fn job_view(model: &str, status: &tailor_trainer::TrainingStatus) -> Value {
    let mut v = json!(status);
    v["model"] = json!(model);
    v
}

/// `POST /v1/tailor/training`: `{"model"?, "max_steps"?, "max_seconds"?}` starts training a new
/// adapter version from the profile's feedback in the background (202 with its status; 409
/// while one runs). A promoted version is hot-swapped into the running model.
pub(crate) async fn training_start(State(state): St, b: Result<Bytes, BytesRejection>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: TrainBody = parse(&body(b)?)?;
    let (m, pm) = state.personal(req.model.as_deref())?;
    let mut options = PersonalOptions::default();
    options.train.max_steps = req.max_steps;
    options.train.max_seconds = req.max_seconds;
    let job = pm.start_training(options)?;
    Ok((StatusCode::ACCEPTED, Json(job_view(&m.id, &job.status()))))
}

/// `GET /v1/tailor/training?model=`: the current or last job's status.
pub(crate) async fn training_status(State(state): St, Query(q): Query<ModelQuery>) -> Res {
    let (m, pm) = state.personal(q.model.as_deref())?;
    let job = pm.training_job().ok_or_else(|| ApiError::not_found(format!("no training job has run for `{}`", m.id)))?;
    Ok(Json(job_view(&m.id, &job.status())))
}

/// `POST /v1/tailor/training/cancel`: asks the running job to stop after its current step (its
/// checkpoint stays, so the next run resumes).
pub(crate) async fn training_cancel(State(state): St, b: Result<Bytes, BytesRejection>) -> Res {
    let req: ModelBody = parse(&body(b)?)?;
    let (m, pm) = state.personal(req.model.as_deref())?;
    let job = pm.training_job().ok_or_else(|| ApiError::not_found(format!("no training job has run for `{}`", m.id)))?;
    job.cancel();
    Ok(Json(job_view(&m.id, &job.status())))
}
