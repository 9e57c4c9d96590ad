//! LoRA adapters and steering vectors in the engine's registry. Changes apply atomically to
//! the next generation of every session following the engine (a running generation keeps
//! the set it started with).

use std::ffi::c_char;
use std::path::Path;

use tailor::adapters::SteeringVector;

use crate::args::{handle, json_out, out_ptr, str_arg};
use crate::engine::TailorEngine;
use crate::error::{guard, FfiError, FfiResult, TailorStatus, TAILOR_ERR_NOT_FOUND};

fn not_found(what: &str, name: &str) -> FfiError {
    FfiError::new(TAILOR_ERR_NOT_FOUND, format!("no {what} named `{name}`"))
}

/// `count` strings from a C array.
///
/// # Safety
/// `names` is NULL (only with `count == 0`) or points to `count` string pointers.
unsafe fn str_array<'a>(names: *const *const c_char, count: usize, arg: &str) -> FfiResult<Vec<&'a str>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if names.is_null() {
        return Err(FfiError::null(arg));
    }
    // SAFETY: the caller gives `count` readable pointers at `names`.
    let ptrs = unsafe { std::slice::from_raw_parts(names, count) };
    ptrs.iter()
        .enumerate()
        // SAFETY: each element is NULL or a NUL-terminated string (caller).
        .map(|(i, p)| unsafe { str_arg(*p, &format!("{arg}[{i}]")) })
        .collect()
}

/// `count` values from a C array.
///
/// # Safety
/// `values` is NULL (only with `count == 0`) or points to `count` values.
unsafe fn array<'a, T>(values: *const T, count: usize, arg: &str) -> FfiResult<&'a [T]> {
    if count == 0 {
        return Ok(&[]);
    }
    if values.is_null() {
        return Err(FfiError::null(arg));
    }
    // SAFETY: the caller gives `count` readable values at `values`.
    Ok(unsafe { std::slice::from_raw_parts(values, count) })
}

/// Loads a PEFT LoRA adapter directory (`adapter_config.json` +
/// `adapter_model.safetensors`) into the engine's registry under `name` (replacing one of that
/// name). It is checked against the base model's shapes and fingerprint
/// (`TAILOR_ERR_INCOMPATIBLE`). Loading does not activate it.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_adapter_load(engine: *const TailorEngine, name: *const c_char, dir: *const c_char) -> TailorStatus {
    guard("tailor_adapter_load", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (e, name, dir) = unsafe { (handle(engine, "engine")?, str_arg(name, "name")?, str_arg(dir, "dir")?) };
        e.registry.load(name, Path::new(dir))?;
        Ok(())
    })
}

/// Makes exactly the given adapters active, with weights (`y = W·x + Σ weight·scale·B·A·x`);
/// `count == 0` deactivates all. `names` and `weights` hold `count` entries each.
///
/// # Safety
/// Pointer arguments are NULL or valid for `count` elements; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_adapter_activate(
    engine: *const TailorEngine,
    names: *const *const c_char,
    weights: *const f32,
    count: usize,
) -> TailorStatus {
    guard("tailor_adapter_activate", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (e, names, weights) =
            unsafe { (handle(engine, "engine")?, str_array(names, count, "names")?, array(weights, count, "weights")?) };
        for n in &names {
            if e.registry.get(n).is_none() {
                return Err(not_found("adapter", n));
            }
        }
        let set: Vec<(&str, f32)> = names.into_iter().zip(weights.iter().copied()).collect();
        e.registry.activate(&set)?;
        Ok(())
    })
}

/// Removes an adapter from the registry (and from the active set).
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_adapter_unload(engine: *const TailorEngine, name: *const c_char) -> TailorStatus {
    guard("tailor_adapter_unload", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (e, name) = unsafe { (handle(engine, "engine")?, str_arg(name, "name")?) };
        if e.registry.get(name).is_none() {
            return Err(not_found("adapter", name));
        }
        e.registry.unload(name)?;
        Ok(())
    })
}

/// Lists the registry as JSON: `{"adapters": [{"name", "active_weight" (null when inactive),
/// "rank", "modules", "parameters", "source"}], "steering": [{"name", "active_scale"}]}`.
/// Free `*out_json` with `tailor_string_free`.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn tailor_adapter_list(engine: *const TailorEngine, out_json: *mut *mut c_char) -> TailorStatus {
    guard("tailor_adapter_list", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (out, e) = unsafe { (out_ptr(out_json, "out_json")?, handle(engine, "engine")?) };
        let steering: Vec<_> = e
            .registry
            .list_steering()
            .into_iter()
            .map(|(name, scale)| serde_json::json!({"name": name, "active_scale": scale}))
            .collect();
        json_out(out, &serde_json::json!({"adapters": e.registry.list(), "steering": steering}))
    })
}

/// Loads a steering vector into the registry under `name`: Tailor's `.safetensors` (with its
/// `.json` sidecar) or a llama.cpp/repeng control-vector `.gguf`. Loading does not activate it.
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_steering_load(engine: *const TailorEngine, name: *const c_char, path: *const c_char) -> TailorStatus {
    guard("tailor_steering_load", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (e, name, path) = unsafe { (handle(engine, "engine")?, str_arg(name, "name")?, str_arg(path, "path")?) };
        let path = Path::new(path);
        let vector = if path.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf")) {
            SteeringVector::import_gguf(path)?.0
        } else {
            SteeringVector::load(path)?
        };
        e.registry.insert_steering(name, vector)?;
        Ok(())
    })
}

/// Makes exactly the given steering vectors active: vector `names[i]` times `scales[i]` is
/// added to the residual stream after each layer in `first_layers[i]..=last_layers[i]`.
/// `count == 0` turns steering off.
///
/// # Safety
/// Pointer arguments are NULL or valid for `count` elements; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_steering_activate(
    engine: *const TailorEngine,
    names: *const *const c_char,
    scales: *const f32,
    first_layers: *const u32,
    last_layers: *const u32,
    count: usize,
) -> TailorStatus {
    guard("tailor_steering_activate", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (e, names, scales, first, last) = unsafe {
            (
                handle(engine, "engine")?,
                str_array(names, count, "names")?,
                array(scales, count, "scales")?,
                array(first_layers, count, "first_layers")?,
                array(last_layers, count, "last_layers")?,
            )
        };
        let known = e.registry.list_steering();
        let mut set = Vec::with_capacity(count);
        for (i, name) in names.into_iter().enumerate() {
            if !known.iter().any(|(n, _)| n == name) {
                return Err(not_found("steering vector", name));
            }
            if first[i] > last[i] {
                return Err(FfiError::invalid(format!("steering `{name}`: first layer {} > last layer {}", first[i], last[i])));
            }
            set.push((name, scales[i], first[i] as usize..=last[i] as usize));
        }
        e.registry.activate_steering(&set)?;
        Ok(())
    })
}

/// Removes a steering vector from the registry (and from the active set).
///
/// # Safety
/// Pointer arguments are NULL or valid for the call; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tailor_steering_unload(engine: *const TailorEngine, name: *const c_char) -> TailorStatus {
    guard("tailor_steering_unload", || {
        // SAFETY: argument contracts forwarded from the caller.
        let (e, name) = unsafe { (handle(engine, "engine")?, str_arg(name, "name")?) };
        if !e.registry.list_steering().iter().any(|(n, _)| n == name) {
            return Err(not_found("steering vector", name));
        }
        e.registry.unload_steering(name)?;
        Ok(())
    })
}
