//! Developer tasks, run as `cargo xtask <task>` (cargo alias in
//! `.cargo/config.toml`). They need nothing beyond cargo and, for what
//! touches the machine, root on Debian bookworm.
//!
//! - `setup`: installs the Debian packages the tests and the demo use.
//! - `ci`: setup, then fmt, clippy, unit tests and the root tier
//!   (conformance on real filesystems, CLI end to end). What `.ci/run` runs.
//! - `test-root`: only the root tier (builds the plugins first).
//! - `build-plugins`: builds the policy plugins of `plugins-wasm/` for
//!   wasm32-wasip2, once, into `target/plugins-wasm`; the tests and
//!   benchmarks find them through `DRIVERS_PLUGIN_DIR`.
//! - `demo`: setup, build, then the main job on the default backend: import
//!   a Debian image made by debootstrap + umoci, create containers, show them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Debian packages the tests and the demo call: umoci and skopeo make and
/// read real OCI images, debootstrap builds a real rootfs, xfsprogs and
/// btrfs-progs make the filesystems the tests run on, attr and zstd are
/// read by fixtures. zfs-fuse is the ZFS these machines have (no kernel
/// module); libzfslinux-dev (from `contrib`, see [`enable_contrib`]) and
/// pkg-config let the zfs backend's libzfs_core path build.
const PACKAGES: &[&str] = &[
    "umoci",
    "skopeo",
    "debootstrap",
    "zstd",
    "attr",
    "xfsprogs",
    "btrfs-progs",
    "python3",
    "zfs-fuse",
    "libzfslinux-dev",
    "pkg-config",
];

/// Backends CI promises to cover: a test of one that cannot run fails.
const REQUIRED_BACKENDS: &str = "vfs,overlay2,btrfs,zfs";

/// Cargo features CI builds, lints and tests with: the zfs backend's
/// libzfs_core path (compiled and unit-tested; on these machines, without
/// /dev/zfs, the backend itself runs through the zfs commands).
const CI_FEATURES: &str = "drivers-zfs/lzc";

/// The apt sources file of Debian's own archive on these machines (deb822).
const DEBIAN_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

/// Where xtask records the pid of a zfs-fuse daemon it started for the
/// tests, to stop exactly that one afterwards.
const ZFS_FUSE_PIDFILE: &str = "/run/xtask-zfs-fuse.pid";

/// The target policy plugins are built for (`rustup target add`ed by
/// [`setup`]).
const WASM_TARGET: &str = "wasm32-wasip2";

/// Where the guest side (SDK, plugins) builds: inside the one target
/// directory, apart from the host's profiles, so `cargo test` of the host
/// never waits on its lock and the SDK template test can reuse its deps.
const PLUGINS_TARGET_DIR: &str = "target/plugins-wasm";

/// wasmtime features the host must not get through cargo's feature
/// unification (wasmtime's defaults): they add build time, threads and
/// per-call cost (`component-model-async` doubles small calls), or capture
/// host backtraces on every plugin error.
const UNWANTED_WASMTIME_FEATURES: &[&str] = &[
    "default",
    "async",
    "component-model-async",
    "backtrace",
    "cache",
    "wat",
    "profiling",
    "coredump",
    "debug",
    "debug-builtins",
    "addr2line",
    "threads",
    "gc",
    "stack-switching",
];

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match task.as_str() {
        "setup" => setup(),
        "ci" => {
            setup()?;
            ci()
        }
        "test-root" => test_root(),
        "build-plugins" => build_plugins().map(drop),
        "demo" => {
            setup()?;
            demo(&root)
        }
        _ => bail!("usage: cargo xtask <setup|ci|test-root|build-plugins|demo>"),
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask lives in the workspace")?
        .to_owned())
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Installs what is missing; quiet and quick when everything is there.
fn setup() -> Result<()> {
    if !is_root() {
        bail!("run as root: the tests mount filesystems and install Debian packages");
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        enable_contrib()?;
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // Overlay is built into these kernels; load it where it is a module.
    let _ = Command::new("modprobe").arg("overlay").status();
    add_wasm_target()
}

/// Adds `contrib` to the components of Debian's archive in
/// [`DEBIAN_SOURCES`] (libzfslinux-dev lives there, for licence reasons);
/// a no-op when it is there already or the file is not deb822.
fn enable_contrib() -> Result<()> {
    let Ok(text) = std::fs::read_to_string(DEBIAN_SOURCES) else {
        return Ok(());
    };
    let mut changed = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix("Components:") {
            Some(c) if !c.split_whitespace().any(|x| x == "contrib") => {
                changed = true;
                format!("{l} contrib")
            }
            _ => l.to_owned(),
        })
        .collect();
    if changed {
        eprintln!("+ adding contrib to {DEBIAN_SOURCES}");
        std::fs::write(DEBIAN_SOURCES, lines.join("\n") + "\n")?;
    }
    Ok(())
}

fn ci() -> Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    check_wasmtime_features()?;
    guest_checks()?;
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        CI_FEATURES,
        "--",
        "-D",
        "warnings",
    ]))?;
    // Unit tests of every crate (many need root: chown, mknod, mounts).
    run(Command::new("cargo").args([
        "test",
        "--workspace",
        "--exclude",
        "drivers-it",
        "--features",
        CI_FEATURES,
    ]))?;
    test_root()
}

/// The root tier: conformance on every required backend, then the CLI end
/// to end, with a real `drivers` binary.
fn test_root() -> Result<()> {
    if !is_root() {
        bail!("the root tier needs root (mounts, chown, mknod)");
    }
    run(Command::new("cargo").args(["build", "--bin", "drivers", "--features", CI_FEATURES]))?;
    let plugins = build_plugins()?;
    let started = start_zfs_fuse()?;
    let tests = run(Command::new("cargo")
        .args(["test", "-p", "drivers-it", "--features", CI_FEATURES])
        .args(["--", "--test-threads", "2"])
        .env("DRIVERS_TEST_ROOT", "1")
        .env("DRIVERS_TEST_REQUIRE", REQUIRED_BACKENDS)
        .env("DRIVERS_PLUGIN_DIR", &plugins)
        .env(
            "DRIVERS_PLUGIN_TARGET_DIR",
            Path::new(PLUGINS_TARGET_DIR).canonicalize()?,
        )
        .env(
            "DRIVERS_BIN",
            Path::new("target/debug/drivers").canonicalize()?,
        ));
    // Checked before the daemon goes: a pool left behind is a failure,
    // and stopping the daemon would hide it.
    let leftovers = check_no_leftovers();
    let stopped = stop_zfs_fuse(started);
    tests?;
    leftovers?;
    stopped
}

/// The pid of a running zfs-fuse daemon, from `/proc/*/comm`.
fn zfs_fuse_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "zfs-fuse")
        })
}

/// Starts the zfs-fuse daemon for the zfs tests unless one runs; returns
/// whether it did. Each test then makes its own file-backed pool.
fn start_zfs_fuse() -> Result<bool> {
    if zfs_fuse_pid().is_some() {
        return Ok(false);
    }
    run(Command::new("zfs-fuse").args(["--pidfile", ZFS_FUSE_PIDFILE]))?;
    for _ in 0..200 {
        let ok = Command::new("zpool")
            .arg("list")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(true);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("zfs-fuse started but does not answer `zpool list` within 10 s")
}

/// Stops the zfs-fuse daemon xtask started (never one that was running
/// before) and waits for it to exit, so CI leaves no daemon behind.
fn stop_zfs_fuse(started: bool) -> Result<()> {
    if !started {
        return Ok(());
    }
    let pid = std::fs::read_to_string(ZFS_FUSE_PIDFILE)?.trim().to_owned();
    let gone = |ticks: u32| {
        (0..ticks).any(|_| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its parent's wait.
            let exited = stat
                .rsplit_once(')')
                .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'));
            if !exited {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            exited
        })
    };
    run(Command::new("kill").arg(&pid))?;
    if !gone(600) {
        // zfs-fuse sometimes ignores SIGTERM for good once its pools are
        // gone (every thread asleep on a futex); the leftover check above
        // found no pool, so killing it loses nothing. Its kstat FUSE mount
        // is then left to us.
        eprintln!("+ zfs-fuse (pid {pid}) ignored SIGTERM for 30 s: killing it");
        run(Command::new("kill").args(["-KILL", &pid]))?;
        if !gone(200) {
            bail!("zfs-fuse (pid {pid}) did not exit, even after SIGKILL");
        }
        let _ = Command::new("umount").args(["-l", "/zfs-kstat"]).status();
    }
    let _ = std::fs::remove_file(ZFS_FUSE_PIDFILE);
    Ok(())
}

/// Fails if a test left a mount or loop device of ours behind.
fn check_no_leftovers() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let ours: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains("drivers-test") || l.contains("/drivers-it-"))
        .collect();
    if !ours.is_empty() {
        bail!("tests left mounts behind:\n{}", ours.join("\n"));
    }
    // Loop devices still bound to an image a test made (btrfs --loopback).
    let mut loops = Vec::new();
    for e in std::fs::read_dir("/sys/block")?.flatten() {
        let bound = std::fs::read_to_string(e.path().join("loop/backing_file"));
        if let Ok(file) = bound
            && (file.contains("drivers-test") || file.contains("/drivers-it-"))
        {
            loops.push(format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                file.trim()
            ));
        }
    }
    if !loops.is_empty() {
        bail!("tests left loop devices behind:\n{}", loops.join("\n"));
    }
    // zfs: no pool may outlive its test (each makes and destroys one).
    if zfs_fuse_pid().is_some() {
        let out = Command::new("zpool")
            .args(["list", "-H", "-o", "name"])
            .output()
            .context("zpool list")?;
        let pools = String::from_utf8_lossy(&out.stdout);
        let ours: Vec<&str> = pools
            .lines()
            .filter(|p| p.starts_with("drivers-"))
            .collect();
        if !ours.is_empty() {
            bail!("tests left zfs pools behind: {}", ours.join(", "));
        }
    }
    Ok(())
}

fn demo(root: &Path) -> Result<()> {
    run(Command::new("cargo").args(["build", "--release", "--bin", "drivers"]))?;
    let drivers = root.join("target/release/drivers");
    let image = root.join("tools/make-debian-image.sh");
    let out = Command::new(&image)
        .output()
        .context("tools/make-debian-image.sh")?;
    if !out.status.success() {
        bail!(
            "building the Debian image failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let layout = String::from_utf8(out.stdout)?.trim().to_owned();
    let d = |args: &[&str]| run(Command::new(&drivers).args(args));
    d(&["check"])?;
    d(&["select", "overlay2"])?;
    // Start from a clean slate if the demo ran before.
    for c in ["web", "db", "batch"] {
        let _ = Command::new(&drivers)
            .args(["container", "rm", "--force", c])
            .output();
    }
    for i in ["debian:web", "debian:bookworm"] {
        let _ = Command::new(&drivers).args(["image", "rm", i]).output();
    }
    d(&["image", "import", &layout, "--name", "debian:bookworm"])?;
    d(&["image", "inspect", "debian:bookworm"])?;
    for c in ["web", "db", "batch"] {
        d(&["container", "create", c, "--image", "debian:bookworm"])?;
    }
    let mnt = Command::new(&drivers)
        .args(["container", "mount", "web"])
        .output()?;
    let path = String::from_utf8(mnt.stdout)?.trim().to_owned();
    eprintln!("+ ls {path}");
    for e in std::fs::read_dir(&path)? {
        println!("  {}", e?.file_name().to_string_lossy());
    }
    std::fs::write(
        Path::new(&path).join("etc/motd"),
        "hello from a drivers container\n",
    )?;
    d(&["container", "ls"])?;
    d(&["container", "commit", "web", "--name", "debian:web"])?;
    d(&["container", "umount", "web"])?;
    d(&["image", "ls"])?;
    d(&["layer", "ls"])?;
    d(&["status"])
}

/// `rustup target add wasm32-wasip2` unless it is there: the plugins are
/// built for it (a fresh machine has only the host target).
fn add_wasm_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup (the machine's toolchain comes from rustup)")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// Builds the first-party plugins (`plugins-wasm/`, its own workspace)
/// for wasm32-wasip2 in release, once; returns the directory holding the
/// `.wasm` components.
fn build_plugins() -> Result<PathBuf> {
    run(Command::new("cargo")
        .args(["build", "--release", "--target", WASM_TARGET, "--workspace"])
        .args(["--manifest-path", "plugins-wasm/Cargo.toml"])
        .args(["--target-dir", PLUGINS_TARGET_DIR]))?;
    let dir = Path::new(PLUGINS_TARGET_DIR)
        .join(WASM_TARGET)
        .join("release")
        .canonicalize()?;
    for p in ["gc", "dedup", "quota", "hostile", "escape"] {
        let wasm = dir.join(format!("policy_{p}.wasm"));
        if !wasm.is_file() {
            bail!("{} was not built", wasm.display());
        }
    }
    Ok(dir)
}

/// The guest side, outside the host's workspace: formatting, lints and
/// the native unit tests of the SDK, the first-party plugins and the SDK
/// template (a policy's logic runs natively against the SDK's fake store).
fn guest_checks() -> Result<()> {
    for manifest in [
        "sdk/Cargo.toml",
        "plugins-wasm/Cargo.toml",
        "sdk/template/Cargo.toml",
    ] {
        run(Command::new("cargo").args(["fmt", "--all", "--check", "--manifest-path", manifest]))?;
        run(Command::new("cargo")
            .args(["clippy", "--all-targets", "--manifest-path", manifest])
            .args(["--target-dir", PLUGINS_TARGET_DIR, "--", "-D", "warnings"]))?;
        run(Command::new("cargo")
            .args(["test", "--manifest-path", manifest])
            .args(["--target-dir", PLUGINS_TARGET_DIR]))?;
    }
    Ok(())
}

/// Fails if the host's wasmtime got features it must not have (STYLE.md
/// 2.7; wasmtime's defaults come back silently through another crate's
/// dependency).
fn check_wasmtime_features() -> Result<()> {
    let out = Command::new("cargo")
        .args(["tree", "--workspace", "-e", "features", "-i", "wasmtime"])
        .args(["--prefix", "none", "--features", CI_FEATURES])
        .output()
        .context("cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let bad: Vec<&str> = UNWANTED_WASMTIME_FEATURES
        .iter()
        .copied()
        .filter(|f| text.contains(&format!("wasmtime feature \"{f}\"")))
        .collect();
    if !bad.is_empty() {
        bail!(
            "wasmtime is built with {} (see `cargo tree -e features -i wasmtime`); \
             a dependency re-enabled them",
            bad.join(", ")
        );
    }
    Ok(())
}
