//! Snapshots in containerd's sense, over any backend: prepare (writable),
//! view (read-only), commit (freeze under a name), stat, walk, update,
//! remove. The host keeps names, parents, labels and references here; the
//! backend only sees opaque [`LayerId`]s and parent chains.
//!
//! Error classes follow containerd's metadata store: a missing key or parent
//! is `NotFound`, a duplicate key or name `AlreadyExists`, a parent that is
//! not committed or an immutable field in `update` `Invalid`, and removing a
//! snapshot that still has children, committing something not active or
//! asking mounts of a committed snapshot `FailedPrecondition`/`InUse`.

use std::collections::BTreeMap;

use drivers_api::{ApplyTarget, DiffSource, LayerId, Mount, PrepareOpts, Usage};
use rusqlite::{Connection, OptionalExtension, params};

use super::filter::{Fields, Filters};
use super::{Store, now_ns, random_hex};
use crate::error::{Error, Result};

/// Labels of a snapshot. An empty value in an update means "delete".
pub type Labels = BTreeMap<String, String>;

/// What a snapshot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Writable.
    Active,
    /// Read-only, never committed.
    View,
    /// Frozen; may be a parent.
    Committed,
}

impl Kind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }

    fn parse(s: &str) -> Kind {
        match s {
            "active" => Kind::Active,
            "view" => Kind::View,
            _ => Kind::Committed,
        }
    }
}

/// What `stat` and `walk` report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// The key (active, view) or name (committed).
    pub name: String,
    /// Active, view or committed.
    pub kind: Kind,
    /// The committed parent's name, if any.
    pub parent: Option<String>,
    /// Labels.
    pub labels: Labels,
    /// Creation time, ns since the epoch.
    pub created: i64,
    /// Last update, ns since the epoch.
    pub updated: i64,
}

impl Fields for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str) {
            Some("name") if path.len() == 1 => Some(self.name.clone()),
            Some("kind") if path.len() == 1 => Some(self.kind.as_str().to_owned()),
            Some("parent") if path.len() == 1 => self.parent.clone(),
            Some("labels") if path.len() > 1 => self.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

/// The row behind a snapshot.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub id: LayerId,
    pub kind: Kind,
    pub parent: Option<String>,
}

pub(crate) fn row(conn: &Connection, key: &str) -> Result<Option<Row>> {
    let r: Option<(String, String, Option<String>)> = conn
        .query_row(
            "SELECT id, kind, parent FROM snapshots WHERE key = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match r {
        None => Ok(None),
        Some((id, kind, parent)) => Ok(Some(Row {
            id: LayerId::new(id)?,
            kind: Kind::parse(&kind),
            parent,
        })),
    }
}

pub(crate) fn must_row(conn: &Connection, key: &str) -> Result<Row> {
    row(conn, key)?.ok_or_else(|| Error::NotFound {
        what: "snapshot",
        name: key.to_owned(),
    })
}

/// Backend ids of `key` and its ancestors, nearest first (`key` included).
pub(crate) fn chain(conn: &Connection, key: &str) -> Result<Vec<LayerId>> {
    let mut q = conn.prepare_cached(
        "WITH RECURSIVE c(key, id, parent, depth) AS (
             SELECT key, id, parent, 0 FROM snapshots WHERE key = ?1
             UNION ALL
             SELECT s.key, s.id, s.parent, c.depth + 1 FROM snapshots s JOIN c ON s.key = c.parent)
         SELECT id FROM c ORDER BY depth",
    )?;
    let ids = q.query_map([key], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for id in ids {
        out.push(LayerId::new(id?)?);
    }
    Ok(out)
}

fn labels_of(conn: &Connection, key: &str) -> Result<Labels> {
    let mut q = conn.prepare_cached("SELECT name, value FROM labels WHERE key = ?1")?;
    let rows = q.query_map([key], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn set_labels(conn: &Connection, key: &str, labels: &Labels) -> Result<()> {
    conn.execute("DELETE FROM labels WHERE key = ?1", [key])?;
    for (k, v) in labels.iter().filter(|(_, v)| !v.is_empty()) {
        conn.execute(
            "INSERT INTO labels (key, name, value) VALUES (?1, ?2, ?3)",
            params![key, k, v],
        )?;
    }
    Ok(())
}

fn info(conn: &Connection, key: &str) -> Result<Info> {
    let r: Option<(String, Option<String>, i64, i64)> = conn
        .query_row(
            "SELECT kind, parent, created, updated FROM snapshots WHERE key = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let (kind, parent, created, updated) = r.ok_or_else(|| Error::NotFound {
        what: "snapshot",
        name: key.to_owned(),
    })?;
    Ok(Info {
        name: key.to_owned(),
        kind: Kind::parse(&kind),
        parent,
        labels: labels_of(conn, key)?,
        created,
        updated,
    })
}

/// Who still needs snapshot `key`, if anyone, as a phrase for the user.
pub(crate) fn user_of(
    conn: &Connection,
    key: &str,
    own_lease: Option<&str>,
) -> Result<Option<String>> {
    let q = |sql: &str| -> Result<Option<String>> {
        Ok(conn.query_row(sql, [key], |r| r.get(0)).optional()?)
    };
    if let Some(c) = q(
        "SELECT name FROM containers WHERE key IN (SELECT key FROM snapshots WHERE parent = ?1) LIMIT 1",
    )? {
        return Ok(Some(format!("container {c}")));
    }
    if let Some(child) = q("SELECT key FROM snapshots WHERE parent = ?1 ORDER BY key LIMIT 1")? {
        return Ok(Some(format!("child {child}")));
    }
    if let Some(img) = q("SELECT name FROM images WHERE top_chain_id = ?1
                          UNION SELECT image FROM image_layers WHERE chain_id = ?1 LIMIT 1")?
    {
        return Ok(Some(format!("image {img}")));
    }
    if let Some(c) = q("SELECT name FROM containers WHERE key = ?1")? {
        return Ok(Some(format!("container {c}")));
    }
    if let Some(m) = q("SELECT caller FROM mounts WHERE key = ?1 LIMIT 1")? {
        return Ok(Some(format!("a mount held by {m}")));
    }
    let lease: Option<(String, i64)> = conn
        .query_row(
            "SELECT l.id, l.pid FROM lease_refs r JOIN leases l ON l.id = r.lease WHERE r.key = ?1 AND l.id IS NOT ?2 LIMIT 1",
            params![key, own_lease],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(lease.map(|(_, pid)| format!("an operation in progress (pid {pid})")))
}

impl Store {
    /// Creates writable snapshot `key` on committed `parent` and returns how
    /// to mount it.
    pub fn prepare(
        &mut self,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
        opts: &PrepareOpts,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels, opts)
    }

    /// Creates read-only snapshot `key` showing committed `parent`.
    pub fn view(&mut self, key: &str, parent: Option<&str>, labels: &Labels) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels, &PrepareOpts::default())
    }

    fn create(
        &mut self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
        opts: &PrepareOpts,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::Invalid {
                field: "snapshot key",
                reason: "empty".into(),
            });
        }
        self.op(|s| {
            let id = LayerId::new(random_hex(8))?;
            let parents = s.write(|tx| {
                if row(tx, key)?.is_some() {
                    return Err(Error::AlreadyExists { what: "snapshot", name: key.to_owned() });
                }
                if let Some(p) = parent {
                    let prow = row(tx, p)?.ok_or_else(|| Error::NotFound { what: "parent snapshot", name: p.to_owned() })?;
                    if prow.kind != Kind::Committed {
                        return Err(Error::Invalid {
                            field: "parent",
                            reason: format!("{p} is {}, not committed", prow.kind.as_str()),
                        });
                    }
                }
                let now = now_ns();
                tx.execute(
                    "INSERT INTO snapshots (key, id, kind, parent, created, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                    params![key, id.as_str(), kind.as_str(), parent, now],
                )?;
                set_labels(tx, key, labels)?;
                s.note_created(tx, key)?;
                match parent {
                    Some(p) => {
                        tx.execute("UPDATE snapshots SET last_used = ?2 WHERE key = ?1", params![p, now])?;
                        chain(tx, p)
                    }
                    None => Ok(Vec::new()),
                }
            })?;
            let mounts = match kind {
                Kind::View => s.driver.view(&id, &parents)?,
                _ => s.driver.prepare(&id, &parents, opts)?,
            };
            Ok(mounts)
        })
    }

    /// Freezes active snapshot `key` as committed snapshot `name` with
    /// `labels`. The backend layer keeps its id; `key` stops existing.
    pub fn commit(&mut self, name: &str, key: &str, labels: &Labels) -> Result<Usage> {
        let check = |conn: &Connection| -> Result<LayerId> {
            let r = must_row(conn, key)?;
            if r.kind != Kind::Active {
                return Err(Error::Precondition(format!(
                    "snapshot {key} is {}: only active snapshots can be committed",
                    r.kind.as_str()
                )));
            }
            if row(conn, name)?.is_some() {
                return Err(Error::AlreadyExists {
                    what: "snapshot",
                    name: name.to_owned(),
                });
            }
            Ok(r.id)
        };
        if name.is_empty() {
            return Err(Error::Invalid {
                field: "snapshot name",
                reason: "empty".into(),
            });
        }
        let id = check(&self.conn)?;
        let usage = self.driver.commit(&id)?;
        self.write(|tx| {
            check(tx)?;
            let now = now_ns();
            tx.execute("DELETE FROM labels WHERE key = ?1", [key])?;
            tx.execute(
                "UPDATE snapshots SET key = ?2, kind = 'committed', created = ?3, updated = ?3, bytes = ?4, inodes = ?5
                 WHERE key = ?1",
                params![key, name, now, usage.bytes as i64, usage.inodes as i64],
            )?;
            tx.execute("UPDATE lease_refs SET key = ?2 WHERE key = ?1", params![key, name])?;
            set_labels(tx, name, labels)?;
            Ok(())
        })?;
        Ok(usage)
    }

    /// The mounts of active or view snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let r = must_row(&self.conn, key)?;
        if r.kind == Kind::Committed {
            return Err(Error::Precondition(format!(
                "snapshot {key} is committed: only active snapshots and views are mounted"
            )));
        }
        let parents = match &r.parent {
            Some(p) => chain(&self.conn, p)?,
            None => Vec::new(),
        };
        Ok(self
            .driver
            .mounts(&r.id, &parents, r.kind == Kind::Active)?)
    }

    /// What is known about `key`.
    pub fn stat(&self, key: &str) -> Result<Info> {
        info(&self.conn, key)
    }

    /// Changes labels of `info.name`. With no `fieldpaths`, the labels are
    /// replaced by `info.labels`; `labels` replaces all labels too, and
    /// `labels.<k>` sets or (when absent from `info.labels`) deletes one.
    /// Other fields are immutable: naming one is `Invalid`, and with no
    /// field paths they are ignored.
    pub fn update(&mut self, new: &Info, fieldpaths: &[&str]) -> Result<Info> {
        self.write(|tx| {
            let cur = info(tx, &new.name)?;
            let mut labels = cur.labels.clone();
            if fieldpaths.is_empty() {
                labels = new.labels.clone();
            }
            for fp in fieldpaths {
                if *fp == "labels" {
                    labels = new.labels.clone();
                } else if let Some(k) = fp.strip_prefix("labels.") {
                    match new.labels.get(k) {
                        Some(v) => labels.insert(k.to_owned(), v.clone()),
                        None => labels.remove(k),
                    };
                } else {
                    return Err(Error::Invalid {
                        field: "field path",
                        reason: format!(
                            "cannot update {fp:?} of snapshot {}: only labels may change",
                            new.name
                        ),
                    });
                }
            }
            labels.retain(|_, v| !v.is_empty());
            set_labels(tx, &new.name, &labels)?;
            tx.execute(
                "UPDATE snapshots SET updated = ?2 WHERE key = ?1",
                params![new.name, now_ns()],
            )?;
            info(tx, &new.name)
        })
    }

    /// Calls `f` for every snapshot matching any of `filters` (containerd's
    /// syntax; none means all), in name order. The store is free to use
    /// inside `f`.
    pub fn walk(&self, filters: &[&str], mut f: impl FnMut(&Info) -> Result<()>) -> Result<()> {
        let filters = Filters::parse(filters)?;
        let keys: Vec<String> = {
            let mut q = self
                .conn
                .prepare("SELECT key FROM snapshots ORDER BY key")?;
            q.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        for key in keys {
            let i = match info(&self.conn, &key) {
                Ok(i) => i,
                Err(Error::NotFound { .. }) => continue, // removed meanwhile
                Err(e) => return Err(e),
            };
            if filters.matches(&i) {
                f(&i)?;
            }
        }
        Ok(())
    }

    /// Space used by `key` alone: measured for active snapshots and views,
    /// as recorded at commit for committed ones.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let r = must_row(&self.conn, key)?;
        if r.kind == Kind::Committed {
            let (bytes, inodes): (i64, i64) = self.conn.query_row(
                "SELECT bytes, inodes FROM snapshots WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            return Ok(Usage {
                bytes: bytes as u64,
                inodes: inodes as u64,
            });
        }
        Ok(self.driver.usage(&r.id)?)
    }

    /// Deletes snapshot `key` and its data, refused while a child, image,
    /// container, mount or another operation needs it.
    pub fn remove(&mut self, key: &str) -> Result<()> {
        self.op(|s| {
            let id = s.write(|tx| {
                let r = must_row(tx, key)?;
                if let Some(by) = user_of(tx, key, s.lease.as_deref())? {
                    return Err(Error::InUse {
                        what: "snapshot",
                        name: key.to_owned(),
                        by,
                    });
                }
                tx.execute("DELETE FROM lease_refs WHERE key = ?1", [key])?;
                tx.execute("DELETE FROM snapshots WHERE key = ?1", [key])?;
                s.schedule_removal(tx, r.id.as_str())?;
                Ok(r.id)
            })?;
            s.finish_removal(id.as_str())
        })
    }

    /// Where a layer tar is unpacked into active snapshot `key`.
    pub fn apply_target(&self, key: &str) -> Result<ApplyTarget> {
        let r = must_row(&self.conn, key)?;
        if r.kind != Kind::Active {
            return Err(Error::Precondition(format!(
                "snapshot {key} is {}: only active snapshots take changes",
                r.kind.as_str()
            )));
        }
        let parents = match &r.parent {
            Some(p) => chain(&self.conn, p)?,
            None => Vec::new(),
        };
        Ok(self.driver.apply_target(&r.id, &parents)?)
    }

    /// Where the changes of `key` against its parent are read.
    pub fn diff_source(&self, key: &str) -> Result<DiffSource> {
        let r = must_row(&self.conn, key)?;
        let parents = match &r.parent {
            Some(p) => chain(&self.conn, p)?,
            None => Vec::new(),
        };
        Ok(self.driver.diff_source(&r.id, &parents)?)
    }

    /// Number of snapshots in `key`'s chain, itself included.
    pub fn depth(&self, key: &str) -> Result<usize> {
        Ok(chain(&self.conn, key)?.len())
    }

    /// Closes the store. Calling it again is harmless.
    pub fn close(&mut self) -> Result<()> {
        Ok(())
    }
}
