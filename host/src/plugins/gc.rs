//! `drivers gc`: the store's facts go to the gc plugin, its plan is
//! checked, and the chosen layers are removed through the store, children
//! before parents, one transaction each.
//!
//! "Unreferenced" means no image, no container (nor any other writable or
//! view snapshot), no child layer and no live operation needs the layer.
//! A plan that names anything else, or names a layer without the layers
//! stacked on it, is refused whole: nothing is deleted.

use std::collections::{BTreeMap, HashMap};

use super::bindings::types;
use super::runtime::{Plugin, plugin_err};
use crate::content::Digest;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::snapshots::user_of;

/// Nanoseconds to whole seconds, never negative.
fn secs(ns: i64) -> u64 {
    u64::try_from(ns / 1_000_000_000).unwrap_or(0)
}

/// What `plan-gc` is asked: every layer with its size, times, labels and
/// how many things need it (directly or through layers stacked on it).
pub fn request(store: &Store, budget: Option<u64>, now: u64) -> Result<types::GcRequest> {
    let conn = store.conn();
    // Every snapshot, for parentage: layers, containers, views, extractions.
    let mut own: BTreeMap<String, u32> = BTreeMap::new();
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    {
        let mut q = conn.prepare("SELECT key, parent, kind FROM snapshots")?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (key, parent, kind) = row?;
            // A writable or view snapshot is a user of its parent chain.
            own.insert(key.clone(), u32::from(kind != "committed"));
            if let Some(p) = parent {
                children.entry(p).or_default().push(key);
            }
        }
    }
    {
        let mut q = conn.prepare(
            "SELECT key, COUNT(*) FROM (
                 SELECT top_chain_id AS key, name FROM images WHERE top_chain_id IS NOT NULL
                 UNION SELECT chain_id, image FROM image_layers)
             GROUP BY key",
        )?;
        let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))?;
        for row in rows {
            let (key, n) = row?;
            *own.entry(key).or_default() += n;
        }
    }
    {
        let mut q = conn.prepare("SELECT DISTINCT key, lease FROM lease_refs")?;
        let rows: Vec<(String, String)> = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (key, lease) in rows {
            if store.lease_is_live(&lease)? {
                *own.entry(key).or_default() += 1;
            }
        }
    }
    let total = totals(&own, &children);

    let mut labels: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    {
        let mut q = conn.prepare("SELECT key, name, value FROM labels ORDER BY key, name")?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (k, n, v) = row?;
            labels.entry(k).or_default().push((n, v));
        }
    }
    let mut q = conn.prepare(
        "SELECT l.chain_id, s.parent, s.bytes, s.created, s.last_used
         FROM layers l JOIN snapshots s ON s.key = l.chain_id ORDER BY s.created, l.chain_id",
    )?;
    let rows = q.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut layers = Vec::new();
    for row in rows {
        let (chain_id, parent, bytes, created, last_used) = row?;
        layers.push(types::Layer {
            references: total.get(&chain_id).copied().unwrap_or(0),
            labels: labels.remove(&chain_id).unwrap_or_default(),
            chain_id,
            parent,
            size_bytes: u64::try_from(bytes).unwrap_or(0),
            created: secs(created),
            last_used: secs(last_used),
        });
    }
    Ok(types::GcRequest {
        layers,
        budget_bytes: budget,
        now,
    })
}

/// References of each snapshot including those of everything stacked on
/// it (post-order over the parent forest, without recursion).
fn totals(
    own: &BTreeMap<String, u32>,
    children: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, u32> {
    let mut total: BTreeMap<String, u32> = BTreeMap::new();
    for root in own.keys() {
        if total.contains_key(root) {
            continue;
        }
        let mut stack = vec![(root.as_str(), false)];
        while let Some((k, expanded)) = stack.pop() {
            if total.contains_key(k) {
                continue;
            }
            let kids = children.get(k).map(Vec::as_slice).unwrap_or(&[]);
            if expanded {
                let sum = kids
                    .iter()
                    .map(|c| total.get(c).copied().unwrap_or(0))
                    .fold(own.get(k).copied().unwrap_or(0), u32::saturating_add);
                total.insert(k.to_owned(), sum);
            } else {
                stack.push((k, true));
                for c in kids {
                    if !total.contains_key(c) {
                        stack.push((c, false));
                    }
                }
            }
        }
    }
    total
}

/// One layer of a checked plan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Step {
    /// The layer.
    pub chain_id: String,
    /// Its size.
    pub size: u64,
    /// The plugin's reason.
    pub reason: String,
    /// `would remove` (dry run), `removed` or `skipped`.
    pub action: &'static str,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Clips plugin-supplied text for messages.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(100).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Checks `plan` against `req`: every id offered, unreferenced, named
/// once, and every layer stacked on a chosen one chosen too. Returns the
/// steps children first, or why the plan is refused (`used_by` describes
/// who needs a referenced layer).
pub fn validate(
    req: &types::GcRequest,
    plan: &types::GcPlan,
    used_by: &dyn Fn(&str) -> String,
) -> std::result::Result<Vec<Step>, String> {
    let layers = &req.layers;
    let index: HashMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.chain_id.as_str(), i))
        .collect();
    let mut reason: Vec<Option<&str>> = vec![None; layers.len()];
    for c in &plan.delete {
        let Some(&i) = index.get(c.chain_id.as_str()) else {
            return Err(format!(
                "named {:?}, which is not a layer of this store",
                clip(&c.chain_id)
            ));
        };
        if layers[i].references > 0 {
            return Err(format!(
                "asked to delete layer {}, which is still used by {}",
                c.chain_id,
                used_by(&c.chain_id)
            ));
        }
        if reason[i].replace(&c.reason).is_some() {
            return Err(format!("named layer {} twice", c.chain_id));
        }
    }
    let parent: Vec<Option<usize>> = layers
        .iter()
        .map(|l| l.parent.as_deref().and_then(|p| index.get(p).copied()))
        .collect();
    for (i, p) in parent.iter().enumerate() {
        if let Some(p) = *p
            && reason[p].is_some()
            && reason[i].is_none()
        {
            return Err(format!(
                "asked to delete layer {} but not {}, which is stacked on it",
                layers[p].chain_id, layers[i].chain_id
            ));
        }
    }
    // Depth of every layer, each computed once.
    let mut depth: Vec<Option<usize>> = vec![None; layers.len()];
    for i in 0..layers.len() {
        let mut path = Vec::new();
        let mut cur = Some(i);
        let mut base = 0;
        while let Some(k) = cur {
            if let Some(d) = depth[k] {
                base = d + 1;
                break;
            }
            path.push(k);
            cur = parent[k];
            if path.len() > layers.len() {
                break; // a parent cycle: impossible in the store; do not spin
            }
        }
        for (n, k) in path.iter().rev().enumerate() {
            depth[*k] = Some(base + n);
        }
    }
    let mut steps: Vec<(usize, Step)> = reason
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.map(|r| {
                (
                    depth[i].unwrap_or(0),
                    Step {
                        chain_id: layers[i].chain_id.clone(),
                        size: layers[i].size_bytes,
                        reason: clip(r),
                        action: "would remove",
                        note: None,
                    },
                )
            })
        })
        .collect();
    // Deepest first: a child always goes before its parent.
    steps.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.chain_id.cmp(&b.1.chain_id)));
    Ok(steps.into_iter().map(|(_, s)| s).collect())
}

/// What `drivers gc` did or would do.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    /// The plugin that chose.
    pub plugin: String,
    /// True for `--dry-run`.
    pub dry_run: bool,
    /// The plugin's summary.
    pub summary: String,
    /// The budget given with `--budget`.
    pub budget_bytes: Option<u64>,
    /// Layers in the store before.
    pub layers_before: usize,
    /// The plan, children first.
    pub layers: Vec<Step>,
    /// Bytes removed (or that would be).
    pub freed_bytes: u64,
}

/// Asks `plugin` for a plan over `store` and, unless `dry_run`, carries
/// it out.
pub fn run(
    store: &mut Store,
    plugin: &Plugin,
    budget: Option<u64>,
    dry_run: bool,
) -> Result<Outcome> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let req = request(store, budget, now)?;
    let plan = plugin.plan_gc(&req)?;
    let used_by = |id: &str| -> String {
        match user_of(store.conn(), id, None) {
            Ok(Some(by)) => by,
            _ => "layers stacked on it".into(),
        }
    };
    let mut steps = validate(&req, &plan, &used_by).map_err(|why| {
        plugin_err(
            plugin.name(),
            format!("{why}; the plan was refused and nothing was deleted"),
        )
    })?;
    let mut freed = 0;
    for s in &mut steps {
        if dry_run {
            freed += s.size;
            continue;
        }
        match store.remove_layer(&Digest::parse(&s.chain_id)?) {
            Ok(()) => {
                s.action = "removed";
                freed += s.size;
            }
            // Another process started using it since the facts were read:
            // the store refused inside its transaction, as it should.
            Err(Error::InUse { by, .. }) => {
                s.action = "skipped";
                s.note = Some(format!("now in use by {by}"));
            }
            Err(Error::NotFound { .. }) => {
                s.action = "skipped";
                s.note = Some("already gone".into());
            }
            Err(e) => return Err(e),
        }
    }
    tracing::info!(
        plugin = plugin.name(),
        removed = steps.len(),
        freed,
        dry_run,
        "gc done"
    );
    Ok(Outcome {
        plugin: plugin.name().to_owned(),
        dry_run,
        summary: clip(&plan.summary),
        budget_bytes: budget,
        layers_before: req.layers.len(),
        layers: steps,
        freed_bytes: freed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(id: &str, parent: Option<&str>, refs: u32) -> types::Layer {
        types::Layer {
            chain_id: id.into(),
            parent: parent.map(Into::into),
            size_bytes: 10,
            created: 0,
            last_used: 0,
            references: refs,
            labels: vec![],
        }
    }

    fn plan(ids: &[&str]) -> types::GcPlan {
        types::GcPlan {
            delete: ids
                .iter()
                .map(|i| types::GcChoice {
                    chain_id: (*i).into(),
                    reason: "r".into(),
                })
                .collect(),
            summary: String::new(),
        }
    }

    /// The host's rules, table-driven: unknown, referenced, duplicate and
    /// orphaning plans are refused; good ones come back children first.
    #[test]
    fn validate_rules() {
        let req = types::GcRequest {
            layers: vec![
                layer("a", None, 0),
                layer("b", Some("a"), 0),
                layer("c", Some("b"), 0),
                layer("used", None, 2),
            ],
            budget_bytes: None,
            now: 0,
        };
        let by = |_: &str| "image x".to_owned();
        for (ids, needle) in [
            (&["nope"][..], "not a layer of this store"),
            (&["used"][..], "still used by image x"),
            (&["c", "c"][..], "twice"),
            (&["a"][..], "but not b"),
            (&["b", "a"][..], "but not c"),
        ] {
            let e = validate(&req, &plan(ids), &by).unwrap_err();
            assert!(e.contains(needle), "{ids:?}: {e}");
        }
        let steps = validate(&req, &plan(&["a", "b", "c"]), &by).unwrap();
        let order: Vec<_> = steps.iter().map(|s| s.chain_id.as_str()).collect();
        assert_eq!(order, ["c", "b", "a"]);
        assert!(validate(&req, &plan(&[]), &by).unwrap().is_empty());
    }

    /// Totals add what is stacked on a snapshot to its own references.
    #[test]
    fn totals_add_descendants() {
        let own: BTreeMap<String, u32> = [("a", 0), ("b", 1), ("c", 0), ("d", 2), ("e", 0)]
            .map(|(k, v)| (k.to_owned(), v))
            .into();
        let children: BTreeMap<String, Vec<String>> = [
            ("a".to_owned(), vec!["b".to_owned(), "c".to_owned()]),
            ("c".to_owned(), vec!["d".to_owned()]),
        ]
        .into();
        let t = totals(&own, &children);
        assert_eq!(t["a"], 3);
        assert_eq!(t["c"], 2);
        assert_eq!(t["b"], 1);
        assert_eq!(t["e"], 0);
    }
}
