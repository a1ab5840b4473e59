//! `changes` and `write_layer` on overlayfs upper directories
//! (`DiffSource::OverlayUpper`): built by hand, and made by the kernel
//! through a real overlay mount.

mod common;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use drivers_api::DiffSource;
use rustix::fs::FileType;

/// Mount options that keep the upper directory the whole diff, whatever
/// the overlay module's defaults on this machine.
const PLAIN: &str = "index=off,metacopy=off,redirect_dir=off";

fn upper(upper: &Path, lower: &[&Path]) -> DiffSource {
    DiffSource::OverlayUpper {
        upper: upper.to_owned(),
        lower: lower.iter().map(|p| p.to_path_buf()).collect(),
    }
}

/// An overlay mount, unmounted when dropped (also while a failing test
/// unwinds), so a failure never leaves a mount behind.
struct Mounted(PathBuf);

impl Mounted {
    fn new(lower: &[&Path], upper: &Path, work: &Path, target: &Path, extra: &str) -> Mounted {
        let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},{extra}",
            lowers.join(":"),
            upper.display(),
            work.display()
        );
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(target));
        Mounted(target.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(&self.0).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("umount {} failed: {status:?}", self.0.display());
        }
    }
}

/// Upper, work and mountpoint directories side by side.
struct OverlayDirs {
    _t: tempfile::TempDir,
    upper: PathBuf,
    work: PathBuf,
    merged: PathBuf,
}

fn overlay_dirs() -> OverlayDirs {
    let t = tmp();
    let (upper, work, merged) = (
        t.path().join("upper"),
        t.path().join("work"),
        t.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    OverlayDirs {
        _t: t,
        upper,
        work,
        merged,
    }
}

/// Applies a layer tar the way an OCI importer does, with GNU tar doing the
/// extraction: opaque markers and whiteouts first (GNU tar does not know
/// them), then everything else.
fn apply_with_gnu_tar(tar: &Path, root: &Path) {
    let entries = read_tar(&std::fs::read(tar).unwrap());
    use std::os::unix::ffi::OsStrExt;
    for e in &entries {
        let (dir, base) = match e.name.iter().rposition(|&b| b == b'/') {
            Some(i) => (&e.name[..i], &e.name[i + 1..]),
            None => (&b""[..], &e.name[..]),
        };
        let dir = root.join(std::ffi::OsStr::from_bytes(dir));
        if base == b".wh..wh..opq" {
            drivers_fs::clear_dir(drivers_fs::open_dir(&dir).unwrap().as_fd()).unwrap();
        } else if let Some(victim) = base.strip_prefix(b".wh.") {
            drivers_fs::remove_tree(&dir.join(std::ffi::OsStr::from_bytes(victim))).unwrap();
        }
    }
    gnu_extract(tar, root, &["--exclude=.wh.*"]);
}

/// Whiteouts in both forms, opaque directories in the upper and in a
/// lower, a lower whiteout, and storage-internal xattrs: the change list
/// and the tar entries must match exactly.
#[test]
fn hand_built_upper() {
    require_root();
    let t = tmp();
    let (l1, l2, up) = (
        t.path().join("l1"),
        t.path().join("l2"),
        t.path().join("upper"),
    );
    // l2, the farthest lower.
    for f in [
        "a/keep",
        "a/gone",
        "a/mod",
        "a/l1file",
        "c/c1",
        "c/c2",
        "hid/h",
        "f-only-l2",
    ] {
        write(&l2.join(f), f.as_bytes(), 0o644);
    }
    // l1: hides l2's f-only-l2 and l2's c/ contents.
    write(&l1.join("a/l1file"), b"l1", 0o644);
    whiteout(&l1.join("f-only-l2"));
    write(&l1.join("c/c3"), b"c3", 0o644);
    set_xattr(&l1.join("c"), "trusted.overlay.opaque", b"y");
    // The upper.
    mkdir(&up.join("a"), 0o755);
    whiteout(&up.join("a/gone"));
    write(&up.join("a/l1file"), b"", 0o644);
    set_xattr(&up.join("a/l1file"), "trusted.overlay.whiteout", b"");
    set_xattr(&up.join("a"), "trusted.overlay.opaque", b"x"); // holds an xattr whiteout, not opaque
    write(&up.join("a/mod"), b"modified", 0o600);
    set_xattr(&up.join("a/mod"), "trusted.overlay.origin", b"\x00\xfb\x21");
    set_xattr(&up.join("a/mod"), "user.keep", b"kept");
    write(&up.join("a/new"), b"new", 0o644);
    write(&up.join("c/new"), b"new", 0o644);
    set_xattr(&up.join("c"), "trusted.overlay.opaque", b"y");
    write(&up.join("f-only-l2"), b"back", 0o644);
    mkdir(&up.join("hid"), 0o700);
    set_xattr(&up.join("hid"), "trusted.overlay.opaque", b"y");
    write(&up.join("newdir/sub/f"), b"f", 0o644);

    let src = upper(&up, &[&l1, &l2]);
    let got = drivers_diff::changes(&src).unwrap();
    let want = [
        "C /a",
        "D /a/gone",
        "D /a/l1file",
        "C /a/mod",
        "A /a/new",
        "C /c",
        "D /c/c3", // c1, c2 were already hidden by l1's opaque c
        "A /c/new",
        "A /f-only-l2", // l1 whited it out, so the parent did not show it
        "C /hid",
        "D /hid/h",
        "A /newdir",
        "A /newdir/sub",
        "A /newdir/sub/f",
    ];
    assert_eq!(lines(&got), want);

    let mut bytes = Vec::new();
    let report = drivers_diff::write_layer(&src, &mut bytes).unwrap();
    let entries = read_tar(&bytes);
    let got: Vec<String> = entries.iter().map(TarEntry::line).collect();
    let want = [
        "a/ 5 0755 0:0",
        "a/.wh.gone 0 0000 0:0 size=0",
        "a/.wh.l1file 0 0000 0:0 size=0",
        "a/mod 0 0600 0:0 size=8 x:user.keep",
        "a/new 0 0644 0:0 size=3",
        "c/ 5 0755 0:0",
        "c/.wh..wh..opq 0 0000 0:0 size=0",
        "c/new 0 0644 0:0 size=3",
        "f-only-l2 0 0644 0:0 size=4",
        "hid/ 5 0700 0:0",
        "hid/.wh..wh..opq 0 0000 0:0 size=0",
        "newdir/ 5 0755 0:0",
        "newdir/sub/ 5 0755 0:0",
        "newdir/sub/f 0 0644 0:0 size=1",
    ];
    assert_eq!(got, want);
    assert_eq!(report.entries, want.len() as u64);
}

/// `redirect` and `metacopy` entries, in the upper or (for a redirect) in
/// a lower directory the walk descends into, are refused with one line
/// naming the entry and the attribute.
#[test]
fn redirect_and_metacopy_are_refused() {
    require_root();
    let cases: [(&str, &str, bool); 3] = [
        ("moved", "trusted.overlay.redirect", true),
        ("file", "trusted.overlay.metacopy", false),
        ("dir", "trusted.overlay.redirect", false),
    ];
    for (name, key, in_upper) in cases {
        let t = tmp();
        let (low, up) = (t.path().join("lower"), t.path().join("upper"));
        mkdir(&low, 0o755);
        mkdir(&up, 0o755);
        let holder = if in_upper { &up } else { &low };
        if name == "file" {
            write(&up.join(name), b"", 0o644);
        } else {
            mkdir(&holder.join(name), 0o755);
            mkdir(&up.join(name), 0o755);
        }
        set_xattr(
            &if name == "file" {
                up.join(name)
            } else {
                holder.join(name)
            },
            key,
            b"/elsewhere",
        );
        for result in [
            drivers_diff::changes(&upper(&up, &[&low])).map(|_| ()),
            drivers_diff::write_layer(&upper(&up, &[&low]), std::io::sink()).map(|_| ()),
        ] {
            let err = result.unwrap_err();
            let msg = err.to_string();
            assert_eq!(
                err.kind(),
                drivers_diff::ErrorKind::Unsupported,
                "{name}: {msg}"
            );
            assert!(
                msg.contains(name)
                    && msg.contains(key.rsplit('.').next().unwrap())
                    && !msg.contains('\n'),
                "{msg}"
            );
            assert!(err.hint().is_some());
        }
    }
}

/// The kernel writes the upper: a real overlay mount over two lowers gets
/// an add, a rewrite, a delete, `rm -rf` plus recreate of a lower directory
/// (an opaque directory), chmod, chown, a hardlink to a lower file, a
/// symlink, a fifo, and a file recreated over a lower whiteout. The
/// changes must be exactly these; the tar, applied onto a copy of the
/// parent by GNU tar, must rebuild the merged tree.
#[test]
fn real_overlay_mount() {
    require_root();
    let t = tmp();
    let (base, mid) = (t.path().join("base"), t.path().join("mid"));
    write(&base.join("etc/hosts"), b"127.0.0.1 localhost\n", 0o644);
    write(&base.join("etc/passwd"), b"root:x:0:0\n", 0o644);
    write(&base.join("etc/motd"), b"hello\n", 0o644);
    write(&base.join("lib/hidden"), b"h", 0o644);
    write(&base.join("lib/sub/deep"), b"d", 0o644);
    write(&base.join("bin/tool"), b"#!/bin/sh\n", 0o755);
    write(&base.join("opt/a/b/file.txt"), b"opt", 0o644);
    for d in ["opt", "opt/a", "opt/a/b"] {
        chmod(&base.join(d), 0o700);
    }
    write(&mid.join("mid-only"), b"mid", 0o644);
    mkdir(&mid.join("etc"), 0o755);
    whiteout(&mid.join("etc/motd"));

    let d = overlay_dirs();
    let parent_copy = tmp();
    let want_tree = {
        let _m = Mounted::new(&[&mid, &base], &d.upper, &d.work, &d.merged, PLAIN);
        let m = |rel: &str| d.merged.join(rel);
        drivers_fs::copy::copy_tree(&d.merged, parent_copy.path()).unwrap();
        write(&m("new.txt"), b"new", 0o644);
        std::fs::write(m("etc/hosts"), b"10.0.0.2 mydomain\n").unwrap();
        std::fs::remove_file(m("etc/passwd")).unwrap();
        write(&m("etc/motd"), b"back again\n", 0o644);
        std::fs::remove_dir_all(m("lib")).unwrap();
        mkdir(&m("lib"), 0o700);
        write(&m("lib/not-hidden"), b"n", 0o644);
        chmod(&m("bin/tool"), 0o700);
        std::fs::hard_link(m("bin/tool"), m("bin/tool2")).unwrap();
        for p in ["opt", "opt/a", "opt/a/b", "opt/a/b/file.txt"] {
            chown(&m(p), 1, 1);
        }
        std::os::unix::fs::symlink("etc/hosts", m("sym")).unwrap();
        mknod(&m("fifo"), FileType::Fifo, 0o600, 0);
        snapshot(&d.merged)
    };

    let src = upper(&d.upper, &[&mid, &base]);
    let got = drivers_diff::changes(&src).unwrap();
    let want = [
        "C /bin",
        "C /bin/tool",
        "A /bin/tool2",
        "C /etc",
        "C /etc/hosts",
        "A /etc/motd",
        "D /etc/passwd",
        "A /fifo",
        "C /lib",
        "D /lib/hidden",
        "A /lib/not-hidden",
        "D /lib/sub",
        "A /new.txt",
        "C /opt",
        "C /opt/a",
        "C /opt/a/b",
        "C /opt/a/b/file.txt",
        "A /sym",
    ];
    assert_eq!(lines(&got), want);

    let out = tmp();
    let tar = out.path().join("layer.tar");
    drivers_diff::write_layer(&src, std::fs::File::create(&tar).unwrap()).unwrap();
    let names: Vec<String> = read_tar(&std::fs::read(&tar).unwrap())
        .iter()
        .map(TarEntry::line)
        .collect();
    let want_names = [
        "bin/ 5 0755 0:0",
        "bin/tool 0 0700 0:0 size=10",
        "bin/tool2 1 0700 0:0 -> bin/tool",
        "etc/ 5 0755 0:0",
        "etc/.wh.passwd 0 0000 0:0 size=0",
        "etc/hosts 0 0644 0:0 size=18",
        "etc/motd 0 0644 0:0 size=11",
        "fifo 6 0600 0:0",
        "lib/ 5 0700 0:0",
        "lib/.wh..wh..opq 0 0000 0:0 size=0",
        "lib/not-hidden 0 0644 0:0 size=1",
        "new.txt 0 0644 0:0 size=3",
        "opt/ 5 0700 1:1",
        "opt/a/ 5 0700 1:1",
        "opt/a/b/ 5 0700 1:1",
        "opt/a/b/file.txt 0 0644 1:1 size=3",
        "sym 2 0777 0:0 -> etc/hosts",
    ];
    assert_eq!(names, want_names);
    apply_with_gnu_tar(&tar, parent_copy.path());
    assert_same_tree(&snapshot(parent_copy.path()), &want_tree);
}

/// The kernel's own redirect and metacopy xattrs (a lower directory
/// renamed with `redirect_dir=on`, a chmod with `metacopy=on`) make the
/// upper incomplete, and the diff says so instead of writing a wrong tar.
#[test]
fn real_redirect_and_metacopy_are_refused() {
    require_root();
    let t = tmp();
    let base = t.path().join("base");
    write(&base.join("dir/f"), b"f", 0o644);
    write(&base.join("file"), b"data", 0o644);
    for (action, attr) in [("rename", "redirect"), ("chmod", "metacopy")] {
        let d = overlay_dirs();
        {
            let _m = Mounted::new(
                &[&base],
                &d.upper,
                &d.work,
                &d.merged,
                "index=off,redirect_dir=on,metacopy=on",
            );
            if action == "rename" {
                std::fs::rename(d.merged.join("dir"), d.merged.join("moved")).unwrap();
            } else {
                chmod(&d.merged.join("file"), 0o600);
            }
        }
        let err = drivers_diff::changes(&upper(&d.upper, &[&base])).unwrap_err();
        assert_eq!(
            err.kind(),
            drivers_diff::ErrorKind::Unsupported,
            "{action}: {err}"
        );
        assert!(err.to_string().contains(attr), "{action}: {err}");
    }
}

/// containers/storage `DriverTestEcho` on real overlay layers: for each
/// depth, deleting the subtree there and recreating it in the next layer
/// gives the same change lists as the tree comparison.
#[test]
fn cs_driver_test_echo_on_overlay() {
    require_root();
    const COMPONENTS: usize = 10;
    for depth in 0..COMPONENTS {
        let mut paths = Vec::new();
        let mut path = String::new();
        for i in 0..COMPONENTS - 1 {
            path += &format!("/subdir{}", i + 1);
            paths.push(path.clone());
        }
        paths.push(format!("{path}/file"));
        let file = &paths[COMPONENTS - 1];

        let base = overlay_dirs();
        for p in &paths[..COMPONENTS - 1] {
            mkdir(&base.upper.join(&p[1..]), 0o700);
        }
        write(
            &base.upper.join(&file[1..]),
            &random_content(128, depth as u64),
            0o600,
        );
        let got = drivers_diff::changes(&upper(&base.upper, &[])).unwrap();
        assert_eq!(
            lines(&got),
            paths.iter().map(|p| format!("A {p}")).collect::<Vec<_>>(),
            "base, depth {depth}"
        );

        let second = overlay_dirs();
        {
            let _m = Mounted::new(
                &[&base.upper],
                &second.upper,
                &second.work,
                &second.merged,
                PLAIN,
            );
            std::fs::remove_dir_all(second.merged.join(&paths[depth][1..]))
                .or_else(|_| std::fs::remove_file(second.merged.join(&paths[depth][1..])))
                .unwrap();
        }
        let mut want: Vec<String> = paths[..depth].iter().map(|p| format!("C {p}")).collect();
        want.push(format!("D {}", paths[depth]));
        let got = drivers_diff::changes(&upper(&second.upper, &[&base.upper])).unwrap();
        assert_eq!(lines(&got), want, "second, depth {depth}");

        let third = overlay_dirs();
        {
            let _m = Mounted::new(
                &[&second.upper, &base.upper],
                &third.upper,
                &third.work,
                &third.merged,
                PLAIN,
            );
            for p in &paths[depth..COMPONENTS - 1] {
                mkdir(&third.merged.join(&p[1..]), 0o700);
            }
            write(
                &third.merged.join(&file[1..]),
                &random_content(128, depth as u64),
                0o600,
            );
        }
        let mut want: Vec<String> = paths[..depth].iter().map(|p| format!("C {p}")).collect();
        want.extend(paths[depth..].iter().map(|p| format!("A {p}")));
        let got =
            drivers_diff::changes(&upper(&third.upper, &[&second.upper, &base.upper])).unwrap();
        assert_eq!(lines(&got), want, "third, depth {depth}");
    }
}
