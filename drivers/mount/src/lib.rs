//! drivers-mount: performs and undoes the [`Mount`] descriptions backends
//! return.
//!
//! Backends only *describe* mounts; the host calls [`mount`] to stack them
//! on a target in order and [`unmount`] to take everything off again.
//! [`mounts_under`] lists what is mounted below a directory, deepest first,
//! so stale mounts left by a crash can be cleaned up; [`is_mountpoint`]
//! answers for one path.
//!
//! [`loopback`] makes, mounts and takes apart file-backed filesystems
//! (`drivers select btrfs --loopback SIZE`).
//!
//! Overlay mounts go through one of two kernel interfaces, see [`MountApi`]:
//! the new mount API (`fsopen`/`fsconfig`, one `lowerdir+` call per layer,
//! no size limit on the options) where the kernel has it, otherwise legacy
//! `mount(2)`, whose option string must fit in one page.
//!
//! ```no_run
//! use drivers_api::Mount;
//! let target = std::path::Path::new("/run/drivers/ctr1");
//! let m = Mount::Bind { source: "/var/lib/drivers/vfs/layers/3f2a".into(), read_only: true };
//! drivers_mount::mount(&[m], target)?;
//! assert!(drivers_mount::is_mountpoint(target)?);
//! drivers_mount::unmount(target)?;
//! # Ok::<(), drivers_api::Error>(())
//! ```

mod fork;
pub mod kernel;
pub mod loopback;
mod mountinfo;
mod overlay;

use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use drivers_api::{Error, IoContext, Mount, Result};
use rustix::fs::{AtFlags, CWD, StatVfsMountFlags, StatxAttributes, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

pub use mountinfo::mounts_under;

/// The environment variable that picks the overlay mount API when the
/// process has not chosen one with [`set_overlay_api`]: `new`, `legacy` or
/// `auto` (the default). Meant for tests and for working around a kernel
/// bug without a rebuild.
pub const MOUNT_API_ENV: &str = "DRIVERS_OVERLAY_MOUNT_API";

/// Upper bound on how many mounts [`unmount`] takes off one target, so a
/// kernel that keeps reporting success cannot spin us forever.
const MAX_STACKED_MOUNTS: usize = 1024;

/// Which kernel interface performs overlay mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountApi {
    /// `fsopen("overlay")`, one `fsconfig("lowerdir+")` per layer,
    /// `fsmount`, `move_mount` (Linux 6.8+). No limit on option size, so
    /// chains mount up to overlayfs's own 500-layer limit, and the kernel's
    /// reason for a refusal comes back with the error.
    New,
    /// `mount(2)` with one option string, which the kernel caps at one page
    /// (4096 bytes on x86-64). Lower layers that are short links in one
    /// directory are passed relative to it, from a child process that
    /// `chdir`s there.
    Legacy,
}

impl MountApi {
    /// Whether this kernel supports [`MountApi::New`] for overlayfs; the
    /// answer is computed once per process. Side-effect free: the probe
    /// configures a filesystem context and drops it without creating a
    /// superblock.
    pub fn detect() -> MountApi {
        static DETECTED: std::sync::OnceLock<MountApi> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let api = if overlay::new_api_usable() {
                MountApi::New
            } else {
                MountApi::Legacy
            };
            tracing::debug!(api = ?api, "detected overlay mount api");
            api
        })
    }

    /// The API [`mount`] uses for overlays: the process's choice from
    /// [`set_overlay_api`], else [`MOUNT_API_ENV`], else [`MountApi::detect`].
    ///
    /// # Errors
    ///
    /// [`drivers_api::ErrorKind::Invalid`] if [`MOUNT_API_ENV`] holds
    /// something other than `new`, `legacy` or `auto`.
    pub fn current() -> Result<MountApi> {
        match OVERLAY_API.load(Ordering::Relaxed) {
            CHOICE_NEW => return Ok(MountApi::New),
            CHOICE_LEGACY => return Ok(MountApi::Legacy),
            _ => {}
        }
        Ok(from_env(std::env::var_os(MOUNT_API_ENV).as_deref())?.unwrap_or_else(MountApi::detect))
    }
}

/// The API [`MOUNT_API_ENV`] asks for; `None` when unset, empty or `auto`.
fn from_env(value: Option<&std::ffi::OsStr>) -> Result<Option<MountApi>> {
    match value.map(|v| v.to_str()) {
        None | Some(Some("" | "auto")) => Ok(None),
        Some(Some(v)) => v.parse().map(Some),
        Some(None) => Err(Error::Invalid {
            field: MOUNT_API_ENV,
            reason: format!("{value:?} is not new, legacy or auto"),
        }),
    }
}

impl FromStr for MountApi {
    type Err = Error;

    fn from_str(s: &str) -> Result<MountApi> {
        match s {
            "new" => Ok(MountApi::New),
            "legacy" => Ok(MountApi::Legacy),
            _ => Err(Error::Invalid {
                field: MOUNT_API_ENV,
                reason: format!("{s:?} is not new, legacy or auto"),
            }),
        }
    }
}

const CHOICE_AUTO: u8 = 0;
const CHOICE_NEW: u8 = 1;
const CHOICE_LEGACY: u8 = 2;

/// The process-wide overlay API choice; see [`set_overlay_api`].
static OVERLAY_API: AtomicU8 = AtomicU8::new(CHOICE_AUTO);

/// Makes [`mount`] use `api` for every overlay in this process (`None`:
/// back to [`MOUNT_API_ENV`] or detection). The overlay2 backend calls this
/// when its config names an API, because backends only describe mounts and
/// the choice has to reach the mounter some other way.
pub fn set_overlay_api(api: Option<MountApi>) {
    let v = match api {
        None => CHOICE_AUTO,
        Some(MountApi::New) => CHOICE_NEW,
        Some(MountApi::Legacy) => CHOICE_LEGACY,
    };
    OVERLAY_API.store(v, Ordering::Relaxed);
}

/// Performs `mounts` in order, each stacked on `target`, with overlays
/// through [`MountApi::current`]. If one fails, the ones already made are
/// unmounted again before the error is returned.
///
/// # Errors
///
/// [`drivers_api::ErrorKind::Limit`] when a legacy overlay's options exceed
/// a page; [`drivers_api::ErrorKind::Invalid`] for a path mount(2) cannot
/// carry; otherwise an I/O error naming the target, with the kernel's own
/// message for overlays mounted through the new API.
pub fn mount(mounts: &[Mount], target: &Path) -> Result<()> {
    let api = if mounts.iter().any(|m| matches!(m, Mount::Overlay { .. })) {
        MountApi::current()?
    } else {
        MountApi::Legacy // unused: no overlay in the list
    };
    mount_with(mounts, target, api)
}

/// [`mount`] with an explicit overlay API, e.g. to exercise
/// [`MountApi::Legacy`] on a kernel that has the new one.
///
/// # Errors
///
/// As [`mount`].
pub fn mount_with(mounts: &[Mount], target: &Path, overlay_api: MountApi) -> Result<()> {
    for (done, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target, overlay_api) {
            for _ in 0..done {
                if let Err(undo) = umount_once(target) {
                    tracing::warn!(path = %target.display(), error = %undo, "could not undo a mount after a later one failed");
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path, api: MountApi) -> Result<()> {
    match m {
        Mount::Bind { source, read_only } => bind(source, target, *read_only),
        Mount::Overlay {
            lower,
            upper,
            options,
        } => match api {
            MountApi::New => overlay::mount_new(lower, upper.as_ref(), options, target),
            MountApi::Legacy => overlay::mount_legacy(lower, upper.as_ref(), options, target),
        },
        Mount::Fs {
            fstype,
            source,
            options,
        } => fs(fstype, source, options, target),
    }
}

/// Binds `source` onto `target`; read-only binds are remounted, since
/// `MS_RDONLY` is ignored on the initial `MS_BIND`.
fn bind(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    rustix::mount::mount_bind(source, target).ctx("bind-mount", source)?;
    if !read_only {
        return Ok(());
    }
    // Keep the flags the new mount inherited (nosuid, nodev, ...): a bind
    // remount replaces all per-mount flags with the ones given.
    let inherited = match rustix::fs::statvfs(target) {
        Ok(st) => inherited_flags(st.f_flag),
        Err(_) => MountFlags::empty(),
    };
    let flags = MountFlags::BIND | MountFlags::RDONLY | inherited;
    if let Err(e) = rustix::mount::mount_remount(target, flags, c"") {
        if let Err(undo) = umount_once(target) {
            tracing::warn!(path = %target.display(), error = %undo, "could not undo a bind mount");
        }
        return Err(e).ctx("remount read-only", target);
    }
    Ok(())
}

/// Per-mount flags from `statvfs` that a bind remount must repeat.
fn inherited_flags(f: StatVfsMountFlags) -> MountFlags {
    let map = [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ];
    map.iter()
        .filter(|(st, _)| f.contains(*st))
        .fold(MountFlags::empty(), |acc, (_, ms)| acc | *ms)
}

/// Mounts any other filesystem, splitting generic flags from the data the
/// filesystem parses itself.
fn fs(fstype: &str, source: &str, options: &[String], target: &Path) -> Result<()> {
    let (flags, data) = split_fs_options(options);
    overlay::check_page_budget(data.len(), rustix::param::page_size(), target)?;
    let data = std::ffi::CString::new(data).map_err(|_| Error::Invalid {
        field: "mount options",
        reason: "an option contains a NUL byte".into(),
    })?;
    rustix::mount::mount(source, target, fstype, flags, Some(data.as_c_str())).ctx("mount", target)
}

/// Splits `mount -o` style options into `mount(2)` flags and the data
/// string; later options win (`ro` then `rw` is read-write).
fn split_fs_options(options: &[String]) -> (MountFlags, String) {
    const FLAGS: &[(&str, MountFlags, bool)] = &[
        ("ro", MountFlags::RDONLY, true),
        ("rw", MountFlags::RDONLY, false),
        ("nosuid", MountFlags::NOSUID, true),
        ("suid", MountFlags::NOSUID, false),
        ("nodev", MountFlags::NODEV, true),
        ("dev", MountFlags::NODEV, false),
        ("noexec", MountFlags::NOEXEC, true),
        ("exec", MountFlags::NOEXEC, false),
        ("sync", MountFlags::SYNCHRONOUS, true),
        ("async", MountFlags::SYNCHRONOUS, false),
        ("dirsync", MountFlags::DIRSYNC, true),
        ("noatime", MountFlags::NOATIME, true),
        ("atime", MountFlags::NOATIME, false),
        ("nodiratime", MountFlags::NODIRATIME, true),
        ("diratime", MountFlags::NODIRATIME, false),
        ("relatime", MountFlags::RELATIME, true),
        ("norelatime", MountFlags::RELATIME, false),
        ("strictatime", MountFlags::STRICTATIME, true),
        ("lazytime", MountFlags::LAZYTIME, true),
        ("nolazytime", MountFlags::LAZYTIME, false),
    ];
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for opt in options {
        if opt == "defaults" {
            continue;
        }
        match FLAGS.iter().find(|(name, _, _)| name == opt) {
            Some((_, f, true)) => flags |= *f,
            Some((_, f, false)) => flags &= !*f,
            None => data.push(opt.as_str()),
        }
    }
    (flags, data.join(","))
}

/// Takes every mount stacked on `target` off, topmost first. A target that
/// is not a mount point, or does not exist, is not an error.
///
/// # Errors
///
/// An I/O error naming `target`, e.g. `EBUSY` while a process uses it.
pub fn unmount(target: &Path) -> Result<()> {
    for _ in 0..MAX_STACKED_MOUNTS {
        match umount_once(target) {
            Ok(()) => {}
            Err(Errno::INVAL | Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e).ctx("unmount", target),
        }
    }
    Err(io::Error::other(
        "still mounted after taking off the maximum number of stacked mounts",
    ))
    .ctx("unmount", target)
}

fn umount_once(target: &Path) -> std::result::Result<(), Errno> {
    rustix::mount::unmount(target, UnmountFlags::NOFOLLOW)
}

/// Whether `path` is the root of a mount. A missing path is not one.
///
/// # Errors
///
/// An I/O error if `path` cannot be inspected.
pub fn is_mountpoint(path: &Path) -> Result<bool> {
    match rustix::fs::statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
        }
        // Before Linux 5.8 statx does not report mount roots: ask mountinfo.
        Ok(_) => {
            let abs = std::path::absolute(path).ctx("resolve", path)?;
            Ok(mounts_under(&abs)?.iter().any(|m| m == &abs))
        }
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e).ctx("inspect", path),
    }
}

/// Absolute form of `path` without resolving symlinks, so a child process
/// that changes directory still finds it.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).ctx("resolve", path)
}

#[cfg(test)]
mod tests;
