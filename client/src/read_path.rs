//! The read path: clip to the file size, cut the range into per-chunk pieces
//! of at most READ_STRIPE bytes, find each chunk's replicas (location cache,
//! filled by batched `GetChunks`), and read the pieces in parallel, each
//! starting at a different replica, failing over.
//!
//! Spreading: a piece's first replica is chosen by its place in the file
//! (chunk index + stripe within the chunk), so the kernel's concurrent 1 MiB
//! readahead requests of one chunk, and the stripes of one large read, go to
//! all of the chunk's replicas instead of all to the first; a replica that
//! failed a read lately is tried last (chunk_io.rs).
//!
//! Invariants: a read of an inode with data not yet stored first flushes it (so
//! a read never returns older bytes than this client wrote); holes read as
//! zeros; the reply is exactly `min(size, file_size - offset)` bytes, or an
//! error — never a short buffer with garbage; when every replica fails, the
//! locations are refreshed once and the replicas tried again before EIO.
//!
//! A packed file (`ChunkList.packed`, segments.rs) is read from its needle:
//! header and data from one replica of the segment's chunk, verified
//! (magic, crcs, ino, length) before any byte is served; a replica whose
//! needle does not verify is passed over for the next.

use std::sync::Arc;

use futures::stream::{self, StreamExt};
use weft_proto::*;

use crate::cache::data::{aligned, BlockKey, BLOCK};
use crate::chunk_io::{clip_read, split_range, Piece, ReadFailure};
use crate::client::Weft;
use weft_proto::contract::status_errno;

/// Chunk locations fetched beyond those a read needs (sequential readers
/// then find the next chunks cached).
const LOC_PREFETCH: u64 = 16;
/// Pieces read in parallel per read request.
const READ_PARALLELISM: usize = 8;
/// A read is cut into pieces of at most this size (one kernel readahead
/// request), each of which may go to another replica.
const READ_STRIPE: u64 = 1 << 20;

impl Weft {
    pub async fn read(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        offset: u64,
        size: u32,
    ) -> Result<bytes::Bytes, Errno> {
        let t0 = std::time::Instant::now();
        let r = self.read_inner(c, ino, offset, size).await;
        tracing::debug!(
            ino,
            offset,
            size,
            elapsed_us = t0.elapsed().as_micros() as u64,
            "read"
        );
        r
    }

    async fn read_inner(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        offset: u64,
        size: u32,
    ) -> Result<bytes::Bytes, Errno> {
        if let Some(st) = self.files.get(ino) {
            if st.has_pending() {
                // A failure is recorded for flush/fsync; the read goes on with
                // what is stored.
                let _ = self.flush_file(&st).await;
            }
        }
        let a = self.cached_attr(c, ino).await?;
        let file_size = self
            .files
            .size_override(ino)
            .map_or(a.size, |s| s.max(a.size));
        let len = clip_read(offset, u64::from(size), file_size);
        if len == 0 {
            return Ok(bytes::Bytes::new());
        }
        let pieces = split_range(offset, len, self.chunk_size, READ_STRIPE);
        self.ensure_locations(c, ino, pieces[0].index, pieces[pieces.len() - 1].index)
            .await?;
        if let Some(n) = self.locs.needle(ino) {
            return self.read_packed(c, ino, n, offset, len).await;
        }
        // The data cache's policy for a large sequential stream goes by the
        // whole request, not by its stripes.
        let streaming = len >= MAX_IO as u64;
        let mut reads = Vec::with_capacity(pieces.len());
        for p in pieces {
            reads.push(async move { (p, self.read_piece(c, ino, p, streaming).await) });
        }
        let results: Vec<(Piece, Result<Option<bytes::Bytes>, Errno>)> = stream::iter(reads)
            .buffer_unordered(READ_PARALLELISM)
            .collect()
            .await;
        if let [(_, r)] = results.as_slice() {
            // One piece (a read within a chunk): its bytes as they came, no
            // zeroed buffer and copy.
            match r {
                Ok(Some(d)) if d.len() as u64 == len => return Ok(d.clone()),
                Err(e) => return Err(*e),
                _ => {}
            }
        }
        let mut buf = vec![0u8; len as usize];
        for (p, r) in results {
            // None: a hole, already zeros.
            if let Some(d) = r? {
                let at = p.buf_off as usize;
                buf[at..at + d.len()].copy_from_slice(&d);
            }
        }
        Ok(bytes::Bytes::from(buf))
    }

    /// Makes sure chunk indexes [first, last] are in the location cache,
    /// fetching every missing stretch (plus some read-ahead) in one call.
    async fn ensure_locations(
        &self,
        c: &Caller,
        ino: u64,
        first: u64,
        last: u64,
    ) -> Result<(), Errno> {
        if self.locs.needle(ino).is_some() {
            return Ok(());
        }
        let Some(missing) = (first..=last).find(|i| self.locs.get(ino, *i).is_none()) else {
            return Ok(());
        };
        let count = (last - missing + 1 + LOC_PREFETCH).min(u64::from(u32::MAX)) as u32;
        self.fetch_locations(c, ino, missing, count).await?;
        Ok(())
    }

    /// GetChunks; returns the answer, cached unless the file's locations
    /// were invalidated while it was on its way (then it may predate a
    /// chunk this mount just allocated: a stale hole would read as zeros).
    async fn fetch_locations(
        &self,
        c: &Caller,
        ino: u64,
        first: u64,
        count: u32,
    ) -> Result<ChunkList, Errno> {
        let stamp = self.locs.stamp(ino);
        let list = self.mds.get_chunks(c, ino, first, count).await?;
        self.locs.put_list(ino, &list, stamp);
        Ok(list)
    }

    /// Bytes `[offset, offset+len)` of packed file `ino` (within its size):
    /// the needle's data up to its length, zeros past it.
    async fn read_packed(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        n: Needle,
        offset: u64,
        len: u64,
    ) -> Result<bytes::Bytes, Errno> {
        let Some(data) = self.needle_data(c, ino, n).await? else {
            // No longer packed: read it as chunks.
            return Box::pin(self.read_inner(c, ino, offset, len as u32)).await;
        };
        let mut buf = vec![0u8; len as usize];
        let have = (data.len() as u64).saturating_sub(offset).min(len) as usize;
        if have > 0 {
            buf[..have].copy_from_slice(&data[offset as usize..offset as usize + have]);
        }
        Ok(bytes::Bytes::from(buf))
    }

    /// The needle's data of file `ino` if it is packed (asked of the MDS
    /// unless its needle is cached), None if it is not.
    pub(crate) async fn packed_data(
        &self,
        c: &Caller,
        ino: u64,
    ) -> Result<Option<bytes::Bytes>, Errno> {
        let n = match self.locs.needle(ino) {
            Some(n) => n,
            None => match self.fetch_locations(c, ino, 0, 1).await?.packed {
                Some(n) => n,
                None => return Ok(None),
            },
        };
        self.needle_data(c, ino, n).await
    }

    /// The verified data of needle `n` of file `ino`. When no replica serves
    /// it, the location is refreshed once (the file may have been unpacked
    /// or rewritten meanwhile): None if the file is no longer packed.
    async fn needle_data(
        &self,
        c: &Caller,
        ino: u64,
        mut n: Needle,
    ) -> Result<Option<bytes::Bytes>, Errno> {
        let mut refreshed = false;
        loop {
            match self.read_needle(ino, &n).await {
                Ok(d) => return Ok(Some(d)),
                Err(e) if refreshed => return Err(e),
                Err(_) => {
                    refreshed = true;
                    self.locs.invalidate_file(ino);
                    match self.fetch_locations(c, ino, 0, 1).await?.packed {
                        Some(fresh) => n = fresh,
                        None => return Ok(None),
                    }
                }
            }
        }
    }

    /// The verified data of needle `n` of file `ino`, from the first replica
    /// of its segment's chunk that serves a needle that verifies.
    async fn read_needle(&self, ino: u64, n: &Needle) -> Result<bytes::Bytes, Errno> {
        let loc = n.chunk.clone().unwrap_or_default();
        let total = crate::segments::HEADER + n.len;
        if total > MAX_IO as u64 {
            return Err(Errno::EIO);
        }
        // Kept from this mount's write of it or an earlier read.
        let key = crate::cache::data::needle_key(ino, loc.chunk_id, n.offset);
        if let Some(d) = self.data.get(&key).filter(|d| d.len() as u64 >= n.len) {
            return Ok(d.slice(..n.len as usize));
        }
        let epoch = self.data.epoch();
        let start = ino as usize;
        let mut failure = Errno::EIO;
        for i in 0..loc.replicas.len() {
            let one = ChunkLoc {
                replicas: vec![loc.replicas[(start + i) % loc.replicas.len()].clone()],
                ..loc.clone()
            };
            let addr = one.replicas[0].addr.clone();
            let buf = match self
                .chunks
                .read_spread(&one, n.offset, total as u32, 0)
                .await
            {
                Ok((d, _, _)) => d,
                Err(f) => {
                    if let (false, Some(s)) = (f.all_retryable, &f.last) {
                        failure = status_errno(s);
                    }
                    continue;
                }
            };
            match crate::segments::verify(&buf, ino, n.len) {
                Ok(_) => {
                    let h = crate::segments::HEADER as usize;
                    let data = buf.slice(h..h + n.len as usize);
                    self.data.put(key, &data, epoch, true);
                    return Ok(data);
                }
                Err(why) => {
                    tracing::error!(ino, chunk = loc.chunk_id, offset = n.offset, %addr, %why, "corrupt needle on a replica; trying the next");
                }
            }
        }
        Err(failure)
    }

    pub(crate) async fn location(
        &self,
        c: &Caller,
        ino: u64,
        index: u64,
        refresh: bool,
    ) -> Result<ChunkLoc, Errno> {
        if refresh {
            self.locs.invalidate(ino, index);
        } else if let Some(l) = self.locs.get(ino, index) {
            return Ok(l);
        }
        let got = self.fetch_locations(c, ino, index, 1).await?;
        // Absent from the MDS answer: past the end of the chunk map, a hole.
        Ok(got
            .chunks
            .into_iter()
            .find(|l| l.index == index)
            .unwrap_or(ChunkLoc {
                index,
                ..Default::default()
            }))
    }

    /// One piece: Some(bytes), or None for a hole.
    async fn read_piece(
        &self,
        c: &Caller,
        ino: u64,
        p: Piece,
        streaming: bool,
    ) -> Result<Option<bytes::Bytes>, Errno> {
        let mut refreshed = false;
        let start = (p.index + p.off / READ_STRIPE) as usize;
        loop {
            let loc = self.location(c, ino, p.index, refreshed).await?;
            if loc.chunk_id == 0 {
                return Ok(None);
            }
            match self
                .read_cached(ino, &loc, p.off, p.len, start, streaming)
                .await
            {
                Ok((d, failed_over)) => {
                    if let Some(addr) = failed_over {
                        // Try the replica that answered first from now on.
                        self.locs.prefer(ino, p.index, &addr);
                    }
                    return Ok(Some(d));
                }
                Err(f) if f.all_retryable && !refreshed => {
                    tracing::info!(
                        ino,
                        index = p.index,
                        chunk = loc.chunk_id,
                        "no replica served the read, refreshing locations"
                    );
                    refreshed = true;
                }
                Err(f) => {
                    tracing::warn!(ino, index = p.index, chunk = loc.chunk_id, status = ?f.last, "chunk read failed on every replica");
                    return Err(match (f.all_retryable, f.last) {
                        (false, Some(s)) => status_errno(&s),
                        _ => Errno::EIO,
                    });
                }
            }
        }
    }

    /// Bytes [off, off+len) of a chunk, from the data cache when every block
    /// covering them is there; else read from a replica (the whole aligned
    /// blocks, which the daemon reads and verifies anyway) and cached.
    /// Reads go first to replica `start` (see read_spread). Returns the
    /// replica that served it if others failed before it.
    async fn read_cached(
        &self,
        ino: u64,
        loc: &ChunkLoc,
        off: u64,
        len: u64,
        start: usize,
        streaming: bool,
    ) -> Result<(bytes::Bytes, Option<String>), ReadFailure> {
        let fetch = |off: u64, len: u64| async move {
            let (d, addr, failed_over) =
                self.chunks.read_spread(loc, off, len as u32, start).await?;
            Ok::<_, ReadFailure>((d, failed_over.then_some(addr)))
        };
        if !self.data.enabled() {
            return fetch(off, len).await;
        }
        use crate::metrics::{cache, Cache};
        let in_memory = self.cached_piece(ino, loc, off, len);
        cache(Cache::Data, in_memory.is_some());
        if let Some(d) = in_memory {
            return Ok((d, None));
        }
        let cs = self.chunk_size;
        let on_disk = self
            .data
            .disk_piece(ino, loc.chunk_id, loc.version, off, len, cs)
            .await;
        if self.data.has_disk() {
            cache(Cache::Disk, on_disk.is_some());
        }
        if let Some(d) = on_disk {
            return Ok((d, None));
        }
        let key = |block| BlockKey {
            ino,
            chunk_id: loc.chunk_id,
            version: loc.version,
            block,
        };
        let (_, start, alen) = aligned(off, len, cs);
        // A small read widened to whole blocks costs up to 16x the bytes on
        // the wire and a copy: worth it only while the blocks can be kept
        // without evicting (a file larger than the cache, read at random,
        // would otherwise churn it at that cost on every miss).
        if len < BLOCK && !self.data.has_room(alen) {
            return fetch(off, len).await;
        }
        let epoch = self.data.epoch();
        // One request never asks for more than MAX_IO: past it, fetch the
        // exact range and cache the whole blocks inside it.
        let (f_off, f_len) = if alen <= MAX_IO as u64 {
            (start, alen)
        } else {
            (off, len)
        };
        let (d, addr) = fetch(f_off, f_len).await?;
        // A whole MAX_IO request is a sequential stream (the kernel's
        // readahead): it fills free room but evicts nothing, so one large
        // scan neither flushes the cache nor pays a copy per byte once full.
        let evict = !streaming && len >= BLOCK;
        let f_end = f_off + f_len;
        let mut b = f_off.div_ceil(BLOCK);
        while b * BLOCK < f_end {
            let b_end = ((b + 1) * BLOCK).min(cs);
            if b_end > f_end {
                break;
            }
            let at = (b * BLOCK - f_off) as usize;
            self.data.put(
                key(b),
                &d[at..at + (b_end - b * BLOCK) as usize],
                epoch,
                evict,
            );
            b += 1;
        }
        let skip = (off - f_off) as usize;
        Ok((d.slice(skip..skip + len as usize), addr))
    }

    /// Bytes [off, off+len) of a chunk when every block covering them is in
    /// the data cache.
    fn cached_piece(&self, ino: u64, loc: &ChunkLoc, off: u64, len: u64) -> Option<bytes::Bytes> {
        let (first, start, alen) = aligned(off, len, self.chunk_size);
        let blocks = alen.div_ceil(BLOCK);
        let mut hits = Vec::with_capacity(blocks as usize);
        for block in first..first + blocks {
            hits.push(self.data.get(&BlockKey {
                ino,
                chunk_id: loc.chunk_id,
                version: loc.version,
                block,
            })?);
        }
        let skip = (off - start) as usize;
        if let [one] = hits.as_slice() {
            return Some(one.slice(skip..skip + len as usize));
        }
        let mut v = Vec::with_capacity(len as usize);
        let mut skip = skip;
        for d in &hits {
            let want = (len as usize - v.len()).min(d.len() - skip);
            v.extend_from_slice(&d[skip..skip + want]);
            skip = 0;
        }
        Some(bytes::Bytes::from(v))
    }

    /// A read answered from caches alone, without waiting (for the FUSE
    /// reader thread: no hop to a tokio worker). None when anything it needs
    /// is not cached (fresh attributes, the location, every block) or the
    /// file has data not yet stored; the caller then takes `read`.
    pub fn read_now(&self, ino: u64, offset: u64, size: u32) -> Option<bytes::Bytes> {
        if !self.data.enabled() || self.files.get(ino).is_some_and(|st| st.has_pending()) {
            return None;
        }
        let a = self.mds.attrs.get(ino)?;
        let file_size = self
            .files
            .size_override(ino)
            .map_or(a.size, |s| s.max(a.size));
        let len = clip_read(offset, u64::from(size), file_size);
        let [p] = split_range(offset, len, self.chunk_size, MAX_IO as u64)[..] else {
            return None;
        };
        let loc = self.locs.get(ino, p.index)?;
        if loc.chunk_id == 0 {
            return None;
        }
        self.cached_piece(ino, &loc, p.off, p.len)
    }
}
