//! Whether zfs can work here, and if not precisely why. Cheap and free of
//! side effects: no process is started (it runs before every command).

use std::path::Path;

use drivers_api::{Availability, HostEnv};

use crate::{Config, daemon, ops};

/// What to install, for hints.
pub(crate) const INSTALL_HINT: &str = "load the zfs kernel module (zfsutils-linux), or install zfs-fuse (Debian: `apt-get install zfs-fuse`)";

/// Which ZFS this machine has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// The kernel module: `/dev/zfs` exists.
    Kernel,
    /// zfs-fuse: no `/dev/zfs`; the daemon serves the commands.
    Fuse,
}

impl Flavour {
    pub(crate) fn detect() -> Flavour {
        if Path::new("/dev/zfs").exists() {
            Flavour::Kernel
        } else {
            Flavour::Fuse
        }
    }
}

/// What [`probe`] looks at, gathered from the machine; split out so the
/// decision is unit-tested without one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    pub root: bool,
    pub dev_zfs: bool,
    pub dev_fuse: bool,
    pub zfs_fuse_installed: bool,
    pub daemon_running: bool,
    pub daemon_xattrs: bool,
    pub zfs_cmd: bool,
    pub zpool_cmd: bool,
}

impl Facts {
    fn gather() -> Facts {
        Facts {
            root: rustix::process::geteuid().is_root(),
            dev_zfs: Flavour::detect() == Flavour::Kernel,
            dev_fuse: Path::new("/dev/fuse").exists(),
            zfs_fuse_installed: ops::tool("zfs-fuse").is_some(),
            daemon_running: daemon::running_pid().is_some(),
            daemon_xattrs: daemon::running_pid().is_some_and(daemon::xattrs_enabled),
            zfs_cmd: ops::tool("zfs").is_some(),
            zpool_cmd: ops::tool("zpool").is_some(),
        }
    }
}

/// The decision from the machine's facts and the recorded settings.
pub(crate) fn decide(f: &Facts, config: Option<&Config>) -> Availability {
    let no = |reason: String, hint: &str| Availability::Unusable {
        reason,
        hint: Some(hint.to_owned()),
    };
    if !f.root {
        return no(
            "zfs must run as root (euid 0): it creates datasets and mounts them".into(),
            "run drivers as root",
        );
    }
    if !f.dev_zfs && !f.zfs_fuse_installed && !f.daemon_running {
        return no(
            "there is no /dev/zfs (the zfs kernel module is not loaded) and zfs-fuse is not installed".into(),
            INSTALL_HINT,
        );
    }
    if !f.dev_zfs && !f.dev_fuse {
        return no(
            "there is no /dev/zfs (the zfs kernel module is not loaded), and zfs-fuse cannot run without /dev/fuse (the fuse kernel module)".into(),
            "load the fuse module (`modprobe fuse`), or the zfs kernel module",
        );
    }
    if !f.dev_zfs && f.daemon_xattrs {
        return no(
            "the zfs-fuse daemon runs with --enable-xattr (or enable-xattr in /etc/zfs/zfsrc): extended attributes written with it are missing in clones of the dataset, and the daemon hung in drivers' tests".into(),
            "restart zfs-fuse without --enable-xattr; layers with xattrs are then refused, or unpacked without them with xattrs = \"drop\" in [backends.zfs]",
        );
    }
    let missing: Vec<&str> = [("zfs", f.zfs_cmd), ("zpool", f.zpool_cmd)]
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        let via = if f.dev_zfs {
            "the zfs kernel module"
        } else {
            "zfs-fuse"
        };
        return no(
            format!(
                "ZFS is here through {via}, but the `{}` {} missing",
                missing.join("` and `"),
                if missing.len() == 1 {
                    "command is"
                } else {
                    "commands are"
                }
            ),
            INSTALL_HINT,
        );
    }
    if let Some(c) = config {
        if let Some(file) = &c.pool_file
            && !file.exists()
        {
            return no(
                format!(
                    "the file {} backing loopback pool {} is gone",
                    file.display(),
                    c.pool()
                ),
                "select zfs again with --loopback SIZE (the layers of that pool are lost)",
            );
        }
        if !f.dev_zfs && !f.daemon_running && !f.zfs_fuse_installed {
            return no(
                "the zfs-fuse daemon is not running and cannot be started".into(),
                INSTALL_HINT,
            );
        }
    }
    Availability::Usable
}

/// `Backend::probe` of zfs.
pub(crate) fn probe(_env: &HostEnv, table: &toml::Table) -> Availability {
    let config = if table.is_empty() {
        None
    } else {
        match drivers_api::parse_config::<Config>("backends.zfs", table) {
            Ok(c) => Some(c),
            Err(e) => {
                return Availability::Unusable {
                    reason: e.to_string(),
                    hint: Some("fix [backends.zfs] in the config file, or select zfs again".into()),
                };
            }
        }
    };
    decide(&Facts::gather(), config.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fuse_ok() -> Facts {
        Facts {
            root: true,
            dev_zfs: false,
            dev_fuse: true,
            zfs_fuse_installed: true,
            daemon_running: false,
            daemon_xattrs: false,
            zfs_cmd: true,
            zpool_cmd: true,
        }
    }

    fn reason(a: Availability) -> String {
        match a {
            Availability::Unusable { reason, .. } => reason,
            Availability::Usable => "usable".into(),
        }
    }

    /// Each reason `drivers check` gives names the one thing missing.
    #[test]
    fn reasons() {
        assert_eq!(decide(&fuse_ok(), None), Availability::Usable);
        let t = [
            (
                Facts {
                    root: false,
                    ..fuse_ok()
                },
                "must run as root",
            ),
            (
                Facts {
                    zfs_fuse_installed: false,
                    ..fuse_ok()
                },
                "no /dev/zfs (the zfs kernel module is not loaded) and zfs-fuse is not installed",
            ),
            (
                Facts {
                    daemon_running: true,
                    daemon_xattrs: true,
                    ..fuse_ok()
                },
                "the zfs-fuse daemon runs with --enable-xattr",
            ),
            (
                Facts {
                    dev_fuse: false,
                    ..fuse_ok()
                },
                "zfs-fuse cannot run without /dev/fuse (the fuse kernel module)",
            ),
            (
                Facts {
                    zpool_cmd: false,
                    ..fuse_ok()
                },
                "through zfs-fuse, but the `zpool` command is missing",
            ),
            (
                Facts {
                    dev_zfs: true,
                    zfs_fuse_installed: false,
                    zfs_cmd: false,
                    zpool_cmd: false,
                    ..fuse_ok()
                },
                "through the zfs kernel module, but the `zfs` and `zpool` commands are missing",
            ),
        ];
        for (facts, want) in t {
            let got = reason(decide(&facts, None));
            assert!(got.contains(want), "{facts:?}: {got}");
        }
        // A daemon that runs without the package (built by hand) is enough.
        let hand = Facts {
            zfs_fuse_installed: false,
            daemon_running: true,
            ..fuse_ok()
        };
        assert_eq!(decide(&hand, None), Availability::Usable);
    }

    /// A selected loopback pool whose file is gone is reported as such.
    #[test]
    fn lost_pool_file() {
        let c = Config {
            dataset: "drivers-1/layers".into(),
            pool_file: Some("/nonexistent/pool.img".into()),
            created: true,
            xattrs: Default::default(),
        };
        let got = reason(decide(&fuse_ok(), Some(&c)));
        assert!(
            got.contains("/nonexistent/pool.img") && got.contains("drivers-1"),
            "{got}"
        );
    }
}
