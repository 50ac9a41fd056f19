//! The byte layout of one chunk replica file: the header (fixed fields plus a
//! crc32c per 64 KiB block) and where the data region starts. Pure encode and
//! decode, no I/O.
//!
//! Invariants: a decoded header always has `block_size == BLOCK_SIZE`,
//! `0 < chunk_size <= MAX_CHUNK_SIZE`, `data_len <= chunk_size` and exactly
//! `nblocks(chunk_size)` crc entries; the header region length is a multiple of
//! 4096 so the data region is page aligned (holes and fallocate work per page).

use std::sync::OnceLock;

/// First eight bytes of every chunk file.
pub const MAGIC: &[u8; 8] = b"WEFTCHK1";
/// Layout version written in the header; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// Checksum granularity: one crc32c per this many data bytes (on disk:
/// changing it is a format change).
pub const BLOCK_SIZE: u32 = weft_proto::contract::limits::BLOCK_SIZE;
const BS: u64 = BLOCK_SIZE as u64;
/// The header region is padded to a multiple of this.
pub const HEADER_ALIGN: u64 = 4096;
/// Bytes of fixed fields, header crc included (see the format comment).
pub const FIXED_LEN: usize = 52;
/// Largest chunk the format accepts: keeps the crc table (and so the header
/// read on every operation) at most 256 KiB.
pub const MAX_CHUNK_SIZE: u64 = 4 << 30;

/// What is wrong with a header; always fatal for the replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("file is shorter than its header ({0} bytes)")]
    Short(usize),
    #[error("bad magic (not a weft chunk file)")]
    BadMagic,
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u32),
    #[error("header checksum mismatch")]
    HeaderCrc,
    #[error("unsupported block size {0}")]
    BadBlockSize(u32),
    #[error("bad chunk size {0}")]
    BadChunkSize(u64),
    #[error("data length {data_len} exceeds chunk size {chunk_size}")]
    DataLen { data_len: u64, chunk_size: u64 },
    #[error("header names chunk {found:016x}, file name says {expected:016x}")]
    IdMismatch { found: u64, expected: u64 },
}

/// The decoded header of one replica, kept in memory while an operation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub id: u64,
    pub version: u64,
    pub chunk_size: u64,
    /// Highest offset ever written (lowered by truncate).
    pub data_len: u64,
    /// One crc32c per block, over the full 64 KiB block as stored, holes and
    /// bytes past the end of the file counting as zeros.
    pub crcs: Vec<u32>,
}

/// Number of checksum blocks in a chunk of `chunk_size` bytes.
pub fn nblocks(chunk_size: u64) -> u64 {
    chunk_size.div_ceil(BS)
}

/// Length of the header region (where the data region starts) for a chunk size.
pub fn header_len(chunk_size: u64) -> u64 {
    (FIXED_LEN as u64 + 4 * nblocks(chunk_size)).next_multiple_of(HEADER_ALIGN)
}

static ZEROS: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];

/// crc32c of a block of `BLOCK_SIZE` zero bytes: the crc of every block never written.
pub fn zero_block_crc() -> u32 {
    static CRC: OnceLock<u32> = OnceLock::new();
    *CRC.get_or_init(|| crc32c::crc32c(&ZEROS))
}

/// crc32c of one block whose stored bytes are `block`; a short slice (the tail of
/// the file) is padded with zeros to `BLOCK_SIZE`, as the format defines.
pub fn block_crc(block: &[u8]) -> u32 {
    debug_assert!(block.len() <= BLOCK_SIZE as usize);
    let crc = crc32c::crc32c(block);
    crc32c::crc32c_append(crc, &ZEROS[..BLOCK_SIZE as usize - block.len()])
}

impl Header {
    /// A fresh header: nothing written, every block reads as zeros and verifies.
    pub fn new(id: u64, version: u64, chunk_size: u64) -> Header {
        assert!(chunk_size > 0 && chunk_size <= MAX_CHUNK_SIZE);
        Header {
            id,
            version,
            chunk_size,
            data_len: 0,
            crcs: vec![zero_block_crc(); nblocks(chunk_size) as usize],
        }
    }

    pub fn header_len(&self) -> u64 {
        header_len(self.chunk_size)
    }

    // Format: a chunk replica file is a header region followed by the data region.
    //
    //   offset  size  field (integers little-endian)
    //   0       8     magic "WEFTCHK1"
    //   8       4     format version (1)
    //   12      8     chunk id
    //   20      8     chunk version (the MDS's version of the chunk this replica holds)
    //   28      8     chunk size (bytes the chunk may hold; fixes the crc table length)
    //   36      4     block size (65536)
    //   40      8     data length (highest offset ever written, lowered by truncate)
    //   48      4     crc32c of bytes 0..48 (guards the fixed fields: a damaged
    //                 header is told apart from a damaged data block)
    //   52      4*n   crc32c of each 64 KiB block i of the data region, n =
    //                 ceil(chunk size / 65536), over the whole block as stored:
    //                 holes and bytes past the end of the file count as zeros, so a
    //                 block never written holds crc32c(65536 zero bytes)
    //   ...           zero padding up to H = round_up(52 + 4*n, 4096)
    //   H       ...   data region: chunk byte i is file byte H + i; a sparse file,
    //                 ranges never written are holes (or past end of file)
    //
    // The fixed fields sit in the first 512-byte sector, so the one pwrite that
    // updates them together with the crc entries cannot tear them apart.
    /// Encodes the fixed fields and crcs of blocks `0..upto_block` (the prefix
    /// rewritten after a write that touched blocks below `upto_block`).
    pub fn encode_prefix(&self, upto_block: usize) -> Vec<u8> {
        let upto_block = upto_block.min(self.crcs.len());
        let mut out = Vec::with_capacity(FIXED_LEN + 4 * upto_block);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&BLOCK_SIZE.to_le_bytes());
        out.extend_from_slice(&self.data_len.to_le_bytes());
        let hcrc = crc32c::crc32c(&out);
        out.extend_from_slice(&hcrc.to_le_bytes());
        debug_assert_eq!(out.len(), FIXED_LEN);
        for c in &self.crcs[..upto_block] {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    /// The whole header region, padding included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_prefix(self.crcs.len());
        out.resize(self.header_len() as usize, 0);
        out
    }

    /// Decodes and checks the fixed fields only; returns (id, version,
    /// chunk_size, data_len). `buf` must hold at least `FIXED_LEN` bytes.
    pub fn decode_fixed(buf: &[u8]) -> Result<(u64, u64, u64, u64), FormatError> {
        if buf.len() < FIXED_LEN {
            return Err(FormatError::Short(buf.len()));
        }
        if &buf[0..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
        let fv = u32_at(8);
        if fv != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(fv));
        }
        if crc32c::crc32c(&buf[..48]) != u32_at(48) {
            return Err(FormatError::HeaderCrc);
        }
        let (id, version, chunk_size, bs, data_len) =
            (u64_at(12), u64_at(20), u64_at(28), u32_at(36), u64_at(40));
        if bs != BLOCK_SIZE {
            return Err(FormatError::BadBlockSize(bs));
        }
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(FormatError::BadChunkSize(chunk_size));
        }
        if data_len > chunk_size {
            return Err(FormatError::DataLen {
                data_len,
                chunk_size,
            });
        }
        Ok((id, version, chunk_size, data_len))
    }

    /// Decodes a whole header region (at least `header_len(chunk_size)` bytes).
    pub fn decode(buf: &[u8]) -> Result<Header, FormatError> {
        let (id, version, chunk_size, data_len) = Header::decode_fixed(buf)?;
        let n = nblocks(chunk_size) as usize;
        let need = header_len(chunk_size) as usize;
        if buf.len() < need {
            return Err(FormatError::Short(buf.len()));
        }
        let crcs = buf[FIXED_LEN..FIXED_LEN + 4 * n]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Ok(Header {
            id,
            version,
            chunk_size,
            data_len,
            crcs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_len_rounds_to_pages() {
        assert_eq!(header_len(64 << 20), 8192); // 52 + 4096 bytes of crcs
        assert_eq!(header_len(65536), 4096);
        assert_eq!(
            header_len(1 << 30),
            (52u64 + 4 * 16384).next_multiple_of(4096)
        );
        assert_eq!(nblocks(65537), 2);
    }

    #[test]
    fn roundtrip() {
        let mut h = Header::new(0xabcdef, 7, 1 << 20);
        h.data_len = 12345;
        h.crcs[3] = 0xdeadbeef;
        let buf = h.encode();
        assert_eq!(buf.len(), 4096);
        assert_eq!(Header::decode(&buf).unwrap(), h);
    }

    #[test]
    fn damage_is_detected() {
        let h = Header::new(1, 1, 1 << 20);
        let good = h.encode();
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Header::decode(&b), Err(FormatError::BadMagic));
        let mut b = good.clone();
        b[21] ^= 1; // version field
        assert_eq!(Header::decode(&b), Err(FormatError::HeaderCrc));
        let mut b = good.clone();
        b[8] = 9;
        assert_eq!(Header::decode(&b), Err(FormatError::UnsupportedVersion(9)));
        assert_eq!(Header::decode(&good[..30]), Err(FormatError::Short(30)));
    }

    #[test]
    fn short_block_crc_pads_with_zeros() {
        let mut full = vec![0u8; BLOCK_SIZE as usize];
        full[..3].copy_from_slice(b"abc");
        assert_eq!(block_crc(b"abc"), crc32c::crc32c(&full));
        assert_eq!(block_crc(&[]), zero_block_crc());
    }
}
