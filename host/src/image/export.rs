//! `image export`: an OCI archive (a tar of an OCI image layout) holding
//! exactly the blobs the image was imported or committed with.

use std::io::Write;
use std::path::Path;

use crate::content::Digest;
use crate::error::{Error, IoContext, Result};
use crate::store::{Store, random_hex};

use super::MANIFEST_MEDIA_TYPE;

impl Store {
    /// Writes image `name` as an OCI archive to `out`, atomically: the file
    /// appears whole or not at all.
    pub fn export_image(&self, name: &str, out: &Path) -> Result<()> {
        let img = self.image(name)?;
        let name = img.name.as_str();
        let manifest = Digest::parse(&img.manifest_digest)?;
        let mut blobs = vec![manifest.clone(), Digest::parse(&img.config_digest)?];
        for l in &img.layers {
            blobs.push(Digest::parse(&l.digest)?);
        }
        for b in &blobs {
            if !self.has_blob(b)? {
                return Err(Error::Precondition(format!(
                    "blob {b} of image {name} is missing from the content store"
                )));
            }
        }
        let msize = std::fs::metadata(self.blob_path(&manifest))
            .ctx("read", self.blob_path(&manifest))?
            .len();
        // Tools such as umoci address a layout by tag alone; the full name
        // goes in containerd's annotation, which docker and containerd read.
        let tag = name
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'))
            .unwrap_or("latest");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": manifest.as_str(),
                "size": msize,
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        });
        let index = serde_json::to_vec(&index).map_err(|e| Error::Json {
            what: "index.json".into(),
            source: e,
        })?;
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            out.file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default(),
            random_hex(4)
        ));
        let res = self.write_archive(&tmp, &index, &blobs);
        match res {
            Ok(()) => std::fs::rename(&tmp, out).ctx("move export into place", out),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn write_archive(&self, tmp: &Path, index: &[u8], blobs: &[Digest]) -> Result<()> {
        let f = std::fs::File::create(tmp).ctx("create", tmp)?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(f));
        b.mode(tar::HeaderMode::Deterministic);
        let small = |b: &mut tar::Builder<_>, path: &str, data: &[u8]| -> Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, data).ctx("write", tmp)
        };
        small(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        small(&mut b, "index.json", index)?;
        let mut seen = std::collections::HashSet::new();
        for d in blobs.iter().filter(|d| seen.insert((*d).clone())) {
            let path = self.blob_path(d);
            let mut f = std::fs::File::open(&path).ctx("open blob", &path)?;
            let mut h = tar::Header::new_ustar();
            h.set_size(f.metadata().ctx("read", &path)?.len());
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), &mut f)
                .ctx("write", tmp)?;
        }
        let mut w = b.into_inner().ctx("write", tmp)?;
        w.flush().ctx("write", tmp)?;
        w.into_inner()
            .map_err(|e| e.into_error())
            .ctx("write", tmp)?
            .sync_all()
            .ctx("sync", tmp)
    }
}
