//! Strict coherence (mount option `strict`): which mutations must wait for
//! which strict watchers. Pure: no I/O, the caller passes the time.
//!
//! A strict mount acknowledges each pushed batch once the kernel's copies are
//! gone (notify_inval_* returned). The MDS answers a mutation only after every
//! strict watcher of another session acknowledged the batch carrying it, or
//! once that watcher's trust lease ran out.
//!
//! The lease is what makes a dead, stopped or cut-off mount safe to stop
//! waiting for. An Ack is granted (lease renewed to `now + LEASE`) only when
//! the watcher acknowledged every batch it owes, and the mount counts its own
//! trust from before it sent the Ack, so its trust always ends before the
//! MDS's `lease_until`. Hence for any batch a watcher has not acknowledged, its
//! last grant came before that batch was published, and by `lease_until` (at
//! most `LEASE` after the publish) the mount no longer trusts any cache: it
//! hands the kernel TTLs no longer than its remaining trust, and answers
//! nothing from its own caches without trust.
//!
//! A watch stream that ends stays in the table until its lease runs out (the
//! mount may still trust its caches until then), owing every later batch.
//! After a restart with state, the MDS knows nothing of the mounts that trust
//! it, so mutations answered during the first `LEASE` wait until it is over.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a granted Ack lets a strict mount trust its caches. At least the
/// mounts' stream LAG (700 ms), and a few of their 200 ms renewals, so a
/// loaded machine does not make a live mount lapse.
pub const LEASE: Duration = Duration::from_millis(1000);

struct Watcher {
    session: u64,
    /// Highest batch acknowledged.
    acked: u64,
    /// Highest batch that carried another session's change.
    owed: u64,
    lease_until: Instant,
    /// The stream ended: no more acks, kept until the lease runs out.
    gone: bool,
}

pub struct Table {
    seq: u64,
    next_id: u64,
    watchers: HashMap<u64, Watcher>,
    grace_until: Instant,
}

impl Table {
    /// `restarted`: the MDS came up with state, so mounts may still trust
    /// caches granted by the previous run.
    pub fn new(now: Instant, restarted: bool) -> Table {
        Table {
            seq: 0,
            next_id: 1,
            watchers: HashMap::new(),
            grace_until: if restarted { now + LEASE } else { now },
        }
    }

    /// A new strict watch of `session`; no trust until its first grant.
    pub fn register(&mut self, session: u64, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.watchers.insert(
            id,
            Watcher {
                session,
                acked: 0,
                owed: 0,
                lease_until: now,
                gone: false,
            },
        );
        id
    }

    pub fn gone(&mut self, id: u64) {
        if let Some(w) = self.watchers.get_mut(&id) {
            w.gone = true;
        }
    }

    /// Numbers the next batch, whose non-empty events came from `origins`;
    /// every strict watcher of another session owes it.
    pub fn publish(&mut self, origins: &[u64], now: Instant) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        self.watchers
            .retain(|_, w| !(w.gone && w.lease_until <= now));
        for w in self.watchers.values_mut() {
            if origins.iter().any(|o| *o != w.session) {
                w.owed = seq;
            }
        }
        seq
    }

    /// Watcher `id` has every batch up to `seq` in its kernel. True: its lease
    /// is renewed from `now`.
    pub fn ack(&mut self, id: u64, seq: u64, now: Instant) -> bool {
        let Some(w) = self.watchers.get_mut(&id) else {
            return false;
        };
        w.acked = w.acked.max(seq);
        if w.gone || w.acked < w.owed {
            return false;
        }
        w.lease_until = now + LEASE;
        true
    }

    /// Whether the answer to a change by `origin` in batch `seq` must still
    /// wait: None when it may go now, else the next time to look again (an
    /// ack may come sooner).
    pub fn pending(&self, seq: u64, origin: u64, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = (now < self.grace_until).then_some(self.grace_until);
        for w in self.watchers.values() {
            if w.session != origin && w.owed >= seq && w.acked < seq && now < w.lease_until {
                next = Some(next.map_or(w.lease_until, |n| n.min(w.lease_until)));
            }
        }
        next
    }

    /// Whether any answer could have to wait (else the committer answers at once).
    pub fn any(&self, now: Instant) -> bool {
        !self.watchers.is_empty() || now < self.grace_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_change_waits_for_every_other_strict_watcher_until_it_acks() {
        let t0 = Instant::now();
        let mut t = Table::new(t0, false);
        let b = t.register(2, t0);
        let c = t.register(3, t0);
        assert!(t.ack(b, 0, t0), "nothing owed: granted");
        assert!(t.ack(c, 0, t0));
        let seq = t.publish(&[1], t0 + MS);
        assert!(t.pending(seq, 1, t0 + MS).is_some());
        assert!(t.ack(b, seq, t0 + 2 * MS));
        assert!(t.pending(seq, 1, t0 + 2 * MS).is_some(), "c has not acked");
        t.ack(c, seq, t0 + 3 * MS);
        assert_eq!(t.pending(seq, 1, t0 + 3 * MS), None);
    }

    #[test]
    fn a_watcher_never_waits_for_itself() {
        let t0 = Instant::now();
        let mut t = Table::new(t0, false);
        let b = t.register(2, t0);
        t.ack(b, 0, t0);
        let seq = t.publish(&[2], t0);
        assert_eq!(t.pending(seq, 2, t0), None);
        // b does not owe a batch of only its own changes: still granted.
        assert!(t.ack(b, 0, t0 + MS));
    }

    #[test]
    fn a_silent_watcher_is_waited_for_until_its_lease_ends_and_no_longer() {
        let t0 = Instant::now();
        let mut t = Table::new(t0, false);
        let b = t.register(2, t0);
        t.ack(b, 0, t0);
        let seq = t.publish(&[1], t0 + 10 * MS);
        assert_eq!(t.pending(seq, 1, t0 + 10 * MS), Some(t0 + LEASE));
        assert_eq!(t.pending(seq, 1, t0 + LEASE), None);
        // Renewal needs the owed batch acked: a mount that missed it cannot
        // extend its trust past what the waiter assumed.
        assert!(!t.ack(b, seq - 1, t0 + 20 * MS));
        assert_eq!(t.pending(seq, 1, t0 + 20 * MS), Some(t0 + LEASE));
    }

    #[test]
    fn a_watcher_without_a_grant_is_not_waited_for() {
        let t0 = Instant::now();
        let mut t = Table::new(t0, false);
        t.register(2, t0);
        let seq = t.publish(&[1], t0);
        assert_eq!(t.pending(seq, 1, t0), None);
    }

    #[test]
    fn an_ended_stream_is_waited_for_until_its_lease_ends() {
        let t0 = Instant::now();
        let mut t = Table::new(t0, false);
        let b = t.register(2, t0);
        t.ack(b, 0, t0);
        t.gone(b);
        assert!(!t.ack(b, 0, t0 + MS), "no renewal after the end");
        let seq = t.publish(&[1], t0 + MS);
        assert_eq!(t.pending(seq, 1, t0 + MS), Some(t0 + LEASE));
        let later = t.publish(&[1], t0 + LEASE);
        assert_eq!(t.pending(later, 1, t0 + LEASE), None);
        assert!(!t.any(t0 + LEASE), "dropped once its lease ended");
    }

    #[test]
    fn after_a_restart_answers_wait_out_one_lease() {
        let t0 = Instant::now();
        let mut t = Table::new(t0, true);
        let seq = t.publish(&[1], t0);
        assert_eq!(t.pending(seq, 1, t0), Some(t0 + LEASE));
        assert_eq!(t.pending(seq, 1, t0 + LEASE), None);
        assert!(!Table::new(t0, false).any(t0));
    }
}
