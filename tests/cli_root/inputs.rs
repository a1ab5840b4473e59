//! Inputs the tests feed to `drivers`: raw tar bytes (hostile ones too),
//! OCI image layouts written by hand, and the slow shared images built by
//! real tools (GNU tar, umoci, skopeo), once per run.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, ensure};
use sha2::{Digest as _, Sha256};

use crate::harness::{Shared, once, random_bytes, s, shared_dir, tests_dir, tool};

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha256:<hex>` of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// gzip of `bytes`, with `mtime` in the gzip header (so two encodings of
/// the same data can differ in bytes but not in content).
pub fn gzip(bytes: &[u8], mtime: u32) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new()
        .mtime(mtime)
        .write(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip to memory");
    e.finish().expect("gzip to memory")
}

// Tar entry types (POSIX ustar, plus PAX extended headers).
pub const REG: u8 = b'0';
pub const HARDLINK: u8 = b'1';
pub const SYMLINK: u8 = b'2';
pub const CHARDEV: u8 = b'3';
pub const DIR: u8 = b'5';
const PAX: u8 = b'x';

/// One tar entry as [`RawTar::entry`] writes it; the default is an empty
/// regular file, mode 0644, owned by 0:0.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    /// The name (a PAX `path` record carries it when longer than 100 bytes).
    pub name: &'a [u8],
    /// The type flag ([`REG`], [`DIR`], …).
    pub kind: u8,
    /// Permission bits.
    pub mode: u32,
    /// The size the header claims.
    pub size: u64,
    /// The data that follows (need not be `size` bytes).
    pub data: &'a [u8],
    /// Symlink or hardlink target.
    pub link: &'a [u8],
    /// Device numbers.
    pub dev: (u32, u32),
}

impl Default for Entry<'_> {
    fn default() -> Self {
        Entry {
            name: b"",
            kind: REG,
            mode: 0o644,
            size: 0,
            data: b"",
            link: b"",
            dev: (0, 0),
        }
    }
}

/// A tar stream built from raw 512-byte headers, checksums computed here:
/// the `tar` crate refuses to write `..` names, absolute names and sizes
/// that lie, which is exactly what the hostile cases need.
#[derive(Default)]
pub struct RawTar(Vec<u8>);

impl RawTar {
    /// An empty stream.
    pub fn new() -> RawTar {
        RawTar::default()
    }

    /// One header block for `e` (names of at most 100 bytes).
    fn header(e: &Entry<'_>) -> [u8; 512] {
        fn octal(field: &mut [u8], v: u64) {
            let text = format!("{v:0width$o}", width = field.len() - 1);
            assert!(text.len() < field.len(), "{v} does not fit a tar field");
            field[..text.len()].copy_from_slice(text.as_bytes());
            field[text.len()] = 0;
        }
        let (name, link) = (e.name, e.link);
        assert!(
            name.len() <= 100 && link.len() <= 100,
            "long names go in a PAX header"
        );
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        octal(&mut h[100..108], u64::from(e.mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], e.size);
        // 2001-09-09T01:46:40Z: any fixed time.
        octal(&mut h[136..148], 1_000_000_000);
        h[156] = e.kind;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        octal(&mut h[329..337], u64::from(e.dev.0));
        octal(&mut h[337..345], u64::from(e.dev.1));
        // The checksum is the byte sum with its own field read as spaces,
        // written as six octal digits, NUL, space.
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(text.as_bytes());
        h
    }

    fn pad(&mut self) {
        let rem = self.0.len() % 512;
        if rem != 0 {
            self.0.resize(self.0.len() + 512 - rem, 0);
        }
    }

    /// One entry: a PAX header first when a name does not fit ustar, then
    /// the header claiming `e.size` bytes, then `e.data` (which may be
    /// shorter: that is the lie some cases tell), padded to a block.
    pub fn entry(&mut self, e: Entry<'_>) -> &mut Self {
        let mut records = Vec::new();
        for (key, value) in [("path", e.name), ("linkpath", e.link)] {
            if value.len() > 100 {
                records.extend(pax_record(key, value));
            }
        }
        if !records.is_empty() {
            let pax = Entry {
                name: b"PaxHeaders/entry",
                kind: PAX,
                mode: 0o644,
                size: records.len() as u64,
                ..Entry::default()
            };
            self.0.extend_from_slice(&Self::header(&pax));
            self.0.extend_from_slice(&records);
            self.pad();
        }
        let short = |b: &'_ [u8]| -> Vec<u8> { b[..b.len().min(100)].to_vec() };
        let (name, link) = (short(e.name), short(e.link));
        let h = Self::header(&Entry {
            name: &name,
            link: &link,
            ..e
        });
        self.0.extend_from_slice(&h);
        self.0.extend_from_slice(e.data);
        self.pad();
        self
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(Entry {
            name: name.as_bytes(),
            kind: DIR,
            mode: 0o755,
            ..Entry::default()
        })
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(Entry {
            name: name.as_bytes(),
            size: data.len() as u64,
            data,
            ..Entry::default()
        })
    }

    /// A symlink.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(Entry {
            name: name.as_bytes(),
            kind: SYMLINK,
            mode: 0o777,
            link: target.as_bytes(),
            ..Entry::default()
        })
    }

    /// A hardlink to `target` (a name in the archive).
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(Entry {
            name: name.as_bytes(),
            kind: HARDLINK,
            link: target.as_bytes(),
            ..Entry::default()
        })
    }

    /// A character device.
    pub fn chardev(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        self.entry(Entry {
            name: name.as_bytes(),
            kind: CHARDEV,
            mode: 0o666,
            dev: (major, minor),
            ..Entry::default()
        })
    }

    /// The stream with its two zero end-of-archive blocks.
    pub fn finish(&self) -> Vec<u8> {
        let mut v = self.0.clone();
        v.resize(v.len() + 1024, 0);
        v
    }
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `len` counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// A layer blob of a layout.
pub enum Blob {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A file, moved into the layout.
    File(PathBuf),
}

/// One layer of a layout written by [`write_layout`].
pub struct LayoutLayer {
    /// The blob.
    pub blob: Blob,
    /// Its media type.
    pub media_type: &'static str,
    /// The diff_id the config records.
    pub diff_id: String,
    /// A digest to record (and store the blob under) instead of the real
    /// one: a layout that lies about a blob.
    pub claimed_digest: Option<String>,
}

/// Media type of a plain tar layer.
pub const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a gzip layer.
pub const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

impl LayoutLayer {
    /// A plain tar layer with its true digest and diff_id.
    pub fn tar(bytes: Vec<u8>) -> LayoutLayer {
        LayoutLayer {
            diff_id: sha256(&bytes),
            blob: Blob::Bytes(bytes),
            media_type: TAR,
            claimed_digest: None,
        }
    }
}

/// Writes an OCI image layout at `dir` with one image tagged `tag`:
/// `oci-layout`, `index.json`, and blobs for the layers, the config (whose
/// `rootfs.diff_ids` are the layers' `diff_id`s) and the manifest.
pub fn write_layout(dir: &Path, tag: &str, layers: Vec<LayoutLayer>) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("create {}", blobs.display()))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let put = |bytes: &[u8]| -> Result<String> {
        let d = sha256(bytes);
        std::fs::write(blobs.join(&d["sha256:".len()..]), bytes)?;
        Ok(d)
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let (digest, size) = match l.blob {
            Blob::Bytes(b) => {
                let d = l.claimed_digest.clone().unwrap_or_else(|| sha256(&b));
                std::fs::write(blobs.join(&d["sha256:".len()..]), &b)?;
                (d, b.len() as u64)
            }
            Blob::File(p) => {
                let d = match &l.claimed_digest {
                    Some(d) => d.clone(),
                    None => sha256_file(&p)?,
                };
                let size = std::fs::metadata(&p)?.len();
                std::fs::rename(&p, blobs.join(&d["sha256:".len()..]))
                    .with_context(|| format!("move {} into the layout", p.display()))?;
                (d, size)
            }
        };
        descs
            .push(serde_json::json!({ "mediaType": l.media_type, "digest": digest, "size": size }));
        diff_ids.push(l.diff_id);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))?;
    let config_digest = put(&config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": descs,
    }))?;
    let manifest_digest = put(&manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(())
}

/// `tests/fixtures/oci-tricky/oci`.
pub fn tricky_layout() -> PathBuf {
    tests_dir().join("fixtures/oci-tricky/oci")
}

/// `tests/fixtures/oci-umoci-insert/oci`.
pub fn umoci_insert_layout() -> PathBuf {
    tests_dir().join("fixtures/oci-umoci-insert/oci")
}

/// What a layout's own JSON says of the image tagged `latest`.
pub struct LayoutImage {
    /// `(digest, size)` of every layer blob, from the manifest.
    pub blobs: Vec<(String, u64)>,
    /// `rootfs.diff_ids`, from the config.
    pub diff_ids: Vec<String>,
}

/// The image tagged `latest` in a layout, read straight from its JSON.
pub fn layout_image(layout: &Path) -> Result<LayoutImage> {
    let read = |p: PathBuf| -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(
            &std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
        )?)
    };
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index = read(layout.join("index.json"))?;
    let m = index["manifests"]
        .as_array()
        .and_then(|ms| {
            ms.iter()
                .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        })
        .context("no manifest tagged latest")?;
    let manifest = read(blob(m["digest"].as_str().context("manifest digest")?))?;
    let layers = manifest["layers"]
        .as_array()
        .context("manifest layers")?
        .iter()
        .map(|l| {
            Ok((
                l["digest"].as_str().context("layer digest")?.to_owned(),
                l["size"].as_u64().context("layer size")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let config = read(blob(
        manifest["config"]["digest"]
            .as_str()
            .context("config digest")?,
    ))?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .context("diff_ids")?
        .iter()
        .map(|d| d.as_str().map(str::to_owned).context("diff_id"))
        .collect::<Result<Vec<_>>>()?;
    Ok(LayoutImage {
        blobs: layers,
        diff_ids,
    })
}

/// The oci-tricky image as an OCI archive (`oci-archive:…:tricky-oci`) and
/// as a `docker save` archive (`docker-archive:…:tricky:latest`), both
/// written by skopeo from the fixture layout.
pub fn skopeo_archives() -> Result<(PathBuf, PathBuf)> {
    static CELL: Shared<(PathBuf, PathBuf)> = OnceLock::new();
    once(&CELL, || {
        let dir = shared_dir()?;
        let src = format!("oci:{}:latest", s(&tricky_layout()));
        let oci = dir.join("tricky-oci.tar");
        let docker = dir.join("tricky-docker.tar");
        tool(Command::new("skopeo").args([
            "copy",
            "-q",
            &src,
            &format!("oci-archive:{}:tricky-oci", s(&oci)),
        ]))?;
        tool(Command::new("skopeo").args([
            "copy",
            "-q",
            &src,
            &format!("docker-archive:{}:tricky:latest", s(&docker)),
        ]))?;
        Ok((oci, docker))
    })
}

/// Uncompressed size of the big image's layer data.
pub const BIG_FILES: usize = 30;
/// Size of each file of the big image.
pub const BIG_FILE_BYTES: usize = 10 << 20;

/// A layout (tag `big`) whose single layer is a gzip tar, made by GNU tar,
/// of [`BIG_FILES`] files of [`BIG_FILE_BYTES`] random bytes each (~300
/// MiB): big enough that an import can be killed in the middle.
pub fn big_layout() -> Result<PathBuf> {
    static CELL: Shared<PathBuf> = OnceLock::new();
    once(&CELL, || {
        let dir = shared_dir()?.join("big");
        let data = dir.join("src/data");
        std::fs::create_dir_all(&data)?;
        for i in 0..BIG_FILES {
            std::fs::write(data.join(format!("f{i:02}")), random_bytes(BIG_FILE_BYTES))?;
        }
        let tar = dir.join("layer.tar");
        tool(Command::new("tar").args([
            "--format=posix",
            "-cf",
            s(&tar),
            "-C",
            s(&dir.join("src")),
            "data",
        ]))?;
        std::fs::remove_dir_all(dir.join("src"))?;
        let diff_id = sha256_file(&tar)?;
        // -1: the data is incompressible anyway; -n: no name or time stored.
        tool(Command::new("gzip").args(["-1", "-n", s(&tar)]))?;
        let layout = dir.join("oci");
        write_layout(
            &layout,
            "big",
            vec![LayoutLayer {
                blob: Blob::File(dir.join("layer.tar.gz")),
                media_type: TAR_GZ,
                diff_id,
                claimed_digest: None,
            }],
        )?;
        Ok(layout)
    })
}

/// Layers of the deep image: overlayfs's stacking limit.
pub const DEEP: usize = 500;

/// A layout made by Debian's `umoci insert`, one file per layer
/// (`/layer/f<i>` holding `layer <i>\n`, footer-less tars as that umoci
/// writes them): tag `l500` has [`DEEP`] layers, tag `l501` one more.
pub fn deep_layout() -> Result<PathBuf> {
    static CELL: Shared<PathBuf> = OnceLock::new();
    once(&CELL, || {
        let dir = shared_dir()?.join("deep");
        std::fs::create_dir_all(&dir)?;
        let layout = dir.join("oci");
        let l = s(&layout);
        tool(Command::new("umoci").args(["init", "--layout", l]))?;
        tool(Command::new("umoci").args(["new", "--image", &format!("{l}:l{DEEP}")]))?;
        let file = dir.join("f");
        let started = std::time::Instant::now();
        for i in 1..=DEEP + 1 {
            if i == DEEP + 1 {
                tool(Command::new("umoci").args([
                    "tag",
                    "--image",
                    &format!("{l}:l{DEEP}"),
                    &format!("l{}", DEEP + 1),
                ]))?;
            }
            let tag = if i <= DEEP { DEEP } else { DEEP + 1 };
            std::fs::write(&file, format!("layer {i}\n"))?;
            tool(Command::new("umoci").args([
                "insert",
                "--image",
                &format!("{l}:l{tag}"),
                s(&file),
                &format!("/layer/f{i}"),
            ]))?;
        }
        // Every insert wrote a new manifest and config; drop the old ones.
        tool(Command::new("umoci").args(["gc", "--layout", l]))?;
        eprintln!(
            "cli_root: built the {DEEP}-layer layout with umoci insert in {:.1?}",
            started.elapsed()
        );
        ensure!(
            layout.join("index.json").is_file(),
            "umoci wrote no index.json"
        );
        Ok(layout)
    })
}
