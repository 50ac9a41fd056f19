//! Forwarding down the replication pipeline: a pool of lazily connected
//! channels to peer chunk daemons keyed by address (`weft_proto::net::Pool`), the calls that pass
//! a Write/Sync/Truncate on to the next replica, and how a downstream failure
//! is reported upstream.
//!
//! Invariant: a downstream failure is never turned into success, and the
//! status that travels back up names the replica that failed — in the message
//! and in the `weft-failed-addr` metadata entry, which hops further up pass
//! through unchanged, so the client learns the deepest failing address.

use std::time::Duration;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use weft_proto::chunk_client::ChunkClient;
use weft_proto::chunk_space_client::ChunkSpaceClient;
use weft_proto::net::Channel;
use weft_proto::net::Pool;
use weft_proto::{AllocateReq, SyncReq, TruncateReq, WriteReq, MAX_MESSAGE};

/// Metadata key naming the replica address whose failure a status reports.
pub const FAILED_ADDR_KEY: &str = "weft-failed-addr";

/// Longest chain accepted: more is a bug or a loop, not a replication factor.
pub const MAX_CHAIN: usize = 16;

/// Per-call bound: a 4 MiB write down a few hops takes far less.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Channels to peer chunk daemons, created on first use and reused.
pub struct Peers {
    pool: Pool,
}

impl Default for Peers {
    fn default() -> Peers {
        Peers {
            pool: Pool::new(Some(CALL_TIMEOUT)),
        }
    }
}

impl Peers {
    pub fn new() -> Peers {
        Peers::default()
    }

    /// A ChunkSpace client for `addr`, on the peer's one connection.
    pub fn space_client(&self, addr: &str) -> Result<ChunkSpaceClient<Channel>, Status> {
        Ok(ChunkSpaceClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// A Chunk client for `addr`, sharing one HTTP/2 connection per peer.
    pub fn client(&self, addr: &str) -> Result<ChunkClient<Channel>, Status> {
        Ok(ChunkClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        self.pool
            .channel(addr)
            .map_err(|e| failed(addr, Code::Unavailable, format!("bad replica address: {e}")))
    }

    pub async fn allocate(&self, req: &AllocateReq) -> Result<(), Status> {
        let Some((next, rest)) = req.chain.split_first() else {
            return Ok(());
        };
        let fwd = AllocateReq {
            chain: rest.to_vec(),
            ..req.clone()
        };
        let mut client = self.space_client(next)?;
        client
            .allocate(fwd)
            .await
            .map(drop)
            .map_err(|s| downstream_failure(next, s))
    }

    /// Passes `req` to `chain[0]`, which will forward it to `chain[1..]`.
    /// An empty chain is the end of the pipeline: nothing to do.
    pub async fn write(&self, req: &WriteReq) -> Result<(), Status> {
        let Some((next, rest)) = req.chain.split_first() else {
            return Ok(());
        };
        let fwd = WriteReq {
            chain: rest.to_vec(),
            ..req.clone() // data is a refcounted Bytes: no copy
        };
        let mut client = self.client(next)?;
        client
            .write(fwd)
            .await
            .map(drop)
            .map_err(|s| downstream_failure(next, s))
    }

    pub async fn sync(&self, req: &SyncReq) -> Result<(), Status> {
        let Some((next, rest)) = req.chain.split_first() else {
            return Ok(());
        };
        let fwd = SyncReq {
            chunk_ids: req.chunk_ids.clone(),
            chain: rest.to_vec(),
            caps: req.caps.clone(),
        };
        let mut client = self.client(next)?;
        client
            .sync(fwd)
            .await
            .map(drop)
            .map_err(|s| downstream_failure(next, s))
    }

    pub async fn truncate(&self, req: &TruncateReq) -> Result<(), Status> {
        let Some((next, rest)) = req.chain.split_first() else {
            return Ok(());
        };
        let fwd = TruncateReq {
            chain: rest.to_vec(),
            ..req.clone()
        };
        let mut client = self.client(next)?;
        client
            .truncate(fwd)
            .await
            .map(drop)
            .map_err(|s| downstream_failure(next, s))
    }
}

fn failed(addr: &str, code: Code, message: String) -> Status {
    let mut md = MetadataMap::new();
    if let Ok(v) = MetadataValue::try_from(addr) {
        md.insert(FAILED_ADDR_KEY, v);
    }
    Status::with_metadata(code, message, md)
}

/// The status to answer upstream when the call to replica `addr` failed with
/// `status`. Answers about the data (no space, stale version, bad range,
/// missing or corrupt replica) keep their code; anything else — refused
/// connection, timeout, internal error — becomes UNAVAILABLE. A status that
/// already names a failed replica further down is passed through as is.
pub fn downstream_failure(addr: &str, status: Status) -> Status {
    if let Some(deeper) = status.metadata().get(FAILED_ADDR_KEY) {
        let deeper = deeper.to_str().unwrap_or(addr).to_string();
        return failed(&deeper, status.code(), status.message().to_string());
    }
    let code = match status.code() {
        c @ (Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::NotFound
        | Code::DataLoss) => c,
        _ => Code::Unavailable,
    };
    failed(
        addr,
        code,
        format!("replica {addr} failed: {}", status.message()),
    )
}

/// The address a status says failed, if it names one.
pub fn failed_addr(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(FAILED_ADDR_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Combines the local result with the downstream one: OK only when both are;
/// a local failure wins (it is this replica's own answer).
pub fn join_results<T>(local: Result<T, Status>, remote: Result<(), Status>) -> Result<T, Status> {
    let v = local?;
    remote?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downstream_codes() {
        let s = downstream_failure("10.0.0.1:5", Status::unavailable("tcp connect error"));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("10.0.0.1:5"));
        assert_eq!(failed_addr(&s).as_deref(), Some("10.0.0.1:5"));
        let s = downstream_failure("a:1", Status::resource_exhausted("full"));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s = downstream_failure("a:1", Status::internal("boom"));
        assert_eq!(s.code(), Code::Unavailable);
        // One hop further up keeps the deepest address.
        let up = downstream_failure("b:2", s);
        assert_eq!(failed_addr(&up).as_deref(), Some("a:1"));
        assert!(up.message().contains("a:1"));
    }

    #[test]
    fn join_prefers_local_error() {
        let r: Result<(), Status> = join_results(
            Err(Status::data_loss("local")),
            Err(Status::unavailable("remote")),
        );
        assert_eq!(r.unwrap_err().code(), Code::DataLoss);
        let r: Result<u8, Status> = join_results(Ok(1), Err(Status::unavailable("remote")));
        assert_eq!(r.unwrap_err().code(), Code::Unavailable);
        assert_eq!(join_results(Ok(1), Ok(())).unwrap(), 1);
    }
}
