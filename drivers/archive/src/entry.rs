//! Turns a tar entry into what to do: a checked, normalised path and the
//! attributes, whatever tar dialect carried them (ustar, GNU long names,
//! PAX records, GNU sparse headers).

use std::io::Read;

use rustix::fs::Timespec;
use tar::EntryType;

use crate::error::{Error, Problem};
use crate::sparse::{self, Extent};

/// The longest path the kernel takes in one call, without its NUL.
const PATH_MAX: usize = 4095;
/// The longest single name on every Linux filesystem we run on.
const NAME_MAX: usize = 255;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// One entry, parsed and checked.
pub(crate) struct Parsed {
    /// Relative, `/`-separated, without `.` or empty components; empty for
    /// the root. For a whiteout, the path it deletes; for an opaque marker,
    /// its directory.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits incl. setuid/setgid/sticky; file-type bits some
    /// tools put in the field are masked off.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
    /// `SCHILY.xattr.*` records, storage-internal names dropped.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) enum Kind {
    File(Sparse),
    Dir,
    Symlink(Vec<u8>),
    /// Target path, normalised like `path`.
    Hardlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    /// `.wh.NAME`: delete `path` from lower layers.
    Whiteout,
    /// `DIR/.wh..wh..opq`: hide the lower children of `path`.
    Opaque,
    /// Nothing to apply: PAX global headers, aufs metadata (`.wh..wh.*`).
    Skip,
}

/// How a regular file's data is laid out in the archive.
pub(crate) enum Sparse {
    /// Contiguous data.
    No,
    /// Old GNU `S` entry: the tar crate expands the holes into zero reads.
    GnuOld,
    /// PAX GNU sparse: extents in the PAX header (0.0, 0.1) or, when
    /// `None`, in a text map at the start of the data (1.0).
    Pax {
        real_size: u64,
        extents: Option<Vec<Extent>>,
    },
}

/// The PAX records this crate reads itself; the tar crate handles `path`,
/// `linkpath`, `size`, `uid` and `gid`.
#[derive(Default)]
struct Pax {
    mtime: Option<Timespec>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse_major: Option<Vec<u8>>,
    sparse_minor: Option<Vec<u8>>,
    sparse_name: Option<Vec<u8>>,
    sparse_size: Option<u64>,
    sparse_map: Option<Vec<u8>>,
    sparse_numblocks: Option<u64>,
    /// 0.0 repeats `GNU.sparse.offset` / `GNU.sparse.numbytes` records.
    sparse_pairs: Vec<u64>,
}

/// Parses the entry at hand. `name` receives the name as found in the tar,
/// for messages.
pub(crate) fn parse<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    name: &mut Vec<u8>,
) -> Result<Parsed, Error> {
    name.clear();
    name.extend_from_slice(&entry.path_bytes());
    if entry.header().entry_type().is_pax_global_extensions() {
        // Global records (a comment, a default mtime) change nothing we
        // apply; their data is drained like any entry's.
        return Ok(skip());
    }
    let pax = read_pax(entry).map_err(|p| Error::entry(name, p))?;
    let sparse = sparse_layout(&pax, entry).map_err(|p| Error::entry(name, p))?;
    if let (Sparse::Pax { .. }, Some(real)) = (&sparse, &pax.sparse_name) {
        // GNU tar stores the entry under `DIR/GNUSparseFile.PID/NAME` and the
        // real name in this record.
        name.clear();
        name.extend_from_slice(real);
    }
    let header = entry.header();
    let bad = |p| Error::entry(name, p);
    let ty = header.entry_type();
    let mut path = normalize(name, false).map_err(bad)?;
    // V7 tars mark directories with a trailing slash on an old-style regular
    // entry (typeflag NUL).
    let v7_dir = header.as_bytes()[156] == 0 && name.ends_with(b"/");
    let kind = match whiteout_kind(&mut path).map_err(bad)? {
        Some(kind) => kind,
        None if v7_dir => Kind::Dir,
        None => entry_kind(entry, ty, sparse).map_err(bad)?,
    };
    let (mode, uid, gid, mtime) = attributes(entry.header(), pax.mtime).map_err(bad)?;
    Ok(Parsed {
        path,
        kind,
        mode,
        uid,
        gid,
        mtime,
        xattrs: pax.xattrs,
    })
}

/// Mode (permission bits only), uid, gid and mtime (a PAX `mtime` wins).
fn attributes(
    header: &tar::Header,
    pax_mtime: Option<Timespec>,
) -> Result<(u32, u32, u32, Timespec), Problem> {
    let field = |what: &str, e: std::io::Error| Problem::BadHeader(format!("{what}: {e}"));
    let mode = numeric(header, MODE, header.mode().map(u64::from)).map_err(|e| field("mode", e))?;
    let uid = id(numeric(header, UID, header.uid()).map_err(|e| field("uid", e))?)?;
    let gid = id(numeric(header, GID, header.gid()).map_err(|e| field("gid", e))?)?;
    let mtime = match pax_mtime {
        Some(t) => t,
        None => {
            let secs = numeric(header, MTIME, header.mtime()).map_err(|e| field("mtime", e))?;
            let secs =
                i64::try_from(secs).map_err(|_| Problem::BadHeader("mtime out of range".into()))?;
            Timespec {
                tv_sec: secs,
                tv_nsec: 0,
            }
        }
    };
    // Some tools (Go's archive/tar via buildah) put file-type bits in the
    // mode field.
    Ok((mode as u32 & 0o7777, uid, gid, mtime))
}

/// Header fields (byte ranges) read through [`numeric`].
const MODE: std::ops::Range<usize> = 100..108;
const UID: std::ops::Range<usize> = 108..116;
const GID: std::ops::Range<usize> = 116..124;
const MTIME: std::ops::Range<usize> = 136..148;
const DEV_MAJOR: std::ops::Range<usize> = 329..337;
const DEV_MINOR: std::ops::Range<usize> = 337..345;

/// A numeric header field as the tar crate parsed it, except that a blank
/// field (only NULs and spaces) reads as 0, as in GNU tar and Go's
/// archive/tar; the tar crate refuses it.
fn numeric(
    header: &tar::Header,
    field: std::ops::Range<usize>,
    parsed: std::io::Result<u64>,
) -> std::io::Result<u64> {
    if header.as_bytes()[field]
        .iter()
        .all(|&b| b == 0 || b == b' ')
    {
        Ok(0)
    } else {
        parsed
    }
}

fn skip() -> Parsed {
    Parsed {
        path: Vec::new(),
        kind: Kind::Skip,
        mode: 0,
        uid: 0,
        gid: 0,
        mtime: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        xattrs: Vec::new(),
    }
}

/// Checks and normalises an entry name: refuses absolute names, `..`
/// anywhere, NUL bytes and names no syscall could take; drops `.` and empty
/// components (`./etc//x` is `etc/x`, `.` and `./` are the root).
pub(crate) fn normalize(raw: &[u8], link: bool) -> Result<Vec<u8>, Problem> {
    let pick = |path: Problem, link_problem: Problem| if link { link_problem } else { path };
    if raw.contains(&0) {
        return Err(pick(Problem::NulByte, Problem::LinkInvalid));
    }
    if raw.starts_with(b"/") {
        return Err(pick(Problem::Absolute, Problem::LinkAbsolute));
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(pick(Problem::ClimbsOut, Problem::LinkClimbsOut)),
            _ if comp.len() > NAME_MAX => {
                return Err(pick(Problem::NameTooLong, Problem::LinkInvalid));
            }
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    if out.len() > PATH_MAX {
        return Err(pick(Problem::NameTooLong, Problem::LinkInvalid));
    }
    Ok(out)
}

/// Recognises whiteouts and aufs metadata by their names. On a whiteout
/// `path` becomes the path it deletes, on an opaque marker its directory.
fn whiteout_kind(path: &mut Vec<u8>) -> Result<Option<Kind>, Problem> {
    let (parent_len, last) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (i, &path[i + 1..]),
        None => (0, &path[..]),
    };
    // aufs keeps hardlink bookkeeping in `.wh..wh.plnk/`: skip it whole.
    if path[..parent_len]
        .split(|&b| b == b'/')
        .any(|c| c.starts_with(WHITEOUT_META_PREFIX))
    {
        return Ok(Some(Kind::Skip));
    }
    if last == OPAQUE_MARKER {
        path.truncate(parent_len);
        return Ok(Some(Kind::Opaque));
    }
    if last.starts_with(WHITEOUT_META_PREFIX) {
        return Ok(Some(Kind::Skip));
    }
    let Some(target) = last.strip_prefix(WHITEOUT_PREFIX) else {
        return Ok(None);
    };
    if target.is_empty() || target == b"." || target == b".." {
        return Err(Problem::InvalidWhiteout);
    }
    let start = path.len() - target.len() - WHITEOUT_PREFIX.len();
    path.drain(start..start + WHITEOUT_PREFIX.len());
    Ok(Some(Kind::Whiteout))
}

fn entry_kind<R: Read>(
    entry: &tar::Entry<'_, R>,
    ty: EntryType,
    sparse: Sparse,
) -> Result<Kind, Problem> {
    let header = entry.header();
    let device = || -> Result<(u32, u32), Problem> {
        let bad = |e: std::io::Error| Problem::BadHeader(format!("device number: {e}"));
        let major = numeric(
            header,
            DEV_MAJOR,
            header.device_major().map(|d| d.map_or(0, u64::from)),
        );
        let minor = numeric(
            header,
            DEV_MINOR,
            header.device_minor().map(|d| d.map_or(0, u64::from)),
        );
        let (major, minor) = (major.map_err(bad)?, minor.map_err(bad)?);
        let fit = |n: u64| {
            u32::try_from(n).map_err(|_| Problem::BadHeader("device number out of range".into()))
        };
        Ok((fit(major)?, fit(minor)?))
    };
    Ok(match ty {
        EntryType::Regular | EntryType::Continuous => Kind::File(sparse),
        EntryType::GNUSparse => Kind::File(Sparse::GnuOld),
        EntryType::Directory => Kind::Dir,
        EntryType::Symlink => {
            let target = entry.link_name_bytes().unwrap_or_default();
            if target.is_empty() || target.contains(&0) {
                return Err(Problem::BadSymlinkTarget);
            }
            Kind::Symlink(target.into_owned())
        }
        EntryType::Link => {
            let target = entry.link_name_bytes().unwrap_or_default();
            let target = normalize(&target, true)?;
            if target.is_empty() {
                return Err(Problem::LinkInvalid);
            }
            Kind::Hardlink(target)
        }
        EntryType::Char => {
            let (major, minor) = device()?;
            Kind::Char(major, minor)
        }
        EntryType::Block => {
            let (major, minor) = device()?;
            Kind::Block(major, minor)
        }
        EntryType::Fifo => Kind::Fifo,
        other => return Err(Problem::UnsupportedType(other.as_byte())),
    })
}

/// uid/gid as Linux takes them; `u32::MAX` means "no change" to chown.
fn id(v: u64) -> Result<u32, Problem> {
    u32::try_from(v)
        .ok()
        .filter(|&v| v != u32::MAX)
        .ok_or(Problem::IdOutOfRange(v))
}

fn read_pax<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Pax, Problem> {
    let mut pax = Pax::default();
    let Some(records) = entry
        .pax_extensions()
        .map_err(|_| Problem::BadPax("unreadable"))?
    else {
        return Ok(pax);
    };
    // Parsers that disagree on a tar let a layer show one content to a
    // scanner and another to the runtime: records the tar crate would
    // silently skip or pick the first of are refused instead.
    let mut seen: Vec<&[u8]> = Vec::new();
    for record in records {
        let record = record.map_err(|_| Problem::BadPax("bad record framing"))?;
        let (key, value) = (record.key_bytes(), record.value_bytes());
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            if name.is_empty() || name.contains(&0) {
                return Err(Problem::BadPax("bad xattr name"));
            }
            if drivers_fs::xattr::is_storage_internal(name) {
                tracing::warn!(xattr = %String::from_utf8_lossy(name), "storage-internal xattr in a layer tar ignored");
            } else {
                pax.xattrs.push((name.to_vec(), value.to_vec()));
            }
            continue;
        }
        if SINGLE_RECORDS.contains(&key) {
            if seen.contains(&key) {
                return Err(Problem::BadPax("duplicate record"));
            }
            seen.push(key);
        }
        match key {
            b"size" | b"uid" | b"gid" => {
                number(value)?;
            }
            b"mtime" => pax.mtime = Some(parse_time(value).ok_or(Problem::BadPax("bad mtime"))?),
            b"GNU.sparse.major" => pax.sparse_major = Some(value.to_vec()),
            b"GNU.sparse.minor" => pax.sparse_minor = Some(value.to_vec()),
            b"GNU.sparse.name" => pax.sparse_name = Some(value.to_vec()),
            b"GNU.sparse.size" | b"GNU.sparse.realsize" => pax.sparse_size = Some(number(value)?),
            b"GNU.sparse.map" => pax.sparse_map = Some(value.to_vec()),
            b"GNU.sparse.numblocks" => pax.sparse_numblocks = Some(number(value)?),
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                if pax.sparse_pairs.len() >= 2 * sparse::MAX_EXTENTS {
                    return Err(Problem::BadSparse("too many extents"));
                }
                pax.sparse_pairs.push(number(value)?);
            }
            _ => {}
        }
    }
    Ok(pax)
}

/// Records that may appear once per entry.
const SINGLE_RECORDS: [&[u8]; 13] = [
    b"path",
    b"linkpath",
    b"size",
    b"uid",
    b"gid",
    b"mtime",
    b"GNU.sparse.major",
    b"GNU.sparse.minor",
    b"GNU.sparse.name",
    b"GNU.sparse.size",
    b"GNU.sparse.realsize",
    b"GNU.sparse.map",
    b"GNU.sparse.numblocks",
];

fn number(value: &[u8]) -> Result<u64, Problem> {
    sparse::decimal(value).ok_or(Problem::BadPax("bad number"))
}

/// Which PAX sparse format, if any, the records describe, after Go's
/// archive/tar (`readGNUSparsePAXHeaders`): 1.0 carries its map in the data,
/// 0.0 and 0.1 in the records.
fn sparse_layout<R: Read>(pax: &Pax, entry: &tar::Entry<'_, R>) -> Result<Sparse, Problem> {
    let version = (pax.sparse_major.as_deref(), pax.sparse_minor.as_deref());
    let v1 = match version {
        (Some(b"1"), Some(b"0")) => true,
        (Some(b"0"), Some(b"0" | b"1")) => false,
        (None, None) if pax.sparse_map.is_some() || !pax.sparse_pairs.is_empty() => false,
        (None, None) => return Ok(Sparse::No),
        _ => return Err(Problem::BadSparse("unknown GNU sparse version")),
    };
    if !matches!(
        entry.header().entry_type(),
        EntryType::Regular | EntryType::Continuous
    ) {
        return Err(Problem::BadSparse("sparse records on a non-regular entry"));
    }
    let real_size = pax.sparse_size.ok_or(Problem::BadSparse("no real size"))?;
    let extents = if v1 {
        None
    } else if let Some(map) = &pax.sparse_map {
        Some(sparse::parse_map_01(map, pax.sparse_numblocks)?)
    } else {
        Some(sparse::pairs_00(&pax.sparse_pairs, pax.sparse_numblocks)?)
    };
    Ok(Sparse::Pax { real_size, extents })
}

/// A PAX time: decimal seconds, optionally negative, with an optional
/// fraction (`1136214245.123456789`); digits past nanoseconds are dropped.
pub(crate) fn parse_time(value: &[u8]) -> Option<Timespec> {
    let (neg, rest) = match value.strip_prefix(b"-") {
        Some(r) => (true, r),
        None => (false, value),
    };
    let (secs, frac) = match rest.iter().position(|&b| b == b'.') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    if secs.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = i64::try_from(sparse::decimal(secs)?).ok()?;
    let mut nsec = 0i64;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    if !neg {
        return Some(Timespec {
            tv_sec: secs,
            tv_nsec: nsec as _,
        });
    }
    if nsec == 0 {
        Some(Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        })
    } else {
        Some(Timespec {
            tv_sec: -secs - 1,
            tv_nsec: (1_000_000_000 - nsec) as _,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile names are refused, harmless spellings normalised.
    #[test]
    fn names() {
        assert_eq!(normalize(b"./etc//passwd", false).unwrap(), b"etc/passwd");
        assert_eq!(normalize(b".", false).unwrap(), b"");
        assert_eq!(normalize(b"./", false).unwrap(), b"");
        assert_eq!(normalize(b"dir/", false).unwrap(), b"dir");
        assert_eq!(normalize(b"caf\xe9", false).unwrap(), b"caf\xe9");
        assert_eq!(normalize(b"a/../../etc/x", false), Err(Problem::ClimbsOut));
        assert_eq!(normalize(b"a/..", false), Err(Problem::ClimbsOut));
        assert_eq!(normalize(b"/etc/x", false), Err(Problem::Absolute));
        assert_eq!(normalize(b"a\0b", false), Err(Problem::NulByte));
        assert_eq!(normalize(&[b'n'; 256], false), Err(Problem::NameTooLong));
        assert_eq!(normalize(b"../x", true), Err(Problem::LinkClimbsOut));
        assert_eq!(normalize(b"/x", true), Err(Problem::LinkAbsolute));
    }

    /// Whiteout names map to what they delete; aufs metadata is skipped;
    /// whiteouts of `.`/`..` or nothing are refused.
    #[test]
    fn whiteout_names() {
        let check = |name: &[u8]| {
            let mut p = normalize(name, false).unwrap();
            whiteout_kind(&mut p).map(|k| (k.map(|k| matches!(k, Kind::Whiteout)), p))
        };
        assert_eq!(check(b"a/.wh.b").unwrap(), (Some(true), b"a/b".to_vec()));
        assert_eq!(check(b".wh.b").unwrap(), (Some(true), b"b".to_vec()));
        assert_eq!(
            check(b"a/.wh..wh..opq").unwrap(),
            (Some(false), b"a".to_vec())
        );
        assert_eq!(check(b"a/plain").unwrap(), (None, b"a/plain".to_vec()));
        let mut p = b".wh..wh.plnk/123".to_vec();
        assert!(matches!(whiteout_kind(&mut p), Ok(Some(Kind::Skip))));
        let mut p = b"a/.wh..wh.aufs".to_vec();
        assert!(matches!(whiteout_kind(&mut p), Ok(Some(Kind::Skip))));
        for bad in [&b"a/.wh."[..], b".wh..", b"x/.wh..."] {
            let mut p = bad.to_vec();
            assert!(
                matches!(whiteout_kind(&mut p), Err(Problem::InvalidWhiteout)),
                "{bad:?}"
            );
        }
    }

    /// PAX times, fractional and negative.
    #[test]
    fn pax_times() {
        let t = parse_time(b"1136214245.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1136214245, 500_000_000));
        let t = parse_time(b"12.1234567891").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 123_456_789));
        let t = parse_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        assert!(parse_time(b"").is_none());
        assert!(parse_time(b"1.x").is_none());
        assert!(parse_time(b"x").is_none());
    }
}
