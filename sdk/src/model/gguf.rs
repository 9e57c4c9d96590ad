//! A GGUF file mapped into memory: metadata parsed by candle's `gguf_file`, tensor data left
//! in the mapping (no copy), every tensor's byte range checked against the file size.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use memmap2::Mmap;

use super::qmatrix::QMatrix;
use crate::{Error, Result};

/// Where one tensor's bytes are, checked to lie inside the file.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// GGML element type.
    pub dtype: GgmlDType,
    /// Shape, row-major, outermost first (GGUF stores it innermost first; candle reverses it).
    pub shape: Vec<usize>,
    /// Absolute offset of the first byte in the file.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// An opened GGUF file.
#[derive(Debug, Clone)]
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, TensorEntry>,
}

impl GgufFile {
    /// Maps `path` and parses its header. A missing file, a file that is not GGUF, a tensor
    /// whose data lies past the end of the file (a truncated download) or overlaps another
    /// tensor's is a typed error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the mapping is read-only. Model files are not expected to be modified while
        // mapped; if another process truncates the file we may fault, as any mmap reader would
        // (llama.cpp makes the same trade to keep resident memory low).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let invalid = |reason: String| Error::InvalidGguf { path: path.clone(), reason };
        if map.len() < 8 || &map[..4] != b"GGUF" {
            return Err(invalid("not a GGUF file (bad magic)".into()));
        }
        // candle's parser checks lengths against the file size, but a parser is the first thing
        // hostile input reaches: contain any panic it might still have.
        let parsed = std::panic::catch_unwind(|| {
            let mut cursor = std::io::Cursor::new(&map[..]);
            Content::read(&mut cursor)
        })
        .map_err(|_| invalid("the header parser panicked (corrupt header)".into()))?
        .map_err(|e| invalid(format!("cannot parse header: {e}")))?;

        let file_len = map.len();
        let mut tensors = HashMap::with_capacity(parsed.tensor_infos.len());
        for (name, info) in &parsed.tensor_infos {
            let shape = info.shape.dims().to_vec();
            let elems = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            let (bs, ts) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
            let elems = elems.ok_or_else(|| invalid(format!("tensor `{name}`: shape overflows")))?;
            if elems % bs != 0 {
                return Err(invalid(format!(
                    "tensor `{name}`: {elems} elements is not a multiple of the {:?} block size {bs}",
                    info.ggml_dtype
                )));
            }
            let len = elems / bs * ts;
            let start = parsed
                .tensor_data_offset
                .checked_add(info.offset)
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| invalid(format!("tensor `{name}`: offset overflows")))?;
            if start.checked_add(len).is_none_or(|end| end > file_len) {
                return Err(invalid(format!(
                    "tensor `{name}` needs bytes {start}..{} but the file has {file_len} (truncated?)",
                    start.saturating_add(len)
                )));
            }
            tensors.insert(name.clone(), TensorEntry { dtype: info.ggml_dtype, shape, offset: start, len });
        }
        // Tensors must not share bytes (writers lay them out one after another): a header
        // pointing many tensors at the same bytes would have them copied or dequantized once
        // per tensor, far more memory than the file holds.
        let mut ranges: Vec<(usize, usize, &str)> =
            tensors.iter().filter(|(_, e)| e.len > 0).map(|(n, e)| (e.offset, e.offset + e.len, n.as_str())).collect();
        ranges.sort_unstable();
        if let Some(w) = ranges.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(invalid(format!("tensors `{}` and `{}` overlap", w[0].2, w[1].2)));
        }
        Ok(Self { path, map: Arc::new(map), metadata: parsed.metadata, tensors })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata key/values.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// All tensors by name.
    pub fn tensors(&self) -> &HashMap<String, TensorEntry> {
        &self.tensors
    }

    /// A metadata value, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.metadata.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(meta_err(key, format!("expected a string, found {:?}", v.value_type()))),
            None => Err(meta_err(key, "missing".into())),
        }
    }

    /// A required unsigned integer (any integer width, non-negative).
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.metadata.get(key).ok_or_else(|| meta_err(key, "missing".into()))?;
        value_to_u64(v)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| meta_err(key, format!("expected a non-negative integer, found {v:?}")))
    }

    /// An optional float (f32 or f64).
    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(v) => Err(meta_err(key, format!("expected a float, found {:?}", v.value_type()))),
        }
    }

    /// An optional boolean.
    pub fn get_bool_opt(&self, key: &str) -> Option<bool> {
        self.metadata.get(key).and_then(|v| v.to_bool().ok())
    }

    /// An optional unsigned integer.
    pub fn get_usize_opt(&self, key: &str) -> Result<Option<usize>> {
        if self.metadata.contains_key(key) { self.get_usize(key).map(Some) } else { Ok(None) }
    }

    /// A required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let v = self.metadata.get(key).ok_or_else(|| meta_err(key, "missing".into()))?;
        let arr = v.to_vec().map_err(|_| meta_err(key, "expected an array".into()))?;
        arr.iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(meta_err(key, "expected an array of strings".into())),
            })
            .collect()
    }

    /// Drops this process's resident pages of the mapped file (`madvise(MADV_DONTNEED)`), e.g.
    /// after the weights were repacked into copies: the mapping stays valid and a later read
    /// faults its page back in from the page cache, so RSS holds only what is used again
    /// (embedding rows looked up, weights read by training).
    pub fn release_pages(&self) {
        #[cfg(unix)]
        {
            // SAFETY: the mapping is read-only (`Mmap`), so no private modification can be
            // lost; DONTNEED on a file-backed mapping only drops page-table entries.
            let _ = unsafe { self.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// The raw bytes of a tensor (inside the mapping).
    pub fn tensor_bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.map[entry.offset..entry.offset + entry.len]
    }

    /// A 2-D weight `[rows, cols]` viewed in place, shape-checked.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
        let entry = self.entry(name)?;
        check_shape(name, &entry.shape, &[rows, cols])?;
        QMatrix::from_mapped(name, entry.dtype, rows, cols, self.map.clone(), entry.offset, entry.len)
    }

    /// A 1-D tensor dequantized to f32, length-checked.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let entry = self.entry(name)?;
        check_shape(name, &entry.shape, &[len])?;
        let m = QMatrix::from_mapped(name, entry.dtype, 1, len, self.map.clone(), entry.offset, entry.len)?;
        let mut out = vec![0f32; len];
        m.dequantize_row(0, &mut out);
        Ok(out)
    }

    /// A tensor entry by name.
    pub fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })
    }
}

fn check_shape(name: &str, actual: &[usize], expected: &[usize]) -> Result<()> {
    if actual != expected {
        return Err(Error::TensorShape {
            name: name.to_string(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        });
    }
    Ok(())
}

fn meta_err(key: &str, reason: String) -> Error {
    Error::Metadata { key: key.to_string(), reason }
}

pub(crate) fn value_to_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x as u64),
        Value::U16(x) => Some(x as u64),
        Value::U32(x) => Some(x as u64),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}
