//! The metadata store of one backend: names, parentage, references, leases.
//!
//! One SQLite database per backend (`<root>/<backend>/metadata.db`) in WAL
//! mode, so two `drivers` processes never corrupt it: each state change is one
//! `BEGIN IMMEDIATE` transaction, and a second writer waits (up to
//! [`BUSY_TIMEOUT`]) instead of failing.
//!
//! Crash safety rests on two rules, checked by [`Store::recover`] at every
//! open:
//! - a row that precedes data on disk is written under a *lease* owned by the
//!   running process; if that process dies, what the lease created and nobody
//!   else references is discarded;
//! - a deletion records the backend id in `removals` in the same transaction
//!   that deletes the row, and the entry goes only once the data is gone.

mod filter;
mod lease;
pub mod snapshots;

use std::path::{Path, PathBuf};
use std::time::Duration;

use drivers_api::{Driver, LayerId};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{IoContext, Result};
pub use snapshots::{Info, Kind};

/// How long a writer waits for another process's transaction.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = include_str!("schema.sql");

/// One backend's metadata plus the backend itself.
pub struct Store {
    conn: Connection,
    driver: Box<dyn Driver>,
    state_dir: PathBuf,
    /// The lease of the operation in progress, if any (see [`Store::op`]).
    lease: Option<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.driver.name())
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// A fresh random lowercase hex string of `bytes * 2` characters.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let mut filled = 0;
    while filled < bytes {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            // getrandom(2) cannot fail on Linux ≥ 3.17 once the pool is
            // initialised; fall back to the clock rather than abort.
            Err(_) => {
                let t = now_ns().to_le_bytes();
                for (i, b) in buf[filled..].iter_mut().enumerate() {
                    *b = t[i % t.len()] ^ (i as u8);
                }
                filled = bytes;
            }
        }
    }
    hex::encode(buf)
}

impl Store {
    /// Opens (creating if needed) the store under `state_dir` for `driver`,
    /// then finishes or undoes whatever an interrupted process left.
    pub fn open(state_dir: &Path, driver: Box<dyn Driver>) -> Result<Store> {
        std::fs::create_dir_all(state_dir).ctx("create state directory", state_dir)?;
        let db = state_dir.join("metadata.db");
        let conn = Connection::open(&db)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        conn.pragma_update(None, "synchronous", "normal")?;
        conn.pragma_update(None, "foreign_keys", "on")?;
        let mut store = Store {
            conn,
            driver,
            state_dir: state_dir.to_owned(),
            lease: None,
        };
        store.migrate()?;
        store.recover()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        match version {
            0 => {
                tx.execute_batch(SCHEMA)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            SCHEMA_VERSION => {}
            v => {
                return Err(crate::Error::Precondition(format!(
                    "metadata store {} has schema version {v}; this drivers understands {SCHEMA_VERSION}",
                    self.state_dir.join("metadata.db").display()
                )));
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The backend.
    pub fn driver(&self) -> &dyn Driver {
        self.driver.as_ref()
    }

    /// `<root>/<backend>`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// A writable directory on the filesystem holding the layers' data:
    /// the backend's own filesystem where it has one, else the state
    /// directory.
    pub fn data_dir(&self) -> PathBuf {
        self.driver()
            .data_dir()
            .unwrap_or_else(|| self.state_dir.clone())
    }

    /// The lease of the operation in progress, if any.
    pub(crate) fn lease_id(&self) -> Option<&str> {
        self.lease.as_deref()
    }

    /// Whether `lease` exists and its process runs.
    pub(crate) fn lease_is_live(&self, lease: &str) -> Result<bool> {
        lease::is_alive(self, lease)
    }

    /// The database connection, for the modules built on the store.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction: committed if `f`
    /// succeeds, rolled back otherwise. Takes `&self` so `f` can use the
    /// store's other `&self` methods; a nested call fails at run time (SQLite
    /// refuses a nested BEGIN), which no caller does.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` as one operation under a lease: rows it creates through
    /// [`Store::note_created`] become durable if `f` succeeds and are
    /// discarded (data included) if it fails, or if the process dies
    /// meanwhile. Nested calls join the outer operation.
    pub fn op<T>(&mut self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        if self.lease.is_some() {
            return f(self);
        }
        let lease = lease::create(self)?;
        self.lease = Some(lease.clone());
        let out = f(self);
        self.lease = None;
        match out {
            Ok(v) => {
                lease::release(self, &lease)?;
                Ok(v)
            }
            Err(e) => {
                if let Err(undo) = lease::discard(self, &lease) {
                    tracing::warn!(error = %undo, lease, "could not undo a failed operation; the next command will retry");
                }
                Err(e)
            }
        }
    }

    /// Records that the current operation created snapshot `key` (inside the
    /// caller's transaction), so it is discarded if the operation fails.
    pub(crate) fn note_created(&self, tx: &rusqlite::Transaction<'_>, key: &str) -> Result<()> {
        self.note_ref(tx, key, true)
    }

    /// Records that the current operation relies on snapshot `key`, which
    /// protects it from removal until the operation ends.
    pub(crate) fn note_ref(
        &self,
        tx: &rusqlite::Transaction<'_>,
        key: &str,
        created: bool,
    ) -> Result<()> {
        if let Some(lease) = &self.lease {
            tx.execute(
                "INSERT INTO lease_refs (lease, key, created) VALUES (?1, ?2, ?3)",
                params![lease, key, created as i64],
            )?;
        }
        Ok(())
    }

    /// Records in `tx` that backend layer `id` is to be deleted; the data
    /// goes in [`Store::finish_removal`] after the transaction commits.
    pub(crate) fn schedule_removal(&self, tx: &rusqlite::Transaction<'_>, id: &str) -> Result<()> {
        tx.execute(
            "INSERT OR REPLACE INTO removals (id, lease) VALUES (?1, ?2)",
            params![id, self.lease],
        )?;
        Ok(())
    }

    /// Deletes the data of a layer scheduled with [`Store::schedule_removal`].
    pub(crate) fn finish_removal(&mut self, id: &str) -> Result<()> {
        let layer = LayerId::new(id)?;
        self.driver.remove(&layer)?;
        self.conn
            .execute("DELETE FROM removals WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Finishes or undoes what interrupted processes left: discards what dead
    /// leases created, deletes the data of pending removals, and, if anything
    /// was found, lets the backend delete data no row accounts for. Cheap
    /// when there is nothing to do: two queries.
    pub fn recover(&mut self) -> Result<()> {
        let dead = lease::dead(self)?;
        if !dead.is_empty() {
            // A dead process may have left a mount of a layer it created
            // (mounted, not yet recorded). Backends are promised that no
            // mount uses a layer they remove, and btrfs cannot free a
            // deleted subvolume that is still mounted: unmount first.
            crate::mounts::sweep(self)?;
        }
        for l in &dead {
            tracing::info!(lease = %l, "undoing an interrupted operation");
            lease::discard(self, l)?;
        }
        let mut orphans: Vec<String> = {
            let mut q = self.conn.prepare("SELECT id, lease FROM removals")?;
            let rows = q.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })?;
            let mut ids = Vec::new();
            for row in rows {
                let (id, owner) = row?;
                if owner.is_none_or(|o| !lease::is_alive(self, &o).unwrap_or(false)) {
                    ids.push(id);
                }
            }
            ids
        };
        orphans.sort();
        let found = !dead.is_empty() || !orphans.is_empty();
        for id in orphans {
            self.finish_removal(&id)?;
        }
        if found {
            self.sweep()?;
        }
        Ok(())
    }

    /// Lets the backend delete data that no row accounts for. Each id is
    /// checked against the database when the backend asks, after it has seen
    /// the data, so a layer another process is creating right now (row first,
    /// data second) is never mistaken for an orphan.
    pub fn sweep(&mut self) -> Result<drivers_api::Usage> {
        let conn = &self.conn;
        let live = |id: &LayerId| -> bool {
            let q = "SELECT 1 FROM snapshots WHERE id = ?1 UNION ALL SELECT 1 FROM removals WHERE id = ?1";
            // On a database error keep the data: deleting is the irreversible choice.
            conn.query_row(q, [id.as_str()], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
                .unwrap_or(true)
        };
        let freed = self.driver.cleanup(&live)?;
        crate::mounts::sweep(self)?;
        self.sweep_content()?;
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random ids are lowercase hex of the requested length and differ.
    #[test]
    fn random_hex_shape() {
        let a = random_hex(8);
        assert_eq!(a.len(), 16);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, random_hex(8));
    }
}
