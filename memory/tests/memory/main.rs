//! Behaviour of the profile store: one test binary, a module per feature.

mod common;

mod api;
mod bad_input;
mod corrections;
mod crash;
mod embedder;
#[cfg(feature = "encryption")]
mod encryption;
mod fuzz;
mod quality;
mod search;
