//! Whether overlay2 can work on this machine: root, overlayfs in the
//! kernel, and a state directory on a filesystem overlayfs accepts as an
//! upper layer. Cheap and side-effect free.

use drivers_api::{Availability, HostEnv};

/// Filesystems overlayfs refuses as upper layer, by `statfs` magic
/// (`include/uapi/linux/magic.h`). overlayfs itself cannot be an upper (the
/// usual case inside a container); network and FUSE filesystems revalidate
/// dentries, which overlayfs does not allow for the upper
/// ("filesystem on ... not supported as upperdir").
const UNSUPPORTED_UPPER: &[(u64, &str)] = &[
    (0x794c_7630, "overlayfs"),
    (0x6969, "nfs"),
    (0xff53_4d42, "cifs"),
    (0xfe53_4d42, "smb2"),
    (0x0102_1997, "9p"),
    (0x6573_5546, "fuse"),
    (0xf15f, "ecryptfs"),
];

pub(crate) fn probe(env: &HostEnv) -> Availability {
    let unusable = |reason: String, hint: &str| Availability::Unusable {
        reason,
        hint: Some(hint.to_owned()),
    };
    if !rustix::process::geteuid().is_root() {
        return unusable(
            "overlay2 must run as root (euid 0) to mount overlayfs".into(),
            "run drivers as root, or use vfs",
        );
    }
    if let Err(reason) = overlay_in_kernel() {
        return unusable(reason, "load it with `modprobe overlay`, or use vfs");
    }
    let Some(dir) = env
        .state_dir
        .ancestors()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
    else {
        return unusable(
            "no part of the state directory exists".into(),
            "choose another --root",
        );
    };
    match rustix::fs::statfs(dir) {
        Ok(st) => {
            if let Some(fs) = unsupported_upper(fs_magic(&st)) {
                return unusable(
                    format!(
                        "{} is on {fs}, which overlayfs cannot use as an upper layer",
                        dir.display()
                    ),
                    "choose a --root on a local filesystem such as ext4, xfs or btrfs, or use vfs",
                );
            }
        }
        Err(e) => {
            return unusable(
                format!("cannot inspect the filesystem of {}: {e}", dir.display()),
                "choose another --root",
            );
        }
    }
    Availability::Usable
}

#[allow(
    clippy::unnecessary_cast,
    reason = "f_type is a c_long on 64-bit targets but a u32 on others"
)]
fn fs_magic(st: &rustix::fs::StatFs) -> u64 {
    // Magic numbers are 32-bit; a sign-extended c_long must not leak high bits.
    st.f_type as u64 & 0xffff_ffff
}

fn unsupported_upper(magic: u64) -> Option<&'static str> {
    UNSUPPORTED_UPPER
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name)
}

/// Ok if overlayfs is registered, or available as a module that `mount`
/// loads on demand.
fn overlay_in_kernel() -> Result<(), String> {
    drivers_mount::kernel::filesystem_available("overlay", "overlay")
}

/// Whether a `/proc/filesystems` text lists overlay.
#[cfg(test)]
fn lists_overlay(proc_filesystems: &str) -> bool {
    drivers_mount::kernel::lists_filesystem(proc_filesystems, "overlay")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two pure checks behind the probe.
    #[test]
    fn detection_tables() {
        assert!(lists_overlay("nodev\tsysfs\n\text4\nnodev\toverlay\n"));
        assert!(!lists_overlay("nodev\toverlayfs\n\text4\n"));
        assert_eq!(unsupported_upper(0x794c_7630), Some("overlayfs"));
        assert_eq!(unsupported_upper(0xef53), None); // ext4
    }
}
