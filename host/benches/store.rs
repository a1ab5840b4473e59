//! Whole-operation benchmarks through the store, as the CLI runs them but
//! without process start-up: layer apply throughput and container create,
//! on every backend of this build, next to the physical floor (GNU `tar -x`
//! of the same uncompressed layer onto the same filesystem, and a bare
//! `mkdir`).
//!
//! Needs root. Input: the base layer of the Debian image that
//! `tools/make-debian-image.sh` caches, if present (real debootstrap
//! output); otherwise a synthetic tree tarred by GNU tar. Compare ratios
//! within one run: the machines are small and shared.
//!
//! `cargo bench -p drivers-host --bench store`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use drivers_host::backends;
use drivers_host::layers::Expect;
use drivers_host::store::Store;

/// Where the benchmarks put their stores: the same filesystem for every
/// backend and for `tar -x`.
const BENCH_DIR: &str = "/var/tmp/drivers-bench";

/// A store of backend `name` under `root`, set up as `drivers select`
/// would do it (zfs: a sparse loopback pool of [`ZFS_POOL_BYTES`]; btrfs:
/// a loopback btrfs of [`BTRFS_FS_BYTES`]); the table is what [`teardown`]
/// undoes.
fn open_store(root: &Path, name: &str) -> (Store, toml::Table) {
    let b = backends::find(name).expect("backend in this build");
    let env = backends::env(root, name);
    let args = match name {
        "zfs" => drivers_api::SelectArgs {
            loopback: Some(ZFS_POOL_BYTES),
            ..Default::default()
        },
        // A sparse loopback btrfs on the same filesystem as the others.
        "btrfs" => drivers_api::SelectArgs {
            loopback: Some(BTRFS_FS_BYTES),
            ..Default::default()
        },
        _ => drivers_api::SelectArgs::default(),
    };
    let table = (b.setup)(&env, &args, &toml::Table::new()).expect("set up backend");
    let driver = (b.open)(&env, &table).expect("open backend");
    let store = Store::open(&env.state_dir, driver).expect("open store");
    (store, table)
}

/// Closes `store` and undoes its backend's setup (destroys a zfs pool).
fn teardown(root: &Path, name: &str, store: Store, table: &toml::Table) {
    drop(store);
    let b = backends::find(name).expect("backend in this build");
    (b.teardown)(&backends::env(root, name), table).expect("tear down backend");
}

/// The zfs benchmarks' pool: room for the Debian base layer a few times.
const ZFS_POOL_BYTES: u64 = 4 << 30;

/// The btrfs benchmarks' loopback filesystem: as much room.
const BTRFS_FS_BYTES: u64 = 4 << 30;

/// An uncompressed layer tar and its size: Debian's base layer when the
/// image cache has it, else a synthetic tree made with GNU tar.
fn input_layer(work: &Path) -> (PathBuf, u64) {
    let out = work.join("layer.tar");
    let cache = Path::new("/var/cache/drivers-images/debian-bookworm");
    if let Some(blob) = debian_base_layer(cache) {
        let mut gz = flate2::read::GzDecoder::new(std::fs::File::open(&blob).expect("open blob"));
        let mut f = std::fs::File::create(&out).expect("create layer.tar");
        std::io::copy(&mut gz, &mut f).expect("decompress");
    } else {
        let tree = work.join("tree");
        for d in 0..100 {
            let dir = tree.join(format!("dir{d:03}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            for f in 0..20 {
                let size = 1024 * (1 + (d * 20 + f) % 64);
                std::fs::write(dir.join(format!("f{f:02}")), vec![(d + f) as u8; size])
                    .expect("write");
            }
        }
        let st = Command::new("tar")
            .args(["-cf"])
            .arg(&out)
            .arg("-C")
            .arg(&tree)
            .arg(".")
            .status()
            .expect("tar");
        assert!(st.success());
    }
    let len = std::fs::metadata(&out).expect("stat").len();
    (out, len)
}

/// The first layer blob of the cached Debian image, if there is one.
fn debian_base_layer(layout: &Path) -> Option<PathBuf> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).ok()?).ok()?;
    let m = index["manifests"][0]["digest"]
        .as_str()?
        .strip_prefix("sha256:")?
        .to_owned();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(m)).ok()?).ok()?;
    let l = manifest["layers"][0]["digest"]
        .as_str()?
        .strip_prefix("sha256:")?
        .to_owned();
    Some(layout.join("blobs/sha256").join(l))
}

fn apply_once(store: &mut Store, tar: &Path) -> Duration {
    let f = std::fs::File::open(tar).expect("open layer");
    let t = Instant::now();
    let a = store
        .apply_layer(f, None, &Expect::default())
        .expect("apply");
    let took = t.elapsed();
    store.remove_layer(&a.chain_id).expect("remove");
    took
}

fn tar_once(tar: &Path, dir: &Path) -> Duration {
    std::fs::create_dir_all(dir).expect("mkdir");
    let t = Instant::now();
    let st = Command::new("tar")
        .args([
            "--same-owner",
            "--numeric-owner",
            "-p",
            "--xattrs",
            "--xattrs-include=*",
            "-xf",
        ])
        .arg(tar)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("run tar");
    let took = t.elapsed();
    assert!(st.success());
    drivers_fs::remove_tree(dir).expect("clean");
    took
}

fn layer_apply(c: &mut Criterion) {
    let work = Path::new(BENCH_DIR).join("apply");
    let _ = drivers_fs::remove_tree(&work);
    std::fs::create_dir_all(&work).expect("bench dir");
    let (tar, len) = input_layer(&work);
    let mut g = c.benchmark_group("layer_apply");
    g.sample_size(10)
        .throughput(Throughput::Bytes(len))
        .measurement_time(Duration::from_secs(20));
    for b in backends::BACKENDS {
        let (mut store, table) = open_store(&work.join("root"), b.name);
        g.bench_function(BenchmarkId::new("drivers", b.name), |bench| {
            bench.iter_custom(|n| (0..n).map(|_| apply_once(&mut store, &tar)).sum())
        });
        teardown(&work.join("root"), b.name, store, &table);
    }
    g.bench_function(BenchmarkId::new("gnu_tar_x", "same fs"), |bench| {
        bench.iter_custom(|n| (0..n).map(|_| tar_once(&tar, &work.join("tar-x"))).sum())
    });
    g.finish();
    let _ = drivers_fs::remove_tree(&work);
}

fn container_create(c: &mut Criterion) {
    let work = Path::new(BENCH_DIR).join("create");
    let _ = drivers_fs::remove_tree(&work);
    std::fs::create_dir_all(&work).expect("bench dir");
    let (tar, _) = input_layer(&work);
    let layout = make_layout(&work, &tar);
    let mut g = c.benchmark_group("container_create");
    g.sample_size(20);
    for b in backends::BACKENDS {
        let (mut store, table) = open_store(&work.join("root"), b.name);
        store
            .import_image(&layout, Some("bench"), None, &|_| {})
            .expect("import");
        let mut k = 0u64;
        g.bench_function(BenchmarkId::new("drivers", b.name), |bench| {
            bench.iter_custom(|n| {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    k += 1;
                    let name = format!("c{k}");
                    let t = Instant::now();
                    store
                        .create_container(&name, "bench", None)
                        .expect("create");
                    total += t.elapsed();
                    store.remove_container(&name, true).expect("rm");
                }
                total
            })
        });
        teardown(&work.join("root"), b.name, store, &table);
    }
    g.bench_function(BenchmarkId::new("floor", "mkdir"), |bench| {
        let d = work.join("mkdir");
        bench.iter_custom(|n| {
            let mut total = Duration::ZERO;
            for _ in 0..n {
                let t = Instant::now();
                std::fs::create_dir(&d).expect("mkdir");
                total += t.elapsed();
                std::fs::remove_dir(&d).expect("rmdir");
            }
            total
        })
    });
    g.finish();
    let _ = drivers_fs::remove_tree(&work);
}

/// A one-layer OCI layout around `tar`, so the image goes in through the
/// same import path users take.
fn make_layout(work: &Path, tar: &Path) -> PathBuf {
    use sha2::Digest as _;
    let dir = work.join("layout");
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).expect("write blob");
        (format!("sha256:{hex}"), bytes.len())
    };
    let layer = std::fs::read(tar).expect("read layer");
    let (ld, ls) = put(&layer);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [ld]}});
    let (cd, cs) = put(&serde_json::to_vec(&config).expect("json"));
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}],
    });
    let (md, ms) = put(&serde_json::to_vec(&manifest).expect("json"));
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("write");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    dir
}

criterion_group!(benches, layer_apply, container_create);
criterion_main!(benches);
