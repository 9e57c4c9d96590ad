//! Behaviour tests of the `tailor` crate (one binary, a module per feature).

mod bad_input;
mod grammar;
mod lora;
mod memory_prompt;
mod common;
mod context;
mod fuzz;
mod peft_interop;
mod real_model;
mod reference;
mod registry;
mod session;
mod steering;
mod tokenizer;
