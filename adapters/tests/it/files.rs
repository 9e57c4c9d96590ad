//! PEFT layout: exact round trips, PEFT's names and shapes, half-precision input, base checks.

use safetensors::tensor::{Dtype, SafeTensors};
use tailor_adapters::peft::{self, LoadOptions};
use tailor_adapters::{BaseFingerprint, Error, ErrorKind, LoraConfig, Target};

use crate::common::{list, random_adapter, rng, write_raw, RawTensor, TempDir, SHAPES};

#[test]
fn save_then_load_is_exact() {
    let (mut rng, _) = rng();
    let tmp = TempDir::new("roundtrip");
    let dir = tmp.path().join("my-adapter");
    let adapter = random_adapter(&mut rng, 4, 8.0, &Target::ALL);
    peft::save(&adapter, &dir).unwrap();
    assert_eq!(list(tmp.path()), ["my-adapter"], "no temporary directory left");
    assert_eq!(list(&dir), ["adapter_config.json", "adapter_model.safetensors"]);
    let back = peft::load(&dir, &LoadOptions::new().with_shapes(SHAPES)).unwrap();
    assert_eq!(back, adapter);

    // Saving over an existing adapter replaces it and leaves nothing beside it.
    let other = random_adapter(&mut rng, 2, 2.0, &[Target::Q, Target::V]);
    peft::save(&other, &dir).unwrap();
    assert_eq!(list(tmp.path()), ["my-adapter"]);
    assert_eq!(peft::load(&dir, &LoadOptions::new()).unwrap(), other);
}

#[test]
fn files_use_peft_names_shapes_and_types() {
    let (mut rng, _) = rng();
    let tmp = TempDir::new("names");
    let dir = tmp.path().join("a");
    let adapter = random_adapter(&mut rng, 4, 8.0, &[Target::Q, Target::Down]);
    peft::save(&adapter, &dir).unwrap();
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<&str> = st.names();
    names.sort();
    let mut want = Vec::new();
    for l in 0..3 {
        want.push(format!("base_model.model.model.layers.{l}.mlp.down_proj.lora_A.weight"));
        want.push(format!("base_model.model.model.layers.{l}.mlp.down_proj.lora_B.weight"));
        want.push(format!("base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight"));
        want.push(format!("base_model.model.model.layers.{l}.self_attn.q_proj.lora_B.weight"));
    }
    want.sort();
    assert_eq!(names, want);
    let a = st.tensor("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight").unwrap();
    assert_eq!((a.dtype(), a.shape()), (Dtype::F32, &[4usize, 40][..]));
    let b = st.tensor("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").unwrap();
    assert_eq!((b.dtype(), b.shape()), (Dtype::F32, &[24usize, 4][..]));
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");

    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8, "alpha written as an integer, as PEFT does");
    assert_eq!(cfg["target_modules"], serde_json::json!(["q_proj", "down_proj"]));
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["fan_in_fan_out"], false);
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["tailor"]["format_version"], 1);
}

#[test]
fn half_precision_tensors_load_as_f32() {
    let tmp = TempDir::new("half");
    let dir = tmp.path().join("a");
    let a_vals = [0.5f32, -1.25, 3.0, 0.1];
    let b_vals = [2.0f32, -0.333];
    let f16 = |v: &[f32]| {
        v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect::<Vec<u8>>()
    };
    let bf16 = |v: &[f32]| {
        v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect::<Vec<u8>>()
    };
    let cfg = LoraConfig::new(1, 1.0, &[Target::O]).to_json();
    write_raw(
        &dir,
        &cfg,
        &[
            RawTensor {
                name: "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight".into(),
                dtype: Dtype::F16,
                shape: vec![1, 4],
                data: f16(&a_vals),
            },
            RawTensor {
                name: "base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight".into(),
                dtype: Dtype::BF16,
                shape: vec![2, 1],
                data: bf16(&b_vals),
            },
        ],
    );
    let ad = peft::load(&dir, &LoadOptions::new()).unwrap();
    let w = ad.get(0, Target::O).unwrap();
    let want_a: Vec<f32> = a_vals.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect();
    let want_b: Vec<f32> = b_vals.iter().map(|x| half::bf16::from_f32(*x).to_f32()).collect();
    assert_eq!(w.a(), &want_a[..]);
    assert_eq!(w.b(), &want_b[..]);
    assert_eq!((w.in_features(), w.out_features()), (4, 2));
}

#[test]
fn base_fingerprint_is_checked() {
    let (mut rng, _) = rng();
    let tmp = TempDir::new("fp");
    let dir = tmp.path().join("a");
    let mut adapter = random_adapter(&mut rng, 2, 4.0, &[Target::K]);
    let mut cfg = adapter.config().clone();
    cfg.set_base_fingerprint(BaseFingerprint::new("sha256:aaaa"));
    let mut with_fp = tailor_adapters::LoraAdapter::new(cfg).unwrap();
    for ((l, t), w) in adapter.iter() {
        with_fp.insert(l, t, w.clone()).unwrap();
    }
    peft::save(&with_fp, &dir).unwrap();
    let same = LoadOptions::new()
        .with_shapes(SHAPES)
        .with_fingerprint(BaseFingerprint::new("sha256:aaaa"));
    assert_eq!(peft::load(&dir, &same).unwrap(), with_fp);
    let other = LoadOptions::new().with_fingerprint(BaseFingerprint::new("sha256:bbbb"));
    let err = peft::load(&dir, &other).unwrap_err();
    assert!(
        matches!(&err, Error::BaseMismatch { expected, actual } if expected == "sha256:aaaa" && actual == "sha256:bbbb"),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Mismatch);

    // An adapter without a fingerprint (as PEFT makes them) is accepted on shapes alone.
    adapter.get_mut(0, Target::K).unwrap().b_mut()[0] = 1.0;
    let mut cfg = adapter.config().clone();
    cfg.tailor = None;
    let mut plain = tailor_adapters::LoraAdapter::new(cfg).unwrap();
    for ((l, t), w) in adapter.iter() {
        plain.insert(l, t, w.clone()).unwrap();
    }
    peft::save(&plain, &dir).unwrap();
    assert_eq!(peft::load(&dir, &other).unwrap(), plain);

    // Shapes of another base are refused.
    let bigger = tailor_adapters::peft::BaseShapes { kv_dim: 32, ..SHAPES };
    let err = peft::load(&dir, &LoadOptions::new().with_shapes(bigger)).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let fewer = tailor_adapters::peft::BaseShapes { n_layers: 2, ..SHAPES };
    let err = peft::load(&dir, &LoadOptions::new().with_shapes(fewer)).unwrap_err();
    assert!(matches!(err, Error::BaseMismatch { .. }), "{err}");
}
