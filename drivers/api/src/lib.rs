//! drivers-api: the contract between the `drivers` host and a storage backend.
//!
//! A backend stores layer *data*. The host decides names, parentage, reference
//! counts and when to mount; a backend only says *how* a layer is mounted, by
//! returning [`Mount`] descriptions, *where* a layer tar is unpacked, by
//! returning an [`ApplyTarget`], and *where* its changes are read from, by
//! returning a [`DiffSource`]. The main types are [`Driver`] (one backend
//! instance), [`Backend`] (how the host finds, probes and opens one) and
//! [`Error`].
//!
//! ```
//! use drivers_api::{LayerId, Mount};
//! let id = LayerId::new("3f2a9c").unwrap();
//! let m = Mount::Bind { source: format!("/var/lib/drivers/vfs/layers/{id}").into(), read_only: true };
//! assert!(matches!(m, Mount::Bind { read_only: true, .. }));
//! assert!(LayerId::new("../etc").is_err());
//! ```

#![warn(missing_docs)]

mod error;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

pub use error::{Error, ErrorKind, IoContext, Result};

/// Opaque identifier the host allocates for a layer.
///
/// Always `[a-z0-9]{1,32}`, so backends may use it verbatim as a directory
/// name, a zfs dataset component or part of a mount option.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerId(String);

impl LayerId {
    /// The longest id the host hands out.
    pub const MAX_LEN: usize = 32;

    /// Checks `s` against `[a-z0-9]{1,32}`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Invalid`] for anything else.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(LayerId(s))
        } else {
            Err(Error::Invalid {
                field: "layer id",
                reason: format!("{s:?} is not [a-z0-9]{{1,32}}"),
            })
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One mount the host performs for a layer, described but not executed.
///
/// The host applies a `Vec<Mount>` in order onto one target and unmounts in
/// reverse. Today every backend returns exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mount {
    /// A bind mount of `source`.
    Bind {
        /// The directory to bind.
        source: PathBuf,
        /// Remount the bind read-only.
        read_only: bool,
    },
    /// An overlayfs mount.
    Overlay {
        /// Lower directories, nearest parent first. Entries may be symlinks;
        /// a backend that wants deep chains to mount through legacy
        /// `mount(2)` gives short links that all live in one directory, so
        /// the mounter can pass them relative to it and stay under the
        /// one-page limit on mount data.
        lower: Vec<PathBuf>,
        /// The writable half; `None` mounts read-only.
        upper: Option<OverlayUpper>,
        /// Extra overlayfs options, e.g. `redirect_dir=off`.
        options: Vec<String>,
    },
    /// Any other filesystem, e.g. a zfs dataset with `mountpoint=legacy`.
    Fs {
        /// Filesystem type as `mount -t` takes it.
        fstype: String,
        /// The device or dataset.
        source: String,
        /// Mount options.
        options: Vec<String>,
    },
}

/// The writable half of an overlay mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayUpper {
    /// The upper directory: the layer's own changes.
    pub upper: PathBuf,
    /// overlayfs's scratch directory, on the same filesystem as `upper`.
    pub work: PathBuf,
}

/// Space used by one layer, excluding its parents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes allocated on the backing filesystem.
    pub bytes: u64,
    /// Inodes used.
    pub inodes: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        self.bytes += rhs.bytes;
        self.inodes += rhs.inodes;
    }
}

/// Whether an optional ability is available, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    /// The backend honours the ability here.
    Yes,
    /// The backend refuses it; the string says why, for the user.
    No(String),
}

impl Support {
    /// True for [`Support::Yes`].
    pub fn is_yes(&self) -> bool {
        matches!(self, Support::Yes)
    }
}

/// What a backend can do beyond the required operations.
///
/// Unlike a hint that may be silently ignored, an ability the user asks for is
/// either honoured or refused with the reason given here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// [`Driver::set_limit`] and [`PrepareOpts::size_limit`] are enforced by
    /// the filesystem.
    pub quota: Support,
    /// Identical file contents can share extents (reflink / dedupe range).
    pub dedup: Support,
    /// [`Driver::diff_source`] reads changes without comparing two trees.
    pub fast_diff: Support,
}

/// What a backend does with the extended attributes a layer's files carry
/// when the host unpacks the layer into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerXattrs {
    /// Stored as the layer carries them; an attribute the filesystem
    /// refuses fails the apply, naming the file and the attribute.
    #[default]
    Store,
    /// Left out (counted and logged), because the backend's filesystem
    /// cannot store them and its user chose to lose them rather than have
    /// such layers refused (zfs on zfs-fuse, `xattrs = "drop"`).
    Drop,
}

/// Per-call options for [`Driver::prepare`].
#[derive(Clone, Debug, Default)]
pub struct PrepareOpts {
    /// Hard limit in bytes for the writable layer, if the caller asked for one.
    pub size_limit: Option<u64>,
}

/// Where and how the host unpacks a layer tar into a writable layer without
/// mounting it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyTarget {
    /// The directory the layer's files go into.
    pub root: PathBuf,
    /// How deletions are recorded in `root`.
    pub format: ApplyFormat,
}

/// How a backend records the deletions a layer makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyFormat {
    /// `root` already holds the whole parent tree (a copy or a snapshot):
    /// whited-out paths are removed, opaque directories emptied of what the
    /// parent had.
    Full,
    /// `root` is an overlayfs upper directory over `lower` (nearest first):
    /// a deletion becomes a 0/0 character device and an opaque directory
    /// carries `trusted.overlay.opaque=y`. `lower` is read (never written) to
    /// copy up hardlink targets and implied parent directories.
    OverlayUpper {
        /// The parent layers' directories, nearest first.
        lower: Vec<PathBuf>,
    },
}

/// Where the host reads a layer's changes against its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiffSource {
    /// Compare two full trees; `parent: None` means the empty tree. Cost: a
    /// walk of both trees, plus reading file contents whose metadata cannot
    /// tell them apart.
    Compare {
        /// The layer's full tree.
        layer: PathBuf,
        /// The parent's full tree.
        parent: Option<PathBuf>,
    },
    /// An overlayfs upper directory: its entries *are* the changes. Cost: a
    /// walk of the upper directory only, plus one lookup in `lower` per entry
    /// to tell an addition from a modification.
    OverlayUpper {
        /// The layer's upper directory.
        upper: PathBuf,
        /// The parent layers' directories, nearest first.
        lower: Vec<PathBuf>,
    },
    /// Two full trees where `layer` is a copy-on-write snapshot of `parent`
    /// (btrfs), with what the filesystem recorded about which inodes the
    /// layer changed since. The result is by definition that of
    /// [`DiffSource::Compare`] on the same trees; `changed` only lets the
    /// walk skip what cannot differ.
    ///
    /// The promise behind `changed`: an entry present in both trees under
    /// the same inode number, on each tree's own device (not a mount or a
    /// nested subvolume below it), whose number is not in `changed`, is
    /// identical in both trees, and so is everything below it. Hence
    /// `changed` must hold every inode of `layer` that may differ from the
    /// same-numbered inode of `parent` and every directory above one.
    ///
    /// Cost: a walk of the directories that lead to changed inodes, two
    /// `lstat`s per entry in them, plus what [`DiffSource::Compare`] reads
    /// for the entries actually compared; unchanged subtrees are not
    /// visited.
    Snapshot {
        /// The layer's full tree.
        layer: PathBuf,
        /// The parent's full tree, which `layer` was snapshotted from and
        /// which has not changed since.
        parent: PathBuf,
        /// Inode numbers of `layer` that may have changed, closed upwards.
        changed: BTreeSet<u64>,
    },
}

/// A storage backend.
///
/// # Lifecycle
///
/// A layer is born writable with [`prepare`](Driver::prepare), filled through
/// the returned mounts or its [`apply_target`](Driver::apply_target), frozen
/// with [`commit`](Driver::commit) and later deleted with
/// [`remove`](Driver::remove). A [`view`](Driver::view) is a read-only layer
/// that is never committed.
///
/// Importing an image layer, step by step:
///
/// 1. the host records a new active layer `new` in its metadata store;
/// 2. `prepare(new, &[parent, grandparent, …])` creates it;
/// 3. the host unpacks the tar into `apply_target(new, parents)`,
///    whiteouts included, without mounting anything;
/// 4. `commit(new)` freezes it and returns its [`Usage`];
/// 5. the host renames `new` to the layer's chain id in the same metadata
///    transaction that marks it committed.
///
/// Running a container: `prepare(ctr, &[top, …])`, then the host mounts the
/// result of [`mounts`](Driver::mounts) where the user asked.
///
/// # Contract every method keeps
///
/// * Blocking: methods may block on the filesystem or on a helper process.
/// * Atomic: on `Err`, nothing new for that id is left on disk.
/// * Trusting: the host guarantees ids are fresh for `prepare`/`view`, exist
///   otherwise, parents are committed, and no child or mount uses a layer
///   being removed. Backends need not re-check.
/// * Parents are always passed nearest first; `parents[0]` is the immediate
///   parent.
pub trait Driver: Send + Sync {
    /// The name users type: `vfs`, `overlay2`, `btrfs` or `zfs`.
    fn name(&self) -> &'static str;

    /// Optional abilities and, where missing, why.
    fn capabilities(&self) -> Capabilities;

    /// The most committed layers one chain may hold so that a view of its
    /// top, or a container on it, can still be mounted; `None` for no
    /// limit. The host refuses to build a deeper layer, so an image that
    /// could never be used is never half-imported.
    fn max_depth(&self) -> Option<usize> {
        None
    }

    /// A writable directory on the filesystem that holds the layers' data,
    /// where that is not the state directory's (btrfs on its own
    /// filesystem): what `status` names as the backing filesystem and where
    /// `dedup` asks whether extents can be shared.
    fn data_dir(&self) -> Option<PathBuf> {
        None
    }

    /// What the host does with the xattrs of the layers it unpacks into this
    /// backend; [`LayerXattrs::Store`] unless the backend says otherwise.
    fn layer_xattrs(&self) -> LayerXattrs {
        LayerXattrs::Store
    }

    /// Creates writable layer `id` on top of `parents` and returns how to
    /// mount it. Its root directory starts with the immediate parent's root
    /// attributes, or 0755 owned by 0:0 for a base layer.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`] if `opts.size_limit` is set and
    /// [`Capabilities::quota`] is not [`Support::Yes`];
    /// [`ErrorKind::Limit`] if the chain is deeper than the backend can mount.
    /// Cost: a full copy of the parent on `vfs`, O(1) elsewhere.
    fn prepare(&self, id: &LayerId, parents: &[LayerId], opts: &PrepareOpts) -> Result<Vec<Mount>>;

    /// Creates read-only layer `id` showing `parents`; never committed.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Limit`] if the chain is deeper than the backend can mount.
    fn view(&self, id: &LayerId, parents: &[LayerId]) -> Result<Vec<Mount>>;

    /// Returns the mounts of an existing writable (`writable = true`) or view
    /// layer again, e.g. in a later CLI run.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] if the layer's data is gone.
    fn mounts(&self, id: &LayerId, parents: &[LayerId], writable: bool) -> Result<Vec<Mount>>;

    /// Where the host unpacks a layer tar into writable layer `id`.
    fn apply_target(&self, id: &LayerId, parents: &[LayerId]) -> Result<ApplyTarget>;

    /// Where the host reads the changes of `id` against `parents[0]`.
    fn diff_source(&self, id: &LayerId, parents: &[LayerId]) -> Result<DiffSource>;

    /// Freezes writable layer `id`; it keeps its id and may become a parent.
    /// Returns the layer's usage (walks the layer: proportional to its size).
    fn commit(&self, id: &LayerId) -> Result<Usage>;

    /// Deletes `id` and its data. Removing an id that is already gone
    /// succeeds, so an interrupted removal can be retried.
    fn remove(&self, id: &LayerId) -> Result<()>;

    /// Space used by `id` alone. May walk the layer: proportional to its size.
    fn usage(&self, id: &LayerId) -> Result<Usage>;

    /// Deletes everything this backend holds for ids for which `live` is
    /// false (leftovers of crashes and interrupted operations); returns what
    /// was freed.
    fn cleanup(&self, live: &dyn Fn(&LayerId) -> bool) -> Result<Usage>;

    /// Enforces a size limit in bytes on writable layer `id`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`] when [`Capabilities::quota`] says so.
    fn set_limit(&self, id: &LayerId, bytes: u64) -> Result<()> {
        let _ = (id, bytes);
        let reason = match self.capabilities().quota {
            Support::No(why) => why,
            Support::Yes => "the backend did not implement set_limit".to_owned(),
        };
        Err(Error::Unsupported {
            backend: self.name(),
            feature: "quota",
            reason,
        })
    }
}

/// What a backend learns about the host when it is probed or opened.
#[derive(Clone, Debug)]
pub struct HostEnv {
    /// The backend's state directory, `<root>/<backend>`. The host keeps
    /// `metadata.db*`, `content/`, `mounts/` and `staging/` there; the backend
    /// may create anything else below it, and nothing elsewhere under the
    /// root. A backend may mount a filesystem on the state directory itself
    /// in [`Backend::setup`] and [`Backend::open`] (overlay2 and vfs do
    /// for `--loopback` and `--path`): the host touches it only after.
    pub state_dir: PathBuf,
}

/// Whether a backend can work on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// It can.
    Usable,
    /// It cannot; `reason` says precisely why, `hint` what to do.
    Unusable {
        /// Why not.
        reason: String,
        /// What the user can do about it.
        hint: Option<String>,
    },
}

/// What the user asked for at `drivers select <backend> …`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectArgs {
    /// `--path DIR`: use an existing filesystem mounted there.
    pub path: Option<PathBuf>,
    /// `--loopback SIZE`: create a file-backed filesystem (or pool) of SIZE
    /// bytes under the state directory and use it.
    pub loopback: Option<u64>,
    /// `--dataset POOL/NAME`: the zfs dataset to keep layers under.
    pub dataset: Option<String>,
}

impl SelectArgs {
    /// Refuses every option not named in `allowed` (`"path"`, `"loopback"`,
    /// `"dataset"`), so a backend never silently ignores what the user typed.
    pub fn only(&self, backend: &'static str, allowed: &[&str]) -> Result<()> {
        let given = [
            ("path", self.path.is_some()),
            ("loopback", self.loopback.is_some()),
            ("dataset", self.dataset.is_some()),
        ];
        for (opt, set) in given {
            if set && !allowed.contains(&opt) {
                return Err(Error::Invalid {
                    field: "select option",
                    reason: format!("backend {backend} does not take --{opt}"),
                });
            }
        }
        Ok(())
    }
}

/// Parses a backend's `[backends.<name>]` table into its typed config; the
/// message of an unknown key or a wrong type is one line.
pub fn parse_config<T: serde::de::DeserializeOwned>(
    field: &'static str,
    table: &toml::Table,
) -> Result<T> {
    table
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| Error::Invalid {
            field,
            reason: e.message().replace('\n', " "),
        })
}

/// How the host finds, checks and opens one backend.
pub struct Backend {
    /// The name users type.
    pub name: &'static str,
    /// Can this backend work here, with its `[backends.<name>]` table from
    /// the config file (empty when absent)? Cheap and side-effect free;
    /// feeds `drivers check` and `drivers select`.
    pub probe: fn(&HostEnv, &toml::Table) -> Availability,
    /// Runs at `drivers select`: checks `args` against the machine, prepares
    /// what the backend needs (e.g. creates and mounts a loopback
    /// filesystem) and returns the table to record in the config. Refuses
    /// options it does not take.
    pub setup: fn(&HostEnv, &SelectArgs, &toml::Table) -> Result<toml::Table>,
    /// Opens the backend with its own table (empty when absent). Re-creates
    /// what a reboot undid (re-attaches a loopback, re-mounts it).
    pub open: fn(&HostEnv, &toml::Table) -> Result<Box<dyn Driver>>,
    /// Undoes what `setup` created for `table` (unmounts and deletes a
    /// loopback filesystem, destroys a loopback pool, detaches loop
    /// devices). Never touches a filesystem or dataset the user named with
    /// `--path` or `--dataset` beyond the backend's own state. Used by the
    /// test fixtures, which must leave the machine as they found it.
    pub teardown: fn(&HostEnv, &toml::Table) -> Result<()>,
}

/// A [`Backend::teardown`] for backends whose setup creates nothing.
pub fn teardown_nothing(_env: &HostEnv, _table: &toml::Table) -> Result<()> {
    Ok(())
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layer ids are safe to use verbatim as path components and options.
    #[test]
    fn layer_id_charset() {
        for ok in ["a", "0", "abc123", &"z".repeat(32)] {
            assert!(LayerId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "a-b", "a/b", "..", "a b", &"z".repeat(33), "é"] {
            assert_eq!(
                LayerId::new(bad).unwrap_err().kind(),
                ErrorKind::Invalid,
                "{bad}"
            );
        }
    }

    /// A backend refuses every select option it does not take, by name.
    #[test]
    fn select_args_refused_by_name() {
        let a = SelectArgs {
            loopback: Some(1 << 30),
            ..Default::default()
        };
        assert!(a.only("btrfs", &["path", "loopback"]).is_ok());
        let e = a.only("vfs", &[]).unwrap_err().to_string();
        assert!(e.contains("vfs does not take --loopback"), "{e}");
        assert!(SelectArgs::default().only("vfs", &[]).is_ok());
    }

    /// Error text is lowercase and the hint only appears where one helps.
    #[test]
    fn error_text_and_hints() {
        let e = Error::InUse {
            what: "layer",
            id: "abc".into(),
            by: "image x".into(),
        };
        assert_eq!(e.to_string(), "layer abc is in use by image x");
        assert!(e.hint().is_some());
        let e = Error::NotFound {
            what: "layer",
            id: "abc".into(),
        };
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.hint().is_none());
    }
}
