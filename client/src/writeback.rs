//! Dirty (written, not yet stored) data of one file: a pure state machine.
//!
//! `write()` copies data in; extents are kept per chunk index and merged when
//! they overlap or touch, newer bytes winning. `take()` hands everything to a
//! flush. `truncate()` drops bytes at or beyond a new size.
//!
//! Invariants (checked by `check_invariants` in tests):
//! - every extent lies inside its chunk: `off + len <= chunk_size`;
//! - extents of one chunk are disjoint and never adjacent (they would have merged);
//! - no extent is empty;
//! - `bytes` is the sum of extent lengths and `end` the largest file offset + 1
//!   covered by any extent (0 when empty).

use std::collections::BTreeMap;

/// The dirty extents of one chunk, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkExtents {
    pub index: u64,
    /// (offset within the chunk, bytes), ascending, disjoint.
    pub extents: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug)]
pub struct DirtyBuffer {
    chunk_size: u64,
    chunks: BTreeMap<u64, BTreeMap<u64, Vec<u8>>>,
    bytes: u64,
}

impl DirtyBuffer {
    pub fn new(chunk_size: u64) -> DirtyBuffer {
        assert!(chunk_size > 0);
        DirtyBuffer {
            chunk_size,
            chunks: BTreeMap::new(),
            bytes: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes held (memory accounting).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// File offset just past the last dirty byte, 0 when empty.
    pub fn end(&self) -> u64 {
        self.chunks
            .iter()
            .next_back()
            .and_then(|(idx, m)| {
                m.iter()
                    .next_back()
                    .map(|(o, d)| idx * self.chunk_size + o + d.len() as u64)
            })
            .unwrap_or(0)
    }

    /// Records `data` at file `offset`. Returns the change in bytes held
    /// (can be less than data.len() when it overwrote dirty bytes).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> u64 {
        let before = self.bytes;
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = pos / self.chunk_size;
            let off = pos % self.chunk_size;
            let n = ((self.chunk_size - off) as usize).min(rest.len());
            let (piece, tail) = rest.split_at(n);
            let chunk = self.chunks.entry(index).or_default();
            let old = sum(chunk);
            insert_extent(chunk, off, piece);
            self.bytes = self.bytes - old + sum(chunk);
            rest = tail;
            pos += n as u64;
        }
        self.bytes - before
    }

    /// Drops dirty bytes at file offsets >= `size`. Returns bytes freed.
    pub fn truncate(&mut self, size: u64) -> u64 {
        let before = self.bytes;
        let first_dropped = size.div_ceil(self.chunk_size);
        let gone: Vec<u64> = self
            .chunks
            .range(first_dropped..)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            let m = self.chunks.remove(&k).unwrap();
            self.bytes -= sum(&m);
        }
        if !size.is_multiple_of(self.chunk_size) {
            let index = size / self.chunk_size;
            let cut = size % self.chunk_size;
            if let Some(m) = self.chunks.get_mut(&index) {
                let old = sum(m);
                let keys: Vec<u64> = m.keys().copied().collect();
                for k in keys {
                    if k >= cut {
                        m.remove(&k);
                    } else if let Some(d) = m.get_mut(&k) {
                        if k + d.len() as u64 > cut {
                            d.truncate((cut - k) as usize);
                        }
                    }
                }
                let new = sum(m);
                self.bytes = self.bytes - old + new;
                if m.is_empty() {
                    self.chunks.remove(&index);
                }
            }
        }
        before - self.bytes
    }

    /// Removes and returns everything, by ascending chunk index.
    pub fn take(&mut self) -> Vec<ChunkExtents> {
        self.bytes = 0;
        std::mem::take(&mut self.chunks)
            .into_iter()
            .map(|(index, m)| ChunkExtents {
                index,
                extents: m.into_iter().collect(),
            })
            .collect()
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        let mut total = 0;
        for m in self.chunks.values() {
            assert!(!m.is_empty(), "empty chunk map kept");
            let mut prev_end: Option<u64> = None;
            for (o, d) in m {
                assert!(!d.is_empty(), "empty extent");
                assert!(
                    o + d.len() as u64 <= self.chunk_size,
                    "extent crosses chunk"
                );
                if let Some(pe) = prev_end {
                    assert!(*o > pe, "extents overlap or touch: {pe} {o}");
                }
                prev_end = Some(o + d.len() as u64);
                total += d.len() as u64;
            }
        }
        assert_eq!(total, self.bytes);
    }
}

fn sum(m: &BTreeMap<u64, Vec<u8>>) -> u64 {
    m.values().map(|d| d.len() as u64).sum()
}

/// Inserts [off, off+data.len()) into a disjoint, non-adjacent extent map,
/// merging with every extent it overlaps or touches. Appending right after an
/// existing extent extends that extent's Vec in place (amortised O(len)), which
/// is the common sequential-write case.
fn insert_extent(m: &mut BTreeMap<u64, Vec<u8>>, off: u64, data: &[u8]) {
    let end = off + data.len() as u64;
    // The extent starting before `off` that reaches it, if any.
    let left = m
        .range(..off)
        .next_back()
        .filter(|(s, d)| *s + d.len() as u64 >= off)
        .map(|(s, _)| *s);
    // Extents starting within [off, end] (touching at `end` merges too).
    let inner: Vec<u64> = m.range(off..=end).map(|(s, _)| *s).collect();
    let start = left.unwrap_or(off);
    let mut buf = match left {
        Some(s) => m.remove(&s).unwrap(),
        None => Vec::with_capacity(data.len()),
    };
    for s in inner {
        let d = m.remove(&s).unwrap();
        let rel = (s - start) as usize;
        if buf.len() < rel + d.len() {
            buf.resize(rel + d.len(), 0);
        }
        buf[rel..rel + d.len()].copy_from_slice(&d);
    }
    let rel = (off - start) as usize;
    if buf.len() < rel + data.len() {
        buf.resize(rel + data.len(), 0);
    }
    buf[rel..rel + data.len()].copy_from_slice(data);
    m.insert(start, buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reference model: a plain byte map.
    fn model_apply(model: &mut BTreeMap<u64, u8>, off: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            model.insert(off + i as u64, *b);
        }
    }

    fn flatten(chunks: &[ChunkExtents], cs: u64) -> BTreeMap<u64, u8> {
        let mut m = BTreeMap::new();
        for c in chunks {
            for (o, d) in &c.extents {
                for (i, b) in d.iter().enumerate() {
                    assert!(m.insert(c.index * cs + o + i as u64, *b).is_none());
                }
            }
        }
        m
    }

    #[test]
    fn adjacent_and_overlapping_writes_merge() {
        let mut b = DirtyBuffer::new(100);
        assert_eq!(b.write(10, b"aaaa"), 4);
        assert_eq!(b.write(14, b"bb"), 2); // touches: merges
        assert_eq!(b.write(8, b"ccc"), 2); // overlaps 1 byte at the front
        assert_eq!(b.write(30, b"zz"), 2); // separate
        b.check_invariants();
        assert_eq!(b.bytes(), 10);
        assert_eq!(b.end(), 32);
        let t = b.take();
        assert_eq!(
            t,
            vec![ChunkExtents {
                index: 0,
                extents: vec![(8, b"cccaaabb".to_vec()), (30, b"zz".to_vec())],
            }]
        );
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
        assert_eq!(b.end(), 0);
    }

    #[test]
    fn a_write_bridging_two_extents_merges_all_three() {
        let mut b = DirtyBuffer::new(100);
        b.write(0, b"xx");
        b.write(5, b"yy");
        b.write(1, b"1234567");
        b.check_invariants();
        assert_eq!(b.take()[0].extents, vec![(0, b"x1234567".to_vec())]);
    }

    #[test]
    fn a_write_inside_an_extent_overwrites() {
        let mut b = DirtyBuffer::new(100);
        b.write(0, b"0123456789");
        assert_eq!(b.write(3, b"AB"), 0);
        b.check_invariants();
        assert_eq!(b.take()[0].extents, vec![(0, b"012AB56789".to_vec())]);
    }

    #[test]
    fn splits_at_chunk_boundaries() {
        let mut b = DirtyBuffer::new(8);
        let data: Vec<u8> = (0..20).collect();
        b.write(5, &data); // file bytes 5..25: chunks 0,1,2,3
        b.check_invariants();
        assert_eq!(b.end(), 25);
        assert_eq!(b.bytes(), 20);
        let t = b.take();
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].index, 0);
        assert_eq!(t[0].extents, vec![(5, vec![0, 1, 2])]);
        assert_eq!(t[1].index, 1);
        assert_eq!(t[1].extents, vec![(0, (3..11).collect::<Vec<u8>>())]);
        assert_eq!(t[2].index, 2);
        assert_eq!(t[2].extents, vec![(0, (11..19).collect::<Vec<u8>>())]);
        assert_eq!(t[3].index, 3);
        assert_eq!(t[3].extents, vec![(0, vec![19])]);
        // Touching across a chunk boundary does NOT merge across chunks.
        let mut b = DirtyBuffer::new(8);
        b.write(6, b"ab");
        b.write(8, b"cd");
        b.check_invariants();
        let t = b.take();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].extents, vec![(6, b"ab".to_vec())]);
        assert_eq!(t[1].extents, vec![(0, b"cd".to_vec())]);
    }

    #[test]
    fn truncate_drops_tail() {
        let mut b = DirtyBuffer::new(10);
        b.write(0, &[1; 35]);
        assert_eq!(b.truncate(13), 22);
        b.check_invariants();
        assert_eq!(b.end(), 13);
        assert_eq!(b.bytes(), 13);
        assert_eq!(b.truncate(20), 0);
        assert_eq!(b.truncate(10), 3);
        b.check_invariants();
        assert_eq!(b.end(), 10);
        b.write(15, b"q");
        assert_eq!(b.truncate(12), 1);
        assert_eq!(b.truncate(0), 10);
        assert!(b.is_empty());
        b.check_invariants();
    }

    #[test]
    fn randomised_against_model() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..200 {
            let cs = rng.random_range(1..40u64);
            let mut b = DirtyBuffer::new(cs);
            let mut model = BTreeMap::new();
            for _ in 0..rng.random_range(1..30) {
                if rng.random_bool(0.15) {
                    let size = rng.random_range(0..200u64);
                    b.truncate(size);
                    model.retain(|k, _| *k < size);
                } else {
                    let off = rng.random_range(0..150u64);
                    let len = rng.random_range(1..60usize);
                    let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    b.write(off, &data);
                    model_apply(&mut model, off, &data);
                }
                b.check_invariants();
                let end = model.keys().next_back().map(|k| k + 1).unwrap_or(0);
                assert_eq!(b.end(), end, "round {round}");
                assert_eq!(b.bytes(), model.len() as u64, "round {round}");
            }
            assert_eq!(flatten(&b.take(), cs), model, "round {round}");
        }
    }
}
