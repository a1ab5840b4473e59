//! The child side of the crash cases: the test binary re-executed with
//! [`CHILD_ENV`] set opens a store, gets half-way through an operation,
//! announces it with a marker file and then waits to be SIGKILLed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use drivers_api::PrepareOpts;
use drivers_host::layers::Expect;
use drivers_host::store::snapshots::Labels;

use crate::rawtar::{self, Entry};

/// Set to the mode (`apply` or `mount`) in the child's environment.
pub const CHILD_ENV: &str = "DRIVERS_IT_CHILD";
/// The fixture root the child opens.
pub const ROOT_ENV: &str = "DRIVERS_IT_CHILD_ROOT";
/// The backend's name.
pub const BACKEND_ENV: &str = "DRIVERS_IT_CHILD_BACKEND";
/// The file the child creates once it is half-way.
pub const MARKER_ENV: &str = "DRIVERS_IT_CHILD_MARKER";
/// The backend's config table (TOML) the child opens it with.
pub const TABLE_ENV: &str = "DRIVERS_IT_CHILD_TABLE";

/// The snapshot key the `mount` child prepares.
pub const MOUNT_KEY: &str = "crash-ctr";
/// The committed snapshot the `mount` child prepares on (made by the parent).
pub const MOUNT_PARENT: &str = "crash-base";

/// The layer the `apply` child gets half-way through: 64 files of 16 KiB,
/// so that half-way means files on disk.
pub fn half_way_layer() -> Vec<u8> {
    let mut entries = vec![Entry::dir("many")];
    for i in 0..64 {
        entries.push(Entry::file(
            format!("many/f{i:02}"),
            vec![b'a' + (i % 26) as u8; 16 << 10],
        ));
    }
    rawtar::tar(&entries)
}

/// Serves `data` up to `stall_at`, then creates `marker` and blocks
/// forever: the operation reading it is stuck half-way until killed.
struct StallingReader {
    data: Vec<u8>,
    pos: usize,
    stall_at: usize,
    marker: PathBuf,
}

impl Read for StallingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.stall_at {
            std::fs::write(&self.marker, b"half-way\n")?;
            stall();
        }
        let n = buf.len().min(self.stall_at - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn stall() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Runs the child side if [`CHILD_ENV`] is set; returns its exit code (it
/// only returns on failure: success means being killed while stalled).
pub fn run_if_child() -> Option<i32> {
    let mode = std::env::var(CHILD_ENV).ok()?;
    match run(&mode) {
        Ok(()) => Some(0),
        Err(e) => {
            eprintln!("drivers-it child ({mode}): {e:#}");
            Some(1)
        }
    }
}

fn run(mode: &str) -> Result<()> {
    let root = PathBuf::from(std::env::var(ROOT_ENV).context(ROOT_ENV)?);
    let name = std::env::var(BACKEND_ENV).context(BACKEND_ENV)?;
    let marker = PathBuf::from(std::env::var(MARKER_ENV).context(MARKER_ENV)?);
    let backend = drivers_host::backends::find(&name)?;
    let table: toml::Table =
        toml::from_str(&std::env::var(TABLE_ENV).unwrap_or_default()).context(TABLE_ENV)?;
    let mut store = crate::fixture::open_store(backend, &root, &table)?;
    match mode {
        "apply" => {
            let data = half_way_layer();
            let stall_at = data.len() / 2;
            let reader = StallingReader {
                data,
                pos: 0,
                stall_at,
                marker,
            };
            store.apply_layer(reader, None, &Expect::default())?;
            bail!("apply_layer returned although its input never ended")
        }
        "mount" => {
            let target = store.state_dir().join("mounts").join("crash");
            store.op(|s| {
                s.prepare(
                    MOUNT_KEY,
                    Some(MOUNT_PARENT),
                    &Labels::new(),
                    &PrepareOpts::default(),
                )?;
                let mounts = s.mounts(MOUNT_KEY)?;
                std::fs::create_dir_all(&target).map_err(|e| io_err("create", &target, e))?;
                drivers_mount::mount(&mounts, &target)?;
                std::fs::write(&marker, b"mounted\n").map_err(|e| io_err("write", &marker, e))?;
                stall()
            })?;
            bail!("the operation returned although it never ends")
        }
        other => bail!("unknown child mode {other:?}"),
    }
}

fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> drivers_host::Error {
    drivers_host::Error::Io {
        op,
        path: path.to_owned(),
        source: e,
    }
}
