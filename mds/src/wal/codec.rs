//! Framing of log records and segment headers. Pure: bytes in, bytes out.
//!
//! A frame is self-checking: a reader can tell a complete record from a torn
//! or damaged one without any other context, which is what replay relies on.

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"WEFTWAL1";
/// Version of the segment and frame format below.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 16;
/// Bytes of a frame before its payload.
pub const FRAME_HEADER_LEN: usize = 24;
/// Refuse frames claiming more than this: a corrupt length must not make
/// replay allocate gigabytes.
pub const MAX_PAYLOAD: u32 = 64 << 20;

// Format (segment header, 16 bytes):
//   magic        [u8; 8]   "WEFTWAL1"
//   version      u32 LE    FORMAT_VERSION
//   reserved     u32 LE    0
pub fn encode_segment_header() -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

pub fn check_segment_header(h: &[u8]) -> Result<(), String> {
    if h.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "segment header is {} bytes, want {SEGMENT_HEADER_LEN}",
            h.len()
        ));
    }
    if &h[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic (not a weft log segment)".into());
    }
    let v = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if v != FORMAT_VERSION {
        return Err(format!(
            "segment format version {v}, this MDS reads {FORMAT_VERSION}"
        ));
    }
    Ok(())
}

/// One log entry as framed: a position in the log (index, and the Raft-style
/// term, 0 while there is a single MDS) and an opaque payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub index: u64,
    pub term: u64,
    pub payload: Vec<u8>,
}

// Format (frame):
//   len      u32 LE   payload length
//   crc      u32 LE   crc32c of index, term and payload (bytes 8..)
//   index    u64 LE   log position, consecutive from 1
//   term     u64 LE
//   payload  [u8; len]
pub fn encode_frame(index: u64, term: u64, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What decoding found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, verified frame of `len` bytes.
    Frame(Frame, usize),
    /// Clean end of data.
    End,
    /// The bytes end inside a frame: a torn write if this is the log's tail.
    Truncated,
    /// A complete frame whose checksum or length is wrong.
    Corrupt(String),
}

pub fn decode_frame(buf: &[u8]) -> Decoded {
    if buf.is_empty() {
        return Decoded::End;
    }
    if buf.len() < FRAME_HEADER_LEN {
        return Decoded::Truncated;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap());
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt(format!("frame length {len} is over the limit"));
    }
    let total = FRAME_HEADER_LEN + len as usize;
    if buf.len() < total {
        return Decoded::Truncated;
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let actual = crc32c::crc32c(&buf[8..total]);
    if crc != actual {
        return Decoded::Corrupt(format!(
            "checksum mismatch (stored {crc:08x}, computed {actual:08x})"
        ));
    }
    let index = u64::from_le_bytes(buf[8..16].try_into().unwrap());
    let term = u64::from_le_bytes(buf[16..24].try_into().unwrap());
    Decoded::Frame(
        Frame {
            index,
            term,
            payload: buf[FRAME_HEADER_LEN..total].to_vec(),
        },
        total,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes() {
        let mut out = Vec::new();
        encode_frame(1, 0, b"hi", &mut out);
        let crc = crc32c::crc32c(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']);
        let mut want = vec![2, 0, 0, 0];
        want.extend_from_slice(&crc.to_le_bytes());
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']);
        assert_eq!(out, want);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283); // the Castagnoli check value
        assert_eq!(&encode_segment_header()[..12], b"WEFTWAL1\x01\x00\x00\x00");
    }

    #[test]
    fn roundtrip_and_every_truncation() {
        let mut out = Vec::new();
        encode_frame(7, 3, b"payload bytes", &mut out);
        match decode_frame(&out) {
            Decoded::Frame(f, n) => {
                assert_eq!(n, out.len());
                assert_eq!(
                    f,
                    Frame {
                        index: 7,
                        term: 3,
                        payload: b"payload bytes".to_vec()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        for cut in 1..out.len() {
            assert_eq!(
                decode_frame(&out[..cut]),
                Decoded::Truncated,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn flipped_bit_is_corrupt() {
        let mut out = Vec::new();
        encode_frame(1, 0, b"abcdef", &mut out);
        for i in 4..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(decode_frame(&bad), Decoded::Corrupt(_)),
                "flip at {i}"
            );
        }
    }
}
