//! MDS↔MDS traffic: openraft's AppendEntries, Vote and InstallSnapshot as
//! postcard bytes over tonic (`weft.Raft`), on the same port, TLS and role
//! gate as everything else (only an `mds` certificate may call it).
//!
//! The client side also feeds the leader lease: each AppendEntries a
//! follower accepted is recorded with the time it was sent (`Acks`).
//!
//! A peer is dialled at its address in the membership unless `--peer-via`
//! names another way to it (NAT, or a test's fault proxy on that one link);
//! the membership address is still what clients are told.

use super::log_store::{LogStore, OnDisk};
use super::{Acks, Raft, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};
use weft_proto::net::Pool;
use weft_proto::pb;
use weft_proto::pb::raft_client::RaftClient;

type Nid = u64;
type RpcErr<E> = RPCError<Nid, BasicNode, RaftError<Nid, E>>;

pub struct Network {
    dial: Arc<Dial>,
    acks: Arc<Acks>,
}

/// How this node reaches its peers: one pooled channel per address, and
/// `--peer-via` (node id → the address to dial it through).
pub struct Dial {
    pool: Pool,
    via: HashMap<Nid, String>,
}

impl Dial {
    pub fn new(via: HashMap<Nid, String>) -> Dial {
        Dial {
            pool: Pool::new(None),
            via,
        }
    }

    fn addr<'a>(&'a self, target: Nid, member_addr: &'a str) -> &'a str {
        self.via
            .get(&target)
            .map(String::as_str)
            .unwrap_or(member_addr)
    }

    /// Asks `target` whether entry (`index`, `term`) is on its disk, letting
    /// it wait up to `wait`; false if it says no or cannot be reached.
    pub async fn synced(
        &self,
        target: Nid,
        member_addr: &str,
        index: u64,
        term: u64,
        wait: std::time::Duration,
    ) -> bool {
        let Ok(channel) = self.pool.channel(self.addr(target, member_addr)) else {
            return false;
        };
        let mut request = Request::new(pb::SyncedReq {
            index,
            term,
            wait_ms: wait.as_millis() as u32,
        });
        request.set_timeout(wait + std::time::Duration::from_millis(500));
        RaftClient::new(channel)
            .synced(request)
            .await
            .is_ok_and(|r| r.into_inner().on_disk)
    }
}

impl Network {
    pub fn new(acks: Arc<Acks>, dial: Arc<Dial>) -> Network {
        Network { dial, acks }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: Nid, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: self.dial.addr(target, &node.addr).to_string(),
            dial: self.dial.clone(),
            acks: self.acks.clone(),
        }
    }
}

pub struct Peer {
    target: Nid,
    addr: String,
    dial: Arc<Dial>,
    acks: Arc<Acks>,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data =
            postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let channel = self
            .dial
            .pool
            .channel(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(weft_proto::MAX_MESSAGE)
            .max_encoding_message_size(weft_proto::MAX_MESSAGE);
        let mut request = Request::new(pb::RaftBytes { data });
        request.set_timeout(option.hard_ttl());
        let sent = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = sent.map_err(|s| {
            let e = std::io::Error::other(format!("{}: {}", self.addr, s.message()));
            if s.code() == tonic::Code::Unavailable {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let res: Result<Resp, RaftError<Nid, E>> =
            postcard::from_bytes(&reply.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<Nid>, RpcErr<openraft::error::Infallible>> {
        let sent = Instant::now();
        let term = rpc.vote.leader_id().term;
        let resp: AppendEntriesResponse<Nid> = self.call(Rpc::Append, &rpc, &option).await?;
        if matches!(
            resp,
            AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)
        ) {
            self.acks.ack(self.target, term, sent);
        }
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<Nid>, RpcErr<InstallSnapshotError>> {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<Nid>,
        option: RPCOption,
    ) -> Result<VoteResponse<Nid>, RpcErr<openraft::error::Infallible>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// The server side: hands each call to this node's openraft, and answers
/// `Synced` from its log.
#[derive(Clone)]
pub struct Service(pub Raft, pub LogStore);

fn decode<T: DeserializeOwned>(req: Request<pb::RaftBytes>) -> Result<T, Status> {
    postcard::from_bytes(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<pb::RaftBytes>, Status> {
    postcard::to_allocvec(v)
        .map(|data| Response::new(pb::RaftBytes { data }))
        .map_err(|e| Status::internal(format!("cannot encode a Raft reply: {e}")))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for Service {
    async fn append_entries(
        &self,
        req: Request<pb::RaftBytes>,
    ) -> Result<Response<pb::RaftBytes>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        encode(&self.0.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<pb::RaftBytes>) -> Result<Response<pb::RaftBytes>, Status> {
        let rpc: VoteRequest<Nid> = decode(req)?;
        encode(&self.0.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::RaftBytes>,
    ) -> Result<Response<pb::RaftBytes>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req)?;
        encode(&self.0.install_snapshot(rpc).await)
    }

    async fn synced(
        &self,
        req: Request<pb::SyncedReq>,
    ) -> Result<Response<pb::SyncedReply>, Status> {
        let r = req.into_inner();
        let wait = std::time::Duration::from_millis(u64::from(r.wait_ms.min(10_000)));
        let until = tokio::time::Instant::now() + wait;
        let on_disk = self.1.wait_on_disk(r.index, r.term, false, until).await == OnDisk::Yes;
        Ok(Response::new(pb::SyncedReply { on_disk }))
    }
}
