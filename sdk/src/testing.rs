//! Run a plugin's logic natively, in plain `cargo test`, against a fake
//! store, with the same checks the host applies to its decisions.
//!
//! ```
//! use drivers_policy_sdk::testing::FakeStore;
//! let mut s = FakeStore::new(1_000);
//! let base = s.layer("base", None, 10, 0);
//! let app = s.layer("app", Some(&base), 5, 900);
//! s.image("web", &app);
//! let req = s.gc_request(Some(100));
//! assert!(req.layers.iter().all(|l| l.references == 1));
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use crate::types::{
    ContainerRequest, DedupAction, DedupRequest, DupGroup, FileRef, GcPlan, GcRequest, Layer,
    PolicyError, Sharing, Usage, Verdict, WriteRequest,
};
use crate::{DedupPolicy, GcPolicy, Level, Policy, QuotaPolicy, Settings};

thread_local! {
    static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
}

/// Where [`crate::log`] writes in native builds.
#[cfg_attr(
    target_arch = "wasm32",
    expect(dead_code, reason = "components log through the host import")
)]
pub(crate) fn capture(level: Level, message: &str) {
    LOGS.with(|l| l.borrow_mut().push((level, message.to_owned())));
}

/// The lines the policy logged on this thread since the last call.
pub fn logs() -> Vec<(Level, String)> {
    LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

/// A store made up in a test: layers, images, containers and files.
#[derive(Clone, Debug, Default)]
pub struct FakeStore {
    now: u64,
    layers: Vec<Layer>,
    /// Images: name → top chain id.
    images: BTreeMap<String, String>,
    /// Containers: name → (image, used bytes, limit).
    containers: BTreeMap<String, (String, u64, Option<u64>)>,
    /// Files: (layer, path) → content.
    files: BTreeMap<(String, String), Vec<u8>>,
}

impl FakeStore {
    /// An empty store whose clock reads `now` (seconds since the epoch).
    pub fn new(now: u64) -> FakeStore {
        FakeStore {
            now,
            ..FakeStore::default()
        }
    }

    /// Adds a layer named `sha256:<name>` of `size` bytes on `parent`,
    /// created and last used at `last_used`; returns its chain id.
    pub fn layer(&mut self, name: &str, parent: Option<&str>, size: u64, last_used: u64) -> String {
        let chain_id = format!("sha256:{name}");
        self.layers.push(Layer {
            chain_id: chain_id.clone(),
            parent: parent.map(str::to_owned),
            size_bytes: size,
            created: last_used,
            last_used,
            references: 0,
            labels: Vec::new(),
        });
        chain_id
    }

    /// Sets label `key=value` on layer `chain_id`.
    pub fn label(&mut self, chain_id: &str, key: &str, value: &str) {
        if let Some(l) = self.layers.iter_mut().find(|l| l.chain_id == chain_id) {
            l.labels.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Adds image `name` whose top layer is `top`.
    pub fn image(&mut self, name: &str, top: &str) {
        self.images.insert(name.to_owned(), top.to_owned());
    }

    /// Adds container `name` on `image`, using `used` bytes, with `limit`.
    pub fn container(&mut self, name: &str, image: &str, used: u64, limit: Option<u64>) {
        self.containers
            .insert(name.to_owned(), (image.to_owned(), used, limit));
    }

    /// Puts a file with `content` at `path` in layer `chain_id`.
    pub fn file(&mut self, chain_id: &str, path: &str, content: &[u8]) {
        self.files
            .insert((chain_id.to_owned(), path.to_owned()), content.to_vec());
    }

    /// Chain ids of `top` and its ancestors.
    fn chain(&self, top: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = Some(top.to_owned());
        while let Some(c) = cur {
            cur = self
                .layers
                .iter()
                .find(|l| l.chain_id == c)
                .and_then(|l| l.parent.clone());
            out.push(c);
        }
        out
    }

    /// What `drivers gc` would ask: every layer, with references counted
    /// as the host counts them (each image and container needs its whole
    /// chain).
    pub fn gc_request(&self, budget: Option<u64>) -> GcRequest {
        let mut refs: BTreeMap<String, u32> = BTreeMap::new();
        let tops = self.images.values().cloned().chain(
            self.containers
                .values()
                .filter_map(|(img, _, _)| self.images.get(img).cloned()),
        );
        for top in tops {
            for c in self.chain(&top) {
                *refs.entry(c).or_default() += 1;
            }
        }
        let layers = self
            .layers
            .iter()
            .map(|l| Layer {
                references: refs.get(&l.chain_id).copied().unwrap_or(0),
                ..l.clone()
            })
            .collect();
        GcRequest {
            layers,
            budget_bytes: budget,
            now: self.now,
        }
    }

    /// What `drivers dedup` would ask: groups of identical files of at
    /// least `block_size` bytes, largest content first.
    pub fn dedup_request(&self, block_size: u64) -> DedupRequest {
        let mut by_content: BTreeMap<&[u8], Vec<FileRef>> = BTreeMap::new();
        for ((layer, path), content) in &self.files {
            if content.len() as u64 >= block_size.max(1) {
                by_content.entry(content).or_default().push(FileRef {
                    layer: layer.clone(),
                    path: path.clone(),
                });
            }
        }
        let groups = by_content
            .into_iter()
            .filter(|(_, files)| files.len() > 1)
            .map(|(content, files)| DupGroup {
                content_hash: format!("fake:{}", fnv(content)),
                size_bytes: content.len() as u64,
                files,
            })
            .collect();
        DedupRequest {
            groups,
            sharing: Sharing {
                filesystem: "fakefs".into(),
                block_size,
            },
        }
    }

    /// (used, limit) of containers matching `image` and `name`.
    fn matching<'a>(
        &'a self,
        image: Option<&'a str>,
        name: Option<&'a str>,
    ) -> impl Iterator<Item = (u64, Option<u64>)> + 'a {
        self.containers
            .iter()
            .filter(move |(n, (i, _, _))| {
                image.is_none_or(|x| x == i) && name.is_none_or(|x| x == n.as_str())
            })
            .map(|(_, (_, used, limit))| (*used, *limit))
    }

    fn usage(&self, scope: &str) -> Usage {
        let (used, limit) = if let Some(c) = scope.strip_prefix("container:") {
            self.matching(None, Some(c)).next().unwrap_or((0, None))
        } else if let Some(i) = scope.strip_prefix("image:") {
            (self.matching(Some(i), None).map(|u| u.0).sum(), None)
        } else {
            (self.matching(None, None).map(|u| u.0).sum(), None)
        };
        Usage {
            scope: scope.to_owned(),
            used_bytes: used,
            limit_bytes: limit,
        }
    }

    /// What `drivers container create NAME --image IMAGE` would ask.
    pub fn container_request(&self, container: &str, image: &str) -> ContainerRequest {
        let image_bytes = self
            .images
            .get(image)
            .map(|top| {
                self.chain(top)
                    .iter()
                    .filter_map(|c| self.layers.iter().find(|l| &l.chain_id == c))
                    .map(|l| l.size_bytes)
                    .sum()
            })
            .unwrap_or(0);
        ContainerRequest {
            container: container.to_owned(),
            image: image.to_owned(),
            image_bytes,
            current: vec![self.usage(&format!("image:{image}")), self.usage("global")],
        }
    }

    /// What `drivers quota check CONTAINER --bytes DELTA` would ask.
    pub fn write_request(&self, container: &str, delta: u64) -> WriteRequest {
        let image = self
            .containers
            .get(container)
            .map(|c| c.0.clone())
            .unwrap_or_default();
        WriteRequest {
            scope: format!("container:{container}"),
            delta_bytes: delta,
            current: vec![
                self.usage(&format!("container:{container}")),
                self.usage(&format!("image:{image}")),
                self.usage("global"),
            ],
        }
    }
}

/// A small stable hash for fake content hashes.
fn fnv(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl GcPlan {
    /// The chain ids the plan deletes, in its order.
    pub fn chain_ids(&self) -> Vec<String> {
        self.delete.iter().map(|c| c.chain_id.clone()).collect()
    }
}

/// Why a native run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The policy returned an error (from `init` or the hook).
    Policy(PolicyError),
    /// The decision breaks a rule the host enforces; the host would refuse
    /// it and do nothing.
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Policy(e) => write!(f, "policy error: {e:?}"),
            Failure::Refused(why) => write!(f, "the host would refuse this: {why}"),
        }
    }
}

fn init<P: Policy>(settings: &[&str]) -> Result<P, Failure> {
    P::init(Settings::parse(settings)).map_err(Failure::Policy)
}

/// `init(settings)` then `plan-gc(req)`, then the host's checks.
pub fn run_gc<P: GcPolicy>(settings: &[&str], req: &GcRequest) -> Result<GcPlan, Failure> {
    let plan = init::<P>(settings)?
        .plan_gc(req.clone())
        .map_err(Failure::Policy)?;
    check_gc_plan(req, &plan).map_err(Failure::Refused)?;
    Ok(plan)
}

/// `init(settings)` then `plan-dedup(req)`, then the host's checks.
pub fn run_dedup<P: DedupPolicy>(
    settings: &[&str],
    req: &DedupRequest,
) -> Result<Vec<DedupAction>, Failure> {
    let plan = init::<P>(settings)?
        .plan_dedup(req.clone())
        .map_err(Failure::Policy)?;
    check_dedup_plan(req, &plan).map_err(Failure::Refused)?;
    Ok(plan)
}

/// `init(settings)` then `container-limit(req)`.
pub fn run_container_limit<P: QuotaPolicy>(
    settings: &[&str],
    req: &ContainerRequest,
) -> Result<Option<u64>, Failure> {
    init::<P>(settings)?
        .container_limit(req.clone())
        .map_err(Failure::Policy)
}

/// `init(settings)` then `check-write(req)`.
pub fn run_check_write<P: QuotaPolicy>(
    settings: &[&str],
    req: &WriteRequest,
) -> Result<Verdict, Failure> {
    init::<P>(settings)?
        .check_write(req.clone())
        .map_err(Failure::Policy)
}

/// The rules the host checks before it deletes anything (mirrors
/// `validate_plan` in the host's `plugins/gc.rs`): every named layer was
/// offered, is unreferenced, is named once, and every layer stacked on it
/// is named too.
pub fn check_gc_plan(req: &GcRequest, plan: &GcPlan) -> Result<(), String> {
    let offered: BTreeMap<&str, &Layer> = req
        .layers
        .iter()
        .map(|l| (l.chain_id.as_str(), l))
        .collect();
    let mut chosen = BTreeSet::new();
    for c in &plan.delete {
        let Some(l) = offered.get(c.chain_id.as_str()) else {
            return Err(format!("{:?} is not a layer of the store", c.chain_id));
        };
        if l.references > 0 {
            return Err(format!(
                "{} is referenced {} time(s)",
                c.chain_id, l.references
            ));
        }
        if !chosen.insert(c.chain_id.as_str()) {
            return Err(format!("{} is named twice", c.chain_id));
        }
    }
    for l in &req.layers {
        if let Some(p) = &l.parent
            && chosen.contains(p.as_str())
            && !chosen.contains(l.chain_id.as_str())
        {
            return Err(format!(
                "{p} would go but its child {} would stay",
                l.chain_id
            ));
        }
    }
    Ok(())
}

/// The rules the host checks before it shares anything (mirrors
/// `validate_actions` in the host's `plugins/dedup.rs`): each action's
/// files come from one group, and no file is named twice.
pub fn check_dedup_plan(req: &DedupRequest, plan: &[DedupAction]) -> Result<(), String> {
    let group_of: BTreeMap<(&str, &str), usize> = req
        .groups
        .iter()
        .enumerate()
        .flat_map(|(i, g)| {
            g.files
                .iter()
                .map(move |f| ((f.layer.as_str(), f.path.as_str()), i))
        })
        .collect();
    let mut seen = BTreeSet::new();
    for a in plan {
        let key = |f: &FileRef| (f.layer.clone(), f.path.clone());
        let Some(g) = group_of.get(&(a.source.layer.as_str(), a.source.path.as_str())) else {
            return Err(format!(
                "source {}:{} is not in any group",
                a.source.layer, a.source.path
            ));
        };
        if a.targets.is_empty() {
            return Err(format!(
                "action for {}:{} has no targets",
                a.source.layer, a.source.path
            ));
        }
        for f in std::iter::once(&a.source).chain(&a.targets) {
            if group_of.get(&(f.layer.as_str(), f.path.as_str())) != Some(g) {
                return Err(format!(
                    "{}:{} is not in the source's group",
                    f.layer, f.path
                ));
            }
            if !seen.insert(key(f)) {
                return Err(format!("{}:{} is named twice", f.layer, f.path));
            }
        }
    }
    Ok(())
}
