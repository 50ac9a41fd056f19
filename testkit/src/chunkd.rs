//! For tests of the chunk daemon alone: daemons in this process on
//! 127.0.0.1:0 with temp data dirs, `Chunk` clients, and a fake MDS `Master`
//! service that records what the daemons tell it and answers as scripted.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use weft_chunkd::{Config, Daemon};
use weft_proto::chunk_client::ChunkClient;
use weft_proto::master_server::{Master, MasterServer};
use weft_proto::*;

/// An address where nothing listens (a port that was just free).
pub fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

pub async fn start_chunkd(dir: &Path, mds: &str, tweak: impl FnOnce(&mut Config)) -> Daemon {
    let mut cfg = Config::new("127.0.0.1:0".parse().unwrap(), dir, mds);
    cfg.scrub_interval = 0;
    tweak(&mut cfg);
    weft_chunkd::start(&cfg).await.expect("chunkd starts")
}

pub fn client(addr: impl ToString) -> ChunkClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", addr.to_string()))
        .unwrap()
        .connect_lazy();
    ChunkClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Bytes with no zero among them, so a hole never passes for data.
pub fn nonzero_pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 0x80)
        .collect()
}

pub fn write_req(id: u64, version: u64, offset: u64, data: &[u8], chain: &[String]) -> WriteReq {
    WriteReq {
        chunk_id: id,
        version,
        lease_epoch: 1,
        offset,
        data: data.to_vec().into(),
        chain: chain.to_vec(),
        sync: false,
        punch: false,
        serial: 0,
        punch_length: 0,
        term: 0,
        cap: None,
        source: None,
    }
}

pub async fn read(
    c: &mut ChunkClient<Channel>,
    id: u64,
    offset: u64,
    len: u32,
) -> Result<Vec<u8>, Status> {
    c.read(ReadReq {
        chunk_id: id,
        version: 0,
        offset,
        length: len,
        cap: None,
    })
    .await
    .map(|r| r.into_inner().data.to_vec())
}

#[derive(Default)]
pub struct MdsLog {
    pub registers: Vec<RegisterReq>,
    pub beats: Vec<HeartbeatReq>,
    pub corrupt: Vec<CorruptReq>,
    /// Scripted answers for the next beat.
    pub delete_next: Vec<u64>,
    pub reregister_next: bool,
    /// While set, heartbeats fail with UNAVAILABLE.
    pub fail_beats: bool,
    /// Heartbeats failed so (while `fail_beats` was set).
    pub failed_beats: u64,
    /// The term this MDS answers with.
    pub term: u64,
    /// While set, every call is answered "not leader" naming this leader
    /// (an empty string: no leader known).
    pub not_leader: Option<String>,
}

#[derive(Clone, Default)]
pub struct FakeMds {
    pub log: Arc<Mutex<MdsLog>>,
    pub chunk_size: u64,
    pub heartbeat_ms: u64,
}

#[tonic::async_trait]
impl Master for FakeMds {
    async fn register(&self, r: Request<RegisterReq>) -> Result<Response<RegisterReply>, Status> {
        let mut log = self.log.lock();
        if let Some(leader) = &log.not_leader {
            return Err(weft_proto::leader::not_leader(
                Some(leader.as_str()).filter(|l| !l.is_empty()),
            ));
        }
        log.registers.push(r.into_inner());
        Ok(Response::new(RegisterReply {
            chunk_size: self.chunk_size,
            heartbeat_ms: self.heartbeat_ms,
            term: log.term,
        }))
    }
    async fn heartbeat(
        &self,
        r: Request<HeartbeatReq>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let mut log = self.log.lock();
        if log.fail_beats {
            log.failed_beats += 1;
            return Err(Status::unavailable("scripted failure"));
        }
        if let Some(leader) = &log.not_leader {
            return Err(weft_proto::leader::not_leader(
                Some(leader.as_str()).filter(|l| !l.is_empty()),
            ));
        }
        log.beats.push(r.into_inner());
        Ok(Response::new(HeartbeatReply {
            reregister: std::mem::take(&mut log.reregister_next),
            delete_chunks: std::mem::take(&mut log.delete_next),
            term: log.term,
        }))
    }
    async fn report_corrupt(&self, r: Request<CorruptReq>) -> Result<Response<Empty>, Status> {
        self.log.lock().corrupt.push(r.into_inner());
        Ok(Response::new(Empty {}))
    }
    async fn status(&self, _: Request<StatusReq>) -> Result<Response<StatusReply>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn fsck(&self, _: Request<FsckReq>) -> Result<Response<FsckReply>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

impl FakeMds {
    pub fn new(chunk_size: u64, heartbeat_ms: u64) -> FakeMds {
        FakeMds {
            log: Default::default(),
            chunk_size,
            heartbeat_ms,
        }
    }

    /// Serves on `addr` (e.g. "127.0.0.1:0"); returns the bound address.
    pub async fn serve(&self, addr: &str) -> SocketAddr {
        let l = TcpListener::bind(addr).await.unwrap();
        let bound = l.local_addr().unwrap();
        let svc = MasterServer::new(self.clone());
        tokio::spawn(
            Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpIncoming::from(l)),
        );
        bound
    }
}

/// `n` daemons, each in its own temp dir, reporting to no MDS (pipeline
/// tests): the dirs (keep them alive), the daemons and their addresses.
pub async fn start_chain(n: usize) -> (Vec<tempfile::TempDir>, Vec<Daemon>, Vec<String>) {
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let mds = dead_addr();
    let mut ds = Vec::new();
    for d in &dirs {
        ds.push(start_chunkd(d.path(), &mds, |_| {}).await);
    }
    let addrs = ds.iter().map(|d| d.addr.to_string()).collect();
    (dirs, ds, addrs)
}
