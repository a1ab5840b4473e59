//! Declarative tree edits, like continuity's `fstest.Apply`: the same list
//! is applied through a mount of a snapshot and onto a plain directory, and
//! the two results must be equal.
//!
//! Every creation sets its mode explicitly after creating (so the process
//! umask, shared by all test threads, never matters) and gives regular
//! files, symlinks and device nodes a fixed mtime: the comparison includes
//! the mtime of non-directories, and the same edit applied at two moments
//! must give the same tree.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, CWD, Mode, Timespec, Timestamps};

/// 2001-02-03T04:05:06Z, the mtime every created non-directory gets unless
/// told otherwise.
pub const FIXED_MTIME: i64 = 981_173_106;

/// One edit of a tree. Paths are absolute within the tree (`/a/b`).
#[derive(Clone, Debug)]
pub enum FsChange {
    /// Creates or truncates and rewrites a regular file (in place, like
    /// `O_TRUNC`), then sets its mode and mtime.
    File {
        /// Where.
        path: String,
        /// Its content.
        content: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// mtime in seconds since the epoch.
        mtime: i64,
    },
    /// Creates a directory and missing parents with `mode` (like
    /// `os.MkdirAll` under umask 0); an existing directory is left alone.
    Dir {
        /// Where.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// Creates a symlink.
    Symlink {
        /// Where.
        path: String,
        /// What it points to, stored as is.
        target: String,
    },
    /// Makes `link` a new name of the existing `target` (`link(2)`).
    Hardlink {
        /// The existing file.
        target: String,
        /// The new name.
        link: String,
    },
    /// Removes a path and everything below it; a missing path is fine.
    RemoveAll(String),
    /// `lchown`.
    Chown {
        /// Where.
        path: String,
        /// New owner.
        uid: u32,
        /// New group.
        gid: u32,
    },
    /// `chmod`.
    Chmod {
        /// Where.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// `rename(2)`.
    Rename {
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// A character device.
    CharDev {
        /// Where.
        path: String,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
        /// Permission bits.
        mode: u32,
    },
    /// A named pipe.
    Fifo {
        /// Where.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// Sets one extended attribute (not following a symlink).
    Xattr {
        /// Where.
        path: String,
        /// Attribute name, e.g. `user.comment`.
        name: String,
        /// Its value.
        value: Vec<u8>,
    },
}

impl FsChange {
    /// A regular file with `content` and `mode`, mtime [`FIXED_MTIME`].
    pub fn file(path: &str, content: impl AsRef<[u8]>, mode: u32) -> FsChange {
        FsChange::File {
            path: path.into(),
            content: content.as_ref().to_vec(),
            mode,
            mtime: FIXED_MTIME,
        }
    }

    /// A directory (and missing parents) with `mode`.
    pub fn dir(path: &str, mode: u32) -> FsChange {
        FsChange::Dir {
            path: path.into(),
            mode,
        }
    }

    /// A symlink `path -> target`.
    pub fn symlink(path: &str, target: &str) -> FsChange {
        FsChange::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }

    /// `link(target, link)`.
    pub fn link(target: &str, link: &str) -> FsChange {
        FsChange::Hardlink {
            target: target.into(),
            link: link.into(),
        }
    }

    /// Removes `path` recursively.
    pub fn remove_all(path: &str) -> FsChange {
        FsChange::RemoveAll(path.into())
    }

    /// `lchown(path, uid, gid)`.
    pub fn chown(path: &str, uid: u32, gid: u32) -> FsChange {
        FsChange::Chown {
            path: path.into(),
            uid,
            gid,
        }
    }

    /// `chmod(path, mode)`.
    pub fn chmod(path: &str, mode: u32) -> FsChange {
        FsChange::Chmod {
            path: path.into(),
            mode,
        }
    }

    /// `rename(from, to)`.
    pub fn rename(from: &str, to: &str) -> FsChange {
        FsChange::Rename {
            from: from.into(),
            to: to.into(),
        }
    }

    /// A character device `major,minor`.
    pub fn char_dev(path: &str, major: u32, minor: u32, mode: u32) -> FsChange {
        FsChange::CharDev {
            path: path.into(),
            major,
            minor,
            mode,
        }
    }

    /// A FIFO.
    pub fn fifo(path: &str, mode: u32) -> FsChange {
        FsChange::Fifo {
            path: path.into(),
            mode,
        }
    }

    /// An extended attribute.
    pub fn xattr(path: &str, name: &str, value: impl AsRef<[u8]>) -> FsChange {
        FsChange::Xattr {
            path: path.into(),
            name: name.into(),
            value: value.as_ref().to_vec(),
        }
    }
}

/// `root` joined with a tree path (leading `/` ignored).
pub fn at(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn fixed_times(secs: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn set_mtime_nofollow(p: &Path, secs: i64) -> Result<()> {
    rustix::fs::utimensat(CWD, p, &fixed_times(secs), AtFlags::SYMLINK_NOFOLLOW)
        .with_context(|| format!("set times of {}", p.display()))
}

fn chmod(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, p.display()))
}

/// Applies `changes` in order under `root`.
pub fn apply(root: &Path, changes: &[FsChange]) -> Result<()> {
    for c in changes {
        apply_one(root, c).with_context(|| format!("apply {c:?} under {}", root.display()))?;
    }
    Ok(())
}

fn apply_one(root: &Path, c: &FsChange) -> Result<()> {
    match c {
        FsChange::File {
            path,
            content,
            mode,
            mtime,
        } => {
            let p = at(root, path);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)?;
            f.write_all(content)?;
            f.set_permissions(std::fs::Permissions::from_mode(*mode))?;
            f.sync_all()?;
            drop(f);
            set_mtime_nofollow(&p, *mtime)?;
        }
        FsChange::Dir { path, mode } => {
            let p = at(root, path);
            // Like MkdirAll: create what is missing, top down, each with `mode`.
            let mut missing = Vec::new();
            let mut cur = p.as_path();
            while std::fs::symlink_metadata(cur).is_err() {
                missing.push(cur.to_path_buf());
                cur = match cur.parent() {
                    Some(parent) => parent,
                    None => break,
                };
            }
            for d in missing.iter().rev() {
                std::fs::create_dir(d).with_context(|| format!("mkdir {}", d.display()))?;
                chmod(d, *mode)?;
            }
        }
        FsChange::Symlink { path, target } => {
            let p = at(root, path);
            std::os::unix::fs::symlink(target, &p)?;
            set_mtime_nofollow(&p, FIXED_MTIME)?;
        }
        FsChange::Hardlink { target, link } => {
            std::fs::hard_link(at(root, target), at(root, link))?;
        }
        FsChange::RemoveAll(path) => {
            let p = at(root, path);
            match std::fs::symlink_metadata(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p)?,
                Ok(_) => std::fs::remove_file(&p)?,
            }
        }
        FsChange::Chown { path, uid, gid } => {
            std::os::unix::fs::lchown(at(root, path), Some(*uid), Some(*gid))?;
        }
        FsChange::Chmod { path, mode } => chmod(&at(root, path), *mode)?,
        FsChange::Rename { from, to } => std::fs::rename(at(root, from), at(root, to))?,
        FsChange::CharDev {
            path,
            major,
            minor,
            mode,
        } => {
            let p = at(root, path);
            rustix::fs::mknodat(
                CWD,
                &p,
                rustix::fs::FileType::CharacterDevice,
                Mode::from_raw_mode(*mode),
                rustix::fs::makedev(*major, *minor),
            )?;
            chmod(&p, *mode)?;
            set_mtime_nofollow(&p, FIXED_MTIME)?;
        }
        FsChange::Fifo { path, mode } => {
            let p = at(root, path);
            rustix::fs::mknodat(
                CWD,
                &p,
                rustix::fs::FileType::Fifo,
                Mode::from_raw_mode(*mode),
                0,
            )?;
            chmod(&p, *mode)?;
            set_mtime_nofollow(&p, FIXED_MTIME)?;
        }
        FsChange::Xattr { path, name, value } => {
            rustix::fs::lsetxattr(
                at(root, path),
                OsStr::from_bytes(name.as_bytes()),
                value,
                rustix::fs::XattrFlags::empty(),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same edits applied to two directories at different moments give
    /// equal trees (modes explicit, mtimes fixed), which checkSnapshots
    /// relies on.
    #[test]
    fn edits_are_reproducible() {
        let edits = [
            FsChange::dir("/a/b", 0o750),
            FsChange::file("/a/b/f", "x", 0o640),
            FsChange::symlink("/a/l", "b/f"),
            FsChange::link("/a/b/f", "/a/h"),
            FsChange::file("/gone", "", 0o600),
            FsChange::remove_all("/gone"),
            FsChange::rename("/a/h", "/a/h2"),
            FsChange::chmod("/a", 0o711),
        ];
        let x = tempfile::tempdir().unwrap();
        let y = tempfile::tempdir().unwrap();
        apply(x.path(), &edits).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        apply(y.path(), &edits).unwrap();
        let opts = crate::tree::CompareOpts {
            nlink: true,
            skip_root: true,
        };
        let d = crate::tree::Tree::read(x.path())
            .unwrap()
            .diff(&crate::tree::Tree::read(y.path()).unwrap(), opts);
        assert!(d.is_empty(), "{d:?}");
        let m = std::fs::symlink_metadata(x.path().join("a/b")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o750);
    }
}
