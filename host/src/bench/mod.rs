//! `drivers bench`: the same workloads on every usable backend in one run,
//! each backend in a fresh root of its own under a scratch directory (btrfs
//! and zfs on loopback filesystems made for the run and removed after it),
//! next to the physical floor of the machine (GNU `tar -x`, `mkdir`, a bind
//! mount). Every workload is repeated; the table shows the median and the
//! spread, `--json` every raw sample, `--plot` an SVG chart.
//!
//! Workloads (issue 6):
//! 1. import a real three-layer Debian image (`tools/make-debian-image.sh`);
//! 2. create containers on it (first, and steady state);
//! 3. mount and unmount one;
//! 4. in a container: 1,000 small files, one byte of a 100 MiB file
//!    rewritten (copy-up), 100 base files deleted, then commit;
//! 5. first read of a bottom-layer file through chains of 1…500 layers;
//! 6. removing everything, and the bytes the containers take on the
//!    backing filesystem;
//! 7. the floor: `tar -x` of the same layers, `mkdir`, bind mount.
//!
//! A workload that fails on one backend (a chain too deep, a full disk) is
//! reported in its cell; the others go on.

mod inputs;
mod plot;
mod report;
mod work;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use drivers_api::Availability;

use crate::backends;
use crate::config::Config;
use crate::error::{Error, IoContext, Result};

pub use report::{Column, Metric, Report};

/// `drivers bench [--backends LIST] [--quick] [--json FILE] [--plot FILE.svg]`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Backends to measure, comma-separated [default: every usable one].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub backends: Option<Vec<String>>,
    /// Fewer repetitions and smaller counts: minutes instead of tens of minutes.
    #[arg(long)]
    pub quick: bool,
    /// Write the raw samples of every workload to FILE as JSON; `--json FILE` after `bench` works too.
    #[arg(long = "json-file", value_name = "FILE")]
    pub json_file: Option<PathBuf>,
    /// Draw the results as an SVG chart into FILE.svg.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// The OCI image layout of workload 1 [default: the output of tools/make-debian-image.sh].
    #[arg(long, value_name = "DIR", env = "DRIVERS_BENCH_IMAGE")]
    pub image: Option<PathBuf>,
    /// Repetitions instead of the plan's (5, or 3 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: Option<u32>,
    /// Containers per repetition instead of the plan's (100, or 10 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub containers: Option<u32>,
    /// Chain depths of the read workload instead of the plan's, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub depths: Option<Vec<usize>>,
    /// Where the fresh per-backend roots go: the filesystem you want measured.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    pub work_dir: PathBuf,
}

/// Rewrites `drivers … bench … --json FILE` into `--json-file FILE`.
///
/// The spec's `drivers bench --json FILE` takes a value, while the global
/// `--json` is a flag that clap propagates into every subcommand; the two
/// cannot share one name in clap. A `--json` after `bench` followed by a
/// value (not an option) is the bench's; a bare `--json` stays the global
/// flag (the report as JSON on stdout).
pub fn bench_json_alias(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    // Global options that take a separate value, before the subcommand.
    const WITH_VALUE: &[&str] = &["--root", "--config", "--log-level"];
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    out.extend(it.next());
    let mut in_bench = false;
    let mut subcommand_seen = false;
    let mut expect_value = false;
    let mut rest: Vec<std::ffi::OsString> = it.collect();
    rest.reverse();
    while let Some(a) = rest.pop() {
        let s = a.to_string_lossy().into_owned();
        if expect_value {
            expect_value = false;
        } else if !subcommand_seen && WITH_VALUE.contains(&s.as_str()) {
            expect_value = true;
        } else if !subcommand_seen && !s.starts_with('-') {
            subcommand_seen = true;
            in_bench = s == "bench";
        } else if in_bench && s == "--json" {
            if rest
                .last()
                .is_some_and(|v| !v.to_string_lossy().starts_with('-'))
            {
                out.push("--json-file".into());
                continue;
            }
        } else if in_bench && let Some(v) = s.strip_prefix("--json=") {
            out.push(format!("--json-file={v}").into());
            continue;
        }
        out.push(a);
    }
    out
}

/// Counts and repetitions of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    /// Repetitions of workloads 1, 2, 4, 5 and 6.
    pub reps: usize,
    /// Containers created per repetition (workloads 2 and 6).
    pub containers: usize,
    /// Mount/unmount cycles per repetition (workload 3).
    pub mount_cycles: usize,
    /// Small files written (workload 4).
    pub small_files: usize,
    /// Size of the file one byte of which is rewritten (workload 4).
    pub big_file_bytes: u64,
    /// Base files deleted (workload 4).
    pub deletes: usize,
    /// Chain depths (workload 5).
    pub depths: Vec<usize>,
}

impl Plan {
    /// The plan of the issue, or the `--quick` one.
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                reps: 3,
                // vfs copies the whole image per container, and removing
                // the copies dominates its time: 10 keep it to minutes.
                containers: 10,
                mount_cycles: 10,
                small_files: 1000,
                big_file_bytes: 100 << 20,
                deletes: 100,
                depths: vec![1, 64, 500],
            }
        } else {
            Plan {
                reps: 5,
                containers: 100,
                mount_cycles: 20,
                small_files: 1000,
                big_file_bytes: 100 << 20,
                deletes: 100,
                depths: vec![1, 64, 128, 256, 500],
            }
        }
    }
}

/// Set when SIGINT or SIGTERM arrives; workloads stop at the next step and
/// everything made so far is removed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails once the run was interrupted.
fn check_interrupt() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// Routes SIGINT and SIGTERM to a thread that only sets [`INTERRUPTED`], so
/// Ctrl-C ends the run through its cleanup instead of leaving mounts, loop
/// devices and roots behind. Blocking the signals (inherited by the threads
/// and children started later) and waiting for them needs no unsafe handler.
fn catch_signals() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(|e| {
        Error::Precondition(format!("cannot block SIGINT/SIGTERM for the bench: {e}"))
    })?;
    std::thread::spawn(move || {
        while set.wait().is_ok() {
            if !INTERRUPTED.swap(true, Ordering::Relaxed) {
                eprintln!("bench: interrupted, cleaning up (this can take a moment)");
            }
        }
    });
    Ok(())
}

/// Runs `drivers bench`. It never touches the store of `--root`: each
/// backend gets a fresh root with default settings under `--work-dir`.
pub fn run(args: &BenchArgs) -> Result<Report> {
    if !rustix::process::geteuid().is_root() {
        return Err(Error::Precondition(
            "drivers bench needs root: every backend mounts filesystems".into(),
        ));
    }
    let probe_root = args.work_dir.join("drivers-bench-probe");
    let chosen = choose_backends(&probe_root, &Config::default(), args.backends.as_deref())?;
    let image = match &args.image {
        Some(p) => p.clone(),
        None => inputs::default_image()?,
    };
    // Checked before anything is made, so a wrong path costs nothing.
    inputs::layer_blobs(&image).map_err(|e| Error::BadImage {
        source_desc: format!("bench image {}", image.display()),
        reason: format!("{e:#}"),
    })?;
    for out in [&args.json_file, &args.plot].into_iter().flatten() {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(Error::Invalid {
                field: "output file",
                reason: format!("{}: {} is not a directory", out.display(), dir.display()),
            });
        }
    }
    std::fs::create_dir_all(&args.work_dir).ctx("create", &args.work_dir)?;
    let mut plan = Plan::new(args.quick);
    if let Some(n) = args.reps {
        plan.reps = n as usize;
    }
    if let Some(n) = args.containers {
        plan.containers = n as usize;
    }
    if let Some(d) = &args.depths {
        if d.is_empty() || d.contains(&0) {
            return Err(Error::Invalid {
                field: "--depths",
                reason: "give one or more depths of at least 1".into(),
            });
        }
        plan.depths = d.clone();
    }
    catch_signals()?;

    let scratch = args
        .work_dir
        .join(format!("drivers-bench-{}", crate::store::random_hex(4)));
    std::fs::create_dir(&scratch).ctx("create", &scratch)?;
    let result = work::run_all(&scratch, &image, &chosen, &plan);
    // Whatever happened, nothing of the run stays.
    let cleaned = work::remove_scratch(&scratch);
    let report = result.map_err(|e| Error::Precondition(format!("{e:#}")))?;
    if let Err(e) = cleaned {
        return Err(Error::Precondition(format!(
            "the bench ran but could not remove {}: {e:#}",
            scratch.display()
        )));
    }
    if INTERRUPTED.load(Ordering::Relaxed) {
        return Err(Error::Precondition(
            "interrupted; everything the bench made was removed".into(),
        ));
    }
    if let Some(f) = &args.json_file {
        let text = serde_json::to_vec_pretty(&report).map_err(|e| Error::Json {
            what: "bench report".into(),
            source: e,
        })?;
        std::fs::write(f, text).ctx("write", f)?;
    }
    if let Some(f) = &args.plot {
        plot::write_svg(&report, f)
            .map_err(|e| Error::Precondition(format!("could not draw {}: {e:#}", f.display())))?;
    }
    Ok(report)
}

/// The backends to run: those named (each must exist and be usable), or
/// every usable one of this build.
fn choose_backends(
    root: &std::path::Path,
    cfg: &Config,
    named: Option<&[String]>,
) -> Result<Vec<&'static drivers_api::Backend>> {
    let mut out = Vec::new();
    match named {
        Some(names) => {
            for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
                let b = backends::find(n)?;
                if let Availability::Unusable { reason, hint } = backends::probe(root, b, cfg) {
                    return Err(Error::Backend(drivers_api::Error::Unavailable {
                        backend: b.name,
                        reason,
                        hint,
                    }));
                }
                if !out.iter().any(|x: &&drivers_api::Backend| x.name == b.name) {
                    out.push(b);
                }
            }
        }
        None => {
            for b in backends::BACKENDS {
                match backends::probe(root, b, cfg) {
                    Availability::Usable => out.push(b),
                    Availability::Unusable { reason, .. } => {
                        eprintln!("bench: skipping {}: {reason}", b.name);
                    }
                }
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid {
            field: "backends",
            reason: "no usable backend to measure".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::bench_json_alias;

    fn alias(args: &[&str]) -> Vec<String> {
        bench_json_alias(args.iter().map(|a| a.into()).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn json_with_a_value_after_bench_is_the_bench_file() {
        assert_eq!(
            alias(&["drivers", "bench", "--quick", "--json", "out.json"]),
            ["drivers", "bench", "--quick", "--json-file", "out.json"]
        );
        assert_eq!(
            alias(&["drivers", "--root", "/r", "bench", "--json=x.json"]),
            ["drivers", "--root", "/r", "bench", "--json-file=x.json"]
        );
    }

    #[test]
    fn bare_json_and_other_commands_are_left_alone() {
        let same = |a: &[&str]| assert_eq!(alias(a), a);
        same(&["drivers", "--json", "bench", "--quick"]);
        same(&["drivers", "bench", "--json", "--quick"]);
        same(&["drivers", "bench", "--json"]);
        same(&["drivers", "image", "ls", "--json"]);
        // A global option's value named "bench" is not the subcommand.
        same(&["drivers", "--root", "bench", "image", "--json", "ls"]);
    }
}
