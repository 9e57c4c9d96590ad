//! The Python package `tailor` (`tailor._native`): a thin PyO3 binding of the SDK (`Engine`,
//! `Session`), the adapters (`Adapter`, PEFT files, NumPy factors), the trainer (`train_lora`,
//! `mean_nll`, `PersonalModel`) and the federated aggregation (`tailor.federated`). It converts
//! types and errors and holds no logic; long calls release the GIL, and every Rust error or
//! panic is raised as a `tailor.TailorError`.
//!
//! Built by maturin (`python/pyproject.toml`) as an abi3 wheel for CPython >= 3.9.

mod adapter;
mod convert;
mod engine;
mod errors;
mod federated;
mod personal;
mod testing;
mod train;

use pyo3::prelude::*;

/// The cached SmolLM2 GGUF (`$TAILOR_HOME`, default the platform cache directory, as the CLI
/// resolves it), whether or not it has been fetched yet.
#[pyfunction]
fn default_model_path() -> PyResult<String> {
    Ok(engine::model_cache()?.base_model_path().display().to_string())
}

/// The cached all-MiniLM-L6-v2 folder the profiles embed memories with.
#[pyfunction]
fn default_embedder_dir() -> PyResult<String> {
    Ok(engine::model_cache()?.embedder_dir().display().to_string())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<engine::PySession>()?;
    m.add_class::<adapter::PyAdapter>()?;
    m.add_class::<personal::PyPersonalModel>()?;
    m.add_function(wrap_pyfunction!(default_model_path, m)?)?;
    m.add_function(wrap_pyfunction!(default_embedder_dir, m)?)?;
    m.add_function(wrap_pyfunction!(train::train_lora, m)?)?;
    m.add_function(wrap_pyfunction!(train::mean_nll, m)?)?;
    m.add_submodule(&federated::module(py)?)?;
    m.add_submodule(&testing::module(py)?)?;
    Ok(())
}
