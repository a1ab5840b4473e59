//! End-to-end tests of the real `drivers` binary, as root, on real
//! filesystems: the CLI contract of `spec/cli.md` (exit codes, `--json`
//! shapes, "a failed command leaves nothing behind"), images made by real
//! tools, hostile layers, killed and concurrent imports, deep chains and
//! mount reference counting.
//!
//! One trial per (backend × test), backends as `drivers check --json` lists
//! them; see `cli_root/harness.rs` for the gating (`DRIVERS_TEST_ROOT`,
//! `CI`) and the per-test root and its guard.
//!
//! ```sh
//! cargo build --bin drivers
//! DRIVERS_TEST_ROOT=1 DRIVERS_BIN=$PWD/target/debug/drivers \
//!     cargo test -p drivers-it --test cli_root -- --test-threads 2
//! ```

#[path = "cli_root/harness.rs"]
mod harness;
#[path = "cli_root/inputs.rs"]
mod inputs;
#[path = "cli_root/listing.rs"]
mod listing;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;

use harness::{BackendPlan, Gate, World, mount_count, s, tool};
use inputs::{LayoutLayer, RawTar, sha256, write_layout};
use listing::{compare, expected_tricky_on, tree};

/// A test: a plain function of the backend it runs on.
struct Test {
    name: &'static str,
    run: fn(&str) -> Result<()>,
    /// Only on this backend (`None`: on every backend).
    only: Option<&'static str>,
}

const fn on_all(name: &'static str, run: fn(&str) -> Result<()>) -> Test {
    Test {
        name,
        run,
        only: None,
    }
}

static TESTS: &[Test] = &[
    on_all("contract_basics", contract_basics),
    on_all("fixture_oci_tricky", fixture_oci_tricky),
    on_all("fixture_umoci_insert", fixture_umoci_insert),
    on_all("archives_share_layers", archives_share_layers),
    on_all("round_trip_commit_export", round_trip_commit_export),
    on_all("hostile::dotdot", hostile_dotdot),
    on_all("hostile::absolute", hostile_absolute),
    on_all("hostile::symlink_then_write", hostile_symlink_then_write),
    on_all("hostile::hardlink_outside", hostile_hardlink_outside),
    on_all("hostile::whiteout_dotdot", hostile_whiteout_dotdot),
    on_all("hostile::device_outside", hostile_device_outside),
    on_all(
        "hostile::size_larger_than_data",
        hostile_size_larger_than_data,
    ),
    on_all("hostile::truncated_gzip", hostile_truncated_gzip),
    on_all("hostile::digest_mismatch", hostile_digest_mismatch),
    on_all("hostile::diff_id_mismatch", hostile_diff_id_mismatch),
    on_all("killed_import", killed_import),
    on_all("concurrent_imports", concurrent_imports),
    Test {
        name: "layers_500",
        run: layers_500,
        only: Some("overlay2"),
    },
    on_all("mount_refcount", mount_refcount),
    on_all("reset", reset),
    Test {
        name: "state_on_path",
        run: state_on_path,
        only: Some("overlay2"),
    },
    Test {
        name: "state_on_path",
        run: state_on_path,
        only: Some("vfs"),
    },
    Test {
        name: "zfs_spawns",
        run: zfs_spawns,
        only: Some("zfs"),
    },
    Test {
        name: "zfs_size_limit",
        run: zfs_size_limit,
        only: Some("zfs"),
    },
];

fn main() {
    let args = Arguments::from_args();
    let gate = harness::gate();
    match &gate {
        Gate::Ignore(why) => eprintln!("cli_root: every trial ignored: {why}"),
        Gate::Fail(why) => eprintln!("cli_root: every trial fails: {why}"),
        Gate::Run => {}
    }
    let plans = harness::backends(&gate);
    let mut trials = vec![Trial::test("listing::compare_tolerances", || {
        listing::self_check().map_err(|e| Failed::from(format!("{e:#}")))
    })];
    for plan in plans {
        if let (Gate::Ignore(why), Gate::Run) = (&plan.gate, &gate) {
            eprintln!("cli_root: {} ignored: {why}", plan.name);
        }
        for t in TESTS
            .iter()
            .filter(|t| t.only.is_none_or(|o| o == plan.name))
        {
            trials.push(trial(&plan, t));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    harness::remove_shared();
    conclusion.exit();
}

fn trial(plan: &BackendPlan, t: &'static Test) -> Trial {
    let backend = plan.name.clone();
    let gate = plan.gate.clone();
    let ignored = matches!(gate, Gate::Ignore(_));
    Trial::test(format!("{}::{}", plan.name, t.name), move || match gate {
        Gate::Run => drivers_it::gate::in_turn(&backend, || (t.run)(&backend))
            .map_err(|e| Failed::from(format!("{e:#}"))),
        // Reached only with --include-ignored: say why instead of passing.
        Gate::Ignore(why) | Gate::Fail(why) => Err(Failed::from(why)),
    })
    .with_ignored_flag(ignored)
}

// ---------------------------------------------------------------------------
// Helpers shared by the tests.

/// The entries of a directory (none if it does not exist).
fn entries(dir: &Path) -> Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v = rd
                .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>>>()?;
            v.sort();
            Ok(v)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("read {}", dir.display())),
    }
}

/// The store holds nothing and the disk agrees: `layer ls`, `image ls` and
/// `container ls` are empty, nothing is mounted under the root, and the
/// backend's directories for layers, half-built layers (`tmp/`), overlay
/// links (`l/`), staged files (`staging/`), mounts and blobs are empty or
/// absent. What a failed or killed command must leave (spec/cli.md).
fn assert_store_empty(w: &World) -> Result<()> {
    for what in ["layer", "image", "container"] {
        let v = w.json(&[what, "ls"])?;
        ensure!(
            v.as_array().is_some_and(Vec::is_empty),
            "`{what} ls` is not empty: {v}"
        );
    }
    let m = w.host_mounts()?;
    ensure!(m.is_empty(), "still mounted under the root: {m:?}");
    let ds = w.zfs_datasets()?;
    ensure!(ds.is_empty(), "zfs datasets left: {ds:?}");
    let st = w.state();
    for dir in [
        "layers",
        "tmp",
        "l",
        "staging",
        "mounts",
        "content/sha256",
        "datasets",
        "loopback/subvolumes",
        "loopback/subvolumes-tmp",
    ] {
        let left = entries(&st.join(dir))?;
        ensure!(
            left.is_empty(),
            "{} is not empty: {left:?}",
            st.join(dir).display()
        );
    }
    Ok(())
}

/// `container create NAME --image IMAGE` then mount it; returns the path.
fn container_on(w: &World, name: &str, image: &str) -> Result<PathBuf> {
    w.ok(&["container", "create", name, "--image", image])?;
    w.mount(name, None)
}

/// The `layers` of `image inspect --json`, as `(digest, diff_id, chain_id)`.
fn inspect_layers(w: &World, image: &str) -> Result<Vec<(String, String, String)>> {
    let v = w.json(&["image", "inspect", image])?;
    v["layers"]
        .as_array()
        .context("inspect: no layers list")?
        .iter()
        .map(|l| {
            let f = |k: &str| {
                l[k].as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("layer without {k}: {l}"))
            };
            Ok((f("digest")?, f("diff_id")?, f("chain_id")?))
        })
        .collect()
}

/// The one entry of an `image import --json` report.
fn imported_one(v: &Value) -> Result<&Value> {
    match v.as_array().map(Vec::as_slice) {
        Some([one]) => Ok(one),
        _ => bail!("`image import --json` should report one image: {v}"),
    }
}

/// `sha256:` followed by 64 lowercase hex digits.
fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `sha256(parent + " " + diff_id)`, the OCI chain id.
fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_owned(),
        Some(p) => sha256(format!("{p} {diff_id}").as_bytes()),
    }
}

// ---------------------------------------------------------------------------
// 1. The contract.

/// The CLI contract of spec/cli.md: `check --json` is a list of
/// `{name, usable, reason}`; `image inspect --json` is `{name, layers:
/// [{digest, diff_id, chain_id, size}], top_chain_id}` with true digests
/// and chain ids; usage errors exit 2; failed operations (missing image,
/// config with an unknown key, a backend not in this build, removing a used
/// layer or a mounted container) exit 1 with exactly one `error:` line
/// (plus at most a `hint:`), print nothing on stdout and change nothing.
fn contract_basics(backend: &str) -> Result<()> {
    let w = World::new(backend)?;

    // check --json
    let v = w.json(&["check"])?;
    let rows = v.as_array().context("check --json is not a list")?;
    for r in rows {
        let name = r["name"]
            .as_str()
            .with_context(|| format!("check entry without a name: {r}"))?;
        let usable = r["usable"]
            .as_bool()
            .with_context(|| format!("check entry without usable: {r}"))?;
        let reason = &r["reason"];
        ensure!(
            r.as_object().is_some_and(|o| o.contains_key("reason"))
                && (reason.is_null() || reason.is_string()),
            "check entry {name}: reason must be null or a string: {r}"
        );
        // An unusable backend says why; a usable one has nothing to explain.
        ensure!(
            usable == reason.is_null(),
            "check entry {name}: usable={usable} with reason {reason}"
        );
    }
    for name in ["vfs", "overlay2", "btrfs", "zfs", backend] {
        ensure!(
            rows.iter().any(|r| r["name"] == name),
            "check --json does not list {name}: {v}"
        );
    }

    // image inspect --json, against the fixture's own manifest and config.
    let tricky = inputs::tricky_layout();
    w.ok(&["image", "import", s(&tricky)])?;
    let v = w.json(&["image", "inspect", "latest"])?;
    ensure!(v["name"] == "latest", "inspect name: {v}");
    let layers = v["layers"]
        .as_array()
        .context("inspect: layers is not a list")?;
    let inputs::LayoutImage {
        blobs: want_blobs,
        diff_ids: want_diff_ids,
    } = inputs::layout_image(&tricky)?;
    ensure!(
        layers.len() == want_blobs.len(),
        "inspect lists {} layers, the image has {}",
        layers.len(),
        want_blobs.len()
    );
    let mut parent: Option<String> = None;
    for (i, l) in layers.iter().enumerate() {
        let field = |k: &str| {
            l[k].as_str()
                .with_context(|| format!("layer {i}: no string {k}: {l}"))
        };
        let (digest, diff_id, chain) = (field("digest")?, field("diff_id")?, field("chain_id")?);
        let size = l["size"]
            .as_u64()
            .with_context(|| format!("layer {i}: size is not a number: {l}"))?;
        ensure!(
            is_digest(digest) && is_digest(diff_id) && is_digest(chain),
            "layer {i}: malformed digests: {l}"
        );
        ensure!(
            (digest.to_owned(), size) == want_blobs[i],
            "layer {i}: digest/size {digest}/{size}, manifest says {:?}",
            want_blobs[i]
        );
        ensure!(
            diff_id == want_diff_ids[i],
            "layer {i}: diff_id {diff_id}, config says {}",
            want_diff_ids[i]
        );
        let want_chain = chain_id(parent.as_deref(), diff_id);
        ensure!(
            chain == want_chain,
            "layer {i}: chain_id {chain}, computed {want_chain}"
        );
        parent = Some(chain.to_owned());
    }
    ensure!(
        v["top_chain_id"].as_str() == parent.as_deref(),
        "top_chain_id {} is not the last chain id {parent:?}",
        v["top_chain_id"]
    );

    // Usage errors: clap's exit 2.
    for args in [
        &["frobnicate"][..],
        &["image", "import"],
        &["container", "create", "c1"],
        &["image", "inspect"],
        &["--json", "layer", "rm"],
        &["image", "ls", "--no-such-flag"],
    ] {
        w.run(args)?.usage_error()?;
    }

    // Operation failures: exit 1, one error line, nothing on stdout, with
    // and without --json.
    let config = std::fs::read(w.root.join("config.toml")).context("read config.toml")?;
    for args in [
        &["image", "inspect", "no-such-image:1"][..],
        &["--json", "image", "inspect", "no-such-image:1"],
    ] {
        let e = w.fails(args)?;
        ensure!(
            e.contains("no-such-image"),
            "the error does not name the image: {e}"
        );
    }
    let bad = w.base.join("bad.toml");
    std::fs::write(&bad, "version = 1\nbakend = \"vfs\"\n")?;
    let e = w.fails(&["--config", s(&bad), "image", "ls"])?;
    ensure!(
        e.contains("bakend"),
        "the error does not name the unknown key: {e}"
    );
    let e = w.fails(&["select", "btrfs"])?;
    ensure!(
        e.contains("btrfs"),
        "the error does not name the backend: {e}"
    );
    // A refused select leaves the config and the active backend alone.
    ensure!(
        std::fs::read(w.root.join("config.toml"))? == config,
        "a refused `select btrfs` changed config.toml"
    );
    let st = w.json(&["status"])?;
    ensure!(
        st["backend"] == backend,
        "after a refused select the backend is {}",
        st["backend"]
    );

    let bottom = inspect_layers(&w, "latest")?[0].2.clone();
    w.fails(&["layer", "rm", &bottom])?;
    let n = w.json(&["layer", "ls"])?.as_array().map_or(0, Vec::len);
    ensure!(
        n == want_blobs.len(),
        "a refused `layer rm` left {n} layers of {}",
        want_blobs.len()
    );

    let m = container_on(&w, "c1", "latest")?;
    w.fails(&["container", "rm", "c1"])?;
    ensure!(
        mount_count(&m)? == 1,
        "a refused `container rm` unmounted {}",
        m.display()
    );
    let cs = w.json(&["container", "ls"])?;
    ensure!(
        cs.as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["name"] == "c1"),
        "a refused `container rm` changed the containers: {cs}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Fixtures made by real tools.

/// The oci-tricky fixture (buildah, umoci and GNU tar layers: whiteouts,
/// opaque dirs, type changes, hardlinks across layers, devices, xattrs,
/// PAX names, sparse files) imports, and a container's mounted rootfs
/// equals `expected-rootfs.txt` line for line, but for the two tolerances
/// of `listing::compare` (overlayfs link counts, kept holes).
fn fixture_oci_tricky(backend: &str) -> Result<()> {
    let w = World::new(backend)?;
    if backend == "zfs" && !drivers_zfs::stores_xattrs() {
        zfs_refuses_xattrs(&w)?;
    }
    let v = w.json(&["image", "import", s(&inputs::tricky_layout())])?;
    let one = imported_one(&v)?;
    ensure!(
        one["name"] == "latest" && one["layers"] == 5 && one["shared"] == 0,
        "import report: {v}"
    );
    let m = container_on(&w, "tricky", "latest")?;
    compare(
        &expected_tricky_on(backend)?,
        &tree(&m)?,
        backend == "overlay2",
    )
}

/// zfs-fuse stores no xattrs: with the default `xattrs = "refuse"` the
/// import of oci-tricky fails with one error line naming the first file
/// that has one (`xattr/cap-bin`) and the attribute, and leaves the store
/// empty; the world is then switched to `xattrs = "drop"`.
fn zfs_refuses_xattrs(w: &World) -> Result<()> {
    w.set_zfs_xattrs("refuse")?;
    let e = w.fails(&["image", "import", s(&inputs::tricky_layout())])?;
    ensure!(
        e.contains("xattr/cap-bin") && e.contains("security.capability"),
        "the refusal does not name the file and the xattr: {e}"
    );
    assert_store_empty(w).context("after the refused import")?;
    w.set_zfs_xattrs("drop")
}

/// The oci-umoci-insert fixture (Debian umoci's footer-less layer tars)
/// gives the tree its README states: `/` and the implied `/etc` 0755,
/// `/hello.txt` and `/etc/copy.txt` 0644 0:0 holding
/// `inserted by umoci insert\n`, nothing else.
fn fixture_umoci_insert(backend: &str) -> Result<()> {
    let w = World::new(backend)?;
    let v = w.json(&["image", "import", s(&inputs::umoci_insert_layout())])?;
    ensure!(imported_one(&v)?["layers"] == 2, "import report: {v}");
    let m = container_on(&w, "ins", "latest")?;
    let content = b"inserted by umoci insert\n";
    let hash = &sha256(content)["sha256:".len()..][..16];
    let file = |p: &str| format!("{p}\tf\t0644\t0:0\tsize={} sha256={hash}", content.len());
    let want = [
        "/\td\t0755\t0:0\t".to_owned(),
        "/etc\td\t0755\t0:0\t".to_owned(),
        file("/etc/copy.txt"),
        file("/hello.txt"),
    ];
    // The README does not state mtimes: compare everything before them.
    let got: Vec<String> = tree(&m)?
        .iter()
        .map(|l| l.split(" mtime=").next().unwrap_or(l).to_owned())
        .collect();
    ensure!(
        got == want,
        "tree of the umoci-insert image:\n{}\nwant:\n{}",
        got.join("\n"),
        want.join("\n")
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Archives.

/// The same image as an OCI archive and as a `docker save` archive (both
/// written by skopeo) and as the layout it came from, imported on one root:
/// the later imports share every layer by chain id (`shared` in the import
/// report, one set of layers in `layer ls`), all three give the same tree,
/// and `tricky:latest` resolves to the docker-normalised name.
fn archives_share_layers(backend: &str) -> Result<()> {
    let (oci, docker) = inputs::skopeo_archives()?;
    let w = World::new(backend)?;
    let first = w.json(&["image", "import", s(&oci)])?;
    let one = imported_one(&first)?;
    ensure!(
        one["name"] == "tricky-oci" && one["layers"] == 5 && one["shared"] == 0,
        "OCI archive import: {first}"
    );
    let second = w.json(&["image", "import", s(&docker)])?;
    let two = imported_one(&second)?;
    ensure!(
        two["name"] == "docker.io/library/tricky:latest"
            && two["layers"] == 5
            && two["shared"] == 5,
        "docker archive import should share all 5 layers: {second}"
    );
    let third = w.json(&[
        "image",
        "import",
        s(&inputs::tricky_layout()),
        "--name",
        "tricky-layout",
    ])?;
    ensure!(
        imported_one(&third)?["shared"] == 5,
        "layout import should share all 5 layers: {third}"
    );

    let v = w.json(&["image", "inspect", "tricky:latest"])?;
    ensure!(
        v["name"] == "docker.io/library/tricky:latest",
        "`image inspect tricky:latest` found {}",
        v["name"]
    );
    let chains = |img: &str| -> Result<Vec<String>> {
        Ok(inspect_layers(&w, img)?.into_iter().map(|l| l.2).collect())
    };
    let want = chains("tricky-oci")?;
    ensure!(
        chains("tricky:latest")? == want && chains("tricky-layout")? == want,
        "chain ids differ between the imports"
    );
    let n = w.json(&["layer", "ls"])?.as_array().map_or(0, Vec::len);
    ensure!(n == 5, "three imports of one image left {n} layers, not 5");

    let expected = expected_tricky_on(backend)?;
    let overlay = backend == "overlay2";
    let mut trees = Vec::new();
    for (c, img) in [
        ("from-oci", "tricky-oci"),
        ("from-docker", "tricky:latest"),
        ("from-layout", "tricky-layout"),
    ] {
        let t = tree(&container_on(&w, c, img)?)?;
        compare(&expected, &t, overlay).with_context(|| format!("container on {img}"))?;
        trees.push(t);
    }
    ensure!(
        trees[0] == trees[1] && trees[1] == trees[2],
        "the three containers' trees differ"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Round trip.

/// Changes made in a mounted container — files added, changed and deleted,
/// a lower directory replaced by one with other content, modes and owners
/// changed, a hardlink and a symlink added — survive `container commit` and
/// `image export`: Debian's `umoci unpack` of the export gives the same
/// tree as the mounted container, and so does a container on the export
/// re-imported into a fresh root.
fn round_trip_commit_export(backend: &str) -> Result<()> {
    let overlay = backend == "overlay2";
    let w = World::new(backend)?;
    w.ok(&[
        "image",
        "import",
        s(&inputs::tricky_layout()),
        "--name",
        "tricky:1",
    ])?;
    let m = container_on(&w, "rt", "tricky:1")?;
    edit_container(&m)?;
    let before = tree(&m)?;
    // The edits are visible, so the comparisons below compare them.
    let has = |prefix: &str, also: &str| {
        before
            .iter()
            .any(|l| l.starts_with(prefix) && l.contains(also))
    };
    // zfs-fuse stores no xattrs: the world dropped exec.sh's on import.
    let exec_xattr = match backend == "zfs" && !drivers_zfs::stores_xattrs() {
        false => has("/data/exec.sh\tf\t0700\t", "user.added=layer2"),
        true => has("/data/exec.sh\tf\t0700\t", "") && !has("/data/exec.sh\t", "user."),
    };
    ensure!(
        has("/opq/replaced.txt\t", "")
            && !has("/opq/new\t", "")
            && !has("/etc/hostname\t", "")
            && has("/new-dir/link.txt\t", "nlink=2")
            && has("/srv/owned\tf\t0640\t555:666\t", "")
            && exec_xattr,
        "the edits are not what the mounted container shows:\n{}",
        before.join("\n")
    );

    let v = w.json(&["container", "commit", "rt", "--name", "rt:latest"])?;
    ensure!(
        v["name"] == "rt:latest" && v["layers"] == 6,
        "commit report: {v}"
    );
    ensure!(tree(&m)? == before, "commit changed the mounted container");
    let export = w.base.join("rt.tar");
    w.ok(&["image", "export", "rt:latest", "-o", s(&export)])?;

    // umoci reads a layout directory, not an archive.
    let layout = w.base.join("rt-layout");
    std::fs::create_dir(&layout)?;
    tool(Command::new("tar").args(["-xf", s(&export), "-C", s(&layout)]))?;
    let bundle = w.base.join("bundle");
    tool(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:latest", s(&layout)),
        s(&bundle),
    ]))?;
    // The export keeps the imported layers as they were, xattrs included,
    // which zfs-fuse could not store in the container.
    let unpacked = listing::as_held_on(backend, tree(&bundle.join("rootfs"))?);
    compare(&unpacked, &before, overlay)
        .context("umoci unpack of the export vs the mounted container")?;

    let fresh = World::new(backend)?;
    let v = fresh.json(&["image", "import", s(&export)])?;
    ensure!(
        imported_one(&v)?["name"] == "rt:latest",
        "re-import report: {v}"
    );
    let m2 = container_on(&fresh, "again", "rt:latest")?;
    compare(&before, &tree(&m2)?, overlay)
        .context("the re-imported export vs the mounted container")
}

/// The edits of [`round_trip_commit_export`], through the mount.
fn edit_container(m: &Path) -> Result<()> {
    use std::fs;
    // Added: a new directory tree, a binary file, a hardlink, a symlink.
    fs::create_dir_all(m.join("new-dir/sub"))?;
    fs::write(m.join("new-dir/sub/file.txt"), "added in the container\n")?;
    fs::hard_link(m.join("new-dir/sub/file.txt"), m.join("new-dir/link.txt"))?;
    std::os::unix::fs::symlink("../etc/passwd", m.join("new-dir/sym"))?;
    fs::write(m.join("data/added.bin"), harness::random_bytes(100 << 10))?;
    // Changed: content of lower files.
    let mut passwd = fs::read(m.join("etc/passwd"))?;
    passwd.extend_from_slice(b"tester:x:1000:1000::/home/tester:/bin/sh\n");
    fs::write(m.join("etc/passwd"), passwd)?;
    fs::write(m.join("data/file.txt"), "changed\n")?;
    // Deleted: a file, a symlink, a file of a later layer.
    fs::remove_file(m.join("etc/hostname"))?;
    fs::remove_file(m.join("links/abs"))?;
    fs::remove_file(m.join("wh/keep-me"))?;
    // Replaced: lower directories removed whole and made again with other
    // content (an opaque directory in the export).
    for (dir, file) in [("opq", "replaced.txt"), ("umoci", "other.txt")] {
        fs::remove_dir_all(m.join(dir))?;
        fs::create_dir_all(m.join(dir).join("sub2"))?;
        fs::write(m.join(dir).join(file), "new content\n")?;
        fs::write(m.join(dir).join("sub2/x"), "x\n")?;
    }
    // Metadata only: modes and owners.
    fs::set_permissions(m.join("data/exec.sh"), fs::Permissions::from_mode(0o700))?;
    fs::set_permissions(m.join("empty"), fs::Permissions::from_mode(0o711))?;
    std::os::unix::fs::chown(m.join("srv/owned"), Some(555), Some(666))?;
    std::os::unix::fs::lchown(m.join("new-dir/sym"), Some(7), Some(8))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Hostile layers.

/// Where an escaping entry aims.
#[derive(Clone, Copy, Debug)]
enum Aim {
    /// `canary/` next to the root.
    Canary,
    /// /tmp.
    Tmp,
    /// /etc.
    Etc,
}

/// One hostile input.
struct Hostile {
    /// For messages.
    label: String,
    /// The layer bytes (`layer apply` reads them; the layout's second layer).
    layer: Vec<u8>,
    /// Its media type in the layout.
    media_type: &'static str,
    /// The diff_id the layout records.
    diff_id: String,
    /// A digest the layout claims for it instead of the true one.
    claimed_digest: Option<String>,
    /// Also feed it to `layer apply` (which checks no digests).
    apply: bool,
    /// What the error line must mention (the offending entry or check), so
    /// a refusal for an unrelated reason does not pass.
    needle: Option<String>,
}

/// A hostile tar: benign entries, then `hostile`, then one more file.
fn hostile_tar(hostile: impl FnOnce(&mut RawTar)) -> Vec<u8> {
    let mut t = RawTar::new();
    t.dir("ok-dir").file("ok-dir/ok.txt", b"fine\n");
    hostile(&mut t);
    t.file("after.txt", b"after\n");
    t.finish()
}

impl Hostile {
    fn tar(label: String, layer: Vec<u8>, needle: Option<String>) -> Hostile {
        Hostile {
            label,
            diff_id: sha256(&layer),
            layer,
            media_type: inputs::TAR,
            claimed_digest: None,
            apply: true,
            needle,
        }
    }
}

/// What a world looks like from outside its root, for "nothing was
/// written outside": the canary tree (every entry's type, mode, owner,
/// link count, size, content hash, mtime and ctime — ctime moves on any
/// chmod, chown, link or write), the names in /etc, and anything in /tmp
/// or /etc carrying the world's marker. /tmp is not compared whole: other
/// trials and other programs create files there all the time; every
/// hostile name aimed at /tmp carries the marker instead.
#[derive(PartialEq, Eq, Debug)]
struct Outside {
    canary: Vec<String>,
    etc: Vec<String>,
    marked: Vec<String>,
}

fn outside(w: &World) -> Result<Outside> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
        for name in entries(dir)? {
            let p = dir.join(&name);
            let md = std::fs::symlink_metadata(&p)?;
            let hash = if md.is_file() {
                sha256(&std::fs::read(&p)?)
            } else {
                String::new()
            };
            out.push(format!(
                "{rel}/{name} mode={:o} {}:{} nlink={} size={} {hash} mtime={}.{} ctime={}.{}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.nlink(),
                md.size(),
                md.mtime(),
                md.mtime_nsec(),
                md.ctime(),
                md.ctime_nsec()
            ));
            if md.is_dir() {
                walk(&p, &format!("{rel}/{name}"), out)?;
            }
        }
        Ok(())
    }
    let mut canary = Vec::new();
    let c = w.base.join("canary");
    let md = std::fs::metadata(&c)?;
    canary.push(format!(
        "/ mtime={}.{} ctime={}.{}",
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec()
    ));
    walk(&c, "", &mut canary)?;
    let own = w
        .base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut marked = Vec::new();
    for d in ["/tmp", "/etc"] {
        for n in entries(Path::new(d))? {
            if n.contains(&w.marker) && n != own {
                marked.push(format!("{d}/{n}"));
            }
        }
    }
    Ok(Outside {
        canary,
        etc: entries(Path::new("/etc"))?,
        marked,
    })
}

/// Deletes what a broken applier might have dropped in /tmp or /etc:
/// only names that start with `pwned-<marker>`, which nothing else makes.
struct Strays(String);

impl Drop for Strays {
    fn drop(&mut self) {
        for d in ["/tmp", "/etc"] {
            for n in entries(Path::new(d)).unwrap_or_default() {
                if n.starts_with(&format!("pwned-{}", self.0)) {
                    let p = Path::new(d).join(&n);
                    eprintln!(
                        "cli_root: removing {} written outside the root",
                        p.display()
                    );
                    let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
                }
            }
        }
    }
}

/// The absolute directory an [`Aim`] names.
fn aim_dir(w: &World, aim: Aim) -> PathBuf {
    match aim {
        Aim::Canary => w.base.join("canary"),
        Aim::Tmp => PathBuf::from("/tmp"),
        Aim::Etc => PathBuf::from("/etc"),
    }
}

/// More `../` than any layer directory is deep: from wherever the applier
/// writes, this reaches `/`.
fn climb() -> String {
    "../".repeat(16)
}

/// Runs every hostile input through `layer apply` (when it applies) and
/// through `image import` of a layout whose first layer is benign and whose
/// second is the hostile one. Each must fail by the contract (exit 1, one
/// `error:` line naming what is wrong), leave the store empty (nothing of
/// the benign layer either) and leave everything outside the root as it
/// was. Before that, a benign twin made by the same builders is accepted,
/// so a refusal cannot come from a broken test input.
fn run_hostile(backend: &str, build: impl Fn(&World) -> Vec<Hostile>) -> Result<()> {
    let w = World::new(backend)?;
    let _strays = Strays(w.marker.clone());
    let canary = w.base.join("canary");
    std::fs::create_dir_all(canary.join("sub"))?;
    std::fs::write(canary.join("secret"), "canary\n")?;
    std::fs::write(canary.join("sub/file"), "canary too\n")?;
    positive_control(&w)?;

    let work = w.base.join("work");
    for (k, h) in build(&w).into_iter().enumerate() {
        let before = outside(&w)?;
        let check = |how: &str, err: String| -> Result<()> {
            if let Some(n) = &h.needle {
                ensure!(
                    err.contains(n.as_str()),
                    "{}: {how}: the error does not mention {n:?}: {err}",
                    h.label
                );
            }
            assert_store_empty(&w)
                .with_context(|| format!("{}: after the failed {how}", h.label))?;
            let after = outside(&w)?;
            ensure!(
                after == before,
                "{}: {how} changed things outside the root:\nbefore {before:#?}\nafter {after:#?}",
                h.label
            );
            Ok(())
        };
        let dir = work.join(k.to_string());
        std::fs::create_dir_all(&dir)?;
        if h.apply {
            let file = dir.join("layer.tar");
            std::fs::write(&file, &h.layer)?;
            let err = w
                .fails(&["layer", "apply", s(&file)])
                .with_context(|| format!("{}: layer apply", h.label))?;
            check("layer apply", err)?;
        }
        let layout = dir.join("oci");
        let mut base = RawTar::new();
        base.file(&format!("base-{}.txt", w.marker), b"benign\n");
        write_layout(
            &layout,
            "latest",
            vec![
                LayoutLayer::tar(base.finish()),
                LayoutLayer {
                    blob: inputs::Blob::Bytes(h.layer.clone()),
                    media_type: h.media_type,
                    diff_id: h.diff_id.clone(),
                    claimed_digest: h.claimed_digest.clone(),
                },
            ],
        )?;
        let err = w
            .fails(&["image", "import", s(&layout)])
            .with_context(|| format!("{}: image import", h.label))?;
        check("image import", err)?;
    }
    Ok(())
}

/// Benign inputs from the same builders are accepted, on a separate world:
/// a tar with a directory, a file, a symlink, a hardlink and a device
/// through `layer apply`, and a two-layer layout (plain and gzip) through
/// `image import`.
fn positive_control(w: &World) -> Result<()> {
    let ctl = World::new(&w.backend)?;
    let mut t = RawTar::new();
    t.dir("d")
        .file("d/f", b"data\n")
        .symlink("d/s", "/etc/passwd")
        .hardlink("d/h", "d/f")
        .chardev("d/null", 1, 3);
    let tar = t.finish();
    let file = ctl.base.join("ok.tar");
    std::fs::write(&file, &tar)?;
    ctl.ok(&["layer", "apply", s(&file)])
        .context("positive control: layer apply of a benign raw tar")?;
    let layout = ctl.base.join("oci");
    let mut second = RawTar::new();
    second.file("more.txt", b"more\n");
    let second = second.finish();
    write_layout(
        &layout,
        "latest",
        vec![
            LayoutLayer::tar(tar),
            LayoutLayer {
                diff_id: sha256(&second),
                blob: inputs::Blob::Bytes(inputs::gzip(&second, 1)),
                media_type: inputs::TAR_GZ,
                claimed_digest: None,
            },
        ],
    )?;
    let v = ctl
        .json(&["image", "import", s(&layout)])
        .context("positive control: image import of a benign layout")?;
    ensure!(
        imported_one(&v)?["layers"] == 2,
        "positive control import: {v}"
    );
    Ok(())
}

/// Entries whose names climb out with `..` are refused, whatever they aim
/// at (the canary, /tmp, /etc).
fn hostile_dotdot(backend: &str) -> Result<()> {
    run_hostile(backend, |w| {
        [Aim::Canary, Aim::Tmp, Aim::Etc]
            .into_iter()
            .map(|aim| {
                let name = format!("pwned-{}-dotdot", w.marker);
                let path = format!(
                    "{}{}/{name}",
                    climb(),
                    s(&aim_dir(w, aim)).trim_start_matches('/')
                );
                let tar = hostile_tar(|t| {
                    t.file(&path, b"escaped\n");
                });
                Hostile::tar(format!("`..` file into {aim:?}"), tar, Some(name))
            })
            .collect()
    })
}

/// Entries with absolute names are refused.
fn hostile_absolute(backend: &str) -> Result<()> {
    run_hostile(backend, |w| {
        [Aim::Canary, Aim::Tmp, Aim::Etc]
            .into_iter()
            .map(|aim| {
                let name = format!("pwned-{}-abs", w.marker);
                let path = format!("{}/{name}", s(&aim_dir(w, aim)));
                let tar = hostile_tar(|t| {
                    t.file(&path, b"escaped\n");
                });
                Hostile::tar(format!("absolute file into {aim:?}"), tar, Some(name))
            })
            .collect()
    })
}

/// A symlink to a directory outside, then an entry written through it:
/// the write is refused (the symlink itself is a legal entry).
fn hostile_symlink_then_write(backend: &str) -> Result<()> {
    run_hostile(backend, |w| {
        [Aim::Canary, Aim::Tmp, Aim::Etc]
            .into_iter()
            .flat_map(|aim| {
                let dir = s(&aim_dir(w, aim)).to_owned();
                let marker = w.marker.clone();
                // Absolute and relative link targets: a naive applier
                // follows either.
                let rel = format!("{}{}", climb(), dir.trim_start_matches('/'));
                [dir, rel].into_iter().map(move |target| {
                    let name = format!("pwned-{marker}-via-link");
                    let tar = hostile_tar(|t| {
                        t.symlink("esc", &target)
                            .file(&format!("esc/{name}"), b"escaped\n");
                    });
                    Hostile::tar(
                        format!("write through a symlink to {target} ({aim:?})"),
                        tar,
                        Some(name),
                    )
                })
            })
            .collect()
    })
}

/// A hardlink whose target is a file outside the layer (by `..` and by an
/// absolute name) is refused: the canary file keeps its link count.
fn hostile_hardlink_outside(backend: &str) -> Result<()> {
    run_hostile(backend, |w| {
        let secret = s(&w.base.join("canary/secret")).to_owned();
        [
            format!("{}{}", climb(), secret.trim_start_matches('/')),
            secret,
        ]
        .into_iter()
        .map(|target| {
            let name = format!("hl-{}", w.marker);
            let tar = hostile_tar(|t| {
                t.hardlink(&name, &target);
            });
            Hostile::tar(format!("hardlink to {target}"), tar, Some(name))
        })
        .collect()
    })
}

/// Whiteouts naming `..` (`.wh...`), at the top and in a directory, are
/// refused: applied naively they delete the layer's parent directory.
fn hostile_whiteout_dotdot(backend: &str) -> Result<()> {
    run_hostile(backend, |w| {
        let top = hostile_tar(|t| {
            t.file(".wh...", b"");
        });
        let dir = format!("d-{}", w.marker);
        let nested = hostile_tar(|t| {
            t.dir(&dir).file(&format!("{dir}/.wh..."), b"");
        });
        vec![
            Hostile::tar("top-level .wh...".into(), top, Some(".wh...".into())),
            Hostile::tar("nested .wh...".into(), nested, Some(dir)),
        ]
    })
}

/// Device nodes whose names climb out of the layer are refused.
fn hostile_device_outside(backend: &str) -> Result<()> {
    run_hostile(backend, |w| {
        [Aim::Canary, Aim::Tmp]
            .into_iter()
            .map(|aim| {
                let name = format!("pwned-{}-dev", w.marker);
                let path = format!(
                    "{}{}/{name}",
                    climb(),
                    s(&aim_dir(w, aim)).trim_start_matches('/')
                );
                let tar = hostile_tar(|t| {
                    t.chardev(&path, 1, 3);
                });
                Hostile::tar(format!("char device into {aim:?}"), tar, Some(name))
            })
            .collect()
    })
}

/// A file whose header promises more bytes than the stream holds is
/// refused — the end-of-archive zero blocks after it must not pass for
/// data.
fn hostile_size_larger_than_data(backend: &str) -> Result<()> {
    run_hostile(backend, |w| {
        let name = format!("big-{}", w.marker);
        let mut t = RawTar::new();
        t.dir("ok-dir").file("ok-dir/ok.txt", b"fine\n");
        t.entry(inputs::Entry {
            name: name.as_bytes(),
            size: 1 << 20,
            data: &[b'x'; 100],
            ..inputs::Entry::default()
        });
        vec![Hostile::tar(
            "size field 1 MiB, 100 bytes of data".into(),
            t.finish(),
            Some(name),
        )]
    })
}

/// A gzip layer cut in the middle of its data is refused.
fn hostile_truncated_gzip(backend: &str) -> Result<()> {
    run_hostile(backend, |w| {
        let mut t = RawTar::new();
        t.dir("ok-dir").file(
            &format!("rand-{}", w.marker),
            &harness::random_bytes(256 << 10),
        );
        let tar = t.finish();
        let gz = inputs::gzip(&tar, 1);
        let cut = gz[..gz.len() / 2].to_vec();
        vec![Hostile {
            label: "gzip cut in half".into(),
            diff_id: sha256(&tar),
            layer: cut,
            media_type: inputs::TAR_GZ,
            claimed_digest: None,
            apply: true,
            needle: Some("gzip".into()),
        }]
    })
}

/// A layout whose blob does not hash to the digest its manifest (and file
/// name) claim is refused, even though the layer itself is fine and its
/// diff_id right.
fn hostile_digest_mismatch(backend: &str) -> Result<()> {
    run_hostile(backend, |_| {
        let mut t = RawTar::new();
        t.file("fine.txt", b"fine\n");
        let tar = t.finish();
        // Two gzip encodings of the same tar, differing only in the header
        // mtime: same diff_id, different digest.
        let claimed = sha256(&inputs::gzip(&tar, 2));
        vec![Hostile {
            label: "blob digest mismatch".into(),
            diff_id: sha256(&tar),
            layer: inputs::gzip(&tar, 1),
            media_type: inputs::TAR_GZ,
            claimed_digest: Some(claimed.clone()),
            apply: false,
            needle: Some(claimed["sha256:".len()..][..12].to_owned()),
        }]
    })
}

/// A layout whose config records a diff_id the layer does not have is
/// refused.
fn hostile_diff_id_mismatch(backend: &str) -> Result<()> {
    run_hostile(backend, |_| {
        let mut t = RawTar::new();
        t.file("fine.txt", b"fine\n");
        let wrong = sha256(b"not this layer");
        vec![Hostile {
            label: "diff_id mismatch".into(),
            diff_id: wrong.clone(),
            layer: t.finish(),
            media_type: inputs::TAR,
            claimed_digest: None,
            apply: false,
            needle: Some(wrong["sha256:".len()..][..12].to_owned()),
        }]
    })
}

// ---------------------------------------------------------------------------
// 6. Killed import.

/// Bytes of the regular files below `dir` (0 if it does not exist).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// An `image import` killed with SIGKILL while it unpacks a ~300 MiB layer
/// leaves nothing the next command does not undo: `layer ls` succeeds and
/// finds no layer, no image, no layer directory, nothing staged, nothing
/// mounted; importing again then succeeds.
fn killed_import(backend: &str) -> Result<()> {
    let big = inputs::big_layout()?;
    let total = (inputs::BIG_FILES * inputs::BIG_FILE_BYTES) as u64;
    let w = World::new(backend)?;
    let mut child = w
        .cmd()
        .args(["image", "import", s(&big)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Where the backend keeps layer data (zfs: the datasets' mountpoints,
    // btrfs: the subvolumes).
    let layers = w.layers_dir();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Half-way: a third of the data is on disk, so the layer exists and is
    // incomplete; the import must still be running when the signal lands.
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the import ended ({status}) before a third of its layer was written; it cannot be killed half-way"
            );
        }
        if bytes_under(&layers) >= total / 3 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the import wrote under {} too slowly",
            layers.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill()?;
    let status = child.wait()?;
    ensure!(
        status.code().is_none(),
        "the import exited ({status}) instead of being killed"
    );

    // The first command after the crash recovers.
    let v = w.json(&["layer", "ls"])?;
    ensure!(
        v.as_array().is_some_and(Vec::is_empty),
        "after the killed import `layer ls` shows {v}"
    );
    assert_store_empty(&w).context("after the killed import")?;

    let v = w.json(&["image", "import", s(&big)])?;
    ensure!(imported_one(&v)?["name"] == "big", "re-import: {v}");
    let n = w.json(&["layer", "ls"])?.as_array().map_or(0, Vec::len);
    ensure!(n == 1, "after the re-import {n} layers, not 1");
    Ok(())
}

// ---------------------------------------------------------------------------
// 7. Concurrency.

/// Two `image import` of the same image into one root at the same time
/// both succeed (one may find the image already present); the image is
/// there once, each layer once (in `layer ls` and on disk), and `check`
/// and `status` work afterwards. Done with the 5-layer fixture (three
/// times, fresh roots) and with the ~300 MiB image.
fn concurrent_imports(backend: &str) -> Result<()> {
    let tricky = inputs::tricky_layout();
    let big = inputs::big_layout()?;
    for (round, (layout, name)) in [
        (&tricky, "latest"),
        (&tricky, "latest"),
        (&tricky, "latest"),
        (&big, "big"),
    ]
    .into_iter()
    .enumerate()
    {
        let w = World::new(backend)?;
        let spawn = || {
            w.cmd()
                .args(["--json", "image", "import", s(layout)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        };
        let (a, b) = (spawn()?, spawn()?);
        for (who, child) in [("first", a), ("second", b)] {
            let out = child.wait_with_output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            match out.status.code() {
                Some(0) => {
                    let v: Value = serde_json::from_slice(&out.stdout).context("import report")?;
                    ensure!(
                        imported_one(&v)?["name"] == name,
                        "round {round}, {who} import: {v}"
                    );
                }
                Some(1) if stderr.contains("already") => {}
                _ => bail!(
                    "round {round}: the {who} of two concurrent imports failed ({}): {stderr}",
                    out.status
                ),
            }
        }
        let imgs = w.json(&["image", "ls"])?;
        ensure!(
            imgs.as_array()
                .is_some_and(|a| a.len() == 1 && a[0]["name"] == name),
            "round {round}: images {imgs}"
        );
        let want = inspect_layers(&w, name)?.len();
        let layers = w.json(&["layer", "ls"])?.as_array().map_or(0, Vec::len);
        let dirs = entries(&w.layers_dir())?.len();
        ensure!(
            layers == want && dirs == want,
            "round {round}: {layers} layers listed, {dirs} layer directories, the image has {want}"
        );
        w.ok(&["check"])?;
        let st = w.json(&["status"])?;
        ensure!(
            st["images"] == 1 && st["layers"] == want,
            "round {round}: status {st}"
        );
        if round == 0 {
            // The data is whole, not only the records.
            let m = container_on(&w, "after-race", name)?;
            compare(
                &expected_tricky_on(backend)?,
                &tree(&m)?,
                backend == "overlay2",
            )?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 8. Deep chains.

/// A 500-layer image made by Debian's `umoci insert` (footer-less tars)
/// imports on overlay2 and its container mounts: the bottom and the top
/// layer's files read back through the mount. A 501-layer image is refused
/// by `image import` itself, with an error naming the limit of 500, and
/// leaves no layer behind.
fn layers_500(backend: &str) -> Result<()> {
    let layout = inputs::deep_layout()?;
    let w = World::new(backend)?;
    let v = w.json(&[
        "image",
        "import",
        s(&layout),
        "--ref",
        "l500",
        "--name",
        "deep:500",
    ])?;
    ensure!(
        imported_one(&v)?["layers"] == inputs::DEEP,
        "import report: {v}"
    );
    let m = container_on(&w, "deep", "deep:500")?;
    for i in [1, inputs::DEEP / 2, inputs::DEEP] {
        let p = m.join(format!("layer/f{i}"));
        let got = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        ensure!(got == format!("layer {i}\n"), "{}: {got:?}", p.display());
    }
    ensure!(
        entries(&m.join("layer"))?.len() == inputs::DEEP,
        "the mount does not show {} files",
        inputs::DEEP
    );

    let fresh = World::new(backend)?;
    let e = fresh.fails(&[
        "image",
        "import",
        s(&layout),
        "--ref",
        "l501",
        "--name",
        "deep:501",
    ])?;
    ensure!(
        e.contains("500"),
        "the refusal does not name the limit of 500: {e}"
    );
    assert_store_empty(&fresh).context("after the refused 501-layer import")
}

// ---------------------------------------------------------------------------
// 9. Mount reference counting.

/// `container mount` is idempotent and counted per caller: mounting twice
/// as one caller gives the same path and one mount, which that caller's
/// single `umount` removes; with a second caller the mount survives the
/// first caller's `umount` and goes with the second's; `container rm
/// --force` of a mounted container unmounts and removes it.
fn mount_refcount(backend: &str) -> Result<()> {
    let w = World::new(backend)?;
    w.ok(&["image", "import", s(&inputs::umoci_insert_layout())])?;
    w.ok(&["container", "create", "rc", "--image", "latest"])?;
    let holders = |w: &World| -> Result<Vec<String>> {
        let v = w.json(&["container", "ls"])?;
        let c = v
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "rc"))
            .context("container rc not listed")?;
        Ok(c["mounted_by"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect())
    };
    let umount = |caller: &str| -> Result<Value> {
        w.json(&["container", "umount", "rc", "--caller", caller])
    };

    let p1 = w.mount("rc", None)?;
    let p2 = w.mount("rc", None)?;
    ensure!(
        p1 == p2,
        "the same caller got {} then {}",
        p1.display(),
        p2.display()
    );
    ensure!(
        holders(&w)? == ["cli"],
        "holders after two mounts by one caller: {:?}",
        holders(&w)?
    );
    ensure!(
        std::fs::read_to_string(p1.join("hello.txt"))? == "inserted by umoci insert\n",
        "mounted content"
    );
    // One reference: the caller's one umount unmounts.
    let v = umount("cli")?;
    ensure!(
        v["unmounted"] == true && mount_count(&p1)? == 0,
        "one umount after two mounts by one caller: {v}"
    );

    let p3 = w.mount("rc", None)?;
    let p4 = w.mount("rc", Some("other"))?;
    ensure!(
        p3 == p4,
        "callers got different paths: {} and {}",
        p3.display(),
        p4.display()
    );
    ensure!(
        holders(&w)? == ["cli", "other"],
        "holders: {:?}",
        holders(&w)?
    );
    let v = umount("cli")?;
    ensure!(
        v["unmounted"] == false && mount_count(&p3)? == 1,
        "other still holds it, yet: {v}"
    );
    ensure!(holders(&w)? == ["other"], "holders: {:?}", holders(&w)?);
    let v = umount("other")?;
    ensure!(
        v["unmounted"] == true && mount_count(&p3)? == 0,
        "last holder left, yet: {v}"
    );
    ensure!(holders(&w)?.is_empty(), "holders: {:?}", holders(&w)?);

    let p5 = w.mount("rc", Some("again"))?;
    w.ok(&["container", "rm", "--force", "rc"])?;
    ensure!(
        mount_count(&p5)? == 0,
        "`container rm --force` left {} mounted",
        p5.display()
    );
    let v = w.json(&["container", "ls"])?;
    ensure!(
        v.as_array().is_some_and(Vec::is_empty),
        "containers after rm --force: {v}"
    );
    ensure!(w.host_mounts()?.is_empty(), "mounts left under the root");
    Ok(())
}

// ---------------------------------------------------------------------------
// zfs only.

/// How many `zfs`/`zpool` processes one `drivers` command started, from
/// the backend's `drivers_zfs::spawn` debug events, not counting the
/// tries again of a command zfs-fuse answered "busy" (its timing, not the
/// backend's design; they are in the returned log).
fn zfs_spawns_of(w: &World, args: &[&str]) -> Result<(usize, String)> {
    let mut a = vec!["--log-level", "drivers_zfs::spawn=debug"];
    a.extend_from_slice(args);
    let out = w.run(&a)?.success()?;
    let count = |what: &str| out.stderr.lines().filter(|l| l.contains(what)).count();
    let n = count("zfs spawn") - count("busy; trying again");
    Ok((n, out.stderr))
}

/// The cost of the zfs backend in processes, which Docker's zfs driver
/// pays three times per layer: `container create` starts exactly one
/// (`zfs clone`), `container mount`/`umount` and listing none, `container
/// rm` one (`zfs destroy`), and importing a layer at most four.
fn zfs_spawns(backend: &str) -> Result<()> {
    let w = World::new(backend)?;
    let (import, log) = zfs_spawns_of(&w, &["image", "import", s(&inputs::tricky_layout())])?;
    ensure!(
        import <= 4 * 5,
        "importing 5 layers started {import} zfs processes:\n{log}"
    );
    let (create, log) = zfs_spawns_of(&w, &["container", "create", "c1", "--image", "latest"])?;
    ensure!(
        create == 1,
        "container create started {create} zfs processes:\n{log}"
    );
    for args in [
        &["container", "mount", "c1"][..],
        &["container", "ls"][..],
        &["container", "umount", "c1"][..],
    ] {
        let (n, log) = zfs_spawns_of(&w, args)?;
        ensure!(
            n == 0,
            "`{}` started {n} zfs processes:\n{log}",
            args.join(" ")
        );
    }
    let (rm, log) = zfs_spawns_of(&w, &["container", "rm", "c1"])?;
    ensure!(rm == 1, "container rm started {rm} zfs processes:\n{log}");
    eprintln!(
        "zfs processes: import of 5 layers {import}, container create {create}, container rm {rm}"
    );
    Ok(())
}

/// `drivers reset`: refused (one line, nothing touched) while the backend
/// holds anything; with `--force` every container, image and layer goes
/// through the backend, then what `select` set up (loopback filesystem,
/// loop device, pool), the state directory and the config table; a
/// second reset finds nothing to do.
fn reset(backend: &str) -> Result<()> {
    // overlay2 and vfs on their loopback XFS, so every backend has a
    // select-time setup to undo.
    let w = if matches!(backend, "overlay2" | "vfs") {
        let w = World::bare(backend)?;
        w.ok(&["select", backend, "--loopback", "512M"])?;
        w
    } else {
        World::new(backend)?
    };
    w.ok(&["image", "import", s(&inputs::umoci_insert_layout())])?;
    w.ok(&["container", "create", "rc", "--image", "latest"])?;
    let m = w.mount("rc", None)?;
    // `container rm` of several: each tried, the failure named in one line.
    w.ok(&["container", "create", "x1", "--image", "latest"])?;
    w.ok(&["container", "create", "x2", "--image", "latest"])?;
    let line = w.run(&["container", "rm", "x1", "nope", "x2"])?.failure()?;
    ensure!(line == "error: container nope not found", "{line}");
    let line = w.run(&["container", "rm", "x1", "rc"])?.failure()?;
    ensure!(
        line.starts_with("error: cannot remove container rc: it is in use"),
        "{line}"
    );
    ensure!(w.json(&["container", "ls"])?.as_array().map(Vec::len) == Some(3));
    let v = w.json(&["container", "rm", "x1", "x2"])?;
    ensure!(
        v == serde_json::json!([{ "removed": "x1" }, { "removed": "x2" }]),
        "{v}"
    );
    let names = w.json(&["container", "ls"])?;
    ensure!(
        names.as_array().map(Vec::len) == Some(1) && names[0]["name"] == "rc",
        "{names}"
    );
    let before = w.json(&["layer", "ls"])?;

    let line = w.run(&["reset", backend])?.failure()?;
    ensure!(
        line.starts_with(&format!("error: backend {backend} still holds 1 images, ")),
        "{line}"
    );
    ensure!(mount_count(&m)? == 1 && w.json(&["layer", "ls"])? == before);

    let v = w.json(&["reset", backend, "--force"])?;
    ensure!(
        v["images"] == 1
            && v["containers"] == 1
            && v["layers"] == before.as_array().map_or(0, Vec::len),
        "{v}"
    );
    ensure!(
        !w.state().exists(),
        "{} is still there",
        w.state().display()
    );
    ensure!(
        harness::backend_table(&w.root, backend).is_none(),
        "[backends.{backend}] is still in the config"
    );
    let left = harness::mounts_under(&w.root)?;
    ensure!(left.is_empty(), "mounts left under the root: {left:?}");
    let loops = harness::loops_under(&w.root)?;
    ensure!(loops.is_empty(), "loop devices still bound: {loops:?}");
    let again = w.ok(&["reset", backend])?;
    ensure!(
        again == format!("backend {backend}: nothing to reset\n"),
        "{again:?}"
    );
    Ok(())
}

/// `select overlay2|vfs --path DIR` keeps the whole state in DIR (bound on
/// `<root>/<backend>`): the store is created there, quota is what DIR's
/// filesystem gives (here: refused, not XFS), the bind comes back after a
/// reboot, selecting again without an option keeps DIR, and moving to a
/// `--loopback` is refused with one line and no change to the config.
fn state_on_path(backend: &str) -> Result<()> {
    let w = World::bare(backend)?;
    let data = w.base.join("data");
    std::fs::create_dir(&data)?;
    w.ok(&["select", backend, "--path", s(&data)])?;
    let state = w.state();
    ensure!(
        data.join("metadata.db").is_file(),
        "no store in {}",
        data.display()
    );
    let st = w.json(&["status"])?;
    let quota = st["capabilities"]["quota"].as_str().unwrap_or_default();
    let fs = st["filesystem"].as_str().unwrap_or_default();
    if fs == "xfs" {
        ensure!(!quota.contains("not on XFS"), "{st}");
    } else {
        ensure!(quota.contains("not on XFS"), "{st}");
    }
    // A reboot: the bind is gone; the next command binds DIR again.
    rustix::mount::unmount(&state, rustix::mount::UnmountFlags::empty())?;
    ensure!(mount_count(&state)? == 0, "still bound");
    w.ok(&["status"])?;
    ensure!(
        mount_count(&state)? == 1,
        "{} not bound again",
        state.display()
    );
    w.ok(&["select", backend])?;
    let config = std::fs::read(w.root.join("config.toml"))?;
    let e = w.fails(&["select", backend, "--loopback", "512M"])?;
    ensure!(e.contains("already set up on --path"), "{e}");
    ensure!(
        std::fs::read(w.root.join("config.toml"))? == config,
        "a refused select changed config.toml"
    );
    Ok(())
}

/// `container create --size-limit 50M` on zfs: the container's clone gets
/// that `refquota`; through the mount 25 MiB fit and the next 50 MiB fail
/// with EDQUOT (the pool has room to spare, so only the limit can stop
/// them); `container rm` leaves no dataset.
fn zfs_size_limit(backend: &str) -> Result<()> {
    let w = World::new(backend)?;
    w.ok(&["image", "import", s(&inputs::tricky_layout())])?;
    let layers = w.zfs_datasets()?;
    w.ok(&[
        "container",
        "create",
        "q",
        "--image",
        "latest",
        "--size-limit",
        "50M",
    ])?;
    let ds: Vec<String> = w
        .zfs_datasets()?
        .into_iter()
        .filter(|d| !layers.contains(d))
        .collect();
    let [ds] = ds.as_slice() else {
        bail!("container create made these datasets: {ds:?}");
    };
    let quota = tool(Command::new("zfs").args(["get", "-H", "-p", "-o", "value", "refquota", ds]))?;
    ensure!(
        quota.trim() == (50u64 << 20).to_string(),
        "refquota of {ds} is {quota:?}, not 50 MiB"
    );
    let m = w.mount("q", None)?;
    let write_mib = |name: &str, mib: usize| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(m.join(name))?;
        for _ in 0..mib {
            f.write_all(&harness::random_bytes(1 << 20))?;
        }
        f.sync_all()
    };
    write_mib("a", 25).context("25 MiB within a 50 MiB limit")?;
    match write_mib("b", 50) {
        Ok(()) => bail!("wrote 75 MiB into a container limited to 50 MiB"),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error()) => {}
        Err(e) => bail!("writing past the limit failed with {e}, expected EDQUOT"),
    }
    w.ok(&["container", "rm", "--force", "q"])?;
    ensure!(
        w.zfs_datasets()? == layers,
        "after container rm: {:?}",
        w.zfs_datasets()?
    );
    Ok(())
}
