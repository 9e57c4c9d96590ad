//! A minimal GGUF writer and a bounds-checked reader for the small F32-only files adapters
//! exchange with llama.cpp (control vectors, LoRA adapters).

use std::collections::BTreeMap;

/// The most elements one tensor may have (1 GiB of f32).
const MAX_ELEMS: u64 = 1 << 28;

/// Builds a GGUF v3 file: metadata, then F32 tensors aligned to 32 bytes.
pub(crate) struct GgufWriter {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<u64>, Vec<u8>)>,
}

impl GgufWriter {
    pub(crate) fn new() -> Self {
        Self { kv: Vec::new(), n_kv: 0, tensors: Vec::new() }
    }

    fn key(&mut self, k: &str, ty: u32) {
        put_str(&mut self.kv, k);
        self.kv.extend_from_slice(&ty.to_le_bytes());
        self.n_kv += 1;
    }

    /// A string value.
    pub(crate) fn str(&mut self, k: &str, v: &str) {
        self.key(k, GGUF_STRING);
        put_str(&mut self.kv, v);
    }

    /// A u32 value.
    pub(crate) fn u32(&mut self, k: &str, v: u32) {
        self.key(k, GGUF_U32);
        self.kv.extend_from_slice(&v.to_le_bytes());
    }

    /// An f32 value.
    pub(crate) fn f32(&mut self, k: &str, v: f32) {
        self.key(k, GGUF_F32);
        self.kv.extend_from_slice(&v.to_le_bytes());
    }

    /// An F32 tensor; `ne` in ggml order (`ne[0]`, the contiguous axis, first).
    pub(crate) fn tensor(&mut self, name: &str, ne: &[u64], data: &[f32]) {
        debug_assert_eq!(ne.iter().product::<u64>() as usize, data.len());
        self.tensors.push((name.to_owned(), ne.to_vec(), data.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }

    /// The file's bytes.
    pub(crate) fn finish(self) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend_from_slice(b"GGUF");
        w.extend_from_slice(&3u32.to_le_bytes());
        w.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        w.extend_from_slice(&self.n_kv.to_le_bytes());
        w.extend_from_slice(&self.kv);
        let mut off = 0u64;
        for (name, ne, data) in &self.tensors {
            put_str(&mut w, name);
            w.extend_from_slice(&(ne.len() as u32).to_le_bytes());
            for d in ne {
                w.extend_from_slice(&d.to_le_bytes());
            }
            w.extend_from_slice(&GGML_F32.to_le_bytes());
            w.extend_from_slice(&off.to_le_bytes());
            off += (data.len() as u64).next_multiple_of(GGUF_ALIGN as u64);
        }
        w.resize(w.len().next_multiple_of(GGUF_ALIGN), 0);
        for (_, _, data) in &self.tensors {
            let start = w.len();
            w.extend_from_slice(data);
            w.resize(start + data.len().next_multiple_of(GGUF_ALIGN), 0);
        }
        w
    }
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    w.extend_from_slice(&(s.len() as u64).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

pub(crate) fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

// -------------------------------------------------------------------- a minimal GGUF reader

const GGUF_U32: u32 = 4;
const GGUF_F32: u32 = 6;
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;
const GGML_F32: u32 = 0;
const GGUF_ALIGN: usize = 32;

/// A metadata value, as far as adapters need it.
pub(crate) enum Val {
    Str(String),
    Uint(u64),
    Float(f64),
    Other,
}

pub(crate) struct ParsedGguf {
    pub(crate) kv: BTreeMap<String, Val>,
    /// Name, dimensions (ggml order: `ne[0]` first), ggml type, values.
    pub(crate) tensors: Vec<(String, Vec<u64>, u32, Vec<f32>)>,
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
            5 => {
                self.take(4)?;
                Val::Other
            }
            6 => Val::Float(f32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as f64),
            10 => Val::Uint(self.u64()?),
            11 => {
                self.take(8)?;
                Val::Other
            }
            12 => Val::Float(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
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

pub(crate) fn parse_gguf(b: &[u8]) -> std::result::Result<ParsedGguf, String> {
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
    // Each tensor is copied out: together they can hold no more bytes than the file, or a
    // header pointing many tensors at the same bytes would multiply them.
    let mut copied = 0u64;
    for (name, dims, ty, off) in infos {
        if ty != GGML_F32 {
            return Err(format!("tensor `{name}` has ggml type {ty}, only F32 tensors are read"));
        }
        let n = dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d)).filter(|n| *n <= MAX_ELEMS).ok_or_else(|| format!("tensor `{name}` is too large"))?;
        if off % align != 0 {
            return Err(format!("tensor `{name}` is not aligned"));
        }
        let start = data_start.checked_add(off).ok_or("offset overflows")?;
        let end = start.checked_add(n * 4).filter(|e| *e <= b.len() as u64).ok_or_else(|| format!("tensor `{name}` runs past the end of the file"))?;
        copied += n * 4;
        if copied > b.len() as u64 {
            return Err(format!("tensor `{name}` overlaps others (the tensors hold more bytes than the file)"));
        }
        let data = f32s(&b[start as usize..end as usize]);
        tensors.push((name, dims, ty, data));
    }
    Ok(ParsedGguf { kv, tensors })
}

