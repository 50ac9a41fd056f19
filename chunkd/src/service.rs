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
//!   UNAVAILABLE          also: this replica missed one of the chunk's
//!                        serials in this epoch (ordering.rs)
//!
//! Invariants: a pipelined call answers OK only when this replica and every
//! replica after it succeeded; every replica applies a chunk's writes and
//! truncates in the order of the primary's serial numbers (`ordering.rs`), and
//! a stale version or epoch is refused before it takes a serial or waits.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};
use weft_proto::chunk_server::{Chunk, ChunkServer};
use weft_proto::chunk_space_server::{ChunkSpace, ChunkSpaceServer};
use weft_proto::{
    AllocateReply, AllocateReq, CopySource, DataExtentsReply, DataExtentsReq, Empty, Extent,
    ReadReply, ReadReq, SyncReq, TruncateReq, WriteReply, WriteReq, MAX_IO, MAX_MESSAGE,
};

use weft_proto::caps::{unix_ms, KeyFile, Mode};
use weft_proto::gate::{peer_of, refuse_as, Refusal};
use weft_proto::identity::{Peer, Role};
use weft_proto::ChunkCap;

use crate::heartbeat::CorruptReporter;
use crate::ordering::{SeqError, Sequencer};
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

/// The status an ordering failure is answered with: a newer epoch is a stale
/// request; a missed or repeated serial means this replica cannot apply the
/// epoch's mutations in order, so it fails as a replica (the hop above names it).
pub fn status_of_seq(e: &SeqError) -> Status {
    match e {
        SeqError::Stale { .. } => Status::failed_precondition(e.to_string()),
        SeqError::Duplicate { .. } | SeqError::Broken { .. } => Status::unavailable(e.to_string()),
    }
}

#[derive(Clone)]
pub struct ChunkService {
    store: Arc<Store>,
    peers: Arc<Peers>,
    reporter: CorruptReporter,
    order: Arc<Sequencer>,
    /// Writes carry their lease's MDS term; older ones are refused.
    term: Arc<crate::term::TermGuard>,
    /// With a key: a client needs the MDS's capability for each chunk.
    caps: Option<Arc<KeyFile>>,
}

impl ChunkService {
    pub fn new(
        store: Arc<Store>,
        peers: Arc<Peers>,
        reporter: CorruptReporter,
        order: Arc<Sequencer>,
        term: Arc<crate::term::TermGuard>,
    ) -> ChunkService {
        ChunkService {
            store,
            peers,
            reporter,
            order,
            term,
            caps: None,
        }
    }

    /// Requires chunk capabilities signed with these keys (--cap-key).
    pub fn with_caps(mut self, caps: Option<Arc<KeyFile>>) -> ChunkService {
        self.caps = caps;
        self
    }

    /// Lets a call touch `chunk_id` in `mode` only with a valid capability,
    /// unless no key is configured or the caller is a chunk daemon (a
    /// pipeline's upstream replica, a repair copy) by its certificate. A
    /// refusal is logged with who and why, counted, and answered
    /// UNAUTHENTICATED before anything is done.
    fn authorize(
        &self,
        peer: Option<&Peer>,
        what: &str,
        chunk_id: u64,
        version: u64,
        mode: Mode,
        cap: Option<&ChunkCap>,
    ) -> Result<(), Status> {
        let Some(keys) = &self.caps else {
            return Ok(());
        };
        if peer.is_some_and(|p| p.role == Role::Chunkd) {
            return Ok(());
        }
        keys.ring()
            .verify(cap, chunk_id, version, mode, unix_ms())
            .map_err(|why| {
                let why = format!("chunk {chunk_id:016x} v{version}: {why}");
                let s = refuse_as(Refusal::Capability, peer, what, &why);
                let s = Status::unauthenticated(s.message().to_string());
                crate::metrics::error(&s);
                s
            })
    }

    /// `authorize` for a read of `[offset, offset + len)`: a capability
    /// limited to a byte range (one needle of a segment) must cover it.
    #[allow(clippy::too_many_arguments)]
    fn authorize_read(
        &self,
        peer: Option<&Peer>,
        what: &str,
        chunk_id: u64,
        version: u64,
        cap: Option<&ChunkCap>,
        offset: u64,
        len: u64,
    ) -> Result<(), Status> {
        self.authorize(peer, what, chunk_id, version, Mode::Read, cap)?;
        if self.caps.is_none() || peer.is_some_and(|p| p.role == Role::Chunkd) {
            return Ok(());
        }
        weft_proto::caps::covers(cap, offset, len).map_err(|why| {
            let why = format!("chunk {chunk_id:016x} v{version}: {why}");
            let s = refuse_as(Refusal::Capability, peer, what, &why);
            let s = Status::unauthenticated(s.message().to_string());
            crate::metrics::error(&s);
            s
        })
    }

    /// Refuses a stale mutation before it takes a serial or a place in line;
    /// at the head of the pipeline (serial 0) assigns the serial.
    fn admit(&self, id: u64, version: u64, epoch: u64, serial: u64) -> Result<u64, Status> {
        self.store
            .check_fresh(id, version, epoch)
            .map_err(|e| status_of(&e))?;
        if serial != 0 {
            self.order.observe(id, epoch).map(|()| serial)
        } else {
            self.order.assign(id, epoch)
        }
        .map_err(|e| status_of_seq(&e))
    }

    /// Runs a store mutation of `id` in its serial's turn.
    async fn local_in_order<T, F>(
        &self,
        op: &'static str,
        (id, epoch, serial): (u64, u64, u64),
        f: F,
    ) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let _turn = self
            .order
            .enter(id, epoch, serial)
            .await
            .map_err(|e| status_of_seq(&e))?;
        self.local(op, f).await
    }

    /// The service wrapped for a tonic server, with weft's message limits.
    pub fn into_server(self) -> ChunkServer<ChunkService> {
        ChunkServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The `ChunkSpace` service (where a replica holds data), same store.
    pub fn space_server(&self) -> ChunkSpaceServer<ChunkService> {
        ChunkSpaceServer::new(self.clone())
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
                let status = status_of(&e);
                crate::metrics::error(&status);
                Err(status)
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
        let _timed = crate::metrics::M
            .requests
            .guard(crate::metrics::ChunkOp::Write.index());
        let peer = peer_of(&request).cloned();
        let req = request.into_inner();
        self.admit_write(peer.as_ref(), "Chunk.Write", &req)?;
        self.write_admitted(req).await
    }

    async fn copy(&self, request: Request<WriteReq>) -> Result<Response<WriteReply>, Status> {
        let _timed = crate::metrics::M
            .requests
            .guard(crate::metrics::ChunkOp::Copy.index());
        let peer = peer_of(&request).cloned();
        let mut req = request.into_inner();
        let Some(src) = req.source.take() else {
            return Err(Status::invalid_argument("Chunk.Copy without a source"));
        };
        if !req.data.is_empty() || req.punch {
            return Err(Status::invalid_argument(
                "Chunk.Copy carries no data and is no punch",
            ));
        }
        // The destination is checked before anything is read.
        self.admit_write(peer.as_ref(), "Chunk.Copy", &req)?;
        let data = self.read_source(peer.as_ref(), &src).await?;
        let md5 = if src.md5 {
            let (state, d) = (src.md5_state.clone(), data.clone());
            tokio::task::spawn_blocking(move || weft_proto::md5_state::resume(&state, &d))
                .await
                .map_err(|e| Status::internal(format!("hashing task failed: {e}")))?
                .map_err(Status::invalid_argument)?
        } else {
            Vec::new()
        };
        // From here on a write of these bytes: downstream replicas get them
        // as `data`, in this chunk's serial order.
        req.data = data;
        let mut reply = self.write_admitted(req).await?;
        reply.get_mut().md5_state = md5;
        Ok(reply)
    }

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<ReadReply>, Status> {
        self.read_inner(request).await
    }

    async fn sync(&self, request: Request<SyncReq>) -> Result<Response<Empty>, Status> {
        self.sync_inner(request).await
    }

    async fn truncate(&self, request: Request<TruncateReq>) -> Result<Response<Empty>, Status> {
        self.truncate_inner(request).await
    }
}

impl ChunkService {
    /// The checks every write-like call passes before it reads or takes a
    /// serial: chain length, capability, MDS term.
    fn admit_write(&self, peer: Option<&Peer>, what: &str, req: &WriteReq) -> Result<(), Status> {
        check_chain(&req.chain)?;
        self.authorize(
            peer,
            what,
            req.chunk_id,
            req.version,
            Mode::Write,
            req.cap.as_ref(),
        )?;
        // A lease from an MDS older than one heard from (a deposed leader, a
        // stale copy): the writer must ask the current MDS for a lease.
        self.term.admit_status(req.term)
    }

    /// The bytes a copy writes: from this daemon's replica of the source
    /// when it holds that version, else from the listed replicas in order
    /// (their reads verify checksums); zeros for a hole. A failure carries
    /// `COPY_SOURCE_KEY` so the client refreshes the source, not the
    /// destination's pipeline.
    async fn read_source(&self, peer: Option<&Peer>, src: &CopySource) -> Result<Bytes, Status> {
        let len = src.length as usize;
        if src.length > MAX_IO as u64 {
            return Err(Status::invalid_argument(format!(
                "copy of {len} bytes exceeds the {MAX_IO}-byte limit"
            )));
        }
        if src.chunk_id == 0 {
            return Ok(Bytes::from(vec![0u8; len]));
        }
        let (id, version, offset) = (src.chunk_id, src.version, src.offset);
        self.authorize_read(
            peer,
            "Chunk.Copy",
            id,
            version,
            src.cap.as_ref(),
            offset,
            src.length,
        )?;
        let mut last = Status::not_found(format!("chunk {id:016x} has no replica to copy from"));
        if self.store.summary(id).is_some_and(|s| s.version == version) {
            match self
                .local("copy source", move |s| s.read(id, version, offset, len))
                .await
            {
                Ok(d) => {
                    crate::metrics::M.copied_bytes.inc_by(d.len() as u64);
                    return Ok(Bytes::from(d));
                }
                Err(s) => last = s,
            }
        }
        for addr in &src.replicas {
            let req = ReadReq {
                chunk_id: id,
                version,
                offset,
                length: len as u32,
                cap: src.cap.clone(),
            };
            let got = match self.peers.client(addr) {
                Ok(mut c) => c.read(req).await.map(|r| r.into_inner().data),
                Err(s) => Err(s),
            };
            match got {
                Ok(d) if d.len() == len => {
                    crate::metrics::M.copied_bytes.inc_by(d.len() as u64);
                    return Ok(d);
                }
                Ok(d) => {
                    last = Status::data_loss(format!("short read: {} of {len} bytes", d.len()))
                }
                Err(s) => last = s,
            }
            tracing::info!(chunk = format_args!("{id:016x}"), addr = %addr, status = %last.message(), "copy source replica failed, trying the next");
        }
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert(
            weft_proto::contract::COPY_SOURCE_KEY,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let s = Status::with_metadata(
            last.code(),
            format!("copy source chunk {id:016x}: {}", last.message()),
            md,
        );
        crate::metrics::error(&s);
        Err(s)
    }

    /// A write that passed `admit_write`: takes its serial and runs.
    async fn write_admitted(&self, mut req: WriteReq) -> Result<Response<WriteReply>, Status> {
        let (id, version, epoch, offset, sync, punch) = (
            req.chunk_id,
            req.version,
            req.lease_epoch,
            req.offset,
            req.sync,
            req.punch,
        );
        // A punch without data names its length: the zeros are made here
        // (and by every replica downstream, which gets no data either).
        let zeros = if punch && req.data.is_empty() && req.punch_length > 0 {
            if req.punch_length > MAX_IO as u64 {
                return Err(Status::invalid_argument(format!(
                    "punch of {} bytes exceeds the {MAX_IO}-byte limit",
                    req.punch_length
                )));
            }
            Some(Bytes::from(vec![0u8; req.punch_length as usize]))
        } else {
            None
        };
        req.serial = self.admit(id, version, epoch, req.serial)?;
        let serial = req.serial;
        // In a task of its own: once a serial is taken, this replica's turn
        // and the forward run to the end even if the caller goes away, or
        // every later serial here and downstream would wait on a gap.
        let this = self.clone();
        let run = tokio::spawn(weft_proto::reqid::carry(async move {
            let data: Bytes = zeros.unwrap_or_else(|| req.data.clone());
            crate::metrics::M.written_bytes.inc_by(data.len() as u64);
            let local = this.local_in_order("write", (id, epoch, serial), move |s| {
                let allocated = if punch {
                    s.punch(id, version, epoch, offset, &data)?
                } else {
                    s.write(id, version, epoch, offset, &data)?
                };
                if sync {
                    s.sync(id)?;
                }
                Ok(allocated)
            });
            let (l, r) = tokio::join!(local, this.peers.write(&req));
            if let Err(e) = &r {
                tracing::warn!(chunk = format_args!("{id:016x}"), error = %e.message(), "pipeline write failed downstream");
            }
            pipeline::join_results(l, r)
        }));
        run.await
            .map_err(|e| Status::internal(format!("write task failed: {e}")))?
            // Measured under the chunk's lock right after this mutation, in
            // serial order: the head's figure stands for every replica.
            .map(|allocated| {
                Response::new(WriteReply {
                    allocated: Some(allocated),
                    serial,
                    md5_state: Default::default(),
                })
            })
    }

    async fn read_inner(&self, request: Request<ReadReq>) -> Result<Response<ReadReply>, Status> {
        let _timed = crate::metrics::M
            .requests
            .guard(crate::metrics::ChunkOp::Read.index());
        let peer = peer_of(&request).cloned();
        let req = request.into_inner();
        self.authorize_read(
            peer.as_ref(),
            "Chunk.Read",
            req.chunk_id,
            req.version,
            req.cap.as_ref(),
            req.offset,
            req.length as u64,
        )?;
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
        // Counted even without --http: heartbeats carry it to `weft stats`.
        crate::metrics::M.read_bytes.inc_by(data.len() as u64);
        Ok(Response::new(ReadReply {
            data: Bytes::from(data),
        }))
    }

    async fn sync_inner(&self, request: Request<SyncReq>) -> Result<Response<Empty>, Status> {
        let _timed = crate::metrics::M
            .requests
            .guard(crate::metrics::ChunkOp::Sync.index());
        let peer = peer_of(&request).cloned();
        let req = request.into_inner();
        check_chain(&req.chain)?;
        for &id in &req.chunk_ids {
            let cap = req.caps.iter().find(|c| c.chunk_id == id);
            // Any capability for the chunk: a sync changes no byte.
            let version = cap.map_or(0, |c| c.version);
            self.authorize(peer.as_ref(), "Chunk.Sync", id, version, Mode::Read, cap)?;
        }
        let ids = req.chunk_ids.clone();
        let local = self.local("sync", move |s| ids.iter().try_for_each(|&id| s.sync(id)));
        let (l, r) = tokio::join!(local, self.peers.sync(&req));
        pipeline::join_results(l, r).map(|()| Response::new(Empty {}))
    }

    async fn truncate_inner(
        &self,
        request: Request<TruncateReq>,
    ) -> Result<Response<Empty>, Status> {
        let _timed = crate::metrics::M
            .requests
            .guard(crate::metrics::ChunkOp::Truncate.index());
        let peer = peer_of(&request).cloned();
        let mut req = request.into_inner();
        check_chain(&req.chain)?;
        let (id, version, epoch, length) = (req.chunk_id, req.version, req.lease_epoch, req.length);
        self.authorize(
            peer.as_ref(),
            "Chunk.Truncate",
            id,
            version,
            Mode::Write,
            req.cap.as_ref(),
        )?;
        req.serial = self.admit(id, version, epoch, req.serial)?;
        let serial = req.serial;
        let this = self.clone();
        let run = tokio::spawn(weft_proto::reqid::carry(async move {
            let local = this.local_in_order("truncate", (id, epoch, serial), move |s| {
                s.truncate(id, version, length)
            });
            let (l, r) = tokio::join!(local, this.peers.truncate(&req));
            pipeline::join_results(l, r)
        }));
        run.await
            .map_err(|e| Status::internal(format!("truncate task failed: {e}")))?
            .map(|()| Response::new(Empty {}))
    }
}

#[tonic::async_trait]
impl ChunkSpace for ChunkService {
    async fn data_extents(
        &self,
        request: Request<DataExtentsReq>,
    ) -> Result<Response<DataExtentsReply>, Status> {
        let _timed = crate::metrics::M
            .requests
            .guard(crate::metrics::ChunkOp::DataExtents.index());
        let peer = peer_of(&request).cloned();
        let req = request.into_inner();
        let (id, version, offset, len) = (req.chunk_id, req.version, req.offset, req.length);
        self.authorize_read(
            peer.as_ref(),
            "ChunkSpace.DataExtents",
            id,
            version,
            req.cap.as_ref(),
            offset,
            len,
        )?;
        let runs = self
            .local("data_extents", move |s| {
                s.data_extents(id, version, offset, len)
            })
            .await?;
        let extents = runs
            .into_iter()
            .map(|(s, e)| Extent {
                offset: s,
                length: e - s,
            })
            .collect();
        Ok(Response::new(DataExtentsReply { extents }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateReq>,
    ) -> Result<Response<AllocateReply>, Status> {
        let _timed = crate::metrics::M
            .requests
            .guard(crate::metrics::ChunkOp::Allocate.index());
        let peer = peer_of(&request).cloned();
        let req = request.into_inner();
        check_chain(&req.chain)?;
        self.authorize(
            peer.as_ref(),
            "ChunkSpace.Allocate",
            req.chunk_id,
            req.version,
            Mode::Write,
            req.cap.as_ref(),
        )?;
        let (id, version, epoch, offset, len) = (
            req.chunk_id,
            req.version,
            req.lease_epoch,
            req.offset,
            req.length,
        );
        // Changes no byte, so it takes no serial: it only needs the replica
        // and the space, whatever order the chunk's writes apply in.
        let local = self.local("allocate", move |s| {
            s.allocate(id, version, epoch, offset, len)
        });
        let (l, r) = tokio::join!(local, self.peers.allocate(&req));
        pipeline::join_results(l, r).map(|allocated| {
            Response::new(AllocateReply {
                allocated: Some(allocated),
            })
        })
    }
}
