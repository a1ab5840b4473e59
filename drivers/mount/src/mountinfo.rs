//! Reading `/proc/self/mountinfo`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use drivers_api::{IoContext, Result};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Mount points at or below `prefix` (an absolute path), deepest first and,
/// at equal depth, most recently mounted first, each listed once: the order
/// in which [`crate::unmount`] can take them off. Used to clean up mounts a
/// crash left behind.
///
/// # Errors
///
/// An I/O error if `/proc/self/mountinfo` cannot be read.
pub fn mounts_under(prefix: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read(MOUNTINFO).ctx("read", MOUNTINFO)?;
    Ok(parse_mounts_under(&text, prefix))
}

/// The pure part of [`mounts_under`].
pub(crate) fn parse_mounts_under(text: &[u8], prefix: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(usize, PathBuf)> = text
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape(field))))
        .filter(|p| p.starts_with(prefix))
        .enumerate()
        .collect();
    // Deepest first; among equals, later lines (mounted on top) first.
    found.sort_by(|(ia, a), (ib, b)| {
        b.components()
            .count()
            .cmp(&a.components().count())
            .then(ib.cmp(ia))
    });
    let mut out: Vec<PathBuf> = Vec::new();
    for (_, p) in found {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// One mount as `/proc/self/mountinfo` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// The mount point.
    pub target: PathBuf,
    /// The filesystem type, e.g. `btrfs`.
    pub fstype: String,
    /// The mount source, e.g. `/dev/loop3`.
    pub source: String,
}

/// Every mount of this process's mount namespace, in mount order.
///
/// # Errors
///
/// An I/O error if `/proc/self/mountinfo` cannot be read.
pub(crate) fn entries() -> Result<Vec<MountEntry>> {
    let text = std::fs::read(MOUNTINFO).ctx("read", MOUNTINFO)?;
    Ok(parse_entries(&text))
}

/// The pure part of [`entries`]: field 5 is the mount point; after the
/// `-` separator come the filesystem type and the source.
pub(crate) fn parse_entries(text: &[u8]) -> Vec<MountEntry> {
    let text_of = |f: &[u8]| String::from_utf8_lossy(&unescape(f)).into_owned();
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let sep = fields.iter().position(|f| *f == b"-")?;
            Some(MountEntry {
                target: PathBuf::from(OsString::from_vec(unescape(fields.get(4)?))),
                fstype: text_of(fields.get(sep + 1)?),
                source: text_of(fields.get(sep + 2)?),
            })
        })
        .collect()
}

/// Decodes the kernel's `\ooo` octal escapes (space, tab, newline and
/// backslash are written as `\040`, `\011`, `\012`, `\134`).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let oct = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}
