//! The one place in the workspace that needs `unsafe`: a forked child that
//! changes directory and mounts.
//!
//! Legacy `mount(2)` resolves relative lower paths against the caller's
//! working directory. Changing the directory of our own (multi-threaded)
//! process would race every other thread's relative paths, so a child
//! does it and reports the result in its exit status.

#![expect(
    unsafe_code,
    reason = "fork(2) and _exit(2) have no safe wrappers; the child runs only raw syscalls"
)]

use std::ffi::CStr;
use std::io;
use std::os::fd::BorrowedFd;

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;
use rustix::mount::MountFlags;

/// Exit status of a child that did not even reach `mount` (its `fchdir`
/// failed); errno values are all below it.
const EXIT_CHDIR_FAILED: i32 = 255;

/// `fchdir(dir)` then `mount(source, target, fstype, 0, data)` in a forked
/// child. Every argument is prepared by the caller, so the child allocates
/// nothing and takes no lock.
pub(crate) fn mount_in_dir(
    dir: BorrowedFd<'_>,
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    data: &CStr,
) -> io::Result<()> {
    // SAFETY: after fork only this thread exists in the child, and other
    // threads may have held locks (malloc, stdio). The child therefore calls
    // only `fchdir`, `mount` and `_exit`, which rustix and libc issue as
    // plain system calls, async-signal-safe; all strings were built before
    // the fork and are only borrowed.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        ForkResult::Child => {
            let code = match rustix::process::fchdir(dir) {
                Err(_) => EXIT_CHDIR_FAILED,
                Ok(()) => {
                    match rustix::mount::mount(source, target, fstype, MountFlags::empty(), data) {
                        Ok(()) => 0,
                        Err(e) => e.raw_os_error(),
                    }
                }
            };
            // SAFETY: `_exit` is async-signal-safe and skips the parent's
            // atexit handlers and buffered output, which the child must not
            // run or flush a second time.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Exited(_, EXIT_CHDIR_FAILED)) => {
                    return Err(io::Error::other(
                        "the mount helper could not enter the layer link directory",
                    ));
                }
                Ok(WaitStatus::Exited(_, errno)) => {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    return Err(io::Error::other(format!(
                        "the mount helper was killed by {sig}"
                    )));
                }
                Ok(_) => continue, // stopped or continued: keep waiting for the exit
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        },
    }
}
