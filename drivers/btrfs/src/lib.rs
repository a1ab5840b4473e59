//! drivers-btrfs: every layer a btrfs subvolume, every child a snapshot.
//!
//! A base layer is an empty subvolume; a layer or container on a parent is
//! a snapshot of the parent's subvolume (`BTRFS_IOC_SNAP_CREATE_V2`), which
//! shares all data and metadata with it until written; a view is a
//! read-only snapshot; commit sets the subvolume read-only
//! (`BTRFS_SUBVOL_RDONLY`). Mounts are bind mounts of the subvolume
//! (read-only for views). Layers are unpacked straight into the snapshot
//! ([`ApplyFormat::Full`]: whiteouts delete). A diff compares the layer with
//! its parent but only where btrfs's own records (tree blocks newer than
//! the snapshot, see [`changes`]) say something may have changed
//! ([`DiffSource::Snapshot`]). Removal deletes nested subvolumes a
//! container made first, and the qgroups of all of them (see [`subvol`]).
//! Every filesystem operation is a direct ioctl ([`drivers_sys::btrfs`]);
//! nothing shells out.
//!
//! Where the btrfs comes from (`drivers select btrfs …`, recorded in
//! `[backends.btrfs]`):
//!
//! - `--path DIR`: an existing btrfs; the layers go below `DIR`. Quota is
//!   used if it is on for that filesystem (`btrfs quota enable DIR`);
//!   drivers does not switch it on for a filesystem it does not own, since
//!   qgroups slow down every snapshot and delete on the whole filesystem.
//! - `--loopback SIZE`: `mkfs.btrfs` on `<state>/loopback.img`, attached
//!   to a loop device (autoclear) and mounted on `<state>/loopback`, with
//!   quota switched on. `open` re-attaches and re-mounts it after a reboot;
//!   `teardown` unmounts it, releases the device and deletes the image.
//!
//! Layout below the btrfs directory:
//!
//! ```text
//! subvolumes/<id>            a layer's subvolume
//! subvolumes-tmp/new-<id>    a base layer being created, renamed into place
//! subvolumes-tmp/qgroup-<n>  qgroup 0/<n> of a deleted subvolume still to delete
//! ```
//!
//! ```no_run
//! use drivers_api::{HostEnv, LayerId, PrepareOpts, SelectArgs};
//! let env = HostEnv { state_dir: "/var/lib/drivers/btrfs".into() };
//! let args = SelectArgs { loopback: Some(4 << 30), ..Default::default() };
//! let table = (drivers_btrfs::BACKEND.setup)(&env, &args, &toml::Table::new())?;
//! let btrfs = (drivers_btrfs::BACKEND.open)(&env, &table)?;
//! let base = LayerId::new("base")?;
//! btrfs.prepare(&base, &[], &PrepareOpts::default())?;
//! btrfs.commit(&base)?;
//! let ctr = LayerId::new("ctr")?;
//! let opts = PrepareOpts { size_limit: Some(1 << 30) };
//! let mounts = btrfs.prepare(&ctr, &[base], &opts)?;
//! # Ok::<(), drivers_api::Error>(())
//! ```

pub mod changes;
mod probe;
mod subvol;

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use drivers_api::{
    ApplyFormat, ApplyTarget, Backend, Capabilities, DiffSource, Driver, Error, HostEnv, IoContext,
    LayerId, Mount, PrepareOpts, Result, SelectArgs, Support, Usage,
};
use drivers_mount::loopback;
use drivers_sys::btrfs::{self, QgroupLimit, SUBVOL_RDONLY};
use rustix::fs::{CWD, RenameFlags};
use rustix::io::Errno;

use subvol::{Remover, open_dir};

/// The backend's name, as users type it.
const NAME: &str = "btrfs";

/// How the host finds, probes, sets up, opens and tears down btrfs.
pub const BACKEND: Backend = Backend {
    name: NAME,
    probe: probe::probe,
    setup,
    open,
    teardown,
};

/// The mkfs program `--loopback` runs (Debian's btrfs-progs).
pub(crate) const MKFS: &str = "mkfs.btrfs";

/// Arguments for [`MKFS`]: quiet, a label that says whose it is, and no
/// TRIM of a freshly made sparse file (slow, and pointless).
const MKFS_ARGS: &[&str] = &["-q", "-K", "-L", "drivers-btrfs"];

/// Options of the loopback mount. `noatime`: reading a file would otherwise
/// rewrite its inode, which a diff would then have to compare; the bind
/// mounts of layers inherit it.
const LOOPBACK_OPTIONS: &[&str] = &["noatime"];

/// The smallest `--loopback` size: below about 109 MiB `mkfs.btrfs`
/// refuses (its minimum with duplicated metadata), and a little room for
/// layers is needed on top.
pub const LOOPBACK_MIN_BYTES: u64 = 128 << 20;

/// Mode of a base layer's root directory (the conformance convention).
const BASE_ROOT_MODE: u32 = 0o755;

/// The `[backends.btrfs]` table: where the btrfs is. Written by `drivers
/// select`; exactly one of the two is set once selected.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `--path DIR`: an existing directory on a mounted btrfs; layers go
    /// in `DIR/subvolumes/`. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// `--loopback SIZE`: the size in bytes of the file-backed btrfs
    /// `<state>/loopback.img`, mounted on `<state>/loopback`. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loopback: Option<u64>,
}

/// `<state>/loopback.img`: the image of `--loopback`.
pub fn image_path(env: &HostEnv) -> PathBuf {
    env.state_dir.join("loopback.img")
}

/// `<state>/loopback`: where the `--loopback` btrfs is mounted, for as
/// long as the backend is selected (tests tell this mount from leftovers).
pub fn mount_point(env: &HostEnv) -> PathBuf {
    env.state_dir.join("loopback")
}

/// The btrfs backend.
#[derive(Debug)]
pub struct Btrfs {
    /// The directory on btrfs holding `subvolumes/` and `subvolumes-tmp/`.
    base: PathBuf,
    /// Whether qgroups exist (quota on), and if not, why size limits are
    /// refused.
    quota: Support,
}

impl Btrfs {
    /// Opens the backend on `base`, a directory on btrfs, creating its
    /// directories, and finds out whether quota is on there.
    ///
    /// # Errors
    ///
    /// [`drivers_api::ErrorKind::Unavailable`] if `base` is not on btrfs;
    /// an I/O error if the directories cannot be created.
    pub fn open_at(base: &Path) -> Result<Btrfs> {
        probe::check_btrfs_dir(base).map_err(|reason| Error::Unavailable {
            backend: NAME,
            reason,
            hint: Some("mount the btrfs filesystem, or select btrfs again".into()),
        })?;
        let fd = open_dir(base)?;
        let on = btrfs::quota_enabled(&fd).ctx("read the quota status of", base)?;
        let quota = if on {
            Support::Yes
        } else {
            Support::No(format!(
                "quota (qgroups) is not enabled on the btrfs filesystem of {}; enable it with `btrfs quota enable {}` \
                 (drivers leaves that filesystem-wide setting to you), or select btrfs --loopback, which enables it",
                base.display(),
                base.display()
            ))
        };
        let b = Btrfs {
            base: base.to_owned(),
            quota,
        };
        for dir in [b.layers_dir(), b.tmp_dir()] {
            std::fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        }
        Ok(b)
    }

    fn layers_dir(&self) -> PathBuf {
        self.base.join("subvolumes")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.base.join("subvolumes-tmp")
    }

    fn layer(&self, id: &LayerId) -> PathBuf {
        self.layers_dir().join(id.as_str())
    }

    /// Runs `f` with the [`Remover`] of this filesystem.
    fn with_remover<T>(&self, f: impl FnOnce(&Remover<'_>) -> Result<T>) -> Result<T> {
        let markers = self.tmp_dir();
        f(&Remover {
            markers: &markers,
            quota: self.quota.is_yes(),
        })
    }

    /// The layer's subvolume, or `NotFound` if its data is gone.
    fn existing(&self, id: &LayerId) -> Result<PathBuf> {
        let dir = self.layer(id);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(dir),
            Ok(_) => Err(not_found(id)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(not_found(id)),
            Err(e) => Err(e).ctx("inspect layer", dir),
        }
    }

    /// Creates layer `id`: a snapshot of `parent` (atomic: the subvolume
    /// appears complete or not at all), or an empty subvolume built in
    /// `subvolumes-tmp/` and renamed into place. Read-only for a view;
    /// with a qgroup limit on its exclusive bytes for `limit`. On error
    /// nothing is left.
    fn create(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        view: bool,
        limit: Option<u64>,
    ) -> Result<PathBuf> {
        let dst = self.layer(id);
        if std::fs::symlink_metadata(&dst).is_ok() {
            return Err(Error::AlreadyExists {
                what: "layer",
                id: id.to_string(),
            });
        }
        let created = match parent {
            Some(p) => {
                let src = open_dir(&self.existing(p)?)?;
                let dir = open_dir(&self.layers_dir())?;
                btrfs::snapshot(&src, &dir, id.as_str().as_bytes(), view)
                    .map_err(|e| exists_or(e, id, "snapshot the parent layer to", &dst))?;
                Ok(())
            }
            None => self.create_base(id, view),
        };
        created?;
        let limited = match limit {
            Some(bytes) => open_dir(&dst).and_then(|fd| {
                let lim = QgroupLimit {
                    max_exclusive: Some(bytes),
                    ..QgroupLimit::default()
                };
                btrfs::set_qgroup_limit(&fd, 0, lim).ctx("set the size limit of", &dst)
            }),
            None => Ok(()),
        };
        if let Err(e) = limited {
            if let Err(undo) = self.with_remover(|r| r.remove(&self.layers_dir(), id.as_str())) {
                tracing::warn!(backend = NAME, layer_id = %id, error = %undo, "could not undo a failed prepare; cleanup will retry");
            }
            return Err(e);
        }
        Ok(dst)
    }

    /// An empty subvolume with the base root attributes, made in
    /// `subvolumes-tmp/new-<id>` and renamed into place (a subvolume can
    /// only be renamed while writable, so a view is frozen afterwards).
    fn create_base(&self, id: &LayerId, view: bool) -> Result<()> {
        let name = format!("new-{id}");
        let staging = self.tmp_dir().join(&name);
        // A crashed earlier attempt with this id may have left one.
        self.with_remover(|r| r.remove(&self.tmp_dir(), &name))?;
        let r = (|| {
            let tmp = open_dir(&self.tmp_dir())?;
            btrfs::create_subvolume(&tmp, name.as_bytes()).ctx("create subvolume", &staging)?;
            std::os::unix::fs::chown(&staging, Some(0), Some(0)).ctx("set owner of", &staging)?;
            // After chown, which clears setuid/setgid bits.
            rustix::fs::chmod(&staging, rustix::fs::Mode::from_raw_mode(BASE_ROOT_MODE))
                .ctx("set mode of", &staging)?;
            let dst = self.layer(id);
            rustix::fs::renameat_with(CWD, &staging, CWD, &dst, RenameFlags::NOREPLACE)
                .map_err(|e| exists_or(e, id, "move new layer into place", &dst))
        })();
        if let Err(e) = r {
            if let Err(undo) = self.with_remover(|r| r.remove(&self.tmp_dir(), &name)) {
                tracing::warn!(backend = NAME, layer_id = %id, error = %undo, "could not undo a failed prepare; cleanup will retry");
            }
            return Err(e);
        }
        if view {
            let dst = self.layer(id);
            let frozen = open_dir(&dst).and_then(|fd| {
                btrfs::set_subvolume_flags(&fd, SUBVOL_RDONLY).ctx("make read-only", &dst)
            });
            if let Err(e) = frozen {
                let _ = self.with_remover(|r| r.remove(&self.layers_dir(), id.as_str()));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Flushes everything written to the filesystem into its trees (dirty
    /// data, delayed inode items): what [`changes`] reads is then complete.
    fn sync(&self, layer: &Path) -> Result<()> {
        let fd = open_dir(layer)?;
        rustix::fs::syncfs(&fd).ctx("sync the filesystem of", layer)
    }
}

fn not_found(id: &LayerId) -> Error {
    Error::NotFound {
        what: "layer",
        id: id.to_string(),
    }
}

/// `EEXIST` as the layer already existing, anything else as an I/O error.
fn exists_or(e: Errno, id: &LayerId, op: &'static str, path: &Path) -> Error {
    match e {
        Errno::EXIST | Errno::NOTEMPTY => Error::AlreadyExists {
            what: "layer",
            id: id.to_string(),
        },
        e => Error::Io {
            op,
            path: path.to_owned(),
            source: e.into(),
        },
    }
}

/// Names of the entries of `dir` that are valid UTF-8 (ours all are).
fn dir_names(dir: &Path) -> Result<Vec<String>> {
    drivers_fs::utf8_names(dir).ctx("read directory", dir)
}

impl Driver for Btrfs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            quota: self.quota.clone(),
            // Every subvolume of the filesystem can share extents with any
            // other (FIDEDUPERANGE across subvolumes), beyond what a
            // snapshot shares with its parent.
            dedup: Support::Yes,
            fast_diff: Support::Yes,
        }
    }

    fn prepare(&self, id: &LayerId, parents: &[LayerId], opts: &PrepareOpts) -> Result<Vec<Mount>> {
        if let (Some(_), Support::No(reason)) = (opts.size_limit, &self.quota) {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: "quota",
                reason: reason.clone(),
            });
        }
        let source = self.create(id, parents.first(), false, opts.size_limit)?;
        Ok(vec![Mount::Bind {
            source,
            read_only: false,
        }])
    }

    fn view(&self, id: &LayerId, parents: &[LayerId]) -> Result<Vec<Mount>> {
        let source = self.create(id, parents.first(), true, None)?;
        Ok(vec![Mount::Bind {
            source,
            read_only: true,
        }])
    }

    fn mounts(&self, id: &LayerId, _parents: &[LayerId], writable: bool) -> Result<Vec<Mount>> {
        Ok(vec![Mount::Bind {
            source: self.existing(id)?,
            read_only: !writable,
        }])
    }

    fn apply_target(&self, id: &LayerId, _parents: &[LayerId]) -> Result<ApplyTarget> {
        Ok(ApplyTarget {
            root: self.existing(id)?,
            format: ApplyFormat::Full,
        })
    }

    /// A base layer is compared with the empty tree. A layer snapshotted
    /// from `parents[0]` (checked by UUID) is compared only where btrfs
    /// says it may have changed: `syncfs`, then one tree search over the
    /// blocks written since the snapshot ([`changes::changed_inodes`]).
    fn data_dir(&self) -> Option<PathBuf> {
        Some(self.layers_dir())
    }

    fn diff_source(&self, id: &LayerId, parents: &[LayerId]) -> Result<DiffSource> {
        let layer = self.existing(id)?;
        let Some(parent) = parents.first() else {
            return Ok(DiffSource::Compare {
                layer,
                parent: None,
            });
        };
        let parent = self.existing(parent)?;
        let (lfd, pfd) = (open_dir(&layer)?, open_dir(&parent)?);
        let info = btrfs::subvolume_info(&lfd).ctx("inspect subvolume", &layer)?;
        let pinfo = btrfs::subvolume_info(&pfd).ctx("inspect subvolume", &parent)?;
        if info.parent_uuid != pinfo.uuid || !pinfo.read_only {
            // Not a snapshot of a frozen parent: nothing to narrow with.
            return Ok(DiffSource::Compare {
                layer,
                parent: Some(parent),
            });
        }
        self.sync(&layer)?;
        let changed = changes::changed_inodes(lfd.as_fd(), info.otransid)
            .ctx("search the changes of", &layer)?;
        tracing::debug!(backend = NAME, layer_id = %id, changed = changed.len(), "inodes to compare");
        Ok(DiffSource::Snapshot {
            layer,
            parent,
            changed,
        })
    }

    fn commit(&self, id: &LayerId) -> Result<Usage> {
        let dir = self.existing(id)?;
        let fd = open_dir(&dir)?;
        let flags = btrfs::subvolume_flags(&fd).ctx("read the flags of", &dir)?;
        btrfs::set_subvolume_flags(&fd, flags | SUBVOL_RDONLY).ctx("make read-only", &dir)?;
        self.usage(id)
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        self.with_remover(|r| r.remove(&self.layers_dir(), id.as_str()))
    }

    fn set_limit(&self, id: &LayerId, bytes: u64) -> Result<()> {
        if let Support::No(reason) = &self.quota {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: "quota",
                reason: reason.clone(),
            });
        }
        let dir = self.existing(id)?;
        let lim = QgroupLimit {
            max_exclusive: Some(bytes),
            ..QgroupLimit::default()
        };
        btrfs::set_qgroup_limit(&open_dir(&dir)?, 0, lim).ctx("set the size limit of", &dir)
    }

    /// What the layer wrote itself, from the tree blocks written since its
    /// snapshot ([`changes::usage`]): proportional to the layer's changes,
    /// plus a `syncfs`.
    fn usage(&self, id: &LayerId) -> Result<Usage> {
        let dir = self.existing(id)?;
        self.sync(&dir)?;
        let fd = open_dir(&dir)?;
        let info = btrfs::subvolume_info(&fd).ctx("inspect subvolume", &dir)?;
        let since = if info.parent_uuid == [0; 16] {
            0
        } else {
            info.otransid
        };
        changes::usage(fd.as_fd(), since).ctx("measure layer", &dir)
    }

    fn cleanup(&self, live: &dyn Fn(&LayerId) -> bool) -> Result<Usage> {
        let mut freed = Usage::default();
        for name in dir_names(&self.layers_dir())? {
            match LayerId::new(name.as_str()) {
                Ok(id) if live(&id) => {}
                Ok(id) => {
                    freed += self.usage(&id).unwrap_or_default();
                    self.remove(&id)?;
                }
                Err(_) => tracing::warn!(
                    backend = NAME,
                    name,
                    "not a layer id; leaving it in subvolumes/"
                ),
            }
        }
        let tmp = self.tmp_dir();
        for name in dir_names(&tmp)? {
            let Some(id) = name.strip_prefix("new-") else {
                continue;
            };
            if LayerId::new(id).is_ok_and(|id| live(&id)) {
                continue; // possibly being prepared right now
            }
            self.with_remover(|r| r.remove(&tmp, &name))?;
        }
        let marked = subvol::marked_qgroups(&tmp)?;
        if !marked.is_empty() {
            let ids: Vec<u64> = marked.iter().map(|(id, _)| *id).collect();
            self.with_remover(|r| r.drop_qgroups(&tmp, &ids))?;
        }
        Ok(freed)
    }
}

/// `drivers select btrfs --path DIR | --loopback SIZE`. Selecting again
/// with the same location is fine (the loopback image is reused); another
/// location is refused, since the store records layers that live in the
/// first one.
fn setup(env: &HostEnv, args: &SelectArgs, table: &toml::Table) -> Result<toml::Table> {
    args.only(NAME, &["path", "loopback"])?;
    let old: Config = drivers_api::parse_config("backends.btrfs", table)?;
    let new = match (&args.path, args.loopback) {
        (Some(path), _) => Config {
            path: Some(std::path::absolute(path).ctx("resolve", path)?),
            loopback: None,
        },
        (None, Some(size)) => Config {
            path: None,
            loopback: Some(size),
        },
        (None, None) => {
            return Err(Error::Invalid {
                field: "select option",
                reason: "backend btrfs needs --path DIR (an existing btrfs) or --loopback SIZE (a new file-backed btrfs under the root)".into(),
            });
        }
    };
    let moved = match (&old.path, old.loopback) {
        (Some(p), _) => new.path.as_ref() != Some(p),
        (None, Some(_)) => new.loopback.is_none(),
        (None, None) => false,
    };
    if moved {
        return Err(Error::Invalid {
            field: "select option",
            reason: format!(
                "btrfs is already set up with {}; its layers live there and the store records them",
                describe(&old)
            ),
        });
    }
    match (&new.path, new.loopback) {
        (Some(path), _) => probe::check_btrfs_dir(path).map_err(|reason| Error::Unavailable {
            backend: NAME,
            reason,
            hint: Some("give --path a directory on a mounted btrfs, or use --loopback SIZE".into()),
        })?,
        (None, Some(size)) => setup_loopback(env, size)?,
        (None, None) => {}
    }
    toml::Table::try_from(&new).map_err(|e| Error::Invalid {
        field: "backends.btrfs",
        reason: e.to_string(),
    })
}

fn describe(c: &Config) -> String {
    match (&c.path, c.loopback) {
        (Some(p), _) => format!("--path {}", p.display()),
        (None, Some(n)) => format!("--loopback {n} (bytes)"),
        (None, None) => "nothing".into(),
    }
}

/// The `--loopback` btrfs of `env`.
fn loopback_fs(env: &HostEnv) -> loopback::Loopback<'static> {
    loopback::Loopback {
        backend: NAME,
        image: image_path(env),
        target: mount_point(env),
        fstype: NAME,
        mkfs: loopback::Mkfs {
            program: MKFS,
            args: MKFS_ARGS,
        },
        options: LOOPBACK_OPTIONS,
        fallback: None,
        min_bytes: (LOOPBACK_MIN_BYTES, "mkfs.btrfs needs about 109 MiB"),
    }
}

/// Creates (or finds again) the loopback btrfs, mounts it and switches
/// quota on. A new image is deleted again if anything fails.
fn setup_loopback(env: &HostEnv, size: u64) -> Result<()> {
    loopback_fs(env).provision(size, |target| {
        let fd = open_dir(target)?;
        if !btrfs::quota_enabled(&fd).ctx("read the quota status of", target)? {
            btrfs::quota_enable(&fd).ctx("enable quota on", target)?;
            btrfs::quota_rescan_wait(&fd).ctx("wait for the quota rescan of", target)?;
        }
        Ok(())
    })
}

/// Attaches and mounts the loopback image if needed; returns the mount
/// point.
fn mount_loopback(env: &HostEnv) -> Result<PathBuf> {
    loopback_fs(env).mount()
}

fn open(env: &HostEnv, table: &toml::Table) -> Result<Box<dyn Driver>> {
    let config: Config = drivers_api::parse_config("backends.btrfs", table)?;
    let base = match (config.path, config.loopback) {
        (Some(path), _) => path,
        (None, Some(_)) => mount_loopback(env)?,
        (None, None) => {
            return Err(Error::Unavailable {
                backend: NAME,
                reason: "btrfs is not set up under this root".into(),
                hint: Some("run drivers select btrfs --path DIR or --loopback SIZE".into()),
            });
        }
    };
    Ok(Box::new(Btrfs::open_at(&base)?))
}

/// Undoes `setup`: a loopback btrfs is unmounted (with every bind mount of
/// it), its loop device released and its image deleted; on a `--path`
/// btrfs the backend's own subvolumes, qgroups and directories are deleted
/// and nothing else.
fn teardown(env: &HostEnv, table: &toml::Table) -> Result<()> {
    let config: Config = drivers_api::parse_config("backends.btrfs", table)?;
    match (config.path, config.loopback) {
        (Some(path), _) => {
            let b = Btrfs::open_at(&path)?;
            b.cleanup(&|_| false)?;
            for dir in [b.layers_dir(), b.tmp_dir()] {
                std::fs::remove_dir(&dir).ctx("remove", &dir)?;
            }
            Ok(())
        }
        (None, Some(_)) => loopback_fs(env).destroy(),
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests;
