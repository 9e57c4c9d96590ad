//! Personalization from a profile: the user's feedback becomes training data, a new adapter
//! version is trained from scratch on all current feedback, an evaluation gate decides whether
//! it is promoted, and forgetting reaches the adapters.
//!
//! Layout of an adapters directory (for a profile file `alice.db`, [`adapters_dir`] is
//! `alice.db.adapters/` beside it):
//! - `<version>/`: one promoted version in PEFT's layout (saved atomically);
//! - `.checkpoint/`: the checkpoint of a run that was stopped or killed before the gate, so
//!   the next run on the same feedback resumes it; removed when a run reaches the gate and
//!   whenever feedback is forgotten ([`purge_tainted`]);
//! - `ACTIVE`: the name of the version to run (written to a temp file, fsynced, renamed);
//!   empty means the base alone. A missing or tainted `ACTIVE` falls back to the newest clean
//!   version whose directory exists ([`active_adapter`]).
//!
//! Mapping of feedback events ([`feedback_to_data`]):
//! - correction → SFT on the corrected answer;
//! - thumbs up → SFT on the model's answer;
//! - preference → DPO (chosen, rejected);
//! - thumbs down on a prompt that also has a correction → DPO (chosen = the correction,
//!   rejected = the thumbs-down answer); a lone thumbs down → nothing.
//!
//! Every 5th SFT example in id order (at least one when there are two or more) is held out
//! for the gate. A version is promoted only if its held-out NLL is below the base's and its
//! NLL on a small general-text set shipped with the crate (`data/general.txt`) rises by less
//! than 5% over the base's.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tailor::profile::{Feedback, FeedbackKind, FeedbackQuery, MemoryStore};
use tailor::{AdapterRegistry, ChatMessage, Engine, Flow};

use crate::{mean_nll, score_answers, PreferenceExample, Progress, SftExample, StopReason, TrainConfig, TrainData, TrainMetrics, Trainer};

/// The general-text set of the gate: ordinary English paragraphs written for Tailor.
pub const GENERAL_TEXT: &str = include_str!("../data/general.txt");

/// The replay set: questions answered by ordinary English paragraphs written for Tailor (none
/// of them in [`GENERAL_TEXT`]), mixed into training so that learning the user's facts does not wear
/// down the model's general text.
pub const REPLAY_TEXT: &str = include_str!("../data/replay.txt");

/// The folder in an adapters directory holding a stopped run's checkpoint.
pub const CHECKPOINT_DIR: &str = ".checkpoint";

/// The file in an adapters directory naming the version to run.
pub const ACTIVE_FILE: &str = "ACTIVE";

/// What can go wrong while personalizing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Training or scoring failed.
    #[error(transparent)]
    Train(#[from] crate::Error),
    /// The profile store refused something.
    #[error(transparent)]
    Profile(#[from] tailor::profile::Error),
    /// The engine refused something (template, tokenizer).
    #[error(transparent)]
    Engine(#[from] tailor::Error),
    /// An adapter could not be saved.
    #[error(transparent)]
    Adapter(#[from] tailor::adapters::Error),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The profile has no feedback that trains anything.
    #[error("no feedback to train on (thumbs-down events alone teach nothing)")]
    NoFeedback,
    /// There is no earlier version to roll back to.
    #[error("no adapter is active: nothing to roll back")]
    NothingToRollBack,
    /// A training run of this profile is already going on.
    #[error("a training run of this profile is already going on")]
    Busy,
    /// A background run panicked (a bug).
    #[error("the training thread panicked (a bug)")]
    Panicked,
}

impl Error {
    /// The variant's name (`"NoFeedback"`, `"Train"`, ...), for bindings and JSON.
    pub fn variant_name(&self) -> &'static str {
        match self {
            Error::Train(_) => "Train",
            Error::Profile(_) => "Profile",
            Error::Engine(_) => "Engine",
            Error::Adapter(_) => "Adapter",
            Error::Io { .. } => "Io",
            Error::NoFeedback => "NoFeedback",
            Error::NothingToRollBack => "NothingToRollBack",
            Error::Busy => "Busy",
            Error::Panicked => "Panicked",
        }
    }
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Training data made from feedback events.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct FeedbackData {
    /// What the run trains on.
    pub train: TrainData,
    /// SFT examples kept out of training, for the gate.
    pub held_out: Vec<SftExample>,
    /// The events used (training or held out), in id order.
    pub feedback_ids: Vec<i64>,
    /// Lone thumbs-down events, which teach nothing.
    pub skipped: usize,
}

/// Tokens of `prompt` as a user turn, rendered with the model's chat template.
fn prompt_tokens(engine: &Engine, prompt: &str) -> Result<Vec<u32>> {
    Ok(engine.tokenize(&engine.render_chat(&[ChatMessage::user(prompt)])?)?)
}

/// Tokens of an assistant answer, closed by the end-of-turn token.
fn answer_tokens(engine: &Engine, answer: &str) -> Result<Vec<u32>> {
    Ok(engine.tokenize(&format!("{answer}<|im_end|>"))?)
}

/// Turns feedback events into training data (see the module docs for the mapping). Every
/// `held_out_every`-th SFT example in id order is held out (`0`: none), and at least one
/// when there are two or more.
pub fn feedback_to_data(engine: &Engine, feedback: &[Feedback], held_out_every: usize) -> Result<FeedbackData> {
    let mut events: Vec<&Feedback> = feedback.iter().collect();
    events.sort_by_key(|f| f.id);
    // The latest correction of each prompt: the "chosen" side of thumbs-down pairs.
    let mut corrections: HashMap<&str, &str> = HashMap::new();
    for f in &events {
        if let FeedbackKind::Correction { corrected } = &f.kind {
            corrections.insert(f.prompt.trim(), corrected);
        }
    }
    let mut data = FeedbackData::default();
    let mut sft: Vec<(i64, SftExample)> = Vec::new();
    for f in events {
        let sft_on = |text: &str| -> Result<SftExample> {
            Ok(SftExample { prompt_tokens: prompt_tokens(engine, &f.prompt)?, answer_tokens: answer_tokens(engine, text)? })
        };
        let pair = |chosen: &str, rejected: &str| -> Result<PreferenceExample> {
            Ok(PreferenceExample {
                prompt_tokens: prompt_tokens(engine, &f.prompt)?,
                chosen_tokens: answer_tokens(engine, chosen)?,
                rejected_tokens: answer_tokens(engine, rejected)?,
            })
        };
        match &f.kind {
            FeedbackKind::ThumbsUp => sft.push((f.id, sft_on(&f.answer)?)),
            FeedbackKind::Correction { corrected } => sft.push((f.id, sft_on(corrected)?)),
            FeedbackKind::Preference { chosen, rejected } => data.train.preferences.push(pair(chosen, rejected)?),
            FeedbackKind::ThumbsDown => match corrections.get(f.prompt.trim()) {
                Some(c) => data.train.preferences.push(pair(c, &f.answer)?),
                None => {
                    data.skipped += 1;
                    continue;
                }
            },
            _ => {
                data.skipped += 1;
                continue;
            }
        }
        data.feedback_ids.push(f.id);
    }
    let n = sft.len();
    let mut held: Vec<bool> = (0..n).map(|i| held_out_every > 0 && i % held_out_every == held_out_every - 1).collect();
    if held_out_every > 0 && n >= 2 && !held.contains(&true) {
        held[n - 1] = true;
    }
    for ((_, ex), h) in sft.into_iter().zip(held) {
        if h {
            data.held_out.push(ex);
        } else {
            data.train.sft.push(ex);
        }
    }
    Ok(data)
}

/// The general-text set as SFT-like examples: each paragraph is the answer to a minimal
/// prompt, cut so that prompt + answer fit `max_len` tokens.
pub fn general_examples(engine: &Engine, max_len: usize) -> Result<Vec<SftExample>> {
    paragraph_examples(engine, GENERAL_TEXT, max_len)
}

/// The replay set ([`REPLAY_TEXT`]: blocks of a question line and a paragraph answering it)
/// as chat examples, cut to `max_len` tokens. Its questions differ from the one the gate's
/// [`general_examples`] are asked with, so replay keeps the model's general answers without
/// teaching it the gate's form.
pub fn replay_examples(engine: &Engine, max_len: usize) -> Result<Vec<SftExample>> {
    let mut out = Vec::new();
    for block in REPLAY_TEXT.split("\n\n").map(str::trim).filter(|b| !b.is_empty()) {
        let Some((question, paragraph)) = block.split_once('\n') else { continue };
        let prompt = prompt_tokens(engine, question.trim())?;
        let mut answer = answer_tokens(engine, paragraph.trim())?;
        answer.truncate(max_len.saturating_sub(prompt.len()).max(1));
        out.push(SftExample { prompt_tokens: prompt, answer_tokens: answer });
    }
    Ok(out)
}

fn paragraph_examples(engine: &Engine, text: &str, max_len: usize) -> Result<Vec<SftExample>> {
    let prompt = prompt_tokens(engine, "Write a short paragraph.")?;
    let room = max_len.saturating_sub(prompt.len()).max(1);
    text
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut answer = engine.tokenize(p)?;
            answer.truncate(room);
            Ok(SftExample { prompt_tokens: prompt.clone(), answer_tokens: answer })
        })
        .collect()
}

/// Settings of [`train_profile`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PersonalOptions {
    /// The training run (a new version always starts from scratch).
    pub train: TrainConfig,
    /// Hold out every this-many-th SFT example for the gate.
    pub held_out_every: usize,
    /// Largest relative rise of the general-text NLL over the base's that is accepted.
    pub max_general_increase: f64,
    /// Checkpoint the run into `adapters_dir/.checkpoint/` every this many steps (`0`: no
    /// checkpoints), so that a stopped or killed run resumes where it was when it is started
    /// again on the same feedback.
    pub checkpoint_every: usize,
    /// Replay paragraphs ([`REPLAY_TEXT`], cycled) mixed into training, as a fraction of the
    /// feedback's SFT examples (`0`: none).
    pub replay: f32,
}

impl Default for PersonalOptions {
    fn default() -> Self {
        let train = TrainConfig { learning_rate: 5e-4, epochs: 2, warmup_steps: 2, ..TrainConfig::default() };
        PersonalOptions { train, held_out_every: 5, max_general_increase: 0.05, checkpoint_every: 5, replay: 1.0 }
    }
}

/// What the gate decided.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The new version was saved, recorded and made active.
    Promoted {
        /// Its version name.
        version: String,
        /// Its directory.
        path: PathBuf,
    },
    /// Nothing changed.
    Refused {
        /// Why.
        reason: String,
    },
}

/// The result of [`train_profile`], with the gate's figures.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Outcome {
    /// Promoted or refused.
    pub decision: Decision,
    /// Held-out answer NLL under the base alone.
    pub held_out_before: f64,
    /// Held-out answer NLL with the new adapter.
    pub held_out_after: f64,
    /// Whether there was no held-out example and the training examples were scored instead.
    pub held_out_in_sample: bool,
    /// General-text NLL under the base alone.
    pub general_before: f64,
    /// General-text NLL with the new adapter.
    pub general_after: f64,
    /// Training examples from the feedback (SFT + pairs).
    pub train_examples: usize,
    /// Held-out examples.
    pub held_out_examples: usize,
    /// Replay paragraphs mixed into training.
    pub replay_examples: usize,
    /// Feedback events used.
    pub feedback_ids: Vec<i64>,
    /// The run's figures (steps, tokens/s, ...).
    pub metrics: TrainMetrics,
}

impl Outcome {
    /// Whether the new version was promoted.
    pub fn promoted(&self) -> bool {
        matches!(self.decision, Decision::Promoted { .. })
    }

    /// Relative change of the general-text NLL (`0.03` = 3% higher).
    pub fn general_change(&self) -> f64 {
        self.general_after / self.general_before - 1.0
    }
}

/// Trains a new adapter version from all the profile's current feedback (forgotten events
/// are gone from the store, so never in it), starting from scratch, and promotes it if the
/// gate accepts it: saved atomically to `adapters_dir/<version>`, recorded in the lineage with
/// the previous active version as parent, the events marked consumed by it, and `ACTIVE`
/// pointed at it. A refusal leaves the profile and the directory as they were.
pub fn train_profile(
    engine: &Engine,
    store: &mut MemoryStore,
    adapters_dir: &Path,
    options: &PersonalOptions,
    progress: &mut dyn FnMut(&Progress) -> Flow,
) -> Result<Outcome> {
    train_with(engine, &mut |f| f(store), adapters_dir, options, progress)
}

/// [`train_profile`] on a store shared with running sessions: the lock is held only to read
/// the feedback and to record a promotion, never while training or scoring. Feedback
/// forgotten while the run trained makes the gate refuse (the new version learned from it).
pub fn train_shared(
    engine: &Engine,
    store: &Mutex<MemoryStore>,
    adapters_dir: &Path,
    options: &PersonalOptions,
    progress: &mut dyn FnMut(&Progress) -> Flow,
) -> Result<Outcome> {
    train_with(engine, &mut |f| f(&mut lock_store(store)), adapters_dir, options, progress)
}

/// Locks a shared store, taking it over from a thread that panicked while holding it (the
/// store itself is transactional, so a poisoned lock leaves it consistent).
pub(crate) fn lock_store(store: &Mutex<MemoryStore>) -> MutexGuard<'_, MemoryStore> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` with the store locked (or borrowed) for as long as `f` runs.
type WithStore<'a> = dyn FnMut(&mut dyn FnMut(&mut MemoryStore) -> Result<()>) -> Result<()> + 'a;

fn train_with(
    engine: &Engine,
    with_store: &mut WithStore<'_>,
    adapters_dir: &Path,
    options: &PersonalOptions,
    progress: &mut dyn FnMut(&Progress) -> Flow,
) -> Result<Outcome> {
    let mut query = FeedbackQuery::default();
    query.limit = 1_000_000;
    let mut feedback = Vec::new();
    with_store(&mut |s| {
        feedback = s.list_feedback(&query)?;
        Ok(())
    })?;
    let data = feedback_to_data(engine, &feedback, options.held_out_every)?;
    if data.train.is_empty() {
        return Err(Error::NoFeedback);
    }
    let threads = options.train.threads;
    let (eval, in_sample) = if data.held_out.is_empty() {
        let mut e = data.train.sft.clone();
        e.extend(data.train.preferences.iter().map(|p| SftExample {
            prompt_tokens: p.prompt_tokens.clone(),
            answer_tokens: p.chosen_tokens.clone(),
        }));
        (e, true)
    } else {
        (data.held_out.clone(), false)
    };
    let general = general_examples(engine, options.train.max_seq_len)?;

    let mut config = options.train.clone();
    let checkpoint = adapters_dir.join(CHECKPOINT_DIR);
    if options.checkpoint_every > 0 {
        config.checkpoint_dir = Some(checkpoint.clone());
        config.checkpoint_every = options.checkpoint_every;
        config.resume = true;
    }
    let mut train = data.train.clone();
    let replay = replay_examples(engine, options.train.max_seq_len)?;
    let n_replay = if replay.is_empty() { 0 } else { (train.sft.len() as f32 * options.replay.max(0.0)).ceil() as usize };
    train.sft.extend(replay.iter().cycle().take(n_replay).cloned());
    let out = match Trainer::new(engine, config.clone())?.train(&train, progress) {
        // A checkpoint left by a run on other feedback or settings (or a damaged one) cannot
        // be resumed: it is discarded and the run starts from scratch.
        Err(e) if e.kind() == crate::ErrorKind::Checkpoint && checkpoint.exists() => {
            std::fs::remove_dir_all(&checkpoint).map_err(io(&checkpoint))?;
            Trainer::new(engine, config)?.train(&train, progress)?
        }
        r => r?,
    };
    let stopped = matches!(out.metrics.stop, StopReason::Cancelled | StopReason::Callback);
    if !stopped && checkpoint.exists() {
        // The run reached the gate: nothing to resume, and no trained state left lying around.
        std::fs::remove_dir_all(&checkpoint).map_err(io(&checkpoint))?;
    }
    let held_out_before = mean_nll(&score_answers(engine, None, &eval, threads)?);
    let held_out_after = mean_nll(&score_answers(engine, Some(&out.adapter), &eval, threads)?);
    let general_before = mean_nll(&score_answers(engine, None, &general, threads)?);
    let general_after = mean_nll(&score_answers(engine, Some(&out.adapter), &general, threads)?);
    let mut outcome = Outcome {
        decision: Decision::Refused { reason: String::new() },
        held_out_before,
        held_out_after,
        held_out_in_sample: in_sample,
        general_before,
        general_after,
        train_examples: data.train.len(),
        held_out_examples: data.held_out.len(),
        replay_examples: n_replay,
        feedback_ids: data.feedback_ids.clone(),
        metrics: out.metrics.clone(),
    };
    let refuse = |outcome: &mut Outcome, reason: String| {
        outcome.decision = Decision::Refused { reason };
    };
    if stopped {
        refuse(&mut outcome, "the run was stopped (started again on the same feedback, it resumes)".into());
        return Ok(outcome);
    }
    // Written so that a NaN refuses.
    if held_out_after.partial_cmp(&held_out_before) != Some(std::cmp::Ordering::Less) {
        refuse(&mut outcome, format!("held-out NLL did not improve ({held_out_before:.4} → {held_out_after:.4})"));
        return Ok(outcome);
    }
    let change = outcome.general_change();
    if change.partial_cmp(&options.max_general_increase) != Some(std::cmp::Ordering::Less) {
        refuse(
            &mut outcome,
            format!(
                "general-text NLL rose {:.1}% ({general_before:.4} → {general_after:.4}), the limit is {:.1}%",
                change * 100.0,
                options.max_general_increase * 100.0
            ),
        );
        return Ok(outcome);
    }

    // Promotion, with the store held from the check that the feedback is all still there to
    // the record of the new version, so a concurrent forget is either seen here or comes after
    // (and then taints the new version like any other).
    let mut decision = None;
    with_store(&mut |store| {
        let mut q = FeedbackQuery::default();
        q.limit = 1_000_000;
        let present: std::collections::HashSet<i64> = store.list_feedback(&q)?.iter().map(|f| f.id).collect();
        if let Some(gone) = data.feedback_ids.iter().find(|id| !present.contains(id)) {
            decision = Some(Decision::Refused {
                reason: format!("feedback {gone} was forgotten while the run trained; train again"),
            });
            return Ok(());
        }
        decision = Some(promote(store, adapters_dir, &out, &data.feedback_ids, &outcome)?);
        Ok(())
    })?;
    outcome.decision = decision.expect("set by the closure");
    Ok(outcome)
}

/// Saves the trained adapter as a new version, records it with its lineage and the feedback it
/// consumed, and makes it active.
fn promote(store: &mut MemoryStore, adapters_dir: &Path, out: &crate::TrainOutput, feedback_ids: &[i64], outcome: &Outcome) -> Result<Decision> {
    let parent = active_adapter(store, adapters_dir)?.map(|(v, _)| v);
    let known: Vec<String> = store.list_adapters()?.into_iter().map(|a| a.version).collect();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut n = known.len() + 1;
    let version = loop {
        let v = format!("v{n}-{stamp}");
        if !known.contains(&v) && !adapters_dir.join(&v).exists() {
            break v;
        }
        n += 1;
    };
    let path = adapters_dir.join(&version);
    tailor::adapters::peft::save(&out.adapter, &path)?;
    let (held_out_before, held_out_after, in_sample) = (outcome.held_out_before, outcome.held_out_after, outcome.held_out_in_sample);
    let (general_before, general_after) = (outcome.general_before, outcome.general_after);
    let metrics = serde_json::json!({
        "held_out_nll_before": held_out_before,
        "held_out_nll_after": held_out_after,
        "held_out_in_sample": in_sample,
        "general_nll_before": general_before,
        "general_nll_after": general_after,
        "train_examples": outcome.train_examples,
        "held_out_examples": outcome.held_out_examples,
        "steps": out.metrics.steps,
        "trained_tokens": out.metrics.trained_tokens,
        "tokens_per_s": out.metrics.tokens_per_s,
    });
    let recorded = store
        .record_adapter(&version, parent.as_deref(), metrics)
        .and_then(|_| store.mark_feedback_consumed(feedback_ids, &version));
    if let Err(e) = recorded {
        let _ = std::fs::remove_dir_all(&path);
        return Err(e.into());
    }
    write_active(adapters_dir, Some(&version))?;
    Ok(Decision::Promoted { version, path })
}

/// Where the adapter versions of the profile at `profile_path` live: `<file name>.adapters/`
/// beside the profile file (so two profiles in one directory never share versions).
pub fn adapters_dir(profile_path: &Path) -> PathBuf {
    let mut name = profile_path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "profile".into());
    name.push(".adapters");
    profile_path.parent().unwrap_or(Path::new(".")).join(name)
}

/// Makes a running engine's `registry` run the profile's active version ([`active_adapter`]):
/// loaded under `name` (only when it is not already the version loaded there) and put in the
/// active set with weight 1, the set's other members untouched; when the profile has no
/// usable version (none promoted, rolled back to the base, or every version tainted by
/// forgetting) the adapter `name` is unloaded. Sessions following the registry pick the
/// change up at their next generation. Returns the version now running under `name`.
///
/// Call it after a promotion ([`train_profile`]), a [`rollback`] and after forgetting
/// feedback ([`purge_tainted`]).
pub fn sync_registry(registry: &AdapterRegistry, store: &MemoryStore, adapters_dir: &Path, name: &str) -> Result<Option<String>> {
    let loaded = registry.list().into_iter().find(|a| a.name == name);
    match active_adapter(store, adapters_dir)? {
        Some((version, path)) => {
            if loaded.as_ref().and_then(|a| a.source.as_ref()) != Some(&path) {
                registry.load(name, &path)?;
            }
            registry.set_weight(name, Some(1.0))?;
            Ok(Some(version))
        }
        None => {
            if loaded.is_some() {
                registry.unload(name)?;
            }
            Ok(None)
        }
    }
}

/// Points `adapters_dir/ACTIVE` at `version` (`None`: the base alone), atomically.
fn write_active(adapters_dir: &Path, version: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(adapters_dir).map_err(io(adapters_dir))?;
    let tmp = adapters_dir.join(format!(".{ACTIVE_FILE}.tmp-{}", std::process::id()));
    let target = adapters_dir.join(ACTIVE_FILE);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(version.unwrap_or("").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        // The rename itself is made durable by syncing the directory (Unix).
        #[cfg(unix)]
        std::fs::File::open(adapters_dir)?.sync_all()?;
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io { path: target.clone(), source: e }
    })
}

/// The `ACTIVE` file's content: `None` when missing, `Some(None)` for the base alone.
fn read_active(adapters_dir: &Path) -> Result<Option<Option<String>>> {
    let p = adapters_dir.join(ACTIVE_FILE);
    match std::fs::read_to_string(&p) {
        Ok(s) => {
            let s = s.trim();
            Ok(Some((!s.is_empty()).then(|| s.to_string())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io { path: p, source: e }),
    }
}

/// The adapter version to run and its directory: the one `ACTIVE` names if it is clean and on
/// disk; otherwise (missing, tainted by forgetting, or deleted) the newest clean version whose
/// directory exists. `None`: run the base alone (also when `ACTIVE` says so after a rollback
/// past the first version).
pub fn active_adapter(store: &MemoryStore, adapters_dir: &Path) -> Result<Option<(String, PathBuf)>> {
    let adapters = store.list_adapters()?;
    let usable = |v: &str| adapters.iter().any(|a| a.version == v && a.tainted_at.is_none()) && adapters_dir.join(v).is_dir();
    match read_active(adapters_dir)? {
        Some(None) => return Ok(None),
        Some(Some(v)) if usable(&v) => {
            let p = adapters_dir.join(&v);
            return Ok(Some((v, p)));
        }
        _ => {}
    }
    Ok(adapters.iter().rev().find(|a| usable(&a.version)).map(|a| (a.version.clone(), adapters_dir.join(&a.version))))
}

/// Makes the active version's parent (the nearest clean ancestor still on disk) active, or the
/// base alone when there is none. Versions stay on disk. Returns the new active version.
pub fn rollback(store: &MemoryStore, adapters_dir: &Path) -> Result<Option<String>> {
    let (current, _) = active_adapter(store, adapters_dir)?.ok_or(Error::NothingToRollBack)?;
    let adapters = store.list_adapters()?;
    let find = |v: &str| adapters.iter().find(|a| a.version == v);
    let mut next = find(&current).and_then(|a| a.parent.clone());
    while let Some(v) = next.clone() {
        match find(&v) {
            Some(a) if a.tainted_at.is_none() && adapters_dir.join(&v).is_dir() => break,
            Some(a) => next = a.parent.clone(),
            None => next = None,
        }
    }
    write_active(adapters_dir, next.as_deref())?;
    Ok(next)
}

/// Deletes the directories of every tainted version (those that learned from forgotten
/// feedback) and any stopped run's checkpoint, so nothing the user asked to forget survives
/// in an adapter. Returns the versions whose directories were removed.
pub fn purge_tainted(store: &MemoryStore, adapters_dir: &Path) -> Result<Vec<String>> {
    let checkpoint = adapters_dir.join(CHECKPOINT_DIR);
    if checkpoint.exists() {
        std::fs::remove_dir_all(&checkpoint).map_err(io(&checkpoint))?;
    }
    let mut removed = Vec::new();
    for a in store.list_adapters()? {
        let dir = adapters_dir.join(&a.version);
        if a.tainted_at.is_some() && dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            removed.push(a.version);
        }
    }
    Ok(removed)
}
