//! The one error type of this crate, classified by [`ErrorKind`].

use std::io;
use std::path::PathBuf;

pub use drivers_api::ErrorKind;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a layer's changes could not be computed or written.
///
/// Display strings are lowercase, carry no trailing period and never repeat
/// their source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the layer, its parent or the lower layers failed.
    #[error("failed to {op} {}", .path.display())]
    Io {
        /// What was being done, e.g. "read directory".
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The caller's writer refused the tar stream.
    #[error("failed to write the layer tar")]
    Write(#[source] io::Error),

    /// The layer uses a storage feature whose meaning a tar cannot carry,
    /// or the source kind is unknown to this version.
    #[error("{} cannot be diffed: {reason}", .path.display())]
    Unsupported {
        /// The entry or layer at fault.
        path: PathBuf,
        /// What it uses, e.g. "it has trusted.overlay.redirect (a renamed
        /// directory)".
        reason: String,
    },

    /// An entry that an OCI layer tar cannot represent.
    #[error("{} cannot be stored in a layer tar: {reason}", .path.display())]
    Unrepresentable {
        /// The entry.
        path: PathBuf,
        /// Why not.
        reason: &'static str,
    },

    /// A file changed size while its data was being written.
    #[error("{} changed while the layer tar was written", .path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::Write(_) => ErrorKind::Internal,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Unrepresentable { .. } => ErrorKind::Invalid,
            Error::Changed { .. } => ErrorKind::FailedPrecondition,
        }
    }

    /// A next step for the user, printed by the CLI under `error: …`.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Unsupported { .. } => Some(
                "mount overlay layers with redirect_dir=off and metacopy=off so that their upper directory is the whole diff",
            ),
            Error::Changed { .. } => {
                Some("stop the container or unmount the layer before exporting it")
            }
            _ => None,
        }
    }
}
