//! Chunk locations of files: (ino, chunk index) → `ChunkLoc`, in an LRU.
//!
//! Filled by `GetChunks` (several indexes per call), consulted by every read.
//! A location is dropped when a chunk daemon says it is wrong (stale version,
//! replica missing), when the file is truncated or reopened (close-to-open
//! consistency: another client may have written), and when the LRU evicts it.
//! The replica that last served a read is moved to the front of the entry's
//! replica list so later reads try it first.
//!
//! A packed file's location is its needle (`ChunkList.packed`), kept beside
//! and dropped with its chunk locations (index 0's, as the needle stands
//! for chunk 0).

use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;
use weft_proto::{ChunkList, ChunkLoc, Needle};

pub struct ChunkLocCache {
    map: Mutex<LruCache<(u64, u64), ChunkLoc>>,
    needles: Mutex<LruCache<u64, Needle>>,
}

impl ChunkLocCache {
    pub fn new(capacity: usize) -> ChunkLocCache {
        ChunkLocCache {
            map: Mutex::new(LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap())),
            needles: Mutex::new(LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap())),
        }
    }

    /// Everything a `GetChunks` (or open) answer says about file `ino`.
    pub fn put_list(&self, ino: u64, list: ChunkList) {
        if let Some(n) = list.packed {
            self.needles.lock().put(ino, n);
        }
        for loc in list.chunks {
            self.put(ino, loc);
        }
    }

    /// The needle of packed file `ino`, unless its capability is about to
    /// run out.
    pub fn needle(&self, ino: u64) -> Option<Needle> {
        let mut needles = self.needles.lock();
        let n = needles.get(&ino)?;
        if !n.chunk.as_ref().is_some_and(crate::chunk_io::cap_fresh) {
            needles.pop(&ino);
            return None;
        }
        Some(n.clone())
    }

    /// The location, unless its capability is about to run out (then it
    /// is dropped, and the caller asks the MDS again: a renewal).
    pub fn get(&self, ino: u64, index: u64) -> Option<ChunkLoc> {
        let mut map = self.map.lock();
        let loc = map.get(&(ino, index))?;
        if !crate::chunk_io::cap_fresh(loc) {
            map.pop(&(ino, index));
            return None;
        }
        Some(loc.clone())
    }

    pub fn put(&self, ino: u64, loc: ChunkLoc) {
        self.map.lock().put((ino, loc.index), loc);
    }

    pub fn clear(&self) {
        self.map.lock().clear();
        self.needles.lock().clear();
    }

    pub fn invalidate(&self, ino: u64, index: u64) {
        self.map.lock().pop(&(ino, index));
        if index == 0 {
            self.needles.lock().pop(&ino);
        }
    }

    /// Forgets every location of `ino`. Linear in the cache size, which is
    /// bounded; this happens on truncate and open, not per I/O.
    pub fn invalidate_file(&self, ino: u64) {
        self.needles.lock().pop(&ino);
        let mut map = self.map.lock();
        let keys: Vec<_> = map
            .iter()
            .filter(|((i, _), _)| *i == ino)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            map.pop(&k);
        }
    }

    /// Remembers that `addr` served chunk (ino, index) well: try it first next time.
    pub fn prefer(&self, ino: u64, index: u64, addr: &str) {
        let mut map = self.map.lock();
        if let Some(loc) = map.peek_mut(&(ino, index)) {
            if let Some(pos) = loc.replicas.iter().position(|r| r.addr == addr) {
                if pos != 0 {
                    let r = loc.replicas.remove(pos);
                    loc.replicas.insert(0, r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::Replica;

    fn loc(index: u64, addrs: &[&str]) -> ChunkLoc {
        ChunkLoc {
            index,
            chunk_id: 100 + index,
            version: 1,
            replicas: addrs
                .iter()
                .enumerate()
                .map(|(i, a)| Replica {
                    chunkd_id: i as u64,
                    addr: a.to_string(),
                })
                .collect(),
            cap: None,
        }
    }

    #[test]
    fn per_file_invalidation() {
        let c = ChunkLocCache::new(16);
        c.put(1, loc(0, &["a"]));
        c.put(1, loc(1, &["a"]));
        c.put(2, loc(0, &["b"]));
        c.invalidate_file(1);
        assert!(c.get(1, 0).is_none() && c.get(1, 1).is_none());
        assert_eq!(c.get(2, 0).unwrap().chunk_id, 100);
        c.invalidate(2, 0);
        assert!(c.get(2, 0).is_none());
    }

    #[test]
    fn needles_go_with_the_file() {
        let c = ChunkLocCache::new(16);
        let list = |ino: u64| ChunkList {
            packed: Some(Needle {
                chunk: Some(loc(0, &["a"])),
                offset: 64 * ino,
                len: 5,
            }),
            ..Default::default()
        };
        c.put_list(1, list(1));
        c.put_list(2, list(2));
        assert_eq!(c.needle(1).unwrap().offset, 64);
        c.invalidate(1, 1);
        assert!(c.needle(1).is_some());
        c.invalidate(1, 0);
        assert!(c.needle(1).is_none());
        c.invalidate_file(2);
        assert!(c.needle(2).is_none());
    }

    #[test]
    fn preferred_replica_moves_first() {
        let c = ChunkLocCache::new(4);
        c.put(1, loc(3, &["a", "b", "c"]));
        c.prefer(1, 3, "c");
        let addrs: Vec<_> = c
            .get(1, 3)
            .unwrap()
            .replicas
            .into_iter()
            .map(|r| r.addr)
            .collect();
        assert_eq!(addrs, ["c", "a", "b"]);
        c.prefer(1, 3, "zz");
        assert_eq!(c.get(1, 3).unwrap().replicas[0].addr, "c");
    }
}
