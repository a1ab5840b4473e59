//! What containers/storage's `drivers/graphtest` adds to moby's
//! (conformance.md 2.3). Its empty-root convention (0555) is not ours: the
//! root of a base layer is 0755 here (containerd's and moby's).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use drivers_diff::ChangeKind;
use drivers_host::layers::Expect;

use super::graphtest::{expect_changes, make_base, random_content, verify_base};
use crate::Fixture;
use crate::fschange::{self, FsChange as C};
use crate::rawtar::{self, Entry};

fn root_mode(p: &Path) -> Result<u32> {
    Ok(std::fs::metadata(p)?.mode() & 0o7777)
}

/// A snapshot shows its base's entries; a chmod of its root to 0711
/// survives commit and is inherited by its child (the grandchild of the
/// base) and shown by a view.
pub fn create_snap_root_mode(fx: &Fixture) -> Result<()> {
    make_base(fx, "Base-rw")?;
    fx.commit("Base", "Base-rw")?;
    fx.prepare("Snap-rw", Some("Base"))?;
    verify_base(fx, "Snap-rw")?;
    fx.with_mounted("Snap-rw", |r| {
        fschange::apply(r, &[C::chmod("/", 0o711)])?;
        ensure!(
            root_mode(r)? == 0o711,
            "chmod of the mounted root did not take"
        );
        Ok(())
    })?;
    fx.commit("Snap", "Snap-rw")?;
    fx.prepare("SecondSnap", Some("Snap"))?;
    let mode = fx.with_mounted("SecondSnap", root_mode)?;
    ensure!(
        mode == 0o711,
        "grandchild root mode {mode:04o}, expected 0711"
    );
    verify_base(fx, "SecondSnap")?;
    fx.view("Snap-view", Some("Snap"))?;
    let mode = fx.with_mounted("Snap-view", root_mode)?;
    ensure!(mode == 0o711, "view root mode {mode:04o}, expected 0711");
    Ok(())
}

/// Read-only and read-write clones of a template layer (a view of it and a
/// snapshot prepared on it) show no changes against the template; a clone
/// made on the template's parent by applying the template's diff shows
/// exactly `/testfile.txt` added, like the template itself.
pub fn create_from_template(fx: &Fixture) -> Result<()> {
    make_base(fx, "Base-rw")?;
    fx.commit("Base", "Base-rw")?;
    fx.committed(
        "Template",
        Some("Base"),
        &[C::file("/testfile.txt", "test content", 0o644)],
    )?;
    let add = BTreeSet::from([("/testfile.txt".to_owned(), ChangeKind::Add.to_string())]);

    let changes_of = |key: &str| -> Result<Vec<drivers_diff::Change>> {
        let src = fx.store().diff_source(key)?;
        drivers_diff::changes(&src).with_context(|| format!("changes of {key}"))
    };
    expect_changes(&changes_of("Template")?, &add).context("the template against its parent")?;

    fx.view("ro-clone", Some("Template"))?;
    expect_changes(&changes_of("ro-clone")?, &BTreeSet::new())
        .context("RO clone against the template")?;
    fx.prepare("rw-clone", Some("Template"))?;
    expect_changes(&changes_of("rw-clone")?, &BTreeSet::new())
        .context("RW clone against the template")?;

    let mut tar = Vec::new();
    fx.store().write_diff("Template", &mut tar)?;
    fx.prepare("parent-clone", Some("Base"))?;
    let target = fx.store().apply_target("parent-clone")?;
    drivers_archive::apply(&tar[..], &target, &Default::default())?;
    expect_changes(&changes_of("parent-clone")?, &add)
        .context("clone against the template's parent")?;
    let content = fx.with_mounted("parent-clone", |r| {
        Ok(std::fs::read(r.join("testfile.txt"))?)
    })?;
    ensure!(
        content == b"test content",
        "the clone has the wrong content"
    );
    Ok(())
}

/// 10-deep nested directories: for each depth, the changes of a layer that
/// creates the path, of a child that deletes it at that depth (ancestors
/// Modify, the deleted one Delete), and of a grandchild that recreates it
/// (ancestors Modify, the rest Add) are exactly right.
pub fn echo(fx: &Fixture) -> Result<()> {
    const COMPONENTS: usize = 10;
    let changes_of = |key: &str| -> Result<Vec<drivers_diff::Change>> {
        let src = fx.store().diff_source(key)?;
        Ok(drivers_diff::changes(&src)?)
    };
    for depth in 0..COMPONENTS {
        let run = || -> Result<()> {
            let (base, second, third) = (
                format!("base-{depth}"),
                format!("second-{depth}"),
                format!("third-{depth}"),
            );
            let mut paths = Vec::new();
            let mut path = String::new();
            for i in 0..COMPONENTS - 1 {
                path = format!("{path}/subdir{}", i + 1);
                paths.push(path.clone());
            }
            paths.push(format!("{path}/file"));
            let content = random_content(128, depth as u64);

            let mut edits: Vec<C> = paths[..COMPONENTS - 1]
                .iter()
                .map(|p| C::dir(p, 0o700))
                .collect();
            edits.push(C::file(&paths[COMPONENTS - 1], &content, 0o600));
            let rw = format!("{base}-rw");
            fx.prepare(&rw, None)?;
            fx.apply_mounted(&rw, &edits)?;
            let expected: BTreeSet<_> = paths
                .iter()
                .map(|p| (p.clone(), ChangeKind::Add.to_string()))
                .collect();
            expect_changes(&changes_of(&rw)?, &expected).context("base")?;
            fx.commit(&base, &rw)?;

            let rw2 = format!("{second}-rw");
            fx.prepare(&rw2, Some(&base))?;
            fx.apply_mounted(&rw2, &[C::remove_all(&paths[depth])])?;
            let mut expected: BTreeSet<_> = paths[..depth]
                .iter()
                .map(|p| (p.clone(), ChangeKind::Modify.to_string()))
                .collect();
            expected.insert((paths[depth].clone(), ChangeKind::Delete.to_string()));
            expect_changes(&changes_of(&rw2)?, &expected).context("second")?;
            fx.commit(&second, &rw2)?;

            fx.prepare(&third, Some(&second))?;
            let mut edits: Vec<C> = paths[depth..COMPONENTS - 1]
                .iter()
                .map(|p| C::dir(p, 0o700))
                .collect();
            edits.push(C::file(&paths[COMPONENTS - 1], &content, 0o600));
            fx.apply_mounted(&third, &edits)?;
            let mut expected: BTreeSet<_> = paths[..depth]
                .iter()
                .map(|p| (p.clone(), ChangeKind::Modify.to_string()))
                .collect();
            for p in &paths[depth..] {
                expected.insert((p.clone(), ChangeKind::Add.to_string()));
            }
            expect_changes(&changes_of(&third)?, &expected).context("third")?;
            fx.remove(&third)?;
            fx.remove(&second)?;
            fx.remove(&base)
        };
        run().with_context(|| format!("depth {depth}"))?;
    }
    fx.expect_no_residue(None)
}

/// Walk lists exactly the snapshots that exist — committed, active and
/// views, image layers included — and `layers()` exactly the image layers;
/// removed ones disappear from both.
pub fn list_layers(fx: &Fixture) -> Result<()> {
    let mut want = BTreeSet::new();
    let mut parent: Option<String> = None;
    for i in 1..=5 {
        let name = format!("layer-{i}");
        fx.committed(
            &name,
            parent.as_deref(),
            &[C::file(&format!("/f{i}"), "x", 0o644)],
        )?;
        want.insert(name.clone());
        parent = Some(name);
    }
    fx.prepare("active", Some("layer-5"))?;
    fx.view("view", Some("layer-3"))?;
    want.extend(["active".to_owned(), "view".to_owned()]);
    let mut chains = BTreeSet::new();
    let mut lparent = None;
    for i in 0..2 {
        let tar = rawtar::tar(&[Entry::file(format!("image-{i}"), format!("{i}\n"))]);
        let a = fx
            .store()
            .apply_layer(&tar[..], lparent.as_ref(), &Expect::default())?;
        chains.insert(a.chain_id.to_string());
        want.insert(a.chain_id.to_string());
        lparent = Some(a.chain_id);
    }
    let got: BTreeSet<String> = fx.snapshot_names()?.into_iter().collect();
    ensure!(got == want, "walk: {got:?}, expected {want:?}");
    let layers: BTreeSet<String> = fx
        .store()
        .layers()?
        .into_iter()
        .map(|l| l.chain_id)
        .collect();
    ensure!(
        layers == chains,
        "layers(): {layers:?}, expected {chains:?}"
    );

    fx.remove("active")?;
    fx.remove("view")?;
    let top = lparent.context("no image layer")?;
    fx.store().remove_layer(&top)?;
    want.remove("active");
    want.remove("view");
    want.remove(top.as_str());
    chains.remove(top.as_str());
    let got: BTreeSet<String> = fx.snapshot_names()?.into_iter().collect();
    ensure!(
        got == want,
        "walk after removals: {got:?}, expected {want:?}"
    );
    let layers: BTreeSet<String> = fx
        .store()
        .layers()?
        .into_iter()
        .map(|l| l.chain_id)
        .collect();
    ensure!(
        layers == chains,
        "layers() after removal: {layers:?}, expected {chains:?}"
    );
    Ok(())
}
