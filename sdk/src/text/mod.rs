//! Text in and out of the model: the tokenizer built from GGUF metadata, streaming
//! detokenization, and the chat template.

pub mod chat_template;
pub mod tokenizer;
