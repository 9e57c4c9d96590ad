//! Hostile and broken input gives typed errors, never a panic.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::GgmlDType;
use tailor::testing::TinyModel;
use tailor::{Engine, EngineConfig, Error, ErrorKind};

use crate::common::{spec, TempDir};

fn load(path: &std::path::Path) -> Result<Engine, Error> {
    Engine::load(path, EngineConfig::default())
}

#[test]
fn missing_file() {
    let e = load(std::path::Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn not_a_gguf_and_truncated_files() {
    let dir = TempDir::new("bad");
    let junk = dir.path("junk.gguf");
    std::fs::write(&junk, b"definitely not a model").unwrap();
    assert!(matches!(load(&junk), Err(Error::InvalidGguf { .. })));
    std::fs::write(&junk, b"").unwrap();
    assert!(matches!(load(&junk), Err(Error::InvalidGguf { .. })));

    let good = dir.path("good.gguf");
    spec(GgmlDType::Q4_1, 64, 3).write(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    // Cut in the tensor data, in the header, and right after the magic.
    for cut in [bytes.len() - 1, bytes.len() / 2, 300, 9] {
        let p = dir.path("cut.gguf");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        match load(&p) {
            Err(e @ Error::InvalidGguf { .. }) => assert_eq!(e.kind(), ErrorKind::CorruptData),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // Random corruption of the header never panics.
    for _ in 0..200 {
        let mut b = bytes[..4096.min(bytes.len())].to_vec();
        for _ in 0..8 {
            let i = 4 + (rand::random::<u64>() as usize) % (b.len() - 4);
            b[i] = rand::random();
        }
        let p = dir.path("fuzz.gguf");
        std::fs::write(&p, &b).unwrap();
        assert!(load(&p).is_err());
    }
}

#[test]
fn other_architecture() {
    let dir = TempDir::new("arch");
    let p = dir.path("gpt2.gguf");
    let mut s = TinyModel::default();
    s.architecture = "gpt2".into();
    s.write(&p).unwrap();
    match load(&p) {
        Err(Error::UnsupportedArchitecture { arch }) => assert_eq!(arch, "gpt2"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tensor_of_the_wrong_shape() {
    let dir = TempDir::new("shape");
    let p = dir.path("m.gguf");
    spec(GgmlDType::Q8_0, 64, 4).write(&p).unwrap();
    // Rewrite the file claiming a wider MLP than its tensors have.
    let mut f = std::fs::File::open(&p).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut md: Vec<(String, Value)> = ct.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (k, v) in md.iter_mut() {
        if k == "llama.feed_forward_length" {
            *v = Value::U32(160);
        }
    }
    let names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    let tensors: Vec<_> = names.iter().map(|n| ct.tensor(&mut f, n, &candle_core::Device::Cpu).unwrap()).collect();
    let q = dir.path("wrong.gguf");
    let mut out = std::fs::File::create(&q).unwrap();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &_)> = names.iter().map(String::as_str).zip(tensors.iter()).collect();
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
    drop(out);
    match load(&q) {
        Err(Error::TensorShape { name, expected, actual }) => {
            assert!(name.starts_with("blk.0.ffn_"), "{name}");
            assert_ne!(expected, actual);
        }
        other => panic!("{other:?}"),
    }
}
