//! How long the kernel may cache what weftfs hands it, and taking it back.
//!
//! While the MDS's push stream (coherence.rs) is live, every other mount's
//! change reaches the kernel as an invalidation within milliseconds, so
//! entries and attributes are handed out with a long TTL (`cache_timeout`);
//! otherwise with the short `entry_timeout`/`attr_timeout`, which is then the
//! visibility bound. When the stream breaks, lags or overflows, pushes may have
//! been missed: every name and inode the kernel may hold from us is
//! invalidated and TTLs fall back to short until the stream is back.
//!
//! Races, and why they are closed:
//! - A reply computed from MDS state read before another mount's change, and
//!   whose push reached the kernel before the reply did: every push (and every
//!   stream state change) bumps `gen` before its invalidation is written to
//!   the kernel. An entry reply compares `gen` with the value at its request's
//!   start before (then a short TTL) and after writing the reply (then its
//!   names and inode are invalidated again, behind the reply).
//! - getattr replies need no check: the kernel itself drops an attribute reply
//!   older than an inval_inode of that inode (fuse attr_version).
//! - Names: inval_entry takes the directory's lock, which an in-flight lookup
//!   holds, so it cannot pass a lookup reply.
//!
//! To invalidate everything on a break, weftfs tracks which names it handed
//! out per inode, and drops an inode's names when the kernel forgets it.
//!
//! Strict mode (`strict`): the MDS answers another mount's change only once
//! this mount acknowledged its push (coherence.rs) or this mount's trust
//! lease ran out (mds/src/strict.rs). So every TTL handed out is capped at the
//! remaining trust (a stopped weftfs cannot take anything back; the kernel
//! must drop it by itself before the MDS stops waiting), negative entries
//! included; a reply that raced a push gets TTL 0 (its re-invalidation would
//! come after the ack); and weftfs answers nothing from its own caches
//! without trust.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::mpsc::Sender;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// One kernel invalidation, written by the notifying thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inval {
    Entry {
        parent: u64,
        name: Vec<u8>,
    },
    /// Attributes; with `data`, every cached page as well.
    Inode {
        ino: u64,
        data: bool,
    },
    /// Strict mode: every push of batch `seq` of watch `epoch` before this
    /// one has reached the kernel; acknowledge it to the MDS.
    Barrier {
        epoch: u64,
        seq: u64,
    },
}

/// The generation an operation started under.
#[derive(Clone, Copy, Debug)]
pub struct Ticket(u64);

/// A name the kernel may hold: (parent inode, name).
type HandedName = (u64, Vec<u8>);

/// Names of one inode the kernel may hold, and its lookup count.
#[derive(Default)]
struct Handed {
    lookups: u64,
    names: Vec<HandedName>,
}

/// Names remembered per inode (hard links, renames); further names of it are
/// handed out with the short TTL only, as a break could not take them back.
const NAMES_PER_INODE: usize = 16;

pub struct KernelCache {
    attr_short: Duration,
    entry_short: Duration,
    /// 0: never hand out long TTLs.
    long: Duration,
    gen: AtomicU64,
    live: AtomicBool,
    handed: Mutex<HashMap<u64, Handed>>,
    notify: OnceLock<Sender<Inval>>,
    strict: bool,
    /// Strict mode: trust ends at `base` + this many ns (0: no trust).
    trust_until: AtomicU64,
    base: Instant,
}

impl KernelCache {
    pub fn new(
        attr_short: Duration,
        entry_short: Duration,
        long: Duration,
        strict: bool,
    ) -> KernelCache {
        // A mount that asked for no caching (TTL 0) gets none.
        let long = if attr_short.is_zero() || entry_short.is_zero() {
            Duration::ZERO
        } else {
            long
        };
        KernelCache {
            attr_short,
            entry_short,
            long,
            gen: AtomicU64::new(0),
            live: AtomicBool::new(false),
            handed: Mutex::new(HashMap::new()),
            notify: OnceLock::new(),
            strict,
            trust_until: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    pub fn strict(&self) -> bool {
        self.strict
    }

    /// Strict mode: how much longer caches may be trusted.
    fn trust_left(&self) -> Duration {
        let until = Duration::from_nanos(self.trust_until.load(SeqCst));
        until.saturating_sub(self.base.elapsed())
    }

    /// Whether weftfs may answer from its own caches (always, unless strict
    /// and the trust lease ran out).
    pub fn trusted(&self) -> bool {
        !self.strict || !self.trust_left().is_zero()
    }

    /// Strict mode: the MDS granted trust until `until` (counted by the
    /// caller from before it asked).
    pub fn extend_trust(&self, until: Instant) {
        let ns = until.saturating_duration_since(self.base).as_nanos() as u64;
        self.trust_until.fetch_max(ns, SeqCst);
    }

    fn revoke_trust(&self) {
        self.trust_until.store(0, SeqCst);
    }

    /// A TTL, in strict mode no longer than the remaining trust.
    fn cap(&self, ttl: Duration) -> Duration {
        if self.strict {
            ttl.min(self.trust_left())
        } else {
            ttl
        }
    }

    /// Whether long TTLs are handed out at all (the mount did not ask for
    /// `cache_timeout=0` or zero short TTLs).
    pub fn long_enabled(&self) -> bool {
        !self.long.is_zero()
    }

    /// Whether the kernel may keep directory listings (FOPEN_CACHE_DIR):
    /// only while pushes would take them back (the stream is live and, in
    /// strict mode, trusted), as for long TTLs. Each opendir asks again, and
    /// one answered "no" makes the kernel drop what it kept.
    pub fn listings_cacheable(&self) -> bool {
        !self.long.is_zero() && self.live.load(SeqCst) && self.trusted()
    }

    /// Where invalidations go (the thread that writes them to the kernel).
    pub fn set_notifier(&self, tx: Sender<Inval>) {
        let _ = self.notify.set(tx);
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.gen.load(SeqCst))
    }

    fn long_ok(&self, t: Ticket) -> bool {
        !self.long.is_zero() && self.live.load(SeqCst) && self.gen.load(SeqCst) == t.0
    }

    /// (attr, entry) TTLs for an entry reply of an operation started at `t`.
    pub fn entry_ttls(&self, t: Ticket) -> (Duration, Duration) {
        if self.long_ok(t) {
            (
                self.cap(self.long.max(self.attr_short)),
                self.cap(self.long.max(self.entry_short)),
            )
        } else if self.strict {
            (Duration::ZERO, Duration::ZERO)
        } else {
            (self.attr_short, self.entry_short)
        }
    }

    /// The attribute TTL for a getattr/setattr reply.
    pub fn attr_ttl(&self) -> Duration {
        if !self.long.is_zero() && self.live.load(SeqCst) {
            self.cap(self.long.max(self.attr_short))
        } else if self.strict {
            Duration::ZERO
        } else {
            self.attr_short
        }
    }

    /// The short TTL for names (negative entries always get it).
    pub fn entry_short(&self) -> Duration {
        self.cap(self.entry_short)
    }

    /// Records that the kernel gets (parent, name) → ino; call before the
    /// reply is written. False: the name could not be remembered, so it must
    /// get the short TTL.
    pub fn handed(&self, parent: u64, name: &[u8], ino: u64) -> bool {
        if ino == 0 {
            return false;
        }
        let mut map = self.handed.lock();
        let h = map.entry(ino).or_default();
        h.lookups += 1;
        if h.names.iter().any(|(p, n)| *p == parent && n == name) {
            return true;
        }
        if h.names.len() >= NAMES_PER_INODE {
            return false;
        }
        h.names.push((parent, name.to_vec()));
        true
    }

    /// TTLs for an entry reply (parent, name) → ino of an operation started
    /// at `t`, recording it.
    pub fn entry_reply(
        &self,
        t: Ticket,
        parent: u64,
        name: &[u8],
        ino: u64,
    ) -> (Duration, Duration) {
        if self.handed(parent, name, ino) {
            self.entry_ttls(t)
        } else if self.strict {
            // Not tracked: a break could not take it back.
            (Duration::ZERO, Duration::ZERO)
        } else {
            (self.attr_short, self.entry_short)
        }
    }

    /// After an entry reply was written: if anything was pushed meanwhile,
    /// take the entries back (the push may have reached the kernel first).
    pub fn after_reply(&self, t: Ticket, entries: &[(u64, Vec<u8>, u64)]) {
        if self.gen.load(SeqCst) == t.0 || entries.is_empty() {
            return;
        }
        for (parent, name, ino) in entries {
            self.send(Inval::Entry {
                parent: *parent,
                name: name.clone(),
            });
            if *ino != 0 {
                self.send(Inval::Inode {
                    ino: *ino,
                    data: false,
                });
            }
        }
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut map = self.handed.lock();
        if let Some(h) = map.get_mut(&ino) {
            h.lookups = h.lookups.saturating_sub(n);
            if h.lookups == 0 {
                map.remove(&ino);
            }
        }
    }

    /// Call before writing a pushed invalidation to the kernel.
    pub fn pushed(&self) {
        self.gen.fetch_add(1, SeqCst);
    }

    /// The push stream is up (and caches were cleared): long TTLs from now.
    pub fn stream_up(&self) {
        self.gen.fetch_add(1, SeqCst);
        self.live.store(true, SeqCst);
    }

    /// Pushes may have been missed: short TTLs, and everything the kernel may
    /// hold from us is invalidated. With `still_live` (an overflow on a stream
    /// that goes on) long TTLs resume at once for what is looked up afterwards.
    pub fn drop_all(&self, still_live: bool) {
        self.live.store(false, SeqCst);
        // Strict: pushes were missed, which the MDS may not wait for beyond
        // the lease; trust again only after a new grant.
        self.revoke_trust();
        self.gen.fetch_add(1, SeqCst);
        let handed: Vec<(u64, Vec<HandedName>)> = self
            .handed
            .lock()
            .iter()
            .map(|(ino, h)| (*ino, h.names.clone()))
            .collect();
        // The root is never looked up, so never in the map.
        self.send(Inval::Inode { ino: 1, data: true });
        for (ino, names) in handed {
            for (parent, name) in names {
                self.send(Inval::Entry { parent, name });
            }
            self.send(Inval::Inode { ino, data: true });
        }
        if still_live {
            self.stream_up();
        }
    }

    fn send(&self, inv: Inval) {
        if let Some(tx) = self.notify.get() {
            let _ = tx.send(inv);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.handed.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const L: Duration = Duration::from_secs(60);

    #[test]
    fn long_ttls_only_while_live_and_nothing_was_pushed_meanwhile() {
        let k = KernelCache::new(S, S, L, false);
        let t = k.ticket();
        assert_eq!(k.entry_ttls(t), (S, S), "not live yet");
        assert_eq!(k.attr_ttl(), S);
        k.stream_up();
        assert_eq!(k.entry_ttls(t), (S, S), "started before the stream was up");
        let t = k.ticket();
        assert_eq!(k.entry_ttls(t), (L, L));
        assert_eq!(k.attr_ttl(), L);
        k.pushed();
        assert_eq!(k.entry_ttls(t), (S, S), "a push arrived during the request");
        k.drop_all(false);
        assert_eq!(k.entry_ttls(k.ticket()), (S, S));
        assert_eq!(k.attr_ttl(), S);
    }

    #[test]
    fn zero_ttls_disable_long_ones() {
        let k = KernelCache::new(Duration::ZERO, S, L, false);
        k.stream_up();
        assert_eq!(k.entry_ttls(k.ticket()), (Duration::ZERO, S));
        assert_eq!(k.attr_ttl(), Duration::ZERO);
    }

    #[test]
    fn a_break_invalidates_every_name_and_inode_handed_out() {
        let (tx, rx) = std::sync::mpsc::channel();
        let k = KernelCache::new(S, S, L, false);
        k.set_notifier(tx);
        k.stream_up();
        k.handed(1, b"a", 10);
        k.handed(1, b"a", 10);
        k.handed(10, b"b", 11);
        k.forget(10, 1);
        assert_eq!(k.tracked(), 2, "one lookup of 10 remains");
        k.forget(11, 1);
        assert_eq!(k.tracked(), 1);
        k.drop_all(false);
        let got: Vec<Inval> = rx.try_iter().collect();
        assert!(got.contains(&Inval::Entry {
            parent: 1,
            name: b"a".to_vec()
        }));
        assert!(got.contains(&Inval::Inode {
            ino: 10,
            data: true
        }));
        assert!(got.contains(&Inval::Inode { ino: 1, data: true }));
        assert!(!got
            .iter()
            .any(|i| matches!(i, Inval::Entry { parent: 10, .. })));
    }

    #[test]
    fn a_push_during_a_reply_takes_the_entry_back() {
        let (tx, rx) = std::sync::mpsc::channel();
        let k = KernelCache::new(S, S, L, false);
        k.set_notifier(tx);
        k.stream_up();
        let t = k.ticket();
        k.after_reply(t, &[(1, b"x".to_vec(), 5)]);
        assert!(rx.try_recv().is_err(), "nothing pushed: nothing to undo");
        k.pushed();
        k.after_reply(t, &[(1, b"x".to_vec(), 5)]);
        let got: Vec<Inval> = rx.try_iter().collect();
        assert_eq!(
            got,
            vec![
                Inval::Entry {
                    parent: 1,
                    name: b"x".to_vec()
                },
                Inval::Inode {
                    ino: 5,
                    data: false
                }
            ]
        );
    }

    #[test]
    fn strict_ttls_never_outlive_the_trust_lease() {
        let k = KernelCache::new(S, S, L, true);
        k.stream_up();
        let t = k.ticket();
        assert_eq!(
            k.entry_ttls(t),
            (Duration::ZERO, Duration::ZERO),
            "no grant yet"
        );
        assert_eq!(k.attr_ttl(), Duration::ZERO);
        assert_eq!(k.entry_short(), Duration::ZERO);
        assert!(!k.trusted());
        k.extend_trust(Instant::now() + Duration::from_millis(800));
        assert!(k.trusted());
        let (a, e) = k.entry_ttls(t);
        assert!(a > Duration::from_millis(700) && a <= Duration::from_millis(800));
        assert!(e <= Duration::from_millis(800) && k.entry_short() <= Duration::from_millis(800));
        k.pushed();
        assert_eq!(
            k.entry_ttls(t),
            (Duration::ZERO, Duration::ZERO),
            "raced a push"
        );
        k.drop_all(true);
        assert!(!k.trusted(), "a break revokes trust");
        assert_eq!(k.attr_ttl(), Duration::ZERO);
    }
}
