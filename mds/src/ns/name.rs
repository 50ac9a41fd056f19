//! A file name as the namespace keeps it: up to `INLINE` bytes inside the
//! value itself, longer ones on the heap. Most names are short ("main.rs",
//! "00001234", a git object's 38 hex digits are the long exception), and a
//! `Vec<u8>` would cost 24 bytes plus a heap block of at least 32 for each;
//! this costs 24 bytes and no heap block for a short name.
//!
//! Serialized exactly as a `Vec<u8>` (a byte sequence), so it can replace
//! one in a journaled or snapshotted structure without changing the format.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::Deref;

/// Bytes kept inline: what fits beside the tag and length in 24 bytes.
const INLINE: usize = 22;

#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Name {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Name {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Inline { len, bytes } => &bytes[..*len as usize],
            Name::Heap(b) => b,
        }
    }
}

impl Default for Name {
    fn default() -> Self {
        Name::from(&[][..])
    }
}

impl From<&[u8]> for Name {
    fn from(b: &[u8]) -> Name {
        if b.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..b.len()].copy_from_slice(b);
            Name::Inline {
                len: b.len() as u8,
                bytes,
            }
        } else {
            Name::Heap(b.into())
        }
    }
}

impl From<Vec<u8>> for Name {
    fn from(v: Vec<u8>) -> Name {
        if v.len() <= INLINE {
            Name::from(v.as_slice())
        } else {
            Name::Heap(v.into_boxed_slice())
        }
    }
}

impl Deref for Name {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq<[u8]> for Name {
    fn eq(&self, o: &[u8]) -> bool {
        self.as_bytes() == o
    }
}

impl PartialEq<&[u8]> for Name {
    fn eq(&self, o: &&[u8]) -> bool {
        self.as_bytes() == *o
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // As a Vec<u8> serializes: a sequence of u8 (not serialize_bytes).
        s.collect_seq(self.as_bytes())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(d).map(Name::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_inline_and_long_ones_are_not() {
        assert_eq!(std::mem::size_of::<Name>(), 24);
        for len in [0, 1, 21, 22, 23, 255] {
            let v: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let n = Name::from(v.as_slice());
            assert_eq!(n.as_bytes(), v.as_slice());
            assert_eq!(matches!(n, Name::Inline { .. }), len <= INLINE);
            assert_eq!(Name::from(v.clone()), n);
        }
    }

    #[test]
    fn serializes_exactly_as_a_vec() {
        for v in [b"".to_vec(), b"x".to_vec(), vec![7u8; 200]] {
            let bytes = postcard::to_allocvec(&v).unwrap();
            let n = Name::from(v.as_slice());
            assert_eq!(postcard::to_allocvec(&n).unwrap(), bytes);
            assert_eq!(postcard::from_bytes::<Name>(&bytes).unwrap(), n);
            assert_eq!(
                serde_json::to_string(&n).unwrap(),
                serde_json::to_string(&v).unwrap()
            );
        }
    }
}
