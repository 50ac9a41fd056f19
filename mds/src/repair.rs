//! Re-replication: the MDS's background loop that keeps every chunk at its
//! replica target, and the `Admin.Drain` service that empties a daemon.
//!
//! Each round (every heartbeat period) it looks at every chunk of every file:
//! * good replicas = confirmed, at the chunk's current version, on a live
//!   daemon; those on a draining daemon don't count toward the target;
//! * replicas at an older version are deleted once a good one exists (a
//!   returning daemon's stale copies, copies that missed a lease's bump);
//! * fewer good than the target: one copy is scheduled from a good source to a
//!   daemon placement picks (live, not draining, room for a chunk, racks
//!   spread, and never one that already has a replica of it at any version
//!   or a delete pending for it — a quarantined replica's tombstone);
//! * more than the target: the extras go, draining daemons' first.
//!
//! Copies run fewest-good-replicas first, at most `parallel` at a time and
//! within `bytes_per_sec`, so client I/O keeps most of the bandwidth. A chunk
//! under a live write lease is left alone (its data is still moving; a copy
//! would miss writes); a failed copy is retried after a pause.
//!
//! Copies are `ChunkAdmin.Replicate` on the target, which pulls the data from
//! the source with crc-checked reads and installs it whole. A copy that
//! finishes after the chunk's version moved on is simply a stale replica.
//!
//! This file plans (`plan_chunk`, pure and unit-tested; `judge_chunk`,
//! `rebalance_moves` on the registry); the service runs the loop, the copies
//! and the `Admin` service (`service/repair.rs`). It knows nothing of the
//! service.

use crate::leases::Leases;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct RepairStats {
    pub(crate) in_flight: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) rebalancing: AtomicBool,
}

impl RepairStats {
    pub fn rebalancing(&self) -> bool {
        self.rebalancing.load(Ordering::Relaxed)
    }
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy)]
pub struct RepairConfig {
    pub interval: Duration,
    /// 0: no cap.
    pub bytes_per_sec: u64,
    pub parallel: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub good: usize,
    pub chunk_size: u64,
    pub chunk: u64,
    pub version: u64,
    pub size: u64,
    pub sources: Vec<u64>,
    pub exclude: Vec<u64>,
}

/// Chunks judged per hold of the registry lock in `plan_round`.
pub(crate) const PLAN_BATCH: usize = 1024;

/// One chunk of `plan_round`: skips chunks being copied, waiting for a
/// retry or under a live lease; otherwise decides (`plan_chunk`) and carries
/// the decision out: deletes stale and surplus replicas from the registry
/// (their daemons are told at their next heartbeat), queues the copy.
#[allow(clippy::too_many_arguments)]
pub(crate) fn judge_chunk(
    leases: &Leases,
    reg: &mut crate::chunkds::Registry,
    chunk: u64,
    version: u64,
    chunk_size: u64,
    target: usize,
    busy: &HashSet<u64>,
    retry_at: &HashMap<u64, Instant>,
    out: &mut Vec<Copy>,
) {
    if busy.contains(&chunk) || retry_at.contains_key(&chunk) || leases.live(chunk).is_some() {
        return;
    }
    let holders: Vec<Holder> = reg
        .replicas_of(chunk)
        .iter()
        .map(|(d, r)| {
            let dm = reg.daemon(*d);
            Holder {
                daemon: *d,
                version: r.version,
                confirmed: r.confirmed,
                size: r.size,
                alive: reg.alive(*d),
                draining: dm.is_some_and(|x| x.draining),
                free: dm.map_or(0, |x| x.capacity.saturating_sub(x.used)),
            }
        })
        .collect();
    let pending = |reg: &crate::chunkds::Registry| -> Vec<u64> {
        reg.status()
            .iter()
            .map(|d| d.id)
            .filter(|d| reg.delete_pending(*d, chunk))
            .collect()
    };
    let plan = plan_chunk(chunk, version, chunk_size, target, &holders, || {
        pending(reg)
    });
    for d in plan.stale {
        tracing::info!(chunk, daemon = d, want = version, "deleting stale replica");
        reg.remove_replica(chunk, d);
    }
    for d in plan.surplus {
        tracing::info!(chunk, daemon = d, "removing surplus replica");
        reg.remove_replica(chunk, d);
    }
    out.extend(plan.copy);
}

/// A replica of one chunk as `plan_chunk` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    daemon: u64,
    version: u64,
    confirmed: bool,
    /// Bytes of data the daemon reported.
    size: u64,
    alive: bool,
    draining: bool,
    /// Room the daemon has left.
    free: u64,
}

/// What repair does for one chunk.
#[derive(Debug, Default, PartialEq)]
struct ChunkPlan {
    /// Replicas at an older version than the journaled one.
    stale: Vec<u64>,
    /// Good replicas above the target: draining daemons' first, then those
    /// on the fullest daemons.
    surplus: Vec<u64>,
    /// The copy that brings the chunk back to its target, if it needs one.
    copy: Option<Copy>,
}

/// Decides one chunk, a pure function of its replicas: stale replicas go;
/// with fewer good copies than `target` (not counting draining daemons') a
/// copy is wanted, from any good replica to a daemon that holds none and has
/// none pending deletion (`pending_delete`, asked only then); with more, the
/// surplus goes. A chunk with no good replica is missing: nothing to copy
/// from, nothing is deleted (fsck reports it).
fn plan_chunk(
    chunk: u64,
    version: u64,
    chunk_size: u64,
    target: usize,
    holders: &[Holder],
    pending_delete: impl FnOnce() -> Vec<u64>,
) -> ChunkPlan {
    let good: Vec<&Holder> = holders
        .iter()
        .filter(|h| h.confirmed && h.version == version && h.alive)
        .collect();
    if good.is_empty() {
        return ChunkPlan::default();
    }
    let mut plan = ChunkPlan {
        stale: holders
            .iter()
            .filter(|h| h.version < version)
            .map(|h| h.daemon)
            .collect(),
        ..Default::default()
    };
    let kept = good.iter().filter(|h| !h.draining).count();
    if kept < target {
        let mut exclude: Vec<u64> = holders.iter().map(|h| h.daemon).collect();
        exclude.extend(pending_delete());
        plan.copy = Some(Copy {
            good: kept,
            chunk_size,
            chunk,
            version,
            size: good.iter().map(|h| h.size).max().unwrap_or(0),
            sources: good.iter().map(|h| h.daemon).collect(),
            exclude,
        });
        return plan;
    }
    let mut extra: Vec<(bool, u64, u64)> = good
        .iter()
        .map(|h| (!h.draining, h.free, h.daemon))
        .collect();
    extra.sort();
    plan.surplus = extra
        .into_iter()
        .take(good.len() - target)
        .map(|(_, _, d)| d)
        .collect();
    plan
}

/// Rebalancing: while the fullest live daemon holds more than two chunks'
/// worth above the emptiest, copy some of its chunks (that the emptiest
/// lacks) to the emptiest; the surplus rule then deletes the copy on the
/// fullest daemon. Stops itself once balanced.
pub(crate) fn rebalance_moves(
    leases: &Leases,
    stats: &RepairStats,
    reg: &mut crate::chunkds::Registry,
    chunk_size: u64,
    busy: &HashSet<u64>,
    out: &mut Vec<Copy>,
) {
    let live: Vec<(u64, u64)> = reg
        .status()
        .iter()
        .filter(|d| d.alive && !d.draining)
        .map(|d| (d.id, d.used))
        .collect();
    let (Some(&(full, full_used)), Some(&(empty, empty_used))) = (
        live.iter().max_by_key(|(_, u)| *u),
        live.iter().min_by_key(|(_, u)| *u),
    ) else {
        return;
    };
    let gap = full_used.saturating_sub(empty_used);
    if gap <= 2 * chunk_size.max(1) {
        tracing::info!("rebalance finished");
        stats.rebalancing.store(false, Ordering::Relaxed);
        return;
    }
    // A quarter of the gap per round: usage figures lag a heartbeat or two.
    let moves = ((gap / 4) / chunk_size.max(1)).max(1) as usize;
    let candidates: Vec<u64> = reg.chunks_held(full);
    for chunk in candidates {
        if out.len() >= moves.min(8) {
            break;
        }
        if busy.contains(&chunk) || leases.live(chunk).is_some() {
            continue;
        }
        let reps = reg.replicas_of(chunk);
        if reps.iter().any(|(d, _)| *d == empty) {
            continue;
        }
        let Some((_, r)) = reps.iter().find(|(d, r)| *d == full && r.confirmed) else {
            continue;
        };
        let exclude: Vec<u64> = live
            .iter()
            .map(|(d, _)| *d)
            .filter(|d| *d != empty)
            .collect();
        out.push(Copy {
            good: usize::MAX,
            chunk_size,
            chunk,
            version: r.version,
            size: r.size,
            sources: vec![full],
            exclude,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(daemon: u64, version: u64) -> Holder {
        Holder {
            daemon,
            version,
            confirmed: true,
            size: 100,
            alive: true,
            draining: false,
            free: 1000,
        }
    }

    fn no_pending() -> Vec<u64> {
        Vec::new()
    }

    #[test]
    fn a_chunk_at_its_target_needs_nothing() {
        let hs = [h(1, 3), h(2, 3), h(3, 3)];
        assert_eq!(
            plan_chunk(7, 3, 64, 3, &hs, no_pending),
            ChunkPlan::default()
        );
    }

    #[test]
    fn a_dead_holder_means_a_copy_from_the_live_ones_to_a_daemon_without_one() {
        let mut hs = [h(1, 3), h(2, 3), h(3, 3)];
        hs[1].alive = false;
        let plan = plan_chunk(7, 3, 64, 3, &hs, || vec![9]);
        assert_eq!(plan.stale, Vec::<u64>::new());
        assert_eq!(
            plan.copy,
            Some(Copy {
                good: 2,
                chunk_size: 64,
                chunk: 7,
                version: 3,
                size: 100,
                sources: vec![1, 3],
                // Never onto a daemon that holds it (dead or not) or is
                // about to delete it.
                exclude: vec![1, 2, 3, 9],
            })
        );
    }

    #[test]
    fn stale_replicas_go_and_the_copy_counts_only_current_ones() {
        let hs = [h(1, 3), h(2, 2), h(3, 3)];
        let plan = plan_chunk(7, 3, 64, 3, &hs, no_pending);
        assert_eq!(plan.stale, vec![2]);
        assert_eq!(
            plan.copy.map(|c| (c.good, c.sources)),
            Some((2, vec![1, 3]))
        );
    }

    #[test]
    fn a_chunk_with_no_good_replica_is_left_alone() {
        // Missing: deleting its stale copies would lose the last bytes.
        let mut hs = [h(1, 2), h(2, 3)];
        hs[1].confirmed = false;
        assert_eq!(
            plan_chunk(7, 3, 64, 2, &hs, no_pending),
            ChunkPlan::default()
        );
    }

    #[test]
    fn a_draining_daemons_copy_does_not_count_and_goes_first_once_replaced() {
        let mut hs = [h(1, 3), h(2, 3)];
        hs[0].draining = true;
        let plan = plan_chunk(7, 3, 64, 2, &hs, no_pending);
        assert_eq!(plan.copy.as_ref().map(|c| c.good), Some(1));
        assert_eq!(plan.surplus, Vec::<u64>::new());
        // Replaced: three good copies, one on the draining daemon.
        let hs = [hs[0], hs[1], h(3, 3)];
        let plan = plan_chunk(7, 3, 64, 2, &hs, no_pending);
        assert_eq!(plan.copy, None);
        assert_eq!(plan.surplus, vec![1]);
    }

    #[test]
    fn the_surplus_on_the_fullest_daemons_goes() {
        let mut hs = [h(1, 3), h(2, 3), h(3, 3), h(4, 3)];
        hs[2].free = 10;
        hs[0].free = 20;
        let plan = plan_chunk(7, 3, 64, 2, &hs, no_pending);
        assert_eq!(plan.surplus, vec![3, 1]);
    }
}
