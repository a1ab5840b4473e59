//! Reading the OCI image layouts under `tests/fixtures/` (index.json →
//! manifest → config) and applying their layers through the store.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use drivers_host::content::{Digest, chain_id};
use drivers_host::layers::Expect;

use crate::Fixture;

/// One layer of an image: its blob and what the manifest and config say.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The blob file.
    pub blob: PathBuf,
    /// Digest of the blob (manifest).
    pub digest: Digest,
    /// Digest of the uncompressed tar (config `rootfs.diff_ids`).
    pub diff_id: Digest,
}

/// `tests/fixtures/<name>/oci`.
pub fn layout(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
        .join("oci")
}

fn blob(dir: &Path, digest: &str) -> Result<PathBuf> {
    let d = Digest::parse(digest)?;
    Ok(dir.join("blobs/sha256").join(d.hex()))
}

fn json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))
}

fn str_at<'a>(v: &'a serde_json::Value, ptr: &str, what: &Path) -> Result<&'a str> {
    v.pointer(ptr)
        .and_then(|x| x.as_str())
        .with_context(|| format!("{}: no string at {ptr}", what.display()))
}

/// The layers of the first manifest of the layout at `dir`, bottom first.
pub fn layers(dir: &Path) -> Result<Vec<Layer>> {
    let index_path = dir.join("index.json");
    let index = json(&index_path)?;
    let manifest_path = blob(dir, str_at(&index, "/manifests/0/digest", &index_path)?)?;
    let manifest = json(&manifest_path)?;
    let config_path = blob(dir, str_at(&manifest, "/config/digest", &manifest_path)?)?;
    let config = json(&config_path)?;
    let descs = manifest
        .get("layers")
        .and_then(|l| l.as_array())
        .context("manifest has no layers")?;
    let diff_ids = config
        .pointer("/rootfs/diff_ids")
        .and_then(|l| l.as_array())
        .context("config has no rootfs.diff_ids")?;
    ensure!(
        descs.len() == diff_ids.len(),
        "{} layers but {} diff_ids",
        descs.len(),
        diff_ids.len()
    );
    descs
        .iter()
        .zip(diff_ids)
        .map(|(d, id)| {
            let digest = d
                .get("digest")
                .and_then(|x| x.as_str())
                .context("layer without digest")?;
            Ok(Layer {
                blob: blob(dir, digest)?,
                digest: Digest::parse(digest)?,
                diff_id: Digest::parse(id.as_str().context("diff_id is not a string")?)?,
            })
        })
        .collect()
}

/// Applies `layers` bottom up with `store.apply_layer`, checking the chain
/// id of each, and returns the top chain id.
pub fn apply_all(fx: &Fixture, layers: &[Layer]) -> Result<Digest> {
    let mut parent: Option<Digest> = None;
    for (i, l) in layers.iter().enumerate() {
        let f =
            std::fs::File::open(&l.blob).with_context(|| format!("open {}", l.blob.display()))?;
        let expect = Expect {
            digest: Some(l.digest.clone()),
            diff_id: Some(l.diff_id.clone()),
        };
        let applied = fx
            .store()
            .apply_layer(f, parent.as_ref(), &expect)
            .with_context(|| format!("apply layer {} ({})", i + 1, l.digest))?;
        let want = chain_id(parent.as_ref(), &l.diff_id);
        ensure!(
            applied.chain_id == want,
            "layer {}: chain id {} != {want}",
            i + 1,
            applied.chain_id
        );
        ensure!(
            applied.diff_id == l.diff_id,
            "layer {}: diff id {}",
            i + 1,
            applied.diff_id
        );
        ensure!(
            !applied.shared,
            "layer {}: reported as shared in a fresh store",
            i + 1
        );
        parent = Some(applied.chain_id);
    }
    parent.context("an image without layers")
}

/// `python3 tests/tools/rootfs-manifest.py tree DIR --no-dir-mtime`.
pub fn rootfs_manifest(dir: &Path) -> Result<String> {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/rootfs-manifest.py");
    let out = std::process::Command::new("python3")
        .arg(&tool)
        .arg("tree")
        .arg(dir)
        .arg("--no-dir-mtime")
        .output()
        .with_context(|| format!("run python3 {}", tool.display()))?;
    ensure!(
        out.status.success(),
        "{} failed with {}: {}",
        tool.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).context("rootfs-manifest output is not UTF-8")
}
