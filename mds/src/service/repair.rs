//! Runs re-replication (`repair.rs` plans it): the loop every heartbeat
//! period, the copies (`ChunkAdmin.Replicate`), and the `Admin` service
//! (Drain, Rebalance, MDS membership).

use super::chunk_admin::{chunk_admin, within};
use super::Mds;
use crate::repair::{judge_chunk, rebalance_moves, Copy, RepairConfig, PLAN_BATCH};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use weft_proto::pb;

const RETRY_AFTER: Duration = Duration::from_secs(3);

/// Runs the repair loop until the process ends.
pub fn spawn(mds: Mds, cfg: RepairConfig) {
    tokio::spawn(async move {
        let busy: Arc<parking_lot::Mutex<HashSet<u64>>> = Default::default();
        let mut retry_at: HashMap<u64, Instant> = HashMap::new();
        // Token bucket: the earliest time the next copy may start.
        let mut next_start = Instant::now();
        let mut rr = 0usize;
        let failed: Arc<parking_lot::Mutex<Vec<u64>>> = Default::default();
        loop {
            tokio::time::sleep(cfg.interval).await;
            for c in failed.lock().drain(..) {
                retry_at.insert(c, Instant::now() + RETRY_AFTER);
            }
            retry_at.retain(|_, t| *t > Instant::now());
            if mds.registry.lock().in_startup_grace() {
                continue; // daemons are still reporting what they hold
            }
            if mds.check_leader(false).is_err() {
                continue; // in an MDS group only the leader repairs
            }
            let busy_now = busy.lock().clone();
            let mut copies = plan_round(&mds, &busy_now, &retry_at).await;
            copies.sort_by_key(|c| (c.good, c.chunk));
            for c in copies {
                if busy.lock().len() >= cfg.parallel {
                    break;
                }
                let now = Instant::now();
                if next_start > now + cfg.interval {
                    break; // over the rate: the rest waits for later rounds
                }
                let (target, source) = {
                    let reg = mds.registry.lock();
                    let target = reg.place(1, c.chunk_size, &c.exclude).first().copied();
                    rr = rr.wrapping_add(1);
                    let source = c.sources[rr % c.sources.len()];
                    (
                        target.and_then(|t| reg.addr(t).map(|a| (t, a.to_string()))),
                        reg.addr(source).map(str::to_string),
                    )
                };
                let (Some((target, target_addr)), Some(source_addr)) = (target, source) else {
                    continue;
                };
                if cfg.bytes_per_sec > 0 {
                    let cost = Duration::from_secs_f64(c.size as f64 / cfg.bytes_per_sec as f64);
                    next_start = next_start.max(now) + cost;
                }
                busy.lock().insert(c.chunk);
                mds.repair.in_flight.fetch_add(1, Ordering::Relaxed);
                let (mds2, busy2, failed2) = (mds.clone(), busy.clone(), failed.clone());
                tokio::spawn(async move {
                    let ok = copy(&mds2, &c, target, &target_addr, &source_addr).await;
                    if !ok {
                        failed2.lock().push(c.chunk);
                    }
                    busy2.lock().remove(&c.chunk);
                    mds2.repair.in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    });
}

/// Looks at every chunk: deletes stale and surplus replicas now, returns the
/// copies wanted.
async fn plan_round(mds: &Mds, busy: &HashSet<u64>, retry_at: &HashMap<u64, Instant>) -> Vec<Copy> {
    let (chunks, chunk_size): (Vec<(u64, u64)>, u64) = {
        let st = mds.state.read().await;
        (
            st.ns.all_chunks().map(|(_, _, c, v)| (c, v)).collect(),
            st.ns.chunk_size(),
        )
    };
    let target = mds.replicas as usize;
    let mut out = Vec::new();
    // The registry lock is taken per batch, not for the whole walk, so
    // heartbeats, reads and lease grants go on while a big namespace is walked;
    // each chunk is judged on the registry as it is when its batch runs.
    for batch in chunks.chunks(PLAN_BATCH) {
        let mut reg = mds.registry.lock();
        for &(chunk, version) in batch {
            judge_chunk(
                &mds.leases,
                &mut reg,
                chunk,
                version,
                chunk_size,
                target,
                busy,
                retry_at,
                &mut out,
            );
        }
    }
    if out.is_empty() && mds.repair.rebalancing() {
        let mut reg = mds.registry.lock();
        rebalance_moves(
            &mds.leases,
            &mds.repair,
            &mut reg,
            chunk_size,
            busy,
            &mut out,
        );
    }
    out
}

async fn copy(mds: &Mds, c: &Copy, target: u64, target_addr: &str, source_addr: &str) -> bool {
    let t = Instant::now();
    // Generous: a chunk at 1 MiB/s plus setup.
    let timeout = Duration::from_secs(30 + c.size / (1 << 20));
    let r = match chunk_admin(target_addr) {
        Ok(mut client) => within(
            target_addr,
            timeout,
            client.replicate(pb::ReplicateReq {
                chunk_id: c.chunk,
                version: c.version,
                source: source_addr.to_string(),
                length: c.size,
                term: mds.term.get(),
                cap: mds.cap(c.chunk, c.version, weft_proto::caps::Mode::Read),
            }),
        )
        .await
        .map(drop),
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => {
            mds.registry
                .lock()
                .add_copy(c.chunk, target, c.version, c.size);
            mds.repair.done.fetch_add(1, Ordering::Relaxed);
            mds.repair.bytes.fetch_add(c.size, Ordering::Relaxed);
            tracing::info!(
                chunk = c.chunk,
                version = c.version,
                from = source_addr,
                to = target_addr,
                bytes = c.size,
                ms = t.elapsed().as_millis() as u64,
                good_before = c.good,
                "re-replicated"
            );
            true
        }
        Err(s) => {
            tracing::warn!(chunk = c.chunk, from = source_addr, to = target_addr, code = ?s.code(), error = %s.message(), "re-replication copy failed");
            false
        }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Mds {
    async fn drain(&self, req: Request<pb::DrainReq>) -> Result<Response<pb::DrainReply>, Status> {
        self.check_leader(false)?;
        let req = req.into_inner();
        let id = self
            .registry
            .lock()
            .daemon_by_addr(&req.addr)
            .ok_or_else(|| Status::not_found(format!("no chunk daemon at {}", req.addr)))?;
        if self.group.is_some() {
            // In the group's log, so the next leader drains on.
            let draining = !req.cancel;
            let done = self
                .committer
                .propose(|done| crate::committer::Proposal::Drain {
                    chunkd: id,
                    draining,
                    done,
                })
                .await;
            match done {
                Ok(_) => {}
                Err(crate::committer::NOT_LEADER) => {
                    return Err(weft_proto::leader::not_leader(None))
                }
                Err(e) => return Err(Status::internal(format!("drain not recorded: {e}"))),
            }
        }
        let mut reg = self.registry.lock();
        reg.set_draining(id, !req.cancel);
        if !req.cancel {
            tracing::info!(chunkd = id, addr = %req.addr, "draining");
        }
        Ok(Response::new(pb::DrainReply {
            chunkd_id: id,
            remaining: reg.chunks_on(id) as u64,
        }))
    }

    async fn rebalance(
        &self,
        req: Request<pb::RebalanceReq>,
    ) -> Result<Response<pb::RebalanceReply>, Status> {
        self.check_leader(false)?;
        let running = !req.into_inner().stop;
        self.repair.rebalancing.store(running, Ordering::Relaxed);
        tracing::info!(running, "rebalance requested");
        Ok(Response::new(pb::RebalanceReply { running }))
    }

    async fn mds_add(
        &self,
        req: Request<pb::MdsAddReq>,
    ) -> Result<Response<pb::MdsChangeReply>, Status> {
        self.check_leader(false)?;
        let req = req.into_inner();
        let g = self.group.as_ref().ok_or_else(not_a_group)?;
        crate::group::add_node(g, req.id, &req.addr).await?;
        Ok(Response::new(pb::MdsChangeReply {
            voters: crate::group::voters(g),
        }))
    }

    async fn compact(
        &self,
        req: Request<pb::CompactReq>,
    ) -> Result<Response<pb::CompactReply>, Status> {
        self.check_leader(false)?;
        let below = match req.into_inner().below {
            b if b > 0.0 => b,
            _ => self.compactor.cfg.below,
        };
        tracing::info!(below, "compaction requested");
        match self.compact_pass(below).await {
            Ok(r) => Ok(Response::new(r)),
            Err(crate::committer::NOT_LEADER) => Err(weft_proto::leader::not_leader(None)),
            Err(e) => Err(Status::internal(format!("compaction failed: {e}"))),
        }
    }

    async fn mds_remove(
        &self,
        req: Request<pb::MdsRemoveReq>,
    ) -> Result<Response<pb::MdsChangeReply>, Status> {
        self.check_leader(false)?;
        let req = req.into_inner();
        let g = self.group.as_ref().ok_or_else(not_a_group)?;
        crate::group::remove_node(g, req.id).await?;
        Ok(Response::new(pb::MdsChangeReply {
            voters: crate::group::voters(g),
        }))
    }
}

fn not_a_group() -> Status {
    Status::failed_precondition(
        "this MDS runs alone (started without --node-id/--peers); restart it with \
         --node-id 1 --peers 1=ADDR to make it a group of one that can grow",
    )
}
