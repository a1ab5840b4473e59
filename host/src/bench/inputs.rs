//! The bench's inputs: the Debian image of `tools/make-debian-image.sh`,
//! its layers uncompressed for the `tar -x` floor, and synthetic images of
//! 1…500 tiny layers for the chain-depth workload.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::Digest as _;

/// Where `tools/make-debian-image.sh` caches its image.
fn image_cache() -> PathBuf {
    std::env::var_os("DRIVERS_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/drivers-images"))
        .join("debian-bookworm")
}

/// The cached Debian image, or why there is none.
pub fn default_image() -> crate::Result<PathBuf> {
    let dir = image_cache();
    if dir.join(".complete").is_file() && dir.join("index.json").is_file() {
        return Ok(dir);
    }
    Err(crate::Error::Precondition(format!(
        "no bench image at {}: build it with tools/make-debian-image.sh (debootstrap + umoci, \
         cached), or pass --image DIR (an OCI image layout)",
        dir.display()
    )))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("unsupported digest {digest}"))?;
    Ok(layout.join("blobs/sha256").join(hex))
}

/// The layer blobs of the first image of OCI layout `layout`, bottom first,
/// with their media types.
pub fn layer_blobs(layout: &Path) -> Result<Vec<(PathBuf, String)>> {
    let index = read_json(&layout.join("index.json"))?;
    let m = index["manifests"][0]["digest"]
        .as_str()
        .with_context(|| format!("{}: index.json lists no manifest", layout.display()))?;
    let manifest = read_json(&blob(layout, m)?)?;
    let layers = manifest["layers"]
        .as_array()
        .context("the manifest lists no layers")?;
    layers
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().context("a layer without digest")?;
            let mt = l["mediaType"].as_str().unwrap_or_default().to_owned();
            Ok((blob(layout, d)?, mt))
        })
        .collect()
}

/// A reader of a layer blob, decompressed as its media type (or its first
/// bytes) say.
fn open_layer(path: &Path, media_type: &str) -> Result<Box<dyn Read>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    drop(f);
    let f = std::fs::File::open(path)?;
    Ok(
        if media_type.ends_with("+gzip") || magic[..n.min(2)] == [0x1f, 0x8b] {
            Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
                f,
            )))
        } else if media_type.ends_with("+zstd") || magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
            Box::new(zstd::stream::read::Decoder::new(f)?)
        } else {
            Box::new(f)
        },
    )
}

/// Writes every layer of `layout` uncompressed into `dir` (`0.tar`,
/// `1.tar`, …) for the `tar -x` floor; returns the paths and the total
/// uncompressed size.
pub fn uncompressed_layers(layout: &Path, dir: &Path) -> Result<(Vec<PathBuf>, u64)> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    let mut total = 0;
    for (i, (path, mt)) in layer_blobs(layout)?.iter().enumerate() {
        let dst = dir.join(format!("{i}.tar"));
        let mut r = open_layer(path, mt)?;
        let mut w = std::fs::File::create(&dst)?;
        total += std::io::copy(&mut r, &mut w)
            .with_context(|| format!("decompress {}", path.display()))?;
        out.push(dst);
    }
    if out.is_empty() {
        bail!("{}: the image has no layers", layout.display());
    }
    Ok((out, total))
}

/// Path, inside a chain image, of the file the read workload reads: in the
/// bottom layer, below a directory every layer has, so a lookup visits
/// every layer.
pub const CHAIN_FILE: &str = "shared/bottom/data";

/// Writes an OCI layout of `depth` uncompressed layers into `dir`: layer 0
/// holds [`CHAIN_FILE`]; every layer adds one file to `shared/`.
pub fn chain_layout(dir: &Path, depth: usize) -> Result<PathBuf> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<(String, usize)> {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes)?;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let mut diff_ids = Vec::new();
    let mut layers = Vec::new();
    for i in 0..depth {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, data: &[u8]| -> Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data)?;
            Ok(())
        };
        add("shared/", tar::EntryType::Directory, &[])?;
        if i == 0 {
            add("shared/bottom/", tar::EntryType::Directory, &[])?;
            add(CHAIN_FILE, tar::EntryType::Regular, &[b'x'; 4096])?;
        }
        add(
            &format!("shared/layer{i:03}"),
            tar::EntryType::Regular,
            format!("{i}\n").as_bytes(),
        )?;
        let bytes = b.into_inner()?;
        let (d, size) = put(&bytes)?;
        diff_ids.push(d.clone());
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size,
        }));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cs) = put(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layers,
    });
    let (md, ms) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
        "annotations": {"org.opencontainers.image.ref.name": format!("chain{depth}")},
    }]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(dir.to_owned())
}
