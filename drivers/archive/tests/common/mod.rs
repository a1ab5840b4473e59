//! Helpers shared by the integration tests: a byte-level tar writer that
//! can produce what the `tar` crate's builder refuses (`..`, absolute
//! names, bad sizes), sandboxes with a canary outside the root, and tree
//! snapshots.

#![allow(dead_code, reason = "each test binary uses a subset")]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use drivers_api::{ApplyFormat, ApplyTarget, ErrorKind};
use drivers_archive::{ApplyOptions, ApplyReport, Error, Problem};
use sha2::{Digest, Sha256};

/// One tar entry to write.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: Vec<u8>,
    pub ty: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: Vec<u8>,
    pub dev: (u32, u32),
    pub data: Vec<u8>,
    /// Overrides the header's size field (the data written stays `data`).
    pub size_field: Option<u64>,
    pub pax: Vec<(String, Vec<u8>)>,
}

pub const MTIME: u64 = 1_000_000_000;

impl Entry {
    fn new(name: impl AsRef<[u8]>, ty: u8, mode: u32) -> Entry {
        Entry {
            name: name.as_ref().to_vec(),
            ty,
            mode,
            uid: 0,
            gid: 0,
            mtime: MTIME,
            link: Vec::new(),
            dev: (0, 0),
            data: Vec::new(),
            size_field: None,
            pax: Vec::new(),
        }
    }
    pub fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Entry {
        let mut e = Entry::new(name, b'0', 0o644);
        e.data = data.as_ref().to_vec();
        e
    }
    pub fn dir(name: impl AsRef<[u8]>) -> Entry {
        Entry::new(name, b'5', 0o755)
    }
    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        let mut e = Entry::new(name, b'2', 0o777);
        e.link = target.as_ref().to_vec();
        e
    }
    pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        let mut e = Entry::new(name, b'1', 0o644);
        e.link = target.as_ref().to_vec();
        e
    }
    pub fn device(name: impl AsRef<[u8]>, ty: u8, major: u32, minor: u32) -> Entry {
        let mut e = Entry::new(name, ty, 0o600);
        e.dev = (major, minor);
        e
    }
    /// A whiteout as buildah writes it: an empty regular file, mode 0.
    pub fn whiteout(name: impl AsRef<[u8]>) -> Entry {
        Entry::new(name, b'0', 0)
    }
    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, mtime: u64) -> Entry {
        self.mtime = mtime;
        self
    }
    pub fn pax(mut self, key: &str, value: impl AsRef<[u8]>) -> Entry {
        self.pax.push((key.to_owned(), value.as_ref().to_vec()));
        self
    }
    pub fn size_field(mut self, size: u64) -> Entry {
        self.size_field = Some(size);
        self
    }
}

/// A 512-byte ustar header with `name` written as raw bytes (no checks).
pub fn header(name: &[u8], ty: u8, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    let n = name.len().min(100);
    h.as_mut_bytes()[..n].copy_from_slice(&name[..n]);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.as_mut_bytes()[156] = ty;
    h
}

/// A PAX record: `<len> key=value\n`, the length counting itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while rest + len.to_string().len() != len {
        len = rest + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn pad(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(512), 0);
}

/// A tar under construction.
#[derive(Default)]
pub struct Tar(pub Vec<u8>);

impl Tar {
    pub fn new() -> Tar {
        Tar(Vec::new())
    }

    /// Appends an entry, padded; names and link targets over 100 bytes go
    /// into PAX records.
    pub fn add(mut self, e: Entry) -> Tar {
        self.add_unpadded(e);
        pad(&mut self.0);
        self
    }

    /// Appends an entry without padding its data.
    pub fn add_unpadded(&mut self, mut e: Entry) {
        if e.name.len() > 100 {
            e.pax.push(("path".into(), e.name.clone()));
        }
        if e.link.len() > 100 {
            e.pax.push(("linkpath".into(), e.link.clone()));
        }
        if !e.pax.is_empty() {
            let data: Vec<u8> = e.pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            let mut h = header(b"PaxHeaders/entry", b'x', 0o644, data.len() as u64);
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(&data);
            pad(&mut self.0);
        }
        let size = e.size_field.unwrap_or(e.data.len() as u64);
        let mut h = header(&e.name, e.ty, e.mode, size);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        let n = e.link.len().min(100);
        h.as_mut_bytes()[157..157 + n].copy_from_slice(&e.link[..n]);
        h.set_device_major(e.dev.0).unwrap();
        h.set_device_minor(e.dev.1).unwrap();
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(&e.data);
    }

    /// Appends raw bytes.
    pub fn raw(mut self, bytes: &[u8]) -> Tar {
        self.0.extend_from_slice(bytes);
        self
    }

    /// The tar with its two zero end-of-archive blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A temporary directory holding the target root (0755, as `prepare`
/// makes it), lower directories on demand, and `outside/` with a canary
/// file the tests check was never touched.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub outside: PathBuf,
    before: String,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("archive-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("canary"), "canary\n").unwrap();
        std::fs::write(outside.join("sub/inner"), "inner\n").unwrap();
        let before = snapshot(&outside);
        Sandbox {
            dir,
            root,
            outside,
            before,
        }
    }

    pub fn full(&self) -> ApplyTarget {
        ApplyTarget {
            root: self.root.clone(),
            format: ApplyFormat::Full,
        }
    }

    /// The root as an overlay upper over `lowers` (nearest first).
    pub fn overlay(&self, lowers: &[PathBuf]) -> ApplyTarget {
        upper(&self.root, lowers)
    }

    /// A fresh directory `name` next to the root (a lower layer).
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// Nothing outside the root changed, and nothing new appeared next to
    /// it.
    pub fn assert_outside_untouched(&self) {
        assert_eq!(snapshot(&self.outside), self.before, "outside/ changed");
        assert_eq!(
            std::fs::read_to_string(self.outside.join("canary")).unwrap(),
            "canary\n"
        );
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "root" && !n.starts_with("lower"))
            .collect();
        names.sort();
        assert_eq!(names, ["outside"], "unexpected entries next to the root");
    }

    /// Absolute path of the canary, as bytes without the leading `/`.
    pub fn canary_abs(&self) -> Vec<u8> {
        self.outside.join("canary").as_os_str().as_bytes().to_vec()
    }
}

/// `upper` as an overlay upper over `lowers` (nearest first).
pub fn upper(upper: &Path, lowers: &[PathBuf]) -> ApplyTarget {
    ApplyTarget {
        root: upper.to_owned(),
        format: ApplyFormat::OverlayUpper {
            lower: lowers.to_vec(),
        },
    }
}

pub fn apply(tar: &[u8], target: &ApplyTarget) -> Result<ApplyReport, Error> {
    drivers_archive::apply(tar, target, &ApplyOptions::default())
}

/// The apply failed for `problem`, with a one-line message (error chain
/// included) classified as invalid input.
pub fn assert_refused(r: Result<ApplyReport, Error>, problem: Problem) -> String {
    let e = r.expect_err("the layer must be refused");
    let msg = chain(&e);
    assert!(!msg.contains('\n'), "multi-line message: {msg}");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{msg}");
    assert_eq!(e.problem(), Some(&problem), "{msg}");
    msg
}

/// The error and its sources joined with `: `, as the CLI prints them.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// A comparable listing of a tree: path, type, mode, owner, size, mtime,
/// content digest, symlink target, device, xattrs (all of them, overlay's
/// included) — enough to prove a tree was not modified.
pub fn snapshot(dir: &Path) -> String {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out.into_iter().map(|(k, v)| format!("{k} {v}\n")).collect()
}

fn walk(base: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
    let md = std::fs::symlink_metadata(p).unwrap();
    let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
    let ft = md.file_type();
    let mut line = format!(
        "mode={:o} uid={} gid={} size={} mtime={}.{} nlink={} rdev={}",
        md.mode(),
        md.uid(),
        md.gid(),
        md.size(),
        md.mtime(),
        md.mtime_nsec(),
        if ft.is_dir() { 0 } else { md.nlink() },
        md.rdev()
    );
    if ft.is_file() {
        line.push_str(&format!(" sha={}", sha256(&std::fs::read(p).unwrap())));
    } else if ft.is_symlink() {
        line.push_str(&format!(" -> {:?}", std::fs::read_link(p).unwrap()));
    }
    for (k, v) in xattrs(p) {
        line.push_str(&format!(" {k}={}", hex::encode(v)));
    }
    out.insert(rel, line);
    if ft.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            walk(base, &e.unwrap().path(), out);
        }
    }
}

/// All xattrs of a path, not following a symlink.
pub fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut buf = vec![0u8; 64 << 10];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        out.push((name.clone(), xattr(p, &name).unwrap()));
    }
    out.sort();
    out
}

pub fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64 << 10];
    rustix::fs::lgetxattr(p, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

pub fn is_whiteout(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

pub fn is_opaque(p: &Path) -> bool {
    xattr(p, "trusted.overlay.opaque").as_deref() == Some(b"y")
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

pub fn meta(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap()
}

/// Runs the repository's `rootfs-manifest.py tree DIR --no-dir-mtime`.
pub fn manifest(dir: &Path) -> Vec<String> {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tools/rootfs-manifest.py");
    let out = std::process::Command::new("python3")
        .arg(&tool)
        .arg("tree")
        .arg(dir)
        .arg("--no-dir-mtime")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Unmounts on drop, so a failing assertion does not leak the mount.
pub struct Mounted(PathBuf);

impl Mounted {
    /// A read-only overlay of `lowers` (nearest first) at `at`.
    pub fn overlay(lowers: &[PathBuf], at: &Path) -> Mounted {
        let dirs: Vec<&str> = lowers.iter().map(|p| p.to_str().unwrap()).collect();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "overlay",
                "overlay",
                "-o",
                &format!("lowerdir={}", dirs.join(":")),
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mount failed");
        Mounted(at.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
