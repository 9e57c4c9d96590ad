//! Fuzzing as a property test: a real export (memories with history and metadata, every kind
//! of feedback, adapter lineage) mutated and imported. Every case must end in `Ok` or a typed
//! error, without a panic, without allocating far beyond the text's size (this binary's
//! allocator records each case's largest request and total, per thread), and all or nothing: a
//! refused import leaves the profile as it was.
//!
//! The JSON mutations are a short copy of `tailor::testing::mutate` (this crate cannot depend
//! on `tailor`). The seed is random (or `TAILOR_TEST_SEED`), printed past the harness' capture
//! and named in every failure: `TAILOR_TEST_SEED=<seed> cargo test --release -p tailor-memory
//! --test memory fuzz::` replays the run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tailor_memory::{FeedbackKind, FeedbackQuery, MemoryConfig, MemoryUpdate, NewFeedback, NewMemory};

use crate::common::{hash_store, tmp_dir};

/// Forwards to the system allocator, recording per thread the largest request and the sum of
/// all requests since the case began. (SQLite allocates with its own `malloc`, not seen here.)
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

fn hostile_values() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(2147483648u64),
        json!(1u64 << 60),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(0.5),
        json!(1e308),
        json!(-1e308),
        json!(""),
        json!(" \n "),
        json!("thumbs_up"),
        json!("correction"),
        json!("x".repeat(20_000)),
        json!([]),
        json!({}),
        json!([null]),
        json!({"feedback_id": 1}),
    ]
}

/// One random structural change (as `tailor::testing::mutate::mutate_json`).
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

/// Mostly valid JSON changed structurally; sometimes an out-of-range number literal or
/// broken bytes.
fn mutate_text(rng: &mut StdRng, text: &str) -> (String, String) {
    match rng.random_range(0..10) {
        0..=6 => {
            let mut v: Value = serde_json::from_str(text).expect("seed JSON");
            let what: Vec<String> = (0..rng.random_range(1..=3)).map(|_| mutate_json(rng, &mut v)).collect();
            (v.to_string(), what.join("; "))
        }
        7..=8 => {
            let b = text.as_bytes();
            let starts: Vec<usize> =
                (1..b.len()).filter(|&i| (b[i].is_ascii_digit() || b[i] == b'-') && matches!(b[i - 1], b':' | b'[' | b',' | b' ')).collect();
            let Some(&s) = starts.get(rng.random_range(0..starts.len().max(1))) else { return (text.into(), "no number".into()) };
            let e = (s + 1..b.len()).find(|&i| !matches!(b[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')).unwrap_or(b.len());
            let lits = ["1e400", "-0", "18446744073709551616", "-9223372036854775809", "1.5", "-1", "1e-400"];
            let lit = lits[rng.random_range(0..lits.len())];
            (format!("{}{lit}{}", &text[..s], &text[e..]), format!("number at {s} = {lit}"))
        }
        _ => {
            let mut b = text.as_bytes().to_vec();
            let at = rng.random_range(0..b.len());
            let what = match rng.random_range(0..3) {
                0 => {
                    b[at] = rng.random();
                    format!("byte {at} set")
                }
                1 => {
                    b.truncate(at);
                    format!("truncated at {at}")
                }
                _ => {
                    b.drain(at..(at + 8).min(b.len()));
                    format!("8 bytes deleted at {at}")
                }
            };
            (String::from_utf8_lossy(&b).into_owned(), what)
        }
    }
}

#[test]
fn mutated_exports_import_or_fail_cleanly() {
    const CASES: usize = 1500;
    let seed = std::env::var("TAILOR_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    let _ = writeln!(std::io::stderr(), "fuzz::mutated_exports_import_or_fail_cleanly: seed {seed} (TAILOR_TEST_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);

    // The seed export: every kind of record the format holds.
    let src_dir = tmp_dir("fuzz-src");
    let mut src = hash_store(&src_dir, 16, MemoryConfig::default());
    let a = src.add(NewMemory::new("I have a golden retriever called Biscuit.").metadata(json!({"source": "chat", "tags": ["pet"]}))).unwrap().id;
    src.add(NewMemory::new("My sister lives in Lisbon.").importance(0.9)).unwrap();
    src.update(a, MemoryUpdate::text("I have two golden retrievers, Biscuit and Crumb.")).unwrap();
    let corr = src.add_feedback(NewFeedback::new("What is my dog called?", "Rex", FeedbackKind::Correction { corrected: "Biscuit".into() })).unwrap();
    src.add_feedback(NewFeedback::new("Hi", "Hello!", FeedbackKind::ThumbsUp).turn_id("t-1")).unwrap();
    src.add_feedback(NewFeedback::new("Pick", "a", FeedbackKind::Preference { chosen: "b".into(), rejected: "a".into() })).unwrap();
    src.record_adapter("v1", None, json!({"loss": 0.5})).unwrap();
    src.mark_feedback_consumed(&[corr], "v1").unwrap();
    src.record_adapter("v2", Some("v1"), json!({"loss": 0.25, "steps": 40})).unwrap();
    let export = src.export_json().unwrap();

    let dir = tmp_dir("fuzz-dst");
    let mut config = MemoryConfig::default();
    config.vacuum_on_forget_all = false;
    let mut dst = hash_store(&dir, 16, config);
    let counts = |s: &tailor_memory::MemoryStore| {
        let mut q = FeedbackQuery::default();
        q.limit = usize::MAX;
        let fb = s.list_feedback(&q).unwrap().len();
        (s.len().unwrap(), fb, s.list_adapters().unwrap().len())
    };
    let (mut ok, start) = (0, Instant::now());
    for case in 0..CASES {
        let (text, what) = mutate_text(&mut rng, &export);
        let ctx = || format!("seed {seed}, case {case}, {what}");
        let before = counts(&dst);
        LARGEST.with(|c| c.set(0));
        TOTAL.with(|c| c.set(0));
        let out = catch_unwind(AssertUnwindSafe(|| dst.import_json(&text)));
        let (largest, total) = (LARGEST.with(Cell::get), TOTAL.with(Cell::get));
        let out = out.unwrap_or_else(|p| {
            let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
            panic!("{}: import panicked: {}", ctx(), msg.unwrap_or_default())
        });
        // Parsed values, embeddings (16 floats per memory) and statements: a few times the text.
        let (one, all) = (16 * text.len() + (1 << 20), 64 * text.len() + (16 << 20));
        assert!(largest <= one && total <= all, "{}: {largest}-byte allocation, {total} in all for {} bytes", ctx(), text.len());
        let after = counts(&dst);
        match out {
            Ok(report) => {
                ok += 1;
                assert_eq!(after.0, before.0 + report.memories, "{}", ctx());
                assert_eq!(after.1, before.1 + report.feedback, "{}", ctx());
            }
            Err(e) => {
                let _ = (e.kind(), e.to_string());
                assert_eq!(after, before, "{}: a refused import changed the profile ({e})", ctx());
            }
        }
        // Keep the profile small (imports add up).
        if case % 100 == 99 {
            dst.forget_all().unwrap();
            dst.forget_all_feedback().unwrap();
        }
    }
    dst.integrity_check().unwrap();
    eprintln!("{CASES} imports in {:.2?}: {ok} accepted", start.elapsed());
}
