//! Policy plugins: WebAssembly components that decide, and a host that
//! checks and carries out their decisions.
//!
//! The contract is the WIT package `drivers:policy@0.1.0` in `sdk/wit/`,
//! one world per hook: `gc` (which unreferenced layers to delete), `dedup`
//! (which identical files share extents) and `quota` (container limits and
//! write verdicts). Plugins get facts in and hand decisions back; they have
//! no filesystem, network, clock, random or environment, only a `log`
//! import.
//!
//! - [`runtime`]: the wasmtime engine, contract checks, limits, calls;
//! - [`entries`]: `plugin add/rm/ls`, the precompiled cache, the config;
//! - [`gc`], [`dedup`], [`quota`]: facts for each hook, checks of its
//!   answer, enforcement through the store and the kernel.
//!
//! Every call runs on a fresh instance under a deadline (epoch
//! interruption), optional fuel, and a memory limit. A plugin that traps,
//! loops, allocates past its limit, returns garbage or asks for something
//! unsafe fails the command with one line naming it; nothing is changed.

mod bindings;
pub mod dedup;
pub mod entries;
pub mod gc;
pub mod quota;
pub mod runtime;

pub use bindings::types;
pub use entries::{LimitArgs, add, list, load, load_for, remove, serving};
pub use runtime::{CONTRACT, DEFAULT_MEMORY, DEFAULT_TIMEOUT, Hook, Limits, Plugin, PluginHost};
