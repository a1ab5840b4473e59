//! The one error type of this crate, classified by [`Error::kind`].

use std::fmt;
use std::io;
use std::path::PathBuf;

use drivers_api::ErrorKind;

use crate::Compression;

/// Errors of [`apply`](crate::apply).
///
/// Display strings are lowercase, fit on one line (entry paths are quoted
/// with non-printable and non-UTF-8 bytes escaped) and never repeat their
/// source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A caller-supplied option is malformed, e.g. an expected digest that
    /// is not `sha256:<64 hex>`.
    #[error("invalid {field}: {reason}")]
    InvalidOption {
        /// The option at fault.
        field: &'static str,
        /// Why it is wrong.
        reason: String,
    },

    /// One entry of the layer is hostile, malformed or unsupported.
    #[error("layer entry {path}: {problem}")]
    Entry {
        /// The entry's name as it appears in the tar, quoted and escaped.
        path: String,
        /// What is wrong with it.
        problem: Problem,
    },

    /// The tar structure itself is broken (bad header checksum, bad numeric
    /// field, oversized extended headers).
    #[error("layer tar is malformed after {after}: {reason}")]
    Malformed {
        /// `entry "<name>"` of the last good entry, or `its start`.
        after: String,
        /// What the tar parser found.
        reason: String,
    },

    /// The stream ends inside a tar header or its extended headers.
    #[error("layer tar is truncated after {after}: the stream ends inside a header")]
    Truncated {
        /// `entry "<name>"` of the last good entry, or `its start`.
        after: String,
    },

    /// The gzip or zstd stream is corrupt or cut short.
    #[error("{compression} stream of the layer is corrupt or truncated")]
    Corrupt {
        /// The compression in use.
        compression: Compression,
        /// What the decompressor reported.
        #[source]
        source: io::Error,
    },

    /// The computed digest differs from the expected one.
    #[error("layer {what} mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// `digest` (raw input) or `diff_id` (uncompressed tar).
        what: &'static str,
        /// The value the caller expected.
        expected: String,
        /// The value computed over the stream.
        actual: String,
    },

    /// Reading the caller's input failed.
    #[error("failed to read the layer stream")]
    Read {
        /// The error of the input reader.
        #[source]
        source: io::Error,
    },

    /// A filesystem call failed while applying an entry.
    #[error("layer entry {path}: failed to {op}")]
    Io {
        /// The entry's name, quoted and escaped.
        path: String,
        /// What was being done, a verb phrase.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The target filesystem refused an extended attribute the layer
    /// carries (e.g. `user.*` on ramfs); the layer cannot be stored there
    /// faithfully, so it is refused rather than stored without it.
    #[error("layer entry {path}: cannot set xattr {key}")]
    Xattr {
        /// The entry's name, quoted and escaped.
        path: String,
        /// The attribute's name, escaped.
        key: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A filesystem call on the target root itself failed.
    #[error("failed to {op} {}", .path.display())]
    Target {
        /// What was being done, a verb phrase.
        op: &'static str,
        /// The directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The class of this error: hostile or malformed input is
    /// [`ErrorKind::Invalid`], failures of the machine are
    /// [`ErrorKind::Internal`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidOption { .. }
            | Error::Entry { .. }
            | Error::Malformed { .. }
            | Error::Truncated { .. }
            | Error::Corrupt { .. }
            | Error::DigestMismatch { .. } => ErrorKind::Invalid,
            Error::Xattr { source, .. }
                if source.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) =>
            {
                ErrorKind::Unsupported
            }
            Error::Read { .. } | Error::Io { .. } | Error::Target { .. } | Error::Xattr { .. } => {
                ErrorKind::Internal
            }
        }
    }

    /// The refusal reason when this error is about one entry.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Entry { problem, .. } => Some(problem),
            _ => None,
        }
    }

    pub(crate) fn entry(path: &[u8], problem: Problem) -> Error {
        Error::Entry {
            path: quote(path),
            problem,
        }
    }

    pub(crate) fn xattr(path: &[u8], key: &[u8], source: impl Into<io::Error>) -> Error {
        Error::Xattr {
            path: quote(path),
            key: String::from_utf8_lossy(key).escape_debug().to_string(),
            source: source.into(),
        }
    }

    pub(crate) fn io(path: &[u8], op: &'static str, source: impl Into<io::Error>) -> Error {
        Error::Io {
            path: quote(path),
            op,
            source: source.into(),
        }
    }
}

/// Why an entry was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A `..` component.
    ClimbsOut,
    /// A leading `/`.
    Absolute,
    /// A NUL byte inside the name.
    NulByte,
    /// A component over 255 bytes or a path over 4095 bytes: no syscall
    /// could address it.
    NameTooLong,
    /// A parent component is a symlink (planted by this or a lower layer).
    ThroughSymlink,
    /// A parent component is neither a directory nor a symlink.
    ThroughNonDirectory,
    /// `.wh.` alone, or a whiteout of `.` or `..`.
    InvalidWhiteout,
    /// A non-directory entry for the layer root itself.
    ReplacesRoot,
    /// The hardlink target has a `..` component.
    LinkClimbsOut,
    /// The hardlink target is absolute.
    LinkAbsolute,
    /// The hardlink target is empty, names the root, holds a NUL byte or is
    /// too long.
    LinkInvalid,
    /// A component of the hardlink target is a symlink.
    LinkThroughSymlink,
    /// The hardlink target does not exist (or was deleted).
    LinkMissing,
    /// The hardlink target is a directory.
    LinkToDirectory,
    /// A symlink with an empty target or a NUL byte in it.
    BadSymlinkTarget,
    /// The stream holds fewer data bytes than the header promises.
    Truncated {
        /// Bytes the header promises.
        expected: u64,
        /// Bytes the stream delivered.
        actual: u64,
    },
    /// An entry type this crate does not apply (e.g. GNU volume headers).
    UnsupportedType(u8),
    /// A uid or gid that does not fit a Linux id.
    IdOutOfRange(u64),
    /// A header field that does not parse.
    BadHeader(String),
    /// A malformed PAX record.
    BadPax(&'static str),
    /// A malformed or inconsistent sparse map.
    BadSparse(&'static str),
    /// A character device 0/0, which an overlayfs upper directory can only
    /// read as a whiteout.
    WhiteoutDevice,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::ClimbsOut => f.write_str("path climbs out of the layer root"),
            Problem::Absolute => f.write_str("absolute path"),
            Problem::NulByte => f.write_str("name contains a nul byte"),
            Problem::NameTooLong => f.write_str("name too long"),
            Problem::ThroughSymlink => f.write_str("path goes through a symlink"),
            Problem::ThroughNonDirectory => f.write_str("path goes through a non-directory"),
            Problem::InvalidWhiteout => f.write_str("invalid whiteout name"),
            Problem::ReplacesRoot => f.write_str("the layer root can only be a directory"),
            Problem::LinkClimbsOut => f.write_str("hardlink target climbs out of the layer root"),
            Problem::LinkAbsolute => f.write_str("hardlink target is an absolute path"),
            Problem::LinkInvalid => f.write_str("hardlink target is not a valid name"),
            Problem::LinkThroughSymlink => f.write_str("hardlink target goes through a symlink"),
            Problem::LinkMissing => f.write_str("hardlink target does not exist"),
            Problem::LinkToDirectory => f.write_str("hardlink target is a directory"),
            Problem::BadSymlinkTarget => {
                f.write_str("symlink target is empty or contains a nul byte")
            }
            Problem::Truncated { expected, actual } => {
                write!(
                    f,
                    "data is truncated: the header promises {expected} bytes, the stream has {actual}"
                )
            }
            Problem::UnsupportedType(t) => write!(f, "unsupported entry type {:?}", char::from(*t)),
            Problem::IdOutOfRange(id) => write!(f, "owner id {id} out of range"),
            Problem::BadHeader(why) => write!(f, "malformed header: {why}"),
            Problem::BadPax(why) => write!(f, "malformed pax record: {why}"),
            Problem::BadSparse(why) => write!(f, "malformed sparse map: {why}"),
            Problem::WhiteoutDevice => {
                f.write_str("a character device 0/0 cannot be stored in an overlay upper directory")
            }
        }
    }
}

/// Quotes a byte name for messages: `"caf\xe9"`. Valid UTF-8 is kept,
/// control characters and quotes are escaped, other bytes become `\xNN`, so
/// a hostile name can neither break the line nor hide its bytes.
pub(crate) fn quote(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            out.extend(c.escape_debug());
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names in messages stay on one line and show every byte.
    #[test]
    fn quoting() {
        assert_eq!(quote(b"a/../../etc/x"), r#""a/../../etc/x""#);
        assert_eq!(quote(b"caf\xe9\n\"x"), r#""caf\xe9\n\"x""#);
        assert_eq!(quote("ünï".as_bytes()), "\"ünï\"");
    }

    /// The example message of the contract, and the kind split.
    #[test]
    fn messages_and_kinds() {
        let e = Error::entry(b"a/../../etc/x", Problem::ClimbsOut);
        assert_eq!(
            e.to_string(),
            r#"layer entry "a/../../etc/x": path climbs out of the layer root"#
        );
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = Error::io(b"f", "write data", io::Error::from_raw_os_error(28));
        assert_eq!(e.to_string(), r#"layer entry "f": failed to write data"#);
        assert_eq!(e.kind(), ErrorKind::Internal);
    }
}
