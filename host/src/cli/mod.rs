//! The `drivers` command line, as `spec/cli.md` defines it: argument
//! parsing and one small handler per command. The work is done by
//! [`Store`](crate::store::Store); handlers only choose what to print.

mod output;
mod policy;
mod reset;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use drivers_api::Availability;

use crate::backends;
use crate::config::{self, Config, Paths};
use crate::content::Digest;
use crate::error::{Error, IoContext, Result};
use crate::store::Store;
use output::{Out, short, size, time};
pub use output::{parse_size, table};

/// Container storage: images, layers and container filesystems on overlay2, vfs, btrfs or zfs.
#[derive(Debug, Parser)]
#[command(name = "drivers", version, about, propagate_version = true)]
pub struct Cli {
    /// All state: metadata, layer data, content store.
    #[arg(long, global = true, env = "DRIVERS_ROOT", default_value = config::DEFAULT_ROOT, value_name = "DIR")]
    pub root: PathBuf,
    /// The config file [default: <root>/config.toml].
    #[arg(long, global = true, env = "DRIVERS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log level for stderr (error, warn, info, debug, trace); RUST_LOG also works.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Print one JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Say for every backend whether it works here, and why not.
    Check,
    /// Make a backend the active one (each keeps its own store).
    Select {
        /// overlay2, vfs, btrfs or zfs.
        backend: String,
        /// Use the existing filesystem mounted at DIR (btrfs), or keep the state in DIR (overlay2, vfs).
        #[arg(long, value_name = "DIR", conflicts_with_all = ["loopback", "dataset"])]
        path: Option<PathBuf>,
        /// Create a file-backed filesystem or pool of SIZE (e.g. 4G) under the root and use it (overlay2 and vfs: an XFS with project quotas).
        #[arg(long, value_parser = output::parse_size, value_name = "SIZE", conflicts_with = "dataset")]
        loopback: Option<u64>,
        /// The zfs dataset to keep layers under.
        #[arg(long, value_name = "POOL/NAME")]
        dataset: Option<String>,
    },
    /// Active backend, backing filesystem, counts and bytes.
    Status,
    /// Finish or undo what interrupted commands left, and delete data no record accounts for.
    Cleanup,
    /// Delete a backend's store and what `select` set up for it (loopback filesystem or pool).
    Reset {
        /// overlay2, vfs, btrfs or zfs.
        backend: String,
        /// Also delete the images, layers and containers it still holds.
        #[arg(long)]
        force: bool,
    },
    /// Images: import, list, inspect, export, remove.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Layers by chain id: list, apply, diff, remove.
    #[command(subcommand)]
    Layer(LayerCmd),
    /// Containers (writable layers): create, mount, commit, remove.
    #[command(subcommand)]
    Container(ContainerCmd),
    /// Policy plugins (WebAssembly): add, list, remove.
    #[command(subcommand)]
    Plugin(policy::PluginCmd),
    /// Delete the unreferenced layers the gc plugin chooses.
    Gc(policy::GcArgs),
    /// Share the extents of identical files, as the dedup plugin chooses.
    Dedup(policy::DedupArgs),
    /// Container size limits and write checks by the quota plugin.
    #[command(subcommand)]
    Quota(policy::QuotaCmd),
    /// Measure every usable backend on the same workloads, side by side (needs root).
    Bench(crate::bench::BenchArgs),
}

/// `drivers image …`
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Import an OCI image layout directory, an OCI archive or a `docker save` archive.
    Import {
        /// The directory or archive.
        path: PathBuf,
        /// Name for the image [default: the name recorded in the source].
        #[arg(long)]
        name: Option<String>,
        /// Import only the image recorded under this name or tag.
        #[arg(long = "ref", value_name = "REF")]
        pick: Option<String>,
    },
    /// List images.
    Ls,
    /// Show an image's layers: digest, diff_id, chain_id, size.
    Inspect {
        /// The image.
        name: String,
    },
    /// Write an image as an OCI archive.
    Export {
        /// The image.
        name: String,
        /// The archive to write.
        #[arg(short, long, value_name = "FILE.tar")]
        output: PathBuf,
    },
    /// Remove an image and the layers nothing else uses.
    Rm {
        /// The image.
        name: String,
        /// Keep its layers (for a later `gc` or import to reuse).
        #[arg(long)]
        keep_layers: bool,
    },
}

/// `drivers layer …`
#[derive(Debug, Subcommand)]
pub enum LayerCmd {
    /// List layers.
    Ls,
    /// Apply an OCI layer tar (plain, gzip or zstd); prints the new chain id.
    Apply {
        /// The layer tar.
        file: PathBuf,
        /// The layer to apply it on [default: none, a base layer].
        #[arg(long, value_name = "CHAIN_ID")]
        parent: Option<String>,
    },
    /// Write a layer's changes against its parent as an OCI layer tar.
    Diff {
        /// The layer.
        chain_id: String,
        /// The tar to write.
        #[arg(short, long, value_name = "FILE.tar")]
        output: PathBuf,
    },
    /// Remove a layer no image, container or child layer uses.
    Rm {
        /// The layer.
        chain_id: String,
    },
    /// Set labels on a layer (KEY= removes one); gc plugins read them, e.g. pinned=true.
    Label {
        /// The layer.
        chain_id: String,
        /// KEY=VALUE pairs.
        #[arg(required = true, value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
}

/// `drivers container …`
#[derive(Debug, Subcommand)]
pub enum ContainerCmd {
    /// Create a container on an image.
    Create {
        /// The container's name.
        name: String,
        /// The image.
        #[arg(long)]
        image: String,
        /// Hard limit on the container's writable layer (e.g. 50M, 4G).
        #[arg(long, value_parser = output::parse_size, value_name = "SIZE")]
        size_limit: Option<u64>,
    },
    /// Mount a container's root filesystem and print its path.
    Mount {
        /// The container.
        name: String,
        #[command(flatten)]
        caller: Caller,
    },
    /// Drop this caller's mount of a container; unmounted when nobody holds it.
    Umount {
        /// The container.
        name: String,
        #[command(flatten)]
        caller: Caller,
        /// Unmount whoever holds it.
        #[arg(long)]
        all: bool,
    },
    /// Make a new image: the container's image plus its changes.
    Commit {
        /// The container.
        name: String,
        /// Name of the new image.
        #[arg(long = "name", value_name = "IMAGE")]
        image: String,
    },
    /// Remove containers.
    Rm {
        /// The containers (one or more).
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Unmount it first if mounted.
        #[arg(long)]
        force: bool,
    },
    /// List containers.
    Ls {
        /// Measure each container's writable layer (walks it).
        #[arg(long)]
        size: bool,
    },
}

/// Who holds a mount reference.
#[derive(Debug, Args)]
pub struct Caller {
    /// Holder of the mount reference: one per caller, so repeating a mount is idempotent.
    #[arg(
        long = "caller",
        env = "DRIVERS_CALLER",
        default_value = "cli",
        value_name = "ID"
    )]
    pub id: String,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let paths = Paths::new(cli.root.clone(), cli.config.clone());
    let out = Out { json: cli.json };
    match cli.command {
        Command::Check => check(&paths, &out),
        Command::Select {
            backend,
            path,
            loopback,
            dataset,
        } => select(
            &paths,
            &out,
            &backend,
            &drivers_api::SelectArgs {
                path,
                loopback,
                dataset,
            },
        ),
        Command::Status => status(&paths, &out),
        Command::Reset { backend, force } => reset::reset(&paths, &out, &backend, force),
        Command::Cleanup => {
            let mut store = open(&paths)?;
            store.recover()?;
            let freed = store.sweep()?;
            out.emit(
                &serde_json::json!({ "freed_bytes": freed.bytes, "freed_inodes": freed.inodes }),
                || format!("freed {} in {} inodes\n", size(freed.bytes), freed.inodes),
            )
        }
        Command::Image(c) => image(&paths, &out, c),
        Command::Layer(c) => layer(&paths, &out, c),
        Command::Container(c) => container(&paths, &out, c),
        Command::Plugin(c) => policy::plugin(&paths, &out, c),
        Command::Gc(a) => policy::gc(&paths, &out, a),
        Command::Dedup(a) => policy::dedup(&paths, &out, a),
        Command::Quota(c) => policy::quota(&paths, &out, c),
        Command::Bench(a) => {
            let report = crate::bench::run(&a)?;
            out.emit(&report, || report.table())
        }
    }
}

fn open(paths: &Paths) -> Result<Store> {
    let cfg = Config::load(&paths.config)?;
    backends::open_store(&paths.root, &cfg)
}

fn check(paths: &Paths, out: &Out) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Row {
        name: &'static str,
        usable: bool,
        reason: Option<String>,
    }
    let cfg = Config::load(&paths.config)?;
    let mut rows = Vec::new();
    for b in backends::BACKENDS {
        rows.push(match backends::probe(&paths.root, b, &cfg) {
            Availability::Usable => Row {
                name: b.name,
                usable: true,
                reason: None,
            },
            Availability::Unusable { reason, .. } => Row {
                name: b.name,
                usable: false,
                reason: Some(reason),
            },
        });
    }
    for (name, why) in backends::NOT_YET {
        rows.push(Row {
            name,
            usable: false,
            reason: Some((*why).to_owned()),
        });
    }
    out.emit(&rows, || {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.name.to_owned(),
                    if r.usable { "yes" } else { "no" }.to_owned(),
                    r.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(&["BACKEND", "USABLE", "REASON"], &cells)
    })
}

fn select(paths: &Paths, out: &Out, name: &str, args: &drivers_api::SelectArgs) -> Result<()> {
    let b = backends::find(name)?;
    let cfg = Config::load(&paths.config)?;
    if let Availability::Unusable { reason, hint } = backends::probe(&paths.root, b, &cfg) {
        return Err(Error::Backend(drivers_api::Error::Unavailable {
            backend: b.name,
            reason,
            hint,
        }));
    }
    let env = backends::env(&paths.root, b.name);
    let table = (b.setup)(&env, args, &cfg.table(name))?;
    // Open once: proves the backend works with its settings and creates its store.
    Store::open(&env.state_dir, (b.open)(&env, &table)?)?;
    config::select(&paths.config, name, &table)?;
    out.emit(
        &serde_json::json!({ "backend": name, "root": paths.root, "config": paths.config }),
        || {
            format!(
                "backend {name} selected (state in {})\n",
                env.state_dir.display()
            )
        },
    )
}

/// The name of the filesystem type of `path`.
pub(crate) fn fs_name(path: &Path) -> String {
    let probe = std::iter::successors(Some(path), |p| p.parent())
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match rustix::fs::statfs(probe) {
        Ok(s) => match s.f_type as u64 {
            0xEF53 => "ext4".into(),
            0x5846_5342 => "xfs".into(),
            0x9123_683E => "btrfs".into(),
            0x0102_1994 => "tmpfs".into(),
            0x794C_7630 => "overlay".into(),
            0x2FC1_2FC1 => "zfs".into(),
            0x6573_5546 => "fuse".into(),
            0x8584_58F6 => "ramfs".into(),
            0x6969 => "nfs".into(),
            other => format!("unknown (magic {other:#x})"),
        },
        Err(e) => format!("unknown ({e})"),
    }
}

fn status(paths: &Paths, out: &Out) -> Result<()> {
    let store = open(paths)?;
    let plugins = policy::status_plugins(&Config::load(&paths.config)?);
    let images = store.images()?.len();
    let layers = store.layers()?;
    let containers = store.containers(false)?;
    let mounted = containers.iter().filter(|c| c.mountpoint.is_some()).count();
    let layer_bytes: u64 = layers.iter().map(|l| l.size).sum();
    let content_bytes = drivers_fs::usage(&store.state_dir().join(crate::content::CONTENT_DIR))
        .map(|u| u.0)
        .unwrap_or(0);
    let caps = store.driver().capabilities();
    let yes = |s: &drivers_api::Support| match s {
        drivers_api::Support::Yes => "yes".to_owned(),
        drivers_api::Support::No(why) => format!("no ({why})"),
    };
    let data_dir = store.data_dir();
    let v = serde_json::json!({
        "backend": store.driver().name(),
        "root": paths.root,
        "state_dir": store.state_dir(),
        "filesystem": fs_name(&data_dir),
        "data_dir": &data_dir,
        "images": images,
        "layers": layers.len(),
        "containers": containers.len(),
        "mounted": mounted,
        "layer_bytes": layer_bytes,
        "content_bytes": content_bytes,
        "capabilities": { "quota": yes(&caps.quota), "dedup": yes(&caps.dedup), "fast_diff": yes(&caps.fast_diff) },
        "plugins": plugins,
    });
    out.emit(&v, || {
        let mut rows = vec![
            vec!["backend".into(), store.driver().name().into()],
            vec![
                "state".into(),
                format!(
                    "{} ({})",
                    store.state_dir().display(),
                    fs_name(store.state_dir())
                ),
            ],
            vec!["images".into(), images.to_string()],
            vec![
                "layers".into(),
                format!("{} ({})", layers.len(), size(layer_bytes)),
            ],
            vec![
                "containers".into(),
                format!("{} ({mounted} mounted)", containers.len()),
            ],
            vec!["content store".into(), size(content_bytes)],
            vec!["quota".into(), yes(&caps.quota)],
            vec!["dedup".into(), yes(&caps.dedup)],
            vec!["fast diff".into(), yes(&caps.fast_diff)],
            vec![
                "plugins".into(),
                if plugins.is_empty() {
                    "none".into()
                } else {
                    plugins
                        .iter()
                        .map(|p| {
                            format!(
                                "{} ({})",
                                p["name"].as_str().unwrap_or_default(),
                                p["hooks"]
                                    .as_array()
                                    .map(|h| h
                                        .iter()
                                        .filter_map(|x| x.as_str())
                                        .collect::<Vec<_>>()
                                        .join(","))
                                    .unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ],
        ];
        // Only where the backend keeps layers on a filesystem of its own.
        if data_dir != store.state_dir() {
            rows.insert(
                2,
                vec![
                    "layer data".into(),
                    format!("{} ({})", data_dir.display(), fs_name(&data_dir)),
                ],
            );
        }
        table(&["", ""], &rows).trim_start().to_owned()
    })
}

fn image(paths: &Paths, out: &Out, cmd: ImageCmd) -> Result<()> {
    let mut store = open(paths)?;
    match cmd {
        ImageCmd::Import { path, name, pick } => {
            let tty = std::io::stderr().is_terminal();
            let progress = |p: crate::image::Progress<'_>| {
                if tty {
                    let bytes = p
                        .bytes
                        .map(|b| format!(" ({})", size(b)))
                        .unwrap_or_default();
                    eprintln!("{}: layer {}/{}{bytes}", p.image, p.layer, p.layers);
                }
            };
            let done = store.import_image(&path, name.as_deref(), pick.as_deref(), &progress)?;
            out.emit(&done, || {
                done.iter()
                    .map(|i| {
                        let what = if i.unchanged {
                            "already present".to_owned()
                        } else {
                            format!("{} layers, {} shared", i.layers, i.shared)
                        };
                        format!(
                            "imported {} ({}, {what})\n",
                            i.name,
                            short(&i.manifest_digest)
                        )
                    })
                    .collect()
            })
        }
        ImageCmd::Ls => {
            let imgs = store.images()?;
            out.emit(&imgs, || {
                let rows: Vec<Vec<String>> = imgs
                    .iter()
                    .map(|i| {
                        let bytes: u64 = i.layers.iter().map(|l| l.size).sum();
                        vec![
                            i.name.clone(),
                            short(&i.manifest_digest),
                            i.layers.len().to_string(),
                            size(bytes),
                            time(i.created),
                        ]
                    })
                    .collect();
                table(&["NAME", "MANIFEST", "LAYERS", "SIZE", "CREATED"], &rows)
            })
        }
        ImageCmd::Inspect { name } => {
            let i = store.image(&name)?;
            out.emit(&i, || {
                let rows: Vec<Vec<String>> = i
                    .layers
                    .iter()
                    .map(|l| {
                        vec![
                            l.chain_id.clone(),
                            l.diff_id.clone(),
                            l.digest.clone(),
                            size(l.size),
                        ]
                    })
                    .collect();
                format!(
                    "{} (manifest {})\n{}",
                    i.name,
                    i.manifest_digest,
                    table(&["CHAIN_ID", "DIFF_ID", "DIGEST", "SIZE"], &rows)
                )
            })
        }
        ImageCmd::Export { name, output } => {
            store.export_image(&name, &output)?;
            out.emit(
                &serde_json::json!({ "image": name, "output": output }),
                || format!("exported {name} to {}\n", output.display()),
            )
        }
        ImageCmd::Rm { name, keep_layers } => {
            let r = store.remove_image(&name, keep_layers)?;
            out.emit(&r, || {
                format!(
                    "removed image {} and {} unused layers\n",
                    r.name,
                    r.layers.len()
                )
            })
        }
    }
}

fn layer(paths: &Paths, out: &Out, cmd: LayerCmd) -> Result<()> {
    let mut store = open(paths)?;
    match cmd {
        LayerCmd::Ls => {
            let ls = store.layers()?;
            out.emit(&ls, || {
                let rows: Vec<Vec<String>> = ls
                    .iter()
                    .map(|l| {
                        vec![
                            l.chain_id.clone(),
                            l.parent.as_deref().map(short).unwrap_or_else(|| "-".into()),
                            size(l.size),
                            l.references.to_string(),
                            time(l.created),
                        ]
                    })
                    .collect();
                table(&["CHAIN_ID", "PARENT", "SIZE", "REFS", "CREATED"], &rows)
            })
        }
        LayerCmd::Apply { file, parent } => {
            let parent = parent.as_deref().map(Digest::parse).transpose()?;
            let f = std::fs::File::open(&file).ctx("open", &file)?;
            let a = store.apply_layer(f, parent.as_ref(), &Default::default())?;
            out.emit(
                &serde_json::json!({ "chain_id": a.chain_id.as_str(), "diff_id": a.diff_id.as_str(), "shared": a.shared }),
                || format!("{}\n", a.chain_id),
            )
        }
        LayerCmd::Diff { chain_id, output } => {
            let chain = Digest::parse(&chain_id)?;
            if !store.has_layer(&chain)? {
                return Err(Error::NotFound {
                    what: "layer",
                    name: chain_id,
                });
            }
            let report = write_file_atomically(&output, |f| store.write_diff(chain.as_str(), f))?;
            out.emit(
                &serde_json::json!({ "chain_id": chain_id, "output": output, "diff_id": report.diff_id, "bytes": report.tar_bytes }),
                || format!("wrote {} ({}, diff_id {})\n", output.display(), size(report.tar_bytes), report.diff_id),
            )
        }
        LayerCmd::Rm { chain_id } => {
            store.remove_layer(&Digest::parse(&chain_id)?)?;
            out.emit(&serde_json::json!({ "removed": chain_id }), || {
                format!("removed layer {chain_id}\n")
            })
        }
        LayerCmd::Label { chain_id, labels } => {
            let chain = Digest::parse(&chain_id)?;
            if !store.has_layer(&chain)? {
                return Err(Error::NotFound {
                    what: "layer",
                    name: chain_id,
                });
            }
            let mut info = store.stat(chain.as_str())?;
            let mut paths = Vec::new();
            for l in &labels {
                let (k, v) = l
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| Error::Invalid {
                        field: "label",
                        reason: format!("{l:?} is not KEY=VALUE"),
                    })?;
                if v.is_empty() {
                    info.labels.remove(k);
                } else {
                    info.labels.insert(k.to_owned(), v.to_owned());
                }
                paths.push(format!("labels.{k}"));
            }
            let fieldpaths: Vec<&str> = paths.iter().map(String::as_str).collect();
            let info = store.update(&info, &fieldpaths)?;
            out.emit(
                &serde_json::json!({ "chain_id": chain_id, "labels": info.labels }),
                || {
                    let l: Vec<String> = info
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    format!(
                        "{chain_id}: {}\n",
                        if l.is_empty() {
                            "no labels".into()
                        } else {
                            l.join(" ")
                        }
                    )
                },
            )
        }
    }
}

/// Writes `path` through `f` into a temporary sibling, renamed into place
/// only when `f` succeeds.
fn write_file_atomically<T>(
    path: &Path,
    f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<T>,
) -> Result<T> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", crate::store::random_hex(4)));
    let file = std::fs::File::create(&tmp).ctx("create", &tmp)?;
    let mut w = std::io::BufWriter::new(file);
    let res = f(&mut w).and_then(|v| {
        use std::io::Write;
        w.flush().ctx("write", &tmp)?;
        std::fs::rename(&tmp, path).ctx("move into place", path)?;
        Ok(v)
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn container(paths: &Paths, out: &Out, cmd: ContainerCmd) -> Result<()> {
    let mut store = open(paths)?;
    match cmd {
        ContainerCmd::Create {
            name,
            image,
            size_limit,
        } => {
            let cfg = Config::load(&paths.config)?;
            let c = crate::plugins::quota::create_container(
                paths, &cfg, &mut store, &name, &image, size_limit,
            )?;
            out.emit(&c, || format!("{}\n", c.name))
        }
        ContainerCmd::Mount { name, caller } => {
            let at = store.mount_container(&name, &caller.id)?;
            out.emit(
                &serde_json::json!({ "name": name, "mountpoint": at }),
                || format!("{}\n", at.display()),
            )
        }
        ContainerCmd::Umount { name, caller, all } => {
            let gone = store.unmount_container(&name, &caller.id, all)?;
            out.emit(
                &serde_json::json!({ "name": name, "unmounted": gone }),
                || {
                    if gone {
                        format!("{name} unmounted\n")
                    } else {
                        format!("{name} still mounted for other callers\n")
                    }
                },
            )
        }
        ContainerCmd::Commit { name, image } => {
            let i = store.commit_container(&name, &image)?;
            out.emit(&i, || {
                format!("{} ({})\n", i.name, short(&i.manifest_digest))
            })
        }
        ContainerCmd::Rm { names, force } => {
            // Several names: all are checked before any is removed, so a
            // typo or a mounted container removes nothing; each removal is
            // then its own transaction.
            if names.len() > 1 {
                for name in &names {
                    let c = store.container(name, false)?;
                    if !force && !c.mounted_by.is_empty() {
                        return Err(Error::InUse {
                            what: "container",
                            name: name.clone(),
                            by: format!("its mount (held by {})", c.mounted_by.join(", ")),
                        });
                    }
                }
            }
            let mut removed: Vec<&String> = Vec::new();
            for name in &names {
                if let Err(e) = store.remove_container(name, force) {
                    return Err(if removed.is_empty() {
                        e
                    } else {
                        Error::Precondition(format!(
                            "removed {} of {} containers, then {name}: {e}",
                            removed.len(),
                            names.len()
                        ))
                    });
                }
                removed.push(name);
            }
            let text = || {
                removed
                    .iter()
                    .map(|n| format!("removed container {n}\n"))
                    .collect::<String>()
            };
            match removed.as_slice() {
                [one] => out.emit(&serde_json::json!({ "removed": one }), text),
                _ => out.emit(
                    &removed
                        .iter()
                        .map(|n| serde_json::json!({ "removed": n }))
                        .collect::<Vec<_>>(),
                    text,
                ),
            }
        }
        ContainerCmd::Ls { size: with_size } => {
            let cs = store.containers(with_size)?;
            out.emit(&cs, || {
                let rows: Vec<Vec<String>> = cs
                    .iter()
                    .map(|c| {
                        let mut r = vec![
                            c.name.clone(),
                            c.image.clone(),
                            time(c.created),
                            c.mountpoint
                                .as_ref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_else(|| "-".into()),
                        ];
                        if with_size {
                            r.push(c.size.map(size).unwrap_or_default());
                        }
                        r
                    })
                    .collect();
                let mut h = vec!["NAME", "IMAGE", "CREATED", "MOUNTED AT"];
                if with_size {
                    h.push("SIZE");
                }
                table(&h, &rows)
            })
        }
    }
}
