//! Interrupted operations: an input that fails half-way, an operation that
//! fails after creating snapshots, and a process SIGKILLed half-way through
//! an apply or between mounting and recording a mount. Afterwards, and again
//! after reopening the store (which recovers), there is no half layer, no
//! snapshot row, no mount and no leftover directory.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use drivers_api::PrepareOpts;
use drivers_host::layers::Expect;
use drivers_host::store::snapshots::Labels;

use crate::Fixture;
use crate::child::{
    self, BACKEND_ENV, CHILD_ENV, MARKER_ENV, MOUNT_KEY, MOUNT_PARENT, ROOT_ENV, TABLE_ENV,
};
use crate::fixture::error_chain;
use crate::fschange::FsChange as C;

/// Serves the first half of `data`, then fails.
struct FailingReader {
    data: Vec<u8>,
    pos: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let half = self.data.len() / 2;
        if self.pos >= half {
            return Err(std::io::Error::other(
                "simulated failure half-way through the layer",
            ));
        }
        let n = buf.len().min(half - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn failing() -> FailingReader {
    FailingReader {
        data: child::half_way_layer(),
        pos: 0,
    }
}

/// The store holds exactly `names`, no image layer beyond `layers`, no
/// new data since `before`, and nothing is mounted; checked now and after
/// reopening the store.
fn expect_clean(
    fx: &Fixture,
    names: &[String],
    layers: usize,
    before: Option<&BTreeSet<PathBuf>>,
) -> Result<()> {
    for when in ["right after", "after reopening the store"] {
        if when != "right after" {
            fx.reopen()?;
        }
        let check = || -> Result<()> {
            let got = fx.snapshot_names()?;
            ensure!(got == names, "snapshots {got:?}, expected {names:?}");
            ensure!(fx.store().layers()?.len() == layers, "image layers left");
            fx.expect_no_residue(before)?;
            fx.expect_no_mounts()
        };
        check().context(when)?;
    }
    Ok(())
}

/// A layer whose input fails half-way leaves no trace; the error says why.
pub fn reader_fails_half_way(fx: &Fixture) -> Result<()> {
    let r = fx.store().apply_layer(failing(), None, &Expect::default());
    let e = match r {
        Ok(a) => bail!("apply of a failing input succeeded: {a:?}"),
        Err(e) => e,
    };
    let msg = error_chain(&e);
    ensure!(
        msg.contains("simulated failure"),
        "the error hides the cause: {msg}"
    );
    expect_clean(fx, &[], 0, None)
}

/// An operation (`store.op`) that created snapshots and then fails is
/// undone as a whole; what existed before stays.
pub fn failed_operation_undone(fx: &Fixture) -> Result<()> {
    fx.committed("kept", None, &[C::file("/kept", "kept\n", 0o644)])?;
    let before = fx.backend_listing()?;
    let r = fx.store().op(|s| {
        let none = Labels::new();
        s.prepare("in-op", Some("kept"), &none, &PrepareOpts::default())?;
        s.prepare("in-op-2", None, &none, &PrepareOpts::default())?;
        s.commit("in-op-2-c", "in-op-2", &none)?;
        s.apply_layer(failing(), None, &Expect::default())?;
        Ok(())
    });
    ensure!(r.is_err(), "the operation succeeded");
    expect_clean(fx, &["kept".to_owned()], 0, Some(&before))?;
    let content = fx.with_mounts(&fx.view("kept-view", Some("kept"))?, |r| {
        Ok(std::fs::read(r.join("kept"))?)
    })?;
    ensure!(
        content == b"kept\n",
        "the snapshot made before the operation changed"
    );
    Ok(())
}

/// A child process re-running this test binary in [`child`] mode; killed
/// with SIGKILL on drop if still running.
struct ChildGuard {
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    fn spawn(fx: &Fixture, mode: &str) -> Result<(ChildGuard, PathBuf)> {
        let marker = fx.root().join(format!("child-{mode}.marker"));
        let log = fx.root().join(format!("child-{mode}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(std::env::current_exe()?)
            .env(CHILD_ENV, mode)
            .env(ROOT_ENV, fx.root())
            .env(BACKEND_ENV, fx.name())
            .env(MARKER_ENV, &marker)
            .env(TABLE_ENV, toml::to_string(fx.table())?)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawn the child")?;
        Ok((ChildGuard { child, log }, marker))
    }

    /// Waits until the child created `marker` (it is then stalled half-way).
    fn wait_for(&mut self, marker: &std::path::Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !marker.exists() {
            if let Some(st) = self.child.try_wait()? {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                bail!("the child exited with {st} before getting half-way: {log}");
            }
            ensure!(
                Instant::now() < deadline,
                "the child did not get half-way within 120 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL, and check it was the kill that ended it.
    fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        let st = self.child.wait()?;
        ensure!(
            st.signal() == Some(9),
            "the child ended with {st}, not by SIGKILL"
        );
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process SIGKILLed half-way through applying a layer leaves nothing
/// once the store is reopened: no snapshot row, no half layer on disk, no
/// mount; and the same layer then applies fine.
pub fn apply_killed_half_way(fx: &Fixture) -> Result<()> {
    let (mut child, marker) = ChildGuard::spawn(fx, "apply")?;
    child.wait_for(&marker)?;
    // The half state exists, so the checks below can fail.
    let half = fx.snapshot_names()?;
    ensure!(
        half.len() == 1 && half[0].starts_with("extract-"),
        "no half-made snapshot visible: {half:?}"
    );
    let residue = fx.expect_no_residue(None);
    ensure!(
        residue.is_err(),
        "no half-made layer on disk while the child is stalled"
    );
    child.kill()?;
    fx.reopen()?;
    expect_clean(fx, &[], 0, None)?;
    let data = child::half_way_layer();
    fx.store()
        .apply_layer(&data[..], None, &Expect::default())
        .context("apply the same layer after recovery")?;
    Ok(())
}

/// A process SIGKILLed after mounting a new snapshot but before the
/// operation finished (the mount is recorded nowhere) leaves, once the
/// store is reopened, no mount, no snapshot row and no data of it; its
/// committed parent is intact.
pub fn mount_killed_before_recorded(fx: &Fixture) -> Result<()> {
    fx.committed(MOUNT_PARENT, None, &[C::file("/base", "base\n", 0o644)])?;
    let before = fx.backend_listing()?;
    let (mut child, marker) = ChildGuard::spawn(fx, "mount")?;
    child.wait_for(&marker)?;
    // The host's mounts live in `<state>/mounts` (zfs keeps its datasets
    // mounted elsewhere in the state dir all the time).
    let mounted = drivers_mount::mounts_under(&fx.state_dir().join("mounts"))?;
    ensure!(!mounted.is_empty(), "the child's mount is not visible");
    ensure!(
        fx.snapshot_names()?.contains(&MOUNT_KEY.to_owned()),
        "the child's snapshot is not visible"
    );
    child.kill()?;
    fx.reopen()?;
    // The reopened store must have unmounted it: nothing else does here.
    expect_clean(fx, &[MOUNT_PARENT.to_owned()], 0, Some(&before))?;
    let content = fx.with_mounts(&fx.view("base-view", Some(MOUNT_PARENT))?, |r| {
        Ok(std::fs::read(r.join("base"))?)
    })?;
    ensure!(content == b"base\n", "the parent changed");
    Ok(())
}
