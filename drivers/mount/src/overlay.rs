//! Overlay mounts through the new mount API and through legacy `mount(2)`.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use drivers_api::{Error, IoContext, OverlayUpper, Result};
use rustix::fs::{CWD, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};

/// How many kernel log messages one filesystem context keeps (the kernel's
/// `fc_log` ring holds 8); read at most that many.
const MAX_LOG_MESSAGES: usize = 8;

/// Whether overlayfs here takes `lowerdir+` through `fsconfig` (Linux 6.8+).
///
/// Before 6.5 overlayfs had no parameter table: the kernel's legacy
/// filesystem context accepts *any* key at `fsconfig` time and only fails at
/// create. So a bogus flag must be refused too, proving the keys are really
/// parsed; otherwise a 6.1 kernel would look capable.
pub(crate) fn new_api_usable() -> bool {
    let Ok(fs) = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) else {
        return false;
    };
    let takes_lowerdir_add = rustix::mount::fsconfig_set_string(&fs, "lowerdir+", "/").is_ok();
    let parses_keys =
        rustix::mount::fsconfig_set_flag(&fs, "drivers_probe_no_such_option").is_err();
    takes_lowerdir_add && parses_keys
}

/// Mounts an overlay through `fsopen`/`fsconfig`/`fsmount`/`move_mount`.
pub(crate) fn mount_new(
    lower: &[PathBuf],
    upper: Option<&OverlayUpper>,
    options: &[String],
    target: &Path,
) -> Result<()> {
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .ctx("open an overlay filesystem context for", target)?;
    let fail = |step: String, e: Errno| kernel_error(fs.as_fd(), target, step, e);
    // Named like legacy mounts in mountinfo, where `none` would show otherwise.
    rustix::mount::fsconfig_set_string(&fs, "source", "overlay")
        .map_err(|e| fail("source overlay".into(), e))?;
    // lowerdir+ takes one layer per call, unescaped: no option-size limit,
    // and commas or colons in paths need no quoting.
    for l in lower {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", l)
            .map_err(|e| fail(format!("lowerdir+ {}", l.display()), e))?;
    }
    if let Some(up) = upper {
        rustix::mount::fsconfig_set_string(&fs, "upperdir", &up.upper)
            .map_err(|e| fail(format!("upperdir {}", up.upper.display()), e))?;
        rustix::mount::fsconfig_set_string(&fs, "workdir", &up.work)
            .map_err(|e| fail(format!("workdir {}", up.work.display()), e))?;
    }
    for opt in options {
        let r = match opt.split_once('=') {
            Some((key, value)) => rustix::mount::fsconfig_set_string(&fs, key, value),
            None => rustix::mount::fsconfig_set_flag(&fs, opt.as_str()),
        };
        r.map_err(|e| fail(format!("option {opt}"), e))?;
    }
    rustix::mount::fsconfig_create(&fs)
        .map_err(|e| fail(format!("creating the overlay of {} layers", lower.len()), e))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| fail("fsmount".into(), e))?;
    rustix::mount::move_mount(
        &mnt,
        c"",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .ctx("attach the overlay to", target)
}

/// The kernel's refusal of one configuration step, with the messages it
/// left in the filesystem context, as one line.
#[derive(Debug)]
struct KernelRefusal {
    step: String,
    errno: Errno,
    log: Vec<String>,
}

impl fmt::Display for KernelRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errno = io::Error::from(self.errno);
        if self.log.is_empty() {
            write!(f, "{}: {errno}", self.step)
        } else {
            write!(f, "{}: {} ({errno})", self.step, self.log.join("; "))
        }
    }
}

impl std::error::Error for KernelRefusal {}

fn kernel_error(fs: BorrowedFd<'_>, target: &Path, step: String, errno: Errno) -> Error {
    let log = read_fs_log(fs);
    let refusal = KernelRefusal { step, errno, log };
    Error::Io {
        op: "mount overlay on",
        path: target.to_owned(),
        source: io::Error::new(io::Error::from(errno).kind(), refusal),
    }
}

/// Drains the messages the kernel attached to a filesystem context. Each
/// `read` returns one message such as `e overlay: too many lower
/// directories, limit is 500`; the leading `e ` (error) is dropped.
fn read_fs_log(fs: BorrowedFd<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    for _ in 0..MAX_LOG_MESSAGES {
        let Ok(n) = rustix::io::read(fs, &mut buf[..]) else {
            break;
        };
        let msg = String::from_utf8_lossy(&buf[..n]);
        let msg = msg.trim_end();
        let msg = msg.strip_prefix("e ").unwrap_or(msg);
        out.push(msg.replace('\n', " "));
    }
    out
}

/// A legacy overlay mount, computed before anything is forked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LegacyOptions {
    /// Directory the lower names are relative to, when all lowers share one.
    pub dir: Option<PathBuf>,
    /// The exact `mount(2)` data string.
    pub data: String,
}

/// Computes the exact `mount(2)` option string for an overlay and refuses
/// it, before any side effect, when it does not fit the one page the kernel
/// copies. Lowers that all live in one directory (overlay2's `l/` links)
/// are named relative to it, which is what lets 500 layers fit.
pub(crate) fn legacy_options(
    lower: &[PathBuf],
    upper: Option<&OverlayUpper>,
    options: &[String],
    page_size: usize,
    target: &Path,
) -> Result<LegacyOptions> {
    if lower.is_empty() {
        return Err(Error::Invalid {
            field: "overlay mount",
            reason: "no lower directories".into(),
        });
    }
    let parent = lower[0].parent();
    let common = parent.filter(|p| {
        lower
            .iter()
            .all(|l| l.parent() == Some(p) && l.file_name().is_some())
    });
    let names: Vec<&Path> = match common {
        Some(_) => lower
            .iter()
            .map(|l| Path::new(l.file_name().unwrap_or_default()))
            .collect(),
        None => lower.iter().map(PathBuf::as_path).collect(),
    };
    let mut data = String::from("lowerdir=");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            data.push(':');
        }
        data.push_str(&escape(name)?);
    }
    if let Some(up) = upper {
        data.push_str(&format!(
            ",upperdir={},workdir={}",
            escape(&up.upper)?,
            escape(&up.work)?
        ));
    }
    for opt in options {
        data.push(',');
        data.push_str(opt);
    }
    check_page_budget(data.len(), page_size, target)?;
    Ok(LegacyOptions {
        dir: common.map(Path::to_path_buf),
        data,
    })
}

/// Refuses `mount(2)` data of `len` bytes that, with its terminating NUL,
/// does not fit in the one page the kernel copies from user space.
pub(crate) fn check_page_budget(len: usize, page_size: usize, target: &Path) -> Result<()> {
    if len < page_size {
        return Ok(());
    }
    Err(Error::Limit {
        what: format!("mount on {}", target.display()),
        reason: format!(
            "legacy mount(2) options need {} bytes but the kernel copies at most one page of {page_size} bytes",
            len + 1
        ),
        hint: Some("use a kernel with the new mount API (Linux 6.8+), shorter layer paths, or a flatter image".into()),
    })
}

/// Escapes the characters overlayfs's option parser splits on. Only UTF-8
/// paths without newlines can be carried in the legacy option string.
fn escape(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .filter(|s| !s.contains('\n'))
        .ok_or_else(|| Error::Invalid {
            field: "overlay layer path",
            reason: format!("{} cannot be passed through legacy mount(2)", p.display()),
        })?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(out)
}

/// Mounts an overlay through `mount(2)`, from a forked child that first
/// changes into the lowers' common directory when there is one.
pub(crate) fn mount_legacy(
    lower: &[PathBuf],
    upper: Option<&OverlayUpper>,
    options: &[String],
    target: &Path,
) -> Result<()> {
    // Everything but the relative lower names must survive the child's chdir.
    let lower: Vec<PathBuf> = lower
        .iter()
        .map(|l| crate::absolute(l))
        .collect::<Result<_>>()?;
    let upper = match upper {
        Some(up) => Some(OverlayUpper {
            upper: crate::absolute(&up.upper)?,
            work: crate::absolute(&up.work)?,
        }),
        None => None,
    };
    let target = crate::absolute(target)?;
    let plan = legacy_options(
        &lower,
        upper.as_ref(),
        options,
        rustix::param::page_size(),
        &target,
    )?;
    let nul = |what: &'static str| Error::Invalid {
        field: what,
        reason: "contains a NUL byte".into(),
    };
    let data = CString::new(plan.data).map_err(|_| nul("overlay mount options"))?;
    let target_c = CString::new(target.as_os_str().as_bytes()).map_err(|_| nul("mount target"))?;
    let r = match &plan.dir {
        Some(dir) => {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let fd = rustix::fs::open(dir, flags, Mode::empty())
                .ctx("open the layer link directory", dir)?;
            crate::fork::mount_in_dir(fd.as_fd(), c"overlay", &target_c, c"overlay", &data)
        }
        None => rustix::mount::mount(
            c"overlay",
            target_c.as_c_str(),
            c"overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(io::Error::from),
    };
    r.ctx("mount overlay (legacy mount(2)) on", target)
}
