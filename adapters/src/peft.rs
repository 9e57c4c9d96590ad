//! PEFT's on-disk layout: a directory with `adapter_config.json` and
//! `adapter_model.safetensors`, tensors named as PEFT names them for a llama model
//! (`base_model.model.model.layers.{N}.self_attn.q_proj.lora_A.weight`, `[r, in]`, and
//! `...lora_B.weight`, `[out, r]`; `mlp` for gate/up/down).
//!
//! [`load`] accepts f32, f16, bf16 and f64 tensors (converted to f32) and checks everything
//! before returning: every selected module has both A and B, ranks agree with the config,
//! shapes agree with each other and with the base when the caller passes its
//! [`BaseShapes`], values are finite, and the base fingerprint matches when both sides
//! have one. [`save`] writes f32 tensors atomically (see [`save_with_hook`] for the crash
//! behaviour and [`recover`] for the repair after one).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::config::{BaseFingerprint, LoraConfig};
use crate::error::{Error, Result};
use crate::fsio::{split, sync_dir, write_synced};
use crate::lora::{LoraAdapter, LoraWeights};
use crate::target::Target;

/// Name of the config file inside an adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Name of the weights file inside an adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

const PREFIX: &str = "base_model.model.model.layers.";

/// Which factor of a LoRA pair a tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Factor {
    /// `lora_A`, `[r, in_features]`.
    A,
    /// `lora_B`, `[out_features, r]`.
    B,
}

/// PEFT's tensor name for `factor` of `target` in `layer`, e.g.
/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`.
pub fn tensor_name(layer: usize, target: Target, factor: Factor) -> String {
    let f = match factor {
        Factor::A => "lora_A",
        Factor::B => "lora_B",
    };
    format!("{PREFIX}{layer}.{}.{}.{f}.weight", target.peft_parent(), target.peft_name())
}

/// The inverse of [`tensor_name`]; `None` for any other name.
pub fn parse_tensor_name(name: &str) -> Option<(usize, Target, Factor)> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.split('.');
    let layer_s = parts.next()?;
    // Plain decimal only: no sign, no leading `+`.
    if layer_s.is_empty() || !layer_s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let layer: usize = layer_s.parse().ok()?;
    let parent = parts.next()?;
    let target = Target::from_peft_name(parts.next()?)?;
    let factor = match parts.next()? {
        "lora_A" => Factor::A,
        "lora_B" => Factor::B,
        _ => return None,
    };
    if parts.next()? != "weight" || parts.next().is_some() || parent != target.peft_parent() {
        return None;
    }
    Some((layer, target, factor))
}

/// The projection widths of a llama-family base, to check an adapter against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseShapes {
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Residual width (`d_model`).
    pub d_model: usize,
    /// Query width (`n_heads · head_dim`).
    pub q_dim: usize,
    /// Key/value width (`n_kv_heads · head_dim`).
    pub kv_dim: usize,
    /// MLP hidden width.
    pub ffn_dim: usize,
}

impl BaseShapes {
    /// `(in_features, out_features)` of `target`.
    pub fn in_out(&self, target: Target) -> (usize, usize) {
        match target {
            Target::Q => (self.d_model, self.q_dim),
            Target::K | Target::V => (self.d_model, self.kv_dim),
            Target::O => (self.q_dim, self.d_model),
            Target::Gate | Target::Up => (self.d_model, self.ffn_dim),
            Target::Down => (self.ffn_dim, self.d_model),
        }
    }
}

/// What the caller knows about the base an adapter is loaded onto.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Projection widths and layer count; checked against every tensor when set.
    pub shapes: Option<BaseShapes>,
    /// The base's fingerprint; an adapter recording a different one is refused with
    /// [`Error::BaseMismatch`]. An adapter without a fingerprint (one PEFT made) is
    /// accepted on shapes alone.
    pub fingerprint: Option<BaseFingerprint>,
}

impl LoadOptions {
    /// No expectations: only the file's internal consistency is checked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks shapes against `shapes`.
    pub fn with_shapes(mut self, shapes: BaseShapes) -> Self {
        self.shapes = Some(shapes);
        self
    }

    /// Checks the recorded fingerprint against `fingerprint`.
    pub fn with_fingerprint(mut self, fingerprint: BaseFingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }
}

/// Loads the adapter in directory `dir` (PEFT layout), checking it as described in the
/// [module docs](self).
pub fn load(dir: &Path, opts: &LoadOptions) -> Result<LoraAdapter> {
    let config = LoraConfig::read(&dir.join(CONFIG_FILE))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = fs::read(&weights_path).map_err(|e| Error::io(&weights_path, e))?;
    from_parts(config, &bytes, &weights_path, opts)
}

/// Builds an adapter from a parsed config and the bytes of its safetensors file (`path`
/// names the file in errors), with the checks of [`load`].
pub fn from_parts(
    config: LoraConfig,
    safetensors_bytes: &[u8],
    path: &Path,
    opts: &LoadOptions,
) -> Result<LoraAdapter> {
    if let (Some(want), Some(have)) = (&opts.fingerprint, config.base_fingerprint()) {
        if want != have {
            return Err(Error::BaseMismatch {
                expected: have.to_string(),
                actual: want.to_string(),
            });
        }
    }
    let st = SafeTensors::deserialize(safetensors_bytes)
        .map_err(|e| Error::InvalidTensors { path: path.to_owned(), reason: e.to_string() })?;
    let r = config.r;
    // (layer, target) -> (A, B), each (shape, values).
    type Tensor = (Vec<usize>, Vec<f32>);
    let mut pairs: BTreeMap<(usize, Target), (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (name, view) in st.iter() {
        let (layer, target, factor) = parse_tensor_name(name).ok_or_else(|| {
            Error::unsupported(format!("tensor `{name}` (not a LoRA A/B of a llama projection)"))
        })?;
        if let Some(s) = &opts.shapes {
            if layer >= s.n_layers {
                return Err(Error::BaseMismatch {
                    expected: format!("an adapter for at most {} layers", s.n_layers),
                    actual: format!("tensor `{name}`"),
                });
            }
        }
        let values = to_f32(name, &view)?;
        if !values.iter().all(|v| v.is_finite()) {
            return Err(Error::NonFinite { name: name.to_owned() });
        }
        let entry = pairs.entry((layer, target)).or_default();
        let slot = match factor {
            Factor::A => &mut entry.0,
            Factor::B => &mut entry.1,
        };
        *slot = Some((view.shape().to_vec(), values));
    }

    let mut adapter = LoraAdapter::new(config)?;
    for ((layer, target), (a, b)) in pairs {
        let missing = |f| Error::MissingTensor { name: tensor_name(layer, target, f) };
        let (a_shape, a) = a.ok_or_else(|| missing(Factor::A))?;
        let (b_shape, b) = b.ok_or_else(|| missing(Factor::B))?;
        let expected = opts.shapes.map(|s| s.in_out(target));
        let d_in = expected.map_or_else(|| a_shape.get(1).copied().unwrap_or(0), |e| e.0);
        let d_out = expected.map_or_else(|| b_shape.first().copied().unwrap_or(0), |e| e.1);
        if a_shape != [r, d_in] || d_in == 0 {
            return Err(Error::Shape {
                name: tensor_name(layer, target, Factor::A),
                expected: vec![r, d_in],
                actual: a_shape,
            });
        }
        if b_shape != [d_out, r] || d_out == 0 {
            return Err(Error::Shape {
                name: tensor_name(layer, target, Factor::B),
                expected: vec![d_out, r],
                actual: b_shape,
            });
        }
        adapter.insert(layer, target, LoraWeights::new(r, d_in, d_out, a, b)?)?;
    }
    check_coverage(&adapter, opts.shapes.as_ref(), path)?;
    Ok(adapter)
}

/// Checks that the tensors present and the modules the config selects agree: no pair for an
/// unselected module, and both factors for every selected module of every layer (every layer
/// of the base when its shapes are known, else every layer the adapter has tensors for).
fn check_coverage(adapter: &LoraAdapter, shapes: Option<&BaseShapes>, path: &Path) -> Result<()> {
    let config = adapter.config();
    if adapter.is_empty() {
        return Err(Error::config(path, "the adapter has no LoRA tensors"));
    }
    for ((layer, target), _) in adapter.iter() {
        if config.targets(layer, target) == Some(false) {
            return Err(Error::config(
                path,
                format!(
                    "tensors for `{}`, which target_modules / layers_to_transform do not select",
                    target.module_path(layer)
                ),
            ));
        }
    }
    let layers: BTreeSet<usize> = match shapes {
        Some(s) => (0..s.n_layers).collect(),
        None => adapter.iter().map(|((l, _), _)| l).collect(),
    };
    for layer in layers {
        for target in Target::ALL {
            if config.targets(layer, target) == Some(true) && !adapter.applies_to(layer, target) {
                return Err(Error::MissingTensor { name: tensor_name(layer, target, Factor::A) });
            }
        }
    }
    Ok(())
}

fn to_f32(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let data = view.data();
    let out = match view.dtype() {
        Dtype::F32 => {
            data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        Dtype::F16 => {
            data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        Dtype::BF16 => {
            data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        other => return Err(Error::unsupported(format!("tensor `{name}` of type {other:?}"))),
    };
    Ok(out)
}

/// The adapter's tensors as a safetensors file (f32, PEFT names, `{"format": "pt"}`
/// metadata as PEFT writes it).
pub fn to_safetensors_bytes(adapter: &LoraAdapter) -> Result<Vec<u8>> {
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(2 * adapter.len());
    for ((layer, target), w) in adapter.iter() {
        owned.push((
            tensor_name(layer, target, Factor::A),
            vec![w.r(), w.in_features()],
            le(w.a()),
        ));
        owned.push((
            tensor_name(layer, target, Factor::B),
            vec![w.out_features(), w.r()],
            le(w.b()),
        ));
    }
    let views = owned
        .iter()
        .map(|(n, shape, data)| Ok((n.as_str(), TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| Error::invalid(format!("cannot serialise tensors: {e}")))?;
    let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::invalid(format!("cannot serialise tensors: {e}")))
}

/// A point of [`save_with_hook`] at which the hook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaveStep {
    /// Both files are written and synced in the temporary directory; nothing renamed yet.
    Written,
    /// The previous adapter was renamed aside (only when one existed); the final name is
    /// empty until the next step.
    OldMovedAside,
    /// The new adapter is in place under the final name; the old one is not removed yet.
    NewInPlace,
}

/// Saves `adapter` to directory `dir` in PEFT's layout (see [`save_with_hook`] for how).
pub fn save(adapter: &LoraAdapter, dir: &Path) -> Result<()> {
    save_with_hook(adapter, dir, &mut |_| Ok(()))
}

static SAVE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Saves `adapter` to directory `dir` atomically, calling `hook` at each [`SaveStep`].
///
/// Both files are written into `.<name>.tmp-<pid>-<n>` next to `dir` (the parent is created
/// if missing), each file and then the directory fsynced. If `dir` does not exist, the temporary directory is renamed to
/// it. If it does, it is first renamed to `.<name>.old-<pid>-<n>`, the new one is renamed
/// into place, the parent is fsynced, and the old one is removed.
///
/// Crash behaviour: `dir` only ever holds a complete adapter (old or new), except in the
/// short window between the two renames when a previous adapter existed, where `dir` is
/// absent and both complete versions sit beside it; [`recover`] puts the new one in place
/// (run it at start-up, before loading). A crash while writing leaves a stray temporary
/// directory that [`recover`] removes.
///
/// An error from `hook` stops the save at that point *without any clean-up*, exactly as a
/// crash would (crash-safety tests use this); an I/O error cleans up and leaves `dir` as
/// it was.
pub fn save_with_hook(
    adapter: &LoraAdapter,
    dir: &Path,
    hook: &mut dyn FnMut(SaveStep) -> std::io::Result<()>,
) -> Result<()> {
    let (parent, name) = split(dir)?;
    let config = adapter.config();
    config.validate(dir)?;
    check_coverage(adapter, None, dir)?;
    let weights = to_safetensors_bytes(adapter)?;
    let json = config.to_json() + "\n";

    let suffix = format!("{}-{}", std::process::id(), SAVE_SEQ.fetch_add(1, Ordering::Relaxed));
    let tmp = parent.join(format!(".{name}.tmp-{suffix}"));
    let old = parent.join(format!(".{name}.old-{suffix}"));
    let hook_err = |step: SaveStep, e: std::io::Error| Error::Io {
        path: dir.to_owned(),
        source: std::io::Error::new(e.kind(), format!("save stopped at {step:?}: {e}")),
    };

    let write_all = || -> Result<()> {
        fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        write_synced(&tmp.join(CONFIG_FILE), json.as_bytes())?;
        write_synced(&tmp.join(WEIGHTS_FILE), &weights)?;
        sync_dir(&tmp)
    };
    if let Err(e) = write_all() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    hook(SaveStep::Written).map_err(|e| hook_err(SaveStep::Written, e))?;

    let had_old = dir.exists();
    if had_old {
        if let Err(e) = fs::rename(dir, &old) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(Error::io(dir, e));
        }
        hook(SaveStep::OldMovedAside).map_err(|e| hook_err(SaveStep::OldMovedAside, e))?;
    }
    if let Err(e) = fs::rename(&tmp, dir) {
        if had_old {
            let _ = fs::rename(&old, dir);
        }
        let _ = fs::remove_dir_all(&tmp);
        return Err(Error::io(dir, e));
    }
    sync_dir(&parent)?;
    hook(SaveStep::NewInPlace).map_err(|e| hook_err(SaveStep::NewInPlace, e))?;
    if had_old {
        // The new adapter is durable; a failure here only leaves a stray directory.
        let _ = fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Repairs what an interrupted [`save`] to `dir` left behind: if `dir` is missing but a
/// complete new version and the old one sit beside it, the new one is moved in (or the old
/// one if the new is absent); stray temporary and old directories are removed. Returns
/// whether `dir` was restored. Call it when no other process is saving to `dir`.
pub fn recover(dir: &Path) -> Result<bool> {
    let (parent, name) = split(dir)?;
    let tmp_prefix = format!(".{name}.tmp-");
    let old_prefix = format!(".{name}.old-");
    let mut tmps = BTreeMap::new();
    let mut olds = BTreeMap::new();
    let entries = fs::read_dir(&parent).map_err(|e| Error::io(&parent, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&parent, e))?;
        let file_name = entry.file_name();
        let Some(s) = file_name.to_str() else { continue };
        if let Some(sfx) = s.strip_prefix(&tmp_prefix) {
            tmps.insert(sfx.to_owned(), entry.path());
        } else if let Some(sfx) = s.strip_prefix(&old_prefix) {
            olds.insert(sfx.to_owned(), entry.path());
        }
    }
    let mut restored = false;
    if !dir.exists() {
        // An `old` exists only once its `tmp` twin was complete and synced.
        if let Some((sfx, old)) = olds.iter().next_back() {
            let from = tmps.remove(sfx).unwrap_or_else(|| old.clone());
            fs::rename(&from, dir).map_err(|e| Error::io(dir, e))?;
            sync_dir(&parent)?;
            restored = true;
        }
    }
    for p in tmps.values().chain(olds.values()) {
        if p.exists() {
            fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_peft_names() {
        assert_eq!(
            tensor_name(3, Target::Q, Factor::A),
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(
            tensor_name(29, Target::Down, Factor::B),
            "base_model.model.model.layers.29.mlp.down_proj.lora_B.weight"
        );
        for l in [0, 7, 123] {
            for t in Target::ALL {
                for f in [Factor::A, Factor::B] {
                    assert_eq!(parse_tensor_name(&tensor_name(l, t, f)), Some((l, t, f)));
                }
            }
        }
        for bad in [
            "base_model.model.model.layers.3.mlp.q_proj.lora_A.weight",
            "base_model.model.model.layers.+3.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight",
            "base_model.model.model.layers.3.self_attn.q_proj.lora_C.weight",
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight.x",
            "base_model.model.lm_head.lora_A.weight",
            "",
        ] {
            assert_eq!(parse_tensor_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn llama_shapes() {
        let s = BaseShapes { n_layers: 30, d_model: 576, q_dim: 576, kv_dim: 192, ffn_dim: 1536 };
        assert_eq!(s.in_out(Target::K), (576, 192));
        assert_eq!(s.in_out(Target::O), (576, 576));
        assert_eq!(s.in_out(Target::Down), (1536, 576));
    }
}
