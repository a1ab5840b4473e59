//! ZFS through libzfs_core (the `zfs-core` crate), where the kernel module
//! provides `/dev/zfs`: creating, cloning, snapshotting and destroying
//! layers then starts no process at all.
//!
//! libzfs_core has no calls to list datasets, read properties or change
//! them, and `nvpair` (the safe wrapper this crate can use; `unsafe` is
//! denied here) cannot encode the numeric properties `readonly` and
//! `refquota`. Those rarer operations go through the commands ([`Cli`]):
//! a view or a size-limited container costs one `zfs set`, `commit` one
//! `zfs set readonly=on` and one `zfs get`, cleanup one `zfs list`.
//! Datasets are mounted like `mount.zfs` does, with `mount(2)` of type
//! `zfs` and the `zfsutil` option (they keep a `mountpoint` property).

use std::io;

use drivers_api::{Error, Mount, Result};
use zfs_core::{DataSetType, Defer};

use crate::ops::{Child, Cli, ZfsOps};

/// Properties libzfs_core takes as strings here; the others are set
/// through `zfs set` after creation.
const STRING_PROPS: &[&str] = &["mountpoint"];

/// One dataset property, as the backend passes them.
type Prop<'a> = (&'a str, String);

/// Splits `props` into those passed at creation and those set afterwards.
pub(crate) fn split_props<'a>(props: &'a [Prop<'a>]) -> (Vec<&'a Prop<'a>>, Vec<&'a Prop<'a>>) {
    props.iter().partition(|(k, _)| STRING_PROPS.contains(k))
}

/// libzfs_core for the hot path, the commands for the rest.
pub(crate) struct Lzc {
    zfs: zfs_core::Zfs,
    cli: Cli,
}

impl std::fmt::Debug for Lzc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lzc")
    }
}

impl Lzc {
    /// Opens `/dev/zfs` (`libzfs_core_init`).
    pub(crate) fn open() -> Result<Lzc> {
        let zfs = zfs_core::Zfs::new().map_err(|e| Error::Unavailable {
            backend: crate::NAME,
            reason: format!("libzfs_core cannot open /dev/zfs: {e}"),
            hint: Some("load the zfs kernel module (`modprobe zfs`)".into()),
        })?;
        Ok(Lzc { zfs, cli: Cli })
    }

    fn nvlist(props: &[&(&str, String)]) -> Result<nvpair::NvList> {
        let mut nv = nvpair::NvList::new_unique_names();
        for (k, v) in props {
            nv.insert(*k, v.as_str()).map_err(|e| Error::Invalid {
                field: "zfs property",
                reason: format!("{k}={v}: {e}"),
            })?;
        }
        Ok(nv)
    }

    /// After creation: the numeric properties, then the mount.
    fn finish(&self, ds: &str, props: &[(&str, String)]) -> Result<()> {
        let (strings, numeric) = split_props(props);
        let r = numeric
            .iter()
            .try_for_each(|(k, v)| self.cli.set(ds, k, v))
            .and_then(|()| {
                let mp = strings
                    .iter()
                    .find(|(k, _)| *k == "mountpoint")
                    .map(|(_, v)| v.clone());
                match mp {
                    Some(mp) => mount_at(ds, std::path::Path::new(&mp)),
                    None => Ok(()),
                }
            });
        if r.is_err() {
            let _ = self.destroy(ds);
        }
        r
    }
}

fn mount_at(ds: &str, mp: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(mp).map_err(|e| Error::Io {
        op: "create mountpoint",
        path: mp.to_owned(),
        source: e,
    })?;
    let m = Mount::Fs {
        fstype: "zfs".into(),
        source: ds.to_owned(),
        options: vec!["zfsutil".into()],
    };
    drivers_mount::mount(&[m], mp)
}

/// An `lzc_*` failure as the backend's error.
fn lzc_err(e: io::Error, op: &'static str, what: &'static str, name: &str) -> Error {
    let errno = e.raw_os_error().map(rustix::io::Errno::from_raw_os_error);
    match errno {
        Some(rustix::io::Errno::NOENT) => Error::NotFound {
            what,
            id: name.to_owned(),
        },
        Some(rustix::io::Errno::EXIST) => Error::AlreadyExists {
            what,
            id: name.to_owned(),
        },
        _ => Error::Io {
            op,
            path: name.into(),
            source: e,
        },
    }
}

impl ZfsOps for Lzc {
    fn kind(&self) -> &'static str {
        "libzfs_core"
    }

    fn create(&self, ds: &str, props: &[(&str, String)]) -> Result<()> {
        let nv = Self::nvlist(&split_props(props).0)?;
        self.zfs
            .create(ds, DataSetType::Zfs, &nv)
            .map_err(|e| lzc_err(e, "create dataset", "dataset", ds))?;
        self.finish(ds, props)
    }

    fn clone_snapshot(&self, origin: &str, ds: &str, props: &[(&str, String)]) -> Result<()> {
        let mut nv = Self::nvlist(&split_props(props).0)?;
        self.zfs
            .clone_dataset(ds, origin, &mut nv)
            .map_err(|e| lzc_err(e, "clone snapshot", "dataset", ds))?;
        self.finish(ds, props)
    }

    fn snapshot(&self, snap: &str) -> Result<()> {
        self.zfs.snapshot([snap]).map_err(|e| match e {
            zfs_core::Error::Io { source } => lzc_err(source, "snapshot", "snapshot", snap),
            other => Error::Invalid {
                field: "zfs snapshot",
                reason: format!("{snap}: {other}"),
            },
        })
    }

    fn set(&self, ds: &str, prop: &str, value: &str) -> Result<()> {
        self.cli.set(ds, prop, value)
    }

    fn destroy(&self, ds: &str) -> Result<bool> {
        let snap = format!("{ds}@{}", crate::SNAPSHOT);
        if let Err((e, _)) = self.zfs.destroy_snaps([snap.as_str()], Defer::No)
            && e.raw_os_error() != Some(rustix::io::Errno::NOENT.raw_os_error())
        {
            return Err(lzc_err(e, "destroy snapshot", "snapshot", &snap));
        }
        match self.zfs.destroy(ds) {
            Ok(()) => Ok(true),
            Err(e) => match lzc_err(e, "destroy dataset", "dataset", ds) {
                Error::NotFound { .. } => Ok(false),
                e => Err(e),
            },
        }
    }

    fn children(&self, parent: &str) -> Result<Vec<Child>> {
        self.cli.children(parent)
    }

    fn used(&self, ds: &str) -> Result<(u64, Option<String>)> {
        self.cli.used(ds)
    }

    fn mount(&self, ds: &str) -> Result<()> {
        let mp = crate::ops::run(
            "zfs",
            &["get", "-H", "-o", "value", "mountpoint", ds],
            "dataset",
            ds,
        )?;
        mount_at(ds, std::path::Path::new(mp.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only string properties go to libzfs_core; numbers are set after.
    #[test]
    fn properties_split() {
        let p = [
            ("mountpoint", "/x".to_owned()),
            ("readonly", "on".to_owned()),
            ("refquota", "52428800".to_owned()),
        ];
        let (s, n) = split_props(&p);
        assert_eq!(
            s.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            ["mountpoint"]
        );
        assert_eq!(
            n.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            ["readonly", "refquota"]
        );
        // Building the nvlist links and runs libnvpair without /dev/zfs.
        let nv = Lzc::nvlist(&s).unwrap();
        assert!(nv.iter().count() == 1);
    }

    /// Without the kernel module, opening says why, naming /dev/zfs.
    #[test]
    fn open_without_dev_zfs() {
        if std::path::Path::new("/dev/zfs").exists() {
            assert!(Lzc::open().is_ok());
            return;
        }
        let e = Lzc::open().unwrap_err().to_string();
        assert!(e.contains("/dev/zfs"), "{e}");
    }

    /// errno values map to the backend's classes.
    #[test]
    fn errno_classes() {
        let e = |n: rustix::io::Errno| io::Error::from_raw_os_error(n.raw_os_error());
        assert!(matches!(
            lzc_err(e(rustix::io::Errno::NOENT), "x", "dataset", "p/a"),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            lzc_err(e(rustix::io::Errno::EXIST), "x", "dataset", "p/a"),
            Error::AlreadyExists { .. }
        ));
        assert!(matches!(
            lzc_err(e(rustix::io::Errno::BUSY), "x", "dataset", "p/a"),
            Error::Io { .. }
        ));
    }
}
