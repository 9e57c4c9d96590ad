//! Training a new adapter version from a profile's feedback, in the background.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use tailor_trainer::personal::PersonalOptions;
use tailor_trainer::{Flow, JobState, Progress, TrainingJob, TrainingStatus};

use crate::args::{handle, json_out, opt_out_ptr, opt_str_arg, out_arg, out_ptr};
use crate::error::{
    guard, guard_value, FfiError, FfiResult, TailorStatus, TAILOR_ERR_BUSY, TAILOR_ERR_CANCELLED, TAILOR_ERR_INTERNAL,
    TAILOR_ERR_INVALID_ARGUMENT, TAILOR_ERR_TRAINING,
};
use crate::profile::TailorProfile;

/// The job is training or scoring.
pub const TAILOR_JOB_RUNNING: i32 = 0;
/// Finished: the new version passed the gate, was saved and is running in the registry.
pub const TAILOR_JOB_PROMOTED: i32 = 1;
/// Finished: the gate refused the new version; nothing changed.
pub const TAILOR_JOB_REFUSED: i32 = 2;
/// Stopped by `tailor_training_cancel` or the progress callback (a later run on the same
/// feedback resumes from its checkpoint).
pub const TAILOR_JOB_CANCELLED: i32 = 3;
/// Failed with an error (the status JSON's `"message"` and `"error_kind"` say which).
pub const TAILOR_JOB_FAILED: i32 = 4;

/// A training run on a background thread.
///
/// - Threading: `Send + Sync`: status, cancel and wait from any thread.
/// - Lifetime: keeps its profile alive until the run ends.
/// - Freed with `tailor_training_free`. A handle from `tailor_training_start` owns its run:
///   freeing it cancels a run still going and waits for it to stop, so no progress callback
///   runs after it returns. A handle from `tailor_profile_training_job` only looks at the
///   run: freeing it leaves the run going.
pub struct TailorTrainingJob {
    job: Arc<TrainingJob>,
    /// Whether freeing the handle cancels the run (the handle started it).
    owns_run: bool,
}

/// Progress after each optimizer step (passed to a `TailorProgressCallback`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TailorProgress {
    /// Optimizer steps done (1-based).
    pub step: usize,
    /// Steps the run will do in all.
    pub total_steps: usize,
    /// Loss of this step.
    pub loss: f64,
    /// Trained tokens per second.
    pub tokens_per_s: f64,
    /// Seconds since the run started.
    pub elapsed_seconds: f64,
    /// Estimated seconds to the last step.
    pub eta_seconds: f64,
}

/// Called after each optimizer step **on the training thread** (so `user_data` must be safe
/// to use from there). Return 0 to go on, non-zero to stop the run (the job then ends
/// `TAILOR_JOB_CANCELLED`). `progress` is valid only during the call.
pub type TailorProgressCallback = Option<unsafe extern "C" fn(progress: *const TailorProgress, user_data: *mut c_void) -> i32>;

/// Releases a callback's `user_data` once the library no longer uses it.
pub type TailorFreeCallback = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// The caller's callback, its `user_data` and finalizer, moved to the training thread.
struct ProgressSink {
    callback: TailorProgressCallback,
    user_data: *mut c_void,
    free_user_data: TailorFreeCallback,
}

impl Drop for ProgressSink {
    fn drop(&mut self) {
        if let Some(free) = self.free_user_data {
            // SAFETY: the caller's finalizer, called once with its own `user_data`, after the
            // last progress call (the sink is dropped when the run's closure is).
            unsafe { free(self.user_data) };
        }
    }
}

// SAFETY: the header documents that the callback runs on the training thread and that
// `user_data` must be usable from there; we only pass the pointer back to the caller's code.
unsafe impl Send for ProgressSink {}

impl ProgressSink {
    fn call(&self, p: &Progress) -> Flow {
        let Some(callback) = self.callback else { return Flow::Continue };
        let progress = TailorProgress {
            step: p.step,
            total_steps: p.total_steps,
            loss: f64::from(p.loss),
            tokens_per_s: p.tokens_per_s,
            elapsed_seconds: p.elapsed.as_secs_f64(),
            eta_seconds: p.eta.as_secs_f64(),
        };
        // SAFETY: a valid TailorProgress for the duration of the call; callback and
        // user_data are the caller's, used as documented.
        let rc = unsafe { callback(&progress, self.user_data) };
        if rc == 0 {
            Flow::Continue
        } else {
            Flow::Stop
        }
    }
}

/// Builds the run's settings: the profile defaults with the JSON object's keys applied.
fn personal_options(json: Option<&str>) -> FfiResult<PersonalOptions> {
    let Some(json) = json.filter(|j| !j.trim().is_empty()) else { return Ok(PersonalOptions::default()) };
    let serde_json::Value::Object(given) = serde_json::from_str(json)? else {
        return Err(FfiError::invalid("`options_json` must be a JSON object"));
    };
    PersonalOptions::from_json(given).map_err(|e| FfiError::invalid(format!("`options_json`: {e}")))
}

/// Starts training a new adapter version from all the profile's feedback on a background
/// thread. When it ends, the evaluation gate promotes the version (saved atomically, recorded,
/// made active and swapped into the engine's registry: the next generation of every session
/// uses it) or refuses it.
///
/// - `options_json`: NULL or an object with any of `max_steps`, `max_seconds`,
///   `learning_rate`, `epochs`, `lora_rank`, `lora_alpha`, `max_seq_len`, `seed`, ... (the
///   training settings), and the profile run's own (`PersonalOptions`, defaults in
///   brackets): `held_out_every` (5, preference pairs), `max_general_increase` (0.03),
///   `checkpoint_every` (5), `replay` (0.25), `paraphrases` (true), `max_paraphrases` (22),
///   `memory_examples` (2), `held_out_per_question` (3), `distill` (96), `distill_tokens`
///   (40), `max_specificity_loss` (0.1; `null`: no specificity check), `preference_sft`
///   (true), `min_steps` (24).
/// - `callback`: NULL or called after every step on the training thread, with `user_data`.
/// - `free_user_data`: NULL or called once with `user_data` when the library is done with it:
///   on the training thread when the run ends, or before this call returns when it fails.
/// - `out_job`: receives the job; free it with `tailor_training_free`.
///
/// `TAILOR_ERR_BUSY` while another run of the profile is going on.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated; `user_data`
/// stays valid until `free_user_data` is called (or, without one, until the job is freed).
#[no_mangle]
pub unsafe extern "C" fn tailor_training_start(
    profile: *const TailorProfile,
    options_json: *const c_char,
    callback: TailorProgressCallback,
    user_data: *mut c_void,
    free_user_data: TailorFreeCallback,
    out_job: *mut *mut TailorTrainingJob,
) -> TailorStatus {
    guard("tailor_training_start", || {
        // Made first, so that every failure below releases `user_data` too.
        let sink = ProgressSink { callback, user_data, free_user_data };
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p, json) =
            unsafe { (out_ptr(out_job, "out_job")?, handle(profile, "profile")?, opt_str_arg(options_json, "options_json")?) };
        let options = personal_options(json)?;
        let job = p.model.start_training_with(options, Box::new(move |progress| sink.call(progress)))?;
        *out = Box::into_raw(Box::new(TailorTrainingJob { job, owns_run: true }));
        Ok(())
    })
}

/// The profile's current or last training run, whoever started it (`tailor_training_start`,
/// or `tailor_feedback_add` on its own: see `tailor_profile_set_auto_train`), into `*out_job`;
/// NULL when no run has started since the profile was opened. Status, cancel and wait work on
/// it as on the handle `tailor_training_start` returned; freeing it (`tailor_training_free`,
/// required) does not cancel the run.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_profile_training_job(profile: *const TailorProfile, out_job: *mut *mut TailorTrainingJob) -> TailorStatus {
    guard("tailor_profile_training_job", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p) = unsafe { (out_ptr(out_job, "out_job")?, handle(profile, "profile")?) };
        if let Some(job) = p.model.training_job() {
            *out = Box::into_raw(Box::new(TailorTrainingJob { job, owns_run: false }));
        }
        Ok(())
    })
}

fn state_code(state: JobState) -> i32 {
    match state {
        JobState::Running => TAILOR_JOB_RUNNING,
        JobState::Promoted => TAILOR_JOB_PROMOTED,
        JobState::Refused => TAILOR_JOB_REFUSED,
        JobState::Cancelled => TAILOR_JOB_CANCELLED,
        _ => TAILOR_JOB_FAILED,
    }
}

/// The job's state (`TAILOR_JOB_*`) into `*out_state` (may be NULL) and, into `*out_json`
/// (may be NULL), its status: `{"state": "running"|"promoted"|"refused"|"cancelled"|"failed",
/// "step", "total_steps", "loss", "tokens_per_s", "eta_seconds", "elapsed_seconds",
/// "version", "message", "error_kind", "held_out_before", "held_out_after",
/// "general_before", "general_after", "summary", "paused_seconds"}` (`paused_seconds`: time
/// the run waited for generations). Free the JSON with `tailor_string_free`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_training_status(
    job: *const TailorTrainingJob,
    out_state: *mut i32,
    out_json: *mut *mut c_char,
) -> TailorStatus {
    guard("tailor_training_status", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, j) = unsafe { (opt_out_ptr(out_json), handle(job, "job")?) };
        let status = j.job.status();
        write_status(&status, out_state, out)
    })
}

fn write_status(status: &TrainingStatus, out_state: *mut i32, out_json: Option<&mut *mut c_char>) -> FfiResult<()> {
    // SAFETY: `out_state` is NULL or writable (caller).
    if let Some(s) = unsafe { out_state.as_mut() } {
        *s = state_code(status.state);
    }
    if let Some(out) = out_json {
        json_out(out, status)?;
    }
    Ok(())
}

/// Asks the run to stop after the step in progress; it then ends `TAILOR_JOB_CANCELLED`.
///
/// # Safety
/// `job` is NULL or a live job.
#[no_mangle]
pub unsafe extern "C" fn tailor_training_cancel(job: *const TailorTrainingJob) -> TailorStatus {
    guard("tailor_training_cancel", || {
        // SAFETY: argument contract forwarded from the caller.
        unsafe { handle(job, "job") }?.job.cancel();
        Ok(())
    })
}

/// Blocks until the job ends, then reports as `tailor_training_status`. Returns `TAILOR_OK`
/// when it was promoted or refused, `TAILOR_ERR_CANCELLED` when cancelled, and an error
/// status when it failed (`TAILOR_ERR_INVALID_ARGUMENT` for a profile without trainable
/// feedback, `TAILOR_ERR_TRAINING` otherwise); the outputs are written in every case.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_training_wait(
    job: *const TailorTrainingJob,
    out_state: *mut i32,
    out_json: *mut *mut c_char,
) -> TailorStatus {
    guard("tailor_training_wait", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, j) = unsafe { (opt_out_ptr(out_json), handle(job, "job")?) };
        let status = j.job.wait();
        write_status(&status, out_state, out)?;
        let message = status.message.clone().unwrap_or_default();
        match status.state {
            JobState::Promoted | JobState::Refused => Ok(()),
            JobState::Cancelled => Err(FfiError::new(TAILOR_ERR_CANCELLED, "the training job was cancelled")),
            _ => {
                let code = match status.error_kind.as_deref() {
                    Some("NoFeedback") => TAILOR_ERR_INVALID_ARGUMENT,
                    Some("Busy") => TAILOR_ERR_BUSY,
                    Some("Panicked") => TAILOR_ERR_INTERNAL,
                    _ => TAILOR_ERR_TRAINING,
                };
                Err(FfiError::new(code, format!("training failed: {message}")))
            }
        }
    })
}

/// Frees a job. A handle from `tailor_training_start`: a run still going is cancelled and
/// waited for (at most one step), so no progress callback runs after this returns. A handle
/// from `tailor_profile_training_job`: the run goes on. NULL is ignored.
///
/// # Safety
/// `job` is NULL or a live job not in use by another call.
#[no_mangle]
pub unsafe extern "C" fn tailor_training_free(job: *mut TailorTrainingJob) {
    guard_value("tailor_training_free", (), || {
        if !job.is_null() {
            // SAFETY: made by Box::into_raw; freed once and not in use (caller).
            let j = unsafe { Box::from_raw(job) };
            if j.owns_run {
                j.job.cancel();
                j.job.wait();
            }
        }
        Ok(())
    })
}

/// Whether the profile has a training run going on (`*out_running` 1 or 0), whoever started
/// it.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_training_running(profile: *const TailorProfile, out_running: *mut i32) -> TailorStatus {
    guard("tailor_training_running", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p) = unsafe { (out_arg(out_running, "out_running")?, handle(profile, "profile")?) };
        *out = i32::from(p.model.training_job().is_some_and(|j| !j.is_finished()));
        Ok(())
    })
}

// The handles' thread-safety claims, checked at compile time.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TailorTrainingJob>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_merge_onto_the_profile_defaults() {
        let o = personal_options(Some(r#"{"max_steps": 2, "learning_rate": 0.01, "replay": 0, "held_out_every": 3}"#)).unwrap();
        assert_eq!(o.train.max_steps, Some(2));
        assert_eq!(o.train.learning_rate, 0.01);
        assert_eq!(o.replay, 0.0);
        assert_eq!(o.held_out_every, 3);
        let d = PersonalOptions::default();
        assert_eq!(o.train.epochs, d.train.epochs, "unnamed settings keep the profile defaults");
        assert_eq!(personal_options(None).unwrap().train, d.train);
    }

    #[test]
    fn unknown_or_mistyped_options_are_invalid() {
        for bad in [r#"{"max_stepz": 2}"#, r#"{"learning_rate": "fast"}"#, "[1]", "{", r#"{"held_out_every": 0}"#] {
            let e = personal_options(Some(bad)).unwrap_err();
            assert_eq!(e.code, TAILOR_ERR_INVALID_ARGUMENT, "{bad}: {}", e.message);
        }
    }
}
