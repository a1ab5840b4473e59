//! Tests of the mounter. Those that mount need root and run on the real
//! kernel (CI and the dev machines run as root); every mount is taken off
//! by a guard that also runs when an assertion panics.

use super::*;
use crate::overlay::{LegacyOptions, check_page_budget, legacy_options};
use drivers_api::{ErrorKind, OverlayUpper};
use std::os::unix::fs::{MetadataExt, symlink};

/// Unmounts its path when dropped, panicking or not.
struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.0) {
            eprintln!("test guard could not unmount {}: {e}", self.0.display());
        }
    }
}

/// Mounts and returns the guard that takes the mounts off again.
fn mounted(mounts: &[Mount], target: &Path, api: MountApi) -> Result<Guard> {
    mount_with(mounts, target, api)?;
    Ok(Guard(target.to_owned()))
}

struct Layers {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    /// Lower paths, nearest (top) first.
    lower: Vec<PathBuf>,
}

/// `n` lower directories, each holding one distinct file `f<i>` (i = 0 is
/// the bottom layer). With `links`, the lowers handed out are 6-character
/// symlinks in one `l/` directory, the way overlay2 lays them out;
/// otherwise long absolute directory paths.
fn layers(n: usize, links: bool) -> Layers {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    std::fs::create_dir_all(root.join("l")).unwrap();
    let mut lower = Vec::new();
    for i in 0..n {
        let diff = root.join(format!(
            "layers/layer-with-a-long-directory-name-{i:04}/diff"
        ));
        std::fs::create_dir_all(&diff).unwrap();
        std::fs::write(diff.join(format!("f{i}")), format!("layer {i}\n")).unwrap();
        if links {
            let link = root.join("l").join(format!("{i:06}"));
            symlink(
                format!("../layers/layer-with-a-long-directory-name-{i:04}/diff"),
                &link,
            )
            .unwrap();
            lower.push(link);
        } else {
            lower.push(diff);
        }
    }
    lower.reverse();
    Layers {
        _tmp: tmp,
        root,
        lower,
    }
}

fn upper_in(root: &Path) -> OverlayUpper {
    let (upper, work) = (root.join("upper"), root.join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    OverlayUpper { upper, work }
}

fn target_in(root: &Path) -> PathBuf {
    let t = root.join("merged");
    std::fs::create_dir_all(&t).unwrap();
    t
}

/// Mounts a writable overlay over `l` and checks the bottom and top files
/// read through it and that a write lands in the upper directory. The
/// options cover both `key=value` and bare flags, checked in mountinfo
/// (6.18 shows `volatile` as `fsync=volatile`; defaults are not shown).
fn overlay_reads_bottom_and_writes_upper(l: &Layers, api: MountApi) {
    let up = upper_in(&l.root);
    let target = target_in(&l.root);
    let m = Mount::Overlay {
        lower: l.lower.clone(),
        upper: Some(up.clone()),
        options: ["index=off", "uuid=null", "volatile"]
            .map(String::from)
            .to_vec(),
    };
    let _g = mounted(&[m], &target, api).unwrap();
    let n = l.lower.len();
    assert_eq!(
        std::fs::read_to_string(target.join("f0")).unwrap(),
        "layer 0\n"
    );
    assert_eq!(
        std::fs::read_to_string(target.join(format!("f{}", n - 1))).unwrap(),
        format!("layer {}\n", n - 1)
    );
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), n);
    std::fs::write(target.join("new"), "x").unwrap();
    assert!(up.upper.join("new").exists());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(target.to_str().unwrap()))
        .unwrap();
    assert!(
        line.contains("uuid=null") && line.contains("volatile"),
        "options reached the kernel: {}",
        &line[line.len().saturating_sub(300)..]
    );
}

/// Two lowers without an upper: a read-only merged view of both.
#[test]
fn new_api_two_lowers_read_only() {
    let l = layers(2, false);
    let target = target_in(&l.root);
    let m = Mount::Overlay {
        lower: l.lower.clone(),
        upper: None,
        options: vec![],
    };
    let _g = mounted(&[m], &target, MountApi::New).unwrap();
    assert_eq!(
        std::fs::read_to_string(target.join("f0")).unwrap(),
        "layer 0\n"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("f1")).unwrap(),
        "layer 1\n"
    );
    let e = std::fs::write(target.join("x"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc_erofs()));
}

/// The new API lifts the page limit: 500 lowers with long absolute paths
/// (about 35 KiB of lowerdir text) mount, and the bottom layer is visible.
#[test]
fn new_api_500_long_lowers() {
    let l = layers(500, false);
    let total: usize = l.lower.iter().map(|p| p.as_os_str().len() + 1).sum();
    assert!(
        total > rustix::param::page_size(),
        "the test must exceed a page to prove anything"
    );
    overlay_reads_bottom_and_writes_upper(&l, MountApi::New);
}

/// 501 lowers exceed overlayfs's stack limit; the kernel's own reason comes
/// back in a single line.
#[test]
fn new_api_501_lowers_refused_with_kernel_reason() {
    let l = layers(501, false);
    let up = upper_in(&l.root);
    let target = target_in(&l.root);
    let m = Mount::Overlay {
        lower: l.lower.clone(),
        upper: Some(up),
        options: vec![],
    };
    let e = mounted(&[m], &target, MountApi::New).map(drop).unwrap_err();
    let line = error_chain(&e);
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.contains("500"),
        "the kernel's limit must be named: {line}"
    );
    assert!(line.contains("overlay"), "{line}");
    assert!(!is_mountpoint(&target).unwrap());
}

/// Legacy mount(2) with 128 and with 500 short links in one directory: the
/// names are passed relative to it from a child process, and fit a page.
#[test]
fn legacy_128_and_500_short_links() {
    for n in [128, 500] {
        let l = layers(n, true);
        overlay_reads_bottom_and_writes_upper(&l, MountApi::Legacy);
    }
}

/// Legacy mount(2) of two lowers in different directories passes them as
/// absolute paths, without a child.
#[test]
fn legacy_without_common_dir() {
    let a = layers(1, false);
    let b = layers(1, false);
    std::fs::write(b.lower[0].join("only-b"), "b").unwrap();
    let target = target_in(&a.root);
    let m = Mount::Overlay {
        lower: vec![a.lower[0].clone(), b.lower[0].clone()],
        upper: None,
        options: vec![],
    };
    let _g = mounted(&[m], &target, MountApi::Legacy).unwrap();
    assert_eq!(std::fs::read_to_string(target.join("only-b")).unwrap(), "b");
}

/// 500 long absolute lowers cannot go through mount(2): refused as a limit,
/// naming the byte count and the page size, and nothing is mounted.
#[test]
fn legacy_refuses_what_exceeds_a_page() {
    let l = layers(500, false);
    let target = target_in(&l.root);
    let m = Mount::Overlay {
        lower: l.lower.clone(),
        upper: None,
        options: vec![],
    };
    let e = mounted(&[m], &target, MountApi::Legacy)
        .map(drop)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit);
    let msg = e.to_string();
    assert!(
        msg.contains(&rustix::param::page_size().to_string()),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    assert!(e.hint().is_some());
    assert!(!is_mountpoint(&target).unwrap());
}

/// The legacy option string is exact: relative names for a shared
/// directory, escapes for the separators, options appended in order.
#[test]
fn legacy_option_string_is_exact() {
    let t = Path::new("/t");
    let up = OverlayUpper {
        upper: "/s/layers/x/diff".into(),
        work: "/s/layers/x/work".into(),
    };
    // (lowers, upper, options, expected)
    type Case<'a> = (
        &'a [&'a str],
        Option<&'a OverlayUpper>,
        &'a [&'a str],
        LegacyOptions,
    );
    let cases: &[Case] = &[
        (
            &["/s/l/AAAAAA", "/s/l/BBBBBB"],
            Some(&up),
            &["index=off", "redirect_dir=off"],
            LegacyOptions {
                dir: Some("/s/l".into()),
                data: "lowerdir=AAAAAA:BBBBBB,upperdir=/s/layers/x/diff,workdir=/s/layers/x/work,index=off,redirect_dir=off"
                    .into(),
            },
        ),
        (&["/a/x", "/b/y"], None, &[], LegacyOptions { dir: None, data: "lowerdir=/a/x:/b/y".into() }),
        (&["/a/x,y", "/b/c:d\\e"], None, &[], LegacyOptions { dir: None, data: r"lowerdir=/a/x\,y:/b/c\:d\\e".into() }),
    ];
    for (lower, upper, opts, want) in cases {
        let lower: Vec<PathBuf> = lower.iter().map(PathBuf::from).collect();
        let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            &legacy_options(&lower, *upper, &opts, 4096, t).unwrap(),
            want
        );
    }
}

/// The page budget: the data plus its NUL must fit. 500 six-character
/// links fit a 4 KiB page; 500 absolute paths of 40 bytes do not.
#[test]
fn legacy_page_budget() {
    let t = Path::new("/t");
    assert!(check_page_budget(4095, 4096, t).is_ok());
    let e = check_page_budget(4096, 4096, t).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit);
    assert!(
        e.to_string().contains("4097 bytes") && e.to_string().contains("4096 bytes"),
        "{e}"
    );

    let up = OverlayUpper {
        upper: "/var/lib/drivers/overlay2/layers/0123456789abcdef0123456789abcdef/diff".into(),
        work: "/var/lib/drivers/overlay2/layers/0123456789abcdef0123456789abcdef/work".into(),
    };
    let opts: Vec<String> = ["index=off", "redirect_dir=off", "metacopy=off"]
        .map(String::from)
        .to_vec();
    let short: Vec<PathBuf> = (0..500)
        .map(|i| PathBuf::from(format!("/var/lib/drivers/overlay2/l/{i:06}")))
        .collect();
    let plan = legacy_options(&short, Some(&up), &opts, 4096, t).unwrap();
    assert_eq!(
        plan.data.len(),
        "lowerdir=".len() + 500 * 7 - 1
            + ",upperdir=".len()
            + up.upper.as_os_str().len()
            + ",workdir=".len()
            + up.work.as_os_str().len()
            + ",index=off,redirect_dir=off,metacopy=off".len()
    );
    let long: Vec<PathBuf> = (0..500)
        .map(|i| PathBuf::from(format!("/var/lib/drivers/overlay2/l/{i:012}")))
        .collect();
    assert_eq!(
        legacy_options(&long, Some(&up), &opts, 4096, t)
            .unwrap_err()
            .kind(),
        ErrorKind::Limit
    );
}

/// A read-only bind refuses writes with EROFS; a writable one accepts them.
#[test]
fn bind_read_only_refuses_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), "data").unwrap();
    let target = target_in(tmp.path());
    {
        let _g = mounted(
            &[Mount::Bind {
                source: src.clone(),
                read_only: true,
            }],
            &target,
            MountApi::New,
        )
        .unwrap();
        assert!(is_mountpoint(&target).unwrap());
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "data");
        let e = std::fs::write(target.join("g"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc_erofs()));
    }
    assert!(!is_mountpoint(&target).unwrap());
    let _g = mounted(
        &[Mount::Bind {
            source: src.clone(),
            read_only: false,
        }],
        &target,
        MountApi::New,
    )
    .unwrap();
    std::fs::write(target.join("g"), "x").unwrap();
    assert!(src.join("g").exists());
}

/// A failing mount later in the list undoes the earlier ones.
#[test]
fn failed_mount_undoes_earlier_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let target = target_in(tmp.path());
    let mounts = [
        Mount::Bind {
            source: src,
            read_only: false,
        },
        Mount::Bind {
            source: tmp.path().join("missing"),
            read_only: false,
        },
    ];
    let e = mount_with(&mounts, &target, MountApi::New).unwrap_err();
    let _g = Guard(target.clone()); // in case the undo itself regressed
    assert_eq!(e.raw_os_error(), Some(2), "{e}");
    assert!(!is_mountpoint(&target).unwrap());
}

/// `unmount` takes off every stacked mount and accepts a path that is not
/// mounted or does not exist.
#[test]
fn unmount_stacked_and_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let target = target_in(tmp.path());
    let mounts = [
        Mount::Bind {
            source: a,
            read_only: false,
        },
        Mount::Bind {
            source: b,
            read_only: true,
        },
    ];
    let g = mounted(&mounts, &target, MountApi::New).unwrap();
    unmount(&target).unwrap();
    assert!(!is_mountpoint(&target).unwrap());
    drop(g);
    unmount(&target).unwrap();
    unmount(&tmp.path().join("nowhere")).unwrap();
    assert!(!is_mountpoint(&tmp.path().join("nowhere")).unwrap());
}

/// `Mount::Fs` splits flags from data: a tmpfs gets its size and mode from
/// the data and `nosuid` as a mount flag.
#[test]
fn fs_mount_splits_flags_and_data() {
    let tmp = tempfile::tempdir().unwrap();
    let target = target_in(tmp.path());
    let m = Mount::Fs {
        fstype: "tmpfs".into(),
        source: "drivers-test".into(),
        options: ["nosuid", "size=1m", "mode=0710"]
            .map(String::from)
            .to_vec(),
    };
    let _g = mounted(&[m], &target, MountApi::New).unwrap();
    let st = rustix::fs::statvfs(&target).unwrap();
    assert!(st.f_flag.contains(StatVfsMountFlags::NOSUID));
    assert_eq!(st.f_blocks * st.f_frsize, 1 << 20);
    assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o710);
}

/// Option splitting, including overrides and `defaults`.
#[test]
fn split_options_table() {
    let cases: &[(&[&str], MountFlags, &str)] = &[
        (&[], MountFlags::empty(), ""),
        (&["defaults"], MountFlags::empty(), ""),
        (
            &["ro", "noexec", "size=1m"],
            MountFlags::RDONLY | MountFlags::NOEXEC,
            "size=1m",
        ),
        (
            &["ro", "rw", "compress=zstd", "nodev", "x"],
            MountFlags::NODEV,
            "compress=zstd,x",
        ),
    ];
    for (opts, flags, data) in cases {
        let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            split_fs_options(&opts),
            (*flags, data.to_string()),
            "{opts:?}"
        );
    }
}

/// mountinfo escapes are decoded and only paths at or below the prefix are
/// returned, deepest first, each once.
#[test]
fn mountinfo_parsing() {
    let text = b"22 27 0:21 / /proc rw - proc proc rw\n\
        90 27 0:50 / /s/with\\040space rw - tmpfs t rw\n\
        91 90 0:51 / /s/with\\040space/a\\011b\\134c rw - tmpfs t rw\n\
        92 27 0:52 / /s/with\\040space rw - tmpfs t rw\n\
        93 27 0:53 / /s/with\\040spacer rw - tmpfs t rw\n\
        94 27 0:54 / /s/bad\\09 rw - tmpfs t rw\n";
    let got = mountinfo::parse_mounts_under(text, Path::new("/s/with space"));
    assert_eq!(
        got,
        vec![
            PathBuf::from("/s/with space/a\tb\\c"),
            PathBuf::from("/s/with space")
        ]
    );
    let all = mountinfo::parse_mounts_under(text, Path::new("/s"));
    assert!(
        all.contains(&PathBuf::from("/s/bad\\09")),
        "a backslash without 3 octal digits stays: {all:?}"
    );
}

/// A live mount on a path with a space shows up decoded.
#[test]
fn mounts_under_live() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let target = tmp.path().join("with space");
    std::fs::create_dir(&target).unwrap();
    let _g = mounted(
        &[Mount::Bind {
            source: src,
            read_only: true,
        }],
        &target,
        MountApi::New,
    )
    .unwrap();
    assert_eq!(mounts_under(tmp.path()).unwrap(), vec![target.clone()]);
}

/// On Linux 6.8 and later, detection picks the new API.
#[test]
fn detects_new_api_on_recent_kernels() {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (6, 8) {
        assert_eq!(MountApi::detect(), MountApi::New, "kernel {release}");
    }
}

/// The env var values parse; anything else is refused.
#[test]
fn api_names_parse() {
    assert_eq!("new".parse::<MountApi>().unwrap(), MountApi::New);
    assert_eq!("legacy".parse::<MountApi>().unwrap(), MountApi::Legacy);
    assert_eq!(
        "fsopen".parse::<MountApi>().unwrap_err().kind(),
        ErrorKind::Invalid
    );
}

fn libc_erofs() -> i32 {
    Errno::ROFS.raw_os_error()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
