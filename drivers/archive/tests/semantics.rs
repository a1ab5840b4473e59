//! What a layer means: entry types and attributes, changeset semantics
//! (duplicates, type changes, whiteouts, opaque markers) in both formats,
//! sparse files, stream endings and digests.
//!
//! Scenarios run in both formats: all layers applied onto one directory
//! (`Full`), and each into its own upper over the previous ones
//! (`OverlayUpper`), mounted read-only with overlayfs. The two merged trees
//! must list identically.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use common::*;
use drivers_archive::{Compression, Problem};

/// The layers applied in both formats; returns the sandbox (its root holds
/// the `Full` result) and the upper directories, bottom layer first. The
/// two merged trees must be identical and lower layers never written.
fn both(layers: &[Vec<u8>]) -> (Sandbox, Vec<PathBuf>) {
    both_over(layers, |_| {})
}

/// Like [`both`], with `base` preparing the full root and the bottom
/// layer's directory alike (what a real bottom layer cannot express).
fn both_over(layers: &[Vec<u8>], base: impl Fn(&std::path::Path)) -> (Sandbox, Vec<PathBuf>) {
    assert!(!layers.is_empty());
    let sb = Sandbox::new();
    base(&sb.root);
    for (i, layer) in layers.iter().enumerate() {
        apply(layer, &sb.full()).unwrap_or_else(|e| panic!("full, layer {i}: {}", chain(&e)));
    }
    let mut uppers: Vec<PathBuf> = vec![sb.dir("lower-base")];
    base(&uppers[0]);
    for (i, layer) in layers.iter().enumerate() {
        let upper_dir = sb.dir(&format!("lower{i}"));
        let lowers: Vec<PathBuf> = uppers.iter().rev().cloned().collect();
        let before: Vec<String> = lowers.iter().map(|l| snapshot(l)).collect();
        apply(layer, &upper(&upper_dir, &lowers))
            .unwrap_or_else(|e| panic!("overlay, layer {i}: {}", chain(&e)));
        assert!(
            before == lowers.iter().map(|l| snapshot(l)).collect::<Vec<_>>(),
            "a lower layer was written"
        );
        uppers.push(upper_dir);
    }
    let mnt = sb.dir("lower-mnt");
    let top_first: Vec<PathBuf> = uppers.iter().rev().cloned().collect();
    let merged = {
        let _m = Mounted::overlay(&top_first, &mnt);
        manifest(&mnt)
    };
    assert_eq!(
        merged,
        manifest(&sb.root),
        "overlay view differs from the full tree"
    );
    sb.assert_outside_untouched();
    uppers.remove(0);
    (sb, uppers)
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const CAP: &str = "0100000200200000000000000000000000000000";

/// Every entry type with its attributes, in the dialects real tools write:
/// file-type bits in the mode field, PAX uid/gid/mtime/xattrs, PAX and GNU
/// long names, non-UTF-8 names, `./` prefixes, a `.` root entry.
#[test]
fn entry_types_and_attributes() {
    let long = format!("long/{}", "n".repeat(150));
    let long_link = format!("long/{}", "h".repeat(150));
    let mut gnu_name = Entry::file("././@LongLink", format!("{long_link}\0"));
    gnu_name.ty = b'L';
    let mut gnu_link = Entry::file("././@LongLink", format!("{long}\0"));
    gnu_link.ty = b'K';
    let tar = Tar::new()
        .add(Entry::dir(".").mode(0o40750).mtime(5))
        .add(Entry::dir("./d").mode(0o40755).owner(1, 2).mtime(7))
        .add(
            Entry::file("./d/suid", "#!/bin/sh\n")
                .mode(0o104755)
                .owner(1000, 1000),
        )
        .add(Entry::file("d/cap", "bin").mode(0o755).owner(1, 1).pax(
            "SCHILY.xattr.security.capability",
            hex::decode(CAP).unwrap(),
        ))
        .add(
            Entry::file("d/user", "x")
                .pax("SCHILY.xattr.user.bin", [0u8, 0xff, 0x10])
                .pax("SCHILY.xattr.user.c", "hi"),
        )
        .add(
            Entry::file("d/ids", "x")
                .owner(7, 7)
                .pax("uid", "3000000000")
                .pax("gid", "42")
                .pax("mtime", "1234567890.25"),
        )
        .add(
            Entry::symlink("d/link", "../does/not/exist")
                .owner(5, 6)
                .mtime(9),
        )
        .add(Entry::hardlink("d/hard", "d/suid"))
        .add(Entry::device("dev/null", b'3', 1, 3).mode(0o20666))
        .add(Entry::device("dev/blk", b'4', 7, 200).mode(0o60660))
        .add(Entry::device("fifo", b'6', 0, 0).mode(0o10644))
        .add(Entry::dir("tmp").mode(0o41777))
        .add(Entry::dir("opq").pax("SCHILY.xattr.trusted.overlay.opaque", "y"))
        .add(Entry::file(&long, "pax name"))
        .add(gnu_name)
        .add(Entry::file(&long_link[..100], "gnu name"))
        .add(gnu_link)
        .add(Entry::hardlink("long/gnu-hard", &long[..100]))
        .add(Entry::file(b"caf\xe9", "latin1"))
        .finish();
    let sb = Sandbox::new();
    let report = apply(&tar, &sb.full()).unwrap();
    assert_eq!(report.compression, Compression::None);
    assert_eq!(
        (report.digest.clone(), report.diff_id.clone()),
        (sha256(&tar), sha256(&tar))
    );
    assert_eq!(
        (report.compressed_bytes, report.tar_bytes),
        (tar.len() as u64, tar.len() as u64)
    );
    assert_eq!(
        report.entries, 17,
        "PAX and GNU long-name headers are part of their entry"
    );
    assert_eq!(report.file_bytes, 10 + 3 + 1 + 1 + 8 + 8 + 6);

    let r = &sb.root;
    let m = |p: &str| meta(&r.join(p));
    assert_eq!(
        (m("").mode() & 0o7777, m("").mtime()),
        (0o750, 5),
        "the `.` entry sets the root"
    );
    assert_eq!(
        (
            m("d").mode() & 0o7777,
            m("d").uid(),
            m("d").gid(),
            m("d").mtime()
        ),
        (0o755, 1, 2, 7)
    );
    assert_eq!(
        (m("d/suid").mode() & 0o7777, m("d/suid").uid()),
        (0o4755, 1000),
        "setuid survives the chown"
    );
    assert_eq!(
        xattr(&r.join("d/cap"), "security.capability"),
        Some(hex::decode(CAP).unwrap()),
        "set after chown"
    );
    assert_eq!(
        xattr(&r.join("d/user"), "user.bin"),
        Some(vec![0, 0xff, 0x10])
    );
    assert_eq!(xattr(&r.join("d/user"), "user.c"), Some(b"hi".to_vec()));
    assert_eq!(
        (m("d/ids").uid(), m("d/ids").gid()),
        (3_000_000_000, 42),
        "PAX ids override the header"
    );
    assert_eq!(
        (m("d/ids").mtime(), m("d/ids").mtime_nsec()),
        (1234567890, 250_000_000)
    );
    assert_eq!(
        std::fs::read_link(r.join("d/link")).unwrap(),
        PathBuf::from("../does/not/exist")
    );
    assert_eq!(
        (m("d/link").uid(), m("d/link").gid(), m("d/link").mtime()),
        (5, 6, 9)
    );
    assert_eq!(
        (m("d/hard").ino(), m("d/hard").nlink()),
        (m("d/suid").ino(), 2)
    );
    assert!(m("dev/null").file_type().is_char_device());
    assert_eq!(
        (m("dev/null").rdev(), m("dev/null").mode() & 0o7777),
        (rustix::fs::makedev(1, 3), 0o666)
    );
    assert!(m("dev/blk").file_type().is_block_device());
    assert_eq!(m("dev/blk").rdev(), rustix::fs::makedev(7, 200));
    assert!(m("fifo").file_type().is_fifo());
    assert_eq!(m("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(
        xattr(&r.join("opq"), "trusted.overlay.opaque"),
        None,
        "storage-internal xattrs are not taken from tars"
    );
    assert_eq!(read(&r.join(&long)), "pax name");
    assert_eq!(read(&r.join(&long_link)), "gnu name");
    assert_eq!(
        m("long/gnu-hard").ino(),
        m(&long).ino(),
        "GNU long link target"
    );
    assert_eq!(
        read(&r.join(std::ffi::OsStr::from_bytes_lossless(b"caf\xe9"))),
        "latin1"
    );
    assert_eq!(m("dev").mode() & 0o7777, 0o755, "implied directory");
}

trait FromBytes {
    fn from_bytes_lossless(b: &[u8]) -> &std::ffi::OsStr;
}
impl FromBytes for std::ffi::OsStr {
    fn from_bytes_lossless(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

/// Plain, gzip (also multi-member) and zstd streams of one tar give the
/// same diff_id; bytes after the end-of-archive marker are read and hashed.
#[test]
fn compressions_and_trailing_bytes() {
    let tar = Tar::new().add(Entry::file("f", "data\n")).finish();
    let sb = Sandbox::new();
    for (blob, compression) in [
        (tar.clone(), Compression::None),
        (gzip(&tar), Compression::Gzip),
        (zstd(&tar), Compression::Zstd),
    ] {
        let report = apply(&blob, &sb.full()).unwrap();
        assert_eq!(report.compression, compression);
        assert_eq!(report.digest, sha256(&blob));
        assert_eq!(report.diff_id, sha256(&tar));
        assert_eq!(report.tar_bytes, tar.len() as u64);
    }
    let (a, b) = tar.split_at(700);
    let multi = [gzip(a), gzip(b)].concat();
    assert_eq!(apply(&multi, &sb.full()).unwrap().diff_id, sha256(&tar));

    let mut padded = tar.clone();
    padded.extend_from_slice(&[0; 4096]);
    padded.extend_from_slice(b"data after the end-of-archive marker");
    let report = apply(&gzip(&padded), &sb.full()).unwrap();
    assert_eq!(
        (report.diff_id, report.tar_bytes),
        (sha256(&padded), padded.len() as u64)
    );
    assert_eq!(read(&sb.root.join("f")), "data\n");
}

/// A tar that stops after its last entry's data, with no padding or a
/// partial one and no end-of-archive blocks, is accepted (Debian's
/// `umoci insert`); so is one that stops at a block boundary.
#[test]
fn tar_without_end_blocks() {
    let sb = Sandbox::new();
    let mut t = Tar::new().add(Entry::dir("d"));
    t.add_unpadded(Entry::file("d/last", "no padding\n").pax("mtime", "3.5"));
    let full = [t.0.clone(), vec![0; 512 - 11]].concat();
    for cut in [t.0.len(), t.0.len() + 1, t.0.len() + 300, full.len()] {
        let tar = &full[..cut];
        let report =
            apply(tar, &sb.full()).unwrap_or_else(|e| panic!("cut at {cut}: {}", chain(&e)));
        assert_eq!(
            (report.entries, report.diff_id.as_str()),
            (2, sha256(tar).as_str())
        );
        assert_eq!(read(&sb.root.join("d/last")), "no padding\n");
        assert_eq!(meta(&sb.root.join("d/last")).mtime_nsec(), 500_000_000);
    }
    let dir_only = Tar::new().add(Entry::dir("e")).0;
    apply(&dir_only, &sb.full()).unwrap();
    assert!(sb.root.join("e").is_dir());
    // Empty input is an empty layer.
    assert_eq!(apply(&[], &sb.full()).unwrap().entries, 0);
}

/// Holes are written as holes in every sparse dialect; contents are exact.
#[test]
fn sparse_files() {
    const REAL: u64 = 8 << 20;
    let extents: [(u64, Vec<u8>); 3] = [
        (0, b"BEGIN".to_vec()),
        (4 << 20, vec![b'x'; 4096]),
        (REAL - 3, b"END".to_vec()),
    ];
    let data: Vec<u8> = extents.iter().flat_map(|(_, d)| d.clone()).collect();
    let map01: Vec<String> = extents
        .iter()
        .flat_map(|(o, d)| [o.to_string(), d.len().to_string()])
        .collect();
    let mut map10 = format!("{}\n", extents.len());
    for (o, d) in &extents {
        map10.push_str(&format!("{o}\n{}\n", d.len()));
    }
    let mut data10 = map10.into_bytes();
    data10.resize(512, 0);
    data10.extend_from_slice(&data);

    let mut e00 = Entry::file("GNUSparseFile.0/v00", &data)
        .pax("GNU.sparse.size", REAL.to_string())
        .pax("GNU.sparse.numblocks", "3")
        .pax("GNU.sparse.name", "v00");
    for (o, d) in &extents {
        e00 = e00
            .pax("GNU.sparse.offset", o.to_string())
            .pax("GNU.sparse.numbytes", d.len().to_string());
    }
    let tar = Tar::new()
        .add(
            Entry::file("GNUSparseFile.0/v10", &data10)
                .pax("GNU.sparse.major", "1")
                .pax("GNU.sparse.minor", "0")
                .pax("GNU.sparse.name", "./v10")
                .pax("GNU.sparse.realsize", REAL.to_string()),
        )
        .add(
            Entry::file("GNUSparseFile.0/v01", &data)
                .pax("GNU.sparse.major", "0")
                .pax("GNU.sparse.minor", "1")
                .pax("GNU.sparse.name", "v01")
                .pax("GNU.sparse.size", REAL.to_string())
                .pax("GNU.sparse.numblocks", "3")
                .pax("GNU.sparse.map", map01.join(",")),
        )
        .add(e00)
        .raw(&old_gnu_sparse(
            "old",
            REAL,
            &[
                (0, 512),
                (1 << 20, 512),
                (2 << 20, 512),
                (3 << 20, 512),
                (4 << 20, 512),
                (REAL - 512, 512),
            ],
        ))
        .finish();
    let sb = Sandbox::new();
    let report = apply(&tar, &sb.full()).unwrap();
    assert_eq!(report.file_bytes, 4 * REAL);
    let mut expected = vec![0u8; REAL as usize];
    for (o, d) in &extents {
        expected[*o as usize..*o as usize + d.len()].copy_from_slice(d);
    }
    for name in ["v10", "v01", "v00"] {
        let got = std::fs::read(sb.root.join(name)).unwrap();
        assert!(got == expected, "{name}: content differs");
        assert!(
            meta(&sb.root.join(name)).blocks() * 512 < 1 << 20,
            "{name}: holes were filled"
        );
    }
    let old = std::fs::read(sb.root.join("old")).unwrap();
    assert_eq!(old.len() as u64, REAL);
    for (i, off) in [0u64, 1 << 20, 2 << 20, 3 << 20, 4 << 20, REAL - 512]
        .into_iter()
        .enumerate()
    {
        assert!(
            old[off as usize..off as usize + 512]
                .iter()
                .all(|&b| b == b'a' + i as u8),
            "old GNU extent {i}"
        );
    }
    assert_eq!(old.iter().filter(|&&b| b != 0).count(), 6 * 512);
    assert!(
        meta(&sb.root.join("old")).blocks() * 512 < 1 << 20,
        "old GNU: holes were filled"
    );
    assert!(!exists(&sb.root.join("GNUSparseFile.0")));
}

/// An old GNU `S` entry with an extension block; extent `i` is filled
/// with `b'a' + i`.
fn old_gnu_sparse(name: &str, real: u64, extents: &[(u64, u64)]) -> Vec<u8> {
    let stored: u64 = extents.iter().map(|e| e.1).sum();
    let mut h = tar::Header::new_gnu();
    h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
    h.set_mode(0o644);
    h.set_size(stored);
    h.set_mtime(MTIME);
    h.set_entry_type(tar::EntryType::GNUSparse);
    let gnu = h.as_gnu_mut().unwrap();
    for (slot, (o, l)) in gnu.sparse.iter_mut().zip(extents) {
        slot.set_offset(*o);
        slot.set_length(*l);
    }
    gnu.set_real_size(real);
    gnu.set_is_extended(extents.len() > 4);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    if extents.len() > 4 {
        let mut ext = tar::GnuExtSparseHeader::new();
        for (slot, (o, l)) in ext.sparse_mut().iter_mut().zip(&extents[4..]) {
            slot.set_offset(*o);
            slot.set_length(*l);
        }
        out.extend_from_slice(ext.as_bytes());
    }
    for (i, (_, l)) in extents.iter().enumerate() {
        out.extend(std::iter::repeat_n(b'a' + i as u8, *l as usize));
    }
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

/// A directory entry over an existing directory replaces its attributes,
/// xattrs included (storage-internal ones excepted), keeps its children,
/// and gets its mtime after its children are added.
#[test]
fn directory_attributes_replaced() {
    let sb = Sandbox::new();
    let d = sb.root.join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("keep"), "k").unwrap();
    set_xattr(&d, "user.old", b"1");
    set_xattr(&d, "trusted.overlay.opaque", b"y");
    std::os::unix::fs::chown(&d, Some(5), Some(5)).unwrap();
    let tar = Tar::new()
        .add(
            Entry::dir("d")
                .mode(0o2711)
                .owner(1, 1)
                .mtime(1234)
                .pax("SCHILY.xattr.user.new", "2"),
        )
        .add(Entry::file("d/child", "c"))
        .add(Entry::dir("d/sub").mtime(99))
        .add(Entry::file("d/sub/f", "f"))
        .finish();
    apply(&tar, &sb.full()).unwrap();
    let m = meta(&d);
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o2711, 1, 1, 1234)
    );
    assert_eq!(meta(&d.join("sub")).mtime(), 99);
    assert_eq!(
        meta(&d.join("sub")).mode() & 0o7777,
        0o755,
        "no setgid inherited from the parent"
    );
    assert_eq!(xattr(&d, "user.old"), None);
    assert_eq!(xattr(&d, "user.new"), Some(b"2".to_vec()));
    assert!(is_opaque(&d));
    assert_eq!(names(&d), ["child", "keep", "sub"]);
}

/// The later of two entries for one path wins, whatever the types.
#[test]
fn duplicates_later_wins() {
    let base = Tar::new()
        .add(Entry::dir("w"))
        .add(Entry::file("w/c", "c"))
        .add(Entry::file("x", "zero"))
        .finish();
    let layer = Tar::new()
        .add(Entry::file("x", "one"))
        .add(Entry::hardlink("h", "x"))
        .add(Entry::file("x", "two"))
        .add(Entry::file("y", "file"))
        .add(Entry::dir("y"))
        .add(Entry::file("y/z", "z"))
        .add(Entry::file("w", "now a file"))
        .add(Entry::symlink("s", "a"))
        .add(Entry::symlink("s", "b"))
        .finish();
    let (sb, _) = both(&[base, layer]);
    let r = &sb.root;
    assert_eq!(
        (read(&r.join("x")), read(&r.join("h"))),
        ("two".into(), "one".into())
    );
    assert_eq!(read(&r.join("y/z")), "z");
    assert_eq!(read(&r.join("w")), "now a file");
    assert_eq!(std::fs::read_link(r.join("s")).unwrap(), PathBuf::from("b"));
}

/// file↔dir↔symlink changes with no whiteout before them (buildah's layer 3).
#[test]
fn type_changes() {
    let base = Tar::new()
        .add(Entry::file("dir2file/inner/x", "x"))
        .add(Entry::file("file2dir", "f"))
        .add(Entry::file("file2link", "f"))
        .add(Entry::symlink("link2file", "/data"))
        .add(Entry::file("dir2link/y", "y"))
        .add(Entry::file("deep/a/b/c", "c"))
        .finish();
    let layer = Tar::new()
        .add(Entry::file("dir2file", "now a file"))
        .add(Entry::dir("file2dir"))
        .add(Entry::file("file2dir/child", "child"))
        .add(Entry::symlink("file2link", "/etc/hostname"))
        .add(Entry::file("link2file", "now a file"))
        .add(Entry::symlink("dir2link", "/data"))
        .add(Entry::dir("deep"))
        .add(Entry::file("deep/a", "no longer a dir"))
        .finish();
    let (sb, uppers) = both(&[base, layer]);
    let r = &sb.root;
    assert_eq!(read(&r.join("dir2file")), "now a file");
    assert_eq!(names(&r.join("file2dir")), ["child"]);
    assert!(meta(&r.join("file2link")).file_type().is_symlink());
    assert_eq!(read(&r.join("link2file")), "now a file");
    assert!(meta(&r.join("dir2link")).file_type().is_symlink());
    assert_eq!(read(&r.join("deep/a")), "no longer a dir");
    assert!(
        !is_opaque(&uppers[1].join("file2dir")),
        "a directory over a lower file needs no opaque mark"
    );
}

/// Whiteouts delete lower content only: what this layer creates survives,
/// before or after the whiteout; missing paths are no-ops that create
/// nothing; a whited-out symlink goes, not its target.
#[test]
fn whiteouts() {
    let base = Tar::new()
        .add(Entry::file("a/old", "o"))
        .add(Entry::file("a/keep", "k"))
        .add(Entry::file("d/old", "o"))
        .add(Entry::file("e/old", "o"))
        .add(Entry::file("dir/sub/x", "x"))
        .add(Entry::file("gone", "g"))
        .add(Entry::symlink("lnk", "a/keep"))
        .finish();
    let layer = Tar::new()
        .add(Entry::whiteout("a/.wh.old"))
        .add(Entry::whiteout("a/.wh.missing"))
        .add(Entry::whiteout(".wh.gone"))
        .add(Entry::whiteout("dir/.wh.sub"))
        .add(Entry::whiteout("missingdir/.wh.x"))
        .add(Entry::whiteout(".wh.lnk"))
        .add(Entry::dir("d"))
        .add(Entry::file("d/new", "n"))
        .add(Entry::whiteout(".wh.d"))
        .add(Entry::whiteout(".wh.e"))
        .add(Entry::dir("e"))
        .add(Entry::file("e/new", "n"))
        .add(Entry::file("f", "created here"))
        .add(Entry::whiteout(".wh.f"))
        .add(Entry::file(".wh..wh.plnk/123.456", "aufs"))
        .add(Entry::whiteout(".wh..wh.aufs"))
        .finish();
    let (sb, uppers) = both(&[base, layer]);
    let r = &sb.root;
    assert_eq!(names(r), ["a", "d", "dir", "e", "f"]);
    assert_eq!(names(&r.join("a")), ["keep"]);
    assert_eq!(names(&r.join("d")), ["new"]);
    assert_eq!(names(&r.join("e")), ["new"]);
    assert!(names(&r.join("dir")).is_empty());

    let up = &uppers[1];
    assert!(
        is_whiteout(&up.join("a/old"))
            && is_whiteout(&up.join("gone"))
            && is_whiteout(&up.join("lnk"))
    );
    let m = meta(&up.join("gone"));
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0, 0, 0));
    assert!(
        !exists(&up.join("a/missing")),
        "no whiteout for what no lower has"
    );
    assert!(!exists(&up.join("missingdir")));
    assert!(is_opaque(&up.join("d")) && is_opaque(&up.join("e")));
    assert!(!exists(&up.join(".wh..wh.plnk")));
}

/// Opaque markers hide lower children but keep this layer's, wherever the
/// marker stands; nested kept directories keep only this layer's entries.
#[test]
fn opaque_markers() {
    let base = Tar::new()
        .add(Entry::file("o/old1", "o"))
        .add(Entry::file("o/sub/old2", "o"))
        .add(Entry::file("o/sub2/x", "x"))
        .add(Entry::file("p/old", "o"))
        .add(Entry::file("q/old", "o"))
        .finish();
    let layer = Tar::new()
        .add(Entry::dir("o"))
        .add(Entry::file("o/new", "n"))
        .add(Entry::file("o/sub/new2", "n"))
        .add(Entry::whiteout("o/.wh..wh..opq"))
        .add(Entry::whiteout("p/.wh..wh..opq"))
        .add(Entry::file("p/new", "n"))
        .add(Entry::file("q/new", "n"))
        .add(Entry::whiteout("r/.wh..wh..opq"))
        .finish();
    let (sb, uppers) = both(&[base, layer]);
    let r = &sb.root;
    assert_eq!(names(&r.join("o")), ["new", "sub"]);
    assert_eq!(names(&r.join("o/sub")), ["new2"]);
    assert_eq!(names(&r.join("p")), ["new"]);
    assert_eq!(names(&r.join("q")), ["new", "old"]);
    assert!(names(&r.join("r")).is_empty());
    let up = &uppers[1];
    assert!(is_opaque(&up.join("o")) && is_opaque(&up.join("p")) && !is_opaque(&up.join("q")));
}

/// An opaque marker at the layer root: overlayfs never treats a root as
/// opaque, so each lower child is whited out or marked instead.
#[test]
fn opaque_root() {
    let base = Tar::new()
        .add(Entry::file("x", "x"))
        .add(Entry::file("y/z", "z"))
        .add(Entry::file("w/v", "v"))
        .finish();
    let layer = Tar::new()
        .add(Entry::file("keep", "k"))
        .add(Entry::file("y/new", "n"))
        .add(Entry::whiteout(".wh..wh..opq"))
        .add(Entry::file("w", "file now"))
        .finish();
    let (sb, uppers) = both(&[base, layer]);
    assert_eq!(names(&sb.root), ["keep", "w", "y"]);
    assert_eq!(names(&sb.root.join("y")), ["new"]);
    assert!(is_whiteout(&uppers[1].join("x")) && is_opaque(&uppers[1].join("y")));
}

/// Implied parents: 0755 0:0 when new; an existing directory keeps its
/// attributes; in an upper, the lower directory's attributes are copied
/// up (xattrs too, overlay's own excepted) with its mtime.
#[test]
fn implied_parents() {
    let base = Tar::new()
        .add(Entry::dir("srv").mtime(11))
        .add(
            Entry::dir("srv/userdir")
                .mode(0o700)
                .owner(1000, 1000)
                .mtime(12)
                .pax("SCHILY.xattr.user.x", "1"),
        )
        .add(Entry::file("srv/userdir/old", "o"))
        .finish();
    let layer = Tar::new()
        .add(Entry::file("srv/userdir/f", "f"))
        .add(Entry::file("a/b/c/f", "f"))
        .finish();
    let (sb, uppers) = both(&[base, layer]);
    for d in ["a", "a/b", "a/b/c"] {
        let m = meta(&sb.root.join(d));
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o755, 0, 0), "{d}");
    }
    let up = uppers[1].join("srv/userdir");
    let m = meta(&up);
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o700, 1000, 1000, 12)
    );
    assert_eq!(xattr(&up, "user.x"), Some(b"1".to_vec()));
    assert_eq!(meta(&uppers[1].join("srv")).mtime(), 11);
    assert!(!is_opaque(&up), "a copy-up merges with the lower directory");

    let sb = Sandbox::new();
    std::fs::write(sb.root.join("file"), "f").unwrap();
    assert_refused(
        apply(
            &Tar::new().add(Entry::file("file/x", "x")).finish(),
            &sb.full(),
        ),
        Problem::ThroughNonDirectory,
    );
}

/// Hardlinks to files of lower layers: in an upper the target is copied up
/// (data, owner, mode, xattrs, mtime) and linked; the lower stays intact.
#[test]
fn hardlinks_to_lower_files() {
    let base = Tar::new()
        .add(
            Entry::file("a/orig", "lower data\n")
                .mode(0o640)
                .owner(7, 8)
                .mtime(77)
                .pax("SCHILY.xattr.user.k", "v"),
        )
        .add(Entry::file("gone", "g"))
        .finish();
    let layer = Tar::new()
        .add(Entry::hardlink("b/link", "a/orig"))
        .add(Entry::file("new", "n"))
        .add(Entry::hardlink("b/l2", "new"))
        .finish();
    let (sb, uppers) = both(&[base, layer]);
    assert_eq!(
        meta(&sb.root.join("b/link")).ino(),
        meta(&sb.root.join("a/orig")).ino()
    );
    let (up, low) = (&uppers[1], &uppers[0]);
    let (copy, link) = (meta(&up.join("a/orig")), meta(&up.join("b/link")));
    assert_eq!((copy.ino(), copy.nlink()), (link.ino(), 2));
    assert_eq!(
        (copy.mode() & 0o7777, copy.uid(), copy.gid(), copy.mtime()),
        (0o640, 7, 8, 77)
    );
    assert_eq!(xattr(&up.join("a/orig"), "user.k"), Some(b"v".to_vec()));
    assert_eq!(read(&up.join("a/orig")), "lower data\n");
    assert_eq!(meta(&low.join("a/orig")).nlink(), 1);

    // A target deleted by this layer is gone in both formats.
    let layer = Tar::new()
        .add(Entry::whiteout(".wh.gone"))
        .add(Entry::hardlink("l", "gone"))
        .finish();
    for target in [sb.full(), upper(&sb.dir("lower-x"), &[uppers[0].clone()])] {
        assert_refused(apply(&layer, &target), Problem::LinkMissing);
    }
    let layer = Tar::new().add(Entry::hardlink("l", "a")).finish();
    assert_refused(
        apply(&layer, &upper(&sb.dir("lower-y"), &[uppers[0].clone()])),
        Problem::LinkToDirectory,
    );
}

/// Whiteouts and opaque directories of lower layers are honoured: nothing
/// is re-created or whited out twice, a directory over a lower whiteout
/// starts empty.
#[test]
fn lower_whiteouts_and_opaque_dirs() {
    let l1 = Tar::new()
        .add(Entry::file("d/old", "o"))
        .add(Entry::file("x", "x"))
        .add(Entry::file("q/old", "o"))
        .finish();
    let l2 = Tar::new()
        .add(Entry::whiteout(".wh.d"))
        .add(Entry::whiteout(".wh.x"))
        .add(Entry::whiteout("q/.wh..wh..opq"))
        .add(Entry::file("q/mid", "m"))
        .finish();
    let l3 = Tar::new()
        .add(Entry::file("d/new", "n"))
        .add(Entry::whiteout(".wh.x"))
        .add(Entry::whiteout("q/.wh.old"))
        .add(Entry::file("q/new", "n"))
        .finish();
    let (sb, uppers) = both(&[l1, l2, l3]);
    assert_eq!(names(&sb.root), ["d", "q"]);
    assert_eq!(names(&sb.root.join("d")), ["new"]);
    assert_eq!(names(&sb.root.join("q")), ["mid", "new"]);
    let top = &uppers[2];
    assert!(
        !exists(&top.join("x")) && !exists(&top.join("q/old")),
        "no whiteout for what a lower already hides"
    );
    assert_eq!(meta(&top.join("d")).mode() & 0o7777, 0o755);
}

/// Entries after a whiteout or a type change of one of their ancestors
/// land in the directory now at that path, or are refused if the path is
/// no longer a directory.
#[test]
fn parent_cache_follows_removals() {
    let base = Tar::new().add(Entry::file("a/b/old", "o")).finish();
    let layer = Tar::new()
        .add(Entry::file("a/b/f1", "1"))
        .add(Entry::whiteout(".wh.a"))
        .add(Entry::file("a/b/f2", "2"))
        .finish();
    let (sb, _) = both(&[base, layer]);
    assert_eq!(names(&sb.root.join("a/b")), ["f1", "f2"]);

    let sb = Sandbox::new();
    let layer = Tar::new()
        .add(Entry::file("a/b/f1", "1"))
        .add(Entry::file("a", "file"))
        .add(Entry::file("a/b/f2", "2"))
        .finish();
    assert_refused(apply(&layer, &sb.full()), Problem::ThroughNonDirectory);
    let layer = Tar::new()
        .add(Entry::file("c/d/f1", "1"))
        .add(Entry::dir("c"))
        .add(Entry::file("c/d/f2", "2"))
        .finish();
    apply(&layer, &sb.full()).unwrap();
    assert_eq!(names(&sb.root.join("c/d")), ["f1", "f2"]);
}

/// A character device 0/0 reads as a whiteout in an upper: refused there,
/// kept as a device in a full tree. PAX global headers are skipped.
#[test]
fn device_00_and_global_headers() {
    let mut global = Entry::file("pax_global_header", pax_record("comment", b"hello"));
    global.ty = b'g';
    let tar = Tar::new()
        .add(global)
        .add(Entry::device("c00", b'3', 0, 0))
        .finish();
    let sb = Sandbox::new();
    apply(&tar, &sb.full()).unwrap();
    assert!(is_whiteout(&sb.root.join("c00")));
    assert!(!exists(&sb.root.join("pax_global_header")));
    let sb = Sandbox::new();
    let lower = sb.dir("lower1");
    assert_refused(apply(&tar, &sb.overlay(&[lower])), Problem::WhiteoutDevice);
}
