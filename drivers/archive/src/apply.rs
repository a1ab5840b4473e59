//! Applies parsed entries beneath the target root.
//!
//! Every parent directory is resolved beneath the root with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or created component by
//! component with `O_NOFOLLOW`), and the final component is acted on with
//! `*at` calls that never follow it: an existing entry is removed before a
//! new one is created with `O_EXCL`, so no write can land outside the root.

use std::collections::BTreeSet;
use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{
    AtFlags, Dev, FileType, Gid, Mode, OFlags, Stat, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use drivers_api::{ApplyFormat, ApplyTarget};
use drivers_fs::{file_type, lstat_at, xattr};

use crate::data::{self, COPY_BUFFER, DataCtx};
use crate::entry::{self, Kind, Parsed, Sparse};
use crate::error::{Error, Problem};
use crate::lower::{self, Lookup, Lowers};
use crate::stream::{Compression, Progress};

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A directory whose mtime is set once every entry is applied, because
/// adding or removing children changes it.
struct DirTime {
    path: Box<[u8]>,
    /// Guards against applying the time to a different directory that
    /// took the path after the recorded one was removed.
    ino: u64,
    mtime: Timespec,
}

/// One path component as a NUL-terminated string on the stack: names are
/// at most 255 bytes (Linux's NAME_MAX, checked when parsing), so naming an
/// entry to the kernel allocates nothing.
pub(crate) struct CName {
    buf: [u8; 256],
    len: usize,
}

impl CName {
    pub(crate) fn new(name: &[u8]) -> Result<CName, Problem> {
        if name.contains(&0) {
            return Err(Problem::NulByte);
        }
        let mut buf = [0u8; 256];
        buf.get_mut(..name.len())
            .ok_or(Problem::NameTooLong)?
            .copy_from_slice(name);
        Ok(CName {
            buf,
            len: name.len(),
        })
    }
}

impl std::ops::Deref for CName {
    type Target = CStr;

    fn deref(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.buf[..=self.len])
            .expect("no NUL inside, checked in CName::new")
    }
}

/// What is at a path that should be an existing directory.
pub(crate) enum DirState {
    Open(OwnedFd),
    Missing,
    /// The path or one of its ancestors is a symlink.
    Symlink,
    /// The path or one of its ancestors is neither directory nor symlink.
    NotDir,
}

/// The state of one layer application.
pub(crate) struct Applier<'p> {
    pub(crate) root: OwnedFd,
    /// `Some` for an overlayfs upper directory.
    pub(crate) lowers: Option<Lowers>,
    /// Paths this layer's entries created: whiteouts and opaque markers
    /// delete from lower layers only, so they keep these.
    pub(crate) created: BTreeSet<Vec<u8>>,
    /// The last parent directory resolved: entries come grouped by
    /// directory. Dropped whenever anything is removed, so it can never
    /// point at a directory that left the tree.
    parent: Option<(Vec<u8>, Rc<OwnedFd>)>,
    dir_times: Vec<DirTime>,
    buf: Vec<u8>,
    /// The current entry's name as found in the tar, for messages.
    pub(crate) name: Vec<u8>,
    progress: &'p Progress,
    compression: Compression,
    /// Entries applied (extension headers not counted).
    pub(crate) entries: u64,
    /// Apparent size of the regular files written.
    pub(crate) file_bytes: u64,
    /// Set from [`crate::ApplyOptions::drop_xattrs`].
    pub(crate) drop_xattrs: bool,
    /// Extended attributes left out because of `drop_xattrs`.
    pub(crate) xattrs_dropped: u64,
}

impl<'p> Applier<'p> {
    pub(crate) fn new(
        target: &ApplyTarget,
        progress: &'p Progress,
        compression: Compression,
    ) -> Result<Self, Error> {
        let root = drivers_fs::open_dir(&target.root).map_err(|source| Error::Target {
            op: "open the layer root",
            path: target.root.clone(),
            source,
        })?;
        let lowers = match &target.format {
            ApplyFormat::Full => None,
            ApplyFormat::OverlayUpper { lower } => Some(Lowers::new(lower.clone())),
        };
        Ok(Applier {
            root,
            lowers,
            created: BTreeSet::new(),
            parent: None,
            dir_times: Vec::new(),
            buf: vec![0; COPY_BUFFER],
            name: Vec::new(),
            progress,
            compression,
            entries: 0,
            file_bytes: 0,
            drop_xattrs: false,
            xattrs_dropped: 0,
        })
    }

    /// Applies one entry and checks that its data was read whole.
    pub(crate) fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Error> {
        self.entries += 1;
        let size = entry.size();
        let mut p = entry::parse(entry, &mut self.name)?;
        if self.drop_xattrs && !p.xattrs.is_empty() {
            self.xattrs_dropped += p.xattrs.len() as u64;
            tracing::debug!(entry = %String::from_utf8_lossy(&self.name), count = p.xattrs.len(), "xattrs dropped as configured");
            p.xattrs.clear();
        }
        let mut buf = std::mem::take(&mut self.buf);
        let consumed = self.dispatch(entry, &p, size, &mut buf);
        let checked =
            consumed.and_then(|consumed| self.ctx().finish(entry, &mut buf, consumed, size));
        self.buf = buf;
        checked?;
        if !p.path.is_empty() && !matches!(p.kind, Kind::Skip | Kind::Whiteout | Kind::Opaque) {
            self.created.insert(p.path);
        }
        Ok(())
    }

    fn ctx(&self) -> DataCtx<'_> {
        DataCtx {
            path: &self.name,
            progress: self.progress,
            compression: self.compression,
        }
    }

    /// Returns the data bytes consumed.
    fn dispatch<R: Read>(
        &mut self,
        entry: &mut R,
        p: &Parsed,
        size: u64,
        buf: &mut [u8],
    ) -> Result<u64, Error> {
        match &p.kind {
            Kind::Skip => return Ok(0),
            Kind::Whiteout => return self.whiteout(&p.path).map(|()| 0),
            Kind::Opaque => return self.opaque(&p.path).map(|()| 0),
            _ if p.path.is_empty() => return self.root_entry(p).map(|()| 0),
            _ => {}
        }
        let (parent, name) = split(&p.path);
        let pfd = self.parent_fd(parent)?;
        let pfd = pfd.as_fd();
        let name = self.cname(name)?;
        match &p.kind {
            Kind::Dir => self.dir(pfd, &name, p)?,
            Kind::File(sparse) => return self.file(entry, pfd, &name, p, sparse, (size, buf)),
            Kind::Symlink(target) => {
                self.create(pfd, &name, "create symlink", || {
                    rustix::fs::symlinkat(&target[..], pfd, &*name)
                })?;
                self.set_at_attrs(pfd, &name, p, false)?;
            }
            Kind::Hardlink(target) => self.hardlink(pfd, &name, target)?,
            Kind::Char(major, minor) => {
                if self.lowers.is_some() && (*major, *minor) == (0, 0) {
                    return Err(Error::entry(&self.name, Problem::WhiteoutDevice));
                }
                self.node(
                    pfd,
                    &name,
                    p,
                    FileType::CharacterDevice,
                    rustix::fs::makedev(*major, *minor),
                )?;
            }
            Kind::Block(major, minor) => self.node(
                pfd,
                &name,
                p,
                FileType::BlockDevice,
                rustix::fs::makedev(*major, *minor),
            )?,
            Kind::Fifo => self.node(pfd, &name, p, FileType::Fifo, 0)?,
            Kind::Skip | Kind::Whiteout | Kind::Opaque => unreachable!("handled above"),
        }
        Ok(0)
    }

    /// `name` (one path component) as a C string, on the stack.
    pub(crate) fn cname(&self, name: &[u8]) -> Result<CName, Error> {
        CName::new(name).map_err(|p| Error::entry(&self.name, p))
    }

    /// Drops the cached parent directory; called before any removal.
    pub(crate) fn forget_parent(&mut self) {
        self.parent = None;
    }

    /// Removes `name` in `dir`, recursively, never following symlinks.
    pub(crate) fn remove(&mut self, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Error> {
        self.forget_parent();
        drivers_fs::remove_all_at(dir, name)
            .map_err(|e| Error::io(&self.name, "remove the existing entry", e))
    }

    /// Runs `make`; if the name exists, removes what is there (the later
    /// entry wins; OCI: "otherwise unlink and recreate") and runs it again.
    fn create<T>(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        op: &'static str,
        mut make: impl FnMut() -> rustix::io::Result<T>,
    ) -> Result<T, Error> {
        match make() {
            Err(Errno::EXIST) => {
                self.remove(dir, name)?;
                make().map_err(|e| Error::io(&self.name, op, e))
            }
            r => r.map_err(|e| Error::io(&self.name, op, e)),
        }
    }

    /// The directory `parent` (relative to the root), created with its
    /// missing ancestors if needed.
    pub(crate) fn parent_fd(&mut self, parent: &[u8]) -> Result<Rc<OwnedFd>, Error> {
        if let Some((p, fd)) = &self.parent
            && p == parent
        {
            return Ok(fd.clone());
        }
        let fd = match drivers_fs::open_dir_beneath(self.root.as_fd(), bytes_path(parent)) {
            Ok(fd) => fd,
            Err(e) => match Errno::from_io_error(&e) {
                Some(Errno::NOENT | Errno::NOTDIR) => self.make_parents(parent)?,
                Some(Errno::LOOP) => return Err(Error::entry(&self.name, Problem::ThroughSymlink)),
                Some(Errno::XDEV) => return Err(Error::entry(&self.name, Problem::ClimbsOut)),
                _ => return Err(Error::io(&self.name, "open the parent directory", e)),
            },
        };
        let fd = Rc::new(fd);
        let mut key = self.parent.take().map(|(k, _)| k).unwrap_or_default();
        key.clear();
        key.extend_from_slice(parent);
        self.parent = Some((key, fd.clone()));
        Ok(fd)
    }

    /// Walks `parent` one component at a time, creating what is missing
    /// ("implied" directories) and refusing symlinks and non-directories.
    fn make_parents(&mut self, parent: &[u8]) -> Result<OwnedFd, Error> {
        let mut dir = self.dup_root()?;
        let mut end = 0;
        for comp in parent.split(|&b| b == b'/') {
            end += comp.len();
            let prefix = &parent[..end];
            end += 1;
            let name = self.cname(comp)?;
            dir = match rustix::fs::openat(dir.as_fd(), &*name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => self.implied_dir(dir.as_fd(), &name, prefix, false)?,
                Err(Errno::LOOP | Errno::NOTDIR) => self.blocked(dir.as_fd(), &name, prefix)?,
                Err(e) => return Err(Error::io(&self.name, "open a parent directory", e)),
            };
        }
        Ok(dir)
    }

    /// A parent component that is not a directory: refused, except an
    /// overlay whiteout this layer made, which a new directory replaces.
    fn blocked(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        prefix: &[u8],
    ) -> Result<OwnedFd, Error> {
        let st = lstat_at(dir, name)
            .map_err(|e| Error::io(&self.name, "inspect a parent directory", e))?;
        match st {
            Some(st) if file_type(&st) == FileType::Symlink => {
                Err(Error::entry(&self.name, Problem::ThroughSymlink))
            }
            Some(st) if self.lowers.is_some() && lower::is_whiteout(&st) => {
                self.remove(dir, name)?;
                self.implied_dir(dir, name, prefix, true)
            }
            _ => Err(Error::entry(&self.name, Problem::ThroughNonDirectory)),
        }
    }

    /// Creates a directory no entry describes: 0755 0:0, or in an overlay
    /// upper a copy-up of the lower directory's attributes. Over a whiteout
    /// the lower directory was deleted, so it is not copied but hidden.
    fn implied_dir(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        prefix: &[u8],
        over_whiteout: bool,
    ) -> Result<OwnedFd, Error> {
        let (copy_from, hide_lower) = self.implied_source(prefix, over_whiteout)?;
        let io = |e: Errno| Error::io(&self.name, "create a parent directory", e);
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map_err(io)?;
        let fd = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()).map_err(io)?;
        match copy_from {
            Some((lower_dir, st)) => {
                let xattrs = xattr::list(lower_dir.as_fd(), name).map_err(|e| {
                    Error::io(&self.name, "read the xattrs of a lower directory", e)
                })?;
                let xattrs: Vec<_> = xattrs
                    .into_iter()
                    .filter(|(k, _)| !xattr::is_storage_internal(k.as_bytes()))
                    .map(|(k, v)| (k.into_vec(), v))
                    .collect();
                self.set_fd_attrs(
                    fd.as_fd(),
                    (st.st_uid, st.st_gid, st.st_mode & 0o7777),
                    &xattrs,
                    false,
                )?;
                let mtime = Timespec {
                    tv_sec: st.st_mtime,
                    tv_nsec: st.st_mtime_nsec as _,
                };
                self.defer_time(fd.as_fd(), prefix, mtime)?;
            }
            None => self.set_fd_attrs(fd.as_fd(), (0, 0, 0o755), &[], false)?,
        }
        if hide_lower {
            lower::set_opaque(fd.as_fd())
                .map_err(|e| Error::io(&self.name, "mark a directory opaque", e))?;
        }
        Ok(fd)
    }

    /// Where an implied directory's attributes come from: the lower
    /// directory to copy up, if any, and whether the new directory must hide
    /// the lower one (it replaces a whiteout). A lower non-directory there
    /// means the path goes through it: refused.
    fn implied_source(
        &self,
        prefix: &[u8],
        over_whiteout: bool,
    ) -> Result<(Option<(OwnedFd, Stat)>, bool), Error> {
        if self.lowers.is_none() {
            return Ok((None, false));
        }
        match self.visible_in_lower(prefix)? {
            Lookup::Found { st, .. } if file_type(&st) == FileType::Directory && over_whiteout => {
                Ok((None, true))
            }
            Lookup::Found { parent, st } if file_type(&st) == FileType::Directory => {
                Ok((Some((parent, st)), false))
            }
            Lookup::Found { st, .. } | Lookup::Blocked { st } if !over_whiteout => {
                let p = if file_type(&st) == FileType::Symlink {
                    Problem::ThroughSymlink
                } else {
                    Problem::ThroughNonDirectory
                };
                Err(Error::entry(&self.name, p))
            }
            _ => Ok((None, false)),
        }
    }

    /// The `.` entry: attributes for the root itself.
    fn root_entry(&mut self, p: &Parsed) -> Result<(), Error> {
        if !matches!(p.kind, Kind::Dir) {
            return Err(Error::entry(&self.name, Problem::ReplacesRoot));
        }
        let root = self.dup_root()?;
        self.set_fd_attrs(root.as_fd(), (p.uid, p.gid, p.mode), &p.xattrs, true)?;
        self.defer_time(root.as_fd(), b"", p.mtime)
    }

    /// A directory entry: over an existing directory only the attributes
    /// change (OCI: "if both are directories, replace the attributes").
    fn dir(&mut self, pfd: BorrowedFd<'_>, name: &CStr, p: &Parsed) -> Result<(), Error> {
        let io = |s: &Self, e: Errno| Error::io(&s.name, "create directory", e);
        let mut existing = false;
        let mut hide_lower = false;
        match rustix::fs::mkdirat(pfd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = lstat_at(pfd, name)
                    .map_err(|e| Error::io(&self.name, "inspect the existing entry", e))?;
                if st.is_some_and(|st| file_type(&st) == FileType::Directory) {
                    existing = true;
                } else {
                    // In an upper directory, a non-directory (or whiteout) here
                    // hid a lower directory; the new one must keep hiding its
                    // old children.
                    hide_lower = matches!(self.visible_in_lower(&p.path)?,
                        Lookup::Found { st, .. } if file_type(&st) == FileType::Directory);
                    self.remove(pfd, name)?;
                    rustix::fs::mkdirat(pfd, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| io(self, e))?;
                }
            }
            Err(e) => return Err(io(self, e)),
        }
        let fd =
            rustix::fs::openat(pfd, name, DIR_FLAGS, Mode::empty()).map_err(|e| io(self, e))?;
        self.set_fd_attrs(fd.as_fd(), (p.uid, p.gid, p.mode), &p.xattrs, existing)?;
        if hide_lower {
            lower::set_opaque(fd.as_fd())
                .map_err(|e| Error::io(&self.name, "mark a directory opaque", e))?;
        }
        self.defer_time(fd.as_fd(), &p.path, p.mtime)
    }

    /// A regular file: data first, then owner, mode, xattrs and times, in
    /// that order, since chown clears setuid bits and `security.capability`.
    fn file<R: Read>(
        &mut self,
        entry: &mut R,
        pfd: BorrowedFd<'_>,
        name: &CStr,
        p: &Parsed,
        sparse: &Sparse,
        (size, buf): (u64, &mut [u8]),
    ) -> Result<u64, Error> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = self.create(pfd, name, "create file", || {
            rustix::fs::openat(pfd, name, flags, Mode::from_raw_mode(0o600))
        })?;
        let file = File::from(fd);
        let ctx = self.ctx();
        let (consumed, apparent) = match sparse {
            Sparse::No => (data::copy_plain(&ctx, entry, &file, buf)?, size),
            Sparse::GnuOld => (data::copy_gnu_sparse(&ctx, entry, &file, buf)?, size),
            Sparse::Pax { real_size, extents } => {
                let consumed = data::copy_pax_sparse(
                    &ctx,
                    entry,
                    &file,
                    buf,
                    (size, *real_size),
                    extents.as_deref(),
                )?;
                (consumed, *real_size)
            }
        };
        self.file_bytes += apparent;
        self.set_fd_attrs(file.as_fd(), (p.uid, p.gid, p.mode), &p.xattrs, false)?;
        set_fd_times(file.as_fd(), p.mtime).map_err(|e| Error::io(&self.name, "set times", e))?;
        Ok(consumed)
    }

    /// A device node or FIFO.
    fn node(
        &mut self,
        pfd: BorrowedFd<'_>,
        name: &CStr,
        p: &Parsed,
        ty: FileType,
        dev: Dev,
    ) -> Result<(), Error> {
        let mode = Mode::from_raw_mode(0o600);
        self.create(pfd, name, "create device node", || {
            rustix::fs::mknodat(pfd, name, ty, mode, dev)
        })?;
        self.set_at_attrs(pfd, name, p, true)
    }

    /// A hardlink to a file of this layer or, in an overlay upper, of a
    /// lower layer (copied up first). The link shares the target's inode,
    /// so the entry's own attributes are not applied.
    fn hardlink(&mut self, pfd: BorrowedFd<'_>, name: &CStr, target: &[u8]) -> Result<(), Error> {
        let (tdir, tname) = self.link_target(target)?;
        let r = self.create(pfd, name, "create hardlink", || {
            rustix::fs::linkat(tdir.as_fd(), &*tname, pfd, name, AtFlags::empty())
        });
        match r {
            // The target went away with the entry it replaced (a link to
            // itself or into its own subtree).
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::entry(&self.name, Problem::LinkMissing))
            }
            r => r,
        }
    }

    /// The directory and name of a hardlink target, which must be a
    /// non-directory reachable without symlinks.
    fn link_target(&mut self, target: &[u8]) -> Result<(Rc<OwnedFd>, CName), Error> {
        let (tparent, tname) = split(target);
        let tname =
            CName::new(tname).map_err(|_| Error::entry(&self.name, Problem::LinkInvalid))?;
        let bad = |s: &Self, p| Err(Error::entry(&s.name, p));
        match self.find_dir(tparent)? {
            DirState::Open(dir) => match lstat_at(dir.as_fd(), &tname) {
                Ok(Some(st)) if file_type(&st) == FileType::Directory => {
                    return bad(self, Problem::LinkToDirectory);
                }
                Ok(Some(st)) if self.lowers.is_some() && lower::is_whiteout(&st) => {
                    return bad(self, Problem::LinkMissing);
                }
                Ok(Some(_)) => return Ok((Rc::new(dir), tname)),
                Ok(None) => {}
                Err(e) => return Err(Error::io(&self.name, "inspect the hardlink target", e)),
            },
            DirState::Missing => {}
            DirState::NotDir => return bad(self, Problem::LinkMissing),
            DirState::Symlink => return bad(self, Problem::LinkThroughSymlink),
        }
        if self.lowers.is_none() {
            return bad(self, Problem::LinkMissing);
        }
        match self.visible_in_lower(target)? {
            Lookup::Found { st, .. } if file_type(&st) == FileType::Directory => {
                bad(self, Problem::LinkToDirectory)
            }
            Lookup::Found { parent, .. } => {
                let tdir = self.parent_fd(tparent)?;
                drivers_fs::copy::copy_entry(
                    parent.as_fd(),
                    &tname,
                    tdir.as_fd(),
                    &tname,
                    drivers_fs::copy::CopyMethod::Reflink,
                )
                .map_err(|e| Error::io(&self.name, "copy up the hardlink target", e))?;
                Ok((tdir, tname))
            }
            Lookup::Blocked { st } if file_type(&st) == FileType::Symlink => {
                bad(self, Problem::LinkThroughSymlink)
            }
            Lookup::Blocked { .. } | Lookup::Absent => bad(self, Problem::LinkMissing),
        }
    }

    /// Owner, mode and xattrs through a descriptor (files, directories).
    /// Over an existing directory, xattrs the entry does not carry are
    /// removed, except storage-internal ones (overlay's opaque marker).
    pub(crate) fn set_fd_attrs(
        &self,
        fd: BorrowedFd<'_>,
        (uid, gid, mode): (u32, u32, u32),
        xattrs: &[(Vec<u8>, Vec<u8>)],
        replace: bool,
    ) -> Result<(), Error> {
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        rustix::fs::fchown(fd, Some(uid), Some(gid))
            .map_err(|e| Error::io(&self.name, "set owner", e))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
            .map_err(|e| Error::io(&self.name, "set mode", e))?;
        if replace {
            let current =
                xattr::list(fd, c".").map_err(|e| Error::io(&self.name, "list xattrs", e))?;
            for (key, _) in current {
                let key = key.as_bytes();
                if !xattr::is_storage_internal(key) && !xattrs.iter().any(|(k, _)| k == key) {
                    rustix::fs::fremovexattr(fd, key)
                        .map_err(|e| Error::io(&self.name, "remove xattr", e))?;
                }
            }
        }
        for (key, value) in xattrs {
            rustix::fs::fsetxattr(fd, &key[..], value, XattrFlags::empty())
                .map_err(|e| Error::xattr(&self.name, key, e))?;
        }
        Ok(())
    }

    /// Owner, mode, xattrs and times of a symlink or device node, by name,
    /// never following it.
    fn set_at_attrs(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        p: &Parsed,
        chmod: bool,
    ) -> Result<(), Error> {
        let (uid, gid) = (Uid::from_raw(p.uid), Gid::from_raw(p.gid));
        rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io(&self.name, "set owner", e))?;
        if chmod {
            // fchmodat cannot refuse to follow a symlink without fchmodat2;
            // `name` is the device node or FIFO mknodat just created in a
            // directory only this applier writes to, not a symlink.
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(p.mode), AtFlags::empty())
                .map_err(|e| Error::io(&self.name, "set mode", e))?;
        }
        for (key, value) in &p.xattrs {
            xattr::set(dir, name, OsStr::from_bytes(key), value)
                .map_err(|e| Error::xattr(&self.name, key, e))?;
        }
        let times = Timestamps {
            last_access: p.mtime,
            last_modification: p.mtime,
        };
        rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io(&self.name, "set times", e))
    }

    pub(crate) fn defer_time(
        &mut self,
        fd: BorrowedFd<'_>,
        path: &[u8],
        mtime: Timespec,
    ) -> Result<(), Error> {
        let st =
            rustix::fs::fstat(fd).map_err(|e| Error::io(&self.name, "inspect directory", e))?;
        self.dir_times.push(DirTime {
            path: path.into(),
            ino: st.st_ino,
            mtime,
        });
        Ok(())
    }

    /// Sets the deferred directory times; a directory removed or replaced
    /// since is skipped.
    pub(crate) fn finish(self) -> Result<(), Error> {
        for t in &self.dir_times {
            let dir = match drivers_fs::open_dir_beneath(self.root.as_fd(), bytes_path(&t.path)) {
                Ok(dir) => dir,
                Err(e)
                    if matches!(
                        Errno::from_io_error(&e),
                        Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(Error::io(&t.path, "open directory to set its times", e)),
            };
            let st =
                rustix::fs::fstat(&dir).map_err(|e| Error::io(&t.path, "inspect directory", e))?;
            if st.st_ino == t.ino {
                set_fd_times(dir.as_fd(), t.mtime)
                    .map_err(|e| Error::io(&t.path, "set times", e))?;
            }
        }
        Ok(())
    }

    /// Opens the existing directory `path` beneath the root, creating
    /// nothing, and says why not if it cannot.
    pub(crate) fn find_dir(&self, path: &[u8]) -> Result<DirState, Error> {
        let e = match drivers_fs::open_dir_beneath(self.root.as_fd(), bytes_path(path)) {
            Ok(fd) => return Ok(DirState::Open(fd)),
            Err(e) => e,
        };
        match Errno::from_io_error(&e) {
            Some(Errno::NOENT) => Ok(DirState::Missing),
            Some(Errno::LOOP) => Ok(DirState::Symlink),
            Some(Errno::XDEV) => Err(Error::entry(&self.name, Problem::ClimbsOut)),
            // A trailing symlink opened with O_NOFOLLOW | O_DIRECTORY gives
            // ENOTDIR, like a regular file anywhere on the path: tell them
            // apart component by component.
            Some(Errno::NOTDIR) => {
                let mut dir = self.dup_root()?;
                for comp in path.split(|&b| b == b'/') {
                    let name = self.cname(comp)?;
                    dir = match rustix::fs::openat(dir.as_fd(), &*name, DIR_FLAGS, Mode::empty()) {
                        Ok(fd) => fd,
                        Err(Errno::NOENT) => return Ok(DirState::Missing),
                        Err(_) => {
                            let st = lstat_at(dir.as_fd(), &name)
                                .map_err(|e| Error::io(&self.name, "inspect a directory", e))?;
                            return Ok(match st {
                                Some(st) if file_type(&st) == FileType::Symlink => {
                                    DirState::Symlink
                                }
                                Some(_) => DirState::NotDir,
                                None => DirState::Missing,
                            });
                        }
                    };
                }
                Ok(DirState::Open(dir))
            }
            _ => Err(Error::io(&self.name, "open directory", e)),
        }
    }

    pub(crate) fn dup_root(&self) -> Result<OwnedFd, Error> {
        self.root
            .try_clone()
            .map_err(|e| Error::io(&self.name, "duplicate the root descriptor", e))
    }
}

fn set_fd_times(fd: BorrowedFd<'_>, mtime: Timespec) -> rustix::io::Result<()> {
    rustix::fs::futimens(
        fd,
        &Timestamps {
            last_access: mtime,
            last_modification: mtime,
        },
    )
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

pub(crate) fn bytes_path(rel: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drivers_api::ApplyFormat;

    /// A removal drops the cached parent directory, so a path recreated
    /// after it resolves to the new directory, not the unlinked one.
    #[test]
    fn parent_cache_dropped_on_removal() {
        let t = tempfile::tempdir().unwrap();
        let target = ApplyTarget {
            root: t.path().to_owned(),
            format: ApplyFormat::Full,
        };
        let progress = Progress::default();
        let mut a = Applier::new(&target, &progress, Compression::None).unwrap();
        let old = a.parent_fd(b"a/b").unwrap();
        let old_ino = rustix::fs::fstat(&*old).unwrap().st_ino;
        assert!(Rc::ptr_eq(&old, &a.parent_fd(b"a/b").unwrap()), "cached");
        let root = a.dup_root().unwrap();
        a.remove(root.as_fd(), c"a").unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        let new = a.parent_fd(b"a/b").unwrap();
        let new_st = rustix::fs::fstat(&*new).unwrap();
        assert_ne!(new_st.st_ino, old_ino);
        assert_eq!(
            new_st.st_ino,
            std::fs::metadata(t.path().join("a/b"))
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap()
        );
    }
}
