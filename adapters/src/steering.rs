//! Steering vectors (activation addition, "control vectors"): one direction per layer that is
//! added, times a scale, to the residual stream after that layer.
//!
//! Files:
//! - **Tailor's own**: a safetensors file with one 1-D f32 tensor `direction.{layer}` per
//!   layer (`[d_model]`, layers numbered from 0 as the model's blocks are) plus a JSON sidecar
//!   (`<file>.json`, i.e. [`sidecar_path`]) holding the format version, `d_model`, the layer
//!   list and [`SteeringMeta`]. Both are written atomically (temporary file, fsync, rename,
//!   fsync of the directory); loading checks that they agree.
//! - **llama.cpp / repeng control-vector GGUF** ([`SteeringVector::import_gguf`],
//!   [`SteeringVector::export_gguf`]): `general.architecture = "controlvector"`,
//!   `controlvector.model_hint` (string), `controlvector.layer_count` (u32), one F32 tensor
//!   `direction.{N}` per layer. llama.cpp adds `direction.N` to the output of block `N`
//!   counted from 0 (its loader stores `direction.N` at slot `N - 1` of a buffer whose slot 0
//!   belongs to block 1, and rejects `direction.0`: "invalid (zero) direction tensor layer
//!   index"), and repeng writes its own 0-based block index. So `direction.N` is our layer `N`
//!   unchanged, and layer 0 (which llama.cpp cannot express) is refused on export and on
//!   import. Our metadata travels in an extra key `tailor.steering.meta` (JSON) that
//!   llama.cpp ignores.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::fsio::write_atomic;
use crate::gguf::{f32s, parse_gguf, GgufWriter, ParsedGguf, Val};

use crate::error::{Error, Result};

/// Version of the JSON sidecar written by this build.
pub const STEERING_FORMAT_VERSION: u32 = 1;

/// Upper bound on `d_model` and on the layer index accepted from files (hostile input must not
/// make us allocate without bound).
const MAX_DIM: usize = 1 << 20;
const MAX_LAYER: usize = 4096;

/// Where a steering vector came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SteeringMeta {
    /// How it was computed (`"mean_diff"`, `"pca"`, `"gguf_import"`, ...).
    pub method: String,
    /// A human-readable description of its source (e.g. "6 sentiment pairs").
    pub source: String,
    /// Fingerprint of the base model it was computed on, when known.
    pub base_fingerprint: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
}

impl SteeringMeta {
    /// Metadata stamped with the current time.
    pub fn now(method: impl Into<String>, source: impl Into<String>, base_fingerprint: Option<String>) -> Self {
        let created_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Self { method: method.into(), source: source.into(), base_fingerprint, created_at }
    }
}

/// One direction per layer, each of length `d_model`; every direction is finite.
#[derive(Debug, Clone, PartialEq)]
pub struct SteeringVector {
    per_layer: BTreeMap<usize, Vec<f32>>,
    d_model: usize,
    meta: SteeringMeta,
}

/// The JSON sidecar of Tailor's steering file.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Sidecar {
    format_version: u32,
    d_model: usize,
    layers: Vec<usize>,
    meta: SteeringMeta,
}

/// The sidecar of a steering safetensors file: `path` with `.json` appended.
pub fn sidecar_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// The tensor name of `layer`'s direction (`direction.{layer}`).
pub fn direction_name(layer: usize) -> String {
    format!("direction.{layer}")
}

/// Parses `direction.{layer}` (decimal digits only, no sign, no leading `+`).
pub fn parse_direction_name(name: &str) -> Option<usize> {
    let n = name.strip_prefix("direction.")?;
    if n.is_empty() || n.len() > 9 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

impl SteeringVector {
    /// An empty vector (no layer) for a model of width `d_model`.
    pub fn new(d_model: usize, meta: SteeringMeta) -> Result<Self> {
        if d_model == 0 || d_model > MAX_DIM {
            return Err(Error::invalid(format!("d_model {d_model} is out of range")));
        }
        Ok(Self { per_layer: BTreeMap::new(), d_model, meta })
    }

    /// Sets `layer`'s direction (replacing any). It must have `d_model` finite values.
    pub fn insert(&mut self, layer: usize, direction: Vec<f32>) -> Result<()> {
        let name = direction_name(layer);
        if direction.len() != self.d_model {
            return Err(Error::Shape { name, expected: vec![self.d_model], actual: vec![direction.len()] });
        }
        if direction.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite { name });
        }
        self.per_layer.insert(layer, direction);
        Ok(())
    }

    /// Builder form of [`SteeringVector::insert`].
    pub fn with(mut self, layer: usize, direction: Vec<f32>) -> Result<Self> {
        self.insert(layer, direction)?;
        Ok(self)
    }

    /// Width of the residual stream this vector is for.
    pub fn d_model(&self) -> usize {
        self.d_model
    }

    /// The direction of `layer`, if it has one.
    pub fn layer(&self, layer: usize) -> Option<&[f32]> {
        self.per_layer.get(&layer).map(Vec::as_slice)
    }

    /// All (layer, direction) pairs in layer order.
    pub fn layers(&self) -> impl Iterator<Item = (usize, &[f32])> {
        self.per_layer.iter().map(|(l, v)| (*l, v.as_slice()))
    }

    /// Number of layers with a direction.
    pub fn len(&self) -> usize {
        self.per_layer.len()
    }

    /// Whether no layer has a direction.
    pub fn is_empty(&self) -> bool {
        self.per_layer.is_empty()
    }

    /// Removes `layer`'s direction, returning it.
    pub fn remove(&mut self, layer: usize) -> Option<Vec<f32>> {
        self.per_layer.remove(&layer)
    }

    /// Where it came from.
    pub fn meta(&self) -> &SteeringMeta {
        &self.meta
    }

    /// Mutable access to the metadata.
    pub fn meta_mut(&mut self) -> &mut SteeringMeta {
        &mut self.meta
    }

    /// Fails with [`Error::BaseMismatch`] when the vector records a base fingerprint other
    /// than `fingerprint` (a vector without one is accepted).
    pub fn check_base(&self, fingerprint: &str, d_model: usize) -> Result<()> {
        if d_model != self.d_model {
            return Err(Error::BaseMismatch { expected: format!("d_model {}", self.d_model), actual: format!("d_model {d_model}") });
        }
        match &self.meta.base_fingerprint {
            Some(f) if f != fingerprint => Err(Error::BaseMismatch { expected: f.clone(), actual: fingerprint.to_owned() }),
            _ => Ok(()),
        }
    }

    // ---------------------------------------------------------------- safetensors + JSON

    /// Saves as safetensors at `path` plus the JSON sidecar [`sidecar_path`]`(path)`, each
    /// written atomically (the sidecar first; [`SteeringVector::load`] rejects a pair that
    /// disagrees, so a crash between the two renames is detected, never misread).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes: Vec<(String, Vec<u8>)> =
            self.per_layer.iter().map(|(l, v)| (direction_name(*l), v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
        let views = bytes
            .iter()
            .map(|(n, b)| TensorView::new(Dtype::F32, vec![self.d_model], b).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidTensors { path: path.to_owned(), reason: e.to_string() })?;
        let mut md = std::collections::HashMap::new();
        md.insert("format".to_owned(), "tailor-steering".to_owned());
        md.insert("d_model".to_owned(), self.d_model.to_string());
        let st = safetensors::serialize(views, Some(md)).map_err(|e| Error::InvalidTensors { path: path.to_owned(), reason: e.to_string() })?;
        let sidecar = Sidecar {
            format_version: STEERING_FORMAT_VERSION,
            d_model: self.d_model,
            layers: self.per_layer.keys().copied().collect(),
            meta: self.meta.clone(),
        };
        let json = serde_json::to_vec_pretty(&sidecar).map_err(|e| Error::invalid(e.to_string()))?;
        let side = sidecar_path(path);
        write_atomic(&side, &json)?;
        write_atomic(path, &st)
    }

    /// Loads what [`SteeringVector::save`] wrote, checking every tensor (names, dtype F32,
    /// shape `[d_model]`, finite values) and that the sidecar agrees with the tensors.
    pub fn load(path: &Path) -> Result<Self> {
        let side = sidecar_path(path);
        let json = fs::read(&side).map_err(|e| Error::io(&side, e))?;
        let sc: Sidecar = serde_json::from_slice(&json).map_err(|e| Error::config(&side, e.to_string()))?;
        if sc.format_version > STEERING_FORMAT_VERSION {
            return Err(Error::unsupported(format!("steering format version {}", sc.format_version)));
        }
        if sc.d_model == 0 || sc.d_model > MAX_DIM {
            return Err(Error::config(&side, format!("d_model {} is out of range", sc.d_model)));
        }
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |reason: String| Error::InvalidTensors { path: path.to_owned(), reason };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut v = SteeringVector::new(sc.d_model, sc.meta)?;
        for (name, t) in st.tensors() {
            let layer = parse_direction_name(&name).filter(|l| *l <= MAX_LAYER).ok_or_else(|| bad(format!("unexpected tensor `{name}`")))?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!("tensor `{name}` is {:?}, expected F32", t.dtype())));
            }
            if t.shape() != [sc.d_model] {
                return Err(Error::Shape { name, expected: vec![sc.d_model], actual: t.shape().to_vec() });
            }
            v.insert(layer, f32s(t.data()))?;
        }
        let layers: Vec<usize> = v.per_layer.keys().copied().collect();
        if layers != sc.layers {
            return Err(Error::config(&side, format!("sidecar lists layers {:?}, the tensors hold {layers:?}", sc.layers)));
        }
        Ok(v)
    }

    // ---------------------------------------------------------------- control-vector GGUF

    /// Serializes as a llama.cpp / repeng control-vector GGUF (see the module docs for the
    /// layer numbering). `model_hint` is the architecture the vector is for (e.g. `"llama"`).
    /// Layer 0 cannot be expressed in this format: [`Error::Unsupported`].
    pub fn to_gguf_bytes(&self, model_hint: &str) -> Result<Vec<u8>> {
        if self.per_layer.contains_key(&0) {
            return Err(Error::unsupported("a control-vector GGUF cannot hold layer 0 (llama.cpp rejects `direction.0`)"));
        }
        let meta = serde_json::to_string(&self.meta).map_err(|e| Error::invalid(e.to_string()))?;
        let mut w = GgufWriter::new();
        w.str("general.architecture", "controlvector");
        w.str("controlvector.model_hint", model_hint);
        w.u32("controlvector.layer_count", self.per_layer.len() as u32);
        w.str("tailor.steering.meta", &meta);
        for (l, v) in &self.per_layer {
            w.tensor(&direction_name(*l), &[self.d_model as u64], v);
        }
        Ok(w.finish())
    }

    /// Writes [`SteeringVector::to_gguf_bytes`] to `path` atomically.
    pub fn export_gguf(&self, path: &Path, model_hint: &str) -> Result<()> {
        write_atomic(path, &self.to_gguf_bytes(model_hint)?)
    }

    /// Reads a control-vector GGUF (llama.cpp's or repeng's). Every length, count, offset and
    /// type is checked against the file: a hostile file is an error, never a panic or an
    /// unbounded allocation. Returns the vector and the file's `controlvector.model_hint`.
    pub fn from_gguf_bytes(bytes: &[u8], path: &Path) -> Result<(Self, Option<String>)> {
        parse_gguf(bytes).map_err(|reason| Error::InvalidTensors { path: path.to_owned(), reason })?.into_vector(path)
    }

    /// Reads the control-vector GGUF at `path` (see [`SteeringVector::from_gguf_bytes`]).
    pub fn import_gguf(path: &Path) -> Result<(Self, Option<String>)> {
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_gguf_bytes(&bytes, path)
    }
}

impl ParsedGguf {
    fn into_vector(self, path: &Path) -> Result<(SteeringVector, Option<String>)> {
        let ParsedGguf { kv, tensors } = self;
        let corrupt = |reason: String| Error::InvalidTensors { path: path.to_owned(), reason };
        match kv.get("general.architecture") {
            Some(Val::Str(a)) if a == "controlvector" => {}
            Some(Val::Str(a)) => return Err(Error::unsupported(format!("GGUF architecture `{a}` is not a control vector"))),
            _ => return Err(corrupt("general.architecture is missing".into())),
        }
        let hint = match kv.get("controlvector.model_hint") {
            Some(Val::Str(h)) => Some(h.clone()),
            _ => None,
        };
        let meta = match kv.get("tailor.steering.meta") {
            Some(Val::Str(s)) => serde_json::from_str(s).map_err(|e| corrupt(format!("tailor.steering.meta: {e}")))?,
            _ => SteeringMeta { method: "gguf_import".into(), source: hint.clone().map(|h| format!("control vector for {h}")).unwrap_or_default(), ..Default::default() },
        };
        let first = tensors.first().ok_or_else(|| corrupt("no direction tensors".into()))?;
        let d_model = first.3.len();
        let mut v = SteeringVector::new(d_model, meta).map_err(|_| corrupt(format!("d_model {d_model} is out of range")))?;
        for (name, dims, _, data) in tensors {
            let layer = parse_direction_name(&name).filter(|l| *l <= MAX_LAYER).ok_or_else(|| corrupt(format!("unexpected tensor `{name}`")))?;
            if layer == 0 {
                return Err(corrupt("`direction.0`: control-vector layers start at 1 (llama.cpp rejects 0)".into()));
            }
            if v.per_layer.contains_key(&layer) {
                return Err(corrupt(format!("duplicate tensor `{name}`")));
            }
            if data.len() != d_model || dims.iter().filter(|d| **d != 1).count() > 1 {
                return Err(Error::Shape { name, expected: vec![d_model], actual: dims.iter().map(|d| *d as usize).collect() });
            }
            v.insert(layer, data)?;
        }
        if let Some(Val::Uint(n)) = kv.get("controlvector.layer_count") {
            // repeng writes the number of directions; llama.cpp does not read it. Accept
            // either that or a model's layer count (>= the highest layer).
            let top = v.per_layer.keys().next_back().copied().unwrap_or(0) as u64;
            if *n != v.len() as u64 && *n < top {
                return Err(corrupt(format!("controlvector.layer_count = {n} contradicts the {} directions up to layer {top}", v.len())));
            }
        }
        Ok((v, hint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SteeringVector {
        SteeringVector::new(3, SteeringMeta::now("mean_diff", "test", Some("sha256:ab".into())))
            .unwrap()
            .with(1, vec![1.0, -2.0, 0.5])
            .unwrap()
            .with(4, vec![0.0, 3.25, -1e-7])
            .unwrap()
    }

    #[test]
    fn gguf_round_trip_and_hostile_bytes() {
        let v = sample();
        let bytes = v.to_gguf_bytes("llama").unwrap();
        let (back, hint) = SteeringVector::from_gguf_bytes(&bytes, Path::new("x")).unwrap();
        assert_eq!(back, v);
        assert_eq!(hint.as_deref(), Some("llama"));
        // Every truncation into the data is an error, never a panic (the last 20 bytes are
        // the last tensor's alignment padding: 3 floats padded to 32 bytes).
        for n in 0..bytes.len() - 20 {
            assert!(SteeringVector::from_gguf_bytes(&bytes[..n], Path::new("x")).is_err(), "truncated at {n}");
        }
        // Flipping any single byte never panics.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = SteeringVector::from_gguf_bytes(&b, Path::new("x"));
        }
    }

    #[test]
    fn insert_checks_shape_and_finiteness() {
        let mut v = SteeringVector::new(2, SteeringMeta::default()).unwrap();
        assert!(matches!(v.insert(0, vec![1.0]), Err(Error::Shape { .. })));
        assert!(matches!(v.insert(0, vec![1.0, f32::NAN]), Err(Error::NonFinite { .. })));
        assert!(SteeringVector::new(0, SteeringMeta::default()).is_err());
        assert_eq!(parse_direction_name("direction.12"), Some(12));
        for bad in ["direction.", "direction.-1", "direction.+1", "dir.1", "direction.1a"] {
            assert_eq!(parse_direction_name(bad), None);
        }
    }
}
