//! Extended attributes of any file type, addressed as (directory fd, name).
//!
//! Symlinks and device nodes cannot be opened for `fsetxattr`, so every call
//! goes through `/proc/self/fd/<dir>/<name>` with the `l*xattr` family, which
//! resolves the directory through its descriptor and never follows the last
//! component.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use rustix::io::Errno;

/// Names that belong to the storage, not to the image: overlayfs's own
/// metadata. They are never copied, exported or compared.
pub fn is_storage_internal(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> PathBuf {
    let mut p = OsString::from(format!("/proc/self/fd/{}/", dir.as_raw_fd()));
    p.push(OsStr::from_bytes(name.to_bytes()));
    PathBuf::from(p)
}

/// All extended attributes of `name` in `dir`, sorted by name. Filesystems
/// without xattr support yield an empty list.
pub fn list(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let path = proc_path(dir, name);
    let names = loop {
        let size = match rustix::fs::llistxattr_query(&path) {
            Ok(n) => n,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match rustix::fs::llistxattr(&path, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            // The list grew between the two calls: ask again.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for key in names.split(|&b| b == 0).filter(|k| !k.is_empty()) {
        let key = OsStr::from_bytes(key);
        match get_path(&path, key)? {
            Some(value) => out.push((key.to_owned(), value)),
            None => continue, // removed meanwhile
        }
    }
    out.sort();
    Ok(out)
}

/// The value of attribute `key` on `name` in `dir`, `None` if absent.
pub fn get(dir: BorrowedFd<'_>, name: &CStr, key: &OsStr) -> io::Result<Option<Vec<u8>>> {
    get_path(&proc_path(dir, name), key)
}

fn get_path(path: &PathBuf, key: &OsStr) -> io::Result<Option<Vec<u8>>> {
    loop {
        let size = match rustix::fs::lgetxattr_query(path, key) {
            Ok(n) => n,
            Err(Errno::NODATA) | Err(Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; size];
        if size == 0 {
            return Ok(Some(buf));
        }
        match rustix::fs::lgetxattr(path, key, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::RANGE) => continue,
            Err(Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sets attribute `key` on `name` in `dir`.
pub fn set(dir: BorrowedFd<'_>, name: &CStr, key: &OsStr, value: &[u8]) -> io::Result<()> {
    let path = proc_path(dir, name);
    Ok(rustix::fs::lsetxattr(
        &path,
        key,
        value,
        rustix::fs::XattrFlags::empty(),
    )?)
}

/// Removes attribute `key` from `name` in `dir`; absent is not an error.
pub fn remove(dir: BorrowedFd<'_>, name: &CStr, key: &OsStr) -> io::Result<()> {
    let path = proc_path(dir, name);
    match rustix::fs::lremovexattr(&path, key) {
        Ok(()) | Err(Errno::NODATA) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Copies every attribute except storage-internal ones from one entry to
/// another.
pub fn copy(
    src_dir: BorrowedFd<'_>,
    src: &CStr,
    dst_dir: BorrowedFd<'_>,
    dst: &CStr,
) -> io::Result<()> {
    for (key, value) in list(src_dir, src)? {
        if is_storage_internal(key.as_bytes()) {
            continue;
        }
        set(dst_dir, dst, &key, &value)?;
    }
    Ok(())
}

/// Turns a name into the C string the `*at` calls take.
pub fn cstring(name: &[u8]) -> io::Result<CString> {
    CString::new(name.to_vec())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

/// `OsString` from raw bytes (xattr names in tar headers are bytes).
pub fn os(name: &[u8]) -> OsString {
    OsString::from_vec(name.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// User xattrs round-trip, binary values included; overlay's own
    /// attributes are recognised as internal.
    #[test]
    fn roundtrip_and_internal_names() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), "x").unwrap();
        let dir = crate::open_dir(t.path()).unwrap();
        let f = cstring(b"f").unwrap();
        set(dir.as_fd(), &f, OsStr::new("user.bin"), &[0, 0xff, 0x10]).unwrap();
        assert_eq!(
            get(dir.as_fd(), &f, OsStr::new("user.bin")).unwrap(),
            Some(vec![0, 0xff, 0x10])
        );
        assert_eq!(list(dir.as_fd(), &f).unwrap().len(), 1);
        remove(dir.as_fd(), &f, OsStr::new("user.bin")).unwrap();
        remove(dir.as_fd(), &f, OsStr::new("user.bin")).unwrap();
        assert!(list(dir.as_fd(), &f).unwrap().is_empty());
        assert!(is_storage_internal(b"trusted.overlay.opaque"));
        assert!(!is_storage_internal(b"security.capability"));
    }
}
