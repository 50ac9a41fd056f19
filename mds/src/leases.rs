//! Write leases and version bumps: who may write a chunk, at which version.
//!
//! For each chunk being written the MDS grants a lease naming a replica set
//! (the first is the primary, the head of the pipeline) at a version. While
//! a lease is live, every AllocChunk for that chunk gets the same set and
//! version (and extends it), so no second primary is ever granted. A new
//! lease — none was live, the old one's replicas died, or a writer reports a
//! replica failed — raises the chunk's version: the bump is journaled
//! (`Record::BumpVersion`) BEFORE any replica hears of it, then every
//! surviving replica is told the new version (`ChunkAdmin.SetVersion`) and
//! only those that adopted it form the new set. Replicas refuse writes with a
//! lower version, so the holder of an old lease (a primary paused past its
//! lease, a client on a broken pipeline) cannot get a single write accepted
//! once a newer lease exists; a replica that missed the bump reports the old
//! version and is stale: never served, and deleted.
//!
//! A brand-new chunk (no replica anywhere) is placed fresh at its first
//! version. Grants for one chunk are serialized by a per-chunk async lock.
//!
//! The decision is `decide`, a pure function of what the MDS knows (tested
//! below). The service (`service/grant.rs`) gathers that view
//! (`Mds::decide_lease`) and carries the decision out (`Mds::grant`); this
//! file does no I/O and knows nothing of the service. For a chunk already
//! there the lease is decided before the AllocChunk goes through the
//! committer, so its bump is journaled in that same pass
//! (`committer::Request::Lease`): one pass per AllocChunk.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub version: u64,
    /// Daemon ids in pipeline order; [0] is the primary.
    pub holders: Vec<u64>,
    pub expires: Instant,
}

/// Lease table plus the settings of the fault-tolerance layer.
pub struct Leases {
    pub duration: Duration,
    pub min_replicas: u32,
    table: Mutex<HashMap<u64, Lease>>,
    locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

impl Leases {
    pub fn new(duration: Duration, min_replicas: u32) -> Leases {
        Leases {
            duration,
            min_replicas,
            table: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The live lease on `chunk`, if any.
    /// Forgets every lease (a node that becomes the group's leader: leases
    /// another leader granted since are unknown here, so every chunk's next
    /// lease bumps its version first).
    pub fn clear(&self) {
        self.table.lock().clear();
    }

    pub fn live(&self, chunk: u64) -> Option<Lease> {
        let mut t = self.table.lock();
        match t.get(&chunk) {
            Some(l) if l.expires > Instant::now() => Some(l.clone()),
            Some(_) => {
                t.remove(&chunk);
                None
            }
            None => None,
        }
    }

    pub fn drop_lease(&self, chunk: u64) {
        self.table.lock().remove(&chunk);
    }

    pub fn set(&self, chunk: u64, lease: Lease) {
        self.table.lock().insert(chunk, lease);
    }

    /// Waits for `chunk`'s grant lock.
    pub async fn serialize(&self, chunk: u64) -> Serial {
        let lock = {
            let mut locks = self.locks.lock();
            // Drop locks nobody holds so the map stays small.
            if locks.len() > 4096 {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(chunk).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// What `decide` concludes for an AllocChunk of one chunk. The service only
/// carries it out (journal, fence, answer): no decision is made there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The live lease stands, with a new expiry: same holders, same version.
    Extend(Lease),
    /// No replica exists anywhere: place the chunk fresh at its version.
    Place,
    /// A new lease: journal `new_version`, then fence these daemons (in
    /// pipeline order, confirmed replicas first; `true` = confirmed). Those
    /// that adopt it are the new holders.
    Bump {
        new_version: u64,
        holders: Vec<(u64, bool)>,
    },
    /// Not now (EAGAIN): replicas exist but none is reachable, or fewer than
    /// the minimum hold the data and re-replication must restore them first.
    Wait(&'static str),
}

/// One replica of a chunk as the registry knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaView {
    pub daemon: u64,
    pub version: u64,
    pub confirmed: bool,
}

/// Decides an AllocChunk's lease, a pure function of what the MDS knows:
/// the live lease (if any), the chunk's journaled `version`, its replicas,
/// which daemons are alive, the daemons the writer saw fail, and how many
/// holders a write needs (`min`).
pub fn decide(
    live: Option<&Lease>,
    version: u64,
    replicas: &[ReplicaView],
    alive: impl Fn(u64) -> bool,
    failed: &[u64],
    min: usize,
) -> Grant {
    // A live lease whose holders are all alive and none reported failed.
    if let Some(l) = live {
        if l.version == version && l.holders.iter().all(|d| alive(*d) && !failed.contains(d)) {
            return Grant::Extend(l.clone());
        }
    }
    if replicas.is_empty() {
        return Grant::Place;
    }
    // Who holds the data now: live replicas at the current version; if
    // none, the live ones at the highest version any replica has.
    let usable = |r: &&ReplicaView| alive(r.daemon) && !failed.contains(&r.daemon);
    let mut at: Vec<ReplicaView> = replicas
        .iter()
        .filter(usable)
        .filter(|r| r.version == version)
        .copied()
        .collect();
    if at.is_empty() {
        let best = replicas.iter().map(|r| r.version).max().unwrap_or(0);
        at = replicas
            .iter()
            .filter(usable)
            .filter(|r| r.version == best)
            .copied()
            .collect();
    }
    if at.is_empty() {
        return Grant::Wait("replicas exist but none is reachable");
    }
    if at.len() < min {
        return Grant::Wait("too few replicas to write safely; repairing first");
    }
    // Confirmed replicas first: they surely hold the data.
    at.sort_by_key(|r| (!r.confirmed, r.daemon));
    Grant::Bump {
        new_version: version + 1,
        holders: at.iter().map(|r| (r.daemon, r.confirmed)).collect(),
    }
}

/// A lease `decide`d for one chunk, with the chunk's grant lock held until
/// `Mds::grant` carries it out.
pub struct Decided {
    pub chunk: u64,
    /// The chunk's journaled version it was decided against.
    pub version: u64,
    pub grant: Grant,
    /// The chunk's grant lock (`Leases::serialize`).
    pub serial: Serial,
}

/// Held while one chunk's lease is decided and carried out: grants for one
/// chunk are serialized.
pub type Serial = tokio::sync::OwnedMutexGuard<()>;

impl Decided {
    /// The version the new lease raises the chunk to, if it does: journaled
    /// in the AllocChunk's own pass through the committer
    /// (`committer::Request::Lease`).
    pub fn bump(&self) -> Option<u64> {
        match self.grant {
            Grant::Bump { new_version, .. } => Some(new_version),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(daemon: u64, version: u64, confirmed: bool) -> ReplicaView {
        ReplicaView {
            daemon,
            version,
            confirmed,
        }
    }

    fn lease(version: u64, holders: &[u64]) -> Lease {
        Lease {
            version,
            holders: holders.to_vec(),
            expires: Instant::now() + Duration::from_secs(60),
        }
    }

    const ALL_ALIVE: fn(u64) -> bool = |_| true;

    #[test]
    fn an_intact_live_lease_is_extended_as_it_is() {
        let l = lease(4, &[1, 2, 3]);
        let reps = [r(1, 4, true), r(2, 4, true), r(3, 4, true)];
        assert_eq!(
            decide(Some(&l), 4, &reps, ALL_ALIVE, &[], 2),
            Grant::Extend(l)
        );
    }

    #[test]
    fn a_failed_or_dead_holder_ends_the_lease_with_a_bump_over_the_survivors() {
        let l = lease(4, &[1, 2, 3]);
        let reps = [r(1, 4, true), r(2, 4, true), r(3, 4, true)];
        assert_eq!(
            decide(Some(&l), 4, &reps, ALL_ALIVE, &[2], 2),
            Grant::Bump {
                new_version: 5,
                holders: vec![(1, true), (3, true)]
            }
        );
        let reps = [r(1, 4, true), r(2, 4, true), r(3, 4, true)];
        assert_eq!(
            decide(Some(&l), 4, &reps, |d| d != 2, &[], 2),
            Grant::Bump {
                new_version: 5,
                holders: vec![(1, true), (3, true)]
            }
        );
    }

    #[test]
    fn a_lease_at_an_older_version_is_not_extended() {
        // The version moved on (a bump by another grant): never hand out the old one.
        let l = lease(4, &[1, 2]);
        let reps = [r(1, 5, true), r(2, 5, true)];
        assert!(matches!(
            decide(Some(&l), 5, &reps, ALL_ALIVE, &[], 2),
            Grant::Bump { new_version: 6, .. }
        ));
    }

    #[test]
    fn a_chunk_no_daemon_holds_is_placed_fresh() {
        assert_eq!(decide(None, 1, &[], ALL_ALIVE, &[], 2), Grant::Place);
    }

    #[test]
    fn replicas_that_exist_but_are_away_mean_wait_not_place() {
        let reps = [r(1, 3, true), r(2, 3, true)];
        assert!(matches!(
            decide(None, 3, &reps, |_| false, &[], 1),
            Grant::Wait(_)
        ));
    }

    #[test]
    fn too_few_holders_wait_for_repair() {
        let reps = [r(1, 3, true), r(2, 3, true)];
        assert!(matches!(
            decide(None, 3, &reps, |d| d == 1, &[], 2),
            Grant::Wait(_)
        ));
        assert!(matches!(
            decide(None, 3, &reps, |d| d == 1, &[], 1),
            Grant::Bump { new_version: 4, .. }
        ));
    }

    #[test]
    fn stale_replicas_are_left_out_and_confirmed_ones_lead() {
        // 7 missed a bump (version 2); 9 is planned but never confirmed.
        let reps = [r(9, 3, false), r(7, 2, true), r(8, 3, true)];
        assert_eq!(
            decide(None, 3, &reps, ALL_ALIVE, &[], 2),
            Grant::Bump {
                new_version: 4,
                holders: vec![(8, true), (9, false)]
            }
        );
    }

    #[test]
    fn with_none_at_the_journaled_version_the_highest_version_held_counts() {
        // After a crash between the journaled bump and the fence, no replica
        // has version 5 yet; the live ones at 4 hold the data.
        let reps = [r(1, 4, true), r(2, 4, true), r(3, 3, true)];
        assert_eq!(
            decide(None, 5, &reps, ALL_ALIVE, &[], 2),
            Grant::Bump {
                new_version: 6,
                holders: vec![(1, true), (2, true)]
            }
        );
    }
}
