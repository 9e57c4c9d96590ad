//! Screening a round's updates: each bad one is refused with its client's name and the
//! reason, and the round goes on with the rest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;
use tailor_adapters::peft::BaseShapes;
use tailor_adapters::{BaseFingerprint, LoraAdapter, Target};

use crate::update::{update_norm, Update};

/// One refused update.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The client's name as given in its [`Update`].
    pub client: String,
    /// Why it was refused.
    pub reason: RefusalReason,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client `{}` refused: {}", self.client, self.reason)
    }
}

impl Serialize for Refusal {
    /// `{"client": ..., "reason": "<the message>", "detail": {"kind": ..., fields}}`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Refusal", 3)?;
        st.serialize_field("client", &self.client)?;
        st.serialize_field("reason", &self.reason.to_string())?;
        st.serialize_field("detail", &self.reason)?;
        st.end()
    }
}

/// Why an update was refused. `Display` says it in words.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RefusalReason {
    /// The adapter could not be read (the CLI and bindings report load failures this way).
    Unreadable {
        /// The loader's message.
        error: String,
    },
    /// Another update of the round already used this client name.
    Duplicate,
    /// The update claims zero samples (its weight would be zero).
    NoSamples,
    /// A factor holds NaN or an infinity.
    NonFinite {
        /// The module, e.g. `model.layers.3.self_attn.q_proj`.
        layer: String,
    },
    /// A projection's shape differs from the base's (or from the round's majority).
    Shape {
        /// The module.
        layer: String,
        /// `[out_features, in_features]` expected.
        expected: [usize; 2],
        /// `[out_features, in_features]` found.
        actual: [usize; 2],
    },
    /// The adapter was made for another base model.
    Fingerprint {
        /// The round's fingerprint.
        expected: String,
        /// The update's.
        actual: String,
    },
    /// A module outside the round's (a layer past the base's last, or a projection the
    /// round's updates do not adapt).
    UnknownTarget {
        /// The module.
        layer: String,
    },
    /// A module the round's updates adapt is absent from this one.
    MissingTarget {
        /// The module.
        layer: String,
    },
    /// FFA-LoRA needs one rank for every client.
    Rank {
        /// The round's rank.
        expected: usize,
        /// The update's.
        actual: usize,
    },
    /// FFA-LoRA: the update's frozen `A` is not the round's shared one.
    SharedA {
        /// The module where it differs most.
        layer: String,
        /// The largest absolute difference from the shared `A`.
        max_diff: f64,
    },
    /// The update's norm is far above the round's median.
    NormOutlier {
        /// `‖ΔW‖_F` of the update (over all modules).
        norm: f64,
        /// The median norm of the round's updates that passed the other checks.
        median: f64,
        /// The allowed `norm / median`.
        ratio: f64,
    },
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusalReason::Unreadable { error } => write!(f, "unreadable adapter: {error}"),
            RefusalReason::Duplicate => f.write_str("another update of the round has this client name"),
            RefusalReason::NoSamples => f.write_str("zero samples"),
            RefusalReason::NonFinite { layer } => write!(f, "NaN or infinite values in {layer}"),
            RefusalReason::Shape { layer, expected, actual } => write!(
                f,
                "{layer} is {}×{} (out×in), expected {}×{}",
                actual[0], actual[1], expected[0], expected[1]
            ),
            RefusalReason::Fingerprint { expected, actual } => {
                write!(f, "made for base {actual}, the round's base is {expected}")
            }
            RefusalReason::UnknownTarget { layer } => write!(f, "unknown target {layer}"),
            RefusalReason::MissingTarget { layer } => write!(f, "no pair for {layer}, which the round adapts"),
            RefusalReason::Rank { expected, actual } => {
                write!(f, "rank {actual}, the round's (FFA-LoRA) rank is {expected}")
            }
            RefusalReason::SharedA { layer, max_diff } => write!(
                f,
                "its lora_A differs from the round's frozen shared A (by up to {max_diff:.3e} in {layer}; FFA-LoRA allows 1e-6)"
            ),
            RefusalReason::NormOutlier { norm, median, ratio } => write!(
                f,
                "update norm {norm:.4e} is above {ratio} × the round's median {median:.4e}"
            ),
        }
    }
}

/// What the screening checks against.
pub(crate) struct Screen<'a> {
    pub expected_fingerprint: Option<&'a BaseFingerprint>,
    pub base_shapes: Option<BaseShapes>,
    pub max_norm_ratio: Option<f64>,
    /// FFA-LoRA: one rank and one shared `A` for all.
    pub shared_a: bool,
}

/// Largest group of equal keys (ties: the one seen first).
fn majority<K: PartialEq + Clone>(keys: &[Option<K>]) -> Option<K> {
    let mut groups: Vec<(K, usize, usize)> = Vec::new(); // key, count, first index
    for (i, k) in keys.iter().enumerate() {
        let Some(k) = k else { continue };
        match groups.iter_mut().find(|g| &g.0 == k) {
            Some(g) => g.1 += 1,
            None => groups.push((k.clone(), 1, i)),
        }
    }
    groups.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2))).map(|g| g.0)
}

type Signature = BTreeMap<(usize, Target), [usize; 2]>;

fn signature(a: &LoraAdapter) -> Signature {
    a.iter().map(|(k, w)| (k, [w.out_features(), w.in_features()])).collect()
}

/// Screens `updates`: returns the indices accepted, in order, and the refusals.
pub(crate) fn screen(updates: &[Update], s: &Screen<'_>) -> (Vec<usize>, Vec<Refusal>) {
    let mut refused: Vec<Option<RefusalReason>> = vec![None; updates.len()];
    // Names, samples, finiteness, fingerprint, layers against the base.
    let mut seen = HashMap::new();
    for (i, u) in updates.iter().enumerate() {
        refused[i] = if seen.insert(u.client.as_str(), i).is_some() {
            Some(RefusalReason::Duplicate)
        } else if u.samples == 0 {
            Some(RefusalReason::NoSamples)
        } else if let Some(((l, t), _)) = u.adapter.iter().find(|(_, w)| !w.is_finite()) {
            Some(RefusalReason::NonFinite { layer: t.module_path(l) })
        } else {
            base_check(&u.adapter, s.base_shapes)
        };
    }
    let live = |refused: &[Option<RefusalReason>]| -> Vec<usize> {
        (0..updates.len()).filter(|&i| refused[i].is_none()).collect()
    };
    // Fingerprint: the expected one, else the majority of those that record one.
    let fps: Vec<Option<BaseFingerprint>> = updates
        .iter()
        .enumerate()
        .map(|(i, u)| if refused[i].is_none() { u.adapter.config().base_fingerprint().cloned() } else { None })
        .collect();
    if let Some(want) = s.expected_fingerprint.cloned().or_else(|| majority(&fps)) {
        for i in live(&refused) {
            if let Some(have) = &fps[i] {
                if *have != want {
                    refused[i] = Some(RefusalReason::Fingerprint { expected: want.to_string(), actual: have.to_string() });
                }
            }
        }
    }
    // Modules and shapes: the majority signature.
    let sigs: Vec<Option<Signature>> =
        updates.iter().enumerate().map(|(i, u)| refused[i].is_none().then(|| signature(&u.adapter))).collect();
    if let Some(reference) = majority(&sigs) {
        for i in live(&refused) {
            refused[i] = signature_diff(&reference, sigs[i].as_ref().unwrap_or(&reference));
        }
    }
    if s.shared_a {
        shared_a_check(updates, &mut refused);
    }
    // Norm outliers among the rest.
    if let Some(ratio) = s.max_norm_ratio {
        let idx = live(&refused);
        let norms: Vec<f64> = idx.iter().map(|&i| update_norm(&updates[i].adapter)).collect();
        let median = median(&norms);
        if median > 0.0 {
            for (&i, &norm) in idx.iter().zip(&norms) {
                if norm > ratio * median {
                    refused[i] = Some(RefusalReason::NormOutlier { norm, median, ratio });
                }
            }
        }
    }
    let accepted = live(&refused);
    let refusals = refused
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|reason| Refusal { client: updates[i].client.clone(), reason }))
        .collect();
    (accepted, refusals)
}

/// Layers past the base and shapes other than the base's.
fn base_check(a: &LoraAdapter, base: Option<BaseShapes>) -> Option<RefusalReason> {
    let base = base?;
    for ((l, t), w) in a.iter() {
        if l >= base.n_layers {
            return Some(RefusalReason::UnknownTarget { layer: t.module_path(l) });
        }
        let (d_in, d_out) = base.in_out(t);
        if (w.out_features(), w.in_features()) != (d_out, d_in) {
            return Some(RefusalReason::Shape {
                layer: t.module_path(l),
                expected: [d_out, d_in],
                actual: [w.out_features(), w.in_features()],
            });
        }
    }
    None
}

fn signature_diff(reference: &Signature, sig: &Signature) -> Option<RefusalReason> {
    for (&(l, t), shape) in sig {
        match reference.get(&(l, t)) {
            None => return Some(RefusalReason::UnknownTarget { layer: t.module_path(l) }),
            Some(want) if want != shape => {
                return Some(RefusalReason::Shape { layer: t.module_path(l), expected: *want, actual: *shape })
            }
            _ => {}
        }
    }
    let have: BTreeSet<_> = sig.keys().collect();
    reference
        .keys()
        .find(|k| !have.contains(k))
        .map(|&(l, t)| RefusalReason::MissingTarget { layer: t.module_path(l) })
}

/// FFA-LoRA: the majority rank, then the majority `A` (equal within 1e-6).
fn shared_a_check(updates: &[Update], refused: &mut [Option<RefusalReason>]) {
    const TOL: f64 = 1e-6;
    let ranks: Vec<Option<usize>> =
        updates.iter().enumerate().map(|(i, u)| refused[i].is_none().then(|| u.adapter.config().r)).collect();
    let Some(rank) = majority(&ranks) else { return };
    for (i, r) in ranks.iter().enumerate() {
        if let Some(r) = r {
            if *r != rank {
                refused[i] = Some(RefusalReason::Rank { expected: rank, actual: *r });
            }
        }
    }
    // Group by A (a representative per group), pick the largest group.
    let live: Vec<usize> = (0..updates.len()).filter(|&i| refused[i].is_none()).collect();
    let mut groups: Vec<(usize, usize)> = Vec::new(); // representative, count
    let mut group_of = vec![usize::MAX; updates.len()];
    for &i in &live {
        let g = groups.iter().position(|&(rep, _)| a_diff(&updates[rep].adapter, &updates[i].adapter).1 <= TOL);
        let g = g.unwrap_or_else(|| {
            groups.push((i, 0));
            groups.len() - 1
        });
        groups[g].1 += 1;
        group_of[i] = g;
    }
    let Some(best) = (0..groups.len()).max_by(|&a, &b| groups[a].1.cmp(&groups[b].1).then(b.cmp(&a))) else {
        return;
    };
    let rep = groups[best].0;
    for &i in &live {
        if group_of[i] != best {
            let (layer, max_diff) = a_diff(&updates[rep].adapter, &updates[i].adapter);
            refused[i] = Some(RefusalReason::SharedA { layer, max_diff });
        }
    }
}

/// The module where the `A`s of `x` and `y` differ most, and by how much.
fn a_diff(x: &LoraAdapter, y: &LoraAdapter) -> (String, f64) {
    let mut worst = (String::new(), 0f64);
    for ((l, t), wx) in x.iter() {
        let d = match y.get(l, t) {
            Some(wy) if wy.a().len() == wx.a().len() => {
                wx.a().iter().zip(wy.a()).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max)
            }
            _ => f64::INFINITY,
        };
        if d > worst.1 || worst.0.is_empty() {
            worst = (t.module_path(l), d.max(worst.1));
        }
    }
    worst
}

/// The median (the mean of the two middle values for an even count; 0 when empty).
pub(crate) fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}
