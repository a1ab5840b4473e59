//! drivers-sys: safe wrappers around the ioctls the backends need, and the
//! one crate of the workspace where `unsafe` is allowed (STYLE.md 2.1,
//! after `composefs-ioctls`).
//!
//! - [`btrfs`]: subvolume create, snapshot, destroy and flags; subvolume
//!   info; `TREE_SEARCH_V2` (what `btrfs subvolume find-new` and `btrfs
//!   subvolume list` are built on); `INO_LOOKUP`; quota and qgroups.
//! - [`loopdev`]: loop device allocation, configuration and release.
//! - [`xfs`]: project ids of directories and XFS project quota limits
//!   (`quotactl_fd`).
//!
//! Every argument struct is `#[repr(C)]` and its size is checked at compile
//! time against the kernel's UAPI headers (`linux/btrfs.h`, `linux/loop.h`,
//! sizes printed by a C program on Linux 6.1 headers; the layouts are
//! append-only ABI). Every `unsafe` block carries a `// SAFETY:` comment;
//! the public functions are safe: they take file descriptors and plain
//! values, and return `rustix::io::Result`.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! let dir = std::fs::File::open("/mnt/btrfs")?;
//! drivers_sys::btrfs::create_subvolume(dir.as_fd(), b"base")?;
//! let base = std::fs::File::open("/mnt/btrfs/base")?;
//! drivers_sys::btrfs::snapshot(base.as_fd(), dir.as_fd(), b"child", false)?;
//! # Ok::<(), std::io::Error>(())
//! ```

#![allow(
    unsafe_code,
    reason = "ioctl(2) has no safe form: each wrapper here checks its argument layout against the kernel's and exposes a safe function"
)]
#![warn(clippy::undocumented_unsafe_blocks, missing_docs)]

pub mod btrfs;
pub mod extents;
pub mod loopdev;
pub mod xfs;

use std::ffi::c_void;

use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};

/// An ioctl without an argument whose result is its return value (e.g.
/// `LOOP_CTL_GET_FREE`, which returns a device number).
struct ReturnsInt<const OPCODE: Opcode>;

// SAFETY: the ioctl takes no pointer (the argument is null and never read
// through), and its output is the syscall's return value, which
// `output_from_ptr` passes on untouched.
unsafe impl<const OPCODE: Opcode> Ioctl for ReturnsInt<OPCODE> {
    type Output = IoctlOutput;

    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        OPCODE
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::null_mut()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// Copies `name` into a fixed, zeroed C string field; the name must be one
/// path component of at most `max` bytes (the kernel's own limit for the
/// field, which is shorter than the field).
fn put_name(field: &mut [u8], name: &[u8], max: usize) -> rustix::io::Result<()> {
    if name.is_empty() || name.contains(&0) || name.contains(&b'/') {
        return Err(rustix::io::Errno::INVAL);
    }
    if name.len() > max || name.len() >= field.len() {
        return Err(rustix::io::Errno::NAMETOOLONG);
    }
    field[..name.len()].copy_from_slice(name);
    field[name.len()] = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are single components, NUL-terminated, within the kernel's
    /// limit.
    #[test]
    fn names() {
        let mut f = [0xffu8; 8];
        put_name(&mut f, b"abc", 5).unwrap();
        assert_eq!(&f[..4], b"abc\0");
        for bad in [&b""[..], b"a/b", b"a\0b"] {
            assert_eq!(put_name(&mut f, bad, 5), Err(rustix::io::Errno::INVAL));
        }
        assert_eq!(
            put_name(&mut f, b"abcdef", 5),
            Err(rustix::io::Errno::NAMETOOLONG)
        );
        assert_eq!(
            put_name(&mut f, b"abcdefgh", 100),
            Err(rustix::io::Errno::NAMETOOLONG)
        );
    }
}
