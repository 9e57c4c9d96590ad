//! The one error type of the `tailor-memory` crate.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the profile store. Each variant names the problem;
/// [`Error::kind`] folds them into the coarse classes a C caller or an HTTP server maps to
/// status codes.
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
    /// The file exists but is not an SQLite database (or is encrypted and no key was given).
    /// The file is left untouched.
    #[error("{} is not a profile database (not SQLite, or encrypted and no key was given)", path.display())]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The key given does not open the encrypted database (or the file is not a database).
    /// The file is left untouched.
    #[error("wrong key for {} (or the file is not a profile database)", path.display())]
    WrongKey {
        /// The file.
        path: PathBuf,
    },
    /// A valid SQLite database that belongs to another application. Left untouched.
    #[error("{} is an SQLite database of another application (application_id {application_id:#x})", path.display())]
    ForeignDatabase {
        /// The file.
        path: PathBuf,
        /// Its `PRAGMA application_id`.
        application_id: i32,
    },
    /// A profile written by a newer version of this crate.
    #[error("{} has schema version {found}; this build supports up to {supported}", path.display())]
    SchemaTooNew {
        /// The file.
        path: PathBuf,
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest schema this build knows.
        supported: i64,
    },
    /// The database or a derived file is damaged.
    #[error("corrupt profile data: {reason}")]
    Corrupt {
        /// What is wrong.
        reason: String,
    },
    /// Encryption was asked for but this build has no SQLCipher (cargo feature `encryption`).
    #[error("encryption at rest needs tailor-memory built with the `encryption` feature")]
    EncryptionUnavailable,
    /// A memory's text is empty or only whitespace.
    #[error("the memory text is empty")]
    EmptyText,
    /// A memory's text is longer than [`crate::MemoryConfig::max_text_bytes`].
    #[error("the memory text is {len} bytes, more than the limit of {max}")]
    TextTooLong {
        /// Length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// Metadata that is not valid JSON, not a JSON object, or too large.
    #[error("invalid metadata: {reason}")]
    InvalidMetadata {
        /// What is wrong.
        reason: String,
    },
    /// A caller passed an argument outside its domain.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// Which argument and why.
        reason: String,
    },
    /// No memory with this id (never existed or forgotten).
    #[error("no memory with id {id}")]
    MemoryNotFound {
        /// The id asked for.
        id: i64,
    },
    /// No feedback event with this id.
    #[error("no feedback event with id {id}")]
    FeedbackNotFound {
        /// The id asked for.
        id: i64,
    },
    /// An adapter version recorded twice in the lineage.
    #[error("adapter version `{version}` is already recorded")]
    AdapterExists {
        /// The version.
        version: String,
    },
    /// An adapter version (or a parent) absent from the lineage.
    #[error("adapter version `{version}` is not recorded")]
    AdapterNotFound {
        /// The version.
        version: String,
    },
    /// An export file that is not ours or has an unsupported format version.
    #[error("invalid export file: {reason}")]
    InvalidExport {
        /// What is wrong.
        reason: String,
    },
    /// The embedding model folder is incomplete or its configuration is unusable.
    #[error("embedder {}: {reason}", path.display())]
    Embedder {
        /// The model folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The embedder's tokenizer failed.
    #[error("tokenizer: {reason}")]
    Tokenizer {
        /// What failed.
        reason: String,
    },
    /// A vector of the wrong length (embedder and index disagree).
    #[error("vector dimension {actual}, expected {expected}")]
    DimensionMismatch {
        /// The index dimension.
        expected: usize,
        /// The dimension found.
        actual: usize,
    },
    /// An error raised inside SQLite.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// An error raised inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Coarse classes of [`Error`], stable for bindings (status codes, HTTP statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller passed something invalid (empty text, bad metadata, bad parameter).
    InvalidArgument,
    /// A file, memory, feedback event or adapter record is missing.
    NotFound,
    /// The operating system refused an I/O operation.
    Io,
    /// A file's contents are corrupt, foreign or inconsistent.
    CorruptData,
    /// The encryption key does not open the profile.
    WrongKey,
    /// Valid input that this build cannot handle (newer schema, no encryption, pooling).
    Unsupported,
    /// Something already exists (an adapter version).
    AlreadyExists,
    /// The database is locked by another connection for longer than the busy timeout.
    Busy,
    /// Anything else (a bug if it happens).
    Internal,
}

impl Error {
    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. }
            | Error::MemoryNotFound { .. }
            | Error::FeedbackNotFound { .. }
            | Error::AdapterNotFound { .. } => ErrorKind::NotFound,
            Error::Io { .. } => ErrorKind::Io,
            Error::NotADatabase { .. }
            | Error::ForeignDatabase { .. }
            | Error::Corrupt { .. }
            | Error::InvalidExport { .. }
            | Error::Embedder { .. } => ErrorKind::CorruptData,
            Error::WrongKey { .. } => ErrorKind::WrongKey,
            Error::SchemaTooNew { .. } | Error::EncryptionUnavailable => ErrorKind::Unsupported,
            Error::EmptyText
            | Error::TextTooLong { .. }
            | Error::InvalidMetadata { .. }
            | Error::InvalidArgument { .. }
            | Error::Tokenizer { .. }
            | Error::DimensionMismatch { .. } => ErrorKind::InvalidArgument,
            Error::AdapterExists { .. } => ErrorKind::AlreadyExists,
            Error::Sqlite(e) => match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    ErrorKind::Busy
                }
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                    ErrorKind::CorruptData
                }
                Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::SystemIoFailure) => {
                    ErrorKind::Io
                }
                _ => ErrorKind::Internal,
            },
            Error::Candle(_) => ErrorKind::Internal,
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

    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidArgument { reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stable_for_bindings() {
        assert_eq!(Error::EmptyText.kind(), ErrorKind::InvalidArgument);
        assert_eq!(Error::WrongKey { path: "x".into() }.kind(), ErrorKind::WrongKey);
        assert_eq!(Error::MemoryNotFound { id: 3 }.kind(), ErrorKind::NotFound);
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert_eq!(Error::from(busy).kind(), ErrorKind::Busy);
        assert_eq!(serde_json::to_string(&ErrorKind::WrongKey).unwrap(), "\"wrong_key\"");
    }
}
