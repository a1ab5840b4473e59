//! The error classes of the snapshot store, pinned against containerd's
//! metastore (`core/snapshots/storage/bolt.go`; conformance.md 2.1, last
//! list). Where containerd says FailedPrecondition for "remove with
//! children", our store answers InUse, its class for "still needed".

use anyhow::Result;
use drivers_api::{ErrorKind, PrepareOpts};
use drivers_host::store::snapshots::Labels;

use crate::Fixture;
use crate::fixture::expect_kind;

/// Each misuse gets its class and changes nothing: NotFound for a missing
/// key or parent; AlreadyExists for a duplicate key or name; Invalid for a
/// parent that is not committed and an immutable field in update;
/// InUse for removing a parent; FailedPrecondition for committing or
/// applying into something not active and for mounts of a committed one.
pub fn error_classes(fx: &Fixture) -> Result<()> {
    let none = Labels::new();
    let opts = PrepareOpts::default();
    fx.prepare("base-a", None)?;
    fx.commit("base", "base-a")?;
    fx.prepare("active", Some("base"))?;
    fx.view("view", Some("base"))?;
    let before = fx.backend_listing()?;
    let names = fx.snapshot_names()?;

    {
        let mut s = fx.store();
        expect_kind(
            s.stat("missing"),
            ErrorKind::NotFound,
            "stat of a missing key",
        )?;
        expect_kind(
            s.mounts("missing"),
            ErrorKind::NotFound,
            "mounts of a missing key",
        )?;
        expect_kind(
            s.remove("missing"),
            ErrorKind::NotFound,
            "remove of a missing key",
        )?;
        expect_kind(
            s.commit("x", "missing", &none),
            ErrorKind::NotFound,
            "commit of a missing key",
        )?;
        expect_kind(
            s.prepare("k1", Some("missing"), &none, &opts),
            ErrorKind::NotFound,
            "prepare on a missing parent",
        )?;
        expect_kind(
            s.view("k2", Some("missing"), &none),
            ErrorKind::NotFound,
            "view of a missing parent",
        )?;

        expect_kind(
            s.prepare("active", None, &none, &opts),
            ErrorKind::AlreadyExists,
            "prepare with an existing key",
        )?;
        expect_kind(
            s.view("base", None, &none),
            ErrorKind::AlreadyExists,
            "view with a committed name as key",
        )?;
        expect_kind(
            s.commit("base", "active", &none),
            ErrorKind::AlreadyExists,
            "commit to an existing name",
        )?;

        expect_kind(
            s.prepare("k3", Some("active"), &none, &opts),
            ErrorKind::Invalid,
            "prepare on an active parent",
        )?;
        expect_kind(
            s.prepare("k4", Some("view"), &none, &opts),
            ErrorKind::Invalid,
            "prepare on a view",
        )?;
        expect_kind(
            s.prepare("", None, &none, &opts),
            ErrorKind::Invalid,
            "prepare with an empty key",
        )?;
        let mut info = s.stat("active")?;
        info.kind = drivers_host::store::Kind::Committed;
        expect_kind(
            s.update(&info, &["kind"]),
            ErrorKind::Invalid,
            "update of the kind",
        )?;

        expect_kind(s.remove("base"), ErrorKind::InUse, "remove of a parent")?;
        expect_kind(
            s.commit("x", "view", &none),
            ErrorKind::FailedPrecondition,
            "commit of a view",
        )?;
        expect_kind(
            s.commit("x", "base", &none),
            ErrorKind::FailedPrecondition,
            "commit of a committed snapshot",
        )?;
        expect_kind(
            s.mounts("base"),
            ErrorKind::FailedPrecondition,
            "mounts of a committed snapshot",
        )?;
        expect_kind(
            s.apply_target("view"),
            ErrorKind::FailedPrecondition,
            "apply target of a view",
        )?;
    }
    anyhow::ensure!(
        fx.snapshot_names()? == names,
        "a refused call changed the snapshots"
    );
    fx.expect_no_residue(Some(&before))
}
