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
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

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
        let mut w = Vec::new();
        w.extend_from_slice(b"GGUF");
        w.extend_from_slice(&3u32.to_le_bytes());
        w.extend_from_slice(&(self.per_layer.len() as u64).to_le_bytes());
        w.extend_from_slice(&4u64.to_le_bytes());
        let put_str = |w: &mut Vec<u8>, s: &str| {
            w.extend_from_slice(&(s.len() as u64).to_le_bytes());
            w.extend_from_slice(s.as_bytes());
        };
        let kv_str = |w: &mut Vec<u8>, k: &str, v: &str| {
            put_str(w, k);
            w.extend_from_slice(&GGUF_STRING.to_le_bytes());
            put_str(w, v);
        };
        kv_str(&mut w, "general.architecture", "controlvector");
        kv_str(&mut w, "controlvector.model_hint", model_hint);
        put_str(&mut w, "controlvector.layer_count");
        w.extend_from_slice(&GGUF_U32.to_le_bytes());
        w.extend_from_slice(&(self.per_layer.len() as u32).to_le_bytes());
        kv_str(&mut w, "tailor.steering.meta", &meta);
        let tensor_bytes = (self.d_model * 4).next_multiple_of(GGUF_ALIGN) as u64;
        for (i, l) in self.per_layer.keys().enumerate() {
            put_str(&mut w, &direction_name(*l));
            w.extend_from_slice(&1u32.to_le_bytes());
            w.extend_from_slice(&(self.d_model as u64).to_le_bytes());
            w.extend_from_slice(&GGML_F32.to_le_bytes());
            w.extend_from_slice(&(i as u64 * tensor_bytes).to_le_bytes());
        }
        w.resize(w.len().next_multiple_of(GGUF_ALIGN), 0);
        for v in self.per_layer.values() {
            let start = w.len();
            w.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            w.resize(start + tensor_bytes as usize, 0);
        }
        Ok(w)
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

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` through a temporary file in the same directory, fsynced, renamed
/// over `path`, then the directory fsynced (on Unix).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::invalid(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}-{}", name.to_string_lossy(), std::process::id(), TMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
    let res = (|| {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        #[cfg(unix)]
        File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(&dir, e))?;
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

// -------------------------------------------------------------------- a minimal GGUF reader

const GGUF_U32: u32 = 4;
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;
const GGML_F32: u32 = 0;
const GGUF_ALIGN: usize = 32;

/// A metadata value, as far as a control vector needs it.
enum Val {
    Str(String),
    Uint(u64),
    Other,
}

struct ParsedGguf {
    kv: BTreeMap<String, Val>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<f32>)>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "length overflows".to_owned())?;
        let end = self.pos.checked_add(n).filter(|e| *e <= self.b.len()).ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.u64()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".to_owned())
    }
    fn value(&mut self, ty: u32, depth: u32) -> std::result::Result<Val, String> {
        Ok(match ty {
            0 | 1 | 7 => Val::Uint(self.take(1)?[0] as u64).not_for_signed(ty),
            2 | 3 => Val::Uint(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as u64).not_for_signed(ty),
            4 => Val::Uint(self.u32()? as u64),
            5 | 6 => {
                self.take(4)?;
                Val::Other
            }
            10 => Val::Uint(self.u64()?),
            11 | 12 => {
                self.take(8)?;
                Val::Other
            }
            GGUF_STRING => Val::Str(self.string()?),
            GGUF_ARRAY => {
                if depth > 2 {
                    return Err("arrays nested too deep".into());
                }
                let ety = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte: a count past the bytes left is a lie.
                if n > (self.b.len() - self.pos) as u64 {
                    return Err(format!("array of {n} elements exceeds the file"));
                }
                for _ in 0..n {
                    self.value(ety, depth + 1)?;
                }
                Val::Other
            }
            t => return Err(format!("unknown metadata value type {t}")),
        })
    }
}

impl Val {
    fn not_for_signed(self, ty: u32) -> Val {
        if matches!(ty, 1 | 3) {
            Val::Other
        } else {
            self
        }
    }
}

fn parse_gguf(b: &[u8]) -> std::result::Result<ParsedGguf, String> {
    let mut c = Cursor { b, pos: 0 };
    if c.take(4)? != b"GGUF" {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("unsupported GGUF version {version}"));
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    // A tensor info takes > 24 bytes and a key-value pair > 12: bound the counts by the file.
    if n_tensors > (b.len() / 24) as u64 || n_kv > (b.len() / 12) as u64 {
        return Err(format!("{n_tensors} tensors / {n_kv} keys cannot fit in {} bytes", b.len()));
    }
    let mut kv = BTreeMap::new();
    for _ in 0..n_kv {
        let k = c.string()?;
        let ty = c.u32()?;
        let v = c.value(ty, 0)?;
        if kv.insert(k.clone(), v).is_some() {
            return Err(format!("duplicate key `{k}`"));
        }
    }
    let align = match kv.get("general.alignment") {
        None => GGUF_ALIGN as u64,
        Some(Val::Uint(a)) if *a > 0 && a.is_power_of_two() && *a <= 1 << 16 => *a,
        Some(_) => return Err("general.alignment is not a power of two".into()),
    };
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string()?;
        let n_dims = c.u32()?;
        if n_dims > 4 {
            return Err(format!("tensor `{name}` has {n_dims} dimensions"));
        }
        let dims = (0..n_dims).map(|_| c.u64()).collect::<std::result::Result<Vec<u64>, _>>()?;
        let ty = c.u32()?;
        let off = c.u64()?;
        infos.push((name, dims, ty, off));
    }
    let data_start = (c.pos as u64).next_multiple_of(align);
    let mut tensors = Vec::new();
    for (name, dims, ty, off) in infos {
        if ty != GGML_F32 {
            return Err(format!("tensor `{name}` has ggml type {ty}, a control vector is F32"));
        }
        let n = dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d)).filter(|n| *n as usize <= MAX_DIM).ok_or_else(|| format!("tensor `{name}` is too large"))?;
        if off % align != 0 {
            return Err(format!("tensor `{name}` is not aligned"));
        }
        let start = data_start.checked_add(off).ok_or("offset overflows")?;
        let end = start.checked_add(n * 4).filter(|e| *e <= b.len() as u64).ok_or_else(|| format!("tensor `{name}` runs past the end of the file"))?;
        let data = f32s(&b[start as usize..end as usize]);
        tensors.push((name, dims, ty, data));
    }
    Ok(ParsedGguf { kv, tensors })
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
