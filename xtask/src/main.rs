//! Developer tasks, run as `cargo xtask <task>` (cargo alias in
//! `.cargo/config.toml`). They need nothing beyond cargo and, for what
//! touches the machine, root on Debian bookworm.
//!
//! - `setup`: installs the Debian packages the tests and the demo use.
//! - `ci`: setup, then fmt, clippy, unit tests and the root tier
//!   (conformance on real filesystems, CLI end to end). What `.ci/run` runs.
//! - `test-root`: only the root tier.
//! - `demo`: setup, build, then the main job on the default backend: import
//!   a Debian image made by debootstrap + umoci, create containers, show them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Debian packages the tests and the demo call: umoci and skopeo make and
/// read real OCI images, debootstrap builds a real rootfs, xfsprogs and
/// btrfs-progs make the filesystems the tests run on, attr and zstd are
/// read by fixtures.
const PACKAGES: &[&str] = &[
    "umoci",
    "skopeo",
    "debootstrap",
    "zstd",
    "attr",
    "xfsprogs",
    "btrfs-progs",
    "python3",
];

/// Backends CI promises to cover: a test of one that cannot run fails.
const REQUIRED_BACKENDS: &str = "vfs,overlay2";

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
        "demo" => {
            setup()?;
            demo(&root)
        }
        _ => bail!("usage: cargo xtask <setup|ci|test-root|demo>"),
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
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // Overlay is built into these kernels; load it where it is a module.
    let _ = Command::new("modprobe").arg("overlay").status();
    Ok(())
}

fn ci() -> Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Unit tests of every crate (many need root: chown, mknod, mounts).
    run(Command::new("cargo").args(["test", "--workspace", "--exclude", "drivers-it"]))?;
    test_root()
}

/// The root tier: conformance on every required backend, then the CLI end
/// to end, with a real `drivers` binary.
fn test_root() -> Result<()> {
    if !is_root() {
        bail!("the root tier needs root (mounts, chown, mknod)");
    }
    run(Command::new("cargo").args(["build", "--bin", "drivers"]))?;
    run(Command::new("cargo")
        .args(["test", "-p", "drivers-it", "--", "--test-threads", "2"])
        .env("DRIVERS_TEST_ROOT", "1")
        .env("DRIVERS_TEST_REQUIRE", REQUIRED_BACKENDS)
        .env(
            "DRIVERS_BIN",
            Path::new("target/debug/drivers").canonicalize()?,
        ))?;
    check_no_leftovers()
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
