//! Taking a zfs-fuse dataset's FUSE mount off without hanging the daemon.
//!
//! The kernel sends `RELEASE` for a closed file of a FUSE filesystem in the
//! background, and unmounting a FUSE filesystem aborts its connection:
//! every request the daemon has not read yet is dropped. zfs-fuse keeps a
//! dataset's file referenced until its `RELEASE` arrives, and once the
//! FUSE session ends it retries its own unmount of the dataset until no
//! file is referenced — forever, if a `RELEASE` was dropped, and under the
//! one lock all its FUSE threads read requests with. Every zfs-fuse mount
//! of the machine then hangs, and only killing the daemon ends it (seen in
//! the conformance suite under load: a layer read, then removed). Lazily
//! detaching a mount whose files are open loses their `RELEASE` the same
//! way, so nothing here ever detaches.
//!
//! [`unmount`] therefore first waits until the connection has no request
//! outstanding (`waiting` in the kernel's fusectl filesystem, mounted at
//! its usual place if nobody has), then unmounts, then waits until the
//! daemon has closed the session, so that the `zfs destroy` which follows
//! is not answered "dataset is busy".

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use drivers_api::{Error, IoContext, Result};

use crate::{NAME, daemon};

/// Where the kernel's fusectl filesystem belongs (systemd mounts it there).
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// `statfs` magic of FUSE filesystems (`include/uapi/linux/magic.h`).
const FUSE_SUPER_MAGIC: rustix::fs::FsWord = 0x6573_5546;

/// How long zfs-fuse may take to answer a connection's outstanding
/// requests. Generous: under write pressure every daemon thread can wait
/// for a transaction group for seconds.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for the daemon to close a session after the unmount.
/// Past it, `zfs destroy`'s retries on "busy" take over.
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between two looks at the kernel's or the daemon's state.
const POLL: Duration = Duration::from_millis(2);

/// How long an unmount answered `EBUSY` is tried again. Only drivers uses
/// a dataset's own mount point (users get binds of it), so there `EBUSY`
/// comes from drivers itself: a child that another thread of the process
/// has forked but not yet exec'd holds a copy of every open descriptor,
/// those of a layer just written included, until it execs — and the zfs
/// backend starts many children (seen in the test suites, which run cases
/// in threads).
const BUSY_FOR: Duration = Duration::from_secs(5);

/// Pause before trying an `EBUSY` unmount again.
const BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Unmounts `target` (every mount stacked there); a zfs-fuse mount only
/// once zfs-fuse has answered all its requests (see the module docs). A
/// target that is not mounted is fine.
///
/// # Errors
///
/// I/O errors of the unmount (`EBUSY` while a process uses it), or a
/// daemon that does not answer within [`ANSWER_TIMEOUT`].
pub(crate) fn unmount(target: &Path) -> Result<()> {
    if !drivers_mount::is_mountpoint(target)? {
        return Ok(());
    }
    let fuse = rustix::fs::statfs(target).ctx("inspect", target)?.f_type == FUSE_SUPER_MAGIC;
    if !fuse {
        return drivers_mount::unmount(target);
    }
    let dev = rustix::fs::stat(target).ctx("inspect", target)?.st_dev;
    let conn = connection(dev);
    let daemon = daemon::running_pid();
    let busy_until = Instant::now() + BUSY_FOR;
    let sessions = loop {
        wait_answered(&conn, target)?;
        let sessions = daemon.map(fuse_fds);
        match drivers_mount::unmount(target) {
            Ok(()) => break sessions,
            Err(e)
                if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error())
                    && Instant::now() < busy_until =>
            {
                std::thread::sleep(BUSY_PAUSE);
            }
            Err(e) => return Err(e),
        }
    };
    // Only when the filesystem itself went away (not just one bind of it)
    // does the daemon end the session.
    if let (Some(pid), Some(before)) = (daemon, sessions)
        && !before.is_empty()
        && !still_mounted(dev)?
    {
        // The session's descriptor is one of those open before; another
        // session ending meanwhile only makes this stop early, and new
        // sessions do not matter.
        let deadline = Instant::now() + SESSION_TIMEOUT;
        while fuse_fds(pid).is_superset(&before) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

/// The fusectl name of the connection of the FUSE filesystem on device
/// `dev`: the kernel's `dev_t`, `major << 20 | minor`.
fn connection(dev: rustix::fs::Dev) -> String {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    ((u64::from(major) << 20) | u64::from(minor)).to_string()
}

/// Waits until connection `conn` (of the mount at `target`, for messages)
/// has no request outstanding.
fn wait_answered(conn: &str, target: &Path) -> Result<()> {
    let waiting = Path::new(FUSECTL).join(conn).join("waiting");
    if !waiting.exists() {
        mount_fusectl()?;
        if !waiting.exists() {
            return Err(Error::Unavailable {
                backend: NAME,
                reason: format!(
                    "{} has no entry for the FUSE connection of {}, so it cannot be unmounted safely",
                    FUSECTL,
                    target.display()
                ),
                hint: Some(format!(
                    "mount the fusectl filesystem: `mount -t fusectl fusectl {FUSECTL}`"
                )),
            });
        }
    }
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let n = match std::fs::read_to_string(&waiting) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            // The connection ended meanwhile: nothing is outstanding.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).ctx("read", &waiting),
        };
        if n == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Io {
                op: "wait for zfs-fuse to answer the FUSE requests of",
                path: target.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{n} still outstanding after {ANSWER_TIMEOUT:?}"),
                ),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Mounts fusectl at [`FUSECTL`] unless it is mounted. It stays mounted,
/// as on any systemd machine; it is the kernel's view of FUSE connections
/// and holds no data.
fn mount_fusectl() -> Result<()> {
    if drivers_mount::is_mountpoint(Path::new(FUSECTL))? {
        return Ok(());
    }
    rustix::mount::mount(
        "fusectl",
        FUSECTL,
        "fusectl",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .ctx("mount fusectl on", FUSECTL)?;
    tracing::info!(
        backend = NAME,
        path = FUSECTL,
        "mounted the fusectl filesystem, to see when zfs-fuse has answered a dataset's requests"
    );
    Ok(())
}

/// The `/dev/fuse` descriptors process `pid` has open: with zfs-fuse, one
/// per FUSE session.
fn fuse_fds(pid: i32) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or_else(
        |_| BTreeSet::new(),
        |rd| {
            rd.filter_map(|e| {
                let e = e.ok()?;
                let to = std::fs::read_link(e.path()).ok()?;
                (to == Path::new("/dev/fuse")).then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect()
        },
    )
}

/// Whether any mount of this namespace is of the filesystem on `dev`.
fn still_mounted(dev: rustix::fs::Dev) -> Result<bool> {
    let info = std::fs::read("/proc/self/mountinfo").ctx("read", "/proc/self/mountinfo")?;
    let want = format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev));
    Ok(String::from_utf8_lossy(&info)
        .lines()
        .any(|l| l.split(' ').nth(2) == Some(want.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fusectl names a connection by the kernel's `dev_t`, which differs
    /// from the user-space encoding once the minor is 256 or more.
    #[test]
    fn connection_names() {
        assert_eq!(connection(rustix::fs::makedev(0, 41)), "41");
        assert_eq!(connection(rustix::fs::makedev(0, 300)), "300");
        assert_eq!(
            connection(rustix::fs::makedev(1, 2)),
            ((1u64 << 20) | 2).to_string()
        );
    }
}
