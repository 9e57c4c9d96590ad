//! Status codes, the thread-local last error, and [`guard`]: the one wrapper every export
//! runs its body in (argument checks, `catch_unwind`, error → status code).

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The status every `tailor_*` call returns: `TAILOR_OK` (0) on success, a negative code on
/// failure, with a message available from `tailor_last_error_message` on the same thread.
pub type TailorStatus = i32;

/// Success.
pub const TAILOR_OK: TailorStatus = 0;
/// An argument is invalid: a NULL pointer, invalid UTF-8, malformed JSON, an empty prompt,
/// an out-of-range parameter.
pub const TAILOR_ERR_INVALID_ARGUMENT: TailorStatus = -1;
/// A file, memory, feedback event, adapter or steering vector does not exist.
pub const TAILOR_ERR_NOT_FOUND: TailorStatus = -2;
/// The operating system refused an I/O operation.
pub const TAILOR_ERR_IO: TailorStatus = -3;
/// A file's contents are corrupt or inconsistent (GGUF, safetensors, SQLite, JSON export).
pub const TAILOR_ERR_CORRUPT_DATA: TailorStatus = -4;
/// Valid input this build cannot handle (model architecture, tensor type, schema version).
pub const TAILOR_ERR_UNSUPPORTED: TailorStatus = -5;
/// An adapter or steering vector made for another base model, or of the wrong shape.
pub const TAILOR_ERR_INCOMPATIBLE: TailorStatus = -6;
/// The prompt does not fit in the session's context window.
pub const TAILOR_ERR_CONTEXT_OVERFLOW: TailorStatus = -7;
/// The operation was cancelled (cancel token, training job cancel, callback stop of a job).
pub const TAILOR_ERR_CANCELLED: TailorStatus = -8;
/// The resource is in use: a session already generating on another thread, a training job
/// already running for the profile, a profile already open on the engine, a locked store.
pub const TAILOR_ERR_BUSY: TailorStatus = -9;
/// The profile store's encryption key is wrong (or missing).
pub const TAILOR_ERR_WRONG_KEY: TailorStatus = -10;
/// Training failed (diverged, unusable checkpoint).
pub const TAILOR_ERR_TRAINING: TailorStatus = -11;
/// A network failure (model download).
pub const TAILOR_ERR_NETWORK: TailorStatus = -12;
/// An internal error (a bug in Tailor if it happens).
pub const TAILOR_ERR_INTERNAL: TailorStatus = -98;
/// A panic was caught at the boundary (a bug in Tailor); the handle involved may be left in
/// an unspecified but memory-safe state and should be freed.
pub const TAILOR_ERR_PANIC: TailorStatus = -99;

/// An error on its way to the C caller: a status code and a message.
#[derive(Debug, Clone)]
pub struct FfiError {
    /// The status returned.
    pub code: TailorStatus,
    /// The message stored as the thread's last error.
    pub message: String,
}

impl FfiError {
    /// An error with `code` and `message`.
    pub fn new(code: TailorStatus, message: impl Into<String>) -> Self {
        FfiError { code, message: message.into() }
    }

    /// `TAILOR_ERR_INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(TAILOR_ERR_INVALID_ARGUMENT, message)
    }

    /// `TAILOR_ERR_INVALID_ARGUMENT` for a NULL pointer argument.
    pub fn null(arg: &str) -> Self {
        Self::invalid(format!("`{arg}` is NULL"))
    }

    /// `TAILOR_ERR_BUSY`.
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(TAILOR_ERR_BUSY, message)
    }
}

/// The result type of the export bodies.
pub type FfiResult<T> = Result<T, FfiError>;

fn sdk_code(kind: tailor::ErrorKind) -> TailorStatus {
    use tailor::ErrorKind as K;
    match kind {
        K::InvalidArgument => TAILOR_ERR_INVALID_ARGUMENT,
        K::NotFound => TAILOR_ERR_NOT_FOUND,
        K::Io => TAILOR_ERR_IO,
        K::CorruptData => TAILOR_ERR_CORRUPT_DATA,
        K::Unsupported => TAILOR_ERR_UNSUPPORTED,
        K::ContextOverflow => TAILOR_ERR_CONTEXT_OVERFLOW,
        K::Network => TAILOR_ERR_NETWORK,
        K::Cancelled => TAILOR_ERR_CANCELLED,
        K::Incompatible => TAILOR_ERR_INCOMPATIBLE,
        K::WrongKey => TAILOR_ERR_WRONG_KEY,
        K::Busy => TAILOR_ERR_BUSY,
        _ => TAILOR_ERR_INTERNAL,
    }
}

fn memory_code(kind: tailor::profile::ErrorKind) -> TailorStatus {
    use tailor::profile::ErrorKind as K;
    match kind {
        K::InvalidArgument | K::AlreadyExists => TAILOR_ERR_INVALID_ARGUMENT,
        K::NotFound => TAILOR_ERR_NOT_FOUND,
        K::Io => TAILOR_ERR_IO,
        K::CorruptData => TAILOR_ERR_CORRUPT_DATA,
        K::WrongKey => TAILOR_ERR_WRONG_KEY,
        K::Unsupported => TAILOR_ERR_UNSUPPORTED,
        K::Busy => TAILOR_ERR_BUSY,
        _ => TAILOR_ERR_INTERNAL,
    }
}

fn adapter_code(kind: tailor::adapters::ErrorKind) -> TailorStatus {
    use tailor::adapters::ErrorKind as K;
    match kind {
        K::InvalidArgument => TAILOR_ERR_INVALID_ARGUMENT,
        K::NotFound => TAILOR_ERR_NOT_FOUND,
        K::Io => TAILOR_ERR_IO,
        K::CorruptData => TAILOR_ERR_CORRUPT_DATA,
        K::Unsupported => TAILOR_ERR_UNSUPPORTED,
        _ => TAILOR_ERR_INCOMPATIBLE,
    }
}

impl From<tailor::Error> for FfiError {
    fn from(e: tailor::Error) -> Self {
        FfiError::new(sdk_code(e.kind()), e.to_string())
    }
}

impl From<tailor::profile::Error> for FfiError {
    fn from(e: tailor::profile::Error) -> Self {
        FfiError::new(memory_code(e.kind()), e.to_string())
    }
}

impl From<tailor::adapters::Error> for FfiError {
    fn from(e: tailor::adapters::Error) -> Self {
        FfiError::new(adapter_code(e.kind()), e.to_string())
    }
}

impl From<tailor_trainer::Error> for FfiError {
    fn from(e: tailor_trainer::Error) -> Self {
        use tailor_trainer::ErrorKind as K;
        let code = match &e {
            tailor_trainer::Error::Engine(inner) => sdk_code(inner.kind()),
            tailor_trainer::Error::Adapter(inner) => adapter_code(inner.kind()),
            _ => match e.kind() {
                K::InvalidInput => TAILOR_ERR_INVALID_ARGUMENT,
                K::Diverged | K::Checkpoint => TAILOR_ERR_TRAINING,
                K::Io => TAILOR_ERR_IO,
                K::Model => TAILOR_ERR_INCOMPATIBLE,
                _ => TAILOR_ERR_INTERNAL,
            },
        };
        FfiError::new(code, e.to_string())
    }
}

impl From<serde_json::Error> for FfiError {
    fn from(e: serde_json::Error) -> Self {
        FfiError::invalid(format!("JSON: {e}"))
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<(TailorStatus, String)>> = const { RefCell::new(None) };
}

/// Stores `e` as this thread's last error.
pub fn set_last_error(e: &FfiError) {
    // Interior NULs would cut the C string short; show them instead.
    let message = e.message.replace('\0', "\\0");
    LAST_ERROR.with(|slot| *slot.borrow_mut() = Some((e.code, message)));
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs an export's body: a panic becomes `TAILOR_ERR_PANIC`, an error its status code, and
/// either is stored as the thread's last error. Every `extern "C"` function goes through
/// here (or [`guard_value`]), so no panic unwinds into the caller.
pub fn guard(name: &str, body: impl FnOnce() -> FfiResult<()>) -> TailorStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => TAILOR_OK,
        Ok(Err(e)) => {
            set_last_error(&e);
            e.code
        }
        Err(payload) => {
            let e = FfiError::new(TAILOR_ERR_PANIC, format!("{name}: internal panic: {}", panic_message(&*payload)));
            set_last_error(&e);
            e.code
        }
    }
}

/// Like [`guard`] for the few exports that return a value instead of a status (free
/// functions, getters): `fallback` on error or panic.
pub fn guard_value<T>(name: &str, fallback: T, body: impl FnOnce() -> FfiResult<T>) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(&e);
            fallback
        }
        Err(payload) => {
            set_last_error(&FfiError::new(TAILOR_ERR_PANIC, format!("{name}: internal panic: {}", panic_message(&*payload))));
            fallback
        }
    }
}

/// Copies this thread's last error message (UTF-8, NUL-terminated, truncated to fit) into
/// `buf` of `buf_len` bytes and returns the size the whole message needs, NUL included (`0`
/// when there has been no error on this thread). `buf` may be NULL when `buf_len` is 0, to
/// ask for the size. The message stays until the next failing call on this thread.
///
/// # Safety
/// `buf` is NULL or points to `buf_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn tailor_last_error_message(buf: *mut c_char, buf_len: usize) -> usize {
    guard_value("tailor_last_error_message", 0, || {
        LAST_ERROR.with(|slot| {
            let slot = slot.borrow();
            let Some((_, message)) = slot.as_ref() else { return Ok(0) };
            let bytes = message.as_bytes();
            if !buf.is_null() && buf_len > 0 {
                let mut n = bytes.len().min(buf_len - 1);
                // Never cut a UTF-8 character in half.
                while n > 0 && !message.is_char_boundary(n) {
                    n -= 1;
                }
                // SAFETY: the caller gives `buf_len` writable bytes at `buf`; `n + 1 <= buf_len`
                // and `bytes` (ours) does not overlap the caller's buffer.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
                    *buf.add(n) = 0;
                }
            }
            Ok(bytes.len() + 1)
        })
    })
}

/// The status code of this thread's last error (`TAILOR_OK` when there has been none).
#[no_mangle]
pub extern "C" fn tailor_last_error_code() -> TailorStatus {
    guard_value("tailor_last_error_code", TAILOR_ERR_INTERNAL, || {
        Ok(LAST_ERROR.with(|slot| slot.borrow().as_ref().map_or(TAILOR_OK, |(c, _)| *c)))
    })
}

/// Forgets this thread's last error.
#[no_mangle]
pub extern "C" fn tailor_last_error_clear() {
    guard_value("tailor_last_error_clear", (), || {
        LAST_ERROR.with(|slot| *slot.borrow_mut() = None);
        Ok(())
    })
}

/// A short name of a status code (`"TAILOR_ERR_NOT_FOUND"`), a static string the caller
/// must not free; `"TAILOR_ERR_UNKNOWN"` for a code this library does not define.
#[no_mangle]
pub extern "C" fn tailor_status_name(status: TailorStatus) -> *const c_char {
    let s: &'static [u8] = match status {
        TAILOR_OK => b"TAILOR_OK\0",
        TAILOR_ERR_INVALID_ARGUMENT => b"TAILOR_ERR_INVALID_ARGUMENT\0",
        TAILOR_ERR_NOT_FOUND => b"TAILOR_ERR_NOT_FOUND\0",
        TAILOR_ERR_IO => b"TAILOR_ERR_IO\0",
        TAILOR_ERR_CORRUPT_DATA => b"TAILOR_ERR_CORRUPT_DATA\0",
        TAILOR_ERR_UNSUPPORTED => b"TAILOR_ERR_UNSUPPORTED\0",
        TAILOR_ERR_INCOMPATIBLE => b"TAILOR_ERR_INCOMPATIBLE\0",
        TAILOR_ERR_CONTEXT_OVERFLOW => b"TAILOR_ERR_CONTEXT_OVERFLOW\0",
        TAILOR_ERR_CANCELLED => b"TAILOR_ERR_CANCELLED\0",
        TAILOR_ERR_BUSY => b"TAILOR_ERR_BUSY\0",
        TAILOR_ERR_WRONG_KEY => b"TAILOR_ERR_WRONG_KEY\0",
        TAILOR_ERR_TRAINING => b"TAILOR_ERR_TRAINING\0",
        TAILOR_ERR_NETWORK => b"TAILOR_ERR_NETWORK\0",
        TAILOR_ERR_INTERNAL => b"TAILOR_ERR_INTERNAL\0",
        TAILOR_ERR_PANIC => b"TAILOR_ERR_PANIC\0",
        _ => b"TAILOR_ERR_UNKNOWN\0",
    };
    s.as_ptr().cast()
}

impl From<tailor_trainer::personal::Error> for FfiError {
    fn from(e: tailor_trainer::personal::Error) -> Self {
        use tailor_trainer::personal::Error as E;
        match e {
            E::Train(inner) => inner.into(),
            E::Profile(inner) => inner.into(),
            E::Engine(inner) => inner.into(),
            E::Adapter(inner) => inner.into(),
            E::Io { .. } => FfiError::new(TAILOR_ERR_IO, e.to_string()),
            E::NoFeedback => FfiError::invalid(e.to_string()),
            E::NothingToRollBack => FfiError::new(TAILOR_ERR_NOT_FOUND, e.to_string()),
            E::Busy => FfiError::busy(e.to_string()),
            _ => FfiError::new(TAILOR_ERR_INTERNAL, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_message() -> String {
        // SAFETY: NULL with length 0 asks for the size; then a buffer of that size.
        let need = unsafe { tailor_last_error_message(std::ptr::null_mut(), 0) };
        let mut buf = vec![0 as c_char; need.max(1)];
        // SAFETY: `buf` has `buf.len()` writable bytes.
        unsafe { tailor_last_error_message(buf.as_mut_ptr(), buf.len()) };
        // SAFETY: the call wrote a NUL-terminated string into `buf`.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let st = guard("test_export", || -> FfiResult<()> { panic!("boom {}", 42) });
        assert_eq!(st, TAILOR_ERR_PANIC);
        assert_eq!(tailor_last_error_code(), TAILOR_ERR_PANIC);
        assert!(last_message().contains("test_export: internal panic: boom 42"));
        assert_eq!(guard_value("test_value", 7, || -> FfiResult<i32> { panic!("again") }), 7);
        assert_eq!(tailor_last_error_code(), TAILOR_ERR_PANIC);
    }

    #[test]
    fn errors_map_to_their_codes_and_messages_are_per_thread() {
        let st = guard("x", || Err(tailor::Error::ContextOverflow { needed: 10, context: 5 }.into()));
        assert_eq!(st, TAILOR_ERR_CONTEXT_OVERFLOW);
        assert!(last_message().contains("10 tokens"));
        std::thread::spawn(|| assert_eq!(tailor_last_error_code(), TAILOR_OK)).join().unwrap();
        assert_eq!(guard("x", || Ok(())), TAILOR_OK);
        assert_eq!(tailor_last_error_code(), TAILOR_ERR_CONTEXT_OVERFLOW, "success leaves the last error");
        tailor_last_error_clear();
        assert_eq!(tailor_last_error_code(), TAILOR_OK);
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        set_last_error(&FfiError::invalid("é€x\0y"));
        let mut buf = [1 as c_char; 4];
        // SAFETY: `buf` has 4 writable bytes.
        let need = unsafe { tailor_last_error_message(buf.as_mut_ptr(), buf.len()) };
        assert_eq!(need, "é€x\\0y".len() + 1);
        // 3 bytes of room: "é" (2 bytes) fits, "€" (3 bytes) would be cut, so it stops there.
        // SAFETY: NUL-terminated by the call.
        assert_eq!(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap(), "é");
    }
}
