//! Changes found by comparing two full trees (`DiffSource::Compare`).
//!
//! Both trees are walked together one directory level at a time, entries
//! sorted by name bytes, never following a symlink. An entry differs when
//! anything an OCI layer carries differs (type, permission bits with
//! setuid/setgid/sticky, owner, size, mtime to the nanosecond, device
//! number, symlink target, xattrs). File contents are read only when all of
//! that is equal and both mtimes are whole seconds: applying a layer tar
//! writes whole-second mtimes, so a rewrite whose mtime was then restored
//! with `touch -d` would otherwise go unnoticed, while any rewrite of a file
//! with a sub-second mtime changes it.
//!
//! For `DiffSource::Snapshot` the same walk takes a set of possibly changed
//! inode numbers and skips an entry present in both trees as the same
//! inode number, on each tree's own device, outside that set: the
//! producer promises such an entry, subtree included, is identical on both
//! sides, so skipping it cannot change what is reported.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use drivers_fs::{file_type, lstat_at, open_dir, read_dir_sorted};
use rustix::fs::{FileType, Stat};

use crate::walk::{
    DirInfo, Emitter, Node, Sink, io_err, join, open_file, open_subdir, read_link, without_internal,
};
use crate::{ChangeKind, Result};

/// Bytes read at a time from each file when contents must be compared.
const CMP_CHUNK: usize = 128 * 1024;

/// Reports the changes of the tree `layer` against `parent` (the empty tree
/// if `None`) to `sink`; with `changed`, skips what the snapshot promise
/// (see the module doc) says is unchanged.
pub(crate) fn walk(
    layer: &Path,
    parent: Option<&Path>,
    changed: Option<&BTreeSet<u64>>,
    sink: &mut dyn Sink,
) -> Result<()> {
    let l = open_dir(layer).map_err(|e| io_err("open layer", layer, b"", e))?;
    let p = match parent {
        Some(p) => Some(open_dir(p).map_err(|e| io_err("open parent layer", p, b"", e))?),
        None => None,
    };
    let skip = match (changed, &p) {
        (Some(changed), Some(p)) => {
            let dev = |fd: BorrowedFd<'_>, root: &Path| {
                rustix::fs::fstat(fd)
                    .map(|st| st.st_dev)
                    .map_err(|e| io_err("stat", root, b"", e.into()))
            };
            Some(Unchanged {
                changed,
                layer_dev: dev(l.as_fd(), layer)?,
                parent_dev: dev(p.as_fd(), parent.unwrap_or(Path::new("")))?,
            })
        }
        _ => None,
    };
    let mut walk = Compare {
        em: Emitter::new(sink),
        layer,
        parent: parent.unwrap_or(Path::new("")),
        skip,
    };
    walk.dir(l.as_fd(), p.as_ref().map(|p| p.as_fd()), b"")
}

struct Compare<'a> {
    em: Emitter<'a>,
    layer: &'a Path,
    parent: &'a Path,
    /// For a snapshot: what may be skipped.
    skip: Option<Unchanged<'a>>,
}

/// The snapshot promise of `DiffSource::Snapshot`, with the devices of the
/// two tree roots (inode numbers mean something only on them).
struct Unchanged<'a> {
    changed: &'a BTreeSet<u64>,
    layer_dev: u64,
    parent_dev: u64,
}

impl Unchanged<'_> {
    /// Whether the layer entry `new` and the parent entry `old` of the same
    /// name are, by the promise, identical with everything below them.
    fn covers(&self, new: &Stat, old: &Stat) -> bool {
        new.st_ino == old.st_ino
            && new.st_dev == self.layer_dev
            && old.st_dev == self.parent_dev
            && !self.changed.contains(&new.st_ino)
    }
}

/// A layer entry with what comparing and exporting it needs.
struct Entry {
    st: Stat,
    xattrs: Vec<(std::ffi::OsString, Vec<u8>)>,
    target: Option<Vec<u8>>,
}

impl Compare<'_> {
    fn dir(
        &mut self,
        layer: BorrowedFd<'_>,
        parent: Option<BorrowedFd<'_>>,
        path: &[u8],
    ) -> Result<()> {
        let new =
            read_dir_sorted(layer).map_err(|e| io_err("read directory", self.layer, path, e))?;
        let old = match parent {
            Some(p) => {
                read_dir_sorted(p).map_err(|e| io_err("read directory", self.parent, path, e))?
            }
            None => Vec::new(),
        };
        // Deletions first: tar order puts whiteouts before their siblings.
        for (name, _) in &old {
            if new
                .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
                .is_err()
            {
                self.em.delete(&join(path, name.as_bytes()))?;
            }
        }
        for (name, _) in &new {
            self.child(layer, parent, path, name)?;
        }
        Ok(())
    }

    fn child(
        &mut self,
        layer: BorrowedFd<'_>,
        parent: Option<BorrowedFd<'_>>,
        dir: &[u8],
        name: &CStr,
    ) -> Result<()> {
        let path = join(dir, name.to_bytes());
        let Some(st) = lstat_at(layer, name).map_err(|e| io_err("stat", self.layer, &path, e))?
        else {
            return Ok(()); // removed while we walked
        };
        let old = match parent {
            Some(p) => lstat_at(p, name).map_err(|e| io_err("stat", self.parent, &path, e))?,
            None => None,
        };
        if let (Some(skip), Some(o)) = (&self.skip, &old)
            && skip.covers(&st, o)
        {
            return Ok(());
        }
        let new = self.load(layer, name, &path, st)?;
        let kind = match (parent, &old) {
            (Some(p), Some(o)) => self
                .differs(&new, o, layer, p, name, &path)?
                .then_some(ChangeKind::Modify),
            _ => Some(ChangeKind::Add),
        };
        if file_type(&new.st) != FileType::Directory {
            if let Some(kind) = kind {
                let node = Node {
                    path: &path,
                    st: &new.st,
                    xattrs: &new.xattrs,
                    target: new.target.as_deref(),
                    at: Some((layer, name)),
                };
                self.em.entry(&node, kind)?;
            }
            return Ok(());
        }
        let sub =
            open_subdir(layer, name).map_err(|e| io_err("open directory", self.layer, &path, e))?;
        // A directory that replaced a non-directory, or is new, has only additions below it.
        let old_sub = match (parent, &old) {
            (Some(p), Some(o)) if file_type(o) == FileType::Directory => Some(
                open_subdir(p, name)
                    .map_err(|e| io_err("open directory", self.parent, &path, e))?,
            ),
            _ => None,
        };
        self.em.enter_dir(
            DirInfo {
                path: path.clone(),
                st: new.st,
                xattrs: new.xattrs,
            },
            kind,
        )?;
        self.dir(sub.as_fd(), old_sub.as_ref().map(|o| o.as_fd()), &path)?;
        self.em.leave_dir();
        Ok(())
    }

    /// Xattrs and symlink target of a layer entry whose `lstat` is `st`.
    fn load(&self, dir: BorrowedFd<'_>, name: &CStr, path: &[u8], st: Stat) -> Result<Entry> {
        let xattrs = drivers_fs::xattr::list(dir, name)
            .map_err(|e| io_err("list xattrs of", self.layer, path, e))?;
        let target = match file_type(&st) {
            FileType::Symlink => {
                Some(read_link(dir, name).map_err(|e| io_err("read link", self.layer, path, e))?)
            }
            _ => None,
        };
        Ok(Entry {
            st,
            xattrs: without_internal(xattrs),
            target,
        })
    }

    /// Whether the layer entry `new` differs from the parent's `old` (both
    /// named `name`); cheapest checks first.
    fn differs(
        &self,
        new: &Entry,
        old: &Stat,
        layer: BorrowedFd<'_>,
        parent: BorrowedFd<'_>,
        name: &CStr,
        path: &[u8],
    ) -> Result<bool> {
        let st = &new.st;
        let is_dir = file_type(st) == FileType::Directory;
        // A directory's size says how its entries are stored, not what they are.
        if st.st_mode != old.st_mode
            || st.st_uid != old.st_uid
            || st.st_gid != old.st_gid
            || st.st_rdev != old.st_rdev
            || (!is_dir && st.st_size != old.st_size)
            || st.st_mtime != old.st_mtime
            || st.st_mtime_nsec != old.st_mtime_nsec
        {
            return Ok(true);
        }
        if let Some(target) = &new.target {
            let old_target =
                read_link(parent, name).map_err(|e| io_err("read link", self.parent, path, e))?;
            if *target != old_target {
                return Ok(true);
            }
        }
        let old_x = drivers_fs::xattr::list(parent, name)
            .map_err(|e| io_err("list xattrs of", self.parent, path, e))?;
        if without_internal(old_x) != new.xattrs {
            return Ok(true);
        }
        if file_type(st) == FileType::RegularFile && st.st_mtime_nsec == 0 && old.st_mtime_nsec == 0
        {
            return self.contents_differ(layer, parent, name, path);
        }
        Ok(false)
    }

    fn contents_differ(
        &self,
        layer: BorrowedFd<'_>,
        parent: BorrowedFd<'_>,
        name: &CStr,
        path: &[u8],
    ) -> Result<bool> {
        let mut a = open_file(layer, name).map_err(|e| io_err("open", self.layer, path, e))?;
        let mut b = open_file(parent, name).map_err(|e| io_err("open", self.parent, path, e))?;
        let (mut x, mut y) = (vec![0u8; CMP_CHUNK], vec![0u8; CMP_CHUNK]);
        loop {
            let n = read_full(&mut a, &mut x).map_err(|e| io_err("read", self.layer, path, e))?;
            let m = read_full(&mut b, &mut y).map_err(|e| io_err("read", self.parent, path, e))?;
            if x[..n] != y[..m] {
                return Ok(true);
            }
            if n < CMP_CHUNK {
                return Ok(false);
            }
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
