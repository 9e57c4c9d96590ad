//! Grammar-constrained decoding (structured outputs) on [llguidance], the engine behind
//! llama.cpp's `%llguidance` grammars and vLLM/SGLang's structured outputs.
//!
//! A [`Grammar`] in [`crate::GenerateParams::grammar`] restricts every sampled token to those
//! that keep the answer a prefix of a sentence of the grammar: a JSON Schema (draft 2020-12:
//! `type`, `properties`/`required`/`additionalProperties`, `enum`/`const`, `anyOf`/`oneOf`,
//! `items`/`prefixItems`/`minItems`/`maxItems`, `minLength`/`maxLength`/`pattern`/`format`,
//! `minimum`/`maximum`, `$defs`/`$ref`), any JSON object, a regular expression or a Lark
//! grammar. End-of-generation tokens are allowed only where the grammar may end, and the
//! generation stops by itself once the grammar cannot go on, so a finished answer always
//! parses.
//!
//! Why llguidance rather than outlines-core: it computes the mask lazily from a token trie
//! and an Earley parser (no precompiled automaton per schema, so a new schema costs
//! microseconds to start, where outlines-core compiles an index over the whole vocabulary
//! first), it takes Lark grammars as well as JSON Schema and regexes, and it is what
//! llama.cpp and vLLM ship, so its JSON Schema coverage is the one users meet elsewhere.
//!
//! JSON is generated compactly on one line (`{"a": 1, "b": [2, 3]}`: no free whitespace,
//! which a small model would otherwise fill with newlines); a schema may override this with
//! llguidance's own `"x-guidance"` options.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};

use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What a generation must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Grammar {
    /// A JSON Schema the answer must validate against (the answer is one JSON value).
    JsonSchema(serde_json::Value),
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// A regular expression the whole answer must match (Rust `regex` syntax, anchored).
    Regex(String),
    /// A Lark grammar in llguidance's dialect (`start: ...`; `%json {...}` embeds a schema).
    Lark(String),
}

impl Grammar {
    /// The JSON Schema grammar of `schema` (a JSON value).
    pub fn json_schema(schema: serde_json::Value) -> Self {
        Grammar::JsonSchema(schema)
    }

    /// Parses a JSON Schema from text; an error names what is wrong.
    pub fn json_schema_str(schema: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(schema).map_err(|e| Error::Grammar { reason: format!("the JSON schema is not JSON: {e}") })?;
        Ok(Grammar::JsonSchema(v))
    }

    fn to_llguidance(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            Grammar::JsonSchema(schema) => {
                if !(schema.is_object() || schema.is_boolean()) {
                    return Err(Error::Grammar { reason: "a JSON schema must be an object (or true)".into() });
                }
                TopLevelGrammar::from_json_schema(compact(schema.clone()))
            }
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"}))),
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        })
    }
}

/// Adds llguidance's compact JSON options unless the schema sets its own.
fn compact(schema: serde_json::Value) -> serde_json::Value {
    let options = serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
    match schema {
        serde_json::Value::Object(mut o) => {
            o.entry("x-guidance").or_insert(options);
            serde_json::Value::Object(o)
        }
        serde_json::Value::Bool(true) => serde_json::json!({"x-guidance": options}),
        other => other,
    }
}

/// The tokenizer as llguidance sees it: every token's bytes in a trie (control tokens marked
/// so that no text ever matches them), and the model's own BPE for tokenizing grammar text.
struct TokenizerView {
    trie: TokTrie,
    tok: Tokenizer,
}

impl TokenizerEnv for TokenizerView {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => match self.tok.encode(text, false) {
                Ok(mut ids) => {
                    if self.tok.adds_bos() && !ids.is_empty() && Some(ids[0]) == self.tok.bos() {
                        ids.remove(0);
                    }
                    ids
                }
                Err(_) => self.trie.greedy_tokenize(s),
            },
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// llguidance's compiled view of one tokenizer, shared by every constrained generation of an
/// engine (built on first use: ~0.1 s for a 49k vocabulary).
pub(crate) struct GrammarFactory {
    factory: ParserFactory,
    /// End-of-generation tokens of the model, all allowed where the grammar may end.
    eog: Vec<u32>,
}

impl GrammarFactory {
    pub(crate) fn new(tok: &Tokenizer) -> Result<Self> {
        let n = tok.vocab_size();
        let eog = tok.end_of_generation().to_vec();
        let eos = *eog.first().ok_or_else(|| Error::Grammar { reason: "the tokenizer has no end-of-generation token".into() })?;
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                let b = tok.token_bytes(id);
                if tok.is_control(id) {
                    let mut w = Vec::with_capacity(b.len() + 1);
                    w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    w.extend_from_slice(b);
                    w
                } else {
                    b.to_vec()
                }
            })
            .collect();
        let mut info = TokRxInfo::new(n as u32, eos);
        info.tok_bos = tok.bos();
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog);
        let env: TokEnv = Arc::new(TokenizerView { trie, tok: tok.clone() });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| Error::Grammar { reason: format!("cannot prepare the tokenizer for grammars: {e}") })?;
        factory.quiet();
        Ok(Self { factory, eog })
    }
}

/// One generation's grammar state: masks the logits before sampling, follows each token.
pub(crate) struct Constraint {
    matcher: Matcher,
    eog: Vec<u32>,
    vocab: usize,
}

impl Constraint {
    /// Compiles `grammar`; an invalid grammar is an [`Error::Grammar`] naming the problem.
    pub(crate) fn new(factory: &GrammarFactory, grammar: &Grammar) -> Result<Self> {
        let g = grammar.to_llguidance()?;
        let parser = factory.factory.create_parser(g).map_err(|e| Error::Grammar { reason: e.to_string() })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::Grammar { reason: e });
        }
        Ok(Self { matcher, eog: factory.eog.clone(), vocab: factory.factory.tok_env().tok_trie().vocab_size() })
    }

    /// Sets every logit the grammar forbids here to -∞. End-of-generation tokens stay
    /// allowed only where the grammar may end.
    pub(crate) fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask = self.matcher.compute_mask().map_err(|e| Error::Grammar { reason: format!("the grammar failed: {e}") })?;
        let accepting = self.eog.iter().any(|&t| mask.is_allowed(t));
        let words = mask.as_slice();
        let n = logits.len().min(self.vocab);
        let mut any = false;
        for (w, chunk) in words.iter().zip(logits[..n].chunks_mut(32)) {
            match *w {
                0 => chunk.fill(f32::NEG_INFINITY),
                u32::MAX => any = true,
                bits => {
                    for (j, l) in chunk.iter_mut().enumerate() {
                        if bits >> j & 1 == 0 {
                            *l = f32::NEG_INFINITY;
                        } else {
                            any = true;
                        }
                    }
                }
            }
        }
        logits[n..].fill(f32::NEG_INFINITY);
        for &t in &self.eog {
            if let Some(l) = logits.get_mut(t as usize) {
                if !accepting {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        if !any && !accepting {
            return Err(Error::Grammar { reason: "no token can continue the grammar here".into() });
        }
        Ok(())
    }

    /// Follows a sampled (non-end-of-generation) token.
    pub(crate) fn commit(&mut self, id: u32) -> Result<()> {
        self.matcher.consume_token(id).map_err(|e| Error::Grammar { reason: format!("token {id} does not fit the grammar: {e}") })
    }

    /// Whether the grammar is complete and cannot go on (the generation ends here).
    pub(crate) fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_options_are_added_once() {
        let s = compact(serde_json::json!({"type": "object"}));
        assert_eq!(s["x-guidance"]["whitespace_flexible"], false);
        let own = compact(serde_json::json!({"type": "object", "x-guidance": {"whitespace_flexible": true}}));
        assert_eq!(own["x-guidance"]["whitespace_flexible"], true);
        assert!(compact(serde_json::Value::Bool(true)).is_object());
    }

    #[test]
    fn grammars_round_trip_through_serde() {
        for g in [Grammar::JsonObject, Grammar::Regex("[a-z]+".into()), Grammar::Lark("start: \"x\"".into()), Grammar::json_schema(serde_json::json!({"type": "integer"}))] {
            let s = serde_json::to_string(&g).unwrap();
            assert_eq!(serde_json::from_str::<Grammar>(&s).unwrap(), g);
        }
        assert!(Grammar::json_schema_str("{not json").is_err());
    }
}
