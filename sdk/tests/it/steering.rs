//! Steering vectors on the decode path: exact arithmetic on a tiny model, the file formats,
//! hostile files, and the sentiment shift on the real model.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::quantized::GgmlDType;
use rand::{Rng, SeedableRng};
use tailor::adapters::steering::sidecar_path;
use tailor::adapters::{Error as AdapterError, SteeringMeta, SteeringVector};
use tailor::{compute_steering, Engine, EngineConfig, Hooks, Prompt, Readout, ResidualHook, SteeringHook, SteeringMethod, SteeringOptions};

use crate::common::{spec, tiny, TempDir};

fn random_vector(engine: &Engine, seed: u64) -> SteeringVector {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let c = engine.model_config();
    let mut v = SteeringVector::new(c.d_model, SteeringMeta::now("test", "random", Some(engine.base_fingerprint().0))).unwrap();
    for l in 0..c.n_layers {
        v.insert(l, (0..c.d_model).map(|_| rng.random_range(-0.5..0.5)).collect()).unwrap();
    }
    v
}

/// Records the residual after every layer (last call wins), after running the inner hook.
struct Recorder {
    inner: Option<Arc<dyn ResidualHook>>,
    seen: Mutex<Vec<Option<Vec<f32>>>>,
}

impl Recorder {
    fn new(inner: Option<Arc<dyn ResidualHook>>, n_layers: usize) -> Arc<Self> {
        Arc::new(Self { inner, seen: Mutex::new(vec![None; n_layers]) })
    }
    fn layer(&self, l: usize) -> Vec<f32> {
        self.seen.lock().unwrap()[l].clone().unwrap()
    }
}

impl ResidualHook for Recorder {
    fn applies_to(&self, _layer: usize) -> bool {
        true
    }
    fn after_layer(&self, layer: usize, hidden: &mut [f32], n_tokens: usize) {
        if let Some(h) = &self.inner {
            if h.applies_to(layer) {
                h.after_layer(layer, hidden, n_tokens);
            }
        }
        self.seen.lock().unwrap()[layer] = Some(hidden.to_vec());
    }
}

#[test]
fn zero_vector_and_zero_scale_leave_the_base_bit_identical() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q4_1, 64, rand::random()), 2);
    let tokens: Vec<u32> = (0..12).map(|i| (i * 23 + 1) % 260).collect();
    let base = engine.new_session().logits_all(&tokens).unwrap();
    let n_layers = engine.model_config().n_layers;
    let v = Arc::new(random_vector(&engine, 3));
    let mut s = engine.new_session();
    s.set_hooks(SteeringHook::new(v.clone(), 0.0, 0..=n_layers - 1).into_hooks());
    assert_eq!(s.logits_all(&tokens).unwrap(), base, "scale 0");
    let mut zero = (*v).clone();
    for l in 0..n_layers {
        zero.insert(l, vec![0.0; engine.model_config().d_model]).unwrap();
    }
    s.set_hooks(SteeringHook::new(Arc::new(zero), 3.0, 0..=n_layers - 1).into_hooks());
    assert_eq!(s.logits_all(&tokens).unwrap(), base, "zero vector");
    s.set_hooks(SteeringHook::new(v, 1.0, 0..=n_layers - 1).into_hooks());
    assert_ne!(s.logits_all(&tokens).unwrap(), base, "a real vector changes the logits");
}

#[test]
fn steering_at_a_layer_adds_the_scaled_vector_to_its_residual() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, rand::random()), 2);
    let (n_layers, d) = (engine.model_config().n_layers, engine.model_config().d_model);
    assert!(n_layers >= 2);
    let tokens: Vec<u32> = (0..9).map(|i| (i * 31 + 5) % 260).collect();
    let v = Arc::new(random_vector(&engine, 11));
    let (l, scale) = (1, -1.75f32);

    let base = Recorder::new(None, n_layers);
    let mut s = engine.new_session();
    s.set_hooks(Hooks { linear: None, residual: Some(base.clone()) });
    let base_logits = s.feed(&tokens).unwrap();

    // The hook only applies to layer `l` (range l..=l), even though the vector has every layer.
    let steered = Recorder::new(Some(Arc::new(SteeringHook::new(v.clone(), scale, l..=l))), n_layers);
    let mut s = engine.new_session();
    s.set_hooks(Hooks { linear: None, residual: Some(steered.clone()) });
    let steered_logits = s.feed(&tokens).unwrap();

    for before in 0..l {
        assert_eq!(steered.layer(before), base.layer(before), "layer {before} before the steered one is untouched");
    }
    let (b, s_) = (base.layer(l), steered.layer(l));
    assert_eq!(b.len(), s_.len());
    let dir = v.layer(l).unwrap();
    for (i, (x, y)) in b.iter().zip(&s_).enumerate() {
        // The hook computes exactly `x + scale·v` in f32.
        assert_eq!(*y, *x + scale * dir[i % d], "element {i}");
    }
    assert_ne!(steered_logits, base_logits);
}

#[test]
fn safetensors_round_trip_and_hostile_files() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, 5), 1);
    let dir = TempDir::new("steer");
    let mut v = random_vector(&engine, 7);
    v.remove(0);
    let path = dir.path("mood.safetensors");
    v.save(&path).unwrap();
    assert!(sidecar_path(&path).exists());
    let back = SteeringVector::load(&path).unwrap();
    assert_eq!(back, v);
    back.check_base(&engine.base_fingerprint().0, engine.model_config().d_model).unwrap();
    assert!(matches!(back.check_base("sha256:other", 64), Err(AdapterError::BaseMismatch { .. })));
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let bytes = std::fs::read(&path).unwrap();
    // Truncated tensors file.
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    assert!(matches!(SteeringVector::load(&path), Err(AdapterError::InvalidTensors { .. })));
    // Garbage.
    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").unwrap();
    assert!(matches!(SteeringVector::load(&path), Err(AdapterError::InvalidTensors { .. })));
    // A NaN inside a direction.
    let mut nan = bytes.clone();
    let at = nan.len() - 4;
    nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, &nan).unwrap();
    assert!(matches!(SteeringVector::load(&path), Err(AdapterError::NonFinite { .. })));
    // A sidecar that disagrees with the tensors (a crash between the two renames).
    std::fs::write(&path, &bytes).unwrap();
    let mut other = v.clone();
    other.remove(1);
    other.save(&dir.path("other.safetensors")).unwrap();
    std::fs::copy(sidecar_path(&dir.path("other.safetensors")), sidecar_path(&path)).unwrap();
    assert!(matches!(SteeringVector::load(&path), Err(AdapterError::InvalidConfig { .. })));
    // Missing files.
    assert!(matches!(SteeringVector::load(&dir.path("nope.safetensors")), Err(AdapterError::NotFound { .. })));
    // Wrong width in the sidecar.
    std::fs::write(sidecar_path(&path), br#"{"format_version":1,"d_model":32,"layers":[],"meta":{"method":"","source":"","base_fingerprint":null,"created_at":0}}"#).unwrap();
    assert!(matches!(SteeringVector::load(&path), Err(AdapterError::Shape { .. })));
}

#[test]
fn control_vector_gguf_round_trip_and_hostile_files() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, 5), 1);
    let dir = TempDir::new("steer-gguf");
    let mut v = random_vector(&engine, 9);
    let path = dir.path("mood.gguf");
    assert!(matches!(v.export_gguf(&path, "llama"), Err(AdapterError::Unsupported { .. })), "layer 0 cannot be exported");
    v.remove(0);
    v.export_gguf(&path, "llama").unwrap();
    let (back, hint) = SteeringVector::import_gguf(&path).unwrap();
    assert_eq!(back, v);
    assert_eq!(hint.as_deref(), Some("llama"));

    // The file is what llama.cpp reads: candle's independent GGUF reader agrees.
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    assert_eq!(ct.metadata["general.architecture"].to_string().unwrap(), "controlvector");
    assert_eq!(ct.metadata["controlvector.model_hint"].to_string().unwrap(), "llama");
    assert_eq!(ct.metadata["controlvector.layer_count"].to_u32().unwrap() as usize, v.len());
    for (l, dir_) in v.layers() {
        let t = ct.tensor(&mut f, &format!("direction.{l}"), &candle_core::Device::Cpu).unwrap();
        assert_eq!(t.dtype(), GgmlDType::F32);
        let got = t.dequantize(&candle_core::Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, dir_);
    }

    // A control vector written by candle's GGUF writer (as repeng/llama.cpp tools would
    // write one, without Tailor's metadata key) imports.
    use candle_core::quantized::gguf_file::Value;
    use candle_core::quantized::QTensor;
    let t = QTensor::quantize(&candle_core::Tensor::new(&[1f32, 2.0, 3.0, 4.0][..], &candle_core::Device::Cpu).unwrap(), GgmlDType::F32).unwrap();
    let foreign = |md: &[(&str, Value)], tensors: &[(&str, &QTensor)]| {
        let p = dir.path("foreign.gguf");
        let mut out = std::fs::File::create(&p).unwrap();
        let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
        candle_core::quantized::gguf_file::write(&mut out, &md, tensors).unwrap();
        drop(out);
        SteeringVector::import_gguf(&p)
    };
    let cv = || vec![("general.architecture", Value::String("controlvector".into())), ("controlvector.model_hint", Value::String("llama".into())), ("controlvector.layer_count", Value::U32(2))];
    let (got, _) = foreign(&cv(), &[("direction.1", &t), ("direction.2", &t)]).unwrap();
    assert_eq!(got.d_model(), 4);
    assert_eq!(got.layer(2).unwrap(), &[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(got.meta().method, "gguf_import");

    // Hostile or foreign files: typed errors.
    let lora = vec![("general.architecture", Value::String("llama".into()))];
    assert!(matches!(foreign(&lora, &[("direction.1", &t)]), Err(AdapterError::Unsupported { .. })));
    assert!(matches!(foreign(&cv(), &[("direction.0", &t)]), Err(AdapterError::InvalidTensors { .. })));
    assert!(matches!(foreign(&cv(), &[("blk.0.attn_q.weight", &t)]), Err(AdapterError::InvalidTensors { .. })));
    assert!(matches!(foreign(&cv(), &[]), Err(AdapterError::InvalidTensors { .. })));
    let short = QTensor::quantize(&candle_core::Tensor::new(&[1f32, 2.0][..], &candle_core::Device::Cpu).unwrap(), GgmlDType::F32).unwrap();
    assert!(matches!(foreign(&cv(), &[("direction.1", &t), ("direction.2", &short)]), Err(AdapterError::Shape { .. })));
    let f16 = QTensor::quantize(&candle_core::Tensor::new(&[1f32, 2.0, 3.0, 4.0][..], &candle_core::Device::Cpu).unwrap(), GgmlDType::F16).unwrap();
    assert!(matches!(foreign(&cv(), &[("direction.1", &f16)]), Err(AdapterError::InvalidTensors { .. })));
    let inf = QTensor::quantize(&candle_core::Tensor::new(&[1f32, f32::INFINITY, 3.0, 4.0][..], &candle_core::Device::Cpu).unwrap(), GgmlDType::F32).unwrap();
    assert!(matches!(foreign(&cv(), &[("direction.1", &inf)]), Err(AdapterError::NonFinite { .. })));

    // Truncations and random corruption of our own file: errors, never panics.
    let bytes = std::fs::read(&path).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    for _ in 0..300 {
        let n = rng.random_range(0..bytes.len() - 64 * 4);
        assert!(SteeringVector::from_gguf_bytes(&bytes[..n], &path).is_err(), "truncated at {n}");
        let mut b = bytes.clone();
        for _ in 0..4 {
            let i = rng.random_range(0..b.len());
            b[i] = rng.random();
        }
        let _ = SteeringVector::from_gguf_bytes(&b, &path);
    }
    assert!(matches!(SteeringVector::import_gguf(&dir.path("missing.gguf")), Err(AdapterError::NotFound { .. })));
}

#[test]
fn compute_steering_on_a_tiny_model() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, 21), 1);
    let pairs: Vec<(String, String)> = vec![("abc".into(), "xyz".into()), ("hello".into(), "world".into()), ("ab".into(), "zz".into())];
    let mean = compute_steering(&engine, &pairs, &SteeringOptions::default()).unwrap();
    let pca = compute_steering(&engine, &pairs, &SteeringOptions::with_method(SteeringMethod::Pca)).unwrap();
    let c = engine.model_config();
    assert_eq!(mean.len(), c.n_layers);
    assert_eq!(mean.meta().base_fingerprint.as_deref(), Some(engine.base_fingerprint().0.as_str()));
    assert_eq!(pca.meta().method, "pca_diff");
    for l in 0..c.n_layers {
        let (m, p) = (mean.layer(l).unwrap(), pca.layer(l).unwrap());
        let dot: f32 = m.iter().zip(p).map(|(a, b)| a * b).sum();
        assert!(dot >= 0.0, "layer {l}: PCA points the way of the mean difference");
    }
    // Swapping positives and negatives flips the mean difference exactly.
    let swapped: Vec<(String, String)> = pairs.iter().map(|(a, b)| (b.clone(), a.clone())).collect();
    let neg = compute_steering(&engine, &swapped, &SteeringOptions::default()).unwrap();
    for l in 0..c.n_layers {
        let (a, b) = (mean.layer(l).unwrap(), neg.layer(l).unwrap());
        assert!(a.iter().zip(b).all(|(x, y)| *x == -*y), "layer {l}");
    }
    assert!(compute_steering(&engine, &[], &SteeringOptions::default()).is_err());
    // Mean over tokens instead of the last token: a different, equally complete vector.
    let mut o = SteeringOptions::default();
    o.readout = Readout::MeanOverTokens;
    let over = compute_steering(&engine, &pairs, &o).unwrap();
    assert_eq!(over.len(), c.n_layers);
    assert_ne!(over.layer(1), mean.layer(1));
}

// ------------------------------------------------------------------------- the real model

fn real_engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let mut c = EngineConfig::default();
        c.threads = 2;
        Engine::load(crate::real_model::model_path(), c).unwrap()
    })
}

const PAIRS: [(&str, &str); 6] = [
    ("I love this, it makes me so happy.", "I hate this, it makes me so sad."),
    ("What a wonderful, beautiful day!", "What an awful, miserable day!"),
    ("The food was delicious and the staff were kind.", "The food was disgusting and the staff were rude."),
    ("I am thrilled with the results.", "I am furious about the results."),
    ("This is the best movie I have ever seen.", "This is the worst movie I have ever seen."),
    ("We had a fantastic time together.", "We had a horrible time together."),
];

fn first_token(engine: &Engine, word: &str) -> u32 {
    engine.tokenizer().encode(word, false).unwrap().into_iter().find(|t| Some(*t) != engine.tokenizer().bos()).unwrap()
}

/// Mean log-probability of the positive words minus the negative words as the next token.
fn sentiment_margin(engine: &Engine, hooks: Hooks, prompt: &str) -> f32 {
    let pos: Vec<u32> = [" great", " good", " happy", " love"].iter().map(|w| first_token(engine, w)).collect();
    let neg: Vec<u32> = [" terrible", " bad", " sad", " hate"].iter().map(|w| first_token(engine, w)).collect();
    let mut s = engine.new_session();
    s.set_hooks(hooks);
    let tokens = s.prompt_tokens(&Prompt::Text(prompt.into())).unwrap();
    let logits = s.feed(&tokens).unwrap();
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
    let lp = |ids: &[u32]| ids.iter().map(|i| logits[*i as usize] - lse).sum::<f32>() / ids.len() as f32;
    lp(&pos) - lp(&neg)
}

const NEUTRAL: [&str; 2] = ["I went to the store this morning. The weather was", "Let me tell you about my weekend. It was"];
/// Chosen from a sweep (scale = multiples of the mean difference, added after each block in
/// the range): one block alone (10, 12, 15) works as well with larger scales; spans of 13
/// blocks (6..=18) saturate past ±0.5 and turn non-monotonic at ±1.
const LAYERS: std::ops::RangeInclusive<usize> = 8..=12;
const SCALES: [f32; 5] = [-1.0, -0.5, 0.0, 0.5, 1.0];

#[test]
fn sentiment_vector_shifts_sentiment_words_monotonically_on_the_real_model() {
    let engine = real_engine();
    let pairs: Vec<(String, String)> = PAIRS.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    for method in [SteeringMethod::Mean, SteeringMethod::Pca] {
        let v = Arc::new(compute_steering(engine, &pairs, &SteeringOptions::with_method(method)).unwrap());
        for prompt in NEUTRAL {
            let base = sentiment_margin(engine, Hooks::none(), prompt);
            let margins: Vec<f32> =
                SCALES.iter().map(|s| sentiment_margin(engine, SteeringHook::new(v.clone(), *s, LAYERS).into_hooks(), prompt)).collect();
            eprintln!("steering {method:?} layers {LAYERS:?} after {prompt:?}: logp(pos) - logp(neg) at scales {SCALES:?} = {margins:.3?} (base {base:.3})");
            assert_eq!(margins[2], base, "scale 0 is the base");
            for w in margins.windows(2) {
                assert!(w[1] > w[0], "{method:?} {prompt:?}: not monotonic: {margins:?}");
            }
        }
    }
}

