//! The reader stack below the tar parser: raw input (hashed for the layer
//! digest) → decompressor picked by magic bytes → buffer → tar reader
//! (hashed for the diff_id, counted, watched for EOF).
//!
//! The counters live in a shared [`Progress`] because the tar crate owns the
//! reader while it parses and offers no way back to it.

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufReader, Read};

use sha2::{Digest, Sha256};

use crate::error::Error;

/// How much the tar parser may read on its own between two entries (headers,
/// PAX records, GNU long names, old GNU sparse extension blocks). The tar
/// crate buffers all of these in memory without a limit; Go's archive/tar
/// caps them at 1 MiB. Real layers stay far below this.
pub(crate) const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Buffer between the decompressor and the tar parser, which reads headers
/// 512 bytes at a time.
const DECODED_BUFFER: usize = 64 << 10;

/// The compression of a layer stream, detected from its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

impl Compression {
    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

    /// Detects the compression from the first bytes of a stream; anything
    /// else is taken for a plain tar, which the tar parser then checks.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&Self::GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(&Self::ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

/// State shared by the readers and the code driving the tar parser.
#[derive(Default)]
pub(crate) struct Progress {
    /// Uncompressed bytes handed to the tar parser so far.
    pos: Cell<u64>,
    /// The uncompressed stream returned end-of-file.
    eof: Cell<bool>,
    /// The caller's reader failed: an I/O problem, not a bad layer.
    raw_failed: Cell<bool>,
    /// The decompressor failed: a corrupt or truncated layer.
    decode_failed: Cell<bool>,
    /// Where the tar parser started reading headers on its own, while it
    /// does; see [`MAX_HEADER_BYTES`].
    headers_from: Cell<Option<u64>>,
    /// [`MAX_HEADER_BYTES`] was exceeded.
    headers_too_big: Cell<bool>,
}

impl Progress {
    /// Uncompressed bytes handed to the tar parser so far.
    pub(crate) fn pos(&self) -> u64 {
        self.pos.get()
    }

    /// The parser is about to look for the next entry on its own.
    pub(crate) fn begin_headers(&self) {
        self.headers_from.set(Some(self.pos.get()));
    }

    /// The parser handed out an entry; its data is read on our behalf.
    pub(crate) fn end_headers(&self) {
        self.headers_from.set(None);
    }

    /// Whether an error of the tar parser is only the missing padding and
    /// end-of-archive blocks after the last entry, which Debian's
    /// `umoci insert` leaves out: the stream ended after the last entry's
    /// data (which the caller verified was read whole) and before the next
    /// 512-byte boundary, so no header can have been cut.
    pub(crate) fn ended_in_padding(&self, data_end: Option<u64>) -> bool {
        let Some(end) = data_end else { return false };
        let pos = self.pos.get();
        self.eof.get() && !self.failed() && pos >= end && pos < end.next_multiple_of(512)
    }

    fn failed(&self) -> bool {
        self.raw_failed.get() || self.decode_failed.get() || self.headers_too_big.get()
    }

    /// Turns an error that surfaced through the tar reader into the right
    /// [`Error`]; `after` names the last good entry for messages.
    pub(crate) fn classify(&self, e: io::Error, compression: Compression, after: &str) -> Error {
        if self.raw_failed.get() {
            Error::Read { source: e }
        } else if self.decode_failed.get() {
            Error::Corrupt {
                compression,
                source: e,
            }
        } else if self.headers_too_big.get() {
            let reason = format!("extended headers exceed {} MiB", MAX_HEADER_BYTES >> 20);
            Error::Malformed {
                after: after.to_owned(),
                reason,
            }
        } else if self.eof.get() {
            Error::Truncated {
                after: after.to_owned(),
            }
        } else {
            Error::Malformed {
                after: after.to_owned(),
                reason: e.to_string(),
            }
        }
    }
}

/// The caller's input, hashed and counted for the layer digest.
pub(crate) struct RawReader<'p, R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
    progress: &'p Progress,
}

impl<'p, R: Read> RawReader<'p, R> {
    pub(crate) fn new(inner: R, progress: &'p Progress) -> Self {
        RawReader {
            inner,
            hash: Sha256::new(),
            bytes: 0,
            progress,
        }
    }

    /// Reads the first bytes (up to `buf.len()`) to detect the compression.
    pub(crate) fn head(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut n = 0;
        while n < buf.len() {
            match self.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(Error::Read { source }),
            }
        }
        Ok(n)
    }

    /// Reads whatever follows the end of the compressed stream, so the
    /// digest covers every byte, and returns `(digest, bytes)`.
    pub(crate) fn finish(mut self) -> Result<(String, u64), Error> {
        io::copy(&mut self, &mut io::sink()).map_err(|source| Error::Read { source })?;
        Ok((digest_string(self.hash), self.bytes))
    }
}

impl<R: Read> Read for RawReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hash.update(&buf[..n]);
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.progress.raw_failed.set(true);
                }
                Err(e)
            }
        }
    }
}

/// The decompressed stream.
pub(crate) enum Decoded<R: Read> {
    Plain(R),
    Gzip(Box<flate2::read::MultiGzDecoder<R>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<R>>>),
}

impl<R: Read> Decoded<R> {
    pub(crate) fn new(compression: Compression, inner: R) -> Result<Self, Error> {
        Ok(match compression {
            Compression::None => Decoded::Plain(inner),
            // Multi-member: concatenated gzip streams are one valid stream
            // (Go's gzip.Reader, which most producers test against, agrees).
            Compression::Gzip => Decoded::Gzip(Box::new(flate2::read::MultiGzDecoder::new(inner))),
            Compression::Zstd => Decoded::Zstd(Box::new(
                zstd::stream::read::Decoder::new(inner).map_err(|source| Error::Corrupt {
                    compression,
                    source,
                })?,
            )),
        })
    }
}

impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoded::Plain(r) => r.read(buf),
            Decoded::Gzip(r) => r.read(buf),
            Decoded::Zstd(r) => r.read(buf),
        }
    }
}

/// The uncompressed tar as the tar parser sees it: hashed for the diff_id,
/// counted and watched for EOF in [`Progress`].
pub(crate) struct TarReader<'p, R: Read> {
    inner: BufReader<Decoded<R>>,
    hash: Sha256,
    progress: &'p Progress,
}

impl<'p, R: Read> TarReader<'p, R> {
    pub(crate) fn new(inner: Decoded<R>, progress: &'p Progress) -> Self {
        TarReader {
            inner: BufReader::with_capacity(DECODED_BUFFER, inner),
            hash: Sha256::new(),
            progress,
        }
    }

    /// Reads the rest of the stream (zero blocks, anything after the
    /// end-of-archive marker) and returns `(diff_id, tar bytes)`.
    pub(crate) fn finish(
        mut self,
        compression: Compression,
        after: &str,
    ) -> Result<(String, u64), Error> {
        self.progress.end_headers();
        io::copy(&mut self, &mut io::sink())
            .map_err(|e| self.progress.classify(e, compression, after))?;
        Ok((digest_string(self.hash), self.progress.pos()))
    }
}

impl<R: Read> Read for TarReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let p = self.progress;
        if let Some(from) = p.headers_from.get()
            && p.pos.get() - from > MAX_HEADER_BYTES
        {
            p.headers_too_big.set(true);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "extended headers too large",
            ));
        }
        match self.inner.read(buf) {
            Ok(0) => {
                if !buf.is_empty() {
                    p.eof.set(true);
                }
                Ok(0)
            }
            Ok(n) => {
                self.hash.update(&buf[..n]);
                p.pos.set(p.pos.get() + n as u64);
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted && !p.raw_failed.get() {
                    p.decode_failed.set(true);
                }
                Err(e)
            }
        }
    }
}

/// `sha256:<hex>` of a finished hash.
fn digest_string(hash: Sha256) -> String {
    format!("sha256:{}", hex::encode(hash.finalize()))
}

/// Checks an expected digest option and returns it lowercased.
pub(crate) fn parse_digest(field: &'static str, value: &str) -> Result<String, Error> {
    let bad = |reason: &str| Error::InvalidOption {
        field,
        reason: format!("{value:?}: {reason}"),
    };
    let Some(hex) = value.strip_prefix("sha256:") else {
        return Err(bad("only sha256 digests are supported"));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("not 64 hex digits"));
    }
    Ok(value.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Magic bytes pick the decompressor; short or unknown heads are tar.
    #[test]
    fn detection() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"etc/"), Compression::None);
        assert_eq!(Compression::detect(&[0x1f]), Compression::None);
        assert_eq!(Compression::detect(&[]), Compression::None);
    }

    /// Only well-formed sha256 digests are accepted as expectations.
    #[test]
    fn digest_options() {
        let ok = format!("sha256:{}", "A".repeat(64));
        assert_eq!(parse_digest("d", &ok).unwrap(), ok.to_ascii_lowercase());
        for bad in [
            "",
            "sha256:abc",
            "sha512:00",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(parse_digest("d", bad).is_err(), "{bad}");
        }
    }

    /// EOF inside the padding after complete data is the only tolerated
    /// early end; EOF at the data end of an aligned entry is a clean end the
    /// parser handles itself.
    #[test]
    fn padding_window() {
        let p = Progress::default();
        p.pos.set(537);
        assert!(!p.ended_in_padding(Some(537)), "no EOF seen yet");
        p.eof.set(true);
        assert!(p.ended_in_padding(Some(537)));
        assert!(p.ended_in_padding(Some(530)));
        assert!(!p.ended_in_padding(Some(540)), "cut inside the data");
        assert!(
            !p.ended_in_padding(Some(512)),
            "past the boundary: a header was cut"
        );
        assert!(!p.ended_in_padding(None));
        p.decode_failed.set(true);
        assert!(!p.ended_in_padding(Some(537)));
    }
}
