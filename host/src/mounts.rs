//! Reference-counted mounts of snapshots, shared by every `drivers` process.
//!
//! Each (snapshot, caller) pair holds at most one reference, so repeating
//! `container mount` as the same caller is idempotent; the filesystem is
//! mounted by the first reference and unmounted when the last one goes. The
//! mount itself happens inside the write transaction that records it, so two
//! processes never mount the same target twice or unmount under each other.

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use crate::error::{IoContext, Result};
use crate::store::Store;

/// Directory under the backend's state dir where mounts live.
pub const MOUNTS_DIR: &str = "mounts";

/// Mounts snapshot `key` at `target` for `caller` (or adds the caller's
/// reference to the existing mount) and returns where it is mounted.
pub fn acquire(store: &mut Store, key: &str, caller: &str, target: &Path) -> Result<PathBuf> {
    let plan = store.mounts(key)?;
    store.write(|tx| {
        let existing: Option<String> = tx
            .query_row(
                "SELECT target FROM mounts WHERE key = ?1 LIMIT 1",
                [key],
                |r| r.get(0),
            )
            .optional()?;
        let at = match existing {
            Some(t) if drivers_mount::is_mountpoint(Path::new(&t))? => PathBuf::from(t),
            stale => {
                if stale.is_some() {
                    // Recorded but not mounted (e.g. after a reboot): start over.
                    tx.execute("DELETE FROM mounts WHERE key = ?1", [key])?;
                }
                std::fs::create_dir_all(target).ctx("create mount point", target)?;
                drivers_mount::mount(&plan, target)?;
                target.to_owned()
            }
        };
        tx.execute(
            "INSERT OR IGNORE INTO mounts (key, caller, target) VALUES (?1, ?2, ?3)",
            params![key, caller, at.to_string_lossy()],
        )?;
        tracing::debug!(key, caller, target = %at.display(), "mount reference taken");
        Ok(at)
    })
}

/// Drops `caller`'s reference to the mount of `key` (all references with
/// `force`); unmounts when none remain. Returns whether it unmounted.
pub fn release(store: &mut Store, key: &str, caller: &str, force: bool) -> Result<bool> {
    store.write(|tx| {
        let target: Option<String> = tx
            .query_row(
                "SELECT target FROM mounts WHERE key = ?1 LIMIT 1",
                [key],
                |r| r.get(0),
            )
            .optional()?;
        let Some(target) = target else {
            return Ok(false);
        };
        if force {
            tx.execute("DELETE FROM mounts WHERE key = ?1", [key])?;
        } else {
            tx.execute(
                "DELETE FROM mounts WHERE key = ?1 AND caller = ?2",
                params![key, caller],
            )?;
        }
        let left: i64 = tx.query_row("SELECT COUNT(*) FROM mounts WHERE key = ?1", [key], |r| {
            r.get(0)
        })?;
        if left > 0 {
            return Ok(false);
        }
        let target = PathBuf::from(target);
        drivers_mount::unmount(&target)?;
        // The directory is ours and empty once unmounted; a failure to remove
        // it leaves only an empty directory behind.
        let _ = std::fs::remove_dir(&target);
        Ok(true)
    })
}

/// Who holds the mount of `key`, and where it is.
pub fn holders(store: &Store, key: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut q = store
        .conn()
        .prepare("SELECT caller, target FROM mounts WHERE key = ?1 ORDER BY caller")?;
    let rows = q.query_map([key], |r| {
        Ok((
            r.get::<_, String>(0)?,
            PathBuf::from(r.get::<_, String>(1)?),
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Forgets recorded mounts that are no longer mounted (after a reboot) and
/// unmounts mounts under the state directory that no row accounts for
/// (left by a process killed between mounting and recording).
pub fn sweep(store: &mut Store) -> Result<()> {
    let base = store.state_dir().join(MOUNTS_DIR);
    store.write(|tx| {
        let recorded: Vec<String> = {
            let mut q = tx.prepare("SELECT DISTINCT target FROM mounts")?;
            q.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        for t in &recorded {
            if !drivers_mount::is_mountpoint(Path::new(t))? {
                tracing::info!(target = %t, "forgetting a mount that is gone");
                tx.execute("DELETE FROM mounts WHERE target = ?1", [t])?;
            }
        }
        for m in drivers_mount::mounts_under(&base)? {
            let known = recorded.iter().any(|t| Path::new(t) == m);
            if !known {
                tracing::info!(target = %m.display(), "unmounting a stale mount");
                drivers_mount::unmount(&m)?;
                let _ = std::fs::remove_dir(&m);
            }
        }
        Ok(())
    })
}
