//! Inode attributes recently returned by the MDS, kept for `attr_timeout`.
//!
//! Used where the client itself needs an inode's size or mode (clipping reads,
//! `access`); the kernel keeps its own copy under the same TTL. Every MDS reply
//! carrying an `Attr` refreshes the entry. Bounded by an LRU.
//!
//! It also remembers, for the same TTL, inodes known to have no
//! `security.capability` xattr: the kernel asks for it before every write(2)
//! to decide whether to drop file capabilities (FUSE never marks an inode
//! S_NOSEC), and one MDS round trip per small write would bound the write rate
//! by the MDS's latency. Any change of the inode's xattrs (here: `invalidate`,
//! called on setxattr/removexattr and by the coherence stream) forgets it.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;
use weft_proto::Attr;

pub struct AttrCache {
    ttl: Duration,
    map: Mutex<LruCache<u64, (Instant, Attr)>>,
    no_caps: Mutex<LruCache<u64, Instant>>,
}

impl AttrCache {
    pub fn new(ttl: Duration, capacity: usize) -> AttrCache {
        AttrCache {
            ttl,
            map: Mutex::new(LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap())),
            no_caps: Mutex::new(LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap())),
        }
    }

    /// The cached attributes if younger than the TTL.
    pub fn get(&self, ino: u64) -> Option<Attr> {
        self.get_at(ino, Instant::now())
    }

    fn get_at(&self, ino: u64, now: Instant) -> Option<Attr> {
        let mut map = self.map.lock();
        match map.get(&ino) {
            Some((at, a)) if now.duration_since(*at) < self.ttl => Some(*a),
            Some(_) => {
                map.pop(&ino);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, attr: &Attr) {
        self.map.lock().put(attr.ino, (Instant::now(), *attr));
    }

    pub fn clear(&self) {
        self.map.lock().clear();
        self.no_caps.lock().clear();
    }

    pub fn invalidate(&self, ino: u64) {
        self.map.lock().pop(&ino);
        self.no_caps.lock().pop(&ino);
    }

    /// The MDS said `ino` has no security.capability xattr.
    pub fn put_no_caps(&self, ino: u64) {
        self.no_caps.lock().put(ino, Instant::now());
    }

    /// Whether `ino` was seen without security.capability within the TTL.
    pub fn no_caps(&self, ino: u64) -> bool {
        let mut m = self.no_caps.lock();
        match m.get(&ino) {
            Some(at) if at.elapsed() < self.ttl => true,
            Some(_) => {
                m.pop(&ino);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_remembered_until_invalidated() {
        let c = AttrCache::new(Duration::from_secs(10), 4);
        assert!(!c.no_caps(3));
        c.put_no_caps(3);
        assert!(c.no_caps(3));
        c.invalidate(3);
        assert!(!c.no_caps(3));
        let zero = AttrCache::new(Duration::ZERO, 4);
        zero.put_no_caps(3);
        assert!(!zero.no_caps(3), "attr_timeout=0 caches nothing");
    }

    #[test]
    fn expires_and_invalidates() {
        let c = AttrCache::new(Duration::from_secs(10), 2);
        let a = Attr {
            ino: 7,
            size: 99,
            ..Default::default()
        };
        c.put(&a);
        assert_eq!(c.get(7).unwrap().size, 99);
        assert!(c
            .get_at(7, Instant::now() + Duration::from_secs(11))
            .is_none());
        assert!(c.get(7).is_none(), "expired entry is dropped");
        c.put(&a);
        c.invalidate(7);
        assert!(c.get(7).is_none());
        // LRU bound.
        for ino in 1..=3 {
            c.put(&Attr {
                ino,
                ..Default::default()
            });
        }
        assert!(c.get(1).is_none());
        assert!(c.get(3).is_some());
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let c = AttrCache::new(Duration::ZERO, 8);
        c.put(&Attr {
            ino: 1,
            ..Default::default()
        });
        assert!(c.get(1).is_none());
    }
}
