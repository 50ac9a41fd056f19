//! The `ChunkAdmin` service the MDS calls: `Replicate` (pull a whole replica
//! from a peer, for re-replication, draining and rebalancing) and
//! `SetVersion` (adopt a new lease's version, fencing older writers).
//!
//! Invariants: a copy is pulled with ordinary `Chunk.Read`s at the exact
//! version, so the source verifies every block's crc (a corrupt source fails
//! the copy and reports itself); the copy becomes visible only whole (see
//! `store::install`); at most `MAX_CONCURRENT_COPIES` copies run at once on a
//! daemon so a burst of repairs cannot starve client I/O here.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use weft_proto::chunk_admin_server::{ChunkAdmin, ChunkAdminServer};
use weft_proto::{Empty, ReadReq, ReplicateReq, SetVersionReq, MAX_IO, MAX_MESSAGE};

use crate::ordering::Sequencer;
use crate::pipeline::Peers;
use crate::service::status_of;
use crate::store::Store;

const MAX_CONCURRENT_COPIES: usize = 4;

#[derive(Clone)]
pub struct AdminService {
    store: Arc<Store>,
    peers: Arc<Peers>,
    copies: Arc<Semaphore>,
    order: Arc<Sequencer>,
}

impl AdminService {
    pub fn new(store: Arc<Store>, peers: Arc<Peers>, order: Arc<Sequencer>) -> AdminService {
        AdminService {
            store,
            peers,
            copies: Arc::new(Semaphore::new(MAX_CONCURRENT_COPIES)),
            order,
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
        let _permit = self
            .copies
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        let (id, version, length) = (req.chunk_id, req.version, req.length);
        let mut source = self.peers.client(&req.source)?;
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
        let mut off = 0u64;
        while off < length {
            let n = (length - off).min(MAX_IO as u64) as u32;
            let piece = source
                .read(ReadReq {
                    chunk_id: id,
                    version,
                    offset: off,
                    length: n,
                })
                .await
                .map(|r| (off, r.into_inner().data.to_vec()))
                .map_err(|s| format!("read from {}: {}", req.source, s.message()));
            let failed = piece.is_err();
            if tx.send(piece).await.is_err() || failed {
                break;
            }
            off += n as u64;
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
