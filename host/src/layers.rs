//! Image layers: committed snapshots named by chain id, built by applying a
//! layer tar on their parent, shared by every image that has them.

use std::io::{Read, Write};

use drivers_api::PrepareOpts;
use drivers_archive::{ApplyOptions, ApplyReport};
use rusqlite::{OptionalExtension, params};

use crate::content::{Digest, chain_id};
use crate::error::{Error, Result};
use crate::store::snapshots::{Labels, user_of};
use crate::store::{Store, random_hex};

/// What the caller knows about a layer before applying it.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// Digest of the (possibly compressed) input.
    pub digest: Option<Digest>,
    /// Digest of the uncompressed tar; lets an existing layer be shared
    /// without reading the input at all.
    pub diff_id: Option<Digest>,
}

/// The outcome of [`Store::apply_layer`].
#[derive(Clone, Debug)]
pub struct Applied {
    /// The layer's chain id.
    pub chain_id: Digest,
    /// Its diff id.
    pub diff_id: Digest,
    /// True when the layer existed and nothing was unpacked.
    pub shared: bool,
    /// What unpacking measured; `None` when shared.
    pub report: Option<ApplyReport>,
}

/// A row of `layer ls`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerInfo {
    /// Chain id.
    pub chain_id: String,
    /// Diff id.
    pub diff_id: String,
    /// Parent chain id.
    pub parent: Option<String>,
    /// Bytes used by this layer alone on the backend.
    pub size: u64,
    /// Size of its uncompressed tar.
    pub tar_size: u64,
    /// Images, containers and child layers that need it directly.
    pub references: u32,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// Last time a layer or container was created on it, seconds since the
    /// epoch; 0 if never.
    pub last_used: i64,
}

impl Store {
    /// Whether committed layer `chain` exists.
    pub fn has_layer(&self, chain: &Digest) -> Result<bool> {
        let r: Option<i64> = self
            .conn()
            .query_row(
                "SELECT 1 FROM layers WHERE chain_id = ?1",
                [chain.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(r.is_some())
    }

    /// Applies the layer tar `input` on layer `parent` (none for a base
    /// layer) and records the result under its chain id. An existing layer
    /// with the same chain id is shared instead: not unpacked twice, even
    /// when another process finishes it first. Anything half-made is
    /// discarded on error.
    pub fn apply_layer(
        &mut self,
        input: impl Read,
        parent: Option<&Digest>,
        expect: &Expect,
    ) -> Result<Applied> {
        if let Some(p) = parent.filter(|p| !self.has_layer(p).unwrap_or(false)) {
            return Err(Error::NotFound {
                what: "layer",
                name: p.to_string(),
            });
        }
        self.check_depth(parent)?;
        self.op(|s| {
            if let Some(diff_id) = &expect.diff_id {
                let chain = chain_id(parent, diff_id);
                if s.hold_layer(&chain)? {
                    return Ok(Applied {
                        chain_id: chain,
                        diff_id: diff_id.clone(),
                        shared: true,
                        report: None,
                    });
                }
            }
            let key = format!("extract-{}", random_hex(6));
            s.prepare(
                &key,
                parent.map(Digest::as_str),
                &Labels::new(),
                &PrepareOpts::default(),
            )?;
            let target = s.apply_target(&key)?;
            let opts = ApplyOptions {
                expected_digest: expect.digest.as_ref().map(|d| d.to_string()),
                expected_diff_id: expect.diff_id.as_ref().map(|d| d.to_string()),
                drop_xattrs: s.driver().layer_xattrs() == drivers_api::LayerXattrs::Drop,
            };
            let report = drivers_archive::apply(input, &target, &opts)?;
            if report.xattrs_dropped > 0 {
                tracing::warn!(
                    backend = s.driver().name(),
                    dropped = report.xattrs_dropped,
                    "layer xattrs dropped: the backend is configured to drop what its filesystem cannot store"
                );
            }
            let diff_id = Digest::parse(&report.diff_id)?;
            let chain = chain_id(parent, &diff_id);
            if s.hold_layer(&chain)? {
                s.remove(&key)?;
                return Ok(Applied {
                    chain_id: chain,
                    diff_id,
                    shared: true,
                    report: Some(report),
                });
            }
            match s.commit(chain.as_str(), &key, &Labels::new()) {
                Err(Error::AlreadyExists { .. }) if s.hold_layer(&chain)? => {
                    s.remove(&key)?;
                    return Ok(Applied {
                        chain_id: chain,
                        diff_id,
                        shared: true,
                        report: Some(report),
                    });
                }
                r => r?,
            };
            s.write(|tx| {
                tx.execute(
                    "INSERT INTO layers (chain_id, diff_id, tar_bytes) VALUES (?1, ?2, ?3)",
                    params![chain.as_str(), diff_id.as_str(), report.tar_bytes as i64],
                )?;
                Ok(())
            })?;
            tracing::info!(chain_id = %chain, bytes = report.tar_bytes, "layer committed");
            Ok(Applied {
                chain_id: chain,
                diff_id,
                shared: false,
                report: Some(report),
            })
        })
    }

    /// Refuses a layer on `parent` that would make the chain deeper than the
    /// backend can mount (overlayfs stacks at most 500 layers): better a
    /// clear error now than an image no container can ever use.
    fn check_depth(&self, parent: Option<&Digest>) -> Result<()> {
        let Some(max) = self.driver().max_depth() else {
            return Ok(());
        };
        let depth = match parent {
            Some(p) => self.depth(p.as_str())? + 1,
            None => 1,
        };
        if depth <= max {
            return Ok(());
        }
        Err(Error::Backend(drivers_api::Error::Limit {
            what: format!("layer {depth} of a chain"),
            reason: format!("backend {} mounts at most {max} layers in one chain", self.driver().name()),
            hint: Some("flatten the image (e.g. export and re-import a squashed copy), or use the vfs backend".into()),
        }))
    }

    /// If layer `chain` exists, protects it for the current operation and
    /// returns true.
    fn hold_layer(&self, chain: &Digest) -> Result<bool> {
        self.write(|tx| {
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM layers WHERE chain_id = ?1",
                    [chain.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_some() {
                self.note_ref(tx, chain.as_str(), false)?;
            }
            Ok(exists.is_some())
        })
    }

    /// Every image layer, by chain id.
    pub fn layers(&self) -> Result<Vec<LayerInfo>> {
        let mut q = self.conn().prepare(
            "SELECT l.chain_id, l.diff_id, s.parent, s.bytes, l.tar_bytes, s.created, s.last_used,
                    (SELECT COUNT(*) FROM snapshots c WHERE c.parent = s.key)
                  + (SELECT COUNT(*) FROM images i WHERE i.top_chain_id = s.key)
             FROM layers l JOIN snapshots s ON s.key = l.chain_id ORDER BY s.created, l.chain_id",
        )?;
        let rows = q.query_map([], |r| {
            Ok(LayerInfo {
                chain_id: r.get(0)?,
                diff_id: r.get(1)?,
                parent: r.get(2)?,
                size: r.get::<_, i64>(3)? as u64,
                tar_size: r.get::<_, i64>(4)? as u64,
                created: r.get::<_, i64>(5)? / 1_000_000_000,
                last_used: r.get::<_, i64>(6)? / 1_000_000_000,
                references: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes layer `chain`; refused while an image, container or child
    /// layer uses it.
    pub fn remove_layer(&mut self, chain: &Digest) -> Result<()> {
        if !self.has_layer(chain)? {
            return Err(Error::NotFound {
                what: "layer",
                name: chain.to_string(),
            });
        }
        if let Some(by) = user_of(self.conn(), chain.as_str(), None)? {
            return Err(Error::InUse {
                what: "layer",
                name: chain.to_string(),
                by,
            });
        }
        self.remove(chain.as_str())
    }

    /// Writes the changes of snapshot `key` against its parent as an OCI
    /// layer tar.
    pub fn write_diff(&self, key: &str, out: impl Write) -> Result<drivers_diff::WriteReport> {
        let src = self.diff_source(key)?;
        Ok(drivers_diff::write_layer(&src, out)?)
    }
}
