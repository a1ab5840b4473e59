//! What both change finders report, and the ordering rule they share.
//!
//! A finder ([`crate::compare`], [`crate::overlay`]) walks the layer one
//! directory at a time and reports, in tar order, through an [`Emitter`]:
//! for each directory first the deletions in it, then its entries by name,
//! recursing into a subdirectory right after the subdirectory itself. The
//! emitter holds back unchanged directories until something below them
//! changes, so that every change is preceded by all its ancestors (moby's
//! `Changes` reports such a directory as modified; a tar needs its entry so
//! importers never invent parent permissions) and unchanged subtrees leave no
//! trace.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, Stat};

use crate::{ChangeKind, Error, Result};

/// One entry of the layer as the sinks see it.
pub(crate) struct Node<'a> {
    /// The path from the layer root, `/a/b`, as bytes.
    pub path: &'a [u8],
    /// Its `lstat`.
    pub st: &'a Stat,
    /// Its extended attributes minus storage-internal ones, sorted by name.
    pub xattrs: &'a [(OsString, Vec<u8>)],
    /// The target, for a symlink.
    pub target: Option<&'a [u8]>,
    /// Where a regular file's data can be opened: its directory and name.
    pub at: Option<(BorrowedFd<'a>, &'a CStr)>,
}

/// Receives what a finder reports, in tar order.
pub(crate) trait Sink {
    /// An entry that is in the layer. `kind` is `None` for a directory that
    /// did not change itself but has changes below it.
    fn entry(&mut self, node: &Node<'_>, kind: Option<ChangeKind>) -> Result<()>;

    /// `path` was deleted: the topmost deleted path only, never its
    /// children.
    fn delete(&mut self, path: &[u8]) -> Result<()>;

    /// The directory `path` (empty for the root) hides everything the lower
    /// layers have below it.
    fn opaque(&mut self, path: &[u8]) -> Result<()>;

    /// `path` of a lower layer is hidden by an opaque directory above it.
    /// Only called when [`Sink::wants_hidden`] says so, since listing the
    /// lower layers costs a directory read each.
    fn hidden(&mut self, path: &[u8]) -> Result<()>;

    /// Whether [`Sink::hidden`] is wanted.
    fn wants_hidden(&self) -> bool;
}

/// A directory the walk has entered; kept until it is known whether it must
/// be reported.
pub(crate) struct DirInfo {
    pub path: Vec<u8>,
    pub st: Stat,
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Forwards a finder's reports to a [`Sink`], inserting held-back ancestor
/// directories where needed.
pub(crate) struct Emitter<'s> {
    sink: &'s mut dyn Sink,
    /// One slot per directory entered below the root; `Some` while the
    /// directory is unchanged and not yet reported.
    pending: Vec<Option<DirInfo>>,
}

impl<'s> Emitter<'s> {
    pub fn new(sink: &'s mut dyn Sink) -> Self {
        Emitter {
            sink,
            pending: Vec::new(),
        }
    }

    pub fn wants_hidden(&self) -> bool {
        self.sink.wants_hidden()
    }

    /// Reports every held-back ancestor, outermost first.
    fn flush(&mut self) -> Result<()> {
        for slot in &mut self.pending {
            if let Some(dir) = slot.take() {
                let node = Node {
                    path: &dir.path,
                    st: &dir.st,
                    xattrs: &dir.xattrs,
                    target: None,
                    at: None,
                };
                self.sink.entry(&node, None)?;
            }
        }
        Ok(())
    }

    /// Enters a directory: reported now if it changed, else held back.
    pub fn enter_dir(&mut self, dir: DirInfo, kind: Option<ChangeKind>) -> Result<()> {
        if kind.is_some() {
            self.flush()?;
            let node = Node {
                path: &dir.path,
                st: &dir.st,
                xattrs: &dir.xattrs,
                target: None,
                at: None,
            };
            self.sink.entry(&node, kind)?;
            self.pending.push(None);
        } else {
            self.pending.push(Some(dir));
        }
        Ok(())
    }

    /// Leaves the directory entered last.
    pub fn leave_dir(&mut self) {
        self.pending.pop();
    }

    /// A changed non-directory.
    pub fn entry(&mut self, node: &Node<'_>, kind: ChangeKind) -> Result<()> {
        self.flush()?;
        self.sink.entry(node, Some(kind))
    }

    pub fn delete(&mut self, path: &[u8]) -> Result<()> {
        self.flush()?;
        self.sink.delete(path)
    }

    pub fn opaque(&mut self, path: &[u8]) -> Result<()> {
        self.flush()?;
        self.sink.opaque(path)
    }

    pub fn hidden(&mut self, path: &[u8]) -> Result<()> {
        self.flush()?;
        self.sink.hidden(path)
    }
}

/// `dir/name` in the `/a/b` form.
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// The absolute path of `rel` (the `/a/b` form) below `root`, for messages.
pub(crate) fn abs(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel.strip_prefix(b"/").unwrap_or(rel)))
}

/// Wraps an I/O error on `rel` below `root`.
pub(crate) fn io_err(op: &'static str, root: &Path, rel: &[u8], source: io::Error) -> Error {
    Error::Io {
        op,
        path: abs(root, rel),
        source,
    }
}

/// Drops storage-internal attributes (`trusted.overlay.*`, …) from an
/// attribute list: they belong to the storage, never to the image, so they
/// are neither compared nor exported.
pub(crate) fn without_internal(mut list: Vec<(OsString, Vec<u8>)>) -> Vec<(OsString, Vec<u8>)> {
    list.retain(|(k, _)| !drivers_fs::xattr::is_storage_internal(k.as_bytes()));
    list
}

/// Opens subdirectory `name` of `dir` without following a symlink.
pub(crate) fn open_subdir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

/// Opens a regular file for reading without following a symlink.
pub(crate) fn open_file(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// The target of symlink `name` in `dir`, as bytes.
pub(crate) fn read_link(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let target: CString = rustix::fs::readlinkat(dir, name, Vec::new())?;
    Ok(target.into_bytes())
}
