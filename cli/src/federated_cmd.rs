//! `tailor federated aggregate|accountant`: one aggregation round over adapter directories,
//! and the privacy accountant.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use tailor::adapters::peft::{self, LoadOptions};
use tailor::adapters::BaseFingerprint;
use tailor_federated::{accountant, aggregate, AggregateOptions, DpMode, Method, Refusal, RefusalReason, Robust, Update};

#[derive(Subcommand)]
pub(crate) enum FederatedCommand {
    /// Aggregate client adapters ADAPTER[:SAMPLES]... (PEFT directories) into one, saved
    /// atomically in PEFT's layout at --out; prints a JSON report (accepted, refused with
    /// reasons, norms, errors against the exact weighted sum). Bad updates are refused and
    /// the round goes on; it fails only when none is left.
    Aggregate {
        /// The client adapters, each optionally with its sample count (its weight; default 1).
        #[arg(required = true, value_name = "ADAPTER[:SAMPLES]")]
        inputs: Vec<String>,
        /// Where to save the aggregated adapter.
        #[arg(long)]
        out: PathBuf,
        /// Rank of the result (exact: default Σ ranks; fedit/ffa keep the clients' rank).
        #[arg(long)]
        rank: Option<usize>,
        /// `exact` (weighted sum in factor form), `fedit` (A and B averaged apart) or `ffa`
        /// (A frozen and shared, B averaged).
        #[arg(long, default_value = "exact")]
        method: String,
        /// Clip each update to this Frobenius norm.
        #[arg(long)]
        clip: Option<f64>,
        /// Gaussian noise multiplier σ (noise std σ·clip·max weight; needs --clip).
        #[arg(long)]
        noise_multiplier: Option<f64>,
        /// Seed of the noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// `central` (noise on the aggregate) or `local` (noise on each update, as at the client).
        #[arg(long, default_value = "central")]
        dp: String,
        /// `mean`, `median` or `trimmed:FRACTION` (the last two with --method exact).
        #[arg(long, default_value = "mean")]
        robust: String,
        /// Refuse updates whose norm is above this multiple of the round's median (0: off).
        #[arg(long, default_value_t = 10.0)]
        max_norm_ratio: f64,
        /// The base fingerprint the round is for (default: the majority of the updates').
        #[arg(long)]
        base_fingerprint: Option<String>,
    },
    /// Print (ε, δ) after --rounds rounds of the sampled Gaussian mechanism (RDP accountant).
    Accountant {
        /// Noise multiplier σ (noise std / clipping bound).
        #[arg(long)]
        noise_multiplier: f64,
        /// Chance that a client takes part in a round.
        #[arg(long)]
        sample_rate: f64,
        /// Number of rounds.
        #[arg(long)]
        rounds: u64,
        /// δ.
        #[arg(long, default_value_t = 1e-5)]
        delta: f64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `PATH[:SAMPLES]`; a suffix that is not a whole number is part of the path unless it
/// looks like a number (then it is an error: the weight is a sample count).
fn path_and_samples(spec: &str) -> Result<(PathBuf, u64)> {
    if let Some((p, w)) = spec.rsplit_once(':') {
        if let Ok(n) = w.parse::<u64>() {
            return Ok((PathBuf::from(p), n));
        }
        if w.parse::<f64>().is_ok() {
            bail!("{spec}: the weight after `:` is a sample count (a whole number)");
        }
    }
    Ok((PathBuf::from(spec), 1))
}

fn client_name(path: &Path, index: usize) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.is_empty() { format!("client{index}") } else { name }
}

pub(crate) fn run(command: FederatedCommand) -> Result<()> {
    match command {
        FederatedCommand::Aggregate {
            inputs,
            out,
            rank,
            method,
            clip,
            noise_multiplier,
            seed,
            dp,
            robust,
            max_norm_ratio,
            base_fingerprint,
        } => {
            let mut opts = AggregateOptions::new(method.parse::<Method>()?);
            opts.rank = rank;
            opts.clip = clip;
            opts.noise_multiplier = noise_multiplier;
            opts.seed = seed;
            opts.dp = dp.parse::<DpMode>()?;
            opts.robust = robust.parse::<Robust>()?;
            opts.max_norm_ratio = (max_norm_ratio > 0.0).then_some(max_norm_ratio);
            opts.expected_fingerprint = base_fingerprint.map(BaseFingerprint::new);
            // Unreadable adapters are refused like bad ones; the round goes on.
            let mut updates = Vec::new();
            let mut unreadable = Vec::new();
            for (i, spec) in inputs.iter().enumerate() {
                let (path, samples) = path_and_samples(spec)?;
                let client = client_name(&path, i);
                match peft::load(&path, &LoadOptions::new()) {
                    Ok(a) => updates.push(Update::new(client, a, samples)),
                    Err(e) => unreadable.push(Refusal { client, reason: RefusalReason::Unreadable { error: e.to_string() } }),
                }
            }
            let result = aggregate(&updates, &opts);
            let round = match result {
                Ok(r) => r,
                Err(tailor_federated::Error::NothingAccepted { mut refusals }) => {
                    refusals.extend(unreadable);
                    let listed: Vec<String> = refusals.iter().map(|r| r.to_string()).collect();
                    bail!("nothing to aggregate, nothing written: {}", if listed.is_empty() { "no updates".into() } else { listed.join("; ") });
                }
                Err(e) => return Err(e).context("nothing written"),
            };
            peft::save(&round.adapter, &out).with_context(|| format!("saving {}", out.display()))?;
            let mut refused = round.refused.clone();
            refused.extend(unreadable);
            for r in &refused {
                eprintln!("{r}");
            }
            let v = serde_json::json!({
                "out": out,
                "accepted": round.accepted,
                "refused": refused,
                "report": round.report,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        FederatedCommand::Accountant { noise_multiplier, sample_rate, rounds, delta, json } => {
            let (eps, order) = accountant::epsilon(noise_multiplier, sample_rate, rounds, delta)?;
            if json {
                let v = serde_json::json!({
                    "epsilon": eps,
                    "delta": delta,
                    "order": order,
                    "noise_multiplier": noise_multiplier,
                    "sample_rate": sample_rate,
                    "rounds": rounds,
                    "accountant": "RDP of the Poisson-sampled Gaussian mechanism (Mironov et al. 2019), ε by Canonne-Kamath-Steinke 2020 Prop. 12, dp_accounting's orders",
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("ε = {eps:.6} at δ = {delta:e} after {rounds} rounds (σ = {noise_multiplier}, q = {sample_rate}; RDP order {order})");
            }
            Ok(())
        }
    }
}
