//! Whether btrfs can work here, and precisely why not: root, btrfs in the
//! kernel, and then what the recorded settings need — the `--path`
//! directory still on a mounted btrfs, the `--loopback` image still there
//! and attachable — or, before `drivers select`, a way to get a btrfs at
//! all (`mkfs.btrfs` and loop devices for `--loopback`, or a state
//! directory already on btrfs for `--path`). Cheap and side-effect free.

use std::path::Path;

use drivers_api::{Availability, HostEnv};
use drivers_mount::loopback;
use drivers_sys::btrfs::SUPER_MAGIC;

use crate::{Config, MKFS, image_path, mount_point};

/// `statfs` magics (`include/uapi/linux/magic.h`) of filesystems people
/// put roots on, for messages.
const FS_NAMES: &[(u32, &str)] = &[
    (SUPER_MAGIC, "btrfs"),
    (0xef53, "ext4"),
    (0x5846_5342, "xfs"),
    (0x0102_1994, "tmpfs"),
    (0x8584_58f6, "ramfs"),
    (0x794c_7630, "overlayfs"),
    (0x2fc1_2fc1, "zfs"),
    (0x6573_5546, "fuse"),
    (0x6969, "nfs"),
    (0x0102_1997, "9p"),
];

/// ramfs: never swapped, never limited.
const RAMFS_MAGIC: u32 = 0x8584_58f6;

#[allow(
    clippy::unnecessary_cast,
    reason = "f_type is a c_long on 64-bit targets but a u32 on others"
)]
fn magic(st: &rustix::fs::StatFs) -> u32 {
    // Magic numbers are 32-bit; a sign-extended c_long must not leak.
    (st.f_type as u64 & 0xffff_ffff) as u32
}

/// The `statfs` magic of the filesystem holding `path`, or the error text.
pub(crate) fn fs_magic(path: &Path) -> Result<u32, String> {
    rustix::fs::statfs(path)
        .map(|st| magic(&st))
        .map_err(|e| format!("cannot inspect the filesystem of {}: {e}", path.display()))
}

/// A name for a filesystem magic.
pub(crate) fn fs_name(magic: u32) -> String {
    FS_NAMES.iter().find(|(m, _)| *m == magic).map_or_else(
        || format!("a filesystem with magic {magic:#x}"),
        |(_, n)| (*n).to_owned(),
    )
}

/// Ok if `dir` is a directory on btrfs, else why not.
pub(crate) fn check_btrfs_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(e) => return Err(format!("{} cannot be used: {e}", dir.display())),
    }
    match fs_magic(dir)? {
        SUPER_MAGIC => Ok(()),
        m => Err(format!(
            "{} is on {}, not btrfs (is the btrfs filesystem still mounted there?)",
            dir.display(),
            fs_name(m)
        )),
    }
}

fn unusable(reason: impl Into<String>, hint: &str) -> Availability {
    Availability::Unusable {
        reason: reason.into(),
        hint: Some(hint.to_owned()),
    }
}

pub(crate) fn probe(env: &HostEnv, table: &toml::Table) -> Availability {
    if !rustix::process::geteuid().is_root() {
        return unusable(
            "btrfs must run as root (euid 0): it creates and deletes subvolumes and mounts them",
            "run drivers as root, or use vfs",
        );
    }
    if let Err(reason) = btrfs_in_kernel() {
        return unusable(
            reason,
            "load it with `modprobe btrfs`, or use overlay2 or vfs",
        );
    }
    let config: Config = match drivers_api::parse_config("backends.btrfs", table) {
        Ok(c) => c,
        Err(e) => return unusable(e.to_string(), "fix [backends.btrfs] in the config file"),
    };
    match (&config.path, config.loopback) {
        (Some(path), _) => match check_btrfs_dir(path) {
            Ok(()) => Availability::Usable,
            Err(reason) => unusable(
                format!("the configured --path {reason}"),
                "mount the btrfs filesystem again, or select btrfs with another --path or --loopback",
            ),
        },
        (None, Some(_)) => loopback_usable(env),
        (None, None) => unconfigured(env),
    }
}

/// The recorded loopback filesystem: mounted, or re-attachable by `open`.
fn loopback_usable(env: &HostEnv) -> Availability {
    let image = image_path(env);
    if !image.is_file() {
        return unusable(
            format!("the loopback image {} is gone", image.display()),
            "select btrfs --loopback SIZE again (its layers are lost)",
        );
    }
    let target = mount_point(env);
    let mounted = drivers_mount::is_mountpoint(&target).unwrap_or(false)
        && fs_magic(&target) == Ok(SUPER_MAGIC)
        && loopback::attachments(&image).is_ok_and(|a| !a.is_empty());
    if mounted || loopback::loop_control_available() {
        // Not mounted (after a reboot): `open` attaches and mounts it.
        return Availability::Usable;
    }
    unusable(
        format!(
            "the loopback image {} is not mounted and cannot be attached: /dev/loop-control is missing",
            image.display()
        ),
        "load the loop module (`modprobe loop`)",
    )
}

/// Before `drivers select btrfs`: is there any way to get a btrfs?
fn unconfigured(env: &HostEnv) -> Availability {
    let Some(dir) = env
        .state_dir
        .ancestors()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
    else {
        return unusable(
            "no part of the state directory exists",
            "choose another --root",
        );
    };
    let m = match fs_magic(dir) {
        Ok(m) => m,
        Err(reason) => return unusable(reason, "choose another --root"),
    };
    if m == SUPER_MAGIC {
        return Availability::Usable; // --path on the root's own btrfs
    }
    let mut missing = Vec::new();
    if m == RAMFS_MAGIC {
        missing.push(format!(
            "{} is on ramfs, where a --loopback image would pin its whole size in memory that is never swapped out or limited",
            dir.display()
        ));
    }
    if loopback::find_program(MKFS).is_none() {
        missing.push(format!(
            "{MKFS} is not installed (btrfs-progs), so --loopback cannot make a filesystem"
        ));
    }
    if !loopback::loop_control_available() {
        missing.push("/dev/loop-control is missing, so --loopback cannot attach an image".into());
    }
    if missing.is_empty() {
        return Availability::Usable;
    }
    unusable(
        format!(
            "{}; and {} is on {}, not btrfs, so there is no btrfs for --path there",
            missing.join("; "),
            dir.display(),
            fs_name(m)
        ),
        "install btrfs-progs and choose a --root on a disk filesystem for --loopback, or select btrfs --path DIR on a mounted btrfs",
    )
}

/// Ok if btrfs is registered, or available as a module that `mount`
/// loads on demand.
fn btrfs_in_kernel() -> Result<(), String> {
    drivers_mount::kernel::filesystem_available("btrfs", "btrfs")
}

/// Whether a `/proc/filesystems` text lists btrfs.
#[cfg(test)]
fn lists_btrfs(proc_filesystems: &str) -> bool {
    drivers_mount::kernel::lists_filesystem(proc_filesystems, "btrfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pure checks behind the probe.
    #[test]
    fn detection_tables() {
        assert!(lists_btrfs("nodev\tsysfs\n\text4\n\tbtrfs\n"));
        assert!(!lists_btrfs("nodev\tbtrfsx\n\text4\n"));
        assert_eq!(fs_name(SUPER_MAGIC), "btrfs");
        assert_eq!(fs_name(RAMFS_MAGIC), "ramfs");
        assert!(fs_name(0x1234).contains("0x1234"));
    }

    /// A --path that is not on btrfs is refused with the filesystem named.
    #[test]
    fn path_not_on_btrfs() {
        let t = tempfile::tempdir().unwrap();
        if fs_magic(t.path()) == Ok(SUPER_MAGIC) {
            panic!("this test needs a temporary directory that is not on btrfs");
        }
        let e = check_btrfs_dir(t.path()).unwrap_err();
        assert!(
            e.contains("not btrfs") && e.contains(&t.path().display().to_string()),
            "{e}"
        );
        let e = check_btrfs_dir(&t.path().join("missing")).unwrap_err();
        assert!(e.contains("cannot be used"), "{e}");
    }
}
