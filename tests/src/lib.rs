//! Cross-crate behaviour tests of Tailor (no library code): `tests/e2e/` drives the
//! personalization loop on the real model through the public APIs of `tailor` and
//! `tailor-trainer`, as an app would. Run with `cargo test --release -p tailor-tests`; the
//! model files come from `tailor models fetch` (`$TAILOR_HOME`, else the user cache).
