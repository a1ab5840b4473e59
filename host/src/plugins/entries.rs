//! Installed plugins: `plugin add`, `plugin rm`, `plugin ls`, and loading
//! the plugin that serves a hook.
//!
//! `add` copies the component to `<root>/plugins/<name>.wasm`, precompiles
//! it to `<name>.cwasm` (with `<name>.cwasm.key`: the component's sha256
//! and the engine's compatibility hash) and records a `[[plugins]]` entry
//! in the config file, keeping the user's comments (`toml_edit`). Every
//! later run loads the precompiled file in well under a millisecond instead
//! of compiling again; a stale or foreign cache is recompiled.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest as _, Sha256};

use super::runtime::{Hook, Limits, Plugin, PluginHost, plugin_err};
use crate::config::{CONFIG_VERSION, Config, Paths, PluginEntry};
use crate::error::{Error, IoContext, Result};

/// Directory of installed plugins, under the root.
pub const PLUGINS_DIR: &str = "plugins";

/// Limits `plugin add` may set; `None` keeps the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct LimitArgs {
    /// `--timeout-ms`.
    pub timeout_ms: Option<u64>,
    /// `--memory-mib`.
    pub memory_mib: Option<u64>,
    /// `--fuel`.
    pub fuel: Option<u64>,
}

/// What `plugin add` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Added {
    /// The plugin's name.
    pub name: String,
    /// The hooks it serves.
    pub hooks: Vec<Hook>,
    /// sha256 of the component.
    pub sha256: String,
    /// Where the component was copied.
    pub file: PathBuf,
    /// Where its precompiled form is.
    pub precompiled: PathBuf,
    /// How long compiling took.
    pub compile_ms: f64,
}

/// A row of `plugin ls`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Listed {
    /// The name.
    pub name: String,
    /// The hooks it serves.
    pub hooks: Vec<String>,
    /// The component, relative to the root.
    pub file: PathBuf,
    /// sha256 of the component.
    pub sha256: String,
    /// The operator's settings.
    pub settings: BTreeMap<String, String>,
    /// Wall-clock limit of one call, in milliseconds.
    pub timeout_ms: u64,
    /// Memory limit of one call, in bytes.
    pub memory_bytes: u64,
    /// Fuel limit of one call, if any.
    pub fuel: Option<u64>,
    /// Whether it loads; the reason if not.
    pub error: Option<String>,
}

/// Plugin names: `[a-z0-9][a-z0-9_-]{0,63}`, safe as file names.
pub fn check_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            field: "plugin name",
            reason: format!("{name:?}: use [a-z0-9][a-z0-9_-]{{0,63}}"),
        })
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `(<name>.cwasm, <name>.cwasm.key)` under the plugins directory.
fn cache_paths(root: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = root.join(PLUGINS_DIR);
    (
        dir.join(format!("{name}.cwasm")),
        dir.join(format!("{name}.cwasm.key")),
    )
}

/// Writes `bytes` to `path` atomically, readable by us only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        crate::store::random_hex(4)
    ));
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .ctx("create", &tmp)?;
        f.write_all(bytes).ctx("write", &tmp)?;
        f.sync_all().ctx("sync", &tmp)?;
        std::fs::rename(&tmp, path).ctx("move into place", path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Creates `<root>/plugins`, owned by us and closed to others: precompiled
/// plugins are native code, loaded only from here.
fn plugins_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join(PLUGINS_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .ctx("create directory", &dir)?;
    Ok(dir)
}

/// Reads the config file as a `toml_edit` document (empty if missing).
fn read_doc(path: &Path) -> Result<toml_edit::DocumentMut> {
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
    text.parse()
        .map_err(|e: toml_edit::TomlError| Error::Config {
            path: path.to_owned(),
            reason: e.message().replace('\n', " "),
        })
}

/// Writes the document atomically.
fn write_doc(path: &Path, doc: &toml_edit::DocumentMut) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).ctx("create directory", dir)?;
    let tmp = dir.join(format!(".config.toml.tmp-{}", crate::store::random_hex(4)));
    std::fs::write(&tmp, doc.to_string()).ctx("write", &tmp)?;
    std::fs::rename(&tmp, path).ctx("replace", path)
}

/// Appends `entry` as a `[[plugins]]` table, keeping everything else.
pub fn write_entry(path: &Path, entry: &PluginEntry) -> Result<()> {
    let mut doc = read_doc(path)?;
    if !doc.contains_key("version") {
        doc["version"] = toml_edit::value(i64::from(CONFIG_VERSION));
    }
    let mut t = toml_edit::Table::new();
    t["name"] = toml_edit::value(entry.name.as_str());
    t["file"] = toml_edit::value(entry.file.to_string_lossy().as_ref());
    t["sha256"] = toml_edit::value(entry.sha256.as_str());
    let mut hooks = toml_edit::Array::new();
    for h in &entry.hooks {
        hooks.push(h.as_str());
    }
    t["hooks"] = toml_edit::value(hooks);
    let int = |v: u64| toml_edit::value(i64::try_from(v).unwrap_or(i64::MAX));
    if let Some(v) = entry.timeout_ms {
        t["timeout_ms"] = int(v);
    }
    if let Some(v) = entry.memory_mib {
        t["memory_mib"] = int(v);
    }
    if let Some(v) = entry.fuel {
        t["fuel"] = int(v);
    }
    let mut settings = toml_edit::InlineTable::new();
    for (k, v) in &entry.settings {
        settings.insert(k, v.as_str().into());
    }
    t["settings"] = toml_edit::value(settings);
    match doc.get_mut("plugins") {
        None => {
            let mut aot = toml_edit::ArrayOfTables::new();
            aot.push(t);
            doc["plugins"] = toml_edit::Item::ArrayOfTables(aot);
        }
        Some(item) => match item.as_array_of_tables_mut() {
            Some(aot) => aot.push(t),
            None => {
                return Err(Error::Config {
                    path: path.to_owned(),
                    reason: "plugins is not an array of [[plugins]] tables".into(),
                });
            }
        },
    }
    write_doc(path, &doc)
}

/// Removes the `[[plugins]]` table named `name`; false if there is none.
pub fn remove_entry(path: &Path, name: &str) -> Result<bool> {
    let mut doc = read_doc(path)?;
    let Some(aot) = doc
        .get_mut("plugins")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
    else {
        return Ok(false);
    };
    let Some(i) = aot
        .iter()
        .position(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
    else {
        return Ok(false);
    };
    aot.remove(i);
    if aot.is_empty() {
        doc.remove("plugins");
    }
    write_doc(path, &doc)?;
    Ok(true)
}

/// Installs the component at `file` as plugin `name` (default: the file's
/// stem) with `settings`: checks it against the contract, runs its `init`
/// with the settings, precompiles it, and records it in the config. Each
/// hook is served by one plugin at most.
pub fn add(
    host: &PluginHost,
    paths: &Paths,
    file: &Path,
    name: Option<&str>,
    settings: BTreeMap<String, String>,
    limits: LimitArgs,
) -> Result<Added> {
    let name = match name {
        Some(n) => n.to_owned(),
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default(),
    };
    check_name(&name).map_err(|e| match e {
        Error::Invalid { field, reason } => Error::Invalid {
            field,
            reason: format!("{reason}; pass --name"),
        },
        other => other,
    })?;
    let cfg = Config::load(&paths.config)?;
    if cfg.plugins.iter().any(|p| p.name == name) {
        return Err(Error::AlreadyExists {
            what: "plugin",
            name,
        });
    }
    let wasm = std::fs::read(file).ctx("read", file)?;
    let sha256 = sha256_hex(&wasm);
    let started = Instant::now();
    let (component, hooks) = host.compile(&name, &wasm)?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    for h in &hooks {
        if let Some(other) = cfg
            .plugins
            .iter()
            .find(|p| p.hooks.iter().any(|x| x == h.name()))
        {
            return Err(Error::Plugin {
                name: name.clone(),
                message: format!(
                    "serves the {} hook, which plugin {} already serves",
                    h.name(),
                    other.name
                ),
                hint: Some(format!("drivers plugin rm {} first", other.name)),
            });
        }
    }
    let rel = PathBuf::from(PLUGINS_DIR).join(format!("{name}.wasm"));
    let entry = PluginEntry {
        name: name.clone(),
        file: rel.clone(),
        sha256: sha256.clone(),
        hooks: hooks.iter().map(|h| h.name().to_owned()).collect(),
        timeout_ms: limits.timeout_ms,
        memory_mib: limits.memory_mib,
        fuel: limits.fuel,
        settings,
    };
    // The settings are the plugin's to judge: run its init once now, so a
    // typo fails here and not at the next `drivers gc`.
    host.instantiate(&entry, &component, &hooks)?.init_only()?;
    let serialized = component
        .serialize()
        .map_err(|e| plugin_err(&name, format!("cannot be precompiled: {e}")))?;

    plugins_dir(&paths.root)?;
    let dest = paths.root.join(&rel);
    let (cwasm, key) = cache_paths(&paths.root, &name);
    let res = (|| {
        write_private(&dest, &wasm)?;
        write_private(&cwasm, &serialized)?;
        write_private(&key, host.cache_key(&sha256).as_bytes())?;
        write_entry(&paths.config, &entry)
    })();
    if let Err(e) = res {
        for p in [&dest, &cwasm, &key] {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    tracing::info!(plugin = %name, hooks = ?entry.hooks, "plugin added");
    Ok(Added {
        name,
        hooks,
        sha256,
        file: dest,
        precompiled: cwasm,
        compile_ms,
    })
}

/// Uninstalls plugin `name`: its config entry, then its files.
pub fn remove(paths: &Paths, name: &str) -> Result<()> {
    let cfg = Config::load(&paths.config)?;
    let Some(entry) = cfg.plugins.iter().find(|p| p.name == name) else {
        return Err(Error::NotFound {
            what: "plugin",
            name: name.to_owned(),
        });
    };
    remove_entry(&paths.config, name)?;
    let (cwasm, key) = cache_paths(&paths.root, name);
    for p in [paths.root.join(&entry.file), cwasm, key] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "could not remove a plugin file")
            }
        }
    }
    Ok(())
}

/// Loads plugin `entry`: checks the component's sha256, then uses its
/// precompiled form if the key matches this engine, else compiles it again
/// (and refreshes the cache when it can).
pub fn load(host: &PluginHost, root: &Path, entry: &PluginEntry) -> Result<Plugin> {
    let path = root.join(&entry.file);
    let wasm = std::fs::read(&path).map_err(|e| Error::Plugin {
        name: entry.name.clone(),
        message: format!("cannot read {}: {e}", path.display()),
        hint: Some(format!(
            "drivers plugin rm {0}, then drivers plugin add it again",
            entry.name
        )),
    })?;
    let sha = sha256_hex(&wasm);
    if sha != entry.sha256 {
        return Err(Error::Plugin {
            name: entry.name.clone(),
            message: format!(
                "{} changed since it was added (sha256 {sha}, expected {})",
                path.display(),
                entry.sha256
            ),
            hint: Some(format!(
                "drivers plugin rm {0}, then drivers plugin add it again",
                entry.name
            )),
        });
    }
    let (cwasm, key) = cache_paths(root, &entry.name);
    let want = host.cache_key(&sha);
    let cached = match std::fs::read_to_string(&key) {
        Ok(k) if k.trim() == want => host.load_precompiled(&cwasm),
        _ => None,
    };
    let (component, hooks) = match cached {
        Some(c) => {
            let hooks = host.inspect(&entry.name, &c)?;
            (c, hooks)
        }
        None => {
            tracing::info!(plugin = %entry.name, "no usable precompiled form; compiling");
            let (c, hooks) = host.compile(&entry.name, &wasm)?;
            let refreshed = c.serialize().map_err(|e| e.to_string()).and_then(|bytes| {
                write_private(&cwasm, &bytes)
                    .and_then(|()| write_private(&key, want.as_bytes()))
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = refreshed {
                tracing::debug!(plugin = %entry.name, error = %e, "could not refresh the precompiled plugin");
            }
            (c, hooks)
        }
    };
    host.instantiate(entry, &component, &hooks)
}

/// The entry of the plugin serving `hook`, if any.
pub fn serving(cfg: &Config, hook: Hook) -> Option<&PluginEntry> {
    cfg.plugins
        .iter()
        .find(|p| p.hooks.iter().any(|h| h == hook.name()))
}

/// Loads the plugin serving `hook`, or says that none is configured.
pub fn load_for(paths: &Paths, cfg: &Config, hook: Hook) -> Result<(PluginHost, Plugin)> {
    let Some(entry) = serving(cfg, hook) else {
        return Err(Error::Precondition(format!(
            "no {0} plugin is configured: add one with `drivers plugin add {0}.wasm`",
            hook.name()
        )));
    };
    let host = PluginHost::new()?;
    let plugin = load(&host, &paths.root, entry)?;
    Ok((host, plugin))
}

/// Every configured plugin, and whether it loads.
pub fn list(paths: &Paths) -> Result<Vec<Listed>> {
    let cfg = Config::load(&paths.config)?;
    if cfg.plugins.is_empty() {
        return Ok(Vec::new());
    }
    let host = PluginHost::new()?;
    Ok(cfg
        .plugins
        .iter()
        .map(|e| Listed {
            timeout_ms: u64::try_from(Limits::of(e).timeout.as_millis()).unwrap_or(u64::MAX),
            memory_bytes: Limits::of(e).memory,
            fuel: e.fuel,
            name: e.name.clone(),
            hooks: e.hooks.clone(),
            file: e.file.clone(),
            sha256: e.sha256.clone(),
            settings: e.settings.clone(),
            error: load(&host, &paths.root, e).err().map(|e| {
                let mut s = e.to_string();
                if let Some(h) = e.hint() {
                    s.push_str(&format!(" ({h})"));
                }
                s
            }),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries are appended and removed without disturbing the rest of
    /// the file, and read back through `Config::load`.
    #[test]
    fn entries_round_trip_and_keep_comments() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("config.toml");
        std::fs::write(&p, "# mine\nversion = 1\nbackend = \"vfs\" # chosen\n").unwrap();
        let mut settings = BTreeMap::new();
        settings.insert("image.debian:12".to_owned(), "2G".to_owned());
        settings.insert("soft_percent".to_owned(), "70".to_owned());
        let e = PluginEntry {
            name: "quota".into(),
            file: "plugins/quota.wasm".into(),
            sha256: "ab".into(),
            hooks: vec!["quota".into()],
            timeout_ms: Some(50),
            memory_mib: None,
            fuel: None,
            settings,
        };
        write_entry(&p, &e).unwrap();
        let mut g = e.clone();
        g.name = "gc".into();
        g.hooks = vec!["gc".into()];
        g.settings.clear();
        write_entry(&p, &g).unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.plugins, vec![e.clone(), g.clone()]);
        assert_eq!(c.backend(), "vfs");
        assert_eq!(serving(&c, Hook::Gc).unwrap().name, "gc");
        assert!(remove_entry(&p, "quota").unwrap());
        assert!(!remove_entry(&p, "quota").unwrap());
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("# mine") && text.contains("# chosen"),
            "{text}"
        );
        assert_eq!(Config::load(&p).unwrap().plugins, vec![g]);
        assert!(remove_entry(&p, "gc").unwrap());
        assert!(!std::fs::read_to_string(&p).unwrap().contains("plugins"));
    }

    /// Names are file-name safe.
    #[test]
    fn names() {
        for ok in ["gc", "policy_gc", "a-1"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "GC", "../x", "a.b", "-x", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
