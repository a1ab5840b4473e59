//! Changes read from an overlayfs upper directory
//! (`DiffSource::OverlayUpper`).
//!
//! Every entry of the upper directory is a change: a whiteout is a
//! deletion, anything else a modification if the merged lower layers show
//! the path and an addition if not. An opaque directory (`overlay.opaque=y`)
//! hides what the lower layers have below it; the tar carries that as an
//! opaque marker, while the change list names each hidden lower child, as a
//! tree comparison would.
//!
//! A layer with `overlay.redirect` (a directory renamed with
//! `redirect_dir=on`) or `overlay.metacopy` (metadata-only copy-up) is
//! refused: their contents live under another path or in another layer, so
//! the upper directory alone no longer describes the change.

use std::ffi::{CStr, CString, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use drivers_fs::lowerview::{Marks, MergedDir, is_whiteout};
use drivers_fs::{file_type, lstat_at, open_dir, read_dir_sorted};
use rustix::fs::{FileType, Stat};

use crate::walk::{
    DirInfo, Emitter, Node, Sink, abs, io_err, join, open_subdir, read_link, without_internal,
};
use crate::{ChangeKind, Error, Result};

/// Reports the changes recorded in `upper` over `lower` (nearest first).
pub(crate) fn walk(upper: &Path, lower: &[PathBuf], sink: &mut dyn Sink) -> Result<()> {
    let u = open_dir(upper).map_err(|e| io_err("open upper directory", upper, b"", e))?;
    let layers = lower
        .iter()
        .map(|p| open_dir(p).map_err(|e| io_err("open lower layer", p, b"", e)));
    let l = MergedDir::from_layers(layers.collect::<Result<_>>()?);
    let marks = Marks::of(u.as_fd(), c".").map_err(|e| io_err("list xattrs of", upper, b"", e))?;
    let mut walk = Overlay {
        em: Emitter::new(sink),
        upper,
    };
    if marks.opaque {
        walk.em.opaque(b"")?;
    }
    walk.dir(u.as_fd(), &l, marks.opaque, b"")
}

struct Overlay<'a> {
    em: Emitter<'a>,
    upper: &'a Path,
}

/// An upper entry that is not a whiteout.
struct Entry {
    name: CString,
    st: Stat,
    xattrs: Vec<(OsString, Vec<u8>)>,
    opaque: bool,
}

impl Overlay<'_> {
    /// Walks upper directory `dir` at `path`; `lower` is what the lower
    /// layers show there, `hides_lower` whether this directory or one above
    /// it is opaque.
    fn dir(
        &mut self,
        dir: BorrowedFd<'_>,
        lower: &MergedDir,
        hides_lower: bool,
        path: &[u8],
    ) -> Result<()> {
        let names =
            read_dir_sorted(dir).map_err(|e| io_err("read directory", self.upper, path, e))?;
        let mut rest = Vec::with_capacity(names.len());
        for (name, _) in &names {
            let child = join(path, name.as_bytes());
            let Some(entry) = self.load(dir, name, &child)? else {
                continue;
            };
            match entry {
                Loaded::Whiteout => self.em.delete(&child)?,
                Loaded::Entry(e) => rest.push(e),
            }
        }
        if hides_lower && self.em.wants_hidden() {
            let shown = lower
                .entries()
                .map_err(|e| io_err("list lower layers at", self.upper, path, e))?;
            for (name, _) in shown {
                if names
                    .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
                    .is_err()
                {
                    self.em.hidden(&join(path, name.as_bytes()))?;
                }
            }
        }
        for e in rest {
            self.child(dir, lower, hides_lower, path, e)?;
        }
        Ok(())
    }

    fn child(
        &mut self,
        dir: BorrowedFd<'_>,
        lower: &MergedDir,
        hides_lower: bool,
        parent: &[u8],
        e: Entry,
    ) -> Result<()> {
        let path = join(parent, e.name.as_bytes());
        let in_lower = lower
            .lookup(&e.name)
            .map_err(|err| io_err("look up lower layers for", self.upper, &path, err))?;
        let kind = if in_lower.is_some() {
            ChangeKind::Modify
        } else {
            ChangeKind::Add
        };
        if file_type(&e.st) != FileType::Directory {
            let target = match file_type(&e.st) {
                FileType::Symlink => Some(
                    read_link(dir, &e.name)
                        .map_err(|err| io_err("read link", self.upper, &path, err))?,
                ),
                _ => None,
            };
            let node = Node {
                path: &path,
                st: &e.st,
                xattrs: &e.xattrs,
                target: target.as_deref(),
                at: Some((dir, &e.name)),
            };
            return self.em.entry(&node, kind);
        }
        let sub = open_subdir(dir, &e.name)
            .map_err(|err| io_err("open directory", self.upper, &path, err))?;
        let sub_lower = lower.child(&e.name).map_err(|err| match err.kind() {
            std::io::ErrorKind::Unsupported => Error::Unsupported {
                path: abs(self.upper, &path),
                reason: err.to_string(),
            },
            _ => io_err("look up lower layers for", self.upper, &path, err),
        })?;
        self.em.enter_dir(
            DirInfo {
                path: path.clone(),
                st: e.st,
                xattrs: e.xattrs,
            },
            Some(kind),
        )?;
        if e.opaque {
            self.em.opaque(&path)?;
        }
        self.dir(sub.as_fd(), &sub_lower, hides_lower || e.opaque, &path)?;
        self.em.leave_dir();
        Ok(())
    }

    /// Stats `name` and reads its marks; refuses redirects and metacopy.
    fn load(&self, dir: BorrowedFd<'_>, name: &CStr, path: &[u8]) -> Result<Option<Loaded>> {
        let Some(st) = lstat_at(dir, name).map_err(|e| io_err("stat", self.upper, path, e))? else {
            return Ok(None); // removed while we walked
        };
        let xattrs = drivers_fs::xattr::list(dir, name)
            .map_err(|e| io_err("list xattrs of", self.upper, path, e))?;
        let marks = Marks::from_xattrs(&xattrs);
        let refused = if marks.redirect {
            Some("it has overlay.redirect (a directory renamed with redirect_dir=on)")
        } else if marks.metacopy {
            Some("it has overlay.metacopy (its data is still in a lower layer)")
        } else {
            None
        };
        if let Some(reason) = refused {
            return Err(Error::Unsupported {
                path: abs(self.upper, path),
                reason: reason.to_owned(),
            });
        }
        if is_whiteout(&st, &marks) {
            return Ok(Some(Loaded::Whiteout));
        }
        let entry = Entry {
            name: name.to_owned(),
            st,
            xattrs: without_internal(xattrs),
            opaque: marks.opaque,
        };
        Ok(Some(Loaded::Entry(entry)))
    }
}

enum Loaded {
    Whiteout,
    Entry(Entry),
}
