//! The OCI layer tar: one entry per reported path, streamed.
//!
//! Headers are POSIX ustar; whatever ustar cannot hold goes into a PAX
//! extended header (`x`) right before the entry: names and link targets
//! longer than 100 bytes (`path`, `linkpath`, raw bytes, so non-UTF-8 names
//! survive), owners, sizes and mtimes beyond the octal fields, and xattrs
//! as `SCHILY.xattr.<name>`, which GNU tar, Go's archive/tar (containerd,
//! moby, umoci) and Python's tarfile all read. PAX records are length-
//! prefixed, so binary xattr values are safe.
//!
//! Whiteouts follow the OCI image-spec: `.wh.<name>` for a deleted path and
//! `<dir>/.wh..wh..opq` for an opaque directory, both empty regular files
//! with mode 0, owner 0:0 and mtime 0.

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Stat};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::walk::{Node, Sink, abs, io_err, open_file};
use crate::{ChangeKind, Error, Result, WriteReport};

/// Size of a tar block; headers and padded data are multiples of it.
const BLOCK: usize = 512;
/// Longest name or link target the ustar `name`/`linkname` fields hold
/// (the `prefix` field is not used: PAX `path` covers every length).
const USTAR_NAME_MAX: usize = 100;
/// Largest value of the 8-byte octal uid/gid fields (7 digits).
const OCTAL8_MAX: u64 = 0o7777777;
/// Largest value of the 12-byte octal size/mtime fields (11 digits).
const OCTAL12_MAX: u64 = 0o77777777777;
/// Bytes read from a file at a time while streaming its data.
const COPY_CHUNK: usize = 256 * 1024;
/// Output buffer between us and the caller's writer: headers are 512
/// bytes, so an unbuffered file would see a syscall per header.
const OUT_BUFFER: usize = 256 * 1024;
/// Name of the PAX extended headers; readers never use it. Fixed so that
/// equal trees give equal tars.
const PAX_HEADER_NAME: &[u8] = b"././@PaxHeader";
/// The OCI whiteout prefix and opaque marker.
const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";

/// Writes a layer tar to `out` while hashing and counting it.
pub(crate) struct TarSink<W: Write> {
    out: Digesting<BufWriter<W>>,
    /// The layer (or upper) root, for messages.
    root: PathBuf,
    /// First tar name of each hardlinked inode already written.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    file_bytes: u64,
    buf: Vec<u8>,
}

impl<W: Write> TarSink<W> {
    pub fn new(out: W, root: &Path) -> Self {
        TarSink {
            out: Digesting {
                inner: BufWriter::with_capacity(OUT_BUFFER, out),
                sha: Sha256::new(),
                bytes: 0,
            },
            root: root.to_owned(),
            links: HashMap::new(),
            entries: 0,
            file_bytes: 0,
            buf: Vec::new(),
        }
    }

    /// Writes the end-of-archive blocks, flushes, and reports.
    pub fn finish(mut self) -> Result<WriteReport> {
        self.out
            .write_all(&[0u8; 2 * BLOCK])
            .map_err(Error::Write)?;
        self.out.flush().map_err(Error::Write)?;
        Ok(WriteReport {
            diff_id: format!("sha256:{}", hex::encode(self.out.sha.finalize_reset())),
            tar_bytes: self.out.bytes,
            entries: self.entries,
            file_bytes: self.file_bytes,
        })
    }

    /// Writes one entry's header(s): a PAX header first when `name`,
    /// `link`, a numeric field or `xattrs` need one. `h` has every field but
    /// the names set; checksums are set here.
    fn header(
        &mut self,
        mut h: Header,
        name: &[u8],
        link: Option<&[u8]>,
        xattrs: &[(std::ffi::OsString, Vec<u8>)],
    ) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let mut pax = Vec::new();
        put_name(&mut h.as_old_mut().name, name, b"path", &mut pax);
        if let Some(link) = link {
            put_name(&mut h.as_old_mut().linkname, link, b"linkpath", &mut pax);
        }
        for (key, value, max) in [
            (&b"uid"[..], h.uid(), OCTAL8_MAX),
            (b"gid", h.gid(), OCTAL8_MAX),
            (b"size", h.size(), OCTAL12_MAX),
        ] {
            let value = value.map_err(Error::Write)?;
            if value > max {
                pax_record(&mut pax, key, value.to_string().as_bytes());
            }
        }
        for (key, value) in xattrs {
            let mut k = b"SCHILY.xattr.".to_vec();
            k.extend_from_slice(key.as_bytes());
            pax_record(&mut pax, &k, value);
        }
        if !pax.is_empty() {
            let mut x = blank(EntryType::XHeader);
            x.as_old_mut().name[..PAX_HEADER_NAME.len()].copy_from_slice(PAX_HEADER_NAME);
            x.set_mode(0o644);
            x.set_size(pax.len() as u64);
            x.set_cksum();
            self.write(x.as_bytes())?;
            self.write(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        h.set_cksum();
        self.entries += 1;
        self.write(h.as_bytes())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(Error::Write)
    }

    /// Zeroes up to the next block boundary after `len` bytes of data.
    fn pad(&mut self, len: u64) -> Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem == 0 {
            Ok(())
        } else {
            self.write(&[0u8; BLOCK][..BLOCK - rem])
        }
    }

    /// A regular file: its data, or a hardlink to the first path of its
    /// inode already written.
    fn file(&mut self, node: &Node<'_>, name: &[u8]) -> Result<()> {
        let st = node.st;
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key).cloned() {
                let h = header_for(st, EntryType::Link, 0);
                return self.header(h, name, Some(&first), node.xattrs);
            }
            self.links.insert(key, name.to_vec());
        }
        let (dir, file_name) = node.at.expect("finders give regular files a location");
        let mut f =
            open_file(dir, file_name).map_err(|e| io_err("open", &self.root, node.path, e))?;
        // The open file's own size is what gets written: the header must match it.
        let fst = rustix::fs::fstat(f.as_fd())
            .map_err(|e| io_err("stat", &self.root, node.path, e.into()))?;
        let size = fst.st_size as u64;
        self.header(
            header_for(&fst, EntryType::Regular, size),
            name,
            None,
            node.xattrs,
        )?;
        self.copy_data(&mut f, size, node.path)?;
        self.file_bytes += size;
        Ok(())
    }

    /// Streams exactly `size` bytes of `f` (holes read as zeros: OCI layers
    /// should not use sparse entries), then pads.
    fn copy_data(&mut self, f: &mut std::fs::File, size: u64, path: &[u8]) -> Result<()> {
        if self.buf.is_empty() {
            self.buf = vec![0u8; COPY_CHUNK];
        }
        let mut left = size;
        while left > 0 {
            let want = left.min(COPY_CHUNK as u64) as usize;
            let n = match f.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(Error::Changed {
                        path: abs(&self.root, path),
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read", &self.root, path, e)),
            };
            self.out.write_all(&self.buf[..n]).map_err(Error::Write)?;
            left -= n as u64;
        }
        self.pad(size)
    }

    /// An empty regular file with mode 0, owner 0:0 and mtime 0: the form
    /// of OCI whiteouts and opaque markers.
    fn marker(&mut self, name: &[u8]) -> Result<()> {
        self.header(blank(EntryType::Regular), name, None, &[])
    }
}

impl<W: Write> Sink for TarSink<W> {
    fn entry(&mut self, node: &Node<'_>, _kind: Option<ChangeKind>) -> Result<()> {
        let base = node.path.rsplit(|&b| b == b'/').next().unwrap_or_default();
        if base.starts_with(WH_PREFIX) {
            let reason = "its name starts with .wh., which importers read as a whiteout";
            return Err(Error::Unrepresentable {
                path: abs(&self.root, node.path),
                reason,
            });
        }
        let st = node.st;
        let mut name = node.path.strip_prefix(b"/").unwrap_or(node.path).to_vec();
        match drivers_fs::file_type(st) {
            FileType::RegularFile => self.file(node, &name),
            FileType::Directory => {
                name.push(b'/');
                self.header(
                    header_for(st, EntryType::Directory, 0),
                    &name,
                    None,
                    node.xattrs,
                )
            }
            FileType::Symlink => {
                let h = header_for(st, EntryType::Symlink, 0);
                self.header(h, &name, Some(node.target.unwrap_or_default()), node.xattrs)
            }
            FileType::CharacterDevice | FileType::BlockDevice => {
                let ty = if drivers_fs::file_type(st) == FileType::CharacterDevice {
                    EntryType::Char
                } else {
                    EntryType::Block
                };
                let mut h = header_for(st, ty, 0);
                h.set_device_major(rustix::fs::major(st.st_rdev))
                    .map_err(Error::Write)?;
                h.set_device_minor(rustix::fs::minor(st.st_rdev))
                    .map_err(Error::Write)?;
                self.header(h, &name, None, node.xattrs)
            }
            FileType::Fifo => {
                self.header(header_for(st, EntryType::Fifo, 0), &name, None, node.xattrs)
            }
            // Tar has no socket type; GNU tar and moby skip them the same way.
            FileType::Socket | FileType::Unknown => {
                tracing::warn!(path = %abs(&self.root, node.path).display(), "not exporting a socket or unknown file type");
                Ok(())
            }
        }
    }

    fn delete(&mut self, path: &[u8]) -> Result<()> {
        let rel = path.strip_prefix(b"/").unwrap_or(path);
        let (dir, base) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..=i], &rel[i + 1..]),
            None => (&b""[..], rel),
        };
        let name = [dir, WH_PREFIX, base].concat();
        self.marker(&name)
    }

    fn opaque(&mut self, path: &[u8]) -> Result<()> {
        let rel = path.strip_prefix(b"/").unwrap_or(path);
        let name = if rel.is_empty() {
            WH_OPAQUE.to_vec()
        } else {
            [rel, b"/", WH_OPAQUE].concat()
        };
        self.marker(&name)
    }

    fn hidden(&mut self, _path: &[u8]) -> Result<()> {
        Ok(()) // the opaque marker already hides it
    }

    fn wants_hidden(&self) -> bool {
        false
    }
}

/// A ustar header with type, permission bits (setuid/setgid/sticky
/// included, no file-type bits), numeric owner, mtime in seconds and size.
fn header_for(st: &Stat, ty: EntryType, size: u64) -> Header {
    let mut h = blank(ty);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    // Tar mtimes are unsigned here; a pre-1970 mtime is clamped to the epoch.
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0).min(OCTAL12_MAX));
    h.set_size(size);
    h
}

/// A ustar header of type `ty` with every numeric field set to 0. The
/// device fields are written as zeros rather than left empty, as Go and
/// Python do: strict readers (the tar crate) refuse empty numeric fields.
fn blank(ty: EntryType) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(ty);
    h.set_mode(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    if let Some(u) = h.as_ustar_mut() {
        u.set_device_major(0);
        u.set_device_minor(0);
    }
    h
}

/// Puts `value` into a fixed ustar field when it fits, else a PAX record
/// `key` plus a truncated copy in the field for readers without PAX.
fn put_name(field: &mut [u8], value: &[u8], key: &[u8], pax: &mut Vec<u8>) {
    let n = value.len().min(USTAR_NAME_MAX).min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    if value.len() > n {
        pax_record(pax, key, value);
    }
}

/// Appends the PAX record `"<len> <key>=<value>\n"`, where `len` counts the
/// whole record including its own digits.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = 1 + key.len() + 1 + value.len() + 1; // ' ', '=', '\n'
    let mut digits = 1;
    let len = loop {
        let len = body + digits;
        let d = len.to_string().len();
        if d == digits {
            break len;
        }
        digits = d;
    };
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Forwards writes while hashing and counting exactly the bytes accepted.
struct Digesting<W: Write> {
    inner: W,
    sha: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PAX record lengths count their own digits, across digit boundaries.
    #[test]
    fn pax_record_lengths() {
        for vlen in [
            0, 1, 80, 85, 86, 87, 90, 95, 96, 97, 100, 990, 994, 995, 996, 1000, 70_000,
        ] {
            let mut out = Vec::new();
            pax_record(&mut out, b"path", &vec![b'a'; vlen]);
            let sp = out.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value length {vlen}");
            assert_eq!(out.last(), Some(&b'\n'));
        }
    }

    /// Whiteout and opaque-marker names follow the image-spec: empty regular
    /// files, mode 0, owner 0:0, mtime 0, no leading `/`.
    #[test]
    fn marker_names() {
        let mut buf = Vec::new();
        let mut sink = TarSink::new(&mut buf, Path::new("/x"));
        sink.delete(b"/a/b/c").unwrap();
        sink.delete(b"/top").unwrap();
        sink.opaque(b"/a").unwrap();
        sink.opaque(b"").unwrap();
        let report = sink.finish().unwrap();
        assert_eq!(
            (report.entries, report.file_bytes, report.tar_bytes),
            (4, 0, 6 * 512)
        );
        let mut names = Vec::new();
        for e in tar::Archive::new(&buf[..]).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(h.entry_type(), EntryType::Regular);
            assert_eq!(
                (
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mtime().unwrap(),
                    h.size().unwrap()
                ),
                (0, 0, 0, 0, 0)
            );
            names.push(String::from_utf8(e.path_bytes().into_owned()).unwrap());
        }
        assert_eq!(
            names,
            ["a/b/.wh.c", ".wh.top", "a/.wh..wh..opq", ".wh..wh..opq"]
        );
    }
}
