//! The trainer's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A [`TrainConfig`](crate::TrainConfig) value is out of range or inconsistent.
    #[error("invalid training configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// An example is unusable (empty answer, token outside the vocabulary, too long, ...).
    #[error("invalid training example {index}: {reason}")]
    InvalidExample {
        /// Index of the example in its list.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// There is nothing to train on.
    #[error("no training examples")]
    NoExamples,
    /// The loss or the gradients became NaN or infinite.
    #[error("training diverged at step {step}: non-finite {what}")]
    Diverged {
        /// Optimizer step (1-based) at which it happened.
        step: usize,
        /// `loss` or `gradient`.
        what: &'static str,
    },
    /// A checkpoint file is corrupt or was written by a different run.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The base model or the engine refused something.
    #[error(transparent)]
    Engine(#[from] tailor::Error),
    /// An adapter could not be built or converted.
    #[error(transparent)]
    Adapter(#[from] tailor::adapters::Error),
    /// The training thread panicked (a bug).
    #[error("the training thread panicked: {message}")]
    Panicked {
        /// The panic message, if it was a string.
        message: String,
    },
}

/// The category of an [`Error`], stable for FFI status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad configuration or examples: the caller can fix them.
    InvalidInput,
    /// Training diverged.
    Diverged,
    /// A checkpoint could not be used.
    Checkpoint,
    /// File system.
    Io,
    /// From the engine or the adapter crate.
    Model,
    /// A bug.
    Internal,
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidConfig { .. } | Error::InvalidExample { .. } | Error::NoExamples => ErrorKind::InvalidInput,
            Error::Diverged { .. } => ErrorKind::Diverged,
            Error::Checkpoint { .. } => ErrorKind::Checkpoint,
            Error::Io { .. } => ErrorKind::Io,
            Error::Engine(_) | Error::Adapter(_) => ErrorKind::Model,
            Error::Panicked { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn invalid_config(reason: impl Into<String>) -> Self {
        Error::InvalidConfig { reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), reason: reason.into() }
    }
}

/// `Result` with the trainer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
