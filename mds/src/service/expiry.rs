//! Expires sessions silent past `--session-timeout-secs` (`sessions.rs`
//! keeps the contact times): proposes `Expire` for each.

use super::Mds;
use crate::committer::Proposal;
use std::time::{Duration, Instant};

/// Starts the expiry task; `known` are the sessions the replayed state remembers.
pub fn start_expiry(mds: &Mds, known: Vec<u64>, timeout: Duration) {
    for s in known {
        mds.contacts.touch(s);
    }
    let mds = mds.clone();
    let every = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for session in mds.contacts.take_expired(Instant::now(), timeout) {
                tracing::info!(
                    session,
                    secs = timeout.as_secs(),
                    "session expired (no contact)"
                );
                let _ = mds
                    .committer
                    .propose(|done| Proposal::Expire { session, done })
                    .await;
            }
        }
    });
}
