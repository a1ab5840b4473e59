//! The merged view of overlayfs lower layers, read without mounting them.
//!
//! Code that keeps layers as overlayfs upper directories needs to know what
//! the parent chain shows at a path: a diff to tell an addition from a
//! modification and to list what an opaque directory hides, an apply to find
//! hardlink targets and implied parent directories. [`MergedDir`] answers
//! that the way the kernel does (`Documentation/filesystems/overlayfs.rst`):
//! the nearest layer holding a name wins, a whiteout hides the name in every
//! farther layer, and directories merge down to the first opaque directory or
//! non-directory.
//!
//! Both xattr namespaces are recognised: `trusted.overlay.*` (the default)
//! and `user.overlay.*` (mounts with `userxattr`). A layer uses one of them.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, Stat};

use crate::{file_type, lstat_at, open_dir, read_dir_sorted, xattr};

/// The two prefixes overlayfs stores its own attributes under.
const PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// What overlayfs's own extended attributes say about one entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// `overlay.opaque=y`: the directory hides every lower directory of the
    /// same name.
    pub opaque: bool,
    /// `overlay.opaque=x`: not opaque, but the directory holds whiteouts in
    /// their xattr form, which the kernel only honours under such a marker.
    pub xwhiteouts: bool,
    /// `overlay.whiteout` is set (a whiteout if the entry is also an empty
    /// regular file).
    pub whiteout: bool,
    /// `overlay.redirect`: a renamed directory (or metacopy file) whose
    /// contents live under another path in the lower layers.
    pub redirect: bool,
    /// `overlay.metacopy`: a file whose data lives in a lower layer.
    pub metacopy: bool,
}

impl Marks {
    /// Reads the marks out of an entry's attribute list, as
    /// [`xattr::list`] returns it.
    pub fn from_xattrs(list: &[(OsString, Vec<u8>)]) -> Marks {
        let mut m = Marks::default();
        for (key, value) in list {
            let key = key.as_bytes();
            let Some(suffix) = PREFIXES.iter().find_map(|p| key.strip_prefix(*p)) else {
                continue;
            };
            match suffix {
                b"opaque" if value.as_slice() == b"y" => m.opaque = true,
                b"opaque" if value.as_slice() == b"x" => m.xwhiteouts = true,
                b"whiteout" => m.whiteout = true,
                b"redirect" => m.redirect = true,
                b"metacopy" => m.metacopy = true,
                _ => {}
            }
        }
        m
    }

    /// Lists and reads the marks of `name` in `dir`.
    pub fn of(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Marks> {
        Ok(Marks::from_xattrs(&xattr::list(dir, name)?))
    }
}

/// True if the entry with this `lstat` and these marks is a whiteout: a
/// 0/0 character device, or an empty regular file marked `overlay.whiteout`.
pub fn is_whiteout(st: &Stat, marks: &Marks) -> bool {
    match file_type(st) {
        FileType::CharacterDevice => st.st_rdev == 0,
        FileType::RegularFile => st.st_size == 0 && marks.whiteout,
        _ => false,
    }
}

/// [`is_whiteout`] for `name` in `dir`, reading xattrs only when the type
/// leaves the question open (an empty regular file).
pub fn is_whiteout_at(dir: BorrowedFd<'_>, name: &CStr, st: &Stat) -> io::Result<bool> {
    match file_type(st) {
        FileType::CharacterDevice => Ok(st.st_rdev == 0),
        FileType::RegularFile if st.st_size == 0 => Ok(Marks::of(dir, name)?.whiteout),
        _ => Ok(false),
    }
}

/// One directory as the merged lower layers show it: the layer directories
/// that contribute to it, nearest first.
///
/// An empty `MergedDir` is a directory the lower layers do not have.
#[derive(Debug, Default)]
pub struct MergedDir {
    layers: Vec<OwnedFd>,
}

impl MergedDir {
    /// The root of the merged view of `lowers` (nearest first).
    pub fn open(lowers: &[impl AsRef<Path>]) -> io::Result<MergedDir> {
        let layers = lowers
            .iter()
            .map(|p| open_dir(p.as_ref()))
            .collect::<io::Result<_>>()?;
        Ok(MergedDir::from_layers(layers))
    }

    /// The merged view of already opened layer root directories, nearest
    /// first (for callers that report which one failed to open).
    pub fn from_layers(layers: Vec<OwnedFd>) -> MergedDir {
        MergedDir { layers }
    }

    /// True if no lower layer has this directory.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The `lstat` of `name` as the merged view shows it, `None` if absent or
    /// whited out.
    pub fn lookup(&self, name: &CStr) -> io::Result<Option<Stat>> {
        for layer in &self.layers {
            let Some(st) = lstat_at(layer.as_fd(), name)? else {
                continue;
            };
            if is_whiteout_at(layer.as_fd(), name, &st)? {
                return Ok(None);
            }
            return Ok(Some(st));
        }
        Ok(None)
    }

    /// The merged subdirectory `name`; empty if the view has no directory
    /// there.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::Unsupported`] if a contributing directory carries
    /// `overlay.redirect`: its contents then live elsewhere in the lower
    /// layers, which this view does not follow.
    pub fn child(&self, name: &CStr) -> io::Result<MergedDir> {
        let mut layers = Vec::new();
        for layer in &self.layers {
            let Some(st) = lstat_at(layer.as_fd(), name)? else {
                continue;
            };
            if file_type(&st) != FileType::Directory {
                // A whiteout or a non-directory ends the merge; it shows only
                // if no nearer layer had a directory here.
                break;
            }
            let marks = Marks::of(layer.as_fd(), name)?;
            if marks.redirect {
                let msg = format!(
                    "lower directory {:?} has overlay.redirect, which is not followed",
                    name
                );
                return Err(io::Error::new(io::ErrorKind::Unsupported, msg));
            }
            let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            layers.push(rustix::fs::openat(
                layer.as_fd(),
                name,
                flags,
                Mode::empty(),
            )?);
            if marks.opaque {
                break;
            }
        }
        Ok(MergedDir { layers })
    }

    /// The entries the merged view shows in this directory, sorted by name
    /// bytes, with the `lstat` of the layer that provides each.
    pub fn entries(&self) -> io::Result<Vec<(CString, Stat)>> {
        // `None` records a whiteout: the name is hidden from farther layers.
        let mut seen: BTreeMap<CString, Option<Stat>> = BTreeMap::new();
        for layer in &self.layers {
            for (name, _) in read_dir_sorted(layer.as_fd())? {
                if seen.contains_key(&name) {
                    continue;
                }
                let Some(st) = lstat_at(layer.as_fd(), &name)? else {
                    continue;
                };
                let shown = if is_whiteout_at(layer.as_fd(), &name, &st)? {
                    None
                } else {
                    Some(st)
                };
                seen.insert(name, shown);
            }
        }
        Ok(seen
            .into_iter()
            .filter_map(|(name, st)| Some((name, st?)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    fn whiteout(dir: &Path, name: &str) {
        let d = open_dir(dir).unwrap();
        rustix::fs::mknodat(d.as_fd(), name, FileType::CharacterDevice, Mode::empty(), 0).unwrap();
    }

    fn names(entries: &[(CString, Stat)]) -> Vec<&str> {
        entries.iter().map(|(n, _)| n.to_str().unwrap()).collect()
    }

    /// The nearest layer wins, whiteouts (both forms) hide farther layers,
    /// an opaque directory stops the merge, and a non-directory in a nearer
    /// layer hides a farther directory.
    #[test]
    fn merge_rules() {
        let t = tempfile::tempdir().unwrap();
        let (near, far) = (t.path().join("near"), t.path().join("far"));
        for d in ["far/d", "far/o", "far/f", "far/x", "near/d", "near/o"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in [
            "far/d/a",
            "far/d/gone",
            "far/d/xgone",
            "far/o/hidden",
            "far/x/y",
            "near/d/b",
            "near/o/shown",
        ] {
            std::fs::write(t.path().join(f), f).unwrap();
        }
        std::fs::write(near.join("x"), "file over a dir").unwrap();
        whiteout(&near.join("d"), "gone");
        std::fs::write(near.join("d/xgone"), "").unwrap();
        let nd = open_dir(&near.join("d")).unwrap();
        xattr::set(
            nd.as_fd(),
            &c("xgone"),
            OsStr::new("trusted.overlay.whiteout"),
            b"",
        )
        .unwrap();
        let n = open_dir(&near).unwrap();
        xattr::set(
            n.as_fd(),
            &c("o"),
            OsStr::new("trusted.overlay.opaque"),
            b"y",
        )
        .unwrap();

        let root = MergedDir::open(&[&near, &far]).unwrap();
        assert_eq!(names(&root.entries().unwrap()), ["d", "f", "o", "x"]);
        let d = root.child(&c("d")).unwrap();
        assert_eq!(names(&d.entries().unwrap()), ["a", "b"]);
        assert!(d.lookup(&c("gone")).unwrap().is_none());
        assert!(d.lookup(&c("xgone")).unwrap().is_none());
        assert!(d.lookup(&c("a")).unwrap().is_some());
        assert_eq!(
            names(&root.child(&c("o")).unwrap().entries().unwrap()),
            ["shown"]
        );
        assert!(
            root.child(&c("x")).unwrap().is_empty(),
            "a file hides the farther directory"
        );
        assert!(root.child(&c("f")).unwrap().entries().unwrap().is_empty());
        assert!(root.child(&c("missing")).unwrap().is_empty());
    }

    /// A renamed lower directory cannot be followed and says so.
    #[test]
    fn redirect_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("r")).unwrap();
        let d = open_dir(t.path()).unwrap();
        xattr::set(
            d.as_fd(),
            &c("r"),
            OsStr::new("trusted.overlay.redirect"),
            b"/old",
        )
        .unwrap();
        let root = MergedDir::open(&[t.path()]).unwrap();
        assert_eq!(
            root.child(&c("r")).unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
    }
}
