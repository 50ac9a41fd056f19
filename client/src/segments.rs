//! Packed small files: needles in segments.
//!
//! A small file written whole between open and close is stored as one
//! *needle* appended to a *segment* (a hidden one-chunk inode this mount
//! created), not as a chunk of its own. A needle is a 32-byte header then
//! the data, padded to a multiple of `NEEDLE_ALIGN`:
//!
//! ```text
//! 0  4  magic "WNDL"
//! 4  4  crc32c of header bytes 8..32
//! 8  8  ino of the file
//! 16 8  data length L
//! 24 4  crc32c of the data
//! 28 4  reserved (0)
//! 32 L  data
//! ```
//!
//! Invariant: a reader serves a needle only when magic, header crc, ino,
//! length and data crc all match what the MDS says the file holds; anything
//! else is corruption (try another replica).

/// The needle's first four bytes.
pub const MAGIC: &[u8; 4] = b"WNDL";
/// Bytes of a needle header.
pub const HEADER: u64 = 32;
/// Needles start at multiples of this within a segment.
pub const NEEDLE_ALIGN: u64 = 64;

/// Bytes a needle of `len` data bytes occupies in its segment (padding included).
pub fn needle_span(len: u64) -> u64 {
    (HEADER + len).div_ceil(NEEDLE_ALIGN) * NEEDLE_ALIGN
}

/// The needle of file `ino` holding `data`, padded with zeros to its span.
pub fn encode(ino: u64, data: &[u8]) -> Vec<u8> {
    let len = data.len() as u64;
    let mut v = Vec::with_capacity(needle_span(len) as usize);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&ino.to_le_bytes());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    let hcrc = crc32c::crc32c(&v[8..32]);
    v[4..8].copy_from_slice(&hcrc.to_le_bytes());
    v.extend_from_slice(data);
    v.resize(needle_span(len) as usize, 0);
    v
}

/// Why a needle read from a replica is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    Short,
    Magic,
    HeaderCrc,
    Ino,
    Len,
    DataCrc,
    Reserved,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self {
            Corrupt::Short => "short needle",
            Corrupt::Magic => "bad needle magic",
            Corrupt::HeaderCrc => "needle header crc mismatch",
            Corrupt::Ino => "needle of another inode",
            Corrupt::Len => "needle length mismatch",
            Corrupt::DataCrc => "needle data crc mismatch",
            Corrupt::Reserved => "needle reserved field set",
        };
        f.write_str(what)
    }
}

/// Checks `buf` (header + at least `len` data bytes, as read from the
/// segment at the needle's offset) against what the MDS says: file `ino`,
/// `len` data bytes. Returns the data.
pub fn verify(buf: &[u8], ino: u64, len: u64) -> Result<&[u8], Corrupt> {
    if (buf.len() as u64) < HEADER {
        return Err(Corrupt::Short);
    }
    let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().unwrap());
    if &buf[0..4] != MAGIC {
        return Err(Corrupt::Magic);
    }
    if u32_at(4) != crc32c::crc32c(&buf[8..32]) {
        return Err(Corrupt::HeaderCrc);
    }
    if u64_at(8) != ino {
        return Err(Corrupt::Ino);
    }
    if u64_at(16) != len {
        return Err(Corrupt::Len);
    }
    if u32_at(28) != 0 {
        return Err(Corrupt::Reserved);
    }
    let Some(data) = buf.get(HEADER as usize..(HEADER + len) as usize) else {
        return Err(Corrupt::Short);
    };
    if u32_at(24) != crc32c::crc32c(data) {
        return Err(Corrupt::DataCrc);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_aligned() {
        assert_eq!(needle_span(0), 64);
        assert_eq!(needle_span(32), 64);
        assert_eq!(needle_span(33), 128);
        assert_eq!(needle_span(65536), 65536 + 64);
        for len in [0u64, 1, 31, 32, 33, 4000, 70 << 10] {
            assert_eq!(
                encode(7, &vec![1; len as usize]).len() as u64,
                needle_span(len)
            );
        }
    }

    #[test]
    fn round_trip() {
        for len in [0usize, 1, 17, 31, 32, 33, 64, 4096, 65536] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let n = encode(42, &data);
            assert_eq!(verify(&n, 42, len as u64).unwrap(), &data[..]);
            // Padding is zeros; the reader may read less than the span.
            assert!(n[HEADER as usize + len..].iter().all(|b| *b == 0));
            assert_eq!(
                verify(&n[..HEADER as usize + len], 42, len as u64).unwrap(),
                &data[..]
            );
        }
    }

    #[test]
    fn wrong_expectations_are_refused() {
        let n = encode(42, b"hello");
        assert_eq!(verify(&n, 43, 5), Err(Corrupt::Ino));
        assert_eq!(verify(&n, 42, 4), Err(Corrupt::Len));
        assert_eq!(verify(&n, 42, 6), Err(Corrupt::Len));
        assert_eq!(
            verify(&n[..HEADER as usize + 4], 42, 5),
            Err(Corrupt::Short)
        );
        assert_eq!(verify(&n[..31], 42, 5), Err(Corrupt::Short));
        assert_eq!(verify(&[0u8; 64], 42, 0), Err(Corrupt::Magic));
    }

    /// Every single flipped bit in header or data is refused (padding is
    /// not covered: it is never served).
    #[test]
    fn every_corrupted_field_is_refused() {
        let data: Vec<u8> = (0..100u8).collect();
        let n = encode(9, &data);
        let covered = HEADER as usize + data.len();
        for at in 0..covered {
            for bit in 0..8 {
                let mut bad = n.clone();
                bad[at] ^= 1 << bit;
                let r = verify(&bad, 9, data.len() as u64);
                assert!(r.is_err(), "flip of byte {at} bit {bit} accepted");
                let want = match at {
                    0..4 => Corrupt::Magic,
                    // A changed field no longer matches the header crc.
                    4..32 => Corrupt::HeaderCrc,
                    _ => Corrupt::DataCrc,
                };
                assert_eq!(r, Err(want), "byte {at}");
            }
        }
    }

    /// A header re-sealed with a valid crc but wrong fields is still refused.
    #[test]
    fn resealed_fields_are_refused() {
        let n = encode(9, b"abcdef");
        let reseal = |mut b: Vec<u8>| {
            let c = crc32c::crc32c(&b[8..32]);
            b[4..8].copy_from_slice(&c.to_le_bytes());
            b
        };
        let mut b = n.clone();
        b[28] = 1;
        assert_eq!(verify(&reseal(b), 9, 6), Err(Corrupt::Reserved));
        let mut b = n.clone();
        b[24] ^= 0xff;
        assert_eq!(verify(&reseal(b), 9, 6), Err(Corrupt::DataCrc));
        let mut b = n.clone();
        b[8] = 10;
        assert_eq!(verify(&reseal(b), 9, 6), Err(Corrupt::Ino));
        let mut b = n;
        b[16] = 5;
        assert_eq!(verify(&reseal(b), 9, 6), Err(Corrupt::Len));
    }
}
