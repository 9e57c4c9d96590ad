//! Chat prompts rendered from the model's own Jinja template (`tokenizer.chat_template`),
//! with the settings Hugging Face uses for chat templates (`trim_blocks`, `lstrip_blocks`,
//! Python string methods); ChatML when the file has no template.

use minijinja::{context, Environment, ErrorKind as JinjaErrorKind};
use serde::{Deserialize, Serialize};

use crate::model::gguf::GgufFile;
use crate::text::tokenizer::Tokenizer;
use crate::text::tools::{ToolCall, ToolSet};
use crate::{Error, Result};

/// The template used when a GGUF file carries none (ChatML).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool` (any role the template knows).
    pub role: String,
    /// The message text.
    pub content: String,
    /// Calls an `assistant` message made ([`crate::text::tools`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a `tool` message: the function that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message with `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), tool_calls: Vec::new(), tool_call_id: None, name: None }
    }
    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).finish()
    }
}

fn tpl_err(e: impl std::fmt::Display) -> Error {
    Error::ChatTemplate { reason: e.to_string() }
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token`/`eos_token` are exposed to the template as variables
    /// of those names, as Hugging Face does.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(JinjaErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string()).map_err(tpl_err)?;
        Ok(Self { env, source: source.to_string(), bos_token: bos_token.into(), eos_token: eos_token.into() })
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), or ChatML if it has none.
    pub fn from_gguf(g: &GgufFile, tok: &Tokenizer) -> Result<Self> {
        let source = g.get_str("tokenizer.chat_template").unwrap_or(CHATML);
        let text = |id: Option<u32>| id.map(|i| String::from_utf8_lossy(tok.token_bytes(i)).into_owned()).unwrap_or_default();
        let eos = text(tok.end_of_generation().first().copied());
        Self::new(source, &text(tok.bos()), &eos)
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends where the
    /// assistant's answer begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// Whether the template renders tool definitions itself (it reads a `tools` variable).
    pub fn supports_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// Renders a conversation with tools: by the template itself when it
    /// [supports tools](Self::supports_tools) (tools and calls in OpenAI's shape, arguments
    /// as objects, as Hugging Face templates expect), otherwise in the generic format of
    /// [`crate::text::tools`].
    pub fn render_with_tools(&self, messages: &[ChatMessage], tools: Option<&ToolSet>, add_generation_prompt: bool) -> Result<String> {
        let tpl = self.env.get_template("chat").map_err(tpl_err)?;
        let native = self.supports_tools();
        // Without native support, earlier calls and tool results are written in the generic
        // format (even with no tools offered now), and offered tools go into the system prompt.
        let generic;
        let messages = if native {
            messages
        } else {
            generic = match tools {
                Some(t) => t.generic_messages(messages),
                None => crate::text::tools::generic_history(messages),
            };
            &generic[..]
        };
        let view: Vec<serde_json::Value> = messages.iter().map(message_view).collect();
        let tools_view: Option<Vec<serde_json::Value>> = match tools {
            Some(t) if native && t.active() => {
                let mut v: Vec<serde_json::Value> = t.tools.iter().map(|x| x.to_openai()).collect();
                if let crate::text::tools::ToolChoice::Function(f) = &t.choice {
                    v.retain(|x| x["function"]["name"] == f.as_str());
                }
                Some(v)
            }
            _ => None,
        };
        tpl.render(context! {
            messages => view,
            tools => tools_view,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(tpl_err)
    }
}

/// A message as templates read it: OpenAI's shape, a call's arguments as an object.
fn message_view(m: &ChatMessage) -> serde_json::Value {
    let mut v = serde_json::json!({"role": m.role, "content": m.content});
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                let args = serde_json::from_str::<serde_json::Value>(&c.arguments).unwrap_or_else(|_| serde_json::json!(c.arguments));
                serde_json::json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": args}})
            })
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = serde_json::json!(id);
    }
    if let Some(n) = &m.name {
        v["name"] = serde_json::json!(n);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let s = t.render(&[ChatMessage::system("Be brief."), ChatMessage::user("Hi")], true).unwrap();
        assert_eq!(s, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_methods_and_errors() {
        let t = ChatTemplate::new("{{ messages[0]['content'].strip().upper() }}{% if messages|length > 1 %}{{ raise_exception('one only') }}{% endif %}", "", "").unwrap();
        assert_eq!(t.render(&[ChatMessage::user("  hi ")], false).unwrap(), "HI");
        let e = t.render(&[ChatMessage::user("a"), ChatMessage::user("b")], false).unwrap_err();
        assert!(e.to_string().contains("one only"), "{e}");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    #[test]
    fn tools_render_natively_or_in_the_generic_format() {
        use crate::text::tools::{Tool, ToolChoice};
        let tools = ToolSet::new(vec![Tool::new("now", Some("The time".into()), serde_json::Value::Null).unwrap()], ToolChoice::Auto, true).unwrap();
        let mut call = ChatMessage::assistant("");
        call.tool_calls = vec![ToolCall { id: "call_9".into(), name: "now".into(), arguments: "{}".into() }];
        let msgs = [ChatMessage::user("Time?"), call];
        // A template that reads `tools` gets them, and the calls in OpenAI's shape.
        let native = ChatTemplate::new(
            "{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}{{ m.role }}:{{ m.content }}{% for c in m.tool_calls or [] %}<{{ c.function.name }} {{ c.function.arguments | tojson }}>{% endfor %};{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(native.supports_tools());
        assert_eq!(native.render_with_tools(&msgs, Some(&tools), false).unwrap(), "[now]user:Time?;assistant:<now {}>;");
        // ChatML does not: the tools go into a system message, the call into the text.
        let chatml = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        assert!(!chatml.supports_tools());
        let s = chatml.render_with_tools(&msgs, Some(&tools), true).unwrap();
        assert!(s.starts_with("<|im_start|>system\nYou can call these tools"), "{s}");
        assert!(s.contains("<|im_start|>assistant\n{\"tool_calls\":[{\"name\":\"now\",\"arguments\":{}}]}<|im_end|>"), "{s}");
    }
}
