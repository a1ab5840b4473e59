//! The vfs backend driven through the `Driver` trait, mounts included
//! (these tests run as root, as CI does). Every mount is taken off by a
//! guard that also runs when an assertion panics.

use super::*;
use drivers_api::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

struct Fx {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    scratch: PathBuf,
    drv: Box<dyn Driver>,
}

fn fx() -> Fx {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("vfs");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let drv = (BACKEND.open)(
        &HostEnv {
            state_dir: state.clone(),
        },
        &toml::Table::new(),
    )
    .unwrap();
    Fx {
        _tmp: tmp,
        state,
        scratch,
        drv,
    }
}

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

/// Unmounts its path when dropped, panicking or not.
struct Mounted(PathBuf);

impl Mounted {
    fn new(mounts: &[Mount], target: PathBuf) -> Mounted {
        std::fs::create_dir_all(&target).unwrap();
        drivers_mount::mount(mounts, &target).unwrap();
        Mounted(target)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = drivers_mount::unmount(&self.0) {
            eprintln!("could not unmount {}: {e}", self.0.display());
        }
    }
}

impl Fx {
    /// A committed base layer with `etc/motd`, `etc/keep` and `bin/sh`.
    fn base(&self) -> LayerId {
        let base = id("base");
        self.drv
            .prepare(&base, &[], &PrepareOpts::default())
            .unwrap();
        let root = self.drv.apply_target(&base, &[]).unwrap().root;
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("etc/motd"), "hi\n").unwrap();
        std::fs::write(root.join("etc/keep"), "k\n").unwrap();
        std::fs::write(root.join("bin/sh"), "#!\n").unwrap();
        self.drv.commit(&base).unwrap();
        base
    }

    fn tmp_entries(&self) -> Vec<String> {
        dir_names(&self.state.join("tmp")).unwrap()
    }
}

/// Prepare, fill, commit, child with the parent's content, a deletion made
/// through the mount, commit, a read-only view of the result, removal.
#[test]
fn lifecycle_end_to_end() {
    let fx = fx();
    let base = fx.base();
    let base_dir = fx.state.join("layers/base");

    let child = id("child");
    let mounts = fx
        .drv
        .prepare(&child, std::slice::from_ref(&base), &PrepareOpts::default())
        .unwrap();
    let child_dir = fx.state.join("layers/child");
    assert_eq!(
        mounts,
        vec![Mount::Bind {
            source: child_dir.clone(),
            read_only: false
        }]
    );
    {
        let m = Mounted::new(&mounts, fx.scratch.join("child"));
        assert_eq!(
            std::fs::read_to_string(m.0.join("etc/motd")).unwrap(),
            "hi\n"
        );
        std::fs::remove_file(m.0.join("etc/motd")).unwrap();
        std::fs::write(m.0.join("etc/new"), "new\n").unwrap();
    }
    let usage = fx.drv.commit(&child).unwrap();
    assert!(usage.inodes >= 5, "{usage:?}");
    assert!(!child_dir.join("etc/motd").exists());
    assert!(
        base_dir.join("etc/motd").exists(),
        "the parent is untouched"
    );

    let parents = [child.clone(), base.clone()];
    assert_eq!(
        fx.drv.diff_source(&child, &parents[1..]).unwrap(),
        DiffSource::Compare {
            layer: child_dir.clone(),
            parent: Some(base_dir.clone())
        }
    );
    assert_eq!(
        fx.drv.diff_source(&base, &[]).unwrap(),
        DiffSource::Compare {
            layer: base_dir.clone(),
            parent: None
        }
    );

    let view = id("view");
    let mounts = fx.drv.view(&view, &parents).unwrap();
    assert_eq!(
        mounts,
        vec![Mount::Bind {
            source: fx.state.join("layers/view"),
            read_only: true
        }]
    );
    assert_eq!(fx.drv.mounts(&view, &parents, false).unwrap(), mounts);
    {
        let m = Mounted::new(&mounts, fx.scratch.join("view"));
        assert_eq!(
            std::fs::read_to_string(m.0.join("etc/new")).unwrap(),
            "new\n"
        );
        assert_eq!(
            std::fs::read_to_string(m.0.join("etc/keep")).unwrap(),
            "k\n"
        );
        assert!(!m.0.join("etc/motd").exists());
        let e = std::fs::write(m.0.join("etc/x"), "x").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::ROFS.raw_os_error())
        );
    }
    fx.drv.remove(&view).unwrap();
    fx.drv.remove(&child).unwrap();
    fx.drv.remove(&child).unwrap(); // idempotent
    assert_eq!(
        fx.drv.usage(&child).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        fx.drv.mounts(&child, &[], true).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(fx.tmp_entries().is_empty(), "{:?}", fx.tmp_entries());
    assert_eq!(dir_names(&fx.state.join("layers")).unwrap(), vec!["base"]);
}

/// A base layer's root is 0755 owned by 0:0 whatever the umask, and root
/// attributes set on a layer are inherited by children and grandchildren.
#[test]
fn root_attributes_inherited() {
    let fx = fx();
    let base = id("base");
    fx.drv.prepare(&base, &[], &PrepareOpts::default()).unwrap();
    let root = fx.drv.apply_target(&base, &[]).unwrap().root;
    let st = std::fs::metadata(&root).unwrap();
    assert_eq!((st.mode() & 0o7777, st.uid(), st.gid()), (0o755, 0, 0));

    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(&root, Some(1), Some(2)).unwrap();
    fx.drv.commit(&base).unwrap();
    let child = id("child");
    fx.drv
        .prepare(&child, std::slice::from_ref(&base), &PrepareOpts::default())
        .unwrap();
    fx.drv.commit(&child).unwrap();
    let grandchild = id("grandchild");
    let parents = [child, base];
    let mounts = fx
        .drv
        .prepare(&grandchild, &parents, &PrepareOpts::default())
        .unwrap();
    let target = fx.drv.apply_target(&grandchild, &parents).unwrap();
    assert_eq!(target.format, ApplyFormat::Full);
    let st = std::fs::metadata(&target.root).unwrap();
    assert_eq!((st.mode() & 0o7777, st.uid(), st.gid()), (0o711, 1, 2));
    let m = Mounted::new(&mounts, fx.scratch.join("gc"));
    let st = std::fs::metadata(&m.0).unwrap();
    assert_eq!((st.mode() & 0o7777, st.uid(), st.gid()), (0o711, 1, 2));
}

/// Cleanup removes layers and staging trees of dead ids and every
/// interrupted removal, keeps live layers (and their staging), and reports
/// what it freed.
#[test]
fn cleanup_removes_orphans_keeps_live() {
    let fx = fx();
    let base = fx.base();
    for leftover in [
        "layers/orphan/etc",
        "tmp/new-halfmade/usr",
        "tmp/rm-base/x",
        "tmp/new-base/y",
    ] {
        std::fs::create_dir_all(fx.state.join(leftover)).unwrap();
        std::fs::write(fx.state.join(leftover).join("f"), vec![7u8; 8192]).unwrap();
    }
    let freed = fx.drv.cleanup(&|l: &LayerId| *l == base).unwrap();
    assert!(freed.inodes >= 9 && freed.bytes >= 3 * 8192, "{freed:?}");
    assert_eq!(dir_names(&fx.state.join("layers")).unwrap(), vec!["base"]);
    assert_eq!(fx.tmp_entries(), vec!["new-base"]);
    assert!(fx.state.join("layers/base/etc/motd").exists());
    assert_eq!(
        fx.drv.cleanup(&|_: &LayerId| true).unwrap(),
        Usage::default()
    );
}

/// Refused or failed prepares leave nothing behind.
#[test]
fn failed_prepare_leaves_nothing() {
    let fx = fx();
    let opts = PrepareOpts {
        size_limit: Some(1 << 20),
    };
    let e = fx.drv.prepare(&id("q"), &[], &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("XFS project quotas"), "{e}");
    let e = fx
        .drv
        .prepare(&id("orphan"), &[id("gone")], &PrepareOpts::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(dir_names(&fx.state.join("layers")).unwrap().is_empty());
    assert!(fx.tmp_entries().is_empty(), "{:?}", fx.tmp_entries());
    let base = fx.base();
    let e = fx
        .drv
        .prepare(&base, &[], &PrepareOpts::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert!(
        fx.state.join("layers/base/etc/motd").exists(),
        "an existing layer is never replaced"
    );
}

/// Capabilities say no, each with a reason.
#[test]
fn capabilities_are_honest() {
    let caps = fx().drv.capabilities();
    for s in [caps.quota, caps.dedup, caps.fast_diff] {
        assert!(matches!(&s, Support::No(why) if why.len() > 20), "{s:?}");
    }
}

/// Unknown config keys are refused in one line.
#[test]
fn config_refuses_unknown_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let table: toml::Table = toml::from_str("size = \"10G\"").unwrap();
    let e = (BACKEND.open)(
        &HostEnv {
            state_dir: tmp.path().join("vfs"),
        },
        &table,
    )
    .map(drop)
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(
        e.to_string().contains("size") && !e.to_string().contains('\n'),
        "{e}"
    );
}

/// probe: usable on a writable directory (even one not created yet), not
/// under a read-only mount or behind a file.
#[test]
fn probe_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let env = |p: PathBuf| HostEnv { state_dir: p };
    assert_eq!(
        probe(&env(tmp.path().join("a/b/vfs"))),
        Availability::Usable
    );
    std::fs::write(tmp.path().join("file"), "").unwrap();
    assert!(
        matches!(probe(&env(tmp.path().join("file/vfs"))), Availability::Unusable { reason, .. } if reason.contains("not a directory"))
    );
    let ro = tmp.path().join("ro");
    std::fs::create_dir(tmp.path().join("a")).unwrap();
    let _m = Mounted::new(
        &[Mount::Bind {
            source: tmp.path().join("a"),
            read_only: true,
        }],
        ro.clone(),
    );
    assert!(
        matches!(probe(&env(ro.join("vfs"))), Availability::Unusable { reason, .. } if reason.contains("read-only"))
    );
}
