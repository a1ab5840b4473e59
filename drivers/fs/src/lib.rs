//! Filesystem primitives shared by the backends and the layer code.
//!
//! Everything here works on directory file descriptors and single path
//! components, never follows a symlink it did not mean to, and never leaves
//! the directory tree it was handed:
//!
//! - [`open_beneath`] / [`open_dir_beneath`]: resolve a relative path below a
//!   root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`;
//! - [`xattr`]: list, read and write extended attributes of any file type,
//!   symlinks included;
//! - [`copy`]: copy one inode or a whole tree with every attribute, sharing
//!   extents (`FICLONE`) where the filesystem can and keeping holes otherwise;
//! - [`remove_all_at`]: recursive removal that never follows symlinks;
//! - [`usage`]: allocated bytes and inodes of a tree, hardlinks counted once;
//! - [`lowerview`]: what a chain of overlayfs lower layers shows at a path.

pub mod copy;
pub mod lowerview;
pub mod xattr;

use std::collections::HashSet;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// How many times [`open_beneath`] retries when the kernel reports a
/// concurrent rename under the root (`EAGAIN` from `openat2`).
const OPENAT2_RETRIES: usize = 8;

/// Opens the directory at an absolute or cwd-relative `path` without
/// following a symlink in its last component.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?)
}

/// Opens `rel` below the directory `root`, refusing to traverse symlinks,
/// `..` above `root`, or magic links. An empty `rel` (or `.`) opens `root`
/// itself.
///
/// `ELOOP` means a component was a symlink, `EXDEV` that the path tried to
/// climb out of `root`.
pub fn open_beneath(
    root: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let rel: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let mut attempts = 0;
    loop {
        match rustix::fs::openat2(root, rel, flags | OFlags::CLOEXEC, mode, resolve) {
            Err(Errno::AGAIN) if attempts < OPENAT2_RETRIES => attempts += 1,
            r => return Ok(r?),
        }
    }
}

/// [`open_beneath`] for a directory, opened for reading.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    open_beneath(
        root,
        rel,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW,
        Mode::empty(),
    )
}

/// `lstat` of `name` in `dir`; `Ok(None)` if it does not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The file type bits of a `Stat`.
pub fn file_type(st: &rustix::fs::Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// The entries of an open directory, without `.` and `..`, sorted by name
/// bytes so walks are reproducible.
pub fn read_dir_sorted(dir: BorrowedFd<'_>) -> io::Result<Vec<(std::ffi::CString, FileType)>> {
    let mut d = Dir::read_from(dir)?;
    let mut out = Vec::new();
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        out.push((name.to_owned(), entry.file_type()));
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// Removes `name` in `dir` and, if it is a directory, everything below it.
/// Never follows symlinks; a missing `name` is not an error, so an
/// interrupted removal can simply be run again.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        // EISDIR on Linux; EPERM where unlink of a directory is refused that way.
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = match rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    clear_dir(sub.as_fd())?;
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes every entry of an open directory, keeping the directory itself.
pub fn clear_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    for (name, _) in read_dir_sorted(dir)? {
        remove_all_at(dir, &name)?;
    }
    Ok(())
}

/// Removes the tree at `path` (absolute); a missing path is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to remove a root directory",
        ));
    };
    let parent = match open_dir(parent) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let name = std::ffi::CString::new(name.as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    remove_all_at(parent.as_fd(), &name)
}

/// Names of the entries of `dir` that are valid UTF-8, sorted. Backends
/// name their own entries in UTF-8; anything else was put there by someone
/// else and is skipped, with a warning.
pub fn utf8_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        match entry.file_name().into_string() {
            Ok(name) => out.push(name),
            Err(_) => {
                tracing::warn!(path = %entry.path().display(), "skipping a non-UTF-8 name")
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Allocated bytes (`st_blocks × 512`) and inodes below `path`, the
/// directory itself included, each hardlinked inode counted once. Walks the
/// whole tree.
pub fn usage(path: &Path) -> io::Result<(u64, u64)> {
    let root = open_dir(path)?;
    let st = rustix::fs::fstat(&root)?;
    let mut seen = HashSet::new();
    let mut total = (st.st_blocks as u64 * 512, 1);
    usage_of_dir(root.as_fd(), &mut seen, &mut total)?;
    Ok(total)
}

fn usage_of_dir(
    dir: BorrowedFd<'_>,
    seen: &mut HashSet<(u64, u64)>,
    total: &mut (u64, u64),
) -> io::Result<()> {
    for (name, _) in read_dir_sorted(dir)? {
        let Some(st) = lstat_at(dir, &name)? else {
            continue;
        };
        if st.st_nlink > 1 && !seen.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        total.0 += st.st_blocks as u64 * 512;
        total.1 += 1;
        if file_type(&st) == FileType::Directory {
            let sub = rustix::fs::openat(
                dir,
                &name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            usage_of_dir(sub.as_fd(), seen, total)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A symlink planted under the root cannot be used to open anything
    /// outside it, and `..` cannot climb out.
    #[test]
    fn beneath_refuses_symlinks_and_dotdot() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        symlink("/etc", t.path().join("evil")).unwrap();
        symlink("d", t.path().join("inner")).unwrap();
        let root = open_dir(t.path()).unwrap();
        assert!(open_dir_beneath(root.as_fd(), Path::new("d")).is_ok());
        assert!(open_dir_beneath(root.as_fd(), Path::new("")).is_ok());
        for bad in ["evil", "inner", "../", "d/../../etc", "/etc"] {
            assert!(
                open_dir_beneath(root.as_fd(), Path::new(bad)).is_err(),
                "{bad} must be refused"
            );
        }
    }

    /// Removal does not follow a symlink to a directory outside the tree.
    #[test]
    fn remove_all_keeps_symlink_targets() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let victim = t.path().join("victim");
        std::fs::create_dir_all(victim.join("a/b")).unwrap();
        std::fs::write(victim.join("a/b/f"), "x").unwrap();
        symlink(&outside, victim.join("a/link")).unwrap();
        remove_tree(&victim).unwrap();
        assert!(!victim.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&victim).unwrap(); // idempotent
    }

    /// Hardlinked files count once.
    #[test]
    fn usage_counts_hardlinks_once() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        let (one, inodes_one) = usage(t.path()).unwrap();
        std::fs::hard_link(t.path().join("a"), t.path().join("b")).unwrap();
        let (two, inodes_two) = usage(t.path()).unwrap();
        assert_eq!(one, two);
        assert_eq!(inodes_one, inodes_two);
        assert!(one >= 64 * 1024);
    }
}
