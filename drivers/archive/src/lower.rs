//! A read-only view of the merged parent layers of an overlayfs upper
//! directory: what is at a path, and in which lower directory, the way
//! overlayfs resolves it (nearest layer first, whiteouts hide, opaque
//! directories stop the merge). Nothing here ever writes to a lower.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use drivers_fs::{file_type, lstat_at};

/// overlayfs marks a directory that hides the layers below it with this.
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// The parent layers' directories, nearest first.
pub(crate) struct Lowers {
    roots: Vec<PathBuf>,
}

/// What the merged lower holds at a path.
pub(crate) enum Lookup {
    /// Nothing: never there, whited out, or hidden by an opaque directory.
    Absent,
    /// The topmost entry; `parent` is its directory in that lower.
    Found { parent: OwnedFd, st: Stat },
    /// An ancestor of the path is a visible non-directory (`st`), e.g. a
    /// symlink: the path could only be reached through it.
    Blocked { st: Stat },
}

impl Lowers {
    pub(crate) fn new(roots: Vec<PathBuf>) -> Self {
        Lowers { roots }
    }

    /// Resolves `path` (relative, normalised, not empty) in the merged
    /// lower. `dirs_above` leading components are directories in a layer
    /// above all lowers (the upper), which hide lower non-directories
    /// there. Lower roots are opened on demand, so a 500-layer chain does
    /// not hold 500 descriptors; below a root, no symlink is followed.
    pub(crate) fn lookup(&self, path: &[u8], dirs_above: usize) -> io::Result<Lookup> {
        let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        // How many leading components some layer above the current one
        // shows as directories: a non-directory below one of those is
        // hidden by it, not visible.
        let mut merged_dirs = dirs_above;
        for root in &self.roots {
            // The roots are the host's own paths; they may be symlinks (short
            // links for deep chains), so they are followed.
            let mut dir: OwnedFd = rustix::fs::open(
                root,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let mut cut = false;
            for (k, comp) in comps.iter().enumerate() {
                let name = cname(comp)?;
                let Some(st) = lstat_at(dir.as_fd(), &name)? else {
                    break;
                };
                if k + 1 == comps.len() {
                    return Ok(if is_whiteout(&st) {
                        Lookup::Absent
                    } else {
                        Lookup::Found { parent: dir, st }
                    });
                }
                if file_type(&st) != FileType::Directory {
                    // A whiteout or non-directory ends the merge here: neither
                    // this layer nor any below has anything under it.
                    let visible = k >= merged_dirs && !is_whiteout(&st);
                    return Ok(if visible {
                        Lookup::Blocked { st }
                    } else {
                        Lookup::Absent
                    });
                }
                let sub = rustix::fs::openat(
                    dir.as_fd(),
                    &name,
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                cut |= is_opaque(sub.as_fd())?;
                dir = sub;
                merged_dirs = merged_dirs.max(k + 1);
            }
            if cut {
                // An opaque directory above `path` hides the layers below.
                return Ok(Lookup::Absent);
            }
        }
        Ok(Lookup::Absent)
    }

    /// Names of the merged lower root, unsorted and possibly repeated.
    pub(crate) fn root_names(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        for root in &self.roots {
            let dir = rustix::fs::open(
                root,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            for (name, _) in drivers_fs::read_dir_sorted(dir.as_fd())? {
                names.push(name.into_bytes());
            }
        }
        Ok(names)
    }
}

/// A whiteout as overlayfs writes it: a character device 0/0.
pub(crate) fn is_whiteout(st: &Stat) -> bool {
    file_type(st) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Whether an open directory carries `trusted.overlay.opaque=y`.
pub(crate) fn is_opaque(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let mut value = [0u8; 4];
    match rustix::fs::fgetxattr(dir, OPAQUE_XATTR, &mut value[..]) {
        Ok(n) => Ok(&value[..n] == b"y"),
        Err(Errno::NODATA | Errno::NOTSUP | Errno::RANGE) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn cname(comp: &[u8]) -> io::Result<std::ffi::CString> {
    drivers_fs::xattr::cstring(comp)
}

/// Marks an open directory opaque: overlayfs then shows none of the lower
/// layers' entries below it.
pub(crate) fn set_opaque(dir: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::fs::fsetxattr(
        dir,
        OPAQUE_XATTR,
        b"y",
        rustix::fs::XattrFlags::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn kind(l: &Lowers, path: &str, above: usize) -> String {
        match l.lookup(path.as_bytes(), above).unwrap() {
            Lookup::Absent => "absent".into(),
            Lookup::Found { st, .. } => format!("found {:o}", st.st_mode & 0o170000),
            Lookup::Blocked { st } => format!("blocked {:o}", st.st_mode & 0o170000),
        }
    }

    /// Nearest layer wins; whiteouts and opaque directories hide what is
    /// below; a visible non-directory blocks the paths under it unless a
    /// directory above hides it.
    #[test]
    fn merged_lookup() {
        let t = tempfile::tempdir().unwrap();
        let (top, bottom) = (t.path().join("top"), t.path().join("bottom"));
        for d in [
            "top/opq",
            "top/d",
            "bottom/opq",
            "bottom/d/x",
            "bottom/gone/y",
            "bottom/link",
        ] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        std::fs::write(bottom.join("opq/old"), "o").unwrap();
        std::fs::write(bottom.join("file"), "f").unwrap();
        std::fs::write(top.join("file"), "newer").unwrap();
        symlink("/etc", top.join("link")).unwrap();
        let top_fd = drivers_fs::open_dir(&top).unwrap();
        // overlayfs always merges layer roots: an opaque mark there is ignored.
        set_opaque(top_fd.as_fd()).unwrap();
        let opq = drivers_fs::open_dir(&top.join("opq")).unwrap();
        set_opaque(opq.as_fd()).unwrap();
        rustix::fs::mknodat(&top_fd, "gone", FileType::CharacterDevice, Mode::empty(), 0).unwrap();

        let l = Lowers::new(vec![top, bottom]);
        assert_eq!(kind(&l, "file", 0), "found 100000");
        assert_eq!(kind(&l, "d/x", 0), "found 40000", "directories merge");
        assert_eq!(
            kind(&l, "opq/old", 0),
            "absent",
            "opaque in the nearer layer"
        );
        assert_eq!(kind(&l, "gone", 0), "absent");
        assert_eq!(kind(&l, "gone/y", 0), "absent");
        assert_eq!(kind(&l, "link", 0), "found 120000");
        assert_eq!(kind(&l, "link/x", 0), "blocked 120000");
        assert_eq!(
            kind(&l, "link/x", 1),
            "absent",
            "a directory above hides the symlink"
        );
        assert_eq!(kind(&l, "nothing/x", 0), "absent");
    }
}
