//! The OpenAI endpoints: `/v1/models`, `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, each streamed (SSE, ending with `data: [DONE]`) where OpenAI streams.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tailor::{FinishReason, Generation, Prompt, TokenLogprob, ToolDelta};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::generate::{self, CancelGuard, Event};
use super::openai::{self, ChatRequest, CompletionPrompt, CompletionRequest, EmbeddingRequest};
use super::state::{AppState, Stats};

pub(crate) type St = State<Arc<AppState>>;

/// The request body, or the extractor's refusal (413 past the size limit) in OpenAI's shape.
pub(crate) fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        let status = r.status();
        ApiError {
            status,
            message: r.body_text(),
            kind: "invalid_request_error",
            param: None,
            code: (status == axum::http::StatusCode::PAYLOAD_TOO_LARGE).then_some("request_too_large"),
        }
    })
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A unique id with OpenAI's prefixes (`chatcmpl-`, `cmpl-`).
fn new_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0) as u64;
    format!("{prefix}-{nanos:x}{:04x}", N.fetch_add(1, Ordering::Relaxed) & 0xffff)
}

fn model_json(id: &str, created: u64, extra: Value) -> Value {
    let mut v = json!({"id": id, "object": "model", "created": created, "owned_by": "tailor"});
    if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
        m.extend(e);
    }
    v
}

fn models_list(state: &AppState) -> Vec<Value> {
    let mut out = vec![model_json(&state.base_id, state.started, json!({"tailor": {"kind": "base"}}))];
    for (id, path) in &state.profiles {
        out.push(model_json(id, state.started, json!({"tailor": {"kind": "personal", "profile": path}})));
    }
    if let Some(e) = &state.embedder {
        out.push(model_json(&e.id, state.started, json!({"tailor": {"kind": "embedding", "dimensions": tailor::profile::Embed::dim(&*e.model)}})));
    }
    out
}

/// `GET /v1/models`.
pub(crate) async fn models(State(state): St) -> Json<Value> {
    Json(json!({"object": "list", "data": models_list(&state)}))
}

/// `GET /v1/models/{id}`.
pub(crate) async fn model(State(state): St, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    models_list(&state).into_iter().find(|m| m["id"] == id.as_str()).map(Json).ok_or_else(|| ApiError::model_not_found(&id))
}

pub(crate) fn finish_reason(g: &Generation) -> &'static str {
    if !g.tool_calls.is_empty() {
        return "tool_calls";
    }
    match g.finish_reason {
        FinishReason::Length | FinishReason::ContextFull => "length",
        _ => "stop",
    }
}

/// Usage over the choices of one request: the prompt once (its prefill is shared), every
/// choice's completion.
pub(crate) fn usage(gs: &[Generation]) -> Value {
    let prompt = gs.first().map_or(0, |g| g.prompt_tokens);
    let cached = gs.first().map_or(0, |g| g.reused_tokens);
    let completion: usize = gs.iter().map(|g| g.token_ids.len()).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}

/// Tailor's additions to a response: memories used, timings, the raw finish reason (of the
/// first choice).
pub(crate) fn tailor_extra(gs: &[Generation]) -> Value {
    match gs.first() {
        Some(g) => json!({"memories": g.memories, "finish_reason": g.finish_reason, "timings": g.timings}),
        None => json!({}),
    }
}

/// A call in a response message.
fn tool_call_json(c: &tailor::ToolCall) -> Value {
    json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
}

/// Streamed tool-call pieces in OpenAI's `delta.tool_calls` shape.
fn tool_deltas_json(deltas: &[ToolDelta]) -> Vec<Value> {
    deltas
        .iter()
        .filter_map(|d| match d {
            ToolDelta::CallStart { index, id, name } => Some(json!({"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}})),
            ToolDelta::Arguments { index, text } => Some(json!({"index": index, "function": {"arguments": text}})),
            ToolDelta::Content(_) => None,
        })
        .collect()
}

/// Which API a generation answers: the two differ in their chunk and response shapes.
#[derive(Clone)]
enum Api {
    Chat,
    Completion { echo: Option<String> },
}

/// The fields every chunk and response carries.
struct Meta {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    api: Api,
    include_usage: bool,
    /// Text so far of each choice (legacy `text_offset`).
    offsets: Vec<usize>,
}

impl Meta {
    fn head(&self, object: &str) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("object".into(), object.into());
        m.insert("created".into(), self.created.into());
        m.insert("model".into(), self.model.clone().into());
        m.insert("system_fingerprint".into(), self.fingerprint.clone().into());
        m
    }

    /// Legacy completions logprobs for `lps`, starting at text offset `offset`.
    fn legacy_logprobs(lps: &[TokenLogprob], mut offset: usize) -> Value {
        let mut tokens = Vec::new();
        let mut lp = Vec::new();
        let mut tops = Vec::new();
        let mut offsets = Vec::new();
        for t in lps {
            tokens.push(t.token.clone());
            lp.push(t.logprob);
            tops.push(t.top_logprobs.iter().map(|a| (a.token.clone(), json!(a.logprob))).collect::<serde_json::Map<_, _>>());
            offsets.push(offset);
            offset += t.token.len();
        }
        json!({"tokens": tokens, "token_logprobs": lp, "top_logprobs": tops, "text_offset": offsets})
    }

    fn chunk(&mut self, choice: usize, text: &str, lp: Option<&TokenLogprob>, deltas: &[ToolDelta], finish: Option<&str>, first: bool) -> Value {
        let mut m;
        match &self.api {
            Api::Chat => {
                m = self.head("chat.completion.chunk");
                let mut delta = match (first, finish) {
                    (true, _) => json!({"role": "assistant", "content": ""}),
                    (_, Some(_)) => json!({}),
                    _ if text.is_empty() && !deltas.is_empty() => json!({}),
                    _ => json!({"content": text}),
                };
                let calls = tool_deltas_json(deltas);
                if !calls.is_empty() {
                    delta["tool_calls"] = Value::Array(calls);
                }
                let logprobs = lp.map(|l| json!({"content": [l], "refusal": null})).unwrap_or(Value::Null);
                m.insert("choices".into(), json!([{"index": choice, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]));
            }
            Api::Completion { .. } => {
                m = self.head("text_completion");
                let offset = self.offsets.get(choice).copied().unwrap_or(0);
                let logprobs = lp.map(|l| Self::legacy_logprobs(std::slice::from_ref(l), offset)).unwrap_or(Value::Null);
                m.insert("choices".into(), json!([{"index": choice, "text": text, "logprobs": logprobs, "finish_reason": finish}]));
            }
        }
        if self.offsets.len() <= choice {
            self.offsets.resize(choice + 1, 0);
        }
        self.offsets[choice] += text.len();
        if self.include_usage {
            m.insert("usage".into(), Value::Null);
        }
        Value::Object(m)
    }

    fn usage_chunk(&self, g: &[Generation]) -> Value {
        let mut m = self.head(match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completion { .. } => "text_completion",
        });
        m.insert("choices".into(), json!([]));
        m.insert("usage".into(), usage(g));
        m.insert("tailor".into(), tailor_extra(g));
        Value::Object(m)
    }

    fn response(&self, gs: &[Generation]) -> Value {
        let mut m;
        let choices: Vec<Value>;
        match &self.api {
            Api::Chat => {
                m = self.head("chat.completion");
                choices = gs
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        let logprobs = g.logprobs.as_ref().map(|l| json!({"content": l, "refusal": null})).unwrap_or(Value::Null);
                        let mut message = json!({"role": "assistant", "content": g.text, "refusal": null});
                        if !g.tool_calls.is_empty() {
                            if g.text.is_empty() {
                                message["content"] = Value::Null;
                            }
                            message["tool_calls"] = g.tool_calls.iter().map(tool_call_json).collect();
                        }
                        json!({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish_reason(g)})
                    })
                    .collect();
            }
            Api::Completion { echo } => {
                m = self.head("text_completion");
                let prefix = echo.as_deref().unwrap_or("");
                choices = gs
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        let logprobs = g.logprobs.as_ref().map(|l| Self::legacy_logprobs(l, prefix.len())).unwrap_or(Value::Null);
                        json!({"index": i, "text": format!("{prefix}{}", g.text), "logprobs": logprobs, "finish_reason": finish_reason(g)})
                    })
                    .collect();
            }
        }
        m.insert("choices".into(), Value::Array(choices));
        m.insert("usage".into(), usage(gs));
        m.insert("tailor".into(), tailor_extra(gs));
        Value::Object(m)
    }
}

fn sse(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

struct Streamer {
    rx: mpsc::Receiver<Event>,
    _guard: CancelGuard,
    meta: Meta,
    pending: VecDeque<SseEvent>,
    finished: bool,
}

/// The SSE response: chunks as tokens come, the final chunk, the usage chunk when asked for,
/// `[DONE]`. Dropped when the client goes away, which cancels the generation.
fn stream_response(rx: mpsc::Receiver<Event>, guard: CancelGuard, mut meta: Meta, n: usize) -> Response {
    let mut pending = VecDeque::new();
    for choice in 0..n {
        match &meta.api {
            Api::Chat => pending.push_back(sse(&meta.chunk(choice, "", None, &[], None, true))),
            Api::Completion { echo: Some(p) } => {
                let p = p.clone();
                pending.push_back(sse(&meta.chunk(choice, &p, None, &[], None, false)));
            }
            Api::Completion { echo: None } => {}
        }
    }
    let st = Streamer { rx, _guard: guard, meta, pending, finished: false };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.finished {
                return None;
            }
            match st.rx.recv().await {
                Some(Event::Token { choice, text, logprob, deltas }) => {
                    let c = st.meta.chunk(choice, &text, logprob.as_ref(), &deltas, None, false);
                    st.pending.push_back(sse(&c));
                }
                Some(Event::Done(Ok(gs))) => {
                    st.finished = true;
                    for (i, g) in gs.iter().enumerate() {
                        let c = st.meta.chunk(i, "", None, &[], Some(finish_reason(g)), false);
                        st.pending.push_back(sse(&c));
                    }
                    if st.meta.include_usage {
                        st.pending.push_back(sse(&st.meta.usage_chunk(&gs)));
                    }
                    st.pending.push_back(SseEvent::default().data("[DONE]"));
                }
                Some(Event::Done(Err(e))) => {
                    st.finished = true;
                    st.pending.push_back(sse(&e.body()));
                    st.pending.push_back(SseEvent::default().data("[DONE]"));
                }
                None => {
                    st.finished = true;
                    st.pending.push_back(sse(&ApiError::internal("the generation ended without an answer").body()));
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

async fn answer(state: Arc<AppState>, job: generate::Job, stream: bool, meta: Meta) -> Result<Response, ApiError> {
    let n = job.n;
    let (rx, guard) = generate::start(state, job).await?;
    if stream {
        return Ok(stream_response(rx, guard, meta, n));
    }
    let g = generate::collect(rx).await;
    drop(guard);
    Ok(Json(meta.response(&g?)).into_response())
}

/// Runs CPU work (templating and tokenizing a prompt of up to the body limit) off the async
/// threads.
pub(crate) async fn off_thread<T: Send + 'static>(f: impl FnOnce() -> Result<T, tailor::Error> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("worker thread failed: {e}")))?.map_err(ApiError::from)
}

/// Renders and tokenizes a conversation (with its tools) off the async threads, and checks
/// the answer's grammar compiles (a 400 naming `response_format`, or `tools` when the tools'
/// schemas are at fault).
pub(crate) async fn chat_tokens(state: &AppState, messages: Vec<tailor::ChatMessage>, checked: openai::Checked) -> Result<(Vec<tailor::ChatMessage>, openai::Checked, Vec<u32>), ApiError> {
    let engine = state.engine.clone();
    let r = tokio::task::spawn_blocking(move || {
        let grammar_check = grammar_error(&engine, &checked.params);
        let text = engine.chat_template().render_with_tools(&messages, checked.params.tools.as_ref(), true);
        (messages, checked, text.and_then(|t| engine.tokenize(&t)), grammar_check)
    })
    .await
    .map_err(|e| ApiError::internal(format!("worker thread failed: {e}")))?;
    let (messages, checked, tokens, grammar_check) = r;
    grammar_check?;
    Ok((messages, checked, tokens?))
}

/// Whether the grammar a request's answer will follow compiles.
pub(crate) fn grammar_error(engine: &tailor::Engine, params: &tailor::GenerateParams) -> Result<(), ApiError> {
    let callable = params.tools.as_ref().is_some_and(|t| t.active());
    let param = if callable && params.grammar.is_none() { "tools" } else { "response_format" };
    let bad = |e: tailor::Error| ApiError::invalid(param, format!("Invalid '{param}': {e}"));
    match params.answer_grammar().map_err(bad)? {
        Some(g) => engine.check_grammar(&g).map_err(bad),
        None => Ok(()),
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(State(state): St, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    Stats::add(&state.stats.requests, 1);
    let req: ChatRequest = openai::parse(&body(b)?)?;
    let model = state.model(&req.model)?.clone();
    let (messages, checked) = req.check(state.limits.max_tokens, &state.engine.recommended_sampling())?;
    let (messages, checked, tokens) = chat_tokens(&state, messages, checked).await?;
    let (stream, include_usage) = (checked.stream, checked.include_usage);
    let job = generate::prepare(&state, model, Prompt::Chat(messages), tokens, checked, "messages")?;
    let meta = Meta { id: new_id("chatcmpl"), created: now(), model: req.model, fingerprint: state.fingerprint.clone(), api: Api::Chat, include_usage, offsets: Vec::new() };
    answer(state, job, stream, meta).await
}

/// `POST /v1/completions`.
pub(crate) async fn completions(State(state): St, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    Stats::add(&state.stats.requests, 1);
    let req: CompletionRequest = openai::parse(&body(b)?)?;
    let model = state.model(&req.model)?.clone();
    let (prompt, checked) = req.check(state.limits.max_tokens)?;
    let echo = req.echo.unwrap_or(false);
    if echo && checked.params.logprobs.is_some() {
        return Err(ApiError::invalid("echo", "'echo' together with 'logprobs' (prompt log-probabilities) is not supported."));
    }
    let (prompt, tokens, text) = match prompt {
        CompletionPrompt::Text(t) => {
            let engine = state.engine.clone();
            let (t, tokens) = off_thread(move || {
                let tokens = engine.tokenize(&t)?;
                Ok((t, tokens))
            })
            .await?;
            (Prompt::Text(t.clone()), tokens, t)
        }
        CompletionPrompt::Tokens(ids) => {
            let vocab = state.engine.model_config().vocab_size;
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::invalid("prompt", format!("Invalid 'prompt': token id {bad} is outside the vocabulary of {vocab}.")));
            }
            let text = state.engine.tokenizer().decode(&ids, false);
            (Prompt::Tokens(ids.clone()), ids, text)
        }
    };
    if let Some(g) = checked.params.grammar.clone() {
        let engine = state.engine.clone();
        off_thread(move || engine.check_grammar(&g)).await.map_err(|e| ApiError::invalid("response_format", format!("Invalid 'response_format': {}", e.message)))?;
    }
    let (stream, include_usage) = (checked.stream, checked.include_usage);
    let job = generate::prepare(&state, model, prompt, tokens, checked, "prompt")?;
    let api = Api::Completion { echo: echo.then_some(text) };
    let meta = Meta { id: new_id("cmpl"), created: now(), model: req.model, fingerprint: state.fingerprint.clone(), api, include_usage, offsets: Vec::new() };
    answer(state, job, stream, meta).await
}

/// `POST /v1/embeddings` (the MiniLM embedder, unit-length vectors).
pub(crate) async fn embeddings(State(state): St, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    Stats::add(&state.stats.requests, 1);
    let req: EmbeddingRequest = openai::parse(&body(b)?)?;
    let Some(emb) = &state.embedder else {
        return Err(ApiError::model_not_found(&req.model));
    };
    if req.model != emb.id {
        return Err(ApiError::model_not_found(&req.model));
    }
    let texts = req.texts(state.limits.max_embedding_inputs)?;
    let dim = tailor::profile::Embed::dim(&*emb.model);
    if let Some(d) = req.dimensions {
        if d != dim as i64 {
            return Err(ApiError::invalid("dimensions", format!("Invalid 'dimensions': this model makes {dim}-dimensional vectors.")));
        }
    }
    let base64 = req.encoding_format.as_deref() == Some("base64");
    let st = state.clone();
    let (vectors, tokens) = tokio::task::spawn_blocking(move || -> Result<(Vec<Vec<f32>>, usize), ApiError> {
        let emb = st.embedder.as_ref().ok_or_else(|| ApiError::internal("no embedder"))?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let v = tailor::profile::Embed::embed(&*emb.model, &refs)?;
        let n = match &emb.tokenizer {
            Some(t) => t.encode_batch(refs.clone(), true).map(|e| e.iter().map(|e| e.len()).sum()).unwrap_or(0),
            None => 0,
        };
        Ok((v, n))
    })
    .await
    .map_err(|e| ApiError::internal(format!("the embedding thread failed: {e}")))??;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(openai::base64(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "model": emb.id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})).into_response())
}

/// Routes that do not exist, in OpenAI's error shape.
pub(crate) async fn fallback(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("Unknown request URL: {uri}."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailor::TopLogprob;

    fn lp(token: &str, logprob: f32) -> TokenLogprob {
        let top = TopLogprob { token: token.into(), logprob, bytes: token.as_bytes().to_vec() };
        TokenLogprob { token: token.into(), logprob, bytes: token.as_bytes().to_vec(), top_logprobs: vec![top] }
    }

    fn meta(api: Api, include_usage: bool) -> Meta {
        Meta { id: "x-1".into(), created: 7, model: "m".into(), fingerprint: "fp".into(), api, include_usage, offsets: Vec::new() }
    }

    #[test]
    fn legacy_logprobs_carry_text_offsets() {
        let v = Meta::legacy_logprobs(&[lp("Hel", -0.5), lp("lo", -0.25)], 10);
        assert_eq!(v["tokens"], json!(["Hel", "lo"]));
        assert_eq!(v["token_logprobs"], json!([-0.5, -0.25]));
        assert_eq!(v["text_offset"], json!([10, 13]));
        assert_eq!(v["top_logprobs"][1], json!({"lo": -0.25}));
    }

    #[test]
    fn chat_chunks_have_openais_shape() {
        let mut m = meta(Api::Chat, true);
        let first = m.chunk(0, "", None, &[], None, true);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert!(first["usage"].is_null() && first.get("usage").is_some());
        let l = lp("Hi", -0.1);
        let c = m.chunk(0, "Hi", Some(&l), &[], None, false);
        assert_eq!(c["choices"][0]["delta"], json!({"content": "Hi"}));
        assert_eq!(c["choices"][0]["logprobs"]["content"][0]["token"], "Hi");
        let last = m.chunk(0, "", None, &[], Some("stop"), false);
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        // Tool calls: the first piece names the call, the next ones add arguments.
        let start = ToolDelta::CallStart { index: 0, id: "call_a".into(), name: "f".into() };
        let c = m.chunk(1, "", None, &[start], None, false);
        assert_eq!(c["choices"][0]["index"], 1);
        assert_eq!(c["choices"][0]["delta"], json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}));
        let c = m.chunk(1, "", None, &[ToolDelta::Arguments { index: 0, text: "{\"a\"".into() }], None, false);
        assert_eq!(c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"], "{\"a\"");
        // Streamed completions: text pieces with their offsets.
        let mut m = meta(Api::Completion { echo: None }, false);
        m.chunk(0, "ab", None, &[], None, false);
        let c = m.chunk(0, "c", Some(&lp("c", -1.0)), &[], None, false);
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["choices"][0]["logprobs"]["text_offset"], json!([2]));
        assert!(c.get("usage").is_none());
    }
}
