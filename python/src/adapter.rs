//! `tailor.Adapter`: a LoRA adapter (`tailor_adapters::LoraAdapter`) in PEFT's layout, its
//! factors as NumPy arrays.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::ndarray::Array2;
use numpy::{AllowTypeChange, PyArray2, PyArrayLike2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tailor::adapters::peft::{self, Factor, LoadOptions};
use tailor::adapters::{BaseFingerprint, LoraAdapter, LoraConfig, LoraWeights, Target};

use crate::errors::{detach, Error, Result};

const A_SUFFIX: &str = ".lora_A.weight";

/// PEFT's module name of `target` in `layer`: the tensor names without `.lora_A.weight`, e.g.
/// `base_model.model.model.layers.3.self_attn.q_proj`.
pub fn module_name(layer: usize, target: Target) -> String {
    let a = peft::tensor_name(layer, target, Factor::A);
    a.strip_suffix(A_SUFFIX).map(str::to_owned).unwrap_or(a)
}

/// The inverse of [`module_name`]; also takes the path inside the model
/// (`model.layers.3.self_attn.q_proj`).
pub fn parse_module_name(name: &str) -> Option<(usize, Target)> {
    let full = if name.starts_with("model.layers.") { format!("base_model.model.{name}{A_SUFFIX}") } else { format!("{name}{A_SUFFIX}") };
    peft::parse_tensor_name(&full).map(|(l, t, _)| (l, t))
}

/// A LoRA adapter: one `(A [r, in], B [out, r])` pair per targeted projection of each layer,
/// applied as `y = W·x + scale·B(A·x)` with `scale = alpha / r`. Immutable; shared cheaply.
#[pyclass(module = "tailor", name = "Adapter", frozen)]
pub struct PyAdapter {
    pub(crate) inner: Arc<LoraAdapter>,
}

impl PyAdapter {
    pub(crate) fn new(adapter: LoraAdapter) -> Self {
        PyAdapter { inner: Arc::new(adapter) }
    }
}

/// The targets an adapter has pairs for, in forward order (its config's list when it has none).
fn targets_of(a: &LoraAdapter) -> Vec<String> {
    let present: Vec<Target> = Target::ALL.into_iter().filter(|t| a.iter().any(|((_, u), _)| u == *t)).collect();
    if !present.is_empty() {
        return present.iter().map(|t| t.peft_name().to_owned()).collect();
    }
    match &a.config().target_modules {
        tailor::adapters::TargetModules::List(names) => names.clone(),
        tailor::adapters::TargetModules::Pattern(p) => vec![p.clone()],
    }
}

/// A `[rows, cols]` float32 copy of a NumPy array (any float dtype, any strides, or a nested
/// list), and its shape.
fn matrix(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(Vec<f32>, [usize; 2])> {
    let arr: PyArrayLike2<'_, f32, AllowTypeChange> = obj
        .extract()
        .map_err(|e| Error::invalid(format!("{what}: expected a 2-D float array ({e})")))?;
    let shape = arr.shape();
    let shape = [shape[0], shape[1]];
    // Row-major order. `as_slice` also succeeds on a Fortran-ordered array (a transposed view,
    // or what `astype` keeps of one), whose memory order is the transpose: only a C-contiguous
    // array is copied as it lies in memory, any other is read in logical order.
    let data = match arr.as_slice() {
        Ok(s) if arr.is_c_contiguous() => s.to_vec(),
        _ => arr.as_array().iter().copied().collect(),
    };
    Ok((data, shape))
}

#[pymethods]
impl PyAdapter {
    /// Loads a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`),
    /// checked for consistency (ranks, shapes, finite values); not yet against a base.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        detach(py, move || Ok(PyAdapter::new(peft::load(&path, &LoadOptions::new())?)))
    }

    /// Saves it as a PEFT adapter directory, atomically (a crash leaves the old directory or the
    /// new one, never a mix).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        detach(py, move || Ok(peft::save(&self.inner, &path)?))
    }

    /// The LoRA rank `r`.
    #[getter]
    fn rank(&self) -> usize {
        self.inner.config().r
    }

    /// `lora_alpha`.
    #[getter]
    fn alpha(&self) -> f64 {
        self.inner.config().lora_alpha
    }

    /// The factor the delta `B(A·x)` is multiplied by (`alpha / r`, or `alpha / sqrt(r)` with
    /// rsLoRA).
    #[getter]
    fn scale(&self) -> f32 {
        self.inner.scale()
    }

    /// The targeted projections (PEFT names: `q_proj`, ..., `down_proj`).
    #[getter]
    fn targets(&self) -> Vec<String> {
        targets_of(&self.inner)
    }

    /// The fingerprint of the base it was trained on, if recorded.
    #[getter]
    fn base_fingerprint(&self) -> Option<String> {
        self.inner.config().base_fingerprint().map(|f| f.as_str().to_owned())
    }

    /// Number of trained parameters (all A and B entries).
    #[getter]
    fn num_parameters(&self) -> usize {
        self.inner.num_parameters()
    }

    /// The layers that carry a pair.
    #[getter]
    fn layers(&self) -> Vec<usize> {
        let mut l: Vec<usize> = self.inner.iter().map(|((l, _), _)| l).collect();
        l.dedup();
        l
    }

    /// `adapter_config.json` as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        crate::convert::record_to_py(py, self.inner.config())
    }

    /// The factors: PEFT module name (`base_model.model.model.layers.N.self_attn.q_proj`) ->
    /// `(A [r, in], B [out, r])`, float32 arrays (fresh copies, writable).
    fn factors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for ((layer, target), w) in self.inner.iter() {
            let a = Array2::from_shape_vec((w.r(), w.in_features()), w.a().to_vec()).map_err(|e| Error::invalid(e.to_string()))?;
            let b = Array2::from_shape_vec((w.out_features(), w.r()), w.b().to_vec()).map_err(|e| Error::invalid(e.to_string()))?;
            let pair = PyTuple::new(py, [PyArray2::from_owned_array(py, a).into_any(), PyArray2::from_owned_array(py, b).into_any()])?;
            d.set_item(module_name(layer, target), pair)?;
        }
        Ok(d)
    }

    /// An adapter from factors: a dict of PEFT module name (as `factors()` gives, or
    /// `model.layers.N.mlp.up_proj`) -> `(A [rank, in], B [out, rank])` (any float arrays).
    /// `check_finite=False` keeps NaN/Inf values (to test how aggregation refuses them).
    #[staticmethod]
    #[pyo3(signature = (factors, *, rank, alpha, base_fingerprint = None, check_finite = true))]
    fn from_factors(
        factors: &Bound<'_, PyDict>,
        rank: usize,
        alpha: f64,
        base_fingerprint: Option<String>,
        check_finite: bool,
    ) -> PyResult<Self> {
        let mut pairs = Vec::with_capacity(factors.len());
        for (key, value) in factors.iter() {
            let name: String = key.extract().map_err(|_| Error::invalid("factor keys must be str module names"))?;
            let (layer, target) = parse_module_name(&name).ok_or_else(|| {
                Error::invalid(format!("`{name}` is not a PEFT module name like base_model.model.model.layers.0.self_attn.q_proj"))
            })?;
            let (a, b): (Bound<'_, PyAny>, Bound<'_, PyAny>) =
                value.extract().map_err(|_| Error::invalid(format!("`{name}`: expected a pair (A, B)")))?;
            let (a, a_shape) = matrix(&a, &format!("`{name}` A"))?;
            let (b, b_shape) = matrix(&b, &format!("`{name}` B"))?;
            if a_shape[0] != rank || b_shape[1] != rank {
                return Err(Error::invalid(format!(
                    "`{name}`: A is {a_shape:?} and B {b_shape:?}; with rank {rank} they must be [{rank}, in] and [out, {rank}]"
                ))
                .into());
            }
            pairs.push((layer, target, a_shape[1], b_shape[0], a, b));
        }
        let build = || -> Result<LoraAdapter> {
            let mut targets: Vec<Target> = Target::ALL.into_iter().filter(|t| pairs.iter().any(|p| p.1 == *t)).collect();
            if targets.is_empty() {
                targets = Target::ALL.to_vec();
            }
            let mut config = LoraConfig::new(rank, alpha, &targets);
            if let Some(fp) = base_fingerprint {
                config.set_base_fingerprint(BaseFingerprint::new(fp));
            }
            let mut adapter = LoraAdapter::new(config)?;
            for (layer, target, d_in, d_out, a, b) in pairs {
                if check_finite {
                    adapter.insert(layer, target, LoraWeights::new(rank, d_in, d_out, a, b)?)?;
                } else {
                    // Insert zeros (always finite), then write the values as given.
                    adapter.insert(layer, target, LoraWeights::zeros(rank, d_in, d_out)?)?;
                    if let Some(w) = adapter.get_mut(layer, target) {
                        w.a_mut().copy_from_slice(&a);
                        w.b_mut().copy_from_slice(&b);
                    }
                }
            }
            Ok(adapter)
        };
        Ok(PyAdapter::new(build()?))
    }

    /// Number of (layer, projection) pairs.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "Adapter(rank={}, alpha={}, targets={:?}, pairs={}, parameters={})",
            self.rank(),
            self.alpha(),
            self.targets(),
            self.inner.len(),
            self.num_parameters()
        )
    }
}
