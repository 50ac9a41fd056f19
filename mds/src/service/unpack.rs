//! Unpacking: before any chunk of a packed file is written (an AllocChunk
//! from any mount), the MDS moves its needle into a chunk of the file's
//! own. BeginUnpack journals a fresh chunk owned by (ino, 0); the MDS takes
//! a write lease on it and has the head of its pipeline copy the needle's
//! data from the segment chunk (Chunk.Copy: the daemons read the source with
//! the MDS's read capability and verify its checksums); Unpack then points
//! the file at the chunk. An MDS that dies in between leaves the begun
//! chunk in the log (never an orphan): the next AllocChunk copies again.
//! Unpacks of one inode are serialized, so two mounts never copy twice at
//! once.

use super::chunk_admin::{chunk_data, within};
use super::Mds;
use crate::committer::Proposal;
use crate::ns::{Body, NEEDLE_HEADER};
use std::sync::Arc;
use std::time::Duration;
use weft_proto::caps::Mode;
use weft_proto::contract::{self, Call, Next};
use weft_proto::pb::meta_reply::Result as Reply;
use weft_proto::{pb, Errno, MAX_IO};

/// One Chunk.Copy of at most MAX_IO bytes.
const COPY_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of the copy (a new lease over the survivors after a failed
/// replica) before the AllocChunk fails with EIO.
const COPY_TRIES: usize = 4;

/// Per-inode unpack locks.
#[derive(Default)]
pub struct Unpacks(parking_lot::Mutex<std::collections::HashMap<u64, Arc<tokio::sync::Mutex<()>>>>);

impl Unpacks {
    async fn lock(&self, ino: u64) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut m = self.0.lock();
            if m.len() > 1024 {
                m.retain(|_, l| Arc::strong_count(l) > 1);
            }
            m.entry(ino).or_default().clone()
        };
        lock.lock_owned().await
    }
}

impl Mds {
    /// Whether `ino` is a packed file (its chunks wait for an unpack).
    pub(super) async fn is_packed(&self, ino: u64) -> bool {
        let st = self.state.read().await;
        st.ns
            .get(ino)
            .is_some_and(|i| matches!(i.body, Body::Packed { .. }))
    }

    /// Moves packed file `ino`'s needle into a chunk of its own; Ok once
    /// the file is not packed (by this call or another).
    pub(super) async fn unpack(&self, ino: u64) -> Result<(), Errno> {
        let _serial = self.unpacks.lock(ino).await;
        // A truncate between the copy and its Unpack makes it copy again.
        for _ in 0..3 {
            let begin = match self.state.read().await.ns.prepare_begin_unpack(ino) {
                Ok(b) => b,
                // Not packed (any more): nothing to do.
                Err(Errno::EINVAL) => return Ok(()),
                Err(e) => return Err(e),
            };
            if let Some(record) = begin {
                self.committer
                    .propose(|done| Proposal::Internal { record, done })
                    .await?;
            }
            let (target, needle) = {
                let st = self.state.read().await;
                (st.ns.unpack_target(ino), st.ns.needle(ino))
            };
            let Some(target) = target else {
                continue; // emptied meanwhile: the next pass says so
            };
            let Some(needle) = needle else {
                tracing::error!(ino, "a packed file's segment chunk is gone");
                return Err(Errno::EIO);
            };
            if needle.len > 0 {
                if let Err(e) = self.copy_needle(ino, target.id, &needle).await {
                    // Compaction moved the needle meanwhile (its old
                    // segment's chunk is going): copy from where it is now.
                    if self
                        .state
                        .read()
                        .await
                        .ns
                        .needle(ino)
                        .map(|n| (n.chunk, n.offset))
                        != Some((needle.chunk, needle.offset))
                    {
                        continue;
                    }
                    return Err(e);
                }
            }
            let record = crate::ns::Record::Unpack {
                ino,
                chunk_id: target.id,
                len: needle.len,
            };
            let reply = self
                .committer
                .propose(|done| Proposal::Internal { record, done })
                .await?;
            if let Reply::Attr(_) = reply {
                tracing::info!(
                    ino,
                    chunk = target.id,
                    bytes = needle.len,
                    "unpacked a needle into a chunk of the file's own"
                );
                return Ok(());
            }
        }
        Err(Errno::EAGAIN)
    }

    /// Copies the needle's data to offset 0 of `chunk` under a write lease
    /// the MDS takes itself, durably (the Unpack record follows).
    async fn copy_needle(
        &self,
        ino: u64,
        chunk: u64,
        needle: &crate::ns::NeedleAt,
    ) -> Result<(), Errno> {
        let chunk_size = self.state.read().await.ns.chunk_size();
        let mut failed: Vec<u64> = Vec::new();
        let mut last = Errno::EIO;
        for _ in 0..COPY_TRIES {
            let version = match self.state.read().await.ns.chunk_owner(chunk) {
                Some((_, _, v)) => v,
                None => return Ok(()), // emptied meanwhile: Unpack finds nothing
            };
            let cw = pb::ChunkWrite {
                chunk: Some(pb::ChunkLoc {
                    index: 0,
                    chunk_id: chunk,
                    version,
                    replicas: vec![],
                    cap: None,
                }),
                chunk_size,
                lease_epoch: 0,
                lease_expires_ms: 0,
                term: 0,
            };
            let cw = match self.grant(cw, &failed, None).await {
                Ok(cw) => cw,
                Err(e) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let loc = cw.chunk.clone().unwrap_or_default();
            let sources: Vec<String> = self
                .wait_locations(needle.chunk, needle.version)
                .await
                .into_iter()
                .map(|r| r.addr)
                .collect();
            if sources.is_empty() {
                tracing::warn!(
                    ino,
                    chunk = needle.chunk,
                    "no live replica of the needle's segment chunk"
                );
                return Err(Errno::EIO);
            }
            match self.copy_pieces(&cw, &loc, needle, &sources).await {
                Ok(()) => return Ok(()),
                Err((status, head)) => {
                    tracing::warn!(ino, chunk, error = %status.message(), "unpack copy failed");
                    if contract::copy_source_failed(&status) {
                        return Err(Errno::EIO);
                    }
                    match contract::next(Call::ChunkWrite, &status) {
                        Next::Realloc | Next::Retry | Next::NextReplica => {
                            // A new lease over the survivors of the pipeline.
                            failed.extend(self.failed_ids(&[head]));
                            last = Errno::EIO;
                        }
                        Next::Fail(e) => return Err(e),
                    }
                }
            }
        }
        Err(last)
    }

    /// The Chunk.Copy calls of one try, MAX_IO bytes each; the last one
    /// syncs. Err: the failed status and the pipeline head it came from.
    async fn copy_pieces(
        &self,
        cw: &pb::ChunkWrite,
        loc: &pb::ChunkLoc,
        needle: &crate::ns::NeedleAt,
        sources: &[String],
    ) -> Result<(), (tonic::Status, String)> {
        let Some((head, rest)) = loc.replicas.split_first() else {
            return Err((
                tonic::Status::unavailable("no replica placed"),
                String::new(),
            ));
        };
        let chain: Vec<String> = rest.iter().map(|r| r.addr.clone()).collect();
        let wcap = self.cap(loc.chunk_id, loc.version, Mode::Write);
        let rcap = self.cap(needle.chunk, needle.version, Mode::Read);
        let mut done = 0u64;
        while done < needle.len {
            let n = (needle.len - done).min(MAX_IO as u64);
            let req = pb::WriteReq {
                chunk_id: loc.chunk_id,
                version: loc.version,
                lease_epoch: cw.lease_epoch,
                offset: done,
                chain: chain.clone(),
                sync: done + n == needle.len,
                term: cw.term,
                cap: wcap.clone(),
                source: Some(pb::CopySource {
                    chunk_id: needle.chunk,
                    version: needle.version,
                    offset: needle.offset + NEEDLE_HEADER + done,
                    length: n,
                    replicas: sources.to_vec(),
                    cap: rcap.clone(),
                    md5: false,
                    md5_state: vec![],
                }),
                ..Default::default()
            };
            let mut c = chunk_data(&head.addr).map_err(|s| (s, head.addr.clone()))?;
            within(&head.addr, COPY_TIMEOUT, c.copy(req))
                .await
                .map_err(|s| (s, head.addr.clone()))?;
            done += n;
        }
        Ok(())
    }
}
