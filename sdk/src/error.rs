//! The one error type of the `tailor` crate.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the SDK. Each variant names the problem; [`Error::kind`]
/// folds them into the coarse classes a C caller or an HTTP server maps to status codes.
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
    /// A GGUF file that cannot be parsed or whose contents are inconsistent (truncated, bad
    /// offsets, wrong block counts).
    #[error("invalid GGUF file {}: {reason}", path.display())]
    InvalidGguf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The GGUF holds a model of an architecture the decode path does not run.
    #[error("unsupported model architecture `{arch}`: Tailor runs llama-family GGUF models")]
    UnsupportedArchitecture {
        /// `general.architecture` of the file.
        arch: String,
    },
    /// A metadata key the model needs is absent or has the wrong type.
    #[error("GGUF metadata `{key}`: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// Missing, wrong type, out of range...
        reason: String,
    },
    /// A tensor the model needs is absent.
    #[error("missing tensor `{name}`")]
    MissingTensor {
        /// GGUF tensor name, e.g. `blk.3.attn_q.weight`.
        name: String,
    },
    /// A tensor has a shape other than the hyper-parameters imply.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        /// GGUF tensor name.
        name: String,
        /// Shape implied by the metadata (row-major, outermost first).
        expected: Vec<usize>,
        /// Shape found in the file.
        actual: Vec<usize>,
    },
    /// A tensor stored in a type the decode path cannot use.
    #[error("tensor `{name}` has unsupported type {dtype}")]
    UnsupportedTensorType {
        /// GGUF tensor name.
        name: String,
        /// The GGML type.
        dtype: String,
    },
    /// The tokenizer could not be built or could not encode/decode.
    #[error("tokenizer: {reason}")]
    Tokenizer {
        /// What failed.
        reason: String,
    },
    /// The chat template could not be compiled or rendered.
    #[error("chat template: {reason}")]
    ChatTemplate {
        /// What failed.
        reason: String,
    },
    /// A grammar (JSON schema, regex, Lark) that cannot be compiled, or a generation that
    /// can no longer follow it.
    #[error("grammar: {reason}")]
    Grammar {
        /// What is wrong.
        reason: String,
    },
    /// The prompt tokenizes to nothing.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The prompt does not fit in the session's context window.
    #[error("the prompt needs {needed} tokens but the context holds {context}")]
    ContextOverflow {
        /// Tokens the session would hold after the prompt (cached prefix + new tokens).
        needed: usize,
        /// The context size.
        context: usize,
    },
    /// A caller passed an argument outside its domain.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// Which argument and why.
        reason: String,
    },
    /// A download from the package index failed.
    #[error("download of {url} failed: {reason}")]
    Download {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A downloaded or cached file does not have the pinned SHA-256.
    #[error("checksum mismatch for {name}: expected {expected}, got {actual}")]
    Checksum {
        /// The file.
        name: String,
        /// The pinned digest.
        expected: String,
        /// The digest found.
        actual: String,
    },
    /// The operation was cancelled through a cancel handle.
    #[error("cancelled")]
    Cancelled,
    /// An error raised inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An adapter file or set is invalid or does not fit this base.
    #[error(transparent)]
    Adapter(#[from] tailor_adapters::Error),
    /// The profile store (long-term memory) failed.
    #[error(transparent)]
    Memory(#[from] tailor_memory::Error),
}

/// Coarse classes of [`Error`], stable for bindings (status codes, HTTP statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller passed something invalid (empty prompt, bad parameter).
    InvalidArgument,
    /// A file is missing.
    NotFound,
    /// The operating system refused an I/O operation.
    Io,
    /// A file's contents are corrupt or inconsistent.
    CorruptData,
    /// Valid input that this build cannot handle (architecture, tensor type).
    Unsupported,
    /// The context window is too small for the request.
    ContextOverflow,
    /// Network or package-index failure.
    Network,
    /// Cancelled by the caller.
    Cancelled,
    /// An adapter or vector made for another base model, or of the wrong shape.
    Incompatible,
    /// A profile store opened with the wrong encryption key (or an encrypted one without).
    WrongKey,
    /// The profile store is locked by another writer.
    Busy,
    /// Anything else (a bug if it happens).
    Internal,
}

impl Error {
    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } | Error::MissingTensor { .. } => ErrorKind::NotFound,
            Error::Io { .. } => ErrorKind::Io,
            Error::InvalidGguf { .. }
            | Error::Metadata { .. }
            | Error::TensorShape { .. }
            | Error::Checksum { .. } => ErrorKind::CorruptData,
            Error::UnsupportedArchitecture { .. } | Error::UnsupportedTensorType { .. } => {
                ErrorKind::Unsupported
            }
            Error::Tokenizer { .. }
            | Error::ChatTemplate { .. }
            | Error::Grammar { .. }
            | Error::EmptyPrompt
            | Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::ContextOverflow { .. } => ErrorKind::ContextOverflow,
            Error::Download { .. } => ErrorKind::Network,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Candle(_) => ErrorKind::Internal,
            Error::Adapter(e) => match e.kind() {
                tailor_adapters::ErrorKind::NotFound => ErrorKind::NotFound,
                tailor_adapters::ErrorKind::Io => ErrorKind::Io,
                tailor_adapters::ErrorKind::CorruptData => ErrorKind::CorruptData,
                tailor_adapters::ErrorKind::Unsupported => ErrorKind::Unsupported,
                tailor_adapters::ErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
                _ => ErrorKind::Incompatible,
            },
            Error::Memory(e) => match e.kind() {
                tailor_memory::ErrorKind::InvalidArgument | tailor_memory::ErrorKind::AlreadyExists => ErrorKind::InvalidArgument,
                tailor_memory::ErrorKind::NotFound => ErrorKind::NotFound,
                tailor_memory::ErrorKind::Io => ErrorKind::Io,
                tailor_memory::ErrorKind::CorruptData => ErrorKind::CorruptData,
                tailor_memory::ErrorKind::WrongKey => ErrorKind::WrongKey,
                tailor_memory::ErrorKind::Unsupported => ErrorKind::Unsupported,
                tailor_memory::ErrorKind::Busy => ErrorKind::Busy,
                _ => ErrorKind::Internal,
            },
        }
    }

    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound { path }
        } else {
            Error::Io { path, source }
        }
    }

    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidArgument { reason: reason.into() }
    }
}
