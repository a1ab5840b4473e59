//! On a real loopback XFS made by [`setup`], as root (CI and the dev
//! machines run as root). The fixture tears the filesystem down in `Drop`,
//! also when an assertion fails.

use super::*;
use drivers_api::ErrorKind;
use std::io::Write;

const MIB: u64 = 1 << 20;

/// A loopback XFS mounted on `<tmp>/vfs`, as `select vfs --loopback`
/// makes it.
struct Fx {
    tmp: tempfile::TempDir,
    env: HostEnv,
}

impl Drop for Fx {
    fn drop(&mut self) {
        if let Err(e) = teardown("vfs", &self.env, &at(512)) {
            eprintln!("teardown of {}: {e}", self.tmp.path().display());
        }
    }
}

/// A `--loopback` location of `mib` MiB.
fn at(mib: u64) -> Location {
    Location {
        path: None,
        loopback: Some(mib * MIB),
    }
}

fn fx() -> Fx {
    let tmp = tempfile::Builder::new()
        .prefix("drivers-test-xfs-")
        .tempdir()
        .unwrap();
    let env = HostEnv {
        state_dir: tmp.path().join("vfs"),
    };
    let args = SelectArgs {
        loopback: Some(512 * MIB),
        ..Default::default()
    };
    let got = setup("vfs", &env, &args, &Location::default()).unwrap();
    assert_eq!(got, at(512));
    Fx { tmp, env }
}

/// Whether the running kernel's XFS has quota support, from its own
/// configuration (`/proc/config.gz`), independently of the code under
/// test; `None` if the kernel does not publish it.
pub(crate) fn kernel_xfs_quota() -> Option<bool> {
    let out = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.lines().any(|l| l == "CONFIG_XFS_QUOTA=y") {
        Some(true)
    } else if text.lines().any(|l| l == "# CONFIG_XFS_QUOTA is not set") {
        Some(false)
    } else {
        None
    }
}

fn write_mib(p: &Path, mib: usize) -> io::Result<()> {
    let mut f = std::fs::File::create(p)?;
    let mut chunk = vec![0u8; MIB as usize];
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = (i * 7 + i / 251) as u8;
    }
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

/// The life of a limited directory: the loopback XFS enforces project
/// quotas; a claimed id is the directory's (inherited by what is made
/// below it) and limits it (EDQUOT past 8 MiB); a second layer gets
/// another id; release clears the limits so the kernel has no record left
/// that sets it apart from an unused id; the mount comes back after being
/// taken away (a reboot), found again by `open`.
#[test]
fn limits_on_a_loopback_xfs() {
    let fx = fx();
    let state = &fx.env.state_dir;
    assert!(drivers_mount::is_mountpoint(state).unwrap());
    let q = ProjectQuotas::open("vfs", state).unwrap();
    match kernel_xfs_quota() {
        Some(true) => assert_eq!(q.support(), &Support::Yes),
        Some(false) => {
            // This kernel cannot: the XFS is mounted without prjquota and
            // limits are refused with the reason, nothing claimed.
            let Support::No(why) = q.support() else {
                panic!("quota claimed on a kernel without CONFIG_XFS_QUOTA");
            };
            assert!(why.contains("no XFS project quota support"), "{why}");
            let e = q
                .limit(state, &LayerId::new("aaa").unwrap(), MIB)
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            assert!(!state.join(PROJECTS_DIR).exists());
            // XFS keeps project ids without quota support: the fsxattr
            // half of the interface is checked here all the same.
            let d = state.join("d");
            std::fs::create_dir(&d).unwrap();
            xfs::set_project(std::fs::File::open(&d).unwrap(), 4242, true).unwrap();
            std::fs::create_dir(d.join("sub")).unwrap();
            let sub = std::fs::File::open(d.join("sub")).unwrap();
            assert_eq!(
                xfs::project(&sub).unwrap(),
                xfs::Project {
                    id: 4242,
                    inherit: true
                }
            );
            return;
        }
        None => panic!("/proc/config.gz does not say whether XFS has quota support"),
    }

    let a = state.join("a");
    std::fs::create_dir(&a).unwrap();
    let la = LayerId::new("aaa").unwrap();
    let ida = q.limit(&a, &la, 8 * MIB).unwrap();
    assert_eq!(q.project_of("aaa").unwrap(), Some(ida));
    std::fs::create_dir(a.join("sub")).unwrap();
    let sub = std::fs::File::open(a.join("sub")).unwrap();
    assert_eq!(
        xfs::project(&sub).unwrap(),
        xfs::Project {
            id: ida,
            inherit: true
        }
    );
    write_mib(&a.join("sub/fits"), 4).unwrap();
    let e = write_mib(&a.join("too-much"), 8).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(Errno::DQUOT.raw_os_error()), "{e}");
    let root = open_dir(state).unwrap();
    let pq = xfs::project_quota(&root, ida).unwrap();
    assert_eq!(pq.hard_bytes, 8 * MIB);
    assert!(pq.used_bytes >= 4 * MIB, "{pq:?}");

    let b = state.join("b");
    std::fs::create_dir(&b).unwrap();
    let idb = q.limit(&b, &LayerId::new("bbb").unwrap(), MIB).unwrap();
    assert_ne!(ida, idb);

    std::fs::remove_dir_all(&a).unwrap();
    q.release("aaa").unwrap();
    assert!(xfs::project_quota(&root, ida).unwrap().is_unused());
    assert_eq!(q.project_of("aaa").unwrap(), None);
    // Updating a layer without a project is refused, not ignored.
    assert_eq!(q.set(&la, MIB).unwrap_err().kind(), ErrorKind::Unsupported);
    // cleanup releases what no live layer claims.
    std::fs::remove_dir_all(&b).unwrap();
    q.cleanup(&|_| false).unwrap();
    assert!(xfs::project_quota(&root, idb).unwrap().is_unused());
    assert!(q.list().unwrap().is_empty());
    drop(root);
    drop(sub);
}

/// The loopback XFS comes back after being taken away (a reboot), found
/// again by `open`; selecting again with the same size finds it, another
/// size is refused.
#[test]
fn loopback_survives_a_reboot() {
    let fx = fx();
    let state = &fx.env.state_dir;
    std::fs::write(state.join("kept"), "x").unwrap();
    // A reboot: nothing mounted; open mounts it again.
    drivers_mount::unmount(state).unwrap();
    assert!(!drivers_mount::is_mountpoint(state).unwrap());
    open("vfs", &fx.env, &at(512)).unwrap();
    assert!(drivers_mount::is_mountpoint(state).unwrap());
    assert_eq!(std::fs::read(state.join("kept")).unwrap(), b"x");
    // Selecting again with the same size finds it; another size is refused.
    let again = SelectArgs {
        loopback: Some(512 * MIB),
        ..Default::default()
    };
    setup("vfs", &fx.env, &again, &at(512)).unwrap();
    let other = SelectArgs {
        loopback: Some(600 * MIB),
        ..Default::default()
    };
    assert_eq!(
        setup("vfs", &fx.env, &other, &at(512)).unwrap_err().kind(),
        ErrorKind::Invalid
    );
}

/// Off XFS, quota is refused with the reason and the way out; a size
/// below mkfs.xfs's minimum and a state directory already holding a store
/// are refused before anything is made.
#[test]
fn refusals() {
    let tmp = tempfile::tempdir().unwrap();
    match probe("overlay2", tmp.path()) {
        Support::No(why) => {
            assert!(why.contains("not on XFS"), "{why}");
            assert!(why.contains("select overlay2 --loopback SIZE"), "{why}");
        }
        Support::Yes => panic!("{} is expected off XFS", tmp.path().display()),
    }
    let q = ProjectQuotas::open("overlay2", tmp.path()).unwrap();
    let e = q
        .limit(tmp.path(), &LayerId::new("x").unwrap(), MIB)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(!tmp.path().join(PROJECTS_DIR).exists());

    let env = HostEnv {
        state_dir: tmp.path().join("overlay2"),
    };
    let small = SelectArgs {
        loopback: Some(100 * MIB),
        ..Default::default()
    };
    let e = setup("overlay2", &env, &small, &Location::default()).unwrap_err();
    assert!(e.to_string().contains("mkfs.xfs needs 300 MiB"), "{e}");
    std::fs::create_dir_all(&env.state_dir).unwrap();
    std::fs::write(env.state_dir.join("metadata.db"), "").unwrap();
    let ok = SelectArgs {
        loopback: Some(512 * MIB),
        ..Default::default()
    };
    let e = setup("overlay2", &env, &ok, &Location::default()).unwrap_err();
    assert!(e.to_string().contains("already keeps a store"), "{e}");
    assert!(!image_path(&env).exists());
    // Without an option the recorded setting is kept.
    assert_eq!(
        setup("overlay2", &env, &SelectArgs::default(), &at(7)).unwrap(),
        at(7)
    );
    // A recorded location is not moved.
    let path = SelectArgs {
        path: Some(tmp.path().join("elsewhere")),
        ..Default::default()
    };
    let e = setup("overlay2", &env, &path, &at(512)).unwrap_err();
    assert!(
        e.to_string().contains("already set up on --loopback"),
        "{e}"
    );
    let dataset = SelectArgs {
        dataset: Some("p/x".into()),
        ..Default::default()
    };
    assert_eq!(
        setup("overlay2", &env, &dataset, &Location::default())
            .unwrap_err()
            .kind(),
        ErrorKind::Invalid
    );
}

/// `--path DIR` binds DIR on the state directory (idempotently, again
/// after a reboot), so the state lives there and quota is what DIR's
/// filesystem gives; teardown unbinds and leaves DIR's contents. A DIR
/// inside the state directory, or a file, is refused.
#[test]
fn path_binds_the_state_directory() {
    let tmp = tempfile::Builder::new()
        .prefix("drivers-test-xfs-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let env = HostEnv {
        state_dir: tmp.path().join("overlay2"),
    };
    let args = SelectArgs {
        path: Some(dir.clone()),
        ..Default::default()
    };
    let at = setup("overlay2", &env, &args, &Location::default()).unwrap();
    struct Unbind<'a>(&'a HostEnv, Location);
    impl Drop for Unbind<'_> {
        fn drop(&mut self) {
            if let Err(e) = teardown("overlay2", self.0, &self.1) {
                eprintln!("teardown: {e}");
            }
        }
    }
    let guard = Unbind(&env, at.clone());
    assert_eq!(at.path.as_deref(), Some(dir.as_path()));
    std::fs::write(env.state_dir.join("f"), "x").unwrap();
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"x");
    setup("overlay2", &env, &args, &at).unwrap();
    assert_eq!(
        drivers_mount::mounts_under(&env.state_dir).unwrap().len(),
        1
    );
    drivers_mount::unmount(&env.state_dir).unwrap();
    open("overlay2", &env, &at).unwrap();
    assert!(env.state_dir.join("f").is_file());
    // What quota says is DIR's filesystem's answer.
    assert_eq!(
        probe("overlay2", &env.state_dir).is_yes(),
        probe("overlay2", &dir).is_yes()
    );
    drop(guard);
    assert!(!env.state_dir.exists());
    assert!(dir.join("f").is_file());

    for bad in [env.state_dir.join("inner"), dir.join("f")] {
        let args = SelectArgs {
            path: Some(bad.clone()),
            ..Default::default()
        };
        std::fs::create_dir_all(&env.state_dir).unwrap();
        if bad.starts_with(&env.state_dir) {
            std::fs::create_dir_all(&bad).unwrap();
        }
        let e = setup("overlay2", &env, &args, &Location::default()).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Invalid), "{bad:?}: {e}");
        assert!(!drivers_mount::is_mountpoint(&env.state_dir).unwrap());
        let _ = std::fs::remove_dir_all(&env.state_dir);
    }
}
