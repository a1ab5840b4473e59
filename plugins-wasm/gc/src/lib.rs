//! The first-party gc policy: deletes the least recently used unreferenced
//! layers until all layers fit a byte budget, never touching pinned or
//! recently used ones.
//!
//! Settings (`drivers plugin add gc.wasm --set KEY=VALUE`):
//!
//! | key           | default  | meaning                                                    |
//! |---------------|----------|------------------------------------------------------------|
//! | `budget`      | `0`      | bytes all layers may use (`drivers gc --budget` overrides); 0 deletes every unkept unreferenced layer |
//! | `keep_recent` | `24h`    | keep layers created or used within this window             |
//! | `pin_labels`  | `pinned` | comma-separated label keys; a layer carrying one (with any value but `false`/`0`) is kept |
//!
//! A layer can only go together with every layer stacked on it, so the
//! policy chooses whole subtrees, oldest first.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};

use drivers_policy_sdk::types::{GcChoice, GcPlan, GcRequest, Layer, PolicyError};
use drivers_policy_sdk::{GcPolicy, Policy, Settings};

/// Parsed settings.
#[derive(Debug)]
pub struct Lru {
    budget: u64,
    keep_recent: u64,
    pin_labels: Vec<String>,
}

const DAY: u64 = 86_400;

impl Policy for Lru {
    fn init(settings: Settings) -> Result<Self, PolicyError> {
        settings.only(&["budget", "keep_recent", "pin_labels"])?;
        Ok(Lru {
            budget: settings.size("budget")?.unwrap_or(0),
            keep_recent: settings.duration("keep_recent")?.unwrap_or(DAY),
            pin_labels: settings
                .list("pin_labels")
                .unwrap_or_else(|| vec!["pinned".into()]),
        })
    }
}

/// `1d 2h`-style age for reasons.
fn age(secs: u64) -> String {
    match secs {
        s if s >= DAY => format!("{}d {}h", s / DAY, s % DAY / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `1.5 MiB`-style sizes for reasons.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Lru {
    fn pinned(&self, l: &Layer) -> bool {
        l.labels.iter().any(|(k, v)| {
            self.pin_labels.iter().any(|p| p == k) && !matches!(v.as_str(), "" | "false" | "0")
        })
    }

    /// When the layer was last needed: its last use, or its creation if
    /// later (a fresh layer nobody used yet is not old).
    fn touched(l: &Layer) -> u64 {
        l.last_used.max(l.created)
    }
}

/// A map keyed by chain id with a fixed hasher: `HashMap`'s default
/// `RandomState` would need `wasi:random`, which plugins do not get.
type Index<'a> = HashMap<&'a str, usize, BuildHasherDefault<DefaultHasher>>;

impl GcPolicy for Lru {
    fn plan_gc(&self, req: GcRequest) -> Result<GcPlan, PolicyError> {
        let budget = req.budget_bytes.unwrap_or(self.budget);
        let layers = &req.layers;
        let total: u64 = layers.iter().map(|l| l.size_bytes).sum();
        let index: Index<'_> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.chain_id.as_str(), i))
            .collect();
        let parent: Vec<Option<usize>> = layers
            .iter()
            .map(|l| l.parent.as_deref().and_then(|p| index.get(p).copied()))
            .collect();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); layers.len()];
        for (i, p) in parent.iter().enumerate() {
            if let Some(p) = p {
                children[*p].push(i);
            }
        }
        let candidate: Vec<bool> = layers
            .iter()
            .map(|l| {
                l.references == 0
                    && !self.pinned(l)
                    && req.now.saturating_sub(Self::touched(l)) >= self.keep_recent
            })
            .collect();
        // A layer may go only with its whole subtree: a kept layer blocks
        // every ancestor. Walking up stops at an ancestor already blocked,
        // so this is linear overall.
        let mut blocked = vec![false; layers.len()];
        for i in (0..layers.len()).filter(|i| !candidate[*i]) {
            let mut up = parent[i];
            while let Some(j) = up {
                if blocked[j] {
                    break;
                }
                blocked[j] = true;
                up = parent[j];
            }
        }
        let mut order: Vec<usize> = (0..layers.len())
            .filter(|i| candidate[*i] && !blocked[*i])
            .collect();
        order.sort_by(|a, b| {
            let (a, b) = (&layers[*a], &layers[*b]);
            Self::touched(a)
                .cmp(&Self::touched(b))
                .then_with(|| a.chain_id.cmp(&b.chain_id))
        });

        let mut chosen = vec![false; layers.len()];
        let mut delete = Vec::new();
        let mut freed = 0u64;
        for root in order {
            if total.saturating_sub(freed) <= budget {
                break;
            }
            if chosen[root] {
                continue;
            }
            // The subtree, leaves first, so the plan reads in deletion order.
            let mut stack = vec![root];
            let mut subtree = Vec::new();
            while let Some(i) = stack.pop() {
                subtree.push(i);
                stack.extend(children[i].iter().copied());
            }
            let first = &layers[root].chain_id;
            for i in subtree.into_iter().rev() {
                if std::mem::replace(&mut chosen[i], true) {
                    continue;
                }
                let layer = &layers[i];
                freed += layer.size_bytes;
                let why = if i == root {
                    format!(
                        "least recently used: untouched for {}",
                        age(req.now.saturating_sub(Self::touched(layer)))
                    )
                } else {
                    format!("stacked on {first}, which goes")
                };
                delete.push(GcChoice {
                    chain_id: layer.chain_id.clone(),
                    reason: why,
                });
            }
        }
        let left = total.saturating_sub(freed);
        let summary = if delete.is_empty() && total <= budget {
            format!("layers use {} of a {} budget", size(total), size(budget))
        } else if left > budget {
            format!(
                "{} layers free {}; still {} over the {} budget (the rest is referenced, pinned or recent)",
                delete.len(),
                size(freed),
                size(left - budget),
                size(budget)
            )
        } else {
            format!(
                "{} layers free {}, leaving {} within the {} budget",
                delete.len(),
                size(freed),
                size(left),
                size(budget)
            )
        };
        drivers_policy_sdk::info!("{summary}");
        Ok(GcPlan { delete, summary })
    }
}

drivers_policy_sdk::export!(Lru: gc);

#[cfg(test)]
mod tests {
    use drivers_policy_sdk::testing::{FakeStore, run_gc};

    use super::*;

    const NOW: u64 = 100 * DAY;

    /// Oldest first until the budget holds; referenced layers never go.
    #[test]
    fn lru_under_budget() {
        let mut s = FakeStore::new(NOW);
        let a = s.layer("a", None, 100, NOW - 30 * DAY);
        let b = s.layer("b", None, 100, NOW - 20 * DAY);
        let c = s.layer("c", None, 100, NOW - 10 * DAY);
        let used = s.layer("used", None, 100, NOW - 40 * DAY);
        s.image("img", &used);
        // 400 bytes, budget 250: a and b go (oldest unreferenced first).
        let plan = run_gc::<Lru>(&["keep_recent=1d"], &s.gc_request(Some(250))).unwrap();
        assert_eq!(plan.chain_ids(), vec![a.clone(), b.clone()]);
        // No budget setting: everything unreferenced and unkept goes.
        let plan = run_gc::<Lru>(&["keep_recent=1d"], &s.gc_request(None)).unwrap();
        assert_eq!(plan.chain_ids(), vec![a, b, c]);
        // Within budget: nothing.
        let plan = run_gc::<Lru>(&["budget=1K"], &s.gc_request(None)).unwrap();
        assert!(plan.delete.is_empty(), "{plan:?}");
    }

    /// Pinned and recently used layers stay, and so do their parents.
    #[test]
    fn keeps_pinned_recent_and_their_parents() {
        let mut s = FakeStore::new(NOW);
        let base = s.layer("base", None, 10, NOW - 30 * DAY);
        let pinned = s.layer("pinned", Some(&base), 10, NOW - 30 * DAY);
        s.label(&pinned, "pinned", "true");
        let other = s.layer("other", None, 10, NOW - 30 * DAY);
        let fresh = s.layer("fresh", Some(&other), 10, NOW - 3600);
        let old = s.layer("old", None, 10, NOW - 30 * DAY);
        let unpinned = s.layer("unpinned", None, 10, NOW - 30 * DAY);
        s.label(&unpinned, "pinned", "false");
        let plan = run_gc::<Lru>(&["keep_recent=2h"], &s.gc_request(None)).unwrap();
        assert_eq!(plan.chain_ids(), vec![old.clone(), unpinned.clone()]);
        let _ = fresh;
        // With a shorter window the fresh child and then its parent may go,
        // child first.
        let plan = run_gc::<Lru>(&["keep_recent=30m"], &s.gc_request(None)).unwrap();
        let ids = plan.chain_ids();
        let pos = |x: &str| ids.iter().position(|i| i == x).unwrap();
        assert!(pos("sha256:fresh") < pos(&other), "{ids:?}");
        assert!(!ids.contains(&pinned) && !ids.contains(&base));
    }

    /// A parent is chosen with its whole subtree, leaves first, and the
    /// host's checks accept the plan.
    #[test]
    fn subtrees_go_whole() {
        let mut s = FakeStore::new(NOW);
        let p = s.layer("p", None, 10, NOW - 50 * DAY);
        let c1 = s.layer("c1", Some(&p), 10, NOW - 40 * DAY);
        let c2 = s.layer("c2", Some(&c1), 10, NOW - 40 * DAY);
        let plan = run_gc::<Lru>(&["keep_recent=1d", "budget=25"], &s.gc_request(None)).unwrap();
        assert_eq!(plan.chain_ids(), vec![c2, c1, p]);
        assert!(plan.delete[2].reason.contains("least recently used"));
    }

    /// Unknown and malformed settings are refused at init.
    #[test]
    fn bad_settings() {
        let s = FakeStore::new(NOW).gc_request(None);
        for bad in ["budjet=1G", "budget=lots", "keep_recent=soon"] {
            assert!(run_gc::<Lru>(&[bad], &s).is_err(), "{bad}");
        }
    }
}
