//! Hostile and broken adapter files: every one is a typed error, none a panic.

use rand::Rng;
use safetensors::tensor::Dtype;
use tailor_adapters::peft::{self, LoadOptions};
use tailor_adapters::{Error, ErrorKind, LayerSelection, LoraConfig, Target};

use crate::common::{random_adapter, rng, write_raw, RawTensor, TempDir, SHAPES};

const A0Q: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const B0Q: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

/// Rank 2 on q_proj of layer 0 only (`layers_to_transform = [0]`).
fn config_q() -> String {
    let mut c = LoraConfig::new(2, 4.0, &[Target::Q]);
    c.layers_to_transform = Some(LayerSelection::Many(vec![0]));
    c.to_json()
}

/// A valid pair for q_proj of layer 0 under [`SHAPES`] (in 24, out 32, r 2).
fn good_q() -> Vec<RawTensor> {
    vec![RawTensor::f32(A0Q, &[2, 24], &[0.1; 48]), RawTensor::f32(B0Q, &[32, 2], &[0.2; 64])]
}

fn load_raw(config: &str, tensors: &[RawTensor]) -> Result<tailor_adapters::LoraAdapter, Error> {
    let tmp = TempDir::new("hostile");
    let dir = tmp.path().join("a");
    write_raw(&dir, config, tensors);
    peft::load(&dir, &LoadOptions::new().with_shapes(SHAPES))
}

#[test]
fn the_good_file_loads() {
    let ad = load_raw(&config_q(), &good_q()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ad.len(), 1);
}

#[test]
fn missing_b_names_the_tensor() {
    let mut t = good_q();
    t.pop();
    let err = load_raw(&config_q(), &t).unwrap_err();
    assert!(matches!(&err, Error::MissingTensor { name } if name == B0Q), "{err}");
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn missing_layer_of_a_listed_target() {
    // An empty adapter.
    let err = load_raw(&config_q(), &good_q()[..0]).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    // The config lists q_proj for every layer; the base has three; only layer 0 is there.
    let all_layers = LoraConfig::new(2, 4.0, &[Target::Q]).to_json();
    let err = load_raw(&all_layers, &good_q()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name } if name == "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"),
        "{err}"
    );
    // Without base shapes only the layers present are checked.
    let tmp = TempDir::new("hostile-layer");
    let dir = tmp.path().join("a");
    write_raw(&dir, &all_layers, &good_q());
    assert_eq!(peft::load(&dir, &LoadOptions::new()).unwrap().len(), 1);
}

#[test]
fn wrong_shapes_are_shape_errors() {
    // A with rank 3 while the config says 2.
    let t =
        vec![RawTensor::f32(A0Q, &[3, 24], &[0.1; 72]), RawTensor::f32(B0Q, &[32, 2], &[0.2; 64])];
    let err = load_raw(&config_q(), &t).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { name, expected, actual } if name == A0Q && expected == &[2, 24] && actual == &[3, 24]),
        "{err}"
    );
    // B for another width than the base's q projection.
    let t =
        vec![RawTensor::f32(A0Q, &[2, 24], &[0.1; 48]), RawTensor::f32(B0Q, &[30, 2], &[0.2; 60])];
    let err = load_raw(&config_q(), &t).unwrap_err();
    assert!(matches!(&err, Error::Shape { name, .. } if name == B0Q), "{err}");
    // A one-dimensional tensor.
    let t = vec![RawTensor::f32(A0Q, &[48], &[0.1; 48]), RawTensor::f32(B0Q, &[32, 2], &[0.2; 64])];
    assert!(matches!(load_raw(&config_q(), &t).unwrap_err(), Error::Shape { .. }));
    // Inconsistent with each other, no base shapes given.
    let tmp = TempDir::new("hostile-noshape");
    let dir = tmp.path().join("a");
    let t =
        vec![RawTensor::f32(A0Q, &[2, 24], &[0.1; 48]), RawTensor::f32(B0Q, &[32, 3], &[0.2; 96])];
    write_raw(&dir, &config_q(), &t);
    let err = peft::load(&dir, &LoadOptions::new()).unwrap_err();
    assert!(matches!(&err, Error::Shape { name, .. } if name == B0Q), "{err}");
    assert_eq!(err.kind(), ErrorKind::CorruptData);
}

#[test]
fn nan_and_inf_name_the_tensor() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut b = vec![0.2; 64];
        b[17] = bad;
        let t = vec![RawTensor::f32(A0Q, &[2, 24], &[0.1; 48]), RawTensor::f32(B0Q, &[32, 2], &b)];
        let err = load_raw(&config_q(), &t).unwrap_err();
        assert!(matches!(&err, Error::NonFinite { name } if name == B0Q), "{err}");
    }
    // An f16 value that overflows nothing but is itself infinite.
    let inf16 = half::f16::INFINITY.to_le_bytes();
    let mut data: Vec<u8> =
        std::iter::repeat_n(half::f16::from_f32(0.1).to_le_bytes(), 48).flatten().collect();
    data[..2].copy_from_slice(&inf16);
    let t = vec![
        RawTensor { name: A0Q.into(), dtype: Dtype::F16, shape: vec![2, 24], data },
        RawTensor::f32(B0Q, &[32, 2], &[0.2; 64]),
    ];
    assert!(matches!(load_raw(&config_q(), &t).unwrap_err(), Error::NonFinite { .. }));
}

#[test]
fn foreign_tensors_and_types_are_unsupported() {
    let mut t = good_q();
    t.push(RawTensor::f32("base_model.model.lm_head.lora_A.weight", &[2, 24], &[0.0; 48]));
    let err = load_raw(&config_q(), &t).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    let t = vec![
        RawTensor { name: A0Q.into(), dtype: Dtype::I32, shape: vec![2, 24], data: vec![0; 192] },
        RawTensor::f32(B0Q, &[32, 2], &[0.2; 64]),
    ];
    assert!(matches!(load_raw(&config_q(), &t).unwrap_err(), Error::Unsupported { .. }));
}

#[test]
fn tensors_for_unlisted_modules_are_refused() {
    let mut cfg = LoraConfig::new(2, 4.0, &[Target::V]);
    cfg.layers_to_transform = Some(LayerSelection::One(0));
    let cfg = cfg.to_json();
    let err = load_raw(&cfg, &good_q()).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    // A regular expression target is not evaluated: the tensors decide.
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["target_modules"] = ".*\\.(q|v)_proj".into();
    assert_eq!(load_raw(&v.to_string(), &good_q()).unwrap().len(), 1);
}

#[test]
fn bad_configs_are_typed() {
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&config_q()).unwrap();
        f(&mut v);
        load_raw(&v.to_string(), &good_q()).unwrap_err()
    };
    let e = edit(&|v| v["fan_in_fan_out"] = true.into());
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    let e = edit(&|v| v["peft_type"] = "IA3".into());
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    let e = edit(&|v| {
        v.as_object_mut().unwrap().remove("r");
    });
    assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");
    let e = edit(&|v| v["r"] = 3.into());
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    for text in ["", "{", "[]", "null", "{\"peft_type\": \"LORA\", \"r\": -1}", "\u{feff}{}"] {
        let e = load_raw(text, &good_q()).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig { .. }), "{text:?}: {e}");
        assert_eq!(e.kind(), ErrorKind::CorruptData);
    }
}

#[test]
fn missing_files_are_not_found() {
    let tmp = TempDir::new("hostile-missing");
    let e = peft::load(&tmp.path().join("nope"), &LoadOptions::new()).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    let dir = tmp.path().join("a");
    write_raw(&dir, &config_q(), &good_q());
    std::fs::remove_file(dir.join("adapter_model.safetensors")).unwrap();
    let e = peft::load(&dir, &LoadOptions::new()).unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { path } if path.ends_with("adapter_model.safetensors")),
        "{e}"
    );
}

#[test]
fn truncated_and_corrupted_safetensors_never_panic() {
    let (mut rng, seed) = rng();
    let tmp = TempDir::new("hostile-trunc");
    let dir = tmp.path().join("a");
    let adapter = random_adapter(&mut rng, 2, 4.0, &[Target::Q, Target::Gate]);
    peft::save(&adapter, &dir).unwrap();
    let file = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    // Every truncation point: a typed error.
    for cut in 0..bytes.len() {
        std::fs::write(&file, &bytes[..cut]).unwrap();
        let e = peft::load(&dir, &LoadOptions::new()).unwrap_err();
        assert!(matches!(e, Error::InvalidTensors { .. }), "cut at {cut}: {e}");
    }
    // Random byte flips (header and data): Ok or a typed error, never a panic.
    for _ in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..b.len().min(400));
            b[i] = rng.random();
        }
        std::fs::write(&file, &b).unwrap();
        if let Err(e) = peft::load(&dir, &LoadOptions::new().with_shapes(SHAPES)) {
            let _ = (e.kind(), e.to_string(), seed);
        }
    }
    // A header claiming a huge size.
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&file, &b).unwrap();
    assert!(matches!(
        peft::load(&dir, &LoadOptions::new()).unwrap_err(),
        Error::InvalidTensors { .. }
    ));
}
