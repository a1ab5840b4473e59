//! `drivers dedup`: find identical files across committed layers, let the
//! dedup plugin choose which to share, and share their extents with
//! `FIDEDUPERANGE`, which compares the bytes itself and never changes what
//! a file reads (or its times).
//!
//! Only committed layers are scanned: their files no longer change. A file
//! already sharing all its extents with its group's first file is left
//! out, so a second run finds nothing to do and reports nothing saved.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use drivers_api::DiffSource;
use drivers_sys::extents::{self, Dedupe, Extent};
use sha2::{Digest as _, Sha256};

use super::bindings::types;
use super::runtime::{Plugin, plugin_err};
use crate::error::{IoContext, Result};
use crate::store::Store;

/// Whether the filesystem holding the layers can share extents, and how.
pub fn sharing(store: &Store) -> std::result::Result<types::Sharing, String> {
    let dir = store.data_dir();
    let filesystem = crate::cli::fs_name(&dir);
    let block = rustix::fs::statvfs(&dir)
        .map(|s| s.f_bsize)
        .unwrap_or(4096)
        .max(512);
    match extents::probe_dedupe(&dir, block) {
        Ok(()) => Ok(types::Sharing {
            filesystem,
            block_size: block,
        }),
        Err(why) => Err(format!(
            "{filesystem} under {} cannot share extents between files ({why})",
            dir.display()
        )),
    }
}

/// A file the scan found.
#[derive(Clone, Debug)]
struct Found {
    layer: String,
    rel: String,
    path: PathBuf,
}

/// The groups of identical files, and where each file is.
#[derive(Debug, Default)]
pub struct Scan {
    /// What `plan-dedup` is asked.
    pub groups: Vec<types::DupGroup>,
    /// Regular files looked at.
    pub files: u64,
    /// Files hashed (those sharing a size with another).
    pub hashed: u64,
    paths: BTreeMap<(String, String), PathBuf>,
}

/// Where a layer's own files are.
struct LayerFiles {
    /// The directory to walk.
    dir: PathBuf,
    /// For a snapshot of its parent (btrfs), the only inodes that can be
    /// the layer's own (closed upwards, so directories outside it hold
    /// none); the rest are the parent's, shared already.
    only: Option<BTreeSet<u64>>,
}

/// Where layer `chain_id`'s own files are, or `None` when the backend
/// cannot say.
fn layer_files(store: &Store, chain_id: &str) -> Option<LayerFiles> {
    let (dir, only) = match store.diff_source(chain_id) {
        Ok(DiffSource::Compare { layer, .. }) => (layer, None),
        Ok(DiffSource::OverlayUpper { upper, .. }) => (upper, None),
        Ok(DiffSource::Snapshot { layer, changed, .. }) => (layer, Some(changed)),
        Ok(_) => return None,
        Err(e) => {
            tracing::debug!(chain_id, error = %e, "layer not scanned");
            return None;
        }
    };
    Some(LayerFiles { dir, only })
}

/// Regular files of `layer` of at least `min` bytes, without following
/// symlinks; `(size, dev, ino, relative path, path)`.
fn walk(
    layer: &LayerFiles,
    min: u64,
    out: &mut Vec<(u64, u64, u64, String, PathBuf)>,
) -> Result<()> {
    let dir = &layer.dir;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ctx("read directory", &d)? {
            let e = e.ctx("read directory", &d)?;
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).ctx("stat", &p)?;
            if layer.only.as_ref().is_some_and(|o| !o.contains(&m.ino())) {
                continue;
            }
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && m.len() >= min {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.push((m.len(), m.dev(), m.ino(), rel, p));
            }
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).ctx("open", path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ctx("read", path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Physical extents of `path`, or `None` when they cannot be read.
fn physical(path: &Path) -> Option<Vec<(u64, u64, u64)>> {
    let f = std::fs::File::open(path).ok()?;
    let ext: Vec<Extent> = extents::extents(f.as_fd()).ok()?;
    Some(
        ext.iter()
            .map(|e| (e.logical, e.physical, e.length))
            .collect(),
    )
}

/// Finds groups of identical files (same size, then same sha256) of at
/// least one block across the committed layers of `store`.
pub fn scan(store: &Store, block: u64) -> Result<Scan> {
    let mut found = Vec::new();
    let mut by_size: BTreeMap<u64, Vec<Found>> = BTreeMap::new();
    let mut seen_inodes = BTreeSet::new();
    let mut scan = Scan::default();
    for l in store.layers()? {
        let Some(files) = layer_files(store, &l.chain_id) else {
            continue;
        };
        found.clear();
        walk(&files, block, &mut found)?;
        for (size, dev, ino, rel, path) in found.drain(..) {
            scan.files += 1;
            // Hard links inside a layer are one file already.
            if !seen_inodes.insert((dev, ino)) {
                continue;
            }
            by_size.entry(size).or_default().push(Found {
                layer: l.chain_id.clone(),
                rel,
                path,
            });
        }
    }
    for (size, files) in by_size {
        if files.len() < 2 {
            continue;
        }
        let mut by_hash: BTreeMap<String, Vec<Found>> = BTreeMap::new();
        for f in files {
            scan.hashed += 1;
            by_hash.entry(hash_file(&f.path)?).or_default().push(f);
        }
        for (hash, mut files) in by_hash {
            if files.len() < 2 {
                continue;
            }
            files.sort_by(|a, b| (&a.layer, &a.rel).cmp(&(&b.layer, &b.rel)));
            let first = physical(&files[0].path);
            if first.is_some() && files[1..].iter().all(|f| physical(&f.path) == first) {
                continue;
            }
            let refs = files
                .iter()
                .map(|f| types::FileRef {
                    layer: f.layer.clone(),
                    path: f.rel.clone(),
                })
                .collect();
            for f in files {
                scan.paths.insert((f.layer, f.rel), f.path);
            }
            scan.groups.push(types::DupGroup {
                content_hash: hash,
                size_bytes: size,
                files: refs,
            });
        }
    }
    Ok(scan)
}

/// Checks the plugin's actions against the scan: each action's files come
/// from one group, have at least one target, and no file is named twice.
pub fn validate(
    req: &types::DedupRequest,
    actions: &[types::DedupAction],
) -> std::result::Result<(), String> {
    let group_of: BTreeMap<(&str, &str), usize> = req
        .groups
        .iter()
        .enumerate()
        .flat_map(|(i, g)| {
            g.files
                .iter()
                .map(move |f| ((f.layer.as_str(), f.path.as_str()), i))
        })
        .collect();
    let show = |f: &types::FileRef| {
        let s = format!("{}:{}", f.layer, f.path);
        let clipped: String = s.chars().take(120).collect();
        format!("{clipped:?}")
    };
    let mut seen = BTreeSet::new();
    for a in actions {
        let Some(g) = group_of.get(&(a.source.layer.as_str(), a.source.path.as_str())) else {
            return Err(format!(
                "named {}, which is not a file the host offered",
                show(&a.source)
            ));
        };
        if a.targets.is_empty() {
            return Err(format!("gave no targets for {}", show(&a.source)));
        }
        for f in std::iter::once(&a.source).chain(&a.targets) {
            match group_of.get(&(f.layer.as_str(), f.path.as_str())) {
                None => {
                    return Err(format!(
                        "named {}, which is not a file the host offered",
                        show(f)
                    ));
                }
                Some(x) if x != g => {
                    return Err(format!(
                        "paired {} with {}, whose contents differ",
                        show(&a.source),
                        show(f)
                    ));
                }
                Some(_) => {}
            }
            if !seen.insert((f.layer.as_str(), f.path.as_str())) {
                return Err(format!("named {} twice", show(f)));
            }
        }
    }
    Ok(())
}

/// One target of an action.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Target {
    /// The layer.
    pub layer: String,
    /// The path inside it.
    pub path: String,
    /// `would share`, `shared`, `already shared` or `skipped`.
    pub result: String,
    /// Bytes now sharing the source's extents.
    pub bytes: u64,
}

/// One action, as carried out.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Action {
    /// The file whose extents are kept.
    pub source_layer: String,
    /// Its path.
    pub source_path: String,
    /// The file size.
    pub size: u64,
    /// The files made to share them.
    pub targets: Vec<Target>,
}

/// What `drivers dedup` did or would do.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    /// False when the filesystem cannot share extents; nothing was done.
    pub supported: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The plugin that chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// True for `--dry-run`.
    pub dry_run: bool,
    /// The filesystem.
    pub filesystem: String,
    /// Regular files scanned.
    pub files_scanned: u64,
    /// Groups of identical files found.
    pub groups: usize,
    /// What the plan would save at most.
    pub planned_bytes: u64,
    /// Bytes that now share extents and no longer take space of their own.
    pub bytes_saved: u64,
    /// The plan, in order.
    pub actions: Vec<Action>,
}

impl Outcome {
    /// The answer on a filesystem that cannot share.
    pub fn unsupported(filesystem: String, reason: String, dry_run: bool) -> Outcome {
        Outcome {
            supported: false,
            reason: Some(reason),
            plugin: None,
            dry_run,
            filesystem,
            files_scanned: 0,
            groups: 0,
            planned_bytes: 0,
            bytes_saved: 0,
            actions: Vec::new(),
        }
    }
}

/// Shares `target`'s extents with `src` unless they already are; returns
/// the result text and the bytes saved.
fn share(
    src: &std::fs::File,
    src_ext: &Option<Vec<(u64, u64, u64)>>,
    target: &Path,
    size: u64,
) -> (String, u64) {
    if src_ext.is_some() && &physical(target) == src_ext {
        return ("already shared".into(), 0);
    }
    let dst = match std::fs::File::open(target) {
        Ok(f) => f,
        Err(e) => return (format!("skipped: {e}"), 0),
    };
    match extents::dedupe_range(src.as_fd(), 0, dst.as_fd(), 0, size) {
        Ok(Dedupe::Same(n)) => ("shared".into(), n),
        Ok(Dedupe::Differs) => ("skipped: contents changed since the scan".into(), 0),
        Err(e) => (format!("skipped: {e}"), 0),
    }
}

/// Asks `plugin` which of `scan`'s groups to share and, unless `dry_run`,
/// shares them.
pub fn run(plugin: &Plugin, sharing: types::Sharing, scan: Scan, dry_run: bool) -> Result<Outcome> {
    let req = types::DedupRequest {
        groups: scan.groups,
        sharing,
    };
    let actions = plugin.plan_dedup(&req)?;
    validate(&req, &actions).map_err(|why| {
        plugin_err(
            plugin.name(),
            format!("{why}; the plan was refused and nothing was shared"),
        )
    })?;
    let size_of: BTreeMap<(&str, &str), u64> = req
        .groups
        .iter()
        .flat_map(|g| {
            g.files
                .iter()
                .map(move |f| ((f.layer.as_str(), f.path.as_str()), g.size_bytes))
        })
        .collect();
    let block = req.sharing.block_size.max(1);
    let mut out = Outcome {
        supported: true,
        reason: None,
        plugin: Some(plugin.name().to_owned()),
        dry_run,
        filesystem: req.sharing.filesystem.clone(),
        files_scanned: scan.files,
        groups: req.groups.len(),
        planned_bytes: 0,
        bytes_saved: 0,
        actions: Vec::new(),
    };
    for a in &actions {
        let size = size_of[&(a.source.layer.as_str(), a.source.path.as_str())];
        out.planned_bytes += size / block * block * a.targets.len() as u64;
        let src_path = &scan.paths[&(a.source.layer.clone(), a.source.path.clone())];
        let src = if dry_run {
            None
        } else {
            std::fs::File::open(src_path).ok()
        };
        let src_ext = if dry_run { None } else { physical(src_path) };
        let mut targets = Vec::new();
        for t in &a.targets {
            let (result, bytes) = match &src {
                None if dry_run => ("would share".to_owned(), 0),
                None => ("skipped: cannot open the source".to_owned(), 0),
                Some(f) => share(
                    f,
                    &src_ext,
                    &scan.paths[&(t.layer.clone(), t.path.clone())],
                    size,
                ),
            };
            out.bytes_saved += bytes;
            targets.push(Target {
                layer: t.layer.clone(),
                path: t.path.clone(),
                result,
                bytes,
            });
        }
        out.actions.push(Action {
            source_layer: a.source.layer.clone(),
            source_path: a.source.path.clone(),
            size,
            targets,
        });
    }
    tracing::info!(
        plugin = plugin.name(),
        saved = out.bytes_saved,
        dry_run,
        "dedup done"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(layer: &str, path: &str) -> types::FileRef {
        types::FileRef {
            layer: layer.into(),
            path: path.into(),
        }
    }

    /// Actions must stay inside one offered group and name each file once.
    #[test]
    fn validate_rules() {
        let group = |h: &str, files: Vec<types::FileRef>| types::DupGroup {
            content_hash: h.into(),
            size_bytes: 8192,
            files,
        };
        let req = types::DedupRequest {
            groups: vec![
                group("x", vec![f("a", "1"), f("b", "1"), f("c", "1")]),
                group("y", vec![f("a", "2"), f("b", "2")]),
            ],
            sharing: types::Sharing {
                filesystem: "xfs".into(),
                block_size: 4096,
            },
        };
        let act = |s, t: Vec<types::FileRef>| types::DedupAction {
            source: s,
            targets: t,
        };
        assert!(validate(&req, &[act(f("a", "1"), vec![f("b", "1"), f("c", "1")])]).is_ok());
        for (plan, needle) in [
            (
                vec![act(f("z", "9"), vec![f("a", "1")])],
                "not a file the host offered",
            ),
            (
                vec![act(f("a", "1"), vec![f("../etc", "shadow")])],
                "not a file the host offered",
            ),
            (vec![act(f("a", "1"), vec![f("a", "2")])], "contents differ"),
            (vec![act(f("a", "1"), vec![])], "no targets"),
            (
                vec![
                    act(f("a", "1"), vec![f("b", "1")]),
                    act(f("b", "1"), vec![f("c", "1")]),
                ],
                "twice",
            ),
        ] {
            let e = validate(&req, &plan).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
