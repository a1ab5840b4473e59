//! Writing regular-file data from the tar stream: contiguous, old GNU
//! sparse and PAX sparse. Holes are left as holes (`pwrite` at the extent
//! offsets, then `ftruncate` to the real size), never written as zeros.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use crate::error::{Error, Problem, quote};
use crate::sparse::{self, Extent, MAP_BLOCK, MapParser};
use crate::stream::{Compression, Progress};

/// Size of the one copy buffer of an apply: large enough that decompression
/// and `write` dominate, not the per-call overhead.
pub(crate) const COPY_BUFFER: usize = 1 << 20;

/// What data errors need to name the entry and classify read failures.
pub(crate) struct DataCtx<'a> {
    pub path: &'a [u8],
    pub progress: &'a Progress,
    pub compression: Compression,
}

impl DataCtx<'_> {
    /// Reads what the entry has next, up to `buf.len()` bytes; 0 at its end
    /// (or at a premature end of the stream, which the caller's byte count
    /// catches: the tar crate reports that as a short read, not an error).
    pub(crate) fn read(&self, r: &mut impl Read, buf: &mut [u8]) -> Result<usize, Error> {
        loop {
            match r.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let after = format!("entry {}", quote(self.path));
                    return Err(self.progress.classify(e, self.compression, &after));
                }
            }
        }
    }

    fn write_at(&self, file: &File, data: &[u8], offset: u64) -> Result<(), Error> {
        file.write_all_at(data, offset)
            .map_err(|e| Error::io(self.path, "write data", e))
    }

    fn set_len(&self, file: &File, len: u64) -> Result<(), Error> {
        file.set_len(len)
            .map_err(|e| Error::io(self.path, "set the size of", e))
    }

    /// Reads and discards the rest of the entry and checks that the stream
    /// held exactly the `size` bytes the header promised.
    pub(crate) fn finish(
        &self,
        r: &mut impl Read,
        buf: &mut [u8],
        mut consumed: u64,
        size: u64,
    ) -> Result<(), Error> {
        loop {
            let n = self.read(r, buf)?;
            if n == 0 {
                break;
            }
            consumed += n as u64;
        }
        if consumed != size {
            return Err(Error::entry(
                self.path,
                Problem::Truncated {
                    expected: size,
                    actual: consumed,
                },
            ));
        }
        Ok(())
    }
}

/// Contiguous data. Returns the bytes consumed.
pub(crate) fn copy_plain(
    ctx: &DataCtx<'_>,
    r: &mut impl Read,
    file: &File,
    buf: &mut [u8],
) -> Result<u64, Error> {
    let mut off = 0u64;
    loop {
        let n = ctx.read(r, buf)?;
        if n == 0 {
            return Ok(off);
        }
        ctx.write_at(file, &buf[..n], off)?;
        off += n as u64;
    }
}

/// An old GNU `S` entry. The tar crate hands out its holes as zero-filled
/// reads synthesised without touching the stream, and its data as reads of
/// the stream: a read that did not move the stream position is a hole and
/// is skipped, so it stays a hole in the file.
pub(crate) fn copy_gnu_sparse(
    ctx: &DataCtx<'_>,
    r: &mut impl Read,
    file: &File,
    buf: &mut [u8],
) -> Result<u64, Error> {
    let mut off = 0u64;
    loop {
        let before = ctx.progress.pos();
        let n = ctx.read(r, buf)?;
        if n == 0 {
            break;
        }
        if ctx.progress.pos() != before {
            ctx.write_at(file, &buf[..n], off)?;
        }
        off += n as u64;
    }
    ctx.set_len(file, off)?;
    Ok(off)
}

/// A PAX sparse entry of `size` stored bytes. A 1.0 entry (`extents` is
/// `None`) starts with its map. Returns the bytes consumed.
pub(crate) fn copy_pax_sparse(
    ctx: &DataCtx<'_>,
    r: &mut impl Read,
    file: &File,
    buf: &mut [u8],
    (size, real_size): (u64, u64),
    extents: Option<&[Extent]>,
) -> Result<u64, Error> {
    let bad = |p| Error::entry(ctx.path, p);
    let map;
    let (extents, mut consumed) = match extents {
        Some(e) => (e, 0),
        None => {
            let (m, consumed) = read_map_10(ctx, r, size)?;
            map = m;
            (&map[..], consumed)
        }
    };
    sparse::validate(extents, real_size, size - consumed).map_err(bad)?;
    for e in extents {
        let mut done = 0u64;
        while done < e.len {
            let want = (e.len - done).min(buf.len() as u64) as usize;
            let n = ctx.read(r, &mut buf[..want])?;
            if n == 0 {
                // Cut short: the caller's count reports it.
                return Ok(consumed);
            }
            ctx.write_at(file, &buf[..n], e.offset + done)?;
            done += n as u64;
            consumed += n as u64;
        }
    }
    ctx.set_len(file, real_size)?;
    Ok(consumed)
}

/// Reads the 1.0 map: whole 512-byte blocks at the start of the data.
fn read_map_10(
    ctx: &DataCtx<'_>,
    r: &mut impl Read,
    size: u64,
) -> Result<(Vec<Extent>, u64), Error> {
    let mut parser = MapParser::default();
    let mut block = [0u8; MAP_BLOCK];
    let mut consumed = 0u64;
    loop {
        let mut filled = 0;
        while filled < MAP_BLOCK {
            let n = ctx.read(r, &mut block[filled..])?;
            if n == 0 {
                let total = consumed + filled as u64;
                return Err(Error::entry(
                    ctx.path,
                    if total == size {
                        Problem::BadSparse("map runs past the entry's data")
                    } else {
                        Problem::Truncated {
                            expected: size,
                            actual: total,
                        }
                    },
                ));
            }
            filled += n;
        }
        consumed += MAP_BLOCK as u64;
        if parser.feed(&block).map_err(|p| Error::entry(ctx.path, p))? {
            return Ok((parser.into_extents(), consumed));
        }
    }
}
