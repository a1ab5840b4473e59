//! A byte-level tar writer for synthetic and hostile layers: it writes
//! whatever it is told (`..` components, absolute names, a size field that
//! lies), which the `tar` crate's builder rightly refuses to do.

use std::io::Write;

/// One tar entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The name exactly as stored.
    pub name: Vec<u8>,
    /// Type flag: `b'0'` file, `b'5'` dir, `b'2'` symlink, `b'1'` hardlink,
    /// `b'3'` char device, `b'6'` fifo.
    pub ty: u8,
    /// Mode field.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// mtime field.
    pub mtime: u64,
    /// Link target (symlink or hardlink).
    pub link: Vec<u8>,
    /// Device numbers.
    pub dev: (u32, u32),
    /// The data written after the header.
    pub data: Vec<u8>,
    /// Overrides the header's size field (the data written stays `data`).
    pub size_field: Option<u64>,
    /// Extra PAX records, e.g. `SCHILY.xattr.user.test`.
    pub pax: Vec<(String, Vec<u8>)>,
}

/// The mtime of every synthetic entry: 2001-02-03T04:05:06Z.
pub const MTIME: u64 = 981_173_106;

impl Entry {
    fn new(name: impl AsRef<[u8]>, ty: u8, mode: u32) -> Entry {
        Entry {
            name: name.as_ref().to_vec(),
            ty,
            mode,
            uid: 0,
            gid: 0,
            mtime: MTIME,
            link: Vec::new(),
            dev: (0, 0),
            data: Vec::new(),
            size_field: None,
            pax: Vec::new(),
        }
    }

    /// A regular file, mode 0644.
    pub fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Entry {
        let mut e = Entry::new(name, b'0', 0o644);
        e.data = data.as_ref().to_vec();
        e
    }

    /// A directory, mode 0755.
    pub fn dir(name: impl AsRef<[u8]>) -> Entry {
        Entry::new(name, b'5', 0o755)
    }

    /// A symlink.
    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        let mut e = Entry::new(name, b'2', 0o777);
        e.link = target.as_ref().to_vec();
        e
    }

    /// A hardlink to `target` (a name within the layer, as tar stores it).
    pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        let mut e = Entry::new(name, b'1', 0o644);
        e.link = target.as_ref().to_vec();
        e
    }

    /// A character device.
    pub fn char_dev(name: impl AsRef<[u8]>, major: u32, minor: u32) -> Entry {
        let mut e = Entry::new(name, b'3', 0o600);
        e.dev = (major, minor);
        e
    }

    /// A whiteout marker as buildah writes it: an empty file, mode 0.
    pub fn whiteout(name: impl AsRef<[u8]>) -> Entry {
        Entry::new(name, b'0', 0)
    }

    /// Adds a PAX record.
    pub fn pax(mut self, key: &str, value: impl AsRef<[u8]>) -> Entry {
        self.pax.push((key.to_owned(), value.as_ref().to_vec()));
        self
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

fn header(name: &[u8], ty: u8, e: &Entry, size: u64, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    octal(&mut h[100..108], u64::from(e.mode));
    octal(&mut h[108..116], u64::from(e.uid));
    octal(&mut h[116..124], u64::from(e.gid));
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], e.mtime);
    h[156] = ty;
    h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], u64::from(e.dev.0));
    octal(&mut h[337..345], u64::from(e.dev.1));
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// One PAX record `"<len> <key>=<value>\n"`, whose length counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// Appends `e` (with a PAX header first when the name or link does not fit
/// or records were given) to `out`.
pub fn write_entry(out: &mut Vec<u8>, e: &Entry) {
    let mut pax = e.pax.clone();
    if e.name.len() > 100 {
        pax.push(("path".into(), e.name.clone()));
    }
    if e.link.len() > 100 {
        pax.push(("linkpath".into(), e.link.clone()));
    }
    if !pax.is_empty() {
        let body: Vec<u8> = pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let meta = Entry::new("PaxHeaders/entry", b'x', 0o644);
        out.extend_from_slice(&header(
            b"PaxHeaders/entry",
            b'x',
            &meta,
            body.len() as u64,
            b"",
        ));
        out.extend_from_slice(&body);
        pad(out);
    }
    let size = e.size_field.unwrap_or(e.data.len() as u64);
    out.extend_from_slice(&header(&e.name, e.ty, e, size, &e.link));
    out.extend_from_slice(&e.data);
    if e.size_field.is_none() {
        pad(out);
    }
}

/// A complete tar of `entries` with the two zero blocks that end it.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        write_entry(&mut out, e);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What we write is a tar other readers accept, long names and PAX
    /// records included.
    #[test]
    fn readable_by_the_tar_crate() {
        let long = "d/".to_string() + &"n".repeat(150);
        let data = tar(&[
            Entry::dir("d"),
            Entry::file(&long, "hello").pax("SCHILY.xattr.user.x", "v"),
            Entry::symlink("l", "d"),
        ]);
        let mut a = tar::Archive::new(&data[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["d".to_string(), long, "l".into()]);
    }

    /// PAX record lengths count their own digits, across a digit boundary.
    #[test]
    fn pax_record_length() {
        for n in [0, 1, 90, 91, 92, 93, 994, 995, 996] {
            let r = pax_record("k", &vec![b'v'; n]);
            let len: usize = std::str::from_utf8(&r[..r.iter().position(|&b| b == b' ').unwrap()])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, r.len(), "value of {n} bytes");
        }
    }
}
