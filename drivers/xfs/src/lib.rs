//! drivers-xfs: the filesystem under the overlay2 and vfs backends, and
//! the XFS project quotas that enforce their size limits.
//!
//! overlay2 and vfs keep their layers as plain directories in their state
//! directory. A size limit on a container's writable directory needs a
//! filesystem that charges a directory tree, not a user, for the space it
//! takes: XFS project quotas. This crate provides both halves:
//!
//! - Where the state lives ([`Location`]; [`setup`], [`open`],
//!   [`teardown`]): on the root's own filesystem (`drivers select
//!   overlay2`), or on a
//!   file-backed XFS made by `drivers select overlay2 --loopback SIZE`:
//!   `mkfs.xfs` on `<state>/loopback.img`, attached to a loop device and
//!   mounted with `prjquota` *on the state directory itself*, so the
//!   store's metadata, its blobs and the layers all live there (and
//!   `drivers status` and `drivers dedup` see the XFS). The image lies in
//!   the directory it is mounted on, hidden while mounted; `open` finds it
//!   again after a reboot, before anything else looks at the state
//!   directory. `teardown` unmounts it and deletes the image. `--path DIR`
//!   bind-mounts an existing directory (say on an XFS mounted with
//!   `prjquota`) on the state directory instead; teardown unbinds it and
//!   leaves what is in DIR.
//! - [`ProjectQuotas`]: whether the state directory's filesystem enforces
//!   project quotas (probed with `quotactl_fd`, never assumed), and per
//!   limited layer a project id of its own, given to the layer's directory
//!   with `FS_XFLAG_PROJINHERIT` before anything is written into it, with
//!   the block hard limit set on that project. The same holds on any XFS
//!   mounted with `prjquota` that the root lives on, as containers/storage
//!   does when its graph root is on one.
//!
//! Project ids are claimed in `<state>/projects/<id>`, a symlink naming the
//! layer: `symlink(2)` fails on an existing name, so two processes never
//! claim one id, and the claims survive restarts. An id the kernel already
//! charges space to, or holds limits for, is skipped (another user of the
//! same XFS). Removing the layer clears the project's limits and then the
//! claim; [`ProjectQuotas::cleanup`] finishes what a crash interrupted.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use drivers_api::{Error, HostEnv, IoContext, LayerId, Result, SelectArgs, Support};
use drivers_mount::loopback::{self, Loopback};
use drivers_sys::xfs;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// The mkfs program `--loopback` runs (Debian's xfsprogs).
pub const MKFS: &str = "mkfs.xfs";

/// Options of the loopback mount: project quota accounting and
/// enforcement; `noatime` so reading a file does not rewrite its inode.
pub const LOOPBACK_OPTIONS: &[&str] = &["prjquota", "noatime"];

/// What the loopback XFS is mounted with when the kernel refuses
/// `prjquota` (built without `CONFIG_XFS_QUOTA`): the XFS still serves
/// (reflinks, dedup), and size limits are refused with the reason.
pub const LOOPBACK_FALLBACK_OPTIONS: &[&str] = &["noatime"];

/// The smallest `--loopback` size: mkfs.xfs refuses filesystems below
/// 300 MiB.
pub const LOOPBACK_MIN_BYTES: u64 = 300 << 20;

/// `XFS_SUPER_MAGIC`.
const XFS_MAGIC: u64 = 0x5846_5342;

/// The directory of project id claims, under the state directory.
pub const PROJECTS_DIR: &str = "projects";

/// The first project id handed out; 0 is "no project".
const FIRST_PROJECT_ID: u32 = 1;

/// How many candidate ids a claim tries before giving up (each skip is an
/// id another process claimed meanwhile or someone else uses).
const CLAIM_ATTEMPTS: u32 = 4096;

/// `<state>/loopback.img`: the image of `--loopback`, in the directory
/// the filesystem is mounted on.
pub fn image_path(env: &HostEnv) -> PathBuf {
    env.state_dir.join("loopback.img")
}

fn loopback_fs(backend: &'static str, env: &HostEnv) -> Loopback<'static> {
    Loopback {
        backend,
        image: image_path(env),
        target: env.state_dir.clone(),
        fstype: "xfs",
        mkfs: loopback::Mkfs {
            program: MKFS,
            args: &["-q"],
        },
        options: LOOPBACK_OPTIONS,
        fallback: Some(LOOPBACK_FALLBACK_OPTIONS),
        min_bytes: (LOOPBACK_MIN_BYTES, "mkfs.xfs needs 300 MiB"),
    }
}

/// Where a backend's state directory lives, as `drivers select` records
/// it in `[backends.overlay2]` or `[backends.vfs]`. Neither set: on the
/// root's own filesystem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// `--path DIR`: an existing directory (e.g. on an XFS mounted with
    /// `prjquota`), bind-mounted on the state directory.
    pub path: Option<PathBuf>,
    /// `--loopback SIZE`: the size of the file-backed XFS mounted on the
    /// state directory.
    pub loopback: Option<u64>,
}

impl Location {
    fn describe(&self) -> String {
        match (&self.path, self.loopback) {
            (Some(p), _) => format!("--path {}", p.display()),
            (None, Some(n)) => format!("--loopback {n} (bytes)"),
            (None, None) => "the root's own filesystem".into(),
        }
    }

    /// `table` (a backend's `[backends.<name>]`) with its `path` and
    /// `loopback` keys set to this location; every other key kept.
    pub fn record(&self, table: &toml::Table) -> toml::Table {
        let mut t = table.clone();
        t.remove("path");
        t.remove("loopback");
        if let Some(p) = &self.path {
            t.insert(
                "path".into(),
                toml::Value::String(p.to_string_lossy().into_owned()),
            );
        }
        if let Some(n) = self.loopback.and_then(|n| i64::try_from(n).ok()) {
            t.insert("loopback".into(), toml::Value::Integer(n));
        }
        t
    }
}

/// `drivers select overlay2|vfs [--path DIR | --loopback SIZE]`: returns
/// the location to record. Without an option the recorded one is kept
/// (selecting the backend again must not lose its layers). `--loopback`
/// makes the XFS (or finds it again with the same size) and mounts it on
/// the state directory; `--path` bind-mounts DIR there. Either needs a
/// state directory that holds no store yet, and a location once recorded
/// is not moved (the store records layers that live there).
///
/// # Errors
///
/// [`drivers_api::ErrorKind::Invalid`] for an option the backends do not
/// take, a size below [`LOOPBACK_MIN_BYTES`], a state directory already in
/// use, a recorded location that differs, or a `--path` that is not a
/// directory outside the state directory; what making or mounting the
/// filesystem returns.
pub fn setup(
    backend: &'static str,
    env: &HostEnv,
    args: &SelectArgs,
    recorded: &Location,
) -> Result<Location> {
    args.only(backend, &["path", "loopback"])?;
    let new = match (&args.path, args.loopback) {
        (Some(p), _) => Location {
            path: Some(std::path::absolute(p).ctx("resolve", p)?),
            loopback: None,
        },
        (None, Some(n)) => Location {
            path: None,
            loopback: Some(n),
        },
        (None, None) => return Ok(recorded.clone()),
    };
    let fresh = *recorded == Location::default();
    let moved = !fresh
        && (recorded.path != new.path || recorded.loopback.is_some() != new.loopback.is_some());
    if moved {
        return Err(Error::Invalid {
            field: "select option",
            reason: format!(
                "{backend} is already set up on {}; its layers live there and the store records them",
                recorded.describe()
            ),
        });
    }
    if fresh && !drivers_mount::is_mountpoint(&env.state_dir).unwrap_or(false) {
        let used = match std::fs::read_dir(&env.state_dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .any(|e| e.file_name() != "loopback.img"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e).ctx("read directory", &env.state_dir),
        };
        if used {
            return Err(Error::Invalid {
                field: "select option",
                reason: format!(
                    "{backend} already keeps a store in {} on the root's filesystem; {} is mounted on the \
                     state directory, so it needs an empty one (use another --root, or remove that store)",
                    env.state_dir.display(),
                    new.describe()
                ),
            });
        }
    }
    match (&new.path, new.loopback) {
        (Some(dir), _) => bind(env, dir)?,
        (None, Some(size)) => loopback_fs(backend, env).provision(size, |_| Ok(()))?,
        (None, None) => {}
    }
    if let Support::No(reason) = probe(backend, &env.state_dir) {
        tracing::warn!(backend, %reason, "size limits will be refused");
    }
    Ok(new)
}

/// Bind-mounts `dir` on the state directory unless it already is.
fn bind(env: &HostEnv, dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).ctx("inspect", dir)?;
    if !meta.is_dir() {
        return Err(Error::Invalid {
            field: "--path",
            reason: format!("{} is not a directory", dir.display()),
        });
    }
    let state = std::path::absolute(&env.state_dir).ctx("resolve", &env.state_dir)?;
    let canon = std::fs::canonicalize(dir).ctx("resolve", dir)?;
    if canon.starts_with(&state) || state.starts_with(&canon) {
        return Err(Error::Invalid {
            field: "--path",
            reason: format!(
                "{} and the state directory {} contain one another",
                dir.display(),
                state.display()
            ),
        });
    }
    std::fs::create_dir_all(&state).ctx("create directory", &state)?;
    if drivers_mount::is_mountpoint(&state)? {
        let now = std::fs::metadata(&state).ctx("inspect", &state)?;
        if (now.dev(), now.ino()) == (meta.dev(), meta.ino()) {
            return Ok(());
        }
        return Err(Error::InUse {
            what: "state directory",
            id: state.display().to_string(),
            by: "another mount".into(),
        });
    }
    let m = drivers_api::Mount::Bind {
        source: canon,
        read_only: false,
    };
    drivers_mount::mount(&[m], &state)
}

/// Mounts the `--loopback` XFS, or binds the `--path` directory, on the
/// state directory again if a reboot undid it; nothing to do on the root's
/// own filesystem.
///
/// # Errors
///
/// [`drivers_api::ErrorKind::Unavailable`] if the loopback image is gone;
/// what attaching or mounting returns.
pub fn open(backend: &'static str, env: &HostEnv, at: &Location) -> Result<()> {
    match (&at.path, at.loopback) {
        (Some(dir), _) => bind(env, dir),
        (None, Some(_)) => loopback_fs(backend, env).mount().map(drop),
        (None, None) => Ok(()),
    }
}

/// Undoes [`setup`]: the loopback XFS (and every mount made from it) is
/// unmounted, its loop device released, its image and the then empty
/// state directory deleted; a `--path` bind is unmounted (with what is
/// mounted below it), and what the backend keeps in DIR stays there.
/// Nothing to do on the root's own filesystem.
///
/// # Errors
///
/// What unmounting or [`loopback::destroy`] returns.
pub fn teardown(backend: &'static str, env: &HostEnv, at: &Location) -> Result<()> {
    match (&at.path, at.loopback) {
        (Some(_), _) => {
            for m in drivers_mount::mounts_under(&env.state_dir)? {
                drivers_mount::unmount(&m)?;
            }
            match std::fs::remove_dir(&env.state_dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).ctx("remove", &env.state_dir),
            }
        }
        (None, Some(_)) => loopback_fs(backend, env).destroy(),
        (None, None) => Ok(()),
    }
}

/// Whether the filesystem of `dir` enforces XFS project quotas, and if
/// not, precisely why. Side-effect free.
pub fn probe(backend: &str, dir: &Path) -> Support {
    let how = format!(
        "select {backend} --loopback SIZE (an XFS mounted with prjquota, under the root), \
         or keep the root on an XFS mounted with prjquota"
    );
    let fd = match open_dir(dir) {
        Ok(fd) => fd,
        Err(e) => return Support::No(format!("{backend} cannot enforce size limits: {e}")),
    };
    let magic = rustix::fs::fstatfs(&fd).map(|s| s.f_type as u64);
    match magic {
        Ok(XFS_MAGIC) => {}
        Ok(other) => {
            return Support::No(format!(
                "{backend} enforces size limits with XFS project quotas, and {} is not on XFS \
                 (filesystem type {other:#x}); {how}",
                dir.display()
            ));
        }
        Err(e) => {
            return Support::No(format!(
                "{backend} cannot enforce size limits: statfs {}: {e}",
                dir.display()
            ));
        }
    }
    // Layers are built under tmp/ and renamed into place; XFS refuses
    // (EXDEV) to move a file out of its project into a directory that
    // makes everything below it inherit another one.
    match xfs::project(&fd) {
        Ok(p) if p.inherit && p.id != 0 => {
            return Support::No(format!(
                "{backend} cannot enforce size limits: {} is in XFS project {} with inheritance, so a layer \
                 with a project of its own could not be moved below it; use a directory outside any project",
                dir.display(),
                p.id
            ));
        }
        _ => {}
    }
    match xfs::project_quota_state(&fd) {
        Ok(st) if st.accounting && st.enforcing => Support::Yes,
        Ok(st) if st.accounting => Support::No(format!(
            "{backend} cannot enforce size limits: the XFS of {} accounts project quotas but does not \
             enforce them (mounted with pqnoenforce); mount it with prjquota",
            dir.display()
        )),
        Ok(_) | Err(Errno::NOENT | Errno::SRCH | Errno::INVAL) => Support::No(format!(
            "{backend} enforces size limits with XFS project quotas, and the XFS of {} is mounted without \
             them; {how}",
            dir.display()
        )),
        // fs/quota/quota.c answers ENOSYS for a filesystem without quota
        // operations, which is XFS built without CONFIG_XFS_QUOTA; a
        // kernel older than 5.14 answers the same for quotactl_fd itself.
        Err(Errno::NOSYS) => Support::No(format!(
            "{backend} cannot enforce size limits: this kernel has no XFS project quota support \
             (quotactl on {} answers ENOSYS: XFS built without CONFIG_XFS_QUOTA, or no quotactl_fd before Linux 5.14)",
            dir.display()
        )),
        Err(Errno::PERM | Errno::ACCESS) => Support::No(format!(
            "{backend} cannot enforce size limits: reading the project quota state of {} needs root",
            dir.display()
        )),
        Err(e) => Support::No(format!(
            "{backend} cannot enforce size limits: reading the project quota state of {}: {e}",
            dir.display()
        )),
    }
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .ctx("open directory", dir)
}

/// The project quotas of one backend's state directory; see the crate
/// documentation.
#[derive(Debug)]
pub struct ProjectQuotas {
    backend: &'static str,
    /// The state directory (on the filesystem the quotas are set on).
    dir: PathBuf,
    support: Support,
}

impl ProjectQuotas {
    /// Probes the filesystem of `state_dir` and, where quotas work,
    /// creates the claims directory.
    ///
    /// # Errors
    ///
    /// An I/O error if the claims directory cannot be created.
    pub fn open(backend: &'static str, state_dir: &Path) -> Result<ProjectQuotas> {
        let support = probe(backend, state_dir);
        let q = ProjectQuotas {
            backend,
            dir: state_dir.to_owned(),
            support,
        };
        if q.support.is_yes() {
            std::fs::create_dir_all(q.claims()).ctx("create directory", q.claims())?;
        }
        Ok(q)
    }

    /// Whether size limits are enforced here, and if not, why.
    pub fn support(&self) -> &Support {
        &self.support
    }

    fn claims(&self) -> PathBuf {
        self.dir.join(PROJECTS_DIR)
    }

    fn unsupported(&self) -> Error {
        let reason = match &self.support {
            Support::No(why) => why.clone(),
            Support::Yes => String::new(),
        };
        Error::Unsupported {
            backend: self.backend,
            feature: "quota",
            reason,
        }
    }

    /// Every claim as (project id, layer id it names), by id.
    fn list(&self) -> Result<Vec<(u32, String)>> {
        let dir = self.claims();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx("read directory", &dir),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.ctx("read directory", &dir)?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let target = match std::fs::read_link(entry.path()) {
                Ok(t) => t.to_string_lossy().into_owned(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).ctx("read link", entry.path()),
            };
            out.push((id, target));
        }
        out.sort();
        Ok(out)
    }

    /// The project id of `layer`, if it has one.
    ///
    /// # Errors
    ///
    /// An I/O error reading the claims.
    pub fn project_of(&self, layer: &str) -> Result<Option<u32>> {
        Ok(self
            .list()?
            .into_iter()
            .find(|(_, l)| l == layer)
            .map(|(id, _)| id))
    }

    /// Gives `dir` (the new, still empty directory of writable layer
    /// `layer`) a project id of its own that everything created below it
    /// inherits, and limits that project to `bytes`. Returns the id.
    ///
    /// # Errors
    ///
    /// [`drivers_api::ErrorKind::Unsupported`] where quotas are not
    /// enforced; I/O errors from the claim, the ioctl or `quotactl`. On
    /// error no claim and no limit is left.
    pub fn limit(&self, dir: &Path, layer: &LayerId, bytes: u64) -> Result<u32> {
        if !self.support.is_yes() {
            return Err(self.unsupported());
        }
        let fd = open_dir(dir)?;
        let id = self.claim(&fd, layer)?;
        let r = xfs::set_project(&fd, id, true)
            .ctx("give a project id to", dir)
            .and_then(|()| {
                xfs::set_project_limit(&fd, id, bytes).ctx("set the project quota limit of", dir)
            });
        if let Err(e) = r {
            if let Err(undo) = self.release_id(id) {
                tracing::warn!(backend = self.backend, layer_id = %layer, error = %undo, "could not undo a project claim; cleanup will retry");
            }
            return Err(e);
        }
        tracing::debug!(backend = self.backend, layer_id = %layer, project = id, bytes, "size limit set");
        Ok(id)
    }

    /// Claims a free project id for `layer`: the next after the highest
    /// claimed, skipping ids the kernel charges space to or limits.
    fn claim(&self, fd: &OwnedFd, layer: &LayerId) -> Result<u32> {
        let claims = self.claims();
        let start = self
            .list()?
            .last()
            .map_or(FIRST_PROJECT_ID, |(id, _)| id.saturating_add(1));
        for n in 0..CLAIM_ATTEMPTS {
            let id = start.wrapping_add(n).max(FIRST_PROJECT_ID);
            let free = xfs::project_quota(fd, id)
                .ctx("read the project quota of", &self.dir)?
                .is_unused();
            if !free {
                continue;
            }
            let link = claims.join(id.to_string());
            match rustix::fs::symlink(layer.as_str(), &link) {
                Ok(()) => return Ok(id),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e).ctx("claim project id", link),
            }
        }
        Err(io::Error::from(io::ErrorKind::AlreadyExists)).ctx("find a free project id for", claims)
    }

    /// Changes the limit of `layer`'s project to `bytes`.
    ///
    /// # Errors
    ///
    /// [`drivers_api::ErrorKind::Unsupported`] where quotas are not
    /// enforced, or when the layer was created without a limit (its files
    /// are in no project of their own); I/O errors from `quotactl`.
    pub fn set(&self, layer: &LayerId, bytes: u64) -> Result<()> {
        if !self.support.is_yes() {
            return Err(self.unsupported());
        }
        let Some(id) = self.project_of(layer.as_str())? else {
            return Err(Error::Unsupported {
                backend: self.backend,
                feature: "quota",
                reason: format!(
                    "layer {layer} was created without a size limit, so its files are charged to no project of \
                     their own; create it with one"
                ),
            });
        };
        let fd = open_dir(&self.dir)?;
        xfs::set_project_limit(&fd, id, bytes).ctx("set the project quota limit in", &self.dir)
    }

    /// Clears the limits of `layer`'s project and frees its id; nothing to
    /// do for a layer without one. Call it after the layer's data is gone.
    ///
    /// # Errors
    ///
    /// I/O errors from `quotactl` or removing the claim.
    pub fn release(&self, layer: &str) -> Result<()> {
        for (id, l) in self.list()? {
            if l == layer {
                self.release_id(id)?;
            }
        }
        Ok(())
    }

    fn release_id(&self, id: u32) -> Result<()> {
        if self.support.is_yes() {
            let fd = open_dir(&self.dir)?;
            xfs::set_project_limit(&fd, id, 0)
                .ctx("clear the project quota limit in", &self.dir)?;
        }
        let link = self.claims().join(id.to_string());
        match std::fs::remove_file(&link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("remove", link),
        }
    }

    /// Releases the projects of layers for which `live` is false (a
    /// removal or a failed prepare that a crash interrupted).
    ///
    /// # Errors
    ///
    /// What [`ProjectQuotas::release`] returns.
    pub fn cleanup(&self, live: &dyn Fn(&LayerId) -> bool) -> Result<()> {
        for (id, layer) in self.list()? {
            if LayerId::new(layer.as_str()).is_ok_and(|l| live(&l)) {
                continue;
            }
            self.release_id(id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
