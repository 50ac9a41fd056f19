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
        if session != 0 {
            self.0.lock().insert(session, Instant::now());
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

    /// Removes and returns the sessions silent for longer than `timeout`.
    pub fn take_expired(&self, timeout: Duration) -> Vec<u64> {
        let mut m = self.0.lock();
        let expired: Vec<u64> = m
            .iter()
            .filter(|(_, t)| t.elapsed() > timeout)
            .map(|(s, _)| *s)
            .collect();
        for s in &expired {
            m.remove(s);
        }
        expired
    }
}
