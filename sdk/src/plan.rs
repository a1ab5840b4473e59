//! Helpers for building decisions the host accepts.

use std::collections::BTreeMap;

use crate::types::{GcRequest, Layer};

/// The layers a gc plan may name when it wants every layer for which
/// `wanted` holds: unreferenced, wanted, and with every layer stacked on
/// them removable too (the host refuses a plan that would leave a child
/// without its parent). Children come before their parents.
///
/// ```
/// use drivers_policy_sdk::{plan::removable, testing::FakeStore};
/// let mut s = FakeStore::new(100);
/// let base = s.layer("base", None, 1, 0);
/// let top = s.layer("top", Some(&base), 1, 99);
/// let req = s.gc_request(None);
/// // "old" means unused since 50: base is old, but top (stacked on it) is not.
/// assert!(removable(&req, |l| l.last_used < 50).is_empty());
/// let ids: Vec<_> = removable(&req, |_| true).iter().map(|l| l.chain_id.clone()).collect();
/// assert_eq!(ids, vec![top, base]);
/// ```
pub fn removable(req: &GcRequest, wanted: impl Fn(&Layer) -> bool) -> Vec<&Layer> {
    let mut children: BTreeMap<&str, Vec<&Layer>> = BTreeMap::new();
    for l in &req.layers {
        if let Some(p) = l.parent.as_deref() {
            children.entry(p).or_default().push(l);
        }
    }
    let mut ok: BTreeMap<&str, bool> = BTreeMap::new();
    // Deepest first, so children are decided before their parents.
    let by_id: BTreeMap<&str, &Layer> = req
        .layers
        .iter()
        .map(|l| (l.chain_id.as_str(), l))
        .collect();
    let depth = |l: &Layer| {
        let mut d = 0;
        let mut cur = l.parent.as_deref();
        while let Some(p) = cur {
            d += 1;
            cur = by_id.get(p).and_then(|l| l.parent.as_deref());
            if d > req.layers.len() {
                break;
            }
        }
        d
    };
    let mut order: Vec<(usize, &Layer)> = req.layers.iter().map(|l| (depth(l), l)).collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.chain_id.cmp(&b.1.chain_id)));
    let mut out = Vec::new();
    for (_, l) in order {
        let kids_ok = children
            .get(l.chain_id.as_str())
            .into_iter()
            .flatten()
            .all(|c| ok.get(c.chain_id.as_str()).copied().unwrap_or(false));
        let yes = l.references == 0 && wanted(l) && kids_ok;
        ok.insert(&l.chain_id, yes);
        if yes {
            out.push(l);
        }
    }
    out
}
