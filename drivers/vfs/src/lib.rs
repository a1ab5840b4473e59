//! drivers-vfs: the baseline backend, every layer a full copy.
//!
//! [`Vfs`] needs nothing from the kernel beyond a directory tree: a new
//! layer starts as a copy of its immediate parent (extents shared with
//! `FICLONE` where the filesystem can, holes and hardlinks kept, see
//! [`drivers_fs::copy::copy_tree`]) and is mounted as a bind mount. It is
//! slow and big on filesystems without reflinks, and works everywhere.
//!
//! Layout under the state directory:
//!
//! ```text
//! layers/<id>/        the layer's root directory itself
//! tmp/new-<id>/       a layer being built; renamed into layers/ when complete
//! tmp/rm-<id>/        a layer being deleted; renamed here first
//! projects/<n>        project id n's claim, for a layer with a size limit
//! ```
//!
//! Size limits are XFS project quotas ([`drivers_xfs`]) on the layer
//! directory, which holds the copy of the parent too: the limit counts the
//! whole tree. They work when the state directory is on an XFS mounted
//! with `prjquota`: `drivers select vfs --loopback SIZE` makes one and
//! mounts it there.
//!
//! Both renames make crashes harmless: a half-built or half-deleted layer
//! is never under `layers/`, and [`Driver::cleanup`] removes what is left
//! in `tmp/`.
//!
//! ```no_run
//! use drivers_api::{SelectArgs, HostEnv, LayerId, PrepareOpts};
//! let env = HostEnv { state_dir: "/var/lib/drivers/vfs".into() };
//! let vfs = (drivers_vfs::BACKEND.open)(&env, &toml::Table::new())?;
//! let base = LayerId::new("base")?;
//! let mounts = vfs.prepare(&base, &[], &PrepareOpts::default())?;
//! // ... fill vfs.apply_target(&base, &[])?.root, then:
//! vfs.commit(&base)?;
//! # Ok::<(), drivers_api::Error>(())
//! ```

use std::io;
use std::path::{Path, PathBuf};

use drivers_api::{
    ApplyFormat, ApplyTarget, Availability, Backend, Capabilities, DiffSource, Driver, Error,
    HostEnv, IoContext, LayerId, Mount, PrepareOpts, Result, SelectArgs, Support, Usage,
};
use drivers_xfs::ProjectQuotas;
use rustix::fs::{Access, CWD, RenameFlags, StatVfsMountFlags};

/// The backend's name, as users type it.
const NAME: &str = "vfs";

/// How the host finds, probes and opens the vfs backend.
pub const BACKEND: Backend = Backend {
    name: NAME,
    probe: |env, _| probe(env),
    setup,
    open,
    teardown,
};

/// Mode of a base layer's root directory (the conformance convention).
const BASE_ROOT_MODE: u32 = 0o755;

/// The `[backends.vfs]` table of the config file; unknown keys are
/// refused so a typo is not silently ignored.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `--loopback SIZE`: the size in bytes of the file-backed XFS (with
    /// project quotas) mounted on the state directory, see
    /// [`drivers_xfs`]. Default: unset, the root's own filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loopback: Option<u64>,
    /// `--path DIR`: a directory bind-mounted on the state directory (e.g.
    /// on an XFS mounted with `prjquota`). Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

impl Config {
    fn location(&self) -> drivers_xfs::Location {
        drivers_xfs::Location {
            path: self.path.clone(),
            loopback: self.loopback,
        }
    }
}

/// The vfs backend: every layer a full copy of its parent.
#[derive(Debug)]
pub struct Vfs {
    /// `<root>/vfs`.
    state_dir: PathBuf,
    /// Size limits: XFS project quotas on the layer directory.
    quotas: ProjectQuotas,
}

impl Vfs {
    /// Opens (creating if needed) the backend's directories under
    /// `env.state_dir`.
    ///
    /// # Errors
    ///
    /// An I/O error if the directories cannot be created.
    pub fn open(env: &HostEnv, config: Config) -> Result<Vfs> {
        // Where the state lives was settled before (`drivers_xfs::open`).
        let Config {
            path: _,
            loopback: _,
        } = config;
        let vfs = Vfs {
            state_dir: env.state_dir.clone(),
            quotas: {
                // Probed on the state directory itself, so it must exist.
                std::fs::create_dir_all(&env.state_dir).ctx("create directory", &env.state_dir)?;
                ProjectQuotas::open(NAME, &env.state_dir)?
            },
        };
        for dir in [vfs.layers_dir(), vfs.tmp_dir()] {
            std::fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        }
        Ok(vfs)
    }

    fn layers_dir(&self) -> PathBuf {
        self.state_dir.join("layers")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.state_dir.join("tmp")
    }

    fn layer(&self, id: &LayerId) -> PathBuf {
        self.layers_dir().join(id.as_str())
    }

    /// The layer's root, or `NotFound` if its data is gone.
    fn existing(&self, id: &LayerId) -> Result<PathBuf> {
        let dir = self.layer(id);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(dir),
            Ok(_) => Err(Error::NotFound {
                what: "layer",
                id: id.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotFound {
                what: "layer",
                id: id.to_string(),
            }),
            Err(e) => Err(e).ctx("inspect layer", dir),
        }
    }

    /// Builds layer `id` as a copy of `parents[0]` in `tmp/new-<id>` and
    /// renames it into place; with `limit`, the directory gets a project of
    /// its own limited to that many bytes before the copy, so the copy
    /// counts against the limit too. On error nothing is left behind.
    fn create(&self, id: &LayerId, parents: &[LayerId], limit: Option<u64>) -> Result<PathBuf> {
        let staging = self.tmp_dir().join(format!("new-{id}"));
        let dst = self.layer(id);
        // A crashed earlier attempt with this id may have left a staging tree.
        drivers_fs::remove_tree(&staging).ctx("remove stale staging directory", &staging)?;
        let r = self.fill(&staging, id, parents, limit).and_then(|()| {
            rustix::fs::renameat_with(CWD, &staging, CWD, &dst, RenameFlags::NOREPLACE).map_err(
                |e| match e {
                    rustix::io::Errno::EXIST | rustix::io::Errno::NOTEMPTY => {
                        Error::AlreadyExists {
                            what: "layer",
                            id: id.to_string(),
                        }
                    }
                    e => Error::Io {
                        op: "move new layer into place",
                        path: dst.clone(),
                        source: e.into(),
                    },
                },
            )
        });
        if r.is_err()
            && let Err(e) = drivers_fs::remove_tree(&staging)
                .ctx("remove", &staging)
                .and_then(|()| self.quotas.release(id.as_str()))
        {
            tracing::warn!(path = %staging.display(), error = %e, "could not remove a failed layer; cleanup will retry");
        }
        r.map(|()| dst)
    }

    fn fill(
        &self,
        staging: &Path,
        id: &LayerId,
        parents: &[LayerId],
        limit: Option<u64>,
    ) -> Result<()> {
        std::fs::create_dir(staging).ctx("create directory", staging)?;
        if let Some(bytes) = limit {
            self.quotas.limit(staging, id, bytes)?;
        }
        match parents.first() {
            Some(parent) => {
                let src = self.existing(parent)?;
                let stats = drivers_fs::copy::copy_tree(&src, staging)
                    .ctx("copy parent layer into", staging)?;
                tracing::debug!(
                    backend = NAME,
                    parent = %parent,
                    inodes = stats.inodes,
                    bytes = stats.bytes,
                    reflinked = stats.reflinked,
                    "copied parent layer"
                );
            }
            None => {
                use std::os::unix::fs::PermissionsExt;
                std::os::unix::fs::chown(staging, Some(0), Some(0)).ctx("set owner of", staging)?;
                // Explicit, because mkdir's mode was reduced by the umask.
                std::fs::set_permissions(staging, std::fs::Permissions::from_mode(BASE_ROOT_MODE))
                    .ctx("set mode of", staging)?;
            }
        }
        Ok(())
    }

    /// Deletes a tree by first renaming it to `tmp/rm-<name>`, so that an
    /// interrupted deletion is never mistaken for a layer. A missing tree is
    /// not an error.
    fn discard(&self, dir: &Path, name: &str) -> Result<()> {
        let graveyard = self.tmp_dir().join(format!("rm-{name}"));
        drivers_fs::remove_tree(&graveyard).ctx("remove", &graveyard)?;
        match std::fs::rename(dir, &graveyard) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).ctx("move layer out of place", dir),
        }
        drivers_fs::remove_tree(&graveyard).ctx("remove", &graveyard)?;
        self.quotas.release(name)
    }
}

/// Usage of a tree, for reporting what cleanup freed; a tree that cannot be
/// measured counts as nothing rather than stopping the cleanup.
fn usage_or_zero(dir: &Path) -> Usage {
    drivers_fs::usage(dir)
        .map(|(bytes, inodes)| Usage { bytes, inodes })
        .unwrap_or_default()
}

impl Driver for Vfs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            quota: self.quotas.support().clone(),
            dedup: Support::No(
                "vfs shares extents only between a layer and the copy made from it (reflinks on btrfs or xfs), \
                 never between identical files of unrelated layers"
                    .into(),
            ),
            fast_diff: Support::No("every layer is a full copy: changes are found by comparing it with its parent".into()),
        }
    }

    fn prepare(&self, id: &LayerId, parents: &[LayerId], opts: &PrepareOpts) -> Result<Vec<Mount>> {
        if let (Some(_), Support::No(reason)) = (opts.size_limit, self.quotas.support()) {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: "quota",
                reason: reason.clone(),
            });
        }
        let source = self.create(id, parents, opts.size_limit)?;
        Ok(vec![Mount::Bind {
            source,
            read_only: false,
        }])
    }

    fn view(&self, id: &LayerId, parents: &[LayerId]) -> Result<Vec<Mount>> {
        let source = self.create(id, parents, None)?;
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

    fn diff_source(&self, id: &LayerId, parents: &[LayerId]) -> Result<DiffSource> {
        let parent = parents.first().map(|p| self.existing(p)).transpose()?;
        Ok(DiffSource::Compare {
            layer: self.existing(id)?,
            parent,
        })
    }

    fn commit(&self, id: &LayerId) -> Result<Usage> {
        self.usage(id)
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        self.discard(&self.layer(id), id.as_str())
    }

    fn usage(&self, id: &LayerId) -> Result<Usage> {
        let dir = self.existing(id)?;
        let (bytes, inodes) = drivers_fs::usage(&dir).ctx("measure layer", &dir)?;
        Ok(Usage { bytes, inodes })
    }

    fn cleanup(&self, live: &dyn Fn(&LayerId) -> bool) -> Result<Usage> {
        let mut freed = Usage::default();
        for name in dir_names(&self.layers_dir())? {
            match LayerId::new(name.as_str()) {
                Ok(id) if live(&id) => {}
                Ok(id) => {
                    freed += usage_or_zero(&self.layer(&id));
                    self.remove(&id)?;
                }
                Err(_) => tracing::warn!(
                    backend = NAME,
                    name,
                    "not a layer id; leaving it in layers/"
                ),
            }
        }
        for name in dir_names(&self.tmp_dir())? {
            let stale = match name.strip_prefix("new-") {
                Some(id) => LayerId::new(id).map_or(true, |id| !live(&id)),
                None => name.starts_with("rm-"),
            };
            if stale {
                let path = self.tmp_dir().join(&name);
                freed += usage_or_zero(&path);
                drivers_fs::remove_tree(&path).ctx("remove", &path)?;
            }
        }
        self.quotas.cleanup(live)?;
        Ok(freed)
    }

    fn set_limit(&self, id: &LayerId, bytes: u64) -> Result<()> {
        self.existing(id)?;
        self.quotas.set(id, bytes)
    }
}

/// Names of the entries of `dir` that are valid UTF-8 (ours all are).
fn dir_names(dir: &Path) -> Result<Vec<String>> {
    drivers_fs::utf8_names(dir).ctx("read directory", dir)
}

/// vfs works on any local filesystem the process can write to, as root
/// (layer files keep their owners, which needs `chown`).
fn probe(env: &HostEnv) -> Availability {
    if !rustix::process::geteuid().is_root() {
        return Availability::Unusable {
            reason: "vfs must run as root to keep the owners of layer files".into(),
            hint: Some("run drivers as root".into()),
        };
    }
    let Some(dir) = env
        .state_dir
        .ancestors()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
    else {
        return Availability::Unusable {
            reason: "no part of the state directory exists".into(),
            hint: None,
        };
    };
    if !dir.is_dir() {
        return Availability::Unusable {
            reason: format!(
                "{} is in the way of the state directory and is not a directory",
                dir.display()
            ),
            hint: Some("move it away or choose another --root".into()),
        };
    }
    let read_only = rustix::fs::statvfs(dir)
        .map(|st| st.f_flag.contains(StatVfsMountFlags::RDONLY))
        .unwrap_or(false);
    if read_only || rustix::fs::access(dir, Access::WRITE_OK | Access::EXEC_OK).is_err() {
        return Availability::Unusable {
            reason: format!(
                "{} is not writable{}",
                dir.display(),
                if read_only {
                    " (read-only filesystem)"
                } else {
                    ""
                }
            ),
            hint: Some("choose a --root on a writable filesystem".into()),
        };
    }
    Availability::Usable
}

/// `drivers select vfs [--path DIR | --loopback SIZE]`: checks the
/// recorded settings and mounts the XFS or the directory the state
/// directory lives on ([`drivers_xfs::setup`]); without an option the
/// recorded location is kept.
fn setup(env: &HostEnv, args: &SelectArgs, table: &toml::Table) -> Result<toml::Table> {
    let config: Config = drivers_api::parse_config("backends.vfs", table)?;
    let at = drivers_xfs::setup(NAME, env, args, &config.location())?;
    Ok(at.record(table))
}

fn open(env: &HostEnv, table: &toml::Table) -> Result<Box<dyn Driver>> {
    let config: Config = drivers_api::parse_config("backends.vfs", table)?;
    drivers_xfs::open(NAME, env, &config.location())?;
    Ok(Box::new(Vfs::open(env, config)?))
}

/// Undoes `setup`: a loopback XFS is unmounted and deleted, with
/// everything on it; a `--path` bind is unmounted.
fn teardown(env: &HostEnv, table: &toml::Table) -> Result<()> {
    let config: Config = drivers_api::parse_config("backends.vfs", table)?;
    drivers_xfs::teardown(NAME, env, &config.location())
}

#[cfg(test)]
mod tests;
