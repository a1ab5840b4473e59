//! Shared file extents: ask the kernel to make identical ranges of two files
//! share storage (`FIDEDUPERANGE`), read where a file's data lives
//! (`FS_IOC_FIEMAP`), and find out whether a filesystem can share at all.
//!
//! `FIDEDUPERANGE` is the safe way to deduplicate: the kernel locks both
//! files, compares the bytes itself and shares only ranges that are equal,
//! so no reader ever sees different contents and nothing is lost if the
//! files changed since they were hashed. btrfs and xfs (with `reflink=1`,
//! the default since xfsprogs 5.1) support it; ext4 and tmpfs do not.
//!
//! Both take variable-length structures, which rustix has no wrapper for:
//! each call here passes a `#[repr(C)]` struct with a fixed number of
//! trailing entries, its size checked below against `linux/fs.h` and
//! `linux/fiemap.h`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use rustix::ioctl::{Opcode, Updater, ioctl, opcode};

/// `struct file_dedupe_range` without its flexible array (linux/fs.h).
#[repr(C)]
struct DedupeHead {
    src_offset: u64,
    src_length: u64,
    dest_count: u16,
    reserved1: u16,
    reserved2: u32,
}

/// `struct file_dedupe_range_info` (linux/fs.h).
#[repr(C)]
#[derive(Default)]
struct DedupeInfo {
    dest_fd: i64,
    dest_offset: u64,
    bytes_deduped: u64,
    status: i32,
    reserved: u32,
}

// The kernel's sizes (the opcodes encode the headers' sizes).
const _: () = assert!(std::mem::size_of::<DedupeHead>() == 24);
const _: () = assert!(std::mem::size_of::<DedupeInfo>() == 32);

/// A `file_dedupe_range` with exactly one destination.
#[repr(C)]
struct DedupeOne {
    head: DedupeHead,
    info: [DedupeInfo; 1],
}

/// `FIDEDUPERANGE`: `_IOWR(0x94, 54, struct file_dedupe_range)`; the size
/// in the opcode is the header's, without the array.
const FIDEDUPERANGE: Opcode = opcode::read_write::<DedupeHead>(0x94, 54);

/// `FILE_DEDUPE_RANGE_DIFFERS`.
const DEDUPE_DIFFERS: i32 = 1;

/// The most bytes one `FIDEDUPERANGE` call is asked to share: btrfs caps a
/// call at 16 MiB (`BTRFS_MAX_DEDUPE_LEN`) and returns less when asked for
/// more, so the range is walked in steps of this.
pub const DEDUPE_CHUNK: u64 = 16 << 20;

/// What sharing one range did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dedupe {
    /// The ranges were equal; this many bytes now share the source's extents.
    Same(u64),
    /// The ranges differ: nothing was shared.
    Differs,
}

/// Makes `len` bytes of `dst` from `dst_offset` share the extents of `src`
/// from `src_offset`, if they are byte for byte equal (the kernel compares
/// them under lock). Walks the range in [`DEDUPE_CHUNK`] steps.
///
/// # Errors
///
/// The kernel's: `EOPNOTSUPP`/`EINVAL` where the filesystem cannot share,
/// `EXDEV` across filesystems, `EROFS` on a read-only snapshot, `EPERM` if
/// `dst` is not writable by the caller.
pub fn dedupe_range(
    src: BorrowedFd<'_>,
    src_offset: u64,
    dst: BorrowedFd<'_>,
    dst_offset: u64,
    len: u64,
) -> io::Result<Dedupe> {
    let mut done = 0;
    while done < len {
        let step = (len - done).min(DEDUPE_CHUNK);
        let mut arg = DedupeOne {
            head: DedupeHead {
                src_offset: src_offset + done,
                src_length: step,
                dest_count: 1,
                reserved1: 0,
                reserved2: 0,
            },
            info: [DedupeInfo {
                dest_fd: i64::from(dst.as_raw_fd()),
                dest_offset: dst_offset + done,
                ..DedupeInfo::default()
            }],
        };
        // SAFETY: `arg` is a `file_dedupe_range` with `dest_count` (1)
        // entries following the header, as FIDEDUPERANGE reads and writes;
        // it outlives the call.
        unsafe {
            let updater = Updater::<'_, FIDEDUPERANGE, DedupeOne>::new(&mut arg);
            ioctl(src, updater)?;
        }
        let info = &arg.info[0];
        match info.status {
            0 => {}
            DEDUPE_DIFFERS => return Ok(Dedupe::Differs),
            neg => return Err(io::Error::from_raw_os_error(-neg)),
        }
        if info.bytes_deduped == 0 {
            // No progress (e.g. an unaligned tail the filesystem will not
            // share): stop rather than spin.
            break;
        }
        done += info.bytes_deduped;
    }
    Ok(Dedupe::Same(done))
}

/// `struct fiemap` without its flexible array (linux/fiemap.h).
#[repr(C)]
#[derive(Default)]
struct FiemapHead {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

/// `struct fiemap_extent` (linux/fiemap.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

const _: () = assert!(std::mem::size_of::<FiemapHead>() == 32);
const _: () = assert!(std::mem::size_of::<FiemapExtent>() == 56);

/// Extents asked for per `FS_IOC_FIEMAP` call.
const FIEMAP_BATCH: usize = 64;

/// A `struct fiemap` with room for [`FIEMAP_BATCH`] extents.
#[repr(C)]
struct FiemapBatch {
    head: FiemapHead,
    extents: [FiemapExtent; FIEMAP_BATCH],
}

/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: Opcode = opcode::read_write::<FiemapHead>(b'f', 11);
/// `FIEMAP_FLAG_SYNC`: flush dirty data first, so delayed allocation does
/// not hide where the data goes.
const FIEMAP_FLAG_SYNC: u32 = 0x1;
/// `FIEMAP_EXTENT_LAST`.
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// `FIEMAP_EXTENT_SHARED`: the extent is shared with another file.
pub const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

/// Where one range of a file's data lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file.
    pub logical: u64,
    /// Offset on the device.
    pub physical: u64,
    /// Length in bytes.
    pub length: u64,
    /// `FIEMAP_EXTENT_*` flags.
    pub flags: u32,
}

/// The extents of `fd`'s data, in file order (holes are absent).
///
/// # Errors
///
/// The kernel's, e.g. `EOPNOTSUPP` on a filesystem without FIEMAP.
pub fn extents(fd: BorrowedFd<'_>) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        let mut arg = FiemapBatch {
            head: FiemapHead {
                fm_start: start,
                fm_length: u64::MAX - start,
                fm_flags: FIEMAP_FLAG_SYNC,
                fm_extent_count: FIEMAP_BATCH as u32,
                ..FiemapHead::default()
            },
            extents: [FiemapExtent::default(); FIEMAP_BATCH],
        };
        // SAFETY: `arg` is a `struct fiemap` followed by `fm_extent_count`
        // extents, as FS_IOC_FIEMAP reads and writes; it outlives the call.
        unsafe {
            let updater = Updater::<'_, FS_IOC_FIEMAP, FiemapBatch>::new(&mut arg);
            ioctl(fd, updater)?;
        }
        let n = (arg.head.fm_mapped_extents as usize).min(FIEMAP_BATCH);
        if n == 0 {
            return Ok(out);
        }
        for e in &arg.extents[..n] {
            out.push(Extent {
                logical: e.fe_logical,
                physical: e.fe_physical,
                length: e.fe_length,
                flags: e.fe_flags,
            });
        }
        let last = arg.extents[n - 1];
        if last.fe_flags & FIEMAP_EXTENT_LAST != 0 {
            return Ok(out);
        }
        start = last.fe_logical + last.fe_length;
    }
}

/// Whether the filesystem holding `dir` can share extents between files:
/// writes two identical one-block files there, asks the kernel to share
/// them, and removes them. `Err` carries the reason for the user.
pub fn probe_dedupe(dir: &Path, block: u64) -> Result<(), String> {
    let name = |i: u32| dir.join(format!(".dedupe-probe-{}-{i}", std::process::id()));
    let (a, b) = (name(0), name(1));
    let run = || -> io::Result<Dedupe> {
        let data = vec![0x5a_u8; usize::try_from(block.max(4096)).unwrap_or(4096)];
        std::fs::write(&a, &data)?;
        std::fs::write(&b, &data)?;
        let fa = std::fs::File::open(&a)?;
        let fb = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&b)?;
        fa.sync_all()?;
        fb.sync_all()?;
        dedupe_range(fa.as_fd(), 0, fb.as_fd(), 0, data.len() as u64)
    };
    let res = run();
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    match res {
        Ok(Dedupe::Same(n)) if n > 0 => Ok(()),
        Ok(other) => Err(format!("the kernel shared nothing ({other:?})")),
        Err(e) => Err(format!("FIDEDUPERANGE failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opcodes are the kernel's (`_IOWR` with the header sizes).
    #[test]
    fn opcodes() {
        assert_eq!(FIDEDUPERANGE, 0xc018_9436);
        assert_eq!(FS_IOC_FIEMAP, 0xc020_660b);
    }

    /// On a filesystem that cannot share (ext4, tmpfs: where the tests'
    /// temporary directories usually are), the probe says why instead of
    /// pretending; FIEMAP still reports where data lives.
    #[test]
    fn probe_and_fiemap_here() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, vec![1u8; 64 << 10]).unwrap();
        let file = std::fs::File::open(&f).unwrap();
        match extents(file.as_fd()) {
            Ok(ext) => {
                let total: u64 = ext.iter().map(|e| e.length).sum();
                assert!(total >= 64 << 10, "{ext:?}");
            }
            // tmpfs has no FIEMAP.
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(rustix::io::Errno::OPNOTSUPP.raw_os_error())
            ),
        }
        match probe_dedupe(dir.path(), 4096) {
            Ok(()) => {}
            Err(why) => assert!(why.contains("FIDEDUPERANGE"), "{why}"),
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "probe files left behind"
        );
    }
}
