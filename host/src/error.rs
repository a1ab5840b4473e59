//! The host's error type: everything a command can fail with, classified by
//! [`ErrorKind`] so the CLI, the conformance suite and retries can branch on
//! the class.

use std::path::PathBuf;

pub use drivers_api::ErrorKind;

/// Result alias of the host.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the `drivers` host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A backend call failed.
    #[error(transparent)]
    Backend(#[from] drivers_api::Error),

    /// A layer tar could not be applied (malformed or hostile input, digest
    /// mismatch, I/O).
    #[error(transparent)]
    Apply(#[from] drivers_archive::Error),

    /// A layer's changes could not be read or written.
    #[error(transparent)]
    Diff(#[from] drivers_diff::Error),

    /// The metadata database failed.
    #[error("metadata store: {0}")]
    Db(#[from] rusqlite::Error),

    /// A named object does not exist.
    #[error("{what} {name} not found")]
    NotFound {
        /// "image", "layer", "container", "snapshot", …
        what: &'static str,
        /// The name the user gave.
        name: String,
    },

    /// A named object exists already.
    #[error("{what} {name} already exists")]
    AlreadyExists {
        /// "image", "layer", "container", "snapshot", …
        what: &'static str,
        /// The name.
        name: String,
    },

    /// The object is still used.
    #[error("cannot remove {what} {name}: it is in use by {by}")]
    InUse {
        /// What the user tried to remove.
        what: &'static str,
        /// Its name.
        name: String,
        /// Who needs it.
        by: String,
    },

    /// The object is in the wrong state for this call.
    #[error("{0}")]
    Precondition(String),

    /// A value the user gave is wrong.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The argument or field.
        field: &'static str,
        /// Why.
        reason: String,
    },

    /// An image archive or layout is malformed or fails verification.
    #[error("{source_desc}: {reason}")]
    BadImage {
        /// What was being read, e.g. "OCI layout /tmp/x".
        source_desc: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The config file is unreadable or wrong.
    #[error("config {}: {reason}", .path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A filesystem call of the host failed.
    #[error("failed to {op} {}", .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A policy plugin failed, misbehaved or was refused; nothing it asked
    /// for was done.
    #[error("plugin {name}: {message}")]
    Plugin {
        /// The plugin's name.
        name: String,
        /// What went wrong, on one line.
        message: String,
        /// What the user can do about it.
        hint: Option<String>,
    },

    /// A JSON document could not be read or written.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Backend(e) => e.kind(),
            Error::Apply(e) => e.kind(),
            Error::Diff(e) => e.kind(),
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::InUse { .. } => ErrorKind::InUse,
            Error::Precondition(_) => ErrorKind::FailedPrecondition,
            Error::Invalid { .. } | Error::BadImage { .. } | Error::Config { .. } => {
                ErrorKind::Invalid
            }
            Error::Db(_) | Error::Io { .. } | Error::Json { .. } | Error::Plugin { .. } => {
                ErrorKind::Internal
            }
        }
    }

    /// A next step for the user, printed by the CLI under `error: …`.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Backend(e) => e.hint().map(str::to_owned),
            Error::Plugin { hint, .. } => hint.clone(),
            Error::InUse { .. } => {
                Some("remove the dependents first, or pass --force where offered".into())
            }
            Error::Db(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                Some("another drivers process holds the store for too long; retry".into())
            }
            _ => None,
        }
    }
}

/// Attaches the operation and path to an `io::Error` at the call site.
pub trait IoContext<T> {
    /// Wraps the error as [`Error::Io`].
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T, E: Into<std::io::Error>> IoContext<T> for std::result::Result<T, E> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::Io {
            op,
            path: path.into(),
            source: e.into(),
        })
    }
}
