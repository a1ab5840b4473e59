//! btrfs ioctls (`include/uapi/linux/btrfs.h`): subvolumes, snapshots,
//! subvolume flags and info, tree search, inode path lookup, quota and
//! qgroups.
//!
//! Most of these need `CAP_SYS_ADMIN` (tree search, ino lookup, quota,
//! destroying a subvolume one does not own); the backend runs as root.

use std::os::fd::{AsFd, AsRawFd};

use rustix::io::{Errno, Result};
use rustix::ioctl::{NoArg, Opcode, Setter, Updater, ioctl, opcode};

use crate::put_name;

/// `BTRFS_IOCTL_MAGIC`.
const MAGIC: u8 = 0x94;

/// `f_type` of a btrfs filesystem in `statfs` (`BTRFS_SUPER_MAGIC`).
pub const SUPER_MAGIC: u32 = 0x9123_683e;

/// The subvolume flag that makes it read-only (`BTRFS_SUBVOL_RDONLY`).
pub const SUBVOL_RDONLY: u64 = 1 << 1;

/// The read-only bit of a root item's flags, as `GET_SUBVOL_INFO` reports
/// them (`BTRFS_ROOT_SUBVOL_RDONLY`; not the same bit as the ioctl's
/// [`SUBVOL_RDONLY`]).
const ROOT_SUBVOL_RDONLY: u64 = 1 << 0;

/// Inode number of every subvolume's root directory, and the first inode
/// number a subvolume hands out (`BTRFS_FIRST_FREE_OBJECTID`).
pub const FIRST_FREE_OBJECTID: u64 = 256;

/// The last inode number a subvolume can hand out
/// (`BTRFS_LAST_FREE_OBJECTID`); higher object ids are internal.
pub const LAST_FREE_OBJECTID: u64 = 0xffff_ffff_ffff_ff00;

/// Tree ids (`BTRFS_*_TREE_OBJECTID`).
pub mod tree {
    /// The root tree: one `ROOT_ITEM` per subvolume, `ROOT_REF`s from a
    /// subvolume to the subvolumes inside it.
    pub const ROOT: u64 = 1;
    /// The quota tree: qgroup status, info and limit items.
    pub const QUOTA: u64 = 8;
}

/// Item key types (`BTRFS_*_KEY` in `linux/btrfs_tree.h`).
pub mod key {
    /// `btrfs_inode_item`, keyed (inode, INODE_ITEM, 0).
    pub const INODE_ITEM: u8 = 1;
    /// `btrfs_inode_ref`: (inode, INODE_REF, parent directory inode).
    pub const INODE_REF: u8 = 12;
    /// `btrfs_inode_extref`: (inode, INODE_EXTREF, name hash); the parent
    /// is in the item.
    pub const INODE_EXTREF: u8 = 13;
    /// `btrfs_file_extent_item`: (inode, EXTENT_DATA, file offset).
    pub const EXTENT_DATA: u8 = 108;
    /// `btrfs_root_item`: (subvolume id, ROOT_ITEM, 0 or snapshot transid).
    pub const ROOT_ITEM: u8 = 132;
    /// `btrfs_root_ref`: (parent subvolume, ROOT_REF, child subvolume).
    pub const ROOT_REF: u8 = 156;
    /// `btrfs_qgroup_status_item`, keyed (0, QGROUP_STATUS, 0).
    pub const QGROUP_STATUS: u8 = 240;
    /// `btrfs_qgroup_info_item`, keyed (0, QGROUP_INFO, qgroup id).
    pub const QGROUP_INFO: u8 = 242;
}

/// `BTRFS_QGROUP_STATUS_FLAG_ON`: quota is enabled.
pub const QGROUP_STATUS_FLAG_ON: u64 = 1;

/// `BTRFS_PATH_NAME_MAX`.
const PATH_NAME_MAX: usize = 4087;
/// `BTRFS_SUBVOL_NAME_MAX`.
const SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_VOL_NAME_MAX`: what the kernel accepts as a subvolume name.
const VOL_NAME_MAX: usize = 255;
/// `BTRFS_INO_LOOKUP_PATH_MAX`.
const INO_LOOKUP_PATH_MAX: usize = 4080;
/// `BTRFS_UUID_SIZE`.
const UUID_SIZE: usize = 16;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2` (the qgroup-inherit union unused, the
/// name member of the second union used).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; SUBVOL_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawSearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_header`, as it lies in the result buffer.
const SEARCH_HEADER_LEN: usize = 32;

/// `struct btrfs_ioctl_search_args_v2` without its flexible `buf[]`: what
/// the opcode encodes.
#[repr(C)]
struct SearchArgsV2Head {
    key: RawSearchKey,
    buf_size: u64,
}

/// Result buffer of one `TREE_SEARCH_V2` call: larger than any item (an
/// item never exceeds the node size, at most 64 KiB), so every item fits.
const SEARCH_BUF: usize = 64 * 1024 + 4096;

/// [`SearchArgsV2Head`] with the result buffer after it, as the kernel
/// reads and writes it (`buf_size` says how long `buf` is).
#[repr(C)]
struct SearchArgsV2 {
    head: SearchArgsV2Head,
    buf: [u8; SEARCH_BUF],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; INO_LOOKUP_PATH_MAX],
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_qgroup_limit`.
#[repr(C)]
struct RawQgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: RawQgroupLimit,
}

/// `struct btrfs_ioctl_qgroup_create_args`.
#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

/// `struct btrfs_ioctl_timespec` (16 bytes: the `u32` is padded).
#[repr(C)]
#[derive(Clone, Copy)]
struct IoctlTimespec {
    sec: u64,
    nsec: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args`.
#[repr(C)]
#[derive(Clone, Copy)]
struct GetSubvolInfoArgs {
    treeid: u64,
    name: [u8; VOL_NAME_MAX + 1],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; UUID_SIZE],
    parent_uuid: [u8; UUID_SIZE],
    received_uuid: [u8; UUID_SIZE],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: IoctlTimespec,
    otime: IoctlTimespec,
    stime: IoctlTimespec,
    rtime: IoctlTimespec,
    reserved: [u64; 8],
}

// Sizes from `sizeof` on the kernel headers; a mismatch would make the
// kernel read or write outside our structs.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<VolArgs>() == 4096);
    assert!(size_of::<VolArgsV2>() == 4096);
    assert!(size_of::<RawSearchKey>() == 104);
    assert!(size_of::<SearchArgsV2Head>() == 112);
    assert!(offset_of!(SearchArgsV2, buf) == 112);
    assert!(size_of::<InoLookupArgs>() == 4096);
    assert!(size_of::<QuotaCtlArgs>() == 16);
    assert!(size_of::<QgroupLimitArgs>() == 48);
    assert!(size_of::<QgroupCreateArgs>() == 16);
    assert!(size_of::<IoctlTimespec>() == 16);
    assert!(size_of::<GetSubvolInfoArgs>() == 504);
    assert!(offset_of!(GetSubvolInfoArgs, flags) == 288);
    assert!(offset_of!(GetSubvolInfoArgs, otransid) == 352);
    assert!(offset_of!(GetSubvolInfoArgs, ctime) == 376);
};

const SNAP_DESTROY: Opcode = opcode::write::<VolArgs>(MAGIC, 15);
const SYNC: Opcode = opcode::none(MAGIC, 8);
const TREE_SEARCH_V2: Opcode = opcode::read_write::<SearchArgsV2Head>(MAGIC, 17);
const INO_LOOKUP: Opcode = opcode::read_write::<InoLookupArgs>(MAGIC, 18);
const SNAP_CREATE_V2: Opcode = opcode::write::<VolArgsV2>(MAGIC, 23);
const SUBVOL_CREATE_V2: Opcode = opcode::write::<VolArgsV2>(MAGIC, 24);
const SUBVOL_GETFLAGS: Opcode = opcode::read::<u64>(MAGIC, 25);
const SUBVOL_SETFLAGS: Opcode = opcode::write::<u64>(MAGIC, 26);
const QUOTA_CTL: Opcode = opcode::read_write::<QuotaCtlArgs>(MAGIC, 40);
const QGROUP_CREATE: Opcode = opcode::write::<QgroupCreateArgs>(MAGIC, 42);
// The kernel declares QGROUP_LIMIT with _IOR although userspace writes it.
const QGROUP_LIMIT: Opcode = opcode::read::<QgroupLimitArgs>(MAGIC, 43);
const QUOTA_RESCAN_WAIT: Opcode = opcode::none(MAGIC, 46);
const GET_SUBVOL_INFO: Opcode = opcode::read::<GetSubvolInfoArgs>(MAGIC, 60);

// The composed numbers, as the C headers define them (x86-64 encoding).
#[cfg(target_arch = "x86_64")]
const _: () = {
    assert!(SNAP_DESTROY == 0x5000_940f);
    assert!(SYNC == 0x9408);
    assert!(TREE_SEARCH_V2 == 0xc070_9411);
    assert!(INO_LOOKUP == 0xd000_9412);
    assert!(SNAP_CREATE_V2 == 0x5000_9417);
    assert!(SUBVOL_CREATE_V2 == 0x5000_9418);
    assert!(SUBVOL_GETFLAGS == 0x8008_9419);
    assert!(SUBVOL_SETFLAGS == 0x4008_941a);
    assert!(QUOTA_CTL == 0xc010_9428);
    assert!(QGROUP_CREATE == 0x4010_942a);
    assert!(QGROUP_LIMIT == 0x8030_942b);
    assert!(QUOTA_RESCAN_WAIT == 0x942e);
    assert!(GET_SUBVOL_INFO == 0x81f8_943c);
};

fn vol_args_v2(fd: i64, flags: u64, name: &[u8]) -> Result<Box<VolArgsV2>> {
    let mut args = Box::new(VolArgsV2 {
        fd,
        transid: 0,
        flags,
        unused: [0; 4],
        name: [0; SUBVOL_NAME_MAX + 1],
    });
    put_name(&mut args.name, name, VOL_NAME_MAX)?;
    Ok(args)
}

/// Creates an empty subvolume `name` in directory `dir`
/// (`BTRFS_IOC_SUBVOL_CREATE_V2`). Its root directory is owned by the
/// caller, with mode 0755 minus the umask.
pub fn create_subvolume(dir: impl AsFd, name: &[u8]) -> Result<()> {
    let mut args = vol_args_v2(0, 0, name)?;
    // SAFETY: SUBVOL_CREATE_V2 reads one `btrfs_ioctl_vol_args_v2`, whose
    // layout `VolArgsV2` matches (size asserted above), through a pointer to
    // the boxed struct, live for the call; the name is NUL-terminated
    // within its field and `fd` is unused for a plain create.
    unsafe { ioctl(dir, Updater::<SUBVOL_CREATE_V2, VolArgsV2>::new(&mut args)) }
}

/// Snapshots the subvolume open as `source` to `dir/name`
/// (`BTRFS_IOC_SNAP_CREATE_V2`), read-only if asked. The snapshot shares
/// every extent and inode number with `source` and is complete when this
/// returns (the kernel commits a transaction for it). Subvolumes nested in
/// `source` appear as empty directories in the snapshot.
pub fn snapshot(source: impl AsFd, dir: impl AsFd, name: &[u8], read_only: bool) -> Result<()> {
    let flags = if read_only { SUBVOL_RDONLY } else { 0 };
    let mut args = vol_args_v2(i64::from(source.as_fd().as_raw_fd()), flags, name)?;
    // SAFETY: SNAP_CREATE_V2 reads one `btrfs_ioctl_vol_args_v2` (layout
    // asserted above) through a pointer to the boxed struct, live for the
    // call; its `fd` is the source subvolume, borrowed for the whole call,
    // so the number stays open and valid.
    unsafe { ioctl(dir, Updater::<SNAP_CREATE_V2, VolArgsV2>::new(&mut args)) }
}

/// Deletes the subvolume `dir/name` (`BTRFS_IOC_SNAP_DESTROY`): unlinked
/// at once, its blocks freed later by the filesystem's cleaner thread.
/// Fails with `ENOTEMPTY` while subvolumes are nested in it.
pub fn destroy_subvolume(dir: impl AsFd, name: &[u8]) -> Result<()> {
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; PATH_NAME_MAX + 1],
    });
    put_name(&mut args.name, name, VOL_NAME_MAX)?;
    // SAFETY: SNAP_DESTROY reads one `btrfs_ioctl_vol_args` (layout
    // asserted above), only its NUL-terminated name, through a pointer to
    // the boxed struct, live for the call.
    unsafe { ioctl(dir, Updater::<SNAP_DESTROY, VolArgs>::new(&mut args)) }
}

/// The flags of the subvolume open as `subvol` ([`SUBVOL_RDONLY`]).
pub fn subvolume_flags(subvol: impl AsFd) -> Result<u64> {
    let mut flags = 0u64;
    // SAFETY: SUBVOL_GETFLAGS writes one u64 through the pointer, which
    // points at `flags`, live for the call.
    unsafe { ioctl(subvol, Updater::<SUBVOL_GETFLAGS, u64>::new(&mut flags))? };
    Ok(flags)
}

/// Sets the flags of the subvolume open as `subvol`, e.g. [`SUBVOL_RDONLY`]
/// to freeze it. The kernel commits a transaction.
pub fn set_subvolume_flags(subvol: impl AsFd, flags: u64) -> Result<()> {
    // SAFETY: SUBVOL_SETFLAGS reads one u64 through the pointer, which
    // points into the `Setter`, live for the call.
    unsafe { ioctl(subvol, Setter::<SUBVOL_SETFLAGS, u64>::new(flags)) }
}

/// What `BTRFS_IOC_GET_SUBVOL_INFO` says about a subvolume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubvolInfo {
    /// The subvolume (tree) id; its level-0 qgroup is `0/id`.
    pub id: u64,
    /// The subvolume it lies in; 0 for the top level or a deleted one.
    pub parent_id: u64,
    /// The directory inode (in `parent_id`) that holds its entry.
    pub dirid: u64,
    /// The last transaction that changed it.
    pub generation: u64,
    /// Whether it is read-only (the root item's `BTRFS_ROOT_SUBVOL_RDONLY`,
    /// which [`SUBVOL_RDONLY`] sets).
    pub read_only: bool,
    /// Its UUID.
    pub uuid: [u8; UUID_SIZE],
    /// The UUID of the subvolume it is a snapshot of; zeros if none.
    pub parent_uuid: [u8; UUID_SIZE],
    /// The transaction that created it: everything in it that changed
    /// afterwards lives in tree blocks of a later generation.
    pub otransid: u64,
    /// The transaction of its last change.
    pub ctransid: u64,
}

/// Information on the subvolume that contains the open file `fd`
/// (Linux 4.18+).
pub fn subvolume_info(fd: impl AsFd) -> Result<SubvolInfo> {
    let mut raw = Box::new(GetSubvolInfoArgs {
        treeid: 0,
        name: [0; VOL_NAME_MAX + 1],
        parent_id: 0,
        dirid: 0,
        generation: 0,
        flags: 0,
        uuid: [0; UUID_SIZE],
        parent_uuid: [0; UUID_SIZE],
        received_uuid: [0; UUID_SIZE],
        ctransid: 0,
        otransid: 0,
        stransid: 0,
        rtransid: 0,
        ctime: IoctlTimespec { sec: 0, nsec: 0 },
        otime: IoctlTimespec { sec: 0, nsec: 0 },
        stime: IoctlTimespec { sec: 0, nsec: 0 },
        rtime: IoctlTimespec { sec: 0, nsec: 0 },
        reserved: [0; 8],
    });
    // SAFETY: GET_SUBVOL_INFO fills one `btrfs_ioctl_get_subvol_info_args`
    // (layout and offsets asserted above) through the pointer, which points
    // at the boxed struct, live for the call.
    unsafe {
        ioctl(
            fd,
            Updater::<GET_SUBVOL_INFO, GetSubvolInfoArgs>::new(&mut raw),
        )?
    };
    Ok(SubvolInfo {
        id: raw.treeid,
        parent_id: raw.parent_id,
        dirid: raw.dirid,
        generation: raw.generation,
        read_only: raw.flags & ROOT_SUBVOL_RDONLY != 0,
        uuid: raw.uuid,
        parent_uuid: raw.parent_uuid,
        otransid: raw.otransid,
        ctransid: raw.ctransid,
    })
}

/// A btrfs item key: (object id, type, offset), ordered in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Inode number, subvolume id, … depending on the type.
    pub objectid: u64,
    /// One of [`key`]'s constants.
    pub item_type: u8,
    /// Type-specific: file offset, parent inode, child subvolume, ….
    pub offset: u64,
}

impl Key {
    /// The smallest key.
    pub const MIN: Key = Key {
        objectid: 0,
        item_type: 0,
        offset: 0,
    };
    /// The largest key.
    pub const MAX: Key = Key {
        objectid: u64::MAX,
        item_type: u8::MAX,
        offset: u64::MAX,
    };

    /// The key right after this one, `None` after [`Key::MAX`].
    pub fn next(self) -> Option<Key> {
        if let Some(offset) = self.offset.checked_add(1) {
            return Some(Key { offset, ..self });
        }
        if let Some(item_type) = self.item_type.checked_add(1) {
            return Some(Key {
                item_type,
                offset: 0,
                ..self
            });
        }
        self.objectid.checked_add(1).map(|objectid| Key {
            objectid,
            item_type: 0,
            offset: 0,
        })
    }
}

/// What [`tree_search`] looks for: every item of tree `tree_id` whose key
/// lies between `min` and `max` (inclusive, in key order) and that sits in
/// a leaf written in transaction `min_transid` or later.
#[derive(Clone, Copy, Debug)]
pub struct Search {
    /// The tree: a subvolume id, [`tree::ROOT`], [`tree::QUOTA`]; 0 for the
    /// subvolume of the file descriptor searched through.
    pub tree_id: u64,
    /// The first key.
    pub min: Key,
    /// The last key.
    pub max: Key,
    /// Only leaves (and the nodes above them) of this generation or newer
    /// are visited, so a search for what changed since a snapshot costs in
    /// proportion to the change, not to the tree. 0 for everything.
    pub min_transid: u64,
}

impl Search {
    /// Every item of `tree_id` between `min` and `max`.
    pub fn range(tree_id: u64, min: Key, max: Key) -> Search {
        Search {
            tree_id,
            min,
            max,
            min_transid: 0,
        }
    }
}

/// One item [`tree_search`] found.
#[derive(Debug)]
pub struct Item<'a> {
    /// The item's key.
    pub key: Key,
    /// The generation of the leaf holding it (not of the item itself: a
    /// leaf written for one changed item carries its unchanged neighbours).
    pub transid: u64,
    /// The item's on-disk bytes (little-endian structs of
    /// `linux/btrfs_tree.h`).
    pub data: &'a [u8],
}

fn ne_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(x)
}

fn ne_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(x)
}

/// Calls `each` for every item `search` matches, in key order
/// (`BTRFS_IOC_TREE_SEARCH_V2`, issued as often as the results need).
/// `fd` is any file on the filesystem (for `tree_id` 0, in the subvolume to
/// search). Errors with `ENOENT` if the tree does not exist (e.g. the quota
/// tree while quota is off).
pub fn tree_search(fd: impl AsFd, search: &Search, mut each: impl FnMut(&Item<'_>)) -> Result<()> {
    let fd = fd.as_fd();
    let mut args = Box::new(SearchArgsV2 {
        head: SearchArgsV2Head {
            key: RawSearchKey::default(),
            buf_size: 0,
        },
        buf: [0; SEARCH_BUF],
    });
    let mut from = search.min;
    loop {
        args.head.key = RawSearchKey {
            tree_id: search.tree_id,
            min_objectid: from.objectid,
            max_objectid: search.max.objectid,
            min_offset: from.offset,
            max_offset: search.max.offset,
            min_transid: search.min_transid,
            max_transid: u64::MAX,
            min_type: u32::from(from.item_type),
            max_type: u32::from(search.max.item_type),
            nr_items: u32::MAX,
            ..RawSearchKey::default()
        };
        args.head.buf_size = SEARCH_BUF as u64;
        // SAFETY: TREE_SEARCH_V2 reads the key and `buf_size` and writes at
        // most `buf_size` bytes of results into `buf`, which follows the
        // head in `SearchArgsV2` (offset asserted above) and is exactly
        // `SEARCH_BUF` bytes long; it then updates `nr_items` (and on
        // EOVERFLOW, `buf_size`). The box is live for the call.
        unsafe { ioctl(fd, Updater::<TREE_SEARCH_V2, SearchArgsV2>::new(&mut args))? };
        let found = args.head.key.nr_items;
        if found == 0 {
            return Ok(());
        }
        let mut pos = 0;
        let mut last = from;
        for _ in 0..found {
            let h = &args.buf[pos..pos + SEARCH_HEADER_LEN];
            let len = ne_u32(h, 28) as usize;
            let key = Key {
                objectid: ne_u64(h, 8),
                item_type: u8::try_from(ne_u32(h, 24)).map_err(|_| Errno::IO)?,
                offset: ne_u64(h, 16),
            };
            let start = pos + SEARCH_HEADER_LEN;
            let data = args.buf.get(start..start + len).ok_or(Errno::IO)?;
            each(&Item {
                key,
                transid: ne_u64(h, 0),
                data,
            });
            last = key;
            pos = start + len;
        }
        match last.next() {
            Some(next) if next <= search.max => from = next,
            _ => return Ok(()),
        }
    }
}

/// The path of inode `objectid` of subvolume `tree_id` (0: the subvolume
/// of `fd`) relative to that subvolume's root, without a trailing slash;
/// empty for the root itself (`BTRFS_IOC_INO_LOOKUP`). Meant for
/// directories: for a file with several links it names one.
pub fn ino_lookup(fd: impl AsFd, tree_id: u64, objectid: u64) -> Result<Vec<u8>> {
    let mut args = Box::new(InoLookupArgs {
        treeid: tree_id,
        objectid,
        name: [0; INO_LOOKUP_PATH_MAX],
    });
    // SAFETY: INO_LOOKUP reads `treeid`/`objectid` and writes `treeid` and
    // a NUL-terminated path of at most `BTRFS_INO_LOOKUP_PATH_MAX` bytes
    // into `name` (size asserted above); the box is live for the call.
    unsafe { ioctl(fd, Updater::<INO_LOOKUP, InoLookupArgs>::new(&mut args))? };
    let len = args.name.iter().position(|&b| b == 0).ok_or(Errno::IO)?;
    let mut path = args.name[..len].to_vec();
    while path.last() == Some(&b'/') {
        path.pop();
    }
    Ok(path)
}

/// Commits the current transaction and wakes the cleaner, which frees
/// deleted subvolumes (`BTRFS_IOC_SYNC`; also flushes dirty data).
pub fn sync(fd: impl AsFd) -> Result<()> {
    // SAFETY: SYNC takes no argument.
    unsafe { ioctl(fd, NoArg::<SYNC>::new()) }
}

/// `BTRFS_QUOTA_CTL_ENABLE`.
const QUOTA_CTL_ENABLE: u64 = 1;

/// Enables quota (qgroups) on the filesystem of `fd`: from then on every
/// subvolume gets a level-0 qgroup and limits can be set. Starts a rescan
/// of existing data; see [`quota_rescan_wait`].
pub fn quota_enable(fd: impl AsFd) -> Result<()> {
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: QUOTA_CTL reads and may write one `btrfs_ioctl_quota_ctl_args`
    // (size asserted above) through the pointer to `args`, live for the call.
    unsafe { ioctl(fd, Updater::<QUOTA_CTL, QuotaCtlArgs>::new(&mut args)) }
}

/// Waits until a running quota rescan has finished.
pub fn quota_rescan_wait(fd: impl AsFd) -> Result<()> {
    // SAFETY: QUOTA_RESCAN_WAIT takes no argument.
    unsafe { ioctl(fd, NoArg::<QUOTA_RESCAN_WAIT>::new()) }
}

/// Whether quota is enabled on the filesystem of `fd`, from the quota
/// tree's status item (none: quota was never enabled or was disabled).
pub fn quota_enabled(fd: impl AsFd) -> Result<bool> {
    let status = Key {
        objectid: 0,
        item_type: key::QGROUP_STATUS,
        offset: 0,
    };
    let mut on = false;
    match tree_search(fd, &Search::range(tree::QUOTA, status, status), |item| {
        // struct btrfs_qgroup_status_item: version, generation, flags, ….
        if let Some(flags) = item.data.get(16..24) {
            let mut b = [0u8; 8];
            b.copy_from_slice(flags);
            on = u64::from_le_bytes(b) & QGROUP_STATUS_FLAG_ON != 0;
        }
    }) {
        Ok(()) => Ok(on),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BTRFS_QGROUP_LIMIT_MAX_RFER`.
const LIMIT_MAX_RFER: u64 = 1 << 0;
/// `BTRFS_QGROUP_LIMIT_MAX_EXCL`.
const LIMIT_MAX_EXCL: u64 = 1 << 1;

/// Limits of one qgroup; `None` leaves that limit unset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QgroupLimit {
    /// Bytes the subvolume may reference, shared extents included.
    pub max_referenced: Option<u64>,
    /// Bytes only this subvolume references: what it wrote itself, not
    /// what it shares with the snapshot it was made from.
    pub max_exclusive: Option<u64>,
}

/// Sets the limits of qgroup `qgroupid` (0: the level-0 qgroup of the
/// subvolume of `fd`). Writes that would pass a limit fail with `EDQUOT`.
pub fn set_qgroup_limit(fd: impl AsFd, qgroupid: u64, limit: QgroupLimit) -> Result<()> {
    let mut lim = RawQgroupLimit {
        flags: 0,
        max_rfer: 0,
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    if let Some(b) = limit.max_referenced {
        lim.flags |= LIMIT_MAX_RFER;
        lim.max_rfer = b;
    }
    if let Some(b) = limit.max_exclusive {
        lim.flags |= LIMIT_MAX_EXCL;
        lim.max_excl = b;
    }
    let args = QgroupLimitArgs { qgroupid, lim };
    // SAFETY: QGROUP_LIMIT reads one `btrfs_ioctl_qgroup_limit_args` (size
    // asserted above) through the pointer into the `Setter`.
    unsafe { ioctl(fd, Setter::<QGROUP_LIMIT, QgroupLimitArgs>::new(args)) }
}

/// Deletes qgroup `qgroupid` (`BTRFS_IOC_QGROUP_CREATE` with `create = 0`).
/// A level-0 qgroup outlives its subvolume unless deleted; the kernel
/// refuses with `EBUSY` while the subvolume's blocks are not yet freed, and
/// answers `ENOENT` if it already deleted it itself (Linux 6.9+ does once a
/// deleted subvolume is fully dropped).
pub fn destroy_qgroup(fd: impl AsFd, qgroupid: u64) -> Result<()> {
    let args = QgroupCreateArgs {
        create: 0,
        qgroupid,
    };
    // SAFETY: QGROUP_CREATE reads one `btrfs_ioctl_qgroup_create_args`
    // (size asserted above) through the pointer into the `Setter`.
    unsafe { ioctl(fd, Setter::<QGROUP_CREATE, QgroupCreateArgs>::new(args)) }
}

/// Whether subvolume `id` still has a root item: true from its creation
/// until the cleaner has freed all its blocks after it was deleted.
pub fn root_item_exists(fd: impl AsFd, id: u64) -> Result<bool> {
    let mut found = false;
    let min = Key {
        objectid: id,
        item_type: key::ROOT_ITEM,
        offset: 0,
    };
    let max = Key {
        offset: u64::MAX,
        ..min
    };
    tree_search(fd, &Search::range(tree::ROOT, min, max), |_| found = true)?;
    Ok(found)
}

/// A subvolume nested directly inside another, from its `ROOT_REF`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildSubvolume {
    /// Its id.
    pub id: u64,
    /// The directory inode (in the parent subvolume) holding its entry.
    pub dirid: u64,
    /// Its entry's name in that directory.
    pub name: Vec<u8>,
}

/// The subvolumes nested directly in subvolume `parent`.
pub fn child_subvolumes(fd: impl AsFd, parent: u64) -> Result<Vec<ChildSubvolume>> {
    let min = Key {
        objectid: parent,
        item_type: key::ROOT_REF,
        offset: 0,
    };
    let max = Key {
        offset: u64::MAX,
        ..min
    };
    let mut out = Vec::new();
    let mut bad = false;
    tree_search(fd, &Search::range(tree::ROOT, min, max), |item| {
        // struct btrfs_root_ref (packed, little-endian): dirid u64,
        // sequence u64, name_len u16, then the name.
        let d = item.data;
        if d.len() < 18 {
            bad = true;
            return;
        }
        let dirid = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
        let name_len = usize::from(u16::from_le_bytes([d[16], d[17]]));
        match d.get(18..18 + name_len) {
            Some(name) => out.push(ChildSubvolume {
                id: item.key.offset,
                dirid,
                name: name.to_vec(),
            }),
            None => bad = true,
        }
    })?;
    if bad {
        return Err(Errno::IO);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys advance like btrfs-progs does between search calls: offset,
    /// then type, then object id, and nothing follows the largest key.
    #[test]
    fn key_next() {
        let k = Key {
            objectid: 5,
            item_type: 1,
            offset: 7,
        };
        assert_eq!(k.next().unwrap().offset, 8);
        let k = Key {
            offset: u64::MAX,
            ..k
        };
        assert_eq!(
            k.next(),
            Some(Key {
                objectid: 5,
                item_type: 2,
                offset: 0
            })
        );
        let k = Key {
            item_type: u8::MAX,
            ..k
        };
        assert_eq!(
            k.next(),
            Some(Key {
                objectid: 6,
                item_type: 0,
                offset: 0
            })
        );
        assert_eq!(Key::MAX.next(), None);
        assert!(Key::MIN < Key::MAX);
    }

    /// Outside btrfs the ioctls fail cleanly (ENOTTY from procfs and the
    /// null device) instead of doing anything.
    #[test]
    fn not_btrfs() {
        let proc = std::fs::File::open("/proc").unwrap();
        assert_eq!(
            create_subvolume(&proc, b"drivers-sys-test"),
            Err(Errno::NOTTY)
        );
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(subvolume_info(&null), Err(Errno::NOTTY));
        assert_eq!(subvolume_flags(&null), Err(Errno::NOTTY));
    }
}
