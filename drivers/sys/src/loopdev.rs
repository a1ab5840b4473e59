//! Loop device ioctls (`include/uapi/linux/loop.h`): get a free device from
//! `/dev/loop-control`, bind a backing file to it, read its status, and
//! release it.

use std::os::fd::{AsFd, AsRawFd};

use rustix::io::{Errno, Result};
use rustix::ioctl::{IntegerSetter, NoArg, Opcode, Setter, Updater, ioctl};

use crate::ReturnsInt;

/// `LO_FLAGS_READ_ONLY`.
pub const FLAG_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR`: the kernel releases the device when its last user
/// closes it (typically: when the filesystem mounted from it is
/// unmounted), so a crash between mount and detach cannot leak it.
pub const FLAG_AUTOCLEAR: u32 = 4;

/// `LO_NAME_SIZE`.
const NAME_SIZE: usize = 64;
/// `LO_KEY_SIZE`.
const KEY_SIZE: usize = 32;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; NAME_SIZE],
    lo_crypt_name: [u8; NAME_SIZE],
    lo_encrypt_key: [u8; KEY_SIZE],
    lo_init: [u64; 2],
}

impl LoopInfo64 {
    fn zeroed() -> LoopInfo64 {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; NAME_SIZE],
            lo_crypt_name: [0; NAME_SIZE],
            lo_encrypt_key: [0; KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<LoopInfo64>() == 232);
    assert!(size_of::<LoopConfig>() == 304);
};

// Plain numbers in `linux/loop.h` (not composed with _IO*).
const LOOP_SET_FD: Opcode = 0x4c00;
const LOOP_CLR_FD: Opcode = 0x4c01;
const LOOP_SET_STATUS64: Opcode = 0x4c04;
const LOOP_GET_STATUS64: Opcode = 0x4c05;
const LOOP_CONFIGURE: Opcode = 0x4c0a;
const LOOP_CTL_GET_FREE: Opcode = 0x4c82;

/// A free loop device number from `/dev/loop-control` (opened as
/// `control`), creating the device if needed. Another process may take it
/// before we bind it: [`configure`] then fails with `EBUSY`, and the caller
/// asks again.
pub fn get_free(control: impl AsFd) -> Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns the device
    // number as the ioctl's result.
    let n = unsafe { ioctl(control, ReturnsInt::<LOOP_CTL_GET_FREE>)? };
    u32::try_from(n).map_err(|_| Errno::IO)
}

/// Binds `backing` (an open regular file) to the loop device open as
/// `device`, with `flags` ([`FLAG_AUTOCLEAR`], [`FLAG_READ_ONLY`]) and
/// `name` recorded as its file name (truncated to 63 bytes; informational,
/// `losetup -l` shows it). Uses `LOOP_CONFIGURE` (Linux 5.8+, one atomic
/// step), else `LOOP_SET_FD` then `LOOP_SET_STATUS64`.
///
/// `EBUSY` means the device is bound already.
pub fn configure(device: impl AsFd, backing: impl AsFd, flags: u32, name: &[u8]) -> Result<()> {
    let device = device.as_fd();
    let mut info = LoopInfo64::zeroed();
    info.lo_flags = flags;
    let n = name.len().min(NAME_SIZE - 1);
    info.lo_file_name[..n].copy_from_slice(&name[..n]);
    let raw_fd = u32::try_from(backing.as_fd().as_raw_fd()).map_err(|_| Errno::BADF)?;
    let mut config = LoopConfig {
        fd: raw_fd,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config` (size asserted
    // above) through a pointer to `config`, live for the call; its `fd` is
    // `backing`, borrowed for the whole call.
    match unsafe {
        ioctl(
            device,
            Updater::<LOOP_CONFIGURE, LoopConfig>::new(&mut config),
        )
    } {
        // Kernels before 5.8 answer an unknown loop ioctl with EINVAL.
        Err(Errno::INVAL | Errno::NOTTY) => {}
        r => return r,
    }
    // SAFETY: LOOP_SET_FD takes the backing file descriptor as its integer
    // argument; `backing` is borrowed for the whole call.
    unsafe {
        ioctl(
            device,
            IntegerSetter::<LOOP_SET_FD>::new_usize(raw_fd as usize),
        )?
    };
    // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64` (size
    // asserted above) through the pointer into the `Setter`.
    let r = unsafe { ioctl(device, Setter::<LOOP_SET_STATUS64, LoopInfo64>::new(info)) };
    if r.is_err() {
        let _ = clear(device);
    }
    r
}

/// What a bound loop device says about its backing file
/// (`LOOP_GET_STATUS64`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Device number of the filesystem holding the backing file.
    pub backing_dev: u64,
    /// Inode number of the backing file.
    pub backing_inode: u64,
    /// `LO_FLAGS_*`.
    pub flags: u32,
}

/// The status of the loop device open as `device`; `ENXIO` if unbound.
pub fn status(device: impl AsFd) -> Result<Status> {
    let mut info = LoopInfo64::zeroed();
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` (size
    // asserted above) through a pointer to `info`, live for the call.
    unsafe {
        ioctl(
            device,
            Updater::<LOOP_GET_STATUS64, LoopInfo64>::new(&mut info),
        )?
    };
    Ok(Status {
        backing_dev: info.lo_device,
        backing_inode: info.lo_inode,
        flags: info.lo_flags,
    })
}

/// Releases the loop device open as `device` (`LOOP_CLR_FD`). While a
/// filesystem is still mounted from it the kernel only marks it for
/// release on last close (it sets [`FLAG_AUTOCLEAR`]); `ENXIO` if unbound.
pub fn clear(device: impl AsFd) -> Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    unsafe { ioctl(device, NoArg::<LOOP_CLR_FD>::new()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside a loop device the ioctls fail cleanly and bind nothing.
    #[test]
    fn not_a_loop_device() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(status(&null).is_err());
        assert!(clear(&null).is_err());
        assert!(get_free(&null).is_err());
    }
}
