//! PEFT's `adapter_config.json`, read and written as-is, plus Tailor's own record under the
//! `tailor` key of the same file.
//!
//! Fields PEFT writes that Tailor does not interpret (`lora_dropout`, `init_lora_weights`,
//! `revision`, ...) are kept in [`LoraConfig::extra`] and written back unchanged, so a config
//! survives a load/save round trip; PEFT ignores the `tailor` key when it loads the file.

use std::path::Path;

use serde::{Deserialize, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::target::Target;

/// The version of the `tailor` record this crate writes.
pub const TAILOR_FORMAT_VERSION: u32 = 1;

/// A fingerprint of the base model an adapter was trained on. The sdk computes it from the
/// GGUF (architecture, tensor shapes and a sample of weights, hashed); here it is an opaque
/// string compared for equality.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BaseFingerprint(pub String);

impl BaseFingerprint {
    /// Wraps a fingerprint string.
    pub fn new(s: impl Into<String>) -> Self {
        BaseFingerprint(s.into())
    }

    /// The fingerprint string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BaseFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `target_modules`: PEFT accepts a list of module names (matched as the full module path or
/// its suffix after a `.`) or one string (a regular expression over the full path, or
/// `"all-linear"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names such as `["q_proj", "v_proj"]`.
    List(Vec<String>),
    /// A regular expression over module paths, or `"all-linear"`.
    Pattern(String),
}

/// `layers_to_transform`: one layer index or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerSelection {
    /// A single layer.
    One(usize),
    /// Several layers.
    Many(Vec<usize>),
}

impl LayerSelection {
    /// Whether `layer` is selected.
    pub fn contains(&self, layer: usize) -> bool {
        match self {
            LayerSelection::One(l) => *l == layer,
            LayerSelection::Many(ls) => ls.contains(&layer),
        }
    }
}

/// Tailor's own record, stored under the `tailor` key of `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TailorMeta {
    /// Version of this record ([`TAILOR_FORMAT_VERSION`] when written by this crate).
    pub format_version: u32,
    /// Fingerprint of the base model the adapter was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_fingerprint: Option<BaseFingerprint>,
    /// When the adapter was made, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<u64>,
    /// Fields written by later versions, kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl TailorMeta {
    /// A record for `fingerprint`, stamped with the current time.
    pub fn new(base_fingerprint: Option<BaseFingerprint>) -> Self {
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
        TailorMeta {
            format_version: TAILOR_FORMAT_VERSION,
            base_fingerprint,
            created_at,
            extra: serde_json::Map::new(),
        }
    }
}

fn default_bias() -> String {
    "none".to_owned()
}

/// PEFT writes `lora_alpha` as an integer; keep it one when it is integral.
fn ser_number<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// PEFT's LoRA config (`adapter_config.json`), the fields Tailor interprets named, the rest
/// kept in [`LoraConfig::extra`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LoraConfig {
    /// Must be `"LORA"`.
    pub peft_type: String,
    /// The rank `r` of every A/B pair.
    pub r: usize,
    /// `lora_alpha`; the delta is scaled by `alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
    #[serde(serialize_with = "ser_number")]
    pub lora_alpha: f64,
    /// The modules that carry A/B pairs.
    pub target_modules: TargetModules,
    /// Rank-stabilised scaling `alpha / sqrt(r)`.
    #[serde(default)]
    pub use_rslora: bool,
    /// PEFT's flag for weights stored transposed (GPT-2 `Conv1D`); must be false.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Bias training; must be `"none"`.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// The Hugging Face name or path of the base model.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// PEFT's task type, `"CAUSAL_LM"` for our models.
    #[serde(default)]
    pub task_type: Option<String>,
    /// Restricts the adapter to these layers.
    #[serde(default)]
    pub layers_to_transform: Option<LayerSelection>,
    /// Modules trained in full next to the adapter; must be empty or null.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Tailor's own record (base fingerprint, version, creation time); absent in configs
    /// written by PEFT itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailor: Option<TailorMeta>,
    /// Every other field, kept as read.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl LoraConfig {
    /// A config for rank `r`, `lora_alpha = alpha`, on `targets`, with PEFT's defaults
    /// for the rest (`task_type = "CAUSAL_LM"`, `lora_dropout = 0`) and a fresh `tailor`
    /// record.
    pub fn new(r: usize, alpha: f64, targets: &[Target]) -> Self {
        let mut extra = serde_json::Map::new();
        extra.insert("lora_dropout".into(), serde_json::json!(0.0));
        extra.insert("inference_mode".into(), serde_json::json!(true));
        LoraConfig {
            peft_type: "LORA".into(),
            r,
            lora_alpha: alpha,
            target_modules: TargetModules::List(
                targets.iter().map(|t| t.peft_name().to_owned()).collect(),
            ),
            use_rslora: false,
            fan_in_fan_out: false,
            bias: default_bias(),
            base_model_name_or_path: None,
            task_type: Some("CAUSAL_LM".into()),
            layers_to_transform: None,
            modules_to_save: None,
            tailor: Some(TailorMeta::new(None)),
            extra,
        }
    }

    /// Parses `adapter_config.json` text and [validates](Self::validate) it; `path` names the
    /// file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let config: LoraConfig =
            serde_json::from_str(text).map_err(|e| Error::config(path, e.to_string()))?;
        config.validate(path)?;
        Ok(config)
    }

    /// Reads and validates `adapter_config.json` at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// The config as pretty JSON (two-space indent, like PEFT).
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings, numbers and JSON values cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The factor the delta `B(A·x)` is multiplied by: `alpha / r`, or `alpha / sqrt(r)` with
    /// rsLoRA.
    pub fn scale(&self) -> f32 {
        let r = self.r as f64;
        let s = if self.use_rslora { self.lora_alpha / r.sqrt() } else { self.lora_alpha / r };
        s as f32
    }

    /// The base fingerprint recorded in the `tailor` record, if any.
    pub fn base_fingerprint(&self) -> Option<&BaseFingerprint> {
        self.tailor.as_ref().and_then(|t| t.base_fingerprint.as_ref())
    }

    /// Records `fingerprint` as the base this adapter belongs to (creating the `tailor`
    /// record if needed).
    pub fn set_base_fingerprint(&mut self, fingerprint: BaseFingerprint) {
        self.tailor.get_or_insert_with(|| TailorMeta::new(None)).base_fingerprint =
            Some(fingerprint);
    }

    /// Whether the config targets `target` of `layer`, following PEFT's matching (a list
    /// entry equal to the module path or to its suffix after a `.`; `layers_to_transform`).
    /// `None` when `target_modules` is a regular expression this crate does not evaluate
    /// (the tensors present then decide).
    pub fn targets(&self, layer: usize, target: Target) -> Option<bool> {
        if let Some(sel) = &self.layers_to_transform {
            if !sel.contains(layer) {
                return Some(false);
            }
        }
        let path = target.module_path(layer);
        match &self.target_modules {
            TargetModules::List(names) => Some(names.iter().any(|n| {
                path == *n
                    || (path.ends_with(n.as_str()) && path[..path.len() - n.len()].ends_with('.'))
            })),
            TargetModules::Pattern(p) if p == "all-linear" => Some(true),
            TargetModules::Pattern(_) => None,
        }
    }

    /// Checks what Tailor supports: `peft_type = "LORA"`, `r > 0`, a finite `lora_alpha`, no
    /// `fan_in_fan_out`, `bias = "none"`, no `modules_to_save`, no DoRA, no per-module ranks
    /// or alphas, and only the seven llama projections as list targets.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if self.peft_type != "LORA" {
            return Err(Error::unsupported(format!("peft_type `{}` (only LORA)", self.peft_type)));
        }
        if self.r == 0 {
            return Err(Error::config(path, "r must be at least 1"));
        }
        if !self.lora_alpha.is_finite() {
            return Err(Error::config(path, "lora_alpha must be finite"));
        }
        if self.fan_in_fan_out {
            return Err(Error::unsupported("fan_in_fan_out = true (transposed weights)"));
        }
        if self.bias != "none" {
            return Err(Error::unsupported(format!("bias = `{}` (only \"none\")", self.bias)));
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(Error::unsupported("modules_to_save (fully trained modules)"));
        }
        if self.extra.get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
            return Err(Error::unsupported("use_dora = true (DoRA)"));
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if self.extra.get(key).and_then(|v| v.as_object()).is_some_and(|o| !o.is_empty()) {
                return Err(Error::unsupported(format!("{key} (per-module ranks or alphas)")));
            }
        }
        if self.extra.get("layer_replication").is_some_and(|v| !v.is_null()) {
            return Err(Error::unsupported("layer_replication"));
        }
        if let TargetModules::List(names) = &self.target_modules {
            if names.is_empty() {
                return Err(Error::config(path, "target_modules is empty"));
            }
            for n in names {
                let last = n.rsplit('.').next().unwrap_or(n);
                if Target::from_peft_name(last).is_none() {
                    return Err(Error::unsupported(format!("target module `{n}`")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config as PEFT 0.13 writes it for a llama model.
    const PEFT_JSON: &str = r#"{
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
  "bias": "none",
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": true,
  "layer_replication": null,
  "layers_pattern": null,
  "layers_to_transform": null,
  "loftq_config": {},
  "lora_alpha": 16,
  "lora_dropout": 0.05,
  "megatron_config": null,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 8,
  "rank_pattern": {},
  "revision": null,
  "target_modules": ["v_proj", "q_proj"],
  "task_type": "CAUSAL_LM",
  "use_dora": false,
  "use_rslora": false
}"#;

    #[test]
    fn peft_config_round_trips() {
        let c = LoraConfig::from_json(PEFT_JSON, Path::new("x")).unwrap();
        assert_eq!(c.r, 8);
        assert_eq!(c.scale(), 2.0);
        assert_eq!(c.targets(3, Target::Q), Some(true));
        assert_eq!(c.targets(3, Target::K), Some(false));
        let back: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
        let orig: serde_json::Value = serde_json::from_str(PEFT_JSON).unwrap();
        assert_eq!(back, orig, "unknown fields and integer alpha survive");
    }

    #[test]
    fn scaling_plain_and_rslora() {
        let mut c = LoraConfig::new(16, 32.0, &Target::ALL);
        assert_eq!(c.scale(), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scale(), 8.0);
    }

    #[test]
    fn target_matching_follows_peft() {
        let mut c = LoraConfig::new(4, 4.0, &[]);
        c.target_modules =
            TargetModules::List(vec!["model.layers.2.mlp.up_proj".into(), "k_proj".into()]);
        assert_eq!(c.targets(2, Target::Up), Some(true));
        assert_eq!(c.targets(3, Target::Up), Some(false));
        assert_eq!(c.targets(7, Target::K), Some(true));
        c.layers_to_transform = Some(LayerSelection::Many(vec![0, 1]));
        assert_eq!(c.targets(7, Target::K), Some(false));
        c.target_modules = TargetModules::Pattern("all-linear".into());
        assert_eq!(c.targets(1, Target::Down), Some(true));
        c.target_modules = TargetModules::Pattern(".*q_proj".into());
        assert_eq!(c.targets(1, Target::Q), None);
    }

    #[test]
    fn unsupported_features_are_typed() {
        let p = Path::new("x");
        let bad = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(PEFT_JSON).unwrap();
            edit(&mut v);
            LoraConfig::from_json(&v.to_string(), p).unwrap_err()
        };
        assert!(matches!(bad(&|v| v["fan_in_fan_out"] = true.into()), Error::Unsupported { .. }));
        assert!(matches!(bad(&|v| v["use_dora"] = true.into()), Error::Unsupported { .. }));
        assert!(matches!(bad(&|v| v["bias"] = "all".into()), Error::Unsupported { .. }));
        assert!(matches!(
            bad(&|v| v["modules_to_save"] = serde_json::json!(["lm_head"])),
            Error::Unsupported { .. }
        ));
        assert!(matches!(
            bad(&|v| v["target_modules"] = serde_json::json!(["lm_head"])),
            Error::Unsupported { .. }
        ));
        assert!(matches!(bad(&|v| v["r"] = 0.into()), Error::InvalidConfig { .. }));
        assert!(matches!(bad(&|v| v["r"] = "eight".into()), Error::InvalidConfig { .. }));
        assert!(matches!(
            LoraConfig::from_json("{\"peft_type\": ", p).unwrap_err(),
            Error::InvalidConfig { .. }
        ));
    }
}
