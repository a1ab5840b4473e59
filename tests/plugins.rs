//! End-to-end tests of the WebAssembly policy plugins through the real
//! `drivers` binary, as root: `plugin add/ls/rm`, `gc`, `dedup` on
//! loopback xfs and btrfs, `quota`, the hostile plugin (one test per way of
//! misbehaving), contract refusals, and a third-party plugin built from the
//! SDK template exactly as sdk/README.md tells a newcomer.
//!
//! Gated and laid out like `cli_root` (its harness is shared): one trial per
//! (backend × test), `DRIVERS_TEST_ROOT=1` or `CI=true` to run, as root.
//! The plugins are the components `cargo xtask build-plugins` makes, found
//! in `DRIVERS_PLUGIN_DIR` (default `target/plugins-wasm/wasm32-wasip2/release`).
//!
//! ```sh
//! cargo xtask build-plugins && cargo build --bin drivers
//! DRIVERS_TEST_ROOT=1 DRIVERS_BIN=$PWD/target/debug/drivers \
//!     DRIVERS_PLUGIN_DIR=$PWD/target/plugins-wasm/wasm32-wasip2/release \
//!     cargo test -p drivers-it --test plugins -- --test-threads 2
//! ```

#[allow(dead_code, reason = "shared with cli_root, which uses all of it")]
#[path = "cli_root/harness.rs"]
mod harness;
#[allow(dead_code, reason = "shared with cli_root, which uses all of it")]
#[path = "cli_root/inputs.rs"]
mod inputs;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use drivers_mount::loopback;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;

use harness::{BackendPlan, Gate, World, random_bytes, random_hex, s, tool, workspace};
use inputs::{LayoutLayer, RawTar, sha256_file};

/// A test: a plain function of the backend it runs on.
struct Test {
    name: &'static str,
    run: fn(&str) -> Result<()>,
    /// Only on these backends (`None`: every backend).
    only: Option<&'static [&'static str]>,
}

/// Tests of things no backend changes (the contract checks, the cache, the
/// SDK template) run once, on vfs.
const ONCE: Option<&[&str]> = Some(&["vfs"]);
/// Backends whose layers are plain files under the root, where a loopback
/// xfs or btrfs can hold them. (The btrfs backend brings its own btrfs:
/// see `dedup_native`.)
const FILE_BACKENDS: Option<&[&str]> = Some(&["vfs", "overlay2"]);

static TESTS: &[Test] = &[
    Test {
        name: "gc_plan_then_delete",
        run: gc_plan_then_delete,
        only: None,
    },
    Test {
        name: "hostile::loop",
        run: hostile_loop,
        only: None,
    },
    Test {
        name: "hostile::trap",
        run: hostile_trap,
        only: None,
    },
    Test {
        name: "hostile::oom",
        run: hostile_oom,
        only: None,
    },
    Test {
        name: "hostile::garbage",
        run: hostile_garbage,
        only: None,
    },
    Test {
        name: "hostile::referenced",
        run: hostile_referenced,
        only: None,
    },
    Test {
        name: "quota_limits",
        run: quota_limits,
        only: None,
    },
    Test {
        name: "quota_limits_xfs",
        run: quota_limits_xfs,
        only: FILE_BACKENDS,
    },
    Test {
        name: "dedup_unsupported_here",
        run: dedup_unsupported_here,
        // btrfs shares extents wherever it runs: see dedup_native.
        only: Some(&["vfs", "overlay2", "zfs"]),
    },
    Test {
        name: "dedup_xfs",
        run: dedup_xfs,
        only: FILE_BACKENDS,
    },
    Test {
        name: "dedup_btrfs",
        run: dedup_btrfs,
        only: FILE_BACKENDS,
    },
    Test {
        name: "dedup_native",
        run: dedup_native,
        only: Some(&["btrfs"]),
    },
    Test {
        name: "refusals",
        run: refusals,
        only: ONCE,
    },
    Test {
        name: "ls_rm_status_cache",
        run: ls_rm_status_cache,
        only: ONCE,
    },
    Test {
        name: "third_party_template",
        run: third_party_template,
        only: ONCE,
    },
];

fn main() {
    let args = Arguments::from_args();
    let gate = harness::gate();
    match &gate {
        Gate::Ignore(why) => eprintln!("plugins: every trial ignored: {why}"),
        Gate::Fail(why) => eprintln!("plugins: every trial fails: {why}"),
        Gate::Run => {}
    }
    let mut trials = vec![Trial::test("patch_version_self_check", || {
        patch_self_check().map_err(|e| Failed::from(format!("{e:#}")))
    })];
    for plan in harness::backends(&gate) {
        if let (Gate::Ignore(why), Gate::Run) = (&plan.gate, &gate) {
            eprintln!("plugins: {} ignored: {why}", plan.name);
        }
        for t in TESTS
            .iter()
            .filter(|t| t.only.is_none_or(|o| o.contains(&plan.name.as_str())))
        {
            trials.push(trial(&plan, t));
        }
    }
    libtest_mimic::run(&args, trials).exit();
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
// Helpers.

/// Where the built plugins are.
fn plugin_dir() -> PathBuf {
    match std::env::var_os("DRIVERS_PLUGIN_DIR") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace().join("target/plugins-wasm/wasm32-wasip2/release"),
    }
}

/// `policy_<name>.wasm`, which must have been built.
fn wasm(name: &str) -> Result<PathBuf> {
    let p = plugin_dir().join(format!("policy_{name}.wasm"));
    ensure!(
        p.is_file(),
        "{} is missing: build the plugins first (`cargo xtask build-plugins`) or set DRIVERS_PLUGIN_DIR",
        p.display()
    );
    Ok(p)
}

/// Imports an image `name` whose layers hold `layers` (file name → bytes),
/// base first; returns the chain ids, base first.
fn import(w: &World, name: &str, layers: &[Vec<(&str, Vec<u8>)>]) -> Result<Vec<String>> {
    let dir = w.base.join(format!("layout-{name}-{}", random_hex(3)));
    let ls = layers
        .iter()
        .map(|files| {
            let mut t = RawTar::new();
            for (n, d) in files {
                t.file(n, d);
            }
            LayoutLayer::tar(t.finish())
        })
        .collect();
    inputs::write_layout(&dir, name, ls)?;
    w.ok(&["image", "import", s(&dir), "--name", name])?;
    std::fs::remove_dir_all(&dir)?;
    let v = w.json(&["image", "inspect", name])?;
    v["layers"]
        .as_array()
        .context("inspect: no layers")?
        .iter()
        .map(|l| {
            l["chain_id"]
                .as_str()
                .map(str::to_owned)
                .context("layer without chain_id")
        })
        .collect()
}

/// A one-layer image with one random file of `size` bytes (so every such
/// image is distinct); returns its chain id.
fn one_layer(w: &World, name: &str, size: usize) -> Result<String> {
    let ids = import(w, name, &[vec![("data", random_bytes(size))]])?;
    Ok(ids[0].clone())
}

/// `layer ls --json` as chain id → size.
fn layer_sizes(w: &World) -> Result<std::collections::BTreeMap<String, u64>> {
    let v = w.json(&["layer", "ls"])?;
    v.as_array()
        .context("layer ls: not a list")?
        .iter()
        .map(|l| {
            Ok((
                l["chain_id"].as_str().context("no chain_id")?.to_owned(),
                l["size"].as_u64().context("no size")?,
            ))
        })
        .collect()
}

/// Everything the store shows: layers, images and containers.
fn store_state(w: &World) -> Result<Vec<Value>> {
    ["layer", "image", "container"]
        .iter()
        .map(|what| w.json(&[what, "ls"]))
        .collect()
}

/// The chain ids of a gc `--json` report's `layers`.
fn planned(v: &Value) -> Result<BTreeSet<String>> {
    v["layers"]
        .as_array()
        .context("gc report without layers")?
        .iter()
        .map(|l| {
            l["chain_id"]
                .as_str()
                .map(str::to_owned)
                .context("step without chain_id")
        })
        .collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

// ---------------------------------------------------------------------------
// gc

/// The gc plugin deletes exactly the unreferenced, unpinned, not recent
/// layers — children with their parents — and nothing referenced; the dry
/// run shows the same plan first and changes nothing; `--budget` and the
/// `keep_recent` setting hold it back.
fn gc_plan_then_delete(backend: &str) -> Result<()> {
    let w = World::new(backend)?;
    let kib = |n: usize| random_bytes(n << 10);
    // a: base a0 + a1 (a0 shared with c); b: b0; c: a0 + c1; d: d0 (held by
    // a container); p: p0 (pinned).
    let base = kib(64);
    let a = import(
        &w,
        "img-a",
        &[vec![("base", base.clone())], vec![("a1", kib(96))]],
    )?;
    // The LRU check below needs a1 and b0 created in different seconds.
    std::thread::sleep(Duration::from_millis(1100));
    let b = one_layer(&w, "img-b", 80 << 10)?;
    // The same base tar (RawTar is deterministic), so img-c shares a0.
    let c = import(&w, "img-c", &[vec![("base", base)], vec![("c1", kib(48))]])?;
    ensure!(c[0] == a[0], "img-c should share img-a's base layer");
    let c1 = c[1].clone();
    let d = one_layer(&w, "img-d", 32 << 10)?;
    let p = one_layer(&w, "img-p", 40 << 10)?;
    for img in ["img-a", "img-b", "img-p"] {
        w.ok(&["image", "rm", "--keep-layers", img])?;
    }
    w.ok(&["layer", "label", &p, "pinned=true"])?;
    w.ok(&["container", "create", "ctr", "--image", "img-d"])?;

    let before = store_state(&w)?;
    let sizes = layer_sizes(&w)?;
    w.ok(&[
        "plugin",
        "add",
        s(&wasm("gc")?),
        "--name",
        "gc",
        "--set",
        "keep_recent=0s",
    ])?;

    // Dry run: the plan and the reasons, nothing removed.
    let dry = w.json(&["gc", "--dry-run"])?;
    let want = set(&[&a[1], &b]);
    ensure!(planned(&dry)? == want, "dry-run plan {dry} is not {want:?}");
    ensure!(dry["dry_run"] == true && dry["plugin"] == "gc", "{dry}");
    for l in dry["layers"].as_array().into_iter().flatten() {
        ensure!(l["action"] == "would remove", "{l}");
        ensure!(
            l["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "no reason: {l}"
        );
    }
    let want_freed = sizes[&a[1]] + sizes[&b];
    ensure!(
        dry["freed_bytes"] == want_freed,
        "freed {} != {want_freed}",
        dry["freed_bytes"]
    );
    let human = w.ok(&["gc", "--dry-run"])?;
    ensure!(
        human.contains(&a[1]) && human.contains(&b) && human.contains("would free"),
        "{human}"
    );
    ensure!(store_state(&w)? == before, "a dry run changed the store");

    // A budget that freeing the least recently used layer (a1) satisfies.
    let total: u64 = sizes.values().sum();
    let budget = (total - sizes[&a[1]]).to_string();
    let v = w.json(&["gc", "--dry-run", "--budget", &budget])?;
    ensure!(
        planned(&v)? == set(&[&a[1]]),
        "LRU under budget {budget}: {v}"
    );
    let v = w.json(&["gc", "--dry-run", "--budget", "1T"])?;
    ensure!(planned(&v)?.is_empty(), "within budget, nothing goes: {v}");

    // For real: the same plan, carried out.
    let done = w.json(&["gc"])?;
    ensure!(
        planned(&done)? == want,
        "gc removed {done}, planned {want:?}"
    );
    ensure!(
        done["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|l| l["action"] == "removed"),
        "{done}"
    );
    let left: BTreeSet<String> = layer_sizes(&w)?.into_keys().collect();
    let expect_left: BTreeSet<String> = sizes
        .keys()
        .filter(|k| !want.contains(*k))
        .cloned()
        .collect();
    ensure!(
        left == expect_left,
        "layers left {left:?}, expected {expect_left:?}"
    );
    ensure!(left.contains(&a[0]) && left.contains(&c1) && left.contains(&d) && left.contains(&p));
    let m = w.mount("ctr", None)?;
    ensure!(m.join("data").is_file(), "the container's image is intact");
    w.ok(&["container", "umount", "ctr"])?;
    let again = w.json(&["gc"])?;
    ensure!(
        planned(&again)?.is_empty(),
        "a second gc found more: {again}"
    );

    // Recently used layers are kept; the pin is what kept p0 above.
    w.ok(&["layer", "label", &p, "pinned="])?;
    w.ok(&["plugin", "rm", "gc"])?;
    w.ok(&[
        "plugin",
        "add",
        s(&wasm("gc")?),
        "--name",
        "gc",
        "--set",
        "keep_recent=1h",
    ])?;
    let v = w.json(&["gc", "--dry-run"])?;
    ensure!(
        planned(&v)?.is_empty(),
        "keep_recent=1h keeps fresh layers: {v}"
    );
    w.ok(&["plugin", "rm", "gc"])?;
    w.ok(&[
        "plugin",
        "add",
        s(&wasm("gc")?),
        "--name",
        "gc",
        "--set",
        "keep_recent=0s",
    ])?;
    let v = w.json(&["gc", "--dry-run"])?;
    ensure!(planned(&v)? == set(&[&p]), "unpinned, p0 goes: {v}");
    Ok(())
}

// ---------------------------------------------------------------------------
// The hostile plugin: one test per way to misbehave.

/// A store with an image, a container on it and an unreferenced layer;
/// the hostile plugin in `mode`; `gc` (and `gc --dry-run`) must fail with
/// one line naming the plugin and holding `expect`, exit 1, quickly, with
/// the store unchanged and usable.
fn hostile(backend: &str, mode: &str, extra: &[&str], expect: &[&str]) -> Result<World> {
    let w = World::new(backend)?;
    import(
        &w,
        "img-x",
        &[
            vec![("x0", random_bytes(8 << 10))],
            vec![("x1", random_bytes(8 << 10))],
        ],
    )?;
    one_layer(&w, "img-y", 8 << 10)?;
    w.ok(&["image", "rm", "--keep-layers", "img-y"])?;
    w.ok(&["container", "create", "c", "--image", "img-x"])?;
    let before = store_state(&w)?;
    let component = wasm("hostile")?;
    let mut add = vec!["plugin", "add", s(&component), "--name", "hostile"];
    let setting = format!("mode={mode}");
    add.extend(["--set", &setting]);
    add.extend_from_slice(extra);
    w.ok(&add)?;
    for args in [&["gc"][..], &["gc", "--dry-run"][..]] {
        let t0 = Instant::now();
        let line = w.fails(args)?;
        let took = t0.elapsed();
        ensure!(line.starts_with("error: plugin hostile: "), "{line}");
        for e in expect {
            ensure!(line.contains(e), "{args:?}: {line:?} lacks {e:?}");
        }
        ensure!(took < Duration::from_secs(20), "{args:?} took {took:?}");
    }
    ensure!(store_state(&w)? == before, "the store changed");
    w.ok(&["status"])?;
    let m = w.mount("c", None)?;
    ensure!(m.join("x1").is_file(), "the container lost its files");
    w.ok(&["container", "umount", "c"])?;
    Ok(w)
}

/// Loops forever: the deadline stops it; as the quota plugin it fails
/// `container create` closed.
fn hostile_loop(backend: &str) -> Result<()> {
    let w = hostile(
        backend,
        "loop",
        &["--timeout-ms", "500"],
        &["plan-gc did not finish within its 500 ms limit"],
    )?;
    let line = w.fails(&["container", "create", "c2", "--image", "img-x"])?;
    ensure!(
        line.contains("plugin hostile: container-limit did not finish"),
        "{line}"
    );
    let names: Vec<Value> = w
        .json(&["container", "ls"])?
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        names.len() == 1,
        "a failed create left a container: {names:?}"
    );
    // Fuel bounds it as well, long before a generous deadline.
    w.ok(&["plugin", "rm", "hostile"])?;
    w.ok(&[
        "plugin",
        "add",
        s(&wasm("hostile")?),
        "--name",
        "hostile",
        "--set",
        "mode=loop",
        "--timeout-ms",
        "60000",
        "--fuel",
        "50000000",
    ])?;
    let t0 = Instant::now();
    let line = w.fails(&["gc"])?;
    ensure!(
        line.contains("plugin hostile: plan-gc used up its fuel (50000000 units)"),
        "{line}"
    );
    ensure!(
        t0.elapsed() < Duration::from_secs(20),
        "fuel took {:?}",
        t0.elapsed()
    );
    Ok(())
}

/// Panics: the panic message reaches the error line.
fn hostile_trap(backend: &str) -> Result<()> {
    hostile(
        backend,
        "trap",
        &[],
        &["panicked", "hostile plugin panics on purpose"],
    )
    .map(drop)
}

/// Allocates without bound: the memory limit stops it.
fn hostile_oom(backend: &str) -> Result<()> {
    hostile(
        backend,
        "oom",
        &["--memory-mib", "32"],
        &["past its limit of 32 MiB", "was stopped"],
    )
    .map(drop)
}

/// Answers with ids that were never offered: the plan is refused whole.
fn hostile_garbage(backend: &str) -> Result<()> {
    hostile(
        backend,
        "garbage",
        &[],
        &["not a layer of this store", "nothing was deleted"],
    )
    .map(drop)
}

/// Asks to delete referenced layers: refused whole, naming the user.
fn hostile_referenced(backend: &str) -> Result<()> {
    hostile(
        backend,
        "referenced",
        &[],
        &["still used by", "nothing was deleted"],
    )
    .map(drop)
}

// ---------------------------------------------------------------------------
// quota

/// `quota check` judges writes against the policy's limits (warn past the
/// soft limit, deny past the hard one, allow below); `quota show` lists
/// them; a container created without `--size-limit` gets the plugin's
/// limit, enforced by the backend (EDQUOT past it) or refused with the
/// backend's reason where it cannot enforce.
fn quota_limits(backend: &str) -> Result<()> {
    quota_limits_in(&World::new(backend)?)
}

/// [`quota_limits`] with overlay2 or vfs on a `--loopback` XFS, where
/// limits are XFS project quotas: enforced (EDQUOT, and no project limit
/// left once the container is removed) if the running kernel's XFS has
/// quota support, refused with that reason if it has not.
fn quota_limits_xfs(backend: &str) -> Result<()> {
    let w = World::with_select(backend, &["select", backend, "--loopback", "512M"])?;
    let status = w.json(&["status"])?;
    ensure!(status["filesystem"] == "xfs", "{status}");
    let quota = status["capabilities"]["quota"].as_str().unwrap_or_default();
    match drivers_it::fixture::kernel_xfs_quota() {
        Some(true) => ensure!(quota == "yes", "{status}"),
        Some(false) => ensure!(quota.contains("no XFS project quota support"), "{status}"),
        None => bail!("/proc/config.gz does not say whether XFS has quota support"),
    }
    quota_limits_in(&w)
}

fn quota_limits_in(w: &World) -> Result<()> {
    let backend = w.backend.as_str();
    one_layer(w, "img-q", 4 << 10)?;
    one_layer(w, "img-free", 4 << 10)?;
    w.ok(&["container", "create", "busy", "--image", "img-q"])?;
    w.ok(&["container", "create", "idle", "--image", "img-q"])?;
    let m = w.mount("busy", None)?;
    std::fs::write(m.join("payload"), random_bytes(3 << 20))?;
    tool(Command::new("sync").arg("-f").arg(&m))?;
    w.ok(&["container", "umount", "busy"])?;
    // zfs accounts space when its transaction group commits: wait until
    // the store sees the write, as quota decisions rest on it.
    let t0 = Instant::now();
    loop {
        let v = w.json(&["container", "ls", "--size"])?;
        let used = v
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "busy"))
            .and_then(|c| c["size"].as_u64())
            .unwrap_or(0);
        if used >= 3 << 20 {
            break;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "busy still shows {used} bytes used"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    w.ok(&[
        "plugin",
        "add",
        s(&wasm("quota")?),
        "--name",
        "quota",
        "--set",
        "image.img-q=4M",
        "--set",
        "soft_percent=50",
    ])?;
    let v = w.json(&["quota", "check", "busy", "--bytes", "0"])?;
    ensure!(
        v["verdict"] == "warn",
        "3 MiB of 4 MiB is past the 50% soft limit: {v}"
    );
    let out = w.run(&["quota", "check", "busy", "--bytes", "2M"])?;
    let line = out.failure()?;
    ensure!(
        line.starts_with("error: plugin quota: denies 2.0 MiB more for container busy"),
        "{line}"
    );
    let v = w.json(&["quota", "check", "idle", "--bytes", "1K"])?;
    ensure!(v["verdict"] == "allow", "{v}");
    let show = w.json(&["quota", "show"])?;
    let rows = show["containers"]
        .as_array()
        .context("quota show: no containers")?;
    ensure!(rows.len() == 2, "{show}");
    for r in rows {
        ensure!(r["policy_limit_bytes"] == 4 << 20, "{r}");
    }
    ensure!(
        rows.iter()
            .any(|r| r["name"] == "busy" && r["verdict"] == "warn")
            && rows
                .iter()
                .any(|r| r["name"] == "idle" && r["verdict"] == "allow"),
        "{show}"
    );

    // An image the policy gives no limit: created as usual, everywhere.
    w.ok(&["container", "create", "unlimited", "--image", "img-free"])?;

    let status = w.json(&["status"])?;
    let quota = status["capabilities"]["quota"]
        .as_str()
        .context("status: no quota capability")?;
    if quota == "yes" {
        w.ok(&["container", "create", "limited", "--image", "img-q"])?;
        let c = w.json(&["container", "ls"])?;
        let row = c
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == "limited"))
            .context("limited not listed")?
            .clone();
        ensure!(row["size_limit"] == 4 << 20, "{row}");
        let m = w.mount("limited", None)?;
        std::fs::write(m.join("fits"), random_bytes(1 << 20))?;
        let mut f = std::fs::File::create(m.join("too-much"))?;
        let chunk = random_bytes(1 << 20);
        let mut err = None;
        for _ in 0..16 {
            if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_data()) {
                err = Some(e);
                break;
            }
        }
        drop(f);
        let e = err.context("wrote 16 MiB into a container limited to 4 MiB")?;
        ensure!(
            e.raw_os_error() == Some(libc_edquot()),
            "expected EDQUOT, got {e}"
        );
        // overlay2 and vfs: the container's XFS project, which removing
        // the container must leave without a limit.
        let project = match backend {
            "overlay2" | "vfs" => {
                let p = drivers_sys::xfs::project(&std::fs::File::open(&m)?)?;
                ensure!(p.id != 0, "{p:?}");
                Some(p.id)
            }
            _ => None,
        };
        w.ok(&["container", "umount", "limited"])?;
        if let Some(id) = project {
            w.ok(&["container", "rm", "limited"])?;
            let dir = std::fs::File::open(w.state())?;
            let q = drivers_sys::xfs::project_quota(&dir, id)?;
            ensure!(q.is_unused(), "project {id} after container rm: {q:?}");
        }
    } else {
        let line = w.fails(&["container", "create", "limited", "--image", "img-q"])?;
        let why = quota.trim_start_matches("no (").trim_end_matches(')');
        ensure!(
            line.contains("plugin quota: limits container limited to 4194304 bytes")
                && line.contains(&format!("backend {backend} cannot enforce size limits"))
                && line.contains(why),
            "{line} (backend says: {quota})"
        );
        let c = w.json(&["container", "ls"])?;
        ensure!(
            c.as_array()
                .is_some_and(|a| a.iter().all(|r| r["name"] != "limited")),
            "a refused create left a container: {c}"
        );
    }
    Ok(())
}

/// EDQUOT on Linux.
fn libc_edquot() -> i32 {
    rustix::io::Errno::DQUOT.raw_os_error()
}

// ---------------------------------------------------------------------------
// dedup

/// On the test root's own filesystem (ext4 here), `drivers dedup` says it
/// cannot share and does nothing; on one that can, it runs.
fn dedup_unsupported_here(backend: &str) -> Result<()> {
    let w = World::new(backend)?;
    one_layer(&w, "img", 8 << 10)?;
    let fs = w.json(&["status"])?["filesystem"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let before = store_state(&w)?;
    let v = w.json(&["dedup"])?;
    if matches!(fs.as_str(), "btrfs" | "xfs") {
        // No dedup plugin: a filesystem that can share gets that far.
        bail!("the test root is on {fs}: this test needs one that cannot share ({v})");
    }
    ensure!(v["supported"] == false && v["bytes_saved"] == 0, "{v}");
    ensure!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot share extents")),
        "{v}"
    );
    let human = w.ok(&["dedup"])?;
    ensure!(human.starts_with("dedup: nothing done: "), "{human}");
    ensure!(store_state(&w)? == before, "dedup changed the store");
    Ok(())
}

/// A world whose root is a fresh loopback `fs` (xfs or btrfs), made by
/// the product's own loopback code: attached with autoclear, so
/// unmounting it (the world's teardown does, also on failure) frees the
/// loop device.
/// Size of the loopback filesystems: mkfs.xfs wants at least 300 MiB;
/// sparse, so only what the test writes takes space.
const LOOP_BYTES: u64 = 512 << 20;

fn loop_world(backend: &str, fs: &str) -> Result<World> {
    let marker = random_hex(4);
    let base = Path::new("/tmp").join(format!("{}{marker}", harness::TMP_PREFIX));
    std::fs::create_dir(&base)?;
    let w = World {
        root: base.join("root"),
        base,
        backend: backend.to_owned(),
        marker,
    };
    let img = w.base.join(format!("{fs}.img"));
    let mkfs = format!("mkfs.{fs}");
    loopback::create(
        &img,
        LOOP_BYTES,
        &loopback::Mkfs {
            program: &mkfs,
            args: &["-q"],
        },
    )?;
    std::fs::create_dir(&w.root)?;
    loopback::ensure_mounted(&img, &w.root, fs, &[])?;
    w.run(&["select", backend])?.success()?;
    Ok(w)
}

/// Bytes in use on the filesystem at `path`, after a sync.
fn fs_used(path: &Path, fs: &str) -> Result<u64> {
    tool(Command::new("sync").arg("-f").arg(path))?;
    if fs == "btrfs" {
        tool(Command::new("btrfs").args(["filesystem", "sync"]).arg(path))?;
    }
    let st = rustix::fs::statvfs(path)?;
    Ok((st.f_blocks - st.f_bfree) * st.f_frsize)
}

/// sha256 of each layer's `layer diff`: contents, metadata and times.
fn diff_digests(w: &World, ids: &[String]) -> Result<Vec<String>> {
    ids.iter()
        .map(|id| {
            let out = w.base.join(format!("diff-{}.tar", random_hex(3)));
            w.ok(&["layer", "diff", id, "-o", s(&out)])?;
            let d = sha256_file(&out)?;
            std::fs::remove_file(&out)?;
            Ok(d)
        })
        .collect()
}

fn dedup_xfs(backend: &str) -> Result<()> {
    let w = loop_world(backend, "xfs")?;
    dedup_on(&w, "xfs", &w.root)
}

fn dedup_btrfs(backend: &str) -> Result<()> {
    let w = loop_world(backend, "btrfs")?;
    dedup_on(&w, "btrfs", &w.root)
}

/// A backend whose own filesystem shares extents (btrfs: the committed
/// layers are read-only subvolumes, which `FIDEDUPERANGE` still shares
/// into through read-only descriptors).
fn dedup_native(backend: &str) -> Result<()> {
    let w = World::new(backend)?;
    let status = w.json(&["status"])?;
    ensure!(
        status["filesystem"] == backend,
        "status names the layers' filesystem: {status}"
    );
    dedup_on(&w, backend, &w.layers_dir())
}

/// Three images with known duplicates (a 4 MiB file three times, a 2 MiB
/// file twice, a small file below the plugin's minimum twice; image two
/// holds its copies in a second layer, over a first one with a unique
/// file): the dry run plans 10 MiB, the run reports 10 MiB saved, df on
/// the filesystem `fs` at `at` agrees, every layer's contents and times
/// are unchanged, and a second run finds nothing left to share.
fn dedup_on(w: &World, fs: &str, at: &Path) -> Result<()> {
    let big = random_bytes(4 << 20);
    let mid = random_bytes(2 << 20);
    let small = random_bytes(1 << 10);
    let mut ids = Vec::new();
    ids.extend(import(
        w,
        "one",
        &[vec![
            ("big", big.clone()),
            ("mid", mid.clone()),
            ("small", small.clone()),
            ("u1", random_bytes(1 << 20)),
        ]],
    )?);
    ids.extend(import(
        w,
        "two",
        &[
            vec![("u2", random_bytes(1 << 20))],
            vec![("copy-of-big", big.clone()), ("mid", mid)],
        ],
    )?);
    ids.extend(import(
        w,
        "three",
        &[vec![
            ("big", big),
            ("small", small),
            ("u3", random_bytes(1 << 20)),
        ]],
    )?);
    let digests = diff_digests(w, &ids)?;
    w.ok(&["plugin", "add", s(&wasm("dedup")?), "--name", "dedup"])?;
    const SAVED: u64 = 10 << 20;

    let used0 = fs_used(at, fs)?;
    let dry = w.json(&["dedup", "--dry-run"])?;
    ensure!(dry["supported"] == true && dry["filesystem"] == fs, "{dry}");
    ensure!(
        dry["groups"] == 2 && dry["planned_bytes"] == SAVED && dry["bytes_saved"] == 0,
        "{dry}"
    );
    let used1 = fs_used(at, fs)?;
    ensure!(
        used1.abs_diff(used0) < 1 << 20,
        "a dry run changed usage: {used0} → {used1}"
    );

    let done = w.json(&["dedup"])?;
    ensure!(
        done["bytes_saved"] == SAVED,
        "reported {} saved, expected {SAVED}: {done}",
        done["bytes_saved"]
    );
    let used2 = fs_used(at, fs)?;
    let freed = used1.saturating_sub(used2);
    // df measures it independently; metadata (the store's database, the
    // filesystem's own trees) moves it by well under a MiB.
    ensure!(
        freed.abs_diff(SAVED) < 1 << 20,
        "df says {freed} bytes were freed on {fs}, drivers said {SAVED} ({used1} → {used2})"
    );
    ensure!(
        diff_digests(w, &ids)? == digests,
        "a layer's contents or times changed"
    );
    let again = w.json(&["dedup"])?;
    ensure!(
        again["bytes_saved"] == 0 && again["groups"] == 0,
        "second run: {again}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Refusals, listing, the cache.

/// Rewrites every `drivers:policy/<iface>@0.1.0` in a component to
/// `@9.1.0` (same length, so the binary stays well-formed): a plugin built
/// for a contract this host does not speak.
fn patch_version(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut out = bytes.to_vec();
    let needle = b"drivers:policy/";
    let mut n = 0;
    let mut i = 0;
    while i + needle.len() < out.len() {
        if &out[i..i + needle.len()] == needle {
            let rest = i + needle.len();
            if let Some(at) = out[rest..out.len().min(rest + 32)]
                .iter()
                .position(|b| *b == b'@')
            {
                let v = rest + at + 1;
                if out.len() >= v + 5 && &out[v..v + 5] == b"0.1.0" {
                    out[v] = b'9';
                    n += 1;
                }
            }
            i = rest;
        } else {
            i += 1;
        }
    }
    (out, n)
}

/// The patcher rewrites versioned names and nothing else.
fn patch_self_check() -> Result<()> {
    let (out, n) =
        patch_version(b"..drivers:policy/gc@0.1.0..drivers:policy/types@0.1.0.wasi:io@0.1.0");
    ensure!(n == 2, "{n}");
    ensure!(out == b"..drivers:policy/gc@9.1.0..drivers:policy/types@9.1.0.wasi:io@0.1.0");
    Ok(())
}

/// `plugin add` refuses, each with one line naming the plugin and nothing
/// left behind: a file that is not a component, a plugin importing the
/// filesystem, one built for another contract version (the hint says what
/// to rebuild with), settings its init rejects, a second plugin for a hook,
/// a duplicate name; a malformed `--set` is a usage error.
fn refusals(backend: &str) -> Result<()> {
    let w = World::new(backend)?;
    let junk = w.base.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x0d\0\x01\0not really")?;
    let line = w.fails(&["plugin", "add", s(&junk)])?;
    ensure!(
        line.starts_with("error: plugin junk: is not a WebAssembly component"),
        "{line}"
    );

    let line = w.fails(&["plugin", "add", s(&wasm("escape")?)])?;
    ensure!(
        line.starts_with("error: plugin policy_escape: imports ")
            && line.contains("wasi:filesystem/preopens")
            && line.contains("no filesystem"),
        "{line}"
    );

    let (patched, n) = patch_version(&std::fs::read(wasm("gc")?)?);
    ensure!(n >= 3, "only {n} versioned names in the gc component");
    let future = w.base.join("future.wasm");
    std::fs::write(&future, patched)?;
    let out = w.run(&["plugin", "add", s(&future)])?;
    let stderr = out.stderr.clone();
    let line = out.failure()?;
    ensure!(
        line.starts_with("error: plugin future: was built for drivers:policy@9.1.0")
            && line.contains("this drivers speaks drivers:policy@0.1.0"),
        "{line}"
    );
    ensure!(
        stderr.contains("hint: rebuild the plugin with drivers-policy-sdk 0.1"),
        "{stderr}"
    );

    let line = w.fails(&[
        "plugin",
        "add",
        s(&wasm("hostile")?),
        "--set",
        "mode=init-error",
    ])?;
    ensure!(
        line.contains(
            "plugin policy_hostile: init refused its settings: invalid settings: mode=init-error"
        ),
        "{line}"
    );
    let line = w.fails(&["plugin", "add", s(&wasm("gc")?), "--set", "budjet=1G"])?;
    ensure!(line.contains("unknown setting \"budjet\""), "{line}");

    let v = w.json(&["plugin", "ls"])?;
    ensure!(
        v.as_array().is_some_and(Vec::is_empty),
        "refused plugins were recorded: {v}"
    );
    let files: Vec<_> = std::fs::read_dir(w.root.join("plugins"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(files.is_empty(), "refused plugins left files: {files:?}");

    w.ok(&["plugin", "add", s(&wasm("gc")?), "--name", "gc"])?;
    let out = w.run(&["plugin", "add", s(&wasm("gc")?), "--name", "gc2"])?;
    let stderr = out.stderr.clone();
    let line = out.failure()?;
    ensure!(
        line.contains("plugin gc2: serves the gc hook, which plugin gc already serves"),
        "{line}"
    );
    ensure!(
        stderr.contains("hint: drivers plugin rm gc first"),
        "{stderr}"
    );
    let line = w.fails(&["plugin", "add", s(&wasm("gc")?), "--name", "gc"])?;
    ensure!(line.contains("plugin gc already exists"), "{line}");
    w.run(&["plugin", "add", s(&wasm("gc")?), "--set", "novalue"])?
        .usage_error()?;
    let line = w.fails(&["plugin", "add", s(&wasm("gc")?), "--name", "Bad/Name"])?;
    ensure!(line.contains("invalid plugin name"), "{line}");
    Ok(())
}

/// `plugin ls`, `status` and the config show what `plugin add` recorded
/// (keeping the operator's comments); the precompiled form is used, and
/// rebuilt when its key is gone; a changed component is refused; `plugin
/// rm` undoes it all.
fn ls_rm_status_cache(backend: &str) -> Result<()> {
    let w = World::new(backend)?;
    let cfg = w.root.join("config.toml");
    let mut text = std::fs::read_to_string(&cfg)?;
    text.push_str("# the operator's note\n");
    std::fs::write(&cfg, &text)?;
    w.ok(&[
        "plugin",
        "add",
        s(&wasm("gc")?),
        "--set",
        "keep_recent=2h",
        "--set",
        "budget=1G",
        "--timeout-ms",
        "300",
    ])?;
    let ls = w.json(&["plugin", "ls"])?;
    let row = &ls[0];
    ensure!(
        row["name"] == "policy_gc"
            && row["hooks"] == serde_json::json!(["gc"])
            && row["settings"] == serde_json::json!({"budget": "1G", "keep_recent": "2h"})
            && row["timeout_ms"] == 300
            && row["memory_bytes"] == 64 << 20
            && row["error"].is_null(),
        "{ls}"
    );
    let status = w.json(&["status"])?;
    ensure!(
        status["plugins"]
            == serde_json::json!([{"name": "policy_gc", "hooks": ["gc"], "file": "plugins/policy_gc.wasm"}]),
        "{status}"
    );
    let text = std::fs::read_to_string(&cfg)?;
    ensure!(
        text.contains("# the operator's note") && text.contains("[[plugins]]"),
        "{text}"
    );

    let dir = w.root.join("plugins");
    for f in ["policy_gc.wasm", "policy_gc.cwasm", "policy_gc.cwasm.key"] {
        let m = std::fs::metadata(dir.join(f)).with_context(|| format!("{f} missing"))?;
        ensure!(m.permissions().mode() & 0o077 == 0, "{f} is open to others");
    }
    let compiles = |w: &World| -> Result<bool> {
        let out = w
            .run(&["--log-level", "info", "gc", "--dry-run"])?
            .success()?;
        Ok(out.stderr.contains("no usable precompiled form; compiling"))
    };
    ensure!(!compiles(&w)?, "a run after plugin add compiled again");
    std::fs::remove_file(dir.join("policy_gc.cwasm.key"))?;
    ensure!(
        compiles(&w)?,
        "a run without the cache key did not recompile"
    );
    ensure!(
        dir.join("policy_gc.cwasm.key").is_file(),
        "the cache was not refreshed"
    );
    ensure!(!compiles(&w)?, "the refreshed cache was not used");

    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("policy_gc.wasm"))?;
    f.write_all(b"\0")?;
    drop(f);
    let out = w.run(&["gc"])?;
    let stderr = out.stderr.clone();
    let line = out.failure()?;
    ensure!(
        line.contains("plugin policy_gc:") && line.contains("changed since it was added"),
        "{line}"
    );
    ensure!(
        stderr.contains("hint: drivers plugin rm policy_gc"),
        "{stderr}"
    );
    let ls = w.json(&["plugin", "ls"])?;
    ensure!(
        ls[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("changed since")),
        "{ls}"
    );

    w.ok(&["plugin", "rm", "policy_gc"])?;
    ensure!(
        w.json(&["plugin", "ls"])?
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    ensure!(w.json(&["status"])?["plugins"] == serde_json::json!([]));
    let left: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    ensure!(left.is_empty(), "plugin rm left {left:?}");
    let text = std::fs::read_to_string(&cfg)?;
    ensure!(
        text.contains("# the operator's note") && !text.contains("[[plugins]]"),
        "{text}"
    );
    let line = w.fails(&["plugin", "rm", "policy_gc"])?;
    ensure!(line.contains("plugin policy_gc not found"), "{line}");
    let line = w.fails(&["gc"])?;
    ensure!(line.contains("no gc plugin is configured"), "{line}");
    Ok(())
}

// ---------------------------------------------------------------------------
// A third-party plugin from the template.

/// What sdk/README.md tells a newcomer, outside the workspace: create a
/// crate from the template, build it for wasm32-wasip2 against the SDK by
/// path, `drivers plugin add` it, `drivers gc --dry-run`. The plugin must
/// then choose exactly the old unreferenced layer.
fn third_party_template(backend: &str) -> Result<()> {
    let w = World::new(backend)?;
    let dir = w.base.join("my-gc");
    // 1. sdk/new-plugin.sh DIR
    tool(Command::new(workspace().join("sdk/new-plugin.sh")).arg(&dir))?;
    // 2. cargo build --release --target wasm32-wasip2 (in its own target
    // directory, or CI's warm one for the plugins).
    let target = std::env::var_os("DRIVERS_PLUGIN_TARGET_DIR")
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    tool(
        Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target),
    )?;
    let component = target.join("wasm32-wasip2/release/my_gc.wasm");
    ensure!(component.is_file(), "{} was not built", component.display());
    // 3. drivers plugin add
    w.ok(&["plugin", "add", s(&component), "--set", "max_age=0s"])?;

    let old = one_layer(&w, "old", 16 << 10)?;
    one_layer(&w, "kept", 16 << 10)?;
    w.ok(&["image", "rm", "--keep-layers", "old"])?;
    let v = w.json(&["gc", "--dry-run"])?;
    ensure!(v["plugin"] == "my_gc", "{v}");
    ensure!(planned(&v)? == set(&[&old]), "{v}");
    let human = w.ok(&["gc", "--dry-run"])?;
    ensure!(
        human.contains("unused for"),
        "the template's reasons: {human}"
    );
    Ok(())
}
