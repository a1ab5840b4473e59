//! XFS project quotas: a directory's project id and inherit flag
//! (`FS_IOC_FSGETXATTR`/`FS_IOC_FSSETXATTR`, `include/uapi/linux/fs.h`),
//! and the XFS quota commands of `quotactl_fd(2)`
//! (`include/uapi/linux/dqblk_xfs.h`): the quota state of a filesystem
//! (`Q_XGETQSTATV`), one project's limits and usage (`Q_XGETQUOTA`) and
//! setting its block limits (`Q_XSETQLIM`).
//!
//! Neither rustix nor nix wraps these (nix's `quotactl` knows only the VFS
//! quota format, user and group quotas); libc has the `quotactl_fd` syscall
//! number only. `quotactl_fd` (Linux 5.14+) takes a descriptor of any
//! file on the filesystem, so no block device path has to be found — a
//! loop device or `/dev/root` would need one.

use std::os::fd::{AsFd, AsRawFd};

use rustix::io::{Errno, Result};
use rustix::ioctl::{Getter, Opcode, Setter, ioctl, opcode};

/// `FS_XFLAG_PROJINHERIT`: files and directories created in a directory
/// with this flag take its project id.
pub const XFLAG_PROJINHERIT: u32 = 0x0000_0200;

/// `struct fsxattr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FsXattr {
    fsx_xflags: u32,
    fsx_extsize: u32,
    fsx_nextents: u32,
    fsx_projid: u32,
    fsx_cowextsize: u32,
    fsx_pad: [u8; 8],
}

/// `struct fs_quota_statv` and its `struct fs_qfilestatv`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct QFileStatV {
    qfs_ino: u64,
    qfs_nblks: u64,
    qfs_nextents: u32,
    qfs_pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct QuotaStatV {
    qs_version: i8,
    qs_pad1: u8,
    qs_flags: u16,
    qs_incoredqs: u32,
    qs_uquota: QFileStatV,
    qs_gquota: QFileStatV,
    qs_pquota: QFileStatV,
    qs_btimelimit: i32,
    qs_itimelimit: i32,
    qs_rtbtimelimit: i32,
    qs_bwarnlimit: u16,
    qs_iwarnlimit: u16,
    qs_rtbwarnlimit: u16,
    qs_pad3: u16,
    qs_pad4: u32,
    qs_pad2: [u64; 7],
}

/// `struct fs_disk_quota`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiskQuota {
    d_version: i8,
    d_flags: i8,
    d_fieldmask: u16,
    d_id: u32,
    d_blk_hardlimit: u64,
    d_blk_softlimit: u64,
    d_ino_hardlimit: u64,
    d_ino_softlimit: u64,
    d_bcount: u64,
    d_icount: u64,
    d_itimer: i32,
    d_btimer: i32,
    d_iwarns: u16,
    d_bwarns: u16,
    d_itimer_hi: i8,
    d_btimer_hi: i8,
    d_rtbtimer_hi: i8,
    d_padding2: i8,
    d_rtb_hardlimit: u64,
    d_rtb_softlimit: u64,
    d_rtbcount: u64,
    d_rtbtimer: i32,
    d_rtbwarns: u16,
    d_padding3: i16,
    d_padding4: [u8; 8],
}

// Sizes and offsets as a C program printed them from Debian's
// linux-libc-dev headers (`linux/fs.h`, `linux/dqblk_xfs.h`).
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<FsXattr>() == 28);
    assert!(offset_of!(FsXattr, fsx_projid) == 12);
    assert!(size_of::<QFileStatV>() == 24);
    assert!(size_of::<QuotaStatV>() == 160);
    assert!(offset_of!(QuotaStatV, qs_flags) == 2);
    assert!(offset_of!(QuotaStatV, qs_pquota) == 56);
    assert!(offset_of!(QuotaStatV, qs_btimelimit) == 80);
    assert!(size_of::<DiskQuota>() == 112);
    assert!(offset_of!(DiskQuota, d_id) == 4);
    assert!(offset_of!(DiskQuota, d_blk_hardlimit) == 8);
    assert!(offset_of!(DiskQuota, d_blk_softlimit) == 16);
    assert!(offset_of!(DiskQuota, d_ino_hardlimit) == 24);
    assert!(offset_of!(DiskQuota, d_bcount) == 40);
    assert!(offset_of!(DiskQuota, d_icount) == 48);
    assert!(offset_of!(DiskQuota, d_rtb_hardlimit) == 72);
};

const FS_IOC_FSGETXATTR: Opcode = opcode::read::<FsXattr>(b'X', 31);
const FS_IOC_FSSETXATTR: Opcode = opcode::write::<FsXattr>(b'X', 32);

/// `XQM_CMD(n)`.
const fn xqm_cmd(n: u32) -> u32 {
    ((b'X' as u32) << 8) + n
}
const Q_XGETQUOTA: u32 = xqm_cmd(3);
const Q_XSETQLIM: u32 = xqm_cmd(4);
const Q_XGETQSTATV: u32 = xqm_cmd(8);
/// `PRJQUOTA`.
const PRJQUOTA: u32 = 2;
/// `FS_QSTATV_VERSION1`.
const QSTATV_VERSION1: i8 = 1;
/// `FS_DQUOT_VERSION`.
const DQUOT_VERSION: i8 = 1;
/// `FS_PROJ_QUOTA` (`d_flags`).
const PROJ_QUOTA: i8 = 2;
/// `FS_DQ_BSOFT | FS_DQ_BHARD` (`d_fieldmask`).
const DQ_BLIMITS: u16 = (1 << 2) | (1 << 3);
/// `FS_QUOTA_PDQ_ACCT` and `FS_QUOTA_PDQ_ENFD` (`qs_flags`).
const PDQ_ACCT: u16 = 0x10;
const PDQ_ENFD: u16 = 0x20;
/// Quota limits and counts are in 512-byte "basic blocks".
const BB: u64 = 512;

/// `QCMD(cmd, PRJQUOTA)`.
fn qcmd_prj(cmd: u32) -> i32 {
    ((cmd << 8) | (PRJQUOTA & 0xff)) as i32
}

/// `quotactl_fd(fd, cmd, id, addr)`.
///
/// # Safety
///
/// `addr` must point to the structure `cmd` reads or writes, valid for the
/// whole call.
unsafe fn quotactl_fd(fd: impl AsFd, cmd: u32, id: u32, addr: *mut libc::c_void) -> Result<()> {
    // SAFETY: the caller vouches for `addr`; the descriptor is borrowed for
    // the call; the other arguments are plain integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_fd().as_raw_fd(),
            qcmd_prj(cmd),
            id,
            addr,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    }
}

/// A file's project id and whether new entries inherit it (directories).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Project {
    /// `fsx_projid`.
    pub id: u32,
    /// [`XFLAG_PROJINHERIT`] is set.
    pub inherit: bool,
}

/// The project of the file open as `fd` (`FS_IOC_FSGETXATTR`).
pub fn project(fd: impl AsFd) -> Result<Project> {
    // SAFETY: FS_IOC_FSGETXATTR writes one `struct fsxattr` (size asserted
    // above) into the `Getter`'s buffer.
    let x = unsafe { ioctl(fd, Getter::<FS_IOC_FSGETXATTR, FsXattr>::new())? };
    Ok(Project {
        id: x.fsx_projid,
        inherit: x.fsx_xflags & XFLAG_PROJINHERIT != 0,
    })
}

/// Gives the file open as `fd` project `id`, and for a directory the
/// inherit flag, so everything created below it later is charged to the
/// same project; the other attributes are kept (read, then written back).
pub fn set_project(fd: impl AsFd, id: u32, inherit: bool) -> Result<()> {
    let fd = fd.as_fd();
    // SAFETY: as in `project`.
    let mut x = unsafe { ioctl(fd, Getter::<FS_IOC_FSGETXATTR, FsXattr>::new())? };
    x.fsx_projid = id;
    if inherit {
        x.fsx_xflags |= XFLAG_PROJINHERIT;
    } else {
        x.fsx_xflags &= !XFLAG_PROJINHERIT;
    }
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr` (size asserted
    // above) from the `Setter`.
    unsafe { ioctl(fd, Setter::<FS_IOC_FSSETXATTR, FsXattr>::new(x)) }
}

/// Whether project quota accounting and enforcement are on for the
/// filesystem of `fd` (`Q_XGETQSTATV`). `ENOSYS` from a kernel without
/// `quotactl_fd`; `ENOSYS`/`ESRCH`/`EINVAL`-class errors from a
/// filesystem without quota support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaState {
    /// `FS_QUOTA_PDQ_ACCT`: usage is counted per project.
    pub accounting: bool,
    /// `FS_QUOTA_PDQ_ENFD`: project limits are enforced.
    pub enforcing: bool,
}

/// The project quota state of the filesystem of `fd`.
pub fn project_quota_state(fd: impl AsFd) -> Result<QuotaState> {
    let mut st = QuotaStatV {
        qs_version: QSTATV_VERSION1,
        ..QuotaStatV::default()
    };
    // SAFETY: Q_XGETQSTATV reads `qs_version` and writes one `struct
    // fs_quota_statv` (size asserted above) through the pointer to `st`,
    // live for the call.
    unsafe { quotactl_fd(fd, Q_XGETQSTATV, 0, (&raw mut st).cast())? };
    Ok(QuotaState {
        accounting: st.qs_flags & PDQ_ACCT != 0,
        enforcing: st.qs_flags & PDQ_ENFD != 0,
    })
}

/// One project's block limits and usage, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProjectQuota {
    /// Hard limit on space; 0 for none.
    pub hard_bytes: u64,
    /// Soft limit on space; 0 for none.
    pub soft_bytes: u64,
    /// Space charged to the project.
    pub used_bytes: u64,
    /// Inodes charged to the project.
    pub inodes: u64,
    /// Hard limit on inodes; 0 for none.
    pub inode_hard: u64,
}

impl ProjectQuota {
    /// No limit of any kind and nothing charged: the state of a project
    /// id nobody uses.
    pub fn is_unused(&self) -> bool {
        *self == ProjectQuota::default()
    }
}

/// Limits and usage of project `id` on the filesystem of `fd`
/// (`Q_XGETQUOTA`). A project the kernel has no record of reads as all
/// zeros (the kernel answers `ENOENT`, taken as that).
pub fn project_quota(fd: impl AsFd, id: u32) -> Result<ProjectQuota> {
    let mut q = DiskQuota::default();
    // SAFETY: Q_XGETQUOTA writes one `struct fs_disk_quota` (size asserted
    // above) through the pointer to `q`, live for the call.
    match unsafe { quotactl_fd(fd, Q_XGETQUOTA, id, (&raw mut q).cast()) } {
        Ok(()) => {}
        Err(Errno::NOENT) => return Ok(ProjectQuota::default()),
        Err(e) => return Err(e),
    }
    Ok(ProjectQuota {
        hard_bytes: q.d_blk_hardlimit * BB,
        soft_bytes: q.d_blk_softlimit * BB,
        used_bytes: q.d_bcount * BB,
        inodes: q.d_icount,
        inode_hard: q.d_ino_hardlimit,
    })
}

/// Sets the hard block limit of project `id` on the filesystem of `fd` to
/// `bytes` (rounded up to 512-byte blocks; 0 removes it) and clears its
/// soft block limit (`Q_XSETQLIM`): a soft limit would only start a grace
/// period, and warning is the quota policy's job. Needs `CAP_SYS_ADMIN`.
pub fn set_project_limit(fd: impl AsFd, id: u32, bytes: u64) -> Result<()> {
    let blocks = bytes.div_ceil(BB);
    let mut q = DiskQuota {
        d_version: DQUOT_VERSION,
        d_flags: PROJ_QUOTA,
        d_fieldmask: DQ_BLIMITS,
        d_id: id,
        d_blk_hardlimit: blocks,
        d_blk_softlimit: 0,
        ..DiskQuota::default()
    };
    // SAFETY: Q_XSETQLIM reads one `struct fs_disk_quota` (size asserted
    // above) through the pointer to `q`, live for the call.
    unsafe { quotactl_fd(fd, Q_XSETQLIM, id, (&raw mut q).cast()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opcodes are the kernel's (values from `linux/fs.h` and
    /// `linux/dqblk_xfs.h` as a C program prints them).
    #[test]
    fn opcodes() {
        assert_eq!(FS_IOC_FSGETXATTR, 0x801c_581f);
        assert_eq!(FS_IOC_FSSETXATTR, 0x401c_5820);
        assert_eq!(qcmd_prj(Q_XGETQUOTA), 0x0058_0302);
        assert_eq!(qcmd_prj(Q_XSETQLIM), 0x0058_0402);
        assert_eq!(qcmd_prj(Q_XGETQSTATV), 0x0058_0802);
    }

    /// Outside a file that has a project (a character device here) the
    /// ioctl fails cleanly instead of reading garbage.
    #[test]
    fn not_a_regular_file() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(project(&null).is_err());
    }
}
