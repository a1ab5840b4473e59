//! The zfs-fuse daemon: found, started, and stopped again.
//!
//! Without the kernel module, ZFS on these machines is Debian's zfs-fuse: a
//! daemon that serves the `zfs`/`zpool` commands on a socket and mounts
//! datasets through FUSE. One daemon serves the whole machine, so who
//! started it matters:
//!
//! - drivers starts it (at `select zfs --loopback` or `open`) only when it
//!   is not running, records its pid in [`PIDFILE`] and says so in the log;
//! - drivers stops it only if that record names the running daemon *and*
//!   no pool is imported any more (the last loopback pool of drivers was
//!   just destroyed). A daemon started by anyone else (the init script, an
//!   admin, CI) is never stopped by drivers.
//!
//! Starting and stopping happen under an exclusive lock (see [`Lock`]), so
//! one process's teardown cannot stop the daemon under another's setup.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drivers_api::{Error, IoContext, Result};

use crate::ops;

/// Where drivers records the pid of a zfs-fuse it started: on /run, so a
/// reboot (which ends the daemon) also forgets the record.
pub(crate) const PIDFILE: &str = "/run/drivers-zfs-fuse.pid";

/// The socket the zfs-fuse daemon serves the commands on.
pub(crate) const SOCKET: &str = "/var/run/zfs/zfs_socket";

/// How long a starting daemon may take to answer (it needs ~0.2 s here).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a stopping daemon may take to exit (it syncs its pools).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a SIGKILLed zfs-fuse may take to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where zfs-fuse mounts its statistics (a FUSE mount of its own, left
/// behind when it is killed; only a dead daemon's is ever detached).
const KSTAT_MOUNT: &str = "/zfs-kstat";

/// The pid of a running zfs-fuse daemon, from `/proc/*/comm`.
pub(crate) fn running_pid() -> Option<i32> {
    let rd = std::fs::read_dir("/proc").ok()?;
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| is_zfs_fuse(*pid))
}

/// The file zfs-fuse reads its options from.
const ZFSRC: &str = "/etc/zfs/zfsrc";

/// Whether the zfs-fuse daemon `pid` stores extended attributes: started
/// with `-x`/`--enable-xattr`, or with `enable-xattr` in [`ZFSRC`].
pub(crate) fn xattrs_enabled(pid: i32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let flag = cmdline
        .split(|&b| b == 0)
        .any(|a| a == b"-x" || a == b"--enable-xattr");
    flag || std::fs::read_to_string(ZFSRC).is_ok_and(|rc| zfsrc_enables_xattrs(&rc))
}

/// Whether a zfsrc text has an active `enable-xattr` line.
fn zfsrc_enables_xattrs(rc: &str) -> bool {
    rc.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .any(|l| {
            l == "enable-xattr" || l.starts_with("enable-xattr ") || l.starts_with("enable-xattr=")
        })
}

fn is_zfs_fuse(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "zfs-fuse")
}

/// An exclusive lock serialising daemon starts and stops between drivers
/// processes. It is a `flock` on the zfs-fuse executable itself: every
/// process that may start the daemon has it, and no lock file is left on
/// the machine.
pub(crate) struct Lock(#[allow(dead_code, reason = "held for its flock until dropped")] File);

impl Lock {
    pub(crate) fn take() -> Result<Lock> {
        let exe = ops::tool("zfs-fuse").ok_or_else(not_installed)?;
        let f = File::open(&exe).ctx("open", &exe)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).ctx("lock", &exe)?;
        Ok(Lock(f))
    }
}

fn not_installed() -> Error {
    Error::Unavailable {
        backend: crate::NAME,
        reason: "there is no /dev/zfs (the zfs kernel module is not loaded) and zfs-fuse is not installed".into(),
        hint: Some(crate::probe::INSTALL_HINT.into()),
    }
}

/// Starts zfs-fuse if it is not running; returns whether it started it.
/// The caller holds the [`Lock`].
pub(crate) fn ensure_running(_lock: &Lock) -> Result<bool> {
    if running_pid().is_some() && Path::new(SOCKET).exists() {
        return Ok(false);
    }
    let exe = ops::tool("zfs-fuse").ok_or_else(not_installed)?;
    // zfs-fuse forks into the background and the parent exits once the
    // child runs; it reads its tuning from /etc/zfs/zfsrc.
    let st = Command::new(&exe)
        .args(["--pidfile", PIDFILE])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ctx("start", &exe)?;
    if !st.success() {
        return Err(Error::Unavailable {
            backend: crate::NAME,
            reason: format!("the zfs-fuse daemon did not start ({st})"),
            hint: Some("see the system log; is another zfs-fuse still shutting down?".into()),
        });
    }
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        // A pool listing is the daemon answering on its socket.
        match ops::run("zpool", &["list", "-H", "-o", "name"], "pool", "") {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    tracing::warn!(
        backend = crate::NAME,
        pidfile = PIDFILE,
        "started the zfs-fuse daemon (there is no zfs kernel module); drivers stops it again when its last loopback pool is destroyed"
    );
    Ok(true)
}

/// Stops the daemon if drivers started it (see the module docs) and no
/// pool is imported; returns whether it stopped it. The caller holds the
/// [`Lock`].
pub(crate) fn stop_if_ours_and_idle(_lock: &Lock) -> Result<bool> {
    let Some(pid) = std::fs::read_to_string(PIDFILE)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return Ok(false);
    };
    if !is_zfs_fuse(pid) {
        // A record of a daemon that is gone: forget it.
        let _ = std::fs::remove_file(PIDFILE);
        return Ok(false);
    }
    let pools = ops::run("zpool", &["list", "-H", "-o", "name"], "pool", "")?;
    if !pools.trim().is_empty() {
        return Ok(false);
    }
    let p = rustix::process::Pid::from_raw(pid).ok_or_else(|| Error::Invalid {
        field: "zfs-fuse pid",
        reason: format!("{pid} in {PIDFILE}"),
    })?;
    rustix::process::kill_process(p, rustix::process::Signal::TERM)
        .ctx("stop the zfs-fuse daemon, pid", format!("/proc/{pid}"))?;
    if !wait_exit(pid, STOP_TIMEOUT) {
        // zfs-fuse sometimes ignores SIGTERM for good (seen with no pool
        // left: every thread asleep on a futex). It holds no pool now, so
        // nothing is lost by killing it; its kstat FUSE mount, which it
        // would have unmounted itself, goes with it.
        tracing::warn!(
            backend = crate::NAME,
            pid,
            "zfs-fuse did not exit on SIGTERM; killing it"
        );
        rustix::process::kill_process(p, rustix::process::Signal::KILL)
            .ctx("kill the zfs-fuse daemon, pid", format!("/proc/{pid}"))?;
        if !wait_exit(pid, KILL_TIMEOUT) {
            return Err(Error::Io {
                op: "wait for the zfs-fuse daemon to exit, pid",
                path: format!("/proc/{pid}").into(),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            });
        }
        if let Err(e) = rustix::mount::unmount(KSTAT_MOUNT, rustix::mount::UnmountFlags::DETACH)
            && e != rustix::io::Errno::INVAL
            && e != rustix::io::Errno::NOENT
        {
            tracing::warn!(backend = crate::NAME, error = %e, "unmount {KSTAT_MOUNT}");
        }
    }
    let _ = std::fs::remove_file(PIDFILE);
    tracing::info!(
        backend = crate::NAME,
        pid,
        "stopped the zfs-fuse daemon drivers had started"
    );
    Ok(true)
}

/// Waits up to `timeout` for zfs-fuse `pid` to be gone; whether it is.
fn wait_exit(pid: i32, timeout: Duration) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    let zombie = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    };
    let deadline = Instant::now() + timeout;
    while is_zfs_fuse(pid) && !zombie() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only an uncommented `enable-xattr` turns xattrs on (Debian's zfsrc
    /// ships it commented out).
    #[test]
    fn zfsrc_xattr_option() {
        assert!(!zfsrc_enables_xattrs(
            "# enable-xattr: uncomment this\n#\n# enable-xattr\nmax-arc-size = 100\n"
        ));
        assert!(zfsrc_enables_xattrs("max-arc-size = 100\nenable-xattr\n"));
        assert!(zfsrc_enables_xattrs("  enable-xattr   # on\n"));
        assert!(!zfsrc_enables_xattrs("enable-xattrs-later\n"));
    }
}
