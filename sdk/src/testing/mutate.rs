//! A tiny mutation engine for property tests of the parsers of untrusted bytes ("fuzzing as
//! tests"): bounded, deterministic for a seed, fast enough to run thousands of cases in CI.
//!
//! [`Mutator`] turns a real file (a seed) into a hostile variant by a few [`Mutation`]s: byte
//! and bit flips, truncations, insertions, deletions, a chunk copied elsewhere, and length or
//! count fields overwritten with extreme values ([`EXTREMES`]: 0, 2^31, 2^60, `u64::MAX`, ...),
//! at the positions a test names ([`Mutator::fields`], e.g. from [`gguf_fields`]) or at
//! positions that look like one.
//! The mutations are plain values: a failure message prints them, and a regression test
//! replays them on the same seed file with [`apply`]. [`mutate_json`] does the same for JSON
//! documents (valid JSON with wrong types, huge or negative numbers, empty lists, deep
//! nesting) and [`mutate_json_text`] for their text.
//!
//! ```
//! use tailor::testing::mutate::{apply, Mutator};
//!
//! let seed_file = b"GGUF\x03\0\0\0 some header";
//! let mut m = Mutator::new(42).hot_prefix(8);
//! let (bytes, mutations) = m.mutate(seed_file);
//! assert_eq!(apply(seed_file, &mutations), bytes); // replayable
//! ```

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Values written over length and count fields: zero, small, sign-bit and width boundaries,
/// and sizes no file can back.
pub const EXTREMES: [u64; 14] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    1 << 31,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 60,
    i64::MAX as u64,
    1 << 63,
    u64::MAX,
];

/// One edit of a byte string. [`Mutation::apply`] clamps every position to the current
/// length, so any mutation applies to any input without panicking.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mutation {
    /// Byte `at` becomes `value`.
    SetByte {
        /// Position.
        at: usize,
        /// New value.
        value: u8,
    },
    /// Bit `bit` of byte `at` is inverted.
    FlipBit {
        /// Position.
        at: usize,
        /// Bit index, 0..8.
        bit: u8,
    },
    /// Everything from `len` on is dropped.
    Truncate {
        /// New length.
        len: usize,
    },
    /// `bytes` are inserted before position `at`.
    Insert {
        /// Position.
        at: usize,
        /// Inserted bytes.
        bytes: Vec<u8>,
    },
    /// `len` bytes from `at` are removed.
    Delete {
        /// Position.
        at: usize,
        /// Number of bytes.
        len: usize,
    },
    /// `width` bytes (1..=8) at `at` are overwritten with `value`, little-endian.
    Overwrite {
        /// Position.
        at: usize,
        /// Field width in bytes.
        width: u8,
        /// The value (its low `width` bytes are written).
        value: u64,
    },
    /// `len` bytes from `from` are inserted again before `to`.
    Duplicate {
        /// Source position.
        from: usize,
        /// Source length.
        len: usize,
        /// Insertion point.
        to: usize,
    },
}

impl Mutation {
    /// Applies the edit to `b` (positions past the end are clamped; an empty input is only
    /// ever grown by `Insert`).
    pub fn apply(&self, b: &mut Vec<u8>) {
        let n = b.len();
        match *self {
            Mutation::SetByte { at, value } => {
                if at < n {
                    b[at] = value;
                }
            }
            Mutation::FlipBit { at, bit } => {
                if at < n {
                    b[at] ^= 1 << (bit % 8);
                }
            }
            Mutation::Truncate { len } => b.truncate(len),
            Mutation::Insert { at, ref bytes } => {
                let at = at.min(n);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete { at, len } => {
                let at = at.min(n);
                b.drain(at..at.saturating_add(len).min(n));
            }
            Mutation::Overwrite { at, width, value } => {
                let w = usize::from(width.clamp(1, 8));
                if at < n {
                    let end = at.saturating_add(w).min(n);
                    b[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
                }
            }
            Mutation::Duplicate { from, len, to } => {
                let from = from.min(n);
                let chunk = b[from..from.saturating_add(len).min(n)].to_vec();
                let to = to.min(n);
                b.splice(to..to, chunk);
            }
        }
    }
}

/// `input` with `mutations` applied in order: replays a failing case.
pub fn apply(input: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = input.to_vec();
    for m in mutations {
        m.apply(&mut b);
    }
    b
}

/// Draws random [`Mutation`]s for an input, deterministically from a seed.
#[derive(Debug, Clone)]
pub struct Mutator {
    rng: StdRng,
    hot: usize,
    max_mutations: usize,
    fields: Vec<(usize, u8)>,
}

impl Mutator {
    /// A mutator drawing from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), hot: usize::MAX, max_mutations: 4, fields: Vec::new() }
    }

    /// The known numeric fields of the input (offset, width in bytes): counts, lengths,
    /// dimensions, offsets, integer values. Half the overwrites then hit one of them exactly
    /// (the others still guess, see [`Mutator::mutate`]).
    pub fn fields(mut self, fields: Vec<(usize, u8)>) -> Self {
        self.fields = fields;
        self
    }

    /// Aims three mutations out of four at the first `hot` bytes (a file's header, where
    /// lengths, counts and offsets live) instead of anywhere in the input.
    pub fn hot_prefix(mut self, hot: usize) -> Self {
        self.hot = hot.max(1);
        self
    }

    /// At most `n` (at least 1) mutations per case (default 4).
    pub fn max_mutations(mut self, n: usize) -> Self {
        self.max_mutations = n.max(1);
        self
    }

    /// The random generator, for a test's own random choices (they stay on the seed).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// A mutated copy of `input` and the mutations that made it.
    pub fn mutate(&mut self, input: &[u8]) -> (Vec<u8>, Vec<Mutation>) {
        let count = self.rng.random_range(1..=self.max_mutations);
        let mut b = input.to_vec();
        let mut done = Vec::with_capacity(count);
        for _ in 0..count {
            let m = self.one(&b);
            m.apply(&mut b);
            done.push(m);
        }
        (b, done)
    }

    /// A position in `b`: in the hot prefix three times out of four.
    fn pos(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let limit = if self.rng.random_bool(0.75) { self.hot.min(n) } else { n };
        self.rng.random_range(0..limit)
    }

    /// A position that probably holds a length, count or offset: a little-endian u32/u64 at
    /// that position reads as a small positive number (sampled, else any position).
    fn field_pos(&mut self, b: &[u8], width: usize) -> usize {
        for _ in 0..48 {
            let at = self.pos(b.len());
            if at + width <= b.len() {
                let mut w = [0u8; 8];
                w[..width].copy_from_slice(&b[at..at + width]);
                let v = u64::from_le_bytes(w);
                if (1..=1 << 20).contains(&v) {
                    return at;
                }
            }
        }
        self.pos(b.len())
    }

    fn one(&mut self, b: &[u8]) -> Mutation {
        let n = b.len();
        let r = &mut self.rng;
        match r.random_range(0..100u32) {
            0..=19 => {
                let value = r.random();
                Mutation::SetByte { at: self.pos(n), value }
            }
            20..=29 => {
                let bit = r.random_range(0..8);
                Mutation::FlipBit { at: self.pos(n), bit }
            }
            30..=37 => {
                let len = if self.rng.random_bool(0.5) { self.pos(n) } else { self.rng.random_range(0..=n) };
                Mutation::Truncate { len }
            }
            38..=45 => {
                let len = r.random_range(1..=16);
                let bytes = match r.random_range(0..3) {
                    0 => vec![0; len],
                    1 => vec![0xff; len],
                    _ => (0..len).map(|_| r.random()).collect(),
                };
                Mutation::Insert { at: self.pos(n), bytes }
            }
            46..=53 => {
                let len = r.random_range(1..=16);
                Mutation::Delete { at: self.pos(n), len }
            }
            54..=59 => {
                let len = r.random_range(1..=64);
                let (from, to) = (self.pos(n), self.pos(n));
                Mutation::Duplicate { from, len, to }
            }
            _ => {
                let value = match r.random_range(0..4) {
                    0 => r.random(),
                    _ => EXTREMES[r.random_range(0..EXTREMES.len())],
                };
                if !self.fields.is_empty() && self.rng.random_bool(0.5) {
                    let (at, width) = self.fields[self.rng.random_range(0..self.fields.len())];
                    return Mutation::Overwrite { at, width, value };
                }
                let width = if self.rng.random_bool(0.6) { 8 } else { 4 };
                Mutation::Overwrite { at: self.field_pos(b, width), width: width as u8, value }
            }
        }
    }
}

/// The numeric fields of a GGUF v2/v3 header, for [`Mutator::fields`]: the tensor and
/// key counts; each key's length, value type and integer value (or string length); each
/// array's element type and count and its first four elements; each tensor's name length,
/// dimension count, dimensions, type and offset. Also returns where the tensor infos end (the
/// header's length, for [`Mutator::hot_prefix`]). The walk stops at the first thing it cannot
/// read: it is meant for valid seed files.
pub fn gguf_fields(b: &[u8]) -> (Vec<(usize, u8)>, usize) {
    struct W<'a> {
        b: &'a [u8],
        pos: usize,
        out: Vec<(usize, u8)>,
    }
    impl W<'_> {
        fn num(&mut self, width: usize, record: bool) -> Option<u64> {
            let s = self.b.get(self.pos..self.pos.checked_add(width)?)?;
            let mut w = [0u8; 8];
            w[..width].copy_from_slice(s);
            if record {
                self.out.push((self.pos, width as u8));
            }
            self.pos += width;
            Some(u64::from_le_bytes(w))
        }
        fn string(&mut self, record: bool) -> Option<()> {
            let n = usize::try_from(self.num(8, record)?).ok()?;
            self.pos = self.pos.checked_add(n).filter(|&e| e <= self.b.len())?;
            Some(())
        }
        fn value(&mut self, ty: u64, record: bool) -> Option<()> {
            match ty {
                0 | 1 | 7 => self.num(1, record).map(drop),
                2 | 3 => self.num(2, record).map(drop),
                4 | 5 => self.num(4, record).map(drop),
                // Floats: not a length, skipped.
                6 => self.num(4, false).map(drop),
                10 | 11 => self.num(8, record).map(drop),
                12 => self.num(8, false).map(drop),
                8 => self.string(record),
                9 => {
                    let ety = self.num(4, record)?;
                    let n = self.num(8, record)?;
                    for i in 0..n {
                        self.value(ety, record && i < 4)?;
                    }
                    Some(())
                }
                _ => None,
            }
        }
    }
    let mut w = W { b, pos: 4, out: Vec::new() };
    let walk = |w: &mut W<'_>| -> Option<()> {
        if b.get(..4)? != b"GGUF" || !(2..=3).contains(&w.num(4, false)?) {
            return None;
        }
        let n_tensors = w.num(8, true)?;
        let n_kv = w.num(8, true)?;
        for _ in 0..n_kv {
            w.string(true)?;
            let ty = w.num(4, true)?;
            w.value(ty, true)?;
        }
        for _ in 0..n_tensors {
            w.string(true)?;
            let n_dims = w.num(4, true)?;
            for _ in 0..n_dims {
                w.num(8, true)?;
            }
            w.num(4, true)?;
            w.num(8, true)?;
        }
        Some(())
    };
    let _ = walk(&mut w);
    (w.out, w.pos)
}

/// JSON values a parser of configs must survive: every type, numbers at every boundary,
/// empty and long strings, empty containers.
pub fn hostile_json_values() -> Vec<Value> {
    use serde_json::json;
    vec![
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(-1),
        json!(1),
        json!(-2147483648i64),
        json!(2147483648u64),
        json!(4294967296u64),
        json!(9007199254740993u64),
        json!(1u64 << 60),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.5),
        json!(-0.0),
        json!(1e308),
        json!(-1e308),
        json!(f64::MIN_POSITIVE),
        json!(""),
        json!(" "),
        json!("\u{0}"),
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

/// Every node of `v` as a JSON pointer (`""` is the root).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                pointers(x, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// Applies one random structural mutation to `v` and describes it: a node replaced by one of
/// [`hostile_json_values`], by the same value in another type (a number as a string, a
/// string as a number), wrapped in a list or nested a few hundred levels deep; a key removed;
/// a list emptied or an element repeated; a key added to an object.
pub fn mutate_json(rng: &mut impl Rng, v: &mut Value) -> String {
    let mut ptrs = Vec::new();
    pointers(v, String::new(), &mut ptrs);
    let p = ptrs[rng.random_range(0..ptrs.len())].clone();
    let op = rng.random_range(0..100u32);
    // Removing a member or element needs the parent.
    if op < 15 && !p.is_empty() {
        let (parent, last) = p.rsplit_once('/').unwrap_or(("", &p));
        let key = last.replace("~1", "/").replace("~0", "~");
        match v.pointer_mut(parent) {
            Some(Value::Object(o)) => {
                o.remove(&key);
                return format!("remove {p}");
            }
            Some(Value::Array(a)) => {
                if let Ok(i) = key.parse::<usize>() {
                    if i < a.len() {
                        a.remove(i);
                    }
                }
                return format!("remove {p}");
            }
            _ => {}
        }
    }
    let Some(node) = v.pointer_mut(&p) else { return "no-op".into() };
    match op {
        0..=59 => {
            let all = hostile_json_values();
            let new = all[rng.random_range(0..all.len())].clone();
            let d = format!("{p} = {}", short(&new));
            *node = new;
            d
        }
        60..=69 => {
            let new = match node.take() {
                Value::Number(n) => Value::String(n.to_string()),
                Value::String(s) => s.trim().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number),
                Value::Bool(b) => Value::from(u8::from(b)),
                Value::Array(a) => a.into_iter().next().unwrap_or(Value::Null),
                Value::Object(o) => Value::Array(o.into_iter().map(|(_, x)| x).collect()),
                Value::Null => Value::from(0),
            };
            let d = format!("{p} retyped to {}", short(&new));
            *node = new;
            d
        }
        70..=77 => {
            *node = Value::Array(vec![node.take()]);
            format!("{p} wrapped in a list")
        }
        78..=81 => {
            let depth = rng.random_range(100..400);
            let mut x = node.take();
            for _ in 0..depth {
                x = Value::Array(vec![x]);
            }
            *node = x;
            format!("{p} nested {depth} deep")
        }
        _ => match node {
            Value::Array(a) if rng.random_bool(0.5) => {
                a.clear();
                format!("{p} emptied")
            }
            Value::Array(a) => {
                let x = a.first().cloned().unwrap_or(Value::Null);
                let k = rng.random_range(1..64);
                a.extend(std::iter::repeat_n(x, k));
                format!("{p} grew by {k} copies")
            }
            Value::Object(o) => {
                let all = hostile_json_values();
                o.insert("unknown_field".into(), all[rng.random_range(0..all.len())].clone());
                format!("{p} got an unknown field")
            }
            other => {
                *other = Value::Null;
                format!("{p} = null")
            }
        },
    }
}

/// Replaces one number in JSON `text` by a literal serde's numbers cannot all hold
/// (`1e400`, `-0`, `18446744073709551616`, 400 digits, `1.5`, `-1`), or returns the text
/// unchanged when it has none. Returns the new text and a description.
pub fn mutate_json_text(rng: &mut impl Rng, text: &str) -> (String, String) {
    let b = text.as_bytes();
    let starts: Vec<usize> = (0..b.len())
        .filter(|&i| {
            (b[i].is_ascii_digit() || b[i] == b'-') && (i == 0 || matches!(b[i - 1], b':' | b'[' | b',' | b' ' | b'\n'))
        })
        .collect();
    if starts.is_empty() {
        return (text.to_owned(), "no number".into());
    }
    let s = starts[rng.random_range(0..starts.len())];
    let e = (s + 1..b.len()).find(|&i| !matches!(b[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')).unwrap_or(b.len());
    let long = "9".repeat(400);
    let lits = ["1e400", "-1e400", "-0", "18446744073709551616", long.as_str(), "1.5", "-1", "0", "4294967296", "1e-400"];
    let lit = lits[rng.random_range(0..lits.len())];
    (format!("{}{lit}{}", &text[..s], &text[e..]), format!("number at byte {s} = {}", short_str(lit)))
}

fn short(v: &Value) -> String {
    short_str(&v.to_string())
}

fn short_str(s: &str) -> String {
    if s.len() > 40 {
        let cut = (0..=40).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        format!("{}...({} bytes)", &s[..cut], s.len())
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_replay_and_never_panic() {
        let input: Vec<u8> = (0..200u8).collect();
        let mut m = Mutator::new(7).hot_prefix(32).max_mutations(6);
        for _ in 0..2000 {
            let (b, ms) = m.mutate(&input);
            assert_eq!(apply(&input, &ms), b);
        }
        let ms = [Mutation::Truncate { len: 0 }, Mutation::Overwrite { at: 0, width: 8, value: 1 }];
        assert!(apply(&input, &ms).is_empty());
        let (b, _) = Mutator::new(1).mutate(&[]);
        assert!(b.len() <= 16);
    }

    #[test]
    fn json_mutations_keep_valid_json() {
        let mut rng = StdRng::seed_from_u64(3);
        let orig = serde_json::json!({"r": 8, "t": ["q_proj", "v_proj"], "o": {"a/b": 1.5}});
        for _ in 0..2000 {
            let mut v = orig.clone();
            let _ = mutate_json(&mut rng, &mut v);
            let text = v.to_string();
            let (t, _) = mutate_json_text(&mut rng, &text);
            let _ = serde_json::from_str::<Value>(&t);
        }
    }
}
