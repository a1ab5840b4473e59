//! Snapshots of a directory tree and a comparison that says what differs.
//!
//! What is compared (conformance.md, "Directory comparison"): path, type,
//! permission bits (setuid/setgid/sticky included), uid/gid, xattrs except
//! storage-internal ones (`trusted.overlay.*`), size and sha256 of regular
//! files, hardlink groups, symlink target, device numbers, and the mtime of
//! everything that is not a directory. `nlink` only when asked: overlayfs
//! counts links a whiteout hides, so hardlinks are compared as *groups of
//! paths sharing an inode* instead, which every backend must get right.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// One entry of a [`Tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `f` file, `d` dir, `l` symlink, `c`/`b` device, `p` fifo, `s` socket.
    pub kind: char,
    /// Permission bits including setuid, setgid and sticky.
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of a regular file (0 otherwise).
    pub size: u64,
    /// sha256 of a regular file's content.
    pub sha256: Option<String>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Device numbers of a device node.
    pub rdev: Option<(u32, u32)>,
    /// Extended attributes minus storage-internal ones.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// (seconds, nanoseconds) for non-directories.
    pub mtime: Option<(i64, i64)>,
    /// Link count as the filesystem reports it.
    pub nlink: u64,
    /// Other paths of this tree sharing the inode (sorted), for files with
    /// more than one name in the tree.
    pub links: Vec<Vec<u8>>,
    ino: (u64, u64),
}

/// A directory tree keyed by path bytes (`/`, `/a`, `/a/b`…).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// Entries by absolute path within the tree; `/` is the root itself.
    pub nodes: BTreeMap<Vec<u8>, Node>,
}

/// What [`Tree::diff`] compares beyond the default set.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompareOpts {
    /// Compare `nlink` of non-directories too.
    pub nlink: bool,
    /// Leave the root directory's own attributes out (for trees whose root
    /// is a temporary directory of the test, not a layer root).
    pub skip_root: bool,
}

fn kind_of(ft: std::fs::FileType) -> char {
    if ft.is_file() {
        'f'
    } else if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else {
        '?'
    }
}

/// The xattrs of `path` (not following a final symlink), minus
/// storage-internal names.
pub fn xattrs_of(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("list xattrs of {}", path.display())),
    };
    if size == 0 {
        return Ok(out);
    }
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut names[..])
        .with_context(|| format!("list xattrs of {}", path.display()))?;
    names.truncate(n);
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if drivers_fs::xattr::is_storage_internal(name) {
            continue;
        }
        let cname = std::ffi::CString::new(name)?;
        let len = rustix::fs::lgetxattr_query(path, cname.as_c_str())
            .with_context(|| format!("read xattr of {}", path.display()))?;
        let mut value = vec![0u8; len];
        let n = rustix::fs::lgetxattr(path, cname.as_c_str(), &mut value[..])
            .with_context(|| format!("read xattr of {}", path.display()))?;
        value.truncate(n);
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

/// sha256 of a file's content, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

impl Tree {
    /// Reads the tree under `root` (not following symlinks; file contents
    /// are hashed).
    pub fn read(root: &Path) -> Result<Tree> {
        let mut tree = Tree::default();
        tree.visit(root, b"/".to_vec())?;
        // Hardlink groups: every path sharing an inode, within this tree.
        let mut groups: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
        for (p, n) in &tree.nodes {
            if n.kind != 'd' && n.nlink > 1 {
                groups.entry(n.ino).or_default().push(p.clone());
            }
        }
        for paths in groups.values().filter(|g| g.len() > 1) {
            for p in paths {
                let others = paths.iter().filter(|o| *o != p).cloned().collect();
                if let Some(n) = tree.nodes.get_mut(p) {
                    n.links = others;
                }
            }
        }
        Ok(tree)
    }

    fn visit(&mut self, path: &Path, rel: Vec<u8>) -> Result<()> {
        let md = std::fs::symlink_metadata(path)
            .with_context(|| format!("inspect {}", path.display()))?;
        let kind = kind_of(md.file_type());
        let mut node = Node {
            kind,
            perm: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: 0,
            sha256: None,
            target: None,
            rdev: None,
            xattrs: xattrs_of(path)?,
            mtime: (kind != 'd').then(|| (md.mtime(), md.mtime_nsec())),
            nlink: md.nlink(),
            links: Vec::new(),
            ino: (md.dev(), md.ino()),
        };
        match kind {
            'f' => {
                node.size = md.len();
                node.sha256 = Some(sha256_file(path)?);
            }
            'l' => {
                let t = std::fs::read_link(path)
                    .with_context(|| format!("read link {}", path.display()))?;
                node.target = Some(t.as_os_str().as_bytes().to_vec());
            }
            'c' | 'b' => {
                let dev = md.rdev();
                node.rdev = Some((rustix::fs::major(dev), rustix::fs::minor(dev)));
            }
            _ => {}
        }
        self.nodes.insert(rel.clone(), node);
        if kind == 'd' {
            let mut names: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("read directory {}", path.display()))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("read directory {}", path.display()))?;
            names.sort();
            for name in names {
                let mut child = rel.clone();
                if child != b"/" {
                    child.push(b'/');
                }
                child.extend_from_slice(name.as_bytes());
                self.visit(&path.join(&name), child)?;
            }
        }
        Ok(())
    }

    /// The differences of `actual` against `self` (the expectation), one
    /// line each; empty when equal.
    pub fn diff(&self, actual: &Tree, opts: CompareOpts) -> Vec<String> {
        let mut out = Vec::new();
        let keys: std::collections::BTreeSet<&Vec<u8>> =
            self.nodes.keys().chain(actual.nodes.keys()).collect();
        for k in keys {
            if opts.skip_root && k.as_slice() == b"/" {
                continue;
            }
            let p = esc(k);
            match (self.nodes.get(k), actual.nodes.get(k)) {
                (Some(e), None) => out.push(format!("missing    {p}  (expected {})", render(e))),
                (None, Some(a)) => out.push(format!("unexpected {p}  ({})", render(a))),
                (Some(e), Some(a)) => {
                    let mut d = Vec::new();
                    let mut field = |name: &str, ev: String, av: String| {
                        if ev != av {
                            d.push(format!("{name} {ev} != {av}"));
                        }
                    };
                    field("type", e.kind.to_string(), a.kind.to_string());
                    field("mode", format!("{:04o}", e.perm), format!("{:04o}", a.perm));
                    field(
                        "owner",
                        format!("{}:{}", e.uid, e.gid),
                        format!("{}:{}", a.uid, a.gid),
                    );
                    if e.kind == 'f' && a.kind == 'f' {
                        field("size", e.size.to_string(), a.size.to_string());
                        field(
                            "sha256",
                            short(e.sha256.as_deref()),
                            short(a.sha256.as_deref()),
                        );
                    }
                    field("target", target(e), target(a));
                    field("dev", format!("{:?}", e.rdev), format!("{:?}", a.rdev));
                    field("xattrs", xattrs(&e.xattrs), xattrs(&a.xattrs));
                    field("mtime", mtime(e.mtime), mtime(a.mtime));
                    field("hardlinks", links(&e.links), links(&a.links));
                    if opts.nlink && e.kind != 'd' {
                        field("nlink", e.nlink.to_string(), a.nlink.to_string());
                    }
                    if !d.is_empty() {
                        out.push(format!("differs    {p}: {}", d.join(", ")));
                    }
                }
                (None, None) => {}
            }
        }
        out
    }

    /// One line per entry, as `rootfs-manifest.py tree` shows them.
    pub fn listing(&self) -> String {
        let mut s = String::new();
        for (p, n) in &self.nodes {
            let _ = writeln!(s, "{}\t{}", esc(p), render(n));
        }
        s
    }
}

fn short(h: Option<&str>) -> String {
    h.map(|h| h[..16.min(h.len())].to_owned())
        .unwrap_or_default()
}

fn target(n: &Node) -> String {
    n.target.as_deref().map(esc).unwrap_or_default()
}

fn xattrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let parts: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{}={}", esc(k), hex::encode(v)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn mtime(m: Option<(i64, i64)>) -> String {
    match m {
        None => "-".into(),
        Some((s, ns)) => format!("{s}.{ns:09}"),
    }
}

fn links(l: &[Vec<u8>]) -> String {
    let parts: Vec<String> = l.iter().map(|p| esc(p)).collect();
    format!("[{}]", parts.join(" "))
}

/// Path bytes for messages: UTF-8 where valid, `\xNN` elsewhere.
pub fn esc(b: &[u8]) -> String {
    b.utf8_chunks()
        .map(|c| {
            let mut s = c.valid().to_owned();
            for byte in c.invalid() {
                let _ = write!(s, "\\x{byte:02x}");
            }
            s
        })
        .collect()
}

fn render(n: &Node) -> String {
    let mut s = format!("{} {:04o} {}:{}", n.kind, n.perm, n.uid, n.gid);
    if n.kind == 'f' {
        let _ = write!(s, " size={} sha256={}", n.size, short(n.sha256.as_deref()));
    }
    if let Some(t) = &n.target {
        let _ = write!(s, " -> {}", esc(t));
    }
    if let Some((ma, mi)) = n.rdev {
        let _ = write!(s, " dev={ma},{mi}");
    }
    if !n.xattrs.is_empty() {
        let _ = write!(s, " xattrs{}", xattrs(&n.xattrs));
    }
    if n.kind != 'd' {
        let _ = write!(s, " nlink={}", n.nlink);
    }
    if !n.links.is_empty() {
        let _ = write!(s, " hardlinks={}", links(&n.links));
    }
    if n.mtime.is_some() {
        let _ = write!(s, " mtime={}", mtime(n.mtime));
    }
    s
}

/// Requires the tree at `actual` to equal the one at `expected`; on a
/// difference prints both listings to stderr (prefixed with `label`) and
/// fails with the differences.
pub fn expect_equal(label: &str, expected: &Path, actual: &Path, opts: CompareOpts) -> Result<()> {
    let e = Tree::read(expected)?;
    let a = Tree::read(actual)?;
    expect_trees_equal(label, &e, &a, opts)
}

/// [`expect_equal`] on trees already read.
pub fn expect_trees_equal(
    label: &str,
    expected: &Tree,
    actual: &Tree,
    opts: CompareOpts,
) -> Result<()> {
    let d = expected.diff(actual, opts);
    if d.is_empty() {
        return Ok(());
    }
    eprintln!(
        "---- {label}: expected tree ----\n{}---- {label}: actual tree ----\n{}---- end {label} ----",
        expected.listing(),
        actual.listing()
    );
    bail!("{label}: trees differ:\n  {}", d.join("\n  "))
}

/// Paths (relative to `root`) of everything under `root`, sorted; `root`
/// itself excluded.
pub fn all_paths(root: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("read directory {}", dir.display())),
        };
        for e in rd {
            let e = e.with_context(|| format!("read directory {}", dir.display()))?;
            let r = rel.join(e.file_name());
            let is_dir = e.file_type()?.is_dir();
            out.push(r.clone());
            if is_dir {
                walk(&e.path(), &r, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A content change, a mode change, a missing and an extra path are each
    /// reported; identical trees compare equal.
    #[test]
    fn diff_reports_each_kind_of_difference() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::write(d.join("same"), "x").unwrap();
        }
        assert!(
            Tree::read(a.path())
                .unwrap()
                .diff(&Tree::read(b.path()).unwrap(), CompareOpts::default())
                .iter()
                .all(|l| l.contains("mtime")),
            "only mtimes may differ between two fresh writes"
        );
        std::fs::write(a.path().join("content"), "1").unwrap();
        std::fs::write(b.path().join("content"), "2").unwrap();
        std::fs::write(a.path().join("gone"), "").unwrap();
        std::fs::write(b.path().join("extra"), "").unwrap();
        let d = Tree::read(a.path())
            .unwrap()
            .diff(&Tree::read(b.path()).unwrap(), CompareOpts::default());
        let text = d.join("\n");
        assert!(text.contains("missing    /gone"), "{text}");
        assert!(text.contains("unexpected /extra"), "{text}");
        assert!(
            text.contains("differs    /content: ") && text.contains("sha256"),
            "{text}"
        );
    }

    /// Hardlinks are compared as groups of paths: two names of one inode
    /// differ from two separate files with the same content.
    #[test]
    fn hardlink_groups_are_compared() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("x"), "s").unwrap();
        std::fs::hard_link(a.path().join("x"), a.path().join("y")).unwrap();
        std::fs::write(b.path().join("x"), "s").unwrap();
        std::fs::write(b.path().join("y"), "s").unwrap();
        let d = Tree::read(a.path())
            .unwrap()
            .diff(&Tree::read(b.path()).unwrap(), CompareOpts::default());
        assert!(d.iter().any(|l| l.contains("hardlinks")), "{d:?}");
    }
}
