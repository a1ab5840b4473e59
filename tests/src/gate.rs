//! Whether a backend's trials run, are ignored, or fail without running
//! (STYLE.md 2.8, modelled on containerd's `-test.root`).
//!
//! - `DRIVERS_TEST_ROOT=1` opts in. Unset: trials are ignored, with one line
//!   per backend on stderr.
//! - Opted in but not root: trials fail, never silently pass.
//! - Root: the backend's `probe` decides. Unusable → ignored with the reason.
//! - A backend that must be covered — `CI=true`, or listed in
//!   `DRIVERS_TEST_REQUIRE` (comma list) — is never ignored: an unusable
//!   backend or a missing `DRIVERS_TEST_ROOT` makes its trials fail with the
//!   reason.

use drivers_api::{Availability, Backend};

/// The decision for one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Run the trials.
    Run,
    /// Report the trials ignored, for this reason.
    Skip(String),
    /// Fail every trial with this reason.
    Fail(String),
}

/// What the gate looks at, read once from the environment.
#[derive(Clone, Debug, Default)]
pub struct GateEnv {
    /// `DRIVERS_TEST_ROOT` is set (and not `0`).
    pub opted_in: bool,
    /// The effective uid is 0.
    pub is_root: bool,
    /// `CI` is `true` (or `1`).
    pub ci: bool,
    /// `DRIVERS_TEST_REQUIRE`, split on commas.
    pub required: Vec<String>,
}

/// A comma-separated environment variable as a list (empty items dropped).
pub fn env_list(var: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn truthy(v: Option<std::ffi::OsString>) -> bool {
    v.is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

impl GateEnv {
    /// From the process environment.
    pub fn from_env() -> GateEnv {
        GateEnv {
            opted_in: truthy(std::env::var_os("DRIVERS_TEST_ROOT")),
            is_root: rustix::process::geteuid().is_root(),
            ci: std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1"),
            required: env_list("DRIVERS_TEST_REQUIRE"),
        }
    }

    /// Whether `backend` must be covered (CI, or named in the require list).
    pub fn must_cover(&self, backend: &str) -> bool {
        self.ci || self.required.iter().any(|r| r == backend)
    }

    /// Required backends this build does not have at all.
    pub fn required_but_absent(&self, known: &[&str]) -> Vec<String> {
        self.required
            .iter()
            .filter(|r| !known.contains(&r.as_str()))
            .cloned()
            .collect()
    }
}

/// The decision for `backend`, given `probe`'s answer (only consulted when
/// opted in as root).
pub fn decide(backend: &str, env: &GateEnv, probe: impl FnOnce() -> Availability) -> Gate {
    let must = env.must_cover(backend);
    let why_must = if env.required.iter().any(|r| r == backend) {
        "it is listed in DRIVERS_TEST_REQUIRE"
    } else {
        "CI=true"
    };
    if !env.opted_in {
        let why = "needs root and real filesystems: set DRIVERS_TEST_ROOT=1 and run as root (`cargo xtask test-root`)";
        return if must {
            Gate::Fail(format!(
                "{backend} must be tested ({why_must}) but DRIVERS_TEST_ROOT is not set; it {why}"
            ))
        } else {
            Gate::Skip(why.into())
        };
    }
    if !env.is_root {
        return Gate::Fail(
            "DRIVERS_TEST_ROOT=1 is set but the tests are not running as root".into(),
        );
    }
    match probe() {
        Availability::Usable => Gate::Run,
        Availability::Unusable { reason, hint } => {
            let hint = hint.map(|h| format!(" (hint: {h})")).unwrap_or_default();
            if must {
                Gate::Fail(format!(
                    "{backend} must be tested ({why_must}) but is unusable here: {reason}{hint}"
                ))
            } else {
                Gate::Skip(format!("unusable here: {reason}{hint}"))
            }
        }
    }
}

/// Probes `backend` for a fixture root under the temporary directory
/// (where [`crate::Fixture`] puts its roots). Side-effect free.
pub fn probe(backend: &Backend) -> Availability {
    let root = std::env::temp_dir().join("drivers-it-probe");
    drivers_host::backends::probe(&root, backend, &Default::default())
}

/// Backends whose trials run one at a time within a test binary (other
/// backends' trials still run beside them). zfs-fuse once deadlocked with
/// two test pools busy at once (39 of its 40 FUSE threads waiting on one
/// lock, every zfs-fuse mount on the machine stuck); one pool at a time
/// is the load it is known to carry.
const ONE_AT_A_TIME: &[&str] = &["zfs"];

/// Held by the running trial of an [`ONE_AT_A_TIME`] backend.
static ONE_AT_A_TIME_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `trial` of `backend`, after the previous trial of the same
/// backend finished if the backend is in [`ONE_AT_A_TIME`].
pub fn in_turn<T>(backend: &str, trial: impl FnOnce() -> T) -> T {
    if !ONE_AT_A_TIME.contains(&backend) {
        return trial();
    }
    // A trial that failed by panicking must not stop the others.
    let _turn = ONE_AT_A_TIME_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    trial()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unusable() -> Availability {
        Availability::Unusable {
            reason: "no overlay".into(),
            hint: None,
        }
    }

    /// The whole decision table: opt-in, root, probe, and whether the
    /// backend must be covered. A required backend is never ignored.
    #[test]
    fn decision_table() {
        let env = |opted_in, is_root, ci, req: &[&str]| GateEnv {
            opted_in,
            is_root,
            ci,
            required: req.iter().map(|s| s.to_string()).collect(),
        };
        let skip = |g: &Gate| matches!(g, Gate::Skip(_));
        let fail = |g: &Gate| matches!(g, Gate::Fail(_));
        // Not opted in.
        assert!(skip(&decide("vfs", &env(false, true, false, &[]), || {
            Availability::Usable
        })));
        assert!(fail(&decide(
            "vfs",
            &env(false, true, false, &["vfs"]),
            || Availability::Usable
        )));
        assert!(fail(&decide("vfs", &env(false, true, true, &[]), || {
            Availability::Usable
        })));
        assert!(skip(&decide(
            "vfs",
            &env(false, true, false, &["overlay2"]),
            || Availability::Usable
        )));
        // Opted in, not root: always a failure.
        assert!(fail(&decide("vfs", &env(true, false, false, &[]), || {
            Availability::Usable
        })));
        // Opted in as root: the probe decides, the require list hardens.
        assert_eq!(
            decide("vfs", &env(true, true, false, &[]), || Availability::Usable),
            Gate::Run
        );
        assert!(skip(&decide("vfs", &env(true, true, false, &[]), unusable)));
        assert!(fail(&decide(
            "vfs",
            &env(true, true, false, &["vfs"]),
            unusable
        )));
        assert!(fail(&decide("vfs", &env(true, true, true, &[]), unusable)));
        match decide("ovl", &env(true, true, false, &["ovl"]), unusable) {
            Gate::Fail(why) => assert!(
                why.contains("no overlay") && why.contains("DRIVERS_TEST_REQUIRE"),
                "{why}"
            ),
            g => panic!("{g:?}"),
        }
    }

    /// A required backend this build lacks is reported, not forgotten.
    #[test]
    fn required_but_absent() {
        let env = GateEnv {
            required: vec!["vfs".into(), "zfs".into()],
            ..GateEnv::default()
        };
        assert_eq!(
            env.required_but_absent(&["vfs", "overlay2"]),
            vec!["zfs".to_string()]
        );
    }
}
