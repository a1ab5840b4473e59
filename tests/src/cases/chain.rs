//! Deep layer chains and the depth limit (conformance.md: "a 500-layer
//! chain on overlay2").

use anyhow::{Context, Result, ensure};
use drivers_api::ErrorKind;
use drivers_host::content::Digest;
use drivers_host::layers::Expect;

use crate::Fixture;
use crate::fixture::expect_kind;
use crate::rawtar::{self, Entry};

/// How deep a backend's chain is tested, and the depth it must refuse
/// beyond. overlay2 stacks at most 500 lower layers (overlayfs's
/// `OVL_MAX_STACK`); vfs copies every layer in full, so a shorter chain
/// proves the same there, and it has no depth limit.
fn plan(backend: &str) -> (usize, Option<usize>) {
    match backend {
        "overlay2" => (500, Some(500)),
        _ => (64, None),
    }
}

fn layer(i: usize) -> Vec<u8> {
    rawtar::tar(&[Entry::file(format!("layer-{i:03}"), format!("{i}\n"))])
}

/// A chain as deep as the backend promises (one file per layer) imports,
/// and a container on its top reads the bottom and top files and sees every
/// layer's file; where the backend has a limit, one more layer is refused
/// with Limit, naming the limit, and leaves nothing behind.
pub fn deep_chain(fx: &Fixture) -> Result<()> {
    let (depth, limit) = plan(fx.name());
    let mut parent: Option<Digest> = None;
    for i in 0..depth {
        let a = fx
            .store()
            .apply_layer(&layer(i)[..], parent.as_ref(), &Expect::default())
            .with_context(|| format!("layer {}", i + 1))?;
        parent = Some(a.chain_id);
    }
    let top = parent.context("no layers")?;
    ensure!(fx.store().depth(top.as_str())? == depth, "chain depth");
    fx.prepare("ctr", Some(top.as_str()))?;
    fx.with_mounted("ctr", |r| {
        let bottom = std::fs::read_to_string(r.join("layer-000"))?;
        ensure!(bottom == "0\n", "bottom file reads {bottom:?}");
        let last = std::fs::read_to_string(r.join(format!("layer-{:03}", depth - 1)))?;
        ensure!(
            last == format!("{}\n", depth - 1),
            "top file reads {last:?}"
        );
        let n = std::fs::read_dir(r)?.count();
        ensure!(
            n == depth,
            "{n} entries through the container, expected {depth}"
        );
        std::fs::write(r.join("written-by-container"), "x")?;
        Ok(())
    })?;
    if let Some(limit) = limit {
        let before = fx.backend_listing()?;
        let names = fx.snapshot_names()?;
        let r = fx
            .store()
            .apply_layer(&layer(depth)[..], Some(&top), &Expect::default());
        let e = expect_kind(
            r,
            ErrorKind::Limit,
            &format!("layer {} on a {depth}-layer chain", depth + 1),
        )?;
        ensure!(
            e.to_string().contains(&limit.to_string()),
            "the refusal does not name {limit}: {e}"
        );
        ensure!(
            fx.snapshot_names()? == names,
            "the refused layer left a snapshot"
        );
        fx.expect_no_residue(Some(&before))?;
    }
    Ok(())
}
