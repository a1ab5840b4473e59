//! The first-party dedup policy: shares the groups of identical files that
//! save the most first, skipping small files.
//!
//! Settings (`drivers plugin add dedup.wasm --set KEY=VALUE`):
//!
//! | key          | default | meaning                                                  |
//! |--------------|---------|----------------------------------------------------------|
//! | `min_size`   | `64K`   | ignore files smaller than this                           |
//! | `max_groups` | none    | share at most this many groups per run (largest first)   |
//!
//! In each group the first file (by layer, then path) keeps its extents
//! and the others come to share them.

use drivers_policy_sdk::types::{DedupAction, DedupRequest, FileRef, PolicyError};
use drivers_policy_sdk::{DedupPolicy, Policy, Settings};

/// Parsed settings.
#[derive(Debug)]
pub struct Largest {
    min_size: u64,
    max_groups: Option<u64>,
}

impl Policy for Largest {
    fn init(settings: Settings) -> Result<Self, PolicyError> {
        settings.only(&["min_size", "max_groups"])?;
        Ok(Largest {
            min_size: settings.size("min_size")?.unwrap_or(64 << 10),
            max_groups: settings.u64("max_groups")?,
        })
    }
}

/// Whole blocks a group can save: every file but one stops holding its own.
fn savings(size: u64, files: usize, block: u64) -> u64 {
    let blocks = size / block.max(1);
    blocks * block.max(1) * (files.saturating_sub(1) as u64)
}

impl DedupPolicy for Largest {
    fn plan_dedup(&self, req: DedupRequest) -> Result<Vec<DedupAction>, PolicyError> {
        let block = req.sharing.block_size;
        let mut groups: Vec<_> = req
            .groups
            .into_iter()
            .filter(|g| g.size_bytes >= self.min_size && g.files.len() > 1)
            .collect();
        groups.sort_by(|a, b| {
            savings(b.size_bytes, b.files.len(), block)
                .cmp(&savings(a.size_bytes, a.files.len(), block))
                .then_with(|| a.content_hash.cmp(&b.content_hash))
        });
        if let Some(max) = self.max_groups {
            groups.truncate(usize::try_from(max).unwrap_or(usize::MAX));
        }
        let mut total = 0;
        let actions: Vec<DedupAction> = groups
            .into_iter()
            .map(|mut g| {
                total += savings(g.size_bytes, g.files.len(), block);
                g.files.sort_by(|a: &FileRef, b: &FileRef| {
                    (&a.layer, &a.path).cmp(&(&b.layer, &b.path))
                });
                let source = g.files.remove(0);
                DedupAction {
                    source,
                    targets: g.files,
                }
            })
            .collect();
        drivers_policy_sdk::info!(
            "{} groups chosen, up to {total} bytes to share on {}",
            actions.len(),
            req.sharing.filesystem
        );
        Ok(actions)
    }
}

drivers_policy_sdk::export!(Largest: dedup);

#[cfg(test)]
mod tests {
    use drivers_policy_sdk::testing::{FakeStore, run_dedup};

    use super::*;

    /// Largest savings first, small files skipped, first file is the source.
    #[test]
    fn largest_first_min_size() {
        let mut s = FakeStore::new(0);
        let (a, b, c) = ("sha256:a", "sha256:b", "sha256:c");
        let big = vec![1u8; 1 << 20];
        let mid = vec![2u8; 256 << 10];
        let small = vec![3u8; 8 << 10];
        s.file(b, "usr/big", &big);
        s.file(a, "usr/big", &big);
        for l in [a, b, c] {
            s.file(l, "mid", &mid);
            s.file(l, "small", &small);
        }
        let req = s.dedup_request(4096);
        let plan = run_dedup::<Largest>(&[], &req).unwrap();
        assert_eq!(plan.len(), 2, "{plan:?}");
        // 1 MiB saved once beats 256 KiB saved twice.
        assert_eq!(plan[0].source.path, "usr/big");
        assert_eq!(plan[0].source.layer, a);
        assert_eq!(plan[0].targets.len(), 1);
        assert_eq!(plan[1].targets.len(), 2);
        // min_size 4K keeps the small group too; max_groups cuts.
        let plan = run_dedup::<Largest>(&["min_size=4K"], &req).unwrap();
        assert_eq!(plan.len(), 3);
        let plan = run_dedup::<Largest>(&["min_size=4K", "max_groups=1"], &req).unwrap();
        assert_eq!(plan.len(), 1);
    }

    /// Nothing to share, nothing planned; bad settings refused.
    #[test]
    fn empty_and_bad() {
        let req = FakeStore::new(0).dedup_request(4096);
        assert!(run_dedup::<Largest>(&[], &req).unwrap().is_empty());
        assert!(run_dedup::<Largest>(&["min=1"], &req).is_err());
        assert!(run_dedup::<Largest>(&["max_groups=-1"], &req).is_err());
    }
}
