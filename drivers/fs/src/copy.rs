//! Copies that keep every attribute: one inode ([`copy_entry`]) or a whole
//! tree ([`copy_tree`]).
//!
//! File data is shared with `FICLONE` where the filesystem can (btrfs, xfs
//! with reflink): no data is read or written. Elsewhere data extents are
//! found with `SEEK_DATA`/`SEEK_HOLE` and copied in the kernel with
//! `copy_file_range`, so holes stay holes.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom, Timestamps};
use rustix::io::Errno;

use crate::{file_type, lstat_at, open_dir, read_dir_sorted, xattr};

/// How file data was copied; the fastest method that worked is remembered
/// per copy so a tree copy does not retry a refused reflink on every file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CopyMethod {
    /// Extents shared with `FICLONE`: no data moved.
    Reflink,
    /// Copied in the kernel with `copy_file_range`, holes kept.
    CopyFileRange,
    /// Read and written through user space (different filesystems on old
    /// kernels).
    ReadWrite,
}

/// Counters of one tree copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Inodes created (hardlinks made with `link` not counted).
    pub inodes: u64,
    /// Bytes of regular-file data (apparent size).
    pub bytes: u64,
    /// Files whose extents were shared.
    pub reflinked: u64,
}

/// Copies the data of `src` into `dst` (both open files), `len` bytes.
/// `dst` ends up exactly `len` bytes long. `prefer` lets a caller skip
/// methods that already failed on this filesystem pair.
pub fn copy_file_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    len: u64,
    prefer: CopyMethod,
) -> io::Result<CopyMethod> {
    if prefer == CopyMethod::Reflink && len > 0 {
        match rustix::fs::ioctl_ficlone(dst, src) {
            Ok(()) => return Ok(CopyMethod::Reflink),
            // Not supported here, or across filesystems: fall back.
            Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::PERM) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let method = if prefer == CopyMethod::ReadWrite {
        CopyMethod::ReadWrite
    } else {
        CopyMethod::CopyFileRange
    };
    let used = copy_extents(src, dst, len, method)?;
    rustix::fs::ftruncate(dst, len)?;
    Ok(used)
}

/// Copies the data extents of `src` (skipping holes) into `dst`.
fn copy_extents(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    len: u64,
    mut method: CopyMethod,
) -> io::Result<CopyMethod> {
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(p) => p,
            Err(Errno::NXIO) => break, // only a hole remains
            Err(Errno::INVAL) => pos,  // no SEEK_DATA support: treat all as data
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(src, SeekFrom::Hole(start)) {
            Ok(p) => p.min(len),
            Err(_) => len,
        };
        method = copy_range(src, dst, start, end - start, method)?;
        pos = end;
    }
    Ok(method)
}

fn copy_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    start: u64,
    mut n: u64,
    mut method: CopyMethod,
) -> io::Result<CopyMethod> {
    let (mut off_in, mut off_out) = (start, start);
    while n > 0 {
        if method == CopyMethod::CopyFileRange {
            let chunk = n.min(1 << 30) as usize;
            match rustix::fs::copy_file_range(
                src,
                Some(&mut off_in),
                dst,
                Some(&mut off_out),
                chunk,
            ) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "source file shrank while copying",
                    ));
                }
                Ok(k) => n -= k as u64,
                Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => {
                    method = CopyMethod::ReadWrite
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            let mut buf = vec![0u8; n.min(1 << 20) as usize];
            let k = rustix::io::pread(src, &mut buf[..], off_in)?;
            if k == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source file shrank while copying",
                ));
            }
            let mut written = 0;
            while written < k {
                written += rustix::io::pwrite(dst, &buf[written..k], off_out + written as u64)?;
            }
            off_in += k as u64;
            off_out += k as u64;
            n -= k as u64;
        }
    }
    Ok(method)
}

/// Sets owner, mode (not on symlinks), xattrs and times of `dst` in
/// `dst_dir` from `st`, the `lstat` of `src` in `src_dir`. The order matters:
/// `chown` clears setuid bits and `security.capability`, so it runs first.
pub fn copy_metadata(
    src_dir: BorrowedFd<'_>,
    src: &CStr,
    st: &rustix::fs::Stat,
    dst_dir: BorrowedFd<'_>,
    dst: &CStr,
) -> io::Result<()> {
    let uid = rustix::fs::Uid::from_raw(st.st_uid);
    let gid = rustix::fs::Gid::from_raw(st.st_gid);
    rustix::fs::chownat(
        dst_dir,
        dst,
        Some(uid),
        Some(gid),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if file_type(st) != FileType::Symlink {
        rustix::fs::chmodat(
            dst_dir,
            dst,
            Mode::from_raw_mode(st.st_mode & 0o7777),
            AtFlags::empty(),
        )?;
    }
    xattr::copy(src_dir, src, dst_dir, dst)?;
    set_times(dst_dir, dst, st)
}

/// Sets atime and mtime of `dst` from `st`, without following a symlink.
pub fn set_times(dst_dir: BorrowedFd<'_>, dst: &CStr, st: &rustix::fs::Stat) -> io::Result<()> {
    let times = Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    Ok(rustix::fs::utimensat(
        dst_dir,
        dst,
        &times,
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Copies one entry `src` of `src_dir` to `dst` in `dst_dir`, which must not
/// exist. A directory is created empty (its contents are the caller's
/// business); every other type is copied whole. Returns the method used for
/// file data, if any.
pub fn copy_entry(
    src_dir: BorrowedFd<'_>,
    src: &CStr,
    dst_dir: BorrowedFd<'_>,
    dst: &CStr,
    prefer: CopyMethod,
) -> io::Result<Option<CopyMethod>> {
    let st = lstat_at(src_dir, src)?.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    let mut used = None;
    match file_type(&st) {
        FileType::Directory => rustix::fs::mkdirat(dst_dir, dst, Mode::from_raw_mode(0o700))?,
        FileType::RegularFile => {
            let from = rustix::fs::openat(
                src_dir,
                src,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let to = rustix::fs::openat(
                dst_dir,
                dst,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            used = Some(copy_file_data(
                from.as_fd(),
                to.as_fd(),
                st.st_size as u64,
                prefer,
            )?);
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(src_dir, src, Vec::new())?;
            rustix::fs::symlinkat(target.as_c_str(), dst_dir, dst)?;
        }
        FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket => {
            rustix::fs::mknodat(
                dst_dir,
                dst,
                file_type(&st),
                Mode::from_raw_mode(0o600),
                st.st_rdev,
            )?;
        }
        FileType::Unknown => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unknown file type",
            ));
        }
    }
    copy_metadata(src_dir, src, &st, dst_dir, dst)?;
    Ok(used)
}

/// Copies the contents and root attributes of directory `src` into the
/// existing empty directory `dst`: every type, owner, mode, xattr (except
/// storage-internal ones), time, and hardlink group. Directory times are set
/// after their contents so they survive.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<CopyStats> {
    let s = open_dir(src)?;
    let d = open_dir(dst)?;
    let mut walk = TreeCopy {
        links: HashMap::new(),
        stats: CopyStats::default(),
        method: CopyMethod::Reflink,
    };
    walk.dir(s.as_fd(), d.as_fd(), Path::new(""))?;
    let st = rustix::fs::fstat(&s)?;
    let dot = c".";
    copy_metadata(s.as_fd(), dot, &st, d.as_fd(), dot)?;
    Ok(walk.stats)
}

struct TreeCopy {
    /// Source `(dev, ino)` of hardlinked files → destination path relative to the root.
    links: HashMap<(u64, u64), std::path::PathBuf>,
    stats: CopyStats,
    method: CopyMethod,
}

impl TreeCopy {
    fn dir(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>, rel: &Path) -> io::Result<()> {
        for (name, _) in read_dir_sorted(src)? {
            let Some(st) = lstat_at(src, &name)? else {
                continue;
            };
            let child_rel = rel.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
            let ft = file_type(&st);
            if ft != FileType::Directory && st.st_nlink > 1 {
                if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
                    link_from_root(dst, rel, first, &name)?;
                    continue;
                }
                self.links.insert((st.st_dev, st.st_ino), child_rel.clone());
            }
            if let Some(m) = copy_entry(src, &name, dst, &name, self.method)? {
                self.method = m;
                self.stats.bytes += st.st_size as u64;
                if m == CopyMethod::Reflink {
                    self.stats.reflinked += 1;
                }
            }
            self.stats.inodes += 1;
            if ft == FileType::Directory {
                let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let s: OwnedFd = rustix::fs::openat(src, &name, flags, Mode::empty())?;
                let d: OwnedFd = rustix::fs::openat(dst, &name, flags, Mode::empty())?;
                self.dir(s.as_fd(), d.as_fd(), &child_rel)?;
                set_times(dst, &name, &st)?;
            }
        }
        Ok(())
    }
}

/// Links `name` in the directory `dst` (which is `rel` below the copy's
/// root) to the already-copied file `first` (relative to the root).
fn link_from_root(dst: BorrowedFd<'_>, rel: &Path, first: &Path, name: &CStr) -> io::Result<()> {
    // Walk back up from `dst` to the root with "..": the destination tree is
    // ours and being built, so no symlink can stand in the way.
    let mut up = std::path::PathBuf::new();
    for _ in rel.components() {
        up.push("..");
    }
    let from = up.join(first);
    Ok(rustix::fs::linkat(dst, &from, dst, name, AtFlags::empty())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    /// A tree copy keeps types, modes incl. setuid, symlink targets, holes
    /// and hardlink groups.
    #[test]
    fn tree_copy_keeps_everything() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        std::fs::write(src.join("d/e/f"), "hello").unwrap();
        std::fs::set_permissions(src.join("d/e/f"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::fs::hard_link(src.join("d/e/f"), src.join("g")).unwrap();
        symlink("../nowhere", src.join("d/l")).unwrap();
        let sparse = std::fs::File::create(src.join("sparse")).unwrap();
        sparse.set_len(64 << 20).unwrap();
        drop(sparse);
        std::fs::create_dir(&dst).unwrap();
        let stats = copy_tree(&src, &dst).unwrap();
        assert!(stats.inodes >= 5);
        let f = std::fs::metadata(dst.join("d/e/f")).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o4755);
        assert_eq!(std::fs::read_to_string(dst.join("g")).unwrap(), "hello");
        assert_eq!(f.ino(), std::fs::metadata(dst.join("g")).unwrap().ino());
        assert_eq!(
            std::fs::read_link(dst.join("d/l")).unwrap(),
            Path::new("../nowhere")
        );
        let sp = std::fs::metadata(dst.join("sparse")).unwrap();
        assert_eq!(sp.len(), 64 << 20);
        assert!(sp.blocks() * 512 < 1 << 20, "holes must stay holes");
        assert_eq!(
            std::fs::metadata(src.join("d")).unwrap().mtime(),
            std::fs::metadata(dst.join("d")).unwrap().mtime()
        );
    }
}
