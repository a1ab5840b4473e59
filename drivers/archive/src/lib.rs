//! Streaming, hostile-input-safe application of OCI layer tars.
//!
//! [`apply`] reads a layer (plain tar, gzip or zstd, detected by magic
//! bytes) once, front to back, and unpacks it onto a backend's
//! [`ApplyTarget`] while computing the layer digest (of the raw input) and
//! the diff_id (of the uncompressed tar). It handles what real tools write:
//! PAX and GNU long names, non-UTF-8 names, xattrs, sparse files (old GNU
//! and PAX 0.0/0.1/1.0), hardlinks, devices, whiteouts and opaque markers,
//! type changes, and tars that stop right after the last entry's data
//! (Debian's `umoci insert`).
//!
//! Safety: nothing is ever created, written, chowned, chmodded, linked or
//! removed outside `target.root`. Names with `..`, absolute names, paths
//! through symlinks (planted by this or a lower layer) and hardlinks out of
//! the root are refused with [`Error::Entry`]; truncated streams and bad
//! checksums with [`Error::Truncated`], [`Error::Malformed`] or
//! [`Error::Corrupt`]. The caller discards the layer on any error; partial
//! writes are not rolled back.
//!
//! ```no_run
//! use drivers_api::{ApplyFormat, ApplyTarget};
//! use drivers_archive::{ApplyOptions, apply};
//!
//! let target = ApplyTarget { root: "/var/lib/drivers/vfs/layers/3f2a".into(), format: ApplyFormat::Full };
//! let blob = std::fs::File::open("layer.tar.gz")?;
//! let opts = ApplyOptions { expected_digest: Some("sha256:…".into()), ..Default::default() };
//! let report = apply(blob, &target, &opts)?;
//! println!("{} entries, diff_id {}", report.entries, report.diff_id);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod apply;
mod data;
mod entry;
mod error;
mod lower;
mod sparse;
mod stream;
mod whiteout;

use std::io::Read;

use drivers_api::ApplyTarget;

pub use error::{Error, Problem};
pub use stream::Compression;

use apply::Applier;
use error::quote;
use stream::{Decoded, Progress, RawReader, TarReader};

/// What the caller expects of the layer; each `Some` is checked once the
/// whole stream is read and a difference fails with
/// [`Error::DigestMismatch`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// `sha256:<hex>` of the raw input, as in the manifest.
    pub expected_digest: Option<String>,
    /// `sha256:<hex>` of the uncompressed tar, as in the image config.
    pub expected_diff_id: Option<String>,
    /// Leave out every extended attribute the layer carries instead of
    /// setting it (counted in [`ApplyReport::xattrs_dropped`]). Only for a
    /// target whose filesystem cannot store them and whose user chose to
    /// lose them (see [`drivers_api::LayerXattrs::Drop`]); by default a
    /// refused attribute fails the apply with [`Error::Xattr`].
    pub drop_xattrs: bool,
}

/// What [`apply`] read and wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    /// `sha256:<hex>` of the raw input.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// The compression detected.
    pub compression: Compression,
    /// Bytes of raw input.
    pub compressed_bytes: u64,
    /// Bytes of uncompressed tar.
    pub tar_bytes: u64,
    /// Tar entries seen (extension headers such as PAX records and GNU long
    /// names are part of their entry, not counted).
    pub entries: u64,
    /// Sum of the (apparent) sizes of the regular files written.
    pub file_bytes: u64,
    /// Extended attributes left out because of
    /// [`ApplyOptions::drop_xattrs`].
    pub xattrs_dropped: u64,
}

/// Applies the layer read from `input` onto `target`.
///
/// Reads `input` to its end, including anything after the tar's
/// end-of-archive marker, so the digests cover every byte. Memory use is
/// bounded by one 1 MiB copy buffer, the current entry's headers and the
/// set of paths the layer created (needed for whiteout semantics).
///
/// # Errors
///
/// [`Error::kind`] is `Invalid` for hostile or malformed input and digest
/// mismatches, `Internal` for I/O failures. On error the target holds a
/// partial layer that the caller must discard.
pub fn apply(
    input: impl Read,
    target: &ApplyTarget,
    opts: &ApplyOptions,
) -> Result<ApplyReport, Error> {
    let expected_digest = opts
        .expected_digest
        .as_deref()
        .map(|d| stream::parse_digest("expected_digest", d));
    let expected_digest = expected_digest.transpose()?;
    let expected_diff_id = opts
        .expected_diff_id
        .as_deref()
        .map(|d| stream::parse_digest("expected_diff_id", d));
    let expected_diff_id = expected_diff_id.transpose()?;

    let progress = Progress::default();
    let mut raw = RawReader::new(input, &progress);
    let mut head = [0u8; 4];
    let n = raw.head(&mut head)?;
    let compression = Compression::detect(&head[..n]);
    let mut applier = Applier::new(target, &progress, compression)?;
    applier.drop_xattrs = opts.drop_xattrs;
    let (diff_id, tar_bytes) = {
        let decoded = Decoded::new(compression, (&head[..n]).chain(&mut raw))?;
        unpack(
            TarReader::new(decoded, &progress),
            &mut applier,
            &progress,
            compression,
        )?
    };
    let (entries, file_bytes, xattrs_dropped) =
        (applier.entries, applier.file_bytes, applier.xattrs_dropped);
    applier.finish()?;
    let (digest, compressed_bytes) = raw.finish()?;

    for (what, expected, actual) in [
        ("digest", expected_digest, &digest),
        ("diff_id", expected_diff_id, &diff_id),
    ] {
        if let Some(expected) = expected
            && expected != *actual
        {
            return Err(Error::DigestMismatch {
                what,
                expected,
                actual: actual.clone(),
            });
        }
    }
    tracing::debug!(%digest, %diff_id, entries, tar_bytes, "layer applied");
    Ok(ApplyReport {
        digest,
        diff_id,
        compression,
        compressed_bytes,
        tar_bytes,
        entries,
        file_bytes,
        xattrs_dropped,
    })
}

/// Drives the tar parser over the uncompressed stream and returns
/// `(diff_id, tar bytes)`.
fn unpack<R: Read>(
    reader: TarReader<'_, R>,
    applier: &mut Applier<'_>,
    progress: &Progress,
    compression: Compression,
) -> Result<(String, u64), Error> {
    let mut archive = tar::Archive::new(reader);
    // Where the last entry's data ended, once it was read whole.
    let mut data_end = None;
    // Names the last good entry in messages; built only on error.
    let after = |applier: &Applier<'_>| match applier.entries {
        0 => String::from("its start"),
        _ => format!("entry {}", quote(&applier.name)),
    };
    {
        let mut entries = archive
            .entries()
            .map_err(|e| progress.classify(e, compression, &after(applier)))?;
        loop {
            progress.begin_headers();
            let mut entry = match entries.next() {
                None => break,
                Some(Ok(entry)) => entry,
                // A tar that stops inside the padding after its last entry,
                // with no end-of-archive blocks: accepted, as every peer does.
                Some(Err(_)) if progress.ended_in_padding(data_end) => break,
                Some(Err(e)) => return Err(progress.classify(e, compression, &after(applier))),
            };
            progress.end_headers();
            applier.apply(&mut entry)?;
            data_end = Some(progress.pos());
        }
    }
    archive.into_inner().finish(compression, &after(applier))
}
