//! Subvolume trees: deleting a subvolume with everything nested in it, and
//! the qgroups that would otherwise outlive them.
//!
//! A container may create subvolumes inside its own (moby's
//! `TestBtrfsSubvolDelete`), and those inside theirs. btrfs refuses to
//! delete a subvolume that still holds others (`ENOTEMPTY`) and to unlink
//! anything from a read-only one (`EROFS`), so deletion goes depth first,
//! finding children through the root tree's `ROOT_REF` items and clearing
//! the read-only flag of a subvolume before emptying it.
//!
//! With quota on, every subvolume has a level-0 qgroup `0/<id>` that the
//! kernel keeps after the subvolume is gone (until Linux 6.9, and after it
//! whenever the qgroup is not yet empty; Docker leaks them). The kernel
//! only lets it go once the cleaner thread has freed the subvolume's blocks,
//! so deleting it means: commit (which wakes the cleaner), wait for the
//! root item to disappear, then delete the qgroup. A marker file
//! `qgroup-<id>` in the staging directory is written before the subvolume
//! is deleted and removed with the qgroup, so a crash in between leaves a
//! record for `cleanup` instead of a leak.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drivers_api::{IoContext, Result};
use drivers_sys::btrfs::{self, FIRST_FREE_OBJECTID, SUBVOL_RDONLY};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// How long a removal waits for the cleaner to free deleted subvolumes
/// before it leaves their qgroups to a later `cleanup`. Small subvolumes
/// take milliseconds; this bounds a removal of a huge one.
const QGROUP_WAIT: Duration = Duration::from_secs(30);

/// Between two looks at whether the cleaner is done.
const POLL: Duration = Duration::from_millis(5);

/// Attempts at deleting a qgroup the kernel still finds busy (its usage is
/// accounted at commit, one commit after the blocks are freed).
const QGROUP_ATTEMPTS: usize = 20;

/// Prefix of the qgroup marker files in the staging directory.
pub(crate) const QGROUP_MARKER: &str = "qgroup-";

/// Opens a directory (a subvolume root or a plain directory) for ioctls.
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx("open", path)
}

/// Deletes subvolumes and their qgroups; `markers` is the staging
/// directory, `quota` whether qgroups exist at all.
pub(crate) struct Remover<'a> {
    pub markers: &'a Path,
    pub quota: bool,
}

impl Remover<'_> {
    /// Deletes `dir/name` — a subvolume with everything nested in it, or a
    /// plain directory tree — and the qgroups of the subvolumes deleted.
    /// A missing `name` is not an error.
    pub(crate) fn remove(&self, dir: &Path, name: &str) -> Result<()> {
        let path = dir.join(name);
        let st = match rustix::fs::lstat(&path) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e).ctx("inspect", &path),
        };
        if st.st_ino != FIRST_FREE_OBJECTID
            || drivers_fs::file_type(&st) != rustix::fs::FileType::Directory
        {
            // Not a subvolume root: a plain leftover.
            return drivers_fs::remove_tree(&path).ctx("remove", &path);
        }
        let mut ids = Vec::new();
        let r = self.destroy_tree(dir, name.as_bytes(), &mut ids);
        let dropped = if self.quota && !ids.is_empty() {
            self.drop_qgroups(&path, &ids)
        } else {
            Ok(())
        };
        r.and(dropped)
    }

    /// Deletes subvolume `dir/name` after the subvolumes nested in it,
    /// pushing the ids deleted (deepest first) to `ids`. Names are bytes: a
    /// container may name its subvolumes anything.
    fn destroy_tree(&self, dir: &Path, name: &[u8], ids: &mut Vec<u64>) -> Result<()> {
        let path = dir.join(OsStr::from_bytes(name));
        let fd = open_dir(&path)?;
        let info = btrfs::subvolume_info(&fd).ctx("inspect subvolume", &path)?;
        let children = btrfs::child_subvolumes(&fd, info.id).ctx("list subvolumes in", &path)?;
        if !children.is_empty() {
            if info.read_only {
                // Emptying it unlinks entries from it.
                let flags = btrfs::subvolume_flags(&fd).ctx("read the flags of", &path)?;
                btrfs::set_subvolume_flags(&fd, flags & !SUBVOL_RDONLY)
                    .ctx("make writable for removal", &path)?;
            }
            for child in children {
                let rel = btrfs::ino_lookup(&fd, info.id, child.dirid)
                    .ctx("find a nested subvolume in", &path)?;
                self.destroy_tree(&path.join(OsStr::from_bytes(&rel)), &child.name, ids)?;
            }
        }
        drop(fd);
        self.mark(info.id)?;
        let parent = open_dir(dir)?;
        btrfs::destroy_subvolume(&parent, name).ctx("delete subvolume", &path)?;
        ids.push(info.id);
        Ok(())
    }

    /// Records that qgroup `0/id` must go, before its subvolume is deleted.
    fn mark(&self, id: u64) -> Result<()> {
        if !self.quota {
            return Ok(());
        }
        let m = self.markers.join(format!("{QGROUP_MARKER}{id}"));
        std::fs::write(&m, b"").ctx("write", &m)
    }

    /// Waits until the cleaner has freed subvolumes `ids`, deletes their
    /// qgroups and markers. `fs` is any path on the filesystem that still
    /// exists (a deleted subvolume's path is resolved to its directory).
    pub(crate) fn drop_qgroups(&self, fs: &Path, ids: &[u64]) -> Result<()> {
        let anchor = fs
            .ancestors()
            .find_map(|p| open_dir(p).ok())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
            .ctx("open the filesystem of", fs)?;
        let fd = anchor.as_fd();
        // Commits, and wakes the cleaner that frees deleted subvolumes.
        btrfs::sync(fd).ctx("sync the filesystem of", fs)?;
        let deadline = Instant::now() + QGROUP_WAIT;
        for &id in ids {
            if !self.wait_dropped(fd, id, deadline)? {
                tracing::warn!(
                    subvolume = id,
                    "the cleaner has not freed a deleted subvolume yet; cleanup will delete its qgroup"
                );
                continue;
            }
            self.destroy_qgroup(fd, id)?;
        }
        Ok(())
    }

    /// Whether subvolume `id`'s root item is gone by `deadline`.
    fn wait_dropped(&self, fd: BorrowedFd<'_>, id: u64, deadline: Instant) -> Result<bool> {
        let mut last_sync = Instant::now();
        loop {
            if !btrfs::root_item_exists(fd, id).ctx("look up subvolume", format!("id {id}"))? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            // The cleaner sleeps between transactions; poke it now and then.
            if last_sync.elapsed() > Duration::from_millis(500) {
                btrfs::sync(fd).ctx("sync", format!("subvolume id {id}"))?;
                last_sync = Instant::now();
            }
            std::thread::sleep(POLL);
        }
    }

    /// Deletes qgroup `0/id` (gone already is fine) and its marker.
    fn destroy_qgroup(&self, fd: BorrowedFd<'_>, id: u64) -> Result<()> {
        for attempt in 0..QGROUP_ATTEMPTS {
            match btrfs::destroy_qgroup(fd, id) {
                Ok(()) | Err(Errno::NOENT) => break,
                // Quota was switched off meanwhile: no qgroups at all.
                Err(Errno::NOTCONN) => break,
                Err(Errno::BUSY) if attempt + 1 < QGROUP_ATTEMPTS => {
                    // Its usage drops to zero at the next commit.
                    btrfs::sync(fd).ctx("sync", format!("qgroup 0/{id}"))?;
                    std::thread::sleep(POLL);
                }
                Err(e) => return Err(e).ctx("delete qgroup", format!("0/{id}")),
            }
        }
        let m = self.markers.join(format!("{QGROUP_MARKER}{id}"));
        match std::fs::remove_file(&m) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("remove", m),
        }
    }
}

/// The qgroup ids the markers in `dir` record.
pub(crate) fn marked_qgroups(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).ctx("read directory", dir)? {
        let e = e.ctx("read directory", dir)?;
        let name = e.file_name();
        if let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix(QGROUP_MARKER))
            .and_then(|n| n.parse().ok())
        {
            out.push((id, e.path()));
        }
    }
    out.sort();
    Ok(out)
}
