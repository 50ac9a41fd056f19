//! The write path: buffering writes, storing them on chunk daemons, committing
//! the new size to the MDS, fsync, truncation, O_TRUNC opens, and the open /
//! flush / release life cycle of file handles.
//!
//! Flow of a flush of one inode (under its `flush_lock`): take every dirty
//! extent → per chunk index, `AllocChunk` (cached per (ino, index) while the
//! file is open and the lease lasts) → `Chunk.Write` of each extent (≤ MAX_IO
//! per message) to replicas[0] with the rest as the chain, several in parallel
//! → one `CommitWrite{ino, end}` with the largest end written.
//!
//! Invariants: success is reported only for data every replica in the pipeline
//! acknowledged and the MDS committed; any failure is recorded in the file's
//! errseq (reported once to every handle open at the time, on its next
//! flush/fsync) and returned to the caller that triggered the flush. Dirty
//! memory is bounded: a file's buffer is flushed in the background past
//! `FILE_DIRTY_LIMIT`, and writers wait while all buffers exceed
//! `TOTAL_DIRTY_LIMIT`; with `ClientOpts::file_dirty_limit` (the S3
//! gateway) a file's writers also wait while it holds that much buffered
//! and in flight, and its flush starts at half of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use weft_proto::meta_request::Op;
use weft_proto::*;

use crate::client::Weft;
use crate::open_files::{FileState, FoldedAttrs};
use crate::writeback::ChunkExtents;
use weft_proto::contract::limits::{MAX_ALLOCS_PER_COMMIT, MAX_CHUNKS_PER_CALL};
use weft_proto::contract::{next, status_errno, Call, Next};

pub const FILE_DIRTY_LIMIT: u64 = 8 << 20;
pub const TOTAL_DIRTY_LIMIT: u64 = 64 << 20;
/// Data older than this is flushed by the periodic flusher.
pub const DIRTY_MAX_AGE: Duration = Duration::from_secs(5);
/// __FMODE_EXEC in the open flags FUSE passes: execve(2) opening the program.
const FMODE_EXEC: i32 = 0x20;
/// Chunk writes in flight per flush.
const WRITE_PARALLELISM: usize = 8;
/// A cached lease this close to expiry is renewed before use.
const LEASE_MARGIN_MS: u64 = 2000;
/// Chunk locations asked for per GetChunks call by a punch.
const PUNCH_BATCH: u64 = MAX_CHUNKS_PER_CALL as u64;

impl Weft {
    /// open(2) of an existing inode. With O_TRUNC (FUSE_ATOMIC_O_TRUNC) the MDS
    /// truncates, so local dirty data and cached chunk state are dropped first.
    ///
    /// Returns the handle and whether the kernel may keep its cached pages
    /// (FOPEN_KEEP_CACHE): only when the file is unchanged since its previous
    /// open on this mount (cache/data.rs), so close-to-open stays exact.
    pub async fn open(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        flags: i32,
    ) -> Result<(u64, bool), Errno> {
        // With FUSE_ATOMIC_O_TRUNC the kernel sends an O_RDONLY|O_TRUNC open
        // here before it checks that no program runs from the file (its
        // ETXTBSY comes after our reply): truncating first would destroy a
        // running executable, which then crashes, and the open succeeds.
        if flags & libc::O_TRUNC != 0 && self.files.executing(ino) {
            return Err(Errno(libc::ETXTBSY));
        }
        // The MDS checks the open against the file's owner and mode.
        self.settle(ino).await?;
        let req = Op::Open(OpenReq {
            ino,
            flags: flags as u32,
        });
        // Locations asked for before this open but answered after it must
        // not be cached over its answer, nor its answer over a newer change.
        let locs_stamp = self.locs.stamp(ino);
        let r = if flags & libc::O_TRUNC != 0 {
            let st = self.files.get_or_create(ino);
            let _g = st.flush_lock.lock().await;
            self.discard_from(&st, 0);
            let r = self.mds.open(c, req).await;
            self.files.maybe_drop(ino);
            r
        } else {
            self.mds.open(c, req).await
        };
        // The inode is gone (another client renamed a file over this name
        // and the old one was purged) while the kernel still had the name
        // cached: ESTALE makes the kernel walk the path again once, with
        // its dentries revalidated (fs/namei.c do_filp_open, LOOKUP_REVAL),
        // and open the name's new inode, as a local rename promises.
        let (a, chunks) = r.map_err(|e| if e == Errno::ENOENT { Errno::ESTALE } else { e })?;
        // Close-to-open consistency: another client may have written since.
        // An open for reading came with the current locations of the first
        // chunks: the first read asks no GetChunks.
        self.locs.replace_file(ino, chunks.as_ref(), locs_stamp);
        let unchanged = self.data.open_check(ino, stamp(&a));
        // strictatime: a read served from the kernel's pages never reaches
        // weftfs, so each open reads through once to update atime.
        let strict = self.atime.mode == crate::atime::AtimeMode::Strict;
        let keep = unchanged && flags & libc::O_TRUNC == 0 && !strict;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let fh = self.files.open(ino, flags & FMODE_EXEC != 0, write);
        if let Some(st) = self.files.get(ino) {
            let mut g = st.inner.lock();
            g.open_size = a.size;
            g.open_attr = Some(a);
        }
        if a.size == 0 {
            self.files.mark_packable(ino);
        }
        Ok((fh, keep))
    }

    /// create(2): returns the new file's attributes and an open handle.
    pub async fn create(
        self: &Arc<Self>,
        c: &Caller,
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(fuser::FileAttr, u64), Errno> {
        crate::client::check_name(&name)?;
        let op = Op::Create(CreateReq {
            parent,
            name,
            mode,
            umask,
            flags: flags as u32,
        });
        let a = self.mds.attr(c, op).await?;
        if flags & libc::O_TRUNC != 0 {
            // The name may have existed (a race with another creator) and been truncated.
            if let Some(st) = self.files.get(a.ino) {
                let _g = st.flush_lock.lock().await;
                self.discard_from(&st, 0);
            }
        }
        self.locs.invalidate_file(a.ino);
        self.data.open_check(a.ino, stamp(&a));
        let fh = self
            .files
            .open(a.ino, false, flags & libc::O_ACCMODE != libc::O_RDONLY);
        if let Some(st) = self.files.get(a.ino) {
            st.inner.lock().open_attr = Some(a);
        }
        if a.size == 0 {
            self.files.mark_packable(a.ino);
        }
        Ok((self.fattr(&a), fh))
    }

    /// Buffers a write. Waits (backpressure) while total dirty memory is over
    /// the limit; kicks a background flush when this file's buffer is large.
    /// Where an O_APPEND write lands. The kernel (without its writeback
    /// cache) puts it at its own cached i_size, which lags another mount's
    /// appends until their push arrives; open() fetched the MDS's size
    /// (kept as `open_size`: a push for the other mount's change that lands
    /// after the open drops the attribute cache's copy of it), and this
    /// client's unflushed writes extend it, so the end is the largest.
    pub fn append_offset(&self, ino: u64, kernel_offset: u64) -> u64 {
        let known = self.mds.attrs.get(ino).map_or(0, |a| a.size);
        let pending = self.files.size_override(ino).unwrap_or(0);
        let opened = self
            .files
            .get(ino)
            .map_or(0, |st| st.inner.lock().open_size);
        kernel_offset.max(known).max(pending).max(opened)
    }

    pub async fn write(
        self: &Arc<Self>,
        c: Caller,
        ino: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<u32, Errno> {
        self.write_slice(c, ino, offset, &data).await
    }

    /// `write` of borrowed bytes (they are copied into the buffer once).
    pub async fn write_slice(
        self: &Arc<Self>,
        c: Caller,
        ino: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, Errno> {
        check_write_range(offset, data.len())?;
        loop {
            let released = self.files.dirty_released.notified();
            if self.files.dirty_total() >= TOTAL_DIRTY_LIMIT {
                self.flush_all_in_background();
            } else if let Some(st) = self.file_over_limit(ino) {
                self.flush_queued_in_background(st);
            } else {
                break;
            }
            released.await;
        }
        while !self.buffer_write(c.clone(), ino, offset, data) {
            self.settle(ino).await?;
        }
        Ok(data.len() as u32)
    }

    /// The file's state if it holds `file_dirty_limit` bytes or more,
    /// buffered and in flight.
    fn file_over_limit(&self, ino: u64) -> Option<Arc<FileState>> {
        let limit = self.file_dirty_limit?;
        let st = self.files.get(ino)?;
        let pending = {
            let g = st.inner.lock();
            g.dirty.bytes() + g.inflight_bytes
        };
        (pending >= limit).then_some(st)
    }

    /// A background flush of `st` unless one is queued already.
    fn flush_queued_in_background(self: &Arc<Self>, st: Arc<FileState>) {
        let queue = {
            let mut g = st.inner.lock();
            let q = !g.dirty.is_empty() && !g.flush_queued;
            if q {
                g.flush_queued = true;
            }
            q
        };
        if queue {
            self.flush_in_background(st);
        }
    }

    /// Buffered bytes of one file that start its background flush.
    fn flush_threshold(&self) -> u64 {
        self.file_dirty_limit
            .map_or(FILE_DIRTY_LIMIT, |l| (l / 2).clamp(1, FILE_DIRTY_LIMIT))
    }

    /// The write without waiting, for the FUSE reader thread (no hop to a
    /// tokio worker, no copy of the request's bytes before the buffer's):
    /// buffers `data` unless dirty memory is over the limit, in which case
    /// it returns None and the caller takes `write`, which waits. The caller
    /// must have entered the runtime (a background flush may start).
    pub fn write_now(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        offset: u64,
        data: &[u8],
    ) -> Option<Result<u32, Errno>> {
        if let Err(e) = check_write_range(offset, data.len()) {
            return Some(Err(e));
        }
        if self.files.dirty_total() >= TOTAL_DIRTY_LIMIT || self.file_over_limit(ino).is_some() {
            return None;
        }
        if !self.buffer_write(c.clone(), ino, offset, data) {
            return None;
        }
        Some(Ok(data.len() as u32))
    }

    /// Buffers the write; false (nothing buffered) while setattrs are folded
    /// into the buffered data's commit: the write must come after them at
    /// the MDS too (its mtime, its dropping of setuid), so they go first.
    fn buffer_write(self: &Arc<Self>, c: Caller, ino: u64, offset: u64, data: &[u8]) -> bool {
        let threshold = self.flush_threshold();
        let (st, buffered) = self.files.update(ino, |g| {
            if g.folded.as_ref().is_some_and(|f| !f.changes.is_empty()) {
                return None;
            }
            let added = g.dirty.write(offset, data);
            g.dirty_since.get_or_insert_with(Instant::now);
            g.last_write = Some(std::time::SystemTime::now());
            g.writer = c;
            let kick = g.dirty.bytes() >= threshold && !g.flush_queued;
            if kick {
                g.flush_queued = true;
            }
            Some((added, kick))
        });
        let Some((added, kick)) = buffered else {
            return false;
        };
        self.files.add_dirty(added);
        if kick {
            self.flush_in_background(st);
        }
        true
    }

    fn flush_in_background(self: &Arc<Self>, st: Arc<FileState>) {
        let w = self.clone();
        // Part of the request that kicked it (its request id), else one of its own.
        use weft_proto::reqid;
        let id = reqid::current().unwrap_or_else(reqid::new_id);
        let span = tracing::info_span!("writeback", req = %reqid::Id(id), ino = st.ino);
        let flush = reqid::log_if_slow("write-back flush", async move {
            if let Err(e) = w.flush_file(&st).await {
                tracing::warn!(error = %e, "background flush failed");
            }
        });
        tokio::spawn(tracing::Instrument::instrument(
            reqid::scope(id, flush),
            span,
        ));
    }

    fn flush_all_in_background(self: &Arc<Self>) {
        for st in self.files.all() {
            self.flush_queued_in_background(st);
        }
    }

    /// Periodically flushes data that has sat in a buffer for `DIRTY_MAX_AGE`
    /// (as the kernel's writeback does for page-cache file systems).
    pub fn start_periodic_flusher(self: &Arc<Self>) {
        let w = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(w) = w.upgrade() else { return };
                for st in w.files.all() {
                    let old = {
                        let mut g = st.inner.lock();
                        let old = !g.flush_queued
                            && g.dirty_since.is_some_and(|t| t.elapsed() >= DIRTY_MAX_AGE);
                        if old {
                            g.flush_queued = true;
                        }
                        old
                    };
                    if old {
                        w.flush_in_background(st);
                    }
                }
            }
        });
    }

    /// Stores everything buffered for `st` (waiting for any flush in progress).
    pub async fn flush_file(self: &Arc<Self>, st: &Arc<FileState>) -> Result<(), Errno> {
        self.flush_file_as(st, false).await
    }

    /// `flush_file`; `last`: the flush of a close, fsync or release, after
    /// which the file may be packed (segments.rs `should_pack`).
    pub async fn flush_file_as(
        self: &Arc<Self>,
        st: &Arc<FileState>,
        last: bool,
    ) -> Result<(), Errno> {
        let _g = st.flush_lock.lock().await;
        let r = self.flush_locked_as(st, last).await;
        self.files.maybe_drop(st.ino);
        r
    }

    /// Flushes every file (unmount, destroy), and sends the releases still
    /// gathering. Returns the first error.
    pub async fn flush_all(self: &Arc<Self>) -> Result<(), Errno> {
        let mut first = Ok(());
        for st in self.files.all() {
            if let Err(e) = self.flush_file_as(&st, true).await {
                first = first.and(Err(e));
            }
        }
        self.releases.drain().await;
        first
    }

    /// The flush itself; the caller holds `st.flush_lock`.
    pub(crate) async fn flush_locked(self: &Arc<Self>, st: &Arc<FileState>) -> Result<(), Errno> {
        self.flush_locked_as(st, false).await
    }

    /// `flush_locked`; with `last`, a small file written whole goes into a
    /// segment as a needle (segments.rs) unless the MDS refuses (EAGAIN:
    /// it has data already), then into chunks as any other.
    pub(crate) async fn flush_locked_as(
        self: &Arc<Self>,
        st: &Arc<FileState>,
        last: bool,
    ) -> Result<(), Errno> {
        let taken = {
            let mut g = st.inner.lock();
            g.flush_queued = false;
            // Setattrs folded so far go with this flush's commit.
            let fold = g
                .folded
                .as_mut()
                .filter(|f| !f.changes.is_empty())
                .map(|f| {
                    let taken = f.clone();
                    f.changes.clear();
                    taken
                });
            if g.dirty.is_empty() {
                Err(fold)
            } else {
                let end = g.dirty.end();
                let bytes = g.dirty.bytes();
                g.dirty_since = None;
                g.inflight_end = g.inflight_end.max(end);
                g.inflight_bytes += bytes;
                let pack = crate::segments::should_pack(
                    self.segments.threshold(self.pack_max),
                    g.packable,
                    last,
                    end,
                );
                Ok((g.dirty.take(), g.writer.clone(), end, bytes, pack, fold))
            }
        };
        let (chunks, caller, end, bytes, pack, fold) = match taken {
            Ok(t) => t,
            Err(fold) => {
                // No data to carry them (a truncate dropped it).
                let r = match fold {
                    Some(f) => self.send_folded(st, &f).await,
                    None => Ok(()),
                };
                self.unfold(st);
                return r;
            }
        };
        // The commit runs as the writer: it carries root's changes only
        // for root's data (the writes after a fold wait for it, so the
        // writer is the one before it).
        let carried = match &fold {
            Some(f) if caller.uid == 0 => f.changes.clone(),
            _ => Vec::new(),
        };
        let packed = match pack {
            true => {
                self.store_packed(st, &caller, &chunks, end, carried.clone())
                    .await
            }
            false => None,
        };
        let chunks = match packed {
            Some(_) => Vec::new(),
            None => {
                st.inner.lock().packable = false;
                chunks
            }
        };
        let mut stores = Vec::with_capacity(chunks.len());
        for ce in chunks {
            stores.push(self.store_chunk(st, &caller, ce, false));
        }
        let stored = stream::iter(stores)
            .buffer_unordered(WRITE_PARALLELISM)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<Option<ChunkAlloc>>, Errno>>();
        let result = match (packed, stored) {
            (Some(r), _) => r,
            (None, Ok(allocs)) => {
                self.mds
                    .attr(
                        &caller,
                        Op::CommitWrite(CommitWriteReq {
                            ino: st.ino,
                            end,
                            allocs: allocs.into_iter().flatten().collect(),
                            allocs_only: false,
                            then_setattr: carried.clone(),
                        }),
                    )
                    .await
            }
            (None, Err(e)) => Err(e),
        };
        if let Ok(a) = &result {
            st.inner.lock().open_attr = Some(*a);
        }
        let mut result = result.map(|reply| {
            // An MDS that ignores `then_setattr`, or a change it refused:
            // sent again on their own (a refusal then reaches close).
            fold.as_ref().filter(|f| {
                carried.is_empty() || !crate::attr_fold::shown(&reply, &f.view, &f.changes)
            })
        });
        if let Ok(Some(f)) = result {
            if let Err(e) = self.send_folded(st, f).await {
                result = Err(e);
            }
        } else if let (Err(_), Some(f)) = (&result, &fold) {
            // The data failed (its error is recorded below); the owner and
            // mode changes still stand on their own.
            let _ = self.send_folded(st, f).await;
        }
        self.unfold(st);
        let result = result.map(|_| ());
        {
            let mut g = st.inner.lock();
            g.inflight_end = 0;
            g.inflight_bytes = 0;
        }
        if let Err(e) = result {
            tracing::warn!(ino = st.ino, error = %e, "storing written data failed");
            st.record_error(e);
            // The size the kernel saw included data that is now lost.
            self.mds.attrs.invalidate(st.ino);
        }
        self.files.release_dirty(bytes);
        result
    }

    /// The packed store of a flush holding the whole file `[0, end)`: its
    /// needle appended to a segment, then `CommitPacked`. None when the
    /// MDS refuses (the file has data elsewhere: the caller stores chunks).
    async fn store_packed(
        &self,
        st: &FileState,
        caller: &Caller,
        chunks: &[ChunkExtents],
        end: u64,
        then_setattr: Vec<SetAttrReq>,
    ) -> Option<Result<Attr, Errno>> {
        let data = crate::segments::gather(chunks, end)?;
        // The bytes are still here: any failure to pack stores them as chunks.
        let placed = match self.append_needle(st.ino, &data).await {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(ino = st.ino, error = %e, "packing failed: storing chunks");
                return None;
            }
        };
        let op = Op::CommitPacked(CommitPackedReq {
            ino: st.ino,
            segment: placed.segment,
            chunk_id: placed.chunk_id,
            offset: placed.offset,
            len: end,
            end,
            then_setattr,
        });
        let r = self.mds.attr(caller, op).await;
        // Readers must see the needle, not cached locations or blocks.
        self.locs.invalidate_file(st.ino);
        self.data.invalidate_file(st.ino);
        match r {
            Ok(a) => {
                // Read back from here (after a drop_caches, say) without
                // a daemon's round trip; only into free room, so a stream
                // of writes evicts nothing read.
                let key = crate::cache::data::needle_key(st.ino, placed.chunk_id, placed.offset);
                self.data.put(key, &data, self.data.epoch(), false);
                self.data.written(st.ino, stamp(&a));
                let mut g = st.inner.lock();
                g.packable = false;
                g.packed_in = Some(placed.segment);
                Some(Ok(a))
            }
            // ENOSYS: an MDS that does not pack.
            Err(e) if e == Errno::EAGAIN || e == Errno(libc::ENOSYS) => {
                tracing::debug!(ino = st.ino, "file has data already: storing chunks");
                None
            }
            // The segment is gone (the MDS compacted it away once this
            // session had expired) or not this session's: a new one next
            // time, chunks now.
            Err(e) if e == Errno::EINVAL || e == Errno::EACCES || e == Errno::ENOENT => {
                tracing::info!(ino = st.ino, segment = placed.segment, error = %e, "needle refused: storing chunks");
                self.drop_segment(placed.segment).await;
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Sends folded setattrs (attr_fold.rs) as plain SetAttrs, in order,
    /// as the caller who made them; the first refusal is the file's
    /// write-back error (close or fsync reports it).
    async fn send_folded(&self, st: &FileState, f: &FoldedAttrs) -> Result<(), Errno> {
        let mut first = Ok(());
        for r in &f.changes {
            if let Err(e) = self.mds.attr(&f.caller, Op::Setattr(*r)).await {
                tracing::warn!(ino = st.ino, error = %e, "a folded setattr was refused");
                first = first.and(Err(e));
            }
        }
        if let Err(e) = first {
            st.record_error(e);
        }
        first
    }

    /// After a flush sent the folded setattrs: stat shows the MDS's answer
    /// again, unless more were folded meanwhile.
    fn unfold(&self, st: &FileState) {
        let mut g = st.inner.lock();
        if g.folded.as_ref().is_some_and(|f| f.changes.is_empty()) {
            g.folded = None;
        }
    }

    /// Writes one chunk's dirty extents, re-allocating the pipeline and
    /// retrying when the lease/version went stale or a replica is missing.
    /// Returns what the chunk's primary holds on disk afterwards (for
    /// st_blocks), if it said.
    pub(crate) async fn store_chunk(
        &self,
        st: &FileState,
        caller: &Caller,
        ce: ChunkExtents,
        punch: bool,
    ) -> Result<Option<ChunkAlloc>, Errno> {
        // Bytes: pieces and retries share the buffers instead of copying.
        let extents: Vec<(u64, bytes::Bytes)> = ce
            .extents
            .into_iter()
            .map(|(off, d)| (off, bytes::Bytes::from(d)))
            .collect();
        let deadline = Instant::now() + self.write_retry_budget;
        let mut backoff = Duration::from_millis(100);
        // Replicas seen failing: the MDS leaves them out of the next lease
        // (with a new version, so they can never take a late write).
        let mut failed: Vec<String> = Vec::new();
        // A replica answered "full": if no other replica can take the chunk,
        // the answer is ENOSPC, not a wait for replicas that never come.
        let mut saw_full = false;
        for attempt in 1.. {
            let w = match self.chunk_alloc(st, caller, ce.index, &failed).await {
                Ok(w) => w,
                Err(e) if e == Errno::EAGAIN && saw_full => return Err(Errno::ENOSPC),
                // Too few replicas right now (re-replication is on it), or
                // none reachable: wait within the retry budget.
                Err(e) if e == Errno::EAGAIN && Instant::now() + backoff < deadline => {
                    tracing::info!(
                        ino = st.ino,
                        index = ce.index,
                        attempt,
                        "no write lease yet, retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(e) if e == Errno::EAGAIN => return Err(Errno::EIO),
                Err(e) => return Err(e),
            };
            let loc = w.chunk.clone().unwrap_or_default();
            let mut writes = Vec::new();
            for (off, data) in &extents {
                for at in (0..data.len()).step_by(MAX_IO) {
                    let piece = data.slice(at..(at + MAX_IO).min(data.len()));
                    writes.push(self.chunks.write(&w, off + at as u64, piece, punch));
                }
            }
            let results: Vec<Result<WriteReply, tonic::Status>> = stream::iter(writes)
                .buffer_unordered(WRITE_PARALLELISM)
                .collect()
                .await;
            // Whatever happened, cached blocks of this file may be stale now.
            self.data.invalidate_file(st.ino);
            let failure = results.iter().find_map(|r| r.as_ref().err().cloned());
            let Some(status) = failure else {
                let addrs = loc.replicas.iter().map(|r| r.addr.clone()).collect();
                st.inner
                    .lock()
                    .unsynced
                    .insert(loc.chunk_id, (ce.index, addrs));
                // The primary applied the pieces in serial order: the last
                // one's figure is the chunk's allocation now.
                let latest = results
                    .into_iter()
                    .flatten()
                    .max_by_key(|r| r.serial)
                    .and_then(|r| r.allocated);
                return Ok(latest.map(|bytes| ChunkAlloc {
                    index: ce.index,
                    chunk_id: loc.chunk_id,
                    bytes,
                }));
            };
            st.inner.lock().allocs.remove(&ce.index);
            let full = status.code() == tonic::Code::ResourceExhausted;
            saw_full |= full;
            if let Some(addr) = failed_replica(&status, &loc) {
                if !failed.contains(&addr) {
                    failed.push(addr);
                }
            }
            if (next(Call::ChunkWrite, &status) == Next::Realloc || full)
                && Instant::now() + backoff < deadline
            {
                tracing::info!(ino = st.ino, index = ce.index, chunk = loc.chunk_id, %status, attempt, ?failed, "chunk write failed, re-allocating");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            tracing::warn!(ino = st.ino, index = ce.index, chunk = loc.chunk_id, %status, attempt, "chunk write failed");
            return Err(status_errno(&status));
        }
        unreachable!("the retry loop only ends by returning")
    }

    /// fallocate(PUNCH_HOLE/ZERO_RANGE) of `[from, to)` (within the size):
    /// zeros stored through each chunk's write lease like a write (same
    /// serial order at the replicas, same retries), flagged so that replicas
    /// free the whole blocks. This client's buffered writes are stored first,
    /// under the flush lock, so none lands after the punch and resurrects
    /// bytes in the range. Chunks never written are holes already; so is a
    /// packed file past its needle.
    pub(crate) async fn punch_zeros(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        from: u64,
        to: u64,
    ) -> Result<(), Errno> {
        if from >= to {
            return Ok(());
        }
        let st = self.files.get_or_create(ino);
        let result = async {
            let _g = st.flush_lock.lock().await;
            self.flush_locked(&st).await?;
            let mut allocs = Vec::new();
            let cs = self.chunk_size;
            let (mut index, last) = (from / cs, (to - 1) / cs);
            while index <= last {
                // The MDS answers at most so many indexes per call.
                let count = (last - index + 1).min(PUNCH_BATCH) as u32;
                let list = self.mds.get_chunks(c, ino, index, count).await?;
                if let Some(n) = &list.packed {
                    // A packed file's only stored bytes are its needle's,
                    // [0, len) (a quarter of a chunk at most): zeros written
                    // there go through chunk 0's lease, whose AllocChunk has
                    // the MDS move the needle into a chunk first. Every
                    // other byte is a hole already.
                    let hi = to.min(n.len);
                    if from < hi {
                        let ce = ChunkExtents {
                            index: 0,
                            extents: vec![(from, vec![0u8; (hi - from) as usize])],
                        };
                        allocs.extend(self.store_chunk(&st, c, ce, true).await?);
                    }
                    break;
                }
                if list.chunks.is_empty() {
                    return Err(Errno::EIO);
                }
                for loc in &list.chunks {
                    let (lo, hi) = (from.max(index * cs), to.min((index + 1) * cs));
                    if loc.chunk_id != 0 && lo < hi {
                        let zeros = vec![0u8; (hi - lo) as usize];
                        let ce = ChunkExtents {
                            index,
                            extents: vec![(lo - index * cs, zeros)],
                        };
                        allocs.extend(self.store_chunk(&st, c, ce, true).await?);
                        if allocs.len() >= MAX_ALLOCS_PER_COMMIT {
                            self.commit_allocs_only(c, ino, std::mem::take(&mut allocs))
                                .await?;
                        }
                    }
                    index += 1;
                }
            }
            // The change is a write's: new mtime/ctime and chunk versions
            // committed; the size stays (`to` is within it); the freed
            // blocks leave st_blocks.
            self.mds
                .attr(
                    c,
                    Op::CommitWrite(CommitWriteReq {
                        ino,
                        end: to,
                        allocs,
                        allocs_only: false,
                        then_setattr: Vec::new(),
                    }),
                )
                .await?;
            Ok(())
        }
        .await;
        self.data.invalidate_file(ino);
        self.files.maybe_drop(ino);
        result
    }

    /// Tells the MDS what chunks' replicas hold on disk now (st_blocks), in
    /// as many commits as it takes; size and times stay.
    pub(crate) async fn commit_allocs_only(
        &self,
        c: &Caller,
        ino: u64,
        allocs: Vec<ChunkAlloc>,
    ) -> Result<(), Errno> {
        for batch in allocs.chunks(MAX_ALLOCS_PER_COMMIT) {
            let op = Op::CommitWrite(CommitWriteReq {
                ino,
                end: 0,
                allocs: batch.to_vec(),
                allocs_only: true,
                then_setattr: Vec::new(),
            });
            self.mds.attr(c, op).await?;
        }
        Ok(())
    }

    /// The write pipeline for chunk `index`: the cached lease if still good,
    /// else a fresh `AllocChunk`.
    pub(crate) async fn chunk_alloc(
        &self,
        st: &FileState,
        caller: &Caller,
        index: u64,
        failed: &[String],
    ) -> Result<ChunkWrite, Errno> {
        let now_ms = unix_ms();
        if let Some(w) = st.inner.lock().allocs.get(&index) {
            let lease_ok = w.lease_expires_ms == 0 || w.lease_expires_ms > now_ms + LEASE_MARGIN_MS;
            // The capability is renewed with the lease (a fresh AllocChunk).
            let cap_ok = w.chunk.as_ref().is_none_or(crate::chunk_io::cap_fresh);
            if lease_ok && cap_ok {
                return Ok(w.clone());
            }
        }
        let w = self
            .mds
            .alloc_chunk(caller, st.ino, index, failed.to_vec())
            .await?;
        if w.chunk_size != 0 && w.chunk_size != self.chunk_size {
            tracing::warn!(
                ino = st.ino,
                mds = w.chunk_size,
                ours = self.chunk_size,
                "chunk size changed under us"
            );
        }
        if w.chunk.as_ref().is_none_or(|l| l.replicas.is_empty()) {
            tracing::warn!(ino = st.ino, index, "AllocChunk named no replica");
            return Err(Errno::EIO);
        }
        // Readers must see the (possibly new) chunk, not a cached hole.
        self.locs.invalidate(st.ino, index);
        let mut g = st.inner.lock();
        if g.opens > 0 {
            g.allocs.insert(index, w.clone());
        }
        Ok(w)
    }

    /// flush(2) on close of a descriptor: store the data (every replica holds
    /// it, and the MDS its size) and report any write-back error this handle
    /// has not seen. With `close_sync`, also wait until this mount's changes
    /// to the inode (its creation, size, attributes) are on disk in the MDS
    /// log; without, fsync is what makes them durable, as on ext4.
    pub async fn flush_handle(self: &Arc<Self>, ino: u64, fh: u64) -> Result<(), Errno> {
        if let Some(st) = self.files.get(ino) {
            let r = self.flush_file_as(&st, true).await;
            let unseen = self.files.take_unseen_error(fh, &st);
            r?;
            unseen.map_or(Ok(()), Err)?;
        }
        if self.close_sync {
            self.mds.log_durable_for(&Caller::default(), ino).await
        } else {
            Ok(())
        }
    }

    /// fsync(2): store the data, then make every chunk written since the last
    /// fsync durable on all its replicas, and every metadata change of this
    /// mount durable in the MDS log (as ext4's journal commit does: a rename
    /// or create before the fsync survives with it); only then report success.
    pub async fn fsync(self: &Arc<Self>, ino: u64, fh: u64) -> Result<(), Errno> {
        if let Some(st) = self.files.get(ino) {
            // A failed flush has recorded its error already; a failed sync does here.
            let r = match self.flush_file_as(&st, true).await {
                Ok(()) => {
                    let r = self.sync_chunks(&st).await;
                    let packed_in = st.inner.lock().packed_in.take();
                    let r = match (r, packed_in) {
                        (Ok(()), Some(segment)) => {
                            let r = self.sync_segment(segment).await;
                            if r.is_err() {
                                // Still to sync on the next fsync.
                                st.inner.lock().packed_in.get_or_insert(segment);
                            }
                            r
                        }
                        (r, _) => r,
                    };
                    if let Err(e) = r {
                        st.record_error(e);
                    }
                    r
                }
                Err(e) => Err(e),
            };
            let unseen = self.files.take_unseen_error(fh, &st);
            self.files.maybe_drop(ino);
            r?;
            unseen.map_or(Ok(()), Err)?;
        }
        self.mds.log_durable_all(&Caller::default()).await
    }

    pub(crate) async fn sync_chunks(&self, st: &FileState) -> Result<(), Errno> {
        let pending: HashMap<u64, (u64, Vec<String>)> =
            std::mem::take(&mut st.inner.lock().unsynced);
        if pending.is_empty() {
            return Ok(());
        }
        let mut by_pipeline: HashMap<Vec<String>, Vec<u64>> = HashMap::new();
        for (id, (_, addrs)) in &pending {
            by_pipeline.entry(addrs.clone()).or_default().push(*id);
        }
        let mut syncs = Vec::with_capacity(by_pipeline.len());
        for (addrs, ids) in by_pipeline {
            syncs.push(async move {
                let r = self.chunks.sync(&addrs, ids.clone()).await;
                (ids, r)
            });
        }
        let results: Vec<(Vec<u64>, Result<(), tonic::Status>)> = stream::iter(syncs)
            .buffer_unordered(WRITE_PARALLELISM)
            .collect()
            .await;
        let mut failed = Vec::new();
        for (ids, r) in results {
            if let Err(s) = r {
                tracing::info!(ino = st.ino, status = %s, "chunk sync failed; syncing the chunks' current replicas");
                failed.extend(ids.into_iter().map(|id| (id, s.clone())));
            }
        }
        let mut first_err = None;
        for (id, status) in failed {
            let Some((index, _)) = pending.get(&id).cloned() else {
                continue;
            };
            if let Err(e) = self.resync_chunk(st, id, index, status).await {
                first_err.get_or_insert(e);
                // Keep it for the next fsync.
                if let Some(v) = pending.get(&id) {
                    st.inner.lock().unsynced.insert(id, v.clone());
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// A replica of the pipeline a chunk was written down failed before the
    /// sync: sync the replicas the MDS lists now (the failed one drops out
    /// once it is declared dead; a newer lease names its own set). Retried
    /// within the write retry budget.
    async fn resync_chunk(
        &self,
        st: &FileState,
        id: u64,
        index: u64,
        mut status: tonic::Status,
    ) -> Result<(), Errno> {
        let caller = st.inner.lock().writer.clone();
        let deadline = Instant::now() + self.write_retry_budget;
        let mut backoff = Duration::from_millis(100);
        loop {
            if Instant::now() + backoff >= deadline {
                tracing::warn!(ino = st.ino, chunk = id, %status, "chunk sync failed");
                return Err(status_errno(&status));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            let list = match self.mds.get_chunks(&caller, st.ino, index, 1).await {
                Ok(l) => l,
                // Gone: a segment compacted away (its needles were copied
                // and synced on every replica of the one that replaced it).
                Err(Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            };
            let Some(loc) = list.chunks.into_iter().find(|l| l.index == index) else {
                return Ok(()); // truncated away: nothing left to sync
            };
            if loc.chunk_id != id {
                return Ok(());
            }
            let addrs: Vec<String> = loc.replicas.iter().map(|r| r.addr.clone()).collect();
            // A fresh capability, should the one the writes had have run out.
            self.chunks.remember(&loc);
            match self.chunks.sync(&addrs, vec![id]).await {
                Ok(()) => return Ok(()),
                Err(s) => status = s,
            }
        }
    }

    /// release: the last close of a handle. Stores remaining data (errors
    /// stay recorded for other handles; close(2) already got flush's verdict)
    /// and tells the MDS, with the handle's mode (the MDS lends write leases
    /// only while the session holds the file open for writing, or may write it).
    pub async fn release(self: &Arc<Self>, c: &Caller, ino: u64, fh: u64) -> Result<(), Errno> {
        if let Some(st) = self.files.get(ino) {
            let _ = self.flush_file_as(&st, true).await;
        }
        let write = self.files.close(fh).is_some_and(|h| h.write);
        // Sent with others a moment later (releases.rs).
        self.releases.push(self, c, ino, write);
        Ok(())
    }

    /// Drops dirty data at or beyond `size` (accounting for the memory).
    fn discard_from(&self, st: &FileState, size: u64) {
        let freed = {
            let mut g = st.inner.lock();
            let freed = g.dirty.truncate(size);
            if g.dirty.is_empty() {
                g.dirty_since = None;
            }
            let first_gone = size.div_ceil(self.chunk_size);
            g.unsynced.retain(|_, (index, _)| *index < first_gone);
            g.allocs.clear();
            freed
        };
        self.files.release_dirty(freed);
        self.locs.invalidate_file(st.ino);
        self.data.invalidate_file(st.ino);
    }

    /// setattr with a size: store what stays, change the size at the MDS, and
    /// cut the boundary chunk on its replicas so a later extension reads zeros.
    pub async fn truncate(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        size: u64,
        req: SetAttrReq,
    ) -> Result<Attr, Errno> {
        if size > i64::MAX as u64 {
            return Err(Errno::EFBIG);
        }
        let st = self.files.get_or_create(ino);
        let r = async {
            let _g = st.flush_lock.lock().await;
            self.discard_from(&st, size);
            // A failed store is recorded for fsync/close; the truncate proceeds.
            let _ = self.flush_locked(&st).await;
            let old = self.mds.getattr(c, ino).await?.size;
            let cs = self.chunk_size;
            if size > old && !old.is_multiple_of(cs) {
                // Bytes past the old end (e.g. from a write whose commit failed)
                // must read as zeros once the file grows over them.
                self.cut_chunk(&st, c, ino, old).await?;
            }
            let a = self.mds.attr(c, Op::Setattr(req)).await?;
            if size < old && !size.is_multiple_of(cs) {
                self.cut_chunk(&st, c, ino, size).await?;
            }
            self.locs.invalidate_file(ino);
            self.data.invalidate_file(ino);
            let mut g = st.inner.lock();
            g.allocs.clear();
            // Emptied: what is written next may be the whole file again.
            g.packable |= size == 0 && g.opens > 0;
            g.open_size = size;
            drop(g);
            Ok(a)
        }
        .await;
        self.files.maybe_drop(ino);
        r
    }

    /// Chunk.Truncate of the chunk holding file offset `at`, at that offset,
    /// through the chunk's write lease (the primary orders it among the
    /// chunk's writes on every replica), retried on a new lease as a chunk
    /// write is.
    async fn cut_chunk(&self, st: &FileState, c: &Caller, ino: u64, at: u64) -> Result<(), Errno> {
        let index = at / self.chunk_size;
        let list = self.mds.get_chunks(c, ino, index, 1).await?;
        let Some(loc) = list.chunks.into_iter().find(|l| l.index == index) else {
            return Ok(());
        };
        if loc.chunk_id == 0 {
            return Ok(());
        }
        let deadline = Instant::now() + self.write_retry_budget;
        let mut backoff = Duration::from_millis(100);
        let mut failed: Vec<String> = Vec::new();
        loop {
            let w = match self.chunk_alloc(st, c, index, &failed).await {
                Ok(w) => w,
                Err(e) if e == Errno::EAGAIN && Instant::now() + backoff < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(e) if e == Errno::EAGAIN => return Err(Errno::EIO),
                Err(e) => return Err(e),
            };
            let Some(wloc) = w.chunk.clone() else {
                return Err(Errno::EIO);
            };
            if wloc.chunk_id != loc.chunk_id {
                // Not the chunk we looked at: a racing truncate removed it.
                return Ok(());
            }
            let status = match self.chunks.truncate(&w, at % self.chunk_size).await {
                Ok(()) => return Ok(()),
                Err(s) => s,
            };
            st.inner.lock().allocs.remove(&index);
            if let Some(addr) = failed_replica(&status, &wloc) {
                if !failed.contains(&addr) {
                    failed.push(addr);
                }
            }
            if next(Call::ChunkWrite, &status) == Next::Realloc
                && Instant::now() + backoff < deadline
            {
                tracing::info!(ino, index, chunk = loc.chunk_id, %status, ?failed, "chunk truncate failed, re-allocating");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            tracing::warn!(ino, index, chunk = loc.chunk_id, status = %status, "chunk truncate failed");
            return Err(status_errno(&status));
        }
    }
}

/// The replica a failed chunk write names (deepest in the pipeline), or the
/// head when the head itself could not be reached. None when the failure says
/// nothing about a replica's health (a stale version: just a newer lease).
pub(crate) fn failed_replica(status: &tonic::Status, loc: &ChunkLoc) -> Option<String> {
    use tonic::Code;
    if status.code() == Code::FailedPrecondition {
        return None;
    }
    if let Some(addr) = status
        .metadata()
        .get("weft-failed-addr")
        .and_then(|v| v.to_str().ok())
    {
        return Some(addr.to_string());
    }
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted => loc.replicas.first().map(|r| r.addr.clone()),
        _ => None,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn check_write_range(offset: u64, len: usize) -> Result<(), Errno> {
    if offset.checked_add(len as u64).is_none() || offset > i64::MAX as u64 {
        return Err(Errno::EFBIG);
    }
    Ok(())
}

/// What the data cache compares at open: (size, mtime, ctime) in ns.
fn stamp(a: &Attr) -> crate::cache::data::Stamp {
    let ns = |t: &Option<Timespec>| {
        t.as_ref().map_or(0, |t| {
            i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec)
        })
    };
    (a.size, ns(&a.mtime), ns(&a.ctime))
}
