//! llama.cpp's GGUF LoRA layout, as `convert_lora_to_gguf.py` writes it and `llama-cli
//! --lora` reads it: `general.architecture` = the base's, `general.type = adapter`,
//! `adapter.type = lora`, `adapter.lora.alpha` (f32), and F32 tensors
//! `blk.{N}.attn_q.weight.lora_a` (ggml `ne = [in, r]`, i.e. PEFT's `[r, in]`) and
//! `blk.{N}.attn_q.weight.lora_b` (`ne = [r, out]`, PEFT's `[out, r]`), with the query and key
//! `lora_b` rows in the GGUF base's order ([`QkLayout`]).
//!
//! llama.cpp scales by `alpha / r`; an rsLoRA adapter (`alpha / sqrt(r)`) is written with the
//! alpha that gives the same scale. The full PEFT config travels in `tailor.lora.config`, so
//! [`import`] restores it exactly; a file from another tool gets a config rebuilt from what it
//! holds.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::LoraConfig;
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::gguf::{parse_gguf, GgufWriter, Val};
use crate::layout::QkLayout;
use crate::lora::{LoraAdapter, LoraWeights};
use crate::target::Target;

/// The name of `lora_a` / `lora_b` of `target` in `layer`, e.g. `blk.3.attn_q.weight.lora_a`.
pub fn tensor_name(layer: usize, target: Target, b: bool) -> String {
    format!("blk.{layer}.{}.weight.lora_{}", target.gguf_name(), if b { "b" } else { "a" })
}

fn parse_name(name: &str) -> Option<(usize, Target, bool)> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (target, factor) = rest.split_once(".weight.lora_")?;
    let b = match factor {
        "a" => false,
        "b" => true,
        _ => return None,
    };
    Some((layer.parse().ok()?, Target::from_gguf_name(target)?, b))
}

/// The adapter as a llama.cpp LoRA GGUF for a base of architecture `arch` (e.g. `"llama"`)
/// whose q/k rows are ordered as `layout` says.
pub fn to_gguf_bytes(adapter: &LoraAdapter, arch: &str, layout: QkLayout) -> Result<Vec<u8>> {
    let config = adapter.config();
    let json = serde_json::to_string(config).map_err(|e| Error::invalid(e.to_string()))?;
    let mut w = GgufWriter::new();
    w.str("general.architecture", arch);
    w.str("general.type", "adapter");
    w.str("adapter.type", "lora");
    w.f32("adapter.lora.alpha", adapter.scale() * config.r as f32);
    w.str("tailor.lora.config", &json);
    for ((layer, t), lw) in adapter.iter() {
        let (r, i, o) = (lw.r(), lw.in_features(), lw.out_features());
        w.tensor(&tensor_name(layer, t, false), &[i as u64, r as u64], lw.a());
        w.tensor(&tensor_name(layer, t, true), &[r as u64, o as u64], &layout.hf_to_file(t, lw.b(), o, r));
    }
    Ok(w.finish())
}

/// Writes [`to_gguf_bytes`] to `path` atomically (temporary file, fsync, rename).
pub fn export(adapter: &LoraAdapter, path: &Path, arch: &str, layout: QkLayout) -> Result<()> {
    write_atomic(path, &to_gguf_bytes(adapter, arch, layout)?)
}

/// Reads a llama.cpp LoRA GGUF (ours or `convert_lora_to_gguf.py`'s), mapping q/k rows back
/// from `layout`. Every length and offset is checked: a hostile file is an error.
pub fn from_gguf_bytes(bytes: &[u8], path: &Path, layout: QkLayout) -> Result<LoraAdapter> {
    let corrupt = |reason: String| Error::InvalidTensors { path: path.to_owned(), reason };
    let parsed = parse_gguf(bytes).map_err(corrupt)?;
    let is = |k: &str, v: &str| matches!(parsed.kv.get(k), Some(Val::Str(s)) if s == v);
    if !is("general.type", "adapter") || !is("adapter.type", "lora") {
        return Err(Error::unsupported(format!("{} is not a LoRA adapter GGUF", path.display())));
    }
    type Pair = (Option<(Vec<u64>, Vec<f32>)>, Option<(Vec<u64>, Vec<f32>)>);
    let mut pairs: BTreeMap<(usize, Target), Pair> = BTreeMap::new();
    for (name, dims, _, data) in parsed.tensors {
        let (layer, t, b) = parse_name(&name).ok_or_else(|| corrupt(format!("unexpected tensor `{name}`")))?;
        let e = pairs.entry((layer, t)).or_default();
        let slot = if b { &mut e.1 } else { &mut e.0 };
        if slot.replace((dims, data)).is_some() {
            return Err(corrupt(format!("duplicate tensor `{name}`")));
        }
    }
    let mut r = None;
    let mut parts = Vec::new();
    for ((layer, t), (a, b)) in pairs {
        let missing = |b| Error::MissingTensor { name: tensor_name(layer, t, b) };
        let (a_dims, a) = a.ok_or_else(|| missing(false))?;
        let (b_dims, b) = b.ok_or_else(|| missing(true))?;
        let [i, ra] = a_dims[..] else { return Err(Error::Shape { name: tensor_name(layer, t, false), expected: vec![0, 0], actual: a_dims.iter().map(|d| *d as usize).collect() }) };
        let [rb, o] = b_dims[..] else { return Err(Error::Shape { name: tensor_name(layer, t, true), expected: vec![ra as usize, 0], actual: b_dims.iter().map(|d| *d as usize).collect() }) };
        if ra != rb || *r.get_or_insert(ra) != ra {
            return Err(Error::Shape { name: tensor_name(layer, t, true), expected: vec![ra as usize, o as usize], actual: vec![rb as usize, o as usize] });
        }
        let (i, o, rank) = (i as usize, o as usize, ra as usize);
        // An empty tensor can claim any width: refuse it before the row permutation is sized
        // by that width.
        if rank == 0 || i == 0 || o == 0 {
            return Err(Error::Shape { name: tensor_name(layer, t, true), expected: vec![o.max(1), rank.max(1)], actual: vec![o, rank] });
        }
        let b = layout.file_to_hf(t, &b, o, rank);
        parts.push((layer, t, LoraWeights::new(rank, i, o, a, b)?));
    }
    let rank = r.ok_or_else(|| corrupt("no LoRA tensors".into()))? as usize;
    let config = match parsed.kv.get("tailor.lora.config") {
        Some(Val::Str(s)) => LoraConfig::from_json(s, path)?,
        _ => {
            let alpha = match parsed.kv.get("adapter.lora.alpha") {
                Some(Val::Float(a)) if *a != 0.0 => *a,
                Some(Val::Uint(a)) if *a != 0 => *a as f64,
                // llama.cpp: no alpha means scale 1.
                _ => rank as f64,
            };
            let mut targets: Vec<Target> = parts.iter().map(|(_, t, _)| *t).collect();
            targets.sort();
            targets.dedup();
            LoraConfig::new(rank, alpha, &targets)
        }
    };
    if config.r != rank {
        return Err(corrupt(format!("tailor.lora.config says r = {} but the tensors have rank {rank}", config.r)));
    }
    let mut adapter = LoraAdapter::new(config)?;
    for (layer, t, w) in parts {
        adapter.insert(layer, t, w)?;
    }
    Ok(adapter)
}

/// Reads the llama.cpp LoRA GGUF at `path` (see [`from_gguf_bytes`]).
pub fn import(path: &Path, layout: QkLayout) -> Result<LoraAdapter> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_gguf_bytes(&bytes, path, layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rslora: bool) -> LoraAdapter {
        let mut c = LoraConfig::new(2, 8.0, &[Target::Q, Target::Down]);
        c.use_rslora = rslora;
        let mut a = LoraAdapter::new(c).unwrap();
        let vals = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<_>>();
        a.insert(0, Target::Q, LoraWeights::new(2, 6, 8, vals(12, 0.3), vals(16, 0.7)).unwrap()).unwrap();
        a.insert(0, Target::Down, LoraWeights::new(2, 5, 6, vals(10, 0.2), vals(12, 0.9)).unwrap()).unwrap();
        a
    }

    #[test]
    fn round_trip_with_permuted_rows_and_llama_cpp_scale() {
        let layout = QkLayout::Interleaved { n_heads: 2, n_kv_heads: 1 };
        for rs in [false, true] {
            let a = sample(rs);
            let bytes = to_gguf_bytes(&a, "llama", layout).unwrap();
            let parsed = parse_gguf(&bytes).unwrap();
            let Some(Val::Float(alpha)) = parsed.kv.get("adapter.lora.alpha") else { panic!("alpha") };
            assert!((*alpha as f32 / 2.0 - a.scale()).abs() < 1e-6, "llama.cpp's alpha / r is our scale");
            let (_, dims, _, qb) = parsed.tensors.iter().find(|t| t.0 == "blk.0.attn_q.weight.lora_b").unwrap();
            assert_eq!(dims, &[2, 8]);
            assert_eq!(qb, &layout.hf_to_file(Target::Q, a.get(0, Target::Q).unwrap().b(), 8, 2));
            assert_ne!(qb.as_slice(), a.get(0, Target::Q).unwrap().b(), "q rows are permuted");
            let back = from_gguf_bytes(&bytes, Path::new("x"), layout).unwrap();
            assert_eq!(back, a);
            for n in 0..bytes.len().saturating_sub(64) {
                assert!(from_gguf_bytes(&bytes[..n], Path::new("x"), layout).is_err(), "truncated at {n}");
            }
        }
    }

    #[test]
    fn names() {
        assert_eq!(tensor_name(12, Target::Down, true), "blk.12.ffn_down.weight.lora_b");
        assert_eq!(parse_name("blk.12.ffn_down.weight.lora_b"), Some((12, Target::Down, true)));
        assert_eq!(parse_name("blk.1.attn_k.weight.lora_a"), Some((1, Target::K, false)));
        for bad in ["blk..attn_k.weight.lora_a", "blk.1.attn_x.weight.lora_a", "blk.1.attn_k.weight.lora_c", "direction.1"] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
