//! Helpers shared by the integration tests: building trees by hand, reading
//! a layer tar back, and describing a tree so two can be compared.
//!
//! Every test needs root (mknod, chown, trusted.* xattrs, overlay mounts);
//! the machines and CI run as root, and a non-root run fails loudly instead
//! of skipping.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use drivers_api::DiffSource;
use drivers_diff::Change;
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps};
use sha2::{Digest, Sha256};

pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root (mknod, chown, trusted.* xattrs, mount)"
    );
}

/// A fresh directory under /tmp.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("drivers-diff-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// Writes `content` to `path` (parents created) with exactly `mode`.
pub fn write(path: &Path, content: &[u8], mode: u32) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Creates directory `path` (parents created) with exactly `mode`.
pub fn mkdir(path: &Path, mode: u32) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets atime and mtime of `path` without following a symlink.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

pub fn mknod(path: &Path, ft: FileType, mode: u32, dev: u64) {
    rustix::fs::mknodat(rustix::fs::CWD, path, ft, Mode::from_raw_mode(mode), dev).unwrap();
    // mknod applies the umask; the tests want exact modes.
    if ft != FileType::CharacterDevice || dev != 0 {
        rustix::fs::chmodat(
            rustix::fs::CWD,
            path,
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )
        .unwrap();
    }
}

/// A 0/0 character device: overlayfs's whiteout.
pub fn whiteout(path: &Path) {
    mknod(path, FileType::CharacterDevice, 0, 0);
}

pub fn set_xattr(path: &Path, key: &str, value: &[u8]) {
    let dir = drivers_fs::open_dir(path.parent().unwrap()).unwrap();
    let name = CString::new(path.file_name().unwrap().as_bytes()).unwrap();
    drivers_fs::xattr::set(dir.as_fd(), &name, OsStr::new(key), value).unwrap();
}

/// A new directory holding a full copy of `src` (all attributes, hardlinks).
pub fn copy(src: &Path) -> tempfile::TempDir {
    let t = tmp();
    drivers_fs::copy::copy_tree(src, t.path()).unwrap();
    t
}

/// Deterministic pseudo-random bytes (xorshift), like graphtest's
/// `randomContent(size, seed)`.
pub fn random_content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn compare(layer: &Path, parent: Option<&Path>) -> DiffSource {
    DiffSource::Compare {
        layer: layer.to_owned(),
        parent: parent.map(Path::to_owned),
    }
}

/// `"C /a/b"` lines, moby's `Change.String()` form; the path is printed
/// with escapes so non-UTF-8 names stay one line.
pub fn lines(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| format!("{} {}", c.kind, esc(c.path.as_os_str().as_bytes())))
        .collect()
}

pub fn esc(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// One tar entry, read back with the tar crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    pub name: Vec<u8>,
    /// Tar typeflag: '0' file, '1' hardlink, '2' symlink, '3' char,
    /// '4' block, '5' dir, '6' fifo.
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: u64,
    pub link: Vec<u8>,
    pub dev: (u32, u32),
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub data: Vec<u8>,
}

impl TarEntry {
    /// A compact, comparable line: name, type, mode, owner, link, device,
    /// xattr names.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} {} {:04o} {}:{}",
            esc(&self.name),
            self.kind,
            self.mode,
            self.uid,
            self.gid
        );
        if !self.link.is_empty() {
            s += &format!(" -> {}", esc(&self.link));
        }
        if matches!(self.kind, '3' | '4') {
            s += &format!(" dev={},{}", self.dev.0, self.dev.1);
        }
        if self.kind == '0' {
            s += &format!(" size={}", self.size);
        }
        for (k, _) in &self.xattrs {
            s += &format!(" x:{k}");
        }
        s
    }
}

/// Every entry of a tar. PAX extended headers are parsed here, by record
/// length as POSIX says, because the tar crate splits records at newlines
/// and so misreads binary xattr values that contain `\n`.
pub fn read_tar(bytes: &[u8]) -> Vec<TarEntry> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(bytes);
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for e in ar.entries().unwrap().raw(true) {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        match h.entry_type().as_byte() {
            b'x' => {
                pax = parse_pax(&data);
                continue;
            }
            b'g' | b'L' | b'K' => panic!("unexpected {:?} header", h.entry_type()),
            _ => {}
        }
        let records = std::mem::take(&mut pax);
        let get = |k: &str| {
            records
                .iter()
                .find(|(key, _)| key == k.as_bytes())
                .map(|(_, v)| v.clone())
        };
        let num = |k: &str, field: u64| {
            get(k)
                .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
                .unwrap_or(field)
        };
        let xattrs = records
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    String::from_utf8(k.strip_prefix(b"SCHILY.xattr.")?.to_vec()).unwrap(),
                    v.clone(),
                ))
            })
            .collect();
        out.push(TarEntry {
            name: get("path").unwrap_or_else(|| h.path_bytes().into_owned()),
            kind: h.entry_type().as_byte() as char,
            mode: h.mode().unwrap(),
            uid: num("uid", h.uid().unwrap()),
            gid: num("gid", h.gid().unwrap()),
            mtime: h.mtime().unwrap(),
            size: num("size", h.size().unwrap()),
            link: get("linkpath").unwrap_or_else(|| {
                h.link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default()
            }),
            dev: (
                h.device_major().unwrap().unwrap_or(0),
                h.device_minor().unwrap().unwrap_or(0),
            ),
            xattrs,
            data,
        });
    }
    out
}

/// PAX records `"<len> <key>=<value>\n"`, split by their length field.
fn parse_pax(mut data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data.iter().position(|&b| b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&data[..sp]).unwrap().parse().unwrap();
        let record = &data[sp + 1..len - 1];
        assert_eq!(data[len - 1], b'\n', "record must end in a newline");
        let eq = record.iter().position(|&b| b == b'=').unwrap();
        out.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    out
}

/// `rootfs-manifest.py layer FILE`: Python's tarfile reading the tar.
pub fn python_listing(tar: &Path) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tools/rootfs-manifest.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("layer")
        .arg(tar)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rootfs-manifest.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs a command, panicking with its stderr on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Extracts `tar` onto `dir` with GNU tar, keeping owners, modes and
/// xattrs (the flags image tools use).
pub fn gnu_extract(tar: &Path, dir: &Path, extra: &[&str]) {
    let mut cmd = Command::new("tar");
    cmd.args([
        "-x",
        "--xattrs",
        "--xattrs-include=*",
        "--numeric-owner",
        "-p",
        "-f",
    ])
    .arg(tar)
    .arg("-C")
    .arg(dir);
    cmd.args(extra);
    run(&mut cmd);
}

/// A description of every entry below `root` (not the root itself): type,
/// mode, owner, size and content digest, link target, device, xattrs
/// (storage-internal ones dropped), mtime in seconds, and for hardlinked
/// files the first path of their group. `nlink` itself is left out (overlay
/// counts links hidden by whiteouts).
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut paths = Vec::new();
    collect(root, Path::new(""), &mut paths);
    paths.sort();
    let mut first_of: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut out = BTreeMap::new();
    for rel in paths {
        let p = root.join(OsStr::from_bytes(&rel));
        let md = std::fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let mut desc = format!(
            "{:o} {}:{} mtime={}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.mtime()
        );
        if ft.is_file() {
            let mut h = Sha256::new();
            std::io::copy(&mut std::fs::File::open(&p).unwrap(), &mut h).unwrap();
            desc += &format!(" size={} sha={}", md.len(), hex::encode(&h.finalize()[..8]));
            if md.nlink() > 1 {
                let first = first_of
                    .entry((md.dev(), md.ino()))
                    .or_insert_with(|| rel.clone());
                if *first != rel {
                    desc += &format!(" hardlink-of={}", esc(first));
                }
            }
        } else if ft.is_symlink() {
            desc += &format!(
                " -> {}",
                esc(std::fs::read_link(&p).unwrap().as_os_str().as_bytes())
            );
        } else if !ft.is_dir() {
            desc += &format!(" rdev={}", md.rdev());
        }
        let dir = drivers_fs::open_dir(p.parent().unwrap()).unwrap();
        let name = CString::new(p.file_name().unwrap().as_bytes()).unwrap();
        for (k, v) in drivers_fs::xattr::list(dir.as_fd(), &name).unwrap() {
            if !drivers_fs::xattr::is_storage_internal(k.as_bytes()) {
                desc += &format!(" {}={}", k.to_string_lossy(), hex::encode(v));
            }
        }
        out.insert(rel, desc);
    }
    out
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<Vec<u8>>) {
    for e in std::fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let child: PathBuf = rel.join(e.file_name());
        out.push(child.as_os_str().as_bytes().to_vec());
        if e.file_type().unwrap().is_dir() {
            collect(root, &child, out);
        }
    }
}

/// Asserts two snapshots are equal, printing only the differing entries.
pub fn assert_same_tree(got: &BTreeMap<Vec<u8>, String>, want: &BTreeMap<Vec<u8>, String>) {
    let mut diffs = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            Some(g) if g == v => {}
            Some(g) => diffs.push(format!("~ {}\n    want {v}\n    got  {g}", esc(k))),
            None => diffs.push(format!("- {} (missing) {v}", esc(k))),
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            diffs.push(format!("+ {} (extra) {g}", esc(k)));
        }
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
}
