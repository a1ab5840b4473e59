//! moby's `daemon/graphdriver/graphtest` (conformance.md 2.2), translated
//! to snapshots: `Create` of a layer with a parent is `prepare` on a
//! committed snapshot, `Get` is a mount, `Diff`/`ApplyDiff` are
//! `store.write_diff` and `drivers_archive::apply` onto the store's apply
//! target, `Changes` is `drivers_diff::changes` on its diff source.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use drivers_api::{Availability, ErrorKind, Mount, PrepareOpts, Support};
use drivers_diff::{Change, ChangeKind};
use drivers_host::layers::Expect;

use crate::Fixture;
use crate::fixture::{MountGuard, dir_summary, error_chain, expect_kind, open_store};
use crate::fschange::FsChange as C;
use crate::rawtar::{self, Entry};
use crate::tree::all_paths;

const MIB: u64 = 1 << 20;

/// Entries of a directory, ignoring ext4's `lost+found` as moby does.
fn entries(p: &Path) -> Result<Vec<String>> {
    Ok(dir_summary(p)?
        .3
        .into_iter()
        .filter(|n| n != "lost+found")
        .collect())
}

/// A new empty layer: root 0755 (no setuid, setgid or sticky), owned 0:0,
/// with no entries; it can be removed.
pub fn create_empty(fx: &Fixture) -> Result<()> {
    fx.prepare("empty", None)?;
    fx.stat("empty").context("the new layer does not exist")?;
    let (mode, uid, gid, names) = fx.with_mounted("empty", |r| {
        let (m, u, g, _) = dir_summary(r)?;
        Ok((m, u, g, entries(r)?))
    })?;
    ensure!(mode == 0o755, "root mode {mode:04o}, expected 0755");
    ensure!((uid, gid) == (0, 0), "root owned by {uid}:{gid}");
    ensure!(names.is_empty(), "new layer not empty: {names:?}");
    fx.remove("empty")?;
    fx.expect_no_residue(None)
}

/// moby's `createBase`: `a subdir` 0705+sticky owned 1:2, `a file`
/// "Some data" 0222+setuid.
pub(crate) fn make_base(fx: &Fixture, key: &str) -> Result<()> {
    fx.prepare(key, None)?;
    fx.apply_mounted(
        key,
        &[
            C::dir("/a subdir", 0o1705),
            C::chown("/a subdir", 1, 2),
            C::file("/a file", "Some data", 0o4222),
        ],
    )
}

/// moby's `verifyBase` on a fresh mount of `key`.
pub(crate) fn verify_base(fx: &Fixture, key: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    fx.with_mounted(key, |r| {
        let sub = std::fs::symlink_metadata(r.join("a subdir"))?;
        ensure!(sub.is_dir(), "`a subdir` is not a directory");
        ensure!(
            sub.mode() & 0o7777 == 0o1705,
            "`a subdir` mode {:04o}, expected 1705",
            sub.mode() & 0o7777
        );
        ensure!(
            (sub.uid(), sub.gid()) == (1, 2),
            "`a subdir` owned by {}:{}",
            sub.uid(),
            sub.gid()
        );
        let file = std::fs::symlink_metadata(r.join("a file"))?;
        ensure!(file.is_file(), "`a file` is not a regular file");
        ensure!(
            file.mode() & 0o7777 == 0o4222,
            "`a file` mode {:04o}, expected 4222",
            file.mode() & 0o7777
        );
        ensure!(
            (file.uid(), file.gid()) == (0, 0),
            "`a file` owned by {}:{}",
            file.uid(),
            file.gid()
        );
        let names = entries(r)?;
        ensure!(names.len() == 2, "unexpected entries: {names:?}");
        Ok(())
    })
    .with_context(|| format!("verify base content of {key}"))
}

/// Modes with sticky and setuid bits and owners written into a writable
/// layer read back the same after remounting; the layer can be removed.
pub fn create_base(fx: &Fixture) -> Result<()> {
    make_base(fx, "Base")?;
    verify_base(fx, "Base")?;
    fx.remove("Base")?;
    fx.expect_no_residue(None)
}

/// A layer created on a committed base shows the base's entries with their
/// modes and owners; child then parent can be removed.
pub fn create_snap(fx: &Fixture) -> Result<()> {
    make_base(fx, "Base-rw")?;
    fx.commit("Base", "Base-rw")?;
    fx.prepare("Snap", Some("Base"))?;
    verify_base(fx, "Snap")?;
    fx.remove("Snap")?;
    fx.remove("Base")?;
    fx.expect_no_residue(None)
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))
}

/// 128 layers on a base: through the top, every layer's files are read
/// back with the right ids, the parent chain is intact, and the base file
/// is unchanged.
pub fn deep_layer_read(fx: &Fixture) -> Result<()> {
    const N: usize = 128;
    fx.committed(
        "base",
        None,
        &[C::file("/testfile.txt", "test content", 0o755)],
    )?;
    let mut ids = Vec::new();
    let mut parent = "base".to_owned();
    for i in 1..=N {
        let id = drivers_host::store::random_hex(16);
        let key = format!("{id}-rw");
        fx.prepare(&key, Some(&parent))?;
        fx.apply_mounted(
            &key,
            &[
                C::file("/top-id", &id, 0o755),
                C::dir(&format!("/layer-{i}"), 0o755),
                C::file(&format!("/layer-{i}/layer-id"), &id, 0o755),
                C::file(&format!("/layer-{i}/parent-id"), &parent, 0o755),
            ],
        )?;
        fx.commit(&id, &key)?;
        ids.push(id.clone());
        parent = id;
    }
    fx.view("top-view", Some(&parent))?;
    fx.with_mounted("top-view", |r| {
        ensure!(
            read(&r.join("top-id"))? == parent,
            "top-id is not the top layer"
        );
        for i in (1..=N).rev() {
            let dir = r.join(format!("layer-{i}"));
            ensure!(
                read(&dir.join("layer-id"))? == ids[i - 1],
                "layer-{i}/layer-id"
            );
            let want_parent = if i == 1 { "base" } else { ids[i - 2].as_str() };
            ensure!(
                read(&dir.join("parent-id"))? == want_parent,
                "layer-{i}/parent-id"
            );
        }
        ensure!(
            read(&r.join("testfile.txt"))? == "test content",
            "testfile.txt changed"
        );
        Ok(())
    })
}

/// moby's `randomContent`: deterministic bytes per seed (splitmix64 here).
pub(crate) fn random_content(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(size);
    out
}

/// moby's `addManyFiles`: `directory-<k*100>/file-<j>`, 64 bytes each.
fn many_files(count: u64, seed: u64) -> Vec<C> {
    let mut out = Vec::new();
    for i in (0..count).step_by(100) {
        out.push(C::dir(&format!("/directory-{i}"), 0o755));
        for j in 0..100.min(count - i) {
            out.push(C::file(
                &format!("/directory-{i}/file-{j}"),
                random_content(64, seed + i + j),
                0o755,
            ));
        }
    }
    out
}

/// moby's `checkManyFiles`.
fn check_many_files(root: &Path, count: u64, seed: u64) -> Result<()> {
    for i in (0..count).step_by(100) {
        for j in 0..100.min(count - i) {
            let p = root.join(format!("directory-{i}/file-{j}"));
            let got = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
            ensure!(
                got == random_content(64, seed + i + j),
                "{} has the wrong content",
                p.display()
            );
        }
    }
    Ok(())
}

/// A diff of a layer against its parent, applied onto another child of the
/// same parent, reproduces the layer: new contents, deleted file and
/// directory gone, and the applied size equals the diff's file bytes.
pub fn diff_apply(fx: &Fixture) -> Result<()> {
    const FILES: u64 = 10;
    let delete_content = "This file should get removed in upper!";
    let mut base = many_files(FILES, 3);
    base.push(C::file("/file-remove.txt", delete_content, 0o755));
    base.push(C::dir("/var/lib", 0o755));
    fx.committed("base", None, &base)?;

    fx.prepare("upper", Some("base"))?;
    let mut upper = many_files(FILES, 6);
    upper.push(C::remove_all("/file-remove.txt"));
    upper.push(C::remove_all("/var/lib"));
    fx.apply_mounted("upper", &upper)?;

    let mut tar = Vec::new();
    let written = fx.store().write_diff("upper", &mut tar)?;
    ensure!(
        written.file_bytes == FILES * 64,
        "the diff carries {} file bytes, expected {}",
        written.file_bytes,
        FILES * 64
    );

    fx.prepare("diff", Some("base"))?;
    fx.with_mounted("diff", |r| {
        check_many_files(r, FILES, 3)?;
        ensure!(
            read(&r.join("file-remove.txt"))? == delete_content,
            "file-remove.txt"
        );
        Ok(())
    })?;
    let target = fx.store().apply_target("diff")?;
    let applied = drivers_archive::apply(&tar[..], &target, &Default::default())?;
    ensure!(
        applied.file_bytes == written.file_bytes,
        "applied {} file bytes, the diff has {}",
        applied.file_bytes,
        written.file_bytes
    );
    ensure!(
        applied.diff_id == written.diff_id,
        "diff id {} != {}",
        applied.diff_id,
        written.diff_id
    );
    fx.with_mounted("diff", |r| {
        check_many_files(r, FILES, 6)?;
        ensure!(
            !r.join("file-remove.txt").exists(),
            "file-remove.txt was not removed"
        );
        ensure!(!r.join("var/lib").exists(), "var/lib was not removed");
        ensure!(r.join("var").is_dir(), "var went with var/lib");
        Ok(())
    })
}

/// Changes of a layer against its parent list exactly the modified
/// directory, rewritten files (Modify), new files (Add) and deleted files
/// (Delete) — also on overlay2, where moby skips this case.
pub fn changes(fx: &Fixture) -> Result<()> {
    const COUNT: u64 = 20;
    const SEED: u64 = 6;
    fx.committed("base", None, &many_files(COUNT, 3))?;
    fx.prepare("upper", Some("base"))?;
    let mut edits = Vec::new();
    let mut expected = BTreeSet::new();
    for i in (0..COUNT).step_by(100) {
        let dir = format!("/directory-{i}");
        edits.push(C::dir(&dir, 0o755));
        for j in 0..100.min(COUNT - i) {
            if j == 0 {
                expected.insert((dir.clone(), ChangeKind::Modify.to_string()));
            }
            match j % 3 {
                0 => {
                    let p = format!("{dir}/file-{}", i + j);
                    edits.push(C::file(&p, random_content(64, SEED + i + j), 0o755));
                    expected.insert((p, ChangeKind::Modify.to_string()));
                }
                1 => {
                    let p = format!("{dir}/file-{SEED}-{}", i + j);
                    edits.push(C::file(&p, random_content(64, SEED + i + j), 0o755));
                    expected.insert((p, ChangeKind::Add.to_string()));
                }
                _ => {
                    let p = format!("{dir}/file-{}", i + j);
                    edits.push(C::remove_all(&p));
                    expected.insert((p, ChangeKind::Delete.to_string()));
                }
            }
        }
    }
    fx.apply_mounted("upper", &edits)?;
    let src = fx.store().diff_source("upper")?;
    let got = drivers_diff::changes(&src)?;
    expect_changes(&got, &expected)
}

/// Requires `got` to be exactly `expected` as (path, kind) pairs.
pub(crate) fn expect_changes(got: &[Change], expected: &BTreeSet<(String, String)>) -> Result<()> {
    let got_set: BTreeSet<(String, String)> = got
        .iter()
        .map(|c| (c.path.to_string_lossy().into_owned(), c.kind.to_string()))
        .collect();
    ensure!(got.len() == got_set.len(), "duplicate changes: {got:?}");
    if got_set != *expected {
        let missing: Vec<_> = expected.difference(&got_set).collect();
        let extra: Vec<_> = got_set.difference(expected).collect();
        bail!("changes differ: missing {missing:?}, unexpected {extra:?}");
    }
    Ok(())
}

/// A size limit is enforced or refused, never ignored: a backend without
/// quota refuses `prepare` with a 50 MiB limit as Unsupported, saying why,
/// and leaves no snapshot and no data; one with quota admits 25 MiB and
/// refuses 50 MiB more with EDQUOT or ENOSPC (btrfs: EDQUOT only), and
/// removing the layer leaves nothing (btrfs: not its qgroup either;
/// overlay2 and vfs: no project limit).
///
/// overlay2 and vfs run it twice: on the fixture's root filesystem, and
/// on a `--loopback` XFS of their own, where quota is XFS project quota —
/// enforced if the running kernel's XFS has quota support (its
/// `/proc/config.gz` says so), else refused with that reason.
pub fn set_quota(fx: &Fixture) -> Result<()> {
    set_quota_on(fx)?;
    if !matches!(fx.name(), "overlay2" | "vfs") {
        return Ok(());
    }
    let args = drivers_api::SelectArgs {
        loopback: Some(crate::fixture::XFS_TEST_FS_BYTES),
        ..Default::default()
    };
    let xfs = Fixture::with_select(fx.backend(), &format!("{}+xfs", fx.label()), &args)
        .context("fixture on a loopback XFS")?;
    let st = rustix::fs::statfs(xfs.state_dir())?;
    ensure!(
        st.f_type as u64 == 0x5846_5342,
        "the --loopback state dir is not on XFS (type {:#x})",
        st.f_type
    );
    let quota = xfs.store().driver().capabilities().quota;
    match (crate::fixture::kernel_xfs_quota(), &quota) {
        (Some(true), Support::Yes) => {}
        (Some(false), Support::No(why)) => ensure!(
            why.contains("no XFS project quota support"),
            "the refusal on a kernel without XFS quota does not say so: {why}"
        ),
        (kernel, q) => bail!("kernel XFS quota support {kernel:?}, but the backend says {q:?}"),
    }
    set_quota_on(&xfs)?;
    xfs.expect_no_mounts()
}

fn set_quota_on(fx: &Fixture) -> Result<()> {
    make_base(fx, "Base-rw")?;
    fx.commit("Base", "Base-rw")?;
    let quota = fx.store().driver().capabilities().quota;
    let before = fx.backend_listing()?;
    // The btrfs fixture is a --loopback btrfs, on which select enables
    // quota: the limit must be enforced there, not refused.
    ensure!(
        fx.name() != "btrfs" || quota.is_yes(),
        "btrfs on its loopback filesystem refuses quota: {quota:?}"
    );
    // btrfs: qgroups, whose leak on removal Docker is known for.
    let qgroups = (fx.name() == "btrfs")
        .then(|| crate::cases::subvol::qgroups(fx))
        .transpose()?;
    let names = fx.snapshot_names()?;
    let labels = fx.labels();
    let opts = PrepareOpts {
        size_limit: Some(50 * MIB),
    };
    let r = fx
        .store()
        .prepare("quotaTest", Some("Base"), &labels, &opts);
    match quota {
        Support::No(why) => {
            let e = expect_kind(r, ErrorKind::Unsupported, "prepare with a size limit")?;
            ensure!(
                e.to_string().contains(&why),
                "the refusal does not say why: {e}"
            );
            expect_kind(
                fx.store().stat("quotaTest"),
                ErrorKind::NotFound,
                "stat of the refused snapshot",
            )?;
            ensure!(
                fx.snapshot_names()? == names,
                "the refused prepare left a snapshot"
            );
            fx.expect_no_residue(Some(&before))
        }
        Support::Yes => {
            r.context("prepare with a size limit")?;
            let mut project = None;
            fx.with_mounted("quotaTest", |root| {
                if matches!(fx.name(), "overlay2" | "vfs") {
                    // The writable root's project (overlayfs passes the
                    // upper directory's through), limited to 50 MiB.
                    let dir = std::fs::File::open(root)?;
                    let p = drivers_sys::xfs::project(&dir)?;
                    ensure!(p.id != 0 && p.inherit, "{p:?}");
                    let q = drivers_sys::xfs::project_quota(&dir, p.id)?;
                    ensure!(q.hard_bytes == 50 * MIB, "{q:?}");
                    project = Some(p.id);
                }
                write_mib(&root.join("file"), 25).context("25 MiB within a 50 MiB quota")?;
                match write_mib(&root.join("file2"), 50) {
                    Ok(()) => bail!("wrote 75 MiB into a layer limited to 50 MiB"),
                    Err(e) => {
                        let errno = e.raw_os_error();
                        // The btrfs and zfs fixtures have room to spare:
                        // only the qgroup limit or the clone's refquota
                        // may stop the write.
                        let allowed: &[rustix::io::Errno] = if ["btrfs", "zfs"].contains(&fx.name())
                        {
                            &[rustix::io::Errno::DQUOT]
                        } else {
                            &[rustix::io::Errno::DQUOT, rustix::io::Errno::NOSPC]
                        };
                        let ok = allowed.iter().any(|x| Some(x.raw_os_error()) == errno);
                        ensure!(
                            ok,
                            "writing past the quota failed with {e}, expected {allowed:?}"
                        );
                        Ok(())
                    }
                }
            })?;
            fx.remove("quotaTest")?;
            fx.expect_no_residue(Some(&before))?;
            if let Some(id) = project {
                let dir = std::fs::File::open(fx.state_dir())?;
                let q = drivers_sys::xfs::project_quota(&dir, id)?;
                ensure!(
                    q.is_unused(),
                    "project {id} after removing the limited layer: {q:?}"
                );
            }
            if let Some(before) = qgroups {
                let now = crate::cases::subvol::qgroups(fx)?;
                ensure!(
                    now == before,
                    "qgroups after removing the limited layer: {now:?}, before: {before:?}"
                );
            }
            Ok(())
        }
    }
}

/// Writes `mib` MiB of incompressible bytes and syncs, so a quota is hit
/// during the call rather than later.
fn write_mib(p: &Path, mib: usize) -> std::io::Result<()> {
    let mut f = std::fs::File::create(p)?;
    for i in 0..mib {
        f.write_all(&random_content(MIB as usize, i as u64))?;
    }
    f.sync_all()
}

/// On a filesystem without xattrs (ramfs), applying a layer that carries
/// `SCHILY.xattr.user.test` fails (EOPNOTSUPP) with a one-line error naming
/// the xattr problem and the entry, and leaves no layer: xattrs are never
/// silently dropped. A backend that cannot use ramfs at all must say so.
/// zfs keeps no data on the root's filesystem: its backing filesystem is
/// the pool, and on zfs-fuse that is the one without xattrs, so the same
/// is required of the fixture's own store.
pub fn xattr_unsupported_by_backing_fs(fx: &Fixture) -> Result<()> {
    if fx.name() == "zfs" && !drivers_zfs::stores_xattrs() {
        let before = fx.backend_listing()?;
        let mut store = fx.store();
        expect_xattr_refused(&mut store)?;
        drop(store);
        return fx.expect_no_residue(Some(&before));
    }
    let ramfs = fx.root().join("ramfs");
    std::fs::create_dir(&ramfs)?;
    let fs = Mount::Fs {
        fstype: "ramfs".into(),
        source: "ramfs".into(),
        options: vec!["mode=0755".into()],
    };
    let guard = MountGuard::mount(&[fs], &ramfs)?;
    let r = (|| -> Result<()> {
        if let Availability::Unusable { reason, .. } =
            drivers_host::backends::probe(&ramfs, fx.backend(), &Default::default())
        {
            ensure!(
                reason.contains("ramfs"),
                "{} refuses ramfs without naming it: {reason}",
                fx.name()
            );
            return Ok(());
        }
        let mut store = open_store(fx.backend(), &ramfs, &Default::default())?;
        let state = store.state_dir().to_owned();
        let before = all_paths(&state)?;
        expect_xattr_refused(&mut store)?;
        let new: Vec<_> = all_paths(&state)?
            .into_iter()
            .filter(|p| !before.contains(p) && !p.to_string_lossy().starts_with("metadata.db"))
            .collect();
        ensure!(new.is_empty(), "left behind on ramfs: {new:?}");
        store.close()?;
        Ok(())
    })();
    guard.unmount()?;
    r
}

/// Applying a layer with `user.test` into `store` fails as Unsupported
/// with EOPNOTSUPP, on one line naming the xattr and the entry, and leaves
/// no snapshot and no layer.
fn expect_xattr_refused(store: &mut drivers_host::store::Store) -> Result<()> {
    let tar = rawtar::tar(&[
        Entry::dir("etc"),
        Entry::file("etc/xattr-carrier", "x").pax("SCHILY.xattr.user.test", "some value"),
    ]);
    let e = match store.apply_layer(&tar[..], None, &Expect::default()) {
        Ok(a) => bail!(
            "applying a layer with user.test succeeded on a filesystem without xattrs: {a:?} (the xattr was dropped?)"
        ),
        Err(e) => e,
    };
    let msg = error_chain(&e);
    ensure!(!msg.contains('\n'), "the error is not one line: {msg:?}");
    ensure!(
        msg.contains("xattr user.test"),
        "the error does not name the xattr: {msg}"
    );
    ensure!(
        e.kind() == drivers_api::ErrorKind::Unsupported,
        "a filesystem without user xattrs is an unsupported target, not an internal error: {:?}",
        e.kind()
    );
    ensure!(
        msg.contains("etc/xattr-carrier"),
        "the error does not name the entry: {msg}"
    );
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut eopnotsupp = false;
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            eopnotsupp |= io.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error());
        }
        src = s.source();
    }
    ensure!(eopnotsupp, "the error does not carry EOPNOTSUPP: {msg}");
    let mut names = Vec::new();
    store.walk(&[], |i| {
        names.push(i.name.clone());
        Ok(())
    })?;
    ensure!(names.is_empty(), "snapshots left: {names:?}");
    ensure!(store.layers()?.is_empty(), "layers left");
    Ok(())
}
