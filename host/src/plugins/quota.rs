//! Quota: the quota plugin decides a new container's size limit (when
//! `container create` has no `--size-limit`) and judges writes
//! (`drivers quota check`); the backend enforces limits. A backend that
//! cannot makes `container create` fail with its reason: a limit the
//! policy asked for is never silently dropped.

use super::bindings::types;
use super::entries;
use super::runtime::Hook;
use crate::config::{Config, Paths};
use crate::containers::ContainerInfo;
use crate::error::{Error, Result};
use crate::store::Store;

/// Usage of one scope.
fn usage(scope: String, used: u64, limit: Option<u64>) -> types::Usage {
    types::Usage {
        scope,
        used_bytes: used,
        limit_bytes: limit,
    }
}

/// Bytes used by container `name`'s writable layer (walks it).
fn used_by(store: &Store, name: &str) -> Result<u64> {
    Ok(store.container(name, true)?.size.unwrap_or(0))
}

/// Usage of `image:<image>` (its containers together) and `global` (every
/// container).
fn scopes(store: &Store, image: &str) -> Result<Vec<types::Usage>> {
    let all = store.containers(true)?;
    let of_image: u64 = all
        .iter()
        .filter(|c| c.image == image)
        .filter_map(|c| c.size)
        .sum();
    let global: u64 = all.iter().filter_map(|c| c.size).sum();
    Ok(vec![
        usage(format!("image:{image}"), of_image, None),
        usage("global".into(), global, None),
    ])
}

/// Bytes of an image's layers on the backend.
fn image_bytes(store: &Store, image: &str) -> Result<u64> {
    let img = store.image(image)?;
    let layers = store.layers()?;
    Ok(img
        .layers
        .iter()
        .filter_map(|il| layers.iter().find(|l| l.chain_id == il.chain_id))
        .map(|l| l.size)
        .sum())
}

/// What `container-limit` is asked for container `name` of `image`.
pub fn container_request(
    store: &Store,
    name: &str,
    image: &str,
) -> Result<types::ContainerRequest> {
    Ok(types::ContainerRequest {
        container: name.to_owned(),
        image: image.to_owned(),
        image_bytes: image_bytes(store, image)?,
        current: scopes(store, image)?,
    })
}

/// What `check-write` is asked for `delta` more bytes in container `name`.
pub fn write_request(store: &Store, name: &str, delta: u64) -> Result<types::WriteRequest> {
    let c = store.container(name, false)?;
    let mut current = vec![usage(
        format!("container:{name}"),
        used_by(store, name)?,
        c.size_limit,
    )];
    current.extend(scopes(store, &c.image)?);
    Ok(types::WriteRequest {
        scope: format!("container:{name}"),
        delta_bytes: delta,
        current,
    })
}

/// Creates container `name` on `image`. Without `size_limit`, the quota
/// plugin (if one is configured) decides the limit; a backend that cannot
/// enforce it refuses, and the error names the plugin and the reason.
pub fn create_container(
    paths: &Paths,
    cfg: &Config,
    store: &mut Store,
    name: &str,
    image: &str,
    size_limit: Option<u64>,
) -> Result<ContainerInfo> {
    if size_limit.is_some() || entries::serving(cfg, Hook::Quota).is_none() {
        return store.create_container(name, image, size_limit);
    }
    crate::containers::check_container_name(name)?;
    let (_host, plugin) = entries::load_for(paths, cfg, Hook::Quota)?;
    let resolved = store.image(image)?.name;
    let req = container_request(store, name, &resolved)?;
    let limit = plugin.container_limit(&req)?;
    if limit == Some(0) {
        return Err(Error::Plugin {
            name: plugin.name().to_owned(),
            message: format!("gave container {name} a size limit of 0 bytes; refused"),
            hint: None,
        });
    }
    match store.create_container(name, image, limit) {
        Err(Error::Backend(drivers_api::Error::Unsupported {
            backend, reason, ..
        })) => {
            let limit = limit.unwrap_or_default();
            Err(Error::Plugin {
                name: plugin.name().to_owned(),
                message: format!(
                    "limits container {name} to {limit} bytes, but backend {backend} cannot enforce size limits: {reason}"
                ),
                hint: Some(format!(
                    "use a backend that enforces quotas, or give the plugin no limit for image {resolved}, or drivers plugin rm {}",
                    plugin.name()
                )),
            })
        }
        other => other,
    }
}
