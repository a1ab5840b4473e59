//! Reading images made by other tools: an OCI image layout directory, an OCI
//! archive (a tar of a layout) and a `docker save` archive, each turned into
//! the same [`SourceImage`] list. Small JSON documents are verified against
//! their digests here; layer blobs are verified while they are applied.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

use crate::content::{Digest, read_verified};
use crate::error::{Error, IoContext, Result};
use crate::store::Store;

/// The largest manifest, index or config accepted (real ones are a few KiB).
pub const MAX_JSON: u64 = 4 << 20;

/// Annotation containerd and docker put on index entries: the full name.
const ANN_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for a tag or name.
const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One image found in a source.
#[derive(Debug)]
pub struct SourceImage {
    /// Names recorded for it (tags), best first; may be empty.
    pub names: Vec<String>,
    /// The manifest as found (digest, bytes, media type); `None` for `docker
    /// save` archives, which have none and get one synthesized.
    pub manifest: Option<(Digest, Vec<u8>, String)>,
    /// The config blob and its digest.
    pub config: (Digest, Vec<u8>),
    /// The config's media type.
    pub config_media_type: String,
    /// Layers, bottom first.
    pub layers: Vec<SourceLayer>,
}

/// One layer blob of a source image.
#[derive(Clone, Debug)]
pub struct SourceLayer {
    /// Where the blob is.
    pub path: PathBuf,
    /// Its digest, when a manifest names it.
    pub digest: Option<Digest>,
    /// Its media type, when a manifest names it.
    pub media_type: Option<String>,
    /// Its size, when a manifest names it.
    pub size: Option<u64>,
}

/// What a path held.
#[derive(Debug)]
pub struct Source {
    /// A phrase for messages, e.g. "OCI layout /srv/img".
    pub desc: String,
    /// The images found.
    pub images: Vec<SourceImage>,
    /// True when blobs are private staging copies that may be moved.
    pub staged: bool,
}

fn bad(desc: &str, reason: impl Into<String>) -> Error {
    Error::BadImage {
        source_desc: desc.to_owned(),
        reason: reason.into(),
    }
}

/// Opens `path`: a layout directory, or a tar (plain or gzip) holding a
/// layout or a `docker save` archive, unpacked into the operation's staging
/// area first.
pub fn open(store: &Store, path: &Path) -> Result<Source> {
    let meta = std::fs::metadata(path).ctx("read", path)?;
    if meta.is_dir() {
        let desc = format!("OCI layout {}", path.display());
        return Ok(Source {
            images: read_layout(path, &desc)?,
            desc,
            staged: false,
        });
    }
    let dir = store.staging_file("archive")?;
    std::fs::create_dir_all(&dir).ctx("create staging directory", &dir)?;
    let desc = format!("archive {}", path.display());
    unpack_archive(path, &dir, &desc)?;
    let images = if dir.join("index.json").exists() && dir.join("oci-layout").exists() {
        read_layout(&dir, &desc)?
    } else if dir.join("manifest.json").exists() {
        read_docker(&dir, &desc)?
    } else {
        return Err(bad(
            &desc,
            "neither an OCI archive (no oci-layout and index.json) nor a docker save archive (no manifest.json)",
        ));
    };
    Ok(Source {
        images,
        desc,
        staged: true,
    })
}

fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(d.hex())
}

fn digest_of(desc: &str, d: &Descriptor) -> Result<Digest> {
    Digest::parse(d.digest().as_ref()).map_err(|e| bad(desc, e.to_string()))
}

fn read_layout(dir: &Path, desc: &str) -> Result<Vec<SourceImage>> {
    if !dir.join("oci-layout").is_file() {
        return Err(bad(desc, "no oci-layout file: not an OCI image layout"));
    }
    let index_path = dir.join("index.json");
    let bytes = std::fs::read(&index_path).ctx("read", &index_path)?;
    let index =
        ImageIndex::from_reader(&bytes[..]).map_err(|e| bad(desc, format!("index.json: {e}")))?;
    let mut found = Vec::new();
    collect_manifests(dir, desc, index.manifests(), &mut found, 0)?;
    if found.is_empty() {
        return Err(bad(
            desc,
            format!("no image for {} in index.json", platform()),
        ));
    }
    found
        .into_iter()
        .map(|(d, names)| read_manifest(dir, desc, &d, names))
        .collect()
}

/// The platform images are chosen for, as OCI spells it.
fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        a => a,
    };
    format!("linux/{arch}")
}

fn names_of(d: &Descriptor) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(a) = d.annotations() {
        for k in [ANN_IMAGE_NAME, ANN_REF_NAME] {
            if let Some(v) = a.get(k).filter(|v| !v.is_empty() && !names.contains(*v)) {
                names.push(v.clone());
            }
        }
    }
    names
}

fn collect_manifests(
    dir: &Path,
    desc: &str,
    ds: &[Descriptor],
    out: &mut Vec<(Descriptor, Vec<String>)>,
    depth: u32,
) -> Result<()> {
    if depth > 4 {
        return Err(bad(desc, "image indexes nested more than 4 deep"));
    }
    for d in ds {
        if let Some(p) = d.platform() {
            let want = platform();
            if format!("{}/{}", p.os(), p.architecture()) != want {
                continue;
            }
        }
        match d.media_type() {
            MediaType::ImageIndex => {
                let digest = digest_of(desc, d)?;
                let bytes =
                    read_verified(&blob_path(dir, &digest), &digest, Some(d.size()), MAX_JSON)?;
                let idx = ImageIndex::from_reader(&bytes[..])
                    .map_err(|e| bad(desc, format!("index {digest}: {e}")))?;
                collect_manifests(dir, desc, idx.manifests(), out, depth + 1)?;
            }
            MediaType::Other(t)
                if t == "application/vnd.docker.distribution.manifest.list.v2+json" =>
            {
                let digest = digest_of(desc, d)?;
                let bytes =
                    read_verified(&blob_path(dir, &digest), &digest, Some(d.size()), MAX_JSON)?;
                let idx = ImageIndex::from_reader(&bytes[..])
                    .map_err(|e| bad(desc, format!("index {digest}: {e}")))?;
                collect_manifests(dir, desc, idx.manifests(), out, depth + 1)?;
            }
            _ => out.push((d.clone(), names_of(d))),
        }
    }
    Ok(())
}

/// Layer media types we can unpack.
pub fn layer_media_type_ok(t: &str) -> bool {
    matches!(
        t,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

fn read_manifest(
    dir: &Path,
    desc: &str,
    d: &Descriptor,
    names: Vec<String>,
) -> Result<SourceImage> {
    let digest = digest_of(desc, d)?;
    let bytes = read_verified(&blob_path(dir, &digest), &digest, Some(d.size()), MAX_JSON)?;
    let m = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| bad(desc, format!("manifest {digest}: {e}")))?;
    let cfg_digest = digest_of(desc, m.config())?;
    let cfg = read_verified(
        &blob_path(dir, &cfg_digest),
        &cfg_digest,
        Some(m.config().size()),
        MAX_JSON,
    )?;
    let mut layers = Vec::new();
    for l in m.layers() {
        let ld = digest_of(desc, l)?;
        let mt = l.media_type().to_string();
        if !layer_media_type_ok(&mt) {
            return Err(bad(
                desc,
                format!("layer {ld}: unsupported media type {mt}"),
            ));
        }
        let path = blob_path(dir, &ld);
        if !path.is_file() {
            let hint = l
                .urls()
                .as_ref()
                .and_then(|u| u.first())
                .map(|u| format!(" (a foreign layer at {u}; drivers does not download)"));
            return Err(bad(
                desc,
                format!("layer blob {ld} is missing{}", hint.unwrap_or_default()),
            ));
        }
        layers.push(SourceLayer {
            path,
            digest: Some(ld),
            media_type: Some(mt),
            size: Some(l.size()),
        });
    }
    Ok(SourceImage {
        names,
        manifest: Some((digest, bytes, d.media_type().to_string())),
        config: (cfg_digest, cfg),
        config_media_type: m.config().media_type().to_string(),
        layers,
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn read_docker(dir: &Path, desc: &str) -> Result<Vec<SourceImage>> {
    let mpath = dir.join("manifest.json");
    let bytes = std::fs::read(&mpath).ctx("read", &mpath)?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        what: format!("{desc}: manifest.json"),
        source: e,
    })?;
    let mut out = Vec::new();
    for e in entries {
        let cfg_path = inside(dir, &e.config, desc)?;
        let cfg = std::fs::read(&cfg_path).ctx("read", &cfg_path)?;
        let cfg_digest = Digest::of(&cfg);
        // The file is named by its digest ("<hex>.json" or "blobs/sha256/<hex>"): hold it to that.
        let stem = Path::new(&e.config)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if stem.len() == 64 && stem != cfg_digest.hex() {
            return Err(bad(
                desc,
                format!(
                    "config {}: digest mismatch: named {stem}, content is {cfg_digest}",
                    e.config
                ),
            ));
        }
        let layers = e
            .layers
            .iter()
            .map(|l| {
                Ok(SourceLayer {
                    path: inside(dir, l, desc)?,
                    digest: None,
                    media_type: None,
                    size: None,
                })
            })
            .collect::<Result<_>>()?;
        out.push(SourceImage {
            names: e.repo_tags.unwrap_or_default(),
            manifest: None,
            config: (cfg_digest, cfg),
            config_media_type: "application/vnd.oci.image.config.v1+json".into(),
            layers,
        });
    }
    if out.is_empty() {
        return Err(bad(desc, "manifest.json lists no image"));
    }
    Ok(out)
}

/// `rel` under `dir`, refusing absolute paths and `..`.
fn inside(dir: &Path, rel: &str, desc: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if !p
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad(desc, format!("path {rel:?} leaves the archive")));
    }
    Ok(dir.join(p))
}

/// Unpacks the files of an image archive (plain or gzip tar) into `dir`.
/// Only regular files, directories and links that stay inside are accepted:
/// this is a container of blobs, not a filesystem image.
fn unpack_archive(path: &Path, dir: &Path, desc: &str) -> Result<()> {
    let mut f = std::fs::File::open(path).ctx("open", path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).ctx("read", path)?;
    drop(f);
    let f = std::fs::File::open(path).ctx("open", path)?;
    let input: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut ar = tar::Archive::new(input);
    let mut links: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    let entries = ar
        .entries()
        .map_err(|e| bad(desc, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(desc, format!("corrupt tar: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| bad(desc, format!("bad entry name: {e}")))?
            .into_owned();
        let dst = inside(dir, &name.to_string_lossy(), desc)?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&dst).ctx("create directory", &dst)?
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(p) = dst.parent() {
                    std::fs::create_dir_all(p).ctx("create directory", p)?;
                }
                let mut out = std::fs::File::create(&dst).ctx("create", &dst)?;
                let want = entry.header().size().unwrap_or(0);
                let got = std::io::copy(&mut entry, &mut out).ctx("write", &dst)?;
                if got != want {
                    return Err(bad(
                        desc,
                        format!("{}: truncated ({got} of {want} bytes)", name.display()),
                    ));
                }
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| bad(desc, "link without target"))?;
                let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                    name.parent().unwrap_or(Path::new("")).join(&target)
                } else {
                    target.into_owned()
                };
                links.insert(
                    dst,
                    inside(
                        dir,
                        &normalize(&base).ok_or_else(|| bad(desc, "link leaves the archive"))?,
                        desc,
                    )?,
                );
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(bad(
                    desc,
                    format!(
                        "{}: unexpected entry type {other:?} in an image archive",
                        name.display()
                    ),
                ));
            }
        }
    }
    // Legacy docker archives link duplicate layers to the first copy.
    for (at, to) in links {
        if let Some(p) = at.parent() {
            std::fs::create_dir_all(p).ctx("create directory", p)?;
        }
        std::fs::hard_link(&to, &at).ctx("link", &at)?;
    }
    Ok(())
}

/// Lexically resolves `..` in a relative path; `None` if it climbs out.
fn normalize(p: &Path) -> Option<String> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => return None,
        }
    }
    Some(
        parts
            .iter()
            .map(|s| s.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths inside image archives may not climb out or be absolute.
    #[test]
    fn archive_paths_stay_inside() {
        let d = Path::new("/x");
        assert_eq!(inside(d, "a/b", "t").unwrap(), Path::new("/x/a/b"));
        assert_eq!(inside(d, "./a", "t").unwrap(), Path::new("/x/./a"));
        for bad in ["../a", "/etc/passwd", "a/../../b"] {
            assert!(inside(d, bad, "t").is_err(), "{bad}");
        }
        assert_eq!(normalize(Path::new("a/../b")).as_deref(), Some("b"));
        assert_eq!(normalize(Path::new("../b")), None);
    }

    /// Every layer media type real tools write is accepted; others are not.
    #[test]
    fn layer_media_types() {
        assert!(layer_media_type_ok(
            "application/vnd.oci.image.layer.v1.tar+zstd"
        ));
        assert!(layer_media_type_ok(
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        ));
        assert!(!layer_media_type_ok(
            "application/vnd.oci.image.config.v1+json"
        ));
    }
}
