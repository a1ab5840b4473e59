//! Containers: a writable layer on an image's top layer, with a name, a
//! reference-counted mount, and `commit` into a new image.

use std::io::Write;
use std::path::PathBuf;

use drivers_api::PrepareOpts;
use rusqlite::{OptionalExtension, params};

use crate::content::{Digest, HashWriter};
use crate::error::{Error, IoContext, Result};
use crate::image::{ImageLayer, Imported, check_name, synthesize_manifest};
use crate::layers::Expect;
use crate::mounts;
use crate::store::snapshots::Labels;
use crate::store::{Store, now_ns};

/// Media type of the layers `container commit` writes.
const COMMITTED_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of the configs `container commit` writes.
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// A container as `container ls` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContainerInfo {
    /// Its name.
    pub name: String,
    /// The image it was created from.
    pub image: String,
    /// When, seconds since the epoch.
    pub created: i64,
    /// Hard size limit in bytes, if any.
    pub size_limit: Option<u64>,
    /// Where its root filesystem is mounted, if it is.
    pub mountpoint: Option<PathBuf>,
    /// Who holds the mount.
    pub mounted_by: Vec<String>,
    /// Bytes its writable layer uses (only when asked: it walks the layer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// The snapshot key of container `name`.
fn key(name: &str) -> String {
    format!("container:{name}")
}

/// Container names: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`, as docker's, so they
/// are safe as a directory name.
pub fn check_container_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            field: "container name",
            reason: format!("{name:?}: use [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}"),
        })
    }
}

impl Store {
    /// Creates container `name` on image `image`, with a hard size limit
    /// the backend enforces, or refuses if it cannot.
    pub fn create_container(
        &mut self,
        name: &str,
        image: &str,
        size_limit: Option<u64>,
    ) -> Result<ContainerInfo> {
        check_container_name(name)?;
        let img = self.image(image)?;
        let image = img.name.as_str();
        let k = key(name);
        self.op(|s| {
            let exists: Option<i64> = s.conn().query_row("SELECT 1 FROM containers WHERE name = ?1", [name], |r| r.get(0)).optional()?;
            if exists.is_some() {
                return Err(Error::AlreadyExists { what: "container", name: name.to_owned() });
            }
            let opts = PrepareOpts { size_limit };
            s.prepare(&k, img.top_chain_id.as_deref(), &Labels::new(), &opts)?;
            s.write(|tx| {
                tx.execute(
                    "INSERT INTO containers (name, key, image, size_limit, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![name, k, image, size_limit.map(|l| l as i64), now_ns()],
                )?;
                Ok(())
            })
        })?;
        self.container(name, false)
    }

    /// Container `name`; `with_size` measures its writable layer.
    pub fn container(&self, name: &str, with_size: bool) -> Result<ContainerInfo> {
        let row: Option<(String, Option<i64>, i64)> = self
            .conn()
            .query_row(
                "SELECT image, size_limit, created FROM containers WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (image, size_limit, created) = row.ok_or_else(|| Error::NotFound {
            what: "container",
            name: name.to_owned(),
        })?;
        let holders = mounts::holders(self, &key(name))?;
        let size = if with_size {
            Some(self.usage(&key(name))?.bytes)
        } else {
            None
        };
        Ok(ContainerInfo {
            name: name.to_owned(),
            image,
            created: created / 1_000_000_000,
            size_limit: size_limit.map(|l| l as u64),
            mountpoint: holders.first().map(|(_, t)| t.clone()),
            mounted_by: holders.into_iter().map(|(c, _)| c).collect(),
            size,
        })
    }

    /// Every container, by name.
    pub fn containers(&self, with_size: bool) -> Result<Vec<ContainerInfo>> {
        let names: Vec<String> = {
            let mut q = self
                .conn()
                .prepare("SELECT name FROM containers ORDER BY name")?;
            q.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        names.iter().map(|n| self.container(n, with_size)).collect()
    }

    /// Mounts container `name` for `caller` (idempotent per caller) and
    /// returns the path of its root filesystem.
    pub fn mount_container(&mut self, name: &str, caller: &str) -> Result<PathBuf> {
        self.container(name, false)?;
        let target = self.state_dir().join(mounts::MOUNTS_DIR).join(name);
        let k = key(name);
        let at = mounts::acquire(self, &k, caller, &target)?;
        self.write(|tx| {
            tx.execute(
                "UPDATE snapshots SET last_used = ?2 WHERE key = (SELECT parent FROM snapshots WHERE key = ?1)",
                params![k, now_ns()],
            )?;
            Ok(())
        })?;
        Ok(at)
    }

    /// Drops `caller`'s mount of container `name` (every caller's with
    /// `force`); returns whether it is now unmounted.
    pub fn unmount_container(&mut self, name: &str, caller: &str, force: bool) -> Result<bool> {
        self.container(name, false)?;
        mounts::release(self, &key(name), caller, force)?;
        Ok(mounts::holders(self, &key(name))?.is_empty())
    }

    /// Removes container `name` and its writable layer; a mounted container
    /// only with `force`, which unmounts it first.
    pub fn remove_container(&mut self, name: &str, force: bool) -> Result<()> {
        let info = self.container(name, false)?;
        let k = key(name);
        if !info.mounted_by.is_empty() {
            if !force {
                return Err(Error::InUse {
                    what: "container",
                    name: name.to_owned(),
                    by: format!(
                        "its mount at {} (held by {})",
                        info.mountpoint.unwrap_or_default().display(),
                        info.mounted_by.join(", ")
                    ),
                });
            }
            mounts::release(self, &k, "", true)?;
        }
        self.op(|s| {
            let id = s.write(|tx| {
                let held: i64 =
                    tx.query_row("SELECT COUNT(*) FROM mounts WHERE key = ?1", [&k], |r| {
                        r.get(0)
                    })?;
                if held > 0 {
                    return Err(Error::InUse {
                        what: "container",
                        name: name.to_owned(),
                        by: "a mount taken meanwhile".into(),
                    });
                }
                let id: String =
                    tx.query_row("SELECT id FROM snapshots WHERE key = ?1", [&k], |r| {
                        r.get(0)
                    })?;
                tx.execute("DELETE FROM lease_refs WHERE key = ?1", [&k])?;
                tx.execute("DELETE FROM snapshots WHERE key = ?1", [&k])?;
                s.schedule_removal(tx, &id)?;
                Ok(id)
            })?;
            s.finish_removal(&id)
        })
    }

    /// Creates image `image` from container `name`: the container's image
    /// plus one new layer holding the container's changes.
    pub fn commit_container(&mut self, name: &str, image: &str) -> Result<Imported> {
        check_name(image)?;
        let c = self.container(name, false)?;
        let base = self.image(&c.image).map_err(|_| {
            Error::Precondition(format!(
                "container {name} was created from image {}, which no longer exists",
                c.image
            ))
        })?;
        let k = key(name);
        self.op(|s| {
            let blob = s.staging_file("layer")?;
            let f = std::fs::File::create(&blob).ctx("create", &blob)?;
            let mut gz = flate2::write::GzEncoder::new(HashWriter::new(std::io::BufWriter::new(f)), flate2::Compression::fast());
            let report = s.write_diff(&k, &mut gz)?;
            let (digest, mut w) = gz.finish().ctx("write", &blob)?.finish();
            w.flush().ctx("write", &blob)?;
            drop(w);
            let size = std::fs::metadata(&blob).ctx("read", &blob)?.len();
            let diff_id = Digest::parse(&report.diff_id)?;
            let parent = base.top_chain_id.as_deref().map(Digest::parse).transpose()?;
            let f = std::fs::File::open(&blob).ctx("open", &blob)?;
            let applied = s.apply_layer(f, parent.as_ref(), &Expect { digest: Some(digest.clone()), diff_id: Some(diff_id.clone()) })?;
            s.put_blob(&digest, COMMITTED_LAYER_MEDIA_TYPE, size, &blob, true)?;

            let mut cfg = s.image_config(&c.image)?;
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            push(&mut cfg, &["rootfs", "diff_ids"], serde_json::Value::String(diff_id.to_string()));
            push(&mut cfg, &["history"], serde_json::json!({ "created": now, "created_by": format!("drivers container commit {name}") }));
            cfg["created"] = serde_json::Value::String(now);
            let cfg_bytes = serde_json::to_vec(&cfg).map_err(|e| Error::Json { what: "image config".into(), source: e })?;
            let cfg_digest = Digest::of(&cfg_bytes);
            let cfg_path = s.staging_file("config")?;
            std::fs::write(&cfg_path, &cfg_bytes).ctx("write", &cfg_path)?;
            s.put_blob(&cfg_digest, CONFIG_MEDIA_TYPE, cfg_bytes.len() as u64, &cfg_path, true)?;

            let mut layers = base.layers.clone();
            layers.push(ImageLayer {
                digest: digest.to_string(),
                diff_id: diff_id.to_string(),
                chain_id: applied.chain_id.to_string(),
                size,
                media_type: COMMITTED_LAYER_MEDIA_TYPE.into(),
            });
            let m = synthesize_manifest(CONFIG_MEDIA_TYPE, &cfg_digest, cfg_bytes.len(), &layers)?;
            let mdigest = Digest::of(&m);
            let mpath = s.staging_file("manifest")?;
            std::fs::write(&mpath, &m).ctx("write", &mpath)?;
            s.put_blob(&mdigest, crate::image::MANIFEST_MEDIA_TYPE, m.len() as u64, &mpath, true)?;
            if s.record_image(image, &mdigest, &cfg_digest, &layers)? {
                return Err(Error::AlreadyExists { what: "image", name: image.to_owned() });
            }
            Ok(Imported {
                name: image.to_owned(),
                manifest_digest: mdigest.to_string(),
                layers: layers.len(),
                shared: layers.len() - 1,
                unpacked_bytes: report.tar_bytes,
                unchanged: false,
            })
        })
    }
}

/// Appends `v` to the array at `path` in `doc`, creating it if needed.
fn push(doc: &mut serde_json::Value, path: &[&str], v: serde_json::Value) {
    let mut cur = doc;
    for p in path {
        if !cur.get(*p).is_some_and(|x| x.is_object() || x.is_array()) {
            cur[*p] = if *p == path[path.len() - 1] {
                serde_json::json!([])
            } else {
                serde_json::json!({})
            };
        }
        cur = &mut cur[*p];
    }
    if let Some(a) = cur.as_array_mut() {
        a.push(v);
    }
}
