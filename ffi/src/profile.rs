//! Profiles: one user's store (memories, feedback, adapter lineage) opened over an engine,
//! with the profile's promoted adapter running in the engine's registry.

use std::ffi::c_char;
use std::path::Path;
use std::sync::{Arc, MutexGuard};

use serde::Deserialize;
use tailor::profile::{BertEmbedder, EncryptionKey, FeedbackQuery, MemoryConfig, MemoryStore, NewFeedback, NewMemory, SearchQuery};
use tailor::MemoryPromptConfig;
use tailor_trainer::PersonalModel;

use crate::args::{handle, json_arg, json_out, opt_out_ptr, opt_str_arg, out_arg, out_ptr, str_arg, c_string};
use crate::engine::TailorEngine;
use crate::error::{guard, guard_value, FfiError, FfiResult, TailorStatus};
use crate::session::{SessionOptions, TailorSession};

/// One user's profile: a SQLite store of memories, feedback events and adapter versions
/// (`profile_path`, with the versions in `<profile_path>.adapters/`), opened over an engine.
/// Its active (promoted) adapter version runs in the engine's registry as `personal`, so
/// every session following the engine uses it, and profile sessions also retrieve its
/// memories into their chat prompts.
///
/// - Threading: `Send + Sync`: any call on any thread; store calls serialize on a lock held
///   briefly (never during a generation or training step).
/// - Lifetime: keeps its engine's model alive. One profile per engine at a time (a second
///   open returns `TAILOR_ERR_BUSY` until the first is freed and its training job ended).
/// - Freed with `tailor_profile_free`; a training job started from it (by
///   `tailor_training_start`, or by `tailor_feedback_add` on its own) keeps it alive until the
///   job ends.
pub struct TailorProfile {
    pub(crate) model: Arc<PersonalModel>,
}

impl TailorProfile {
    fn store(&self) -> MutexGuard<'_, MemoryStore> {
        self.model.store().lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Settings of a profile (JSON).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ProfileOptions {
    /// The store's settings (`max_text_bytes`, `dedup_threshold`, `index`, ...).
    memory: Option<MemoryConfig>,
    /// How memories go into chat prompts (`enabled`, `limit`, `token_budget`,
    /// `min_similarity`, `header`).
    memory_prompt: Option<MemoryPromptConfig>,
}

/// Opens (creating it if needed) the profile store at `profile_path` over `engine`, with the
/// sentence embedder in `embedder_dir` (a BERT sentence-transformer folder:
/// `model.safetensors`, `config.json`, `tokenizer.json`; the fetched all-MiniLM-L6-v2), and
/// loads its active adapter version into the engine's registry.
///
/// - `options_json`: NULL or `{"memory": {...}, "memory_prompt": {"enabled": true, "limit":
///   5, "token_budget": 256, "min_similarity": null, "header": "..."}}`.
/// - `out_profile`: receives the profile; free it with `tailor_profile_free`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_profile_open(
    engine: *const TailorEngine,
    profile_path: *const c_char,
    embedder_dir: *const c_char,
    options_json: *const c_char,
    out_profile: *mut *mut TailorProfile,
) -> TailorStatus {
    guard("tailor_profile_open", || {
        // SAFETY: argument contracts forwarded from the caller.
        unsafe { open_profile(engine, profile_path, embedder_dir, None, options_json, out_profile) }
    })
}

/// `tailor_profile_open` for a store encrypted at rest (SQLCipher) with a raw 256-bit key
/// (`key`, `key_len` = 32 bytes, e.g. from the Android Keystore or the iOS Keychain). A wrong
/// key is `TAILOR_ERR_WRONG_KEY` and leaves the file as it was. Needs the library built with
/// the cargo feature `encryption` (`TAILOR_ERR_UNSUPPORTED` otherwise).
///
/// # Safety
/// Pointer arguments are NULL or valid for the call (`key`: `key_len` readable bytes);
/// strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_profile_open_encrypted(
    engine: *const TailorEngine,
    profile_path: *const c_char,
    embedder_dir: *const c_char,
    key: *const u8,
    key_len: usize,
    options_json: *const c_char,
    out_profile: *mut *mut TailorProfile,
) -> TailorStatus {
    guard("tailor_profile_open_encrypted", || {
        if key.is_null() {
            return Err(FfiError::null("key"));
        }
        if key_len != 32 {
            return Err(FfiError::invalid(format!("`key_len` is {key_len}: the key must be 32 bytes")));
        }
        let mut raw = [0u8; 32];
        // SAFETY: `key` has `key_len` (32) readable bytes (caller).
        raw.copy_from_slice(unsafe { std::slice::from_raw_parts(key, 32) });
        let key = EncryptionKey::Raw(raw);
        // SAFETY: argument contracts forwarded from the caller.
        unsafe { open_profile(engine, profile_path, embedder_dir, Some(&key), options_json, out_profile) }
    })
}

/// The body of both opens.
///
/// # Safety
/// As `tailor_profile_open`.
unsafe fn open_profile(
    engine: *const TailorEngine,
    profile_path: *const c_char,
    embedder_dir: *const c_char,
    key: Option<&EncryptionKey>,
    options_json: *const c_char,
    out_profile: *mut *mut TailorProfile,
) -> FfiResult<()> {
    // SAFETY: argument contracts forwarded from the caller.
    let (out, e, path, embedder_dir, options) = unsafe {
        (
            out_ptr(out_profile, "out_profile")?,
            handle(engine, "engine")?,
            str_arg(profile_path, "profile_path")?,
            str_arg(embedder_dir, "embedder_dir")?,
            json_arg::<ProfileOptions>(options_json, "options_json")?,
        )
    };
    let mut slot = e.profile.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(open) = slot.upgrade() {
        return Err(FfiError::busy(format!(
            "the profile {} is open on this engine (free it, and let its training job end, first)",
            open.profile_path().display()
        )));
    }
    let embedder = Arc::new(BertEmbedder::load(embedder_dir)?);
    let config = options.memory.unwrap_or_default();
    let store = match key {
        Some(key) => MemoryStore::open_encrypted(path, key, embedder, config)?,
        None => MemoryStore::open(path, embedder, config)?,
    };
    let model = PersonalModel::with_registry(&e.engine, e.registry.clone(), store, Path::new(path))?;
    if let Some(prompt) = options.memory_prompt {
        model.set_memory_prompt(prompt);
    }
    *slot = Arc::downgrade(&model);
    *out = Box::into_raw(Box::new(TailorProfile { model }));
    Ok(())
}

/// Frees a profile. NULL is ignored. Its adapter stays in the engine's registry; sessions
/// made from it stay usable; a running training job goes on (cancel it first to stop it:
/// `tailor_profile_training_job` gives the handle of one `tailor_feedback_add` started).
///
/// # Safety
/// `profile` is NULL or a live profile handle not in use by another call.
#[no_mangle]
pub unsafe extern "C" fn tailor_profile_free(profile: *mut TailorProfile) {
    guard_value("tailor_profile_free", (), || {
        if !profile.is_null() {
            // SAFETY: made by Box::into_raw; freed once and not in use (caller).
            let p = unsafe { Box::from_raw(profile) };
            // Flush the index so the next open does not rebuild it.
            let _ = p.store().persist_index();
            drop(p);
        }
        Ok(())
    })
}

/// A new session on the profile: it follows the engine's registry (with the profile's
/// adapter) and retrieves the profile's memories into each chat prompt
/// (`tailor_session_chat`, `tailor_session_generate_chat`; the memories used are listed in the
/// result's `"memories"`). `options_json` as in `tailor_session_new`; `"memory": false` starts
/// it with memories off (`tailor_session_set_memory_enabled` switches them later).
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_profile_session_new(
    profile: *const TailorProfile,
    options_json: *const c_char,
    out_session: *mut *mut TailorSession,
) -> TailorStatus {
    guard("tailor_profile_session_new", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p, options) = unsafe {
            (out_ptr(out_session, "out_session")?, handle(profile, "profile")?, json_arg::<SessionOptions>(options_json, "options_json")?)
        };
        let mut session = p.model.session_with(options.config(p.model.engine())?);
        if options.no_adapters {
            session.set_hooks(tailor::Hooks::none());
        }
        if let Some(system) = &options.system {
            session.set_history(vec![tailor::ChatMessage::system(system.clone())]);
        }
        let mut memory = p.model.memory_prompt();
        if let Some(on) = options.memory {
            memory.enabled = on;
        }
        *out = Box::into_raw(Box::new(TailorSession::with_memory(session, p.model.store().clone(), memory)));
        Ok(())
    })
}

/// The profile's active adapter version, or NULL in `*out_version` when the base runs alone.
/// Free it with `tailor_string_free`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_profile_active_version(profile: *const TailorProfile, out_version: *mut *mut c_char) -> TailorStatus {
    guard("tailor_profile_active_version", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p) = unsafe { (out_ptr(out_version, "out_version")?, handle(profile, "profile")?) };
        if let Some(v) = p.model.active_version()? {
            *out = c_string(v);
        }
        Ok(())
    })
}

/// Makes the previous adapter version active (or the base, when there is none) and swaps it
/// into the registry. `*out_version` (may be NULL) receives the version now active, NULL for
/// the base. `TAILOR_ERR_NOT_FOUND` when no version is active.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_profile_rollback(profile: *const TailorProfile, out_version: *mut *mut c_char) -> TailorStatus {
    guard("tailor_profile_rollback", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p) = unsafe { (opt_out_ptr(out_version), handle(profile, "profile")?) };
        let v = p.model.rollback()?;
        if let (Some(out), Some(v)) = (out, v) {
            *out = c_string(v);
        }
        Ok(())
    })
}

// ---- memories ----

/// Stores a memory (a fact the user told). A near-duplicate of a stored memory updates it
/// instead (the old text goes to its history).
///
/// - `text`: UTF-8, non-empty.
/// - `metadata_json`: NULL or a JSON object (source, tags, ...).
/// - `out_id`: NULL or receives the id of the memory now holding the text.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_memory_add(
    profile: *const TailorProfile,
    text: *const c_char,
    metadata_json: *const c_char,
    out_id: *mut i64,
) -> TailorStatus {
    guard("tailor_memory_add", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (p, text, metadata) =
            unsafe { (handle(profile, "profile")?, str_arg(text, "text")?, opt_str_arg(metadata_json, "metadata_json")?) };
        let metadata = match metadata {
            Some(m) => serde_json::from_str(m).map_err(|e| FfiError::invalid(format!("`metadata_json`: invalid JSON: {e}")))?,
            None => serde_json::Value::Null,
        };
        let mut memory: NewMemory = serde_json::from_value(serde_json::json!({"text": text}))?;
        memory.metadata = metadata;
        let outcome = p.store().add(memory)?;
        // SAFETY: `out_id` is NULL or writable (caller).
        if let Some(out) = unsafe { out_id.as_mut() } {
            *out = outcome.id;
        }
        Ok(())
    })
}

/// Searches the memories (hybrid: embeddings + full text) and returns at most `limit` hits,
/// best first, as JSON: `[{"memory": {"id", "text", "metadata", "created_at", ...}, "score",
/// "similarity", ...}]`. `options_json`: NULL or more of the query's settings (`"mode"`:
/// `"hybrid"|"vector"|"lexical"`, `"filter"`, `"min_similarity"`, `"recency_weight"`).
/// Free `*out_json` with `tailor_string_free`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_memory_search(
    profile: *const TailorProfile,
    query: *const c_char,
    limit: usize,
    options_json: *const c_char,
    out_json: *mut *mut c_char,
) -> TailorStatus {
    guard("tailor_memory_search", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p, text, options) = unsafe {
            (
                out_ptr(out_json, "out_json")?,
                handle(profile, "profile")?,
                str_arg(query, "query")?,
                opt_str_arg(options_json, "options_json")?,
            )
        };
        let mut q = serde_json::Map::new();
        if let Some(o) = options.filter(|o| !o.trim().is_empty()) {
            match serde_json::from_str(o)? {
                serde_json::Value::Object(m) => q = m,
                _ => return Err(FfiError::invalid("`options_json` must be a JSON object")),
            }
        }
        q.insert("text".into(), text.into());
        q.insert("limit".into(), limit.into());
        let query: SearchQuery = serde_json::from_value(serde_json::Value::Object(q))?;
        let hits = p.store().search(&query)?;
        json_out(out, &hits)
    })
}

/// Lists memories in id order, a page at a time: those with an id above `after` (0 for the
/// first page), at most `limit`. JSON: `{"memories": [...], "next_after": id or null}`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_memory_list(
    profile: *const TailorProfile,
    after: i64,
    limit: usize,
    out_json: *mut *mut c_char,
) -> TailorStatus {
    guard("tailor_memory_list", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p) = unsafe { (out_ptr(out_json, "out_json")?, handle(profile, "profile")?) };
        let page = p.store().list((after > 0).then_some(after), limit)?;
        json_out(out, &page)
    })
}

/// Forgets one memory (gone from the store, its history and the index).
/// `TAILOR_ERR_NOT_FOUND` for an unknown id.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_memory_forget(profile: *const TailorProfile, id: i64) -> TailorStatus {
    guard("tailor_memory_forget", || {
        // SAFETY: argument contract forwarded from the caller.
        let p = unsafe { handle(profile, "profile") }?;
        p.store().forget(id)?;
        Ok(())
    })
}

/// Forgets every memory; `*out_count` (may be NULL) receives how many were removed.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_memory_forget_all(profile: *const TailorProfile, out_count: *mut usize) -> TailorStatus {
    guard("tailor_memory_forget_all", || {
        // SAFETY: argument contract forwarded from the caller.
        let p = unsafe { handle(profile, "profile") }?;
        let n = p.store().forget_all()?;
        // SAFETY: `out_count` is NULL or writable (caller).
        if let Some(out) = unsafe { out_count.as_mut() } {
            *out = n;
        }
        Ok(())
    })
}

/// Exports every memory (with history) as JSON, for the user to keep or move; free
/// `*out_json` with `tailor_string_free`. `tailor_memory_import` reads it back.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_memory_export(profile: *const TailorProfile, out_json: *mut *mut c_char) -> TailorStatus {
    guard("tailor_memory_export", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p) = unsafe { (out_ptr(out_json, "out_json")?, handle(profile, "profile")?) };
        *out = c_string(p.store().export_json()?);
        Ok(())
    })
}

/// Imports memories from `tailor_memory_export`'s JSON; `*out_report_json` (may be NULL)
/// receives what happened (`{"inserted", "updated", "unchanged", ...}`).
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_memory_import(
    profile: *const TailorProfile,
    export_json: *const c_char,
    out_report_json: *mut *mut c_char,
) -> TailorStatus {
    guard("tailor_memory_import", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p, json) =
            unsafe { (opt_out_ptr(out_report_json), handle(profile, "profile")?, str_arg(export_json, "export_json")?) };
        let report = p.store().import_json(json)?;
        if let Some(out) = out {
            json_out(out, &report)?;
        }
        Ok(())
    })
}

// ---- feedback ----

/// Records a feedback event on an answer, for training. `feedback_json`:
/// `{"prompt": "...", "answer": "...", "kind": "thumbs_up"|"thumbs_down"}`, or with
/// `"kind": "correction", "corrected": "..."`, or `"kind": "preference", "chosen": "...",
/// "rejected": "..."`; optionally `"turn_id"`. `*out_id` (may be NULL) receives its id.
///
/// A correction is also stored as a memory at once (in the prompt of the next relevant
/// question). When this event brings the feedback no version has learned from to the
/// profile's threshold (`tailor_profile_set_auto_train`; 3 by default), it also starts a
/// background training run, which `tailor_training_running` reports and
/// `tailor_profile_training_job` hands out; this call does not wait for it.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_feedback_add(
    profile: *const TailorProfile,
    feedback_json: *const c_char,
    out_id: *mut i64,
) -> TailorStatus {
    guard("tailor_feedback_add", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (p, json) = unsafe { (handle(profile, "profile")?, str_arg(feedback_json, "feedback_json")?) };
        let feedback: NewFeedback =
            serde_json::from_str(json).map_err(|e| FfiError::invalid(format!("`feedback_json`: {e}")))?;
        let (added, _job) = p.model.add_feedback(feedback)?;
        // SAFETY: `out_id` is NULL or writable (caller).
        if let Some(out) = unsafe { out_id.as_mut() } {
            *out = added.id;
        }
        Ok(())
    })
}

/// Sets when the profile trains by itself: once `min_new_feedback` feedback events have come
/// in that no adapter version has learned from and no earlier automatic run started on, the
/// `tailor_feedback_add` that brings the last of them starts a background training run with
/// the default settings (as `tailor_training_start` with NULL options). `0` turns this off;
/// an opened profile has it on with 3 (the setting is not stored in the profile file). The run pauses between its steps while any generation runs on the engine; a
/// version the gate promotes is swapped into the engine's registry. Applies from the next
/// `tailor_feedback_add`; a run already going on is left alone (`tailor_profile_training_job`
/// and `tailor_training_cancel` stop it). `TAILOR_ERR_INVALID_ARGUMENT` for a negative count.
///
/// Threading: any thread, at any time (as every profile call).
///
/// # Safety
/// `profile` is NULL or a live profile.
#[no_mangle]
pub unsafe extern "C" fn tailor_profile_set_auto_train(profile: *const TailorProfile, min_new_feedback: i32) -> TailorStatus {
    guard("tailor_profile_set_auto_train", || {
        // SAFETY: argument contract forwarded from the caller.
        let p = unsafe { handle(profile, "profile") }?;
        let n = usize::try_from(min_new_feedback)
            .map_err(|_| FfiError::invalid(format!("`min_new_feedback` is {min_new_feedback}: give 0 (off) or a positive count")))?;
        let mut auto = p.model.auto_train();
        auto.enabled = n > 0;
        if n > 0 {
            auto.min_new_feedback = n;
        }
        p.model.set_auto_train(auto);
        Ok(())
    })
}

/// Lists feedback events as JSON (`[{"id", "prompt", "answer", "kind", ..., "consumed_by"}]`),
/// oldest first. `options_json`: NULL or `{"unconsumed_only": false, "after": null, "limit":
/// 1000}`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_feedback_list(
    profile: *const TailorProfile,
    options_json: *const c_char,
    out_json: *mut *mut c_char,
) -> TailorStatus {
    guard("tailor_feedback_list", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p, query) = unsafe {
            (out_ptr(out_json, "out_json")?, handle(profile, "profile")?, json_arg::<FeedbackQuery>(options_json, "options_json")?)
        };
        let list = p.store().list_feedback(&query)?;
        json_out(out, &list)
    })
}

/// Forgets feedback events (`ids`, `count` of them). Every adapter version that learned
/// from them is tainted and deleted, and the registry falls back to the newest clean version
/// (or the base). `*out_tainted_json` (may be NULL) receives the deleted versions as a JSON
/// array of names.
///
/// # Safety
/// Pointer arguments are NULL or valid for `count` elements.
#[no_mangle]
pub unsafe extern "C" fn tailor_feedback_forget(
    profile: *const TailorProfile,
    ids: *const i64,
    count: usize,
    out_tainted_json: *mut *mut c_char,
) -> TailorStatus {
    guard("tailor_feedback_forget", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p) = unsafe { (opt_out_ptr(out_tainted_json), handle(profile, "profile")?) };
        if ids.is_null() {
            return Err(FfiError::null("ids"));
        }
        // SAFETY: `count` readable ids at `ids` (caller).
        let ids = unsafe { std::slice::from_raw_parts(ids, count) };
        let tainted = p.model.forget_feedback(ids)?;
        if let Some(out) = out {
            json_out(out, &tainted)?;
        }
        Ok(())
    })
}

/// Forgets every feedback event of the profile, as `tailor_feedback_forget` does for some.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_feedback_forget_all(profile: *const TailorProfile, out_tainted_json: *mut *mut c_char) -> TailorStatus {
    guard("tailor_feedback_forget_all", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p) = unsafe { (opt_out_ptr(out_tainted_json), handle(profile, "profile")?) };
        let tainted = p.model.forget_all_feedback()?;
        if let Some(out) = out {
            json_out(out, &tainted)?;
        }
        Ok(())
    })
}

/// Number of memories in the profile.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_memory_count(profile: *const TailorProfile, out_count: *mut usize) -> TailorStatus {
    guard("tailor_memory_count", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, p) = unsafe { (out_arg(out_count, "out_count")?, handle(profile, "profile")?) };
        *out = p.store().len()?;
        Ok(())
    })
}

// The handles' thread-safety claims, checked at compile time.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TailorProfile>();
};
