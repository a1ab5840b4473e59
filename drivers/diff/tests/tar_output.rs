//! `write_layer`: the tar entries, read back by the tar crate, GNU tar and
//! Python's tarfile.

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use common::*;
use rustix::fs::{FileType, makedev};

const T: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

/// Writes the layer of `src` to `dir/layer.tar` and returns the report and
/// the bytes.
fn write_to_file(
    src: &drivers_api::DiffSource,
    dir: &Path,
) -> (drivers_diff::WriteReport, Vec<u8>) {
    let path = dir.join("layer.tar");
    let report = drivers_diff::write_layer(src, std::fs::File::create(&path).unwrap()).unwrap();
    (report, std::fs::read(&path).unwrap())
}

/// Compare mode: exactly the expected entries, in the documented order —
/// ancestors before contents, whiteouts before siblings (even a sibling
/// whose name sorts before `.wh.`), one whiteout per deleted subtree, no
/// opaque markers — with types, modes, owners, mtimes, link targets,
/// devices and xattrs as on disk; Python's tarfile reads the same entries.
#[test]
fn compare_mode_entries_exact() {
    require_root();
    let parent = tmp();
    let p = |rel: &str| parent.path().join(rel);
    write(&p("etc/-dash"), b"old", 0o644);
    write(&p("etc/hosts"), b"old", 0o644);
    write(&p("etc/zzz"), b"gone", 0o644);
    write(&p("etc/olddir/sub/f"), b"gone", 0o644);
    write(&p("usr/bin/tool"), b"tool", 0o755);
    write(&p("untouched/f"), b"f", 0o644);
    mkdir(&p("dev"), 0o755);

    let layer = copy(parent.path());
    let l = |rel: &str| layer.path().join(rel);
    std::fs::write(l("etc/-dash"), b"new!").unwrap();
    std::fs::write(l("etc/hosts"), b"new hosts").unwrap();
    std::fs::remove_file(l("etc/zzz")).unwrap();
    drivers_fs::remove_tree(&l("etc/olddir")).unwrap();
    write(&l("usr/bin/new"), b"new binary", 0o4755);
    chown(&l("usr/bin/new"), 1000, 1001);
    chmod(&l("usr/bin/new"), 0o4755); // chown cleared setuid
    set_xattr(&l("usr/bin/new"), "user.bin", &[0, 0xff, 0x10, 0]);
    set_xattr(&l("usr/bin/new"), "trusted.overlay.origin", b"internal");
    std::fs::hard_link(l("usr/bin/new"), l("usr/bin/link")).unwrap();
    mknod(&l("dev/c"), FileType::CharacterDevice, 0o666, makedev(1, 3));
    mknod(&l("dev/b"), FileType::BlockDevice, 0o660, makedev(7, 9));
    mknod(&l("dev/p"), FileType::Fifo, 0o600, 0);
    std::os::unix::fs::symlink("../etc/hosts", l("dev/sym")).unwrap();
    for rel in [
        "dev/c",
        "dev/b",
        "dev/p",
        "dev/sym",
        "dev",
        "etc/-dash",
        "etc/hosts",
        "etc",
        "usr/bin/new",
        "usr/bin",
        "usr",
    ] {
        set_mtime(&l(rel), T, 123);
    }

    let out = tmp();
    let (report, bytes) = write_to_file(&compare(layer.path(), Some(parent.path())), out.path());
    let entries = read_tar(&bytes);
    let got: Vec<String> = entries.iter().map(TarEntry::line).collect();
    let want = [
        "dev/ 5 0755 0:0",
        "dev/b 4 0660 0:0 dev=7,9",
        "dev/c 3 0666 0:0 dev=1,3",
        "dev/p 6 0600 0:0",
        "dev/sym 2 0777 0:0 -> ../etc/hosts",
        "etc/ 5 0755 0:0",
        "etc/.wh.olddir 0 0000 0:0 size=0",
        "etc/.wh.zzz 0 0000 0:0 size=0",
        "etc/-dash 0 0644 0:0 size=4",
        "etc/hosts 0 0644 0:0 size=9",
        "usr/ 5 0755 0:0",
        "usr/bin/ 5 0755 0:0",
        "usr/bin/link 0 4755 1000:1001 size=10 x:user.bin",
        "usr/bin/new 1 4755 1000:1001 -> usr/bin/link x:user.bin",
    ];
    assert_eq!(got, want);
    let by_name = |n: &str| entries.iter().find(|e| e.name == n.as_bytes()).unwrap();
    assert_eq!(
        by_name("usr/bin/link").xattrs,
        [("user.bin".to_owned(), vec![0, 0xff, 0x10, 0])]
    );
    assert_eq!(by_name("usr/bin/link").data, b"new binary");
    assert_eq!(by_name("etc/hosts").data, b"new hosts");
    for e in &entries {
        let want_mtime = if e.name.starts_with(b"etc/.wh.") {
            0
        } else {
            T as u64
        };
        assert_eq!(e.mtime, want_mtime, "{}", esc(&e.name));
    }
    assert_eq!((report.entries, report.file_bytes), (14, 4 + 9 + 10));

    // Python's tarfile sees the same entries, types, modes and owners.
    let py = python_listing(&out.path().join("layer.tar"));
    let py_cols: Vec<String> = py
        .iter()
        .map(|l| l.split('\t').take(4).collect::<Vec<_>>().join(" "))
        .collect();
    let want_py: Vec<String> = entries
        .iter()
        .map(|e| {
            let kind = match e.kind {
                '0' => "f",
                '1' => "h",
                '2' => "l",
                '3' => "c",
                '4' => "b",
                '5' => "d",
                '6' => "p",
                k => panic!("unexpected type {k}"),
            };
            let name = esc(e.name.strip_suffix(b"/").unwrap_or(&e.name));
            format!("{name} {kind} {:04o} {}:{}", e.mode, e.uid, e.gid)
        })
        .collect();
    assert_eq!(py_cols, want_py);
    let link_line = py.iter().find(|l| l.starts_with("usr/bin/new\t")).unwrap();
    assert!(
        link_line.contains("link-to usr/bin/link") && link_line.contains("xattrs{user.bin}"),
        "{link_line}"
    );
    let dev_line = py.iter().find(|l| l.starts_with("dev/b\t")).unwrap();
    assert!(dev_line.contains("dev=7,9"), "{dev_line}");
}

/// A layer of awkward entries survives write → GNU tar extract: non-UTF-8
/// name, 150-byte name, 300-byte path, 150-byte symlink target, binary
/// xattr value, setuid/setgid/sticky, devices, fifo, a hardlink group,
/// a uid beyond the ustar field, a sparse file, an empty file. The tar
/// crate and Python read the same names.
#[test]
fn awkward_entries_round_trip_through_gnu_tar() {
    require_root();
    let layer = tmp();
    let l = |rel: &[u8]| layer.path().join(OsStr::from_bytes(rel));
    let long_name = "n".repeat(150);
    let long_path = format!("{}/{}/{}", "d".repeat(100), "e".repeat(100), "f".repeat(98));
    let long_target = "t/".repeat(75);
    write(&l(b"caf\xe9"), b"latin-1 name", 0o644);
    write(&l(b"dir\xff/inner"), b"in a non-UTF-8 dir", 0o640);
    let long_odd = [&b"\xff\xfe"[..], &[b'n'; 148]].concat();
    write(&l(&long_odd), b"long non-UTF-8 name", 0o644);
    write(&l(long_name.as_bytes()), b"long name", 0o644);
    write(&l(long_path.as_bytes()), b"long path", 0o644);
    std::os::unix::fs::symlink(&long_target, l(b"sym")).unwrap();
    std::os::unix::fs::symlink(&long_target, l(format!("{}/s", "d".repeat(100)).as_bytes()))
        .unwrap();
    write(&l(b"xattr"), b"x", 0o644);
    set_xattr(&l(b"xattr"), "user.bin", &[0, 0xff, 0x10, 0, b'=', b'\n']);
    set_xattr(&l(b"xattr"), "user.text", b"hello");
    write(&l(b"suid"), b"#!/bin/sh\n", 0o4755);
    mkdir(&l(b"sgid"), 0o2775);
    mkdir(&l(b"sticky"), 0o1777);
    mknod(&l(b"chr"), FileType::CharacterDevice, 0o620, makedev(4, 64));
    mknod(
        &l(b"blk"),
        FileType::BlockDevice,
        0o660,
        makedev(259, 70000),
    );
    mknod(&l(b"fifo"), FileType::Fifo, 0o610, 0);
    write(&l(b"hl/a"), b"shared", 0o600);
    std::fs::hard_link(l(b"hl/a"), l(b"hl/b")).unwrap();
    std::fs::hard_link(l(b"hl/a"), l(long_path.replace("f", "g").as_bytes())).unwrap();
    write(&l(b"bigid"), b"owned", 0o644);
    chown(&l(b"bigid"), 3_000_000, 4_000_000);
    write(&l(b"empty"), b"", 0o644);
    let sparse = std::fs::File::create(l(b"sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 4 << 20).unwrap();
    drop(sparse);
    set_mtime(&l(b"sparse"), T, 0);
    for rel in [&b"sym"[..], b"caf\xe9", b"chr", b"sgid"] {
        set_mtime(&l(rel), T + 1, 999);
    }

    let out = tmp();
    let (report, bytes) = write_to_file(&compare(layer.path(), None), out.path());
    assert!(report.file_bytes >= 8 << 20);
    let entries = read_tar(&bytes);
    let names: Vec<&[u8]> = entries.iter().map(|e| &e.name[..]).collect();
    assert!(names.contains(&&b"caf\xe9"[..]));
    assert!(names.contains(&&b"dir\xff/inner"[..]));
    assert!(names.contains(&long_name.as_bytes()));
    assert!(names.contains(&long_path.as_bytes()));
    assert!(names.contains(&&long_odd[..]));
    let sym = entries.iter().find(|e| e.name == b"sym").unwrap();
    assert_eq!(sym.link, long_target.as_bytes());

    let extracted = out.path().join("x");
    std::fs::create_dir(&extracted).unwrap();
    gnu_extract(&out.path().join("layer.tar"), &extracted, &[]);
    assert_same_tree(&snapshot(&extracted), &snapshot(layer.path()));

    let py = python_listing(&out.path().join("layer.tar"));
    let py_names: Vec<&str> = py.iter().map(|l| l.split('\t').next().unwrap()).collect();
    let long_odd_esc = esc(&long_odd);
    for want in [
        "caf\\xe9",
        "dir\\xff/inner",
        &long_odd_esc,
        &long_name,
        &long_path,
        "sym",
        "hl/b",
        "chr",
        "fifo",
        "sgid",
        "sticky",
    ] {
        assert!(
            py_names.contains(&want),
            "python does not list {want}: {py_names:?}"
        );
    }
    let line = |name: &str| {
        py.iter()
            .find(|l| l.split('\t').next() == Some(name))
            .unwrap()
            .clone()
    };
    assert!(
        line("sym").contains(&format!("-> {long_target}")),
        "{}",
        line("sym")
    );
    assert!(
        line("bigid").contains("3000000:4000000"),
        "{}",
        line("bigid")
    );
    assert!(
        line("xattr").contains("xattrs{user.bin,user.text}"),
        "{}",
        line("xattr")
    );
    // The long path sorts first, so it carries the data and the others link to it.
    let first = long_path.replace('f', "g");
    for other in ["hl/a", "hl/b"] {
        assert!(
            line(other).contains(&format!("\th\t0600\t0:0\tlink-to {first} ")),
            "{}",
            line(other)
        );
    }
    assert!(line("blk").contains("dev=259,70000"), "{}", line("blk"));
    assert!(
        line("suid").starts_with("suid\tf\t4755\t"),
        "{}",
        line("suid")
    );
    assert!(
        line("sparse").contains(&format!("size={}", 8 << 20))
            && !line("sparse").contains("sparse-map"),
        "{}",
        line("sparse")
    );
}

/// The diff id is the sha256 of exactly the bytes written (checked with
/// coreutils' sha256sum), the byte count is exact, and the stream ends
/// with the two zero end-of-archive blocks.
#[test]
fn diff_id_is_sha256_of_written_bytes() {
    require_root();
    let layer = tmp();
    write(&layer.path().join("a/b"), &random_content(1000, 1), 0o644);
    write(&layer.path().join("c"), &random_content(512, 2), 0o644);
    let out = tmp();
    let (report, bytes) = write_to_file(&compare(layer.path(), None), out.path());
    let sum = run(Command::new("sha256sum").arg(out.path().join("layer.tar")));
    assert_eq!(report.diff_id, format!("sha256:{}", &sum[..64]));
    assert_eq!(report.tar_bytes, bytes.len() as u64);
    assert_eq!(bytes.len() % 512, 0);
    assert!(bytes[bytes.len() - 1024..].iter().all(|&b| b == 0));
    // a/, a/b, c, plus ./ since a base layer carries its root's attributes.
    assert_eq!((report.entries, report.file_bytes), (4, 1512));
    // Equal trees give equal tars.
    let (again, _) = write_to_file(&compare(layer.path(), None), out.path());
    assert_eq!(again, report);
}

/// A change to the layer root's own mode or owner is carried as a `./`
/// entry (a `chmod /` in a container must survive commit); an unchanged
/// root is not an entry.
#[test]
fn root_attributes_are_carried_when_changed() {
    require_root();
    let parent = tmp();
    write(&parent.path().join("f"), b"x", 0o644);
    let layer = tmp();
    drivers_fs::copy::copy_tree(parent.path(), layer.path()).unwrap();
    let out = tmp();
    let (_, bytes) = write_to_file(&compare(layer.path(), Some(parent.path())), out.path());
    assert!(
        read_tar(&bytes).is_empty(),
        "an unchanged root is not an entry"
    );

    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o711);
    std::fs::set_permissions(layer.path(), mode).unwrap();
    std::os::unix::fs::chown(layer.path(), Some(7), Some(8)).unwrap();
    let (report, bytes) = write_to_file(&compare(layer.path(), Some(parent.path())), out.path());
    let got: Vec<String> = read_tar(&bytes).iter().map(TarEntry::line).collect();
    assert_eq!(got, ["./ 5 0711 7:8"]);
    assert_eq!(report.entries, 1);
}

/// File data is streamed: a 64 MiB file reaches the writer in bounded
/// pieces, never as one buffer of the whole file.
#[test]
fn file_data_is_streamed() {
    require_root();
    struct Probe {
        total: u64,
        largest: usize,
    }
    impl Write for Probe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.total += buf.len() as u64;
            self.largest = self.largest.max(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let layer = tmp();
    let f = std::fs::File::create(layer.path().join("big")).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    let mut probe = Probe {
        total: 0,
        largest: 0,
    };
    let report = drivers_diff::write_layer(&compare(layer.path(), None), &mut probe).unwrap();
    assert_eq!(report.tar_bytes, probe.total);
    assert_eq!(report.file_bytes, 64 << 20);
    assert!(
        probe.largest <= 1 << 20,
        "largest single write {} bytes",
        probe.largest
    );
}

/// A file named `.wh.*` cannot be told from a whiteout by importers, so
/// writing it is refused rather than silently turned into a deletion.
#[test]
fn whiteout_lookalike_names_are_refused() {
    require_root();
    let layer = tmp();
    write(&layer.path().join(".wh.foo"), b"", 0o644);
    let err = drivers_diff::write_layer(&compare(layer.path(), None), std::io::sink()).unwrap_err();
    assert_eq!(err.kind(), drivers_diff::ErrorKind::Invalid);
    assert!(err.to_string().contains(".wh.foo"), "{err}");
}
