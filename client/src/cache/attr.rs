//! Inode attributes recently returned by the MDS, kept for `attr_timeout`.
//!
//! Used where the client itself needs an inode's size or mode (clipping reads,
//! `access`); the kernel keeps its own copy under the same TTL. Every MDS reply
//! carrying an `Attr` refreshes the entry. Bounded by an LRU.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;
use weft_proto::Attr;

pub struct AttrCache {
    ttl: Duration,
    map: Mutex<LruCache<u64, (Instant, Attr)>>,
}

impl AttrCache {
    pub fn new(ttl: Duration, capacity: usize) -> AttrCache {
        AttrCache {
            ttl,
            map: Mutex::new(LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap())),
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
    }

    pub fn invalidate(&self, ino: u64) {
        self.map.lock().pop(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
