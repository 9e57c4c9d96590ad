//! End-to-end behaviour on the real model, one module per feature.

mod long_chat;
mod personalization;
