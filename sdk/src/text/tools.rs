//! Tool (function) calling: tool definitions in the prompt, calls constrained by the tools'
//! parameter schemas, and the answer split into text and calls, whole or as it streams.
//!
//! # The format
//!
//! When the model's chat template renders tools itself (it uses a `tools` variable, as the
//! templates of Llama 3.x and Qwen2.5 do), it gets the tool definitions in OpenAI's shape and
//! the conversation's `tool_calls` and `tool` messages natively. Otherwise (SmolLM2's ChatML,
//! most small models) a generic format goes into the system prompt, as llama-server does for
//! templates without tool support:
//!
//! ```text
//! You can call these tools (JSON Schema of each tool's arguments):
//! [{"name": "get_weather", "description": "...", "parameters": {...}}]
//! Answer with one JSON object: {"tool_calls": [{"name": "<tool>", "arguments": {...}}]}
//! to call tools, or {"response": "<your answer>"} to answer the user directly.
//! ```
//!
//! Earlier calls in the history are written as that same JSON (an assistant message) and
//! tool results as a user message `{"tool_response": {"tool_call_id": ..., "name": ...,
//! "content": ...}}`. In both cases the answer itself is always that JSON, constrained by a
//! grammar built from the tools' parameter schemas (so arguments always parse and validate):
//! `tool_choice` `auto` allows a call or a response, `required` only calls, a named function
//! only that one, `none` neither (plain text, no tools in the prompt); `parallel_tool_calls:
//! false` allows one call.

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::grammar::Grammar;
use crate::text::chat_template::ChatMessage;
use crate::{Error, Result};

/// A function the model may call. Deserialized through [`Tool::from_openai`] (flat or
/// OpenAI-shaped, checked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value")]
pub struct Tool {
    /// `[A-Za-z0-9_-]{1,64}`.
    pub name: String,
    /// What it does (shown to the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments (an object schema). Objects that list `properties` and
    /// say nothing of `additionalProperties` get `false`, as llama.cpp's grammars do (a small
    /// model otherwise invents keys).
    pub parameters: Value,
}

impl Tool {
    /// A tool; checks the name and that `parameters` is an object schema.
    pub fn new(name: impl Into<String>, description: Option<String>, parameters: Value) -> Result<Self> {
        let name = name.into();
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(Error::invalid(format!("tool name `{name}`: expected 1 to 64 letters, digits, `_` or `-`")));
        }
        let parameters = match parameters {
            Value::Null => json!({"type": "object", "properties": {}}),
            Value::Object(o) => {
                if o.get("type").is_some_and(|t| t != "object") {
                    return Err(Error::invalid(format!("tool `{name}`: parameters must be an object schema")));
                }
                let mut o = Value::Object(o);
                o["type"] = json!("object");
                closed(&mut o);
                o
            }
            _ => return Err(Error::invalid(format!("tool `{name}`: parameters must be a JSON Schema object"))),
        };
        Ok(Self { name, description, parameters })
    }

    /// A tool from OpenAI's Chat Completions shape (`{"type": "function", "function": {"name",
    /// "description", "parameters", "strict"}}`) or the Responses API's flat one (`{"type":
    /// "function", "name", ...}`).
    pub fn from_openai(v: &Value) -> Result<Self> {
        if let Some(t) = v.get("type").and_then(Value::as_str) {
            if t != "function" {
                return Err(Error::invalid(format!("tool type `{t}` is not supported (function)")));
            }
        }
        let f = v.get("function").unwrap_or(v);
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| Error::invalid("a tool needs a function name"))?;
        let description = f.get("description").and_then(Value::as_str).map(str::to_string);
        Self::new(name, description, f.get("parameters").cloned().unwrap_or(Value::Null))
    }

    /// OpenAI's Chat Completions shape, as chat templates expect it.
    pub fn to_openai(&self) -> Value {
        let mut f = json!({"name": self.name, "parameters": self.parameters});
        if let Some(d) = &self.description {
            f["description"] = json!(d);
        }
        json!({"type": "function", "function": f})
    }
}

/// Sets `additionalProperties: false` on every object schema that lists properties and
/// leaves it open.
fn closed(schema: &mut Value) {
    let Value::Object(o) = schema else { return };
    if o.contains_key("properties") && !o.contains_key("additionalProperties") {
        o.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (k, v) in o.iter_mut() {
        match (k.as_str(), v) {
            ("properties" | "$defs" | "definitions" | "patternProperties", Value::Object(m)) => m.values_mut().for_each(closed),
            ("anyOf" | "oneOf" | "allOf" | "prefixItems", Value::Array(a)) => a.iter_mut().for_each(closed),
            ("items" | "additionalProperties" | "not" | "if" | "then" | "else" | "contains", v) => closed(v),
            _ => {}
        }
    }
}

impl TryFrom<Value> for Tool {
    type Error = String;
    fn try_from(v: Value) -> std::result::Result<Self, String> {
        Tool::from_openai(&v).map_err(|e| e.to_string())
    }
}

/// Which calls the model may make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// No calls: plain text, tools left out of the prompt.
    None,
    /// A call or a text answer, as the model chooses.
    Auto,
    /// At least one call.
    Required,
    /// A call of this function.
    Function(String),
}

/// One call the model made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// A unique id (`call_` and 24 letters/digits) that the tool's result refers to.
    pub id: String,
    /// The function.
    pub name: String,
    /// The arguments, JSON text (an object valid against the tool's parameter schema).
    pub arguments: String,
}

impl ToolCall {
    /// A fresh call id.
    pub fn new_id() -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut r = rand::rng();
        let s: String = (0..24).map(|_| A[r.random_range(0..A.len())] as char).collect();
        format!("call_{s}")
    }
}

/// The tools of one request and how they may be used. As JSON: `{"tools": [...], "choice":
/// "auto" | "none" | "required" | {"function": "name"}, "parallel": true}` (checked as
/// [`ToolSet::new`] does; `choice` defaults to `auto`, `parallel` to true).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawToolSet")]
pub struct ToolSet {
    /// The functions.
    pub tools: Vec<Tool>,
    /// Which calls are allowed.
    pub choice: ToolChoice,
    /// More than one call in an answer.
    pub parallel: bool,
}

#[derive(Deserialize)]
struct RawToolSet {
    tools: Vec<Tool>,
    #[serde(default = "auto")]
    choice: ToolChoice,
    #[serde(default = "yes")]
    parallel: bool,
}

fn auto() -> ToolChoice {
    ToolChoice::Auto
}

fn yes() -> bool {
    true
}

impl TryFrom<RawToolSet> for ToolSet {
    type Error = String;
    fn try_from(r: RawToolSet) -> std::result::Result<Self, String> {
        ToolSet::new(r.tools, r.choice, r.parallel).map_err(|e| e.to_string())
    }
}

/// The generic format's instruction.
const FORMAT: &str = "Answer with one JSON object: {\"tool_calls\": [{\"name\": \"<tool>\", \"arguments\": {...}}]} to call tools, or {\"response\": \"<your answer>\"} to answer the user directly.";

impl ToolSet {
    /// Checks the set: at least one tool, unique names, a named choice that exists.
    pub fn new(tools: Vec<Tool>, choice: ToolChoice, parallel: bool) -> Result<Self> {
        if tools.is_empty() && choice != ToolChoice::None {
            return Err(Error::invalid("tool_choice needs at least one tool"));
        }
        for (i, t) in tools.iter().enumerate() {
            if tools[..i].iter().any(|u| u.name == t.name) {
                return Err(Error::invalid(format!("two tools are named `{}`", t.name)));
            }
        }
        if let ToolChoice::Function(f) = &choice {
            if !tools.iter().any(|t| &t.name == f) {
                return Err(Error::invalid(format!("tool_choice names `{f}`, which is not among the tools")));
            }
        }
        Ok(Self { tools, choice, parallel })
    }

    /// Whether the model may call anything.
    pub fn active(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The generic format's system-prompt text (tool list and answer format).
    pub fn system_text(&self) -> String {
        let list: Vec<Value> = self
            .allowed()
            .map(|t| {
                let mut v = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    v["description"] = json!(d);
                }
                v
            })
            .collect();
        format!("You can call these tools (JSON Schema of each tool's arguments):\n{}\n{FORMAT}", Value::Array(list))
    }

    fn allowed(&self) -> impl Iterator<Item = &Tool> {
        self.tools.iter().filter(move |t| match &self.choice {
            ToolChoice::Function(f) => &t.name == f,
            _ => true,
        })
    }

    /// The grammar of an answer: calls of the allowed tools (arguments by their schemas) or,
    /// with `auto`, `{"response": ...}` whose value follows `response` (a JSON Schema; a
    /// string when `None`). `None` when no call is allowed.
    pub fn grammar(&self, response: Option<&Value>) -> Option<Grammar> {
        if !self.active() {
            return None;
        }
        let calls: Vec<Value> = self
            .allowed()
            .map(|t| {
                json!({"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                       "required": ["name", "arguments"], "additionalProperties": false})
            })
            .collect();
        let item = if calls.len() == 1 { calls[0].clone() } else { json!({"anyOf": calls}) };
        let mut array = json!({"type": "array", "items": item, "minItems": 1});
        if !self.parallel {
            array["maxItems"] = json!(1);
        }
        let call = json!({"type": "object", "properties": {"tool_calls": array}, "required": ["tool_calls"], "additionalProperties": false});
        let schema = if self.choice == ToolChoice::Auto {
            let r = response.cloned().unwrap_or_else(|| json!({"type": "string"}));
            json!({"anyOf": [call, {"type": "object", "properties": {"response": r}, "required": ["response"], "additionalProperties": false}]})
        } else {
            call
        };
        Some(Grammar::JsonSchema(schema))
    }

    /// `messages` in the generic format: the tool list and answer format in the system
    /// prompt, earlier calls as the answer JSON, tool results as user messages.
    pub fn generic_messages(&self, messages: &[ChatMessage]) -> Vec<ChatMessage> {
        let mut out = generic_history(messages);
        if self.active() {
            let text = self.system_text();
            match out.first_mut() {
                Some(m) if m.role == "system" => m.content = format!("{}\n\n{text}", m.content),
                _ => out.insert(0, ChatMessage::system(text)),
            }
        }
        out
    }
}

/// `messages` with earlier calls and tool results in the generic format (no tool list).
pub fn generic_history(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    messages.iter().map(generic_message).collect()
}

/// One history message in the generic format.
fn generic_message(m: &ChatMessage) -> ChatMessage {
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| json!({"name": c.name, "arguments": serde_json::from_str::<Value>(&c.arguments).unwrap_or_else(|_| json!(c.arguments))}))
            .collect();
        return ChatMessage::assistant(json!({"tool_calls": calls}).to_string());
    }
    if m.role == "tool" {
        let mut r = json!({"content": m.content});
        if let Some(id) = &m.tool_call_id {
            r["tool_call_id"] = json!(id);
        }
        if let Some(n) = &m.name {
            r["name"] = json!(n);
        }
        return ChatMessage::user(json!({"tool_response": r}).to_string());
    }
    ChatMessage::new(m.role.clone(), m.content.clone())
}

/// A piece of a streamed answer with tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolDelta {
    /// Text of the answer to the user.
    Content(String),
    /// A call begins (its name is known).
    CallStart {
        /// Position of the call in the answer.
        index: usize,
        /// Its id.
        id: String,
        /// The function.
        name: String,
    },
    /// More of a call's arguments (JSON text).
    Arguments {
        /// Position of the call.
        index: usize,
        /// The new text.
        text: String,
    },
}

const CALLS_PREFIX: &str = "{\"tool_calls\": [";
const RESPONSE_PREFIX: &str = "{\"response\": ";

/// Splits an answer in the tool format into [`ToolDelta`]s as it streams.
#[derive(Debug, Default)]
pub struct ToolStream {
    raw: String,
    /// Bytes of the decoded response already sent.
    content_sent: usize,
    /// (id, arguments bytes sent) of calls started.
    calls: Vec<(String, usize)>,
}

impl ToolStream {
    /// A stream at the start of an answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The raw answer so far.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Takes more of the raw answer; returns what became known.
    pub fn push(&mut self, text: &str) -> Vec<ToolDelta> {
        self.raw.push_str(text);
        self.deltas(false)
    }

    /// The answer is over: sends what was held back.
    pub fn finish(&mut self) -> Vec<ToolDelta> {
        self.deltas(true)
    }

    /// The whole answer: the response text and the complete calls (the ids the stream gave).
    pub fn output(&mut self) -> (String, Vec<ToolCall>) {
        let parsed = parse(&self.raw, true);
        let mut calls = Vec::new();
        for (i, c) in parsed.calls.into_iter().enumerate() {
            if let (Some(name), Some(args), true) = (c.name, c.args, c.complete) {
                while self.calls.len() <= i {
                    self.calls.push((ToolCall::new_id(), 0));
                }
                calls.push(ToolCall { id: self.calls[i].0.clone(), name, arguments: args });
            }
        }
        (parsed.content, calls)
    }

    fn deltas(&mut self, end: bool) -> Vec<ToolDelta> {
        let p = parse(&self.raw, end);
        let mut out = Vec::new();
        if p.content.len() > self.content_sent {
            out.push(ToolDelta::Content(p.content[self.content_sent..].to_string()));
            self.content_sent = p.content.len();
        }
        for (i, c) in p.calls.into_iter().enumerate() {
            let Some(name) = c.name else { break };
            if i == self.calls.len() {
                let id = ToolCall::new_id();
                out.push(ToolDelta::CallStart { index: i, id: id.clone(), name });
                self.calls.push((id, 0));
            }
            let args = c.args.unwrap_or_default();
            let sent = self.calls[i].1;
            if args.len() > sent {
                out.push(ToolDelta::Arguments { index: i, text: args[sent..].to_string() });
                self.calls[i].1 = args.len();
            }
        }
        out
    }
}

/// A call as far as it is known.
#[derive(Debug, Default)]
struct PartialCall {
    name: Option<String>,
    /// The arguments' JSON text so far.
    args: Option<String>,
    complete: bool,
}

#[derive(Debug, Default)]
struct Parsed {
    content: String,
    calls: Vec<PartialCall>,
}

/// Reads as much of an answer in the tool format as is there. Response strings are decoded
/// up to their last complete character; a response of another JSON type (a schema'd
/// response) is passed as its JSON text, the closing brace held back until `end`.
fn parse(raw: &str, end: bool) -> Parsed {
    let mut p = Parsed::default();
    if let Some(rest) = raw.strip_prefix(RESPONSE_PREFIX) {
        if let Some(s) = rest.strip_prefix('"') {
            p.content = decode_partial_string(s);
        } else {
            // Hold back the last character: it may be the closing brace of the wrapper.
            let v = if end { rest.strip_suffix('}').unwrap_or(rest) } else { rest.char_indices().last().map_or("", |(i, _)| &rest[..i]) };
            p.content = v.to_string();
        }
        return p;
    }
    let Some(mut rest) = raw.strip_prefix(CALLS_PREFIX) else {
        // Not the tool format (tools off, or a prefix too short to tell): nothing yet, or
        // at the end the raw text as the answer.
        if end && !CALLS_PREFIX.starts_with(raw) && !RESPONSE_PREFIX.starts_with(raw) {
            p.content = raw.to_string();
        }
        return p;
    };
    loop {
        let Some(r) = rest.strip_prefix("{\"name\": \"") else { break };
        let Some(q) = string_end(r) else { break };
        let mut call = PartialCall { name: serde_json::from_str(&format!("\"{}\"", &r[..q])).ok(), ..Default::default() };
        let after = &r[q + 1..];
        let Some(a) = after.strip_prefix(", \"arguments\": ") else {
            p.calls.push(call);
            break;
        };
        let (len, done) = value_extent(a);
        call.args = Some(a[..len].to_string());
        if !done {
            p.calls.push(call);
            break;
        }
        let tail = &a[len..];
        call.complete = tail.starts_with('}');
        let complete = call.complete;
        p.calls.push(call);
        if !complete {
            break;
        }
        rest = &tail[1..];
        match rest.strip_prefix(", ") {
            Some(r) => rest = r,
            None => break,
        }
    }
    p
}

/// Byte offset of the closing quote of a JSON string body, if it is there.
fn string_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// How far a JSON value (object, array, string or scalar) at the start of `s` extends, and
/// whether it is complete.
fn value_extent(s: &str) -> (usize, bool) {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut in_str = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => {
                    in_str = false;
                    if depth == 0 {
                        return (i + 1, true);
                    }
                }
                _ => {}
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    if depth == 0 {
                        return (i, true);
                    }
                    depth -= 1;
                    if depth == 0 {
                        return (i + 1, true);
                    }
                }
                b',' if depth == 0 => return (i, true),
                _ => {}
            }
        }
        i += 1;
    }
    (b.len().min(s.len()), false)
}

/// Decodes the body of a JSON string up to its end or its last complete escape.
fn decode_partial_string(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => break,
            '\\' => {
                let Some(&(_, e)) = chars.peek() else { break };
                let simple = match e {
                    '"' => Some('"'),
                    '\\' => Some('\\'),
                    '/' => Some('/'),
                    'b' => Some('\u{8}'),
                    'f' => Some('\u{c}'),
                    'n' => Some('\n'),
                    'r' => Some('\r'),
                    't' => Some('\t'),
                    _ => None,
                };
                if let Some(ch) = simple {
                    chars.next();
                    out.push(ch);
                    continue;
                }
                if e != 'u' {
                    break;
                }
                // \uXXXX, possibly a surrogate pair: decode with serde_json once complete.
                let rest = &s[i..];
                let take = if rest.len() >= 12 && rest[2..6].chars().all(|c| c.is_ascii_hexdigit()) {
                    let hi = u16::from_str_radix(&rest[2..6], 16).unwrap_or(0);
                    if (0xD800..0xDC00).contains(&hi) { 12 } else { 6 }
                } else if rest.len() >= 6 && rest[2..6].chars().all(|c| c.is_ascii_hexdigit()) {
                    let hi = u16::from_str_radix(&rest[2..6], 16).unwrap_or(0);
                    if (0xD800..0xDC00).contains(&hi) {
                        break;
                    }
                    6
                } else {
                    break;
                };
                match serde_json::from_str::<String>(&format!("\"{}\"", &rest[..take])) {
                    Ok(t) => out.push_str(&t),
                    Err(_) => break,
                }
                for _ in 1..take {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Tool {
        Tool::from_openai(&json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}))
        .unwrap()
    }

    #[test]
    fn tools_are_checked() {
        assert!(Tool::new("bad name", None, Value::Null).is_err());
        assert!(Tool::new("f", None, json!({"type": "string"})).is_err());
        assert_eq!(Tool::new("f", None, Value::Null).unwrap().parameters["type"], "object");
        let t = Tool::new("f", None, json!({"properties": {"a": {"type": "object", "properties": {}}, "b": {"type": "object", "additionalProperties": true, "properties": {}}}})).unwrap();
        assert_eq!(t.parameters["additionalProperties"], false);
        assert_eq!(t.parameters["properties"]["a"]["additionalProperties"], false);
        assert_eq!(t.parameters["properties"]["b"]["additionalProperties"], true);
        assert!(ToolSet::new(vec![weather(), weather()], ToolChoice::Auto, true).is_err());
        assert!(ToolSet::new(vec![weather()], ToolChoice::Function("nope".into()), true).is_err());
        assert!(ToolSet::new(vec![], ToolChoice::Required, true).is_err());
        assert!(Tool::from_openai(&json!({"type": "web_search"})).is_err());
        let flat = Tool::from_openai(&json!({"type": "function", "name": "f", "parameters": {"type": "object"}})).unwrap();
        assert_eq!(flat.name, "f");
    }

    #[test]
    fn tool_sets_deserialize_checked() {
        let set: ToolSet = serde_json::from_value(json!({"tools": [{"name": "f", "parameters": {"properties": {"a": {"type": "string"}}}}], "choice": {"function": "f"}})).unwrap();
        assert_eq!((set.choice.clone(), set.parallel), (ToolChoice::Function("f".into()), true));
        assert_eq!(set.tools[0].parameters["additionalProperties"], false);
        assert_eq!(serde_json::from_value::<ToolSet>(serde_json::to_value(&set).unwrap()).unwrap(), set);
        assert!(serde_json::from_value::<ToolSet>(json!({"tools": [{"name": "f"}], "choice": {"function": "g"}})).is_err());
        assert!(serde_json::from_value::<ToolSet>(json!({"tools": [{"name": "bad name"}]})).is_err());
    }

    #[test]
    fn streamed_calls_assemble_to_the_whole() {
        let raw = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris \"Ville\" {x}"}}, {"name": "get_weather", "arguments": {"city": "Oslo"}}]}"#;
        for step in [1, 2, 3, 7, 1000] {
            let mut s = ToolStream::new();
            let mut deltas = Vec::new();
            let chars: Vec<char> = raw.chars().collect();
            for piece in chars.chunks(step) {
                deltas.extend(s.push(&piece.iter().collect::<String>()));
            }
            deltas.extend(s.finish());
            let mut names = Vec::new();
            let mut args = vec![String::new(); 2];
            for d in &deltas {
                match d {
                    ToolDelta::CallStart { index, name, .. } => names.push((*index, name.clone())),
                    ToolDelta::Arguments { index, text } => args[*index].push_str(text),
                    ToolDelta::Content(t) => panic!("content {t:?}"),
                }
            }
            assert_eq!(names, vec![(0, "get_weather".to_string()), (1, "get_weather".to_string())]);
            assert_eq!(args[0], r#"{"city": "Paris \"Ville\" {x}"}"#);
            assert_eq!(args[1], r#"{"city": "Oslo"}"#);
            let (content, calls) = s.output();
            assert_eq!(content, "");
            assert_eq!(calls.len(), 2);
            assert_eq!(calls[0].arguments, args[0]);
            assert!(calls[0].id.starts_with("call_") && calls[0].id != calls[1].id);
        }
    }

    #[test]
    fn streamed_responses_decode_escapes() {
        let raw = r#"{"response": "Hi \"you\"\n\u00e9\ud83d\ude00 ok"}"#;
        for step in [1, 2, 5, 1000] {
            let mut s = ToolStream::new();
            let mut text = String::new();
            let chars: Vec<char> = raw.chars().collect();
            for piece in chars.chunks(step) {
                for d in s.push(&piece.iter().collect::<String>()) {
                    if let ToolDelta::Content(t) = d {
                        text.push_str(&t);
                    }
                }
            }
            for d in s.finish() {
                if let ToolDelta::Content(t) = d {
                    text.push_str(&t);
                }
            }
            assert_eq!(text, "Hi \"you\"\né😀 ok");
            assert_eq!(s.output(), ("Hi \"you\"\né😀 ok".to_string(), vec![]));
        }
        // A schema'd response is passed as JSON text.
        let mut s = ToolStream::new();
        s.push(r#"{"response": {"a": 1}}"#);
        s.finish();
        assert_eq!(s.output().0, r#"{"a": 1}"#);
    }

    #[test]
    fn generic_messages_carry_tools_calls_and_results() {
        let set = ToolSet::new(vec![weather()], ToolChoice::Auto, true).unwrap();
        let mut call = ChatMessage::assistant("");
        call.tool_calls = vec![ToolCall { id: "call_1".into(), name: "get_weather".into(), arguments: r#"{"city": "Paris"}"#.into() }];
        let mut result = ChatMessage::new("tool", "18 C");
        result.tool_call_id = Some("call_1".into());
        let m = set.generic_messages(&[ChatMessage::system("Be brief."), ChatMessage::user("Weather?"), call, result]);
        assert!(m[0].content.starts_with("Be brief.\n\nYou can call these tools") && m[0].content.contains("get_weather"));
        assert_eq!(m[2].content, r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}"#);
        assert_eq!(m[3].role, "user");
        assert!(m[3].content.contains("\"tool_call_id\":\"call_1\"") && m[3].content.contains("18 C"));
        // A named choice lists only that tool; `none` has no grammar.
        assert!(ToolSet::new(vec![weather()], ToolChoice::None, true).unwrap().grammar(None).is_none());
        let g = set.grammar(None).unwrap();
        let Grammar::JsonSchema(s) = g else { panic!() };
        assert!(s["anyOf"][1]["properties"]["response"]["type"] == "string");
    }
}
