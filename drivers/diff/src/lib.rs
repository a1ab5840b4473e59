//! A layer's changes against its parent, and the OCI layer tar that carries
//! them.
//!
//! The backend says where the changes are read from, as a
//! [`DiffSource`]: two full trees to compare (vfs, any full-copy backend),
//! the same with the set of inodes a snapshot may have changed (btrfs: the
//! comparison skips the rest, with identical results), or an overlayfs
//! upper directory over its lower layers. [`changes`] lists the
//! changed paths the way moby's `Changes` does; [`write_layer`] streams an
//! uncompressed OCI layer tar (image-spec `layer.md`) that GNU tar, Go's
//! archive/tar (containerd, moby, umoci) and Python's tarfile read back to
//! the same tree, and returns its diff id.
//!
//! ```no_run
//! use drivers_api::DiffSource;
//! let src = DiffSource::Compare { layer: "/var/lib/drivers/vfs/layers/b".into(), parent: Some("/var/lib/drivers/vfs/layers/a".into()) };
//! for c in drivers_diff::changes(&src)? {
//!     println!("{} {}", c.kind, c.path.display());
//! }
//! let report = drivers_diff::write_layer(&src, std::fs::File::create("/tmp/layer.tar")?)?;
//! println!("{} ({} bytes)", report.diff_id, report.tar_bytes);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What a layer tar holds: one entry per changed path plus every ancestor
//! directory of a changed path, with current attributes; a directory comes
//! before its contents, and within a directory the opaque marker comes
//! first, then whiteouts, then the other entries, each group by name bytes.
//! The layer root is a `./` entry when its own mode, owner or xattrs differ
//! from the parent's root (always, for a base layer), so a `chmod /` in a
//! container survives `commit`; moby and containerd drop it. [`changes`]
//! never lists the root, as moby's `Changes` does not.

mod compare;
mod error;
mod overlay;
mod walk;
mod writer;

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use drivers_api::DiffSource;

pub use error::{Error, ErrorKind, Result};

use walk::{Node, Sink};

/// How a path changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The path is new.
    Add,
    /// The path existed and its type, attributes or contents differ, or it
    /// is a directory with changes below it.
    Modify,
    /// The path is gone (only the topmost deleted path is reported).
    Delete,
}

impl fmt::Display for ChangeKind {
    /// moby's one-letter form: `A`, `C`, `D`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeKind::Add => "A",
            ChangeKind::Modify => "C",
            ChangeKind::Delete => "D",
        })
    }
}

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Change {
    /// Absolute within the layer, `/a/b`; the name bytes as stored
    /// (non-UTF-8 allowed).
    pub path: PathBuf,
    /// How it changed.
    pub kind: ChangeKind,
}

/// What [`write_layer`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReport {
    /// `sha256:<hex>` of exactly the tar bytes written: the layer's diff id.
    pub diff_id: String,
    /// Bytes written, end-of-archive blocks included.
    pub tar_bytes: u64,
    /// Tar entries written (whiteouts and ancestor directories included,
    /// PAX extended headers not).
    pub entries: u64,
    /// Sum of the regular-file data sizes written (hardlinks add nothing).
    pub file_bytes: u64,
}

/// All changes of the layer against its parent, sorted by path bytes
/// (moby's `Changes` semantics).
///
/// A directory in both trees with changes below it is reported as
/// modified; a deleted directory is reported alone, not its children; for
/// an overlay upper, each lower child an opaque directory hides is a
/// deletion. The root is never reported. Cost: the walk described on
/// [`DiffSource`].
///
/// # Errors
///
/// [`Error::Io`] if a tree cannot be read; [`Error::Unsupported`] for an
/// overlay upper with `redirect` or `metacopy` entries.
pub fn changes(src: &DiffSource) -> Result<Vec<Change>> {
    let mut list = ChangeList(Vec::new());
    walk(src, &mut list)?;
    let mut out = list.0;
    out.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    Ok(out)
}

/// Writes the layer's changes as an uncompressed OCI layer tar to `out`,
/// streaming (file data passes through a fixed-size buffer), and returns
/// its diff id and counts.
///
/// # Errors
///
/// As [`changes`], plus [`Error::Write`] if `out` fails,
/// [`Error::Unrepresentable`] for a file named `.wh.*` and
/// [`Error::Changed`] for a file that shrinks while it is read. On error a
/// partial tar may have been written.
pub fn write_layer(src: &DiffSource, out: impl Write) -> Result<WriteReport> {
    let root = match src {
        DiffSource::Compare { layer, .. } | DiffSource::Snapshot { layer, .. } => layer.as_path(),
        DiffSource::OverlayUpper { upper, .. } => upper.as_path(),
        _ => Path::new(""),
    };
    let mut sink = writer::TarSink::new(out, root);
    root_entry(src, &mut sink)?;
    walk(src, &mut sink)?;
    let report = sink.finish()?;
    tracing::debug!(diff_id = %report.diff_id, bytes = report.tar_bytes, entries = report.entries, "wrote layer tar");
    Ok(report)
}

/// Extended attributes as listed: (name, value), sorted.
type Xattrs = Vec<(OsString, Vec<u8>)>;

/// Mode, owner and image xattrs of a directory.
fn root_attrs(dir: &Path) -> Result<(rustix::fs::Stat, Xattrs)> {
    let io = |op, e| Error::Io {
        op,
        path: dir.to_owned(),
        source: e,
    };
    let fd = drivers_fs::open_dir(dir).map_err(|e| io("open layer root", e))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| io("stat layer root", e.into()))?;
    let mut xattrs = drivers_fs::xattr::list(std::os::fd::AsFd::as_fd(&fd), c".")
        .map_err(|e| io("read xattrs of", e))?;
    xattrs.retain(|(k, _)| !drivers_fs::xattr::is_storage_internal(k.as_bytes()));
    Ok((st, xattrs))
}

/// Emits `./` when the layer root's attributes differ from its parent's.
fn root_entry(src: &DiffSource, sink: &mut dyn Sink) -> Result<()> {
    let (root, parent) = match src {
        DiffSource::Compare { layer, parent } => (layer.as_path(), parent.as_deref()),
        DiffSource::Snapshot { layer, parent, .. } => (layer.as_path(), Some(parent.as_path())),
        DiffSource::OverlayUpper { upper, lower } => {
            (upper.as_path(), lower.first().map(PathBuf::as_path))
        }
        _ => return Ok(()),
    };
    let (st, xattrs) = root_attrs(root)?;
    let differs = match parent {
        None => true,
        Some(p) => {
            let (pst, pxattrs) = root_attrs(p)?;
            (st.st_mode, st.st_uid, st.st_gid, &xattrs)
                != (pst.st_mode, pst.st_uid, pst.st_gid, &pxattrs)
        }
    };
    if !differs {
        return Ok(());
    }
    let node = Node {
        path: b".",
        st: &st,
        xattrs: &xattrs,
        target: None,
        at: None,
    };
    sink.entry(&node, Some(ChangeKind::Modify))
}

fn walk(src: &DiffSource, sink: &mut dyn Sink) -> Result<()> {
    match src {
        DiffSource::Compare { layer, parent } => {
            compare::walk(layer, parent.as_deref(), None, sink)
        }
        DiffSource::Snapshot {
            layer,
            parent,
            changed,
        } => compare::walk(layer, Some(parent), Some(changed), sink),
        DiffSource::OverlayUpper { upper, lower } => overlay::walk(upper, lower, sink),
        other => Err(Error::Unsupported {
            path: PathBuf::new(),
            reason: format!("unknown diff source {other:?}"),
        }),
    }
}

/// Collects what a finder reports as [`Change`]s.
struct ChangeList(Vec<Change>);

impl ChangeList {
    fn push(&mut self, path: &[u8], kind: ChangeKind) {
        self.0.push(Change {
            path: PathBuf::from(OsString::from_vec(path.to_vec())),
            kind,
        });
    }
}

impl Sink for ChangeList {
    fn entry(&mut self, node: &Node<'_>, kind: Option<ChangeKind>) -> Result<()> {
        self.push(node.path, kind.unwrap_or(ChangeKind::Modify));
        Ok(())
    }

    fn delete(&mut self, path: &[u8]) -> Result<()> {
        self.push(path, ChangeKind::Delete);
        Ok(())
    }

    fn opaque(&mut self, _path: &[u8]) -> Result<()> {
        Ok(()) // reported through `hidden`, one deletion per hidden child
    }

    fn hidden(&mut self, path: &[u8]) -> Result<()> {
        self.push(path, ChangeKind::Delete);
        Ok(())
    }

    fn wants_hidden(&self) -> bool {
        true
    }
}
