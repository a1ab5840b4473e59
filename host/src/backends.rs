//! The one list of backends this build has, and the names users may type
//! for backends it does not have yet.

use std::path::Path;

use drivers_api::{Availability, Backend, HostEnv};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::Store;

/// Backends compiled into this build, default first.
pub const BACKENDS: &[Backend] = &[
    drivers_overlay2::BACKEND,
    drivers_vfs::BACKEND,
    drivers_btrfs::BACKEND,
    drivers_zfs::BACKEND,
];

/// Backend names the CLI knows but this build cannot run yet, with the
/// reason `drivers check` and `drivers select` give.
pub const NOT_YET: &[(&str, &str)] = &[];

/// The backend named `name`.
pub fn find(name: &str) -> Result<&'static Backend> {
    if let Some(b) = BACKENDS.iter().find(|b| b.name == name) {
        return Ok(b);
    }
    if let Some((_, why)) = NOT_YET.iter().find(|(n, _)| *n == name) {
        return Err(Error::Backend(drivers_api::Error::Unavailable {
            backend: leak_name(name),
            reason: (*why).to_owned(),
            hint: Some("use overlay2 or vfs".into()),
        }));
    }
    let known: Vec<&str> = BACKENDS
        .iter()
        .map(|b| b.name)
        .chain(NOT_YET.iter().map(|(n, _)| *n))
        .collect();
    Err(Error::Invalid {
        field: "backend",
        reason: format!("{name:?} is not one of {}", known.join(", ")),
    })
}

/// A `'static` name for messages, from the fixed list of known names.
fn leak_name(name: &str) -> &'static str {
    NOT_YET
        .iter()
        .map(|(n, _)| *n)
        .find(|n| *n == name)
        .unwrap_or("unknown")
}

/// What backend `name` sees of the host under `root`.
pub fn env(root: &Path, name: &str) -> HostEnv {
    HostEnv {
        state_dir: root.join(name),
    }
}

/// Whether `b` can work here, with its table from `cfg`.
pub fn probe(root: &Path, b: &Backend, cfg: &Config) -> Availability {
    (b.probe)(&env(root, b.name), &cfg.table(b.name))
}

/// Opens the active backend's store: probes it, opens it with its config
/// table, then opens (and recovers) its metadata.
pub fn open_store(root: &Path, cfg: &Config) -> Result<Store> {
    let b = find(cfg.backend())?;
    if let Availability::Unusable { reason, hint } = probe(root, b, cfg) {
        return Err(Error::Backend(drivers_api::Error::Unavailable {
            backend: b.name,
            reason,
            hint,
        }));
    }
    let env = env(root, b.name);
    let driver = (b.open)(&env, &cfg.table(b.name))?;
    Store::open(&env.state_dir, driver)
}
