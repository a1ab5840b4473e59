//! The harness of `cli_root`: whether trials run, the `drivers` binary, one
//! fresh `--root` per test and the guard that tears it down.
//!
//! Gating (STYLE.md 2.8, modelled on containerd's `-test.root`):
//! - neither `DRIVERS_TEST_ROOT` nor `CI=true`: every trial is ignored, with
//!   one line on stderr saying how to run them;
//! - opted in (either of them) but not root: every trial fails, so a
//!   misconfigured CI job cannot pass silently;
//! - opted in as root: one trial per (backend × test), backends as
//!   `drivers check --json` reports them. `vfs`, `overlay2` and whatever
//!   `DRIVERS_TEST_REQUIRE` names must be usable: if one is not, its trials
//!   fail with the reason; other unusable backends are ignored with it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};

/// Backends every run must cover (the brief of this target, and CI's
/// `DRIVERS_TEST_REQUIRE`).
const ALWAYS_REQUIRED: &[&str] = &["vfs", "overlay2"];

/// Where worlds live: /tmp itself, not `$TMPDIR`, so `cargo xtask
/// test-root`'s leftover check and the hostile cases' view of /tmp agree.
const TMP: &str = "/tmp";

/// Prefix of every directory this target creates in /tmp; `cargo xtask
/// test-root` fails when a mount whose path holds `/drivers-it-` survives.
pub const TMP_PREFIX: &str = "drivers-it-cli-";

/// The workspace root (the parent of this package).
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("/"))
}

/// `tests/…` of the workspace.
pub fn tests_dir() -> PathBuf {
    workspace().join("tests")
}

/// The `drivers` binary: `DRIVERS_BIN`, else `<workspace>/target/debug/drivers`.
pub fn bin() -> PathBuf {
    match std::env::var_os("DRIVERS_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace().join("target/debug/drivers"),
    }
}

/// What happens to every trial of this run.
#[derive(Clone, Debug)]
pub enum Gate {
    /// Run the trials.
    Run,
    /// Report them ignored, for this reason.
    Ignore(String),
    /// Fail them, for this reason.
    Fail(String),
}

fn truthy(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The run-wide decision, from the environment.
pub fn gate() -> Gate {
    let opted_in = truthy("DRIVERS_TEST_ROOT");
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if !opted_in && !ci {
        return Gate::Ignore(
            "needs root and real filesystems: set DRIVERS_TEST_ROOT=1 and run as root \
             (`cargo xtask test-root`)"
                .into(),
        );
    }
    if !rustix::process::geteuid().is_root() {
        let why = if ci {
            "CI=true"
        } else {
            "DRIVERS_TEST_ROOT is set"
        };
        return Gate::Fail(format!(
            "{why} but the tests are not running as root: they mount filesystems, chown and mknod"
        ));
    }
    let b = bin();
    if !b.is_file() {
        return Gate::Fail(format!(
            "the drivers binary {} does not exist: run `cargo build --bin drivers` first or set DRIVERS_BIN",
            b.display()
        ));
    }
    Gate::Run
}

/// One backend and what its trials do.
#[derive(Clone, Debug)]
pub struct BackendPlan {
    /// Its name, as `--root`'s subdirectory and `drivers select` know it.
    pub name: String,
    /// Run, ignore or fail its trials.
    pub gate: Gate,
}

/// The backends to run trials for, and how.
pub fn backends(gate: &Gate) -> Vec<BackendPlan> {
    let static_names = || -> Vec<String> {
        drivers_host::backends::BACKENDS
            .iter()
            .map(|b| b.name.to_owned())
            .collect()
    };
    match gate {
        Gate::Ignore(_) | Gate::Fail(_) => static_names()
            .into_iter()
            .map(|name| BackendPlan {
                name,
                gate: gate.clone(),
            })
            .collect(),
        Gate::Run => match check_json() {
            Ok(rows) => plan_from_check(&rows),
            Err(e) => {
                let why = format!("`drivers check --json` failed: {e:#}");
                static_names()
                    .into_iter()
                    .map(|name| BackendPlan {
                        name,
                        gate: Gate::Fail(why.clone()),
                    })
                    .collect()
            }
        },
    }
}

/// `(name, usable, reason)` of every backend `drivers check --json` lists.
fn check_json() -> Result<Vec<(String, bool, Option<String>)>> {
    let tmp = Path::new(TMP).join(format!("{TMP_PREFIX}check-{}", random_hex(4)));
    let out = Command::new(bin())
        .args([OsStr::new("--root"), tmp.as_os_str()])
        .args(["--json", "check"])
        .env_remove("DRIVERS_CONFIG")
        .stdin(Stdio::null())
        .output()
        .context("run drivers check")?;
    let _ = std::fs::remove_dir_all(&tmp);
    ensure!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parse its output")?;
    let rows = v.as_array().context("not a list")?;
    rows.iter()
        .map(|r| {
            Ok((
                r["name"]
                    .as_str()
                    .context("entry without a name")?
                    .to_owned(),
                r["usable"].as_bool().context("entry without usable")?,
                r["reason"].as_str().map(str::to_owned),
            ))
        })
        .collect()
}

fn plan_from_check(rows: &[(String, bool, Option<String>)]) -> Vec<BackendPlan> {
    let mut required: Vec<String> = ALWAYS_REQUIRED.iter().map(|s| s.to_string()).collect();
    for r in std::env::var("DRIVERS_TEST_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if !required.iter().any(|x| x == r) {
            required.push(r.to_owned());
        }
    }
    let mut out: Vec<BackendPlan> = rows
        .iter()
        .map(|(name, usable, reason)| {
            let must = required.iter().any(|r| r == name);
            let why = reason.clone().unwrap_or_else(|| "no reason given".into());
            let gate = match (usable, must) {
                (true, _) => Gate::Run,
                (false, true) => Gate::Fail(format!(
                    "{name} must be covered but is unusable here: {why}"
                )),
                (false, false) => Gate::Ignore(format!("unusable here: {why}")),
            };
            BackendPlan {
                name: name.clone(),
                gate,
            }
        })
        .collect();
    for r in &required {
        if !rows.iter().any(|(n, _, _)| n == r) {
            out.push(BackendPlan {
                name: r.clone(),
                gate: Gate::Fail(format!(
                    "{r} must be covered but `drivers check` does not list it"
                )),
            });
        }
    }
    out
}

/// A random lowercase hex string of `bytes * 2` characters.
pub fn random_hex(bytes: usize) -> String {
    hex::encode(random_bytes(bytes))
}

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(k) => filled += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("getrandom: {e}"),
        }
    }
    buf
}

/// The result of one `drivers` run.
#[derive(Debug)]
pub struct Out {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The command line, for messages.
    pub cmdline: String,
}

impl Out {
    fn describe(&self) -> String {
        format!(
            "`{}` exited {:?}\n--- stdout\n{}--- stderr\n{}",
            self.cmdline, self.code, self.stdout, self.stderr
        )
    }

    /// Exit 0, else an error showing everything.
    pub fn success(self) -> Result<Out> {
        if self.code != Some(0) {
            bail!("expected success: {}", self.describe());
        }
        Ok(self)
    }

    /// The operation-failure contract of `spec/cli.md`: exit 1, nothing on
    /// stdout, and on stderr exactly one `error: …` line, optionally
    /// followed by one `hint: …` line. Returns the error line.
    pub fn failure(self) -> Result<String> {
        if self.code != Some(1) {
            bail!("expected exit 1: {}", self.describe());
        }
        if !self.stdout.is_empty() {
            bail!("a failed command printed on stdout: {}", self.describe());
        }
        let lines: Vec<&str> = self.stderr.lines().collect();
        let shape_ok = match lines.as_slice() {
            [e] => e.starts_with("error: "),
            [e, h] => e.starts_with("error: ") && h.starts_with("hint: "),
            _ => false,
        };
        if !shape_ok || !self.stderr.ends_with('\n') {
            bail!(
                "stderr is not one `error:` line plus an optional `hint:` line: {}",
                self.describe()
            );
        }
        Ok(lines[0].to_owned())
    }

    /// A usage error: exit 2 (clap), nothing on stdout, something on stderr.
    pub fn usage_error(self) -> Result<()> {
        if self.code != Some(2) || !self.stdout.is_empty() || self.stderr.trim().is_empty() {
            bail!(
                "expected a usage error (exit 2, message on stderr only): {}",
                self.describe()
            );
        }
        Ok(())
    }
}

/// A path as a `&str` argument (every path this target makes is ASCII).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are ASCII")
}

/// One test's world: `/tmp/drivers-it-cli-<random>/` holding `root/` (the
/// `--root`) and whatever else the test makes next to it. Dropping it —
/// also when the test fails or panics — force-removes every container of
/// every backend store under the root, unmounts anything still mounted
/// below the directory, and deletes it.
pub struct World {
    /// `/tmp/drivers-it-cli-<random>`.
    pub base: PathBuf,
    /// `<base>/root`, given to every command as `--root`.
    pub root: PathBuf,
    /// The backend `drivers select` made active.
    pub backend: String,
    /// The random part of `base`'s name, unique to this world.
    pub marker: String,
}

impl World {
    /// A fresh world with `backend` selected.
    pub fn new(backend: &str) -> Result<World> {
        World::with_select(backend, &select_args(backend))
    }

    /// A fresh world where `drivers ARGS…` (a `select` command line for
    /// `backend`) made `backend` active.
    pub fn with_select(backend: &str, select: &[&str]) -> Result<World> {
        let w = World::bare(backend)?;
        w.run(select)?.success()?;
        if backend == "zfs" && !drivers_zfs::stores_xattrs() {
            // The tests compare with listings that hold xattrs, which
            // zfs-fuse cannot store; `fixture_oci_tricky` pins the default
            // refusal, every other test runs with them dropped.
            w.set_zfs_xattrs("drop")?;
        }
        Ok(w)
    }

    /// A fresh world for `backend` where nothing has run yet (the test
    /// selects it itself).
    pub fn bare(backend: &str) -> Result<World> {
        let marker = random_hex(4);
        let base = Path::new(TMP).join(format!("{TMP_PREFIX}{marker}"));
        std::fs::create_dir(&base).with_context(|| format!("create {}", base.display()))?;
        Ok(World {
            root: base.join("root"),
            base,
            backend: backend.to_owned(),
            marker,
        })
    }

    /// Sets `xattrs = MODE` in `[backends.zfs]` of the world's config.
    pub fn set_zfs_xattrs(&self, mode: &str) -> Result<()> {
        let path = self.root.join("config.toml");
        let text = std::fs::read_to_string(&path)?;
        let mut cfg: toml::Table = toml::from_str(&text)?;
        let zfs = cfg
            .get_mut("backends")
            .and_then(|b| b.get_mut("zfs"))
            .and_then(toml::Value::as_table_mut)
            .context("no [backends.zfs] in the config")?;
        zfs.insert("xattrs".into(), mode.into());
        std::fs::write(&path, toml::to_string(&cfg)?)?;
        Ok(())
    }

    /// Mounts under the root that the host made or leaked: all of them,
    /// except the zfs datasets' own mounts in `<state>/datasets`, where ZFS
    /// keeps every dataset mounted (a leftover dataset shows in
    /// [`World::zfs_datasets`] instead).
    pub fn host_mounts(&self) -> Result<Vec<PathBuf>> {
        let datasets = self.root.join("zfs").join(drivers_zfs::DATASETS_DIR);
        // btrfs keeps its loopback filesystem mounted while selected.
        let btrfs = drivers_btrfs::mount_point(&drivers_host::backends::env(&self.root, "btrfs"));
        // So do overlay2 and vfs a loopback XFS, on their state dir.
        let xfs: Vec<PathBuf> = ["overlay2", "vfs"]
            .into_iter()
            .filter(|b| backend_table(&self.root, b).is_some_and(|t| t.contains_key("loopback")))
            .map(|b| self.root.join(b))
            .collect();
        Ok(mounts_under(&self.root)?
            .into_iter()
            .filter(|p| !p.starts_with(&datasets) && *p != btrfs && !xfs.contains(p))
            .collect())
    }

    /// Where the backend keeps the layers' data: one entry per layer.
    pub fn layers_dir(&self) -> PathBuf {
        match self.backend.as_str() {
            "zfs" => self.state().join(drivers_zfs::DATASETS_DIR),
            "btrfs" => {
                drivers_btrfs::mount_point(&drivers_host::backends::env(&self.root, "btrfs"))
                    .join("subvolumes")
            }
            _ => self.state().join("layers"),
        }
    }

    /// The zfs datasets and snapshots below the layer dataset this root
    /// selected (none for other backends).
    pub fn zfs_datasets(&self) -> Result<Vec<String>> {
        match backend_table(&self.root, "zfs") {
            Some(t) => Ok(drivers_zfs::datasets(&t)?),
            None => Ok(Vec::new()),
        }
    }

    /// `<root>/<backend>`: the backend's state directory.
    pub fn state(&self) -> PathBuf {
        self.root.join(&self.backend)
    }

    /// `drivers --root <root>` with an environment that cannot redirect it.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.arg("--root").arg(&self.root);
        for v in [
            "DRIVERS_ROOT",
            "DRIVERS_CONFIG",
            "DRIVERS_CALLER",
            "RUST_LOG",
        ] {
            c.env_remove(v);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs `drivers --root <root> ARGS…` to completion.
    pub fn run(&self, args: &[&str]) -> Result<Out> {
        let mut c = self.cmd();
        c.args(args);
        let out = c
            .output()
            .with_context(|| format!("start {}", bin().display()))?;
        Ok(Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            cmdline: format!("drivers --root {} {}", self.root.display(), args.join(" ")),
        })
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        Ok(self.run(args)?.success()?.stdout)
    }

    /// Runs a command with `--json` that must succeed; returns the document.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.run(&a)?.success()?;
        serde_json::from_str(&out.stdout).with_context(|| {
            format!(
                "stdout of `{}` is not one JSON document: {:?}",
                out.cmdline, out.stdout
            )
        })
    }

    /// Runs a command that must fail by the contract; returns the error line.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        self.run(args)?.failure()
    }

    /// `container mount NAME [--caller C]`: the printed path, checked to be
    /// a mount point.
    pub fn mount(&self, name: &str, caller: Option<&str>) -> Result<PathBuf> {
        let mut a = vec!["container", "mount", name];
        if let Some(c) = caller {
            a.extend(["--caller", c]);
        }
        let out = self.ok(&a)?;
        let p = PathBuf::from(out.trim_end_matches('\n'));
        ensure!(
            mount_count(&p)? == 1,
            "`container mount {name}` printed {} but exactly one mount is not there",
            p.display()
        );
        Ok(p)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for problem in teardown(&self.base, &self.root) {
            eprintln!("cli_root: cleanup of {}: {problem}", self.base.display());
        }
    }
}

/// `drivers select BACKEND …` as the worlds run it: zfs gets a sparse
/// 1 GiB loopback pool of its own, which the world's teardown destroys.
pub fn select_args(backend: &str) -> Vec<&str> {
    match backend {
        "zfs" => vec!["select", "zfs", "--loopback", "1G"],
        // A sparse loopback btrfs, quota on, with room for two concurrent
        // imports of the ~300 MiB image; the world's teardown unmounts it,
        // releases its loop device and deletes the image.
        "btrfs" => vec!["select", "btrfs", "--loopback", "2G"],
        _ => vec!["select", backend],
    }
}

/// The `[backends.NAME]` table of `<root>/config.toml`, if there is one.
pub fn backend_table(root: &Path, name: &str) -> Option<toml::Table> {
    let text = std::fs::read_to_string(root.join("config.toml")).ok()?;
    let cfg: toml::Table = toml::from_str(&text).ok()?;
    cfg.get("backends")?.get(name)?.as_table().cloned()
}

/// Force-removes containers, undoes each backend's select-time setup (a
/// zfs loopback pool is destroyed), unmounts, deletes `base`. Returns what
/// went wrong, for a message (a teardown never panics: it runs during
/// unwinding).
fn teardown(base: &Path, root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let stores: Vec<String> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("metadata.db").is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for backend in stores {
        // A config of our own, so the store of every backend the test
        // touched is emptied whatever the test left selected.
        let cfg = base.join(format!("teardown-{backend}.toml"));
        // With the backend's own settings (where its filesystem or pool is).
        let mut text = format!("version = 1\nbackend = \"{backend}\"\n");
        if let Some(t) = backend_table(root, &backend) {
            let mut backends = toml::Table::new();
            backends.insert(backend.clone(), toml::Value::Table(t));
            let mut doc = toml::Table::new();
            doc.insert("backends".into(), toml::Value::Table(backends));
            text.push_str(&toml::to_string(&doc).unwrap_or_default());
        }
        if std::fs::write(&cfg, text).is_err() {
            continue;
        }
        let drivers = |args: &[&str]| {
            Command::new(bin())
                .arg("--root")
                .arg(root)
                .arg("--config")
                .arg(&cfg)
                .args(args)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .output()
        };
        let names: Vec<String> = match drivers(&["--json", "container", "ls"]) {
            Ok(o) if o.status.success() => serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect(),
            Ok(o) => {
                problems.push(format!(
                    "container ls on {backend}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                Vec::new()
            }
            Err(e) => {
                problems.push(format!("container ls on {backend}: {e}"));
                Vec::new()
            }
        };
        for n in names {
            match drivers(&["container", "rm", "--force", &n]) {
                Ok(o) if o.status.success() => {}
                Ok(o) => problems.push(format!(
                    "container rm --force {n} on {backend}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => problems.push(format!("container rm --force {n}: {e}")),
            }
        }
    }
    for b in drivers_host::backends::BACKENDS {
        if let Some(table) = backend_table(root, b.name) {
            let env = drivers_host::backends::env(root, b.name);
            if let Err(e) = (b.teardown)(&env, &table) {
                problems.push(format!("tear down {}: {e}", b.name));
            }
        }
    }
    // Whatever is still mounted below base: deepest first, lazily if busy,
    // except a FUSE mount: detaching a zfs-fuse dataset whose files are
    // open hangs the daemon (see `drivers_zfs`); base is kept then.
    let mut left = mounts_under(base).unwrap_or_default();
    left.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for m in left {
        if let Err(e) = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::empty()) {
            if drivers_it::fixture::is_fuse(&m) {
                problems.push(format!(
                    "unmount {}: {e}; keeping {}",
                    m.display(),
                    base.display()
                ));
                return problems;
            }
            if let Err(e) = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH) {
                problems.push(format!("unmount {}: {e}", m.display()));
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(base)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        problems.push(format!("remove: {e}"));
    }
    problems
}

/// Loop devices whose backing file is below `dir`: (device, file).
pub fn loops_under(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block")?.flatten() {
        if let Ok(f) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && Path::new(f.trim()).starts_with(dir)
        {
            out.push((
                e.file_name().to_string_lossy().into_owned(),
                f.trim().to_owned(),
            ));
        }
    }
    Ok(out)
}

/// Mount points at or below `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// How many mounts are stacked exactly at `path`.
pub fn mount_count(path: &Path) -> Result<usize> {
    Ok(mounts_under(path)?.iter().filter(|p| *p == path).count())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory shared by the trials of this run, once made.
static SHARED: Shared<PathBuf> = OnceLock::new();

/// A directory shared by the trials of this run for inputs that are slow
/// to build (the big image, the 500-layer layout, skopeo's archives);
/// removed by [`remove_shared`] once every trial has finished.
pub fn shared_dir() -> Result<&'static Path> {
    SHARED
        .get_or_init(|| {
            let d = Path::new(TMP).join(format!("{TMP_PREFIX}shared-{}", random_hex(4)));
            std::fs::create_dir(&d)
                .map(|()| d.clone())
                .map_err(|e| format!("create {}: {e}", d.display()))
        })
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Deletes the shared directory, if a trial made it.
pub fn remove_shared() {
    if let Some(Ok(d)) = SHARED.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A slow input shared by the trials: built once, its error kept as text.
pub type Shared<T> = OnceLock<Result<T, String>>;

/// Runs `f` once per run and hands every caller the same result: for the
/// slow shared inputs, built by whichever trial needs them first.
pub fn once<T: Clone + Send + Sync + 'static>(
    cell: &'static Shared<T>,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    cell.get_or_init(|| f().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("building a shared input failed earlier: {e}"))
}

/// Runs an external tool that must succeed (umoci, skopeo, tar, python3…).
pub fn tool(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!("could not start {shown} (is it installed? `cargo xtask setup`)")
    })?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
