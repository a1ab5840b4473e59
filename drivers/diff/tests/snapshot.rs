//! `DiffSource::Snapshot` against its reference, `DiffSource::Compare`: with
//! any `changed` set that keeps the snapshot promise, `changes` and
//! `write_layer` give exactly what comparing the full trees gives.
//!
//! A btrfs snapshot shares inode numbers with its source. On the test's
//! ordinary filesystem the same sharing is built with hardlinks: the layer
//! gets fresh directories and a hardlink to every non-directory of the
//! parent, so unchanged files are the very same inodes on both sides, and
//! the layer's changes replace files rather than edit shared ones. The
//! real thing, on btrfs, is tested in drivers-btrfs and the conformance
//! suite.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use drivers_api::DiffSource;

/// Recreates `parent`'s directories under `layer` (same modes and owners)
/// and hardlinks every other entry.
fn link_tree(parent: &Path, layer: &Path) {
    for e in std::fs::read_dir(parent).unwrap() {
        let e = e.unwrap();
        let (from, to) = (e.path(), layer.join(e.file_name()));
        let md = std::fs::symlink_metadata(&from).unwrap();
        if md.is_dir() {
            mkdir(&to, md.mode() & 0o7777);
            chown(&to, md.uid(), md.gid());
            link_tree(&from, &to);
            set_mtime(&to, md.mtime(), md.mtime_nsec());
        } else {
            std::fs::hard_link(&from, &to).unwrap();
        }
    }
}

/// Inode numbers of every entry below `root`, split into directories and
/// the rest.
fn inodes(root: &Path) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let (mut dirs, mut other) = (BTreeSet::new(), BTreeSet::new());
    fn walk(d: &Path, dirs: &mut BTreeSet<u64>, other: &mut BTreeSet<u64>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                dirs.insert(md.ino());
                walk(&p, dirs, other);
            } else {
                other.insert(md.ino());
            }
        }
    }
    walk(root, &mut dirs, &mut other);
    (dirs, other)
}

/// What a snapshot-aware producer may say changed: every directory (none
/// is shared here) and every file the parent does not have, that is every
/// inode the layer's changes made.
fn promised(layer: &Path, parent: &Path) -> BTreeSet<u64> {
    let (dirs, files) = inodes(layer);
    let (_, parent_files) = inodes(parent);
    let mut s = dirs;
    s.extend(files.difference(&parent_files));
    s
}

/// Requires `Snapshot { changed }` to give `Compare`'s changes and tar.
fn assert_same(layer: &Path, parent: &Path, changed: BTreeSet<u64>, label: &str) {
    let reference = compare(layer, Some(parent));
    let snap = DiffSource::Snapshot {
        layer: layer.to_owned(),
        parent: parent.to_owned(),
        changed,
    };
    let want = drivers_diff::changes(&reference).unwrap();
    assert_eq!(
        lines(&drivers_diff::changes(&snap).unwrap()),
        lines(&want),
        "{label}: changes"
    );
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let ra = drivers_diff::write_layer(&reference, &mut a).unwrap();
    let rb = drivers_diff::write_layer(&snap, &mut b).unwrap();
    assert_eq!(ra, rb, "{label}: reports");
    assert!(a == b, "{label}: the tars differ");
}

/// A parent with files, a hardlink pair, a symlink, a device, xattrs and
/// nested directories; a layer sharing its unchanged inodes that adds,
/// deletes, replaces, retypes, re-owns and re-links. Both the tightest
/// honest `changed` set and the set of everything give the reference
/// result, which is not empty.
#[test]
fn snapshot_equals_compare() {
    require_root();
    let parent = tmp();
    let p = |rel: &str| parent.path().join(rel);
    mkdir(&p("etc/conf.d"), 0o755);
    write(&p("etc/motd"), b"hello\n", 0o644);
    write(&p("etc/conf.d/a"), b"a\n", 0o600);
    write(&p("etc/conf.d/b"), b"b\n", 0o600);
    std::fs::hard_link(p("etc/conf.d/a"), p("etc/conf.d/a-link")).unwrap();
    std::os::unix::fs::symlink("motd", p("etc/motd-link")).unwrap();
    mkdir(&p("usr/share/doc/pkg"), 0o755);
    write(
        &p("usr/share/doc/pkg/README"),
        &random_content(5000, 1),
        0o644,
    );
    write(&p("usr/bin/tool"), &random_content(300, 2), 0o755);
    mkdir(&p("var/lib/gone"), 0o700);
    write(&p("var/lib/gone/data"), b"d", 0o600);
    mkdir(&p("dev"), 0o755);
    mknod(
        &p("dev/null"),
        rustix::fs::FileType::CharacterDevice,
        0o666,
        rustix::fs::makedev(1, 3),
    );
    set_xattr(&p("etc/motd"), "user.k", b"v");
    set_mtime(&p("usr/bin/tool"), 1_000_000_000, 0);

    let layer = tmp();
    link_tree(parent.path(), layer.path());
    let l = |rel: &str| layer.path().join(rel);
    // Untouched shared subtree: usr/share. Changes elsewhere.
    std::fs::remove_file(l("etc/motd")).unwrap();
    write(&l("etc/motd"), b"changed\n", 0o644);
    write(&l("etc/new"), b"new\n", 0o640);
    std::fs::remove_file(l("etc/conf.d/b")).unwrap();
    std::fs::hard_link(l("etc/conf.d/a"), l("etc/conf.d/a-second")).unwrap();
    drivers_fs::remove_tree(&l("var/lib/gone")).unwrap();
    std::fs::remove_file(l("usr/bin/tool")).unwrap();
    mkdir(&l("usr/bin/tool"), 0o755);
    write(&l("usr/bin/tool/inner"), b"i", 0o644);
    chown(&l("dev"), 5, 6);
    set_xattr(&l("var"), "user.dir", b"x");

    assert!(
        !drivers_diff::changes(&compare(layer.path(), Some(parent.path())))
            .unwrap()
            .is_empty()
    );
    let tight = promised(layer.path(), parent.path());
    let (dirs, files) = inodes(layer.path());
    let every: BTreeSet<u64> = dirs.union(&files).copied().collect();
    assert!(
        tight.len() < every.len(),
        "the tight set must leave shared inodes out"
    );
    assert_same(layer.path(), parent.path(), tight, "tight set");
    assert_same(layer.path(), parent.path(), every, "every inode");
}

/// A layer that changed nothing but shares everything gives no changes
/// and an empty layer, like `Compare`, even with an empty `changed` set.
#[test]
fn unchanged_snapshot() {
    require_root();
    let parent = tmp();
    write(&parent.path().join("a/b/c"), b"c", 0o644);
    write(&parent.path().join("d"), b"d", 0o644);
    let layer = tmp();
    link_tree(parent.path(), layer.path());
    let changed = promised(layer.path(), parent.path());
    assert_same(layer.path(), parent.path(), changed, "shared files");
    assert!(
        drivers_diff::changes(&compare(layer.path(), Some(parent.path())))
            .unwrap()
            .is_empty()
    );
}

/// moby graphtest `DriverTestChanges` on a snapshot: rewritten, added and
/// deleted files in one directory, the rest shared.
#[test]
fn moby_changes_on_a_snapshot() {
    require_root();
    let parent = tmp();
    for j in 0..20u64 {
        write(
            &parent.path().join(format!("directory-0/file-{j}")),
            &random_content(64, 3 + j),
            0o755,
        );
        write(
            &parent.path().join(format!("directory-1/file-{j}")),
            &random_content(64, 3 + j),
            0o755,
        );
    }
    let layer = tmp();
    link_tree(parent.path(), layer.path());
    let d = layer.path().join("directory-0");
    for j in 0..20u64 {
        let f = d.join(format!("file-{j}"));
        match j % 3 {
            0 => {
                std::fs::remove_file(&f).unwrap();
                write(&f, &random_content(64, 6 + j), 0o755);
            }
            1 => write(
                &d.join(format!("file-6-{j}")),
                &random_content(64, 6 + j),
                0o755,
            ),
            _ => std::fs::remove_file(&f).unwrap(),
        }
    }
    let changed = promised(layer.path(), parent.path());
    assert_same(layer.path(), parent.path(), changed, "moby changes");
}
