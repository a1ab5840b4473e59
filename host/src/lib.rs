//! The `drivers` host: the CLI, the config file, the metadata store, image
//! import and export, containers and their mounts.
//!
//! Everything goes through a [`store::Store`], one per backend: it owns the
//! names, parentage and references of layers and hands bytes to a
//! [`drivers_api::Driver`]. [`backends::BACKENDS`] is the list of backends
//! this build has.

pub mod backends;
pub mod bench;
pub mod cli;
pub mod config;
pub mod containers;
pub mod content;
pub mod error;
pub mod image;
pub mod layers;
pub mod mounts;
pub mod plugins;
pub mod store;

pub use error::{Error, ErrorKind, Result};
