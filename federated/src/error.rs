//! The one error type of the `tailor-federated` crate.

use crate::refusal::Refusal;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop an aggregation or an accounting call. A bad *update* is not an error: it is
/// refused ([`Refusal`]) and the round goes on; the call fails only when its options are
/// invalid or no update is left.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option is outside its domain or options contradict each other.
    #[error("invalid options: {reason}")]
    InvalidOptions {
        /// Which option and why.
        reason: String,
    },
    /// Every update of the round was refused (or there was none).
    #[error("nothing to aggregate: {}", describe(refusals))]
    NothingAccepted {
        /// Why each update was refused.
        refusals: Vec<Refusal>,
    },
    /// An adapter file or adapter operation failed.
    #[error(transparent)]
    Adapter(#[from] tailor_adapters::Error),
}

fn describe(refusals: &[Refusal]) -> String {
    if refusals.is_empty() {
        return "no updates".to_owned();
    }
    let all: Vec<String> = refusals.iter().map(|r| r.to_string()).collect();
    format!("every update was refused ({})", all.join("; "))
}

/// Coarse classes of [`Error`], stable for bindings (status codes, Python exceptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller passed invalid options.
    InvalidArgument,
    /// Every update was refused.
    Refused,
    /// A file or tensor is missing.
    NotFound,
    /// The operating system refused an I/O operation.
    Io,
    /// An adapter file is corrupt or inconsistent.
    CorruptData,
    /// Valid input that this build cannot handle.
    Unsupported,
    /// An adapter belongs to another base model.
    Mismatch,
}

impl Error {
    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        use tailor_adapters::ErrorKind as A;
        match self {
            Error::InvalidOptions { .. } => ErrorKind::InvalidArgument,
            Error::NothingAccepted { .. } => ErrorKind::Refused,
            Error::Adapter(e) => match e.kind() {
                A::InvalidArgument => ErrorKind::InvalidArgument,
                A::NotFound => ErrorKind::NotFound,
                A::Io => ErrorKind::Io,
                A::CorruptData => ErrorKind::CorruptData,
                A::Unsupported => ErrorKind::Unsupported,
                A::Mismatch => ErrorKind::Mismatch,
                _ => ErrorKind::CorruptData,
            },
        }
    }

    /// Builds an [`Error::InvalidOptions`].
    pub fn options(reason: impl Into<String>) -> Self {
        Error::InvalidOptions { reason: reason.into() }
    }
}
