//! The conformance suite of `drivers`: cases run against every backend of
//! [`drivers_host::backends::BACKENDS`] by `tests/conformance.rs`, one trial
//! per (backend × case), so a new backend or case is covered by
//! construction.
//!
//! - [`Fixture`]: one backend with its store in a fresh root, torn down
//!   (unmounted, deleted) even when a case fails or panics;
//! - [`FsChange`]: declarative tree edits, applied through a mount or onto a
//!   plain directory, and [`tree`]: the comparison of two trees;
//! - [`gate`]: whether a backend's trials run, are ignored or fail;
//! - [`cases::CASES`]: every case of `shared/spec/conformance.md`.

pub mod cases;
pub mod child;
pub mod fixture;
pub mod fschange;
pub mod gate;
pub mod oci;
pub mod rawtar;
pub mod tree;

pub use cases::{CASES, Case};
pub use fixture::Fixture;
pub use fschange::FsChange;
