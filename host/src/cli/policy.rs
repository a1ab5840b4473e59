//! `drivers plugin …`, `drivers gc`, `drivers dedup`, `drivers quota …`:
//! the commands of the policy plugins (see [`crate::plugins`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::output::{Out, short, size, table};
use crate::config::{Config, Paths};
use crate::error::{Error, Result};
use crate::plugins::{self, Hook, LimitArgs, PluginHost, types};

/// `drivers plugin …`
#[derive(Debug, Subcommand)]
pub enum PluginCmd {
    /// Install a policy plugin: a wasm32-wasip2 component built with drivers-policy-sdk.
    Add {
        /// The component (.wasm).
        file: PathBuf,
        /// Its name [default: the file's stem].
        #[arg(long)]
        name: Option<String>,
        /// A setting handed to the plugin's init; repeat for more.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// Wall-clock limit of one call, in milliseconds [default: 1000].
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
        timeout_ms: Option<u64>,
        /// Memory limit of one call, in MiB [default: 64].
        #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
        memory_mib: Option<u64>,
        /// Fuel limit of one call [default: unlimited; the timeout applies].
        #[arg(long, value_name = "UNITS", value_parser = clap::value_parser!(u64).range(1..))]
        fuel: Option<u64>,
    },
    /// List installed plugins with their hooks, settings and limits.
    Ls,
    /// Uninstall a plugin.
    Rm {
        /// The plugin.
        name: String,
    },
}

/// `drivers gc`
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Print the plan and the reasons; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Bytes all layers may use [default: the gc plugin's own setting].
    #[arg(long, value_parser = super::output::parse_size, value_name = "SIZE")]
    pub budget: Option<u64>,
}

/// `drivers dedup`
#[derive(Debug, Args)]
pub struct DedupArgs {
    /// Print the plan and the reasons; share nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `drivers quota …`
#[derive(Debug, Subcommand)]
pub enum QuotaCmd {
    /// Containers with their usage, enforced limit and the quota plugin's verdict.
    Show {
        /// Only this container.
        name: Option<String>,
    },
    /// Ask the quota plugin whether a container may grow by SIZE (exit 0: allow or warn; 1: deny).
    Check {
        /// The container.
        name: String,
        /// How many more bytes would be written (e.g. 0, 512M).
        #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
        bytes: u64,
    },
}

/// `KEY=VALUE` with a non-empty key.
fn parse_setting(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// A size that may be 0.
fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    super::output::parse_size(s)
}

/// `drivers plugin …`
pub fn plugin(paths: &Paths, out: &Out, cmd: PluginCmd) -> Result<()> {
    match cmd {
        PluginCmd::Add {
            file,
            name,
            settings,
            timeout_ms,
            memory_mib,
            fuel,
        } => {
            let host = PluginHost::new()?;
            let settings: BTreeMap<String, String> = settings.into_iter().collect();
            let limits = LimitArgs {
                timeout_ms,
                memory_mib,
                fuel,
            };
            let a = plugins::add(&host, paths, &file, name.as_deref(), settings, limits)?;
            out.emit(&a, || {
                let hooks: Vec<&str> = a.hooks.iter().map(|h| h.name()).collect();
                format!(
                    "plugin {} added: hooks {}, sha256 {}, compiled in {:.0} ms\n",
                    a.name,
                    hooks.join(", "),
                    &a.sha256[..12],
                    a.compile_ms
                )
            })
        }
        PluginCmd::Ls => {
            let ls = plugins::list(paths)?;
            out.emit(&ls, || {
                let rows: Vec<Vec<String>> = ls
                    .iter()
                    .map(|p| {
                        let settings: Vec<String> =
                            p.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        vec![
                            p.name.clone(),
                            p.hooks.join(","),
                            format!("{}ms {}", p.timeout_ms, size(p.memory_bytes)),
                            if settings.is_empty() {
                                "-".into()
                            } else {
                                settings.join(" ")
                            },
                            p.error
                                .clone()
                                .map_or_else(|| "ok".into(), |e| format!("broken: {e}")),
                        ]
                    })
                    .collect();
                table(&["NAME", "HOOKS", "LIMITS", "SETTINGS", "STATUS"], &rows)
            })
        }
        PluginCmd::Rm { name } => {
            plugins::remove(paths, &name)?;
            out.emit(&serde_json::json!({ "removed": name }), || {
                format!("removed plugin {name}\n")
            })
        }
    }
}

/// `drivers gc`
pub fn gc(paths: &Paths, out: &Out, args: GcArgs) -> Result<()> {
    let cfg = Config::load(&paths.config)?;
    let (_host, plugin) = plugins::load_for(paths, &cfg, Hook::Gc)?;
    let mut store = super::open(paths)?;
    let o = plugins::gc::run(&mut store, &plugin, args.budget, args.dry_run)?;
    out.emit(&o, || {
        let mut s = format!(
            "gc{} by plugin {}: {}\n",
            if o.dry_run { " (dry run)" } else { "" },
            o.plugin,
            o.summary
        );
        if !o.layers.is_empty() {
            let rows: Vec<Vec<String>> = o
                .layers
                .iter()
                .map(|l| {
                    let action = match &l.note {
                        Some(n) => format!("{} ({n})", l.action),
                        None => l.action.to_owned(),
                    };
                    vec![l.chain_id.clone(), size(l.size), action, l.reason.clone()]
                })
                .collect();
            s.push_str(&table(&["CHAIN_ID", "SIZE", "ACTION", "REASON"], &rows));
        }
        s.push_str(&format!(
            "{} {} ({} of {} layers)\n",
            if o.dry_run { "would free" } else { "freed" },
            size(o.freed_bytes),
            o.layers.iter().filter(|l| l.action != "skipped").count(),
            o.layers_before
        ));
        s
    })
}

/// `drivers dedup`
pub fn dedup(paths: &Paths, out: &Out, args: DedupArgs) -> Result<()> {
    let cfg = Config::load(&paths.config)?;
    let store = super::open(paths)?;
    let o = match plugins::dedup::sharing(&store) {
        Err(reason) => plugins::dedup::Outcome::unsupported(
            super::fs_name(&store.data_dir()),
            reason,
            args.dry_run,
        ),
        Ok(sharing) => {
            let (_host, plugin) = plugins::load_for(paths, &cfg, Hook::Dedup)?;
            let scan = plugins::dedup::scan(&store, sharing.block_size)?;
            plugins::dedup::run(&plugin, sharing, scan, args.dry_run)?
        }
    };
    out.emit(&o, || {
        if !o.supported {
            return format!(
                "dedup: nothing done: {}\n",
                o.reason
                    .as_deref()
                    .unwrap_or("extents cannot be shared here")
            );
        }
        let mut s = format!(
            "dedup{} on {} by plugin {}: {} groups of identical files among {} files\n",
            if o.dry_run { " (dry run)" } else { "" },
            o.filesystem,
            o.plugin.as_deref().unwrap_or("-"),
            o.groups,
            o.files_scanned
        );
        let rows: Vec<Vec<String>> = o
            .actions
            .iter()
            .flat_map(|a| {
                a.targets.iter().map(move |t| {
                    vec![
                        format!("{}:{}", short(&a.source_layer), a.source_path),
                        format!("{}:{}", short(&t.layer), t.path),
                        size(a.size),
                        t.result.clone(),
                    ]
                })
            })
            .collect();
        if !rows.is_empty() {
            s.push_str(&table(&["SOURCE", "TARGET", "SIZE", "RESULT"], &rows));
        }
        if o.dry_run {
            s.push_str(&format!("would save up to {}\n", size(o.planned_bytes)));
        } else {
            s.push_str(&format!("saved {}\n", size(o.bytes_saved)));
        }
        s
    })
}

/// A verdict as a word and a text.
fn verdict(v: &types::Verdict) -> (&'static str, Option<String>) {
    match v {
        types::Verdict::Allow => ("allow", None),
        types::Verdict::Warn(m) => ("warn", Some(m.clone())),
        types::Verdict::Deny(m) => ("deny", Some(m.clone())),
    }
}

/// `drivers quota …`
pub fn quota(paths: &Paths, out: &Out, cmd: QuotaCmd) -> Result<()> {
    let cfg = Config::load(&paths.config)?;
    let store = super::open(paths)?;
    match cmd {
        QuotaCmd::Show { name } => {
            let loaded = match plugins::serving(&cfg, Hook::Quota) {
                Some(_) => Some(plugins::load_for(paths, &cfg, Hook::Quota)?),
                None => None,
            };
            let containers = match &name {
                Some(n) => vec![store.container(n, true)?],
                None => store.containers(true)?,
            };
            let mut rows = Vec::new();
            for c in &containers {
                let mut row = serde_json::json!({
                    "name": c.name,
                    "image": c.image,
                    "used_bytes": c.size.unwrap_or(0),
                    "limit_bytes": c.size_limit,
                });
                if let Some((_, plugin)) = &loaded {
                    let limit = plugin.container_limit(&plugins::quota::container_request(
                        &store, &c.name, &c.image,
                    )?)?;
                    let v =
                        plugin.check_write(&plugins::quota::write_request(&store, &c.name, 0)?)?;
                    let (word, text) = verdict(&v);
                    row["policy_limit_bytes"] = serde_json::json!(limit);
                    row["verdict"] = serde_json::json!(word);
                    row["reason"] = serde_json::json!(text);
                }
                rows.push(row);
            }
            let v = serde_json::json!({
                "plugin": loaded.as_ref().map(|(_, p)| p.name().to_owned()),
                "containers": rows,
            });
            out.emit(&v, || {
                let opt = |x: &serde_json::Value| x.as_u64().map_or_else(|| "-".to_owned(), size);
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r["name"].as_str().unwrap_or_default().to_owned(),
                            r["image"].as_str().unwrap_or_default().to_owned(),
                            opt(&r["used_bytes"]),
                            opt(&r["limit_bytes"]),
                            opt(&r["policy_limit_bytes"]),
                            match (r["verdict"].as_str(), r["reason"].as_str()) {
                                (Some(w), Some(t)) => format!("{w}: {t}"),
                                (Some(w), None) => w.to_owned(),
                                _ => "- (no quota plugin)".to_owned(),
                            },
                        ]
                    })
                    .collect();
                table(
                    &["NAME", "IMAGE", "USED", "LIMIT", "POLICY LIMIT", "VERDICT"],
                    &cells,
                )
            })
        }
        QuotaCmd::Check { name, bytes } => {
            let (_host, plugin) = plugins::load_for(paths, &cfg, Hook::Quota)?;
            let req = plugins::quota::write_request(&store, &name, bytes)?;
            let v = plugin.check_write(&req)?;
            if let types::Verdict::Deny(why) = &v {
                // A failed command prints nothing on stdout (spec/cli.md).
                return Err(Error::Plugin {
                    name: plugin.name().to_owned(),
                    message: format!("denies {} more for container {name}: {why}", size(bytes)),
                    hint: None,
                });
            }
            let (word, text) = verdict(&v);
            out.emit(
                &serde_json::json!({
                    "plugin": plugin.name(),
                    "container": name,
                    "delta_bytes": bytes,
                    "used_bytes": req.current[0].used_bytes,
                    "limit_bytes": req.current[0].limit_bytes,
                    "verdict": word,
                    "reason": text,
                }),
                || match &text {
                    Some(t) => format!("{word}: {t}\n"),
                    None => format!("{word}\n"),
                },
            )
        }
    }
}

/// The plugins `drivers status` lists: what the config says, without
/// loading them.
pub fn status_plugins(cfg: &Config) -> Vec<serde_json::Value> {
    cfg.plugins
        .iter()
        .map(|p| serde_json::json!({ "name": p.name, "hooks": p.hooks, "file": p.file }))
        .collect()
}
