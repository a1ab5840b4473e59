//! drivers-overlay2: layers stacked by the kernel's overlayfs.
//!
//! Each layer stores only its own changes, in overlayfs's upper-directory
//! format (a deletion is a 0/0 character device, an opaque directory carries
//! `trusted.overlay.opaque=y`). A container's root is an overlay of its
//! writable layer over its parents; importing a layer unpacks it straight
//! into that upper directory without mounting anything, and diffing reads
//! the upper directory alone.
//!
//! Layout under the state directory:
//!
//! ```text
//! layers/<id>/diff    the upper directory: this layer's changes
//! layers/<id>/work    overlayfs's work directory, while the layer is writable
//! layers/<id>/link    the layer's short link name, e.g. `k3x9q2`
//! l/<short>           symlink to ../layers/<id>/diff
//! tmp/new-<id>/       a layer being built, renamed into layers/ when complete
//! tmp/rm-<id>/        a layer being deleted, renamed here first
//! projects/<n>        project id n's claim, for a layer with a size limit
//! ```
//!
//! Size limits are XFS project quotas ([`drivers_xfs`]): a container
//! created with one gets a project id on `layers/<id>`, inherited by its
//! `diff` and `work` directories, limited to the size. They work when the
//! state directory is on an XFS mounted with `prjquota`: `drivers select
//! overlay2 --loopback SIZE` makes one and mounts it there.
//!
//! Mounts name lower layers by their `l/` links: 500 links of 6 characters
//! fit in the one page legacy `mount(2)` accepts when the mounter changes
//! into `l/` (see `drivers-mount`), while 500 paths under `layers/` would not.
//!
//! ```no_run
//! use drivers_api::{SelectArgs, HostEnv, LayerId, PrepareOpts};
//! let env = HostEnv { state_dir: "/var/lib/drivers/overlay2".into() };
//! let table: toml::Table = toml::from_str(r#"mount_options = ["xino=on"]"#).unwrap();
//! let ovl = (drivers_overlay2::BACKEND.open)(&env, &table)?;
//! let ctr = LayerId::new("ctr1")?;
//! let mounts = ovl.prepare(&ctr, &[LayerId::new("top")?, LayerId::new("base")?], &PrepareOpts::default())?;
//! drivers_mount::mount(&mounts, std::path::Path::new("/run/ctr1"))?;
//! # Ok::<(), drivers_api::Error>(())
//! ```

mod probe;

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use drivers_api::{
    ApplyFormat, ApplyTarget, Backend, Capabilities, DiffSource, Driver, Error, HostEnv, IoContext,
    LayerId, Mount, OverlayUpper, PrepareOpts, Result, SelectArgs, Support, Usage,
};
use drivers_mount::MountApi;
use drivers_xfs::ProjectQuotas;
use rustix::fs::{CWD, RenameFlags};
use rustix::io::Errno;

/// The backend's name, as users type it.
const NAME: &str = "overlay2";

/// How the host finds, probes and opens the overlay2 backend.
pub const BACKEND: Backend = Backend {
    name: NAME,
    probe: |env, _| probe::probe(env),
    setup,
    open,
    teardown,
};

/// The deepest chain overlay2 mounts: overlayfs stacks at most 500 lower
/// layers (`OVL_MAX_STACK` in the kernel), whichever mount API is used.
///
/// A deeper chain is refused with [`Error::Limit`] before anything is
/// created, rather than silently flattened: flattening would copy whole
/// layers and change what `diff` of the top layers exports, which the user
/// should decide (re-build the image flatter, or use the vfs backend).
pub const MAX_OVERLAY_DEPTH: usize = 500;

/// Length of a short link name: 36^6 ≈ 2·10⁹ names, and `name:` is 7 bytes,
/// so 500 lowers take 3500 of the 4096 bytes legacy `mount(2)` accepts.
const LINK_LEN: usize = 6;

/// Attempts at a free random link name before giving up (a clash is a
/// one-in-millions event even with thousands of layers).
const LINK_ATTEMPTS: usize = 16;

/// Mode of a base layer's root directory (the conformance convention).
const BASE_ROOT_MODE: u32 = 0o755;

/// Options every overlay mount gets, first. Our diff reads the upper
/// directory alone, so nothing may live outside it: `redirect_dir` would
/// turn a directory rename into a pointer into a lower layer, `metacopy` a
/// chown into a data-less copy, and `index` ties the upper to one set of
/// lowers by file handle.
const FORMAT_OPTIONS: [&str; 3] = ["index=off", "redirect_dir=off", "metacopy=off"];

/// Option keys users may not set: the layers belong to the backend, and the
/// rest would change the upper-directory format the diff relies on.
const RESERVED_KEYS: &[&str] = &[
    "lowerdir",
    "lowerdir+",
    "datadir+",
    "upperdir",
    "workdir",
    "index",
    "redirect_dir",
    "metacopy",
    "userxattr",
];

/// The `[backends.overlay2]` table of the config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Extra overlayfs options for every overlay mount, e.g. `["xino=on"]`;
    /// never applied to bind mounts. Default: none. Layer options
    /// (`lowerdir`, `upperdir`, `workdir`, …) and those that change the
    /// on-disk format (`index`, `redirect_dir`, `metacopy`, `userxattr`) are
    /// refused. Beware `volatile`: overlayfs then leaves
    /// `work/incompat/volatile` behind and refuses to mount that layer again.
    pub mount_options: Vec<String>,
    /// Which kernel interface mounts overlays in this process: `"new"`
    /// (`fsopen`/`fsconfig`, Linux 6.8+) or `"legacy"` (`mount(2)`).
    /// Default: detected, preferring the new API; the environment variable
    /// `DRIVERS_OVERLAY_MOUNT_API` overrides detection, this setting
    /// overrides both.
    pub mount_api: Option<MountApi>,
    /// `--loopback SIZE`: the size in bytes of the file-backed XFS (with
    /// project quotas) mounted on the state directory, see
    /// [`drivers_xfs`]. Default: unset, the root's own filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loopback: Option<u64>,
    /// `--path DIR`: a directory bind-mounted on the state directory (e.g.
    /// on an XFS mounted with `prjquota`). Default: unset.
    #[serde(skip_serializing_if = "Option::is_none")]
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

/// The overlay2 backend.
#[derive(Debug)]
pub struct Overlay2 {
    /// `<root>/overlay2`.
    state_dir: PathBuf,
    /// [`FORMAT_OPTIONS`] followed by [`Config::mount_options`].
    options: Vec<String>,
    /// Size limits: XFS project quotas on the upper and work directories.
    quotas: ProjectQuotas,
}

/// What a mount plan needs to know about one parent layer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Parent {
    /// `layers/<id>/diff`.
    diff: PathBuf,
    /// `l/<short>`, the name overlay mounts use.
    link: PathBuf,
}

/// How `layer` (a `layers/<id>` directory) over `parents` (nearest first)
/// is mounted. Pure, so every shape is unit-tested without root.
///
/// - writable, no parents: a bind of its own `diff`;
/// - writable over parents: an overlay with `diff`/`work` as upper;
/// - view of nothing: a read-only bind of its own (empty) `diff`;
/// - view of one parent: a read-only bind of that parent's `diff` — the
///   kernel refuses an overlay of a single lower without an upper ("at
///   least 2 lowerdir are needed while upperdir nonexistent", still so on
///   6.18), and a bind is cheaper anyway;
/// - view of two or more: a read-only overlay of the parents.
fn mount_plan(layer: &Path, writable: bool, parents: &[Parent], options: &[String]) -> Vec<Mount> {
    let lower = || parents.iter().map(|p| p.link.clone()).collect();
    let m = match (writable, parents) {
        (true, []) => Mount::Bind {
            source: layer.join("diff"),
            read_only: false,
        },
        (true, _) => Mount::Overlay {
            lower: lower(),
            upper: Some(OverlayUpper {
                upper: layer.join("diff"),
                work: layer.join("work"),
            }),
            options: options.to_vec(),
        },
        (false, []) => Mount::Bind {
            source: layer.join("diff"),
            read_only: true,
        },
        (false, [only]) => Mount::Bind {
            source: only.diff.clone(),
            read_only: true,
        },
        (false, _) => Mount::Overlay {
            lower: lower(),
            upper: None,
            options: options.to_vec(),
        },
    };
    vec![m]
}

/// Refuses chains overlayfs cannot stack; see [`MAX_OVERLAY_DEPTH`].
fn check_depth(id: &LayerId, parents: &[LayerId]) -> Result<()> {
    if parents.len() <= MAX_OVERLAY_DEPTH {
        return Ok(());
    }
    Err(Error::Limit {
        what: format!("overlay mount of layer {id}"),
        reason: format!(
            "its {} parent layers exceed the {MAX_OVERLAY_DEPTH} lower layers overlayfs can stack",
            parents.len()
        ),
        hint: Some("flatten the image (fewer layers), or use the vfs backend".into()),
    })
}

/// Refuses mount options the backend must control; see [`RESERVED_KEYS`].
fn check_options(options: &[String]) -> Result<()> {
    for opt in options {
        let key = opt.split_once('=').map_or(opt.as_str(), |(k, _)| k);
        if RESERVED_KEYS.contains(&key) {
            return Err(Error::Invalid {
                field: "backends.overlay2.mount_options",
                reason: format!(
                    "{key} is set by the backend: layers must stay plain upper directories"
                ),
            });
        }
        if opt.is_empty() || opt.contains(',') {
            return Err(Error::Invalid {
                field: "backends.overlay2.mount_options",
                reason: format!("{opt:?} is not a single option"),
            });
        }
    }
    Ok(())
}

/// A fresh random link name of [`LINK_LEN`] base-36 characters.
fn random_link_name() -> io::Result<String> {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut bytes = [0u8; LINK_LEN];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
    // 256 % 36 leaves a slight bias, irrelevant for collision avoidance.
    Ok(bytes
        .iter()
        .map(|b| DIGITS[usize::from(*b) % DIGITS.len()] as char)
        .collect())
}

/// Whether `s` can be a link name we made (and so is safe in a path).
fn is_link_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl Overlay2 {
    /// Opens (creating if needed) the backend's directories under
    /// `env.state_dir`, and applies [`Config::mount_api`] to this process's
    /// overlay mounts.
    ///
    /// # Errors
    ///
    /// [`drivers_api::ErrorKind::Invalid`] for a reserved or malformed mount
    /// option; an I/O error if the directories cannot be created.
    pub fn open(env: &HostEnv, config: Config) -> Result<Overlay2> {
        check_options(&config.mount_options)?;
        if let Some(api) = config.mount_api {
            drivers_mount::set_overlay_api(Some(api));
        }
        let mut options: Vec<String> = FORMAT_OPTIONS.iter().map(|s| s.to_string()).collect();
        options.extend(config.mount_options);
        let ovl = Overlay2 {
            state_dir: env.state_dir.clone(),
            options,
            quotas: {
                // Probed on the state directory itself, so it must exist.
                std::fs::create_dir_all(&env.state_dir).ctx("create directory", &env.state_dir)?;
                ProjectQuotas::open(NAME, &env.state_dir)?
            },
        };
        for dir in [ovl.state_dir.join("layers"), ovl.links_dir(), ovl.tmp_dir()] {
            std::fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        }
        Ok(ovl)
    }

    fn layer(&self, id: &LayerId) -> PathBuf {
        self.state_dir.join("layers").join(id.as_str())
    }

    fn links_dir(&self) -> PathBuf {
        self.state_dir.join("l")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.state_dir.join("tmp")
    }

    /// What `l/<short>` of layer `id` points to.
    fn link_target(id: &str) -> PathBuf {
        Path::new("../layers").join(id).join("diff")
    }

    /// The layer's directory, or `NotFound` if its data is gone.
    fn existing(&self, id: &LayerId) -> Result<PathBuf> {
        let dir = self.layer(id);
        match std::fs::symlink_metadata(dir.join("diff")) {
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

    /// The short link name recorded in a layer (or staging) directory.
    fn read_link_name(dir: &Path) -> Result<Option<String>> {
        let file = dir.join("link");
        match std::fs::read_to_string(&file) {
            Ok(s) if is_link_name(s.trim()) => Ok(Some(s.trim().to_owned())),
            Ok(s) => Err(Error::Invalid {
                field: "layer link file",
                reason: format!("{}: {s:?}", file.display()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", file),
        }
    }

    /// Diff directories and link paths of `parents`, nearest first.
    fn parents(&self, parents: &[LayerId]) -> Result<Vec<Parent>> {
        parents
            .iter()
            .map(|p| {
                let dir = self.existing(p)?;
                let short = Self::read_link_name(&dir)?.ok_or_else(|| Error::NotFound {
                    what: "link of layer",
                    id: p.to_string(),
                })?;
                Ok(Parent {
                    diff: dir.join("diff"),
                    link: self.links_dir().join(short),
                })
            })
            .collect()
    }

    fn diffs(&self, parents: &[LayerId]) -> Result<Vec<PathBuf>> {
        parents
            .iter()
            .map(|p| Ok(self.existing(p)?.join("diff")))
            .collect()
    }

    /// Creates `l/<short>` → `../layers/<id>/diff` under a fresh random
    /// name; `symlinkat` fails on an existing name, so a clash just retries.
    fn create_link(&self, id: &LayerId) -> Result<String> {
        let target = Self::link_target(id.as_str());
        for _ in 0..LINK_ATTEMPTS {
            let name = random_link_name().ctx("generate a link name in", self.links_dir())?;
            match rustix::fs::symlinkat(&target, CWD, self.links_dir().join(&name)) {
                Ok(()) => return Ok(name),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e).ctx("create layer link in", self.links_dir()),
            }
        }
        Err(io::Error::from(io::ErrorKind::AlreadyExists))
            .ctx("find a free layer link name in", self.links_dir())
    }

    /// Removes `l/<short>` if it is still layer `id`'s link.
    fn remove_link(&self, short: &str, id: &str) -> Result<()> {
        let link = self.links_dir().join(short);
        match std::fs::read_link(&link) {
            Ok(t) if t == Self::link_target(id) => std::fs::remove_file(&link)
                .or_else(ignore_missing)
                .ctx("remove", link),
            Ok(_) => Ok(()),
            Err(e) => ignore_missing(e).ctx("read link", link),
        }
    }

    /// Builds layer `id` in `tmp/new-<id>` and renames it into place. Its
    /// `diff` root takes mode and owner from the nearest parent's, since
    /// the root of an overlay mount is the upper's root: that is how a
    /// `chmod /` in a container survives commit and is inherited.
    /// Writable layers also get `work` and a link; with `limit`, the layer
    /// directory gets a project of its own (inherited by `diff` and `work`,
    /// so overlayfs's copy-up stays in it) limited to that many bytes. On
    /// error nothing is left.
    fn create(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        writable: bool,
        limit: Option<u64>,
    ) -> Result<()> {
        let staging = self.tmp_dir().join(format!("new-{id}"));
        drivers_fs::remove_tree(&staging).ctx("remove stale staging directory", &staging)?;
        let mut link = None;
        let r = (|| {
            std::fs::create_dir(&staging).ctx("create directory", &staging)?;
            if let Some(bytes) = limit {
                self.quotas.limit(&staging, id, bytes)?;
            }
            let diff = staging.join("diff");
            std::fs::create_dir(&diff).ctx("create directory", &diff)?;
            let (mode, uid, gid) = match parent {
                Some(p) => {
                    let st = std::fs::metadata(self.existing(p)?.join("diff"))
                        .ctx("inspect parent layer", self.layer(p))?;
                    (st.mode() & 0o7777, st.uid(), st.gid())
                }
                None => (BASE_ROOT_MODE, 0, 0),
            };
            std::os::unix::fs::chown(&diff, Some(uid), Some(gid)).ctx("set owner of", &diff)?;
            // After chown, which clears setuid/setgid bits.
            rustix::fs::chmod(&diff, rustix::fs::Mode::from_raw_mode(mode))
                .ctx("set mode of", &diff)?;
            if writable {
                std::fs::create_dir(staging.join("work"))
                    .ctx("create directory", staging.join("work"))?;
                let short = self.create_link(id)?;
                link = Some(short.clone());
                std::fs::write(staging.join("link"), &short).ctx("write", staging.join("link"))?;
            }
            let dst = self.layer(id);
            rustix::fs::renameat_with(CWD, &staging, CWD, &dst, RenameFlags::NOREPLACE).map_err(
                |e| match e {
                    Errno::EXIST | Errno::NOTEMPTY => Error::AlreadyExists {
                        what: "layer",
                        id: id.to_string(),
                    },
                    e => Error::Io {
                        op: "move new layer into place",
                        path: dst.clone(),
                        source: e.into(),
                    },
                },
            )
        })();
        if r.is_err() {
            let undo = link.map_or(Ok(()), |s| self.remove_link(&s, id.as_str()));
            if let Err(e) = undo
                .and_then(|()| drivers_fs::remove_tree(&staging).ctx("remove", &staging))
                .and_then(|()| self.quotas.release(id.as_str()))
            {
                tracing::warn!(backend = NAME, layer_id = %id, error = %e, "could not undo a failed prepare; cleanup will retry");
            }
        }
        r
    }

    /// Deletes `tmp/rm-<name>` (an earlier, interrupted removal) with its
    /// link; returns what it freed.
    fn bury(&self, name: &str) -> Result<Usage> {
        let grave = self.tmp_dir().join(format!("rm-{name}"));
        if std::fs::symlink_metadata(&grave).is_err() {
            return Ok(Usage::default());
        }
        if let Some(short) = Self::read_link_name(&grave).unwrap_or(None) {
            self.remove_link(&short, name)?;
        }
        let freed = usage_or_zero(&grave);
        drivers_fs::remove_tree(&grave).ctx("remove", &grave)?;
        self.quotas.release(name)?;
        Ok(freed)
    }

    /// Removes a layer (renamed out of `layers/` first) and its link;
    /// returns what it freed.
    fn discard(&self, id: &LayerId) -> Result<Usage> {
        self.bury(id.as_str())?;
        let grave = self.tmp_dir().join(format!("rm-{id}"));
        match std::fs::rename(self.layer(id), &grave) {
            Ok(()) => self.bury(id.as_str()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Usage::default()),
            Err(e) => Err(e).ctx("move layer out of place", self.layer(id)),
        }
    }

    /// Removes the leftovers in `tmp/`: staging trees of dead ids (with
    /// their links) and every interrupted removal.
    fn cleanup_tmp(&self, live: &dyn Fn(&LayerId) -> bool) -> Result<Usage> {
        let mut freed = Usage::default();
        for name in dir_names(&self.tmp_dir())? {
            if let Some(id) = name.strip_prefix("rm-") {
                freed += self.bury(id)?;
            } else if let Some(id) = name.strip_prefix("new-") {
                if LayerId::new(id).is_ok_and(|id| live(&id)) {
                    continue; // possibly being prepared right now
                }
                let path = self.tmp_dir().join(&name);
                if let Some(short) = Self::read_link_name(&path).unwrap_or(None) {
                    self.remove_link(&short, id)?;
                }
                freed += usage_or_zero(&path);
                drivers_fs::remove_tree(&path).ctx("remove", &path)?;
                self.quotas.release(id)?;
            }
        }
        Ok(freed)
    }

    /// Removes `l/` links whose layer is gone, except those of a live layer
    /// still in staging (a prepare creates the link before the rename).
    fn cleanup_links(&self, live: &dyn Fn(&LayerId) -> bool) -> Result<()> {
        let dir = self.links_dir();
        for name in dir_names(&dir)? {
            let link = dir.join(&name);
            if std::fs::metadata(&link).is_ok() {
                continue; // resolves: its layer exists
            }
            let target = std::fs::read_link(&link).ok();
            let id = target
                .as_deref()
                .and_then(|t| t.parent())
                .and_then(Path::file_name)
                .and_then(OsStr::to_str);
            let staged = id.and_then(|id| LayerId::new(id).ok()).is_some_and(|id| {
                live(&id)
                    && std::fs::symlink_metadata(self.tmp_dir().join(format!("new-{id}"))).is_ok()
            });
            if !staged {
                std::fs::remove_file(&link)
                    .or_else(ignore_missing)
                    .ctx("remove dangling link", &link)?;
            }
        }
        Ok(())
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Usage of a tree, for reporting what cleanup freed; a tree that cannot be
/// measured counts as nothing rather than stopping the cleanup.
fn usage_or_zero(dir: &Path) -> Usage {
    drivers_fs::usage(dir)
        .map(|(bytes, inodes)| Usage { bytes, inodes })
        .unwrap_or_default()
}

/// Names of the entries of `dir` that are valid UTF-8 (ours all are).
fn dir_names(dir: &Path) -> Result<Vec<String>> {
    drivers_fs::utf8_names(dir).ctx("read directory", dir)
}

impl Driver for Overlay2 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            quota: self.quotas.support().clone(),
            dedup: Support::No(
                "layers are stacked, never copied, so nothing is duplicated between a layer and its parents; \
                 identical files in unrelated layers are not shared"
                    .into(),
            ),
            fast_diff: Support::Yes,
        }
    }

    fn max_depth(&self) -> Option<usize> {
        // A container on a chain of N committed layers mounts N lowers.
        Some(MAX_OVERLAY_DEPTH)
    }

    fn prepare(&self, id: &LayerId, parents: &[LayerId], opts: &PrepareOpts) -> Result<Vec<Mount>> {
        if let (Some(_), Support::No(reason)) = (opts.size_limit, self.quotas.support()) {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: "quota",
                reason: reason.clone(),
            });
        }
        check_depth(id, parents)?;
        let resolved = self.parents(parents)?;
        self.create(id, parents.first(), true, opts.size_limit)?;
        Ok(mount_plan(&self.layer(id), true, &resolved, &self.options))
    }

    fn view(&self, id: &LayerId, parents: &[LayerId]) -> Result<Vec<Mount>> {
        check_depth(id, parents)?;
        let resolved = self.parents(parents)?;
        self.create(id, parents.first(), false, None)?;
        Ok(mount_plan(&self.layer(id), false, &resolved, &self.options))
    }

    fn mounts(&self, id: &LayerId, parents: &[LayerId], writable: bool) -> Result<Vec<Mount>> {
        check_depth(id, parents)?;
        let dir = self.existing(id)?;
        Ok(mount_plan(
            &dir,
            writable,
            &self.parents(parents)?,
            &self.options,
        ))
    }

    fn apply_target(&self, id: &LayerId, parents: &[LayerId]) -> Result<ApplyTarget> {
        let root = self.existing(id)?.join("diff");
        Ok(ApplyTarget {
            root,
            format: ApplyFormat::OverlayUpper {
                lower: self.diffs(parents)?,
            },
        })
    }

    fn diff_source(&self, id: &LayerId, parents: &[LayerId]) -> Result<DiffSource> {
        let upper = self.existing(id)?.join("diff");
        Ok(DiffSource::OverlayUpper {
            upper,
            lower: self.diffs(parents)?,
        })
    }

    fn commit(&self, id: &LayerId) -> Result<Usage> {
        // The work directory only matters while an overlay writes through it.
        let work = self.existing(id)?.join("work");
        drivers_fs::remove_tree(&work).ctx("remove", &work)?;
        self.usage(id)
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        self.discard(id).map(drop)
    }

    fn usage(&self, id: &LayerId) -> Result<Usage> {
        let diff = self.existing(id)?.join("diff");
        let (bytes, inodes) = drivers_fs::usage(&diff).ctx("measure layer", &diff)?;
        Ok(Usage { bytes, inodes })
    }

    fn cleanup(&self, live: &dyn Fn(&LayerId) -> bool) -> Result<Usage> {
        let mut freed = Usage::default();
        for name in dir_names(&self.state_dir.join("layers"))? {
            match LayerId::new(name.as_str()) {
                Ok(id) if live(&id) => {}
                Ok(id) => freed += self.discard(&id)?,
                Err(_) => tracing::warn!(
                    backend = NAME,
                    name,
                    "not a layer id; leaving it in layers/"
                ),
            }
        }
        freed += self.cleanup_tmp(live)?;
        self.cleanup_links(live)?;
        self.quotas.cleanup(live)?;
        Ok(freed)
    }

    fn set_limit(&self, id: &LayerId, bytes: u64) -> Result<()> {
        self.existing(id)?;
        self.quotas.set(id, bytes)
    }
}

/// `drivers select overlay2 [--path DIR | --loopback SIZE]`: checks the
/// recorded settings and mounts the XFS or the directory the state
/// directory lives on ([`drivers_xfs::setup`]); without an option the
/// recorded location is kept.
fn setup(env: &HostEnv, args: &SelectArgs, table: &toml::Table) -> Result<toml::Table> {
    let config: Config = drivers_api::parse_config("backends.overlay2", table)?;
    let at = drivers_xfs::setup(NAME, env, args, &config.location())?;
    Ok(at.record(table))
}

fn open(env: &HostEnv, table: &toml::Table) -> Result<Box<dyn Driver>> {
    let config: Config = drivers_api::parse_config("backends.overlay2", table)?;
    drivers_xfs::open(NAME, env, &config.location())?;
    Ok(Box::new(Overlay2::open(env, config)?))
}

/// Undoes `setup`: a loopback XFS is unmounted and deleted, with
/// everything on it; a `--path` bind is unmounted.
fn teardown(env: &HostEnv, table: &toml::Table) -> Result<()> {
    let config: Config = drivers_api::parse_config("backends.overlay2", table)?;
    drivers_xfs::teardown(NAME, env, &config.location())
}

#[cfg(test)]
mod tests;
