//! What an MDS group node does when its leadership changes
//! (`group::LeadershipChanges` says when).

use super::Mds;
use crate::group::Leadership;
use std::time::{Duration, Instant};

/// Follows this node's standing: each time it becomes the ready leader of a
/// new term it takes that term as the fencing term (sent to chunk daemons),
/// forgets leases (the next lease of every chunk bumps its version first),
/// starts the chunk-daemon registry afresh (daemons re-register with their
/// replicas, as at an MDS start; the group's drain marks are set again as
/// they do) and gives every known session a full timeout, and every session
/// holding locks a full lock expiry, from now.
pub fn watch_leadership(mds: Mds, dead_after: Duration) {
    let Some(g) = mds.group.clone() else {
        return;
    };
    let mut changes = g.leadership_changes();
    tokio::spawn(async move {
        while let Some((change, s)) = changes.next().await {
            match change {
                Leadership::Took { term } => {
                    take_over(&mds, term, dead_after).await;
                    g.took_over(term);
                    tracing::info!(term, node = g.id, "leading the MDS group");
                }
                Leadership::Lost => {
                    tracing::info!(term = s.term, leader = ?s.leader, "no longer leading the MDS group");
                }
            }
        }
    });
}

async fn take_over(mds: &Mds, term: u64, dead_after: Duration) {
    mds.term.set(term);
    mds.leases.clear();
    let sessions: Vec<u64> = {
        let st = mds.state.read().await;
        // Daemons find the new leader through "not leader" hints and their
        // backoff: give them a few seconds more.
        mds.registry
            .lock()
            .restart(dead_after + Duration::from_secs(5), st.ns.next_chunk_id());
        // Lock holders get a full lock expiry from now to be heard from, as
        // sessions get a full timeout.
        let now = Instant::now();
        let mut locks = mds.locks.lock();
        for s in st.locks.sessions() {
            locks.touch(s, now);
        }
        st.sessions.ids().collect()
    };
    for session in sessions {
        mds.contacts.touch(session);
    }
}
