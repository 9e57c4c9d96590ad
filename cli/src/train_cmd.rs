//! `tailor train` and `tailor adapter rollback`: the profile's personal adapters (trained from
//! its feedback, kept in `<profile file>.adapters/` beside it).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tailor::profile::MemoryStore;
use tailor_trainer::personal::{self, Decision, PersonalOptions};
use tailor_trainer::Flow;

use crate::memory_cmd::ProfileArgs;
use crate::ModelArgs;

/// `tailor train`.
#[derive(Args)]
pub(crate) struct TrainArgs {
    /// Stop training after this many seconds (the adapter so far still goes through the gate).
    #[arg(long)]
    max_seconds: Option<f64>,
    /// At most this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    #[command(flatten)]
    profile: ProfileArgs,
    #[command(flatten)]
    model: ModelArgs,
}

use personal::adapters_dir;

/// The profile's active adapter directory, if any (clean and on disk).
pub(crate) fn active_adapter(profile: &Path, store: &MemoryStore) -> Result<Option<PathBuf>> {
    Ok(personal::active_adapter(store, &adapters_dir(profile))?.map(|(_, p)| p))
}

pub(crate) fn train(args: TrainArgs) -> Result<()> {
    let path = args.profile.path()?;
    let mut store = args.profile.open()?;
    let engine = args.model.load()?;
    let mut options = PersonalOptions::default();
    options.train.max_steps = args.max_steps;
    options.train.max_seconds = args.max_seconds;
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").context("progress bar template")?);
    let interrupted = interrupt::install();
    let outcome = personal::train_profile(&engine, &mut store, &adapters_dir(&path), &options, &mut |p| {
        if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            return Flow::Stop;
        }
        bar.set_length(p.total_steps as u64);
        bar.set_position(p.step as u64);
        bar.set_message(format!("loss {:.4} · {:.0} tok/s · eta {}s", p.loss, p.tokens_per_s, p.eta.as_secs()));
        Flow::Continue
    });
    bar.finish_and_clear();
    let outcome = match outcome {
        Err(personal::Error::NoFeedback) => {
            println!("nothing to train on: add feedback first (tailor feedback add)");
            return Ok(());
        }
        other => other?,
    };
    let m = &outcome.metrics;
    if let Some(step) = m.resumed_from {
        println!("resumed a stopped run at step {step}");
    }
    println!(
        "trained {} steps on {} examples + {} replay ({} held out) · {:.0} tok/s · {:.1}s (data {:.0}s, gate {:.0}s)",
        m.steps,
        outcome.train_examples,
        outcome.replay_examples,
        outcome.held_out_examples,
        m.tokens_per_s,
        m.elapsed.as_secs_f64(),
        outcome.prepare_seconds,
        outcome.gate_seconds
    );
    println!(
        "held-out paraphrases of your corrections answered right: {} → {} of {} (answer NLL {:.4} → {:.4}{})",
        outcome.probes_right_before,
        outcome.probes_right_after,
        outcome.probes,
        outcome.held_out_before,
        outcome.held_out_after,
        if outcome.held_out_in_sample { ", scored on the training set: no held-out example" } else { "" }
    );
    if outcome.specificity_base_right > 0 {
        println!("unrelated questions the base answers right, now answered wrong: {} of {}", outcome.specificity_lost, outcome.specificity_base_right);
    }
    if let (Some(b), Some(a)) = (outcome.margin_before, outcome.margin_after) {
        println!("held-out preference margin (log p(chosen) − log p(rejected)): {b:+.2} → {a:+.2}");
    }
    println!(
        "general-text NLL: {:.4} → {:.4} ({:+.2}%)",
        outcome.general_before,
        outcome.general_after,
        outcome.general_change() * 100.0
    );
    match &outcome.decision {
        Decision::Promoted { version, path } => println!("promoted {version} ({})", path.display()),
        Decision::Refused { reason } => println!("refused: {reason}; the active adapter is unchanged"),
        _ => {}
    }
    Ok(())
}

/// Ctrl-C during `tailor train`: the run stops at the next step with a checkpoint (the next
/// `tailor train` on the same feedback resumes it) instead of dying mid-step.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_sigint(_: libc::c_int) {
        // Async-signal-safe: one atomic store. A second Ctrl-C gets the default action.
        INTERRUPTED.store(true, Ordering::Relaxed);
        // SAFETY: restoring the default disposition is async-signal-safe.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    }

    /// Installs the handler; the flag turns true on the first Ctrl-C.
    pub(super) fn install() -> &'static AtomicBool {
        #[cfg(unix)]
        // SAFETY: the handler only stores to an atomic and resets the disposition.
        unsafe {
            libc::signal(libc::SIGINT, on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
        &INTERRUPTED
    }
}

/// `tailor adapter rollback`.
pub(crate) fn rollback(profile: ProfileArgs) -> Result<()> {
    let path = profile.path()?;
    let store = profile.open()?;
    match personal::rollback(&store, &adapters_dir(&path))? {
        Some(v) => println!("active adapter: {v}"),
        None => println!("active adapter: none (the base model)"),
    }
    Ok(())
}

/// After forgetting feedback: deletes the adapter versions that learned from it.
pub(crate) fn purge_tainted(profile: &Path, store: &MemoryStore) -> Result<Vec<String>> {
    Ok(personal::purge_tainted(store, &adapters_dir(profile))?)
}
