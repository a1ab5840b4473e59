//! The wasmtime side: one [`Engine`] per process, components checked and
//! precompiled once, and every call bounded in time, fuel and memory on a
//! fresh [`Store`].
//!
//! A call is `init(settings)` then one hook, on a new instance of an
//! [`InstancePre`] (≈10 µs): no plugin state survives between calls, and a
//! trapped instance, which wasmtime poisons, is simply dropped.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};

use super::bindings::{self, host, types};
use crate::config::PluginEntry;
use crate::error::{Error, Result};

/// The contract this host speaks.
pub const CONTRACT: &str = "drivers:policy@0.1.0";
/// The package part of export and import names (`drivers:policy/gc@0.1.0`).
const PACKAGE: &str = "drivers:policy/";
/// Plugins built for `0.1.*` run here: 0.x minors are breaking, patches
/// only fix docs (sdk/README.md, "Versioning").
const SUPPORTED_MINOR: (u64, u64) = (0, 1);

/// Default wall-clock limit of one call. A gc plan over 10,000 layers takes
/// ~2 ms here, so a second is ample headroom and still a short wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default linear-memory limit of one call. 10,000 layer records are ~2 MB
/// once decoded; without a limit a runaway plugin took 1 GiB in tests.
pub const DEFAULT_MEMORY: u64 = 64 << 20;
/// How often the epoch advances: the granularity of [`Limits::timeout`].
const TICK: Duration = Duration::from_millis(10);
/// Core instances, tables and memories one plugin instance may create: a
/// Rust component has one memory and a handful of shim instances.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 8;
/// Log lines kept per call, and their length; the rest is dropped (one
/// debug event says how many).
const LOG_LINES: usize = 100;
const LOG_LINE_BYTES: usize = 512;

/// Interfaces outside the contract that a plugin may import: the stdio,
/// exit and environment boilerplate of Rust's `wasm32-wasip2` std. They are
/// linked as functions that trap, so a plugin that really calls one (reads
/// its environment, prints) stops with an error naming the import. Anything
/// else (filesystem, sockets, clocks, random, http) is refused at load.
const STUBBED_IMPORTS: &[&str] = &["wasi:cli/", "wasi:io/"];

/// A hook of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// `drivers gc`.
    Gc,
    /// `drivers dedup`.
    Dedup,
    /// `drivers container create` (limits) and `drivers quota`.
    Quota,
}

impl Hook {
    /// Every hook.
    pub const ALL: [Hook; 3] = [Hook::Gc, Hook::Dedup, Hook::Quota];

    /// The name in config and output, which is also the WIT interface.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Gc => "gc",
            Hook::Dedup => "dedup",
            Hook::Quota => "quota",
        }
    }

    /// The hook called `name`.
    pub fn parse(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }
}

/// What one call may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Wall-clock time of one call (`init` plus the hook).
    pub timeout: Duration,
    /// Bytes of linear memory.
    pub memory: u64,
    /// Fuel units; `None` for unlimited.
    pub fuel: Option<u64>,
}

impl Limits {
    /// The limits of `entry`: its own, else the defaults.
    pub fn of(entry: &PluginEntry) -> Limits {
        Limits {
            timeout: entry
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_TIMEOUT),
            memory: entry
                .memory_mib
                .map(|m| m.saturating_mul(1 << 20))
                .unwrap_or(DEFAULT_MEMORY),
            fuel: entry.fuel,
        }
    }
}

/// Advances the engine's epoch every [`TICK`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: &Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .ok();
        Ticker { stop, thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The wasmtime engine of this process, with its epoch ticker.
pub struct PluginHost {
    engine: Engine,
    _ticker: Ticker,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").finish_non_exhaustive()
    }
}

/// A plugin-level error with no hint.
pub(crate) fn plugin_err(name: &str, message: impl Into<String>) -> Error {
    Error::Plugin {
        name: name.to_owned(),
        message: message.into(),
        hint: None,
    }
}

/// The first line of a wasmtime error and its causes, for one-line messages.
fn first_lines(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let line = cause.to_string();
        let line = line.lines().next().unwrap_or_default().trim().to_owned();
        if !line.is_empty() && !parts.iter().any(|p| p.contains(&line)) {
            parts.push(line);
        }
    }
    parts.join(": ")
}

impl PluginHost {
    /// An engine with epoch interruption and fuel metering compiled in
    /// (every component this host precompiles has both checks), and its
    /// ticker thread.
    pub fn new() -> Result<PluginHost> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(true);
        let engine = Engine::new(&config).map_err(|e| Error::Plugin {
            name: "-".into(),
            message: format!("cannot set up the WebAssembly engine: {}", first_lines(&e)),
            hint: None,
        })?;
        let ticker = Ticker::start(&engine);
        Ok(PluginHost {
            engine,
            _ticker: ticker,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// `sha256(component)-<precompile compatibility hash>`: a cached
    /// artifact is used only when both match.
    pub fn cache_key(&self, sha256: &str) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{sha256}-{:016x}", h.finish())
    }

    /// Compiles `wasm` (cold: tens of milliseconds) and checks it against
    /// the contract.
    pub fn compile(&self, name: &str, wasm: &[u8]) -> Result<(Component, Vec<Hook>)> {
        let component = Component::new(&self.engine, wasm).map_err(|e| Error::Plugin {
            name: name.to_owned(),
            message: format!(
                "is not a WebAssembly component this host can load: {}",
                first_lines(&e)
            ),
            hint: Some(
                "build plugins for wasm32-wasip2 with drivers-policy-sdk (see sdk/README.md)"
                    .into(),
            ),
        })?;
        let hooks = self.inspect(name, &component)?;
        Ok((component, hooks))
    }

    /// Loads a component this host precompiled itself.
    ///
    /// Refuses (returns `None`) a file that is not owned by this user or is
    /// writable by others, so only artifacts under the root-owned state
    /// directory that this code wrote are ever deserialized.
    pub fn load_precompiled(&self, path: &Path) -> Option<Component> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).ok()?;
        let euid = rustix::process::geteuid().as_raw();
        if !meta.is_file() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
            tracing::warn!(path = %path.display(), "ignoring a precompiled plugin not owned by us or writable by others");
            return None;
        }
        // SAFETY: wasmtime requires that deserialized bytes were produced
        // by `precompile`/`serialize` of a compatible engine, since they
        // are native code. This file was written by `plugins::add` or by a
        // recompile below, under the state directory (mode 0700, owned by
        // us; checked above), and its key file matched this engine's
        // compatibility hash and the component's sha256 before we got here.
        #[expect(
            unsafe_code,
            reason = "loading native code this host compiled and cached itself"
        )]
        let loaded = unsafe { Component::deserialize_file(&self.engine, path) };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %first_lines(&e), "precompiled plugin unusable; recompiling");
                None
            }
        }
    }

    /// Checks a component's imports and exports against the contract and
    /// returns the hooks it implements.
    pub fn inspect(&self, name: &str, component: &Component) -> Result<Vec<Hook>> {
        let ty = component.component_type();
        let mut refused = Vec::new();
        for (import, _) in ty.imports(&self.engine) {
            if let Some((iface, version)) = contract_name(import) {
                check_version(name, import, version)?;
                if !matches!(iface, "host" | "types") {
                    refused.push(import.to_owned());
                }
            } else if !STUBBED_IMPORTS.iter().any(|p| import.starts_with(p)) {
                refused.push(import.to_owned());
            }
        }
        if !refused.is_empty() {
            return Err(Error::Plugin {
                name: name.to_owned(),
                message: format!(
                    "imports {}: plugins get no filesystem, network, clock, random or environment, only {CONTRACT} facts and its log",
                    refused.join(", ")
                ),
                hint: Some(
                    "remove what needs it (std::fs, std::net, SystemTime, HashMap's random seed: use BTreeMap)".into(),
                ),
            });
        }
        let mut hooks = Vec::new();
        let mut lifecycle = false;
        for (export, _) in ty.exports(&self.engine) {
            let Some((iface, version)) = contract_name(export) else {
                continue;
            };
            check_version(name, export, version)?;
            match iface {
                "lifecycle" => lifecycle = true,
                other => hooks.extend(Hook::parse(other)),
            }
        }
        hooks.sort();
        hooks.dedup();
        if hooks.is_empty() || !lifecycle {
            return Err(Error::Plugin {
                name: name.to_owned(),
                message: format!(
                    "exports no hook of {CONTRACT} (it needs lifecycle and one of gc, dedup, quota)"
                ),
                hint: Some(
                    "build it with drivers-policy-sdk's export! macro (see sdk/README.md)".into(),
                ),
            });
        }
        Ok(hooks)
    }

    /// Makes `component` callable as plugin `entry`.
    pub fn instantiate(
        &self,
        entry: &PluginEntry,
        component: &Component,
        hooks: &[Hook],
    ) -> Result<Plugin> {
        let name = entry.name.as_str();
        let fail =
            |e: wasmtime::Error| plugin_err(name, format!("cannot be linked: {}", first_lines(&e)));
        let mut linker: Linker<State> = Linker::new(&self.engine);
        bindings::gc::GcPolicy::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(fail)?;
        // Only the allow-listed WASI boilerplate is left (checked by
        // `inspect`); calling it traps.
        linker
            .define_unknown_imports_as_traps(component)
            .map_err(fail)?;
        let pre: InstancePre<State> = linker.instantiate_pre(component).map_err(fail)?;
        let mut plugin = Plugin {
            name: entry.name.clone(),
            hooks: hooks.to_vec(),
            limits: Limits::of(entry),
            settings: entry
                .settings
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            engine: self.engine.clone(),
            gc: None,
            dedup: None,
            quota: None,
        };
        for h in hooks {
            match h {
                Hook::Gc => {
                    plugin.gc = Some(bindings::gc::GcPolicyPre::new(pre.clone()).map_err(fail)?)
                }
                Hook::Dedup => {
                    plugin.dedup =
                        Some(bindings::dedup::DedupPolicyPre::new(pre.clone()).map_err(fail)?)
                }
                Hook::Quota => {
                    plugin.quota =
                        Some(bindings::quota::QuotaPolicyPre::new(pre.clone()).map_err(fail)?)
                }
            }
        }
        Ok(plugin)
    }
}

/// `("gc", Some("0.1.0"))` for `drivers:policy/gc@0.1.0`; `None` for names
/// outside the contract.
fn contract_name(name: &str) -> Option<(&str, Option<&str>)> {
    let rest = name.strip_prefix(PACKAGE)?;
    Some(match rest.split_once('@') {
        Some((iface, v)) => (iface, Some(v)),
        None => (rest, None),
    })
}

/// Refuses a contract version other than 0.1.*, saying what to rebuild with.
fn check_version(plugin: &str, item: &str, version: Option<&str>) -> Result<()> {
    let parsed = version.and_then(|v| {
        let mut it = v.split(['.', '-', '+']);
        Some((
            it.next()?.parse::<u64>().ok()?,
            it.next()?.parse::<u64>().ok()?,
        ))
    });
    if parsed == Some(SUPPORTED_MINOR) {
        return Ok(());
    }
    let built = match version {
        Some(v) => format!("drivers:policy@{v}"),
        None => "an unversioned drivers:policy".into(),
    };
    Err(Error::Plugin {
        name: plugin.to_owned(),
        message: format!("was built for {built} ({item}); this drivers speaks {CONTRACT}"),
        hint: Some(format!(
            "rebuild the plugin with drivers-policy-sdk {}.{} (sdk/ of this drivers release)",
            SUPPORTED_MINOR.0, SUPPORTED_MINOR.1
        )),
    })
}

/// [`StoreLimits`] that remembers a refused growth, because a memory-limit
/// failure is a plain error, not a [`Trap`], and should still be reported
/// as "over its memory limit".
struct Limiter {
    inner: StoreLimits,
    refused: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.inner.memory_growing(current, desired, maximum);
        if !matches!(r, Ok(true)) {
            self.refused = Some(desired);
        }
        r
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// What a call's [`Store`] holds.
pub struct State {
    limiter: Limiter,
    plugin: String,
    lines: usize,
    dropped: usize,
    /// The last panic message the SDK's panic hook logged.
    panic: Option<String>,
}

/// The type-only `types` interface has nothing to implement.
impl types::Host for State {}

impl host::Host for State {
    fn log(&mut self, level: host::Level, message: String) {
        if level == host::Level::Error && message.starts_with("panicked") {
            // The SDK's panic hook: the message becomes the call's error
            // line instead of a log line of its own.
            self.panic = Some(message.chars().take(LOG_LINE_BYTES).collect());
            return;
        }
        if self.lines >= LOG_LINES {
            self.dropped += 1;
            return;
        }
        self.lines += 1;
        let mut msg = message.replace(['\n', '\r'], " ");
        if msg.len() > LOG_LINE_BYTES {
            let mut end = LOG_LINE_BYTES;
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            msg.truncate(end);
            msg.push('…');
        }
        let plugin = self.plugin.as_str();
        match level {
            host::Level::Debug => tracing::debug!(target: "plugin", plugin, "{msg}"),
            host::Level::Info => tracing::info!(target: "plugin", plugin, "{msg}"),
            host::Level::Warn => tracing::warn!(target: "plugin", plugin, "{msg}"),
            host::Level::Error => tracing::error!(target: "plugin", plugin, "{msg}"),
        }
    }
}

/// A loaded plugin, ready for calls.
pub struct Plugin {
    name: String,
    hooks: Vec<Hook>,
    limits: Limits,
    settings: Vec<(String, String)>,
    engine: Engine,
    gc: Option<bindings::gc::GcPolicyPre<State>>,
    dedup: Option<bindings::dedup::DedupPolicyPre<State>>,
    quota: Option<bindings::quota::QuotaPolicyPre<State>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("hooks", &self.hooks)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// How far a call got when the plugin said no.
enum Refusal {
    /// `init` refused the settings.
    Init(types::PolicyError),
    /// The hook returned an error.
    Hook(types::PolicyError),
}

fn policy_error_text(e: &types::PolicyError) -> String {
    match e {
        types::PolicyError::InvalidConfig(m) => format!("invalid settings: {m}"),
        types::PolicyError::Unsupported(m) => format!("unsupported: {m}"),
        types::PolicyError::Internal(m) => format!("internal error: {m}"),
    }
}

impl Plugin {
    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hooks it implements.
    pub fn hooks(&self) -> &[Hook] {
        &self.hooks
    }

    /// Its limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn missing(&self, hook: Hook) -> Error {
        plugin_err(
            &self.name,
            format!("does not implement the {} hook", hook.name()),
        )
    }

    /// A fresh store with this plugin's limits.
    fn store(&self) -> Store<State> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(self.limits.memory).unwrap_or(usize::MAX))
            .instances(MAX_INSTANCES)
            .tables(MAX_TABLES)
            .memories(MAX_MEMORIES)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            State {
                limiter: Limiter {
                    inner: limits,
                    refused: None,
                },
                plugin: self.name.clone(),
                lines: 0,
                dropped: 0,
                panic: None,
            },
        );
        store.limiter(|s| &mut s.limiter);
        // +1: the epoch may tick right after this.
        let ticks = self.limits.timeout.as_millis().div_ceil(TICK.as_millis()) + 1;
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        // Fuel metering is compiled in; without a configured budget the
        // deadline bounds the call.
        let _ = store.set_fuel(self.limits.fuel.unwrap_or(u64::MAX));
        store
    }

    /// Runs `f` (which instantiates, inits and calls one hook) on a fresh
    /// store and turns every way it can fail into one line naming the
    /// plugin.
    fn call<R>(
        &self,
        hook: &str,
        f: impl FnOnce(&mut Store<State>) -> wasmtime::Result<std::result::Result<R, Refusal>>,
    ) -> Result<R> {
        let mut store = self.store();
        let started = Instant::now();
        let res = f(&mut store);
        let took = started.elapsed();
        let fuel = store
            .get_fuel()
            .ok()
            .map(|left| self.limits.fuel.unwrap_or(u64::MAX) - left);
        let st = store.data();
        if st.dropped > 0 {
            tracing::debug!(plugin = %self.name, dropped = st.dropped, "plugin log lines dropped");
        }
        tracing::debug!(plugin = %self.name, hook, elapsed_ms = took.as_secs_f64() * 1e3, fuel, "plugin call");
        match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Refusal::Init(e))) => Err(Error::Plugin {
                name: self.name.clone(),
                message: format!("init refused its settings: {}", policy_error_text(&e)),
                hint: Some(format!(
                    "fix its settings: drivers plugin rm {0}, then drivers plugin add … --set KEY=VALUE",
                    self.name
                )),
            }),
            Ok(Err(Refusal::Hook(e))) => Err(plugin_err(
                &self.name,
                format!("{hook} made no decision: {}", policy_error_text(&e)),
            )),
            Err(e) => {
                tracing::debug!(plugin = %self.name, hook, error = ?e, "plugin call failed");
                Err(plugin_err(&self.name, self.classify(hook, &e, st)))
            }
        }
    }

    /// One line on why a call failed: a limit, a panic, a trap, or a
    /// linking problem.
    fn classify(&self, hook: &str, e: &wasmtime::Error, st: &State) -> String {
        if let Some(bytes) = st.limiter.refused {
            return format!(
                "{hook} tried to grow its memory to {:.1} MiB, past its limit of {} MiB, and was stopped",
                bytes as f64 / f64::from(1 << 20),
                self.limits.memory >> 20
            );
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => format!(
                "{hook} did not finish within its {} ms limit and was stopped",
                self.limits.timeout.as_millis()
            ),
            Some(Trap::OutOfFuel) => format!(
                "{hook} used up its fuel ({} units) and was stopped",
                self.limits.fuel.unwrap_or(u64::MAX)
            ),
            Some(t) => match &st.panic {
                Some(p) => format!("{hook} {p}"),
                None => format!("{hook} trapped: {t}"),
            },
            None => format!("{hook} failed: {}", first_lines(e)),
        }
    }

    /// `plan-gc`.
    pub fn plan_gc(&self, req: &types::GcRequest) -> Result<types::GcPlan> {
        let pre = self.gc.as_ref().ok_or_else(|| self.missing(Hook::Gc))?;
        self.call("plan-gc", |store| {
            let inst = pre.instantiate(&mut *store)?;
            if let Err(e) = inst
                .drivers_policy_lifecycle()
                .call_init(&mut *store, &self.settings)?
            {
                return Ok(Err(Refusal::Init(e)));
            }
            Ok(inst
                .drivers_policy_gc()
                .call_plan_gc(&mut *store, req)?
                .map_err(Refusal::Hook))
        })
    }

    /// `plan-dedup`.
    pub fn plan_dedup(&self, req: &types::DedupRequest) -> Result<Vec<types::DedupAction>> {
        let pre = self
            .dedup
            .as_ref()
            .ok_or_else(|| self.missing(Hook::Dedup))?;
        self.call("plan-dedup", |store| {
            let inst = pre.instantiate(&mut *store)?;
            if let Err(e) = inst
                .drivers_policy_lifecycle()
                .call_init(&mut *store, &self.settings)?
            {
                return Ok(Err(Refusal::Init(e)));
            }
            Ok(inst
                .drivers_policy_dedup()
                .call_plan_dedup(&mut *store, req)?
                .map_err(Refusal::Hook))
        })
    }

    /// `container-limit`.
    pub fn container_limit(&self, req: &types::ContainerRequest) -> Result<Option<u64>> {
        let pre = self
            .quota
            .as_ref()
            .ok_or_else(|| self.missing(Hook::Quota))?;
        self.call("container-limit", |store| {
            let inst = pre.instantiate(&mut *store)?;
            if let Err(e) = inst
                .drivers_policy_lifecycle()
                .call_init(&mut *store, &self.settings)?
            {
                return Ok(Err(Refusal::Init(e)));
            }
            Ok(inst
                .drivers_policy_quota()
                .call_container_limit(&mut *store, req)?
                .map_err(Refusal::Hook))
        })
    }

    /// `check-write`.
    pub fn check_write(&self, req: &types::WriteRequest) -> Result<types::Verdict> {
        let pre = self
            .quota
            .as_ref()
            .ok_or_else(|| self.missing(Hook::Quota))?;
        self.call("check-write", |store| {
            let inst = pre.instantiate(&mut *store)?;
            if let Err(e) = inst
                .drivers_policy_lifecycle()
                .call_init(&mut *store, &self.settings)?
            {
                return Ok(Err(Refusal::Init(e)));
            }
            Ok(inst
                .drivers_policy_quota()
                .call_check_write(&mut *store, req)?
                .map_err(Refusal::Hook))
        })
    }

    /// Only `init(settings)`: what `plugin add` runs to check the settings.
    pub fn init_only(&self) -> Result<()> {
        let hook = self
            .hooks
            .first()
            .copied()
            .ok_or_else(|| self.missing(Hook::Gc))?;
        self.call("init", |store| {
            let res = match hook {
                Hook::Gc => {
                    let pre = self.gc.as_ref().expect("hooks and pres agree");
                    let inst = pre.instantiate(&mut *store)?;
                    inst.drivers_policy_lifecycle()
                        .call_init(&mut *store, &self.settings)?
                }
                Hook::Dedup => {
                    let pre = self.dedup.as_ref().expect("hooks and pres agree");
                    let inst = pre.instantiate(&mut *store)?;
                    inst.drivers_policy_lifecycle()
                        .call_init(&mut *store, &self.settings)?
                }
                Hook::Quota => {
                    let pre = self.quota.as_ref().expect("hooks and pres agree");
                    let inst = pre.instantiate(&mut *store)?;
                    inst.drivers_policy_lifecycle()
                        .call_init(&mut *store, &self.settings)?
                }
            };
            Ok(res.map_err(Refusal::Init))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Contract names parse, and only 0.1.* passes, with a message saying
    /// what to rebuild with.
    #[test]
    fn versions() {
        assert_eq!(
            contract_name("drivers:policy/gc@0.1.0"),
            Some(("gc", Some("0.1.0")))
        );
        assert_eq!(contract_name("wasi:io/streams@0.2.6"), None);
        assert_eq!(contract_name("drivers:policy/gc"), Some(("gc", None)));
        for ok in ["0.1.0", "0.1.7", "0.1.0-rc1"] {
            assert!(check_version("p", "x", Some(ok)).is_ok(), "{ok}");
        }
        for bad in [Some("0.2.0"), Some("1.1.0"), Some("x"), None] {
            let e = check_version("p", "x", bad).unwrap_err();
            let line = format!("{e}: {}", e.hint().unwrap());
            assert!(
                line.contains("this drivers speaks drivers:policy@0.1.0"),
                "{line}"
            );
            assert!(
                line.contains("rebuild the plugin with drivers-policy-sdk 0.1"),
                "{line}"
            );
        }
    }

    /// Limits default as documented and follow the entry.
    #[test]
    fn limits() {
        let mut e = PluginEntry {
            name: "p".into(),
            file: "plugins/p.wasm".into(),
            sha256: String::new(),
            hooks: vec![],
            timeout_ms: None,
            memory_mib: None,
            fuel: None,
            settings: Default::default(),
        };
        assert_eq!(
            Limits::of(&e),
            Limits {
                timeout: Duration::from_secs(1),
                memory: 64 << 20,
                fuel: None
            }
        );
        e.timeout_ms = Some(50);
        e.memory_mib = Some(256);
        e.fuel = Some(7);
        assert_eq!(
            Limits::of(&e),
            Limits {
                timeout: Duration::from_millis(50),
                memory: 256 << 20,
                fuel: Some(7)
            }
        );
    }
}
