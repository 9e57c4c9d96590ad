//! OpenAI's request shapes for chat completions, completions and embeddings, parsed and
//! checked into what the engine runs. Every rejection names the field (`param`) as OpenAI does.
//!
//! Sampling: a request without `temperature` samples with the model's recommended settings
//! ([`tailor::Engine::recommended_sampling`]: SmolLM2's are temperature 0.2, top-p 0.9, with
//! min-p 0.05 and a repetition penalty of 1.1 as a loop guard); `temperature: 0` is greedy;
//! a request that gives `temperature` gets exactly what it asks (top-p, penalties) and
//! nothing else.
//!
//! Unknown top-level fields are ignored (clients send many). Tailor's own per-request options
//! go in one object, `"tailor": {"adapters": [...], "steering": [...], "memory": bool,
//! "prefix_cache": bool}` (the Python client's `extra_body`), whose fields are checked strictly.

use serde::Deserialize;
use serde_json::Value;
use tailor::{ChatMessage, GenerateParams, Grammar, SamplingParams, Tool, ToolCall, ToolChoice, ToolSet};

use super::error::ApiError;

/// The most alternatives `top_logprobs` may ask for (OpenAI's limit).
pub(crate) const MAX_TOP_LOGPROBS: usize = 20;
/// The most stop sequences (OpenAI's limit).
pub(crate) const MAX_STOP: usize = 4;
/// The most choices per request (`n`).
pub(crate) const MAX_N: usize = 8;
/// The most tools per request (OpenAI's limit).
pub(crate) const MAX_TOOLS: usize = 128;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// One adapter of a per-request set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdapterChoice {
    pub(crate) name: String,
    #[serde(default = "one")]
    pub(crate) weight: f32,
}

fn one() -> f32 {
    1.0
}

/// One steering vector of a per-request set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SteeringChoice {
    pub(crate) name: String,
    pub(crate) scale: f32,
    /// `[first, last]` (default: every layer).
    #[serde(default)]
    pub(crate) layers: Option<[usize; 2]>,
}

/// Tailor's per-request extensions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TailorOptions {
    /// Run these adapters (by registry name, weighted) instead of the model's active set.
    #[serde(default)]
    pub(crate) adapters: Option<Vec<AdapterChoice>>,
    /// Run these steering vectors instead of the model's active steering.
    #[serde(default)]
    pub(crate) steering: Option<Vec<SteeringChoice>>,
    /// Personal models: retrieve memories into the prompt (default true).
    #[serde(default)]
    pub(crate) memory: Option<bool>,
    /// Reuse a pooled session's KV cache (default true; false starts cold, for comparison).
    #[serde(default)]
    pub(crate) prefix_cache: Option<bool>,
    /// A grammar beyond `response_format`: `{"type": "regex" | "lark" | "json_schema" |
    /// "json_object", "value": ...}`.
    #[serde(default)]
    pub(crate) grammar: Option<Grammar>,
}

/// The sampling and streaming fields chat and completions share.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Common {
    #[serde(default)]
    pub(crate) stream: Option<bool>,
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub(crate) temperature: Option<f32>,
    #[serde(default)]
    pub(crate) top_p: Option<f32>,
    #[serde(default)]
    pub(crate) stop: Option<Stop>,
    #[serde(default)]
    pub(crate) seed: Option<i64>,
    #[serde(default)]
    pub(crate) n: Option<i64>,
    #[serde(default)]
    pub(crate) presence_penalty: Option<f32>,
    #[serde(default)]
    pub(crate) frequency_penalty: Option<f32>,
    #[serde(default)]
    pub(crate) logit_bias: Option<serde_json::Map<String, Value>>,
    /// vLLM/llama.cpp-style extras.
    #[serde(default)]
    pub(crate) top_k: Option<i64>,
    #[serde(default)]
    pub(crate) min_p: Option<f32>,
    #[serde(default)]
    pub(crate) repetition_penalty: Option<f32>,
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema",
    /// "strict"}}` (llama-server also takes it on completions).
    #[serde(default)]
    pub(crate) response_format: Option<Value>,
    #[serde(default)]
    pub(crate) tailor: Option<TailorOptions>,
}

/// A message's `content`: text, or a list of parts of which only text is supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Value>),
}

/// One message of `messages`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct InMessage {
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) content: Option<Content>,
    /// An assistant message's calls.
    #[serde(default)]
    pub(crate) tool_calls: Option<Vec<Value>>,
    /// A tool message's call.
    #[serde(default)]
    pub(crate) tool_call_id: Option<String>,
    #[serde(default)]
    pub(crate) name: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChatRequest {
    pub(crate) model: String,
    pub(crate) messages: Vec<InMessage>,
    #[serde(default)]
    pub(crate) max_tokens: Option<i64>,
    #[serde(default)]
    pub(crate) max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub(crate) logprobs: Option<bool>,
    #[serde(default)]
    pub(crate) top_logprobs: Option<i64>,
    #[serde(default)]
    pub(crate) tools: Option<Vec<Value>>,
    #[serde(default)]
    pub(crate) tool_choice: Option<Value>,
    #[serde(default)]
    pub(crate) parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub(crate) common: Common,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CompletionRequest {
    pub(crate) model: String,
    pub(crate) prompt: Value,
    #[serde(default)]
    pub(crate) max_tokens: Option<i64>,
    /// Legacy: the number of alternatives per position (0..=5).
    #[serde(default)]
    pub(crate) logprobs: Option<i64>,
    #[serde(default)]
    pub(crate) echo: Option<bool>,
    #[serde(default)]
    pub(crate) suffix: Option<String>,
    #[serde(default)]
    pub(crate) best_of: Option<i64>,
    #[serde(flatten)]
    pub(crate) common: Common,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct EmbeddingRequest {
    pub(crate) model: String,
    pub(crate) input: Value,
    #[serde(default)]
    pub(crate) encoding_format: Option<String>,
    #[serde(default)]
    pub(crate) dimensions: Option<i64>,
}

/// What a generation request asks for, checked.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    /// Sampling, stop strings, logprobs (max_tokens is set once the prompt's length is known).
    pub(crate) params: GenerateParams,
    /// `max_tokens` as asked (`None`: as many as fit, up to the server's limit).
    pub(crate) max_tokens: Option<usize>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) tailor: TailorOptions,
    /// Choices to generate (`n`).
    pub(crate) n: usize,
}

/// Parses a JSON body into `T`, as a 400 naming the problem.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(None, format!("We could not parse the JSON body of your request: {e}")))
}

fn positive(v: i64, param: &'static str) -> Result<usize, ApiError> {
    if v < 1 {
        return Err(ApiError::invalid(param, format!("Invalid '{param}': integer below minimum value. Expected a value >= 1, but got {v} instead.")));
    }
    Ok(v as usize)
}

impl Common {
    /// Checks the shared fields into `GenerateParams`.
    fn check(&self, max_tokens: Option<i64>, max_tokens_param: &'static str, limit: usize, recommended: &SamplingParams) -> Result<Checked, ApiError> {
        self.check_with(max_tokens, max_tokens_param, limit, recommended, "response_format")
    }

    /// [`Common::check`] with the name of the field that carries `response_format`
    /// (`text.format` in the Responses API).
    pub(crate) fn check_with(&self, max_tokens: Option<i64>, max_tokens_param: &'static str, limit: usize, recommended: &SamplingParams, format_param: &'static str) -> Result<Checked, ApiError> {
        let mut s = if self.temperature.is_none() { recommended.clone() } else { SamplingParams::default() };
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::invalid("temperature", format!("Invalid 'temperature': {t} is not in [0, 2].")));
            }
            s.temperature = t;
        }
        if let Some(p) = self.top_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(ApiError::invalid("top_p", format!("Invalid 'top_p': {p} is not in [0, 1].")));
            }
            // 0 keeps only the most likely token, as the smallest positive value does.
            s.top_p = p.max(f32::MIN_POSITIVE);
        }
        if let Some(k) = self.top_k {
            // -1 and 0 both mean "off" in vLLM and llama.cpp.
            if k < -1 {
                return Err(ApiError::invalid("top_k", format!("Invalid 'top_k': {k}.")));
            }
            s.top_k = k.max(0) as usize;
        }
        if let Some(m) = self.min_p {
            if !(0.0..=1.0).contains(&m) {
                return Err(ApiError::invalid("min_p", format!("Invalid 'min_p': {m} is not in [0, 1].")));
            }
            s.min_p = m;
        }
        if let Some(r) = self.repetition_penalty {
            if !(r > 0.0 && r.is_finite()) {
                return Err(ApiError::invalid("repetition_penalty", format!("Invalid 'repetition_penalty': {r} must be positive.")));
            }
            s.repeat_penalty = r;
        }
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if let Some(v) = v {
                if !(-2.0..=2.0).contains(&v) {
                    return Err(ApiError::invalid(name, format!("Invalid '{name}': {v} is not in [-2, 2].")));
                }
            }
        }
        s.presence_penalty = self.presence_penalty.unwrap_or(0.0);
        s.frequency_penalty = self.frequency_penalty.unwrap_or(0.0);
        for (k, v) in self.logit_bias.iter().flatten() {
            let id: u32 = k.parse().map_err(|_| ApiError::invalid("logit_bias", format!("Invalid 'logit_bias': the key `{k}` is not a token id.")))?;
            let b = v.as_f64().filter(|b| (-100.0..=100.0).contains(b)).ok_or_else(|| ApiError::invalid("logit_bias", format!("Invalid 'logit_bias': the bias of token {k} must be a number in [-100, 100], got {v}.")))?;
            s.logit_bias.push((id, b as f32));
        }
        let n = match self.n {
            None => 1,
            Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
            Some(n) => return Err(ApiError::invalid("n", format!("Invalid 'n': {n} is not in [1, {MAX_N}]."))),
        };
        s.seed = self.seed.map(|v| v as u64);
        s.validate().map_err(|e| ApiError::invalid(None, e))?;
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP {
            return Err(ApiError::invalid("stop", format!("Invalid 'stop': at most {MAX_STOP} sequences, got {}.", stop.len())));
        }
        let max_tokens = match max_tokens {
            None => None,
            Some(v) => {
                let v = positive(v, max_tokens_param)?;
                if v > limit {
                    return Err(ApiError::invalid(
                        max_tokens_param,
                        format!("Invalid '{max_tokens_param}': {v} is above this server's limit of {limit} tokens."),
                    ));
                }
                Some(v)
            }
        };
        let tailor = self.tailor.clone().unwrap_or_default();
        for a in tailor.adapters.iter().flatten() {
            if !a.weight.is_finite() {
                return Err(ApiError::invalid("tailor.adapters", format!("adapter `{}`: weight must be finite", a.name)));
            }
        }
        for v in tailor.steering.iter().flatten() {
            if !v.scale.is_finite() {
                return Err(ApiError::invalid("tailor.steering", format!("steering `{}`: scale must be finite", v.name)));
            }
        }
        let mut params = GenerateParams::default();
        params.sampling = s;
        params.stop = stop.into_iter().filter(|s| !s.is_empty()).collect();
        params.grammar = match &self.response_format {
            Some(f) => response_format(f, format_param)?,
            None => None,
        };
        if let Some(g) = &tailor.grammar {
            if params.grammar.is_some() {
                return Err(ApiError::invalid("tailor.grammar", "'tailor.grammar' and 'response_format' cannot both constrain the answer."));
            }
            params.grammar = Some(g.clone());
        }
        let stream = self.stream.unwrap_or(false);
        Ok(Checked {
            params,
            max_tokens,
            stream,
            include_usage: stream && self.stream_options.as_ref().is_some_and(|o| o.include_usage),
            tailor,
            n,
        })
    }
}

/// `response_format` (Chat Completions: `{"type", "json_schema": {"name", "schema", "strict"}}`)
/// or the Responses API's `text.format` (`{"type", "name", "schema", "strict"}`).
pub(crate) fn response_format(f: &Value, param: &'static str) -> Result<Option<Grammar>, ApiError> {
    let bad = |m: String| ApiError::invalid(param, m);
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::JsonObject)),
        Some("json_schema") => {
            let holder = f.get("json_schema").unwrap_or(f);
            let schema = holder.get("schema").cloned().unwrap_or_else(|| serde_json::json!({"type": "object"}));
            if !schema.is_object() && schema != Value::Bool(true) {
                return Err(bad(format!("Invalid '{param}': the schema must be a JSON object.")));
            }
            Ok(Some(Grammar::JsonSchema(schema)))
        }
        Some(t) => Err(bad(format!("Invalid '{param}': type `{t}` (text, json_object or json_schema)."))),
        None => Err(bad(format!("Invalid '{param}': missing 'type'."))),
    }
}

/// `tools`, `tool_choice` and `parallel_tool_calls` (Chat Completions or Responses shapes).
pub(crate) fn tool_set(tools: Option<&[Value]>, choice: Option<&Value>, parallel: Option<bool>) -> Result<Option<ToolSet>, ApiError> {
    let tools = tools.unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::invalid("tools", format!("Invalid 'tools': at most {MAX_TOOLS} tools, got {}.", tools.len())));
    }
    let tools: Vec<Tool> = tools.iter().enumerate().map(|(i, t)| Tool::from_openai(t).map_err(|e| ApiError::invalid("tools", format!("Invalid 'tools[{i}]': {e}")))).collect::<Result<_, _>>()?;
    let choice = match choice {
        None | Some(Value::Null) => {
            if tools.is_empty() {
                return Ok(None);
            }
            ToolChoice::Auto
        }
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => return Err(ApiError::invalid("tool_choice", format!("Invalid 'tool_choice': `{other}` (none, auto, required or a function)."))),
        },
        Some(v) => {
            let name = v.pointer("/function/name").or_else(|| v.get("name")).and_then(Value::as_str);
            match (v.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(n)) => ToolChoice::Function(n.to_string()),
                _ => return Err(ApiError::invalid("tool_choice", "Invalid 'tool_choice': expected none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}.")),
            }
        }
    };
    if tools.is_empty() {
        return match choice {
            ToolChoice::None => Ok(None),
            _ => Err(ApiError::invalid("tool_choice", "Invalid 'tool_choice': no tools were given.")),
        };
    }
    ToolSet::new(tools, choice, parallel.unwrap_or(true)).map(Some).map_err(|e| ApiError::invalid("tool_choice", format!("Invalid 'tool_choice': {e}")))
}

/// A call of an assistant message in history (`{"id", "type": "function", "function": {"name",
/// "arguments"}}`).
fn history_call(v: &Value, at: &str) -> Result<ToolCall, ApiError> {
    let f = v.get("function").ok_or_else(|| ApiError::invalid("messages", format!("Invalid '{at}': a tool call needs 'function'.")))?;
    let name = f.get("name").and_then(Value::as_str).ok_or_else(|| ApiError::invalid("messages", format!("Invalid '{at}': a tool call needs 'function.name'.")))?;
    let arguments = match f.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "{}".into(),
    };
    Ok(ToolCall { id: v.get("id").and_then(Value::as_str).unwrap_or_default().to_string(), name: name.to_string(), arguments })
}

impl ChatRequest {
    /// The conversation and the checked parameters; `limit` caps `max_tokens`.
    pub(crate) fn check(&self, limit: usize, recommended: &SamplingParams) -> Result<(Vec<ChatMessage>, Checked), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1."));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => "tool",
                other => {
                    return Err(ApiError::invalid("messages", format!("Invalid 'messages[{i}].role': `{other}` is not supported (system, developer, user, assistant, tool).")));
                }
            };
            let text = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut t = String::new();
                    for p in parts {
                        match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(s)) => t.push_str(s),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    "messages",
                                    format!("Invalid 'messages[{i}].content': only text parts are supported, got {}.", kind.unwrap_or("a part without a type")),
                                ));
                            }
                        }
                    }
                    t
                }
            };
            let mut msg = ChatMessage::new(role, text);
            if role == "assistant" {
                for (j, c) in m.tool_calls.iter().flatten().enumerate() {
                    msg.tool_calls.push(history_call(c, &format!("messages[{i}].tool_calls[{j}]"))?);
                }
            }
            if role == "tool" {
                if m.tool_call_id.is_none() {
                    return Err(ApiError::invalid("messages", format!("Invalid 'messages[{i}]': a tool message needs 'tool_call_id'.")));
                }
                msg.tool_call_id = m.tool_call_id.clone();
                msg.name = m.name.clone();
            }
            messages.push(msg);
        }
        let (max, param) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => (Some(v), "max_completion_tokens"),
            (None, v) => (v, "max_tokens"),
        };
        let mut checked = self.common.check(max, param, limit, recommended)?;
        checked.params.tools = tool_set(self.tools.as_deref(), self.tool_choice.as_ref(), self.parallel_tool_calls)?;
        if checked.params.tools.as_ref().is_some_and(ToolSet::active) && matches!(checked.params.grammar, Some(Grammar::Regex(_) | Grammar::Lark(_))) {
            return Err(ApiError::invalid("tailor.grammar", "A regex or Lark grammar cannot be combined with tools."));
        }
        match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (false, Some(_)) => {
                return Err(ApiError::invalid("top_logprobs", "Invalid 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used."));
            }
            (true, Some(k)) if !(0..=MAX_TOP_LOGPROBS as i64).contains(&k) => {
                return Err(ApiError::invalid("top_logprobs", format!("Invalid 'top_logprobs': {k} is not in [0, {MAX_TOP_LOGPROBS}].")));
            }
            (true, k) => checked.params.logprobs = Some(k.unwrap_or(0) as usize),
            (false, None) => {}
        }
        Ok((messages, checked))
    }
}

/// A completion prompt: text or token ids.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CompletionPrompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl CompletionRequest {
    /// OpenAI's default when `max_tokens` is absent.
    pub(crate) const DEFAULT_MAX_TOKENS: usize = 16;

    /// The prompt and the checked parameters.
    pub(crate) fn check(&self, limit: usize) -> Result<(CompletionPrompt, Checked), ApiError> {
        // Raw completions continue text: greedy unless asked (benchmarks and evaluations
        // depend on it), not the chat defaults.
        let bad = || ApiError::invalid("prompt", "Invalid 'prompt': expected a string, an array of one string, or an array of token ids (one prompt per request).");
        let prompt = match &self.prompt {
            Value::String(s) => CompletionPrompt::Text(s.clone()),
            Value::Array(a) if a.len() == 1 && a[0].is_string() => CompletionPrompt::Text(a[0].as_str().unwrap_or_default().to_string()),
            Value::Array(a) if a.len() == 1 && a[0].is_array() => {
                CompletionPrompt::Tokens(token_ids(a[0].as_array().map(Vec::as_slice).unwrap_or_default()).ok_or_else(bad)?)
            }
            Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => CompletionPrompt::Tokens(token_ids(a).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("suffix", "'suffix' (insertion) is not supported by this server."));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::invalid("best_of", "Invalid 'best_of': only 1 is supported."));
        }
        let mut checked = self.common.check(Some(self.max_tokens.unwrap_or(Self::DEFAULT_MAX_TOKENS as i64)), "max_tokens", limit, &SamplingParams::default())?;
        if let Some(k) = self.logprobs {
            if !(0..=5).contains(&k) {
                return Err(ApiError::invalid("logprobs", format!("Invalid 'logprobs': {k} is not in [0, 5].")));
            }
            checked.params.logprobs = Some(k as usize);
        }
        Ok((prompt, checked))
    }
}

fn token_ids(a: &[Value]) -> Option<Vec<u32>> {
    a.iter().map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok())).collect()
}

impl EmbeddingRequest {
    /// The texts to embed.
    pub(crate) fn texts(&self, max_inputs: usize) -> Result<Vec<String>, ApiError> {
        let bad = || ApiError::invalid("input", "Invalid 'input': expected a string or an array of strings (token-id input is not supported).");
        let texts: Vec<String> = match &self.input {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) if !a.is_empty() => a.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<_>>().ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        if texts.len() > max_inputs {
            return Err(ApiError::invalid("input", format!("Invalid 'input': at most {max_inputs} inputs per request, got {}.", texts.len())));
        }
        if texts.iter().any(String::is_empty) {
            return Err(ApiError::invalid("input", "Invalid 'input': empty strings cannot be embedded."));
        }
        match self.encoding_format.as_deref() {
            None | Some("float") | Some("base64") => {}
            Some(f) => return Err(ApiError::invalid("encoding_format", format!("Invalid 'encoding_format': `{f}` (float or base64)."))),
        }
        Ok(texts)
    }
}

/// Standard base64 (with padding), for `encoding_format: "base64"` embeddings (little-endian
/// f32s, as the OpenAI client decodes them).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= c.len() {
                out.push(A[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(v: serde_json::Value) -> Result<(Vec<ChatMessage>, Checked), ApiError> {
        parse::<ChatRequest>(v.to_string().as_bytes())?.check(1024, &SamplingParams::chat())
    }

    #[test]
    fn a_plain_chat_request() {
        let (m, c) = chat(serde_json::json!({
            "model": "m", "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "temperature": 0.5, "top_p": 0.9, "max_completion_tokens": 7, "stop": "\n", "seed": 3,
            "logprobs": true, "top_logprobs": 2, "stream": true, "stream_options": {"include_usage": true},
            "user": "ignored", "presence_penalty": 0
        }))
        .unwrap();
        assert_eq!(m, vec![ChatMessage::system("Be brief."), ChatMessage::user("Hi")]);
        assert_eq!(c.max_tokens, Some(7));
        assert_eq!(c.params.sampling.temperature, 0.5);
        assert_eq!(c.params.sampling.top_p, 0.9);
        assert_eq!(c.params.sampling.seed, Some(3));
        assert_eq!(c.params.stop, vec!["\n".to_string()]);
        assert_eq!(c.params.logprobs, Some(2));
        assert!(c.stream && c.include_usage);
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let base = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            chat(b).unwrap_err()
        };
        assert_eq!(with("temperature", 2.5.into()).param.as_deref(), Some("temperature"));
        assert_eq!(with("top_p", 1.5.into()).param.as_deref(), Some("top_p"));
        assert_eq!(with("max_tokens", 0.into()).param.as_deref(), Some("max_tokens"));
        assert_eq!(with("max_tokens", 5000.into()).param.as_deref(), Some("max_tokens"));
        assert_eq!(with("n", 9.into()).param.as_deref(), Some("n"));
        assert_eq!(with("n", 0.into()).param.as_deref(), Some("n"));
        assert_eq!(with("logit_bias", serde_json::json!({"x": 1})).param.as_deref(), Some("logit_bias"));
        assert_eq!(with("logit_bias", serde_json::json!({"5": 101})).param.as_deref(), Some("logit_bias"));
        assert_eq!(with("presence_penalty", 2.5.into()).param.as_deref(), Some("presence_penalty"));
        assert_eq!(with("response_format", serde_json::json!({"type": "xml"})).param.as_deref(), Some("response_format"));
        assert_eq!(with("tool_choice", "sometimes".into()).param.as_deref(), Some("tool_choice"));
        assert_eq!(with("tool_choice", "required".into()).param.as_deref(), Some("tool_choice"));
        assert_eq!(with("top_logprobs", 3.into()).param.as_deref(), Some("top_logprobs"));
        assert_eq!(with("stop", serde_json::json!(["a", "b", "c", "d", "e"])).param.as_deref(), Some("stop"));
        assert_eq!(with("frequency_penalty", 2.5.into()).param.as_deref(), Some("frequency_penalty"));
        assert_eq!(with("messages", serde_json::json!([])).param.as_deref(), Some("messages"));
        assert_eq!(with("messages", serde_json::json!([{"role": "tool", "content": "x"}])).param.as_deref(), Some("messages"));
        assert_eq!(with("messages", serde_json::json!([{"role": "robot", "content": "x"}])).param.as_deref(), Some("messages"));
        assert_eq!(with("tools", serde_json::json!([{"type": "function"}])).param.as_deref(), Some("tools"));
        assert_eq!(with("tools", serde_json::json!([{"type": "code_interpreter"}])).param.as_deref(), Some("tools"));
        let e = with("temperature", "hot".into());
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        // Tailor's options are checked strictly.
        assert!(with("tailor", serde_json::json!({"adapter": []})).message.contains("unknown field"));
        let mut b = base.clone();
        b["logprobs"] = true.into();
        b["top_logprobs"] = 21.into();
        assert_eq!(chat(b).unwrap_err().param.as_deref(), Some("top_logprobs"));
    }

    #[test]
    fn sampling_defaults_tools_and_formats() {
        let base = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
        // Without a temperature: the recommended settings; with one, exactly what was asked.
        let (_, c) = chat(base.clone()).unwrap();
        assert_eq!(c.params.sampling, SamplingParams::chat());
        let mut b = base.clone();
        b["temperature"] = 0.into();
        assert_eq!(chat(b).unwrap().1.params.sampling, SamplingParams::default());
        let mut b = base.clone();
        b["n"] = 3.into();
        b["seed"] = 5.into();
        b["logit_bias"] = serde_json::json!({"17": -100, "4": 2.5});
        b["presence_penalty"] = 0.5.into();
        b["frequency_penalty"] = (-1.0).into();
        let (_, c) = chat(b).unwrap();
        assert_eq!(c.n, 3);
        assert_eq!((c.params.sampling.presence_penalty, c.params.sampling.frequency_penalty), (0.5, -1.0));
        let mut lb = c.params.sampling.logit_bias.clone();
        lb.sort_by_key(|x| x.0);
        assert_eq!(lb, vec![(4, 2.5), (17, -100.0)]);
        // Formats.
        let mut b = base.clone();
        b["response_format"] = serde_json::json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": {"type": "object"}}});
        assert_eq!(chat(b).unwrap().1.params.grammar, Some(Grammar::JsonSchema(serde_json::json!({"type": "object"}))));
        let mut b = base.clone();
        b["response_format"] = serde_json::json!({"type": "json_object"});
        assert_eq!(chat(b).unwrap().1.params.grammar, Some(Grammar::JsonObject));
        // Tools, a named choice, history with a call and its result.
        let mut b = base.clone();
        b["tools"] = serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]);
        b["tool_choice"] = serde_json::json!({"type": "function", "function": {"name": "f"}});
        b["parallel_tool_calls"] = false.into();
        b["messages"] = serde_json::json!([{"role": "user", "content": "go"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"}]);
        let (m, c) = chat(b.clone()).unwrap();
        let t = c.params.tools.unwrap();
        assert_eq!((t.choice, t.parallel), (ToolChoice::Function("f".into()), false));
        assert_eq!(m[1].tool_calls[0].name, "f");
        assert_eq!(m[2].tool_call_id.as_deref(), Some("call_1"));
        b["tool_choice"] = serde_json::json!({"type": "function", "function": {"name": "g"}});
        assert_eq!(chat(b).unwrap_err().param.as_deref(), Some("tool_choice"));
    }

    #[test]
    fn tailor_options_parse() {
        let (_, c) = chat(serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "Hi"}],
            "tailor": {"adapters": [{"name": "a", "weight": 0.5}, {"name": "b"}], "steering": [{"name": "kind", "scale": 4, "layers": [8, 12]}], "memory": false, "prefix_cache": false}
        }))
        .unwrap();
        let a = c.tailor.adapters.unwrap();
        assert_eq!((a[0].weight, a[1].weight), (0.5, 1.0));
        assert_eq!(c.tailor.steering.unwrap()[0].layers, Some([8, 12]));
        assert_eq!((c.tailor.memory, c.tailor.prefix_cache), (Some(false), Some(false)));
    }

    #[test]
    fn completion_prompts() {
        let req = |v: serde_json::Value| parse::<CompletionRequest>(v.to_string().as_bytes()).unwrap().check(1024);
        let (p, c) = req(serde_json::json!({"model": "m", "prompt": "Once"})).unwrap();
        assert_eq!(p, CompletionPrompt::Text("Once".into()));
        assert_eq!(c.max_tokens, Some(CompletionRequest::DEFAULT_MAX_TOKENS));
        let (p, _) = req(serde_json::json!({"model": "m", "prompt": [1, 2, 3]})).unwrap();
        assert_eq!(p, CompletionPrompt::Tokens(vec![1, 2, 3]));
        let (p, _) = req(serde_json::json!({"model": "m", "prompt": [[4, 5]]})).unwrap();
        assert_eq!(p, CompletionPrompt::Tokens(vec![4, 5]));
        assert_eq!(req(serde_json::json!({"model": "m", "prompt": ["a", "b"]})).unwrap_err().param.as_deref(), Some("prompt"));
        assert_eq!(req(serde_json::json!({"model": "m", "prompt": [-1]})).unwrap_err().param.as_deref(), Some("prompt"));
        assert_eq!(req(serde_json::json!({"model": "m", "prompt": "x", "logprobs": 6})).unwrap_err().param.as_deref(), Some("logprobs"));
        let (_, c) = req(serde_json::json!({"model": "m", "prompt": "x", "logprobs": 2})).unwrap();
        assert_eq!(c.params.logprobs, Some(2));
    }

    #[test]
    fn embedding_inputs() {
        let req = |v: serde_json::Value| parse::<EmbeddingRequest>(v.to_string().as_bytes()).unwrap().texts(8);
        assert_eq!(req(serde_json::json!({"model": "e", "input": "a"})).unwrap(), vec!["a"]);
        assert_eq!(req(serde_json::json!({"model": "e", "input": ["a", "b"]})).unwrap().len(), 2);
        assert!(req(serde_json::json!({"model": "e", "input": [1, 2]})).is_err());
        assert!(req(serde_json::json!({"model": "e", "input": ""})).is_err());
        assert!(req(serde_json::json!({"model": "e", "input": vec!["x"; 9]})).is_err());
        assert!(req(serde_json::json!({"model": "e", "input": "a", "encoding_format": "hex"})).is_err());
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
