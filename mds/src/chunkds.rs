//! The chunk daemons the MDS knows and which replicas each holds.
//!
//! None of this is journaled: as in GFS, replica locations are rebuilt from
//! the daemons' own reports (Register sends everything a daemon holds,
//! heartbeats send changes), so the daemons' disks stay the one truth about
//! where data is. A replica counts as good when its daemon is alive (heard
//! from within `dead_after`) and it reported the chunk's current version.
//! Replicas the MDS placed but has not yet heard about are "planned": clients
//! may use them (a write lands there before the next heartbeat) but fsck does
//! not count them.

use crate::placement::{self, Candidate};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use weft_proto::pb;

#[derive(Debug)]
pub struct Daemon {
    pub id: u64,
    pub addr: String,
    pub rack: String,
    pub capacity: u64,
    pub used: u64,
    /// What the daemon says it can still take (`RegisterReq.free`), if it says.
    reported_free: Option<u64>,
    last_beat: Instant,
    chunks: BTreeSet<u64>,
    /// `weft drain`: placement avoids it and repair moves its replicas off.
    pub draining: bool,
    /// Bytes read and written since it started, as its last heartbeat said.
    read_bytes: u64,
    written_bytes: u64,
}

impl Daemon {
    /// Data bytes it can still take: its own figure (which also counts its
    /// disk's real free space), within capacity - used.
    pub fn free(&self) -> u64 {
        let headroom = self.capacity.saturating_sub(self.used);
        self.reported_free.map_or(headroom, |f| f.min(headroom))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replica {
    pub version: u64,
    pub confirmed: bool,
    /// Bytes of data the daemon reported (0 until confirmed).
    pub size: u64,
}

/// What the namespace says about a reported chunk.
pub enum Known {
    /// Owned by a file at this version.
    Current(u64),
    /// No file references it.
    Unreferenced,
}

pub struct Registry {
    daemons: BTreeMap<u64, Daemon>,
    replicas: HashMap<u64, BTreeMap<u64, Replica>>,
    deletes: HashMap<u64, BTreeSet<u64>>,
    /// Chunks daemons hold that no file references (left by a crash between a
    /// chunk write and its commit, or by a file removed while a daemon was away).
    orphans: BTreeMap<u64, BTreeSet<u64>>,
    /// When each orphan was first reported (for the GC grace period).
    orphan_seen: HashMap<u64, Instant>,
    dead_after: Duration,
    started: Instant,
    /// How long after `started` daemons may still be re-registering.
    grace: Duration,
    /// Chunk ids at or above this were created by this MDS process, so no
    /// daemon can hold a replica it has not reported (u64::MAX: not known yet).
    fresh_from: u64,
    /// Woken at every registration and heartbeat: what waits for daemons'
    /// reports (`Mds::after_reports`) waits on this, not on a timer.
    reported: std::sync::Arc<tokio::sync::Notify>,
}

/// What a check of the registry concludes while waiting for reports.
pub enum Reports<T> {
    /// Decided: the answer.
    Done(T),
    /// Wait for the next report (or the end of the startup grace).
    Pending,
}

impl Registry {
    pub fn new(dead_after: Duration) -> Self {
        Registry {
            daemons: BTreeMap::new(),
            replicas: HashMap::new(),
            deletes: HashMap::new(),
            orphans: BTreeMap::new(),
            orphan_seen: HashMap::new(),
            dead_after,
            started: Instant::now(),
            grace: dead_after,
            fresh_from: u64::MAX,
            reported: Default::default(),
        }
    }

    /// Starts over, as an MDS that just became the group's leader: no daemon
    /// known until it registers, a startup grace of `grace` (daemons first
    /// try the old leader), chunks from `fresh_from` on known to be new.
    /// Whoever waits for reports keeps waiting on the same wake-up.
    pub fn restart(&mut self, grace: Duration, fresh_from: u64) {
        let reported = self.reported.clone();
        *self = Registry::new(self.dead_after);
        self.reported = reported;
        self.grace = grace.max(self.dead_after);
        self.fresh_from = fresh_from;
        self.reported.notify_waiters();
    }

    /// Woken by every registration and heartbeat.
    pub fn reported(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.reported.clone()
    }

    /// How much of the startup grace is left (zero once it is over).
    pub fn grace_left(&self) -> Duration {
        self.grace.saturating_sub(self.started.elapsed())
    }

    pub fn alive(&self, id: u64) -> bool {
        self.daemons
            .get(&id)
            .is_some_and(|d| d.last_beat.elapsed() < self.dead_after)
    }

    /// True for the first `dead_after` after the MDS started: daemons may not
    /// have re-registered yet, so a chunk with no known replica may still have some.
    pub fn in_startup_grace(&self) -> bool {
        self.started.elapsed() < self.grace
    }

    /// Records the first chunk id this MDS process hands out (the namespace's
    /// next id after recovery).
    pub fn set_fresh_from(&mut self, first_new_chunk: u64) {
        self.fresh_from = first_new_chunk;
    }

    /// Counts every known daemon as heard from now: for a leader that answered
    /// nothing, heartbeats included, while it heard from no majority. One
    /// that died meanwhile is declared dead `dead_after` later.
    pub fn heard_all_now(&mut self) {
        let now = Instant::now();
        for d in self.daemons.values_mut() {
            d.last_beat = now;
        }
    }

    /// Whether a chunk with no known replica may still have unreported ones:
    /// only in the startup grace, and never for a chunk created since startup
    /// (without this, every new file's first write after an MDS start waited
    /// out the whole grace).
    pub fn may_have_unreported(&self, chunk: u64) -> bool {
        chunk < self.fresh_from && self.in_startup_grace()
    }

    /// A daemon's full report. `known` classifies each chunk against the namespace.
    pub fn register(&mut self, req: &pb::RegisterReq, known: impl Fn(u64) -> Known) {
        self.reported.notify_waiters();
        let (previous, draining) = self
            .daemons
            .remove(&req.chunkd_id)
            .map(|d| (d.chunks, d.draining))
            .unwrap_or_default();
        for chunk in previous {
            self.drop_replica(chunk, req.chunkd_id, true);
        }
        self.daemons.insert(
            req.chunkd_id,
            Daemon {
                id: req.chunkd_id,
                addr: req.addr.clone(),
                rack: req.rack.clone(),
                capacity: req.capacity,
                used: req.used,
                reported_free: req.free,
                last_beat: Instant::now(),
                chunks: BTreeSet::new(),
                draining: false,
                read_bytes: 0,
                written_bytes: 0,
            },
        );
        if let Some(d) = self.daemons.get_mut(&req.chunkd_id) {
            d.draining = draining;
        }
        self.deletes.remove(&req.chunkd_id);
        for r in &req.chunks {
            self.add_report(req.chunkd_id, r, &known);
        }
    }

    /// A heartbeat; false if the daemon is unknown and must register.
    pub fn heartbeat(
        &mut self,
        req: &pb::HeartbeatReq,
        known: impl Fn(u64) -> Known,
    ) -> Option<Vec<u64>> {
        self.reported.notify_waiters();
        let d = self.daemons.get_mut(&req.chunkd_id)?;
        d.last_beat = Instant::now();
        d.capacity = req.capacity;
        d.used = req.used;
        d.reported_free = req.free;
        d.read_bytes = req.read_bytes;
        d.written_bytes = req.written_bytes;
        for chunk in &req.removed {
            self.drop_replica(*chunk, req.chunkd_id, false);
        }
        for r in &req.added {
            self.add_report(req.chunkd_id, r, &known);
        }
        Some(
            self.deletes
                .remove(&req.chunkd_id)
                .map(|s| s.into_iter().collect())
                .unwrap_or_default(),
        )
    }

    fn add_report(&mut self, daemon: u64, r: &pb::ChunkReport, known: &impl Fn(u64) -> Known) {
        match known(r.chunk_id) {
            Known::Current(version)
                if r.version < version && self.good_replicas(r.chunk_id, version) > 0 =>
            {
                // Stale: it missed writes while away. Never serve it; a good
                // copy exists, so it can go. (With no good copy it is kept,
                // unserved, in case it holds the newest data there is: a
                // lease grant whose version bump reached no replica.)
                tracing::info!(
                    chunk = r.chunk_id,
                    daemon,
                    have = r.version,
                    want = version,
                    "stale replica, deleting"
                );
                self.drop_replica(r.chunk_id, daemon, false);
                self.deletes.entry(daemon).or_default().insert(r.chunk_id);
            }
            Known::Current(_) => {
                self.replicas.entry(r.chunk_id).or_default().insert(
                    daemon,
                    Replica {
                        version: r.version,
                        confirmed: true,
                        size: r.size,
                    },
                );
                if let Some(d) = self.daemons.get_mut(&daemon) {
                    d.chunks.insert(r.chunk_id);
                }
            }
            Known::Unreferenced => {
                self.orphans.entry(r.chunk_id).or_default().insert(daemon);
                self.orphan_seen
                    .entry(r.chunk_id)
                    .or_insert_with(Instant::now);
            }
        }
    }

    fn drop_replica(&mut self, chunk: u64, daemon: u64, keep_planned: bool) {
        if let Some(m) = self.replicas.get_mut(&chunk) {
            if !(keep_planned && m.get(&daemon).is_some_and(|r| !r.confirmed)) {
                m.remove(&daemon);
            }
            if m.is_empty() {
                self.replicas.remove(&chunk);
            }
        }
        if let Some(s) = self.orphans.get_mut(&chunk) {
            s.remove(&daemon);
            if s.is_empty() {
                self.orphans.remove(&chunk);
                self.orphan_seen.remove(&chunk);
            }
        }
        if let Some(d) = self.daemons.get_mut(&daemon) {
            d.chunks.remove(&chunk);
        }
    }

    /// Chunks no file references any more: every daemon holding one deletes it
    /// at its next heartbeat.
    pub fn forget_chunks(&mut self, chunks: &[u64]) {
        for chunk in chunks {
            if let Some(m) = self.replicas.remove(chunk) {
                for daemon in m.keys() {
                    self.deletes.entry(*daemon).or_default().insert(*chunk);
                    if let Some(d) = self.daemons.get_mut(daemon) {
                        d.chunks.remove(chunk);
                    }
                }
            }
        }
    }

    /// A daemon found its replica corrupt: stop handing it out.
    pub fn corrupt(&mut self, daemon: u64, chunk: u64) {
        self.drop_replica(chunk, daemon, false);
        self.deletes.entry(daemon).or_default().insert(chunk);
    }

    /// Records where a chunk's replicas are being written. Each daemon's
    /// usage is raised by a chunk until its next heartbeat reports the truth,
    /// so a burst of allocations does not overfill a small daemon.
    pub fn plan(&mut self, chunk: u64, version: u64, daemons: &[u64], chunk_size: u64) {
        let m = self.replicas.entry(chunk).or_default();
        for d in daemons {
            m.entry(*d).or_insert(Replica {
                version,
                confirmed: false,
                size: 0,
            });
            if let Some(dm) = self.daemons.get_mut(d) {
                dm.used = dm.used.saturating_add(chunk_size);
            }
        }
    }

    /// Live replicas of `chunk` at `version`, confirmed ones first, then by daemon id.
    pub fn locations(&self, chunk: u64, version: u64) -> Vec<pb::Replica> {
        let mut out: Vec<(bool, u64, &Daemon)> = self
            .replicas
            .get(&chunk)
            .into_iter()
            .flatten()
            .filter(|(d, r)| r.version == version && self.alive(**d))
            .filter_map(|(d, r)| self.daemons.get(d).map(|dm| (!r.confirmed, *d, dm)))
            .collect();
        out.sort_by_key(|(unconfirmed, id, _)| (*unconfirmed, *id));
        out.into_iter()
            .map(|(_, id, d)| pb::Replica {
                chunkd_id: id,
                addr: d.addr.clone(),
            })
            .collect()
    }

    /// Replicas that count for redundancy: confirmed, current, on a live daemon.
    pub fn good_replicas(&self, chunk: u64, version: u64) -> u32 {
        self.replicas
            .get(&chunk)
            .map(|m| {
                m.iter()
                    .filter(|(d, r)| r.confirmed && r.version == version && self.alive(**d))
                    .count() as u32
            })
            .unwrap_or(0)
    }

    /// Chooses daemons for a new replica set of `want` copies.
    pub fn place(&self, want: usize, chunk_size: u64, exclude: &[u64]) -> Vec<u64> {
        let candidates: Vec<Candidate> = self
            .daemons
            .values()
            .filter(|d| self.alive(d.id) && !d.draining)
            .map(|d| Candidate {
                id: d.id,
                rack: d.rack.clone(),
                free: d.free(),
            })
            .collect();
        let salt: u64 = rand::random();
        placement::place(&candidates, want, chunk_size, exclude, |id| {
            id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt
        })
    }

    pub fn addr(&self, daemon: u64) -> Option<&str> {
        self.daemons.get(&daemon).map(|d| d.addr.as_str())
    }

    /// (capacity, free) over live daemons.
    pub fn space(&self) -> (u64, u64) {
        self.daemons
            .values()
            .filter(|d| self.alive(d.id))
            .fold((0, 0), |(c, f), d| (c + d.capacity, f + d.free()))
    }

    pub fn status(&self) -> Vec<pb::ChunkdStatus> {
        self.daemons
            .values()
            .map(|d| pb::ChunkdStatus {
                id: d.id,
                addr: d.addr.clone(),
                rack: d.rack.clone(),
                alive: self.alive(d.id),
                capacity: d.capacity,
                used: d.used,
                chunks: d.chunks.len() as u64,
                draining: d.draining,
                free: d.free(),
                read_bytes: d.read_bytes,
                written_bytes: d.written_bytes,
            })
            .collect()
    }

    /// Every replica the registry knows of `chunk`, on any daemon, at any version.
    pub fn replicas_of(&self, chunk: u64) -> Vec<(u64, Replica)> {
        self.replicas
            .get(&chunk)
            .map(|m| m.iter().map(|(d, r)| (*d, *r)).collect())
            .unwrap_or_default()
    }

    pub fn daemon(&self, id: u64) -> Option<&Daemon> {
        self.daemons.get(&id)
    }

    pub fn daemon_by_addr(&self, addr: &str) -> Option<u64> {
        self.daemons.values().find(|d| d.addr == addr).map(|d| d.id)
    }

    pub fn set_draining(&mut self, id: u64, draining: bool) {
        if let Some(d) = self.daemons.get_mut(&id) {
            d.draining = draining;
        }
    }

    /// Daemons being drained.
    pub fn draining(&self) -> Vec<u64> {
        self.daemons
            .values()
            .filter(|d| d.draining)
            .map(|d| d.id)
            .collect()
    }

    /// Chunk ids daemon `id` holds, as the registry knows them.
    pub fn chunks_held(&self, id: u64) -> Vec<u64> {
        self.daemons
            .get(&id)
            .map(|d| d.chunks.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Replicas held by daemon `id`, as the registry knows them.
    pub fn chunks_on(&self, id: u64) -> usize {
        self.daemons.get(&id).map_or(0, |d| d.chunks.len())
    }

    /// A copy finished on `daemon`: count it now rather than at its next beat.
    pub fn add_copy(&mut self, chunk: u64, daemon: u64, version: u64, size: u64) {
        if !self.daemons.contains_key(&daemon) {
            return;
        }
        self.replicas.entry(chunk).or_default().insert(
            daemon,
            Replica {
                version,
                confirmed: true,
                size,
            },
        );
        if let Some(d) = self.daemons.get_mut(&daemon) {
            d.chunks.insert(chunk);
        }
    }

    /// The replica of `chunk` on `daemon` goes (trimmed, moved, stale): it is
    /// no longer counted and the daemon deletes it at its next heartbeat.
    pub fn remove_replica(&mut self, chunk: u64, daemon: u64) {
        self.drop_replica(chunk, daemon, false);
        self.deletes.entry(daemon).or_default().insert(chunk);
    }

    /// A lease fenced `daemons`' replicas of `chunk` at `version`.
    pub fn set_version(&mut self, chunk: u64, daemons: &[u64], version: u64) {
        if let Some(m) = self.replicas.get_mut(&chunk) {
            for d in daemons {
                if let Some(r) = m.get_mut(d) {
                    r.version = version;
                }
            }
        }
    }

    /// Deletes not yet sent to `daemon` include `chunk`.
    pub fn delete_pending(&self, daemon: u64, chunk: u64) -> bool {
        self.deletes
            .get(&daemon)
            .is_some_and(|s| s.contains(&chunk))
    }

    pub fn orphans(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.orphans.iter().map(|(c, ds)| (*c, ds.len()))
    }

    /// Orphan GC: every orphan first reported more than `grace` ago whose id
    /// is below `below` (ids this namespace handed out; a higher one belongs to
    /// a file system this MDS never knew, so it is kept) goes on its daemons'
    /// delete lists, sent in their next heartbeat replies. Returns the number
    /// of replicas scheduled for deletion.
    pub fn collect_orphans(&mut self, grace: Duration, below: u64) -> usize {
        let due: Vec<u64> = self
            .orphans
            .keys()
            .filter(|c| **c < below)
            .filter(|c| self.orphan_seen.get(c).is_none_or(|t| t.elapsed() >= grace))
            .copied()
            .collect();
        let mut n = 0;
        for chunk in due {
            self.orphan_seen.remove(&chunk);
            for daemon in self.orphans.remove(&chunk).unwrap_or_default() {
                if let Some(d) = self.daemons.get_mut(&daemon) {
                    d.chunks.remove(&chunk);
                }
                self.deletes.entry(daemon).or_default().insert(chunk);
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: u64, chunks: &[(u64, u64)]) -> pb::RegisterReq {
        pb::RegisterReq {
            chunkd_id: id,
            addr: format!("127.0.0.1:{id}"),
            rack: String::new(),
            capacity: 1 << 30,
            used: 0,
            free: None,
            chunks: chunks
                .iter()
                .map(|(c, v)| pb::ChunkReport {
                    chunk_id: *c,
                    version: *v,
                    size: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn only_chunks_older_than_this_process_wait_out_the_startup_grace() {
        let mut r = Registry::new(Duration::from_secs(60));
        assert!(r.may_have_unreported(5), "before recovery says otherwise");
        r.set_fresh_from(10);
        assert!(r.may_have_unreported(9));
        assert!(!r.may_have_unreported(10));
        assert!(!r.may_have_unreported(11));
        let r = Registry::new(Duration::ZERO);
        assert!(!r.may_have_unreported(0), "grace over");
    }

    #[test]
    fn reports_count_planned_do_not() {
        let mut r = Registry::new(Duration::from_secs(60));
        r.register(&reg(1, &[]), |_| Known::Current(1));
        r.register(&reg(2, &[(7, 1)]), |_| Known::Current(1));
        r.plan(7, 1, &[1, 2], 0);
        assert_eq!(r.locations(7, 1).len(), 2);
        assert_eq!(r.locations(7, 1)[0].chunkd_id, 2, "confirmed first");
        assert_eq!(r.good_replicas(7, 1), 1);
        let del = r
            .heartbeat(
                &pb::HeartbeatReq {
                    chunkd_id: 1,
                    added: vec![pb::ChunkReport {
                        chunk_id: 7,
                        version: 1,
                        size: 1,
                    }],
                    ..Default::default()
                },
                |_| Known::Current(1),
            )
            .unwrap();
        assert!(del.is_empty());
        assert_eq!(r.good_replicas(7, 1), 2);
    }

    #[test]
    fn stale_replicas_are_deleted_never_served() {
        let mut r = Registry::new(Duration::from_secs(60));
        // Alone, a stale replica is kept (unserved): it may be the newest data.
        r.register(&reg(1, &[(7, 1)]), |_| Known::Current(2));
        assert!(r.locations(7, 2).is_empty());
        assert_eq!(r.replicas_of(7).len(), 1);
        // Once a current copy exists, a stale one reported is deleted.
        r.register(&reg(2, &[(7, 2)]), |_| Known::Current(2));
        r.register(&reg(1, &[(7, 1)]), |_| Known::Current(2));
        assert_eq!(r.locations(7, 2).len(), 1);
        let del = r.heartbeat(
            &pb::HeartbeatReq {
                chunkd_id: 1,
                ..Default::default()
            },
            |_| Known::Current(2),
        );
        assert_eq!(del, Some(vec![7]));
    }

    #[test]
    fn forgotten_chunks_go_to_their_daemons_and_unknown_daemons_reregister() {
        let mut r = Registry::new(Duration::from_secs(60));
        r.register(&reg(1, &[(7, 1), (8, 1)]), |_| Known::Current(1));
        r.forget_chunks(&[7]);
        let del = r.heartbeat(
            &pb::HeartbeatReq {
                chunkd_id: 1,
                ..Default::default()
            },
            |_| Known::Current(1),
        );
        assert_eq!(del, Some(vec![7]));
        assert_eq!(r.status()[0].chunks, 1);
        assert!(r
            .heartbeat(
                &pb::HeartbeatReq {
                    chunkd_id: 9,
                    ..Default::default()
                },
                |_| Known::Current(1)
            )
            .is_none());
    }

    #[test]
    fn dead_daemons_hold_no_good_replicas() {
        let mut r = Registry::new(Duration::from_millis(1));
        r.register(&reg(1, &[(7, 1)]), |_| Known::Current(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(r.good_replicas(7, 1), 0);
        assert!(r.locations(7, 1).is_empty());
        assert!(!r.status()[0].alive);
    }
}

#[cfg(test)]
mod free_tests {
    use super::*;

    #[test]
    fn free_space_is_the_daemons_figure_within_capacity() {
        let mut r = Registry::new(Duration::from_secs(60));
        let req = |id, free| pb::RegisterReq {
            chunkd_id: id,
            addr: format!("127.0.0.1:{id}"),
            capacity: 100,
            used: 30,
            free,
            ..Default::default()
        };
        // An older daemon says nothing: capacity - used.
        r.register(&req(1, None), |_| Known::Current(1));
        assert_eq!(r.space(), (100, 70));
        // Its disk holds less than its capacity allows.
        r.register(&req(2, Some(20)), |_| Known::Current(1));
        assert_eq!(r.space(), (200, 90));
        // Never more than the capacity leaves.
        r.register(&req(3, Some(500)), |_| Known::Current(1));
        assert_eq!(r.space(), (300, 160));
    }
}
