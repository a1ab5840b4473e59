//! What a layer changed, from btrfs's own records instead of a tree walk
//! (the `btrfs subvolume find-new` technique).
//!
//! A snapshot starts out sharing every tree block with its source. Any
//! later change to an inode — data, size, times, mode, owner, xattrs,
//! links, directory entries — rewrites the inode's item (its ctime at
//! least), stamping the item's `transid` with the writing transaction, and
//! copy-on-write gives every rewritten leaf, and the nodes above it, that
//! generation too. So a `TREE_SEARCH_V2` of the layer's tree with
//! `min_transid` just past the snapshot's creation (`otransid`) visits only
//! the rewritten part of the tree, and among the inode items found there,
//! those whose own `transid` is newer than the snapshot are exactly the
//! inodes the layer touched since (leaves also carry unchanged neighbours;
//! their older `transid` tells them apart). Deleted inodes leave no item,
//! but their directories changed.
//!
//! Two details keep that set honest:
//! - changes still in memory (delayed inode items, dirty pages) are not in
//!   the tree yet, so callers `syncfs` first;
//! - the diff walk must be able to reach every changed inode, so the set is
//!   closed upwards: each changed inode's parent directories (from its
//!   `INODE_REF`/`INODE_EXTREF` items, all of them, for hardlinks) are added,
//!   up to the subvolume root.
//!
//! Cost: one search pass over the changed leaves (plus the internal nodes
//! above them), and one small search per changed inode whose parents the
//! pass did not fully show (hardlinked files whose refs straddle a leaf,
//! and ancestors in unchanged leaves). Independent of the size of the
//! unchanged part of the layer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::BorrowedFd;

use drivers_api::Usage;
use drivers_sys::btrfs::{self, FIRST_FREE_OBJECTID, Item, Key, LAST_FREE_OBJECTID, Search, key};

/// Offsets in `struct btrfs_inode_item` (`linux/btrfs_tree.h`, 160 bytes,
/// little-endian on disk).
mod inode_item {
    pub const LEN: usize = 160;
    pub const TRANSID: usize = 8;
    pub const NLINK: usize = 40;
    pub const MODE: usize = 52;
}

/// Offsets in `struct btrfs_file_extent_item` (53 bytes; inline data starts
/// at `disk_bytenr`).
mod file_extent {
    pub const GENERATION: usize = 0;
    pub const TYPE: usize = 20;
    pub const DISK_BYTENR: usize = 21;
    pub const DISK_NUM_BYTES: usize = 29;
    pub const LEN: usize = 53;
    pub const INLINE: u8 = 0;
}

/// `struct btrfs_inode_extref` header: parent u64, index u64, name_len u16.
const EXTREF_HEAD: usize = 18;

/// `S_IFMT` and `S_IFDIR`.
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;

fn le_u64(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

fn le_u32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

/// Whether `objectid` names an inode (not an orphan record or another
/// internal object of the tree).
fn is_inode(objectid: u64) -> bool {
    (FIRST_FREE_OBJECTID..=LAST_FREE_OBJECTID).contains(&objectid)
}

/// The parent directory inodes an `INODE_REF` or `INODE_EXTREF` item names.
fn ref_parents(item: &Item<'_>, out: &mut Vec<u64>) {
    match item.key.item_type {
        // Keyed (inode, INODE_REF, parent); the item packs every name the
        // inode has in that parent.
        key::INODE_REF => out.push(item.key.offset),
        // Keyed by name hash; each packed entry names its parent.
        key::INODE_EXTREF => {
            let d = item.data;
            let mut at = 0;
            while let (Some(parent), Some(len)) = (le_u64(d, at), d.get(at + 16..at + 18)) {
                out.push(parent);
                at += EXTREF_HEAD + usize::from(u16::from_le_bytes([len[0], len[1]]));
            }
        }
        _ => {}
    }
}

/// Every parent directory of inode `ino`, from all its ref items.
fn all_parents(fd: BorrowedFd<'_>, ino: u64) -> rustix::io::Result<Vec<u64>> {
    let min = Key {
        objectid: ino,
        item_type: key::INODE_REF,
        offset: 0,
    };
    let max = Key {
        objectid: ino,
        item_type: key::INODE_EXTREF,
        offset: u64::MAX,
    };
    let mut out = Vec::new();
    btrfs::tree_search(fd, &Search::range(0, min, max), |item| {
        ref_parents(item, &mut out);
    })?;
    Ok(out)
}

/// The inodes of the subvolume open as `fd` that may differ from the
/// subvolume it was snapshotted from in transaction `otransid`, closed
/// upwards (see the module doc). Call after `syncfs`.
///
/// # Errors
///
/// The search's `Errno` (e.g. `EPERM` without `CAP_SYS_ADMIN`).
pub(crate) fn changed_inodes(
    fd: BorrowedFd<'_>,
    otransid: u64,
) -> rustix::io::Result<BTreeSet<u64>> {
    let search = Search {
        tree_id: 0,
        min: Key::MIN,
        max: Key::MAX,
        // The snapshot was made in the commit of `otransid`, and nothing
        // could write to it before that commit ended.
        min_transid: otransid + 1,
    };
    let mut changed = BTreeSet::new();
    // Parents seen in the changed leaves, and inodes whose refs are all
    // known to be among them: a directory has one parent, a file with one
    // link one name.
    let mut seen_parents: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut single_parent: HashSet<u64> = HashSet::new();
    btrfs::tree_search(fd, &search, |item| {
        let ino = item.key.objectid;
        if !is_inode(ino) {
            return;
        }
        match item.key.item_type {
            key::INODE_ITEM => {
                let d = item.data;
                if le_u64(d, inode_item::TRANSID).is_none_or(|t| t > otransid) {
                    changed.insert(ino);
                }
                let is_dir = le_u32(d, inode_item::MODE).is_some_and(|m| m & S_IFMT == S_IFDIR);
                if is_dir || le_u32(d, inode_item::NLINK) == Some(1) {
                    single_parent.insert(ino);
                }
            }
            key::INODE_REF | key::INODE_EXTREF => {
                ref_parents(item, seen_parents.entry(ino).or_default());
            }
            _ => {}
        }
    })?;
    let mut todo: Vec<u64> = changed.iter().copied().collect();
    while let Some(ino) = todo.pop() {
        if ino == FIRST_FREE_OBJECTID {
            continue; // the subvolume root
        }
        let parents = match seen_parents.remove(&ino) {
            Some(p) if !p.is_empty() && single_parent.contains(&ino) => p,
            _ => all_parents(fd, ino)?,
        };
        for p in parents {
            if is_inode(p) && changed.insert(p) {
                todo.push(p);
            }
        }
    }
    Ok(changed)
}

/// Space a layer uses on its own: inodes whose item was written after
/// transaction `since` (created or changed by this layer, which then holds
/// its own copy of them) and the data extents written after it, each
/// extent once (`disk_num_bytes`; inline data by its length). `since` is
/// the snapshot's `otransid`, or 0 for a subvolume that is not a snapshot
/// (all of it is its own). Call after `syncfs`.
///
/// # Errors
///
/// The search's `Errno`.
pub(crate) fn usage(fd: BorrowedFd<'_>, since: u64) -> rustix::io::Result<Usage> {
    let search = Search {
        tree_id: 0,
        min: Key::MIN,
        max: Key::MAX,
        min_transid: if since == 0 { 0 } else { since + 1 },
    };
    let mut usage = Usage::default();
    let mut extents = HashSet::new();
    btrfs::tree_search(fd, &search, |item| {
        let d = item.data;
        match item.key.item_type {
            key::INODE_ITEM
                if is_inode(item.key.objectid)
                    && d.len() >= inode_item::LEN
                    && le_u64(d, inode_item::TRANSID).is_some_and(|t| t > since) =>
            {
                usage.inodes += 1;
            }
            key::EXTENT_DATA if d.len() > file_extent::TYPE => {
                if le_u64(d, file_extent::GENERATION).is_none_or(|g| g <= since) {
                    return;
                }
                if d[file_extent::TYPE] == file_extent::INLINE {
                    usage.bytes += (d.len() - file_extent::DISK_BYTENR) as u64;
                } else if d.len() >= file_extent::LEN {
                    let start = le_u64(d, file_extent::DISK_BYTENR).unwrap_or(0);
                    // A hole has no extent; a shared extent counts once.
                    if start != 0 && extents.insert(start) {
                        usage.bytes += le_u64(d, file_extent::DISK_NUM_BYTES).unwrap_or(0);
                    }
                }
            }
            _ => {}
        }
    })?;
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(item_type: u8, offset: u64, data: &[u8]) -> Item<'_> {
        Item {
            key: Key {
                objectid: 300,
                item_type,
                offset,
            },
            transid: 9,
            data,
        }
    }

    /// An INODE_REF names its parent in the key; an INODE_EXTREF packs
    /// (parent, index, name) entries, each naming a parent.
    #[test]
    fn ref_items_name_parents() {
        let mut out = Vec::new();
        ref_parents(
            &item(key::INODE_REF, 257, b"\x05\0\0\0\0\0\0\0\x01\0a"),
            &mut out,
        );
        assert_eq!(out, [257]);
        let mut ext = Vec::new();
        for (parent, name) in [(258u64, &b"xy"[..]), (4000, b"z")] {
            ext.extend_from_slice(&parent.to_le_bytes());
            ext.extend_from_slice(&7u64.to_le_bytes());
            ext.extend_from_slice(&(name.len() as u16).to_le_bytes());
            ext.extend_from_slice(name);
        }
        let mut out = Vec::new();
        ref_parents(&item(key::INODE_EXTREF, 0xabcd, &ext), &mut out);
        assert_eq!(out, [258, 4000]);
        // A truncated entry ends the list instead of reading past it.
        let mut out = Vec::new();
        ref_parents(&item(key::INODE_EXTREF, 0, &ext[..10]), &mut out);
        assert!(out.is_empty());
    }

    /// Object ids below the first inode (internal) and the orphan record's
    /// (-5) are not inodes.
    #[test]
    fn inode_ids() {
        assert!(is_inode(256) && is_inode(1 << 40));
        assert!(!is_inode(5) && !is_inode(u64::MAX - 4));
    }
}
