//! An MD5 carried across pieces: a server-side copy is cut into pieces that
//! different head daemons hash, each continuing the state the previous one
//! answered (`CopySource.md5_state`, `WriteReply.md5_state`), so the copy's
//! MD5 (an S3 ETag) comes out without its bytes reaching the client.

use md5_resumable::digest::common::hazmat::{SerializableState, SerializedState};
use md5_resumable::{Digest, Md5};

fn load(state: &[u8]) -> Result<Md5, String> {
    if state.is_empty() {
        return Ok(Md5::new());
    }
    let s = SerializedState::<Md5>::try_from(state)
        .map_err(|_| format!("an MD5 state of {} bytes", state.len()))?;
    Md5::deserialize(&s).map_err(|_| "a malformed MD5 state".to_string())
}

/// The state after hashing `data` on from `state` (empty: a fresh hash).
pub fn resume(state: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    let mut h = load(state)?;
    h.update(data);
    Ok(h.serialize().to_vec())
}

/// The MD5 of everything hashed into `state`.
pub fn finish(state: &[u8]) -> Result<[u8; 16], String> {
    let mut out = [0u8; 16];
    out.copy_from_slice(&load(state)?.finalize());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_hash_as_the_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = finish(&resume(&[], &data).unwrap()).unwrap();
        // Cuts off the 64-byte block boundaries too.
        let mut st = Vec::new();
        for piece in data.chunks(999) {
            st = resume(&st, piece).unwrap();
        }
        assert_eq!(finish(&st).unwrap(), whole);
        // The MD5 of nothing.
        assert_eq!(
            finish(&[]).unwrap(),
            [
                0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8,
                0x42, 0x7e
            ]
        );
        assert!(resume(&[1, 2, 3], b"x").is_err());
    }
}
