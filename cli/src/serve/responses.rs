//! OpenAI's Responses API, `POST /v1/responses`: `input` as a string or a list of items
//! (messages with text or `input_text` parts, `function_call` and `function_call_output`
//! items), `instructions`, function tools and `tool_choice`, `text.format` (json_schema,
//! json_object), `max_output_tokens`, sampling, and streaming as typed server-sent events
//! (`response.created` … `response.output_text.delta` … `response.completed`). Responses are
//! not stored: `previous_response_id` and `store: true` are refused, so a conversation is
//! carried by sending its items back, as stateless clients do.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tailor::{ChatMessage, FinishReason, Generation, Prompt, ToolCall, ToolDelta};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::generate::{self, CancelGuard, Event};
use super::openai::{self, Common, Stop, TailorOptions};
use super::routes::{body, chat_tokens, St};
use super::state::Stats;

/// `POST /v1/responses`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ResponsesRequest {
    model: String,
    input: Value,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    text: Option<Value>,
    #[serde(default)]
    max_output_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    reasoning: Option<Value>,
    #[serde(default)]
    truncation: Option<String>,
    #[serde(default)]
    top_logprobs: Option<i64>,
    #[serde(default)]
    include: Option<Vec<String>>,
    #[serde(default)]
    tailor: Option<TailorOptions>,
}

/// The text of a message's `content`: a string or parts of type `input_text`/`output_text`/`text`.
fn content_text(c: &Value, at: &str) -> Result<String, ApiError> {
    match c {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut t = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("input_text" | "output_text" | "text"), Some(s)) => t.push_str(s),
                    (kind, _) => {
                        return Err(ApiError::invalid("input", format!("Invalid '{at}.content': only text parts are supported, got {}.", kind.unwrap_or("a part without a type"))));
                    }
                }
            }
            Ok(t)
        }
        _ => Err(ApiError::invalid("input", format!("Invalid '{at}.content': expected a string or a list of parts."))),
    }
}

impl ResponsesRequest {
    /// The conversation: `instructions` as the system message, then the input items.
    fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        let mut out = Vec::new();
        if let Some(i) = self.instructions.as_ref().filter(|i| !i.is_empty()) {
            out.push(ChatMessage::system(i.clone()));
        }
        match &self.input {
            Value::String(s) => out.push(ChatMessage::user(s.clone())),
            Value::Array(items) => {
                for (i, it) in items.iter().enumerate() {
                    let at = format!("input[{i}]");
                    match it.get("type").and_then(Value::as_str).unwrap_or("message") {
                        "message" => {
                            let role = match it.get("role").and_then(Value::as_str) {
                                Some("user") => "user",
                                Some("assistant") => "assistant",
                                Some("system" | "developer") => "system",
                                r => return Err(ApiError::invalid("input", format!("Invalid '{at}.role': {r:?} (user, assistant, system, developer)."))),
                            };
                            out.push(ChatMessage::new(role, content_text(it.get("content").unwrap_or(&Value::Null), &at)?));
                        }
                        "function_call" => {
                            let field = |k: &str| it.get(k).and_then(Value::as_str).map(str::to_string);
                            let (Some(call_id), Some(name)) = (field("call_id"), field("name")) else {
                                return Err(ApiError::invalid("input", format!("Invalid '{at}': a function_call needs 'call_id' and 'name'.")));
                            };
                            let call = ToolCall { id: call_id, name, arguments: field("arguments").unwrap_or_else(|| "{}".into()) };
                            // Consecutive calls belong to one assistant turn.
                            match out.last_mut() {
                                Some(m) if m.role == "assistant" && !m.tool_calls.is_empty() => m.tool_calls.push(call),
                                _ => {
                                    let mut m = ChatMessage::assistant("");
                                    m.tool_calls.push(call);
                                    out.push(m);
                                }
                            }
                        }
                        "function_call_output" => {
                            let Some(call_id) = it.get("call_id").and_then(Value::as_str) else {
                                return Err(ApiError::invalid("input", format!("Invalid '{at}': a function_call_output needs 'call_id'.")));
                            };
                            let output = match it.get("output") {
                                Some(Value::String(s)) => s.clone(),
                                Some(v) => content_text(v, &at)?,
                                None => String::new(),
                            };
                            let mut m = ChatMessage::new("tool", output);
                            m.tool_call_id = Some(call_id.to_string());
                            out.push(m);
                        }
                        other => return Err(ApiError::invalid("input", format!("Invalid '{at}.type': `{other}` is not supported (message, function_call, function_call_output)."))),
                    }
                }
            }
            _ => return Err(ApiError::invalid("input", "Invalid 'input': expected a string or a list of items.")),
        }
        if !out.iter().any(|m| m.role != "system") {
            return Err(ApiError::invalid("input", "Invalid 'input': no message to answer."));
        }
        Ok(out)
    }

    /// The checked generation settings.
    fn check(&self, limit: usize, recommended: &tailor::SamplingParams) -> Result<openai::Checked, ApiError> {
        if self.previous_response_id.is_some() {
            return Err(ApiError::invalid("previous_response_id", "Responses are not stored by this server: send the conversation's items in 'input'."));
        }
        if self.store == Some(true) {
            return Err(ApiError::invalid("store", "Responses are not stored by this server ('store' must be false or absent)."));
        }
        if self.reasoning.as_ref().is_some_and(|r| !r.is_null() && r.get("effort").is_some_and(|e| !e.is_null())) {
            return Err(ApiError::invalid("reasoning", "This model does not reason: 'reasoning.effort' is not supported."));
        }
        if self.truncation.as_deref().is_some_and(|t| t != "disabled") {
            return Err(ApiError::invalid("truncation", "Only truncation 'disabled' is supported."));
        }
        if self.top_logprobs.is_some_and(|k| k != 0) || self.include.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(ApiError::invalid(if self.top_logprobs.is_some() { "top_logprobs" } else { "include" }, "Log-probabilities and 'include' are not supported on /v1/responses (use /v1/chat/completions)."));
        }
        let format = self.text.as_ref().and_then(|t| t.get("format"));
        let common = Common {
            stream: self.stream,
            temperature: self.temperature,
            top_p: self.top_p,
            response_format: format.cloned(),
            tailor: self.tailor.clone(),
            stop: None::<Stop>,
            ..Default::default()
        };
        let mut checked = common.check_with(self.max_output_tokens, "max_output_tokens", limit, recommended, "text.format")?;
        checked.params.tools = openai::tool_set(self.tools.as_deref(), self.tool_choice.as_ref(), self.parallel_tool_calls)?;
        Ok(checked)
    }
}

fn new_id(prefix: &str) -> String {
    let id = tailor::ToolCall::new_id();
    format!("{prefix}_{}", id.trim_start_matches("call_"))
}

/// What every response object and event shares.
struct Head {
    id: String,
    created_at: u64,
    model: String,
    req: ResponsesRequest,
    /// Id of the message item and of each call item.
    message_id: String,
}

impl Head {
    fn response(&self, status: &str, output: Vec<Value>, g: Option<&Generation>) -> Value {
        let r = &self.req;
        let incomplete = g.filter(|g| matches!(g.finish_reason, FinishReason::Length | FinishReason::ContextFull)).map(|_| json!({"reason": "max_output_tokens"}));
        let usage = g.map(|g| {
            json!({"input_tokens": g.prompt_tokens, "input_tokens_details": {"cached_tokens": g.reused_tokens},
                   "output_tokens": g.token_ids.len(), "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": g.prompt_tokens + g.token_ids.len()})
        });
        let status = if incomplete.is_some() && status == "completed" { "incomplete" } else { status };
        let mut v = json!({
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "error": null, "incomplete_details": incomplete, "instructions": r.instructions,
            "max_output_tokens": r.max_output_tokens, "model": self.model, "output": output,
            "parallel_tool_calls": r.parallel_tool_calls.unwrap_or(true), "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null}, "store": false,
            "temperature": r.temperature, "top_p": r.top_p,
            "text": r.text.clone().unwrap_or_else(|| json!({"format": {"type": "text"}})),
            "tool_choice": r.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            "tools": r.tools.clone().unwrap_or_default(), "truncation": "disabled",
            "metadata": r.metadata.clone().unwrap_or_else(|| json!({})), "user": null, "usage": usage,
        });
        if let Some(g) = g {
            v["tailor"] = json!({"memories": g.memories, "finish_reason": g.finish_reason, "timings": g.timings});
        }
        v
    }

    fn message_item(&self, text: &str, status: &str) -> Value {
        let content = if status == "in_progress" { json!([]) } else { json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]) };
        json!({"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content})
    }

    /// The output items of a finished generation.
    fn output(&self, g: &Generation, call_ids: &[String]) -> Vec<Value> {
        let mut out = Vec::new();
        if g.tool_calls.is_empty() || !g.text.is_empty() {
            out.push(self.message_item(&g.text, "completed"));
        }
        for (i, c) in g.tool_calls.iter().enumerate() {
            let id = call_ids.get(i).cloned().unwrap_or_else(|| format!("fc_{}", c.id.trim_start_matches("call_")));
            out.push(json!({"type": "function_call", "id": id, "call_id": c.id, "name": c.name, "arguments": c.arguments, "status": "completed"}));
        }
        out
    }
}

/// `POST /v1/responses`.
pub(crate) async fn create(State(state): St, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    Stats::add(&state.stats.requests, 1);
    let req: ResponsesRequest = openai::parse(&body(b)?)?;
    let model = state.model(&req.model)?.clone();
    let messages = req.messages()?;
    let checked = req.check(state.limits.max_tokens, &state.engine.recommended_sampling())?;
    let (messages, checked, tokens) = chat_tokens(&state, messages, checked).await?;
    let stream = checked.stream;
    let job = generate::prepare(&state, model, Prompt::Chat(messages), tokens, checked, "input")?;
    let head = Head { id: new_id("resp"), created_at: super::routes::now(), model: req.model.clone(), req, message_id: new_id("msg") };
    let (rx, guard) = generate::start(state, job).await?;
    if stream {
        return Ok(stream_events(rx, guard, head));
    }
    let gs = generate::collect(rx).await;
    drop(guard);
    let gs = gs?;
    let g = gs.first().ok_or_else(|| ApiError::internal("no generation"))?;
    Ok(Json(head.response("completed", head.output(g, &[]), Some(g))).into_response())
}

/// The event stream's state.
struct Events {
    rx: mpsc::Receiver<Event>,
    _guard: CancelGuard,
    head: Head,
    pending: VecDeque<SseEvent>,
    seq: u64,
    finished: bool,
    /// Text of the message item so far (`None`: not opened).
    text: Option<String>,
    /// Item ids and arguments so far of the calls opened.
    calls: Vec<(String, String, String, String)>,
}

impl Events {
    fn emit(&mut self, kind: &str, mut v: Value) {
        v["type"] = json!(kind);
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.pending.push_back(SseEvent::default().event(kind).data(v.to_string()));
    }

    fn call_index(&self, i: usize) -> usize {
        i + usize::from(self.text.is_some())
    }

    fn on_text(&mut self, t: &str) {
        if t.is_empty() {
            return;
        }
        if self.text.is_none() {
            self.text = Some(String::new());
            let item = self.head.message_item("", "in_progress");
            let id = self.head.message_id.clone();
            self.emit("response.output_item.added", json!({"output_index": 0, "item": item}));
            self.emit("response.content_part.added", json!({"item_id": id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}));
        }
        if let Some(s) = self.text.as_mut() {
            s.push_str(t);
        }
        let id = self.head.message_id.clone();
        self.emit("response.output_text.delta", json!({"item_id": id, "output_index": 0, "content_index": 0, "delta": t, "logprobs": []}));
    }

    fn on_delta(&mut self, d: &ToolDelta) {
        match d {
            ToolDelta::CallStart { index, id, name } => {
                let item_id = format!("fc_{}", id.trim_start_matches("call_"));
                self.calls.push((item_id.clone(), id.clone(), name.clone(), String::new()));
                let item = json!({"type": "function_call", "id": item_id, "call_id": id, "name": name, "arguments": "", "status": "in_progress"});
                let oi = self.call_index(*index);
                self.emit("response.output_item.added", json!({"output_index": oi, "item": item}));
            }
            ToolDelta::Arguments { index, text } => {
                let oi = self.call_index(*index);
                let Some(c) = self.calls.get_mut(*index) else { return };
                c.3.push_str(text);
                let item_id = c.0.clone();
                self.emit("response.function_call_arguments.delta", json!({"item_id": item_id, "output_index": oi, "delta": text}));
            }
            ToolDelta::Content(t) => self.on_text(t),
        }
    }

    fn on_done(&mut self, g: &Generation) {
        if let Some(t) = self.text.clone() {
            let id = self.head.message_id.clone();
            self.emit("response.output_text.done", json!({"item_id": id, "output_index": 0, "content_index": 0, "text": t, "logprobs": []}));
            self.emit("response.content_part.done", json!({"item_id": id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": t, "annotations": []}}));
            let item = self.head.message_item(&t, "completed");
            self.emit("response.output_item.done", json!({"output_index": 0, "item": item}));
        }
        for i in 0..self.calls.len() {
            let (item_id, call_id, name, args) = self.calls[i].clone();
            let oi = self.call_index(i);
            self.emit("response.function_call_arguments.done", json!({"item_id": item_id, "output_index": oi, "name": name, "arguments": args}));
            let item = json!({"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": args, "status": "completed"});
            self.emit("response.output_item.done", json!({"output_index": oi, "item": item}));
        }
        // The final object: the items as streamed (a message with no text is still one).
        let mut g2 = g.clone();
        if self.text.is_none() && g2.tool_calls.is_empty() {
            g2.text.clear();
        }
        let ids: Vec<String> = self.calls.iter().map(|c| c.0.clone()).collect();
        let output = self.head.output(&g2, &ids);
        let resp = self.head.response("completed", output, Some(g));
        let kind = if resp["status"] == "incomplete" { "response.incomplete" } else { "response.completed" };
        self.emit(kind, json!({"response": resp}));
    }
}

fn stream_events(rx: mpsc::Receiver<Event>, guard: CancelGuard, head: Head) -> Response {
    let mut ev = Events { rx, _guard: guard, head, pending: VecDeque::new(), seq: 0, finished: false, text: None, calls: Vec::new() };
    let r = ev.head.response("in_progress", Vec::new(), None);
    ev.emit("response.created", json!({"response": r.clone()}));
    ev.emit("response.in_progress", json!({"response": r}));
    let stream = futures_util::stream::unfold(ev, |mut ev| async move {
        loop {
            if let Some(e) = ev.pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), ev));
            }
            if ev.finished {
                return None;
            }
            match ev.rx.recv().await {
                Some(Event::Token { text, deltas, .. }) => {
                    ev.on_text(&text);
                    for d in &deltas {
                        ev.on_delta(d);
                    }
                }
                Some(Event::Done(Ok(gs))) => {
                    ev.finished = true;
                    if let Some(g) = gs.first() {
                        ev.on_done(g);
                    }
                }
                Some(Event::Done(Err(e))) => {
                    ev.finished = true;
                    let mut r = ev.head.response("failed", Vec::new(), None);
                    r["error"] = json!({"code": e.code.unwrap_or("server_error"), "message": e.message});
                    ev.emit("response.failed", json!({"response": r}));
                }
                None => {
                    ev.finished = true;
                    ev.emit("error", json!({"code": "server_error", "message": "the generation ended without an answer", "param": null}));
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> ResponsesRequest {
        openai::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn inputs_become_a_conversation() {
        let r = req(json!({"model": "m", "instructions": "Be brief.", "input": "Hi"}));
        assert_eq!(r.messages().unwrap(), vec![ChatMessage::system("Be brief."), ChatMessage::user("Hi")]);
        let r = req(json!({"model": "m", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "call_2", "name": "w", "arguments": "{\"x\": 1}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]}));
        let m = r.messages().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].tool_calls.len(), 2);
        assert_eq!((m[2].role.as_str(), m[2].tool_call_id.as_deref(), m[2].content.as_str()), ("tool", Some("call_1"), "sunny"));
        assert_eq!(req(json!({"model": "m", "input": [{"type": "reasoning"}]})).messages().unwrap_err().param.as_deref(), Some("input"));
        assert_eq!(req(json!({"model": "m", "input": 5})).messages().unwrap_err().param.as_deref(), Some("input"));
    }

    #[test]
    fn settings_are_checked_and_refused_by_name() {
        let rec = tailor::SamplingParams::chat();
        let c = req(json!({"model": "m", "input": "x", "max_output_tokens": 9, "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}},
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}], "tool_choice": {"type": "function", "name": "f"}}))
        .check(64, &rec)
        .unwrap();
        assert_eq!(c.max_tokens, Some(9));
        assert_eq!(c.params.grammar, Some(tailor::Grammar::JsonSchema(json!({"type": "object"}))));
        assert_eq!(c.params.tools.unwrap().choice, tailor::ToolChoice::Function("f".into()));
        assert_eq!(c.params.sampling, rec);
        for (k, v) in [("previous_response_id", json!("resp_1")), ("store", json!(true)), ("max_output_tokens", json!(0)), ("text", json!({"format": {"type": "yaml"}})), ("reasoning", json!({"effort": "high"}))] {
            let mut b = json!({"model": "m", "input": "x"});
            b[k] = v;
            let e = req(b).check(64, &rec).unwrap_err();
            let want = if k == "text" { "text.format" } else { k };
            assert_eq!(e.param.as_deref(), Some(want), "{k}");
        }
    }
}
