//! JSON values to and from Python objects: the Rust side's serde records (memories, adapter
//! versions, training status, reports) reach Python as plain dicts and lists, and keyword
//! options reach the Rust side's serde configs.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::Value;

use crate::errors::{Error, Result};

/// `v` as a Python object (`dict`, `list`, `str`, `int`, `float`, `bool`, `None`).
pub fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for x in items {
                list.append(to_py(py, x)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, x) in map {
                dict.set_item(k, to_py(py, x)?)?;
            }
            dict.into_any()
        }
    })
}

/// A serde record as a Python object.
pub fn record_to_py<'py, T: serde::Serialize>(py: Python<'py>, record: &T) -> PyResult<Bound<'py, PyAny>> {
    let v = serde_json::to_value(record).map_err(Error::from)?;
    to_py(py, &v)
}

/// A Python object as JSON: `None`, `bool`, `int`, `float` (finite), `str`, lists and tuples,
/// dicts with `str` keys; anything else is an [`Error::invalid`] naming `what`.
pub fn from_py(obj: &Bound<'_, PyAny>, what: &str) -> Result<Value> {
    let bad = |m: String| Error::invalid(format!("{what}: {m}"));
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        return obj.extract::<u64>().map(Value::from).map_err(|_| bad("integer out of range".into()));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let x = f.value();
        return serde_json::Number::from_f64(x).map(Value::Number).ok_or_else(|| bad(format!("{x} is not a finite number")));
    }
    if obj.is_instance_of::<PyString>() {
        return obj.extract::<String>().map(Value::String).map_err(|e| bad(e.to_string()));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l.iter().map(|x| from_py(&x, what)).collect::<Result<Vec<_>>>().map(Value::Array);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return t.iter().map(|x| from_py(&x, what)).collect::<Result<Vec<_>>>().map(Value::Array);
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut map = serde_json::Map::new();
        for (k, x) in d.iter() {
            let k: String = k.extract().map_err(|_| bad("dict keys must be str".into()))?;
            map.insert(k, from_py(&x, what)?);
        }
        return Ok(Value::Object(map));
    }
    let ty = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
    Err(bad(format!("a value of type {ty} (use None, bool, int, float, str, list or dict)")))
}
