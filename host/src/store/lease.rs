//! Leases: operations in progress, owned by a live process.
//!
//! A lease names its process by pid *and* start time (field 22 of
//! `/proc/<pid>/stat`), so a pid recycled after a crash does not keep a dead
//! operation's leftovers alive.

use rusqlite::{OptionalExtension, params};

use super::{Store, now_ns, random_hex};
use crate::content::BLOB_REF;
use crate::error::{IoContext, Result};

/// This process's start time in clock ticks since boot, or `None` when
/// `pid` does not exist.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or
    // ')' itself: fields are counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Opens a lease for the current process.
pub(super) fn create(store: &mut Store) -> Result<String> {
    let id = random_hex(8);
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or(0);
    store.write(|tx| {
        tx.execute(
            "INSERT INTO leases (id, pid, start_time, created) VALUES (?1, ?2, ?3, ?4)",
            params![id, pid, start as i64, now_ns()],
        )?;
        Ok(())
    })?;
    Ok(id)
}

/// Ends a lease whose operation succeeded: what it created is durable.
pub(super) fn release(store: &mut Store, lease: &str) -> Result<()> {
    store.write(|tx| {
        tx.execute("DELETE FROM leases WHERE id = ?1", [lease])?;
        Ok(())
    })?;
    remove_staging(store, lease)
}

/// Deletes what the operation staged and did not move into place.
fn remove_staging(store: &Store, lease: &str) -> Result<()> {
    let dir = store
        .state_dir()
        .join(crate::content::STAGING_DIR)
        .join(lease);
    drivers_fs::remove_tree(&dir).ctx("remove staging directory", &dir)
}

/// Whether the process owning `lease` is still running. A lease that no
/// longer exists is not alive.
pub(super) fn is_alive(store: &Store, lease: &str) -> Result<bool> {
    let row: Option<(u32, i64)> = store
        .conn()
        .query_row(
            "SELECT pid, start_time FROM leases WHERE id = ?1",
            [lease],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.is_some_and(|(pid, start)| {
        start_time(pid).is_some_and(|s| s as i64 == start || start == 0)
    }))
}

/// Leases whose process is gone.
pub(super) fn dead(store: &Store) -> Result<Vec<String>> {
    let mut q = store
        .conn()
        .prepare("SELECT id, pid, start_time FROM leases")?;
    let rows = q.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, u32>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, pid, start) = row?;
        let alive = start_time(pid).is_some_and(|s| s as i64 == start || start == 0);
        if !alive {
            out.push(id);
        }
    }
    Ok(out)
}

/// Ends a lease whose operation failed or whose process died: every
/// snapshot it created that nothing else needs is deleted, newest first
/// (children before parents), data included.
pub(super) fn discard(store: &mut Store, lease: &str) -> Result<()> {
    let (ids, files) = store.write(|tx| {
        let created: Vec<String> = {
            let mut q = tx.prepare(
                "SELECT key FROM lease_refs WHERE lease = ?1 AND created = 1 ORDER BY seq DESC",
            )?;
            q.query_map([lease], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        tx.execute("DELETE FROM leases WHERE id = ?1", [lease])?;
        let mut ids = Vec::new();
        let mut blobs = Vec::new();
        for key in created {
            if let Some(d) = key.strip_prefix(BLOB_REF) {
                blobs.push(d.to_owned());
                continue;
            }
            if let Some(id) = discardable(tx, &key)? {
                tx.execute("DELETE FROM snapshots WHERE key = ?1", [&key])?;
                tx.execute(
                    "INSERT OR REPLACE INTO removals (id, lease) VALUES (?1, NULL)",
                    [&id],
                )?;
                ids.push(id);
            }
        }
        // Removals this lease had started are now nobody's: finish them.
        tx.execute("UPDATE removals SET lease = NULL WHERE lease = ?1", [lease])?;
        let files = store.drop_unused_blobs(tx, &blobs)?;
        Ok((ids, files))
    })?;
    for id in ids {
        store.finish_removal(&id)?;
    }
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    remove_staging(store, lease)
}

/// The backend id of snapshot `key` if nothing but its creator needs it:
/// no child, no image, no other lease. A container row does not count: a
/// container's snapshot is created with it and goes with it.
fn discardable(tx: &rusqlite::Transaction<'_>, key: &str) -> Result<Option<String>> {
    let id: Option<String> = tx
        .query_row("SELECT id FROM snapshots WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?;
    let Some(id) = id else { return Ok(None) };
    let used: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM snapshots WHERE parent = ?1)
             OR EXISTS (SELECT 1 FROM images WHERE top_chain_id = ?1)
             OR EXISTS (SELECT 1 FROM image_layers WHERE chain_id = ?1)
             OR EXISTS (SELECT 1 FROM lease_refs WHERE key = ?1)",
        [key],
        |r| r.get(0),
    )?;
    Ok((!used).then_some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own start time is readable, and a pid that cannot exist has none.
    #[test]
    fn start_time_of_self_and_of_nobody() {
        assert!(start_time(std::process::id()).is_some());
        assert!(start_time(u32::MAX).is_none());
    }
}
