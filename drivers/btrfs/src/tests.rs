//! The btrfs backend on a real loopback btrfs made by its own `setup`, as
//! root (CI and the dev machines run as root). Every fixture tears its
//! filesystem down in `Drop` — unmounts, releases the loop device, deletes
//! the image — also when an assertion fails.

use super::*;
use drivers_api::ErrorKind;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

const MIB: u64 = 1 << 20;

/// A loopback btrfs under a fresh temporary root, with the backend open.
/// Fields drop in order: the driver, then the filesystem.
struct Fx {
    drv: Box<dyn Driver>,
    fs: Setup,
}

/// What `setup` made; dropping it unmounts what is still mounted below the
/// root and runs `teardown`.
struct Setup {
    tmp: tempfile::TempDir,
    env: HostEnv,
    table: toml::Table,
}

fn fx() -> Fx {
    let tmp = tempfile::Builder::new()
        .prefix("drivers-test-btrfs-")
        .tempdir()
        .unwrap();
    let env = HostEnv {
        state_dir: tmp.path().join("btrfs"),
    };
    let args = SelectArgs {
        loopback: Some(256 * MIB),
        ..Default::default()
    };
    let table = (BACKEND.setup)(&env, &args, &toml::Table::new()).unwrap();
    let fs = Setup { tmp, env, table };
    let drv = (BACKEND.open)(&fs.env, &fs.table).unwrap();
    Fx { drv, fs }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for m in drivers_mount::mounts_under(self.tmp.path()).unwrap_or_default() {
            if m != mount_point(&self.env) {
                let _ = drivers_mount::unmount(&m);
            }
        }
        if let Err(e) = (BACKEND.teardown)(&self.env, &self.table) {
            eprintln!("teardown of {}: {e}", self.tmp.path().display());
        }
    }
}

impl std::ops::Deref for Fx {
    type Target = Setup;

    fn deref(&self) -> &Setup {
        &self.fs
    }
}

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

impl Fx {
    fn fs(&self) -> PathBuf {
        mount_point(&self.env)
    }

    fn root(&self, layer: &str) -> PathBuf {
        self.drv.apply_target(&id(layer), &[]).unwrap().root
    }

    /// A committed layer `name` on `parent`, filled by `fill`.
    fn layer(&self, name: &str, parents: &[LayerId], fill: impl FnOnce(&Path)) -> LayerId {
        let l = id(name);
        self.drv
            .prepare(&l, parents, &PrepareOpts::default())
            .unwrap();
        fill(&self.root(name));
        self.drv.commit(&l).unwrap();
        l
    }

    /// The subvolumes of the filesystem, as `btrfs subvolume list` shows
    /// them (an independent implementation).
    fn subvolumes(&self) -> Vec<String> {
        btrfs_cli(&["subvolume", "list"], &self.fs())
            .lines()
            .filter_map(|l| l.split(" path ").nth(1).map(str::to_owned))
            .collect()
    }

    /// Level-0 qgroups but the top level's (`0/5`), from `btrfs qgroup
    /// show`.
    fn qgroups(&self) -> BTreeSet<String> {
        btrfs_cli(&["qgroup", "show", "--raw"], &self.fs())
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|q| q.starts_with("0/") && *q != "0/5")
            .map(str::to_owned)
            .collect()
    }
}

fn btrfs_cli(args: &[&str], path: &Path) -> String {
    let out = Command::new("btrfs").args(args).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "btrfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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

fn write(p: &Path, content: &[u8], mode: u32) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Requires the snapshot diff to give exactly what comparing the full
/// trees gives: the same changes and the same tar, byte for byte.
fn assert_same_as_compare(src: &DiffSource) {
    let DiffSource::Snapshot { layer, parent, .. } = src else {
        panic!("not a snapshot diff: {src:?}");
    };
    let reference = DiffSource::Compare {
        layer: layer.clone(),
        parent: Some(parent.clone()),
    };
    assert_eq!(
        drivers_diff::changes(src).unwrap(),
        drivers_diff::changes(&reference).unwrap()
    );
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let ra = drivers_diff::write_layer(src, &mut a).unwrap();
    let rb = drivers_diff::write_layer(&reference, &mut b).unwrap();
    assert_eq!(ra, rb);
    assert!(a == b, "the tars differ");
}

/// Base, child snapshot, commit, view: contents and root attributes are
/// inherited, committed layers and views are read-only subvolumes, mounts
/// are binds, and removal leaves no subvolume.
#[test]
fn lifecycle() {
    let fx = fx();
    let base = fx.layer("base", &[], |r| {
        write(&r.join("etc/motd"), b"hi\n", 0o644);
        write(&r.join("bin/sh"), b"#!\n", 0o755);
    });
    let (mode, uid) = {
        let m = std::fs::metadata(fx.root("base")).unwrap();
        (m.mode() & 0o7777, m.uid())
    };
    assert_eq!((mode, uid), (0o755, 0));
    assert!(
        std::fs::write(fx.root("base").join("x"), "x").is_err(),
        "a committed layer is read-only"
    );

    let child = id("child");
    let mounts = fx
        .drv
        .prepare(&child, std::slice::from_ref(&base), &PrepareOpts::default())
        .unwrap();
    assert_eq!(
        mounts,
        vec![Mount::Bind {
            source: fx.fs().join("subvolumes/child"),
            read_only: false
        }]
    );
    {
        let m = Mounted::new(&mounts, fx.tmp.path().join("mnt"));
        assert_eq!(std::fs::read(m.0.join("etc/motd")).unwrap(), b"hi\n");
        std::fs::remove_file(m.0.join("etc/motd")).unwrap();
        write(&m.0.join("etc/new"), b"new\n", 0o600);
        std::fs::set_permissions(&m.0, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let usage = fx.drv.commit(&child).unwrap();
    assert!(usage.inodes >= 2 && usage.inodes < 10, "{usage:?}");
    assert!(
        fx.root("base").join("etc/motd").exists(),
        "the parent is untouched"
    );

    let parents = [child.clone(), base.clone()];
    let src = fx.drv.diff_source(&child, &parents[1..]).unwrap();
    assert_same_as_compare(&src);
    let got: Vec<String> = drivers_diff::changes(&src)
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.kind, c.path.display()))
        .collect();
    assert_eq!(got, ["C /etc", "D /etc/motd", "A /etc/new"]);

    let view = id("view");
    let mounts = fx.drv.view(&view, &parents).unwrap();
    assert_eq!(fx.drv.mounts(&view, &parents, false).unwrap(), mounts);
    {
        let m = Mounted::new(&mounts, fx.tmp.path().join("view"));
        assert_eq!(std::fs::read(m.0.join("etc/new")).unwrap(), b"new\n");
        assert_eq!(
            std::fs::metadata(&m.0).unwrap().mode() & 0o7777,
            0o711,
            "a chmod of / is inherited"
        );
        assert!(
            std::fs::write(m.0.join("x"), "x").is_err(),
            "views are read-only"
        );
    }
    assert!(std::fs::write(fx.root("view").join("x"), "x").is_err());
    let empty_view = id("emptyview");
    fx.drv.view(&empty_view, &[]).unwrap();
    assert!(std::fs::write(fx.root("emptyview").join("x"), "x").is_err());

    assert_eq!(fx.subvolumes().len(), 4);
    for l in [&view, &empty_view, &child, &base] {
        fx.drv.remove(l).unwrap();
        fx.drv.remove(l).unwrap(); // removing again succeeds
        assert_eq!(
            fx.drv.mounts(l, &[], false).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
    assert!(fx.subvolumes().is_empty(), "{:?}", fx.subvolumes());
    assert_eq!(
        fx.qgroups(),
        BTreeSet::new(),
        "every layer's qgroup goes with it"
    );
    assert!(
        dir_names(&fx.fs().join("subvolumes-tmp"))
            .unwrap()
            .is_empty()
    );
}

/// The generation search narrows for real: on a 600-file base, a child
/// that changes two files compares a handful of inodes, an empty set
/// would then (wrongly) see nothing, and the result still equals the full
/// comparison. It also holds when the parent was written in the very
/// transaction the snapshot was taken in.
#[test]
fn find_new_narrows_the_diff() {
    let fx = fx();
    let base = fx.layer("base", &[], |r| {
        for d in 0..20 {
            for f in 0..30 {
                write(
                    &r.join(format!("d{d:02}/f{f:02}")),
                    format!("{d} {f}\n").as_bytes(),
                    0o644,
                );
            }
        }
    });
    let child = fx.layer("child", std::slice::from_ref(&base), |r| {
        write(&r.join("d07/f03"), b"rewritten\n", 0o644);
        std::fs::remove_file(r.join("d11/f29")).unwrap();
        std::fs::hard_link(r.join("d02/f00"), r.join("d03/link")).unwrap();
    });
    let src = fx
        .drv
        .diff_source(&child, std::slice::from_ref(&base))
        .unwrap();
    let DiffSource::Snapshot {
        changed,
        layer,
        parent,
    } = &src
    else {
        panic!("{src:?}");
    };
    assert!(changed.contains(&256), "the root leads to every change");
    assert!(
        changed.len() < 12,
        "{} inodes of 621 to compare: {changed:?}",
        changed.len()
    );
    assert_same_as_compare(&src);
    // C /d03, A /d03/link, C /d07, C /d07/f03, C /d11, D /d11/f29.
    assert_eq!(drivers_diff::changes(&src).unwrap().len(), 6);
    let lying = DiffSource::Snapshot {
        layer: layer.clone(),
        parent: parent.clone(),
        changed: BTreeSet::new(),
    };
    assert!(
        drivers_diff::changes(&lying).unwrap().is_empty(),
        "with no inode marked changed, nothing is compared"
    );
    // A child of a child: the grandchild's own changes only.
    let grand = fx.layer("grand", &[child.clone(), base.clone()], |r| {
        std::fs::set_permissions(r.join("d19"), std::fs::Permissions::from_mode(0o700)).unwrap();
    });
    let src = fx.drv.diff_source(&grand, &[child, base]).unwrap();
    assert_same_as_compare(&src);
    assert_eq!(drivers_diff::changes(&src).unwrap().len(), 1);
}

/// moby's TestBtrfsSubvolDelete, deeper: subvolumes a container nests in
/// itself (one inside another, one read-only) go with it, qgroups too,
/// also once the container was committed read-only.
#[test]
fn nested_subvolumes_are_removed() {
    let fx = fx();
    let base = fx.layer("base", &[], |r| write(&r.join("f"), b"f", 0o644));
    for (name, commit) in [("ctr", false), ("img", true)] {
        let l = id(name);
        fx.drv
            .prepare(&l, std::slice::from_ref(&base), &PrepareOpts::default())
            .unwrap();
        let r = fx.root(name);
        std::fs::create_dir(r.join("deep")).unwrap();
        btrfs_cli(&["subvolume", "create"], &r.join("deep/sub"));
        btrfs_cli(&["subvolume", "create"], &r.join("deep/sub/inner"));
        std::fs::write(r.join("deep/sub/inner/data"), "x").unwrap();
        btrfs_cli(
            &[
                "subvolume",
                "snapshot",
                "-r",
                &r.join("deep/sub").to_string_lossy(),
            ],
            &r.join("ro"),
        );
        assert_eq!(fx.subvolumes().len(), 5, "{:?}", fx.subvolumes());
        if commit {
            fx.drv.commit(&l).unwrap();
        }
        fx.drv.remove(&l).unwrap();
        assert_eq!(fx.subvolumes(), ["subvolumes/base"], "{name}");
        assert_eq!(fx.qgroups().len(), 1, "{name}: {:?}", fx.qgroups());
    }
}

/// A container limited to 50 MiB takes 25 MiB and refuses 50 MiB more
/// with EDQUOT; the limit sits on its exclusive bytes, so the parent's
/// data does not count; removal takes its qgroup away.
#[test]
fn quota_is_enforced() {
    let fx = fx();
    assert_eq!(fx.drv.capabilities().quota, Support::Yes);
    let base = fx.layer("base", &[], |r| {
        let mut f = std::fs::File::create(r.join("big")).unwrap();
        for i in 0..40u8 {
            f.write_all(&[i; MIB as usize]).unwrap();
        }
    });
    let before = fx.qgroups();
    let ctr = id("ctr");
    let opts = PrepareOpts {
        size_limit: Some(50 * MIB),
    };
    fx.drv
        .prepare(&ctr, std::slice::from_ref(&base), &opts)
        .unwrap();
    let r = fx.root("ctr");
    write_random(&r.join("a"), 25).unwrap();
    let e = write_random(&r.join("b"), 50).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(Errno::DQUOT.raw_os_error()), "{e}");
    fx.drv.remove(&ctr).unwrap();
    assert_eq!(fx.qgroups(), before);
    // set_limit on an existing layer works the same way.
    let c2 = id("ctr2");
    fx.drv
        .prepare(&c2, std::slice::from_ref(&base), &PrepareOpts::default())
        .unwrap();
    fx.drv.set_limit(&c2, 10 * MIB).unwrap();
    let e = write_random(&fx.root("ctr2").join("c"), 20).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(Errno::DQUOT.raw_os_error()), "{e}");
}

/// Writes `mib` MiB that do not compress, and syncs.
fn write_random(p: &Path, mib: u64) -> std::io::Result<()> {
    let mut f = std::fs::File::create(p)?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..mib {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.sync_all()
}

/// After a "reboot" (the filesystem unmounted and its loop device
/// released) `open` attaches and mounts the image again, data intact;
/// selecting the same loopback again reuses it; other locations, too
/// small a size and no option at all are refused with the reason.
#[test]
fn reopen_and_select_rules() {
    let fx = fx();
    fx.layer("base", &[], |r| write(&r.join("kept"), b"kept", 0o644));
    let image = image_path(&fx.env);
    drivers_mount::unmount(&fx.fs()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !loopback::attachments(&image).unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "autoclear did not release the device"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        probe::probe(&fx.env, &fx.table),
        drivers_api::Availability::Usable
    );
    let drv = (BACKEND.open)(&fx.env, &fx.table).unwrap();
    assert_eq!(
        std::fs::read(fx.root("base").join("kept")).unwrap(),
        b"kept"
    );
    assert_eq!(loopback::attachments(&image).unwrap().len(), 1);
    drop(drv);

    let again = SelectArgs {
        loopback: Some(256 * MIB),
        ..Default::default()
    };
    assert_eq!(
        (BACKEND.setup)(&fx.env, &again, &fx.table).unwrap(),
        fx.table
    );
    assert_eq!(
        loopback::attachments(&image).unwrap().len(),
        1,
        "not attached twice"
    );
    let other_size = SelectArgs {
        loopback: Some(300 * MIB),
        ..Default::default()
    };
    let e = (BACKEND.setup)(&fx.env, &other_size, &fx.table).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    let path = SelectArgs {
        path: Some(fx.fs()),
        ..Default::default()
    };
    let e = (BACKEND.setup)(&fx.env, &path, &fx.table).unwrap_err();
    assert!(
        e.to_string().contains("already set up with --loopback"),
        "{e}"
    );
    let e = (BACKEND.setup)(&fx.env, &SelectArgs::default(), &toml::Table::new()).unwrap_err();
    assert!(e.to_string().contains("needs --path DIR"), "{e}");
    let fresh = HostEnv {
        state_dir: fx.tmp.path().join("small"),
    };
    let small = SelectArgs {
        loopback: Some(64 * MIB),
        ..Default::default()
    };
    let e = (BACKEND.setup)(&fresh, &small, &toml::Table::new()).unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
    assert!(!image_path(&fresh).exists());
    let not_btrfs = SelectArgs {
        path: Some(fx.tmp.path().to_owned()),
        ..Default::default()
    };
    let e = (BACKEND.setup)(&fresh, &not_btrfs, &toml::Table::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("not btrfs"), "{e}");
}

/// `--path` on a btrfs the user owns: quota is used only if the user
/// turned it on; teardown deletes the backend's subvolumes and directories
/// and nothing else.
#[test]
fn path_mode() {
    let fx = fx();
    let dir = fx.fs().join("user-dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("mine"), "mine").unwrap();
    // A filesystem without quota: disable it on the test's own btrfs.
    btrfs_cli(&["quota", "disable"], &fx.fs());
    let env = HostEnv {
        state_dir: fx.tmp.path().join("path-state"),
    };
    let args = SelectArgs {
        path: Some(dir.clone()),
        ..Default::default()
    };
    let table = (BACKEND.setup)(&env, &args, &toml::Table::new()).unwrap();
    let drv = (BACKEND.open)(&env, &table).unwrap();
    let Support::No(why) = drv.capabilities().quota else {
        panic!("quota without qgroups");
    };
    assert!(why.contains("btrfs quota enable"), "{why}");
    let opts = PrepareOpts {
        size_limit: Some(MIB),
    };
    let e = drv.prepare(&id("c"), &[], &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(!dir.join("subvolumes/c").exists());
    drv.prepare(&id("c"), &[], &PrepareOpts::default()).unwrap();
    drop(drv);
    btrfs_cli(&["quota", "enable"], &fx.fs());
    let drv = (BACKEND.open)(&env, &table).unwrap();
    assert_eq!(drv.capabilities().quota, Support::Yes);
    drop(drv);
    (BACKEND.teardown)(&env, &table).unwrap();
    assert_eq!(dir_names(&dir).unwrap(), ["mine"]);
}

/// Cleanup deletes subvolumes of dead ids, half-made base layers and the
/// qgroups markers record, and keeps live layers.
#[test]
fn cleanup_removes_orphans() {
    let fx = fx();
    let live = fx.layer("live", &[], |r| write(&r.join("f"), b"f", 0o644));
    fx.layer("dead", std::slice::from_ref(&live), |r| {
        write(&r.join("g"), &[7; 100_000], 0o644)
    });
    let tmp = fx.fs().join("subvolumes-tmp");
    btrfs_cli(&["subvolume", "create"], &tmp.join("new-crashed"));
    // A qgroup whose subvolume was deleted by a process that then died.
    btrfs_cli(&["subvolume", "create"], &tmp.join("victim"));
    let victim_id: u64 = btrfs_cli(&["inspect-internal", "rootid"], &tmp.join("victim"))
        .trim()
        .parse()
        .unwrap();
    std::fs::write(tmp.join(format!("qgroup-{victim_id}")), "").unwrap();
    btrfs_cli(&["subvolume", "delete"], &tmp.join("victim"));
    let freed = fx.drv.cleanup(&|l| l.as_str() == "live").unwrap();
    assert!(freed.bytes >= 100_000, "{freed:?}");
    assert_eq!(fx.subvolumes(), ["subvolumes/live"]);
    assert!(dir_names(&tmp).unwrap().is_empty(), "{:?}", dir_names(&tmp));
    assert_eq!(fx.qgroups().len(), 1, "{:?}", fx.qgroups()); // live's
}
