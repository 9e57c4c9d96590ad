//! The tokenizer of a GGUF model, built with the `tokenizers` crate from
//! `tokenizer.ggml.tokens` / `merges` / `token_type` / `pre`, and streaming detokenization
//! that only ever emits whole UTF-8 characters.

use std::collections::HashMap;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::model::gguf::{value_to_u64, GgufFile};
use crate::{Error, Result};

/// GGUF token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// The GPT-2 split regex (what llama.cpp's `LLAMA_VOCAB_PRE_TYPE_GPT2` and the byte-level
/// pre-tokenizer of `tokenizers` use).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regexes llama.cpp applies, in order, for a `tokenizer.ggml.pre` value
/// (`llama-vocab.cpp`, `llm_tokenizer_bpe`).
fn pre_regexes(pre: &str) -> Option<Vec<&'static str>> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "olmo" | "jais" | "trillion" => vec![GPT2],
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => vec![r"\p{N}", GPT2],
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" | "falcon3" | "pixtral" | "lfm2" => vec![LLAMA3],
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" => vec![QWEN2],
        _ => return None,
    })
}

/// GPT-2's reversible map from bytes to printable characters: entry `b` is byte `b`'s char.
pub(crate) fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
    pairs.sort();
    pairs.into_iter().map(|(_, c)| char::from_u32(c).expect("valid scalar")).collect()
}

/// The inverse of [`byte_chars`].
fn unicode_to_byte() -> HashMap<char, u8> {
    byte_chars().into_iter().enumerate().map(|(b, c)| (c, b as u8)).collect()
}

/// A model's tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    /// Extracts control tokens written in the text.
    parse_special: tokenizers::Tokenizer,
    /// Treats control-token text as plain text.
    plain: tokenizers::Tokenizer,
    token_bytes: Vec<Vec<u8>>,
    is_control: Vec<bool>,
    bos: Option<u32>,
    add_bos: bool,
    end_of_generation: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab", &self.token_bytes.len()).finish()
    }
}

fn tok_err(reason: impl Into<String>) -> Error {
    Error::Tokenizer { reason: reason.into() }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes. Byte-level BPE (`tokenizer.ggml.model =
    /// gpt2`) with the pre-tokenizers llama.cpp knows; anything else is a typed error.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(tok_err(format!("tokenizer model `{model}` is not supported (byte-level BPE `gpt2` is)")));
        }
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let merges = g.get_str_array("tokenizer.ggml.merges")?;
        let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let regexes = pre_regexes(pre).ok_or_else(|| tok_err(format!("pre-tokenizer `{pre}` is not supported")))?;
        let types: Vec<u64> = match g.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|_| tok_err("tokenizer.ggml.token_type is not an array"))?
                .iter()
                .map(|v| value_to_u64(v).ok_or_else(|| tok_err("tokenizer.ggml.token_type holds a non-integer")))
                .collect::<Result<_>>()?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(tok_err("tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length"));
        }

        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges = merges
            .iter()
            .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| tok_err("a merge is not two space-separated tokens"))?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tok_err(format!("BPE: {e}")))?;
        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        for r in regexes {
            let split = Split::new(SplitPattern::Regex(r.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| tok_err(format!("pre-tokenizer regex: {e}")))?;
            steps.push(split.into());
        }
        steps.push(ByteLevel::new(false, false, false).into());
        let mut tk = tokenizers::Tokenizer::new(bpe);
        tk.with_pre_tokenizer(Some(Sequence::new(steps)));

        let mut specials = Vec::new();
        let mut user = Vec::new();
        for (t, ty) in tokens.iter().zip(&types) {
            match *ty {
                TOKEN_TYPE_CONTROL => specials.push(AddedToken::from(t.to_string(), true)),
                TOKEN_TYPE_USER_DEFINED => user.push(AddedToken::from(t.to_string(), false).normalized(false)),
                _ => {}
            }
        }
        let _ = tk.add_special_tokens(specials); // returns the number added
        let _ = tk.add_tokens(user);
        let mut plain = tk.clone();
        plain.set_encode_special_tokens(true);

        let map = unicode_to_byte();
        let token_bytes: Vec<Vec<u8>> = tokens
            .iter()
            .zip(&types)
            .map(|(t, ty)| match *ty {
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED => t.as_bytes().to_vec(),
                // Byte-level tokens: every char maps back to one byte; a char outside the
                // table (malformed vocab) is kept as its UTF-8.
                _ => t.chars().flat_map(|c| match map.get(&c) {
                    Some(b) => vec![*b],
                    None => c.to_string().into_bytes(),
                }).collect(),
            })
            .collect();
        let is_control: Vec<bool> = types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();

        let id = |key: &str| -> Result<Option<u32>> {
            Ok(g.get_usize_opt(key)?.filter(|&i| i < tokens.len()).map(|i| i as u32))
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let mut eog: Vec<u32> = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(i) = id(key)? {
                eog.push(i);
            }
        }
        // As llama.cpp does: the usual end-of-turn control tokens, and the fill-in-the-middle
        // repository/file separators and padding, end generation too.
        const EOG_TEXT: [&str; 15] = [
            "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>",
            "</s>", "<EOT>", "_<EOT>", "<reponame>", "<|repo_name|>", "<|file_sep|>", "<|fim_pad|>",
            "<fim_pad>",
        ];
        for (i, t) in tokens.iter().enumerate() {
            if is_control[i] && EOG_TEXT.contains(t) && !eog.contains(&(i as u32)) {
                eog.push(i as u32);
            }
        }
        Ok(Self {
            parse_special: tk,
            plain,
            token_bytes,
            is_control,
            bos,
            add_bos: g.get_bool_opt("tokenizer.ggml.add_bos_token").unwrap_or(false),
            end_of_generation: eog,
        })
    }

    /// Encodes `text`. With `parse_special`, control tokens written in the text (such as
    /// `<|im_start|>`) become their single ids; without, they are tokenized as plain text (use
    /// this for untrusted user text). The BOS token is prepended when the model asks for it
    /// (`tokenizer.ggml.add_bos_token`).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let tk = if parse_special { &self.parse_special } else { &self.plain };
        let enc = tk.encode_fast(text, false).map_err(|e| tok_err(format!("encode: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The bytes a token stands for (its text for control tokens), or empty for an unknown id.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether `id` is a control token (`<|im_start|>`, `<|endoftext|>`...).
    pub fn is_control(&self, id: u32) -> bool {
        self.is_control.get(id as usize).copied().unwrap_or(false)
    }

    /// Tokens that end a generation (EOS, end of turn).
    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// The BOS token, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Whether the model wants BOS prepended to every prompt.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Decodes ids to text; invalid UTF-8 becomes U+FFFD. Control tokens are skipped when
    /// `skip_control`.
    pub fn decode(&self, ids: &[u32], skip_control: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if !(skip_control && self.is_control(id)) {
                bytes.extend_from_slice(self.token_bytes(id));
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A streaming decoder that emits only complete UTF-8 characters.
    pub fn decode_stream(&self, skip_control: bool) -> DecodeStream {
        DecodeStream { pending: Vec::new(), skip_control }
    }
}

/// Streaming detokenization: feed ids one at a time, get back text made only of whole UTF-8
/// characters (a character split across tokens is held until its last byte arrives; bytes that
/// can never form a character become U+FFFD).
#[derive(Debug, Clone)]
pub struct DecodeStream {
    pending: Vec<u8>,
    skip_control: bool,
}

impl DecodeStream {
    /// Adds one token; returns the text that became complete (possibly empty).
    pub fn step(&mut self, tok: &Tokenizer, id: u32) -> String {
        if !(self.skip_control && tok.is_control(id)) {
            self.pending.extend_from_slice(tok.token_bytes(id));
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"));
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never start a character: replace them and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: any incomplete character left becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let m = unicode_to_byte();
        assert_eq!(m.len(), 256);
        let mut seen = [false; 256];
        for b in m.values() {
            seen[*b as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'Ċ'], b'\n');
    }
}
