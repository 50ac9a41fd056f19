//! fallocate(2) and copy_file_range(2) for weftfs, built on the write path.
//!
//! Plain allocation reserves the space: after checking that the range fits in
//! the cluster's free space (else ENOSPC), it allocates every chunk the range
//! covers (AllocChunk, so st_blocks counts them) and has each replica reserve
//! the range on its disk (ChunkSpace.Allocate, an fallocate of the replica
//! file), so a later write into the range needs no new space; without
//! KEEP_SIZE it moves the size first (back again if the reservation fails);
//! the MDS is told what the replicas hold now (st_blocks). Punching a hole
//! and zeroing a range within the size send zeros down each chunk's write
//! lease flagged as a punch (`Weft::punch_zeros`): every replica frees the
//! whole 64 KiB blocks (a real hole) and writes the edges; a zeroed range is
//! then reserved again, keeping its blocks as ext4's unwritten extents do. So
//! every later read sees zeros whichever
//! replica serves it, and the write path's guarantees (serial order, fsync
//! durability) hold; the kernel clears setuid/setgid before a non-owner's
//! fallocate (docs/posix.md, privilege drops). copy_file_range is a
//! server-side copy (copy.rs): this client's unflushed writes to either file
//! are stored first, and the chunk daemons move the bytes.
//!
//! Invariants: punch and zero never change bytes outside [offset, offset+len);
//! with FALLOC_FL_KEEP_SIZE the size never changes; modes weft cannot honour
//! (collapse, insert, unshare) fail with EOPNOTSUPP, as on a file system
//! without them, never with a silent success.

use std::sync::Arc;

use weft_proto::{Caller, ChunkAlloc, Errno, SetAttrReq};

use crate::client::Weft;
use crate::write_path::failed_replica;
use weft_proto::contract::{next, status_errno, Call, Next};

const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;
/// Zeros are written in pieces of this size (one FUSE write's worth).
const PIECE: u64 = 1 << 20;
/// One copy_file_range call copies at most this much; callers loop on short
/// counts, as they must for any file system.
const COPY_MAX: u64 = 64 << 20;
/// Leases tried per chunk before a reservation fails (each without the
/// replicas that failed before).
const RESERVE_ATTEMPTS: usize = 3;

impl Weft {
    /// The size as this client sees it: the MDS's, or larger if this client
    /// holds unflushed writes past it.
    async fn visible_size(&self, c: &Caller, ino: u64) -> Result<u64, Errno> {
        let cur = self.mds.getattr(c, ino).await?.size;
        Ok(cur.max(self.files.size_override(ino).unwrap_or(0)))
    }

    pub async fn fallocate(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        if mode & !(KEEP_SIZE | PUNCH_HOLE | ZERO_RANGE) != 0 {
            return Err(Errno::ENOTSUP);
        }
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        if end > i64::MAX as u64 {
            return Err(Errno::EFBIG);
        }
        let keep = mode & KEEP_SIZE != 0;
        // Its size and times change after any folded setattr, as they came.
        self.settle(ino).await?;
        let size = self.visible_size(c, ino).await?;
        if mode & PUNCH_HOLE != 0 {
            // The kernel only passes punch together with keep-size.
            if mode & ZERO_RANGE != 0 || !keep {
                return Err(Errno::ENOTSUP);
            }
            return self.punch_zeros(c, ino, offset, end.min(size)).await;
        }
        if mode & ZERO_RANGE != 0 {
            // Within the size it is a punch, then the range reserved again:
            // it reads as zeros and keeps its blocks, as ext4's unwritten
            // extents do; past it, zeros that extend it.
            let inside = end.min(size);
            self.punch_zeros(c, ino, offset, inside).await?;
            if offset < inside {
                let (committed, reserved) = self.reserve_and_commit(c, ino, offset, inside).await;
                reserved?;
                committed?;
            }
            if !keep && end > size {
                self.write_zeros(c, ino, offset.max(size), end).await?;
            }
            return Ok(());
        }
        // Plain allocation. A range that cannot fit in the cluster's free
        // space is ENOSPC before anything is reserved.
        let grow = end.saturating_sub(size);
        if grow > 0 && grow > self.mds.statfs(c).await?.free_bytes {
            return Err(Errno::ENOSPC);
        }
        // fallocate comes through an open descriptor: its open checked
        // write access (the file's mode may have changed since).
        let resize = |to: u64| SetAttrReq {
            ino,
            size: Some(to),
            has_fh: true,
            ..Default::default()
        };
        let grows = !keep && end > size;
        if grows {
            // The size moves first: growing cuts the chunk at the old end on
            // its replicas, which would give back space reserved past it.
            self.truncate(c, ino, end, resize(end)).await?;
        }
        let (committed, reserved) = self.reserve_and_commit(c, ino, offset, end).await;
        if let Err(e) = reserved {
            if grows {
                // A failed fallocate leaves the size as it was.
                let _ = self.truncate(c, ino, size, resize(size)).await;
            }
            return Err(e);
        }
        committed
    }

    /// `reserve_range`, then the MDS told what the replicas hold now
    /// (st_blocks; size and times stay). Returns (that commit, the
    /// reservation).
    async fn reserve_and_commit(
        &self,
        c: &Caller,
        ino: u64,
        from: u64,
        to: u64,
    ) -> (Result<(), Errno>, Result<(), Errno>) {
        let (allocs, reserved) = self.reserve_range(c, ino, from, to).await;
        // The chunk map and st_blocks changed, even on a partial failure.
        self.locs.invalidate_file(ino);
        self.mds.attrs.invalidate(ino);
        let committed = self.commit_allocs_only(c, ino, allocs).await;
        (committed, reserved)
    }

    /// Allocates the chunks covering [from, to) and reserves the range on
    /// their replicas, re-allocating the pipeline when a replica went stale
    /// or away (as a write does). Returns what the primaries reported holding
    /// on disk for the chunks reserved (also when a later one failed).
    async fn reserve_range(
        &self,
        c: &Caller,
        ino: u64,
        from: u64,
        to: u64,
    ) -> (Vec<ChunkAlloc>, Result<(), Errno>) {
        let mut allocs = Vec::new();
        let r = self.reserve_chunks(c, ino, from, to, &mut allocs).await;
        (allocs, r)
    }

    async fn reserve_chunks(
        &self,
        c: &Caller,
        ino: u64,
        from: u64,
        to: u64,
        allocs: &mut Vec<ChunkAlloc>,
    ) -> Result<(), Errno> {
        let cs = self.chunk_size;
        let mut at = from;
        while at < to {
            let index = at / cs;
            let off = at % cs;
            let len = (cs - off).min(to - at);
            let mut failed: Vec<String> = Vec::new();
            for attempt in 1..=RESERVE_ATTEMPTS {
                let w = self.mds.alloc_chunk(c, ino, index, failed.clone()).await?;
                let loc = w.chunk.clone().unwrap_or_default();
                let status = match self.chunks.allocate(&w, off, len).await {
                    Ok(allocated) => {
                        allocs.extend(allocated.map(|bytes| ChunkAlloc {
                            index,
                            chunk_id: loc.chunk_id,
                            bytes,
                        }));
                        break;
                    }
                    Err(s) => s,
                };
                tracing::info!(ino, index, chunk = loc.chunk_id, %status, attempt, "reserving chunk space failed");
                if status.code() == tonic::Code::ResourceExhausted
                    || next(Call::ChunkWrite, &status) != Next::Realloc
                    || attempt == RESERVE_ATTEMPTS
                {
                    return Err(status_errno(&status));
                }
                if let Some(addr) = failed_replica(&status, &loc) {
                    if !failed.contains(&addr) {
                        failed.push(addr);
                    }
                }
            }
            at += len;
        }
        Ok(())
    }

    /// Writes zeros over [from, to) (nothing if empty); a range that ends past
    /// the size extends it, as a write does.
    async fn write_zeros(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        from: u64,
        to: u64,
    ) -> Result<(), Errno> {
        let mut at = from;
        while at < to {
            let n = (to - at).min(PIECE);
            self.write(c.clone(), ino, at, vec![0u8; n as usize])
                .await?;
            at += n;
        }
        Ok(())
    }

    /// copy_file_range: copies up to `len` bytes (fewer at the source's end or
    /// past COPY_MAX) on the chunk daemons (copy.rs) and returns the count.
    #[allow(clippy::too_many_arguments)]
    pub async fn copy_file_range(
        self: &Arc<Self>,
        c: &Caller,
        ino_in: u64,
        off_in: u64,
        ino_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u32, Errno> {
        let len = len.min(COPY_MAX);
        if ino_in == ino_out {
            // Within one file the destination's write lease bumps the
            // version of a chunk the source may share, so the daemons' copy
            // would read a stale replica: copied through this client.
            return self
                .copy_through_client(c, ino_in, off_in, ino_out, off_out, len)
                .await;
        }
        let done = self
            .copy_range(c, ino_in, off_in, ino_out, off_out, len, false)
            .await?;
        Ok(done.bytes as u32)
    }

    /// copy_file_range by reading and writing `PIECE` bytes at a time.
    async fn copy_through_client(
        self: &Arc<Self>,
        c: &Caller,
        ino_in: u64,
        off_in: u64,
        ino_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u32, Errno> {
        if off_out.checked_add(len).is_none_or(|e| e > i64::MAX as u64) {
            return Err(Errno::EFBIG);
        }
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(PIECE) as u32;
            let data = self.read(c, ino_in, off_in + done, n).await?;
            if data.is_empty() {
                break;
            }
            let got = data.len() as u64;
            self.write(c.clone(), ino_out, off_out + done, data.to_vec())
                .await?;
            done += got;
            if got < n as u64 {
                break;
            }
        }
        Ok(done as u32)
    }
}
