//! Chunk locations of files: (ino, chunk index) → `ChunkLoc`, in an LRU.
//!
//! Filled by `GetChunks` (several indexes per call), consulted by every read.
//! A location is dropped when a chunk daemon says it is wrong (stale version,
//! replica missing), when the file is truncated or reopened (close-to-open
//! consistency: another client may have written), when this mount allocates
//! the chunk anew, and when the LRU evicts it. The replica that last served a
//! read is moved to the front of the entry's replica list so later reads try
//! it first.
//!
//! Invariant: an answer asked for before one of the file's invalidations is
//! never cached after it. Every invalidation gives the file a new stamp, and
//! `put` takes the stamp its caller read before asking the MDS. Without
//! this, a GetChunks answer still on its way when a flush allocated the
//! chunk would cache the old hole, and reads of the chunk would return zeros
//! with no daemon asked, so nothing would ever say it is wrong.
//!
//! A packed file's location is its needle (`ChunkList.packed`), kept beside
//! and dropped with its chunk locations (index 0's, as the needle stands
//! for chunk 0), under the same stamps.

use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;
use weft_proto::{ChunkList, ChunkLoc, Needle};

pub struct ChunkLocCache {
    inner: Mutex<Inner>,
}

struct Inner {
    map: LruCache<(u64, u64), ChunkLoc>,
    /// Packed files' needles.
    needles: LruCache<u64, Needle>,
    /// Per file, the stamp of its latest invalidation.
    stamps: LruCache<u64, u64>,
    /// Stamps handed out so far.
    last: u64,
    /// The stamp of a file not in `stamps`: at least that of every file the
    /// LRU forgot, so a forgotten invalidation still refuses older answers.
    floor: u64,
}

impl Inner {
    fn stamp(&mut self, ino: u64) -> u64 {
        self.stamps.get(&ino).copied().unwrap_or(self.floor)
    }

    fn bump(&mut self, ino: u64) {
        self.last += 1;
        if let Some((gone, s)) = self.stamps.push(ino, self.last) {
            if gone != ino {
                self.floor = self.floor.max(s);
            }
        }
    }

    fn put_all(&mut self, ino: u64, list: &ChunkList) {
        if let Some(n) = &list.packed {
            self.needles.put(ino, n.clone());
        }
        for loc in &list.chunks {
            self.map.put((ino, loc.index), loc.clone());
        }
    }

    fn drop_file(&mut self, ino: u64) {
        self.needles.pop(&ino);
        let keys: Vec<_> = self
            .map
            .iter()
            .filter(|((i, _), _)| *i == ino)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.map.pop(&k);
        }
    }
}

impl ChunkLocCache {
    pub fn new(capacity: usize) -> ChunkLocCache {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap();
        ChunkLocCache {
            inner: Mutex::new(Inner {
                map: LruCache::new(cap),
                needles: LruCache::new(cap),
                stamps: LruCache::new(cap),
                last: 0,
                floor: 0,
            }),
        }
    }

    /// The location, unless its capability is about to run out (then it
    /// is dropped, and the caller asks the MDS again: a renewal).
    pub fn get(&self, ino: u64, index: u64) -> Option<ChunkLoc> {
        let mut g = self.inner.lock();
        let loc = g.map.get(&(ino, index))?;
        if !crate::chunk_io::cap_fresh(loc) {
            g.map.pop(&(ino, index));
            return None;
        }
        Some(loc.clone())
    }

    /// The file's stamp, to read before asking the MDS for its locations
    /// and pass to `put` with the answer.
    pub fn stamp(&self, ino: u64) -> u64 {
        self.inner.lock().stamp(ino)
    }

    /// Caches `loc` unless the file was invalidated since `stamp` was read
    /// (the answer may predate the change). Returns whether it did.
    pub fn put(&self, ino: u64, loc: ChunkLoc, stamp: u64) -> bool {
        let mut g = self.inner.lock();
        let fresh = g.stamp(ino) == stamp;
        if fresh {
            g.map.put((ino, loc.index), loc);
        }
        fresh
    }

    /// Everything a `GetChunks` answer says about file `ino` (its chunks'
    /// locations, a packed file's needle), unless the file was invalidated
    /// since `stamp` was read. Returns whether it cached it.
    pub fn put_list(&self, ino: u64, list: &ChunkList, stamp: u64) -> bool {
        let mut g = self.inner.lock();
        let fresh = g.stamp(ino) == stamp;
        if fresh {
            Inner::put_all(&mut g, ino, list);
        }
        fresh
    }

    /// Forgets every location of `ino`, then caches what `list` says unless
    /// the file was invalidated since `stamp` was read (an open's answer).
    pub fn replace_file(&self, ino: u64, list: Option<&ChunkList>, stamp: u64) {
        let mut g = self.inner.lock();
        let fresh = g.stamp(ino) == stamp;
        g.drop_file(ino);
        g.bump(ino);
        if let (true, Some(list)) = (fresh, list) {
            Inner::put_all(&mut g, ino, list);
        }
    }

    /// The needle of packed file `ino`, unless its capability is about to
    /// run out.
    pub fn needle(&self, ino: u64) -> Option<Needle> {
        let mut g = self.inner.lock();
        let n = g.needles.get(&ino)?;
        if !n.chunk.as_ref().is_some_and(crate::chunk_io::cap_fresh) {
            g.needles.pop(&ino);
            return None;
        }
        Some(n.clone())
    }

    pub fn clear(&self) {
        let mut g = self.inner.lock();
        g.map.clear();
        g.needles.clear();
        g.stamps.clear();
        g.last += 1;
        g.floor = g.last;
    }

    pub fn invalidate(&self, ino: u64, index: u64) {
        let mut g = self.inner.lock();
        g.map.pop(&(ino, index));
        if index == 0 {
            g.needles.pop(&ino);
        }
        g.bump(ino);
    }

    /// Forgets every location of `ino`. Linear in the cache size, which is
    /// bounded; this happens on truncate and open, not per I/O.
    pub fn invalidate_file(&self, ino: u64) {
        let mut g = self.inner.lock();
        g.drop_file(ino);
        g.bump(ino);
    }

    /// Remembers that `addr` served chunk (ino, index) well: try it first next time.
    pub fn prefer(&self, ino: u64, index: u64, addr: &str) {
        let mut g = self.inner.lock();
        if let Some(loc) = g.map.peek_mut(&(ino, index)) {
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

    fn list(chunks: Vec<ChunkLoc>) -> ChunkList {
        ChunkList {
            chunks,
            ..Default::default()
        }
    }

    #[test]
    fn per_file_invalidation() {
        let c = ChunkLocCache::new(16);
        c.put(1, loc(0, &["a"]), c.stamp(1));
        c.put(1, loc(1, &["a"]), c.stamp(1));
        c.put(2, loc(0, &["b"]), c.stamp(2));
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
        assert!(c.put_list(1, &list(1), c.stamp(1)));
        assert!(c.put_list(2, &list(2), c.stamp(2)));
        assert_eq!(c.needle(1).unwrap().offset, 64);
        c.invalidate(1, 1);
        assert!(c.needle(1).is_some());
        c.invalidate(1, 0);
        assert!(c.needle(1).is_none());
        let old = c.stamp(2);
        c.invalidate_file(2);
        assert!(c.needle(2).is_none());
        // An answer asked for before the invalidation is not cached after it.
        assert!(!c.put_list(2, &list(2), old));
        assert!(c.needle(2).is_none());
    }

    #[test]
    fn preferred_replica_moves_first() {
        let c = ChunkLocCache::new(4);
        c.put(1, loc(3, &["a", "b", "c"]), c.stamp(1));
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

    #[test]
    fn an_answer_asked_for_before_an_invalidation_is_not_cached() {
        let c = ChunkLocCache::new(16);
        let hole = ChunkLoc {
            index: 1,
            ..Default::default()
        };
        // A read asks for chunk 1 (a hole); meanwhile a flush allocates it.
        let asked = c.stamp(7);
        c.invalidate(7, 1);
        assert!(!c.put(7, hole.clone(), asked));
        assert!(c.get(7, 1).is_none());
        // Same with the whole file (truncate, a push from another mount).
        let asked = c.stamp(7);
        c.invalidate_file(7);
        assert!(!c.put(7, hole.clone(), asked));
        assert!(c.get(7, 1).is_none());
        // Another file's invalidation does not refuse it.
        let asked = c.stamp(7);
        c.invalidate_file(8);
        assert!(c.put(7, hole, asked));
        assert_eq!(c.get(7, 1).unwrap().chunk_id, 0);
    }

    #[test]
    fn a_forgotten_invalidation_still_refuses_older_answers() {
        // Room for two files' stamps: the third invalidated file pushes the
        // first one's out.
        let c = ChunkLocCache::new(2);
        let asked = c.stamp(1);
        c.invalidate_file(1);
        c.invalidate_file(2);
        c.invalidate_file(3);
        assert!(!c.put(1, loc(0, &["a"]), asked));
        let asked = c.stamp(1);
        assert!(c.put(1, loc(0, &["a"]), asked));
        let asked = c.stamp(4);
        c.clear();
        assert!(!c.put(4, loc(0, &["a"]), asked));
    }

    #[test]
    fn an_open_answer_replaces_the_file_unless_it_raced() {
        let c = ChunkLocCache::new(16);
        c.put(1, loc(5, &["old"]), c.stamp(1));
        let asked = c.stamp(1);
        c.replace_file(1, Some(&list(vec![loc(0, &["a"])])), asked);
        assert!(c.get(1, 5).is_none());
        assert_eq!(c.get(1, 0).unwrap().replicas[0].addr, "a");
        let asked = c.stamp(1);
        c.invalidate(1, 2);
        c.replace_file(1, Some(&list(vec![loc(3, &["b"])])), asked);
        assert!(c.get(1, 0).is_none() && c.get(1, 3).is_none());
    }
}
