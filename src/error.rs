//! Typed errors callers can match on. Every variant says what went wrong in words a user can act on.

use thiserror::Error;

/// Result with the crate's [`Error`](enum@Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the library can fail with.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller's input is wrong (bad JSON, a missing field, a wrong dimension count...).
    #[error("{0}")]
    Invalid(String),
    /// An input is larger than the node accepts.
    #[error("{what} is too large: {size} bytes, the limit is {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The caller may not do this (a client id another principal writes with).
    #[error("{0}")]
    Forbidden(String),
    /// A referenced row does not exist.
    #[error("{0}")]
    NotFound(String),
    /// One op of a multi-op write failed; nothing of the write was committed. (The cause is
    /// in the message and not a `#[source]`, like every variant here: error-chain printers
    /// would say it twice.)
    #[error("op {index} failed: {cause}")]
    Op {
        /// Zero-based position of the failing op.
        index: usize,
        /// Why it failed.
        cause: Box<Error>,
    },
    /// The database file was written by a newer hivesync.
    #[error("the database schema is version {found}, newer than this build supports ({supported}); upgrade hivesync to open it")]
    SchemaTooNew {
        /// Version found in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// No pooled connection became free in time.
    #[error("no database connection became free within {0:?}; the node is overloaded, retry later or raise the reader count")]
    PoolTimeout(std::time::Duration),
    /// The store was opened read-only.
    #[error("the store is read-only (follower mode): send writes to the primary node")]
    ReadOnly,
    /// A batch of changes does not continue from what this replica applied: applying it would
    /// leave a gap. Resubscribe from `applied`.
    #[error("gap: the batch continues from seq {prev} but this replica has applied up to {applied}; resubscribe from {applied}")]
    Gap {
        /// The seq the batch continues from.
        prev: i64,
        /// The last seq this replica applied.
        applied: i64,
    },
    /// The disk holding the database is full; the write was rolled back whole.
    #[error("the disk holding the database is full: nothing of this write was committed; free space and retry")]
    DiskFull,
    /// SQLite reported an error. (Not a `#[source]`: its message is already in ours, and
    /// error-chain printers would repeat it.)
    #[error("sqlite: {0}")]
    Sqlite(rusqlite::Error),
    /// JSON could not be encoded or decoded.
    #[error("json: {0}")]
    Json(serde_json::Error),
    /// A file could not be read or written.
    #[error("io: {0}")]
    Io(std::io::Error),
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
                Error::DiskFull
            }
            _ => Error::Sqlite(e),
        }
    }
}

impl Error {
    /// An [`Error::Invalid`] with the given message.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// True when the error is the caller's fault (bad input), not the node's.
    pub fn is_client_error(&self) -> bool {
        match self {
            Error::Invalid(_) | Error::TooLarge { .. } | Error::NotFound(_) | Error::Gap { .. } => {
                true
            }
            Error::Op { cause, .. } => cause.is_client_error(),
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::ConstraintViolation
            }
            _ => false,
        }
    }
}
