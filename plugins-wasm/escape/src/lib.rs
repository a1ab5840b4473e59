//! A gc plugin that tries to read a file of the host. Its component imports
//! WASI filesystem interfaces, so `drivers plugin add` must refuse it and
//! name the import: plugins get facts passed in, never the filesystem.

use drivers_policy_sdk::types::{GcPlan, GcRequest, PolicyError};
use drivers_policy_sdk::{GcPolicy, Policy, Settings};

/// Reads `/etc/shadow` when asked to plan.
#[derive(Debug)]
pub struct Escape;

impl Policy for Escape {
    fn init(_settings: Settings) -> Result<Self, PolicyError> {
        Ok(Escape)
    }
}

impl GcPolicy for Escape {
    fn plan_gc(&self, _req: GcRequest) -> Result<GcPlan, PolicyError> {
        let stolen = std::fs::read_to_string("/etc/shadow")
            .map_err(|e| PolicyError::Internal(e.to_string()))?;
        Ok(GcPlan {
            delete: Vec::new(),
            summary: stolen,
        })
    }
}

drivers_policy_sdk::export!(Escape: gc);
