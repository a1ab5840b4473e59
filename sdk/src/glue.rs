//! What [`export!`](crate::export) expands to: the wit-bindgen `Guest`
//! traits implemented once, generically, by forwarding to the plugin's
//! [`Policy`] traits. Not for plugin authors.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

use crate::bindings::{base, dedup, gc, quota};
use crate::types::{
    ContainerRequest, DedupAction, DedupRequest, GcPlan, GcRequest, PolicyError, Verdict,
    WriteRequest,
};
use crate::{DedupPolicy, GcPolicy, Policy, QuotaPolicy, Settings};

/// The exported type: the plugin's policy `T`, seen through the wit-bindgen
/// traits.
pub struct Adapter<T>(PhantomData<T>);

thread_local! {
    /// The policy `init` built for this instance. A wasm instance is
    /// single-threaded and lives for one call, so this is per call.
    static POLICY: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Runs `f` on the policy `init` stored.
fn with_policy<T: 'static, R>(
    f: impl FnOnce(&T) -> Result<R, PolicyError>,
) -> Result<R, PolicyError> {
    POLICY.with(
        |p| match p.borrow().as_ref().and_then(|b| b.downcast_ref::<T>()) {
            Some(policy) => f(policy),
            None => Err(PolicyError::Internal(
                "the host called a hook before init".into(),
            )),
        },
    )
}

/// Sends panic messages to the host's log before the instance aborts, so
/// the host's error says what panicked instead of "unreachable executed".
/// The default hook would instead read `RUST_BACKTRACE` from an environment
/// plugins do not have, and write to a stderr they do not have.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_owned()
        };
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        crate::log(crate::Level::Error, &format!("panicked{at}: {msg}"));
    }));
}

impl<T: Policy> base::exports::drivers::policy::lifecycle::Guest for Adapter<T> {
    fn init(settings: Vec<(String, String)>) -> Result<(), PolicyError> {
        install_panic_hook();
        let policy = T::init(Settings::new(settings))?;
        POLICY.with(|p| *p.borrow_mut() = Some(Box::new(policy)));
        Ok(())
    }
}

impl<T: GcPolicy> gc::exports::drivers::policy::gc::Guest for Adapter<T> {
    fn plan_gc(req: GcRequest) -> Result<GcPlan, PolicyError> {
        with_policy::<T, _>(|p| p.plan_gc(req))
    }
}

impl<T: DedupPolicy> dedup::exports::drivers::policy::dedup::Guest for Adapter<T> {
    fn plan_dedup(req: DedupRequest) -> Result<Vec<DedupAction>, PolicyError> {
        with_policy::<T, _>(|p| p.plan_dedup(req))
    }
}

impl<T: QuotaPolicy> quota::exports::drivers::policy::quota::Guest for Adapter<T> {
    fn container_limit(req: ContainerRequest) -> Result<Option<u64>, PolicyError> {
        with_policy::<T, _>(|p| p.container_limit(req))
    }

    fn check_write(req: WriteRequest) -> Result<Verdict, PolicyError> {
        with_policy::<T, _>(|p| p.check_write(req))
    }
}
