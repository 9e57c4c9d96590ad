//! `tailor._testing`: helpers for the package's own tests (not a stable API): a tiny llama
//! GGUF written on the fly (random weights, a real byte-level BPE tokenizer and chat
//! template) and profiles with a model-free embedder, so tests run in seconds.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use tailor::profile::testing::HashEmbedder;

use crate::engine::PyEngine;
use crate::errors::detach;
use crate::personal::{open, PyPersonalModel};

/// Writes a tiny model (2 layers, d_model 64, Q8_0, context 256) to `path` (a directory gets
/// `tiny.gguf` inside) and returns the file's path.
#[pyfunction]
#[pyo3(signature = (path, *, seed = 0))]
fn write_tiny_model(py: Python<'_>, path: PathBuf, seed: u64) -> PyResult<String> {
    detach(py, move || {
        let file = if path.is_dir() { path.join("tiny.gguf") } else { path };
        let mut m = tailor::testing::TinyModel::default();
        m.seed = seed;
        m.write(&file)?;
        Ok(file.display().to_string())
    })
}

/// `PersonalModel.open` with a pseudo-random embedder (each distinct text its own random unit
/// vector: no model to load) instead of MiniLM.
#[pyfunction]
#[pyo3(signature = (profile_dir, engine, *, auto_train = 0))]
fn open_personal_model(py: Python<'_>, profile_dir: PathBuf, engine: Bound<'_, PyEngine>, auto_train: usize) -> PyResult<PyPersonalModel> {
    let e = engine.get();
    detach(py, move || open(&profile_dir, &e.engine, Arc::new(HashEmbedder::new(32, 0)), auto_train))
}

/// Panics inside Rust: the binding must raise `tailor.InternalError`, not crash or raise
/// `PanicException`.
#[pyfunction]
fn panic(py: Python<'_>) -> PyResult<()> {
    detach(py, || -> crate::errors::Result<()> { panic!("a test panic") })
}

pub fn module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let m = PyModule::new(py, "_testing")?;
    m.add_function(wrap_pyfunction!(write_tiny_model, &m)?)?;
    m.add_function(wrap_pyfunction!(open_personal_model, &m)?)?;
    m.add_function(wrap_pyfunction!(panic, &m)?)?;
    Ok(m)
}
