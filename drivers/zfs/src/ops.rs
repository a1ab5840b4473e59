//! The two ways of talking to ZFS behind one trait, [`ZfsOps`]: the `zfs`
//! and `zpool` commands ([`Cli`], the only way with zfs-fuse, whose daemon
//! is reached through its socket, never through `/dev/zfs`), and
//! libzfs_core through the `zfs-core` crate (`crate::lzc`, with the `lzc`
//! feature, where the kernel module provides `/dev/zfs`).
//!
//! Every spawned `zfs`/`zpool` process is counted ([`spawn_count`]) and
//! logged at debug level with the target `drivers_zfs::spawn`, so the cost
//! of an operation in processes is observable (`--log-level
//! drivers_zfs::spawn=debug`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drivers_api::{Error, Result};

/// `zfs`/`zpool` processes this process has started.
static SPAWNS: AtomicU64 = AtomicU64::new(0);

/// How many `zfs` and `zpool` processes this process has started so far.
pub fn spawn_count() -> u64 {
    SPAWNS.load(Ordering::Relaxed)
}

/// How long a command that failed with "busy" is retried: zfs-fuse
/// answers a destroy right after an unmount with EBUSY until its FUSE
/// session has let go (usually within 0.1 s; longer under load).
const BUSY_FOR: Duration = Duration::from_secs(15);

/// First pause before trying a busy command again; it doubles up to
/// [`BUSY_PAUSE_MAX`].
const BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Longest pause between two tries of a busy command.
const BUSY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// One child dataset of the layer dataset, as `zfs list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Child {
    /// Full dataset name, `<parent>/<id>`.
    pub name: String,
    /// The snapshot it was cloned from, if it is a clone.
    pub origin: Option<String>,
}

/// What the backend asks of ZFS. Implementations mount what they create
/// at its `mountpoint` property, as `zfs create` does.
pub(crate) trait ZfsOps: Send + Sync + std::fmt::Debug {
    /// `"zfs CLI"` or `"libzfs_core"`, for messages.
    fn kind(&self) -> &'static str;
    /// Creates filesystem `ds` with `props` and mounts it.
    fn create(&self, ds: &str, props: &[(&str, String)]) -> Result<()>;
    /// Clones snapshot `origin` as filesystem `ds` with `props` and mounts it.
    fn clone_snapshot(&self, origin: &str, ds: &str, props: &[(&str, String)]) -> Result<()>;
    /// Takes snapshot `snap` (`ds@name`); an existing one is an error of
    /// kind `AlreadyExists`.
    fn snapshot(&self, snap: &str) -> Result<()>;
    /// Sets one property.
    fn set(&self, ds: &str, prop: &str, value: &str) -> Result<()>;
    /// Destroys `ds` and its snapshots (not its clones' origins: the
    /// caller destroys clones first). Returns false if it did not exist.
    fn destroy(&self, ds: &str) -> Result<bool>;
    /// The direct children of `parent`, with their origins.
    fn children(&self, parent: &str) -> Result<Vec<Child>>;
    /// The `used` property of `ds` in bytes (what destroying it would
    /// free) and its `origin` snapshot, if it is a clone.
    fn used(&self, ds: &str) -> Result<(u64, Option<String>)>;
    /// Mounts `ds` at its mountpoint property.
    fn mount(&self, ds: &str) -> Result<()>;
}

/// The `zfs` and `zpool` programs, resolved once: `PATH`, then the sbin
/// directories, where Debian's zfs-fuse and zfsutils put them (a `PATH`
/// without them is common under sudo or cargo).
pub(crate) fn tool(name: &str) -> Option<PathBuf> {
    static FOUND: OnceLock<[Option<PathBuf>; 3]> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let find = |n: &str| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
                .map(|d| d.join(n))
                .find(|p| is_executable(p))
        };
        [find("zfs"), find("zpool"), find("zfs-fuse")]
    });
    match name {
        "zfs" => found[0].clone(),
        "zpool" => found[1].clone(),
        "zfs-fuse" => found[2].clone(),
        _ => None,
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program args…` and returns its standard output. A "busy" failure
/// is retried (see [`BUSY_FOR`]); other failures become
/// [`Error::Command`], or `NotFound`/`AlreadyExists` when the message says
/// so (`what`/`id` name the object for those).
pub(crate) fn run(program: &str, args: &[&str], what: &'static str, id: &str) -> Result<String> {
    let exe = tool(program).ok_or_else(|| Error::Unavailable {
        backend: crate::NAME,
        reason: format!("the `{program}` command is not installed"),
        hint: Some(crate::probe::INSTALL_HINT.into()),
    })?;
    let shown = format!("{program} {}", args.join(" "));
    let busy_until = std::time::Instant::now() + BUSY_FOR;
    let mut pause = BUSY_PAUSE;
    loop {
        let n = SPAWNS.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(target: "drivers_zfs::spawn", spawns = n, command = %shown, "zfs spawn");
        let out = Command::new(&exe)
            .args(args)
            .stdin(Stdio::null())
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| Error::Io {
                op: "run",
                path: exe.clone(),
                source: e,
            })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_owned();
        match classify(&stderr) {
            Failure::Busy if std::time::Instant::now() < busy_until => {
                tracing::debug!(target: "drivers_zfs::spawn", command = %shown, ?pause, "busy; trying again");
                std::thread::sleep(pause);
                pause = (pause * 2).min(BUSY_PAUSE_MAX);
                continue;
            }
            Failure::Missing => {
                return Err(Error::NotFound {
                    what,
                    id: id.to_owned(),
                });
            }
            Failure::Exists => {
                return Err(Error::AlreadyExists {
                    what,
                    id: id.to_owned(),
                });
            }
            Failure::NoDaemon => {
                return Err(Error::Unavailable {
                    backend: crate::NAME,
                    reason: "the zfs-fuse daemon is not running".into(),
                    hint: Some("start it with `zfs-fuse` (or let `drivers select zfs --loopback SIZE` start it)".into()),
                });
            }
            Failure::Quota => {
                return Err(Error::Limit {
                    what: shown,
                    reason: last,
                    hint: None,
                });
            }
            _ => {
                return Err(Error::Command {
                    program: shown,
                    status: out.status,
                    stderr: last,
                });
            }
        }
    }
}

/// How a `zfs`/`zpool` command failed, from its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    Busy,
    Missing,
    Exists,
    NoDaemon,
    Quota,
    Other,
}

/// Reads a failure message of `zfs`/`zpool` (zfs-fuse 0.7 and OpenZFS
/// phrase these alike; `LC_ALL=C` keeps them in English).
pub(crate) fn classify(stderr: &str) -> Failure {
    let s = stderr.to_ascii_lowercase();
    if s.contains("zfs-fuse daemon is not running")
        || s.contains("failed to initialize zfs library")
    {
        Failure::NoDaemon
    } else if s.contains("dataset does not exist")
        || s.contains("no such pool")
        || s.contains("could not find any snapshots")
    {
        Failure::Missing
    } else if s.contains("already exists") {
        Failure::Exists
    } else if s.contains("is busy") {
        Failure::Busy
    } else if s.contains("out of space") || s.contains("quota exceeded") {
        Failure::Quota
    } else {
        Failure::Other
    }
}

/// `prop=value` arguments as `zfs create`/`clone` take them.
fn prop_args(props: &[(&str, String)]) -> Vec<String> {
    props
        .iter()
        .flat_map(|(k, v)| ["-o".to_owned(), format!("{k}={v}")])
        .collect()
}

/// ZFS through its commands: one process per call, nothing cached (the
/// backend caches what it needs; see the crate docs for the counts).
#[derive(Debug, Default)]
pub(crate) struct Cli;

impl Cli {
    fn zfs(&self, args: &[&str], what: &'static str, id: &str) -> Result<String> {
        run("zfs", args, what, id)
    }
}

impl ZfsOps for Cli {
    fn kind(&self) -> &'static str {
        "zfs CLI"
    }

    fn create(&self, ds: &str, props: &[(&str, String)]) -> Result<()> {
        let props = prop_args(props);
        let mut args: Vec<&str> = vec!["create"];
        args.extend(props.iter().map(String::as_str));
        args.push(ds);
        self.create_or_undo(ds, &args)
    }

    fn clone_snapshot(&self, origin: &str, ds: &str, props: &[(&str, String)]) -> Result<()> {
        let props = prop_args(props);
        let mut args: Vec<&str> = vec!["clone"];
        args.extend(props.iter().map(String::as_str));
        args.extend([origin, ds]);
        self.create_or_undo(ds, &args)
    }

    fn snapshot(&self, snap: &str) -> Result<()> {
        self.zfs(&["snapshot", snap], "snapshot", snap).map(drop)
    }

    fn set(&self, ds: &str, prop: &str, value: &str) -> Result<()> {
        let kv = format!("{prop}={value}");
        self.zfs(&["set", &kv, ds], "dataset", ds).map(drop)
    }

    fn destroy(&self, ds: &str) -> Result<bool> {
        match self.zfs(&["destroy", "-r", ds], "dataset", ds) {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn children(&self, parent: &str) -> Result<Vec<Child>> {
        let out = self.zfs(
            &[
                "list",
                "-H",
                "-r",
                "-d",
                "1",
                "-t",
                "filesystem",
                "-o",
                "name,origin",
                parent,
            ],
            "dataset",
            parent,
        )?;
        Ok(parse_children(&out, parent))
    }

    fn used(&self, ds: &str) -> Result<(u64, Option<String>)> {
        let out = self.zfs(
            &["get", "-H", "-p", "-o", "value", "used,origin", ds],
            "dataset",
            ds,
        )?;
        parse_used(&out).ok_or_else(|| Error::Invalid {
            field: "zfs used property",
            reason: format!("{ds}: {out:?} is not a size and an origin"),
        })
    }

    fn mount(&self, ds: &str) -> Result<()> {
        self.zfs(&["mount", ds], "dataset", ds).map(drop)
    }
}

impl Cli {
    /// `zfs create`/`clone` also mount; a dataset made but not mounted
    /// ("filesystem successfully created, but not mounted") is destroyed
    /// again so a failed prepare leaves nothing.
    fn create_or_undo(&self, ds: &str, args: &[&str]) -> Result<()> {
        match self.zfs(args, "dataset", ds) {
            Ok(_) => Ok(()),
            Err(e @ Error::AlreadyExists { .. }) => Err(e),
            Err(e) => {
                if let Err(undo) = self.destroy(ds) {
                    tracing::warn!(backend = crate::NAME, dataset = ds, error = %undo, "could not destroy a half-made dataset; cleanup will retry");
                }
                Err(e)
            }
        }
    }
}

/// `used` and `origin` from `zfs get -H -p -o value used,origin` output.
pub(crate) fn parse_used(out: &str) -> Option<(u64, Option<String>)> {
    let mut lines = out.lines().map(str::trim);
    let used = lines.next()?.parse().ok()?;
    let origin = lines
        .next()
        .filter(|o| !o.is_empty() && *o != "-")
        .map(str::to_owned);
    Some((used, origin))
}

/// Children of `parent` from `zfs list -H -o name,origin` output (the
/// parent itself is listed first and skipped; `-` means no origin).
pub(crate) fn parse_children(out: &str, parent: &str) -> Vec<Child> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let name = f.next()?.trim();
            let origin = f
                .next()
                .map(str::trim)
                .filter(|o| !o.is_empty() && *o != "-");
            (name != parent && name.starts_with(parent) && name[parent.len()..].starts_with('/'))
                .then(|| Child {
                    name: name.to_owned(),
                    origin: origin.map(str::to_owned),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages zfs-fuse 0.7 and OpenZFS print map to the right class
    /// (taken from real runs on zfs-fuse).
    #[test]
    fn failure_messages() {
        let t = [
            ("cannot destroy 'p/x': dataset is busy", Failure::Busy),
            (
                "cannot open 'p/x': dataset does not exist",
                Failure::Missing,
            ),
            ("cannot open 'nope': no such pool", Failure::Missing),
            (
                "cannot create 'p/x': dataset already exists",
                Failure::Exists,
            ),
            (
                "connect: No such file or directory\nPlease make sure that the zfs-fuse daemon is running.\ninternal error: failed to initialize ZFS library",
                Failure::NoDaemon,
            ),
            ("cannot create 'p/x': out of space", Failure::Quota),
            ("cannot create 'p/x': permission denied", Failure::Other),
        ];
        for (msg, want) in t {
            assert_eq!(classify(msg), want, "{msg}");
        }
    }

    /// Only direct children of the parent are returned; `-` is no origin.
    #[test]
    fn children_listing() {
        let out = "p/layers\t-\np/layers/a\t-\np/layers/b\tp/layers/a@committed\np/layersx\t-\n";
        assert_eq!(
            parse_children(out, "p/layers"),
            vec![
                Child {
                    name: "p/layers/a".into(),
                    origin: None
                },
                Child {
                    name: "p/layers/b".into(),
                    origin: Some("p/layers/a@committed".into())
                },
            ]
        );
    }

    /// `used` is a plain byte count; `-` is no origin.
    #[test]
    fn used_and_origin() {
        assert_eq!(
            parse_used("81920\np/l/a@committed\n"),
            Some((81920, Some("p/l/a@committed".into())))
        );
        assert_eq!(parse_used("118784\n-\n"), Some((118784, None)));
        assert_eq!(parse_used("12K\n-\n"), None);
    }

    /// Properties become `-o k=v` pairs in order.
    #[test]
    fn property_arguments() {
        let p = prop_args(&[("mountpoint", "/x".into()), ("refquota", "52428800".into())]);
        assert_eq!(p, ["-o", "mountpoint=/x", "-o", "refquota=52428800"]);
    }
}
