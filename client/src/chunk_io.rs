//! Talking to chunk daemons: one lazily connected channel per daemon address,
//! and the data RPCs (Write down a replica pipeline, Read from one replica with
//! fail-over, Sync, Truncate; ChunkSpace.DataExtents for SEEK_DATA/SEEK_HOLE). Also the pure arithmetic that cuts a file byte
//! range into per-chunk pieces.
//!
//! Invariants: no request carries more than `weft_proto::MAX_IO` bytes of data
//! (or asks for more); every RPC is bounded by `op_timeout` so a hung daemon
//! fails the call instead of hanging the file system; a pipeline's head is
//! `replicas[0]` and the `chain` is the remaining replicas in order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tonic::Status;
use weft_proto::chunk_client::ChunkClient;
use weft_proto::chunk_space_client::ChunkSpaceClient;
use weft_proto::net::Channel;
use weft_proto::*;

use weft_proto::contract::{Call, Next};

/// A piece of a file range that falls within one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub index: u64,
    /// Offset within the chunk.
    pub off: u64,
    pub len: u64,
    /// Offset of this piece within the caller's buffer.
    pub buf_off: u64,
}

/// Cuts [offset, offset+len) into pieces that neither cross a chunk boundary
/// nor exceed `max_io` bytes, in file order.
pub fn split_range(offset: u64, len: u64, chunk_size: u64, max_io: u64) -> Vec<Piece> {
    assert!(chunk_size > 0 && max_io > 0);
    let mut out = Vec::new();
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let index = pos / chunk_size;
        let off = pos % chunk_size;
        let n = (chunk_size - off).min(end - pos).min(max_io);
        out.push(Piece {
            index,
            off,
            len: n,
            buf_off: pos - offset,
        });
        pos += n;
    }
    out
}

/// Clips a read of `size` bytes at `offset` to a file of `file_size` bytes.
pub fn clip_read(offset: u64, size: u64, file_size: u64) -> u64 {
    if offset >= file_size {
        0
    } else {
        size.min(file_size - offset)
    }
}

pub struct ChunkIo {
    /// One lazily connected channel per daemon, shared by its services.
    channels: weft_proto::net::Pool,
    op_timeout: Duration,
    /// Replicas whose last read failed (with a "try another" status), and
    /// when: tried last for a while, so spreading reads does not keep paying
    /// for a dead daemon.
    failed_at: Mutex<HashMap<String, Instant>>,
    /// The newest capability seen for each chunk (from its location or
    /// lease), for the calls that name chunks by id only (Sync).
    caps: Mutex<HashMap<u64, ChunkCap>>,
}

/// Capabilities remembered for Sync at most; the map starts over past it.
const MAX_CAPS: usize = 16384;

/// A cached location or lease whose capability runs out within this long is
/// renewed from the MDS before it is used.
pub const CAP_MARGIN_MS: u64 = 2000;

/// Whether `loc`'s capability (if it has one) is still good for a while.
pub fn cap_fresh(loc: &ChunkLoc) -> bool {
    loc.cap
        .as_ref()
        .is_none_or(|c| c.expires_ms > weft_proto::caps::unix_ms() + CAP_MARGIN_MS)
}

/// How long a replica that failed a read is tried after the others.
const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// Why no replica could serve a read.
#[derive(Debug)]
pub struct ReadFailure {
    /// Every replica failed with a "try another" status; a location refresh may help.
    pub all_retryable: bool,
    pub last: Option<Status>,
}

impl ChunkIo {
    pub fn new(op_timeout: Duration) -> ChunkIo {
        ChunkIo {
            channels: weft_proto::net::Pool::new(None),
            op_timeout,
            failed_at: Mutex::new(HashMap::new()),
            caps: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers `loc`'s capability for later calls naming only its chunk.
    pub fn remember(&self, loc: &ChunkLoc) {
        if let Some(c) = &loc.cap {
            let mut m = self.caps.lock();
            if m.len() >= MAX_CAPS {
                m.clear();
            }
            m.insert(loc.chunk_id, c.clone());
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        self.channels
            .channel(addr)
            .map_err(Status::invalid_argument)
    }

    fn client(&self, addr: &str) -> Result<ChunkClient<Channel>, Status> {
        Ok(ChunkClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    fn space_client(&self, addr: &str) -> Result<ChunkSpaceClient<Channel>, Status> {
        Ok(ChunkSpaceClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// Reserves `[offset, offset+length)` of the chunk `w` names on every
    /// replica of its lease's pipeline (fallocate).
    /// Returns the primary's data bytes allocated for the chunk afterwards.
    pub async fn allocate(
        &self,
        w: &ChunkWrite,
        offset: u64,
        length: u64,
    ) -> Result<Option<u64>, Status> {
        let _timed = crate::metrics::M
            .chunk
            .guard(crate::metrics::ChunkOp::Allocate.index());
        let loc = w
            .chunk
            .as_ref()
            .ok_or_else(|| Status::internal("ChunkWrite without a chunk"))?;
        let (head, chain) = pipeline(loc)?;
        let mut c = self.space_client(&head)?;
        let req = AllocateReq {
            chunk_id: loc.chunk_id,
            version: loc.version,
            lease_epoch: w.lease_epoch,
            offset,
            length,
            chain,
            cap: loc.cap.clone(),
        };
        self.bounded(c.allocate(req)).await.map(|r| r.allocated)
    }

    /// The parts of `[offset, offset+length)` of the chunk `loc` names that
    /// hold data, as ascending (start, end) chunk offsets, from the first
    /// replica that answers.
    pub async fn data_extents(
        &self,
        loc: &ChunkLoc,
        offset: u64,
        length: u64,
    ) -> Result<Vec<(u64, u64)>, Status> {
        let _timed = crate::metrics::M
            .chunk
            .guard(crate::metrics::ChunkOp::DataExtents.index());
        let mut last = Status::unavailable(format!("chunk {} has no live replica", loc.chunk_id));
        for r in &loc.replicas {
            let req = DataExtentsReq {
                chunk_id: loc.chunk_id,
                version: loc.version,
                offset,
                length,
                cap: loc.cap.clone(),
            };
            let mut c = self.space_client(&r.addr)?;
            match self.bounded(c.data_extents(req)).await {
                Ok(reply) => {
                    return Ok(reply
                        .extents
                        .iter()
                        .map(|e| (e.offset, e.offset + e.length))
                        .collect())
                }
                Err(s) => last = s,
            }
        }
        Err(last)
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => r.map(|r| r.into_inner()),
            Err(_) => Err(Status::deadline_exceeded(
                "chunk daemon did not answer in time",
            )),
        }
    }

    /// Writes `data` at `offset` within the chunk `w` names, down its pipeline;
    /// with `punch` (`data` all zeros) the replicas free the whole blocks.
    /// The reply says what the primary's replica holds on disk afterwards.
    pub async fn write(
        &self,
        w: &ChunkWrite,
        offset: u64,
        data: bytes::Bytes,
        punch: bool,
    ) -> Result<WriteReply, Status> {
        let _timed = crate::metrics::M
            .chunk
            .guard(crate::metrics::ChunkOp::Write.index());
        let loc = w
            .chunk
            .as_ref()
            .ok_or_else(|| Status::internal("ChunkWrite without a chunk"))?;
        let (head, chain) = pipeline(loc)?;
        self.remember(loc);
        debug_assert!(data.len() <= MAX_IO);
        let mut c = self.client(&head)?;
        // A punch's data is zeros: the replicas make them, only the length travels.
        let (data, punch_length) = if punch {
            (bytes::Bytes::new(), data.len() as u64)
        } else {
            (data, 0)
        };
        let req = WriteReq {
            chunk_id: loc.chunk_id,
            version: loc.version,
            lease_epoch: w.lease_epoch,
            offset,
            data,
            chain,
            sync: false,
            punch,
            serial: 0,
            punch_length,
            term: w.term,
            cap: loc.cap.clone(),
            source: None,
        };
        self.bounded(c.write(req)).await
    }

    /// Server-side copy into the chunk `w` names at `offset`: the head of
    /// its pipeline reads `source` itself and writes it as a write of those
    /// bytes would be (Chunk.Copy); no data passes through this client.
    pub async fn copy(
        &self,
        w: &ChunkWrite,
        offset: u64,
        source: CopySource,
    ) -> Result<WriteReply, Status> {
        let _timed = crate::metrics::M
            .chunk
            .guard(crate::metrics::ChunkOp::Copy.index());
        let loc = w
            .chunk
            .as_ref()
            .ok_or_else(|| Status::internal("ChunkWrite without a chunk"))?;
        let (head, chain) = pipeline(loc)?;
        self.remember(loc);
        debug_assert!(source.length <= MAX_IO as u64);
        let mut c = self.client(&head)?;
        let req = WriteReq {
            chunk_id: loc.chunk_id,
            version: loc.version,
            lease_epoch: w.lease_epoch,
            offset,
            chain,
            term: w.term,
            cap: loc.cap.clone(),
            source: Some(source),
            ..Default::default()
        };
        self.bounded(c.copy(req)).await
    }

    /// Reads from one replica.
    pub async fn read_from(
        &self,
        addr: &str,
        chunk_id: u64,
        version: u64,
        offset: u64,
        length: u32,
        cap: Option<ChunkCap>,
    ) -> Result<bytes::Bytes, Status> {
        let _timed = crate::metrics::M
            .chunk
            .guard(crate::metrics::ChunkOp::Read.index());
        let mut c = self.client(addr)?;
        let req = ReadReq {
            chunk_id,
            version,
            offset,
            length,
            cap,
        };
        let reply = self.bounded(c.read(req)).await?;
        if reply.data.len() != length as usize {
            return Err(Status::data_loss(format!(
                "short read: {} of {length} bytes",
                reply.data.len()
            )));
        }
        Ok(reply.data)
    }

    /// Reads from the replicas of `loc` until one answers, starting with
    /// replica `start` (modulo their number) so that concurrent pieces of a
    /// file spread over all of them; replicas that failed recently go last.
    /// Returns the data, the address that served it, and whether a replica
    /// tried before it failed.
    pub async fn read_spread(
        &self,
        loc: &ChunkLoc,
        offset: u64,
        length: u32,
        start: usize,
    ) -> Result<(bytes::Bytes, String, bool), ReadFailure> {
        let order = self.read_order(&loc.replicas, start);
        let mut last = None;
        for (i, addr) in order.iter().enumerate() {
            match self
                .read_from(
                    addr,
                    loc.chunk_id,
                    loc.version,
                    offset,
                    length,
                    loc.cap.clone(),
                )
                .await
            {
                Ok(d) => {
                    if i > 0 || !self.failed_at.lock().is_empty() {
                        self.failed_at.lock().remove(addr);
                    }
                    return Ok((d, addr.clone(), i > 0));
                }
                Err(s) if weft_proto::contract::next(Call::ChunkRead, &s) == Next::NextReplica => {
                    tracing::info!(addr = %addr, chunk = loc.chunk_id, status = %s, "replica read failed, trying next");
                    self.failed_at.lock().insert(addr.clone(), Instant::now());
                    last = Some(s);
                }
                Err(s) => {
                    return Err(ReadFailure {
                        all_retryable: false,
                        last: Some(s),
                    })
                }
            }
        }
        Err(ReadFailure {
            all_retryable: true,
            last,
        })
    }

    /// The replicas rotated to begin at `start`, those that failed within
    /// SUSPECT_FOR moved (in the same order) to the end.
    fn read_order(&self, replicas: &[Replica], start: usize) -> Vec<String> {
        let n = replicas.len();
        let mut order: Vec<String> = (0..n)
            .map(|i| replicas[(start + i) % n].addr.clone())
            .collect();
        let mut failed = self.failed_at.lock();
        if !failed.is_empty() {
            failed.retain(|_, at| at.elapsed() < SUSPECT_FOR);
            order.sort_by_key(|a| failed.contains_key(a));
        }
        order
    }

    /// Makes the named chunks durable on every replica of a pipeline.
    pub async fn sync(&self, replicas: &[String], chunk_ids: Vec<u64>) -> Result<(), Status> {
        let _timed = crate::metrics::M
            .chunk
            .guard(crate::metrics::ChunkOp::Sync.index());
        let (head, chain) = replicas
            .split_first()
            .ok_or_else(|| Status::unavailable("chunk has no replicas"))?;
        let mut c = self.client(head)?;
        let caps = {
            let m = self.caps.lock();
            chunk_ids
                .iter()
                .filter_map(|id| m.get(id).cloned())
                .collect()
        };
        let req = SyncReq {
            chunk_ids,
            chain: chain.to_vec(),
            caps,
        };
        self.bounded(c.sync(req)).await.map(|_| ())
    }

    /// Cuts the chunk `w` names at `length` on every replica (bytes past it
    /// read as zeros), down its lease's pipeline: the primary orders the cut
    /// among the chunk's writes.
    pub async fn truncate(&self, w: &ChunkWrite, length: u64) -> Result<(), Status> {
        let _timed = crate::metrics::M
            .chunk
            .guard(crate::metrics::ChunkOp::Truncate.index());
        let loc = w
            .chunk
            .as_ref()
            .ok_or_else(|| Status::internal("ChunkWrite without a chunk"))?;
        let (head, chain) = pipeline(loc)?;
        let mut c = self.client(&head)?;
        self.remember(loc);
        let req = TruncateReq {
            chunk_id: loc.chunk_id,
            version: loc.version,
            length,
            chain,
            lease_epoch: w.lease_epoch,
            serial: 0,
            cap: loc.cap.clone(),
        };
        self.bounded(c.truncate(req)).await.map(|_| ())
    }
}

/// (head address, chain of the rest) for a chunk's replicas.
pub fn pipeline(loc: &ChunkLoc) -> Result<(String, Vec<String>), Status> {
    let (head, rest) = loc.replicas.split_first().ok_or_else(|| {
        Status::unavailable(format!("chunk {} has no live replica", loc.chunk_id))
    })?;
    Ok((
        head.addr.clone(),
        rest.iter().map(|r| r.addr.clone()).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_within_one_chunk() {
        assert_eq!(
            split_range(10, 20, 100, 1000),
            vec![Piece {
                index: 0,
                off: 10,
                len: 20,
                buf_off: 0
            }]
        );
        assert!(split_range(10, 0, 100, 1000).is_empty());
    }

    #[test]
    fn split_across_chunks_and_max_io() {
        let p = split_range(90, 130, 100, 1000);
        assert_eq!(
            p,
            vec![
                Piece {
                    index: 0,
                    off: 90,
                    len: 10,
                    buf_off: 0
                },
                Piece {
                    index: 1,
                    off: 0,
                    len: 100,
                    buf_off: 10
                },
                Piece {
                    index: 2,
                    off: 0,
                    len: 20,
                    buf_off: 110
                },
            ]
        );
        let p = split_range(0, 250, 100, 40);
        assert_eq!(p.len(), 8); // 40+40+20 | 40+40+20 | 40+10
        assert_eq!(
            p[2],
            Piece {
                index: 0,
                off: 80,
                len: 20,
                buf_off: 80
            }
        );
        assert_eq!(
            p[3],
            Piece {
                index: 1,
                off: 0,
                len: 40,
                buf_off: 100
            }
        );
        assert_eq!(p.iter().map(|x| x.len).sum::<u64>(), 250);
        // Contiguous coverage.
        let mut pos = 0;
        for x in &p {
            assert_eq!(x.buf_off, pos);
            assert_eq!(x.index * 100 + x.off, pos);
            pos += x.len;
        }
    }

    #[test]
    fn split_exact_chunk_boundaries() {
        let p = split_range(1 << 20, 2 << 20, 1 << 20, MAX_IO as u64);
        assert_eq!(
            p,
            vec![
                Piece {
                    index: 1,
                    off: 0,
                    len: 1 << 20,
                    buf_off: 0
                },
                Piece {
                    index: 2,
                    off: 0,
                    len: 1 << 20,
                    buf_off: 1 << 20
                },
            ]
        );
    }

    #[test]
    fn clipping() {
        assert_eq!(clip_read(0, 4096, 100), 100);
        assert_eq!(clip_read(100, 4096, 100), 0);
        assert_eq!(clip_read(200, 10, 100), 0);
        assert_eq!(clip_read(10, 20, 100), 20);
    }

    #[test]
    fn pipeline_head_and_chain() {
        let loc = ChunkLoc {
            index: 0,
            chunk_id: 9,
            version: 1,
            replicas: ["a:1", "b:2", "c:3"]
                .iter()
                .map(|a| Replica {
                    chunkd_id: 0,
                    addr: a.to_string(),
                })
                .collect(),
            cap: None,
        };
        assert_eq!(
            pipeline(&loc).unwrap(),
            (
                "a:1".to_string(),
                vec!["b:2".to_string(), "c:3".to_string()]
            )
        );
        let empty = ChunkLoc {
            replicas: vec![],
            ..loc
        };
        assert_eq!(
            pipeline(&empty).unwrap_err().code(),
            tonic::Code::Unavailable
        );
    }
}
