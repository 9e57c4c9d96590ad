//! Text in and out of the model: the tokenizer built from GGUF metadata, streaming
//! detokenization, the chat template, and tool calling's prompt and answer format.

pub mod chat_template;
pub mod tokenizer;
pub mod tools;
