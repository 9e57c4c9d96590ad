//! Fuzzing as property tests: real adapter files (a PEFT directory, `adapter_config.json`, a
//! steering vector with its sidecar, a control-vector GGUF, a llama.cpp LoRA GGUF), mutated
//! and loaded. Every case must end in `Ok` or a typed error: no panic, no abort, and no
//! allocation far beyond what the input's size justifies (this binary's allocator records the
//! largest request and the total of every case, per thread).
//!
//! The mutation engine is a short copy of `tailor::testing::mutate` (this crate cannot depend
//! on `tailor`). Each test draws its seed at random (or takes `TAILOR_TEST_SEED`), prints it
//! past the harness' capture (so it survives an abort) and names it with the case's mutations
//! in every failure: `TAILOR_TEST_SEED=<seed> cargo test --release -p tailor-adapters --test
//! it fuzz::` replays the run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tailor_adapters::gguf_lora;
use tailor_adapters::peft::{self, LoadOptions};
use tailor_adapters::{LoraAdapter, LoraConfig, QkLayout, SteeringMeta, SteeringVector, Target};

use crate::common::{random_adapter, TempDir, SHAPES};

// ------------------------------------------------------------------- allocation tracking

/// Forwards to the system allocator, recording per thread the largest request and the sum of
/// all requests since the last [`reset_allocs`].
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
    let _ = TOTAL.try_with(|c| c.set(c.get().saturating_add(size)));
}

// SAFETY: every method forwards to `System` with the caller's arguments; the bookkeeping
// touches only const-initialised thread-local `Cell`s (no allocation, no destructor).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System` through this allocator with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `dealloc`; `new_size` is the caller's valid request.
        unsafe { System.realloc(p, l, new_size) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// What a loader may allocate for `len` input bytes: one request of at most 16 bytes per
/// input byte plus 1 MiB, at most 64 bytes per input byte plus 16 MiB in all (a loader copies
/// the values once, widening f16 to f32; JSON and safetensors headers cost a few times their
/// text). Tensors that overlap, each copied again, or a count taken on trust are far beyond.
fn alloc_budget(len: usize) -> (usize, usize) {
    (16 * len + (1 << 20), 64 * len + (16 << 20))
}

/// Runs one case: `f` must not panic and must stay within [`alloc_budget`] of `len`.
fn run_case<T>(ctx: &dyn Fn() -> String, len: usize, f: impl FnOnce() -> T) -> T {
    LARGEST.with(|c| c.set(0));
    TOTAL.with(|c| c.set(0));
    let out = catch_unwind(AssertUnwindSafe(f));
    let (largest, total) = (LARGEST.with(Cell::get), TOTAL.with(Cell::get));
    let out = out.unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        panic!("{}: the loader panicked: {}", ctx(), msg.unwrap_or_default())
    });
    let (one, all) = alloc_budget(len);
    assert!(
        largest <= one && total <= all,
        "{}: {len} input bytes made a {largest}-byte allocation and {total} bytes in all (budget {one} / {all})",
        ctx()
    );
    out
}

fn seed(test: &str) -> u64 {
    let seed = std::env::var("TAILOR_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    // Past the harness' capture: seen even if the process aborts.
    let _ = writeln!(std::io::stderr(), "fuzz::{test}: seed {seed} (TAILOR_TEST_SEED={seed} replays it)");
    seed
}

// ------------------------------------------------------- mutations (tailor::testing::mutate)

const EXTREMES: [u64; 12] =
    [0, 1, 0xff, 0x7fff_ffff, 1 << 31, 0xffff_ffff, 1 << 32, 1 << 40, 1 << 60, i64::MAX as u64, 1 << 63, u64::MAX];

/// One edit; positions past the end are clamped.
#[derive(Debug, Clone)]
enum Mutation {
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// `width` bytes at a position overwritten with a value, little-endian.
    Overwrite(usize, u8, u64),
    /// `len` bytes from `from` inserted again at `to`.
    Duplicate(usize, usize, usize),
}

impl Mutation {
    fn apply(&self, b: &mut Vec<u8>) {
        let n = b.len();
        match *self {
            Mutation::SetByte(at, v) if at < n => b[at] = v,
            Mutation::SetByte(..) => {}
            Mutation::Truncate(len) => b.truncate(len),
            Mutation::Insert(at, ref bytes) => drop(b.splice(at.min(n)..at.min(n), bytes.iter().copied())),
            Mutation::Delete(at, len) => drop(b.drain(at.min(n)..at.saturating_add(len).min(n))),
            Mutation::Overwrite(at, w, v) if at < n => {
                let end = (at + usize::from(w)).min(n);
                b[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            Mutation::Overwrite(..) => {}
            Mutation::Duplicate(from, len, to) => {
                let chunk = b[from.min(n)..from.saturating_add(len).min(n)].to_vec();
                drop(b.splice(to.min(n)..to.min(n), chunk));
            }
        }
    }
}

/// 1 to 4 random mutations of `input`, three in four inside its first `hot` bytes; overwrites
/// aim at positions holding a small little-endian number (likely a length or count).
fn mutate(rng: &mut StdRng, input: &[u8], hot: usize) -> (Vec<u8>, Vec<Mutation>) {
    let mut b = input.to_vec();
    let mut done = Vec::new();
    for _ in 0..rng.random_range(1..=4) {
        let n = b.len();
        let pos = |rng: &mut StdRng| {
            let lim = if rng.random_bool(0.75) { hot.min(n) } else { n };
            if lim == 0 { 0 } else { rng.random_range(0..lim) }
        };
        let m = match rng.random_range(0..100) {
            0..=29 => Mutation::SetByte(pos(rng), rng.random()),
            30..=37 => Mutation::Truncate(pos(rng)),
            38..=47 => {
                let k = rng.random_range(1..=16);
                Mutation::Insert(pos(rng), (0..k).map(|_| rng.random()).collect())
            }
            48..=55 => Mutation::Delete(pos(rng), rng.random_range(1..=16)),
            56..=61 => Mutation::Duplicate(pos(rng), rng.random_range(1..=64), pos(rng)),
            _ => {
                let w: u8 = if rng.random_bool(0.6) { 8 } else { 4 };
                let small = |at: usize| {
                    let mut x = [0u8; 8];
                    let s = b.get(at..at + usize::from(w)).unwrap_or(&[]);
                    x[..s.len()].copy_from_slice(s);
                    !s.is_empty() && (1..=1 << 20).contains(&u64::from_le_bytes(x))
                };
                let at = (0..48).map(|_| pos(rng)).find(|&a| small(a)).unwrap_or_else(|| pos(rng));
                let v = if rng.random_bool(0.25) { rng.random() } else { EXTREMES[rng.random_range(0..EXTREMES.len())] };
                Mutation::Overwrite(at, w, v)
            }
        };
        m.apply(&mut b);
        done.push(m);
    }
    (b, done)
}

fn hostile_values() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(-2147483648i64),
        json!(2147483648u64),
        json!(1u64 << 60),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.5),
        json!(1e308),
        json!(-1e308),
        json!(""),
        json!("LORA"),
        json!("q_proj"),
        json!("x".repeat(4096)),
        json!([]),
        json!({}),
        json!([null]),
        json!([0, -1, 1u64 << 60]),
        json!(["q_proj", "q_proj", ""]),
    ]
}

/// One random structural change to a JSON document (as `tailor::testing::mutate::mutate_json`):
/// a node replaced by a hostile value or retyped, wrapped in a list, nested deep, removed; a
/// list emptied or grown.
fn mutate_json(rng: &mut StdRng, v: &mut Value) -> String {
    fn ptrs(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| ptrs(x, format!("{at}/{i}"), out)),
            Value::Object(o) => o.iter().for_each(|(k, x)| ptrs(x, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out)),
            _ => {}
        }
        out.push(at);
    }
    let mut all = Vec::new();
    ptrs(v, String::new(), &mut all);
    let p = all[rng.random_range(0..all.len())].clone();
    let op = rng.random_range(0..100);
    if op < 15 {
        if let Some((parent, key)) = p.rsplit_once('/') {
            let key = key.replace("~1", "/").replace("~0", "~");
            match v.pointer_mut(parent) {
                Some(Value::Object(o)) => drop(o.remove(&key)),
                Some(Value::Array(a)) => {
                    if let Some(i) = key.parse::<usize>().ok().filter(|i| *i < a.len()) {
                        a.remove(i);
                    }
                }
                _ => {}
            }
            return format!("remove {p}");
        }
    }
    let node = v.pointer_mut(&p).expect("a pointer just listed");
    match op {
        0..=59 => {
            let h = hostile_values();
            *node = h[rng.random_range(0..h.len())].clone();
            format!("{p} = {:.60}", node.to_string())
        }
        60..=69 => {
            *node = match node.take() {
                Value::Number(n) => Value::String(n.to_string()),
                Value::String(s) => s.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number),
                Value::Array(a) => a.into_iter().next().unwrap_or(Value::Null),
                Value::Object(o) => Value::Array(o.into_iter().map(|(_, x)| x).collect()),
                other => json!([other]),
            };
            format!("{p} retyped")
        }
        70..=77 => {
            *node = json!([node.take()]);
            format!("{p} wrapped in a list")
        }
        78..=81 => {
            let depth = rng.random_range(100..400);
            for _ in 0..depth {
                *node = json!([node.take()]);
            }
            format!("{p} nested {depth} deep")
        }
        _ => match node {
            Value::Array(a) if rng.random_bool(0.5) => {
                a.clear();
                format!("{p} emptied")
            }
            Value::Array(a) => {
                let x = a.first().cloned().unwrap_or(Value::Null);
                a.extend(std::iter::repeat_n(x, 40));
                format!("{p} grew")
            }
            other => {
                *other = Value::Null;
                format!("{p} = null")
            }
        },
    }
}

/// A mutated JSON text: mostly valid JSON changed structurally (1 to 3 changes), sometimes a
/// number literal no serde type holds, sometimes broken bytes.
fn mutate_json_text(rng: &mut StdRng, text: &str) -> (String, String) {
    match rng.random_range(0..10) {
        0..=5 => {
            let mut v: Value = serde_json::from_str(text).expect("seed JSON");
            let what: Vec<String> = (0..rng.random_range(1..=3)).map(|_| mutate_json(rng, &mut v)).collect();
            let out = if rng.random_bool(0.5) { v.to_string() } else { serde_json::to_string_pretty(&v).unwrap() };
            (out, what.join("; "))
        }
        6..=7 => {
            let b = text.as_bytes();
            let starts: Vec<usize> =
                (1..b.len()).filter(|&i| (b[i].is_ascii_digit() || b[i] == b'-') && matches!(b[i - 1], b':' | b'[' | b',' | b' ')).collect();
            let Some(&s) = starts.get(rng.random_range(0..starts.len().max(1))) else { return (text.into(), "no number".into()) };
            let e = (s + 1..b.len()).find(|&i| !matches!(b[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')).unwrap_or(b.len());
            let lits = ["1e400", "-0", "18446744073709551616", "-9223372036854775809", "1.5", "-1", "0", "1e-400"];
            let lit = lits[rng.random_range(0..lits.len())];
            (format!("{}{lit}{}", &text[..s], &text[e..]), format!("number at {s} = {lit}"))
        }
        _ => {
            let (b, m) = mutate(rng, text.as_bytes(), usize::MAX);
            (String::from_utf8_lossy(&b).into_owned(), format!("{m:?}"))
        }
    }
}

/// A safetensors file with its JSON header changed structurally, the length prefix fixed.
fn mutate_safetensors_header(rng: &mut StdRng, st: &[u8]) -> Option<(Vec<u8>, String)> {
    let n = usize::try_from(u64::from_le_bytes(st.get(..8)?.try_into().ok()?)).ok()?;
    let mut header: Value = serde_json::from_slice(st.get(8..8 + n)?).ok()?;
    let what = mutate_json(rng, &mut header);
    let h = header.to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&st[8 + n..]);
    Some((out, format!("header: {what}")))
}

// -------------------------------------------------------------------------------- tests

/// A config as PEFT 0.13 writes it for a llama model.
const PEFT_CONFIG: &str = r#"{"alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
 "bias": "none", "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true, "layer_replication": null,
 "layers_pattern": null, "layers_to_transform": [0, 2], "loftq_config": {}, "lora_alpha": 16, "lora_dropout": 0.05,
 "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null, "peft_type": "LORA", "r": 8,
 "rank_pattern": {}, "revision": null, "target_modules": ["v_proj", "q_proj"], "task_type": "CAUSAL_LM",
 "use_dora": false, "use_rslora": false}"#;

#[test]
fn mutated_adapter_configs_parse_or_fail_cleanly() {
    const CASES: usize = 3000;
    let seed = seed("mutated_adapter_configs_parse_or_fail_cleanly");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ours = LoraConfig::new(4, 8.0, &[Target::Q, Target::Down]);
    ours.set_base_fingerprint(tailor_adapters::BaseFingerprint::new("sha256:0123"));
    let seeds = [PEFT_CONFIG.to_owned(), ours.to_json()];
    let (mut ok, start) = (0, Instant::now());
    for case in 0..CASES {
        let (text, what) = mutate_json_text(&mut rng, &seeds[case % 2]);
        let ctx = || format!("seed {seed}, case {case}, {what}, config {text:.300}");
        let parsed = run_case(&ctx, text.len(), || {
            let c = LoraConfig::from_json(&text, Path::new("adapter_config.json")).ok()?;
            // A config that validates is usable.
            let _ = (c.scale(), c.base_fingerprint());
            for layer in [0, 1, 7, usize::MAX] {
                for t in Target::ALL {
                    let _ = c.targets(layer, t);
                }
            }
            LoraAdapter::new(c.clone()).ok().map(|_| c)
        });
        // And survives a round trip (outside the budget: pretty-printing an unknown field
        // nested 120 deep takes 120² bytes of indentation, as PEFT's own json.dump would).
        if let Some(c) = parsed {
            let back = LoraConfig::from_json(&c.to_json(), Path::new("again")).unwrap_or_else(|e| panic!("{}: round trip: {e}", ctx()));
            assert_eq!(back, c, "{}", ctx());
            ok += 1;
        }
    }
    eprintln!("{CASES} configs in {:.2?}: {ok} valid", start.elapsed());
}

#[test]
fn mutated_peft_adapters_load_or_fail_cleanly() {
    const CASES: usize = 1200;
    let seed = seed("mutated_peft_adapters_load_or_fail_cleanly");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = TempDir::new("fuzz-peft");
    let good = tmp.path().join("good");
    let mut adapter = random_adapter(&mut rng, 2, 4.0, &[Target::Q, Target::Gate, Target::Down]);
    // One pair with values of several magnitudes in f16 range, as a PEFT export has.
    adapter.get_mut(1, Target::Q).unwrap().a_mut()[0] = 1e-3;
    peft::save(&adapter, &good).unwrap();
    let config = std::fs::read_to_string(good.join(peft::CONFIG_FILE)).unwrap();
    let weights = std::fs::read(good.join(peft::WEIGHTS_FILE)).unwrap();
    let header = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let dir = tmp.path().join("case");
    std::fs::create_dir_all(&dir).unwrap();
    let (mut ok, start) = (0, Instant::now());
    for case in 0..CASES {
        // The weights' bytes, their header's JSON, or the config.
        let (cfg, st, what) = match rng.random_range(0..10) {
            0..=4 => {
                let (b, m) = mutate(&mut rng, &weights, header);
                (config.clone(), b, format!("weights {m:?}"))
            }
            5..=6 => {
                let (b, m) = mutate_safetensors_header(&mut rng, &weights).unwrap();
                (config.clone(), b, m)
            }
            _ => {
                let (c, m) = mutate_json_text(&mut rng, &config);
                (c, weights.clone(), format!("config {m}"))
            }
        };
        std::fs::write(dir.join(peft::CONFIG_FILE), &cfg).unwrap();
        std::fs::write(dir.join(peft::WEIGHTS_FILE), &st).unwrap();
        let with_shapes = rng.random_bool(0.5);
        let ctx = || format!("seed {seed}, case {case}, shapes {with_shapes}, {what}");
        let loaded = run_case(&ctx, cfg.len() + st.len(), || {
            let opts = if with_shapes { LoadOptions::new().with_shapes(SHAPES) } else { LoadOptions::new() };
            match peft::load(&dir, &opts) {
                Ok(a) => {
                    // What loaded is consistent: every pair runs.
                    for ((_, _), w) in a.iter() {
                        let x = vec![0.5; w.in_features()];
                        let mut y = vec![0.0; w.out_features()];
                        w.add_delta(&x, 1, &mut y, 1.0);
                    }
                    true
                }
                Err(e) => {
                    let _ = (e.kind(), e.to_string());
                    false
                }
            }
        });
        ok += loaded as usize;
    }
    eprintln!("{CASES} adapters in {:.2?}: {ok} loaded", start.elapsed());
}

fn steering_sample() -> SteeringVector {
    let mut rng = StdRng::seed_from_u64(9);
    let mut v = SteeringVector::new(8, SteeringMeta::now("mean_diff", "fuzz seed", Some("sha256:ab".into()))).unwrap();
    for l in [1, 3, 12] {
        v.insert(l, (0..8).map(|_| rng.random_range(-1.0..1.0)).collect()).unwrap();
    }
    v
}

#[test]
fn mutated_steering_files_load_or_fail_cleanly() {
    const CASES: usize = 1000;
    let seed = seed("mutated_steering_files_load_or_fail_cleanly");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = TempDir::new("fuzz-steer");
    let good = tmp.path().join("good.safetensors");
    let v = steering_sample();
    v.save(&good).unwrap();
    let st = std::fs::read(&good).unwrap();
    let side = String::from_utf8(std::fs::read(tailor_adapters::steering::sidecar_path(&good)).unwrap()).unwrap();
    let header = 8 + u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let path = tmp.path().join("case.safetensors");
    let (mut ok, start) = (0, Instant::now());
    for case in 0..CASES {
        let (b, s, what) = match rng.random_range(0..10) {
            0..=4 => {
                let (b, m) = mutate(&mut rng, &st, header);
                (b, side.clone(), format!("tensors {m:?}"))
            }
            5..=6 => {
                let (b, m) = mutate_safetensors_header(&mut rng, &st).unwrap();
                (b, side.clone(), m)
            }
            _ => {
                let (s, m) = mutate_json_text(&mut rng, &side);
                (st.clone(), s, format!("sidecar {m}"))
            }
        };
        std::fs::write(&path, &b).unwrap();
        std::fs::write(tailor_adapters::steering::sidecar_path(&path), &s).unwrap();
        let ctx = || format!("seed {seed}, case {case}, {what}");
        let loaded = run_case(&ctx, b.len() + s.len(), || match SteeringVector::load(&path) {
            Ok(v) => {
                assert!(v.layers().all(|(_, d)| d.len() == v.d_model() && d.iter().all(|x| x.is_finite())));
                true
            }
            Err(_) => false,
        });
        ok += loaded as usize;
    }
    eprintln!("{CASES} steering files in {:.2?}: {ok} loaded", start.elapsed());
}

#[test]
fn mutated_control_vector_ggufs_import_or_fail_cleanly() {
    const CASES: usize = 2500;
    let seed = seed("mutated_control_vector_ggufs_import_or_fail_cleanly");
    let mut rng = StdRng::seed_from_u64(seed);
    let good = steering_sample().to_gguf_bytes("llama").unwrap();
    let tmp = TempDir::new("fuzz-cv");
    let path = tmp.path().join("case.gguf");
    let (mut ok, start) = (0, Instant::now());
    for case in 0..CASES {
        let (b, m) = mutate(&mut rng, &good, good.len());
        // Through the file API on some cases, in memory on the rest.
        let via_file = case % 10 == 0;
        if via_file {
            std::fs::write(&path, &b).unwrap();
        }
        let ctx = || format!("seed {seed}, case {case}, mutations {m:?}");
        let loaded = run_case(&ctx, b.len(), || {
            let r = if via_file { SteeringVector::import_gguf(&path) } else { SteeringVector::from_gguf_bytes(&b, Path::new("x.gguf")) };
            match r {
                Ok((v, _)) => {
                    assert!(v.layers().all(|(l, d)| l > 0 && d.len() == v.d_model()));
                    true
                }
                Err(_) => false,
            }
        });
        ok += loaded as usize;
    }
    eprintln!("{CASES} control vectors in {:.2?}: {ok} imported", start.elapsed());
}

#[test]
fn mutated_lora_ggufs_import_or_fail_cleanly() {
    const CASES: usize = 2500;
    let seed = seed("mutated_lora_ggufs_import_or_fail_cleanly");
    let mut rng = StdRng::seed_from_u64(seed);
    let layout = QkLayout::Interleaved { n_heads: 4, n_kv_heads: 2 };
    let adapter = random_adapter(&mut StdRng::seed_from_u64(3), 2, 4.0, &[Target::Q, Target::K, Target::Down]);
    let good = gguf_lora::to_gguf_bytes(&adapter, "llama", layout).unwrap();
    let tmp = TempDir::new("fuzz-lora-gguf");
    let path = tmp.path().join("case.gguf");
    let (mut ok, start) = (0, Instant::now());
    for case in 0..CASES {
        // The header (metadata with the config JSON, tensor infos) is the first ~2 KB.
        let (b, m) = mutate(&mut rng, &good, 2048);
        let via_file = case % 10 == 0;
        if via_file {
            std::fs::write(&path, &b).unwrap();
        }
        let ctx = || format!("seed {seed}, case {case}, mutations {m:?}");
        let loaded = run_case(&ctx, b.len(), || {
            let r = if via_file { gguf_lora::import(&path, layout) } else { gguf_lora::from_gguf_bytes(&b, Path::new("x.gguf"), layout) };
            r.is_ok()
        });
        ok += loaded as usize;
    }
    eprintln!("{CASES} LoRA GGUFs in {:.2?}: {ok} imported", start.elapsed());
}

// ------------------------------------------------------------------ regressions

/// A GGUF v3 file from raw parts, laid out as a hostile writer pleases: string metadata, F32
/// tensor infos with any dimensions and offsets, then `data` at the 32-byte aligned start.
fn raw_gguf(kv: &[(&str, &str)], tensors: &[(String, Vec<u64>, u64)], data: &[u8]) -> Vec<u8> {
    let put_str = |w: &mut Vec<u8>, s: &str| {
        w.extend_from_slice(&(s.len() as u64).to_le_bytes());
        w.extend_from_slice(s.as_bytes());
    };
    let mut w = b"GGUF".to_vec();
    w.extend_from_slice(&3u32.to_le_bytes());
    w.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    w.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut w, k);
        w.extend_from_slice(&8u32.to_le_bytes());
        put_str(&mut w, v);
    }
    for (name, dims, off) in tensors {
        put_str(&mut w, name);
        w.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| w.extend_from_slice(&d.to_le_bytes()));
        w.extend_from_slice(&0u32.to_le_bytes());
        w.extend_from_slice(&off.to_le_bytes());
    }
    w.resize(w.len().next_multiple_of(32), 0);
    w.extend_from_slice(data);
    w
}

/// Found by reading `parse_gguf` while writing these tests: nothing stopped tensors from
/// sharing bytes, and each is copied out, so 2,000 directions all pointing at one 64 KiB block
/// (a 150 KB file) loaded as a 128 MiB steering vector, and a 4 MB file could ask for 16 GiB.
/// Tensors may now hold no more bytes in all than the file.
#[test]
fn tensors_sharing_bytes_are_refused() {
    let d = 16_384u64;
    let tensors: Vec<_> = (1..=2000).map(|l| (format!("direction.{l}"), vec![d], 0)).collect();
    let data: Vec<u8> = std::iter::repeat_n(0.5f32.to_le_bytes(), d as usize).flatten().collect();
    let bytes = raw_gguf(&[("general.architecture", "controlvector")], &tensors, &data);
    let ctx = || "2000 directions sharing one block".to_owned();
    let r = run_case(&ctx, bytes.len(), || SteeringVector::from_gguf_bytes(&bytes, Path::new("x.gguf")).map(|(v, _)| v.len()));
    assert!(matches!(&r, Err(tailor_adapters::Error::InvalidTensors { reason, .. }) if reason.contains("overlap")), "{r:?}");
    // The same through the LoRA reader: 40 layers' pairs on the same 128 bytes.
    let tensors: Vec<_> = (0..40)
        .flat_map(|l| [(format!("blk.{l}.attn_v.weight.lora_a"), vec![16, 2], 0), (format!("blk.{l}.attn_v.weight.lora_b"), vec![2, 16], 0)])
        .collect();
    let bytes = raw_gguf(&[("general.type", "adapter"), ("adapter.type", "lora")], &tensors, &[0; 128]);
    let r = gguf_lora::from_gguf_bytes(&bytes, Path::new("x.gguf"), QkLayout::Hf);
    assert!(matches!(&r, Err(tailor_adapters::Error::InvalidTensors { reason, .. }) if reason.contains("overlap")), "{r:?}");
}

/// Found by reading `gguf_lora::from_gguf_bytes`: a pair of rank 0 holds no values, so its
/// `lora_b` could claim 2^40 output rows for free, and the q/k row permutation of a llama base
/// then asked for an 8 TiB index table (an abort) before the rank was checked.
#[test]
fn an_empty_lora_pair_with_a_huge_width_is_refused() {
    let tensors = vec![
        ("blk.0.attn_q.weight.lora_a".to_string(), vec![24, 0], 0),
        ("blk.0.attn_q.weight.lora_b".to_string(), vec![0, 1 << 40], 0),
    ];
    let bytes = raw_gguf(&[("general.type", "adapter"), ("adapter.type", "lora")], &tensors, &[]);
    let layout = QkLayout::Interleaved { n_heads: 4, n_kv_heads: 2 };
    let ctx = || "rank 0, 2^40 rows".to_owned();
    let r = run_case(&ctx, bytes.len(), || gguf_lora::from_gguf_bytes(&bytes, Path::new("x.gguf"), layout).map(|a| a.len()));
    assert!(matches!(r, Err(tailor_adapters::Error::Shape { .. })), "{r:?}");
}
