//! Tailor's C ABI: the SDK for apps written in Swift, Kotlin (JNI), Dart (Flutter), JavaScript
//! (React Native) or C, through opaque handles and plain C functions. The header is
//! `include/tailor.h`, generated from this crate by cbindgen (`cbindgen.toml`).
//!
//! The rules every export follows:
//! - it returns a [`TailorStatus`] (`TAILOR_OK` = 0, negative on failure) and stores a message
//!   as the calling thread's last error ([`tailor_last_error_message`] copies it into the
//!   caller's buffer);
//! - NULL for a required pointer and invalid UTF-8 are `TAILOR_ERR_INVALID_ARGUMENT`, never a
//!   crash; a panic inside the library is caught at the boundary (`TAILOR_ERR_PANIC`);
//! - out-parameters are cleared first, so they are NULL/0 after a failure;
//! - strings the library returns are freed with [`tailor_string_free`]; handles with their own
//!   `tailor_*_free`, which all accept NULL;
//! - structured data goes in and out as JSON (`serde` shapes of the Rust types).
//!
//! See `README.md` for the lifecycle, threading rules and Swift/Kotlin sketches.

pub mod adapters;
pub mod args;
pub mod engine;
pub mod error;
pub mod profile;
pub mod session;
pub mod training;

pub use args::tailor_string_free;
pub use engine::{tailor_engine_free, tailor_engine_info, tailor_engine_open, tailor_engine_render_chat, TailorEngine};
pub use error::{
    tailor_last_error_clear, tailor_last_error_code, tailor_last_error_message, tailor_status_name, FfiError, TailorStatus,
};
pub use profile::TailorProfile;
pub use session::{TailorCancelToken, TailorSession, TailorTokenCallback};
pub use training::{TailorProgress, TailorProgressCallback, TailorTrainingJob};

/// Version of this C ABI: bumped on every incompatible change of a signature, a struct's
/// layout, a status code or a JSON shape. Check it at start-up against `TAILOR_ABI_VERSION`
/// from the header the app was built with.
pub const TAILOR_ABI_VERSION: u32 = 1;

/// The ABI version of the loaded library (compare with the header's `TAILOR_ABI_VERSION`).
#[no_mangle]
pub extern "C" fn tailor_abi_version() -> u32 {
    TAILOR_ABI_VERSION
}

/// The library's version (`"0.1.0"`), a static string the caller must not free.
#[no_mangle]
pub extern "C" fn tailor_version() -> *const std::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
