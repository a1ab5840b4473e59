//! A plugin that misbehaves on demand, so the host's tests can prove that a
//! bad plugin costs one error line and nothing else. Never install it for
//! real.
//!
//! Setting `mode` chooses what every hook does:
//!
//! | mode         | gc, dedup, quota                                               |
//! |--------------|----------------------------------------------------------------|
//! | `ok`         | behave: delete nothing, share nothing, no limit, allow         |
//! | `loop`       | spin forever (the host's deadline must stop it)                |
//! | `trap`       | panic (the host must report the message)                       |
//! | `oom`        | allocate without bound (the host's memory limit must stop it)  |
//! | `garbage`    | answer with things that were never offered                     |
//! | `referenced` | gc: ask to delete every layer that is still referenced         |
//! | `init-error` | refuse the settings in `init`                                  |

use std::hint::black_box;

use drivers_policy_sdk::types::{
    ContainerRequest, DedupAction, DedupRequest, FileRef, GcChoice, GcPlan, GcRequest, PolicyError,
    Verdict, WriteRequest,
};
use drivers_policy_sdk::{DedupPolicy, GcPolicy, Policy, QuotaPolicy, Settings};

/// What to do wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Behave.
    Ok,
    /// Never return.
    Loop,
    /// Panic.
    Trap,
    /// Allocate until stopped.
    Oom,
    /// Answer with unknown ids.
    Garbage,
    /// gc: delete referenced layers.
    Referenced,
}

/// The hostile policy.
#[derive(Debug)]
pub struct Hostile(Mode);

impl Policy for Hostile {
    fn init(settings: Settings) -> Result<Self, PolicyError> {
        let mode = match settings.get("mode").unwrap_or("ok") {
            "ok" => Mode::Ok,
            "loop" => Mode::Loop,
            "trap" => Mode::Trap,
            "oom" => Mode::Oom,
            "garbage" => Mode::Garbage,
            "referenced" => Mode::Referenced,
            "init-error" => {
                return Err(PolicyError::InvalidConfig(
                    "mode=init-error refuses every setting".into(),
                ));
            }
            other => {
                return Err(PolicyError::InvalidConfig(format!(
                    "mode={other:?}: use ok, loop, trap, oom, garbage, referenced or init-error"
                )));
            }
        };
        Ok(Hostile(mode))
    }
}

impl Hostile {
    /// Loops, panics or allocates per the mode; returns for the others.
    fn misbehave(&self) {
        match self.0 {
            Mode::Loop => {
                let mut n: u64 = 0;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            Mode::Trap => panic!("hostile plugin panics on purpose"),
            Mode::Oom => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch every page so nothing is optimised away.
                    hoard.push(black_box(vec![0xa5; 1 << 20]));
                }
            }
            Mode::Ok | Mode::Garbage | Mode::Referenced => {}
        }
    }
}

impl GcPolicy for Hostile {
    fn plan_gc(&self, req: GcRequest) -> Result<GcPlan, PolicyError> {
        self.misbehave();
        let delete = match self.0 {
            Mode::Garbage => ["sha256:not-a-layer", "../../etc/passwd", ""]
                .iter()
                .map(|id| GcChoice {
                    chain_id: (*id).into(),
                    reason: "garbage".into(),
                })
                .collect(),
            Mode::Referenced => req
                .layers
                .iter()
                .filter(|l| l.references > 0)
                .map(|l| GcChoice {
                    chain_id: l.chain_id.clone(),
                    reason: "it is referenced, delete it anyway".into(),
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(GcPlan {
            delete,
            summary: format!("hostile plugin in mode {:?}", self.0),
        })
    }
}

impl DedupPolicy for Hostile {
    fn plan_dedup(&self, req: DedupRequest) -> Result<Vec<DedupAction>, PolicyError> {
        self.misbehave();
        Ok(match self.0 {
            Mode::Garbage | Mode::Referenced => vec![DedupAction {
                source: FileRef {
                    layer: "sha256:not-a-layer".into(),
                    path: "../../etc/shadow".into(),
                },
                targets: req.groups.into_iter().flat_map(|g| g.files).collect(),
            }],
            _ => Vec::new(),
        })
    }
}

impl QuotaPolicy for Hostile {
    fn container_limit(&self, _req: ContainerRequest) -> Result<Option<u64>, PolicyError> {
        self.misbehave();
        Ok(match self.0 {
            Mode::Garbage | Mode::Referenced => Some(0),
            _ => None,
        })
    }

    fn check_write(&self, _req: WriteRequest) -> Result<Verdict, PolicyError> {
        self.misbehave();
        Ok(Verdict::Allow)
    }
}

drivers_policy_sdk::export!(Hostile: gc, dedup, quota);

#[cfg(test)]
mod tests {
    use drivers_policy_sdk::testing::{Failure, FakeStore, run_gc};

    use super::*;

    /// The bad answers really are bad by the host's rules, so the host
    /// tests that use them test the host's checks.
    #[test]
    fn bad_answers_break_the_rules() {
        let mut s = FakeStore::new(0);
        let l = s.layer("l", None, 1, 0);
        s.image("i", &l);
        for mode in ["mode=garbage", "mode=referenced"] {
            match run_gc::<Hostile>(&[mode], &s.gc_request(None)) {
                Err(Failure::Refused(_)) => {}
                other => panic!("{mode}: {other:?}"),
            }
        }
        assert!(run_gc::<Hostile>(&["mode=ok"], &s.gc_request(None)).is_ok());
        assert!(matches!(
            run_gc::<Hostile>(&["mode=init-error"], &s.gc_request(None)),
            Err(Failure::Policy(PolicyError::InvalidConfig(_)))
        ));
    }
}
