//! Chat prompts rendered from the model's own Jinja template (`tokenizer.chat_template`),
//! with the settings Hugging Face uses for chat templates (`trim_blocks`, `lstrip_blocks`,
//! Python string methods); ChatML when the file has no template.

use minijinja::{context, Environment, ErrorKind as JinjaErrorKind};
use serde::{Deserialize, Serialize};

use crate::model::gguf::GgufFile;
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The template used when a GGUF file carries none (ChatML).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (any role the template knows).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
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
        let tpl = self.env.get_template("chat").map_err(tpl_err)?;
        tpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(tpl_err)
    }
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
}
