//! containerd's `core/snapshots/testsuite`, all 21 cases (conformance.md
//! 2.1), on the host's snapshot store. Keys and names are built as
//! containerd builds them (paths under the work directory, or its literal
//! names); every Prepare/View/Commit carries the `containerd.io/gc.root`
//! label. Where containerd only asks for "an error", the class our store
//! returns is pinned too.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use drivers_api::ErrorKind;
use drivers_host::store::now_ns;
use drivers_host::store::snapshots::{Info, Kind, Labels};

use crate::Fixture;
use crate::fixture::{GC_ROOT, expect_kind};
use crate::fschange::{self, FsChange as C};
use crate::tree::{self, CompareOpts};

/// `<work>/<name>`: containerd's suite names keys and snapshots by paths.
fn k(fx: &Fixture, name: &str) -> String {
    fx.work().join(name).to_string_lossy().into_owned()
}

/// The basic workflow: prepare, fill through a mount, commit; a child sees
/// the parent's tree; stat reports kind and parent; a committed key is gone;
/// walk reports exactly what stat does; a view shows parent plus diff; a
/// parent with a child cannot be removed (the error says "remove"), and is
/// removable once the child is gone.
pub fn basic(fx: &Fixture) -> Result<()> {
    let initial = vec![
        C::file("/foo", "foo\n", 0o777),
        C::dir("/a", 0o755),
        C::dir("/a/b", 0o755),
        C::dir("/a/b/c", 0o755),
    ];
    let diff = vec![
        C::file("/bar", "bar\n", 0o777),
        C::file("/foo", "bar\n", 0o777),
        C::remove_all("/a/b"),
    ];
    let preparing = k(fx, "preparing");
    let mounts = fx.prepare(&preparing, None)?;
    ensure!(!mounts.is_empty(), "prepare returned no mounts");
    fx.with_mounts(&mounts, |r| fschange::apply(r, &initial))?;

    let committed = k(fx, "committed");
    fx.commit(&committed, &preparing)?;
    let si = fx.stat(&committed)?;
    ensure!(
        si.parent.is_none(),
        "stat(committed).parent = {:?}",
        si.parent
    );
    ensure!(
        si.kind == Kind::Committed,
        "stat(committed).kind = {:?}",
        si.kind
    );
    expect_kind(
        fx.store().stat(&preparing),
        ErrorKind::NotFound,
        "stat of a key after commit",
    )?;

    let next = k(fx, "nextlayer");
    let mounts = fx.prepare(&next, Some(&committed))?;
    let flat = fx.flat_dir()?;
    fschange::apply(&flat, &initial)?;
    let label = format!("{}: child of committed", fx.label());
    fx.with_mounts(&mounts, |r| {
        tree::expect_equal(&label, &flat, r, CompareOpts::default())?;
        fschange::apply(r, &diff)
    })?;
    let ni = fx.stat(&next)?;
    ensure!(
        ni.parent.as_deref() == Some(committed.as_str()),
        "stat(next).parent = {:?}",
        ni.parent
    );
    ensure!(ni.kind == Kind::Active, "stat(next).kind = {:?}", ni.kind);

    let next_committed = k(fx, "committed-next");
    fx.commit(&next_committed, &next)?;
    let si2 = fx.stat(&next_committed)?;
    ensure!(
        si2.parent.as_deref() == Some(committed.as_str()),
        "stat(committed-next).parent = {:?}",
        si2.parent
    );
    ensure!(
        si2.kind == Kind::Committed,
        "stat(committed-next).kind = {:?}",
        si2.kind
    );
    expect_kind(
        fx.store().stat(&next),
        ErrorKind::NotFound,
        "stat of a key after commit",
    )?;

    let mut walked = BTreeMap::new();
    fx.store().walk(&[], |i| {
        walked.insert(i.name.clone(), i.clone());
        Ok(())
    })?;
    let expected = BTreeMap::from([(si.name.clone(), si), (si2.name.clone(), si2)]);
    ensure!(
        walked == expected,
        "walk returned {walked:#?}, stat said {expected:#?}"
    );

    let nextnext = k(fx, "nextnextlayer");
    let mounts = fx.view(&nextnext, Some(&next_committed))?;
    fschange::apply(&flat, &diff)?;
    let label = format!("{}: view of initial+diff", fx.label());
    fx.with_mounts(&mounts, |r| {
        tree::expect_equal(&label, &flat, r, CompareOpts::default())
    })?;
    fx.remove(&nextnext)?;

    let e = expect_kind(
        fx.store().remove(&committed),
        ErrorKind::InUse,
        "remove of a parent with a child",
    )?;
    ensure!(
        e.to_string().contains("remove"),
        "the error does not say \"remove\": {e}"
    );
    fx.remove(&next_committed)?;
    fx.remove(&committed)?;
    fx.expect_no_residue(None)
}

/// An active snapshot stats as Active with its key as name and no parent.
pub fn stat_active(fx: &Fixture) -> Result<()> {
    let preparing = k(fx, "preparing");
    let mounts = fx.prepare(&preparing, None)?;
    ensure!(!mounts.is_empty(), "prepare returned no mounts");
    fx.with_mounts(&mounts, |r| {
        fschange::apply(r, &[C::file("/foo", "foo\n", 0o777)])
    })?;
    let si = fx.stat(&preparing)?;
    ensure!(si.name == preparing, "name {:?}", si.name);
    ensure!(si.kind == Kind::Active, "kind {:?}", si.kind);
    ensure!(si.parent.is_none(), "parent {:?}", si.parent);
    Ok(())
}

/// A committed snapshot stats as Committed under its new name, no parent.
pub fn stat_committed(fx: &Fixture) -> Result<()> {
    let preparing = k(fx, "preparing");
    let mounts = fx.prepare(&preparing, None)?;
    ensure!(!mounts.is_empty(), "prepare returned no mounts");
    fx.with_mounts(&mounts, |r| {
        fschange::apply(r, &[C::file("/foo", "foo\n", 0o777)])
    })?;
    let committed = k(fx, "committed");
    fx.commit(&committed, &preparing)?;
    let si = fx.stat(&committed)?;
    ensure!(si.name == committed, "name {:?}", si.name);
    ensure!(si.kind == Kind::Committed, "kind {:?}", si.kind);
    ensure!(si.parent.is_none(), "parent {:?}", si.parent);
    Ok(())
}

/// Parentage is transitive: A <- B, and B's parent's parent is empty.
pub fn transitivity(fx: &Fixture) -> Result<()> {
    let preparing = k(fx, "preparing");
    fx.prepare(&preparing, None)?;
    fx.apply_mounted(&preparing, &[C::file("/foo", "foo\n", 0o777)])?;
    let snap_a = k(fx, "snapA");
    fx.commit(&snap_a, &preparing)?;
    let next = k(fx, "next");
    fx.prepare(&next, Some(&snap_a))?;
    fx.apply_mounted(&next, &[C::file("/foo", "foo bar\n", 0o777)])?;
    let snap_b = k(fx, "snapB");
    fx.commit(&snap_b, &next)?;

    let si_a = fx.stat(&snap_a)?;
    let si_b = fx.stat(&snap_b)?;
    let parent_b = si_b.parent.clone().context("snapB has no parent")?;
    let si_parent_b = fx.stat(&parent_b)?;
    ensure!(si_a.parent.is_none(), "snapA.parent {:?}", si_a.parent);
    ensure!(parent_b == snap_a, "snapB.parent {parent_b:?}");
    ensure!(
        si_parent_b.parent.is_none(),
        "snapB.parent.parent {:?}",
        si_parent_b.parent
    );
    Ok(())
}

/// A key is unique across kinds: View on a key Prepare used fails, and so do
/// a second Prepare and a second View with the same key (AlreadyExists);
/// the failed call changes nothing and leaves no data behind.
pub fn prepare_view_failing(fx: &Fixture) -> Result<()> {
    let preparing = k(fx, "preparing");
    fx.prepare(&preparing, None)?;
    let snap_a = k(fx, "snapA");
    fx.commit(&snap_a, &preparing)?;

    let new_layer = k(fx, "newlayer");
    fx.prepare(&new_layer, Some(&snap_a))?;
    let before = fx.backend_listing()?;
    let labels = fx.labels();
    let r = fx.store().view(&new_layer, Some(&snap_a), &labels);
    expect_kind(
        r,
        ErrorKind::AlreadyExists,
        "view with the key of an active snapshot",
    )?;
    ensure!(
        fx.stat(&new_layer)?.kind == Kind::Active,
        "the failed view changed the active snapshot"
    );
    fx.expect_no_residue(Some(&before))?;

    let prep_layer = k(fx, "prepLayer");
    fx.prepare(&prep_layer, Some(&snap_a))?;
    let before = fx.backend_listing()?;
    let r = fx
        .store()
        .prepare(&prep_layer, Some(&snap_a), &labels, &Default::default());
    expect_kind(
        r,
        ErrorKind::AlreadyExists,
        "second prepare with the same key",
    )?;
    fx.expect_no_residue(Some(&before))?;

    let view_layer = k(fx, "viewLayer");
    fx.view(&view_layer, Some(&snap_a))?;
    let before = fx.backend_listing()?;
    let r = fx.store().view(&view_layer, Some(&snap_a), &labels);
    expect_kind(r, ErrorKind::AlreadyExists, "second view with the same key")?;
    ensure!(
        fx.stat(&view_layer)?.kind == Kind::View,
        "the failed view changed the view"
    );
    fx.expect_no_residue(Some(&before))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Created and Updated are set at creation and equal; Update with no field
/// paths replaces the labels and touches Updated only (the parent it was
/// given is ignored); `labels.<k>` paths set or delete single labels
/// (absent from the request, or empty, means delete; others are ignored);
/// `labels` replaces all; naming an immutable field is InvalidArgument.
pub fn update(fx: &Fixture) -> Result<()> {
    let t1 = now_ns();
    fx.prepare("c1-a", None)?;
    fx.commit("c1", "c1-a")?;
    fx.prepare("c2-a", Some("c1"))?;
    fx.commit("c2", "c2-a")?;
    fx.prepare("a1", Some("c2"))?;
    fx.prepare("a2", None)?;
    fx.view("v1", Some("c2"))?;
    fx.view("v2", None)?;
    let t2 = now_ns();
    let cases = [
        ("c1", Kind::Committed, None),
        ("c2", Kind::Committed, Some("c1")),
        ("a1", Kind::Active, Some("c2")),
        ("a2", Kind::Active, None),
        ("v1", Kind::View, Some("c2")),
        ("v2", Kind::View, None),
    ];
    for (name, kind, parent) in cases {
        let check = |st: &Info| -> Result<()> {
            ensure!(st.kind == kind, "kind {:?}, expected {kind:?}", st.kind);
            ensure!(
                st.parent.as_deref() == parent,
                "parent {:?}, expected {parent:?}",
                st.parent
            );
            ensure!(st.name == name, "name {:?}", st.name);
            Ok(())
        };
        let run = || -> Result<()> {
            let mut st = fx.stat(name)?;
            ensure!(
                (t1..=t2).contains(&st.created),
                "created {} not within [{t1}, {t2}]",
                st.created
            );
            ensure!(
                st.created == st.updated,
                "updated {} != created {}",
                st.updated,
                st.created
            );
            check(&st)?;

            let created = st.created;
            let root_time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            let expected = labels(&[
                ("l1", "v1"),
                ("l2", "v2"),
                ("l3", "v3"),
                (GC_ROOT, &root_time),
            ]);
            st.parent = Some("doesnotexist".into());
            st.labels = expected.clone();
            let u1 = now_ns();
            let st2 = fx
                .store()
                .update(&st, &[])
                .context("update with no field paths")?;
            let u2 = now_ns();
            ensure!(
                st2.created == created,
                "update changed created: {} != {created}",
                st2.created
            );
            ensure!(
                (u1..=u2).contains(&st2.updated),
                "updated {} not within [{u1}, {u2}]",
                st2.updated
            );
            check(&st2).context("after update with no field paths")?;
            ensure!(
                st2.labels == expected,
                "labels {:?}, expected {expected:?}",
                st2.labels
            );

            let mut st = st2;
            st.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
            let st = fx.store().update(&st, &["labels.l1", "labels.l2"])?;
            let expected = labels(&[("l1", "updated"), ("l3", "v3"), (GC_ROOT, &root_time)]);
            ensure!(
                st.labels == expected,
                "labels.l1+labels.l2: {:?}, expected {expected:?}",
                st.labels
            );

            let mut st = st;
            let expected = labels(&[("l4", "v4"), (GC_ROOT, &root_time)]);
            st.labels = expected.clone();
            let st = fx.store().update(&st, &["labels"])?;
            ensure!(
                st.labels == expected,
                "labels: {:?}, expected {expected:?}",
                st.labels
            );

            // containerd's writeMap: an empty value deletes the label.
            let mut st = st;
            st.labels = labels(&[("l4", "")]);
            let st = fx.store().update(&st, &["labels.l4"])?;
            let expected = labels(&[(GC_ROOT, &root_time)]);
            ensure!(
                st.labels == expected,
                "empty value: {:?}, expected {expected:?}",
                st.labels
            );

            let mut st = st;
            st.parent = Some("doesnotexist".into());
            expect_kind(
                fx.store().update(&st, &["parent"]),
                ErrorKind::Invalid,
                "update of the parent",
            )?;
            check(&fx.stat(name)?).context("after the refused update")?;
            Ok(())
        };
        run().with_context(|| format!("snapshot {name}"))?;
    }
    Ok(())
}

/// A key can be reused after Remove, by Prepare or View, and a committed
/// name can be reused after Remove.
pub fn remove(fx: &Fixture) -> Result<()> {
    fx.prepare("committed-a", None)?;
    fx.commit("committed-1", "committed-a")?;
    fx.prepare("reuse-1", Some("committed-1"))?;
    fx.remove("reuse-1")?;
    fx.view("reuse-1", Some("committed-1"))?;
    fx.remove("reuse-1")?;
    fx.prepare("reuse-1", None)?;
    fx.remove("committed-1")?;
    fx.commit("committed-1", "reuse-1")?;
    ensure!(
        fx.stat("committed-1")?.parent.is_none(),
        "the reused name kept the old parent"
    );
    Ok(())
}

/// Walk filters: comma is AND, separate filters are OR, a bare field path
/// means "present", and kind, name, parent and labels all filter exactly.
pub fn walk(fx: &Fixture) -> Result<()> {
    let gc = labels(&[(GC_ROOT, "check-walk")]);
    let with_l = |v: &str| labels(&[("l", v), (GC_ROOT, "check-walk")]);
    let opts = Default::default();
    {
        let mut s = fx.store();
        s.prepare("a-np", None, &gc, &opts)?;
        s.prepare("p-tmp", None, &gc, &opts)?;
        s.commit("p", "p-tmp", &gc)?;
        s.prepare("a", Some("p"), &gc, &opts)?;
        s.view("v", Some("p"), &gc)?;
        s.prepare("p-wl-tmp", None, &gc, &opts)?;
        s.commit("p-wl", "p-wl-tmp", &with_l("1"))?;
        s.prepare("a-wl", Some("p-wl"), &with_l("2"), &opts)?;
        s.view("v-wl", Some("p-wl"), &with_l("3"))?;
        s.prepare("a-np-wl", None, &with_l("2"), &opts)?;
    }
    let table: &[(&[&str], &[&str])] = &[
        (
            &[r#"labels."containerd.io/gc.root"==check-walk"#],
            &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
        ),
        (
            &[r#"kind==active,labels."containerd.io/gc.root"==check-walk"#],
            &["a-np", "a", "a-wl", "a-np-wl"],
        ),
        (
            &[r#"kind==view,labels."containerd.io/gc.root"==check-walk"#],
            &["v", "v-wl"],
        ),
        (
            &[r#"kind==committed,labels."containerd.io/gc.root"==check-walk"#],
            &["p", "p-wl"],
        ),
        (&["name==p", "name==a-np-wl"], &["p", "a-np-wl"]),
        (&["name==a-wl,labels.l"], &["a-wl"]),
        (&["parent==p"], &["a", "v"]),
        (
            &[r#"parent!="",labels."containerd.io/gc.root"==check-walk"#],
            &["a", "v", "a-wl", "v-wl"],
        ),
        (&["labels.l"], &["p-wl", "a-wl", "v-wl", "a-np-wl"]),
        (&["labels.l==2"], &["a-wl", "a-np-wl"]),
    ];
    let mut failures = Vec::new();
    for (filters, want) in table {
        let mut got = Vec::new();
        fx.store().walk(filters, |i| {
            got.push(i.name.clone());
            Ok(())
        })?;
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        if got != want {
            failures.push(format!("{filters:?}: got {got:?}, expected {want:?}"));
        }
    }
    ensure!(
        failures.is_empty(),
        "walk filters:\n  {}",
        failures.join("\n  ")
    );
    Ok(())
}

/// docker#21555: a file rewritten in a child layer with the same size shows
/// its new content, its mode change is kept, five times, each run starting
/// at a new second.
pub fn layer_file_update(fx: &Fixture) -> Result<()> {
    let l1 = vec![
        C::dir("/etc", 0o700),
        C::file("/etc/hosts", "mydomain 10.0.0.1", 0o644),
        C::file("/etc/profile", "PATH=/usr/bin", 0o644),
    ];
    let l2 = vec![
        C::file("/etc/hosts", "mydomain 10.0.0.2", 0o644),
        C::file("/etc/profile", "PATH=/usr/bin", 0o666),
        C::dir("/root", 0o700),
        C::file("/root/.bashrc", "PATH=/usr/sbin:/usr/bin", 0o644),
    ];
    for run in 0..5 {
        if run > 0 {
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
            std::thread::sleep(
                Duration::from_secs(1) - Duration::from_nanos(u64::from(now.subsec_nanos())),
            );
        }
        fx.check_snapshots(&[l1.clone(), l2.clone()])
            .with_context(|| format!("run {}", run + 1))?;
    }
    Ok(())
}

/// docker#25244: a directory removed and recreated in a child layer does
/// not show the lower layer's contents again, in any later layer.
pub fn remove_directory_in_lower_layer(fx: &Fixture) -> Result<()> {
    fx.check_snapshots(&[
        vec![C::dir("/lib", 0o700), C::file("/lib/hidden", "", 0o644)],
        vec![
            C::remove_all("/lib"),
            C::dir("/lib", 0o700),
            C::file("/lib/not-hidden", "", 0o644),
        ],
        vec![C::file("/lib/newfile", "", 0o644)],
    ])?;
    Ok(())
}

/// docker#20240, #24913, #28391: ownership changes of lower directories and
/// files survive commit.
pub fn chown(fx: &Fixture) -> Result<()> {
    fx.check_snapshots(&[
        vec![
            C::dir("/opt", 0o700),
            C::dir("/opt/a", 0o700),
            C::dir("/opt/a/b", 0o700),
            C::file("/opt/a/b/file.txt", "hello", 0o644),
        ],
        vec![
            C::chown("/opt", 1, 1),
            C::chown("/opt/a", 1, 1),
            C::chown("/opt/a/b", 1, 1),
            C::chown("/opt/a/b/file.txt", 1, 1),
        ],
    ])?;
    Ok(())
}

/// docker#27298: directory owners and modes are right after commit through
/// chowns, removals and re-creations across three layers.
pub fn directory_permission_on_commit(fx: &Fixture) -> Result<()> {
    fx.check_snapshots(&[
        vec![
            C::dir("/dir1", 0o700),
            C::dir("/dir2", 0o700),
            C::dir("/dir3", 0o700),
            C::dir("/dir4", 0o700),
            C::file("/dir4/f1", "...", 0o644),
            C::dir("/dir5", 0o700),
            C::file("/dir5/f1", "...", 0o644),
            C::chown("/dir1", 1, 1),
            C::chown("/dir2", 1, 1),
            C::chown("/dir3", 1, 1),
            C::chown("/dir5", 1, 1),
            C::chown("/dir5/f1", 1, 1),
        ],
        vec![
            C::chown("/dir2", 0, 0),
            C::remove_all("/dir3"),
            C::chown("/dir4", 1, 1),
            C::chown("/dir4/f1", 1, 1),
        ],
        vec![
            C::dir("/dir3", 0o700),
            C::chown("/dir3", 1, 1),
            C::remove_all("/dir5"),
            C::dir("/dir5", 0o700),
            C::chown("/dir5", 1, 1),
        ],
    ])?;
    Ok(())
}

/// A committed snapshot with a child cannot be removed (InUse); once the
/// child is gone the chain can be removed top-down, data included.
pub fn remove_intermediate_snapshot(fx: &Fixture) -> Result<()> {
    let base = k(fx, "base");
    fx.prepare(&base, None)?;
    fx.with_mounted(&base, |_| Ok(()))?;
    let committed_base = k(fx, "committed-base");
    fx.commit(&committed_base, &base)?;
    let intermediate = k(fx, "intermediate");
    fx.prepare(&intermediate, Some(&committed_base))?;
    let committed_inter = k(fx, "committed-inter");
    fx.commit(&committed_inter, &intermediate)?;
    let top = k(fx, "toplayer");
    fx.prepare(&top, Some(&committed_inter))?;

    expect_kind(
        fx.store().remove(&committed_inter),
        ErrorKind::InUse,
        "remove of the intermediate layer",
    )?;
    fx.remove(&top)?;
    fx.remove(&committed_inter)?;
    fx.remove(&committed_base)?;
    ensure!(
        fx.snapshot_names()?.is_empty(),
        "snapshots left: {:?}",
        fx.snapshot_names()?
    );
    fx.expect_no_residue(None)
}

/// A file deleted in a child stays deleted, also through an empty layer.
pub fn deleted_files_in_child_snapshot(fx: &Fixture) -> Result<()> {
    fx.check_snapshots(&[
        vec![
            C::file("/foo", "foo\n", 0o777),
            C::file("/foobar", "foobar\n", 0o777),
        ],
        vec![C::remove_all("/foobar")],
        vec![],
    ])?;
    Ok(())
}

/// A file hardlinked from a lower directory into a new one, whose old names
/// are then removed, keeps its content at the new name.
pub fn move_file_from_lower_layer(fx: &Fixture) -> Result<()> {
    fx.check_snapshots(&[
        vec![
            C::dir("/dir1", 0o700),
            C::file("/dir1/f1", "Hello", 0o644),
            C::dir("/dir2", 0o700),
            C::file("/dir2/f2", "...", 0o644),
        ],
        vec![
            C::dir("/dir3", 0o700),
            C::file("/dir3/f1", "Hello", 0o644),
            C::remove_all("/dir1"),
            C::link("/dir2/f2", "/dir3/f2"),
            C::remove_all("/dir2/f2"),
        ],
    ])?;
    Ok(())
}

/// A view is mounted read-only: writing into it fails (EROFS expected), and
/// nothing reaches the committed layer. View and parent are then removable.
pub fn view_readonly(fx: &Fixture) -> Result<()> {
    let preparing = k(fx, "preparing");
    fx.prepare(&preparing, None)?;
    let committed = k(fx, "committed");
    fx.commit(&committed, &preparing)?;
    let view = k(fx, "view");
    let mounts = fx.view(&view, Some(&committed))?;
    let wrote = fx.with_mounts(&mounts, |r| {
        Ok(std::fs::write(r.join("testfile"), "testcontent"))
    })?;
    match wrote {
        Ok(()) => bail!("writing into a view mount succeeded"),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error()) => {}
        Err(e) => eprintln!(
            "{}: write into a view failed with {e} (EROFS expected, any error accepted)",
            fx.label()
        ),
    }
    let second = k(fx, "view2");
    fx.view(&second, Some(&committed))?;
    let found = fx.with_mounted(&second, |r| Ok(r.join("testfile").exists()))?;
    ensure!(!found, "the refused write is visible in another view");
    fx.remove(&second)?;
    fx.remove(&view)?;
    fx.remove(&committed)
}

/// Stat can be called inside a Walk callback (no deadlock) and agrees with
/// the walked Info on every field.
pub fn stat_in_walk(fx: &Fixture) -> Result<()> {
    let prefix = "stats-in-walk-";
    let c1 = format!("{prefix}c1");
    let c2 = format!("{prefix}c2");
    fx.prepare(&format!("{c1}-a"), None)?;
    fx.commit(&c1, &format!("{c1}-a"))?;
    fx.prepare(&format!("{c2}-a"), Some(&c1))?;
    fx.commit(&c2, &format!("{c2}-a"))?;
    fx.prepare(&format!("{prefix}a1"), Some(&c2))?;
    fx.view(&format!("{prefix}v1"), Some(&c2))?;
    let s = fx.store();
    let mut seen = 0;
    s.walk(&[], |si| {
        if !si.name.starts_with(prefix) {
            return Ok(());
        }
        seen += 1;
        let si2 = s.stat(&si.name)?;
        if *si != si2 {
            return Err(drivers_host::Error::Precondition(format!(
                "walk says {si:?}, stat says {si2:?}"
            )));
        }
        Ok(())
    })?;
    ensure!(seen == 4, "walk visited {seen} of the 4 snapshots");
    Ok(())
}

/// Close succeeds twice.
pub fn close_twice(fx: &Fixture) -> Result<()> {
    let n = format!("closeTwice-{}", drivers_host::store::random_hex(4));
    let prepare = format!("{n}-prepare");
    fx.prepare(&prepare, None)?;
    fx.commit(&n, &prepare)?;
    fx.remove(&n)?;
    let mut s = fx.store();
    s.close().context("first close")?;
    s.close().context("second close")?;
    Ok(())
}

/// The root of a new base layer is 0755.
pub fn root_permission(fx: &Fixture) -> Result<()> {
    let preparing = k(fx, "preparing");
    let mounts = fx.prepare(&preparing, None)?;
    let mode = fx.with_mounts(&mounts, |r| Ok(std::fs::metadata(r)?.mode() & 0o777))?;
    ensure!(mode == 0o755, "expected 0755, got 0{mode:o}");
    Ok(())
}

/// Backends that, like containerd's overlayfs, cannot rename a directory
/// of a lower layer: overlay2 mounts with `redirect_dir=off` (its diff reads
/// the upper directory alone), so overlayfs answers EXDEV
/// (Documentation/filesystems/overlayfs.rst, "Renaming directories").
const NO_LOWER_DIR_RENAME: &[&str] = &["overlay2"];

/// docker#25409: renames in a child layer — a file renamed over another, a
/// file renamed, and (except where the backend cannot) a lower directory
/// renamed — give the same tree as on a plain directory. Where the
/// directory rename is skipped it must fail with EXDEV, not half-work.
pub fn rename(fx: &Fixture) -> Result<()> {
    let l1 = vec![
        C::dir("/dir1", 0o700),
        C::dir("/somefiles", 0o700),
        C::file("/somefiles/f1", "was here first!", 0o644),
        C::file("/somefiles/f2", "nothing interesting", 0o644),
    ];
    let skip_dir = NO_LOWER_DIR_RENAME.contains(&fx.name());
    let mut l2 = Vec::new();
    if !skip_dir {
        l2.push(C::rename("/dir1", "/dir2"));
    }
    l2.extend([
        C::file("/somefiles/f1-overwrite", "new content 1", 0o644),
        C::rename("/somefiles/f1-overwrite", "/somefiles/f1"),
        C::rename("/somefiles/f2", "/somefiles/f3"),
    ]);
    let names = fx.check_snapshots(&[l1, l2])?;
    if skip_dir {
        let key = "rename-dir-probe";
        fx.prepare(key, Some(&names[0]))?;
        let r = fx.with_mounted(key, |root| {
            Ok(std::fs::rename(root.join("dir1"), root.join("dir2")))
        })?;
        match r {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {}
            Err(e) => bail!("renaming a lower directory failed with {e}, expected EXDEV"),
            Ok(()) => bail!(
                "renaming a lower directory succeeded on {}: drop it from NO_LOWER_DIR_RENAME",
                fx.name()
            ),
        }
    }
    Ok(())
}

/// 128 layers stack correctly: before and after each layer's change its
/// mount equals a flat directory with the same history, and a view of the
/// top equals it too.
pub fn layers_128_mount(fx: &Fixture) -> Result<()> {
    let mut appliers = vec![vec![
        C::file("/bottom", "way at the bottom\n", 0o777),
        C::file("/overwriteme", "FIRST!\n", 0o777),
        C::dir("/addhere", 0o755),
        C::dir("/onlyme", 0o755),
        C::file("/onlyme/bottom", "bye!\n", 0o777),
    ]];
    for i in 1..=127 {
        appliers.push(vec![
            C::file("/overwriteme", format!("{i} WAS HERE!\n"), 0o777),
            C::file(&format!("/addhere/file-{i}"), "same\n", 0o755),
            C::remove_all("/onlyme"),
            C::dir("/onlyme", 0o755),
            C::file(&format!("/onlyme/file-{i}"), "only me!\n", 0o777),
        ]);
    }
    let flat = fx.flat_dir()?;
    let mut parent: Option<String> = None;
    for (i, applier) in appliers.iter().enumerate() {
        let preparing = k(fx, &format!("prepare-layer-{i}"));
        let mounts = fx.prepare(&preparing, parent.as_deref())?;
        let before = format!("{}: layer {i} before apply", fx.label());
        let after = format!("{}: layer {i} after apply", fx.label());
        fx.with_mounts(&mounts, |r| {
            tree::expect_equal(&before, &flat, r, CompareOpts::default())?;
            fschange::apply(&flat, applier)?;
            fschange::apply(r, applier)?;
            tree::expect_equal(&after, &flat, r, CompareOpts::default())
        })?;
        let committed = k(fx, &format!("committed-{i}"));
        fx.commit(&committed, &preparing)?;
        parent = Some(committed);
    }
    let view = k(fx, "fullview");
    let mounts = fx.view(&view, parent.as_deref())?;
    let label = format!("{}: full view", fx.label());
    fx.with_mounts(&mounts, |r| {
        tree::expect_equal(&label, &flat, r, CompareOpts::default())
    })
}
