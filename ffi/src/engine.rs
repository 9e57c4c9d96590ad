//! The engine handle: a loaded model and its adapter registry.

use std::ffi::c_char;
use std::sync::{Arc, Mutex, Weak};

use tailor::{AdapterRegistry, Engine, EngineConfig};
use tailor_trainer::PersonalModel;

use crate::args::{handle, json_arg, json_out, out_ptr, str_arg};
use crate::error::{guard, TailorStatus};

/// A loaded model (weights memory-mapped from the GGUF file) and the registry of adapters
/// and steering vectors its sessions follow.
///
/// - Threading: `Send + Sync`. Every call taking a `const TailorEngine *` may run on any
///   thread at the same time as any other.
/// - Lifetime: sessions and profiles keep the model alive, so the engine handle may be
///   freed before them; the GGUF file must not be modified while any of them lives.
/// - Freed with `tailor_engine_free`.
pub struct TailorEngine {
    pub(crate) engine: Engine,
    pub(crate) registry: Arc<AdapterRegistry>,
    /// The profile open on this engine's registry, if any: one at a time, since its adapter
    /// is loaded in the registry as `personal`.
    pub(crate) profile: Mutex<Weak<PersonalModel>>,
}

/// Loads a GGUF model.
///
/// - `model_path`: UTF-8 path of a llama-family GGUF file.
/// - `options_json`: NULL, or a JSON object with any of `threads` (0: one per core, the
///   default), `context_length` (default context of new sessions, 4096), `prefill_chunk`
///   (256), `cache_type_k` / `cache_type_v` (KV cache storage of new sessions: "f16", the
///   default, "q8_0" or "q4_0") and `cpus` (an array of CPU numbers the workers are pinned to;
///   default: the fastest cores of a big.LITTLE CPU, none on a symmetric one).
/// - `out_engine`: receives the engine (NULL on failure); free it with `tailor_engine_free`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_engine_open(
    model_path: *const c_char,
    options_json: *const c_char,
    out_engine: *mut *mut TailorEngine,
) -> TailorStatus {
    guard("tailor_engine_open", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, path, config) = unsafe {
            (
                out_ptr(out_engine, "out_engine")?,
                str_arg(model_path, "model_path")?,
                json_arg::<EngineConfig>(options_json, "options_json")?,
            )
        };
        let engine = Engine::load(path, config)?;
        let registry = AdapterRegistry::new(&engine);
        *out = Box::into_raw(Box::new(TailorEngine { engine, registry, profile: Mutex::new(Weak::new()) }));
        Ok(())
    })
}

/// Frees an engine handle. NULL is ignored. Sessions and profiles made from it stay usable.
///
/// # Safety
/// `engine` is NULL or a handle from `tailor_engine_open`, not yet freed, and not in use by
/// another call.
#[no_mangle]
pub unsafe extern "C" fn tailor_engine_free(engine: *mut TailorEngine) {
    crate::error::guard_value("tailor_engine_free", (), || {
        if !engine.is_null() {
            // SAFETY: made by Box::into_raw in tailor_engine_open; freed once (caller).
            drop(unsafe { Box::from_raw(engine) });
        }
        Ok(())
    })
}

/// Describes the model as JSON: `{"architecture", "n_layers", "d_model", "vocab_size",
/// "context_length", "threads", "load_ms"}`. Free `*out_json` with `tailor_string_free`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_engine_info(engine: *const TailorEngine, out_json: *mut *mut c_char) -> TailorStatus {
    guard("tailor_engine_info", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, e) = unsafe { (out_ptr(out_json, "out_json")?, handle(engine, "engine")?) };
        let c = e.engine.model_config();
        let info = serde_json::json!({
            "architecture": c.architecture,
            "n_layers": c.n_layers,
            "d_model": c.d_model,
            "vocab_size": c.vocab_size,
            "context_length": e.engine.config().context_length,
            "model_context_length": c.context_length,
            "threads": e.engine.threads(),
            "load_ms": e.engine.load_time().as_secs_f64() * 1e3,
        });
        json_out(out, &info)
    })
}

/// Renders chat messages with the model's own chat template (with the assistant's
/// generation prompt), as a session would before tokenizing them.
///
/// - `messages_json`: `[{"role": "system"|"user"|"assistant", "content": "..."}, ...]`.
/// - `out_text`: receives the rendered text; free it with `tailor_string_free`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_engine_render_chat(
    engine: *const TailorEngine,
    messages_json: *const c_char,
    out_text: *mut *mut c_char,
) -> TailorStatus {
    guard("tailor_engine_render_chat", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, e, json) =
            unsafe { (out_ptr(out_text, "out_text")?, handle(engine, "engine")?, str_arg(messages_json, "messages_json")?) };
        let messages = crate::session::parse_messages(json)?;
        *out = crate::args::c_string(e.engine.render_chat(&messages)?);
        Ok(())
    })
}
