//! `tailor.federated`: one aggregation round over client adapters, client-side (local)
//! differential privacy, update norms and clipping, and the privacy accountant — the
//! `tailor-federated` crate, its options as keyword arguments and its report as a dict.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tailor::adapters::BaseFingerprint;
use tailor_federated::{accountant, AggregateOptions, DpMode, Method, Robust, Update};

use crate::adapter::PyAdapter;
use crate::convert::{record_to_py, to_py};
use crate::errors::{detach, Error, Kind, Result};

impl From<tailor_federated::Error> for Error {
    fn from(e: tailor_federated::Error) -> Self {
        use tailor_federated::ErrorKind as K;
        let kind = match e.kind() {
            K::InvalidArgument | K::Refused => Kind::InvalidArgument,
            K::NotFound => Kind::NotFound,
            K::Io => Kind::Io,
            K::CorruptData => Kind::CorruptData,
            K::Unsupported => Kind::Unsupported,
            K::Mismatch => Kind::Incompatible,
            _ => Kind::Other,
        };
        Error::new(kind, e.to_string())
    }
}

/// A federated error as a Python exception; when every update was refused, the exception
/// carries them as `refused` (a list of `{"client", "reason", "detail"}`).
fn raise(py: Python<'_>, e: tailor_federated::Error) -> PyErr {
    let refusals = match &e {
        tailor_federated::Error::NothingAccepted { refusals } => Some(refusals.clone()),
        _ => None,
    };
    let err: PyErr = Error::from(e).into();
    if let Some(r) = refusals {
        if let Ok(list) = record_to_py(py, &r) {
            let _ = err.value(py).setattr("refused", list);
        }
    }
    err
}

fn parse<T: std::str::FromStr<Err = tailor_federated::Error>>(s: &str) -> Result<T> {
    s.parse::<T>().map_err(Error::from)
}

/// Aggregates one round: `updates` is a sequence of `(client name, Adapter, num_examples)`.
/// Bad updates (NaN/Inf, wrong shape, another base, unknown targets, zero samples, a
/// duplicate name, a norm above `max_norm_ratio` × the round's median) are refused by name
/// and the round goes on with the others. Returns `(adapter, report)`; the report holds
/// `accepted` (names), `refused` (`{"client", "reason", "detail"}`), and the round's figures
/// (`method`, `rank`, `stacked_rank`, `clients`, `median_norm`, `noise_std`, `exact_norm`,
/// `error_vs_exact`, `relative_error_vs_exact`, `layers`, ...). The GIL is released while it
/// runs. Raises `InvalidArgumentError` for invalid options or when every update was refused
/// (the exception's `refused` attribute lists why).
#[pyfunction]
#[pyo3(signature = (
    updates, *, rank = None, method = "exact", clip = None, noise_multiplier = None, dp = "central", seed = 0,
    max_norm_ratio = Some(10.0), expected_fingerprint = None, robust = "mean", report_error = true
))]
#[allow(clippy::too_many_arguments)]
fn aggregate<'py>(
    py: Python<'py>,
    updates: Vec<(String, Bound<'py, PyAdapter>, u64)>,
    rank: Option<usize>,
    method: &str,
    clip: Option<f64>,
    noise_multiplier: Option<f64>,
    dp: &str,
    seed: u64,
    max_norm_ratio: Option<f64>,
    expected_fingerprint: Option<String>,
    robust: &str,
    report_error: bool,
) -> PyResult<(PyAdapter, Bound<'py, PyDict>)> {
    let mut opts = AggregateOptions::new(parse::<Method>(method)?);
    opts.rank = rank;
    opts.clip = clip;
    opts.noise_multiplier = noise_multiplier;
    opts.dp = parse::<DpMode>(dp)?;
    opts.seed = seed;
    // 0 switches the outlier check off, as the CLI's `--max-norm-ratio 0`.
    opts.max_norm_ratio = max_norm_ratio.filter(|&r| r != 0.0);
    opts.expected_fingerprint = expected_fingerprint.map(BaseFingerprint::new);
    opts.robust = parse::<Robust>(robust)?;
    opts.report_error = report_error;
    // The crate takes its updates by value: each adapter is copied once (its factors), here.
    let updates: Vec<Update> =
        updates.into_iter().map(|(client, a, samples)| Update::new(client, (*a.get().inner).clone(), samples)).collect();
    let round = py
        .detach(move || crate::errors::catch(|| Ok(tailor_federated::aggregate(&updates, &opts))))
        .map_err(PyErr::from)?
        .map_err(|e| raise(py, e))?;
    let report = to_py(py, &serde_json::to_value(&round.report).map_err(Error::from)?)?;
    let report = report.cast_into::<PyDict>().map_err(|_| Error::new(Kind::Internal, "the report is not a JSON object"))?;
    // The method as the caller spells it (`fedit`; the crate's serde name is `fed_it`).
    report.set_item("method", round.report.method.to_string())?;
    report.set_item("accepted", round.accepted)?;
    report.set_item("refused", record_to_py(py, &round.refused)?)?;
    Ok((PyAdapter::new(round.adapter), report))
}

/// Local differential privacy at the client: the update clipped to `‖ΔW‖_F ≤ clip`, Gaussian
/// noise of standard deviation `noise_multiplier · clip` added to each dense `ΔW`, each noisy
/// matrix refactored to the adapter's rank (truncated SVD). Seeded (ChaCha20): the same seed
/// gives the same noise on every machine. Returns a new adapter (config kept). The GIL is
/// released while it runs.
#[pyfunction]
#[pyo3(signature = (adapter, *, clip, noise_multiplier, seed = 0))]
fn privatize_local(py: Python<'_>, adapter: Bound<'_, PyAdapter>, clip: f64, noise_multiplier: f64, seed: u64) -> PyResult<PyAdapter> {
    if !(clip > 0.0 && clip.is_finite()) {
        return Err(Error::invalid(format!("clip {clip} must be positive and finite")).into());
    }
    if !(noise_multiplier >= 0.0 && noise_multiplier.is_finite()) {
        return Err(Error::invalid(format!("noise_multiplier {noise_multiplier} must be non-negative and finite")).into());
    }
    let a = adapter.get().inner.clone();
    detach(py, move || Ok(PyAdapter::new(tailor_federated::privatize_local(&a, clip, noise_multiplier, seed))))
}

/// `‖scale·B·A‖_F` over all the adapter's pairs, computed from the factors (never the dense
/// matrices); NaN if a factor holds NaN.
#[pyfunction]
fn update_norm(py: Python<'_>, adapter: Bound<'_, PyAdapter>) -> PyResult<f64> {
    let a = adapter.get().inner.clone();
    detach(py, move || Ok(tailor_federated::update_norm(&a)))
}

/// The adapter clipped to `‖scale·B·A‖_F ≤ max_norm` (every `B` scaled) and the factor
/// applied (1.0 when it was within the bound; 0.0 for a non-finite update, which becomes
/// zero). Returns `(adapter, factor)`; the argument is not changed.
#[pyfunction]
fn clip_update(py: Python<'_>, adapter: Bound<'_, PyAdapter>, max_norm: f64) -> PyResult<(PyAdapter, f64)> {
    if !(max_norm >= 0.0) {
        return Err(Error::invalid(format!("max_norm {max_norm} must be non-negative")).into());
    }
    let a = adapter.get().inner.clone();
    detach(py, move || {
        let mut clipped = (*a).clone();
        let f = tailor_federated::clip_update(&mut clipped, max_norm);
        Ok((PyAdapter::new(clipped), f))
    })
}

/// ε after `rounds` rounds of the Poisson-sampled Gaussian mechanism with `noise_multiplier`
/// σ (noise std / clipping bound) and `sample_rate` q, at `delta` (RDP accountant over
/// dp_accounting's orders; infinite when σ = 0). With `return_order`: `(ε, best RDP order)`.
#[pyfunction]
#[pyo3(signature = (noise_multiplier, sample_rate, rounds, delta = 1e-5, *, return_order = false))]
fn epsilon(py: Python<'_>, noise_multiplier: f64, sample_rate: f64, rounds: u64, delta: f64, return_order: bool) -> PyResult<Py<PyAny>> {
    let (eps, order) = accountant::epsilon(noise_multiplier, sample_rate, rounds, delta).map_err(Error::from)?;
    Ok(if return_order { (eps, order).into_pyobject(py)?.into_any().unbind() } else { eps.into_pyobject(py)?.into_any().unbind() })
}

pub fn module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let m = PyModule::new(py, "federated")?;
    m.add_function(wrap_pyfunction!(aggregate, &m)?)?;
    m.add_function(wrap_pyfunction!(privatize_local, &m)?)?;
    m.add_function(wrap_pyfunction!(update_norm, &m)?)?;
    m.add_function(wrap_pyfunction!(clip_update, &m)?)?;
    m.add_function(wrap_pyfunction!(epsilon, &m)?)?;
    Ok(m)
}
