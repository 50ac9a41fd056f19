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
//! below); `Mds::decide_lease` gathers that view and `Mds::grant` carries the
//! decision out. For a chunk already there the lease is decided before the
//! AllocChunk goes through the committer, so its bump is journaled in that
//! same pass (`committer::Request::Lease`): one pass per AllocChunk.

use crate::chunkds::{Registry, Reports};
use crate::committer::Proposal;
use crate::ns::Record;
use crate::service::Mds;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_proto::{pb, Errno};

const SET_VERSION_TIMEOUT: Duration = Duration::from_secs(2);

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

    fn set(&self, chunk: u64, lease: Lease) {
        self.table.lock().insert(chunk, lease);
    }

    fn lock_for(&self, chunk: u64) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock();
        // Drop locks nobody holds so the map stays small.
        if locks.len() > 4096 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(chunk).or_default().clone()
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

fn unix_ms_in(d: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now + d).as_millis() as u64
}

fn replicas(reg: &Registry, ids: &[u64]) -> Vec<pb::Replica> {
    ids.iter()
        .filter_map(|d| {
            reg.addr(*d).map(|a| pb::Replica {
                chunkd_id: *d,
                addr: a.to_string(),
            })
        })
        .collect()
}

/// A lease `decide`d for one chunk, with the chunk's grant lock held until
/// `Mds::grant` carries it out.
pub struct Decided {
    pub chunk: u64,
    /// The chunk's journaled version it was decided against.
    pub version: u64,
    pub grant: Grant,
    _serial: tokio::sync::OwnedMutexGuard<()>,
}

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

impl Mds {
    /// The daemons at the replica addresses a writer saw fail.
    pub fn failed_ids(&self, failed: &[String]) -> Vec<u64> {
        let reg = self.registry.lock();
        failed
            .iter()
            .filter_map(|a| reg.daemon_by_addr(a))
            .collect()
    }

    /// Decides `chunk`'s lease (`decide`) under its grant lock, once the
    /// daemons have reported; None if no file holds the chunk now.
    pub async fn decide_lease(&self, chunk: u64, failed: &[u64]) -> Option<Decided> {
        let serial = self.leases.lock_for(chunk).lock_owned().await;
        // The version may have moved while we waited for the lock.
        let version = self.state.read().await.ns.chunk_owner(chunk)?.2;
        // Just after an MDS restart daemons may not have reported yet: wait
        // for them rather than place a chunk that has replicas somewhere.
        self.after_reports(|reg| {
            if !reg.replicas_of(chunk).is_empty() || !reg.may_have_unreported(chunk) {
                Reports::Done(())
            } else {
                Reports::Pending
            }
        })
        .await;
        let want = self.leases.min_replicas.min(self.replicas) as usize;
        let live = self.leases.live(chunk);
        let reg = self.registry.lock();
        let view: Vec<ReplicaView> = reg
            .replicas_of(chunk)
            .iter()
            .map(|(d, r)| ReplicaView {
                daemon: *d,
                version: r.version,
                confirmed: r.confirmed,
            })
            .collect();
        let grant = decide(
            live.as_ref(),
            version,
            &view,
            |d| reg.alive(d),
            failed,
            want,
        );
        Some(Decided {
            chunk,
            version,
            grant,
            _serial: serial,
        })
    }

    /// Fills an AllocChunk answer with the lease: pipeline, version, epoch
    /// (= version) and expiry. `failed` are the daemons the writer saw fail;
    /// `before` the lease decided before the AllocChunk went through the
    /// committer (which journaled its bump, if any). A lease decided only
    /// now (a new chunk, or another than `before`'s) journals its bump
    /// itself: rare, as a new chunk has no replica to bump.
    pub async fn grant(
        &self,
        mut cw: pb::ChunkWrite,
        failed: &[u64],
        before: Option<Decided>,
    ) -> Result<pb::ChunkWrite, Errno> {
        let chunk_size = cw.chunk_size;
        // Writes under this lease carry it: replicas that heard from a newer
        // MDS refuse them, and the writer asks that one for a lease.
        cw.term = self.term.get();
        let loc = cw.chunk.as_mut().ok_or(Errno::EIO)?;
        let chunk = loc.chunk_id;
        let (decided, journaled) = match before {
            Some(d) if d.chunk == chunk => (d, true),
            other => {
                drop(other);
                let d = self.decide_lease(chunk, failed).await;
                (d.ok_or(Errno::ENOENT)?, false)
            }
        };
        let Decided {
            version,
            grant,
            _serial,
            ..
        } = decided;
        let expires = Instant::now() + self.leases.duration;
        let want = self.leases.min_replicas.min(self.replicas) as usize;
        let (new_version, holders) = match grant {
            Grant::Extend(l) => {
                let reg = self.registry.lock();
                loc.version = l.version;
                loc.replicas = replicas(&reg, &l.holders);
                drop(reg);
                cw.lease_epoch = l.version;
                self.leases.set(chunk, Lease { expires, ..l });
                cw.lease_expires_ms = unix_ms_in(self.leases.duration);
                return Ok(cw);
            }
            Grant::Place => {
                let mut reg = self.registry.lock();
                let picked = reg.place(self.replicas as usize, chunk_size, failed);
                if picked.is_empty() {
                    return Err(Errno::ENOSPC);
                }
                reg.plan(chunk, version, &picked, chunk_size);
                loc.version = version;
                loc.replicas = replicas(&reg, &picked);
                drop(reg);
                self.leases.set(
                    chunk,
                    Lease {
                        version,
                        holders: picked,
                        expires,
                    },
                );
                cw.lease_epoch = version;
                cw.lease_expires_ms = unix_ms_in(self.leases.duration);
                return Ok(cw);
            }
            Grant::Wait(why) => {
                // Re-replication skips chunks under a live lease: drop it.
                self.leases.drop_lease(chunk);
                tracing::info!(chunk, want, why, "no write lease now");
                return Err(Errno::EAGAIN);
            }
            Grant::Bump {
                new_version,
                holders,
            } => (new_version, holders),
        };

        if !journaled {
            let (ino, index, _) = self
                .state
                .read()
                .await
                .ns
                .chunk_owner(chunk)
                .ok_or(Errno::ENOENT)?;
            let record = Record::BumpVersion {
                ino,
                index,
                chunk_id: chunk,
                version: new_version,
            };
            self.committer
                .propose(|done| Proposal::Internal { record, done })
                .await?;
        }
        // A new lease: the bump is journaled; fence the replicas.
        if self.state.read().await.ns.chunk_owner(chunk).map(|o| o.2) != Some(new_version) {
            return Err(Errno::EAGAIN);
        }
        let targets: Vec<(u64, bool, String)> = {
            let reg = self.registry.lock();
            holders
                .into_iter()
                .filter_map(|(d, confirmed)| reg.addr(d).map(|a| (d, confirmed, a.to_string())))
                .collect()
        };
        let term = self.term.get();
        let calls = targets.into_iter().map(|(d, confirmed, addr)| async move {
            let r = set_version(&addr, chunk, new_version, term).await;
            let ok = match &r {
                Ok(()) => true,
                // A planned replica that never got a byte is created by the write.
                Err(s) if s.code() == tonic::Code::NotFound => !confirmed,
                Err(_) => false,
            };
            if !ok {
                tracing::warn!(chunk, daemon = d, %addr, error = ?r.err().map(|s| s.message().to_string()), "replica did not take the new version");
            }
            (d, ok)
        });
        let acked: Vec<u64> = futures::future::join_all(calls)
            .await
            .into_iter()
            .filter_map(|(d, ok)| ok.then_some(d))
            .collect();
        if acked.is_empty() {
            self.leases.drop_lease(chunk);
            return Err(Errno::EAGAIN);
        }
        let mut reg = self.registry.lock();
        reg.set_version(chunk, &acked, new_version);
        loc.version = new_version;
        loc.replicas = replicas(&reg, &acked);
        drop(reg);
        tracing::info!(
            chunk,
            version = new_version,
            replicas = acked.len(),
            "write lease granted with a new version"
        );
        self.leases.set(
            chunk,
            Lease {
                version: new_version,
                holders: acked,
                expires,
            },
        );
        cw.lease_epoch = new_version;
        cw.lease_expires_ms = unix_ms_in(self.leases.duration);
        Ok(cw)
    }
}

/// Connections to chunk daemons' ChunkAdmin service, one per daemon, reused.
static ADMIN_POOL: std::sync::OnceLock<weft_proto::net::Pool> = std::sync::OnceLock::new();

/// A ChunkAdmin client for the daemon at `addr`, on its pooled connection.
pub fn chunk_admin(
    addr: &str,
) -> Result<pb::chunk_admin_client::ChunkAdminClient<weft_proto::net::Channel>, tonic::Status> {
    let ch = ADMIN_POOL
        .get_or_init(|| weft_proto::net::Pool::new(None))
        .channel(addr)
        .map_err(tonic::Status::invalid_argument)?;
    Ok(pb::chunk_admin_client::ChunkAdminClient::new(ch))
}

/// `call` bounded by `timeout`; running out is UNAVAILABLE naming `addr`.
pub async fn within<T>(
    addr: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::unavailable(format!(
                "{addr}: no answer within {timeout:?}"
            )))
        })
}

async fn set_version(addr: &str, chunk: u64, version: u64, term: u64) -> Result<(), tonic::Status> {
    let mut c = chunk_admin(addr)?;
    within(
        addr,
        SET_VERSION_TIMEOUT,
        c.set_version(pb::SetVersionReq {
            chunk_id: chunk,
            version,
            term,
        }),
    )
    .await
    .map(drop)
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
