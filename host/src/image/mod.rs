//! Images: a name, a manifest and config in the content store, and a chain
//! of layers shared with every other image that has them.

mod export;
pub mod source;

use std::io::Read;
use std::path::Path;

use rusqlite::{OptionalExtension, params};

use crate::content::{Digest, HashReader, check_blob};
use crate::error::{Error, IoContext, Result};
use crate::layers::Expect;
use crate::store::snapshots::user_of;
use crate::store::{Store, now_ns};
use source::{SourceImage, SourceLayer};

/// Media type of the manifests we write.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// One layer of an image, as `image inspect` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageLayer {
    /// Digest of the blob (compressed as imported).
    pub digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Chain id: the layer with all its parents.
    pub chain_id: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Media type of the blob.
    pub media_type: String,
}

/// An image as `image ls` / `image inspect` show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageInfo {
    /// Its name.
    pub name: String,
    /// Layers, bottom first.
    pub layers: Vec<ImageLayer>,
    /// Chain id of the top layer; `None` for an image without layers.
    pub top_chain_id: Option<String>,
    /// Manifest digest.
    pub manifest_digest: String,
    /// Config digest.
    pub config_digest: String,
    /// When it was imported or committed, seconds since the epoch.
    pub created: i64,
}

/// Progress of an import, for a terminal.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// Image name.
    pub image: &'a str,
    /// 1-based layer number.
    pub layer: usize,
    /// Number of layers.
    pub layers: usize,
    /// Blob size, if known.
    pub bytes: Option<u64>,
}

/// What one import did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Imported {
    /// Name given to the image.
    pub name: String,
    /// Its manifest digest.
    pub manifest_digest: String,
    /// Layers in the image.
    pub layers: usize,
    /// Layers that were already present and shared.
    pub shared: usize,
    /// Uncompressed bytes unpacked.
    pub unpacked_bytes: u64,
    /// The image existed with the same manifest: nothing changed.
    pub unchanged: bool,
}

/// What `image rm` removed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Removed {
    /// The image.
    pub name: String,
    /// Layers deleted because nothing else used them.
    pub layers: Vec<String>,
}

/// One source image once its layers and blobs are in the store.
#[derive(Clone, Debug)]
struct Unpacked {
    manifest: Digest,
    layers: Vec<ImageLayer>,
    /// Uncompressed bytes unpacked.
    unpacked: u64,
    /// Layers that were present already.
    shared: usize,
}

#[derive(serde::Deserialize)]
struct ConfigRootfs {
    rootfs: RootFs,
}

#[derive(serde::Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

fn diff_ids(desc: &str, cfg: &[u8]) -> Result<Vec<Digest>> {
    let c: ConfigRootfs = serde_json::from_slice(cfg).map_err(|e| Error::Json {
        what: format!("{desc}: image config"),
        source: e,
    })?;
    c.rootfs.diff_ids.iter().map(|d| Digest::parse(d)).collect()
}

/// Chooses which images to import and under which names.
fn plan_names(
    desc: &str,
    images: &[SourceImage],
    name: Option<&str>,
    pick: Option<&str>,
) -> Result<Vec<(usize, String)>> {
    let chosen: Vec<usize> = match pick {
        Some(r) => images
            .iter()
            .enumerate()
            .filter(|(_, i)| i.names.iter().any(|n| n == r))
            .map(|(k, _)| k)
            .collect(),
        None => (0..images.len()).collect(),
    };
    if chosen.is_empty() {
        return Err(Error::NotFound {
            what: "image reference",
            name: format!("{} in {desc}", pick.unwrap_or("")),
        });
    }
    if let Some(n) = name {
        if chosen.len() > 1 {
            return Err(Error::Invalid {
                field: "--name",
                reason: format!("{desc} holds {} images; pick one with --ref", chosen.len()),
            });
        }
        return Ok(vec![(chosen[0], n.to_owned())]);
    }
    let mut out = Vec::new();
    for k in chosen {
        let img = &images[k];
        if img.names.is_empty() {
            let d = img
                .manifest
                .as_ref()
                .map(|m| m.0.clone())
                .unwrap_or_else(|| img.config.0.clone());
            out.push((k, format!("sha256:{}", d.short())));
        }
        // Every tag of a docker archive names the same image.
        let tags: Vec<&String> = if img.manifest.is_none() {
            img.names.iter().collect()
        } else {
            img.names.iter().take(1).collect()
        };
        for t in tags {
            out.push((k, t.clone()));
        }
    }
    Ok(out)
}

/// Checks an image name: printable, no whitespace, at most 255 bytes.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty() && name.len() <= 255 && name.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            field: "image name",
            reason: format!("{name:?}: use 1–255 printable ASCII characters without spaces"),
        })
    }
}

impl Store {
    /// Imports every image at `path` (OCI layout, OCI archive or `docker
    /// save` archive), or the one tagged `pick`, under `name` or the names
    /// the source records. Verifies every digest and diff id; a failure
    /// leaves nothing behind.
    pub fn import_image(
        &mut self,
        path: &Path,
        name: Option<&str>,
        pick: Option<&str>,
        progress: &dyn Fn(Progress<'_>),
    ) -> Result<Vec<Imported>> {
        if let Some(n) = name {
            check_name(n)?;
        }
        self.op(|s| {
            let src = source::open(s, path)?;
            let plan = plan_names(&src.desc, &src.images, name, pick)?;
            let mut out = Vec::new();
            // Several tags of one docker archive image share one unpacking.
            let mut done: Vec<Option<Unpacked>> = (0..src.images.len()).map(|_| None).collect();
            for (k, n) in plan {
                check_name(&n)?;
                let img = &src.images[k];
                let u = match &done[k] {
                    Some(u) => u.clone(),
                    None => s.import_layers(&src.desc, img, &n, src.staged, progress)?,
                };
                let unchanged = s.record_image(&n, &u.manifest, &img.config.0, &u.layers)?;
                out.push(Imported {
                    name: n,
                    manifest_digest: u.manifest.to_string(),
                    layers: u.layers.len(),
                    shared: u.shared,
                    unpacked_bytes: u.unpacked,
                    unchanged,
                });
                done[k] = Some(u);
            }
            Ok(out)
        })
    }

    /// Applies (or shares) every layer of `img`, stores its blobs, and
    /// returns its manifest digest, layer records, unpacked bytes and the
    /// number of shared layers.
    fn import_layers(
        &mut self,
        desc: &str,
        img: &SourceImage,
        name: &str,
        staged: bool,
        progress: &dyn Fn(Progress<'_>),
    ) -> Result<Unpacked> {
        let ids = diff_ids(desc, &img.config.1)?;
        if ids.len() != img.layers.len() {
            return Err(Error::BadImage {
                source_desc: desc.to_owned(),
                reason: format!(
                    "config lists {} diff_ids for {} layers",
                    ids.len(),
                    img.layers.len()
                ),
            });
        }
        let (mut parent, mut layers, mut unpacked, mut shared) = (None::<Digest>, Vec::new(), 0, 0);
        for (i, (l, diff_id)) in img.layers.iter().zip(&ids).enumerate() {
            progress(Progress {
                image: name,
                layer: i + 1,
                layers: ids.len(),
                bytes: l.size,
            });
            let (rec, applied) = self.import_layer(l, diff_id, parent.as_ref(), staged)?;
            if let Some(r) = applied {
                unpacked += r;
            } else {
                shared += 1;
            }
            parent = Some(Digest::parse(&rec.chain_id)?);
            layers.push(rec);
        }
        let cfg_path = self.staging_file("config")?;
        std::fs::write(&cfg_path, &img.config.1).ctx("write", &cfg_path)?;
        self.put_blob(
            &img.config.0,
            &img.config_media_type,
            img.config.1.len() as u64,
            &cfg_path,
            true,
        )?;
        let (mdigest, mbytes, mtype) = match &img.manifest {
            Some(m) => m.clone(),
            None => {
                let bytes = synthesize_manifest(
                    &img.config_media_type,
                    &img.config.0,
                    img.config.1.len(),
                    &layers,
                )?;
                (Digest::of(&bytes), bytes, MANIFEST_MEDIA_TYPE.to_owned())
            }
        };
        let mpath = self.staging_file("manifest")?;
        std::fs::write(&mpath, &mbytes).ctx("write", &mpath)?;
        self.put_blob(&mdigest, &mtype, mbytes.len() as u64, &mpath, true)?;
        Ok(Unpacked {
            manifest: mdigest,
            layers,
            unpacked,
            shared,
        })
    }

    /// One layer: unpacked (or shared by chain id), its blob verified and
    /// stored. Returns the record and, if unpacked, the tar bytes.
    fn import_layer(
        &mut self,
        l: &SourceLayer,
        diff_id: &Digest,
        parent: Option<&Digest>,
        staged: bool,
    ) -> Result<(ImageLayer, Option<u64>)> {
        let f = std::fs::File::open(&l.path).ctx("open layer blob", &l.path)?;
        let expect = Expect {
            digest: l.digest.clone(),
            diff_id: Some(diff_id.clone()),
        };
        let applied = self.apply_layer(f, parent, &expect)?;
        // Where the layer was shared, nothing read the blob: hash it now,
        // before it enters the content store.
        let (digest, size) = match &applied.report {
            Some(r) => (Digest::parse(&r.digest)?, r.compressed_bytes),
            None => {
                let mut h =
                    HashReader::new(std::fs::File::open(&l.path).ctx("open layer blob", &l.path)?);
                std::io::copy(&mut h, &mut std::io::sink()).ctx("read layer blob", &l.path)?;
                let n = h.bytes;
                (h.digest(), n)
            }
        };
        if let Some(want) = &l.digest {
            check_blob(&l.path, want, l.size, &digest, size)?;
        }
        let media_type = l
            .media_type
            .clone()
            .unwrap_or_else(|| media_type_of(&l.path));
        self.put_blob(&digest, &media_type, size, &l.path, staged)?;
        let rec = ImageLayer {
            digest: digest.to_string(),
            diff_id: applied.diff_id.to_string(),
            chain_id: applied.chain_id.to_string(),
            size,
            media_type,
        };
        Ok((rec, applied.report.map(|r| r.tar_bytes)))
    }

    /// Records image `name`. Returns true if it already existed with the
    /// same manifest (nothing changes); refuses a different image under an
    /// existing name.
    pub(crate) fn record_image(
        &mut self,
        name: &str,
        manifest: &Digest,
        config: &Digest,
        layers: &[ImageLayer],
    ) -> Result<bool> {
        self.write(|tx| {
            let existing: Option<String> =
                tx.query_row("SELECT manifest_digest FROM images WHERE name = ?1", [name], |r| r.get(0)).optional()?;
            match existing {
                Some(m) if m == manifest.as_str() => return Ok(true),
                Some(_) => return Err(Error::AlreadyExists { what: "image", name: name.to_owned() }),
                None => {}
            }
            let top = layers.last().map(|l| l.chain_id.clone());
            tx.execute(
                "INSERT INTO images (name, manifest_digest, config_digest, top_chain_id, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, manifest.as_str(), config.as_str(), top, now_ns()],
            )?;
            for (i, l) in layers.iter().enumerate() {
                tx.execute(
                    "INSERT INTO image_layers (image, idx, digest, media_type, size, diff_id, chain_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![name, i as i64, l.digest, l.media_type, l.size as i64, l.diff_id, l.chain_id],
                )?;
            }
            Ok(false)
        })
    }

    /// Every image, by name.
    pub fn images(&self) -> Result<Vec<ImageInfo>> {
        let names: Vec<String> = {
            let mut q = self
                .conn()
                .prepare("SELECT name FROM images ORDER BY name")?;
            q.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        names.iter().map(|n| self.image(n)).collect()
    }

    /// The stored name `name` refers to: itself, or the docker-normalised
    /// form (`debian` → `docker.io/library/debian:latest`), as users of
    /// docker and podman type names short.
    pub fn resolve_image(&self, name: &str) -> Result<String> {
        for cand in name_candidates(name) {
            let hit: Option<i64> = self
                .conn()
                .query_row("SELECT 1 FROM images WHERE name = ?1", [&cand], |r| {
                    r.get(0)
                })
                .optional()?;
            if hit.is_some() {
                return Ok(cand);
            }
        }
        Err(Error::NotFound {
            what: "image",
            name: name.to_owned(),
        })
    }

    /// Image `name` (see [`Store::resolve_image`] for short names).
    pub fn image(&self, name: &str) -> Result<ImageInfo> {
        let name = &self.resolve_image(name)?;
        let row: Option<(String, String, Option<String>, i64)> = self
            .conn()
            .query_row(
                "SELECT manifest_digest, config_digest, top_chain_id, created FROM images WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let (manifest_digest, config_digest, top_chain_id, created) =
            row.ok_or_else(|| Error::NotFound {
                what: "image",
                name: name.to_owned(),
            })?;
        let mut q = self.conn().prepare_cached(
            "SELECT digest, diff_id, chain_id, size, media_type FROM image_layers WHERE image = ?1 ORDER BY idx",
        )?;
        let layers = q
            .query_map([name], |r| {
                Ok(ImageLayer {
                    digest: r.get(0)?,
                    diff_id: r.get(1)?,
                    chain_id: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                    media_type: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(ImageInfo {
            name: name.to_owned(),
            layers,
            top_chain_id,
            manifest_digest,
            config_digest,
            created: created / 1_000_000_000,
        })
    }

    /// Removes image `name` and, unless `keep_layers`, its layers and blobs
    /// that nothing else uses. Refused while a container uses the image's
    /// top layer.
    pub fn remove_image(&mut self, name: &str, keep_layers: bool) -> Result<Removed> {
        let img = self.image(name)?;
        let name = img.name.as_str();
        self.op(|s| {
            let (ids, layers, files) = s.write(|tx| {
                if let Some(top) = &img.top_chain_id {
                    let users: Option<String> = tx
                        .query_row(
                            "SELECT c.name FROM containers c JOIN snapshots s ON s.key = c.key WHERE s.parent = ?1 LIMIT 1",
                            [top],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if let Some(c) = users {
                        return Err(Error::InUse { what: "image", name: name.to_owned(), by: format!("container {c}") });
                    }
                }
                tx.execute("DELETE FROM images WHERE name = ?1", [name])?;
                let (mut ids, mut layers) = (Vec::new(), Vec::new());
                let mut next = img.top_chain_id.clone();
                while let Some(key) = next.filter(|_| !keep_layers) {
                    if user_of(tx, &key, s.lease_id())?.is_some() {
                        break;
                    }
                    let (id, parent): (String, Option<String>) =
                        tx.query_row("SELECT id, parent FROM snapshots WHERE key = ?1", [&key], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    tx.execute("DELETE FROM snapshots WHERE key = ?1", [&key])?;
                    s.schedule_removal(tx, &id)?;
                    ids.push(id);
                    layers.push(key);
                    next = parent;
                }
                let mut digests = vec![img.manifest_digest.clone(), img.config_digest.clone()];
                digests.extend(img.layers.iter().map(|l| l.digest.clone()));
                let files = s.drop_unused_blobs(tx, &digests)?;
                Ok((ids, layers, files))
            })?;
            for id in ids {
                s.finish_removal(&id)?;
            }
            for f in files {
                let _ = std::fs::remove_file(f);
            }
            Ok(Removed { name: name.to_owned(), layers })
        })
    }

    /// The config blob of image `name`, parsed.
    pub fn image_config(&self, name: &str) -> Result<serde_json::Value> {
        let img = self.image(name)?;
        let name = img.name.as_str();
        let d = Digest::parse(&img.config_digest)?;
        let path = self.blob_path(&d);
        let bytes = crate::content::read_verified(&path, &d, None, source::MAX_JSON)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Json {
            what: format!("config of image {name}"),
            source: e,
        })
    }
}

/// `name` as typed, then with `:latest`, then under docker.io as docker
/// normalises names without a registry.
fn name_candidates(name: &str) -> Vec<String> {
    let last = name.rsplit('/').next().unwrap_or(name);
    let tagged = last.contains(':') || name.contains('@');
    let mut bases = vec![name.to_owned()];
    let first = name.split('/').next().unwrap_or("");
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if !has_registry && !name.starts_with("sha256:") {
        bases.push(if name.contains('/') {
            format!("docker.io/{name}")
        } else {
            format!("docker.io/library/{name}")
        });
    }
    let mut out = Vec::new();
    for b in bases {
        out.push(b.clone());
        if !tagged {
            out.push(format!("{b}:latest"));
        }
    }
    out
}

/// The OCI media type of a layer blob, from its first bytes.
pub fn media_type_of(path: &Path) -> String {
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .unwrap_or(0);
    let suffix = match &magic[..n] {
        [0x1f, 0x8b, ..] => "+gzip",
        [0x28, 0xb5, 0x2f, 0xfd] => "+zstd",
        _ => "",
    };
    format!("application/vnd.oci.image.layer.v1.tar{suffix}")
}

/// An OCI manifest for a config and layers (for `docker save` archives,
/// which carry none, and for committed containers).
pub fn synthesize_manifest(
    config_media_type: &str,
    config: &Digest,
    config_size: usize,
    layers: &[ImageLayer],
) -> Result<Vec<u8>> {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": config_media_type, "digest": config.as_str(), "size": config_size },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.size,
        })).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&m).map_err(|e| Error::Json {
        what: "manifest".into(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short names find what docker-style tools record; names with a
    /// registry or a tag are not rewritten.
    #[test]
    fn short_names_resolve_like_docker() {
        assert_eq!(
            name_candidates("debian"),
            [
                "debian",
                "debian:latest",
                "docker.io/library/debian",
                "docker.io/library/debian:latest"
            ]
        );
        assert_eq!(
            name_candidates("tricky:docker"),
            ["tricky:docker", "docker.io/library/tricky:docker"]
        );
        assert_eq!(
            name_candidates("me/app:1"),
            ["me/app:1", "docker.io/me/app:1"]
        );
        assert_eq!(name_candidates("quay.io/x/y:2"), ["quay.io/x/y:2"]);
        assert_eq!(
            name_candidates("localhost:5000/y"),
            ["localhost:5000/y", "localhost:5000/y:latest"]
        );
    }
}
