//! One round: screen the updates, clip, combine by the chosen method, add noise, report.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::Serialize;
use tailor_adapters::peft::BaseShapes;
use tailor_adapters::{BaseFingerprint, LoraAdapter, LoraWeights, TailorMeta, Target};

use crate::dp::{client_seed, pair_rng, privatize_local, DpMode};
use crate::error::{Error, Result};
use crate::methods::{exact_pair, fedit_pair, ffa_pair, robust_pair, Part, PairOut};
use crate::refusal::{screen, Refusal, Screen};
use crate::update::{b_norm, clip_factor, update_norm, Update};

/// How the clients' deltas are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// `Σ wᵢ·ΔWᵢ` in factor form, refactored to the rank asked for (exact when it is at
    /// least `Σ rᵢ`, the best rank-R approximation otherwise).
    #[default]
    Exact,
    /// FedIT (Zhang et al. 2023): the `A`s and the `B`s averaged separately (biased:
    /// `mean(B)·mean(A) ≠ mean(B·A)`); heterogeneous ranks zero-padded.
    FedIt,
    /// FFA-LoRA (Sun et al., ICLR 2024): `A` frozen and shared by all clients, only the
    /// `B`s averaged (exact); clients whose `A` differs are refused.
    Ffa,
}

impl FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "exact" => Ok(Method::Exact),
            "fedit" => Ok(Method::FedIt),
            "ffa" => Ok(Method::Ffa),
            _ => Err(Error::options(format!("method `{s}`: use exact, fedit or ffa"))),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Exact => "exact",
            Method::FedIt => "fedit",
            Method::Ffa => "ffa",
        })
    }
}

/// The statistic combining the clients' deltas (with [`Method::Exact`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Robust {
    /// The weighted mean (weights = sample counts).
    #[default]
    Mean,
    /// The coordinate-wise median of the dense deltas (unweighted; Yin et al. 2018).
    Median,
    /// The coordinate-wise mean after dropping this fraction (in `[0, 0.5)`) of the values at
    /// each end (unweighted).
    TrimmedMean(f64),
}

impl FromStr for Robust {
    type Err = Error;
    /// `mean`, `median` or `trimmed:FRACTION`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Robust::Mean),
            "median" => Ok(Robust::Median),
            _ => match s.strip_prefix("trimmed:").map(str::parse::<f64>) {
                Some(Ok(f)) => Ok(Robust::TrimmedMean(f)),
                _ => Err(Error::options(format!("robust `{s}`: use mean, median or trimmed:FRACTION"))),
            },
        }
    }
}

/// Options of [`aggregate`]. `Default`: exact, rank `Σ rᵢ` (capped), no clipping, no
/// noise, outliers above 10× the median norm refused, the error against the exact sum
/// reported.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AggregateOptions {
    /// How deltas are combined.
    pub method: Method,
    /// Rank of the result. `None`: `Σ rᵢ` for the exact method (capped at the largest
    /// `min(out, in)` of the projections, past which no sum has more rank), the clients'
    /// rank for FedIT/FFA (which accept no other).
    pub rank: Option<usize>,
    /// Clip each update to this Frobenius norm (`‖ΔW‖_F` over all pairs, from the factors;
    /// for FFA `‖scale·B‖_F`, the trained part). Needed with noise.
    pub clip: Option<f64>,
    /// Gaussian noise of standard deviation `noise_multiplier · clip · max wᵢ` (with equal
    /// weights `σ·C/n`) on the aggregate ([`DpMode::Central`]), or `noise_multiplier · clip`
    /// on each update ([`DpMode::Local`], as [`privatize_local`] does at a client).
    pub noise_multiplier: Option<f64>,
    /// Where the noise goes.
    pub dp: DpMode,
    /// Seed of the noise (ChaCha20; see [`crate::dp`]).
    pub seed: u64,
    /// Refuse an update whose norm is above this multiple of the round's median norm
    /// (`None`: no such check). Default `Some(10.0)`.
    pub max_norm_ratio: Option<f64>,
    /// The base the round is for; updates recording another are refused. `None`: the
    /// majority of the updates' fingerprints.
    pub expected_fingerprint: Option<BaseFingerprint>,
    /// Mean, median or trimmed mean.
    pub robust: Robust,
    /// The base's projection widths and layer count; updates are checked against them
    /// (`None`: against the round's majority).
    pub base_shapes: Option<BaseShapes>,
    /// Compute each method's Frobenius error against the exact weighted sum (it costs about
    /// as much as the exact method itself for FedIT/FFA with many clients). Default true.
    pub report_error: bool,
}

impl Default for AggregateOptions {
    fn default() -> Self {
        Self {
            method: Method::Exact,
            rank: None,
            clip: None,
            noise_multiplier: None,
            dp: DpMode::Central,
            seed: 0,
            max_norm_ratio: Some(10.0),
            expected_fingerprint: None,
            robust: Robust::Mean,
            base_shapes: None,
            report_error: true,
        }
    }
}

impl AggregateOptions {
    /// The defaults with `method`.
    pub fn new(method: Method) -> Self {
        Self { method, ..Self::default() }
    }

    /// With the result's rank.
    pub fn with_rank(mut self, rank: usize) -> Self {
        self.rank = Some(rank);
        self
    }

    /// With clipping to `max_norm`.
    pub fn with_clip(mut self, max_norm: f64) -> Self {
        self.clip = Some(max_norm);
        self
    }

    /// With Gaussian noise (`noise_multiplier`, `mode`, `seed`).
    pub fn with_noise(mut self, noise_multiplier: f64, mode: DpMode, seed: u64) -> Self {
        self.noise_multiplier = Some(noise_multiplier);
        self.dp = mode;
        self.seed = seed;
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(Error::options(s));
        if self.rank == Some(0) {
            return bad("rank must be at least 1".into());
        }
        if let Some(c) = self.clip {
            if !(c > 0.0 && c.is_finite()) {
                return bad(format!("clip {c} must be positive and finite"));
            }
        }
        if let Some(z) = self.noise_multiplier {
            if !(z >= 0.0 && z.is_finite()) {
                return bad(format!("noise multiplier {z} must be non-negative and finite"));
            }
            if self.clip.is_none() {
                return bad("noise needs clip (the noise is scaled to the clipping bound)".into());
            }
            if self.dp == DpMode::Central && self.method == Method::FedIt {
                return bad("central noise is defined for exact and ffa, not fedit (whose A and B are averaged apart)".into());
            }
            if self.dp == DpMode::Central && self.robust != Robust::Mean {
                return bad("central noise is calibrated to the mean, not to a median or trimmed mean".into());
            }
        }
        if let Some(r) = self.max_norm_ratio {
            if r.is_nan() || r <= 0.0 {
                return bad(format!("max_norm_ratio {r} must be positive"));
            }
        }
        match self.robust {
            Robust::Mean => {}
            _ if self.method != Method::Exact => return bad("median and trimmed mean go with the exact method".into()),
            Robust::TrimmedMean(t) if !(0.0..0.5).contains(&t) => {
                return bad(format!("trimmed-mean fraction {t} is not in [0, 0.5)"))
            }
            _ => {}
        }
        Ok(())
    }
}

/// The result of a round.
#[derive(Debug, Clone)]
pub struct Aggregation {
    /// The aggregated adapter (PEFT-compatible; the round's base fingerprint recorded).
    pub adapter: LoraAdapter,
    /// The clients whose updates were used, in input order.
    pub accepted: Vec<String>,
    /// The updates refused, with the reason.
    pub refused: Vec<Refusal>,
    /// What was done, in numbers.
    pub report: Report,
}

/// What a round did, in numbers (serialises to the JSON the CLI prints).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The method.
    pub method: Method,
    /// The statistic.
    pub robust: Robust,
    /// Rank of the result.
    pub rank: usize,
    /// `Σ rᵢ` over the accepted clients (the exact method is exact at or above it).
    pub stacked_rank: usize,
    /// One row per accepted client.
    pub clients: Vec<ClientReport>,
    /// The median update norm of the round (before clipping).
    pub median_norm: f64,
    /// The clipping bound.
    pub clip: Option<f64>,
    /// The noise multiplier.
    pub noise_multiplier: Option<f64>,
    /// Where the noise went.
    pub dp: Option<DpMode>,
    /// Standard deviation of the noise per entry (of the aggregate for central DP, of each
    /// update for local DP).
    pub noise_std: Option<f64>,
    /// The noise seed and generator.
    pub seed: Option<u64>,
    /// `"ChaCha20 (rand_chacha 0.9, seed_from_u64, one stream per pair), Ziggurat normals"`.
    pub rng: Option<&'static str>,
    /// `‖Σ wᵢ·ΔWᵢ‖_F` over all pairs (after clipping, before noise); NaN if not computed.
    pub exact_norm: f64,
    /// `‖result − Σ wᵢ·ΔWᵢ‖_F` over all pairs (`None` if not computed).
    pub error_vs_exact: Option<f64>,
    /// `error_vs_exact / exact_norm`.
    pub relative_error_vs_exact: Option<f64>,
    /// One row per (layer, projection).
    pub layers: Vec<LayerReport>,
}

/// One accepted client in the [`Report`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ClientReport {
    /// The client.
    pub client: String,
    /// Its samples.
    pub samples: u64,
    /// Its normalised weight.
    pub weight: f64,
    /// Its rank.
    pub rank: usize,
    /// `‖ΔW‖_F` before clipping.
    pub norm: f64,
    /// The clipped norm (`‖ΔW‖_F`; for FFA `‖scale·B‖_F`) — equal to the bound or below.
    pub clipped_norm: f64,
    /// The factor applied by clipping.
    pub clip_factor: f64,
}

/// One (layer, projection) in the [`Report`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LayerReport {
    /// The module, e.g. `model.layers.0.self_attn.q_proj`.
    pub module: String,
    /// `‖Σ wᵢ·ΔWᵢ‖_F` of this pair.
    pub exact_norm: f64,
    /// `‖result − Σ wᵢ·ΔWᵢ‖_F` of this pair.
    pub error: Option<f64>,
    /// Exact/robust methods: the norm of the singular values beyond the rank.
    pub truncation_residual: Option<f64>,
}

/// Aggregates one round of `updates` as `opts` says (see the [crate docs](crate)). Updates
/// that fail a check are refused and listed; the round goes on with the others. Errors only
/// for invalid options ([`Error::InvalidOptions`]) or when no update is left
/// ([`Error::NothingAccepted`]).
pub fn aggregate(updates: &[Update], opts: &AggregateOptions) -> Result<Aggregation> {
    opts.validate()?;
    let (idx, refused) = screen(
        updates,
        &Screen {
            expected_fingerprint: opts.expected_fingerprint.as_ref(),
            base_shapes: opts.base_shapes,
            max_norm_ratio: opts.max_norm_ratio,
            shared_a: opts.method == Method::Ffa,
        },
    );
    if idx.is_empty() {
        return Err(Error::NothingAccepted { refusals: refused });
    }
    let total: f64 = idx.iter().map(|&i| updates[i].samples as f64).sum();
    let weights: Vec<f64> = idx.iter().map(|&i| updates[i].samples as f64 / total).collect();
    let norms: Vec<f64> = idx.iter().map(|&i| update_norm(&updates[i].adapter)).collect();
    let noise = opts.noise_multiplier.filter(|&z| z > 0.0);
    let clip = opts.clip;

    // Local DP: the updates as the clients would have sent them.
    let local: Option<Vec<LoraAdapter>> = match (opts.dp, noise, clip) {
        (DpMode::Local, Some(z), Some(c)) => Some(
            idx.iter().map(|&i| privatize_local(&updates[i].adapter, c, z, client_seed(opts.seed, i))).collect(),
        ),
        _ => None,
    };
    let adapters: Vec<&LoraAdapter> = match &local {
        Some(v) => v.iter().collect(),
        None => idx.iter().map(|&i| &updates[i].adapter).collect(),
    };
    // Clip factors (local DP clipped already).
    let clip_norms: Vec<f64> = adapters
        .iter()
        .map(|a| if opts.method == Method::Ffa { b_norm(a) } else { update_norm(a) })
        .collect();
    let factors: Vec<f64> = clip_norms
        .iter()
        .map(|&n| match (clip, &local) {
            (Some(c), None) => clip_factor(n, c),
            _ => 1.0,
        })
        .collect();
    let scales: Vec<f64> = adapters.iter().map(|a| a.scale() as f64).collect();
    let reference = adapters[0];
    let keys: Vec<(usize, Target)> = reference.iter().map(|(k, _)| k).collect();
    let ranks: Vec<usize> = adapters.iter().map(|a| a.config().r).collect();
    let stacked_rank: usize = ranks.iter().sum();
    let max_rank = *ranks.iter().max().unwrap_or(&1);
    let widest = reference.iter().map(|(_, w)| w.in_features().min(w.out_features())).max().unwrap_or(1);
    let rank = match opts.method {
        Method::Exact => opts.rank.unwrap_or(stacked_rank.min(widest)),
        Method::FedIt | Method::Ffa => match opts.rank {
            Some(r) if r != max_rank => {
                return Err(Error::options(format!(
                    "{} keeps the clients' rank {max_rank}; rank {r} does not apply (use the exact method to change the rank)",
                    opts.method
                )))
            }
            _ => max_rank,
        },
    };
    // FedIT/FFA keep the clients' scale when they share one, else fold it into B.
    let same_scale = scales.iter().all(|&s| s == scales[0]) && scales[0] != 0.0;
    let s_out = match opts.method {
        Method::Exact => 1.0,
        _ if same_scale => scales[0],
        _ => 1.0,
    };
    let w_max = weights.iter().copied().fold(0.0, f64::max);
    let central_std = match (opts.dp, noise, clip) {
        (DpMode::Central, Some(z), Some(c)) => Some(z * c * w_max),
        _ => None,
    };
    let unweighted: Vec<f64> = scales.iter().zip(&factors).map(|(s, f)| s * f).collect();

    let outs: Vec<PairOut> = keys
        .par_iter()
        .enumerate()
        .map(|(index, &(l, t))| {
            let parts: Vec<Part<'_>> = adapters
                .iter()
                .enumerate()
                .filter_map(|(i, a)| a.get(l, t).map(|w| Part { w, coef: weights[i] * scales[i] * factors[i] }))
                .collect();
            let w0 = parts[0].w;
            let (d_in, d_out) = (w0.in_features(), w0.out_features());
            let mut rng = central_std.map(|_| pair_rng(opts.seed, index));
            let noise = central_std.zip(rng.as_mut());
            match (opts.method, opts.robust) {
                (Method::Exact, Robust::Mean) => exact_pair(&parts, d_out, d_in, rank, noise),
                (Method::Exact, Robust::Median) => robust_pair(&parts, &unweighted, d_out, d_in, rank, None),
                (Method::Exact, Robust::TrimmedMean(f)) => robust_pair(&parts, &unweighted, d_out, d_in, rank, Some(f)),
                (Method::FedIt, _) => fedit_pair(&parts, &weights, d_out, d_in, rank, s_out, opts.report_error),
                (Method::Ffa, _) => ffa_pair(&parts, d_out, d_in, s_out, noise, opts.report_error),
            }
        })
        .collect();

    // The result's config: the reference client's, at the new rank and scale.
    let mut config = reference.config().clone();
    config.r = rank;
    if opts.method == Method::Exact || !same_scale {
        config.lora_alpha = rank as f64;
        config.use_rslora = false;
    }
    let fingerprint = opts
        .expected_fingerprint
        .clone()
        .or_else(|| adapters.iter().find_map(|a| a.config().base_fingerprint().cloned()));
    config.tailor = Some(TailorMeta::new(fingerprint));
    let mut adapter = LoraAdapter::new(config)?;
    let mut layers = Vec::with_capacity(keys.len());
    for (&(l, t), out) in keys.iter().zip(outs) {
        let w0 = reference.get(l, t).map(|w| (w.in_features(), w.out_features())).unwrap_or((1, 1));
        layers.push(LayerReport {
            module: t.module_path(l),
            exact_norm: out.exact_norm,
            error: out.error,
            truncation_residual: out.truncation_residual,
        });
        adapter.insert(l, t, LoraWeights::new(rank, w0.0, w0.1, out.a, out.b)?)?;
    }
    let exact_norm = layers.iter().map(|l| l.exact_norm * l.exact_norm).sum::<f64>().sqrt();
    let error_vs_exact = layers
        .iter()
        .map(|l| l.error.map(|e| e * e))
        .sum::<Option<f64>>()
        .map(f64::sqrt);
    let clients = idx
        .iter()
        .enumerate()
        .map(|(j, &i)| ClientReport {
            client: updates[i].client.clone(),
            samples: updates[i].samples,
            weight: weights[j],
            rank: ranks[j],
            norm: norms[j],
            clipped_norm: clip_norms[j] * factors[j],
            clip_factor: factors[j],
        })
        .collect();
    let report = Report {
        method: opts.method,
        robust: opts.robust,
        rank,
        stacked_rank,
        clients,
        median_norm: crate::refusal::median(&norms),
        clip,
        noise_multiplier: noise,
        dp: noise.map(|_| opts.dp),
        noise_std: match opts.dp {
            DpMode::Central => central_std,
            DpMode::Local => noise.zip(clip).map(|(z, c)| z * c),
        },
        seed: noise.map(|_| opts.seed),
        rng: noise.map(|_| "ChaCha20 (rand_chacha 0.9, seed_from_u64, one stream per pair), Ziggurat normals"),
        exact_norm,
        error_vs_exact,
        relative_error_vs_exact: error_vs_exact.map(|e| if exact_norm > 0.0 { e / exact_norm } else { 0.0 }),
        layers,
    };
    Ok(Aggregation {
        adapter,
        accepted: idx.iter().map(|&i| updates[i].client.clone()).collect(),
        refused,
        report,
    })
}
