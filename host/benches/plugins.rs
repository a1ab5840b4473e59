//! Policy-plugin costs: loading the first-party gc plugin cold (compiling
//! the component) against loading its precompiled form (what every CLI
//! run after `plugin add` does), and one gc decision over 10,000 layers
//! (fresh instance, `init`, `plan-gc`, the host's plan checks).
//!
//! Needs the components of `cargo xtask build-plugins` (found through
//! `DRIVERS_PLUGIN_DIR`, default `target/plugins-wasm/wasm32-wasip2/release`).
//!
//! `cargo bench -p drivers-host --bench plugins`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use drivers_host::config::{Paths, PluginEntry};
use drivers_host::plugins::{self, PluginHost, types};

/// A built plugin component: `DRIVERS_PLUGIN_DIR/<file>`.
fn plugin_path(file: &str) -> PathBuf {
    std::env::var_os("DRIVERS_PLUGIN_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/plugins-wasm/wasm32-wasip2/release")
        })
        .join(file)
}

fn gc_wasm() -> Vec<u8> {
    let p = plugin_path("policy_gc.wasm");
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `cargo xtask build-plugins` or set DRIVERS_PLUGIN_DIR",
            p.display()
        )
    })
}

/// A sha256-looking chain id for layer `n`: digests differ from the first
/// character, as real ones do (a shared prefix would make every map
/// comparison walk it).
fn chain_id(n: u64) -> String {
    let mut x = n + 1;
    let mut s = String::from("sha256:");
    for _ in 0..4 {
        x = (x ^ (x >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (x >> 29);
        s.push_str(&format!("{x:016x}"));
    }
    s
}

/// 10,000 layers in 2,000 chains of 5, a third of the chains referenced,
/// some pinned, ages spread over a month.
fn request() -> types::GcRequest {
    let now = 1_800_000_000u64;
    let mut layers = Vec::with_capacity(10_000);
    for chain in 0..2_000u64 {
        let mut parent: Option<String> = None;
        for depth in 0..5u64 {
            let id = chain_id(chain * 5 + depth);
            layers.push(types::Layer {
                chain_id: id.clone(),
                parent: parent.clone(),
                size_bytes: (chain % 97 + 1) << 20,
                created: now - 30 * 86_400 + chain * 1_000,
                last_used: now - (chain % 30) * 86_400,
                references: u32::from(chain % 3 == 0),
                labels: if chain % 50 == 0 {
                    vec![("pinned".into(), "true".into())]
                } else {
                    Vec::new()
                },
            });
            parent = Some(id);
        }
    }
    types::GcRequest {
        layers,
        budget_bytes: Some(50 << 30),
        now,
    }
}

fn load(c: &mut Criterion) {
    let host = PluginHost::new().expect("engine");
    let wasm = gc_wasm();
    let mut g = c.benchmark_group("plugin_load");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.bench_function("cold_compile", |b| {
        b.iter(|| host.compile("gc", &wasm).expect("compile"))
    });
    // What a CLI run does after `plugin add`: read and hash the component,
    // check the cache key, deserialize, check the contract, link.
    let root = tempfile::tempdir().expect("tempdir");
    let paths = Paths::new(root.path().to_owned(), None);
    let src = root.path().join("gc.wasm");
    std::fs::write(&src, &wasm).expect("write");
    plugins::add(
        &host,
        &paths,
        &src,
        Some("gc"),
        BTreeMap::new(),
        Default::default(),
    )
    .expect("plugin add");
    let cfg = drivers_host::config::Config::load(&paths.config).expect("config");
    let entry = cfg.plugins[0].clone();
    g.bench_function("precompiled", |b| {
        b.iter(|| plugins::load(&host, &paths.root, &entry).expect("load"))
    });
    g.finish();
}

fn decide(c: &mut Criterion) {
    let host = PluginHost::new().expect("engine");
    let (component, hooks) = host.compile("gc", &gc_wasm()).expect("compile");
    let entry = PluginEntry {
        name: "gc".into(),
        file: "gc.wasm".into(),
        sha256: String::new(),
        hooks: vec!["gc".into()],
        timeout_ms: None,
        memory_mib: None,
        fuel: None,
        settings: [("keep_recent".to_owned(), "2d".to_owned())].into(),
    };
    let plugin = host.instantiate(&entry, &component, &hooks).expect("link");
    let req = request();
    let plan = plugin.plan_gc(&req).expect("plan");
    assert!(
        !plan.delete.is_empty(),
        "the benchmark should delete something"
    );
    plugins::gc::validate(&req, &plan, &|_| String::new()).expect("a valid plan");
    let mut g = c.benchmark_group("gc_decision");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    // Parts of the decision: the plugin call alone (fresh instance, init,
    // canonical-ABI copies both ways, the policy) and the host's checks.
    g.bench_function("10000_layers_call_only", |b| {
        b.iter(|| plugin.plan_gc(&req).expect("plan"))
    });
    // The floor: the same request to a plugin that decides nothing (the
    // hostile test plugin in mode ok), i.e. instance + copying 10,000 records in.
    let wasm = std::fs::read(plugin_path("policy_hostile.wasm")).expect("hostile plugin");
    let (hc, hh) = host.compile("ok", &wasm).expect("compile");
    let mut ok_entry = entry.clone();
    ok_entry.settings = [("mode".to_owned(), "ok".to_owned())].into();
    let floor = host.instantiate(&ok_entry, &hc, &hh).expect("link");
    g.bench_function("10000_layers_floor", |b| {
        b.iter(|| floor.plan_gc(&req).expect("plan"))
    });
    g.bench_function("10000_layers_checks_only", |b| {
        b.iter(|| plugins::gc::validate(&req, &plan, &|_| String::new()).expect("valid"))
    });
    g.bench_function("10000_layers", |b| {
        b.iter(|| {
            let plan = plugin.plan_gc(&req).expect("plan");
            plugins::gc::validate(&req, &plan, &|_| String::new()).expect("valid")
        })
    });
    g.finish();
}

criterion_group!(benches, load, decide);
criterion_main!(benches);
