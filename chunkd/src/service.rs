//! The tonic `Chunk` service: decodes requests, runs the store on the
//! blocking pool, forwards pipeline operations to the next replica at the same
//! time, and maps store errors to the status codes weft.proto defines:
//!
//!   NOT_FOUND            no replica of that chunk here (Write creates one;
//!                        Truncate of an absent chunk is a no-op success)
//!   FAILED_PRECONDITION  stale version or lease epoch
//!   DATA_LOSS            checksum/header mismatch (reported to the MDS), or
//!                        a quarantined replica
//!   RESOURCE_EXHAUSTED   --capacity or the disk is full
//!   INVALID_ARGUMENT     range outside the chunk, oversized read, long chain
//!   UNAVAILABLE          a downstream replica failed (named in the message)
//!
//! Invariant: a pipelined call answers OK only when this replica and every
//! replica after it succeeded.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};
use weft_proto::chunk_server::{Chunk, ChunkServer};
use weft_proto::{
    Empty, ReadReply, ReadReq, SyncReq, TruncateReq, WriteReply, WriteReq, MAX_IO, MAX_MESSAGE,
};

use crate::heartbeat::CorruptReporter;
use crate::pipeline::{self, Peers};
use crate::store::{Store, StoreError};

/// The status a store error is answered with.
pub fn status_of(e: &StoreError) -> Status {
    let msg = e.to_string();
    match e {
        StoreError::NotFound { .. } => Status::not_found(msg),
        StoreError::StaleVersion { .. } | StoreError::StaleEpoch { .. } => {
            Status::failed_precondition(msg)
        }
        StoreError::Corrupt { .. }
        | StoreError::BadHeader { .. }
        | StoreError::Quarantined { .. } => Status::data_loss(msg),
        StoreError::OutOfRange { .. } => Status::invalid_argument(msg),
        StoreError::NoSpace { .. } => Status::resource_exhausted(msg),
        StoreError::Io { .. } => Status::internal(msg),
    }
}

#[derive(Clone)]
pub struct ChunkService {
    store: Arc<Store>,
    peers: Arc<Peers>,
    reporter: CorruptReporter,
}

impl ChunkService {
    pub fn new(store: Arc<Store>, peers: Arc<Peers>, reporter: CorruptReporter) -> ChunkService {
        ChunkService {
            store,
            peers,
            reporter,
        }
    }

    /// The service wrapped for a tonic server, with weft's message limits.
    pub fn into_server(self) -> ChunkServer<ChunkService> {
        ChunkServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Runs a store operation on the blocking pool; corruption is reported to
    /// the MDS on the way out.
    async fn local<T, F>(&self, op: &'static str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                match &e {
                    StoreError::Corrupt { id, .. } | StoreError::BadHeader { id, .. } => {
                        self.reporter.report(*id)
                    }
                    StoreError::Io { .. } => {
                        tracing::error!(op, error = %e, "chunk store I/O error")
                    }
                    _ => tracing::debug!(op, error = %e, "chunk request refused"),
                }
                Err(status_of(&e))
            }
            Err(join) => Err(Status::internal(format!("{op}: store task failed: {join}"))),
        }
    }
}

fn check_chain(chain: &[String]) -> Result<(), Status> {
    if chain.len() > pipeline::MAX_CHAIN {
        return Err(Status::invalid_argument(format!(
            "pipeline chain of {} replicas exceeds {}",
            chain.len(),
            pipeline::MAX_CHAIN
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Chunk for ChunkService {
    async fn write(&self, request: Request<WriteReq>) -> Result<Response<WriteReply>, Status> {
        let req = request.into_inner();
        check_chain(&req.chain)?;
        let (id, version, epoch, offset, sync) = (
            req.chunk_id,
            req.version,
            req.lease_epoch,
            req.offset,
            req.sync,
        );
        let data: Bytes = req.data.clone();
        let local = self.local("write", move |s| {
            s.write(id, version, epoch, offset, &data)?;
            if sync {
                s.sync(id)?;
            }
            Ok(())
        });
        let (l, r) = tokio::join!(local, self.peers.write(&req));
        if let Err(e) = &r {
            tracing::warn!(chunk = format_args!("{id:016x}"), error = %e.message(), "pipeline write failed downstream");
        }
        pipeline::join_results(l, r).map(|()| Response::new(WriteReply {}))
    }

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<ReadReply>, Status> {
        let req = request.into_inner();
        let len = req.length as usize;
        if len > MAX_IO {
            return Err(Status::invalid_argument(format!(
                "read of {len} bytes exceeds the {MAX_IO}-byte limit"
            )));
        }
        let (id, version, offset) = (req.chunk_id, req.version, req.offset);
        let data = self
            .local("read", move |s| s.read(id, version, offset, len))
            .await?;
        Ok(Response::new(ReadReply {
            data: Bytes::from(data),
        }))
    }

    async fn sync(&self, request: Request<SyncReq>) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        check_chain(&req.chain)?;
        let ids = req.chunk_ids.clone();
        let local = self.local("sync", move |s| ids.iter().try_for_each(|&id| s.sync(id)));
        let (l, r) = tokio::join!(local, self.peers.sync(&req));
        pipeline::join_results(l, r).map(|()| Response::new(Empty {}))
    }

    async fn truncate(&self, request: Request<TruncateReq>) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        check_chain(&req.chain)?;
        let (id, version, length) = (req.chunk_id, req.version, req.length);
        let local = self.local("truncate", move |s| s.truncate(id, version, length));
        let (l, r) = tokio::join!(local, self.peers.truncate(&req));
        pipeline::join_results(l, r).map(|()| Response::new(Empty {}))
    }
}
