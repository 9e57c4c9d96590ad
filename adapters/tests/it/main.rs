//! Integration tests of `tailor-adapters`: one binary, a module per feature.

mod common;

mod atomic_save;
mod files;
mod fuzz;
mod hostile;
mod math;
mod merge;
