//! Sessions (a conversation with its KV cache), streaming generation and cancel tokens.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use serde::Deserialize;
use tailor::{
    CancelHandle, ChatMessage, ContextPolicy, Engine, FinishReason, Flow, GenerateParams, Generation, HookSource, MemoryPromptConfig, KvCacheType, Prompt, Session, SessionConfig,
    SharedMemory,
};

use crate::args::{handle, json_arg, json_out, opt_out_ptr, out_ptr, str_arg};
use crate::engine::TailorEngine;
use crate::error::{guard, guard_value, FfiError, FfiResult, TailorStatus, TAILOR_ERR_CANCELLED};

/// One conversation with its own KV cache, on an engine (or a profile).
///
/// - Threading: may be used from any thread but by one call at a time; a call made while
///   another is running on the same session (e.g. a second generation) returns
///   `TAILOR_ERR_BUSY` instead of waiting. Use its cancel token to stop a generation from
///   another thread.
/// - Lifetime: keeps its model (and profile) alive; independent of the engine handle.
/// - Freed with `tailor_session_free` (not while a call on it is running).
pub struct TailorSession {
    session: Mutex<Session>,
    cancel: CancelHandle,
    /// A profile session's store and memory settings, for `tailor_session_set_memory_enabled`.
    memory: Option<(SharedMemory, MemoryPromptConfig)>,
}

impl TailorSession {
    /// An engine session (no memories).
    pub(crate) fn new(session: Session) -> Self {
        let cancel = session.cancel_handle();
        TailorSession { session: Mutex::new(session), cancel, memory: None }
    }

    /// A profile session retrieving from `store` with `config` (`enabled` says whether it
    /// starts on).
    pub(crate) fn with_memory(mut session: Session, store: SharedMemory, config: MemoryPromptConfig) -> Self {
        session.set_memory(Some(store.clone()), config.clone());
        let mut s = TailorSession::new(session);
        s.memory = Some((store, config));
        s
    }

    fn lock(&self) -> FfiResult<MutexGuard<'_, Session>> {
        match self.session.try_lock() {
            Ok(g) => Ok(g),
            // A panic caught while the session was in use: its state is still memory-safe
            // (the cache is re-validated on the next generation).
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => Err(FfiError::busy("the session is in use by another call")),
        }
    }
}

/// Stops a session's running generation from any thread.
///
/// - Threading: `Send + Sync`: call `tailor_cancel_token_cancel` from any thread at any time.
/// - Lifetime: independent of its session; once the session is freed, cancelling does
///   nothing (it stays valid and harmless).
/// - Freed with `tailor_cancel_token_free`.
pub struct TailorCancelToken(CancelHandle);

/// Settings of a new session (JSON).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SessionOptions {
    /// Context window in tokens (default: the engine's).
    pub context_length: Option<usize>,
    /// A system message placed at the start of the conversation.
    pub system: Option<String>,
    /// Run without the registry's adapters and steering.
    pub no_adapters: bool,
    /// Profile sessions: retrieve memories into chat prompts (default: the profile's
    /// `memory_prompt.enabled`, true unless set). An engine session has no memories to turn on.
    pub memory: Option<bool>,
    /// KV cache storage of keys: "f16", "q8_0" or "q4_0" (default: the engine's).
    pub cache_type_k: Option<KvCacheType>,
    /// KV cache storage of values (default: the engine's).
    pub cache_type_v: Option<KvCacheType>,
    /// "slide" (default: never a wall) or "stop" (`context_full` at the end of the window).
    pub context_policy: Option<ContextPolicy>,
}

impl SessionOptions {
    /// The session settings; a quantized cache type the model's head dimension cannot take is
    /// an invalid argument.
    pub(crate) fn config(&self, engine: &Engine) -> Result<SessionConfig, FfiError> {
        let mut c = match self.context_length {
            Some(n) => SessionConfig::with_context(n),
            None => SessionConfig::default(),
        };
        c.cache_type_k = self.cache_type_k;
        c.cache_type_v = self.cache_type_v;
        if let Some(p) = self.context_policy {
            c.context_policy = p;
        }
        let hd = engine.model_config().head_dim;
        for t in [self.cache_type_k, self.cache_type_v].into_iter().flatten() {
            t.check_head_dim(hd)?;
        }
        Ok(c)
    }

    pub(crate) fn apply(&self, session: &mut Session, source: Arc<dyn HookSource>) {
        if !self.no_adapters {
            session.follow(source);
        }
        if let Some(system) = &self.system {
            session.set_history(vec![ChatMessage::system(system.clone())]);
        }
    }
}

/// A new session on `engine`, following the engine's adapter registry (adapters and steering
/// vectors activated there apply from the session's next generation).
///
/// - `options_json`: NULL or `{"context_length": N, "system": "...", "no_adapters": false,
///   "memory": false, "cache_type_k": "q8_0", "cache_type_v": "q8_0", "context_policy":
///   "slide"}` (`"memory": true` is `TAILOR_ERR_INVALID_ARGUMENT`: memories need a profile
///   session, `tailor_profile_session_new`; cache types `f16` (default), `q8_0`, `q4_0`;
///   `"slide"`, the default, keeps a conversation going past the window by dropping its
///   oldest turns, `"stop"` ends a generation with `context_full`).
/// - `out_session`: receives the session; free it with `tailor_session_free`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_session_new(
    engine: *const TailorEngine,
    options_json: *const c_char,
    out_session: *mut *mut TailorSession,
) -> TailorStatus {
    guard("tailor_session_new", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, e, options) = unsafe {
            (out_ptr(out_session, "out_session")?, handle(engine, "engine")?, json_arg::<SessionOptions>(options_json, "options_json")?)
        };
        if options.memory == Some(true) {
            return Err(FfiError::invalid("`memory`: an engine session has no memories (open a profile and use tailor_profile_session_new)"));
        }
        let mut session = e.engine.session_with(options.config(&e.engine)?);
        options.apply(&mut session, e.registry.clone());
        *out = Box::into_raw(Box::new(TailorSession::new(session)));
        Ok(())
    })
}

/// Frees a session. NULL is ignored. Its cancel tokens stay valid (and do nothing).
///
/// # Safety
/// `session` is NULL or a live session handle not in use by another call.
#[no_mangle]
pub unsafe extern "C" fn tailor_session_free(session: *mut TailorSession) {
    guard_value("tailor_session_free", (), || {
        if !session.is_null() {
            // SAFETY: made by Box::into_raw; freed once and not in use (caller).
            drop(unsafe { Box::from_raw(session) });
        }
        Ok(())
    })
}

/// A cancel token for `session`'s generations. Free it with `tailor_cancel_token_free`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_session_cancel_token(
    session: *const TailorSession,
    out_token: *mut *mut TailorCancelToken,
) -> TailorStatus {
    guard("tailor_session_cancel_token", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, s) = unsafe { (out_ptr(out_token, "out_token")?, handle(session, "session")?) };
        *out = Box::into_raw(Box::new(TailorCancelToken(s.cancel.clone())));
        Ok(())
    })
}

/// Asks the generation running on the token's session to stop at its next token (or prefill
/// chunk); that generation then returns `TAILOR_ERR_CANCELLED`. A cancel made while nothing
/// runs is dropped when the next generation starts. Any thread, any time.
///
/// # Safety
/// `token` is NULL or a live token.
#[no_mangle]
pub unsafe extern "C" fn tailor_cancel_token_cancel(token: *const TailorCancelToken) -> TailorStatus {
    guard("tailor_cancel_token_cancel", || {
        // SAFETY: argument contract forwarded from the caller.
        unsafe { handle(token, "token") }?.0.cancel();
        Ok(())
    })
}

/// Frees a cancel token. NULL is ignored.
///
/// # Safety
/// `token` is NULL or a live token not in use by another call.
#[no_mangle]
pub unsafe extern "C" fn tailor_cancel_token_free(token: *mut TailorCancelToken) {
    guard_value("tailor_cancel_token_free", (), || {
        if !token.is_null() {
            // SAFETY: made by Box::into_raw; freed once (caller).
            drop(unsafe { Box::from_raw(token) });
        }
        Ok(())
    })
}

/// Receives generated text as it streams: `chunk` holds `len` bytes of whole UTF-8
/// characters (never half a character), followed by a NUL, valid only during the call.
/// Return 0 to go on, non-zero to stop the generation (it then ends with finish reason
/// `"callback"` and status `TAILOR_OK`). Called on the thread that called the generate
/// function.
pub type TailorTokenCallback = Option<unsafe extern "C" fn(chunk: *const c_char, len: usize, user_data: *mut c_void) -> i32>;

/// Runs a generation with the C callback and writes the result.
fn run_generation(
    s: &TailorSession,
    params: &GenerateParams,
    callback: TailorTokenCallback,
    user_data: *mut c_void,
    out_json: Option<&mut *mut c_char>,
    run: impl FnOnce(&mut Session, &GenerateParams, &mut dyn FnMut(&tailor::TokenEvent<'_>) -> Flow) -> tailor::Result<Generation>,
) -> FfiResult<()> {
    let mut session = s.lock()?;
    let mut buf: Vec<u8> = Vec::new();
    let mut on_token = |ev: &tailor::TokenEvent<'_>| -> Flow {
        let Some(cb) = callback else { return Flow::Continue };
        if ev.text.is_empty() {
            return Flow::Continue;
        }
        buf.clear();
        buf.extend_from_slice(ev.text.as_bytes());
        buf.push(0);
        // SAFETY: `buf` holds `len` bytes plus a NUL and lives across the call; the callback
        // and `user_data` are the caller's, called on the caller's thread as documented.
        let rc = unsafe { cb(buf.as_ptr().cast(), ev.text.len(), user_data) };
        if rc == 0 { Flow::Continue } else { Flow::Stop }
    };
    let generation = run(&mut session, params, &mut on_token)?;
    drop(session);
    if let Some(out) = out_json {
        json_out(out, &generation)?;
    }
    if generation.finish_reason == FinishReason::Cancelled {
        return Err(FfiError::new(TAILOR_ERR_CANCELLED, "the generation was cancelled"));
    }
    Ok(())
}

/// Parses `[{"role", "content"}, ...]`.
pub(crate) fn parse_messages(json: &str) -> FfiResult<Vec<ChatMessage>> {
    serde_json::from_str(json).map_err(|e| FfiError::invalid(format!("messages: invalid JSON: {e}")))
}

/// Generates from raw text (no chat template; control tokens such as `<|im_start|>` written
/// in it are parsed), streaming through `callback`.
///
/// - `prompt`: UTF-8 text; the whole context (the longest prefix the session's cache already
///   holds is reused).
/// - `params_json`: NULL or `{"max_tokens": 256, "stop": ["..."], "ignore_eos": false,
///   "logprobs": null, "sampling": {"temperature": 0, "top_k": 0, "top_p": 1, "min_p": 0,
///   "repeat_penalty": 1, "repeat_last_n": 64, "seed": null, "presence_penalty": 0,
///   "frequency_penalty": 0, "logit_bias": [[token_id, bias], ...]}, "grammar": null,
///   "tools": null}` (any subset). `grammar` constrains the answer: `{"type": "json_schema",
///   "value": {...schema...}}`, `{"type": "json_object"}`, `{"type": "regex", "value": "..."}`
///   or `{"type": "lark", "value": "..."}`; a grammar that does not compile fails with
///   `TAILOR_ERR_INVALID_ARGUMENT` before any work. `tools` (chat prompts only): `{"tools":
///   [{"name", "description", "parameters": {...schema...}}], "choice": "auto" | "none" |
///   "required" | {"function": "name"}, "parallel": true}`; the result then carries
///   `"tool_calls": [{"id", "name", "arguments"}]`.
/// - `callback`: NULL (no streaming) or called with each chunk; `user_data` is passed to it.
/// - `out_result_json`: NULL, or receives `{"text", "token_ids", "finish_reason" ("stop",
///   "length", "context_full", "callback", "cancelled"), "prompt_tokens", "reused_tokens",
///   "timings": {...}, "logprobs", "memories": [{"id", "text", "score"}], "tool_calls"
///   (when any)}`, also when cancelled; free it with `tailor_string_free`.
///
/// Returns `TAILOR_ERR_CANCELLED` when a cancel token stopped it, `TAILOR_ERR_BUSY` when the
/// session is generating on another thread.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_session_generate(
    session: *const TailorSession,
    prompt: *const c_char,
    params_json: *const c_char,
    callback: TailorTokenCallback,
    user_data: *mut c_void,
    out_result_json: *mut *mut c_char,
) -> TailorStatus {
    guard("tailor_session_generate", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, s, prompt, params) = unsafe {
            (
                opt_out_ptr(out_result_json),
                handle(session, "session")?,
                str_arg(prompt, "prompt")?,
                json_arg::<GenerateParams>(params_json, "params_json")?,
            )
        };
        let prompt = Prompt::Text(prompt.to_string());
        run_generation(s, &params, callback, user_data, out, |session, params, cb| session.generate(&prompt, params, cb))
    })
}

/// Generates the assistant's answer to a conversation given whole, rendered with the model's
/// chat template (the session's own history is neither used nor changed). With a profile
/// session, memories relevant to the last user message are added to the system message.
///
/// - `messages_json`: `[{"role": "system"|"user"|"assistant", "content": "..."}, ...]`.
/// - Other arguments and results as `tailor_session_generate`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_session_generate_chat(
    session: *const TailorSession,
    messages_json: *const c_char,
    params_json: *const c_char,
    callback: TailorTokenCallback,
    user_data: *mut c_void,
    out_result_json: *mut *mut c_char,
) -> TailorStatus {
    guard("tailor_session_generate_chat", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, s, messages, params) = unsafe {
            (
                opt_out_ptr(out_result_json),
                handle(session, "session")?,
                str_arg(messages_json, "messages_json")?,
                json_arg::<GenerateParams>(params_json, "params_json")?,
            )
        };
        let prompt = Prompt::Chat(parse_messages(messages)?);
        run_generation(s, &params, callback, user_data, out, |session, params, cb| session.generate(&prompt, params, cb))
    })
}

/// Sends a user message in the session's own conversation and generates the answer; both
/// are appended to the session's history (not when the call fails). Only the new turn is
/// run: the cache holds the conversation so far.
///
/// Arguments and results as `tailor_session_generate`, with `user_message` the user's text.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_session_chat(
    session: *const TailorSession,
    user_message: *const c_char,
    params_json: *const c_char,
    callback: TailorTokenCallback,
    user_data: *mut c_void,
    out_result_json: *mut *mut c_char,
) -> TailorStatus {
    guard("tailor_session_chat", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, s, user, params) = unsafe {
            (
                opt_out_ptr(out_result_json),
                handle(session, "session")?,
                str_arg(user_message, "user_message")?,
                json_arg::<GenerateParams>(params_json, "params_json")?,
            )
        };
        run_generation(s, &params, callback, user_data, out, |session, params, cb| session.chat(user, params, cb))
    })
}

/// The session's conversation as JSON messages (`[{"role", "content"}, ...]`). Free
/// `*out_json` with `tailor_string_free`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_session_history(session: *const TailorSession, out_json: *mut *mut c_char) -> TailorStatus {
    guard("tailor_session_history", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, s) = unsafe { (out_ptr(out_json, "out_json")?, handle(session, "session")?) };
        let session = s.lock()?;
        json_out(out, session.history())
    })
}

/// Replaces the session's conversation (e.g. to restore a saved one or set a system
/// message): `messages_json` as in `tailor_session_generate_chat`; `"[]"` clears it. The
/// cache is kept: the next turn reuses whatever prefix still matches.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_session_set_history(session: *const TailorSession, messages_json: *const c_char) -> TailorStatus {
    guard("tailor_session_set_history", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (s, json) = unsafe { (handle(session, "session")?, str_arg(messages_json, "messages_json")?) };
        let messages = parse_messages(json)?;
        s.lock()?.set_history(messages);
        Ok(())
    })
}

/// Turns a profile session's memories on (`enabled` non-zero: the memories relevant to the
/// last user message go into the system prompt of its chat generations, with the profile's
/// `memory_prompt` settings) or off (0: the adapter answers alone), from its next generation.
/// A profile session starts with them on (unless the profile's or the session's options say
/// otherwise). Turning memories on for an engine session is `TAILOR_ERR_INVALID_ARGUMENT`
/// (off is a no-op); `TAILOR_ERR_BUSY` while the session is generating.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_session_set_memory_enabled(session: *const TailorSession, enabled: i32) -> TailorStatus {
    guard("tailor_session_set_memory_enabled", || {
        // SAFETY: argument contract forwarded from the caller.
        let s = unsafe { handle(session, "session") }?;
        let mut session = s.lock()?;
        match (&s.memory, enabled != 0) {
            (Some((store, config)), on) => {
                let mut config = config.clone();
                config.enabled = on;
                session.set_memory(Some(store.clone()), config);
            }
            (None, true) => return Err(FfiError::invalid("an engine session has no memories (use tailor_profile_session_new)")),
            (None, false) => {}
        }
        Ok(())
    })
}

/// Tokens currently held in the session's KV cache.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_session_cached_tokens(session: *const TailorSession, out_count: *mut usize) -> TailorStatus {
    guard("tailor_session_cached_tokens", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, s) = unsafe { (crate::args::out_arg(out_count, "out_count")?, handle(session, "session")?) };
        *out = s.lock()?.cached_tokens().len();
        Ok(())
    })
}

/// Clears the session's cache and conversation.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_session_reset(session: *const TailorSession) -> TailorStatus {
    guard("tailor_session_reset", || {
        // SAFETY: argument contract forwarded from the caller.
        let s = unsafe { handle(session, "session") }?;
        let mut session = s.lock()?;
        session.clear_cache();
        session.set_history(Vec::new());
        Ok(())
    })
}

// The handles' thread-safety claims, checked at compile time.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TailorSession>();
    send_sync::<TailorCancelToken>();
    send_sync::<TailorEngine>();
};
