//! `drivers bench` end to end, as root: every workload yields samples on
//! vfs, overlay2 and every backend `DRIVERS_TEST_REQUIRE` names, `--json`
//! holds them, `--plot` is an SVG document, and nothing the bench made is
//! left behind. No timing is asserted: the machines are small and shared.
//!
//! Smaller than `--quick`, to keep CI's time: 2 runs, 5 containers,
//! chains of 1 and 64, and a small three-layer image made by umoci from
//! real files of this machine (a base of `/usr/share` files, a layer adding
//! files, a layer deleting files and a directory) instead of the Debian
//! image, whose debootstrap alone takes minutes on a fresh machine and whose
//! 20 full copies per run make vfs slow. Same code paths, same shape of
//! input (three gzip layers, whiteouts, an opaque-free delete of a tree).
//!
//! ```sh
//! cargo build --bin drivers
//! DRIVERS_TEST_ROOT=1 DRIVERS_BIN=$PWD/target/debug/drivers \
//!     cargo test -p drivers-it --test bench
//! ```

#[path = "cli_root/harness.rs"]
#[allow(
    dead_code,
    reason = "the cli_root harness has helpers this target does not need"
)]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use harness::Gate;
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let gate = harness::gate();
    let plans = harness::backends(&gate);
    let mut run: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for p in &plans {
        match &p.gate {
            Gate::Run => run.push(p.name.clone()),
            Gate::Fail(why) => problems.push(format!("{}: {why}", p.name)),
            Gate::Ignore(why) => eprintln!("bench: {} not measured: {why}", p.name),
        }
    }
    let ignored = matches!(gate, Gate::Ignore(_));
    if let Gate::Ignore(why) = &gate {
        eprintln!("bench: ignored: {why}");
    }
    let (g2, p2) = (gate.clone(), problems.clone());
    // A loopback btrfs makes the interrupted run leave the most behind.
    let victim = if run.iter().any(|b| b == "btrfs") {
        "btrfs"
    } else {
        "overlay2"
    };
    let trial = Trial::test("bench::quick_every_workload", move || {
        if let Gate::Fail(why) | Gate::Ignore(why) = &gate {
            return Err(Failed::from(why.clone()));
        }
        if !problems.is_empty() {
            return Err(Failed::from(problems.join("; ")));
        }
        bench_every_workload(&run).map_err(|e| Failed::from(format!("{e:#}")))
    })
    .with_ignored_flag(ignored);
    let interrupted = Trial::test("bench::ctrl_c_leaves_nothing", move || {
        if let Gate::Fail(why) | Gate::Ignore(why) = &g2 {
            return Err(Failed::from(why.clone()));
        }
        if !p2.is_empty() {
            return Err(Failed::from(p2.join("; ")));
        }
        ctrl_c_leaves_nothing(victim).map_err(|e| Failed::from(format!("{e:#}")))
    })
    .with_ignored_flag(ignored);
    libtest_mimic::run(&args, vec![trial, interrupted]).exit();
}

/// A scratch directory under /tmp, removed (after unmounting anything the
/// bench may have left, which is itself a failure) on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(m) = drivers_mount::mounts_under(&self.0) {
            for p in m {
                let _ = drivers_mount::unmount(&p);
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("start {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A three-layer OCI image made by umoci from real files of this machine.
fn small_image(dir: &Path) -> Result<PathBuf> {
    let oci = dir.join("oci");
    let bundle = dir.join("bundle");
    let img = format!("{}:small", oci.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&oci))?;
    run(Command::new("umoci").args(["new", "--image", &img]))?;
    let layer = |change: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
        run(Command::new("umoci")
            .args(["unpack", "--image", &img])
            .arg(&bundle))?;
        change(&bundle.join("rootfs"))?;
        run(Command::new("umoci")
            .args(["repack", "--image", &img])
            .arg(&bundle))?;
        std::fs::remove_dir_all(&bundle)?;
        Ok(())
    };
    // Base: real files, enough under usr/share for workload 4's deletes.
    layer(&|root| {
        std::fs::create_dir_all(root.join("usr/share"))?;
        for src in ["/usr/share/zoneinfo", "/usr/share/common-licenses", "/etc"] {
            if Path::new(src).is_dir() {
                let dst = root.join(src.trim_start_matches('/'));
                std::fs::create_dir_all(dst.parent().context("parent")?)?;
                run(Command::new("cp").args(["-a", src]).arg(&dst))?;
            }
        }
        Ok(())
    })?;
    // Adds files.
    layer(&|root| {
        run(Command::new("cp")
            .args(["-a", "/usr/share/perl5"])
            .arg(root.join("usr/share/perl5"))
            .stderr(Stdio::null()))
        .or_else(|_| {
            std::fs::create_dir_all(root.join("usr/share/added"))?;
            for i in 0..200 {
                std::fs::write(root.join(format!("usr/share/added/f{i}")), format!("{i}"))?;
            }
            Ok(())
        })
    })?;
    // Deletes files and a directory.
    layer(&|root| {
        std::fs::remove_dir_all(root.join("usr/share/common-licenses")).ok();
        for e in std::fs::read_dir(root.join("etc"))?.flatten().take(20) {
            if e.file_type()?.is_file() {
                std::fs::remove_file(e.path())?;
            }
        }
        std::fs::write(root.join("etc/motd"), "made by tests/bench.rs\n")?;
        Ok(())
    })?;
    Ok(oci)
}

/// SIGINT in the middle of a run (containers created, mounts possible):
/// exit 1 with one `error:` line, and no mount, loop device or root left.
fn ctrl_c_leaves_nothing(backend: &str) -> Result<()> {
    use std::io::BufRead;
    let tmp = Path::new("/tmp").join(format!(
        "{}bench-int-{}",
        harness::TMP_PREFIX,
        std::process::id()
    ));
    std::fs::create_dir_all(&tmp)?;
    let scratch = Scratch(tmp.clone());
    let image = small_image(&tmp.join("image"))?;
    let work = tmp.join("work");
    std::fs::create_dir_all(&work)?;
    let mut child = Command::new(harness::bin())
        .args(["--root"])
        .arg(tmp.join("unused-root"))
        .args(["bench", "--quick", "--backends", backend])
        .arg("--image")
        .arg(&image)
        .arg("--work-dir")
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start drivers bench")?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    // Once the backend is mid-way: containers made, its root mounted.
    for l in lines.by_ref() {
        let l = l?;
        seen.push(l.clone());
        if l.contains("created") {
            break;
        }
    }
    run(Command::new("kill").args(["-INT", &child.id().to_string()]))?;
    let rest: Vec<String> = lines.map_while(std::result::Result::ok).collect();
    let status = child.wait()?;
    seen.extend(rest);
    let text = seen.join("\n");
    ensure!(
        status.code() == Some(1),
        "an interrupted bench should exit 1, got {status}:\n{text}"
    );
    ensure!(
        seen.iter().filter(|l| l.starts_with("error:")).count() == 1
            && text.contains("interrupted"),
        "expected one `error: … interrupted` line:\n{text}"
    );
    nothing_left(&work, "the interrupted bench")?;
    drop(scratch);
    Ok(())
}

fn bench_every_workload(backends: &[String]) -> Result<()> {
    for b in ["vfs", "overlay2"] {
        ensure!(
            backends.iter().any(|x| x == b),
            "{b} must be measured but is not usable here"
        );
    }
    let tmp = Path::new("/tmp").join(format!(
        "{}bench-{}",
        harness::TMP_PREFIX,
        std::process::id()
    ));
    std::fs::create_dir_all(&tmp)?;
    let scratch = Scratch(tmp.clone());
    let image = small_image(&tmp.join("image"))?;
    let work = tmp.join("work");
    std::fs::create_dir_all(&work)?;
    let json = tmp.join("out.json");
    let svg = tmp.join("out.svg");
    let out = Command::new(harness::bin())
        .args(["--root"])
        .arg(tmp.join("unused-root"))
        .args(["bench", "--quick", "--reps", "2", "--containers", "5"])
        .args(["--depths", "1,64", "--backends", &backends.join(",")])
        .arg("--image")
        .arg(&image)
        .arg("--work-dir")
        .arg(&work)
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .stdin(Stdio::null())
        .output()
        .context("run drivers bench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "drivers bench failed ({}):\n{stderr}",
        out.status
    );

    // The table: backends (and the floor) as columns.
    let header = stdout.lines().next().unwrap_or_default();
    for b in backends
        .iter()
        .map(|b| b.to_uppercase())
        .chain(["FLOOR".into()])
    {
        ensure!(
            header.split_whitespace().any(|c| c == b),
            "the table's header lacks {b}: {header}\n{stdout}"
        );
    }

    // The JSON: samples for every workload on every backend, 7 for the floor.
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let cols = v["columns"].as_array().context("no columns")?;
    for name in backends.iter().map(String::as_str).chain(["floor"]) {
        let c = cols
            .iter()
            .find(|c| c["name"] == name)
            .with_context(|| format!("no column {name} in the JSON"))?;
        ensure!(c["error"].is_null(), "{name} stopped: {}", c["error"]);
        let metrics = c["metrics"].as_array().context("no metrics")?;
        let want: &[u64] = if name == "floor" {
            &[7]
        } else {
            &[1, 2, 3, 4, 5, 6]
        };
        for w in want {
            let with_samples = metrics.iter().any(|m| {
                m["workload"] == *w && m["samples"].as_array().is_some_and(|s| !s.is_empty())
            });
            ensure!(
                with_samples,
                "{name}: no samples for workload {w}: {metrics:?}"
            );
        }
        for m in metrics {
            ensure!(
                m["error"].is_null(),
                "{name}: {} failed: {}",
                m["id"],
                m["error"]
            );
            for s in m["samples"].as_array().context("samples")? {
                let x = s.as_f64().context("a sample is not a number")?;
                ensure!(x.is_finite() && x >= 0.0, "{name}: {}: sample {x}", m["id"]);
            }
        }
    }

    // The SVG: well-formed XML whose root is an <svg> (Python's parser, a
    // real XML implementation, not ours).
    let check = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); \
             assert r.tag.endswith('svg'), r.tag; \
             assert len(list(r.iter())) > 50, 'too few elements'; print('ok')",
        ])
        .arg(&svg)
        .output()
        .context("run python3")?;
    ensure!(
        check.status.success(),
        "the plot is not a readable SVG: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Nothing left: no mounts, no loop devices on its images, no roots.
    nothing_left(&work, "the bench")?;
    drop(scratch);
    Ok(())
}

/// Fails unless `work` holds no mount, no entry and backs no loop device:
/// what `who` made is all gone.
fn nothing_left(work: &Path, who: &str) -> Result<()> {
    let left_mounts = drivers_mount::mounts_under(work)?;
    ensure!(left_mounts.is_empty(), "mounts left: {left_mounts:?}");
    let left: Vec<_> = std::fs::read_dir(work)?
        .flatten()
        .map(|e| e.path())
        .collect();
    ensure!(left.is_empty(), "{who} left {left:?}");
    if let Some((dev, f)) = harness::loops_under(work)?.into_iter().next() {
        bail!("loop device {dev:?} still bound to {f}");
    }
    Ok(())
}
