//! Whiteouts (`.wh.NAME`) and opaque markers (`DIR/.wh..wh..opq`).
//!
//! Both delete from *lower* layers only. What this layer's own entries
//! created survives, wherever the whiteout or marker stands in the tar, so a
//! marker behaves as if it came first (OCI image-spec, "Opaque Whiteout").
//!
//! - `Full`: the lower content is in the root and is removed ("pruned").
//! - `OverlayUpper`: the upper directory holds this layer only; lower
//!   content is hidden with a 0/0 character device (a whiteout) or
//!   `trusted.overlay.opaque=y` on a directory. Anything in the upper that
//!   stands for lower content (copied-up directories and hardlink targets,
//!   earlier whiteouts) is pruned like in `Full`.

use std::ffi::CStr;
use std::ops::Bound;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, Mode};
use rustix::io::Errno;

use drivers_fs::{file_type, lstat_at};

use crate::apply::{Applier, DirState, split};
use crate::error::{Error, Problem};
use crate::lower::{self, Lookup};

const DIR_FLAGS: rustix::fs::OFlags = rustix::fs::OFlags::DIRECTORY
    .union(rustix::fs::OFlags::RDONLY)
    .union(rustix::fs::OFlags::NOFOLLOW)
    .union(rustix::fs::OFlags::CLOEXEC);

impl Applier<'_> {
    /// `.wh.NAME`: deletes `path` from the lower layers. Whiteouts of
    /// missing paths do nothing; a whiteout through a symlink is refused.
    pub(crate) fn whiteout(&mut self, path: &[u8]) -> Result<(), Error> {
        let (parent, name) = split(path);
        let name = self.cname(name)?;
        let pfd = match self.find_dir(parent)? {
            DirState::Open(fd) => Some(fd),
            DirState::Missing => None,
            // Below a non-directory nothing can be deleted, nor shown from a
            // lower layer.
            DirState::NotDir => return Ok(()),
            DirState::Symlink => return Err(Error::entry(&self.name, Problem::ThroughSymlink)),
        };
        if self.lowers.is_none() {
            if let Some(pfd) = pfd {
                self.prune(pfd.as_fd(), &name, path)?;
            }
            return Ok(());
        }
        let pfd = match pfd {
            Some(pfd) => {
                match self.prune(pfd.as_fd(), &name, path)? {
                    Some(FileType::Directory) => return self.opaque_at(pfd.as_fd(), &name),
                    Some(_) => return Ok(()),
                    None => {}
                }
                if !self.lower_has(path)? {
                    return Ok(());
                }
                pfd
            }
            None => {
                // Nothing of the parent in the upper yet: the lower decides,
                // and a lower symlink on the way is refused as in `Full`.
                match self.visible_in_lower(path)? {
                    Lookup::Found { .. } => {}
                    Lookup::Blocked { st } if file_type(&st) == FileType::Symlink => {
                        return Err(Error::entry(&self.name, Problem::ThroughSymlink));
                    }
                    // Never leave stray whiteouts for what no lower has.
                    Lookup::Blocked { .. } | Lookup::Absent => return Ok(()),
                }
                self.parent_fd(parent)?
                    .try_clone()
                    .map_err(|e| Error::io(&self.name, "duplicate a descriptor", e))?
            }
        };
        self.make_whiteout(pfd.as_fd(), &name)
    }

    /// `DIR/.wh..wh..opq`: hides every child of `dir` this layer did not
    /// create.
    pub(crate) fn opaque(&mut self, dir: &[u8]) -> Result<(), Error> {
        if dir.is_empty() {
            return self.opaque_root();
        }
        let (parent, name) = split(dir);
        let pfd = self.parent_fd(parent)?;
        let name = self.cname(name)?;
        let st = lstat_at(pfd.as_fd(), &name)
            .map_err(|e| Error::io(&self.name, "inspect the opaque directory", e))?;
        let overlay = self.lowers.is_some();
        match st {
            Some(st) if file_type(&st) == FileType::Directory => {
                let fd = rustix::fs::openat(pfd.as_fd(), &*name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| Error::io(&self.name, "open the opaque directory", e))?;
                self.prune_children(fd.as_fd(), dir)?;
                if overlay {
                    self.mark_opaque(fd.as_fd())?;
                }
            }
            Some(st) if file_type(&st) == FileType::Symlink => {
                return Err(Error::entry(&self.name, Problem::ThroughSymlink));
            }
            // A non-directory has no lower children to hide; a directory
            // entry later in the tar replaces it empty.
            Some(st) if !(overlay && lower::is_whiteout(&st)) => {}
            _ => {
                if overlay && st.is_none() {
                    match self.visible_in_lower(dir)? {
                        Lookup::Found { st, .. } | Lookup::Blocked { st }
                            if file_type(&st) == FileType::Symlink =>
                        {
                            return Err(Error::entry(&self.name, Problem::ThroughSymlink));
                        }
                        Lookup::Found { st, .. } if file_type(&st) != FileType::Directory => {
                            return Ok(());
                        }
                        Lookup::Blocked { .. } => return Ok(()),
                        _ => {}
                    }
                }
                // Creates the directory like any implied parent (copy-up in an
                // upper; over a whiteout, fresh and hiding the lower).
                let fd = self.parent_fd(dir)?;
                if overlay {
                    self.mark_opaque(fd.as_fd())?;
                }
            }
        }
        Ok(())
    }

    /// An opaque marker at the layer root. overlayfs never treats a root as
    /// opaque, so in an upper each visible lower child gets its own
    /// whiteout, or, if this layer keeps a directory there, the opaque mark.
    fn opaque_root(&mut self) -> Result<(), Error> {
        let root = self.dup_root()?;
        self.prune_children(root.as_fd(), b"")?;
        let Some(lowers) = &self.lowers else {
            return Ok(());
        };
        let mut names = lowers
            .root_names()
            .map_err(|e| Error::io(&self.name, "list the lower layers' roots", e))?;
        names.sort();
        names.dedup();
        for name in names {
            let cname = self.cname(&name)?;
            let lookup = self.lowers.as_ref().map(|l| l.lookup(&name, 0)).transpose();
            let lookup =
                lookup.map_err(|e| Error::io(&self.name, "look up the lower layers", e))?;
            if !matches!(lookup, Some(Lookup::Found { .. })) {
                continue;
            }
            match lstat_at(root.as_fd(), &cname)
                .map_err(|e| Error::io(&self.name, "inspect the root", e))?
            {
                None => self.make_whiteout(root.as_fd(), &cname)?,
                Some(st) if file_type(&st) == FileType::Directory => {
                    self.opaque_at(root.as_fd(), &cname)?
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Removes `name` in `dir` (at `path`) unless this layer created it,
    /// keeping what this layer created below it. Returns the type of what
    /// remains, if anything.
    fn prune(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &[u8],
    ) -> Result<Option<FileType>, Error> {
        let io = |s: &Self, e| Error::io(&s.name, "prune the whited-out path", e);
        let Some(st) = lstat_at(dir, name).map_err(|e| io(self, e))? else {
            return Ok(None);
        };
        let ty = file_type(&st);
        let created = self.created.contains(path);
        if ty != FileType::Directory {
            if created {
                return Ok(Some(ty));
            }
            self.remove(dir, name)?;
            return Ok(None);
        }
        if !created && !self.has_created_below(path) {
            self.remove(dir, name)?;
            return Ok(None);
        }
        let sub = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| io(self, e.into()))?;
        self.prune_children(sub.as_fd(), path)?;
        Ok(Some(FileType::Directory))
    }

    /// Prunes every child of the open directory `dir` at `path`.
    fn prune_children(&mut self, dir: BorrowedFd<'_>, path: &[u8]) -> Result<(), Error> {
        let io = |s: &Self, e| Error::io(&s.name, "prune the opaque directory", e);
        if !self.has_created_below(path) {
            self.forget_parent();
            return drivers_fs::clear_dir(dir).map_err(|e| io(self, e));
        }
        let mut child = path.to_vec();
        for (name, _) in drivers_fs::read_dir_sorted(dir).map_err(|e| io(self, e))? {
            child.truncate(path.len());
            if !path.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(name.to_bytes());
            self.prune(dir, &name, &child)?;
        }
        Ok(())
    }

    /// Whether this layer created anything strictly below `path`.
    fn has_created_below(&self, path: &[u8]) -> bool {
        if path.is_empty() {
            return !self.created.is_empty();
        }
        // Descendants sort between `path/` and `path0` ('0' follows '/').
        let mut lo = path.to_vec();
        lo.push(b'/');
        let mut hi = path.to_vec();
        hi.push(b'/' + 1);
        let range = (Bound::Included(&lo[..]), Bound::Excluded(&hi[..]));
        self.created.range::<[u8], _>(range).next().is_some()
    }

    /// What the merged lower shows at `path` through the upper: nothing if
    /// an upper ancestor is opaque or not a directory.
    pub(crate) fn visible_in_lower(&self, path: &[u8]) -> Result<Lookup, Error> {
        let Some(lowers) = &self.lowers else {
            return Ok(Lookup::Absent);
        };
        let io = |e: std::io::Error| Error::io(&self.name, "look up the lower layers", e);
        let (ancestors, _) = split(path);
        let mut dir: OwnedFd = self.dup_root()?;
        let mut upper_dirs = 0;
        if !ancestors.is_empty() {
            for comp in ancestors.split(|&b| b == b'/') {
                let name = self.cname(comp)?;
                match rustix::fs::openat(dir.as_fd(), &*name, DIR_FLAGS, Mode::empty()) {
                    Ok(sub) if lower::is_opaque(sub.as_fd()).map_err(io)? => {
                        return Ok(Lookup::Absent);
                    }
                    Ok(sub) => dir = sub,
                    Err(Errno::NOENT) => break,
                    Err(Errno::NOTDIR | Errno::LOOP) => return Ok(Lookup::Absent),
                    Err(e) => return Err(io(e.into())),
                }
                upper_dirs += 1;
            }
        }
        lowers.lookup(path, upper_dirs).map_err(io)
    }

    fn lower_has(&self, path: &[u8]) -> Result<bool, Error> {
        Ok(matches!(self.visible_in_lower(path)?, Lookup::Found { .. }))
    }

    fn make_whiteout(&mut self, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Error> {
        rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0)
            .map_err(|e| Error::io(&self.name, "create a whiteout", e))
    }

    fn opaque_at(&mut self, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Error> {
        let fd = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| Error::io(&self.name, "open directory", e))?;
        self.mark_opaque(fd.as_fd())
    }

    fn mark_opaque(&self, dir: BorrowedFd<'_>) -> Result<(), Error> {
        lower::set_opaque(dir).map_err(|e| Error::io(&self.name, "mark a directory opaque", e))
    }
}
