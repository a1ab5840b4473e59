//! The one error type backends return, classified by [`ErrorKind`].

use std::path::PathBuf;

/// Result alias used by every backend.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by backends.
///
/// Display strings are lowercase, carry no trailing period and never repeat
/// their source; the CLI joins the chain with `: `.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A layer or other object the caller named does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// What kind of object, e.g. "layer".
        what: &'static str,
        /// Its identifier.
        id: String,
    },

    /// An object with that identifier already exists.
    #[error("{what} {id} already exists")]
    AlreadyExists {
        /// What kind of object, e.g. "layer".
        what: &'static str,
        /// Its identifier.
        id: String,
    },

    /// The object is still needed by something else.
    #[error("{what} {id} is in use by {by}")]
    InUse {
        /// What kind of object.
        what: &'static str,
        /// Its identifier.
        id: String,
        /// Who uses it, e.g. "layer 3f2a (child)".
        by: String,
    },

    /// A caller-supplied value is wrong.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field or argument at fault.
        field: &'static str,
        /// Why it is wrong.
        reason: String,
    },

    /// The backend cannot work on this machine (no btrfs under the path, no
    /// zfs tools, not root, kernel too old).
    #[error("backend {backend} is not usable here: {reason}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// Why not.
        reason: String,
        /// What the user can do about it.
        hint: Option<String>,
    },

    /// An optional ability the backend does not have here.
    #[error("backend {backend} does not support {feature}: {reason}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// The ability, e.g. "quota".
        feature: &'static str,
        /// Why not, e.g. "the root is on ext4, which has no project quotas".
        reason: String,
    },

    /// A limit of the backend or the kernel would be exceeded.
    #[error("{what}: {reason}")]
    Limit {
        /// What hit the limit, e.g. "overlay mount of layer 3f2a".
        what: String,
        /// The limit and why it exists.
        reason: String,
        /// What the user can do about it.
        hint: Option<String>,
    },

    /// A filesystem call failed; `op` is a verb phrase such as "create directory".
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

    /// A helper program (`zfs`, `mkfs.btrfs`, `losetup`) exited non-zero.
    #[error("`{program}` failed with {status}: {stderr}")]
    Command {
        /// The program and its arguments as run.
        program: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// Its last line of standard error.
        stderr: String,
    },
}

/// Coarse classes callers branch on, after containerd's errdefs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object does not exist.
    NotFound,
    /// The object exists already.
    AlreadyExists,
    /// Something else still needs the object.
    InUse,
    /// The object is in the wrong state for the call (e.g. committing a
    /// layer that is not writable).
    FailedPrecondition,
    /// A caller-supplied value is wrong.
    Invalid,
    /// The backend cannot work here.
    Unavailable,
    /// The backend lacks an optional ability.
    Unsupported,
    /// A backend or kernel limit.
    Limit,
    /// Everything else: I/O and helper failures.
    Internal,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::InUse { .. } => ErrorKind::InUse,
            Error::Invalid { .. } => ErrorKind::Invalid,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Limit { .. } => ErrorKind::Limit,
            Error::Io { .. } | Error::Command { .. } => ErrorKind::Internal,
        }
    }

    /// A next step for the user, printed by the CLI under `error: …`.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Unavailable { hint, .. } | Error::Limit { hint, .. } => hint.as_deref(),
            Error::InUse { .. } => {
                Some("remove the dependents first, or pass --force where offered")
            }
            _ => None,
        }
    }

    /// The OS error number, when this error wraps one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Attaches the operation and path to an `io::Error` at the call site.
///
/// ```
/// use drivers_api::IoContext;
/// let e = std::fs::metadata("/does/not/exist").ctx("stat", "/does/not/exist").unwrap_err();
/// assert_eq!(e.to_string(), "failed to stat /does/not/exist");
/// ```
pub trait IoContext<T> {
    /// Wraps the error as [`Error::Io`].
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

// Generic over the error so rustix's `Errno` works too without making rustix
// part of this crate's API.
impl<T, E: Into<std::io::Error>> IoContext<T> for std::result::Result<T, E> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::Io {
            op,
            path: path.into(),
            source: e.into(),
        })
    }
}
