//! Carries out write leases (`leases.rs` decides them): gathers what the
//! MDS knows of a chunk (`Mds::decide_lease`), then journals, fences the
//! replicas and answers (`Mds::grant`).

use super::chunk_admin::set_version;
use super::Mds;
use crate::chunkds::{Registry, Reports};
use crate::committer::Proposal;
use crate::leases::{decide, Decided, Grant, Lease, ReplicaView};
use crate::ns::Record;
use std::time::{Duration, Instant};
use weft_proto::{pb, Errno};

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
        let serial = self.leases.serialize(chunk).await;
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
            serial,
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
            serial: _serial,
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
