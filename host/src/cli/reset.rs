//! `drivers reset BACKEND`: delete one backend's store and undo what
//! `select` set up for it (a loopback filesystem or pool, its device and
//! image), so a root can be left as it was before the backend was tried.
//!
//! Without `--force` only an empty store is reset: a user who forgot what
//! the backend still holds is told, and nothing is touched.

use crate::backends;
use crate::config::{self, Config, Paths};
use crate::error::{Error, IoContext, Result};
use crate::store::Store;

use super::output::Out;

/// What a reset removed.
#[derive(Debug, Default, serde::Serialize)]
struct Removed {
    backend: String,
    images: usize,
    layers: usize,
    containers: usize,
}

/// `drivers reset BACKEND [--force]`
pub fn reset(paths: &Paths, out: &Out, name: &str, force: bool) -> Result<()> {
    let b = backends::find(name)?;
    let cfg = Config::load(&paths.config)?;
    let env = backends::env(&paths.root, b.name);
    let table = cfg.table(b.name);
    let mut removed = Removed {
        backend: b.name.to_owned(),
        ..Removed::default()
    };
    if !env.state_dir.exists() && !cfg.backends.contains_key(b.name) {
        return out.emit(&removed, || format!("backend {name}: nothing to reset\n"));
    }
    match (b.open)(&env, &table)
        .map_err(Error::from)
        .and_then(|d| Store::open(&env.state_dir, d))
    {
        Ok(mut store) => empty(&mut store, name, force, &mut removed)?,
        // A store that no longer opens (its loopback image deleted by hand,
        // say) holds nothing reachable: with --force, clear what is left.
        Err(e) if !force => {
            return Err(Error::Precondition(format!(
                "backend {name} does not open ({e}); `drivers reset {name} --force` removes what is left of it"
            )));
        }
        Err(e) => {
            tracing::warn!(backend = name, error = %e, "store does not open; removing what is left")
        }
    }
    (b.teardown)(&env, &table)?;
    match std::fs::remove_dir_all(&env.state_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).ctx("remove", &env.state_dir);
        }
        _ => {}
    }
    config::forget(&paths.config, b.name)?;
    out.emit(&removed, || {
        format!(
            "backend {name} reset: removed {} images, {} layers, {} containers\n",
            removed.images, removed.layers, removed.containers
        )
    })
}

/// Removes every container, image and layer of `store` (only with
/// `force` when there is any), through the backend, so data the backend
/// keeps outside the state directory (btrfs `--path` subvolumes, zfs
/// datasets) goes too.
fn empty(store: &mut Store, name: &str, force: bool, removed: &mut Removed) -> Result<()> {
    store.recover()?;
    let containers = store.containers(false)?;
    let images = store.images()?;
    let layers = store.layers()?;
    let holds = !(containers.is_empty() && images.is_empty() && layers.is_empty());
    if holds && !force {
        return Err(Error::Precondition(format!(
            "backend {name} still holds {} images, {} layers and {} containers; \
             `drivers reset {name} --force` deletes them",
            images.len(),
            layers.len(),
            containers.len()
        )));
    }
    for c in &containers {
        store.remove_container(&c.name, true)?;
    }
    for i in &images {
        store.remove_image(&i.name, true)?;
    }
    // Children before parents: each pass removes the layers nothing uses.
    let mut left = store.layers()?;
    while !left.is_empty() {
        let leaves: Vec<_> = left.iter().filter(|l| l.references == 0).collect();
        if leaves.is_empty() {
            return Err(Error::Precondition(format!(
                "backend {name}: {} layers are still referenced after every image and container was removed",
                left.len()
            )));
        }
        for l in leaves {
            store.remove_layer(&crate::content::Digest::parse(&l.chain_id)?)?;
        }
        left = store.layers()?;
    }
    store.sweep()?;
    removed.containers = containers.len();
    removed.images = images.len();
    removed.layers = layers.len();
    Ok(())
}
