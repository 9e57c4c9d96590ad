//! One user's personal model while an app runs: the engine, its adapter registry running the
//! profile's promoted adapter, the profile store shared with every session (memories in the
//! prompt, feedback), and training in the background with the result hot-swapped in.
//!
//! This is what the C ABI, `tailor serve` and `tailor mcp` hold per profile; the free
//! functions of [`crate::personal`] stay the building blocks.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tailor::profile::{BertEmbedder, FeedbackKind, MemoryConfig, MemoryStore, NewFeedback};
//! use tailor::{Engine, EngineConfig, Flow, GenerateParams};
//! use tailor_trainer::personal::PersonalOptions;
//! use tailor_trainer::PersonalModel;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::load("model.gguf", EngineConfig::default())?;
//! let store = MemoryStore::open("me.db", Arc::new(BertEmbedder::load("minilm/")?), MemoryConfig::default())?;
//! let me = PersonalModel::open(&engine, store, "me.db".as_ref())?;
//! me.store().lock().unwrap().add_feedback(NewFeedback::new(
//!     "What is my dog called?", "I don't know.",
//!     FeedbackKind::Correction { corrected: "Your dog is called Biscuit.".into() },
//! ))?;
//! let job = me.start_training(PersonalOptions::default())?;   // background thread
//! let done = job.wait();                                       // or .status() / .cancel()
//! println!("{:?} {:?}", done.state, done.version);
//! let mut session = me.new_session();                          // the promoted adapter + memories
//! session.chat("What is my dog called?", &GenerateParams::default(), &mut |ev| {
//!     print!("{}", ev.text);
//!     Flow::Continue
//! })?;
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use serde::Serialize;
use tailor::profile::{FeedbackAdded, FeedbackQuery, MemoryStore, NewFeedback};
use tailor::{AdapterRegistry, Engine, Flow, MemoryPromptConfig, Session, SessionConfig, SharedMemory};

use crate::personal::{self, adapters_dir, lock_store, Decision, Error, Outcome, PersonalOptions, Result};
use crate::{Progress, StopReason};

/// A profile opened for use: see the [module docs](self). `Send + Sync`; share it as the
/// `Arc` [`PersonalModel::open`] returns. It depends on nothing outliving it: it holds clones
/// of the engine and registry handles and owns the store. Open one per profile file at a
/// time (two would each run their own training and registry).
pub struct PersonalModel {
    engine: Engine,
    registry: Arc<AdapterRegistry>,
    store: SharedMemory,
    profile_path: PathBuf,
    adapters_dir: PathBuf,
    memory_prompt: Mutex<MemoryPromptConfig>,
    job: Mutex<Option<Arc<TrainingJob>>>,
    auto: Mutex<AutoTrain>,
    /// The newest feedback id an automatic run has been started on (it is not started again
    /// for the same events).
    auto_seen: Mutex<i64>,
}

/// When a [`PersonalModel`] trains on its own: after [`PersonalModel::add_feedback`], once at
/// least `min_new_feedback` events that no version has learned yet have come in since the last
/// automatic run, a background run starts ([`PersonalModel::start_training`] with `options`),
/// which pauses between steps while any generation runs on the engine.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AutoTrain {
    /// The off switch.
    pub enabled: bool,
    /// New (unconsumed) feedback events that start a run.
    pub min_new_feedback: usize,
    /// The run's settings.
    pub options: PersonalOptions,
}

impl Default for AutoTrain {
    fn default() -> Self {
        AutoTrain { enabled: true, min_new_feedback: 3, options: PersonalOptions::default() }
    }
}

impl std::fmt::Debug for PersonalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonalModel").field("profile_path", &self.profile_path).finish_non_exhaustive()
    }
}

impl PersonalModel {
    /// The name the profile's active version has in the registry.
    pub const ADAPTER_NAME: &'static str = "personal";

    /// Opens the profile whose store is `store` (opened from `profile_path`) over `engine`,
    /// with a registry of its own running the profile's active adapter version.
    pub fn open(engine: &Engine, store: MemoryStore, profile_path: &Path) -> Result<Arc<Self>> {
        Self::with_registry(engine, AdapterRegistry::new(engine), store, profile_path)
    }

    /// As [`PersonalModel::open`], on an existing registry (its other adapters and steering
    /// stay; the profile's version is loaded under [`PersonalModel::ADAPTER_NAME`]).
    pub fn with_registry(engine: &Engine, registry: Arc<AdapterRegistry>, store: MemoryStore, profile_path: &Path) -> Result<Arc<Self>> {
        let me = PersonalModel {
            engine: engine.clone(),
            registry,
            store: Arc::new(Mutex::new(store)),
            profile_path: profile_path.to_path_buf(),
            adapters_dir: adapters_dir(profile_path),
            memory_prompt: Mutex::new(MemoryPromptConfig::default()),
            job: Mutex::new(None),
            auto: Mutex::new(AutoTrain::default()),
            auto_seen: Mutex::new(0),
        };
        me.refresh()?;
        Ok(Arc::new(me))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The adapter registry sessions of this profile follow.
    pub fn registry(&self) -> &Arc<AdapterRegistry> {
        &self.registry
    }

    /// The profile store, shared with the sessions. Lock it briefly.
    pub fn store(&self) -> &SharedMemory {
        &self.store
    }

    /// The profile file.
    pub fn profile_path(&self) -> &Path {
        &self.profile_path
    }

    /// Where the profile's adapter versions live ([`personal::adapters_dir`]).
    pub fn adapters_dir(&self) -> &Path {
        &self.adapters_dir
    }

    /// How memories go into prompts of sessions made from now on.
    pub fn set_memory_prompt(&self, config: MemoryPromptConfig) {
        *self.memory_prompt.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// How memories go into prompts of new sessions ([`PersonalModel::set_memory_prompt`]).
    pub fn memory_prompt(&self) -> MemoryPromptConfig {
        self.memory_prompt.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A session with the engine's default context that follows the registry (the profile's
    /// adapter, other active adapters, steering) and retrieves memories into chat prompts.
    pub fn new_session(&self) -> Session {
        self.session_with(SessionConfig::default())
    }

    /// [`PersonalModel::new_session`] with settings.
    pub fn session_with(&self, config: SessionConfig) -> Session {
        let mut s = self.engine.session_with(config);
        s.follow(self.registry.clone());
        s.set_memory(Some(self.store.clone()), self.memory_prompt());
        s
    }

    /// The version running now (`None`: the base alone).
    pub fn active_version(&self) -> Result<Option<String>> {
        Ok(personal::active_adapter(&lock_store(&self.store), &self.adapters_dir)?.map(|(v, _)| v))
    }

    /// Makes the registry run the profile's active version (as the profile file says now, so
    /// a version another process promoted or rolled back is picked up) and returns it.
    pub fn refresh(&self) -> Result<Option<String>> {
        personal::sync_registry(&self.registry, &lock_store(&self.store), &self.adapters_dir, Self::ADAPTER_NAME)
    }

    /// Forgets feedback events: deleted from the store, every version that learned from them
    /// tainted and its files deleted, a stopped run's checkpoint deleted, and the registry
    /// falls back to the newest clean version. Returns the versions deleted.
    pub fn forget_feedback(&self, ids: &[i64]) -> Result<Vec<String>> {
        self.forget(|s| s.forget_feedback(ids))
    }

    /// [`PersonalModel::forget_feedback`] for every event.
    pub fn forget_all_feedback(&self) -> Result<Vec<String>> {
        self.forget(|s| s.forget_all_feedback())
    }

    fn forget(&self, f: impl FnOnce(&mut MemoryStore) -> tailor::profile::Result<Vec<String>>) -> Result<Vec<String>> {
        let removed = {
            let mut store = lock_store(&self.store);
            f(&mut store)?;
            personal::purge_tainted(&store, &self.adapters_dir)?
        };
        self.refresh()?;
        Ok(removed)
    }

    /// Makes the active version's parent active (or the base) and swaps it in.
    pub fn rollback(&self) -> Result<Option<String>> {
        personal::rollback(&lock_store(&self.store), &self.adapters_dir)?;
        self.refresh()
    }

    /// Makes `version` active ([`personal::activate`]) and swaps it in.
    pub fn activate(&self, version: &str) -> Result<Option<String>> {
        personal::activate(&lock_store(&self.store), &self.adapters_dir, version)?;
        self.refresh()
    }

    /// Trains a new version on the calling thread ([`personal::train_shared`]: the store is
    /// locked only briefly, sessions go on) and swaps a promoted version in.
    pub fn train(&self, options: &PersonalOptions, progress: &mut dyn FnMut(&Progress) -> Flow) -> Result<Outcome> {
        let outcome = personal::train_shared(&self.engine, &self.store, &self.adapters_dir, options, progress)?;
        if outcome.promoted() {
            self.refresh()?;
        }
        Ok(outcome)
    }

    /// Starts training on a background thread; [`Error::Busy`] while another run of this
    /// profile is going on.
    pub fn start_training(self: &Arc<Self>, options: PersonalOptions) -> Result<Arc<TrainingJob>> {
        self.start_training_with(options, Box::new(|_| Flow::Continue))
    }

    /// [`PersonalModel::start_training`] with a progress callback (run on the training thread
    /// after every step; [`Flow::Stop`] stops the run like [`TrainingJob::cancel`]).
    pub fn start_training_with(
        self: &Arc<Self>,
        options: PersonalOptions,
        mut progress: Box<dyn FnMut(&Progress) -> Flow + Send>,
    ) -> Result<Arc<TrainingJob>> {
        let mut slot = self.job.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|j| !j.is_finished()) {
            return Err(Error::Busy);
        }
        let job = Arc::new(TrainingJob {
            cancel: AtomicBool::new(false),
            state: Mutex::new(TrainingStatus::running()),
            done: Condvar::new(),
            thread: Mutex::new(None),
            outcome: Mutex::new(None),
        });
        let me = self.clone();
        let j = job.clone();
        let handle = std::thread::Builder::new()
            .name("tailor-train".into())
            .spawn(move || {
                background_priority();
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    me.train(&options, &mut |p| {
                        j.update(|s| {
                            s.step = p.step;
                            s.total_steps = p.total_steps;
                            s.loss = f64::from(p.loss);
                            s.tokens_per_s = p.tokens_per_s;
                            s.eta_seconds = p.eta.as_secs_f64();
                            s.elapsed_seconds = p.elapsed.as_secs_f64();
                        });
                        // A user's request gets the cores: wait between steps while any
                        // generation runs on the engine.
                        let mut paused = std::time::Duration::ZERO;
                        while me.engine.generations_running() > 0 && !j.cancel.load(Ordering::Relaxed) {
                            std::thread::sleep(std::time::Duration::from_millis(5));
                            paused += std::time::Duration::from_millis(5);
                        }
                        if !paused.is_zero() {
                            j.update(|s| s.paused_seconds += paused.as_secs_f64());
                        }
                        if j.cancel.load(Ordering::Relaxed) {
                            return Flow::Stop;
                        }
                        progress(p)
                    })
                }));
                let cancelled = j.cancel.load(Ordering::Relaxed);
                j.finish(match run {
                    Ok(r) => r,
                    Err(_) => Err(Error::Panicked),
                }, cancelled);
            })
            .map_err(|source| Error::Io { path: self.adapters_dir.clone(), source })?;
        *job.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        *slot = Some(job.clone());
        Ok(job)
    }

    /// When this profile trains on its own ([`AutoTrain`]; on by default).
    pub fn set_auto_train(&self, auto: AutoTrain) {
        *self.auto.lock().unwrap_or_else(|e| e.into_inner()) = auto;
    }

    /// The automatic-training settings.
    pub fn auto_train(&self) -> AutoTrain {
        self.auto.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a feedback event (a correction is mirrored into a memory at once, see
    /// `MemoryStore::add_feedback_mirrored`) and then, if [`AutoTrain`] says so, starts a
    /// background run. Returns what was recorded and the run started, if any.
    /// A run that cannot start (e.g. the thread cannot be spawned) is not an error of the
    /// feedback, which is stored: it gives `None`, and [`PersonalModel::maybe_train`] reports
    /// the error when called.
    pub fn add_feedback(self: &Arc<Self>, feedback: NewFeedback) -> Result<(FeedbackAdded, Option<Arc<TrainingJob>>)> {
        let added = lock_store(&self.store).add_feedback_mirrored(feedback)?;
        Ok((added, self.maybe_train().ok().flatten()))
    }

    /// Starts a background run if [`AutoTrain`] is on, none is running and enough feedback
    /// came in that no version has learned and no automatic run was started on yet.
    pub fn maybe_train(self: &Arc<Self>) -> Result<Option<Arc<TrainingJob>>> {
        let auto = self.auto_train();
        if !auto.enabled || self.training_job().is_some_and(|j| !j.is_finished()) {
            return Ok(None);
        }
        let mut seen = self.auto_seen.lock().unwrap_or_else(|e| e.into_inner());
        let fresh: Vec<i64> = {
            let mut q = FeedbackQuery::default();
            q.unconsumed_only = true;
            q.after = Some(*seen);
            q.limit = 1_000_000;
            lock_store(&self.store).list_feedback(&q)?.iter().map(|f| f.id).collect()
        };
        if fresh.len() < auto.min_new_feedback.max(1) {
            return Ok(None);
        }
        let job = match self.start_training(auto.options) {
            Ok(j) => j,
            Err(Error::Busy) => return Ok(None),
            Err(e) => return Err(e),
        };
        *seen = fresh.iter().copied().max().unwrap_or(*seen);
        Ok(Some(job))
    }

    /// The current (or last) background training job.
    pub fn training_job(&self) -> Option<Arc<TrainingJob>> {
        self.job.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Lowers the calling thread's CPU priority to the lowest (nice 19) so that a background run,
/// and the worker threads it starts (they inherit it), yield the cores to the user's requests
/// at once instead of only between steps. Linux and Android only (there `setpriority` with
/// `who = 0` names the calling thread); elsewhere runs keep the normal priority and pause
/// between steps only.
fn background_priority() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: setpriority only changes the scheduling priority of the calling thread; it reads
    // and writes no memory of ours. A failure (e.g. a sandbox that forbids it) is ignored.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// Where a training job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Training or scoring.
    Running,
    /// Finished; the new version was promoted and is running.
    Promoted,
    /// Finished; the gate refused the new version (nothing changed).
    Refused,
    /// Stopped by [`TrainingJob::cancel`] or the progress callback; started again on the same
    /// feedback, a run resumes from its checkpoint.
    Cancelled,
    /// Failed with an error.
    Failed,
}

/// A snapshot of a training job, serializable as JSON for bindings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TrainingStatus {
    /// Where the job is.
    pub state: JobState,
    /// Optimizer steps done.
    pub step: usize,
    /// Steps the run will do.
    pub total_steps: usize,
    /// Loss of the last step.
    pub loss: f64,
    /// Trained tokens per second.
    pub tokens_per_s: f64,
    /// Estimated seconds to the last step.
    pub eta_seconds: f64,
    /// Seconds since the run started.
    pub elapsed_seconds: f64,
    /// The promoted version.
    pub version: Option<String>,
    /// Why the gate refused, or the error.
    pub message: Option<String>,
    /// The error's variant, when failed (e.g. `"NoFeedback"`).
    pub error_kind: Option<String>,
    /// Held-out NLL under the base (when the gate ran).
    pub held_out_before: Option<f64>,
    /// Held-out NLL with the new version.
    pub held_out_after: Option<f64>,
    /// General-text NLL under the base.
    pub general_before: Option<f64>,
    /// General-text NLL with the new version.
    pub general_after: Option<f64>,
    /// The gate's figures in one line ([`Outcome::summary`]).
    pub summary: Option<String>,
    /// Seconds the run waited for generations to finish.
    pub paused_seconds: f64,
}

impl TrainingStatus {
    fn running() -> Self {
        TrainingStatus {
            state: JobState::Running,
            step: 0,
            total_steps: 0,
            loss: f64::NAN,
            tokens_per_s: 0.0,
            eta_seconds: 0.0,
            elapsed_seconds: 0.0,
            version: None,
            message: None,
            error_kind: None,
            held_out_before: None,
            held_out_after: None,
            general_before: None,
            general_after: None,
            summary: None,
            paused_seconds: 0.0,
        }
    }
}

/// A training run on a background thread ([`PersonalModel::start_training`]). `Send + Sync`:
/// status, cancel and wait from any thread. Dropping it does not stop the run.
#[derive(Debug)]
pub struct TrainingJob {
    cancel: AtomicBool,
    state: Mutex<TrainingStatus>,
    done: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
    outcome: Mutex<Option<Outcome>>,
}

impl TrainingJob {
    fn update(&self, f: impl FnOnce(&mut TrainingStatus)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn finish(&self, result: Result<Outcome>, cancelled: bool) {
        if let Ok(o) = &result {
            *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(o.clone());
        }
        self.update(|s| match result {
            Ok(o) => {
                s.step = o.metrics.steps;
                s.total_steps = s.total_steps.max(o.metrics.total_steps);
                s.tokens_per_s = o.metrics.tokens_per_s;
                s.elapsed_seconds = o.metrics.elapsed.as_secs_f64();
                s.eta_seconds = 0.0;
                s.held_out_before = Some(o.held_out_before);
                s.held_out_after = Some(o.held_out_after);
                s.general_before = Some(o.general_before);
                s.general_after = Some(o.general_after);
                s.summary = Some(o.summary());
                match o.decision {
                    Decision::Promoted { version, .. } => {
                        s.state = JobState::Promoted;
                        s.version = Some(version);
                    }
                    Decision::Refused { reason } => {
                        let stopped = matches!(o.metrics.stop, StopReason::Cancelled | StopReason::Callback);
                        s.state = if cancelled || stopped { JobState::Cancelled } else { JobState::Refused };
                        s.message = Some(reason);
                    }
                }
            }
            Err(e) => {
                s.state = JobState::Failed;
                s.error_kind = Some(e.variant_name().to_string());
                s.message = Some(e.to_string());
            }
        });
        self.done.notify_all();
    }

    /// Asks the run to stop after the step in progress (its checkpoint stays, so the next run
    /// on the same feedback resumes); the job then ends [`JobState::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The gate's full figures, once the job has ended with a gate decision.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A snapshot of the job.
    pub fn status(&self) -> TrainingStatus {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the job has ended.
    pub fn is_finished(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).state != JobState::Running
    }

    /// Blocks until the job ends and returns its final status.
    pub fn wait(&self) -> TrainingStatus {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.state == JobState::Running {
            s = self.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        let status = s.clone();
        drop(s);
        if let Some(h) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
        status
    }
}
