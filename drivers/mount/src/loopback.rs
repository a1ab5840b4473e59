//! File-backed filesystems: an image file formatted once, attached to a
//! loop device and mounted, found again after a reboot, and taken apart
//! without leaving a loop device behind.
//!
//! Nothing here knows a filesystem: the mkfs program and its arguments,
//! the filesystem type and the mount options are parameters (btrfs's
//! `--loopback` uses it; an XFS one can). The loop device is driven with
//! ioctls ([`drivers_sys::loopdev`]) rather than `losetup`: the kernel's
//! own error comes back, there is no output to parse, and attaching with
//! [`LO_FLAGS_AUTOCLEAR`](drivers_sys::loopdev::FLAG_AUTOCLEAR) is one
//! atomic `LOOP_CONFIGURE`.
//!
//! Life of an image:
//!
//! 1. [`create`]: a sparse file of the requested size, formatted by mkfs.
//! 2. [`ensure_mounted`]: attach it to a free loop device with autoclear
//!    and mount that device, unless that is already so. Run it again at
//!    every open: after a reboot nothing is attached or mounted. With
//!    autoclear the kernel releases the device as soon as the filesystem
//!    is unmounted, so a crash can never leak a loop device.
//! 3. [`destroy`]: unmount every mount of the image's loop devices, release
//!    them, delete the image.
//!
//! [`ensure_mounted`] and [`destroy`] hold an exclusive `flock` on the
//! image, so two processes opening the same root after a reboot cannot
//! attach it twice (two devices carrying one filesystem UUID confuse btrfs
//! and corrupt others).
//!
//! ```no_run
//! use drivers_mount::loopback::{self, Mkfs};
//! use std::path::Path;
//! let image = Path::new("/var/lib/drivers/btrfs/loopback.img");
//! let target = Path::new("/var/lib/drivers/btrfs/loopback");
//! loopback::create(image, 4 << 30, &Mkfs { program: "mkfs.btrfs", args: &["-q"] })?;
//! loopback::ensure_mounted(image, target, "btrfs", &["noatime".to_owned()])?;
//! // ... after a reboot, the same call re-attaches and re-mounts.
//! loopback::destroy(image, target)?;
//! # Ok::<(), drivers_api::Error>(())
//! ```

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drivers_api::{Error, IoContext, Mount, Result};
use drivers_sys::loopdev;
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::mountinfo;

/// Where loop devices are found and released.
const LOOP_CONTROL: &str = "/dev/loop-control";

/// How often [`attach`] asks for another free device when a concurrent
/// process took the one it was given.
const ATTACH_ATTEMPTS: usize = 32;

/// How long [`destroy`] waits for the kernel to finish releasing a device
/// it cleared (udev or blkid may hold it open for a moment; autoclear
/// finishes the job whenever they let go).
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Directories searched for mkfs programs besides `PATH`: they live in
/// sbin, which a non-login root shell's `PATH` may lack.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// How to make a filesystem on an image.
#[derive(Clone, Copy, Debug)]
pub struct Mkfs<'a> {
    /// The program, e.g. `mkfs.btrfs`; looked up with [`find_program`].
    pub program: &'a str,
    /// Its arguments; the image path is appended.
    pub args: &'a [&'a str],
}

/// The absolute path of `program`, searched in `PATH` and then in the
/// sbin directories; `None` if it is nowhere (or not executable).
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return is_executable(Path::new(program)).then(|| PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.is_file() && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok()
}

/// Whether this machine can attach loop devices at all: the control
/// device exists. Side-effect free (for probes).
pub fn loop_control_available() -> bool {
    Path::new(LOOP_CONTROL).exists()
}

/// Creates `image` as a sparse file of `size` bytes and formats it with
/// `mkfs`. Refuses an existing file; on error nothing is left.
///
/// # Errors
///
/// [`drivers_api::ErrorKind::AlreadyExists`] if `image` exists;
/// [`Error::Unavailable`]-class errors are the caller's to give (this
/// reports a missing program as an I/O error naming it);
/// [`Error::Command`] with mkfs's last line of standard error.
pub fn create(image: &Path, size: u64, mkfs: &Mkfs<'_>) -> Result<()> {
    let file = match rustix::fs::open(
        image,
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => File::from(fd),
        Err(Errno::EXIST) => {
            return Err(Error::AlreadyExists {
                what: "loopback image",
                id: image.display().to_string(),
            });
        }
        Err(e) => return Err(e).ctx("create loopback image", image),
    };
    let r = file
        .set_len(size)
        .ctx("size loopback image", image)
        .and_then(|()| run_mkfs(image, mkfs));
    drop(file);
    if r.is_err() {
        let _ = std::fs::remove_file(image);
    }
    r
}

fn run_mkfs(image: &Path, mkfs: &Mkfs<'_>) -> Result<()> {
    let program = find_program(mkfs.program).ok_or_else(|| Error::Io {
        op: "find",
        path: PathBuf::from(mkfs.program),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            "not in PATH or the sbin directories",
        ),
    })?;
    let out = Command::new(&program)
        .args(mkfs.args)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .ctx("run", &program)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(Error::Command {
        program: format!(
            "{} {} {}",
            program.display(),
            mkfs.args.join(" "),
            image.display()
        ),
        status: out.status,
        stderr: stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_owned(),
    })
}

/// A loop device bound to an image, held open: with autoclear, the binding
/// lasts while this handle or a mount of the device does.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    fd: OwnedFd,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the device now (`LOOP_CLR_FD`).
    ///
    /// # Errors
    ///
    /// An I/O error naming the device.
    pub fn detach(self) -> Result<()> {
        match loopdev::clear(&self.fd) {
            Ok(()) | Err(Errno::NXIO) => Ok(()),
            Err(e) => Err(e).ctx("detach loop device", &self.path),
        }
    }
}

/// Binds `image` to a free loop device, with autoclear if asked (then the
/// device is released when the returned handle and every mount of it are
/// gone: mount it before dropping the handle).
///
/// # Errors
///
/// An I/O error naming `/dev/loop-control`, the device or the image.
pub fn attach(image: &Path, autoclear: bool) -> Result<LoopDevice> {
    let backing = rustix::fs::open(image, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .ctx("open loopback image", image)?;
    let control = rustix::fs::open(LOOP_CONTROL, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .ctx("open", LOOP_CONTROL)?;
    let flags = if autoclear {
        loopdev::FLAG_AUTOCLEAR
    } else {
        0
    };
    let name = image.as_os_str().as_bytes();
    for _ in 0..ATTACH_ATTEMPTS {
        let n = loopdev::get_free(&control).ctx("find a free loop device through", LOOP_CONTROL)?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let fd = rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .ctx("open loop device", &path)?;
        match loopdev::configure(&fd, &backing, flags, name) {
            Ok(()) => return Ok(LoopDevice { path, fd }),
            // Another process bound it between get_free and now.
            Err(Errno::BUSY) => continue,
            Err(e) => return Err(e).ctx("attach loopback image to", &path),
        }
    }
    Err(io::Error::from(io::ErrorKind::ResourceBusy))
        .ctx("find a loop device that stays free for", image)
}

/// The loop devices `image` is bound to now, from
/// `/sys/block/loop*/loop/backing_file` (the kernel's path of the backing
/// file when it was bound, with ` (deleted)` once unlinked).
///
/// # Errors
///
/// An I/O error if `/sys/block` cannot be read.
pub fn attachments(image: &Path) -> Result<Vec<PathBuf>> {
    let abs = std::path::absolute(image).ctx("resolve", image)?;
    // The image may be hidden under the filesystem made from it (an image
    // in the directory it is mounted on): then its directory resolves.
    let wanted = std::fs::canonicalize(image)
        .or_else(|_| match (abs.parent(), abs.file_name()) {
            (Some(dir), Some(name)) => std::fs::canonicalize(dir).map(|d| d.join(name)),
            _ => Ok(abs.clone()),
        })
        .unwrap_or(abs);
    let wanted = wanted.as_os_str().as_bytes();
    let mut deleted = wanted.to_vec();
    deleted.extend_from_slice(b" (deleted)");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/block").ctx("read directory", "/sys/block")? {
        let entry = entry.ctx("read directory", "/sys/block")?;
        let name = entry.file_name();
        if !name.as_bytes().starts_with(b"loop") {
            continue;
        }
        // Absent while the device is unbound.
        let Ok(text) = std::fs::read(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let text = text.strip_suffix(b"\n").unwrap_or(&text);
        if text == wanted || text == deleted.as_slice() {
            out.push(Path::new("/dev").join(&name));
        }
    }
    out.sort();
    Ok(out)
}

/// Makes sure `image` is mounted on `target` (which must exist) as
/// `fstype` with `options`: nothing to do if it is; else it mounts the
/// device the image is already bound to, or binds it to a free one (with
/// autoclear) and mounts that. Returns the loop device.
///
/// # Errors
///
/// [`drivers_api::ErrorKind::InUse`] if something else is mounted on
/// `target`; I/O errors naming the image, the device or the target.
pub fn ensure_mounted(
    image: &Path,
    target: &Path,
    fstype: &str,
    options: &[String],
) -> Result<PathBuf> {
    // Already mounted (the usual case): no lock needed, and none could be
    // taken if the image lies in `target` itself, hidden by the mount.
    if let Some(dev) = mounted_from(image, target)? {
        return Ok(dev);
    }
    let _lock = lock(image)?;
    let devices = attachments(image)?;
    let target_abs = std::path::absolute(target).ctx("resolve", target)?;
    let on_target: Vec<_> = mountinfo::entries()?
        .into_iter()
        .filter(|m| m.target == target_abs)
        .collect();
    if let Some(top) = on_target.last() {
        if let Some(dev) = devices
            .iter()
            .find(|d| d.as_os_str().as_bytes() == top.source.as_bytes())
        {
            return Ok(dev.clone());
        }
        return Err(Error::InUse {
            what: "mount point",
            id: target.display().to_string(),
            by: format!("{} from {}", top.fstype, top.source),
        });
    }
    let mount = |device: &Path| {
        let m = Mount::Fs {
            fstype: fstype.to_owned(),
            source: device.to_string_lossy().into_owned(),
            options: options.to_vec(),
        };
        crate::mount(&[m], target)
    };
    if let Some(dev) = devices.first() {
        mount(dev)?;
        return Ok(dev.clone());
    }
    let dev = attach(image, true)?;
    if let Err(e) = mount(dev.path()) {
        let _ = dev.detach();
        return Err(e);
    }
    // The mount keeps the device bound; autoclear releases it at unmount.
    Ok(dev.path().to_owned())
}

/// The loop device of `image` if the topmost mount on `target` is made
/// from it.
pub fn mounted_from(image: &Path, target: &Path) -> Result<Option<PathBuf>> {
    let target_abs = std::path::absolute(target).ctx("resolve", target)?;
    let Some(top) = mountinfo::entries()?
        .into_iter()
        .rfind(|m| m.target == target_abs)
    else {
        return Ok(None);
    };
    Ok(attachments(image)?
        .into_iter()
        .find(|d| d.as_os_str().as_bytes() == top.source.as_bytes()))
}

/// A backend's file-backed filesystem: where its image and mount point
/// are, and how it is made and mounted. `drivers select … --loopback SIZE`
/// of btrfs, overlay2 and vfs goes through [`Loopback::provision`], their
/// `open` through [`Loopback::mount`], their teardown through
/// [`Loopback::destroy`].
#[derive(Clone, Debug)]
pub struct Loopback<'a> {
    /// The backend, for messages.
    pub backend: &'static str,
    /// The image file.
    pub image: PathBuf,
    /// Where the filesystem is mounted.
    pub target: PathBuf,
    /// Filesystem type, as `mount -t` takes it.
    pub fstype: &'a str,
    /// How the image is formatted.
    pub mkfs: Mkfs<'a>,
    /// Mount options.
    pub options: &'a [&'a str],
    /// Options to mount with instead when the kernel refuses `options`
    /// with `EINVAL` (XFS's `prjquota` on a kernel built without XFS
    /// quota support); `None`: no second try.
    pub fallback: Option<&'a [&'a str]>,
    /// The smallest size accepted, with the reason shown when below it.
    pub min_bytes: (u64, &'a str),
}

impl Loopback<'_> {
    /// Creates the image of `size` bytes (or finds it again with that
    /// size), mounts it and runs `ready` on the mount point. A new image
    /// is destroyed again if anything fails.
    ///
    /// # Errors
    ///
    /// [`drivers_api::ErrorKind::Invalid`] for a size below the minimum or
    /// an existing image of another size; what [`create`],
    /// [`ensure_mounted`] or `ready` return.
    pub fn provision(&self, size: u64, ready: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let (min, why) = self.min_bytes;
        if size < min {
            return Err(Error::Invalid {
                field: "--loopback",
                reason: format!(
                    "{size} bytes is too small: {why}, and drivers asks for at least {} MiB",
                    min >> 20
                ),
            });
        }
        let device = mounted_from(&self.image, &self.target)?;
        let existed = device.is_some() || self.image.exists();
        if existed {
            let len = match (std::fs::metadata(&self.image), &device) {
                (Ok(m), _) => m.len(),
                // Hidden under its own mount: the device knows the size.
                (Err(_), Some(dev)) => device_bytes(dev)?,
                (Err(e), None) => return Err(e).ctx("inspect", &self.image),
            };
            if len != size {
                return Err(Error::Invalid {
                    field: "--loopback",
                    reason: format!(
                        "the loopback image {} already exists with {len} bytes, not {size}",
                        self.image.display()
                    ),
                });
            }
        } else {
            if let Some(dir) = self.image.parent() {
                std::fs::create_dir_all(dir).ctx("create directory", dir)?;
            }
            create(&self.image, size, &self.mkfs)?;
        }
        let r = self.mount().and_then(|t| ready(&t));
        if r.is_err()
            && !existed
            && let Err(e) = destroy(&self.image, &self.target)
        {
            tracing::warn!(backend = self.backend, image = %self.image.display(), error = %e, "could not remove a failed loopback image");
        }
        r
    }

    /// Attaches and mounts the image if needed (after a reboot); returns
    /// the mount point.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if the image is gone; what
    /// [`ensure_mounted`] returns.
    pub fn mount(&self) -> Result<PathBuf> {
        if mounted_from(&self.image, &self.target)?.is_some() {
            return Ok(self.target.clone());
        }
        if !self.image.is_file() {
            return Err(Error::Unavailable {
                backend: self.backend,
                reason: format!("the loopback image {} is gone", self.image.display()),
                hint: Some(format!(
                    "select {} --loopback SIZE again (its layers are lost)",
                    self.backend
                )),
            });
        }
        std::fs::create_dir_all(&self.target).ctx("create directory", &self.target)?;
        let owned = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        match ensure_mounted(&self.image, &self.target, self.fstype, &owned(self.options)) {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(Errno::INVAL.raw_os_error())
                    && self.fallback.is_some() =>
            {
                let fallback = self.fallback.unwrap_or_default();
                tracing::warn!(backend = self.backend, refused = ?self.options, using = ?fallback, error = %e, "the kernel refused the mount options; mounting with fewer");
                ensure_mounted(&self.image, &self.target, self.fstype, &owned(fallback))?;
            }
            Err(e) => return Err(e),
        }
        Ok(self.target.clone())
    }

    /// [`destroy`] of this image and mount point.
    ///
    /// # Errors
    ///
    /// What [`destroy`] returns.
    pub fn destroy(&self) -> Result<()> {
        destroy(&self.image, &self.target)
    }
}

/// The size of block device `/dev/NAME` in bytes, from
/// `/sys/block/NAME/size` (in 512-byte sectors whatever the block size).
fn device_bytes(device: &Path) -> Result<u64> {
    let name = device.file_name().unwrap_or_default();
    let file = Path::new("/sys/block").join(name).join("size");
    let text = std::fs::read_to_string(&file).ctx("read", &file)?;
    text.trim()
        .parse::<u64>()
        .map(|sectors| sectors * 512)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        .ctx("parse", &file)
}

/// Unmounts every mount of the loop devices `image` is bound to (deepest
/// first: `target` and any bind mount made from the filesystem), releases
/// the devices, deletes `image` and removes the then empty `target`
/// directory. What is already gone is skipped, so an interrupted destroy
/// can run again.
///
/// # Errors
///
/// An I/O error naming what could not be unmounted, released or deleted
/// (e.g. `EBUSY` while a process works in the filesystem).
pub fn destroy(image: &Path, target: &Path) -> Result<()> {
    let lock = match lock(image) {
        Ok(l) => Some(l),
        Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => None,
        Err(e) => return Err(e),
    };
    let devices = attachments(image)?;
    let mut targets: Vec<PathBuf> = mountinfo::entries()?
        .into_iter()
        .filter(|m| {
            devices
                .iter()
                .any(|d| d.as_os_str().as_bytes() == m.source.as_bytes())
        })
        .map(|m| m.target)
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.components().count()));
    targets.dedup();
    for t in &targets {
        unmount_settled(t)?;
    }
    for dev in &devices {
        release(dev)?;
    }
    drop(lock);
    match std::fs::remove_file(image) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).ctx("delete loopback image", image),
    }
    match std::fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx("remove mount point", target),
    }
}

/// Unmounts `target`, retrying for up to [`RELEASE_WAIT`] while it is
/// busy: [`destroy`] runs when its owner is done with the filesystem, so a
/// holder can only be transient — a child another thread is spawning keeps
/// copies of the parent's descriptors until it execs.
fn unmount_settled(target: &Path) -> Result<()> {
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        match crate::unmount(target) {
            Err(e)
                if e.raw_os_error() == Some(Errno::BUSY.raw_os_error())
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Clears `device` and waits (briefly) until the kernel has let it go.
fn release(device: &Path) -> Result<()> {
    let fd = match rustix::fs::open(device, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NXIO) => return Ok(()),
        Err(e) => return Err(e).ctx("open loop device", device),
    };
    match loopdev::clear(&fd) {
        Ok(()) | Err(Errno::NXIO) => {}
        // Someone (udev, blkid) has it open: the kernel then only marks it
        // for autoclear, which the wait below sees through.
        Err(Errno::BUSY) => {}
        Err(e) => return Err(e).ctx("detach loop device", device),
    }
    drop(fd);
    let name = device.file_name().unwrap_or_default();
    let bound = Path::new("/sys/block").join(name).join("loop/backing_file");
    let deadline = Instant::now() + RELEASE_WAIT;
    while bound.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if bound.exists() {
        tracing::debug!(device = %device.display(), "loop device still bound; autoclear releases it when its last user closes it");
    }
    Ok(())
}

/// An exclusive `flock` on `image`, held until dropped.
fn lock(image: &Path) -> Result<OwnedFd> {
    let fd = rustix::fs::open(image, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .ctx("open loopback image", image)?;
    rustix::fs::flock(fd.as_fd(), FlockOperation::LockExclusive)
        .ctx("lock loopback image", image)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Programs are found in PATH and in the sbin directories; a missing
    /// one is `None`, not a panic or an error.
    #[test]
    fn find_programs() {
        assert!(find_program("sh").is_some());
        assert!(find_program("/bin/sh").is_some());
        assert!(find_program("no-such-program-drivers").is_none());
        assert!(find_program("/no/such/program").is_none());
    }

    /// The life of an image, as root: created and formatted, mounted,
    /// found again (and not attached twice), torn down leaving no loop
    /// device, no mount and no file, also when a second bind mount of the
    /// filesystem exists; a refused mkfs leaves no image.
    #[test]
    fn life_of_an_image() {
        let Some(mkfs) = find_program("mkfs.ext4") else {
            panic!("mkfs.ext4 (e2fsprogs) is needed for this test");
        };
        // Named so `cargo xtask test-root` recognises a leftover.
        let t = tempfile::Builder::new()
            .prefix("drivers-test-loopback-")
            .tempdir()
            .unwrap();
        let image = t.path().join("fs.img");
        let target = t.path().join("mnt");
        std::fs::create_dir(&target).unwrap();
        let spec = Mkfs {
            program: mkfs.to_str().unwrap(),
            args: &["-q", "-F"],
        };
        create(&image, 32 << 20, &spec).unwrap();
        assert_eq!(
            create(&image, 32 << 20, &spec).unwrap_err().kind(),
            drivers_api::ErrorKind::AlreadyExists
        );
        let dev = ensure_mounted(&image, &target, "ext4", &["noatime".into()]).unwrap();
        let guard = Cleanup(image.clone(), target.clone());
        assert_eq!(attachments(&image).unwrap(), vec![dev.clone()]);
        assert!(crate::is_mountpoint(&target).unwrap());
        std::fs::write(target.join("f"), "x").unwrap();
        // Idempotent: the same device, one mount.
        assert_eq!(ensure_mounted(&image, &target, "ext4", &[]).unwrap(), dev);
        assert_eq!(crate::mounts_under(&target).unwrap(), vec![target.clone()]);
        // A second mount of the same filesystem is found and taken off too.
        let bind = t.path().join("bind");
        std::fs::create_dir(&bind).unwrap();
        crate::mount(
            &[Mount::Bind {
                source: target.clone(),
                read_only: true,
            }],
            &bind,
        )
        .unwrap();
        destroy(&image, &target).unwrap();
        std::mem::forget(guard);
        assert!(!image.exists() && !target.exists());
        assert!(!crate::is_mountpoint(&bind).unwrap());
        assert!(
            !Path::new("/sys/block")
                .join(dev.file_name().unwrap())
                .join("loop/backing_file")
                .exists()
        );
        destroy(&image, &target).unwrap(); // idempotent

        let bad = t.path().join("bad.img");
        let refuse = Mkfs {
            program: "false",
            args: &[],
        };
        let e = create(&bad, 1 << 20, &refuse).unwrap_err();
        assert!(matches!(e, Error::Command { .. }), "{e}");
        assert!(!bad.exists());
    }

    /// Tears a test image down when an assertion fails half-way.
    struct Cleanup(PathBuf, PathBuf);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Err(e) = destroy(&self.0, &self.1) {
                eprintln!("could not tear down {}: {e}", self.0.display());
            }
        }
    }
}
