//! Server-side copy (copy_file_range, the S3 gateway's CopyObject and
//! UploadPartCopy): the bytes go from chunk daemon to chunk daemon, never
//! through this client.
//!
//! Flow of `Weft::copy_range`: the source's buffered writes are stored, then,
//! under the destination's flush lock, the destination's (so neither lands
//! after the copy and a copy sees this client's writes); the range is clipped
//! to the source's size and cut into pieces that stay within one source chunk
//! and one destination chunk (≤ MAX_IO); for each piece the destination
//! chunk's write lease (`chunk_alloc`, as a write) and the source chunk's
//! location and read capability (as a read) go into a `Chunk.Copy` to the
//! head of the lease's pipeline, which reads the bytes itself and writes them
//! down the pipeline as a write (chunkd/src/service.rs `copy`); finally one
//! `CommitWrite` moves the size and mtime as a flush does.
//!
//! Pieces go one after the other: with `md5` each head continues the MD5
//! state the previous piece's head answered, so the copy's MD5 (an S3 ETag)
//! comes out without its bytes. A source hole copies as zeros.
//!
//! A packed source (segments.rs) has no chunk to copy from: its needle is
//! read (and verified) here once, and each piece is written from it as a
//! chunk write, zeros past the needle's length. A packed destination needs
//! nothing special: its first AllocChunk has the MDS move its needle into a
//! chunk of its own (mds/src/service/unpack.rs).
//!
//! Invariants: a failure to read the source (its replicas moved or died)
//! refreshes the source's location, never marks the destination's replicas
//! failed; a daemon without Chunk.Copy (UNIMPLEMENTED) gets the piece read
//! and written through this client, with a warning, never a silent change of
//! path; success only when every replica of every piece acknowledged and the
//! MDS committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Code;
use weft_proto::contract::limits::MAX_ALLOCS_PER_COMMIT;
use weft_proto::contract::{copy_source_failed, next, status_errno, Call, Next};
use weft_proto::meta_request::Op;
use weft_proto::{Caller, ChunkAlloc, CommitWriteReq, CopySource, Errno, MAX_IO};

use crate::chunk_io::{cap_fresh, clip_read};
use crate::client::Weft;
use crate::open_files::FileState;
use crate::write_path::failed_replica;
use crate::writeback::ChunkExtents;

/// What a copy did: bytes copied (fewer than asked at the source's end) and,
/// if asked, their MD5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub bytes: u64,
    pub md5: Option<[u8; 16]>,
}

/// One piece: source and destination file offsets, length.
#[derive(Debug, Clone, Copy)]
struct Piece {
    src: u64,
    dst: u64,
    len: u64,
}

impl Weft {
    /// Copies up to `len` bytes of `src` at `src_off` to `dst` at `dst_off`
    /// on the chunk daemons; returns what it copied (and their MD5 when
    /// `md5`). The destination grows as a write past its end would.
    #[allow(clippy::too_many_arguments)]
    pub async fn copy_range(
        self: &Arc<Self>,
        c: &Caller,
        src: u64,
        src_off: u64,
        dst: u64,
        dst_off: u64,
        len: u64,
        md5: bool,
    ) -> Result<Copied, Errno> {
        if dst_off.checked_add(len).is_none_or(|e| e > i64::MAX as u64) {
            return Err(Errno::EFBIG);
        }
        // The destination's size and times change after its folded setattrs.
        self.settle(dst).await?;
        if src != dst {
            if let Some(s) = self.files.get(src) {
                if s.has_pending() {
                    self.flush_file(&s).await?;
                }
            }
        }
        // Locations cached before another client's write could name a
        // replica that still holds the older version.
        self.locs.invalidate_file(src);
        let st = self.files.get_or_create(dst);
        let r = async {
            let _g = st.flush_lock.lock().await;
            self.flush_locked(&st).await?;
            let size = self.mds.getattr(c, src).await?.size;
            let len = clip_read(src_off, len, size);
            let packed = match len {
                0 => None,
                _ => self.packed_data(c, src).await?,
            };
            let mut state = md5.then(Vec::new);
            let mut allocs: Vec<ChunkAlloc> = Vec::new();
            let cs = self.chunk_size;
            let mut done = 0u64;
            let mut through_client = false;
            while done < len {
                let (s, d) = (src_off + done, dst_off + done);
                let n = (len - done)
                    .min(MAX_IO as u64)
                    .min(cs - s % cs)
                    .min(cs - d % cs);
                let p = Piece {
                    src: s,
                    dst: d,
                    len: n,
                };
                let (alloc, next_state) = match &packed {
                    Some(needle) => {
                        self.write_piece(&st, c, p, from_needle(needle, p), state.as_deref())
                            .await?
                    }
                    None => {
                        self.copy_piece(&st, c, src, p, state.as_deref(), &mut through_client)
                            .await?
                    }
                };
                state = next_state;
                allocs.extend(alloc);
                if allocs.len() >= MAX_ALLOCS_PER_COMMIT {
                    self.commit_allocs_only(c, dst, std::mem::take(&mut allocs))
                        .await?;
                }
                done += n;
            }
            if len > 0 {
                self.mds
                    .attr(
                        c,
                        Op::CommitWrite(CommitWriteReq {
                            ino: dst,
                            end: dst_off + len,
                            allocs,
                            allocs_only: false,
                            then_setattr: Vec::new(),
                        }),
                    )
                    .await?;
            }
            let md5 = match state {
                Some(s) => Some(weft_proto::md5_state::finish(&s).map_err(|e| {
                    tracing::warn!(error = %e, "a chunk daemon answered a bad MD5 state");
                    Errno::EIO
                })?),
                None => None,
            };
            Ok(Copied { bytes: len, md5 })
        }
        .await;
        self.data.invalidate_file(dst);
        self.files.maybe_drop(dst);
        r
    }

    /// One piece through Chunk.Copy, retried as a chunk write is (a new
    /// lease without the replicas that failed) and, when the source could
    /// not be read, with the source's locations fetched again. Returns what
    /// the destination's primary holds on disk and the MD5 state after it.
    async fn copy_piece(
        &self,
        st: &FileState,
        c: &Caller,
        src: u64,
        p: Piece,
        state: Option<&[u8]>,
        through_client: &mut bool,
    ) -> Result<(Option<ChunkAlloc>, Option<Vec<u8>>), Errno> {
        let cs = self.chunk_size;
        let (sidx, didx) = (p.src / cs, p.dst / cs);
        let deadline = Instant::now() + self.write_retry_budget;
        let mut backoff = Duration::from_millis(100);
        let mut failed: Vec<String> = Vec::new();
        let mut refresh = false;
        loop {
            let w = match self.chunk_alloc(st, c, didx, &failed).await {
                Ok(w) => w,
                Err(e) if e == Errno::EAGAIN && Instant::now() + backoff < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(e) if e == Errno::EAGAIN => return Err(Errno::EIO),
                Err(e) => return Err(e),
            };
            let mut sloc = self.location(c, src, sidx, refresh).await?;
            if !cap_fresh(&sloc) {
                sloc = self.location(c, src, sidx, true).await?;
            }
            let dloc = w.chunk.clone().unwrap_or_default();
            if *through_client {
                return self.copy_piece_through(st, c, &sloc, p, state).await;
            }
            let source = CopySource {
                chunk_id: sloc.chunk_id,
                version: sloc.version,
                offset: p.src % cs,
                length: p.len,
                replicas: sloc.replicas.iter().map(|r| r.addr.clone()).collect(),
                cap: sloc.cap.clone(),
                md5: state.is_some(),
                md5_state: state.map(<[u8]>::to_vec).unwrap_or_default(),
            };
            let status = match self.chunks.copy(&w, p.dst % cs, source).await {
                Ok(reply) => {
                    let addrs = dloc.replicas.iter().map(|r| r.addr.clone()).collect();
                    st.inner
                        .lock()
                        .unsynced
                        .insert(dloc.chunk_id, (didx, addrs));
                    let next_state = match state {
                        Some(_) if reply.md5_state.is_empty() => {
                            tracing::warn!(addr = ?dloc.replicas.first(), "Chunk.Copy answered no MD5 state");
                            return Err(Errno::EIO);
                        }
                        Some(_) => Some(reply.md5_state.to_vec()),
                        None => None,
                    };
                    let alloc = reply.allocated.map(|bytes| ChunkAlloc {
                        index: didx,
                        chunk_id: dloc.chunk_id,
                        bytes,
                    });
                    return Ok((alloc, next_state));
                }
                Err(s) => s,
            };
            // Whatever happened, cached blocks of the destination may be stale.
            self.data.invalidate_file(st.ino);
            if status.code() == Code::Unimplemented {
                tracing::warn!(head = ?dloc.replicas.first(), "chunk daemon has no Chunk.Copy: copying through this client");
                *through_client = true;
                return self.copy_piece_through(st, c, &sloc, p, state).await;
            }
            if copy_source_failed(&status) {
                if Instant::now() + backoff >= deadline {
                    tracing::warn!(ino = src, index = sidx, %status, "copy source unreadable");
                    return Err(Errno::EIO);
                }
                tracing::info!(ino = src, index = sidx, %status, "copy source unreadable, fetching its locations again");
                refresh = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            st.inner.lock().allocs.remove(&didx);
            if let Some(addr) = failed_replica(&status, &dloc) {
                if !failed.contains(&addr) {
                    failed.push(addr);
                }
            }
            if next(Call::ChunkWrite, &status) == Next::Realloc
                && Instant::now() + backoff < deadline
            {
                tracing::info!(ino = st.ino, index = didx, %status, ?failed, "chunk copy failed, re-allocating");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            tracing::warn!(ino = st.ino, index = didx, %status, "chunk copy failed");
            return Err(status_errno(&status));
        }
    }

    /// A piece for a daemon without Chunk.Copy: read here, written as a
    /// chunk write (same retries), hashed here.
    async fn copy_piece_through(
        &self,
        st: &FileState,
        c: &Caller,
        sloc: &weft_proto::ChunkLoc,
        p: Piece,
        state: Option<&[u8]>,
    ) -> Result<(Option<ChunkAlloc>, Option<Vec<u8>>), Errno> {
        let cs = self.chunk_size;
        let data = if sloc.chunk_id == 0 {
            bytes::Bytes::from(vec![0u8; p.len as usize])
        } else {
            let (d, _, _) = self
                .chunks
                .read_spread(sloc, p.src % cs, p.len as u32, 0)
                .await
                .map_err(|f| f.last.map_or(Errno::EIO, |s| status_errno(&s)))?;
            d
        };
        self.write_piece(st, c, p, data, state).await
    }

    /// Writes `data` (the piece's bytes, read by this client) at the piece's
    /// destination as a chunk write (same retries), hashed here.
    async fn write_piece(
        &self,
        st: &FileState,
        c: &Caller,
        p: Piece,
        data: bytes::Bytes,
        state: Option<&[u8]>,
    ) -> Result<(Option<ChunkAlloc>, Option<Vec<u8>>), Errno> {
        let cs = self.chunk_size;
        let next_state = match state {
            Some(s) => Some(weft_proto::md5_state::resume(s, &data).map_err(|_| Errno::EIO)?),
            None => None,
        };
        let ce = ChunkExtents {
            index: p.dst / cs,
            extents: vec![(p.dst % cs, data.to_vec())],
        };
        let alloc = self.store_chunk(st, c, ce, false).await?;
        Ok((alloc, next_state))
    }
}

/// The bytes of piece `p` of a packed file whose needle holds `needle`:
/// the needle's, then zeros (the file's size may pass the needle).
fn from_needle(needle: &[u8], p: Piece) -> bytes::Bytes {
    let mut v = vec![0u8; p.len as usize];
    let start = (p.src as usize).min(needle.len());
    let end = ((p.src + p.len) as usize).min(needle.len());
    v[..end - start].copy_from_slice(&needle[start..end]);
    bytes::Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_of_a_needle_end_in_zeros() {
        let needle: Vec<u8> = (1..=10).collect();
        let piece = |src, len| Piece { src, dst: 0, len };
        assert_eq!(&from_needle(&needle, piece(0, 4))[..], &[1, 2, 3, 4]);
        assert_eq!(&from_needle(&needle, piece(8, 4))[..], &[9, 10, 0, 0]);
        assert_eq!(&from_needle(&needle, piece(10, 3))[..], &[0, 0, 0]);
        assert_eq!(&from_needle(&needle, piece(50, 2))[..], &[0, 0]);
        assert_eq!(from_needle(&[], piece(0, 5)).len(), 5);
    }
}
