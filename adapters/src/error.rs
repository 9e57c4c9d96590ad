//! The one error type of the `tailor-adapters` crate.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong with adapter files and adapter math. Each variant names the
/// problem; [`Error::kind`] folds them into coarse classes for bindings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory that should exist does not.
    #[error("not found: {}", path.display())]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// An operating-system I/O error on a path.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `adapter_config.json` is not valid JSON, lacks a required field, or holds values that
    /// contradict each other or the tensors.
    #[error("invalid adapter config {}: {reason}", path.display())]
    InvalidConfig {
        /// The config file (or the adapter directory when the config is in memory).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The weights file is not a readable safetensors file (truncated, bad header, bad offsets).
    #[error("invalid safetensors file {}: {reason}", path.display())]
    InvalidTensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the adapter needs is absent (e.g. a `lora_A` without its `lora_B`).
    #[error("missing tensor `{name}`")]
    MissingTensor {
        /// PEFT tensor name, e.g. `base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight`.
        name: String,
    },
    /// A tensor (or a buffer passed in memory) has a shape other than the rank and the base
    /// model imply.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// The shape implied by the config and the base (row-major, outermost first).
        expected: Vec<usize>,
        /// The shape found.
        actual: Vec<usize>,
    },
    /// A tensor holds NaN or an infinity.
    #[error("tensor `{name}` holds NaN or infinite values")]
    NonFinite {
        /// Tensor name.
        name: String,
    },
    /// The adapter was made for another base model than the one it is loaded onto.
    #[error("adapter was made for base {expected}, not for {actual}")]
    BaseMismatch {
        /// What the adapter records (or needs).
        expected: String,
        /// What the base the caller loads it onto has.
        actual: String,
    },
    /// A valid adapter feature this build does not implement (DoRA, `fan_in_fan_out`, bias
    /// training, `modules_to_save`, per-module ranks, targets outside the seven projections).
    #[error("unsupported: {what}")]
    Unsupported {
        /// The feature or value.
        what: String,
    },
    /// A caller passed an argument outside its domain.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// Which argument and why.
        reason: String,
    },
}

/// Coarse classes of [`Error`], stable for bindings (status codes, HTTP statuses). Same
/// classes as the `tailor` crate's `ErrorKind`, plus [`ErrorKind::Mismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller passed something invalid.
    InvalidArgument,
    /// A file or tensor is missing.
    NotFound,
    /// The operating system refused an I/O operation.
    Io,
    /// A file's contents are corrupt or inconsistent.
    CorruptData,
    /// Valid input that this build cannot handle.
    Unsupported,
    /// The adapter does not belong to this base model.
    Mismatch,
}

impl Error {
    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } | Error::MissingTensor { .. } => ErrorKind::NotFound,
            Error::Io { .. } => ErrorKind::Io,
            Error::InvalidConfig { .. }
            | Error::InvalidTensors { .. }
            | Error::Shape { .. }
            | Error::NonFinite { .. } => ErrorKind::CorruptData,
            Error::BaseMismatch { .. } => ErrorKind::Mismatch,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
        }
    }

    /// Builds an [`Error::Io`] for `path` ([`Error::NotFound`] when the OS says so).
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound { path }
        } else {
            Error::Io { path, source }
        }
    }

    /// Builds an [`Error::InvalidConfig`].
    pub fn config(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig { path: path.into(), reason: reason.into() }
    }

    /// Builds an [`Error::Unsupported`].
    pub fn unsupported(what: impl Into<String>) -> Self {
        Error::Unsupported { what: what.into() }
    }

    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidArgument { reason: reason.into() }
    }
}
