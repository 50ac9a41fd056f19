//! Session liveness: when each client session was last heard from, and the
//! task that expires sessions silent for longer than `--session-timeout-secs`.
//!
//! Contact times are memory only (a clock has no place in the log); the
//! decision to expire is journaled (`Record::ExpireSession`, then `Purge`
//! records for inodes only that session kept open), so replay agrees with
//! what the live MDS did. After a restart every session in the replayed table
//! gets a full timeout, counted from startup, to come back.
//!
//! The task that proposes the expiries is the service's
//! (`service/expiry.rs` `start_expiry`).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// session → last contact.
#[derive(Default, Clone)]
pub struct Contacts(Arc<Mutex<HashMap<u64, Instant>>>);

impl Contacts {
    /// Any request from `session` counts as contact.
    pub fn touch(&self, session: u64) {
        self.touch_at(session, Instant::now());
    }

    /// Contact from `session` at `at`.
    pub fn touch_at(&self, session: u64, at: Instant) {
        if session != 0 {
            self.0.lock().insert(session, at);
        }
    }

    /// Each session and how long ago it was last heard from, oldest contact last.
    pub fn list(&self) -> Vec<(u64, Duration)> {
        let mut v: Vec<(u64, Duration)> = self
            .0
            .lock()
            .iter()
            .map(|(s, t)| (*s, t.elapsed()))
            .collect();
        v.sort_by_key(|(_, ago)| *ago);
        v
    }

    /// Removes and returns the sessions silent for longer than `timeout`
    /// at `now` (the caller's clock: the decision reads none).
    pub fn take_expired(&self, now: Instant, timeout: Duration) -> Vec<u64> {
        let mut m = self.0.lock();
        let expired: Vec<u64> = m
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) > timeout)
            .map(|(s, _)| *s)
            .collect();
        for s in &expired {
            m.remove(s);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_expires_only_once_silent_past_the_timeout() {
        let c = Contacts::default();
        let t0 = Instant::now();
        let timeout = Duration::from_secs(300);
        c.touch_at(7, t0);
        c.touch_at(8, t0 + Duration::from_secs(10));
        assert!(c.take_expired(t0, timeout).is_empty());
        assert!(c.take_expired(t0 + timeout, timeout).is_empty());
        assert_eq!(
            c.take_expired(t0 + timeout + Duration::from_millis(1), timeout),
            vec![7]
        );
        // Taken once: the expiry is proposed once.
        assert!(c
            .take_expired(t0 + timeout + Duration::from_secs(1), timeout)
            .is_empty());
        assert_eq!(
            c.list().iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![8]
        );
        // A contact restarts the count.
        c.touch_at(8, t0 + timeout + Duration::from_secs(10));
        assert!(c
            .take_expired(t0 + timeout + Duration::from_secs(11), timeout)
            .is_empty());
        assert_eq!(
            c.take_expired(t0 + 2 * timeout + Duration::from_secs(11), timeout),
            vec![8]
        );
        // Session 0 (the MDS's own requests) is never tracked.
        c.touch_at(0, t0);
        assert!(c.take_expired(t0 + 10 * timeout, timeout).is_empty());
    }
}
