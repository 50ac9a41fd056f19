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

use crate::chunkds::Registry;
use crate::committer::Proposal;
use crate::ns::Record;
use crate::service::Mds;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_proto::{pb, Errno};

const SET_VERSION_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
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

impl Mds {
    /// Fills an AllocChunk answer with the lease: pipeline, version, epoch
    /// (= version) and expiry. `failed` are replica addresses the writer saw fail.
    pub async fn grant(
        &self,
        mut cw: pb::ChunkWrite,
        failed: &[String],
    ) -> Result<pb::ChunkWrite, Errno> {
        let chunk_size = cw.chunk_size;
        // Writes under this lease carry it: replicas that heard from a newer
        // MDS refuse them, and the writer asks that one for a lease.
        cw.term = self.term.get();
        let loc = cw.chunk.as_mut().ok_or(Errno::EIO)?;
        let chunk = loc.chunk_id;
        let lock = self.leases.lock_for(chunk);
        let _g = lock.lock().await;
        // The version may have moved while we waited for the lock.
        let (ino, index, version) = self
            .state
            .read()
            .await
            .ns
            .chunk_owner(chunk)
            .ok_or(Errno::ENOENT)?;
        let failed_ids: Vec<u64> = {
            let reg = self.registry.lock();
            failed
                .iter()
                .filter_map(|a| reg.daemon_by_addr(a))
                .collect()
        };
        // Just after an MDS restart daemons may not have reported yet: wait
        // for them rather than place a chunk that has replicas somewhere.
        loop {
            let (known, grace) = {
                let reg = self.registry.lock();
                (
                    !reg.replicas_of(chunk).is_empty(),
                    reg.may_have_unreported(chunk),
                )
            };
            if known || !grace {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let now = Instant::now();
        let expires = now + self.leases.duration;

        // A live lease whose replicas are all alive and not reported failed: extend it.
        if let Some(l) = self.leases.live(chunk) {
            let reg = self.registry.lock();
            let intact = l.version == version
                && l.holders
                    .iter()
                    .all(|d| reg.alive(*d) && !failed_ids.contains(d));
            if intact {
                loc.version = l.version;
                loc.replicas = replicas(&reg, &l.holders);
                drop(reg);
                self.leases.set(
                    chunk,
                    Lease {
                        expires,
                        ..l.clone()
                    },
                );
                cw.lease_epoch = l.version;
                cw.lease_expires_ms = unix_ms_in(self.leases.duration);
                return Ok(cw);
            }
        }

        // Who holds the data now: live replicas at the current version; if
        // none, the live ones at the highest version any replica has.
        let (mut holders, anything_known) = {
            let reg = self.registry.lock();
            let all = reg.replicas_of(chunk);
            let live: Vec<(u64, crate::chunkds::Replica)> = all
                .iter()
                .filter(|(d, _)| reg.alive(*d) && !failed_ids.contains(d))
                .copied()
                .collect();
            let mut at: Vec<(u64, crate::chunkds::Replica)> = live
                .iter()
                .filter(|(_, r)| r.version == version)
                .copied()
                .collect();
            if at.is_empty() {
                let best = all.iter().map(|(_, r)| r.version).max().unwrap_or(0);
                at = live
                    .into_iter()
                    .filter(|(_, r)| r.version == best)
                    .collect();
            }
            // Confirmed replicas first: they surely hold the data.
            at.sort_by_key(|(d, r)| (!r.confirmed, *d));
            (at, !all.is_empty())
        };

        if holders.is_empty() {
            if anything_known {
                // Replicas exist but none is reachable: the data is not lost, just away.
                self.leases.drop_lease(chunk);
                return Err(Errno::EAGAIN);
            }
            // Never written anywhere: a fresh placement at the current version.
            let mut reg = self.registry.lock();
            let picked = reg.place(self.replicas as usize, chunk_size, &failed_ids);
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

        let want = self.leases.min_replicas.min(self.replicas) as usize;
        if holders.len() < want {
            // Too few copies to write safely: let re-replication (which
            // skips chunks under a live lease) restore them first.
            self.leases.drop_lease(chunk);
            tracing::info!(
                chunk,
                have = holders.len(),
                want,
                "too few replicas to grant a lease; repairing first"
            );
            return Err(Errno::EAGAIN);
        }

        // A new lease: journal the bump, then fence the replicas.
        let new_version = version + 1;
        let record = Record::BumpVersion {
            ino,
            index,
            chunk_id: chunk,
            version: new_version,
        };
        self.committer
            .propose(|done| Proposal::Internal { record, done })
            .await?;
        if self.state.read().await.ns.chunk_owner(chunk).map(|o| o.2) != Some(new_version) {
            return Err(Errno::EAGAIN);
        }
        let targets: Vec<(u64, bool, String)> = {
            let reg = self.registry.lock();
            holders
                .drain(..)
                .filter_map(|(d, r)| reg.addr(d).map(|a| (d, r.confirmed, a.to_string())))
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

/// A ChunkAdmin client for the daemon at `addr`, with `timeout` per call.
pub async fn chunk_admin(
    addr: &str,
    timeout: Duration,
) -> Result<pb::chunk_admin_client::ChunkAdminClient<tonic::transport::Channel>, tonic::Status> {
    let uri = format!("http://{addr}");
    let ch = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect {addr}: {e}")))?;
    Ok(pb::chunk_admin_client::ChunkAdminClient::new(ch))
}

async fn set_version(addr: &str, chunk: u64, version: u64, term: u64) -> Result<(), tonic::Status> {
    let mut c = chunk_admin(addr, SET_VERSION_TIMEOUT).await?;
    c.set_version(pb::SetVersionReq {
        chunk_id: chunk,
        version,
        term,
    })
    .await
    .map(drop)
}
