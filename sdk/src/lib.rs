//! drivers-policy-sdk: write a policy plugin for `drivers` as one trait impl
//! and one macro call.
//!
//! A plugin is a WebAssembly component built for `wasm32-wasip2` that
//! implements one or more hooks of the WIT package `drivers:policy@0.1.0`
//! (in `wit/` of this crate; the host reads the same files):
//!
//! | hook    | trait           | the host asks                                    |
//! |---------|-----------------|--------------------------------------------------|
//! | `gc`    | [`GcPolicy`]    | which unreferenced layers `drivers gc` deletes   |
//! | `dedup` | [`DedupPolicy`] | which identical files `drivers dedup` shares     |
//! | `quota` | [`QuotaPolicy`] | container size limits, and whether a write fits  |
//!
//! Every hook also needs [`Policy::init`], which receives the operator's
//! settings (`drivers plugin add --set KEY=VALUE`). Policies are pure
//! decisions: facts come in with each call, decisions go out, and the host
//! checks and carries them out. A plugin has no filesystem, network, clock,
//! random or environment; it may [`log`](crate::info!).
//!
//! Each call runs on a fresh instance: `init`, then one hook. Nothing
//! survives between calls.
//!
//! ```
//! use drivers_policy_sdk::{GcPolicy, Policy, Settings};
//! use drivers_policy_sdk::types::{GcChoice, GcPlan, GcRequest, PolicyError};
//!
//! /// Deletes every unreferenced layer unused for longer than `keep`.
//! struct KeepRecent { keep: u64 }
//!
//! impl Policy for KeepRecent {
//!     fn init(settings: Settings) -> Result<Self, PolicyError> {
//!         settings.only(&["keep"])?;
//!         Ok(KeepRecent { keep: settings.duration("keep")?.unwrap_or(86_400) })
//!     }
//! }
//!
//! impl GcPolicy for KeepRecent {
//!     fn plan_gc(&self, req: GcRequest) -> Result<GcPlan, PolicyError> {
//!         let old = |t: u64| req.now.saturating_sub(t) > self.keep;
//!         let delete = req.layers.iter()
//!             .filter(|l| l.references == 0 && old(l.last_used.max(l.created)))
//!             .map(|l| GcChoice { chain_id: l.chain_id.clone(), reason: "old".into() })
//!             .collect();
//!         Ok(GcPlan { delete, summary: String::new() })
//!     }
//! }
//!
//! // In the plugin crate (a `cdylib`), this exports the `gc` hook:
//! // drivers_policy_sdk::export!(KeepRecent: gc);
//!
//! // And natively, in `cargo test`:
//! use drivers_policy_sdk::testing::{FakeStore, run_gc};
//! let mut store = FakeStore::new(10 * 86_400);
//! let old = store.layer("old", None, 100, 0);
//! let new = store.layer("new", None, 100, 10 * 86_400);
//! store.image("img", &new);
//! let plan = run_gc::<KeepRecent>(&[], &store.gc_request(None)).unwrap();
//! assert_eq!(plan.chain_ids(), vec![old]);
//! ```
//!
//! The README of this crate walks from nothing to `drivers plugin add` in
//! three commands, with the template in `template/`.

#![warn(missing_docs)]

pub mod plan;
pub mod settings;
pub mod testing;

#[doc(hidden)]
pub mod bindings;
#[doc(hidden)]
pub mod glue;

pub use settings::Settings;

/// The contract's data types, shared by every hook (`interface types` of
/// `drivers:policy@0.1.0`).
pub mod types {
    pub use crate::bindings::base::drivers::policy::types::*;
}

/// The version of the WIT package this SDK builds plugins for. The host
/// refuses plugins built for a version it does not speak.
pub const CONTRACT: &str = "drivers:policy@0.1.0";

use types::{
    ContainerRequest, DedupAction, DedupRequest, GcPlan, GcRequest, PolicyError, Verdict,
    WriteRequest,
};

/// What every plugin implements: building itself from the operator's
/// settings. Called on every fresh instance, before the hook.
pub trait Policy: Sized + 'static {
    /// Reads the settings; refuse unknown or malformed ones with
    /// [`PolicyError::InvalidConfig`] (`drivers plugin add` shows the text).
    fn init(settings: Settings) -> Result<Self, PolicyError>;
}

/// The `gc` hook: which unreferenced layers to delete.
pub trait GcPolicy: Policy {
    /// Chooses layers to delete among `req.layers`. The host deletes
    /// nothing if the plan names a layer that was not offered, that has
    /// `references > 0`, that appears twice, or whose child layers are not
    /// named too ([`testing::check_gc_plan`] checks the same rules).
    fn plan_gc(&self, req: GcRequest) -> Result<GcPlan, PolicyError>;
}

/// The `dedup` hook: which identical files to share.
pub trait DedupPolicy: Policy {
    /// Chooses, in order, which files of `req.groups` share the extents of
    /// which. Each action's files must come from one group.
    fn plan_dedup(&self, req: DedupRequest) -> Result<Vec<DedupAction>, PolicyError>;
}

/// The `quota` hook: container size limits and write checks.
pub trait QuotaPolicy: Policy {
    /// The size limit for a new container, or `None` for no limit. The
    /// backend enforces it; one that cannot makes `container create` fail.
    fn container_limit(&self, req: ContainerRequest) -> Result<Option<u64>, PolicyError>;

    /// Whether `req.scope` may grow by `req.delta_bytes`.
    fn check_write(&self, req: WriteRequest) -> Result<Verdict, PolicyError>;
}

/// Log levels of [`log`].
pub use bindings::base::drivers::policy::host::Level;

/// Writes one line to the host's log, tagged with the plugin's name (the
/// host truncates long lines and drops lines past a per-call budget).
/// In native tests the line goes to [`testing::logs`] instead.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::base::drivers::policy::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    testing::capture(level, message);
}

/// Logs at info level, `format!`-style.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &::std::format!($($arg)*)) };
}

/// Logs at debug level, `format!`-style.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)*)) };
}

/// Logs at warn level, `format!`-style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)*)) };
}

/// Exports a policy type as the hooks it implements. Write it once, at the
/// top level of the plugin crate (a `cdylib` built for `wasm32-wasip2`):
///
/// ```ignore
/// drivers_policy_sdk::export!(MyPolicy: gc);
/// drivers_policy_sdk::export!(MyOtherPolicy: dedup, quota);
/// ```
///
/// Each named hook needs the matching trait ([`GcPolicy`], [`DedupPolicy`],
/// [`QuotaPolicy`]); the component then exports exactly those hooks. On
/// other targets (native `cargo test`) it expands to nothing.
#[macro_export]
macro_rules! export {
    ($ty:ty : $($hook:ident),+ $(,)?) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        type __DriversPolicyExport = $crate::glue::Adapter<$ty>;
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::base::export_base!(__DriversPolicyExport);
        $( $crate::export!(@hook $hook); )+
    };
    (@hook gc) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::gc::export_gc!(__DriversPolicyExport);
    };
    (@hook dedup) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::dedup::export_dedup!(__DriversPolicyExport);
    };
    (@hook quota) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::quota::export_quota!(__DriversPolicyExport);
    };
}
