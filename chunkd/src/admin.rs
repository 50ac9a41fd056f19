//! The `ChunkAdmin` service the MDS calls: `Replicate` (pull a whole replica
//! from a peer, for re-replication, draining and rebalancing) and
//! `SetVersion` (adopt a new lease's version, fencing older writers). Both
//! carry the MDS's term and are refused if it is older than one seen (`term`).
//!
//! Invariants: a copy is pulled with ordinary `Chunk.Read`s at the exact
//! version, so the source verifies every block's crc (a corrupt source fails
//! the copy and reports itself); only the source's data extents are read
//! (`ChunkSpace.DataExtents`), so punched and never-written blocks stay holes
//! in the copy, while the last block is always copied so the copy's data
//! length matches; the copy becomes visible only whole (see
//! `store::install`); at most `MAX_CONCURRENT_COPIES` copies run at once on a
//! daemon so a burst of repairs cannot starve client I/O here.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use weft_proto::chunk_admin_server::{ChunkAdmin, ChunkAdminServer};
use weft_proto::{
    DataExtentsReq, Empty, ReadReq, ReplicateReq, SetVersionReq, MAX_IO, MAX_MESSAGE,
};

use crate::ordering::Sequencer;
use crate::pipeline::Peers;
use crate::service::status_of;
use crate::store::format::BLOCK_SIZE;
use crate::store::Store;
use crate::term::TermGuard;

const MAX_CONCURRENT_COPIES: usize = 4;

#[derive(Clone)]
pub struct AdminService {
    store: Arc<Store>,
    peers: Arc<Peers>,
    copies: Arc<Semaphore>,
    order: Arc<Sequencer>,
    /// Every call carries the MDS's term; older terms are refused.
    term: Arc<TermGuard>,
}

impl AdminService {
    pub fn new(
        store: Arc<Store>,
        peers: Arc<Peers>,
        order: Arc<Sequencer>,
        term: Arc<TermGuard>,
    ) -> AdminService {
        AdminService {
            store,
            peers,
            copies: Arc::new(Semaphore::new(MAX_CONCURRENT_COPIES)),
            order,
            term,
        }
    }

    pub fn into_server(self) -> ChunkAdminServer<AdminService> {
        ChunkAdminServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

#[tonic::async_trait]
impl ChunkAdmin for AdminService {
    async fn replicate(&self, request: Request<ReplicateReq>) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        self.term.admit_status(req.term)?;
        let _permit = self
            .copies
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        let (id, version, length) = (req.chunk_id, req.version, req.length);
        let mut source = self.peers.client(&req.source)?;
        let extents = match self
            .peers
            .space_client(&req.source)?
            .data_extents(DataExtentsReq {
                chunk_id: id,
                version,
                offset: 0,
                length,
                cap: req.cap.clone(),
            })
            .await
        {
            Ok(r) => r
                .into_inner()
                .extents
                .iter()
                .map(|e| (e.offset, e.offset.saturating_add(e.length)))
                .collect(),
            // Cannot tell the holes apart: copy every byte, as a read would see it.
            Err(s) => {
                tracing::debug!(
                    source = req.source,
                    error = s.message(),
                    "no data extents; copying all"
                );
                vec![(0, length)]
            }
        };
        // The network side reads ahead one piece while the disk side writes.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(u64, Vec<u8>), String>>(2);
        let store = self.store.clone();
        let writer = tokio::task::spawn_blocking(move || {
            store.install(
                id,
                version,
                length,
                std::iter::from_fn(|| rx.blocking_recv()),
            )
        });
        for (off, n) in copy_plan(&extents, length, BLOCK_SIZE as u64, MAX_IO as u64) {
            let piece = source
                .read(ReadReq {
                    chunk_id: id,
                    version,
                    offset: off,
                    length: n,
                    cap: req.cap.clone(),
                })
                .await
                .map(|r| (off, r.into_inner().data.to_vec()))
                .map_err(|s| format!("read from {}: {}", req.source, s.message()));
            let failed = piece.is_err();
            if tx.send(piece).await.is_err() || failed {
                break;
            }
        }
        drop(tx);
        match writer.await {
            Ok(Ok(())) => {
                tracing::info!(
                    chunk = format_args!("{id:016x}"),
                    version,
                    bytes = length,
                    source = req.source,
                    "replica copied"
                );
                Ok(Response::new(Empty {}))
            }
            Ok(Err(e)) => {
                tracing::warn!(chunk = format_args!("{id:016x}"), error = %e, "replica copy failed");
                Err(status_of(&e))
            }
            Err(e) => Err(Status::internal(format!("copy task failed: {e}"))),
        }
    }

    async fn set_version(
        &self,
        request: Request<SetVersionReq>,
    ) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        self.term.admit_status(req.term)?;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.set_version(req.chunk_id, req.version))
            .await
        {
            Ok(Ok(())) => {
                // The new lease's epoch (= version) starts a new sequence of
                // serials here; the old lease's waiting writes fail now.
                let _ = self.order.observe(req.chunk_id, req.version);
                Ok(Response::new(Empty {}))
            }
            Ok(Err(e)) => Err(status_of(&e)),
            Err(e) => Err(Status::internal(format!("set_version task failed: {e}"))),
        }
    }
}

/// The reads that copy a replica of `length` bytes whose data lies in
/// `extents` (ascending (start, end) ranges; the rest reads as zeros):
/// those ranges clipped to `length`, plus the last block so the copy's data
/// length is `length`, merged, cut into pieces of at most `max_io` bytes.
pub fn copy_plan(extents: &[(u64, u64)], length: u64, block: u64, max_io: u64) -> Vec<(u64, u32)> {
    let mut ranges: Vec<(u64, u64)> = extents
        .iter()
        .map(|&(s, e)| (s.min(length), e.min(length)))
        .filter(|(s, e)| s < e)
        .collect();
    if length > 0 {
        ranges.push(((length - 1) / block * block, length));
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut pieces = Vec::new();
    for (mut s, e) in merged {
        while s < e {
            let n = (e - s).min(max_io);
            pieces.push((s, n as u32));
            s += n;
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::copy_plan;

    #[test]
    fn copy_plan_reads_only_data_and_the_last_block() {
        // Nothing known about holes: everything, in pieces.
        assert_eq!(
            copy_plan(&[(0, 250)], 250, 64, 100),
            [(0, 100), (100, 100), (200, 50)]
        );
        // A hole in the middle stays a hole; the tail block is read even
        // though it is a hole, so the copy's length is right.
        assert_eq!(
            copy_plan(&[(0, 128), (256, 320)], 1000, 64, 1000),
            [(0, 128), (256, 64), (960, 40)]
        );
        // Overlaps and touching ranges merge; extents past the length are cut.
        assert_eq!(
            copy_plan(&[(0, 64), (64, 200), (100, 5000)], 300, 64, 1000),
            [(0, 300)]
        );
        assert_eq!(copy_plan(&[], 0, 64, 1000), []);
        assert_eq!(copy_plan(&[], 64, 64, 1000), [(0, 64)]);
    }
}
