//! The config file, `<root>/config.toml` by default: which backend is
//! active, each backend's own table, and the policy plugins (`[[plugins]]`,
//! see [`PluginEntry`]). Written by `drivers select` and `drivers plugin`,
//! editable by hand; rewrites keep the user's comments and order
//! (`toml_edit`).
//!
//! ```toml
//! version = 1
//! backend = "overlay2"            # written by `drivers select`
//!
//! [backends.overlay2]
//! mount_options = []
//! ```
//!
//! Precedence for where things are: flag > environment (`DRIVERS_ROOT`,
//! `DRIVERS_CONFIG`) > default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The config format this build reads and writes.
pub const CONFIG_VERSION: u32 = 1;
/// Where state lives unless `--root` or `DRIVERS_ROOT` says otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/drivers";
/// The backend used until `drivers select` chooses one.
pub const DEFAULT_BACKEND: &str = "overlay2";

/// The parsed config file.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version; must be [`CONFIG_VERSION`]. Default: 1.
    #[serde(default = "default_version")]
    pub version: u32,
    /// The active backend. Default: none, which means [`DEFAULT_BACKEND`].
    pub backend: Option<String>,
    /// One table per backend, handed untouched to that backend's `open`.
    /// Default: empty tables.
    #[serde(default)]
    pub backends: BTreeMap<String, toml::Table>,
    /// Policy plugins, in the order `drivers plugin add` added them.
    /// Default: none. Written by `drivers plugin add` and `drivers plugin
    /// rm` (see [`crate::plugins::entries`]).
    #[serde(default)]
    pub plugins: Vec<PluginEntry>,
}

/// One `[[plugins]]` entry: a WebAssembly policy plugin and the operator's
/// settings for it.
///
/// ```toml
/// [[plugins]]
/// name = "gc"
/// file = "plugins/gc.wasm"
/// sha256 = "9f86d0…"
/// hooks = ["gc"]
/// timeout_ms = 1000
/// settings = { keep_recent = "24h", budget = "10G" }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    /// The name commands and errors use.
    pub name: String,
    /// The component, relative to the root (`plugins/<name>.wasm`).
    pub file: PathBuf,
    /// sha256 of the component, checked before every load.
    pub sha256: String,
    /// The hooks it serves (`gc`, `dedup`, `quota`), as found at add time.
    pub hooks: Vec<String>,
    /// Wall-clock limit of one call (init and hook), in milliseconds.
    /// Default: 1000 (see [`crate::plugins::DEFAULT_TIMEOUT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Linear memory one call may use, in MiB. Default: 64 (see
    /// [`crate::plugins::DEFAULT_MEMORY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Fuel (roughly, wasm instructions) one call may burn. Default:
    /// unlimited; the timeout bounds it anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// The operator's settings, handed to the plugin's `init`. Default: none.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

fn default_version() -> u32 {
    CONFIG_VERSION
}

impl Config {
    /// Reads `path`; a missing file is the default config.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] with a one-line reason (line and column included)
    /// for unreadable, malformed or unknown content.
    pub fn load(path: &Path) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config {
                    version: CONFIG_VERSION,
                    ..Config::default()
                });
            }
            Err(e) => {
                return Err(Error::Config {
                    path: path.to_owned(),
                    reason: e.to_string(),
                });
            }
        };
        let cfg: Config = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_owned(),
            reason: one_line(&text, &e),
        })?;
        if cfg.version != CONFIG_VERSION {
            return Err(Error::Config {
                path: path.to_owned(),
                reason: format!(
                    "version {} is not supported (this drivers reads version {CONFIG_VERSION})",
                    cfg.version
                ),
            });
        }
        Ok(cfg)
    }

    /// The active backend's name.
    pub fn backend(&self) -> &str {
        self.backend.as_deref().unwrap_or(DEFAULT_BACKEND)
    }

    /// The table of backend `name` (empty if absent).
    pub fn table(&self, name: &str) -> toml::Table {
        self.backends.get(name).cloned().unwrap_or_default()
    }
}

/// A toml error as one line: "line L, column C: message".
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

/// Makes `name` the active backend with `table` as its settings, keeping
/// everything else in the file (comments included). Written atomically.
pub fn select(path: &Path, name: &str, table: &toml::Table) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Error::Config {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| Error::Config {
                path: path.to_owned(),
                reason: e.message().replace('\n', " "),
            })?;
    doc["version"] = toml_edit::value(i64::from(CONFIG_VERSION));
    doc["backend"] = toml_edit::value(name);
    if !doc.contains_table("backends") {
        let mut t = toml_edit::Table::new();
        t.set_implicit(true);
        doc["backends"] = toml_edit::Item::Table(t);
    }
    let backends = doc["backends"]
        .as_table_mut()
        .ok_or_else(|| Error::Config {
            path: path.to_owned(),
            reason: "backends is not a table".into(),
        })?;
    let entry = backends
        .entry(name)
        .or_insert(toml_edit::Item::Table(toml_edit::Table::new()));
    let t = entry.as_table_mut().ok_or_else(|| Error::Config {
        path: path.to_owned(),
        reason: format!("backends.{name} is not a table"),
    })?;
    // toml_edit cannot take a toml::Table directly: go through its text.
    let text = toml::to_string(table).map_err(|e| Error::Config {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let fresh: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| Error::Config {
                path: path.to_owned(),
                reason: e.message().replace('\n', " "),
            })?;
    // The backend's setup returns its whole table: keys it dropped go.
    let stale: Vec<String> = t
        .iter()
        .map(|(k, _)| k.to_owned())
        .filter(|k| !table.contains_key(k))
        .collect();
    for k in stale {
        t.remove(&k);
    }
    for (k, item) in fresh.iter() {
        t.insert(k, item.clone());
    }
    write_atomic(path, &doc.to_string())
}

/// Drops backend `name`'s settings from the config file, and makes the
/// default backend active again if `name` was; everything else (comments
/// included) is kept. Written atomically; no file is no change.
pub fn forget(path: &Path, name: &str) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Config {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| Error::Config {
                path: path.to_owned(),
                reason: e.message().replace('\n', " "),
            })?;
    if doc.get("backend").and_then(|b| b.as_str()) == Some(name) {
        doc.remove("backend");
    }
    if let Some(b) = doc.get_mut("backends").and_then(|b| b.as_table_mut()) {
        b.remove(name);
    }
    write_atomic(path, &doc.to_string())
}

/// Replaces `path` with `text` through a rename, so a reader never sees
/// half a config.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).ctx("create directory", dir)?;
    let tmp = dir.join(format!(".config.toml.tmp-{}", crate::store::random_hex(4)));
    std::fs::write(&tmp, text).ctx("write", &tmp)?;
    std::fs::rename(&tmp, path).ctx("replace", path)
}

/// Where state and config live, after flags and environment.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The state root.
    pub root: PathBuf,
    /// The config file.
    pub config: PathBuf,
}

impl Paths {
    /// `config` defaults to `<root>/config.toml`.
    pub fn new(root: PathBuf, config: Option<PathBuf>) -> Paths {
        let config = config.unwrap_or_else(|| root.join("config.toml"));
        Paths { root, config }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unknown keys, wrong versions and syntax errors are refused with one
    /// line that says where.
    #[test]
    fn bad_configs_are_refused_in_one_line() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c.toml");
        for (text, needle) in [
            ("version = 1\nbakend = \"vfs\"\n", "unknown field"),
            ("version = 2\n", "version 2 is not supported"),
            ("version = 1\nbackend = \n", "line 2"),
            (
                "version = 1\n[backends.overlay2]\nmount_options = 3\n[backends]\nx=1\n",
                "line",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = Config::load(&p).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} → {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    /// `select` keeps the user's comments and other tables, and the result
    /// reads back.
    #[test]
    fn select_keeps_comments() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c.toml");
        std::fs::write(&p, "# mine\nversion = 1\n\n[backends.vfs]\n# keep me\n").unwrap();
        let mut table = toml::Table::new();
        table.insert(
            "mount_options".into(),
            toml::Value::Array(vec!["index=off".into()]),
        );
        select(&p, "overlay2", &table).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("# mine") && text.contains("# keep me"),
            "{text}"
        );
        let c = Config::load(&p).unwrap();
        assert_eq!(c.backend(), "overlay2");
        assert_eq!(
            c.table("overlay2")["mount_options"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert!(
            Config::load(&t.path().join("none.toml"))
                .unwrap()
                .backend
                .is_none()
        );
    }
}
