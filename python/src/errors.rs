//! Errors: every Rust error becomes a `tailor.TailorError` (a subclass chosen by its kind), and
//! a Rust panic a `tailor.InternalError` — never a `pyo3_runtime.PanicException`, which is not
//! an `Exception` and would escape a plain `except Exception`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::{create_exception, PyErr};

create_exception!(tailor, TailorError, PyException, "Base class of every error Tailor raises.");
create_exception!(tailor, InvalidArgumentError, TailorError, "An argument is invalid (empty prompt, bad shape, unknown option).");
create_exception!(tailor, NotFoundError, TailorError, "A file, memory, feedback event or adapter version does not exist.");
create_exception!(tailor, FileSystemError, TailorError, "The operating system refused an I/O operation.");
create_exception!(tailor, CorruptDataError, TailorError, "A file's contents are corrupt or inconsistent (GGUF, safetensors, adapter_config.json, SQLite).");
create_exception!(tailor, UnsupportedError, TailorError, "Valid input this build cannot handle (architecture, tensor type, PEFT option).");
create_exception!(tailor, IncompatibleError, TailorError, "An adapter made for another base model, or of the wrong shape.");
create_exception!(tailor, ContextOverflowError, TailorError, "The prompt does not fit in the context window.");
create_exception!(tailor, CancelledError, TailorError, "The operation was cancelled.");
create_exception!(tailor, BusyError, TailorError, "The resource is in use (a session generating on another thread, a training run going on).");
create_exception!(tailor, TrainingError, TailorError, "Training failed (diverged, unusable checkpoint).");
create_exception!(tailor, InternalError, TailorError, "A bug in Tailor (a Rust panic is reported as this).");

/// The class an error is raised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidArgument,
    NotFound,
    Io,
    CorruptData,
    Unsupported,
    Incompatible,
    ContextOverflow,
    Cancelled,
    Busy,
    Training,
    Internal,
    /// No finer class (network, wrong key): raised as `TailorError` itself.
    Other,
}

/// An error on its way to Python: a class and a message.
#[derive(Debug, Clone)]
pub struct Error {
    kind: Kind,
    message: String,
}

/// Result of this crate's Rust-side helpers.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::InvalidArgument, message)
    }

    /// The same error, its message starting with what was being loaded.
    pub fn context(mut self, path: &std::path::Path) -> Self {
        self.message = format!("loading {}: {}", path.display(), self.message);
        self
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let m = e.message;
        match e.kind {
            Kind::InvalidArgument => InvalidArgumentError::new_err(m),
            Kind::NotFound => NotFoundError::new_err(m),
            Kind::Io => FileSystemError::new_err(m),
            Kind::CorruptData => CorruptDataError::new_err(m),
            Kind::Unsupported => UnsupportedError::new_err(m),
            Kind::Incompatible => IncompatibleError::new_err(m),
            Kind::ContextOverflow => ContextOverflowError::new_err(m),
            Kind::Cancelled => CancelledError::new_err(m),
            Kind::Busy => BusyError::new_err(m),
            Kind::Training => TrainingError::new_err(m),
            Kind::Internal => InternalError::new_err(m),
            Kind::Other => TailorError::new_err(m),
        }
    }
}

fn sdk_kind(k: tailor::ErrorKind) -> Kind {
    use tailor::ErrorKind as K;
    match k {
        K::InvalidArgument => Kind::InvalidArgument,
        K::NotFound => Kind::NotFound,
        K::Io => Kind::Io,
        K::CorruptData => Kind::CorruptData,
        K::Unsupported => Kind::Unsupported,
        K::ContextOverflow => Kind::ContextOverflow,
        K::Cancelled => Kind::Cancelled,
        K::Incompatible => Kind::Incompatible,
        K::Busy => Kind::Busy,
        K::Internal => Kind::Internal,
        _ => Kind::Other,
    }
}

fn adapter_kind(k: tailor::adapters::ErrorKind) -> Kind {
    use tailor::adapters::ErrorKind as K;
    match k {
        K::InvalidArgument => Kind::InvalidArgument,
        K::NotFound => Kind::NotFound,
        K::Io => Kind::Io,
        K::CorruptData => Kind::CorruptData,
        K::Unsupported => Kind::Unsupported,
        K::Mismatch => Kind::Incompatible,
        _ => Kind::Other,
    }
}

fn memory_kind(k: tailor::profile::ErrorKind) -> Kind {
    use tailor::profile::ErrorKind as K;
    match k {
        K::InvalidArgument => Kind::InvalidArgument,
        K::NotFound => Kind::NotFound,
        K::Io => Kind::Io,
        K::CorruptData => Kind::CorruptData,
        K::Unsupported => Kind::Unsupported,
        K::AlreadyExists => Kind::InvalidArgument,
        K::Busy => Kind::Busy,
        K::Internal => Kind::Internal,
        _ => Kind::Other,
    }
}

impl From<tailor::Error> for Error {
    fn from(e: tailor::Error) -> Self {
        Error::new(sdk_kind(e.kind()), e.to_string())
    }
}

impl From<tailor::adapters::Error> for Error {
    fn from(e: tailor::adapters::Error) -> Self {
        Error::new(adapter_kind(e.kind()), e.to_string())
    }
}

impl From<tailor::profile::Error> for Error {
    fn from(e: tailor::profile::Error) -> Self {
        Error::new(memory_kind(e.kind()), e.to_string())
    }
}

impl From<tailor_trainer::Error> for Error {
    fn from(e: tailor_trainer::Error) -> Self {
        use tailor_trainer::ErrorKind as K;
        let kind = match &e {
            tailor_trainer::Error::Engine(inner) => sdk_kind(inner.kind()),
            tailor_trainer::Error::Adapter(inner) => adapter_kind(inner.kind()),
            _ => match e.kind() {
                K::InvalidInput => Kind::InvalidArgument,
                K::Diverged | K::Checkpoint => Kind::Training,
                K::Io => Kind::Io,
                K::Model => Kind::Incompatible,
                _ => Kind::Internal,
            },
        };
        Error::new(kind, e.to_string())
    }
}

impl From<tailor_trainer::personal::Error> for Error {
    fn from(e: tailor_trainer::personal::Error) -> Self {
        use tailor_trainer::personal::Error as E;
        match e {
            E::Train(inner) => inner.into(),
            E::Profile(inner) => inner.into(),
            E::Engine(inner) => inner.into(),
            E::Adapter(inner) => inner.into(),
            E::Io { .. } => Error::new(Kind::Io, e.to_string()),
            E::NoFeedback => Error::invalid(e.to_string()),
            E::NothingToRollBack => Error::new(Kind::NotFound, e.to_string()),
            E::Busy => Error::new(Kind::Busy, e.to_string()),
            E::NoSuchVersion { .. } => Error::new(Kind::NotFound, e.to_string()),
            _ => Error::new(Kind::Internal, e.to_string()),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::invalid(e.to_string())
    }
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

/// Runs `f`, turning a panic into an [`Kind::Internal`] error.
pub fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Error::new(Kind::Internal, format!("a Rust panic (a bug in Tailor): {}", panic_message(p.as_ref())))),
    }
}

/// Runs `f` with the GIL released (other Python threads go on meanwhile), a panic becoming an
/// [`Kind::Internal`] error.
pub fn detach<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T> + Send) -> PyResult<T> {
    py.detach(|| catch(f)).map_err(PyErr::from)
}

/// Registers the exception classes on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TailorError", py.get_type::<TailorError>())?;
    m.add("InvalidArgumentError", py.get_type::<InvalidArgumentError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("FileSystemError", py.get_type::<FileSystemError>())?;
    m.add("CorruptDataError", py.get_type::<CorruptDataError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("IncompatibleError", py.get_type::<IncompatibleError>())?;
    m.add("ContextOverflowError", py.get_type::<ContextOverflowError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    m.add("BusyError", py.get_type::<BusyError>())?;
    m.add("TrainingError", py.get_type::<TrainingError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}
