//! Select-time setup, re-opening after a reboot, and teardown: loopback
//! pools, the layer dataset, and (with zfs-fuse) the daemon.

use std::path::{Path, PathBuf};

use drivers_api::{Error, HostEnv, IoContext, Result, SelectArgs};

use crate::probe::Flavour;
use crate::{Config, DATASETS_DIR, NAME, daemon, ops};

/// The smallest loopback pool: ZFS refuses vdevs under 64 MiB.
pub const MIN_LOOPBACK_BYTES: u64 = 64 << 20;

/// File name of a loopback pool's backing file in the state directory.
pub const POOL_FILE: &str = "pool.img";

/// Prefix of the pools `--loopback` names itself: `drivers-<8 hex>`.
const POOL_PREFIX: &str = "drivers-";

/// Checks a dataset name as `zfs` would, so a typo fails before anything
/// is created: `POOL` or `POOL/NAME…`, components of `[A-Za-z0-9_.:-]`,
/// the pool starting with a letter.
pub(crate) fn check_dataset_name(ds: &str) -> Result<()> {
    let bad = |why: &str| Error::Invalid {
        field: "zfs dataset",
        reason: format!("{ds:?} {why}"),
    };
    if ds.is_empty() || ds.len() > 200 {
        return Err(bad("must be POOL or POOL/NAME, at most 200 characters"));
    }
    for (i, comp) in ds.split('/').enumerate() {
        if comp.is_empty() {
            return Err(bad("has an empty component"));
        }
        if !comp
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        {
            return Err(bad("may only hold letters, digits and _ . : -"));
        }
        if i == 0 && !comp.as_bytes()[0].is_ascii_alphabetic() {
            return Err(bad("must start with a letter (the pool name)"));
        }
    }
    Ok(())
}

/// `Backend::setup` of zfs.
pub(crate) fn setup(env: &HostEnv, args: &SelectArgs, table: &toml::Table) -> Result<toml::Table> {
    args.only(NAME, &["loopback", "dataset"])?;
    let previous: Option<Config> = (!table.is_empty())
        .then(|| drivers_api::parse_config("backends.zfs", table))
        .transpose()?;
    if let Some(ds) = &args.dataset {
        check_dataset_name(ds)?;
    }
    let state = std::path::absolute(&env.state_dir).ctx("resolve", &env.state_dir)?;
    let xattrs = previous.as_ref().map(|c| c.xattrs).unwrap_or_default();
    let config = match (args.loopback, &args.dataset) {
        (None, None) => {
            return Err(Error::Invalid {
                field: "select option",
                reason: "zfs needs --dataset POOL/NAME (an imported pool) or --loopback SIZE (a new file-backed pool)".into(),
            });
        }
        (Some(size), ds) => loopback(&state, size, ds.as_deref(), previous.as_ref())?,
        (None, Some(ds)) => existing(&state, ds)?,
    };
    let config = Config { xattrs, ..config };
    toml::Table::try_from(&config).map_err(|e| Error::Invalid {
        field: "backends.zfs",
        reason: e.to_string(),
    })
}

/// Takes the daemon lock and starts zfs-fuse if needed (a no-op with the
/// kernel module).
fn daemon_ready() -> Result<Option<daemon::Lock>> {
    if Flavour::detect() == Flavour::Kernel {
        return Ok(None);
    }
    let lock = daemon::Lock::take()?;
    daemon::ensure_running(&lock)?;
    Ok(Some(lock))
}

/// Whether `pool` is imported.
fn imported(pool: &str) -> Result<bool> {
    let out = ops::run("zpool", &["list", "-H", "-o", "name"], "pool", pool)?;
    Ok(out.lines().any(|l| l.trim() == pool))
}

/// `--loopback SIZE [--dataset POOL[/NAME]]`: a new pool on a sparse file
/// `<state>/pool.img`, named after `--dataset` (the test fixtures name
/// theirs) or `drivers-<random>`. Selecting again reuses the pool.
fn loopback(
    state: &Path,
    size: u64,
    ds: Option<&str>,
    previous: Option<&Config>,
) -> Result<Config> {
    let file = state.join(POOL_FILE);
    if let Some(p) = previous
        && p.pool_file.as_deref() == Some(file.as_path())
        && file.exists()
        && ds.is_none_or(|d| d == p.dataset)
    {
        return Ok(p.clone());
    }
    if size < MIN_LOOPBACK_BYTES {
        return Err(Error::Invalid {
            field: "--loopback",
            reason: format!("{size} bytes is below the 64 MiB ZFS needs for a pool"),
        });
    }
    if file.exists() {
        return Err(Error::AlreadyExists {
            what: "loopback pool file",
            id: file.display().to_string(),
        });
    }
    let dataset = match ds {
        Some(d) => d.to_owned(),
        None => format!("{POOL_PREFIX}{}", random_hex8()?),
    };
    let pool = dataset.split('/').next().unwrap_or(&dataset).to_owned();
    std::fs::create_dir_all(state).ctx("create directory", state)?;
    let _lock = daemon_ready()?;
    if imported(&pool)? {
        return Err(Error::AlreadyExists {
            what: "zfs pool",
            id: pool,
        });
    }
    let f = std::fs::File::create_new(&file).ctx("create", &file)?;
    // Sparse: the pool takes only what its layers use.
    let made = f.set_len(size).ctx("size", &file).and_then(|()| {
        let mountroot = state.join(DATASETS_DIR);
        let root_mp = if dataset == pool {
            mountroot.display().to_string()
        } else {
            "none".into()
        };
        let vdev = file.display().to_string();
        ops::run(
            "zpool",
            &[
                "create",
                "-o",
                "cachefile=none",
                "-m",
                &root_mp,
                &pool,
                &vdev,
            ],
            "zfs pool",
            &pool,
        )?;
        if dataset != pool {
            let mp = format!("mountpoint={}", mountroot.display());
            ops::run(
                "zfs",
                &["create", "-p", "-o", &mp, &dataset],
                "dataset",
                &dataset,
            )?;
        }
        Ok(())
    });
    if let Err(e) = made {
        if let Err(undo) = destroy_pool(&pool, Some(&file)) {
            tracing::warn!(backend = NAME, pool, error = %undo, "could not undo a failed loopback pool");
        }
        return Err(e);
    }
    tracing::info!(backend = NAME, pool, file = %file.display(), size, "created a loopback pool");
    Ok(Config {
        dataset,
        pool_file: Some(file),
        created: true,
        xattrs: Default::default(),
    })
}

/// `--dataset POOL/NAME` on an imported pool: the dataset is created if
/// absent; an existing one gets its mountpoint set to `<state>/datasets`.
fn existing(state: &Path, ds: &str) -> Result<Config> {
    let pool = ds.split('/').next().unwrap_or(ds);
    let _lock = daemon_ready()?;
    if !imported(pool)? {
        return Err(Error::Unavailable {
            backend: NAME,
            reason: format!("zfs pool {pool} is not imported"),
            hint: Some(format!(
                "import it (`zpool import {pool}`) or create it, or use --loopback SIZE"
            )),
        });
    }
    std::fs::create_dir_all(state).ctx("create directory", state)?;
    let mountroot = state.join(DATASETS_DIR).display().to_string();
    let mp = format!("mountpoint={mountroot}");
    let created = match ops::run(
        "zfs",
        &["get", "-H", "-o", "value", "mountpoint", ds],
        "dataset",
        ds,
    ) {
        Ok(cur) => {
            if cur.trim() != mountroot {
                ops::run("zfs", &["set", &mp, ds], "dataset", ds)?;
            }
            false
        }
        Err(Error::NotFound { .. }) => {
            ops::run("zfs", &["create", "-p", "-o", &mp, ds], "dataset", ds)?;
            true
        }
        Err(e) => return Err(e),
    };
    Ok(Config {
        dataset: ds.to_owned(),
        pool_file: None,
        created,
        xattrs: Default::default(),
    })
}

/// Makes the layer dataset reachable again after a reboot or a daemon
/// restart: starts zfs-fuse if needed, imports the pool (loopback pools
/// are imported from their file; they are kept out of the system's pool
/// cache so a stale one never blocks a boot) and mounts what is not.
/// Costs no process when `<state>/datasets` is mounted.
pub(crate) fn reattach(state: &Path, c: &Config) -> Result<()> {
    let mountroot = state.join(DATASETS_DIR);
    if drivers_mount::is_mountpoint(&mountroot)? {
        return Ok(());
    }
    let _lock = daemon_ready()?;
    let pool = c.pool();
    if !imported(pool)? {
        let mut args = vec!["import"];
        let dir;
        if let Some(file) = &c.pool_file {
            dir = file
                .parent()
                .unwrap_or(Path::new("/"))
                .display()
                .to_string();
            args.extend(["-o", "cachefile=none", "-d", dir.as_str()]);
        }
        args.push(pool);
        ops::run("zpool", &args, "zfs pool", pool).map_err(|e| match e {
            Error::NotFound { .. } => Error::Unavailable {
                backend: NAME,
                reason: format!("zfs pool {pool} is not imported and cannot be found"),
                hint: Some(format!("import it by hand (`zpool import {pool}`)")),
            },
            e => e,
        })?;
        tracing::info!(backend = NAME, pool, "imported the zfs pool again");
    }
    if !drivers_mount::is_mountpoint(&mountroot)? {
        ops::run("zfs", &["mount", &c.dataset], "dataset", &c.dataset)?;
    }
    Ok(())
}

/// `Backend::teardown` of zfs: destroys a loopback pool and deletes its
/// file (then stops a zfs-fuse daemon drivers started, if no pool is left),
/// or destroys a dataset that setup created. A dataset or pool the user
/// made is left as it is.
pub(crate) fn teardown(env: &HostEnv, table: &toml::Table) -> Result<()> {
    if table.is_empty() {
        return Ok(());
    }
    let c: Config = drivers_api::parse_config("backends.zfs", table)?;
    let lock = match Flavour::detect() {
        Flavour::Kernel => None,
        Flavour::Fuse => Some(daemon::Lock::take()?),
    };
    if let Some(file) = &c.pool_file {
        destroy_pool(c.pool(), Some(file))?;
        if let Some(l) = &lock {
            daemon::stop_if_ours_and_idle(l)?;
        }
    } else if c.created {
        unmount_datasets(&c.dataset)?;
        match ops::run("zfs", &["destroy", "-r", &c.dataset], "dataset", &c.dataset) {
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mountroot = env.state_dir.join(DATASETS_DIR);
    match std::fs::remove_dir(&mountroot) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx("remove", mountroot),
    }
}

/// Destroys `pool` (unmounting its datasets first: zfs-fuse reports a
/// pool busy while its FUSE mounts are being torn down) and deletes its
/// backing `file`. A pool that is already gone is fine.
pub fn destroy_pool(pool: &str, file: Option<&Path>) -> Result<()> {
    unmount_datasets(pool)?;
    match ops::run("zpool", &["destroy", "-f", pool], "zfs pool", pool) {
        Ok(_) | Err(Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    if let Some(f) = file {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove", f),
        }
    }
    Ok(())
}

/// Imported pools whose names start with `prefix`, e.g. the test
/// fixtures' `drivers-test-`.
pub fn pools_with_prefix(prefix: &str) -> Result<Vec<String>> {
    if ops::tool("zpool").is_none() {
        return Ok(Vec::new());
    }
    let out = ops::run("zpool", &["list", "-H", "-o", "name"], "pool", "")?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// Unmounts every mount of `ds` and the datasets below it (binds of them
/// included), deepest first.
fn unmount_datasets(ds: &str) -> Result<()> {
    let info = std::fs::read("/proc/self/mountinfo").ctx("read", "/proc/self/mountinfo")?;
    let mut targets = zfs_mounts(&info, ds);
    targets.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for t in targets {
        crate::fuse::unmount(&t)?;
    }
    Ok(())
}

/// Mount points whose source is dataset `ds` or one below it, on a zfs or
/// zfs-fuse filesystem, from a mountinfo text.
pub(crate) fn zfs_mounts(mountinfo: &[u8], ds: &str) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let text = String::from_utf8_lossy(mountinfo);
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let target = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let (fstype, source) = (r.next()?, r.next()?);
            let ours = source == ds || source.strip_prefix(ds).is_some_and(|s| s.starts_with('/'));
            (ours && (fstype == "zfs" || fstype == "fuse.zfs"))
                .then(|| PathBuf::from(std::ffi::OsString::from_vec(unescape(target))))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn random_hex8() -> Result<String> {
    let mut b = [0u8; 4];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
        .ctx("read random bytes for a pool name", "/dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names zfs would refuse are refused before anything is created.
    #[test]
    fn dataset_names() {
        for ok in ["tank", "tank/drivers", "drivers-test-1a/x.y:z_"] {
            assert!(check_dataset_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/tank",
            "tank/",
            "tank//x",
            "1tank",
            "tank/a b",
            "tank/@x",
            "tank/x@snap",
        ] {
            assert!(check_dataset_name(bad).is_err(), "{bad}");
        }
    }

    /// Only zfs mounts of the dataset and its children are ours, escaped
    /// paths are decoded, and a dataset with a longer name is not a child.
    #[test]
    fn mounts_of_a_dataset() {
        let info = b"36 25 0:31 / /tmp/s/zfs/datasets rw - fuse.zfs p/l rw\n\
37 36 0:32 / /tmp/s/zfs/datasets/a rw - fuse.zfs p/l/a rw\n\
38 25 0:32 / /tmp/s/zfs/mounts/with\\040space rw - fuse.zfs p/l/a rw\n\
39 25 0:33 / /tmp/other rw - fuse.zfs p/lx rw\n\
40 25 8:1 / /tmp/s/zfs/x rw - ext4 p/l/a rw\n";
        let got = zfs_mounts(info, "p/l");
        assert_eq!(
            got,
            [
                PathBuf::from("/tmp/s/zfs/datasets"),
                PathBuf::from("/tmp/s/zfs/datasets/a"),
                PathBuf::from("/tmp/s/zfs/mounts/with space"),
            ]
        );
    }
}
