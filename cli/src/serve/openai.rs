//! OpenAI's request shapes for chat completions, completions and embeddings, parsed and
//! checked into what the engine runs. Every rejection names the field (`param`) as OpenAI does.
//!
//! Unknown top-level fields are ignored (clients send many). Tailor's own per-request options
//! go in one object, `"tailor": {"adapters": [...], "steering": [...], "memory": bool,
//! "prefix_cache": bool}` (the Python client's `extra_body`), whose fields are checked strictly.

use serde::Deserialize;
use serde_json::Value;
use tailor::{ChatMessage, GenerateParams, SamplingParams};

use super::error::ApiError;

/// The most alternatives `top_logprobs` may ask for (OpenAI's limit).
pub(crate) const MAX_TOP_LOGPROBS: usize = 20;
/// The most stop sequences (OpenAI's limit).
pub(crate) const MAX_STOP: usize = 4;

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
    pub(crate) response_format: Option<Value>,
    #[serde(default)]
    pub(crate) tools: Option<Vec<Value>>,
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
    fn check(&self, max_tokens: Option<i64>, max_tokens_param: &'static str, limit: usize) -> Result<Checked, ApiError> {
        let mut s = SamplingParams::default();
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
            match v {
                Some(v) if !(-2.0..=2.0).contains(&v) => {
                    return Err(ApiError::invalid(name, format!("Invalid '{name}': {v} is not in [-2, 2].")));
                }
                Some(v) if v != 0.0 => {
                    return Err(ApiError::invalid(name, format!("'{name}' is not supported by this server (use 'repetition_penalty').")));
                }
                _ => {}
            }
        }
        if self.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(ApiError::invalid("logit_bias", "'logit_bias' is not supported by this server."));
        }
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid("n", format!("Invalid 'n': only n = 1 is supported, got {n}.")));
            }
        }
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
        let stream = self.stream.unwrap_or(false);
        Ok(Checked {
            params,
            max_tokens,
            stream,
            include_usage: stream && self.stream_options.as_ref().is_some_and(|o| o.include_usage),
            tailor,
        })
    }
}

impl ChatRequest {
    /// The conversation and the checked parameters; `limit` caps `max_tokens`.
    pub(crate) fn check(&self, limit: usize) -> Result<(Vec<ChatMessage>, Checked), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1."));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid("messages", format!("Invalid 'messages[{i}].role': `{other}` is not supported (system, developer, user, assistant).")));
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
            messages.push(ChatMessage::new(role, text));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid("tools", "'tools' (function calling) is not supported by this server."));
        }
        if let Some(f) = &self.response_format {
            if f.get("type").and_then(Value::as_str) != Some("text") {
                return Err(ApiError::invalid("response_format", "Only response_format {\"type\": \"text\"} is supported."));
            }
        }
        let (max, param) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => (Some(v), "max_completion_tokens"),
            (None, v) => (v, "max_tokens"),
        };
        let mut checked = self.common.check(max, param, limit)?;
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
        let mut checked = self.common.check(Some(self.max_tokens.unwrap_or(Self::DEFAULT_MAX_TOKENS as i64)), "max_tokens", limit)?;
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
        parse::<ChatRequest>(v.to_string().as_bytes())?.check(1024)
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
        assert_eq!(with("n", 2.into()).param.as_deref(), Some("n"));
        assert_eq!(with("top_logprobs", 3.into()).param.as_deref(), Some("top_logprobs"));
        assert_eq!(with("stop", serde_json::json!(["a", "b", "c", "d", "e"])).param.as_deref(), Some("stop"));
        assert_eq!(with("frequency_penalty", 0.5.into()).param.as_deref(), Some("frequency_penalty"));
        assert_eq!(with("messages", serde_json::json!([])).param.as_deref(), Some("messages"));
        assert_eq!(with("messages", serde_json::json!([{"role": "tool", "content": "x"}])).param.as_deref(), Some("messages"));
        assert_eq!(with("tools", serde_json::json!([{"type": "function"}])).param.as_deref(), Some("tools"));
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
