//! The compactor: rewrites sparse segments of packed small files.
//!
//! Deletes, truncates and overwrites leave dead needles in segments. A pass
//! (`Mds::compact_pass`: the background loop every `--compact-interval-secs`
//! on the leader, or `Admin.Compact`):
//! 1. picks *sealed* segments — the MDS's own, those of a session that is
//!    gone, and those their live owner has moved past (it made a newer
//!    segment) and not appended to for `--compact-idle-secs` (a mount
//!    appends only to its newest segment) — and drops outright those no
//!    file references (`Record::CompactSegments` with no moves: also a new
//!    segment a crash left before its switch);
//! 2. takes the sealed ones whose live fraction is below the threshold,
//!    sparsest first, as many as one new segment holds;
//! 3. journals `Record::CompactBegin` (a new segment of its own, session 0,
//!    so no mount appends to it or reaches its chunk);
//! 4. reads each live needle's header from a replica (its real length: a
//!    truncate shortened only what the MDS serves) and has the new chunk's
//!    pipeline copy the needles, runs of adjacent ones at once, with
//!    `Chunk.Copy` under a write lease the MDS takes itself (as an unpack
//!    does), at `--compact-mib-per-sec`; the last piece syncs every replica;
//! 5. journals ONE `Record::CompactSegments`: every file whose needle is
//!    still where it was copied from now points into the new segment, and
//!    the old segments no file references any more go, with their chunks
//!    (deleted from the daemons by the normal path).
//!
//! A crash (of the MDS, or a failed copy) before step 5 changes no file:
//! the new segment has no reference and the next pass drops it. Readers
//! holding an old location fail over to a fresh one (the record pushes an
//! invalidation per moved file; `read_path.rs` `read_packed` refreshes
//! anyway when the old chunk is gone).

use super::chunk_admin::{chunk_data, within};
use super::Mds;
use crate::committer::Proposal;
use crate::ns::{needle_span, NeedleMove, Record, SegmentInfo, MDS_SEGMENT_SESSION, NEEDLE_HEADER};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use weft_proto::caps::Mode;
use weft_proto::contract;
use weft_proto::pb::meta_reply::Result as Reply;
use weft_proto::{pb, Errno, MAX_IO};

/// A segment holds at most this much (or one chunk, if smaller), as a
/// mount's (client/src/segments.rs `SEGMENT_MAX`).
const SEGMENT_MAX: u64 = 64 << 20;
/// Most needles one switch record moves (its size in the log); the rest of
/// a segment moves in a later pass.
const MAX_MOVES: usize = 65_536;
/// Needle headers read at once.
const HEADER_READS: usize = 16;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of the whole copy (a new lease over the survivors after a failed
/// replica) before the pass gives up.
const COPY_TRIES: usize = 4;

/// The compactor's settings (weft-mds `--compact-*`).
#[derive(Clone, Debug)]
pub struct CompactConfig {
    /// Segments whose live fraction is below this are rewritten.
    pub below: f64,
    /// Copy bandwidth cap (0: none).
    pub bytes_per_sec: u64,
    /// Background passes this often (zero: only on request).
    pub interval: Duration,
    /// A live owner's older segment is sealed after this long without a
    /// new needle.
    pub idle: Duration,
    /// Test hook (`--test-compact-fault`): where a pass kills the MDS.
    pub fault: Option<String>,
}

impl CompactConfig {
    /// Dies as kill -9 would if the test hook names `point`.
    fn fault(&self, point: &str) {
        if self.fault.as_deref() == Some(point) {
            tracing::error!(
                point,
                "test hook: the MDS kills itself in a compaction pass"
            );
            // SAFETY: signals this process; nothing after it runs.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

impl Default for CompactConfig {
    fn default() -> Self {
        CompactConfig {
            below: 0.5,
            bytes_per_sec: 20 << 20,
            interval: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            fault: None,
        }
    }
}

/// The compactor's state: one pass at a time.
#[derive(Default)]
pub struct Compactor {
    pub cfg: CompactConfig,
    pass: tokio::sync::Mutex<()>,
    /// Passes that moved or removed something.
    passes: AtomicU64,
}

impl Compactor {
    pub fn new(cfg: CompactConfig) -> Compactor {
        Compactor {
            cfg,
            ..Default::default()
        }
    }

    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }
}

/// Runs a pass every `interval` on the leader, until the process ends.
pub fn spawn(mds: Mds) {
    let interval = mds.compactor.cfg.interval;
    if interval.is_zero() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            if mds.registry.lock().in_startup_grace() || mds.check_leader(false).is_err() {
                continue;
            }
            match mds.compact_pass(mds.compactor.cfg.below).await {
                Ok(r) if r.segments_removed > 0 || r.needles_moved > 0 => {
                    tracing::info!(?r, "compaction pass");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "compaction pass failed"),
            }
        }
    });
}

/// One planned needle: where it is, how long it really is, where it goes.
struct Planned {
    mv: NeedleMove,
    version: u64,
    span: u64,
}

/// Which segments a pass may touch: `(droppable, candidates)`, the
/// candidates sparsest first. Pure, unit-tested.
pub(crate) fn choose(
    infos: &[SegmentInfo],
    alive: impl Fn(u64) -> bool,
    now: crate::ns::Time,
    idle: Duration,
    below: f64,
) -> (Vec<u64>, Vec<SegmentInfo>) {
    let mut newest: HashMap<u64, u64> = HashMap::new();
    for s in infos {
        let n = newest.entry(s.session).or_default();
        *n = (*n).max(s.ino);
    }
    let idle_since = |s: &SegmentInfo| {
        let (a, b) = (now.sec as i128, s.mtime.sec as i128);
        a - b >= idle.as_secs() as i128
    };
    let sealed = |s: &SegmentInfo| {
        s.session == MDS_SEGMENT_SESSION
            || !alive(s.session)
            || (newest.get(&s.session) != Some(&s.ino) && idle_since(s))
    };
    let mut drop = Vec::new();
    let mut candidates = Vec::new();
    for s in infos.iter().filter(|s| sealed(s)) {
        if s.live.needles == 0 {
            drop.push(s.ino);
        } else if s.chunk != 0 && s.live_fraction() < below {
            candidates.push(s.clone());
        }
    }
    candidates.sort_by(|a, b| {
        a.live_fraction()
            .total_cmp(&b.live_fraction())
            .then(a.ino.cmp(&b.ino))
    });
    (drop, candidates)
}

/// A needle header's data length, if `h` is the header of file `ino`'s
/// needle holding at least `len` bytes.
fn header_len(h: &[u8], ino: u64, len: u64) -> Option<u64> {
    let h = h.get(..NEEDLE_HEADER as usize)?;
    let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap());
    let ok = &h[0..4] == b"WNDL"
        && u32_at(4) == crc32c::crc32c(&h[8..32])
        && u64_at(8) == ino
        && u64_at(16) >= len
        && u64_at(16) <= MAX_IO as u64 - NEEDLE_HEADER;
    ok.then(|| u64_at(16))
}

impl Mds {
    /// One compaction pass with threshold `below`; what it did.
    pub async fn compact_pass(&self, below: f64) -> Result<pb::CompactReply, Errno> {
        let _one = self.compactor.pass.lock().await;
        let mut reply = pb::CompactReply::default();
        let now: crate::ns::Time = weft_proto::now().into();
        let (drop, candidates, chunk_size) = {
            let st = self.state.read().await;
            let infos = st.ns.segment_infos();
            let (drop, candidates) = choose(
                &infos,
                |s| st.sessions.contains(s),
                now,
                self.compactor.cfg.idle,
                below,
            );
            (drop, candidates, st.ns.chunk_size())
        };
        if !drop.is_empty() {
            let before = self.segment_written(&drop).await;
            let record = Record::CompactSegments {
                new: 0,
                end: 0,
                moves: vec![],
                drop: drop.clone(),
            };
            self.committer
                .propose(|done| Proposal::Internal { record, done })
                .await?;
            self.count_removed(&before, &mut reply).await;
        }
        let budget = chunk_size.min(SEGMENT_MAX);
        let mut chosen: Vec<SegmentInfo> = Vec::new();
        let mut total = 0;
        // Until the new segment is full: the last one may move only in part
        // (it stays, sparser, for a later pass).
        for c in candidates {
            if total >= budget {
                break;
            }
            total += c.live.bytes;
            chosen.push(c);
        }
        if !chosen.is_empty() {
            self.compact(&chosen, budget, &mut reply).await?;
        }
        if reply.segments_removed > 0 || reply.needles_moved > 0 {
            self.compactor.passes.fetch_add(1, Ordering::Relaxed);
        }
        let st = self.state.read().await;
        for s in st.ns.segment_infos() {
            reply.segments += 1;
            reply.segment_bytes += s.written;
            reply.segment_live_bytes += s.live.bytes;
        }
        Ok(reply)
    }

    /// How far each of `segs` is written (for the freed figure).
    async fn segment_written(&self, segs: &[u64]) -> Vec<(u64, u64)> {
        let st = self.state.read().await;
        let want: BTreeSet<u64> = segs.iter().copied().collect();
        st.ns
            .segment_infos()
            .into_iter()
            .filter(|s| want.contains(&s.ino))
            .map(|s| (s.ino, s.written))
            .collect()
    }

    async fn count_removed(&self, before: &[(u64, u64)], reply: &mut pb::CompactReply) {
        let st = self.state.read().await;
        for (ino, written) in before {
            if st.ns.get(*ino).is_none() {
                reply.segments_removed += 1;
                reply.bytes_freed += written;
            }
        }
    }

    /// Moves the live needles of `olds` into a new segment and switches.
    async fn compact(
        &self,
        olds: &[SegmentInfo],
        budget: u64,
        reply: &mut pb::CompactReply,
    ) -> Result<(), Errno> {
        let chunks: BTreeSet<u64> = olds.iter().map(|s| s.chunk).collect();
        let needles = self.state.read().await.ns.needles_in(&chunks);
        let record = Record::CompactBegin {
            now: weft_proto::now().into(),
        };
        let new = match self
            .committer
            .propose(|done| Proposal::Internal { record, done })
            .await?
        {
            Reply::Attr(a) => a.ino,
            _ => return Err(Errno::EIO),
        };
        let new_chunk = {
            let st = self.state.read().await;
            let (_, list) = st.ns.file_chunks(new, 0, 1)?;
            list.first().map(|c| c.1).ok_or(Errno::EIO)?
        };
        // Plan: each live needle's real span, in segment then offset order.
        let mut plan: Vec<Planned> = Vec::new();
        let mut sources: HashMap<u64, Vec<String>> = HashMap::new();
        let mut cursor = 0u64;
        'olds: for old in olds {
            let srcs: Vec<String> = self
                .wait_locations(old.chunk, old.version)
                .await
                .into_iter()
                .map(|r| r.addr)
                .collect();
            if srcs.is_empty() {
                tracing::warn!(segment = old.ino, "no live replica of a segment to compact");
                continue;
            }
            sources.insert(old.chunk, srcs.clone());
            let list = needles.get(&old.chunk).cloned().unwrap_or_default();
            let mut lens: Vec<Option<u64>> = Vec::with_capacity(list.len());
            for batch in list.chunks(HEADER_READS) {
                let reads = batch
                    .iter()
                    .copied()
                    .map(|(offset, ino, len)| self.read_header(old, &srcs, offset, ino, len));
                lens.extend(futures::future::join_all(reads).await);
            }
            for (&(offset, ino, _), real) in list.iter().zip(lens) {
                let Some(real) = real else {
                    // Left where it is: the old segment stays while it is referenced.
                    tracing::error!(
                        ino,
                        segment = old.ino,
                        offset,
                        "a needle's header does not verify on any replica: not moved"
                    );
                    continue;
                };
                let span = needle_span(real);
                if cursor + span > budget || plan.len() >= MAX_MOVES {
                    break 'olds;
                }
                plan.push(Planned {
                    mv: NeedleMove {
                        ino,
                        chunk: old.chunk,
                        offset,
                        new_offset: cursor,
                    },
                    version: old.version,
                    span,
                });
                cursor += span;
            }
        }
        let copied = if plan.is_empty() {
            Ok(0)
        } else {
            self.copy_needles(new_chunk, &plan, &sources).await
        };
        let (moves, end) = match copied {
            Ok(_) => (plan.iter().map(|p| p.mv).collect(), cursor),
            // Nothing switches; the record below drops the new segment.
            Err(_) => (vec![], 0),
        };
        let drop: Vec<u64> = olds.iter().map(|s| s.ino).collect();
        let before = self.segment_written(&drop).await;
        let n_moves = moves.len() as u64;
        let record = Record::CompactSegments {
            new,
            end,
            moves,
            drop,
        };
        self.compactor.cfg.fault("before-switch");
        self.committer
            .propose(|done| Proposal::Internal { record, done })
            .await?;
        self.compactor.cfg.fault("after-switch");
        let bytes = copied?;
        self.count_removed(&before, reply).await;
        reply.segments_compacted += olds.len() as u64;
        reply.needles_moved += n_moves;
        reply.bytes_copied += bytes;
        reply.new_segments += self.state.read().await.ns.get(new).is_some() as u64;
        tracing::info!(
            new,
            olds = olds.len(),
            needles = n_moves,
            bytes,
            "segments compacted"
        );
        Ok(())
    }

    /// The real data length of file `ino`'s needle at `offset` of `old`
    /// (at least `len`, the part the MDS serves), from the first replica
    /// whose header verifies.
    async fn read_header(
        &self,
        old: &SegmentInfo,
        srcs: &[String],
        offset: u64,
        ino: u64,
        len: u64,
    ) -> Option<u64> {
        let cap = self.cap(old.chunk, old.version, Mode::Read);
        for addr in srcs {
            let Ok(mut c) = chunk_data(addr) else {
                continue;
            };
            let req = pb::ReadReq {
                chunk_id: old.chunk,
                version: old.version,
                offset,
                length: NEEDLE_HEADER as u32,
                cap: cap.clone(),
            };
            match within(addr, CALL_TIMEOUT, c.read(req)).await {
                Ok(r) => match header_len(&r.into_inner().data, ino, len) {
                    Some(l) => return Some(l),
                    None => {
                        tracing::warn!(ino, chunk = old.chunk, offset, %addr, "needle header does not verify")
                    }
                },
                Err(s) => {
                    tracing::info!(chunk = old.chunk, %addr, error = %s.message(), "needle header read failed")
                }
            }
        }
        None
    }

    /// Copies the planned needles into `chunk` (offset `new_offset` each),
    /// durably on every replica of its pipeline; the bytes copied.
    async fn copy_needles(
        &self,
        chunk: u64,
        plan: &[Planned],
        sources: &HashMap<u64, Vec<String>>,
    ) -> Result<u64, Errno> {
        // Runs of needles adjacent in their old segment (and so in the new
        // one), cut at MAX_IO: (source chunk, its version, from, to, len).
        let mut pieces: Vec<(u64, u64, u64, u64, u64)> = Vec::new();
        for p in plan {
            match pieces.last_mut() {
                Some(l)
                    if l.0 == p.mv.chunk
                        && l.2 + l.4 == p.mv.offset
                        && l.3 + l.4 == p.mv.new_offset
                        && l.4 + p.span <= MAX_IO as u64 =>
                {
                    l.4 += p.span
                }
                _ => pieces.push((p.mv.chunk, p.version, p.mv.offset, p.mv.new_offset, p.span)),
            }
        }
        let chunk_size = self.state.read().await.ns.chunk_size();
        let mut failed: Vec<u64> = Vec::new();
        let mut last = Errno::EIO;
        for _ in 0..COPY_TRIES {
            let version = match self.state.read().await.ns.chunk_owner(chunk) {
                Some((_, _, v)) => v,
                None => return Err(Errno::ENOENT),
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
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            match self.copy_runs(&cw, &pieces, sources).await {
                Ok(bytes) => return Ok(bytes),
                Err((status, loc)) => {
                    tracing::warn!(chunk, error = %status.message(), "compaction copy failed");
                    last = Errno::EIO;
                    if let Some(addr) = failed_replica(&status, &loc) {
                        failed.extend(self.failed_ids(&[addr]));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Err(last)
    }

    /// One try: every piece with Chunk.Copy to the lease's head, the last
    /// with sync, at the configured rate.
    async fn copy_runs(
        &self,
        cw: &pb::ChunkWrite,
        pieces: &[(u64, u64, u64, u64, u64)],
        sources: &HashMap<u64, Vec<String>>,
    ) -> Result<u64, (tonic::Status, pb::ChunkLoc)> {
        let loc = cw.chunk.clone().unwrap_or_default();
        let Some((head, rest)) = loc.replicas.split_first() else {
            return Err((tonic::Status::unavailable("no replica placed"), loc));
        };
        let chain: Vec<String> = rest.iter().map(|r| r.addr.clone()).collect();
        let wcap = self.cap(loc.chunk_id, loc.version, Mode::Write);
        let rate = self.compactor.cfg.bytes_per_sec;
        let started = Instant::now();
        let mut done = 0u64;
        for (i, &(src, src_version, from, to, len)) in pieces.iter().enumerate() {
            let req = pb::WriteReq {
                chunk_id: loc.chunk_id,
                version: loc.version,
                lease_epoch: cw.lease_epoch,
                offset: to,
                chain: chain.clone(),
                sync: i + 1 == pieces.len(),
                term: cw.term,
                cap: wcap.clone(),
                source: Some(pb::CopySource {
                    chunk_id: src,
                    version: src_version,
                    offset: from,
                    length: len,
                    replicas: sources.get(&src).cloned().unwrap_or_default(),
                    cap: self.cap(src, src_version, Mode::Read),
                    md5: false,
                    md5_state: vec![],
                }),
                ..Default::default()
            };
            let mut c = chunk_data(&head.addr).map_err(|s| (s, loc.clone()))?;
            within(&head.addr, CALL_TIMEOUT, c.copy(req))
                .await
                .map_err(|s| (s, loc.clone()))?;
            done += len;
            if rate > 0 {
                let due = Duration::from_secs_f64(done as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Ok(done)
    }
}

/// The replica a failed copy names (deepest in the pipeline), or the head
/// when it could not be reached; None when the failure says nothing about a
/// replica (a stale version, an unreadable source).
fn failed_replica(status: &tonic::Status, loc: &pb::ChunkLoc) -> Option<String> {
    use tonic::Code;
    if status.code() == Code::FailedPrecondition || contract::copy_source_failed(status) {
        return None;
    }
    if let Some(addr) = status
        .metadata()
        .get("weft-failed-addr")
        .and_then(|v| v.to_str().ok())
    {
        return Some(addr.to_string());
    }
    loc.replicas.first().map(|r| r.addr.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::{Live, Time};

    fn seg(ino: u64, session: u64, live: u64, written: u64, mtime: i64) -> SegmentInfo {
        SegmentInfo {
            ino,
            chunk: ino + 100,
            version: 1,
            session,
            written,
            live: Live {
                needles: live.div_ceil(64),
                bytes: live,
            },
            mtime: Time {
                sec: mtime,
                nsec: 0,
            },
        }
    }

    #[test]
    fn only_sealed_segments_are_touched() {
        let now = Time { sec: 1000, nsec: 0 };
        let idle = Duration::from_secs(60);
        let infos = vec![
            // A live mount's older segments: one idle, one just written.
            seg(10, 7, 100, 1000, 900),
            seg(11, 7, 100, 1000, 990),
            // Its newest: never, however idle and sparse.
            seg(12, 7, 64, 1000, 0),
            // A gone session's: sparse, dense, empty.
            seg(20, 8, 640, 1000, 999),
            seg(21, 8, 900, 1000, 999),
            seg(22, 8, 0, 1000, 999),
            // The MDS's own: an unreferenced one (a crash before its switch).
            seg(30, MDS_SEGMENT_SESSION, 0, 0, 999),
            seg(31, MDS_SEGMENT_SESSION, 192, 1000, 999),
        ];
        let (drop, cand) = choose(&infos, |s| s == 7, now, idle, 0.7);
        assert_eq!(drop, vec![22, 30]);
        let inos: Vec<u64> = cand.iter().map(|c| c.ino).collect();
        assert_eq!(inos, vec![10, 31, 20], "sparsest first");
        // The threshold.
        let (_, cand) = choose(&infos, |s| s == 7, now, idle, 0.15);
        assert_eq!(cand.iter().map(|c| c.ino).collect::<Vec<_>>(), vec![10]);
    }

    #[test]
    fn a_header_is_taken_only_for_its_file() {
        let mut h = vec![0u8; 32];
        h[0..4].copy_from_slice(b"WNDL");
        h[8..16].copy_from_slice(&42u64.to_le_bytes());
        h[16..24].copy_from_slice(&5000u64.to_le_bytes());
        let c = crc32c::crc32c(&h[8..32]);
        h[4..8].copy_from_slice(&c.to_le_bytes());
        assert_eq!(header_len(&h, 42, 5000), Some(5000));
        // A truncated file's needle is longer than what the MDS serves.
        assert_eq!(header_len(&h, 42, 10), Some(5000));
        assert_eq!(header_len(&h, 42, 5001), None);
        assert_eq!(header_len(&h, 43, 10), None);
        assert_eq!(header_len(&h[..31], 42, 10), None);
        let mut bad = h.clone();
        bad[20] ^= 1;
        assert_eq!(header_len(&bad, 42, 10), None);
    }
}
