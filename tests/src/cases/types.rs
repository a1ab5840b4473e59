//! Beyond the peers' suites: every file type and attribute an image layer
//! can hold (conformance.md, "Directory comparison") goes through a snapshot
//! mount, commit and view unchanged.

use anyhow::{Result, ensure};

use crate::Fixture;
use crate::fschange::FsChange as C;

/// Devices, FIFOs, symlinks (dangling too), hardlinks, setuid, setgid and
/// sticky modes, owners and xattrs (binary values, on directories too)
/// written through a mount survive commit; metadata-only changes of each
/// in a child layer (chmod, chown, xattr set, rename, type-preserving
/// replacement) are seen exactly as on a plain directory.
///
/// On zfs-fuse, which stores no xattrs (conformance.md, "Decisions"), the
/// same changes minus the xattrs go through unchanged, and setting an
/// xattr through a mount fails with EOPNOTSUPP rather than being lost.
pub fn all_file_types(fx: &Fixture) -> Result<()> {
    let mut layers = all_changes();
    if fx.name() == "zfs" && !drivers_zfs::stores_xattrs() {
        for l in &mut layers {
            l.retain(|c| !matches!(c, C::Xattr { .. }));
        }
        xattr_refused(fx)?;
    }
    fx.check_snapshots(&layers)?;
    Ok(())
}

/// Setting a user xattr on a file in a mounted layer fails with EOPNOTSUPP
/// and leaves the file without it.
fn xattr_refused(fx: &Fixture) -> Result<()> {
    fx.prepare("xattr-probe", None)?;
    fx.with_mounted("xattr-probe", |root| {
        let f = root.join("f");
        std::fs::write(&f, "x")?;
        let r = rustix::fs::lsetxattr(&f, "user.comment", b"v", rustix::fs::XattrFlags::empty());
        ensure!(
            r == Err(rustix::io::Errno::OPNOTSUPP),
            "setting user.comment on zfs-fuse: {r:?}, expected EOPNOTSUPP"
        );
        ensure!(
            crate::tree::xattrs_of(&f)?.is_empty(),
            "an xattr appeared after a refused set"
        );
        Ok(())
    })?;
    fx.remove("xattr-probe")
}

/// The two layers of changes: everything, then metadata-only edits.
fn all_changes() -> Vec<Vec<C>> {
    vec![
        vec![
            C::dir("/d", 0o755),
            C::xattr("/d", "user.dir", "on a dir"),
            C::dir("/sticky", 0o1777),
            C::file("/d/suid", "suid", 0o4755),
            C::file("/d/sgid", "sgid", 0o644),
            C::chown("/d/sgid", 0, 42),
            C::chmod("/d/sgid", 0o2755),
            C::file("/d/x", "xattrs", 0o644),
            C::xattr("/d/x", "user.comment", "hello world"),
            C::xattr("/d/x", "user.binary", [0u8, 255, 16]),
            C::symlink("/d/link", "x"),
            C::symlink("/dangling", "/nowhere"),
            C::file("/h1", "hard", 0o644),
            C::link("/h1", "/d/h2"),
            C::char_dev("/d/null", 1, 3, 0o666),
            C::fifo("/d/fifo", 0o600),
            C::file("/owned", "o", 0o640),
            C::chown("/owned", 1234, 5678),
        ],
        vec![
            C::chmod("/d/x", 0o600),
            C::xattr("/d/x", "user.comment", "changed"),
            C::xattr("/d/x", "user.new", [1u8, 2, 3]),
            C::chown("/d/suid", 1, 1),
            C::rename("/d/link", "/d/link2"),
            C::remove_all("/d/fifo"),
            C::fifo("/d/fifo2", 0o644),
            C::chmod("/sticky", 0o1770),
            C::remove_all("/dangling"),
            C::symlink("/dangling", "/elsewhere"),
            C::chown("/d/null", 5, 5),
            C::chown("/owned", 4321, 8765),
        ],
    ]
}
