//! Hostile and broken layer tars through `store.apply_layer`: each is
//! refused as Invalid with a one-line error, a canary outside the state
//! dir (where every attack aims) is untouched, and the store lists no new
//! snapshot or layer, the backend holds no new data and nothing is mounted.

use anyhow::{Result, ensure};
use drivers_api::ErrorKind;
use drivers_host::content::Digest;
use drivers_host::layers::Expect;

use super::graphtest::random_content;
use crate::Fixture;
use crate::fixture::{Canary, error_chain, expect_kind};
use crate::rawtar::{self, Entry};

/// Enough `..` to reach `/` from any state dir we create.
fn up() -> String {
    "../".repeat(24)
}

fn refused(
    fx: &Fixture,
    canary: &Canary,
    what: &str,
    data: &[u8],
    parent: Option<&Digest>,
    expect: &Expect,
) -> Result<()> {
    let before = fx.backend_listing()?;
    let names = fx.snapshot_names()?;
    let layers = fx.store().layers()?.len();
    let r = fx.store().apply_layer(data, parent, expect);
    let e = expect_kind(r, ErrorKind::Invalid, what)?;
    let msg = error_chain(&e);
    ensure!(
        !msg.contains('\n'),
        "{what}: the error is not one line: {msg:?}"
    );
    canary.check(&format!("{}: {what}", fx.label()))?;
    ensure!(
        fx.snapshot_names()? == names,
        "{what}: a snapshot was left: {:?}",
        fx.snapshot_names()?
    );
    ensure!(
        fx.store().layers()?.len() == layers,
        "{what}: a layer was recorded"
    );
    fx.expect_no_residue(Some(&before))?;
    fx.expect_no_mounts()
}

/// A name climbing out with `..` is refused; nothing is written outside.
pub fn dotdot_path(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let name = format!("{}{}/pwned", up(), canary.rel_from_fs_root());
    let tar = rawtar::tar(&[Entry::file(name, "pwned\n")]);
    refused(
        fx,
        &canary,
        "file through ..",
        &tar,
        None,
        &Expect::default(),
    )?;
    let tar = rawtar::tar(&[Entry::dir("a"), Entry::file("a/../../pwned", "pwned\n")]);
    refused(
        fx,
        &canary,
        "file through a/../..",
        &tar,
        None,
        &Expect::default(),
    )
}

/// An absolute name is refused, not taken relative to the root.
pub fn absolute_path(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let name = format!("{}/pwned", canary.dir.display());
    refused(
        fx,
        &canary,
        "absolute file",
        &rawtar::tar(&[Entry::file(name, "pwned\n")]),
        None,
        &Expect::default(),
    )
}

/// A symlink to an absolute outside directory, then a file written through
/// it, is refused.
pub fn symlink_then_write(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let tar = rawtar::tar(&[
        Entry::symlink("escape", canary.dir.to_string_lossy().as_bytes()),
        Entry::file("escape/pwned", "pwned\n"),
    ]);
    refused(
        fx,
        &canary,
        "write through an absolute symlink",
        &tar,
        None,
        &Expect::default(),
    )
}

/// A relative symlink climbing out, then a file written through it, is
/// refused.
pub fn relative_symlink_then_write(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let tar = rawtar::tar(&[
        Entry::symlink("up", format!("{}{}", up(), canary.rel_from_fs_root())),
        Entry::file("up/pwned", "pwned\n"),
        Entry::file("up/secret", "overwritten\n"),
    ]);
    refused(
        fx,
        &canary,
        "write through a relative symlink",
        &tar,
        None,
        &Expect::default(),
    )
}

/// A symlink planted by a lower layer is not followed by a later layer's
/// write either.
pub fn lower_symlink_then_write(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let base = rawtar::tar(&[
        Entry::symlink("escape", canary.dir.to_string_lossy().as_bytes()),
        Entry::dir("dir"),
        Entry::symlink("dir/link", format!("{}{}", up(), canary.rel_from_fs_root())),
    ]);
    let base = fx
        .store()
        .apply_layer(&base[..], None, &Expect::default())?
        .chain_id;
    let tar = rawtar::tar(&[Entry::file("escape/pwned", "pwned\n")]);
    refused(
        fx,
        &canary,
        "write through a lower layer's symlink",
        &tar,
        Some(&base),
        &Expect::default(),
    )?;
    let tar = rawtar::tar(&[Entry::file("dir/link/secret", "overwritten\n")]);
    refused(
        fx,
        &canary,
        "write through a lower layer's nested symlink",
        &tar,
        Some(&base),
        &Expect::default(),
    )
}

/// A hardlink to `../…/outside` is refused: no link to a file outside the
/// root is made (the canary's link count stays 1).
pub fn hardlink_outside(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let tar = rawtar::tar(&[Entry::hardlink(
        "hl",
        format!("{}{}/secret", up(), canary.rel_from_fs_root()),
    )]);
    refused(
        fx,
        &canary,
        "hardlink through ..",
        &tar,
        None,
        &Expect::default(),
    )
}

/// A hardlink to an absolute path is refused.
pub fn absolute_hardlink(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let tar = rawtar::tar(&[Entry::hardlink(
        "hl",
        format!("{}/secret", canary.dir.display()),
    )]);
    refused(
        fx,
        &canary,
        "absolute hardlink",
        &tar,
        None,
        &Expect::default(),
    )
}

/// A whiteout of `..` (`.wh..`), at the root or in a directory, is refused
/// rather than deleting a parent.
pub fn whiteout_dotdot(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let tar = rawtar::tar(&[Entry::whiteout(".wh..")]);
    refused(
        fx,
        &canary,
        "whiteout .wh.. at the root",
        &tar,
        None,
        &Expect::default(),
    )?;
    let tar = rawtar::tar(&[
        Entry::dir("d"),
        Entry::file("d/keep", "x"),
        Entry::whiteout("d/.wh.."),
    ]);
    refused(
        fx,
        &canary,
        "whiteout .wh.. in a directory",
        &tar,
        None,
        &Expect::default(),
    )
}

/// A bare `.wh.` (a whiteout of nothing) is refused, as the image spec says
/// it should be.
pub fn bare_whiteout(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let tar = rawtar::tar(&[Entry::whiteout(".wh.")]);
    refused(
        fx,
        &canary,
        "bare .wh. at the root",
        &tar,
        None,
        &Expect::default(),
    )?;
    let tar = rawtar::tar(&[Entry::dir("d"), Entry::whiteout("d/.wh.")]);
    refused(
        fx,
        &canary,
        "bare .wh. in a directory",
        &tar,
        None,
        &Expect::default(),
    )
}

/// A whiteout whose path climbs out with `..` deletes nothing outside.
pub fn whiteout_through_dotdot(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let tar = rawtar::tar(&[Entry::whiteout(format!(
        "{}{}/.wh.secret",
        up(),
        canary.rel_from_fs_root()
    ))]);
    refused(
        fx,
        &canary,
        "whiteout through ..",
        &tar,
        None,
        &Expect::default(),
    )
}

/// A device node whose path climbs out with `..` is refused.
pub fn device_through_dotdot(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let tar = rawtar::tar(&[Entry::char_dev(
        format!("{}{}/null", up(), canary.rel_from_fs_root()),
        1,
        3,
    )]);
    refused(
        fx,
        &canary,
        "device through ..",
        &tar,
        None,
        &Expect::default(),
    )
}

/// A header promising more data than the stream holds is refused (cut
/// inside an entry's data), whether the stream just ends or the end-of-
/// archive blocks come too early.
pub fn size_beyond_data(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let mut big = Entry::file("big", vec![b'x'; 100]);
    big.size_field = Some(64 << 10);
    let mut data = Vec::new();
    rawtar::write_entry(&mut data, &Entry::file("first", "ok\n"));
    rawtar::write_entry(&mut data, &big);
    refused(
        fx,
        &canary,
        "size field beyond the end of the stream",
        &data,
        None,
        &Expect::default(),
    )?;
    data.resize(data.len() + 1024, 0);
    refused(
        fx,
        &canary,
        "size field beyond the end-of-archive blocks",
        &data,
        None,
        &Expect::default(),
    )
}

/// A gzip stream cut short is refused, though the tar inside started fine.
pub fn truncated_gzip(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let tar = rawtar::tar(&[
        Entry::file("a", random_content(64 << 10, 1)),
        Entry::file("b", random_content(64 << 10, 2)),
    ]);
    let gz = rawtar::gzip(&tar);
    let cut = &gz[..gz.len() * 6 / 10];
    refused(fx, &canary, "truncated gzip", cut, None, &Expect::default())?;
    refused(
        fx,
        &canary,
        "gzip without its trailer",
        &gz[..gz.len() - 4],
        None,
        &Expect::default(),
    )
}

/// A layer whose digest is not the expected one is refused after reading
/// and leaves nothing, although every entry was fine.
pub fn digest_mismatch(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let tar = rawtar::gzip(&rawtar::tar(&[Entry::file("a", "a\n")]));
    let expect = Expect {
        digest: Some(Digest::of(b"something else")),
        diff_id: None,
    };
    refused(fx, &canary, "digest mismatch", &tar, None, &expect)
}

/// A layer whose diff id is not the expected one is refused and leaves
/// nothing.
pub fn diff_id_mismatch(fx: &Fixture) -> Result<()> {
    let canary = Canary::plant(fx)?;
    let tar = rawtar::tar(&[Entry::file("a", "a\n")]);
    let expect = Expect {
        digest: None,
        diff_id: Some(Digest::of(b"something else")),
    };
    refused(fx, &canary, "diff id mismatch", &tar, None, &expect)
}
