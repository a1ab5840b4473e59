//! moby's `TestBtrfsSubvolDelete` (btrfs/btrfs_test.go), generalised to
//! every backend, and the btrfs view of what a removal must leave: no
//! subvolume and no qgroup (Docker leaks qgroups).
//!
//! The property is backend-neutral — removing a container deletes
//! everything it created inside itself, however it was made — so the case
//! runs everywhere: on btrfs the container nests real subvolumes (made
//! with the `btrfs` tool, an implementation independent of ours), one
//! inside another plus a read-only snapshot; elsewhere the same paths are
//! plain directories, one of them read-only, which a careless removal also
//! trips over.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use drivers_api::HostEnv;

use crate::Fixture;
use crate::fschange::FsChange as C;

/// Runs the `btrfs` tool; its standard output.
fn btrfs(args: &[&str], path: &Path) -> Result<String> {
    let out = Command::new("btrfs")
        .args(args)
        .arg(path)
        .output()
        .context("run btrfs (btrfs-progs; `cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!(
            "btrfs {} {}: {}",
            args.join(" "),
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The fixture's btrfs filesystem (its loopback mount).
fn btrfs_fs(fx: &Fixture) -> std::path::PathBuf {
    drivers_btrfs::mount_point(&HostEnv {
        state_dir: fx.state_dir(),
    })
}

/// Paths of every subvolume of the fixture's btrfs, as `btrfs subvolume
/// list` prints them.
pub(crate) fn subvolumes(fx: &Fixture) -> Result<Vec<String>> {
    Ok(btrfs(&["subvolume", "list"], &btrfs_fs(fx))?
        .lines()
        .filter_map(|l| l.split(" path ").nth(1).map(str::to_owned))
        .collect())
}

/// Level-0 qgroups of the fixture's btrfs but the top level's, as `btrfs
/// qgroup show` prints them.
pub(crate) fn qgroups(fx: &Fixture) -> Result<Vec<String>> {
    Ok(btrfs(&["qgroup", "show", "--raw"], &btrfs_fs(fx))?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|q| q.starts_with("0/") && *q != "0/5")
        .map(str::to_owned)
        .collect())
}

/// A container nests things in itself (subvolumes on btrfs); removing it
/// removes them all: nothing is left under the state dir, and on btrfs no
/// subvolume but the base layer's and no qgroup of the removed ones.
pub fn subvol_delete(fx: &Fixture) -> Result<()> {
    fx.committed("base", None, &[C::file("/f", "f\n", 0o644)])?;
    let before = fx.backend_listing()?;
    let btrfs_before = if fx.name() == "btrfs" {
        Some((subvolumes(fx)?, qgroups(fx)?))
    } else {
        None
    };
    fx.prepare("ctr", Some("base"))?;
    fx.with_mounted("ctr", |root| {
        std::fs::create_dir(root.join("deep"))?;
        let sub = root.join("deep/subvol");
        let inner = sub.join("inner");
        let ro = root.join("ro-snapshot");
        if fx.name() == "btrfs" {
            btrfs(&["subvolume", "create"], &sub)?;
            btrfs(&["subvolume", "create"], &inner)?;
            std::fs::write(inner.join("data"), vec![7u8; 200_000])?;
            btrfs(
                &["subvolume", "snapshot", "-r", &sub.to_string_lossy()],
                &ro,
            )?;
            let n = subvolumes(fx)?.len();
            ensure!(
                n == btrfs_before.as_ref().map_or(0, |b| b.0.len()) + 4,
                "expected the container and three nested subvolumes, found {n} subvolumes in all"
            );
        } else {
            std::fs::create_dir_all(&inner)?;
            std::fs::write(inner.join("data"), vec![7u8; 200_000])?;
            std::fs::create_dir(&ro)?;
            std::fs::write(ro.join("kept"), "x")?;
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555))?;
        }
        Ok(())
    })?;
    fx.remove("ctr")?;
    fx.expect_no_residue(Some(&before))?;
    if let Some((subs, groups)) = btrfs_before {
        let now = subvolumes(fx)?;
        ensure!(
            now == subs,
            "subvolumes after removal: {now:?}, before: {subs:?}"
        );
        let now = qgroups(fx)?;
        ensure!(
            now == groups,
            "qgroups after removal: {now:?}, before: {groups:?} (a leaked qgroup)"
        );
    }
    Ok(())
}
