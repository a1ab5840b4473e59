//! drivers-zfs: layers as ZFS datasets, children as clones.
//!
//! All layers live under one parent dataset chosen at `drivers select zfs`
//! (`--dataset POOL/NAME`, or `--loopback SIZE` for a new pool on a sparse
//! file `<state>/pool.img`). A base layer is a new dataset; a child layer
//! or a container is a `zfs clone` of its parent's `@committed` snapshot,
//! which [`Driver::commit`] takes (after making the layer read-only); a
//! view is a read-only clone. Removing a layer destroys its dataset with
//! its snapshot; the host never removes a layer while a clone of it
//! (child or view) exists, so clones always go before their origins.
//!
//! ```text
//! <parent>/<id>                 layer <id>'s dataset
//! <parent>/<id>@committed       the snapshot its children and views clone
//! <state>/pool.img              the pool's file (--loopback only)
//! <state>/datasets/             mountpoint of <parent>
//! <state>/datasets/<id>/        mountpoint of <parent>/<id>
//! ```
//!
//! # Mounts
//!
//! Every dataset is mounted by ZFS itself at `<state>/datasets/<id>` and the
//! host gets a [`Mount::Bind`] of that directory (read-only for views).
//! `mountpoint=legacy` with a host-side `Mount::Fs { fstype: "zfs" }` does
//! not work here: zfs-fuse datasets are FUSE filesystems (`fuse.zfs`) that
//! only its daemon can mount — the kernel has no `zfs` type and there is
//! no `mount.zfs` helper (`mount -t zfs` fails with "unknown filesystem
//! type"; `zfs mount` of a legacy dataset is refused). A mounted dataset is
//! also what layer apply and diff need: [`ApplyTarget::root`] is the
//! dataset's mountpoint (format [`ApplyFormat::Full`]: a clone already
//! holds its parent's tree, so whiteouts delete), and diffs compare two
//! mountpoints. The same layout is used with the kernel module, so one
//! store works with either. drivers itself unmounts a dataset before
//! destroying it, with zfs-fuse only once the daemon has answered every
//! FUSE request of it: see `fuse` for the hang that avoids.
//!
//! # Talking to ZFS, and what it costs
//!
//! [`ops::ZfsOps`] hides how: the `zfs`/`zpool` commands (always with
//! zfs-fuse), or libzfs_core with the `lzc` cargo feature where `/dev/zfs`
//! exists. Nothing is asked that the host already guarantees (parents
//! exist, ids are fresh), and opening the backend costs no process while
//! `<state>/datasets` is mounted, so `drivers container create` starts
//! exactly one process (`zfs clone`). Importing a layer starts three
//! (`clone`/`create`, `set readonly=on`, `snapshot`) plus one `zfs get
//! used` for its size. Every spawn is counted ([`spawn_count`]) and logged
//! at debug level under the target `drivers_zfs::spawn`.
//!
//! # Extended attributes
//!
//! zfs-fuse stores none: every `*xattr` call on it fails with EOPNOTSUPP.
//! A layer whose files carry xattrs (`security.capability` included) is
//! therefore refused by default, the error naming the file and the
//! attribute (the layer is discarded, nothing is left). With `xattrs =
//! "drop"` in `[backends.zfs]` the host unpacks such layers without their
//! xattrs instead, and logs how many it dropped; see [`XattrMode`].
//!
//! # Quota
//!
//! `PrepareOpts::size_limit` and [`Driver::set_limit`] become the dataset's
//! `refquota`; writing past it fails with EDQUOT (zfs-fuse too).

mod daemon;
mod fuse;
#[cfg(feature = "lzc")]
mod lzc;
mod ops;
mod probe;
mod setup;

use std::path::{Path, PathBuf};

use drivers_api::{
    ApplyFormat, ApplyTarget, Backend, Capabilities, DiffSource, Driver, Error, HostEnv, IoContext,
    LayerId, LayerXattrs, Mount, PrepareOpts, Result, Support, Usage,
};

pub use ops::spawn_count;
pub use setup::{MIN_LOOPBACK_BYTES, POOL_FILE, destroy_pool, pools_with_prefix};

/// The backend's name, as users type it.
const NAME: &str = "zfs";

/// Directory under the state directory holding the datasets' mountpoints.
pub const DATASETS_DIR: &str = "datasets";

/// The snapshot a committed layer's children and views are cloned from.
const SNAPSHOT: &str = "committed";

/// How the host finds, probes and opens the zfs backend.
pub const BACKEND: Backend = Backend {
    name: NAME,
    probe: probe::probe,
    setup: setup::setup,
    open,
    teardown: setup::teardown,
};

/// What to do with a layer's extended attributes, which zfs-fuse cannot
/// store (the kernel module can; there this setting changes nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XattrMode {
    /// Refuse a layer that carries xattrs the filesystem cannot store,
    /// naming the file and the attribute. The default: nothing is lost
    /// silently.
    #[default]
    Refuse,
    /// Unpack such layers without their xattrs (logged with a count).
    /// Files that need `security.capability` lose those capabilities.
    Drop,
}

/// The `[backends.zfs]` table, written by `drivers select zfs`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The dataset layers live under, `POOL` or `POOL/NAME`.
    pub dataset: String,
    /// The file backing the pool, for a pool `--loopback` created
    /// (`<state>/pool.img`); teardown destroys that pool and deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_file: Option<PathBuf>,
    /// Whether select created `dataset` (teardown destroys it then).
    #[serde(default)]
    pub created: bool,
    /// What to do with xattrs zfs-fuse cannot store. Default: `"refuse"`.
    #[serde(default)]
    pub xattrs: XattrMode,
}

impl Config {
    /// The pool: the first component of [`Config::dataset`].
    pub fn pool(&self) -> &str {
        self.dataset.split('/').next().unwrap_or(&self.dataset)
    }
}

/// Whether the ZFS on this machine stores extended attributes: the kernel
/// module does, zfs-fuse does not. (A zfs-fuse daemon started with
/// `--enable-xattr` accepts them, but they were missing in clones of the
/// dataset and the daemon hung in the CLI tests; the probe refuses such a
/// daemon.)
pub fn stores_xattrs() -> bool {
    probe::Flavour::detect() == probe::Flavour::Kernel
}

/// Every dataset and snapshot below the layer dataset of the settings
/// `table` (nothing when zfs is not set up): what a listing of the
/// backend's data must include besides files, for tests and diagnostics.
///
/// # Errors
///
/// A malformed table, or `zfs list` failing.
pub fn datasets(table: &toml::Table) -> Result<Vec<String>> {
    if table.is_empty() {
        return Ok(Vec::new());
    }
    let c: Config = drivers_api::parse_config("backends.zfs", table)?;
    let out = ops::run(
        "zfs",
        &["list", "-H", "-r", "-t", "all", "-o", "name", &c.dataset],
        "dataset",
        &c.dataset,
    )?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|n| *n != c.dataset && !n.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The zfs backend.
#[derive(Debug)]
pub struct Zfs {
    /// `<root>/zfs`, absolute.
    state_dir: PathBuf,
    config: Config,
    ops: Box<dyn ops::ZfsOps>,
}

impl Zfs {
    /// Opens the backend with its recorded settings, re-importing and
    /// re-mounting what a reboot or a daemon restart undid.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the pool cannot be reached.
    pub fn open(env: &HostEnv, config: Config) -> Result<Zfs> {
        let state_dir = std::path::absolute(&env.state_dir).ctx("resolve", &env.state_dir)?;
        setup::reattach(&state_dir, &config)?;
        let ops = choose_ops()?;
        tracing::debug!(backend = NAME, dataset = %config.dataset, via = ops.kind(), "opened");
        Ok(Zfs {
            state_dir,
            config,
            ops,
        })
    }

    fn dataset(&self, id: &str) -> String {
        format!("{}/{id}", self.config.dataset)
    }

    fn snapshot(&self, id: &LayerId) -> String {
        format!("{}/{id}@{SNAPSHOT}", self.config.dataset)
    }

    fn mountpoint(&self, id: &str) -> PathBuf {
        self.state_dir.join(DATASETS_DIR).join(id)
    }

    /// Properties of a new layer dataset.
    fn props(
        &self,
        id: &LayerId,
        read_only: bool,
        limit: Option<u64>,
    ) -> Vec<(&'static str, String)> {
        let mut p = vec![(
            "mountpoint",
            self.mountpoint(id.as_str()).display().to_string(),
        )];
        if read_only {
            p.push(("readonly", "on".into()));
        }
        if let Some(l) = limit {
            p.push(("refquota", l.to_string()));
        }
        p
    }

    /// Creates dataset `id`: new for a base layer, else a clone of the
    /// immediate parent's snapshot (whose root attributes it keeps).
    fn create(
        &self,
        id: &LayerId,
        parents: &[LayerId],
        read_only: bool,
        limit: Option<u64>,
    ) -> Result<PathBuf> {
        let ds = self.dataset(id.as_str());
        let props = self.props(id, read_only, limit);
        let props: Vec<(&str, String)> = props.into_iter().collect();
        match parents.first() {
            None => self.ops.create(&ds, &props)?,
            Some(p) => self.ops.clone_snapshot(&self.snapshot(p), &ds, &props)?,
        }
        Ok(self.mountpoint(id.as_str()))
    }

    /// The mountpoint of an existing layer, mounting it if a restart left
    /// it unmounted; `NotFound` if its dataset is gone.
    fn mounted(&self, id: &LayerId) -> Result<PathBuf> {
        let mp = self.mountpoint(id.as_str());
        if drivers_mount::is_mountpoint(&mp)? {
            return Ok(mp);
        }
        self.ops
            .mount(&self.dataset(id.as_str()))
            .map_err(|e| match e {
                Error::NotFound { .. } => Error::NotFound {
                    what: "layer",
                    id: id.to_string(),
                },
                e => e,
            })?;
        Ok(mp)
    }

    /// Unmounts, destroys and forgets dataset `name` (a layer id, or a
    /// leftover name under the parent); returns whether it existed.
    fn destroy(&self, name: &str) -> Result<bool> {
        let mp = self.mountpoint(name);
        // Unmounted here rather than by `zfs destroy`: with zfs-fuse only
        // after the daemon answered every request of the mount (see
        // `fuse`), and the destroy is then not answered "busy".
        fuse::unmount(&mp)?;
        let existed = self.ops.destroy(&self.dataset(name))?;
        match std::fs::remove_dir(&mp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove mountpoint", mp),
        }
        Ok(existed)
    }

    /// Objects in use on the filesystem mounted at `mp`, per statvfs.
    fn objects(mp: &Path) -> u64 {
        rustix::fs::statvfs(mp)
            .map(|s| s.f_files.saturating_sub(s.f_ffree))
            .unwrap_or(0)
    }

    /// Leftover mountpoint directories under `datasets/` whose dataset is
    /// gone (a removal interrupted after its destroy).
    fn cleanup_mountpoints(&self, names: &[String]) -> Result<()> {
        let dir = self.state_dir.join(DATASETS_DIR);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).ctx("read directory", dir),
        };
        for entry in rd {
            let entry = entry.ctx("read directory", &dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if names.contains(&name) || drivers_mount::is_mountpoint(&entry.path())? {
                continue;
            }
            // Only an empty directory: anything else is not ours to delete.
            if let Err(e) = std::fs::remove_dir(entry.path()) {
                tracing::warn!(backend = NAME, path = %entry.path().display(), error = %e, "leaving a directory in datasets/");
            }
        }
        Ok(())
    }
}

/// libzfs_core where the kernel module is there and the `lzc` feature was
/// built, the commands otherwise.
fn choose_ops() -> Result<Box<dyn ops::ZfsOps>> {
    #[cfg(feature = "lzc")]
    if probe::Flavour::detect() == probe::Flavour::Kernel {
        return Ok(Box::new(lzc::Lzc::open()?));
    }
    Ok(Box::new(ops::Cli))
}

/// Why the capabilities say no.
const DEDUP_REASON: &str = "a clone shares unchanged blocks with its parent, but identical files in unrelated layers \
                            are not shared (ZFS dedup is off)";
const FAST_DIFF_REASON: &str =
    "changes are found by comparing a layer's tree with its parent's (zfs diff is not used)";

impl Driver for Zfs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            quota: Support::Yes,
            dedup: Support::No(DEDUP_REASON.into()),
            fast_diff: Support::No(FAST_DIFF_REASON.into()),
        }
    }

    fn layer_xattrs(&self) -> LayerXattrs {
        match self.config.xattrs {
            XattrMode::Drop if !stores_xattrs() => LayerXattrs::Drop,
            _ => LayerXattrs::Store,
        }
    }

    fn prepare(&self, id: &LayerId, parents: &[LayerId], opts: &PrepareOpts) -> Result<Vec<Mount>> {
        let source = self.create(id, parents, false, opts.size_limit)?;
        Ok(vec![Mount::Bind {
            source,
            read_only: false,
        }])
    }

    fn view(&self, id: &LayerId, parents: &[LayerId]) -> Result<Vec<Mount>> {
        let source = self.create(id, parents, true, None)?;
        Ok(vec![Mount::Bind {
            source,
            read_only: true,
        }])
    }

    fn mounts(&self, id: &LayerId, _parents: &[LayerId], writable: bool) -> Result<Vec<Mount>> {
        Ok(vec![Mount::Bind {
            source: self.mounted(id)?,
            read_only: !writable,
        }])
    }

    fn apply_target(&self, id: &LayerId, _parents: &[LayerId]) -> Result<ApplyTarget> {
        Ok(ApplyTarget {
            root: self.mounted(id)?,
            format: ApplyFormat::Full,
        })
    }

    fn diff_source(&self, id: &LayerId, parents: &[LayerId]) -> Result<DiffSource> {
        let parent = parents.first().map(|p| self.mounted(p)).transpose()?;
        Ok(DiffSource::Compare {
            layer: self.mounted(id)?,
            parent,
        })
    }

    fn commit(&self, id: &LayerId) -> Result<Usage> {
        let ds = self.dataset(id.as_str());
        // Read-only first: the dataset's own tree is what diffs of it and
        // of its children read, so it must not change after the snapshot.
        self.ops.set(&ds, "readonly", "on")?;
        match self.ops.snapshot(&self.snapshot(id)) {
            // An interrupted commit that got this far: the same snapshot.
            Ok(()) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        self.usage(id)
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        self.destroy(id.as_str()).map(drop)
    }

    /// Bytes: the dataset's `used` (what destroying it frees: its own
    /// blocks, not those it shares with its origin). Inodes: how many more
    /// objects its tree has than its parent's (0 when it deleted more than
    /// it added), from statvfs of both mountpoints: ZFS keeps no count of
    /// a clone's own objects.
    fn usage(&self, id: &LayerId) -> Result<Usage> {
        let ds = self.dataset(id.as_str());
        let (bytes, origin) = self.ops.used(&ds).map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound {
                what: "layer",
                id: id.to_string(),
            },
            e => e,
        })?;
        let own = Self::objects(&self.mounted(id)?);
        let parent = origin
            .as_deref()
            .and_then(|o| o.split('@').next())
            .and_then(|d| d.strip_prefix(&format!("{}/", self.config.dataset)))
            .and_then(|p| LayerId::new(p).ok())
            .and_then(|p| self.mounted(&p).ok())
            .map_or(0, |mp| Self::objects(&mp));
        Ok(Usage {
            bytes,
            inodes: own.saturating_sub(parent),
        })
    }

    fn cleanup(&self, live: &dyn Fn(&LayerId) -> bool) -> Result<Usage> {
        let children = self.ops.children(&self.config.dataset)?;
        let prefix = format!("{}/", self.config.dataset);
        let name_of = |ds: &str| ds.strip_prefix(&prefix).map(str::to_owned);
        let mut doomed: Vec<(String, Option<String>)> = children
            .iter()
            .filter_map(|c| {
                let name = name_of(&c.name)?;
                let dead = LayerId::new(name.as_str()).map_or(true, |id| !live(&id));
                dead.then(|| (name, c.origin.clone()))
            })
            .collect();
        let mut freed = Usage::default();
        // Clones before their origins: destroy what no other doomed
        // dataset was cloned from, until nothing is left.
        while !doomed.is_empty() {
            let origins: Vec<String> = doomed
                .iter()
                .filter_map(|(_, o)| o.as_deref()?.split('@').next().map(str::to_owned))
                .collect();
            let (leaves, rest): (Vec<_>, Vec<_>) = doomed
                .into_iter()
                .partition(|(n, _)| !origins.contains(&self.dataset(n)));
            if leaves.is_empty() {
                return Err(Error::Invalid {
                    field: "zfs datasets",
                    reason: format!("clone cycle among {rest:?}"),
                });
            }
            for (name, _) in leaves {
                freed.bytes += self.ops.used(&self.dataset(&name)).map_or(0, |(b, _)| b);
                tracing::info!(backend = NAME, dataset = %self.dataset(&name), "destroying an orphan dataset");
                self.destroy(&name)?;
            }
            doomed = rest;
        }
        let names: Vec<String> = children.iter().filter_map(|c| name_of(&c.name)).collect();
        self.cleanup_mountpoints(&names)?;
        Ok(freed)
    }

    fn set_limit(&self, id: &LayerId, bytes: u64) -> Result<()> {
        self.ops
            .set(&self.dataset(id.as_str()), "refquota", &bytes.to_string())
    }
}

fn open(env: &HostEnv, table: &toml::Table) -> Result<Box<dyn Driver>> {
    if table.is_empty() {
        return Err(Error::Unavailable {
            backend: NAME,
            reason: "zfs has no pool or dataset yet".into(),
            hint: Some("run `drivers select zfs --dataset POOL/NAME` or `drivers select zfs --loopback SIZE`".into()),
        });
    }
    let config: Config = drivers_api::parse_config("backends.zfs", table)?;
    setup::check_dataset_name(&config.dataset)?;
    Ok(Box::new(Zfs::open(env, config)?))
}

#[cfg(test)]
mod tests;
