//! Fuzzing as property tests: real GGUF files mutated by [`tailor::testing::mutate`] and fed
//! to the loaders of untrusted bytes (`GgufFile::open`, and `Engine::load`, which reads the
//! model config, views and shape-checks every weight, builds the tokenizer and compiles the
//! chat template). Every case must end in `Ok` or a typed error: no panic, no abort, and no
//! allocation far beyond what the file's size justifies (this binary's allocator records the
//! largest request and the total of every case, per thread).
//!
//! Each test draws its seed at random (or takes `TAILOR_TEST_SEED`), prints it to stderr
//! uncaptured (so it survives an abort) and names it with the case's mutations in every
//! failure; `TAILOR_TEST_SEED=<seed> cargo test --release -p tailor --test it fuzz::` replays
//! the run. A failing input is also saved under the target's temporary directory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::GgmlDType;
use rand::Rng as _;
use tailor::model::gguf::GgufFile;
use tailor::testing::mutate::{apply, gguf_fields, Mutation, Mutator};
use tailor::testing::TinyModel;
use tailor::{Engine, EngineConfig, Error, ErrorKind, ModelCache};

use crate::common::TempDir;

// ------------------------------------------------------------------- allocation tracking

/// Forwards to the system allocator, recording per thread the largest request and the sum of
/// all requests since the last [`reset_allocs`].
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the allocator may run while the thread's locals are torn down.
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

fn reset_allocs() {
    LARGEST.with(|c| c.set(0));
    TOTAL.with(|c| c.set(0));
}

/// (largest single request, total requested) on this thread since [`reset_allocs`].
fn allocs() -> (usize, usize) {
    (LARGEST.with(Cell::get), TOTAL.with(Cell::get))
}

const MIB: usize = 1 << 20;

/// What a loader may allocate for an input of `len` bytes: a single request of at most
/// 64 bytes per input byte (candle keeps each element of a GGUF array as a 32-byte `Value`,
/// even a one-byte one, and a growing `Vec` doubles) plus 8 MiB, and in all at most 256 bytes
/// per input byte plus 64 MiB (measured: at most 16 MiB in all, 150 bytes per input byte for
/// the smallest inputs, the 2 MB real header included). Hostile headers asking for 2^31 layers
/// or overlapping tensors copied once per tensor are far beyond either.
fn alloc_budget(len: usize) -> (usize, usize) {
    (64 * len + 8 * MIB, 256 * len + 64 * MIB)
}

// ------------------------------------------------------------------------------ harness

fn seed() -> u64 {
    std::env::var("TAILOR_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random)
}

/// Prints the seed past the test harness' capture, so it is seen even if the process aborts.
fn announce(test: &str, seed: u64) {
    let _ = writeln!(
        std::io::stderr(),
        "{test}: seed {seed} (TAILOR_TEST_SEED={seed} replays it; with TAILOR_FUZZ_TRACE=1 every case is printed first, \
         the last one printed is the culprit of an abort)"
    );
}

fn trace(ctx: &dyn Fn() -> String) {
    if std::env::var_os("TAILOR_FUZZ_TRACE").is_some() {
        let _ = writeln!(std::io::stderr(), "{}", ctx());
    }
}

thread_local! {
    /// Panics on this thread since the case began, caught or not.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Counts panics per thread (then lets the previous hook print them): a panic a loader
/// catches itself is contained, but still counted and reported.
fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANICS.try_with(|c| c.set(c.get() + 1));
            previous(info);
        }));
    });
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// Saves a failing input for a regression test; returns where.
fn save_failure(name: &str, bytes: &[u8]) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::write(&p, bytes);
    p
}

/// Runs one case: `f` must not panic and must stay within [`alloc_budget`] of `input`.
/// A panic caught inside the loader (candle's GGUF parser, contained by `GgufFile::open`)
/// adds one to `contained`.
fn run_case<T>(ctx: &dyn Fn() -> String, input: &[u8], contained: &mut usize, f: impl FnOnce() -> T) -> T {
    count_panics();
    trace(ctx);
    PANICS.with(|c| c.set(0));
    reset_allocs();
    let out = catch_unwind(AssertUnwindSafe(f));
    *contained += PANICS.with(Cell::get);
    let (largest, total) = allocs();
    let fail = |what: String| -> ! {
        let saved = save_failure(&format!("fuzz-{}.bin", rand::random::<u32>()), input);
        panic!("{}: {what} (input saved at {})", ctx(), saved.display())
    };
    let out = match out {
        Ok(v) => v,
        Err(p) => fail(format!("the loader panicked: {}", panic_text(&*p))),
    };
    let (max_one, max_total) = alloc_budget(input.len());
    if largest > max_one || total > max_total {
        fail(format!(
            "a {}-byte input made a {largest}-byte allocation and {total} bytes in all (budget {max_one} / {max_total})",
            input.len()
        ));
    }
    out
}

// -------------------------------------------------------------------------------- seeds

/// A model rewritten with extra metadata (candle's writer), e.g. a chat template.
fn with_metadata(src: &Path, dst: &Path, extra: Vec<(&str, Value)>) {
    let mut f = std::fs::File::open(src).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut md: Vec<(String, Value)> = ct.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    md.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
    md.sort_by(|a, b| a.0.cmp(&b.0));
    let mut names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    names.sort();
    let tensors: Vec<_> = names.iter().map(|n| ct.tensor(&mut f, n, &candle_core::Device::Cpu).unwrap()).collect();
    let mut out = std::fs::File::create(dst).unwrap();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &_)> = names.iter().map(String::as_str).zip(tensors.iter()).collect();
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
}

/// Three tiny models, each loadable: the default (Q8_0, tied), an untied Q4_1 one with an
/// F16 embedding and q/k/v biases, and the default with a chat template and sampling keys.
fn seed_models(dir: &TempDir) -> Vec<(String, Vec<u8>)> {
    let a = dir.path("seed-a.gguf");
    TinyModel::default().write(&a).unwrap();
    let b = dir.path("seed-b.gguf");
    let mut s = TinyModel::default();
    s.dtype = GgmlDType::Q4_1;
    s.embd_dtype = GgmlDType::F16;
    s.tied = false;
    s.qkv_bias = true;
    s.n_layers = 1;
    s.seed = 5;
    s.write(&b).unwrap();
    let c = dir.path("seed-c.gguf");
    let template = "{% for m in messages %}{{ bos_token + m['role'] + '\n' + m['content'] + eos_token }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant\n' }}{% endif %}";
    with_metadata(
        &a,
        &c,
        vec![
            ("tokenizer.chat_template", Value::String(template.into())),
            ("general.sampling.temp", Value::F32(0.7)),
            ("general.sampling.top_k", Value::U32(40)),
            ("general.alignment", Value::U32(32)),
        ],
    );
    let mut seeds = Vec::new();
    for (name, p) in [("tiny-q8", a), ("tiny-q4_1-untied-bias", b), ("tiny-template", c)] {
        let bytes = std::fs::read(&p).unwrap();
        // The seeds themselves load.
        let mut cfg = EngineConfig::default();
        cfg.threads = 1;
        Engine::load(&p, cfg).unwrap_or_else(|e| panic!("seed {name}: {e}"));
        seeds.push((name.to_string(), bytes));
    }
    seeds
}

fn engine_config() -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.threads = 1;
    cfg.context_length = 64;
    cfg
}

/// Pays one-time costs outside any case's budget: with `RUST_BACKTRACE` set, the first
/// candle error displayed resolves its backtrace's symbols (some 250 MB of debug info, once).
fn warm_up(dir: &TempDir) {
    let p = dir.path("warm-up.gguf");
    let mut b = b"GGUF\x03\0\0\0".to_vec();
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    std::fs::write(&p, &b).unwrap();
    let _ = GgufFile::open(&p).map(drop).map_err(|e| e.to_string());
}

/// Opens `path` and, when `full`, loads it as a model and runs a few tokens through it.
/// Errors must be typed (never an internal candle error); a model that loads must work.
fn load_and_use(path: &Path, full: bool) -> (bool, bool) {
    let opened = match GgufFile::open(path) {
        Ok(g) => {
            // Everything the header promised is really there.
            for e in g.tensors().values() {
                assert_eq!(g.tensor_bytes(e).len(), e.len);
            }
            for k in g.metadata().keys() {
                let _ = (g.get_str(k), g.get_usize(k), g.get_f32_opt(k), g.get_str_array(k));
            }
            true
        }
        Err(e) => {
            assert!(matches!(e, Error::InvalidGguf { .. }), "open: not an InvalidGguf error: {e:?}");
            assert_eq!(e.kind(), ErrorKind::CorruptData);
            false
        }
    };
    if !opened || !full {
        return (opened, false);
    }
    match Engine::load(path, engine_config()) {
        Ok(engine) => {
            let ids = engine.tokenize("<|im_start|>user Hi there, the thermometer").unwrap();
            let _ = engine.tokenizer().decode(&ids, false);
            let _ = engine.render_chat(&[tailor::ChatMessage::user("Hi")]);
            let vocab = engine.model_config().vocab_size as u32;
            let mut session = engine.new_session();
            // The file's context length may be 1 (the session clamps 0 to 1).
            let ids: Vec<u32> = ids.into_iter().filter(|&i| i < vocab).take(session.context_length().min(4)).collect();
            if !ids.is_empty() {
                let logits = session.feed(&ids).unwrap();
                assert_eq!(logits.len(), vocab as usize);
            }
            (true, true)
        }
        Err(e) => {
            assert_ne!(e.kind(), ErrorKind::Internal, "load: an internal error for a corrupt file: {e:?}");
            (true, false)
        }
    }
}

// -------------------------------------------------------------------------------- tests

#[test]
fn mutated_tiny_models_load_or_fail_cleanly() {
    const CASES: usize = 1500;
    let seed = seed();
    announce("fuzz::mutated_tiny_models_load_or_fail_cleanly", seed);
    let dir = TempDir::new("fuzz-gguf");
    let seeds = seed_models(&dir);
    warm_up(&dir);
    let mut mutators: Vec<Mutator> = seeds
        .iter()
        .enumerate()
        .map(|(i, (_, b))| {
            let (fields, header) = gguf_fields(b);
            assert!(fields.len() > 100, "the GGUF walker read the seed's header");
            Mutator::new(seed.wrapping_add(i as u64)).hot_prefix(header).fields(fields)
        })
        .collect();
    let path = dir.path("case.gguf");
    let (mut opened, mut loaded, mut full, mut contained) = (0, 0, 0, 0);
    let start = Instant::now();
    for case in 0..CASES {
        let k = case % seeds.len();
        let (name, input) = (&seeds[k].0, &seeds[k].1);
        let (bytes, mutations) = mutators[k].mutate(input);
        // The whole load on about a third of the cases; the header parser on all.
        let try_load = mutators[k].rng().random_bool(0.35);
        std::fs::write(&path, &bytes).unwrap();
        let ctx = || format!("seed {seed}, case {case}, seed file {name}, mutations {mutations:?}");
        let (o, l) = run_case(&ctx, &bytes, &mut contained, || load_and_use(&path, try_load));
        opened += o as usize;
        full += (o && try_load) as usize;
        loaded += l as usize;
    }
    eprintln!(
        "{CASES} cases in {:.2?}: {opened} opened, {full} of them loaded as models of which {loaded} loaded; \
         {contained} panics caught inside the loader",
        start.elapsed()
    );
}

/// A scalar, string or array a config reader must survive in place of any metadata value.
fn hostile_value(rng: &mut impl rand::Rng) -> Value {
    match rng.random_range(0..17) {
        0 => Value::U32(0),
        1 => Value::U32(u32::MAX),
        2 => Value::U64(1 << 60),
        3 => Value::U64(u64::MAX),
        4 => Value::I32(-1),
        5 => Value::I64(i64::MIN),
        6 => Value::F32(f32::NAN),
        7 => Value::F32(f32::INFINITY),
        8 => Value::F32(0.0),
        9 => Value::F64(-1e300),
        10 => Value::String(String::new()),
        11 => Value::String("{%".repeat(rng.random_range(1..2000))),
        12 => Value::Array(Vec::new()),
        13 => Value::Bool(true),
        14 => Value::Array(vec![Value::U32(7); 3]),
        15 => Value::U8(1),
        _ => Value::String("llama".into()),
    }
}

/// One semantic change to a model's metadata; the file stays valid GGUF. A value replaced (by
/// [`hostile_value`] or a neighbour in range), a key removed, a string cut or given template
/// syntax, an array element removed, repeated, emptied or retyped.
fn mutate_metadata(rng: &mut impl rand::Rng, md: &mut Vec<(String, Value)>) -> String {
    let i = rng.random_range(0..md.len());
    let key = md[i].0.clone();
    let v = &mut md[i].1;
    match (rng.random_range(0..10), v) {
        (0, _) => {
            md.remove(i);
            format!("{key} removed")
        }
        (1..=3, v) => {
            *v = hostile_value(rng);
            format!("{key} = {v:.60?}")
        }
        (4..=5, Value::U32(x)) => {
            *x = [0, 1, 2, 3, 4, 8, 16, 63, 65, 128, 268, 269, 270, 100_000][rng.random_range(0..14)];
            format!("{key} = {x}")
        }
        (_, Value::String(s)) => {
            let cut = (0..=rng.random_range(0..=s.len())).rev().find(|&c| s.is_char_boundary(c)).unwrap_or(0);
            let ins = ["{%", "}}", "{{ raise_exception('no') }}", "{% for x in range(10) %}", "\u{0}", "Ġ"][rng.random_range(0..6)];
            if rng.random_bool(0.5) {
                s.truncate(cut);
                format!("{key} cut at {cut}")
            } else {
                s.insert_str(cut, ins);
                format!("{key}: {ins:?} inserted at {cut}")
            }
        }
        (_, Value::Array(a)) if !a.is_empty() => {
            let j = rng.random_range(0..a.len());
            match rng.random_range(0..5) {
                0 => {
                    a.remove(j);
                    format!("{key}[{j}] removed")
                }
                1 => {
                    let x = a[j].clone();
                    a.insert(j, x);
                    format!("{key}[{j}] repeated")
                }
                2 => {
                    // Same type, other content: an empty string, a space-less merge, an id.
                    a[j] = match &a[j] {
                        Value::String(_) => Value::String(["", " ", "a b c", "<|im_end|>", "Ġ"][rng.random_range(0..5)].into()),
                        Value::I32(_) => Value::I32([-1, 0, 2, 3, 4, 5, 6, i32::MAX][rng.random_range(0..8)]),
                        Value::U32(_) => Value::U32(u32::MAX),
                        // Arrays hold one type: another element.
                        _ => a[(j + 1) % a.len()].clone(),
                    };
                    format!("{key}[{j}] = {:?}", a[j])
                }
                3 => {
                    a.truncate(j);
                    format!("{key} cut to {j} elements")
                }
                _ => {
                    // An element of another type: candle cannot write a mixed array, so the
                    // whole array becomes that type.
                    let x = hostile_value(rng);
                    *a = vec![x.clone(); a.len().min(300)];
                    format!("{key} = [{x:.40?}; ..]")
                }
            }
        }
        (_, v) => {
            *v = hostile_value(rng);
            format!("{key} = {v:.60?}")
        }
    }
}

/// Valid GGUF files with hostile metadata (the tensors untouched): every case is a whole
/// `Engine::load`, through the model config, the shape checks, the tokenizer and the template.
#[test]
fn hostile_metadata_loads_or_fails_cleanly() {
    const CASES: usize = 1200;
    let seed = seed();
    announce("fuzz::hostile_metadata_loads_or_fails_cleanly", seed);
    let dir = TempDir::new("fuzz-meta");
    let seeds = seed_models(&dir);
    warm_up(&dir);
    // Each seed's metadata and tensors, read once.
    let parts: Vec<_> = seeds
        .iter()
        .map(|(name, bytes)| {
            let mut cur = std::io::Cursor::new(bytes);
            let ct = gguf_file::Content::read(&mut cur).unwrap();
            let mut md: Vec<(String, Value)> = ct.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            md.sort_by(|a, b| a.0.cmp(&b.0));
            let mut names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
            names.sort();
            let tensors: Vec<_> = names
                .iter()
                .map(|n| (n.clone(), ct.tensor(&mut cur, n, &candle_core::Device::Cpu).unwrap()))
                .collect();
            (name.clone(), md, tensors)
        })
        .collect();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let path = dir.path("case.gguf");
    let (mut loaded, mut contained, start) = (0, 0, Instant::now());
    for case in 0..CASES {
        let (name, md, tensors) = &parts[case % parts.len()];
        let mut md = md.clone();
        let what: Vec<String> = (0..rng.random_range(1..=3)).map(|_| mutate_metadata(&mut rng, &mut md)).collect();
        let mut bytes = Vec::new();
        {
            let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
            let t_refs: Vec<(&str, &_)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
            gguf_file::write(&mut std::io::Cursor::new(&mut bytes), &md_refs, &t_refs).unwrap();
        }
        std::fs::write(&path, &bytes).unwrap();
        let ctx = || format!("seed {seed}, case {case}, seed file {name}, metadata {what:?}");
        let (_, l) = run_case(&ctx, &bytes, &mut contained, || load_and_use(&path, true));
        loaded += l as usize;
    }
    eprintln!(
        "{CASES} cases in {:.2?}: {loaded} loaded as models; {contained} panics caught inside the loader",
        start.elapsed()
    );
}

/// The shipped model's first 2 MB (its whole header, none of its weights): the truncated file
/// is refused, and so is every mutation of it. Skipped when the model is not in the cache.
#[test]
fn real_model_header_prefix_fails_cleanly() {
    const CASES: usize = 40;
    let model = std::env::var_os("TAILOR_MODEL").map(PathBuf::from).or_else(|| {
        let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(ModelCache::default_root)?;
        Some(ModelCache::new(root).base_model_path())
    });
    let Some(model) = model.filter(|p| p.is_file()) else {
        eprintln!("skipped: the real model is not in the cache");
        return;
    };
    let mut prefix = vec![0u8; 2 << 20];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(&model).unwrap();
        f.read_exact(&mut prefix).unwrap();
    }
    let seed = seed();
    announce("fuzz::real_model_header_prefix_fails_cleanly", seed);
    let dir = TempDir::new("fuzz-real");
    warm_up(&dir);
    let path = dir.path("prefix.gguf");
    std::fs::write(&path, &prefix).unwrap();
    let (fields, header) = gguf_fields(&prefix);
    assert!(header < prefix.len(), "the header fits in the prefix ({header} bytes)");
    match Engine::load(&path, engine_config()) {
        Err(e @ Error::InvalidGguf { .. }) => assert_eq!(e.kind(), ErrorKind::CorruptData),
        other => panic!("the truncated real model: {other:?}"),
    }
    // Header fields only: the token and merge strings are most of the prefix.
    let mut m = Mutator::new(seed).hot_prefix(header).fields(fields);
    let (start, mut contained) = (Instant::now(), 0);
    for case in 0..CASES {
        let (bytes, mutations) = m.mutate(&prefix);
        std::fs::write(&path, &bytes).unwrap();
        let ctx = || format!("seed {seed}, case {case}, real model prefix, mutations {mutations:?}");
        let loaded = run_case(&ctx, &bytes, &mut contained, || Engine::load(&path, engine_config()).is_ok());
        assert!(!loaded, "{}: a model without its weights loaded", ctx());
    }
    eprintln!("{CASES} cases in {:.2?}; {contained} panics caught inside the loader", start.elapsed());
}

/// Replays `mutations` on a seed model and checks the case as the fuzz test does.
fn replay(seed_file: &Path, mutations: &[Mutation]) -> (bool, bool) {
    let bytes = apply(&std::fs::read(seed_file).unwrap(), mutations);
    let p = seed_file.with_extension("replay.gguf");
    std::fs::write(&p, &bytes).unwrap();
    let ctx = || format!("replay of {mutations:?}");
    run_case(&ctx, &bytes, &mut 0, || load_and_use(&p, true))
}


// ------------------------------------------------------------------ regressions

/// Where the value of metadata key `key` starts in a GGUF file (after its type).
fn value_at(bytes: &[u8], key: &str) -> usize {
    let mut pat = (key.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(key.as_bytes());
    let at = bytes.windows(pat.len()).position(|w| w == pat).unwrap_or_else(|| panic!("no key {key}"));
    at + pat.len() + 4
}

/// Where the offset field of tensor `name`'s info is, and its value.
fn tensor_offset_at(bytes: &[u8], name: &str) -> (usize, u64) {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    let at = bytes.windows(pat.len()).position(|w| w == pat).unwrap_or_else(|| panic!("no tensor {name}"));
    let dims_at = at + pat.len();
    let n_dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into().unwrap()) as usize;
    let off_at = dims_at + 4 + 8 * n_dims + 4;
    (off_at, u64::from_le_bytes(bytes[off_at..off_at + 8].try_into().unwrap()))
}

/// Found by `mutated_tiny_models_load_or_fail_cleanly` (seed 12611941176083849124, case 822:
/// `llama.block_count` overwritten with 2^31 - 1): `ModelWeights::from_gguf` reserved room for
/// that many layers before reading the first one, and the process aborted on a 1 TiB
/// allocation. A block count the file's tensors cannot hold is now a metadata error.
#[test]
fn a_block_count_beyond_the_tensors_is_refused() {
    let dir = TempDir::new("fuzz-blocks");
    let seed_file = dir.path("seed.gguf");
    TinyModel::default().write(&seed_file).unwrap();
    // The case as the fuzz test found it (offsets of the current TinyModel layout).
    let _ = replay(
        &seed_file,
        &[Mutation::FlipBit { at: 3396, bit: 6 }, Mutation::Overwrite { at: 183, width: 4, value: 2147483647 }],
    );
    let bytes = std::fs::read(&seed_file).unwrap();
    let at = value_at(&bytes, "llama.block_count");
    for value in [3, 1 << 20, 0x7fff_ffff, 0xffff_ffff] {
        let p = dir.path("blocks.gguf");
        std::fs::write(&p, apply(&bytes, &[Mutation::Overwrite { at, width: 4, value }])).unwrap();
        match Engine::load(&p, engine_config()) {
            // 20 tensors hold at most two blocks of nine.
            Err(Error::Metadata { key, .. }) => assert_eq!(key, "llama.block_count"),
            other => panic!("block_count {value}: {other:?}"),
        }
    }
}

/// Found by reading `GgufFile::open` while writing the fuzz tests: nothing stopped tensors
/// from sharing bytes, so a small file could name thousands of layers that all point at one
/// matrix, and loading copies (odd `general.alignment`) or dequantizes (norms) those bytes once
/// per tensor: memory quadratic in the file's size. Overlapping tensors are now refused.
#[test]
fn tensors_sharing_bytes_are_refused() {
    let dir = TempDir::new("fuzz-overlap");
    let seed_file = dir.path("seed.gguf");
    let mut spec = TinyModel::default();
    spec.n_layers = 4;
    spec.write(&seed_file).unwrap();
    let bytes = std::fs::read(&seed_file).unwrap();
    // Every block after the first points at block 0's weights.
    let mut mutations = Vec::new();
    for l in 1..4 {
        for t in ["attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"] {
            let (_, off0) = tensor_offset_at(&bytes, &format!("blk.0.{t}.weight"));
            let (at, _) = tensor_offset_at(&bytes, &format!("blk.{l}.{t}.weight"));
            mutations.push(Mutation::Overwrite { at, width: 8, value: off0 });
        }
    }
    let p = dir.path("shared.gguf");
    std::fs::write(&p, apply(&bytes, &mutations)).unwrap();
    match GgufFile::open(&p) {
        Err(Error::InvalidGguf { reason, .. }) => assert!(reason.contains("overlap"), "{reason}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a file whose blocks share their weights was accepted"),
    }
    // One tensor's range reaching into the next one's.
    let (at, off) = tensor_offset_at(&bytes, "blk.0.attn_k.weight");
    std::fs::write(&p, apply(&bytes, &[Mutation::Overwrite { at, width: 8, value: off - 32 }])).unwrap();
    assert!(matches!(GgufFile::open(&p), Err(Error::InvalidGguf { .. })));
}

/// Metadata values at the edges: a key length whose product with the head count overflows
/// (a panic in debug builds before), and `general.alignment = 0`, which makes candle's parser
/// divide by zero (a panic `GgufFile::open` contains).
#[test]
fn overflowing_and_zero_metadata_values_are_errors() {
    let dir = TempDir::new("fuzz-meta");
    let a = dir.path("a.gguf");
    TinyModel::default().write(&a).unwrap();
    let p = dir.path("b.gguf");
    with_metadata(&a, &p, vec![("llama.attention.key_length", Value::U64(1 << 62))]);
    match Engine::load(&p, engine_config()) {
        Err(Error::Metadata { key, .. }) => assert_eq!(key, "llama.attention.key_length"),
        other => panic!("{other:?}"),
    }
    with_metadata(&a, &p, vec![("general.alignment", Value::U32(0))]);
    assert!(matches!(GgufFile::open(&p), Err(Error::InvalidGguf { .. })));
}
