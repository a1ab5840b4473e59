//! The workloads, run through the same [`Store`] calls the CLI makes (so
//! no process start-up is measured), one fresh root per backend.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drivers_api::{Backend, SelectArgs};

use super::report::{Column, Metric, Report, Unit, median};
use super::{Plan, check_interrupt, inputs};
use crate::backends;
use crate::store::Store;

/// Size of the sparse loopback filesystem (btrfs) or pool (zfs) a backend
/// gets: room for the image, the containers and the workload-4 file.
const LOOPBACK_BYTES: u64 = 16 << 30;

/// Free space kept on the backing filesystem: container creation stops
/// (and says so) rather than filling the disk (vfs copies the image).
const KEEP_FREE: u64 = 2 << 30;

/// The name the bench gives the Debian image in each store.
const IMAGE: &str = "bench";

/// Mount-reference holder of the bench.
const CALLER: &str = "bench";

/// Metrics of one column, in the order they were first recorded.
struct Metrics {
    order: Vec<String>,
    by_id: BTreeMap<String, Metric>,
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            order: Vec::new(),
            by_id: BTreeMap::new(),
        }
    }

    fn get(&mut self, id: &str, workload: u8, label: &str, unit: Unit) -> &mut Metric {
        if !self.by_id.contains_key(id) {
            self.order.push(id.to_owned());
            self.by_id
                .insert(id.to_owned(), Metric::new(id, workload, label, unit));
        }
        self.by_id.get_mut(id).expect("inserted above")
    }

    fn push(&mut self, id: &str, workload: u8, label: &str, unit: Unit, v: f64) {
        self.get(id, workload, label, unit).samples.push(v);
    }

    /// Records `e` on metric `id` (keeping the first error).
    fn fail(&mut self, id: &str, workload: u8, label: &str, unit: Unit, e: &anyhow::Error) {
        let m = self.get(id, workload, label, unit);
        if m.error.is_none() {
            m.error = Some(format!("{e:#}"));
        }
    }

    fn into_vec(mut self) -> Vec<Metric> {
        self.order
            .iter()
            .filter_map(|id| self.by_id.remove(id))
            .collect()
    }
}

// The rows of the table: (id, workload, label, unit).
const IMPORT_S: (&str, u8, &str, Unit) = ("import_s", 1, "import image", Unit::S);
const IMPORT_MBPS: (&str, u8, &str, Unit) = ("import_mbps", 1, "import throughput", Unit::MbPerS);
const CREATE_FIRST: (&str, u8, &str, Unit) =
    ("create_first_ms", 2, "create, first container", Unit::Ms);
const CREATE_STEADY: (&str, u8, &str, Unit) =
    ("create_steady_ms", 2, "create, steady state", Unit::Ms);
const MOUNT: (&str, u8, &str, Unit) = ("mount_ms", 3, "mount a container", Unit::Ms);
const UMOUNT: (&str, u8, &str, Unit) = ("umount_ms", 3, "unmount it", Unit::Ms);
const WRITE_SMALL: (&str, u8, &str, Unit) =
    ("write_small_ms", 4, "write 1,000 small files", Unit::Ms);
const COPY_UP: (&str, u8, &str, Unit) =
    ("copy_up_ms", 4, "rewrite 1 byte of 100 MiB file", Unit::Ms);
const DELETE: (&str, u8, &str, Unit) = ("delete_ms", 4, "delete 100 base files", Unit::Ms);
const COMMIT: (&str, u8, &str, Unit) = ("commit_ms", 4, "commit the files and deletes", Unit::Ms);
const REMOVE: (&str, u8, &str, Unit) = ("remove_s", 6, "remove containers and image", Unit::S);
const DISK: (&str, u8, &str, Unit) = ("disk_bytes", 6, "disk used by the containers", Unit::Bytes);

fn push(m: &mut Metrics, row: (&str, u8, &str, Unit), v: f64) {
    m.push(row.0, row.1, row.2, row.3, v);
}

fn fail(m: &mut Metrics, row: (&str, u8, &str, Unit), e: &anyhow::Error) {
    m.fail(row.0, row.1, row.2, row.3, e);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `f` and returns its result with how long it took.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed()))
}

/// Every backend in `backends`, then the floor; the report of the run.
pub fn run_all(
    scratch: &Path,
    image: &Path,
    backends: &[&'static Backend],
    plan: &Plan,
) -> Result<Report> {
    eprintln!("bench: preparing inputs in {}", scratch.display());
    let (tars, image_bytes) = inputs::uncompressed_layers(image, &scratch.join("layers"))?;
    let mut chains = Vec::new();
    for &d in &plan.depths {
        chains.push((
            d,
            inputs::chain_layout(&scratch.join(format!("chain{d}")), d)?,
        ));
    }
    let mut columns = Vec::new();
    for b in backends {
        check_interrupt()?;
        let t = Instant::now();
        columns.push(run_backend(scratch, b, image, &chains, plan));
        eprintln!(
            "bench: {} done in {:.0} s",
            b.name,
            t.elapsed().as_secs_f64()
        );
    }
    check_interrupt()?;
    columns.push(floor(scratch, &tars, image_bytes, plan));
    let machine = serde_json::json!({
        "kernel": rustix::system::uname().release().to_string_lossy(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "scratch_filesystem": crate::cli::fs_name(scratch),
    });
    Ok(Report {
        machine,
        image: image.display().to_string(),
        image_bytes,
        plan: plan.clone(),
        columns,
    })
}

/// One backend in a fresh root under `scratch`, set up as `drivers
/// select` would (btrfs and zfs: a loopback filesystem or pool), torn down
/// after.
fn run_backend(
    scratch: &Path,
    b: &'static Backend,
    image: &Path,
    chains: &[(usize, PathBuf)],
    plan: &Plan,
) -> Column {
    let root = scratch.join(format!("root-{}", b.name));
    let env = backends::env(&root, b.name);
    let mut col = Column {
        name: b.name.to_owned(),
        filesystem: String::new(),
        metrics: Vec::new(),
        error: None,
    };
    eprintln!("bench: {}: setting up a fresh root", b.name);
    let args = match b.name {
        "btrfs" | "zfs" => SelectArgs {
            loopback: Some(LOOPBACK_BYTES),
            ..Default::default()
        },
        _ => SelectArgs::default(),
    };
    let table = match std::fs::create_dir_all(&env.state_dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok((b.setup)(&env, &args, &toml::Table::new())?))
    {
        Ok(t) => t,
        Err(e) => {
            col.error = Some(format!("set-up failed: {e:#}"));
            return col;
        }
    };
    let mut m = Metrics::new();
    let res = (|| -> Result<()> {
        let driver = (b.open)(&env, &table)?;
        let mut store = Store::open(&env.state_dir, driver)?;
        let backing = backing_dir(&env.state_dir)?;
        col.filesystem = crate::cli::fs_name(&backing);
        let mut w = Work {
            name: b.name,
            store: &mut store,
            backing: &backing,
            image,
            plan,
            m: &mut m,
        };
        w.lifecycle()?;
        w.write_commit()?;
        w.chains(chains)?;
        Ok(())
    })();
    if let Err(e) = res {
        col.error = Some(format!("{e:#}"));
    }
    col.metrics = m.into_vec();
    if let Err(e) = teardown(&root, b, &table) {
        let prev = col.error.take().map(|p| p + "; ").unwrap_or_default();
        col.error = Some(format!("{prev}cleanup: {e:#}"));
    }
    col
}

/// The directory whose filesystem holds the backend's data: a filesystem
/// mounted below the state directory (the loopback of btrfs), else the
/// state directory itself.
fn backing_dir(state: &Path) -> Result<PathBuf> {
    let mounts = state.join(crate::mounts::MOUNTS_DIR);
    Ok(drivers_mount::mounts_under(state)?
        .into_iter()
        .rev()
        .find(|p| p != state && !p.starts_with(&mounts))
        .unwrap_or_else(|| state.to_owned()))
}

/// Bytes in use and bytes free on the filesystem of `dir`, after flushing
/// it (delayed allocation would hide fresh writes).
fn fs_bytes(dir: &Path) -> Result<(u64, u64)> {
    let f = std::fs::File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    rustix::fs::syncfs(&f).with_context(|| format!("syncfs {}", dir.display()))?;
    let st = rustix::fs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let used = (st.f_blocks - st.f_bfree) * st.f_frsize;
    Ok((used, st.f_bavail * st.f_frsize))
}

/// Unmounts what the bench left mounted under `root`, undoes the
/// backend's setup, then removes the root.
fn teardown(root: &Path, b: &Backend, table: &toml::Table) -> Result<()> {
    let env = backends::env(root, b.name);
    let mounts = env.state_dir.join(crate::mounts::MOUNTS_DIR);
    for p in drivers_mount::mounts_under(&mounts)? {
        drivers_mount::unmount(&p)?;
    }
    let undone = (b.teardown)(&env, table);
    // Anything the backend did not take off (it should have).
    for p in drivers_mount::mounts_under(root)? {
        drivers_mount::unmount(&p)?;
    }
    undone?;
    drivers_fs::remove_tree(root).with_context(|| format!("remove {}", root.display()))
}

/// Removes the scratch directory, unmounting anything left below it.
pub fn remove_scratch(scratch: &Path) -> Result<()> {
    for p in drivers_mount::mounts_under(scratch)? {
        drivers_mount::unmount(&p)?;
    }
    drivers_fs::remove_tree(scratch).with_context(|| format!("remove {}", scratch.display()))
}

/// One backend's store and what it measured.
struct Work<'a> {
    name: &'static str,
    store: &'a mut Store,
    backing: &'a Path,
    image: &'a Path,
    plan: &'a Plan,
    m: &'a mut Metrics,
}

impl Work<'_> {
    fn say(&self, what: std::fmt::Arguments<'_>) {
        eprintln!("bench: {}: {what}", self.name);
    }

    fn import(&mut self, name: &str) -> Result<u64> {
        let done = self
            .store
            .import_image(self.image, Some(name), None, &|_| {})?;
        Ok(done.iter().map(|i| i.unpacked_bytes).sum())
    }

    /// Removes every container and image of the store.
    fn clear(&mut self) -> Result<()> {
        for c in self.store.containers(false)? {
            self.store.remove_container(&c.name, true)?;
        }
        for i in self.store.images()? {
            self.store.remove_image(&i.name, false)?;
        }
        Ok(())
    }

    /// Workloads 1, 2, 3 and 6, repeated: import, create containers
    /// (measuring their disk use), mount cycles on one, remove it all.
    fn lifecycle(&mut self) -> Result<()> {
        for rep in 1..=self.plan.reps {
            check_interrupt()?;
            let (bytes, took) = match timed(|| self.import(IMAGE)) {
                Ok(v) => v,
                Err(e) => {
                    fail(self.m, IMPORT_S, &e);
                    return self.clear();
                }
            };
            push(self.m, IMPORT_S, took.as_secs_f64());
            push(self.m, IMPORT_MBPS, bytes as f64 / 1e6 / took.as_secs_f64());
            self.say(format_args!(
                "run {rep}/{}: import {:.2} s ({:.0} MB/s)",
                self.plan.reps,
                took.as_secs_f64(),
                bytes as f64 / 1e6 / took.as_secs_f64()
            ));

            let created = self.create_many(rep)?;
            if created > 0 {
                self.mount_cycles(rep)?;
            }

            check_interrupt()?;
            let (n, took) = timed(|| {
                let n = self.store.containers(false)?.len();
                self.clear()?;
                Ok(n)
            })?;
            push(self.m, REMOVE, took.as_secs_f64());
            self.say(format_args!(
                "run {rep}/{}: removed {n} containers and the image in {:.2} s",
                self.plan.reps,
                took.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// Creates the plan's containers; records first and steady-state
    /// create times and the bytes they took. Returns how many exist.
    fn create_many(&mut self, rep: usize) -> Result<usize> {
        let (used_before, _) = fs_bytes(self.backing)?;
        let mut steady = Vec::new();
        let mut made = 0;
        for i in 0..self.plan.containers {
            check_interrupt()?;
            let free = free_bytes(self.backing)?;
            if free < KEEP_FREE {
                let e = anyhow::anyhow!(
                    "stopped after {i} containers: {} MiB left free on {}",
                    free >> 20,
                    self.backing.display()
                );
                fail(self.m, CREATE_STEADY, &e);
                break;
            }
            let name = format!("c{i:03}");
            match timed(|| Ok(self.store.create_container(&name, IMAGE, None)?)) {
                Ok((_, took)) if i == 0 => push(self.m, CREATE_FIRST, ms(took)),
                Ok((_, took)) => steady.push(ms(took)),
                Err(e) => {
                    fail(
                        self.m,
                        if i == 0 { CREATE_FIRST } else { CREATE_STEADY },
                        &e,
                    );
                    break;
                }
            }
            made += 1;
        }
        if let Some(v) = median(&steady) {
            push(self.m, CREATE_STEADY, v);
        }
        let (used_after, _) = fs_bytes(self.backing)?;
        if made == self.plan.containers {
            push(self.m, DISK, used_after.saturating_sub(used_before) as f64);
        }
        let first = self
            .m
            .get(
                CREATE_FIRST.0,
                CREATE_FIRST.1,
                CREATE_FIRST.2,
                CREATE_FIRST.3,
            )
            .samples
            .last()
            .copied()
            .unwrap_or(f64::NAN);
        self.say(format_args!(
            "run {rep}/{}: created {made} containers (first {first:.1} ms, steady {:.1} ms), {} MiB on disk",
            self.plan.reps,
            median(&steady).unwrap_or(f64::NAN),
            used_after.saturating_sub(used_before) >> 20
        ));
        Ok(made)
    }

    /// Workload 3 on the first container.
    fn mount_cycles(&mut self, rep: usize) -> Result<()> {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for _ in 0..self.plan.mount_cycles {
            check_interrupt()?;
            match timed(|| Ok(self.store.mount_container("c000", CALLER)?)) {
                Ok((_, t)) => up.push(ms(t)),
                Err(e) => {
                    fail(self.m, MOUNT, &e);
                    break;
                }
            }
            match timed(|| Ok(self.store.unmount_container("c000", CALLER, false)?)) {
                Ok((_, t)) => down.push(ms(t)),
                Err(e) => {
                    fail(self.m, UMOUNT, &e);
                    break;
                }
            }
        }
        for v in &up {
            push(self.m, MOUNT, *v);
        }
        for v in &down {
            push(self.m, UMOUNT, *v);
        }
        self.say(format_args!(
            "run {rep}/{}: mount {:.2} ms, unmount {:.2} ms (medians of {})",
            self.plan.reps,
            median(&up).unwrap_or(f64::NAN),
            median(&down).unwrap_or(f64::NAN),
            up.len()
        ));
        Ok(())
    }

    /// Workload 4: on an image with a big file, a container's small
    /// writes, one copy-up, deletions, then its commit.
    fn write_commit(&mut self) -> Result<()> {
        check_interrupt()?;
        let res = self.write_commit_runs();
        if let Err(e) = &res {
            fail(self.m, COMMIT, e);
        }
        self.clear()
    }

    fn write_commit_runs(&mut self) -> Result<()> {
        self.import(IMAGE)?;
        // The 100 MiB file lives in a committed layer below the container.
        self.store.create_container("prep", IMAGE, None)?;
        let at = self.store.mount_container("prep", CALLER)?;
        write_big(&at.join("bench-big"), self.plan.big_file_bytes)?;
        self.store.unmount_container("prep", CALLER, false)?;
        self.store.commit_container("prep", "bench-big")?;
        self.store.remove_container("prep", false)?;

        for rep in 1..=self.plan.reps {
            check_interrupt()?;
            // Small writes and deletes, then their commit: what the
            // peers' "commit 1,000 files + 100 deletes" measures.
            self.store.create_container("w", "bench-big", None)?;
            let at = self.store.mount_container("w", CALLER)?;
            let victims = base_files(&at.join("usr/share"), self.plan.deletes)?;
            let (_, t_small) =
                timed(|| write_small(&at.join("bench-small"), self.plan.small_files))?;
            let (_, t_del) = timed(|| {
                for v in &victims {
                    std::fs::remove_file(v).with_context(|| format!("delete {}", v.display()))?;
                }
                Ok(())
            })?;
            self.store.unmount_container("w", CALLER, false)?;
            let (_, t_commit) =
                timed(|| Ok(self.store.commit_container("w", "bench-committed")?))?;
            self.store.remove_container("w", false)?;
            self.store.remove_image("bench-committed", false)?;
            // The copy-up alone, in a container of its own, so the commit
            // above is not dominated by 100 MiB of copied data.
            self.store.create_container("cu", "bench-big", None)?;
            let at = self.store.mount_container("cu", CALLER)?;
            let (_, t_copy) =
                timed(|| rewrite_one_byte(&at.join("bench-big"), self.plan.big_file_bytes / 2))?;
            self.store.unmount_container("cu", CALLER, false)?;
            self.store.remove_container("cu", false)?;

            push(self.m, WRITE_SMALL, ms(t_small));
            push(self.m, COPY_UP, ms(t_copy));
            push(self.m, DELETE, ms(t_del));
            push(self.m, COMMIT, ms(t_commit));
            self.say(format_args!(
                "run {rep}/{}: {} files {:.1} ms, {} deletes {:.1} ms, commit {:.1} ms, copy-up {:.1} ms",
                self.plan.reps,
                self.plan.small_files,
                ms(t_small),
                victims.len(),
                ms(t_del),
                ms(t_commit),
                ms(t_copy)
            ));
        }
        Ok(())
    }

    /// Workload 5: for each depth, the first read of a bottom-layer file
    /// after a fresh mount of a container on the chain.
    fn chains(&mut self, chains: &[(usize, PathBuf)]) -> Result<()> {
        for (depth, layout) in chains {
            check_interrupt()?;
            let id = format!("read_us_d{depth}");
            let label = format!("first read, chain of {depth}");
            let res = (|| -> Result<Vec<f64>> {
                let name = format!("chain{depth}");
                let (_, t_import) = timed(|| {
                    Ok(self
                        .store
                        .import_image(layout, Some(&name), None, &|_| {})?)
                })?;
                self.store.create_container("reader", &name, None)?;
                let mut samples = Vec::new();
                for _ in 0..self.plan.reps {
                    check_interrupt()?;
                    let at = self.store.mount_container("reader", CALLER)?;
                    let (data, t) = timed(|| {
                        let p = at.join(inputs::CHAIN_FILE);
                        std::fs::read(&p).with_context(|| format!("read {}", p.display()))
                    })?;
                    if data.len() != 4096 {
                        bail!("read {} bytes of the bottom file, not 4096", data.len());
                    }
                    samples.push(t.as_secs_f64() * 1e6);
                    self.store.unmount_container("reader", CALLER, false)?;
                }
                self.say(format_args!(
                    "chain of {depth}: imported in {:.2} s, first read {:.0} µs",
                    t_import.as_secs_f64(),
                    median(&samples).unwrap_or(f64::NAN)
                ));
                Ok(samples)
            })();
            match res {
                Ok(s) => {
                    for v in s {
                        self.m.push(&id, 5, &label, Unit::Us, v);
                    }
                }
                Err(e) => {
                    self.say(format_args!("chain of {depth}: failed: {e:#}"));
                    self.m.fail(&id, 5, &label, Unit::Us, &e);
                }
            }
            self.clear()?;
        }
        Ok(())
    }
}

/// Free bytes on the filesystem of `dir`, without flushing it.
fn free_bytes(dir: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    Ok(st.f_bavail * st.f_frsize)
}

/// Writes `len` bytes of a non-repeating pattern (no filesystem can
/// compress or dedupe it away) to `path`.
fn write_big(path: &Path, len: u64) -> Result<()> {
    use std::io::Write;
    let f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for b in chunk.chunks_mut(8) {
            // xorshift64: cheap, incompressible enough for any filesystem.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    w.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .with_context(|| format!("write {}", path.display()))
}

/// `n` files of 1 KiB in directory `dir` (created).
fn write_small(dir: &Path, n: usize) -> Result<()> {
    std::fs::create_dir(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let data = [b's'; 1024];
    for i in 0..n {
        let p = dir.join(format!("f{i:04}"));
        std::fs::write(&p, data).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

/// Opens `path` for writing (the copy-up on layered backends) and
/// overwrites the byte at `offset`.
fn rewrite_one_byte(path: &Path, offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("open {} for writing", path.display()))?;
    f.write_all_at(b"!", offset)
        .with_context(|| format!("write {}", path.display()))
}

/// The first `n` regular files below `dir`, in name order: files of the
/// base image for workload 4 to delete.
fn base_files(dir: &Path, n: usize) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .with_context(|| format!("list {}", d.display()))?
            .collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        for e in entries {
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
                if out.len() == n {
                    return Ok(out);
                }
            }
        }
    }
    bail!(
        "the image has only {} regular files under {}, {n} are needed",
        out.len(),
        dir.display()
    )
}

/// Workload 7: GNU `tar -x` of the same uncompressed layers, `mkdir` and
/// a bind mount, on the scratch filesystem.
fn floor(scratch: &Path, tars: &[PathBuf], image_bytes: u64, plan: &Plan) -> Column {
    let dir = scratch.join("floor");
    let mut m = Metrics::new();
    let res = (|| -> Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tree = dir.join("tree");
        for rep in 1..=plan.reps {
            check_interrupt()?;
            let _ = drivers_fs::remove_tree(&tree);
            std::fs::create_dir(&tree)?;
            let (_, t) = timed(|| {
                for tar in tars {
                    let st = Command::new("tar")
                        .args([
                            "--same-owner",
                            "--numeric-owner",
                            "-p",
                            "--xattrs",
                            "--xattrs-include=*",
                            "-xf",
                        ])
                        .arg(tar)
                        .arg("-C")
                        .arg(&tree)
                        .status()
                        .context("run GNU tar")?;
                    if !st.success() {
                        bail!("tar -xf {} failed: {st}", tar.display());
                    }
                }
                Ok(())
            })?;
            push(&mut m, IMPORT_S, t.as_secs_f64());
            push(
                &mut m,
                IMPORT_MBPS,
                image_bytes as f64 / 1e6 / t.as_secs_f64(),
            );
            eprintln!(
                "bench: floor: run {rep}/{}: tar -x {:.2} s",
                plan.reps,
                t.as_secs_f64()
            );

            let mut steady = Vec::new();
            for i in 0..plan.containers {
                let (_, t) = timed(|| Ok(std::fs::create_dir(dir.join(format!("c{i:03}")))?))?;
                if i == 0 {
                    push(&mut m, CREATE_FIRST, ms(t));
                } else {
                    steady.push(ms(t));
                }
            }
            if let Some(v) = median(&steady) {
                push(&mut m, CREATE_STEADY, v);
            }
            let target = dir.join("c000");
            for _ in 0..plan.mount_cycles {
                check_interrupt()?;
                let (_, t) = timed(|| Ok(rustix::mount::mount_bind(&tree, &target)?))?;
                push(&mut m, MOUNT, ms(t));
                let (_, t) = timed(|| Ok(drivers_mount::unmount(&target)?))?;
                push(&mut m, UMOUNT, ms(t));
            }
            let (_, t) = timed(|| {
                for i in 0..plan.containers {
                    std::fs::remove_dir(dir.join(format!("c{i:03}")))?;
                }
                drivers_fs::remove_tree(&tree)?;
                Ok(())
            })?;
            push(&mut m, REMOVE, t.as_secs_f64());
        }
        Ok(())
    })();
    let mut metrics = m.into_vec();
    for x in &mut metrics {
        x.workload = 7;
    }
    let error = res.err().map(|e| format!("{e:#}"));
    let _ = remove_scratch(&dir);
    Column {
        name: "floor".into(),
        filesystem: crate::cli::fs_name(scratch),
        metrics,
        error,
    }
}
