//! Rootfs listings (`tests/tools/rootfs-manifest.py tree`) and their
//! comparison, with the only two differences this target tolerates.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::harness::{s, tests_dir, tool};

/// `rootfs-manifest.py tree DIR --no-dir-mtime`, one string per line.
pub fn tree(dir: &Path) -> Result<Vec<String>> {
    let script = tests_dir().join("tools/rootfs-manifest.py");
    let out = tool(Command::new("python3").args([s(&script), "tree", s(dir), "--no-dir-mtime"]))?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// The `/`-rooted listing at the end of `oci-tricky/expected-rootfs.txt`
/// (the last run of lines that start with `/`).
pub fn expected_tricky() -> Result<Vec<String>> {
    let p = tests_dir().join("fixtures/oci-tricky/expected-rootfs.txt");
    let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .iter()
        .rposition(|l| l.starts_with('/'))
        .context("no listing in expected-rootfs.txt")?;
    let start = lines[..=end]
        .iter()
        .rposition(|l| !l.starts_with('/'))
        .map_or(0, |i| i + 1);
    Ok(lines[start..=end].iter().map(|l| l.to_string()).collect())
}

/// [`expected_tricky`] as `backend` can hold it here: on zfs-fuse, which
/// stores no xattrs, the lines of the files that carry some (and only
/// those) lose their `xattrs{…}` token.
pub fn expected_tricky_on(backend: &str) -> Result<Vec<String>> {
    let lines = expected_tricky()?;
    if backend != "zfs" || drivers_zfs::stores_xattrs() {
        return Ok(lines);
    }
    lines
        .into_iter()
        .map(|l| {
            let pinned = ZFS_FUSE_XATTR_LINES.contains(&path_of(&l));
            anyhow::ensure!(
                pinned == l.contains("xattrs{"),
                "expected-rootfs.txt changed: {l:?} is {}in ZFS_FUSE_XATTR_LINES",
                if pinned { "" } else { "not " }
            );
            Ok(if pinned { strip_xattrs(&l) } else { l })
        })
        .collect()
}

/// A listing of an unpack elsewhere (umoci on the host's filesystem) as
/// `backend` could hold it here: on zfs-fuse, the lines of
/// [`ZFS_FUSE_XATTR_LINES`] without their `xattrs{…}` token.
pub fn as_held_on(backend: &str, lines: Vec<String>) -> Vec<String> {
    if backend != "zfs" || drivers_zfs::stores_xattrs() {
        return lines;
    }
    lines
        .into_iter()
        .map(|l| match ZFS_FUSE_XATTR_LINES.contains(&path_of(&l)) {
            true => strip_xattrs(&l),
            false => l,
        })
        .collect()
}

/// `line` without its ` xattrs{…}` token. Not `filter_details`: an xattr
/// value may hold a space.
fn strip_xattrs(line: &str) -> String {
    match line.find(" xattrs{") {
        Some(start) => match line[start..].find('}') {
            Some(end) => format!("{}{}", &line[..start], &line[start + end + 1..]),
            None => line.to_owned(),
        },
        None => line.to_owned(),
    }
}

/// The lines of oci-tricky zfs-fuse cannot represent: its files with
/// xattrs (`security.capability`, `user.*`).
pub const ZFS_FUSE_XATTR_LINES: &[&str] = &["/data/exec.sh", "/xattr/cap-bin", "/xattr/user"];

/// Files of oci-tricky whose hardlink sibling `hl/orig` is replaced in
/// layer 2 and whited out in layer 3. Through overlayfs their link count
/// also counts the copies the whiteout hides in lower layers (3 and 2
/// instead of 2 and 1): a property of overlayfs that containerd, podman
/// and docker show too (fixture README, "How the peers unpack it";
/// `spec/conformance.md`, "Decisions").
const OVERLAY_NLINK_TOLERATED: &[&str] = &[
    "/hl/same-layer-link",
    "/hl/sub/deep-link",
    "/hl/cross-layer-link",
];

/// One listing line cut into its path and the rest.
fn path_of(line: &str) -> &str {
    line.split('\t').next().unwrap_or("")
}

/// Removes the tokens `keep` rejects from the details column.
fn filter_details(line: &str, drop: impl Fn(&str) -> bool) -> String {
    let mut cols: Vec<String> = line.split('\t').map(str::to_owned).collect();
    if let Some(d) = cols.get_mut(4) {
        *d = d
            .split(' ')
            .filter(|t| !drop(t))
            .collect::<Vec<_>>()
            .join(" ");
    }
    cols.join("\t")
}

/// The `nlink=N` of a line (1 when absent: the script omits it then).
fn nlink(line: &str) -> u64 {
    line.split('\t')
        .nth(4)
        .unwrap_or("")
        .split(' ')
        .find_map(|t| t.strip_prefix("nlink="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Checks `got` against `reference` line for line. Tolerated, and only
/// these:
/// 1. a `sparse(alloc=N)` token, on either side: we keep the holes of
///    sparse files, umoci (which made `expected-rootfs.txt` and unpacks
///    exports) writes them out; keeping holes is "desirable, not required"
///    (fixture README, "Sparse files");
/// 2. when `got` was read through an overlay2 mount, the `nlink=` of the
///    files in [`OVERLAY_NLINK_TOLERATED`], provided it is not lower than
///    the reference's (overlayfs only ever adds the hidden links).
pub fn compare(reference: &[String], got: &[String], got_on_overlay: bool) -> Result<()> {
    let is_sparse = |t: &str| t.starts_with("sparse(alloc=") && t.ends_with(')');
    let mut problems = Vec::new();
    let norm = |line: &str| -> String {
        let line = filter_details(line, is_sparse);
        if got_on_overlay && OVERLAY_NLINK_TOLERATED.contains(&path_of(&line)) {
            filter_details(&line, |t| t.starts_with("nlink="))
        } else {
            line
        }
    };
    let (mut i, mut j) = (0, 0);
    while i < reference.len() || j < got.len() {
        match (reference.get(i), got.get(j)) {
            (Some(r), Some(g)) if path_of(r) == path_of(g) => {
                if norm(r) != norm(g) {
                    problems.push(format!("  differs:\n    want {r}\n    got  {g}"));
                } else if got_on_overlay
                    && OVERLAY_NLINK_TOLERATED.contains(&path_of(g))
                    && nlink(g) < nlink(r)
                {
                    problems.push(format!(
                        "  fewer links than the reference:\n    want {r}\n    got  {g}"
                    ));
                }
                i += 1;
                j += 1;
            }
            // Both listings are sorted by path bytes: the smaller one is
            // missing from the other side.
            (Some(r), Some(g)) if path_of(r).as_bytes() < path_of(g).as_bytes() => {
                problems.push(format!("  missing: {r}"));
                i += 1;
            }
            (Some(_), Some(g)) | (None, Some(g)) => {
                problems.push(format!("  unexpected: {g}"));
                j += 1;
            }
            (Some(r), None) => {
                problems.push(format!("  missing: {r}"));
                i += 1;
            }
            (None, None) => unreachable!("loop condition"),
        }
    }
    if !problems.is_empty() {
        bail!(
            "the tree differs from the reference in {} entries:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    Ok(())
}

/// The comparison itself, without root: each tolerance is as narrow as its
/// comment says, and everything else is a difference.
pub fn self_check() -> Result<()> {
    struct Case {
        what: &'static str,
        reference: Vec<String>,
        got: Vec<String>,
        overlay: bool,
        pass: bool,
    }
    let line = |p: &str, d: &str| format!("{p}\tf\t0644\t0:0\t{d}");
    let hl = line("/hl/same-layer-link", "size=16 nlink=2 mtime=x");
    let hl3 = line("/hl/same-layer-link", "size=16 nlink=3 mtime=x");
    let hl1 = line("/hl/same-layer-link", "size=16 mtime=x");
    let other = line("/a", "size=1 nlink=2 mtime=x");
    let other3 = line("/a", "size=1 nlink=3 mtime=x");
    let sparse = line("/s", "size=9 sha256=ab sparse(alloc=8) mtime=x");
    let dense = line("/s", "size=9 sha256=ab mtime=x");
    let changed = line("/s", "size=9 sha256=cd sparse(alloc=8) mtime=x");
    let case = |what, reference: &[&String], got: &[&String], overlay, pass| Case {
        what,
        reference: reference.iter().map(|l| l.to_string()).collect(),
        got: got.iter().map(|l| l.to_string()).collect(),
        overlay,
        pass,
    };
    let cases = [
        case("identical", &[&other], &[&other], false, true),
        case("sparse token", &[&dense], &[&sparse], false, true),
        case("more links on overlay", &[&hl], &[&hl3], true, true),
        case("more links, not overlay", &[&hl], &[&hl3], false, false),
        case("fewer links on overlay", &[&hl], &[&hl1], true, false),
        case("links of another file", &[&other], &[&other3], true, false),
        case("missing entry", &[&other, &dense], &[&other], false, false),
        case("extra entry", &[&other], &[&other, &dense], false, false),
        case("other detail", &[&dense], &[&changed], true, false),
    ];
    for c in cases {
        let r = compare(&c.reference, &c.got, c.overlay);
        anyhow::ensure!(r.is_ok() == c.pass, "{}: compare said {r:?}", c.what);
    }
    Ok(())
}
