//! The conformance suite: one trial per (backend in
//! `drivers_host::backends::BACKENDS`) × (case in `drivers_it::CASES`),
//! named `<backend>::<case>`, so a new backend or case is covered by
//! construction. Gating: see `drivers_it::gate`.
//!
//! Run as root: `DRIVERS_TEST_ROOT=1 cargo test -p drivers-it --test
//! conformance -- --test-threads 2`.

use drivers_it::gate::{self, Gate, GateEnv};
use drivers_it::{CASES, Fixture};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    // The crash cases re-execute this binary as the process they kill.
    if let Some(code) = drivers_it::child::run_if_child() {
        std::process::exit(code);
    }
    let args = Arguments::from_args();
    let env = GateEnv::from_env();
    let backends = drivers_host::backends::BACKENDS;
    let mut trials = Vec::new();

    // A required backend this build lacks must not pass by having no trials.
    let known: Vec<&str> = backends.iter().map(|b| b.name).collect();
    for name in env.required_but_absent(&known) {
        let why = format!(
            "{name} is listed in DRIVERS_TEST_REQUIRE but is not one of this build's backends ({})",
            known.join(", ")
        );
        trials.push(Trial::test(format!("{name}::available"), move || {
            Err(Failed::from(why))
        }));
    }

    for backend in backends {
        let gate = gate::decide(backend.name, &env, || gate::probe(backend));
        match &gate {
            Gate::Skip(why) => eprintln!("conformance: {} ignored: {why}", backend.name),
            Gate::Fail(why) => eprintln!("conformance: {} fails: {why}", backend.name),
            Gate::Run => {}
        }
        for case in CASES {
            let name = format!("{}::{}", backend.name, case.name);
            let ignored = matches!(gate, Gate::Skip(_));
            let gate = gate.clone();
            let label = name.clone();
            let trial = Trial::test(name, move || match gate {
                Gate::Run => drivers_it::gate::in_turn(backend.name, || {
                    let fx = Fixture::new(backend, &label)
                        .map_err(|e| Failed::from(format!("fixture: {e:#}")))?;
                    (case.run)(&fx).map_err(|e| {
                        fx.dump();
                        Failed::from(format!("{e:#}"))
                    })
                }),
                // Reached for Skip only with --include-ignored: say why
                // instead of pretending to pass.
                Gate::Skip(why) | Gate::Fail(why) => Err(Failed::from(why)),
            });
            trials.push(trial.with_ignored_flag(ignored));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
