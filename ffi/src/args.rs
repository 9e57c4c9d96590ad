//! Argument checks shared by the exports: NULL pointers and invalid UTF-8 become
//! `TAILOR_ERR_INVALID_ARGUMENT`, never a crash; strings handed out are freed by
//! [`tailor_string_free`].

use std::ffi::{c_char, CStr, CString};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{guard_value, FfiError, FfiResult};

/// The `&str` behind a required C string argument named `arg`.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that stays valid for `'a`.
pub unsafe fn str_arg<'a>(p: *const c_char, arg: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::null(arg));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string valid for 'a.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|e| FfiError::invalid(format!("`{arg}` is not valid UTF-8 (byte {})", e.valid_up_to())))
}

/// Like [`str_arg`] for an optional argument: NULL is `None`.
///
/// # Safety
/// As [`str_arg`].
pub unsafe fn opt_str_arg<'a>(p: *const c_char, arg: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { str_arg(p, arg) }.map(Some)
    }
}

/// Parses an optional JSON argument (NULL or empty: `T::default()`).
///
/// # Safety
/// As [`str_arg`].
pub unsafe fn json_arg<T: DeserializeOwned + Default>(p: *const c_char, arg: &str) -> FfiResult<T> {
    // SAFETY: forwarded contract.
    match unsafe { opt_str_arg(p, arg) }? {
        None => Ok(T::default()),
        Some(s) if s.trim().is_empty() => Ok(T::default()),
        Some(s) => serde_json::from_str(s).map_err(|e| FfiError::invalid(format!("`{arg}`: invalid JSON: {e}"))),
    }
}

/// The handle behind a required handle argument.
///
/// # Safety
/// `p` is NULL or a live handle of type `T` made by this library.
pub unsafe fn handle<'a, T>(p: *const T, arg: &str) -> FfiResult<&'a T> {
    // SAFETY: the caller promises a live handle (or NULL, checked here).
    unsafe { p.as_ref() }.ok_or_else(|| FfiError::null(arg))
}

/// Checks an out-pointer and sets `*out` to NULL/zero before the body runs, so a failing
/// call leaves it cleared.
///
/// # Safety
/// `out` is NULL or points to a writable `T`.
pub unsafe fn out_arg<'a, T: Default>(out: *mut T, arg: &str) -> FfiResult<&'a mut T> {
    // SAFETY: the caller promises a writable T (or NULL, checked here).
    let out = unsafe { out.as_mut() }.ok_or_else(|| FfiError::null(arg))?;
    *out = T::default();
    Ok(out)
}

/// A string for the caller, freed with [`tailor_string_free`].
pub fn c_string(s: String) -> *mut c_char {
    // Interior NULs cannot occur in JSON we produce; escape them in free text anyway.
    let c = CString::new(s).unwrap_or_else(|e| {
        let s = String::from_utf8_lossy(&e.into_vec()).replace('\0', "\\u0000");
        CString::new(s).unwrap_or_default()
    });
    c.into_raw()
}

/// Serializes `value` to JSON into an out-pointer (freed with [`tailor_string_free`]).
pub fn json_out<T: Serialize + ?Sized>(out: &mut *mut c_char, value: &T) -> FfiResult<()> {
    let s = serde_json::to_string(value).map_err(|e| FfiError::new(crate::error::TAILOR_ERR_INTERNAL, format!("JSON: {e}")))?;
    *out = c_string(s);
    Ok(())
}

/// Checks a pointer out-parameter and sets `*out` to NULL before the body runs.
///
/// # Safety
/// `out` is NULL or points to a writable pointer.
pub unsafe fn out_ptr<'a, T>(out: *mut *mut T, arg: &str) -> FfiResult<&'a mut *mut T> {
    // SAFETY: the caller promises a writable pointer (or NULL, checked here).
    let out = unsafe { out.as_mut() }.ok_or_else(|| FfiError::null(arg))?;
    *out = std::ptr::null_mut();
    Ok(out)
}

/// Checks an optional pointer out-parameter (NULL: the caller does not want it) and clears it.
///
/// # Safety
/// As [`out_ptr`].
pub unsafe fn opt_out_ptr<'a, T>(out: *mut *mut T) -> Option<&'a mut *mut T> {
    // SAFETY: the caller promises a writable pointer or NULL.
    let out = unsafe { out.as_mut() }?;
    *out = std::ptr::null_mut();
    Some(out)
}

/// Frees a string returned by this library (JSON results, version names). NULL is ignored.
///
/// # Safety
/// `s` is NULL or a string returned by a `tailor_*` call, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn tailor_string_free(s: *mut c_char) {
    guard_value("tailor_string_free", (), || {
        if !s.is_null() {
            // SAFETY: made by CString::into_raw in `c_string` and not freed before (caller).
            drop(unsafe { CString::from_raw(s) });
        }
        Ok(())
    })
}
