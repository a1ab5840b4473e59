//! Whether the running kernel can mount a filesystem type, before a
//! backend tries: registered now, or a module `mount` will load.

use std::path::Path;

/// Ok if filesystem type `fs` is registered in `/proc/filesystems`, or the
/// running kernel has `module` (`<module>.ko`, loaded on demand by
/// `mount`); else the reason, naming the kernel release.
pub fn filesystem_available(fs: &str, module: &str) -> Result<(), String> {
    let listed =
        std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| lists_filesystem(&s, fs));
    if listed {
        return Ok(());
    }
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let modules = Path::new("/lib/modules").join(&release);
    let ko = format!("/{module}.ko");
    let has_module = ["modules.dep", "modules.builtin"]
        .iter()
        .any(|f| std::fs::read_to_string(modules.join(f)).is_ok_and(|s| s.contains(&ko)));
    if has_module {
        Ok(())
    } else {
        Err(format!(
            "{fs} is not in /proc/filesystems and kernel {release} has no {module} module"
        ))
    }
}

/// Whether a `/proc/filesystems` text lists `fs` (`[nodev]\t<fs>`).
pub fn lists_filesystem(proc_filesystems: &str, fs: &str) -> bool {
    proc_filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some(fs))
}
