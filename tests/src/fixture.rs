//! One backend under test, in a fresh root, with everything a case needs
//! and a teardown that leaves nothing behind.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use drivers_api::{Backend, ErrorKind, Mount, PrepareOpts};
use drivers_host::store::Store;
use drivers_host::store::snapshots::{Info, Labels};

use crate::fschange::{self, FsChange};
use crate::tree::{self, CompareOpts, Tree};

/// Prefix of every fixture root, so stale ones are recognisable:
/// `/tmp/drivers-it-<random>/`.
pub const ROOT_PREFIX: &str = "drivers-it-";

/// Directories the host creates under the state dir for any operation
/// (mount points, per-operation staging, blobs). Empty, they are not
/// something an operation left behind; anything inside them is.
const HOST_DIRS: &[&str] = &["mounts", "staging", "content", "content/sha256"];

/// The label containerd's suite puts on every Prepare/View/Commit.
pub const GC_ROOT: &str = "containerd.io/gc.root";

/// A mount that is always taken off: explicitly with [`MountGuard::unmount`]
/// (which reports errors), or on drop (also while unwinding from a panic).
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    armed: bool,
}

impl MountGuard {
    /// Performs `mounts` on `target` (which must exist).
    pub fn mount(mounts: &[Mount], target: &Path) -> Result<MountGuard> {
        drivers_mount::mount(mounts, target)
            .with_context(|| format!("mount {mounts:?} on {}", target.display()))?;
        Ok(MountGuard {
            target: target.to_owned(),
            armed: true,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts now and removes the (empty) mount point.
    pub fn unmount(mut self) -> Result<()> {
        self.armed = false;
        unmount_settled(&self.target)
            .with_context(|| format!("unmount {}", self.target.display()))?;
        let _ = std::fs::remove_dir(&self.target);
        Ok(())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(e) = unmount_settled(&self.target) {
            eprintln!(
                "drivers-it: could not unmount {}: {e}",
                self.target.display()
            );
            return;
        }
        let _ = std::fs::remove_dir(&self.target);
    }
}

/// How long [`unmount_settled`] retries a mount that is busy.
const BUSY_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// [`drivers_mount::unmount`], retried while the kernel says `EBUSY` for
/// up to [`BUSY_FOR`]. The cases run in threads of one process, and a
/// thread that spawns a program (mkfs.btrfs, btrfs, the crash children)
/// lends the child a copy of every open file descriptor until it execs —
/// under load long enough for another thread's unmount of a mount it just
/// finished with to find it busy. The product's unmount does not retry:
/// there `EBUSY` means a real user of the mount.
pub fn unmount_settled(target: &Path) -> drivers_api::Result<()> {
    let start = std::time::Instant::now();
    loop {
        match drivers_mount::unmount(target) {
            Err(e)
                if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error())
                    && start.elapsed() < BUSY_FOR =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// One backend in a fresh root `/tmp/drivers-it-<random>/`:
///
/// ```text
/// <root>/<backend>/   the backend's state dir, with the store's metadata
/// <root>/work/        mount points and flat comparison directories
/// <root>/canary/      (on demand) files outside the state dir that hostile
///                     layers aim at
/// ```
///
/// Dropping it unmounts whatever is still mounted under the root and
/// deletes the root, also when the case failed or panicked.
pub struct Fixture {
    backend: &'static Backend,
    label: String,
    root: PathBuf,
    store: RefCell<Option<Store>>,
    baseline: BTreeSet<PathBuf>,
    counter: Cell<u32>,
    /// The backend's config table, as its select-time setup returned it.
    table: toml::Table,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("label", &self.label)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// What a test fixture passes to `drivers select <backend>`: a small
/// loopback filesystem or pool for backends that need one, created by the
/// same code users run.
pub fn test_select_args(backend: &str) -> drivers_api::SelectArgs {
    // Backends that need a filesystem of their own get an arm here.
    match backend {
        // A sparse 1 GiB pool per case (containerd's zfs tests use about
        // that), named so a crashed run's pools are recognised as stale.
        "zfs" => drivers_api::SelectArgs {
            loopback: Some(ZFS_TEST_POOL_BYTES),
            dataset: Some(format!(
                "{ZFS_TEST_POOL_PREFIX}{}-{}",
                std::process::id(),
                drivers_host::store::random_hex(4)
            )),
            ..Default::default()
        },
        // A sparse loopback btrfs per case, made, mounted and (in
        // teardown) destroyed by the backend's own select-time code.
        "btrfs" => drivers_api::SelectArgs {
            loopback: Some(BTRFS_TEST_FS_BYTES),
            ..Default::default()
        },
        _ => drivers_api::SelectArgs::default(),
    }
}

/// Size of a test fixture's loopback btrfs (sparse): room for the quota
/// case's 75 MiB and the deep chains, well above mkfs.btrfs's ~110 MiB.
pub const BTRFS_TEST_FS_BYTES: u64 = 512 << 20;

/// Size of the loopback XFS of the overlay2 and vfs quota fixtures
/// (sparse): above mkfs.xfs's 300 MiB minimum.
pub const XFS_TEST_FS_BYTES: u64 = 512 << 20;

/// Whether the running kernel's XFS has quota support, from its own
/// configuration (`/proc/config.gz`), independently of the code under
/// test; `None` if the kernel does not publish it.
pub fn kernel_xfs_quota() -> Option<bool> {
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

/// Size of a test fixture's loopback zpool (sparse).
pub const ZFS_TEST_POOL_BYTES: u64 = 1 << 30;

/// Prefix of the test fixtures' zpools: `drivers-test-<pid>-<random>`.
pub const ZFS_TEST_POOL_PREFIX: &str = "drivers-test-";

/// Destroys the `drivers-test-<pid>-…` pools of test processes that are no
/// longer running (a crashed or killed run); pools of live runs, this one
/// included, are left alone.
pub fn destroy_stale_test_pools() {
    let pools = match drivers_zfs::pools_with_prefix(ZFS_TEST_POOL_PREFIX) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("drivers-it: list zfs pools: {e}");
            return;
        }
    };
    for pool in pools {
        let pid = pool[ZFS_TEST_POOL_PREFIX.len()..]
            .split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            eprintln!("drivers-it: destroying stale test pool {pool}");
            if let Err(e) = drivers_zfs::destroy_pool(&pool, None) {
                eprintln!("drivers-it: destroy stale pool {pool}: {e}");
            }
        }
    }
}

/// Runs `backend`'s select-time setup under `root` with the test args and
/// returns the config table it records.
pub fn setup_backend(
    backend: &Backend,
    root: &Path,
    args: &drivers_api::SelectArgs,
) -> Result<toml::Table> {
    let env = drivers_host::backends::env(root, backend.name);
    if backend.name == "zfs" {
        destroy_stale_test_pools();
    }
    (backend.setup)(&env, args, &toml::Table::new())
        .with_context(|| format!("set up backend {} under {}", backend.name, root.display()))
}

/// Undoes [`setup_backend`]; errors are printed, since this runs in `Drop`.
pub fn teardown_backend(backend: &Backend, root: &Path, table: &toml::Table) {
    let env = drivers_host::backends::env(root, backend.name);
    if let Err(e) = (backend.teardown)(&env, table) {
        eprintln!(
            "drivers-it: tear down {} under {}: {e}",
            backend.name,
            root.display()
        );
    }
}

/// Opens `backend` with `table` under `root`, then its store.
pub fn open_store(backend: &Backend, root: &Path, table: &toml::Table) -> Result<Store> {
    let env = drivers_host::backends::env(root, backend.name);
    let driver = (backend.open)(&env, table)
        .with_context(|| format!("open backend {} under {}", backend.name, root.display()))?;
    Store::open(&env.state_dir, driver)
        .with_context(|| format!("open the store in {}", env.state_dir.display()))
}

impl Fixture {
    /// A fresh root with `backend` and its store opened in it; `label`
    /// (`<backend>::<case>`) prefixes what the fixture prints.
    pub fn new(backend: &'static Backend, label: &str) -> Result<Fixture> {
        Fixture::with_select(backend, label, &test_select_args(backend.name))
    }

    /// Like [`Fixture::new`], with `args` for the backend's select-time
    /// setup instead of [`test_select_args`] (e.g. an XFS `--loopback` for
    /// overlay2 or vfs).
    pub fn with_select(
        backend: &'static Backend,
        label: &str,
        args: &drivers_api::SelectArgs,
    ) -> Result<Fixture> {
        let root = std::env::temp_dir().join(format!(
            "{ROOT_PREFIX}{}",
            drivers_host::store::random_hex(6)
        ));
        std::fs::create_dir(&root).with_context(|| format!("create {}", root.display()))?;
        // Everything below must not depend on the process umask.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        let mut fx = Fixture {
            backend,
            label: label.to_owned(),
            root,
            store: RefCell::new(None),
            baseline: BTreeSet::new(),
            counter: Cell::new(0),
            table: toml::Table::new(),
        };
        std::fs::create_dir(fx.work())?;
        fx.table = setup_backend(backend, &fx.root, args)?;
        let store = open_store(backend, &fx.root, &fx.table)?;
        *fx.store.get_mut() = Some(store);
        fx.baseline = fx.backend_listing()?;
        Ok(fx)
    }

    /// The backend's config table (what `drivers select` would record).
    pub fn table(&self) -> &toml::Table {
        &self.table
    }

    /// The backend under test.
    pub fn backend(&self) -> &'static Backend {
        self.backend
    }

    /// The backend's name.
    pub fn name(&self) -> &'static str {
        self.backend.name
    }

    /// `<backend>::<case>`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The fixture root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<backend>`.
    pub fn state_dir(&self) -> PathBuf {
        drivers_host::backends::env(&self.root, self.backend.name).state_dir
    }

    /// `<root>/work`.
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    /// The store. Do not hold it across another call that needs it.
    pub fn store(&self) -> RefMut<'_, Store> {
        RefMut::map(self.store.borrow_mut(), |s| {
            s.as_mut()
                .expect("the store is open outside Fixture::reopen")
        })
    }

    /// Closes the store and opens it again, as the next process would:
    /// `Store::open` recovers what interrupted operations left.
    pub fn reopen(&self) -> Result<()> {
        let old = self.store.borrow_mut().take();
        if let Some(mut s) = old {
            s.close()?;
        }
        let store = open_store(self.backend, &self.root, &self.table)?;
        *self.store.borrow_mut() = Some(store);
        Ok(())
    }

    /// Closes the store and opens it again with the backend settings
    /// `table` instead of the recorded ones (e.g. a zfs `xattrs` mode);
    /// setup's resources stay as they are and are torn down as recorded.
    pub fn reopen_with(&self, table: &toml::Table) -> Result<()> {
        let old = self.store.borrow_mut().take();
        if let Some(mut s) = old {
            s.close()?;
        }
        let store = open_store(self.backend, &self.root, table)?;
        *self.store.borrow_mut() = Some(store);
        Ok(())
    }

    /// A unique name with `prefix`.
    pub fn unique(&self, prefix: &str) -> String {
        let n = self.counter.get() + 1;
        self.counter.set(n);
        format!("{prefix}-{n}")
    }

    /// A fresh empty directory under `work/`.
    pub fn work_dir(&self, prefix: &str) -> Result<PathBuf> {
        let d = self.work().join(self.unique(prefix));
        std::fs::create_dir(&d).with_context(|| format!("create {}", d.display()))?;
        Ok(d)
    }

    /// A fresh "flat" directory shaped like a layer root (0755, 0:0), to
    /// apply the same changes as a snapshot and compare.
    pub fn flat_dir(&self) -> Result<PathBuf> {
        let d = self.work_dir("flat")?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::chown(&d, Some(0), Some(0))?;
        Ok(d)
    }

    /// `containerd.io/gc.root=<RFC 3339 now>`, the label containerd's suite
    /// passes to every Prepare/View/Commit.
    pub fn labels(&self) -> Labels {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        Labels::from([(GC_ROOT.to_owned(), now)])
    }

    /// `prepare(key, parent)` with [`Fixture::labels`].
    pub fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>> {
        let labels = self.labels();
        self.store()
            .prepare(key, parent, &labels, &PrepareOpts::default())
            .with_context(|| format!("prepare {key:?} on {parent:?}"))
    }

    /// `view(key, parent)` with [`Fixture::labels`].
    pub fn view(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>> {
        let labels = self.labels();
        self.store()
            .view(key, parent, &labels)
            .with_context(|| format!("view {key:?} of {parent:?}"))
    }

    /// `commit(name, key)` with [`Fixture::labels`].
    pub fn commit(&self, name: &str, key: &str) -> Result<()> {
        let labels = self.labels();
        self.store()
            .commit(name, key, &labels)
            .with_context(|| format!("commit {key:?} as {name:?}"))?;
        Ok(())
    }

    /// `remove(key)`.
    pub fn remove(&self, key: &str) -> Result<()> {
        self.store()
            .remove(key)
            .with_context(|| format!("remove {key:?}"))
    }

    /// `stat(key)`.
    pub fn stat(&self, key: &str) -> Result<Info> {
        self.store()
            .stat(key)
            .with_context(|| format!("stat {key:?}"))
    }

    /// Names of every snapshot, as `walk` lists them.
    pub fn snapshot_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        self.store().walk(&[], |i| {
            names.push(i.name.clone());
            Ok(())
        })?;
        Ok(names)
    }

    /// Mounts `mounts` on a fresh directory, runs `f` on it and always
    /// unmounts (an unmount error is reported when `f` succeeded).
    pub fn with_mounts<T>(
        &self,
        mounts: &[Mount],
        f: impl FnOnce(&Path) -> Result<T>,
    ) -> Result<T> {
        let target = self.work_dir("mnt")?;
        let guard = MountGuard::mount(mounts, &target)?;
        let out = f(guard.path());
        let unmounted = guard.unmount();
        let out = out?;
        unmounted?;
        Ok(out)
    }

    /// Mounts snapshot `key` (`store.mounts(key)`) and runs `f` on its root.
    pub fn with_mounted<T>(&self, key: &str, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let mounts = self
            .store()
            .mounts(key)
            .with_context(|| format!("mounts of {key:?}"))?;
        self.with_mounts(&mounts, f)
            .with_context(|| format!("with {key:?} mounted"))
    }

    /// Applies `changes` through a mount of snapshot `key`.
    pub fn apply_mounted(&self, key: &str, changes: &[FsChange]) -> Result<()> {
        self.with_mounted(key, |root| fschange::apply(root, changes))
    }

    /// Requires the mounted snapshot `key` to equal the tree at `expected`.
    pub fn expect_mounted_equal(&self, key: &str, expected: &Path, what: &str) -> Result<()> {
        let label = format!("{}: {what}", self.label);
        self.with_mounted(key, |root| {
            tree::expect_equal(&label, expected, root, CompareOpts::default())
        })
    }

    /// A committed snapshot `name` on `parent` holding `changes`, made
    /// through a mount of an active snapshot `<name>-prepare`.
    pub fn committed(&self, name: &str, parent: Option<&str>, changes: &[FsChange]) -> Result<()> {
        let key = format!("{name}-prepare");
        self.prepare(&key, parent)?;
        self.apply_mounted(&key, changes)?;
        self.commit(name, &key)
    }

    /// containerd's `checkSnapshots`: for each applier, prepare on the
    /// previous committed snapshot, apply through a mount, unmount, commit;
    /// apply the same to a flat directory; then view the committed
    /// snapshot, mount it and require it to equal the flat directory;
    /// unmount and remove the view. Returns the committed names.
    pub fn check_snapshots(&self, appliers: &[Vec<FsChange>]) -> Result<Vec<String>> {
        let flat = self.flat_dir()?;
        let mut parent: Option<String> = None;
        let mut names = Vec::new();
        for (i, changes) in appliers.iter().enumerate() {
            let n = format!("layer{}-{}", i + 1, drivers_host::store::random_hex(4));
            let step = || -> Result<()> {
                self.committed(&n, parent.as_deref(), changes)?;
                fschange::apply(&flat, changes)?;
                let view = format!("{n}-view");
                self.view(&view, Some(&n))?;
                self.expect_mounted_equal(&view, &flat, &format!("view of snapshot {}", i + 1))?;
                self.remove(&view)
            };
            step().with_context(|| format!("snapshot {} of {}", i + 1, appliers.len()))?;
            names.push(n.clone());
            parent = Some(n);
        }
        Ok(names)
    }

    /// Every path under the state dir except the store's database files,
    /// relative to it; on zfs also every dataset under the layer dataset,
    /// as `<zfs dataset NAME>` (one could exist unmounted, without a path).
    pub fn backend_listing(&self) -> Result<BTreeSet<PathBuf>> {
        let mut out: BTreeSet<PathBuf> = tree::all_paths(&self.state_dir())?
            .into_iter()
            .filter(|p| !p.to_string_lossy().starts_with("metadata.db"))
            .collect();
        if self.backend.name == "zfs" {
            for ds in drivers_zfs::datasets(&self.table)? {
                out.insert(PathBuf::from(format!("<zfs dataset {ds}>")));
            }
        }
        Ok(out)
    }

    /// Requires that nothing appeared under the state dir since `before`
    /// (a listing from [`Fixture::backend_listing`]; `None`: right after
    /// the fixture opened the store).
    pub fn expect_no_residue(&self, before: Option<&BTreeSet<PathBuf>>) -> Result<()> {
        let before = before.unwrap_or(&self.baseline);
        let now = self.backend_listing()?;
        let new: Vec<String> = now
            .difference(before)
            .filter(|p| !HOST_DIRS.iter().any(|d| p.as_path() == Path::new(d)))
            .map(|p| p.display().to_string())
            .collect();
        ensure!(
            new.is_empty(),
            "left behind under {}: {}",
            self.state_dir().display(),
            new.join(", ")
        );
        Ok(())
    }

    /// Requires that nothing is mounted under the fixture root, except
    /// the zfs datasets' own mounts in `<state>/datasets` (ZFS keeps every
    /// dataset mounted there; a dataset left over shows in
    /// [`Fixture::backend_listing`] instead).
    pub fn expect_no_mounts(&self) -> Result<()> {
        let datasets = self.state_dir().join(drivers_zfs::DATASETS_DIR);
        let m: Vec<PathBuf> = drivers_mount::mounts_under(&self.root)?
            .into_iter()
            .filter(|p| self.backend.name != "zfs" || !p.starts_with(&datasets))
            // btrfs keeps its loopback filesystem mounted while selected.
            .filter(|p| {
                self.backend.name != "btrfs"
                    || *p
                        != drivers_btrfs::mount_point(&drivers_host::backends::env(
                            &self.root, "btrfs",
                        ))
            })
            // So do overlay2 and vfs their loopback XFS, on the state dir.
            .filter(|p| !(self.table.contains_key("loopback") && *p == self.state_dir()))
            .collect();
        ensure!(
            m.is_empty(),
            "still mounted under {}: {m:?}",
            self.root.display()
        );
        Ok(())
    }

    /// Prints the fixture root to stderr (at most 400 entries), as
    /// containerd's `DumpDirOnFailure` does.
    pub fn dump(&self) {
        let paths = tree::all_paths(&self.root).unwrap_or_default();
        let mut s = format!(
            "---- {}: fixture root {} ----\n",
            self.label,
            self.root.display()
        );
        for p in paths.iter().take(400) {
            let full = self.root.join(p);
            match std::fs::symlink_metadata(&full) {
                Ok(m) => s.push_str(&format!(
                    "{:o} {}:{} {:>9} {}\n",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.len(),
                    p.display()
                )),
                Err(e) => s.push_str(&format!("? {} ({e})\n", p.display())),
            }
        }
        if paths.len() > 400 {
            s.push_str(&format!("… {} more\n", paths.len() - 400));
        }
        eprint!("{s}");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        if let Some(mut s) = self.store.get_mut().take() {
            let _ = s.close();
        }
        // Mounts of snapshots first, then what setup made (a loopback
        // filesystem mounted under the root), then the root itself.
        for m in drivers_mount::mounts_under(&self.root.join(self.backend.name).join("mounts"))
            .unwrap_or_default()
        {
            let _ = unmount_settled(&m);
        }
        teardown_backend(self.backend, &self.root, &self.table);
        remove_root(&self.root);
    }
}

/// Whether `path` is on a FUSE filesystem (zfs-fuse's datasets are).
pub fn is_fuse(path: &Path) -> bool {
    const FUSE_SUPER_MAGIC: rustix::fs::FsWord = 0x6573_5546;
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == FUSE_SUPER_MAGIC)
}

/// Unmounts everything under `root` (deepest first), then deletes it. If
/// something stays mounted the root is kept, never deleted through a mount.
/// A busy FUSE mount is kept rather than detached: detaching a zfs-fuse
/// dataset whose files are open hangs the daemon (see `drivers_zfs`).
pub fn remove_root(root: &Path) {
    for m in drivers_mount::mounts_under(root).unwrap_or_default() {
        if let Err(e) = unmount_settled(&m) {
            if is_fuse(&m) {
                eprintln!("drivers-it: unmount {}: {e}; keeping it", m.display());
                continue;
            }
            eprintln!("drivers-it: unmount {}: {e}; detaching it", m.display());
            let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
        }
    }
    match drivers_mount::mounts_under(root) {
        Ok(left) if left.is_empty() => {
            if let Err(e) = drivers_fs::remove_tree(root) {
                eprintln!("drivers-it: could not remove {}: {e}", root.display());
            }
        }
        Ok(left) => eprintln!(
            "drivers-it: keeping {} because these are still mounted: {left:?}",
            root.display()
        ),
        Err(e) => eprintln!("drivers-it: keeping {}: {e}", root.display()),
    }
}

/// Requires `r` to be an error of class `kind` and returns it.
pub fn expect_kind<T: std::fmt::Debug>(
    r: drivers_host::Result<T>,
    kind: ErrorKind,
    what: &str,
) -> Result<drivers_host::Error> {
    match r {
        Ok(v) => bail!("{what}: expected a {kind:?} error, got success ({v:?})"),
        Err(e) if e.kind() == kind => Ok(e),
        Err(e) => Err(anyhow!(
            "{what}: expected a {kind:?} error, got {:?}: {}",
            e.kind(),
            error_chain(&e)
        )),
    }
}

/// An error and its sources on one line, joined with `: `.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The mode, owner and entry names of a directory, for root checks.
pub fn dir_summary(p: &Path) -> Result<(u32, u32, u32, Vec<String>)> {
    let m = std::fs::symlink_metadata(p)?;
    let mut names: Vec<String> = std::fs::read_dir(p)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    Ok((m.mode() & 0o7777, m.uid(), m.gid(), names))
}

/// A file planted outside the state dir, which hostile layers aim at; any
/// change to it (content, links, new entries) is detected.
#[derive(Debug)]
pub struct Canary {
    /// `<root>/canary`.
    pub dir: PathBuf,
    before: Tree,
}

impl Canary {
    /// Creates `<root>/canary/` with `secret` and `sub/`.
    pub fn plant(fx: &Fixture) -> Result<Canary> {
        let dir = fx.root().join("canary");
        std::fs::create_dir(&dir)?;
        fschange::apply(
            &dir,
            &[
                FsChange::file("/secret", "canary\n", 0o644),
                FsChange::dir("/sub", 0o755),
            ],
        )?;
        let before = Tree::read(&dir)?;
        Ok(Canary { dir, before })
    }

    /// The canary dir as a path relative to `/` (no leading slash).
    pub fn rel_from_fs_root(&self) -> String {
        self.dir
            .to_string_lossy()
            .trim_start_matches('/')
            .to_owned()
    }

    /// Requires the canary to be exactly as planted, link counts included.
    pub fn check(&self, label: &str) -> Result<()> {
        let now = Tree::read(&self.dir)?;
        tree::expect_trees_equal(
            &format!("{label}: canary"),
            &self.before,
            &now,
            CompareOpts {
                nlink: true,
                skip_root: false,
            },
        )
    }
}
