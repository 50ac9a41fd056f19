//! Inode attributes recently returned by the MDS, kept for `attr_timeout`.
//!
//! Used where the client itself needs an inode's size or mode (clipping reads,
//! O_APPEND offsets, `access`); the kernel keeps its own copy under the same
//! TTL. Bounded by an LRU.
//!
//! Only mds_client.rs stores here, and only answers that cannot be older
//! than what is cached: a read's answer (GetAttr, Lookup) is stored if no
//! change of its inode began since the read did (`Change` for this mount's
//! own mutations, `invalidate` for another mount's pushed ones), and none
//! was on its way; a mutation's answer is stored if no other change of the
//! same inode overlapped it. Without that rule a GetAttr sent just before a
//! truncate up, answered after it, left the old size here; the next read
//! was clipped to it and came back short, which the kernel takes as EOF.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;
use weft_proto::contract::Changes;
use weft_proto::Attr;

struct Inner {
    entries: LruCache<u64, (Instant, Attr)>,
    /// Ticks once per change begun, ended or pushed.
    clock: u64,
    /// The tick of each inode's latest change; every inode changed at
    /// `floor` at the latest (a clear, or an evicted tick).
    changed: LruCache<u64, u64>,
    floor: u64,
    /// This mount's mutations of each inode still on their way.
    busy: HashMap<u64, u32>,
    /// Those on their way that change too much to name (`Changes::All`).
    busy_all: u32,
}

impl Inner {
    fn last_change(&self, ino: u64) -> u64 {
        self.changed
            .peek(&ino)
            .map_or(self.floor, |t| self.floor.max(*t))
    }

    fn mark(&mut self, ino: u64) -> u64 {
        self.clock += 1;
        let tick = self.clock;
        if let Some((_, evicted)) = self.changed.push(ino, tick) {
            // Forgetting when an inode changed must not make an older answer
            // about it look fresh.
            self.floor = self.floor.max(evicted);
        }
        self.entries.pop(&ino);
        tick
    }

    fn forget_all(&mut self) {
        self.clock += 1;
        self.floor = self.clock;
        self.entries.clear();
    }
}

pub struct AttrCache {
    ttl: Duration,
    inner: Mutex<Inner>,
}

/// When a read began (`AttrCache::ticket`).
#[derive(Clone, Copy, Debug)]
pub struct ReadTicket(u64);

/// One of this mount's mutations on its way (`AttrCache::begin`); dropped
/// without `end`, it ends as failed.
pub struct Change<'a> {
    cache: &'a AttrCache,
    /// Changes too much to name: nothing read meanwhile is kept.
    all: bool,
    inodes: Vec<u64>,
    /// The tick this change began at, per inode, or None when another
    /// change of the inode was already on its way.
    began: Vec<Option<u64>>,
    ended: bool,
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.finish(&[]);
        }
    }
}

impl Change<'_> {
    /// The mutation's answer: the attributes it gave, of any of its inodes
    /// (none when it failed or answered none; several for a release's
    /// atime updates).
    pub fn end(mut self, replies: &[Attr]) {
        self.finish(replies);
    }

    fn finish(&mut self, replies: &[Attr]) {
        self.ended = true;
        let mut g = self.cache.inner.lock();
        if self.all {
            g.busy_all -= 1;
            g.forget_all();
            return;
        }
        let mut keep: Vec<&Attr> = Vec::new();
        for (ino, began) in self.inodes.iter().zip(&self.began) {
            if let Some(n) = g.busy.get_mut(ino) {
                *n -= 1;
                if *n == 0 {
                    g.busy.remove(ino);
                }
            }
            // Alone: no other change of the inode began after this one did
            // (nor was one on its way when it began).
            let alone = began.is_some_and(|t| g.last_change(*ino) == t);
            if alone {
                keep.extend(replies.iter().filter(|a| a.ino == *ino));
            }
            g.mark(*ino);
        }
        for a in keep {
            g.entries.put(a.ino, (Instant::now(), *a));
        }
    }
}

impl AttrCache {
    pub fn new(ttl: Duration, capacity: usize) -> AttrCache {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap();
        AttrCache {
            ttl,
            inner: Mutex::new(Inner {
                entries: LruCache::new(cap),
                clock: 0,
                changed: LruCache::new(cap),
                floor: 0,
                busy: HashMap::new(),
                busy_all: 0,
            }),
        }
    }

    /// The cached attributes if younger than the TTL.
    pub fn get(&self, ino: u64) -> Option<Attr> {
        self.get_at(ino, Instant::now())
    }

    fn get_at(&self, ino: u64, now: Instant) -> Option<Attr> {
        let mut g = self.inner.lock();
        match g.entries.get(&ino) {
            Some((at, a)) if now.duration_since(*at) < self.ttl => Some(*a),
            Some(_) => {
                g.entries.pop(&ino);
                None
            }
            None => None,
        }
    }

    /// Taken before a read is sent.
    pub fn ticket(&self) -> ReadTicket {
        ReadTicket(self.inner.lock().clock)
    }

    /// A read begun at `t` answered `a`.
    pub fn read_answer(&self, t: ReadTicket, a: &Attr) {
        let mut g = self.inner.lock();
        if g.last_change(a.ino) <= t.0 && !g.busy.contains_key(&a.ino) && g.busy_all == 0 {
            g.entries.put(a.ino, (Instant::now(), *a));
        }
    }

    /// Before a mutation is sent: drops what it changes.
    pub fn begin(&self, touch: &Changes) -> Option<Change<'_>> {
        let mut g = self.inner.lock();
        let inodes = match touch {
            Changes::Nothing => return None,
            Changes::All => {
                g.forget_all();
                g.busy_all += 1;
                return Some(Change {
                    cache: self,
                    all: true,
                    inodes: vec![],
                    began: vec![],
                    ended: false,
                });
            }
            Changes::Some { inodes, .. } => inodes.clone(),
        };
        let began = inodes
            .iter()
            .map(|ino| {
                let busy = g.busy.entry(*ino).or_insert(0);
                *busy += 1;
                let alone = *busy == 1;
                let tick = g.mark(*ino);
                alone.then_some(tick)
            })
            .collect();
        Some(Change {
            cache: self,
            all: false,
            inodes,
            began,
            ended: false,
        })
    }

    pub fn clear(&self) {
        self.inner.lock().forget_all();
    }

    /// The inode changed elsewhere (a push), or this mount lost track of it.
    pub fn invalidate(&self, ino: u64) {
        self.inner.lock().mark(ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ino: u64, size: u64) -> Attr {
        Attr {
            ino,
            size,
            ..Default::default()
        }
    }

    fn touch(ino: u64) -> Changes {
        Changes::Some {
            inodes: vec![ino],
            removed: vec![],
            created: None,
        }
    }

    #[test]
    fn expires_and_invalidates() {
        let c = AttrCache::new(Duration::from_secs(10), 2);
        c.read_answer(c.ticket(), &attr(7, 99));
        assert_eq!(c.get(7).unwrap().size, 99);
        assert!(c
            .get_at(7, Instant::now() + Duration::from_secs(11))
            .is_none());
        assert!(c.get(7).is_none(), "expired entry is dropped");
        c.read_answer(c.ticket(), &attr(7, 99));
        c.invalidate(7);
        assert!(c.get(7).is_none());
        // LRU bound.
        for ino in 1..=3 {
            c.read_answer(c.ticket(), &attr(ino, 0));
        }
        assert!(c.get(1).is_none());
        assert!(c.get(3).is_some());
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let c = AttrCache::new(Duration::ZERO, 8);
        c.read_answer(c.ticket(), &attr(1, 0));
        assert!(c.get(1).is_none());
    }

    /// A GetAttr sent before a truncate up and answered after it: the
    /// truncate's size stays.
    #[test]
    fn a_read_answer_older_than_a_change_is_not_kept() {
        let c = AttrCache::new(Duration::from_secs(10), 8);
        let t = c.ticket();
        let truncate = c.begin(&touch(7)).unwrap();
        truncate.end(&[attr(7, 900)]);
        assert_eq!(c.get(7).unwrap().size, 900);
        c.read_answer(t, &attr(7, 100));
        assert_eq!(c.get(7).unwrap().size, 900);
        // Nor one answered while a change is on its way.
        let change = c.begin(&touch(7)).unwrap();
        c.read_answer(c.ticket(), &attr(7, 100));
        assert!(c.get(7).is_none());
        drop(change);
        c.read_answer(c.ticket(), &attr(7, 500));
        assert_eq!(c.get(7).unwrap().size, 500);
        // Nor one older than a push.
        let t = c.ticket();
        c.invalidate(7);
        c.read_answer(t, &attr(7, 100));
        assert!(c.get(7).is_none());
        // Another inode's change does not hold this one back.
        let t = c.ticket();
        let other = c.begin(&touch(8)).unwrap();
        c.read_answer(t, &attr(7, 100));
        assert_eq!(c.get(7).unwrap().size, 100);
        other.end(&[]);
        // Nor while a change of everything is on its way, nor from before it.
        let t = c.ticket();
        let all = c.begin(&Changes::All).unwrap();
        c.read_answer(c.ticket(), &attr(7, 1));
        assert!(c.get(7).is_none());
        all.end(&[]);
        c.read_answer(t, &attr(7, 1));
        assert!(c.get(7).is_none());
    }

    /// A truncate's SetAttr and a read's atime update overlap; the MDS logs
    /// the atime update first, so its answer carries the older size.
    #[test]
    fn overlapping_changes_keep_neither_answer() {
        let c = AttrCache::new(Duration::from_secs(10), 8);
        let truncate = c.begin(&touch(7)).unwrap();
        let atime = c.begin(&touch(7)).unwrap();
        atime.end(&[attr(7, 100)]);
        assert!(c.get(7).is_none());
        truncate.end(&[attr(7, 900)]);
        assert!(c.get(7).is_none());
        let alone = c.begin(&touch(7)).unwrap();
        alone.end(&[attr(7, 900)]);
        assert_eq!(c.get(7).unwrap().size, 900);
    }

    #[test]
    fn forgetting_when_an_inode_changed_makes_no_old_answer_fresh() {
        let c = AttrCache::new(Duration::from_secs(10), 2);
        let t = c.ticket();
        c.invalidate(7);
        c.invalidate(8);
        c.invalidate(9); // 7's change time is evicted
        c.read_answer(t, &attr(7, 1));
        assert!(c.get(7).is_none());
        let t = c.ticket();
        c.clear();
        c.read_answer(t, &attr(8, 1));
        assert!(c.get(8).is_none());
    }
}
