//! The MDS's calls to chunk daemons' `ChunkAdmin` service, on one pooled
//! connection per daemon, each bounded in time.

use std::time::Duration;
use weft_proto::pb;

const SET_VERSION_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections to chunk daemons' ChunkAdmin service, one per daemon, reused.
static ADMIN_POOL: std::sync::OnceLock<weft_proto::net::Pool> = std::sync::OnceLock::new();

/// A ChunkAdmin client for the daemon at `addr`, on its pooled connection.
pub fn chunk_admin(
    addr: &str,
) -> Result<pb::chunk_admin_client::ChunkAdminClient<weft_proto::net::Channel>, tonic::Status> {
    let ch = ADMIN_POOL
        .get_or_init(|| weft_proto::net::Pool::new(None))
        .channel(addr)
        .map_err(tonic::Status::invalid_argument)?;
    Ok(pb::chunk_admin_client::ChunkAdminClient::new(ch))
}

/// `call` bounded by `timeout`; running out is UNAVAILABLE naming `addr`.
pub async fn within<T>(
    addr: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::unavailable(format!(
                "{addr}: no answer within {timeout:?}"
            )))
        })
}

/// A Chunk client for the daemon at `addr` (the MDS's own unpack copies),
/// on the same pooled connection.
pub fn chunk_data(
    addr: &str,
) -> Result<pb::chunk_client::ChunkClient<weft_proto::net::Channel>, tonic::Status> {
    let ch = ADMIN_POOL
        .get_or_init(|| weft_proto::net::Pool::new(None))
        .channel(addr)
        .map_err(tonic::Status::invalid_argument)?;
    Ok(pb::chunk_client::ChunkClient::new(ch))
}

pub async fn set_version(
    addr: &str,
    chunk: u64,
    version: u64,
    term: u64,
) -> Result<(), tonic::Status> {
    let mut c = chunk_admin(addr)?;
    within(
        addr,
        SET_VERSION_TIMEOUT,
        c.set_version(pb::SetVersionReq {
            chunk_id: chunk,
            version,
            term,
        }),
    )
    .await
    .map(drop)
}
