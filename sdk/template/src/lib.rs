//! A gc policy: delete unreferenced layers nobody used for `max_age`.
//!
//! Build: `cargo build --release --target wasm32-wasip2`
//! Test:  `cargo test` (natively, against a fake store)
//! Use:   `drivers plugin add target/wasm32-wasip2/release/my_policy.wasm --set max_age=7d`

use drivers_policy_sdk::plan::removable;
use drivers_policy_sdk::types::{GcChoice, GcPlan, GcRequest, PolicyError};
use drivers_policy_sdk::{GcPolicy, Policy, Settings};

/// The policy, built from the operator's settings.
pub struct MaxAge {
    /// Seconds a layer may stay unused.
    max_age: u64,
}

impl Policy for MaxAge {
    fn init(settings: Settings) -> Result<Self, PolicyError> {
        settings.only(&["max_age"])?;
        Ok(MaxAge {
            max_age: settings.duration("max_age")?.unwrap_or(7 * 86_400),
        })
    }
}

impl GcPolicy for MaxAge {
    fn plan_gc(&self, req: GcRequest) -> Result<GcPlan, PolicyError> {
        let idle = |t: u64| req.now.saturating_sub(t);
        let old = removable(&req, |l| idle(l.last_used.max(l.created)) >= self.max_age);
        let delete: Vec<GcChoice> = old
            .iter()
            .map(|l| GcChoice {
                chain_id: l.chain_id.clone(),
                reason: format!("unused for {}s", idle(l.last_used.max(l.created))),
            })
            .collect();
        drivers_policy_sdk::info!("{} layers older than {}s", delete.len(), self.max_age);
        Ok(GcPlan {
            summary: format!(
                "{} unreferenced layers unused for {}s or more",
                delete.len(),
                self.max_age
            ),
            delete,
        })
    }
}

drivers_policy_sdk::export!(MaxAge: gc);

#[cfg(test)]
mod tests {
    use drivers_policy_sdk::testing::{FakeStore, run_gc};

    use super::*;

    /// Old unreferenced layers go, children first; used and recent ones stay.
    #[test]
    fn old_unreferenced_layers_go() {
        let day = 86_400;
        let mut s = FakeStore::new(30 * day);
        let base = s.layer("base", None, 10, day);
        let top = s.layer("top", Some(&base), 10, 2 * day);
        let used = s.layer("used", None, 10, day);
        s.image("app", &used);
        s.layer("fresh", None, 10, 29 * day);
        let plan = run_gc::<MaxAge>(&["max_age=7d"], &s.gc_request(None)).unwrap();
        assert_eq!(plan.chain_ids(), vec![top, base]);
    }
}
