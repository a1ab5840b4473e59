//! GNU sparse maps as PAX records carry them (formats 0.0, 0.1 and 1.0).
//! The tar crate decodes none of them: it shows a 1.0 entry as a regular
//! file whose data starts with the map.

use crate::error::Problem;

/// Most extents one sparse file may list. The map is held in memory until
/// the data that follows it is written; real files (even `lastlog`) list a
/// few thousand at most.
pub(crate) const MAX_EXTENTS: usize = 1 << 20;

/// A 1.0 map is a sequence of 512-byte blocks.
pub(crate) const MAP_BLOCK: usize = 512;

/// One run of data in a sparse file; everything between runs is a hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// Parses unsigned decimal ASCII with no sign, no blanks and no overflow.
pub(crate) fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Format 0.1: `GNU.sparse.map=offset,len,offset,len,…`.
pub(crate) fn parse_map_01(map: &[u8], numblocks: Option<u64>) -> Result<Vec<Extent>, Problem> {
    let mut numbers = Vec::new();
    if !map.is_empty() {
        for field in map.split(|&b| b == b',') {
            if numbers.len() >= 2 * MAX_EXTENTS {
                return Err(Problem::BadSparse("too many extents"));
            }
            numbers.push(decimal(field).ok_or(Problem::BadSparse("bad number in map"))?);
        }
    }
    pairs_00(&numbers, numblocks)
}

/// Format 0.0 (repeated `GNU.sparse.offset`/`GNU.sparse.numbytes` records),
/// and the pairs of 0.1, checked against `GNU.sparse.numblocks`.
pub(crate) fn pairs_00(numbers: &[u64], numblocks: Option<u64>) -> Result<Vec<Extent>, Problem> {
    if !numbers.len().is_multiple_of(2) {
        return Err(Problem::BadSparse("odd number of map fields"));
    }
    if let Some(n) = numblocks
        && n.checked_mul(2) != Some(numbers.len() as u64)
    {
        return Err(Problem::BadSparse(
            "map length differs from GNU.sparse.numblocks",
        ));
    }
    Ok(numbers
        .chunks_exact(2)
        .map(|p| Extent {
            offset: p[0],
            len: p[1],
        })
        .collect())
}

/// Incremental parser of the 1.0 map: a decimal extent count, then offset
/// and length per extent, each ended by `\n`, padded to 512-byte blocks.
#[derive(Default)]
pub(crate) struct MapParser {
    count: Option<u64>,
    offset: Option<u64>,
    number: u64,
    digits: usize,
    extents: Vec<Extent>,
}

impl MapParser {
    /// Feeds the next 512-byte block; `Ok(true)` once the map is complete
    /// (the rest of that block is padding).
    pub(crate) fn feed(&mut self, block: &[u8]) -> Result<bool, Problem> {
        for &b in block {
            if self.done() {
                return Ok(true);
            }
            match b {
                b'0'..=b'9' => {
                    self.number = self
                        .number
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(b - b'0')))
                        .ok_or(Problem::BadSparse("number overflows"))?;
                    self.digits += 1;
                }
                b'\n' if self.digits > 0 => {
                    self.token(self.number)?;
                    self.number = 0;
                    self.digits = 0;
                }
                _ => return Err(Problem::BadSparse("unexpected byte in map")),
            }
        }
        Ok(self.done())
    }

    fn done(&self) -> bool {
        self.count == Some(self.extents.len() as u64) && self.offset.is_none()
    }

    fn token(&mut self, n: u64) -> Result<(), Problem> {
        match (self.count, self.offset.take()) {
            (None, _) if n > MAX_EXTENTS as u64 => Err(Problem::BadSparse("too many extents")),
            (None, _) => {
                self.count = Some(n);
                self.extents.reserve(n as usize);
                Ok(())
            }
            (Some(_), None) => {
                self.offset = Some(n);
                Ok(())
            }
            (Some(_), Some(offset)) => {
                self.extents.push(Extent { offset, len: n });
                Ok(())
            }
        }
    }

    /// The extents, once [`feed`](Self::feed) said the map is complete.
    pub(crate) fn into_extents(self) -> Vec<Extent> {
        self.extents
    }
}

/// Checks that extents are in order, do not overlap, fit in `real_size`,
/// and account for exactly the `data_len` bytes stored.
pub(crate) fn validate(extents: &[Extent], real_size: u64, data_len: u64) -> Result<(), Problem> {
    let mut end = 0u64;
    let mut total = 0u64;
    for e in extents {
        let e_end = e
            .offset
            .checked_add(e.len)
            .ok_or(Problem::BadSparse("extent overflows"))?;
        if e.offset < end {
            return Err(Problem::BadSparse("extents overlap or are out of order"));
        }
        if e_end > real_size {
            return Err(Problem::BadSparse("extent beyond the file size"));
        }
        end = e_end;
        total += e.len;
    }
    if total != data_len {
        return Err(Problem::BadSparse("extents do not match the stored data"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(v: &[(u64, u64)]) -> Vec<Extent> {
        v.iter()
            .map(|&(offset, len)| Extent { offset, len })
            .collect()
    }

    /// The 1.0 map of the fixture's gnu-sparse.img, fed across a block
    /// boundary, and the malformed variants.
    #[test]
    fn map_10() {
        let text = b"3\n0\n4096\n67104768\n4096\n67108864\n0\n";
        let mut block = vec![0u8; 512];
        block[..text.len()].copy_from_slice(text);
        let mut p = MapParser::default();
        assert!(p.feed(&block).unwrap());
        assert_eq!(
            p.into_extents(),
            ext(&[(0, 4096), (67104768, 4096), (67108864, 0)])
        );

        let mut p = MapParser::default();
        assert!(!p.feed(b"2\n10\n5").unwrap(), "a number may span blocks");
        assert!(p.feed(b"\n20\n1\n\0\0").unwrap());
        assert_eq!(p.into_extents(), ext(&[(10, 5), (20, 1)]));

        assert!(MapParser::default().feed(b"1\n-1\n").is_err());
        assert!(MapParser::default().feed(b"99999999999\n").is_err());
        assert!(MapParser::default().feed(b"1\n\n").is_err());
        assert!(
            MapParser::default()
                .feed(b"1\n99999999999999999999999\n")
                .is_err()
        );
        let mut p = MapParser::default();
        assert!(p.feed(b"0\n").unwrap());
    }

    /// 0.1 and 0.0 maps, with the count cross-check.
    #[test]
    fn maps_0x() {
        assert_eq!(
            parse_map_01(b"0,5,10,5", Some(2)).unwrap(),
            ext(&[(0, 5), (10, 5)])
        );
        assert_eq!(parse_map_01(b"", Some(0)).unwrap(), vec![]);
        assert!(parse_map_01(b"0,5,10", None).is_err());
        assert!(parse_map_01(b"0,5", Some(2)).is_err());
        assert!(parse_map_01(b"0,x", None).is_err());
        assert_eq!(pairs_00(&[4, 1], None).unwrap(), ext(&[(4, 1)]));
    }

    /// Overlaps, disorder, overruns and data-size mismatches are refused.
    #[test]
    fn validation() {
        assert!(validate(&ext(&[(0, 4), (8, 4), (16, 0)]), 16, 8).is_ok());
        assert!(validate(&ext(&[(0, 4), (2, 4)]), 16, 8).is_err());
        assert!(validate(&ext(&[(8, 4), (0, 4)]), 16, 8).is_err());
        assert!(validate(&ext(&[(0, 4), (14, 4)]), 16, 8).is_err());
        assert!(validate(&ext(&[(0, 4)]), 16, 5).is_err());
        assert!(validate(&ext(&[(u64::MAX, 2)]), u64::MAX, 2).is_err());
    }
}
