//! Packed small files: needles in segments.
//!
//! A small file written whole between open and close is stored as one
//! *needle* appended to a *segment* (a hidden one-chunk inode this mount
//! created), not as a chunk of its own. A needle is a 32-byte header then
//! the data, padded to a multiple of `NEEDLE_ALIGN`:
//!
//! ```text
//! 0  4  magic "WNDL"
//! 4  4  crc32c of header bytes 8..32
//! 8  8  ino of the file
//! 16 8  data length L
//! 24 4  crc32c of the data
//! 28 4  reserved (0)
//! 32 L  data
//! ```
//!
//! Invariant: a reader serves a needle only when magic, header crc, ino,
//! length and data crc all match what the MDS says the file holds; anything
//! else is corruption (try another replica). One exception: a truncate
//! that shrank a packed file cut only the MDS's length, not the needle,
//! and the reader may read no further than that length (its capability's
//! range), so for a needle longer than the MDS says the data crc cannot be
//! checked; the header still must match, and the chunk daemon's own block
//! crcs still cover the bytes.
//!
//! Flow of a packed flush (write_path.rs `flush_locked_as` decides, with
//! `should_pack`): the file's bytes → `Weft::append_needle` reserves the
//! next 64-byte-aligned offset of this mount's open segment (a new one by
//! `CreateSegment` when it is full), writes the needle through the normal
//! chunk write path for (segment ino, chunk 0) — same lease, retries and
//! re-allocation as any chunk (`store_chunk`) — and only then the caller
//! sends `CommitPacked`. This mount is the segment's only writer, so
//! offsets need no RPC, and appends of several files run at once on
//! disjoint ranges. fsync of a packed file syncs the segment's chunk: one
//! fdatasync on each replica covers every needle appended before it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use weft_proto::meta_request::Op;
use weft_proto::{Caller, CreateSegmentReq, Errno};

use crate::client::Weft;
use crate::open_files::FileState;
use crate::writeback::ChunkExtents;

/// The needle's first four bytes.
pub const MAGIC: &[u8; 4] = b"WNDL";
/// Bytes of a needle header.
pub const HEADER: u64 = 32;
/// Needles start at multiples of this within a segment.
pub const NEEDLE_ALIGN: u64 = 64;

/// Bytes a needle of `len` data bytes occupies in its segment (padding included).
pub fn needle_span(len: u64) -> u64 {
    (HEADER + len).div_ceil(NEEDLE_ALIGN) * NEEDLE_ALIGN
}

/// The needle of file `ino` holding `data`, padded with zeros to its span.
pub fn encode(ino: u64, data: &[u8]) -> Vec<u8> {
    let len = data.len() as u64;
    let mut v = Vec::with_capacity(needle_span(len) as usize);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&ino.to_le_bytes());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    let hcrc = crc32c::crc32c(&v[8..32]);
    v[4..8].copy_from_slice(&hcrc.to_le_bytes());
    v.extend_from_slice(data);
    v.resize(needle_span(len) as usize, 0);
    v
}

/// Why a needle read from a replica is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    Short,
    Magic,
    HeaderCrc,
    Ino,
    Len,
    DataCrc,
    Reserved,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self {
            Corrupt::Short => "short needle",
            Corrupt::Magic => "bad needle magic",
            Corrupt::HeaderCrc => "needle header crc mismatch",
            Corrupt::Ino => "needle of another inode",
            Corrupt::Len => "needle length mismatch",
            Corrupt::DataCrc => "needle data crc mismatch",
            Corrupt::Reserved => "needle reserved field set",
        };
        f.write_str(what)
    }
}

/// Checks `buf` (header + at least `len` data bytes, as read from the
/// segment at the needle's offset) against what the MDS says: file `ino`,
/// `len` data bytes (fewer than the needle holds after a truncate: then its
/// first `len`, without the data crc). Returns the data.
pub fn verify(buf: &[u8], ino: u64, len: u64) -> Result<&[u8], Corrupt> {
    if (buf.len() as u64) < HEADER {
        return Err(Corrupt::Short);
    }
    let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().unwrap());
    if &buf[0..4] != MAGIC {
        return Err(Corrupt::Magic);
    }
    if u32_at(4) != crc32c::crc32c(&buf[8..32]) {
        return Err(Corrupt::HeaderCrc);
    }
    if u64_at(8) != ino {
        return Err(Corrupt::Ino);
    }
    let stored = u64_at(16);
    if stored < len {
        return Err(Corrupt::Len);
    }
    if u32_at(28) != 0 {
        return Err(Corrupt::Reserved);
    }
    let Some(data) = buf.get(HEADER as usize..(HEADER + len) as usize) else {
        return Err(Corrupt::Short);
    };
    if stored == len && u32_at(24) != crc32c::crc32c(data) {
        return Err(Corrupt::DataCrc);
    }
    Ok(data)
}

/// A segment holds at most this much (or one chunk, if smaller).
pub const SEGMENT_MAX: u64 = 64 << 20;

/// The packing threshold a mount uses: what it was asked for, at most a
/// quarter of a segment and one read's worth of needle.
pub fn pack_limit(asked: u64, chunk_size: u64) -> u64 {
    let segment = chunk_size.min(SEGMENT_MAX);
    asked
        .min(segment / 4)
        .min(weft_proto::MAX_IO as u64 - HEADER)
}

/// Whether a flush stores the file as a needle: the flush holds the whole
/// file (`whole`: it was empty when opened or truncated to 0 since, and
/// no chunk of it was stored since), ends within `pack_max`, and is the
/// last of a write (close, fsync, release, or a chmod/chown/utimens of the
/// open file, which tar and cp -p send last), not a background one that
/// more writes may follow.
pub fn should_pack(pack_max: u64, whole: bool, last: bool, end: u64) -> bool {
    pack_max > 0 && whole && last && end <= pack_max
}

/// The file's bytes `[0, end)` from a flush's dirty extents, zeros in gaps.
/// None when any extent lies outside chunk 0 or past `end` (not a small file).
pub fn gather(chunks: &[ChunkExtents], end: u64) -> Option<Vec<u8>> {
    let mut v = vec![0u8; end as usize];
    for ce in chunks {
        for (off, d) in &ce.extents {
            if ce.index != 0 || off + d.len() as u64 > end {
                return None;
            }
            v[*off as usize..*off as usize + d.len()].copy_from_slice(d);
        }
    }
    Some(v)
}

/// Where `append_needle` put a needle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub segment: u64,
    pub chunk_id: u64,
    pub offset: u64,
}

struct Open {
    ino: u64,
    chunk_id: u64,
    next: u64,
    st: Arc<FileState>,
}

/// This mount's segments: the one appended to, and the write state (leases,
/// chunks to sync) of each it has written.
pub struct Segments {
    max: u64,
    chunk_size: u64,
    open: tokio::sync::Mutex<Option<Open>>,
    states: parking_lot::Mutex<HashMap<u64, Arc<FileState>>>,
    /// One segment sync at a time: a second fsync waits for the first's
    /// fdatasync instead of returning before it (the chunks to sync are
    /// taken by the first).
    sync_lock: tokio::sync::Mutex<()>,
    /// The MDS does not know segments (ENOSYS): this mount stops asking.
    unsupported: AtomicBool,
}

impl Segments {
    pub fn new(chunk_size: u64) -> Segments {
        Segments {
            max: chunk_size.min(SEGMENT_MAX),
            chunk_size,
            open: tokio::sync::Mutex::new(None),
            states: parking_lot::Mutex::new(HashMap::new()),
            sync_lock: tokio::sync::Mutex::new(()),
            unsupported: AtomicBool::new(false),
        }
    }

    /// The packing threshold in force: `pack_max`, or 0 once the MDS said
    /// it cannot pack.
    pub fn threshold(&self, pack_max: u64) -> u64 {
        if self.unsupported.load(Ordering::Relaxed) {
            0
        } else {
            pack_max
        }
    }
}

/// Segments are written as root: they are root's 0600 files.
fn segment_caller() -> Caller {
    Caller::default()
}

impl Weft {
    /// Appends the needle of file `ino` holding `data` to this mount's open
    /// segment and returns where it is, once every replica has it.
    pub(crate) async fn append_needle(&self, ino: u64, data: &[u8]) -> Result<Placed, Errno> {
        let span = needle_span(data.len() as u64);
        let caller = segment_caller();
        let (placed, st) = {
            let mut open = self.segments.open.lock().await;
            if open
                .as_ref()
                .is_none_or(|o| o.next + span > self.segments.max)
            {
                *open = Some(self.new_segment(&caller).await?);
            }
            let o = open.as_mut().expect("a segment is open");
            let placed = Placed {
                segment: o.ino,
                chunk_id: o.chunk_id,
                offset: o.next,
            };
            o.next += span;
            (placed, o.st.clone())
        };
        let ce = ChunkExtents {
            index: 0,
            extents: vec![(placed.offset, encode(ino, data))],
        };
        if let Err(e) = self.store_chunk(&st, &caller, ce, false).await {
            // The segment may be gone (compacted away after this session
            // expired): the next needle goes into a new one.
            self.drop_segment(placed.segment).await;
            return Err(e);
        }
        Ok(placed)
    }

    /// Stops appending to `segment` if it is still the open one.
    pub(crate) async fn drop_segment(&self, segment: u64) {
        let mut open = self.segments.open.lock().await;
        if open.as_ref().is_some_and(|o| o.ino == segment) {
            *open = None;
        }
    }

    async fn new_segment(&self, caller: &Caller) -> Result<Open, Errno> {
        let a = self
            .mds
            .attr(caller, Op::CreateSegment(CreateSegmentReq {}))
            .await
            .inspect_err(|e| {
                if *e == Errno(libc::ENOSYS) {
                    tracing::warn!("the MDS does not pack small files: storing chunks");
                    self.segments.unsupported.store(true, Ordering::Relaxed);
                }
            })?;
        let st = Arc::new(FileState::new(a.ino, self.segments.chunk_size));
        // Its leases are cached as an open file's are.
        st.inner.lock().opens = 1;
        let w = self.chunk_alloc(&st, caller, 0, &[]).await?;
        let chunk_id = w.chunk.map_or(0, |l| l.chunk_id);
        self.segments.states.lock().insert(a.ino, st.clone());
        tracing::debug!(segment = a.ino, chunk = chunk_id, "new segment");
        Ok(Open {
            ino: a.ino,
            chunk_id,
            next: 0,
            st,
        })
    }

    /// Makes every needle appended to `segment` so far durable on all its
    /// replicas.
    pub(crate) async fn sync_segment(&self, segment: u64) -> Result<(), Errno> {
        let Some(st) = self.segments.states.lock().get(&segment).cloned() else {
            return Ok(());
        };
        let _g = self.segments.sync_lock.lock().await;
        self.sync_chunks(&st).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_decision() {
        assert!(should_pack(64 << 10, true, true, 0));
        assert!(should_pack(64 << 10, true, true, 64 << 10));
        assert!(!should_pack(64 << 10, true, true, (64 << 10) + 1));
        assert!(!should_pack(0, true, true, 10), "0 turns packing off");
        assert!(!should_pack(64 << 10, false, true, 10), "part of the file");
        assert!(!should_pack(64 << 10, true, false, 10), "background flush");
    }

    #[test]
    fn limits() {
        assert_eq!(pack_limit(64 << 10, 64 << 20), 64 << 10);
        assert_eq!(pack_limit(64 << 10, 128 << 10), 32 << 10);
        assert_eq!(pack_limit(1 << 30, 1 << 30), (4 << 20) - HEADER);
        assert_eq!(pack_limit(0, 64 << 20), 0);
    }

    #[test]
    fn gathering() {
        let ce = |index, extents: Vec<(u64, Vec<u8>)>| ChunkExtents { index, extents };
        let g = gather(&[ce(0, vec![(2, vec![1, 2]), (6, vec![3])])], 8).unwrap();
        assert_eq!(g, [0, 0, 1, 2, 0, 0, 3, 0]);
        assert_eq!(gather(&[], 3).unwrap(), [0, 0, 0]);
        assert!(gather(&[ce(1, vec![(0, vec![1])])], 8).is_none());
        assert!(gather(&[ce(0, vec![(7, vec![1, 2])])], 8).is_none());
    }

    #[test]
    fn spans_are_aligned() {
        assert_eq!(needle_span(0), 64);
        assert_eq!(needle_span(32), 64);
        assert_eq!(needle_span(33), 128);
        assert_eq!(needle_span(65536), 65536 + 64);
        for len in [0u64, 1, 31, 32, 33, 4000, 70 << 10] {
            assert_eq!(
                encode(7, &vec![1; len as usize]).len() as u64,
                needle_span(len)
            );
        }
    }

    #[test]
    fn round_trip() {
        for len in [0usize, 1, 17, 31, 32, 33, 64, 4096, 65536] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let n = encode(42, &data);
            assert_eq!(verify(&n, 42, len as u64).unwrap(), &data[..]);
            // Padding is zeros; the reader may read less than the span.
            assert!(n[HEADER as usize + len..].iter().all(|b| *b == 0));
            assert_eq!(
                verify(&n[..HEADER as usize + len], 42, len as u64).unwrap(),
                &data[..]
            );
        }
    }

    #[test]
    fn wrong_expectations_are_refused() {
        let n = encode(42, b"hello");
        assert_eq!(verify(&n, 43, 5), Err(Corrupt::Ino));
        assert_eq!(verify(&n, 42, 6), Err(Corrupt::Len));
        assert_eq!(
            verify(&n[..HEADER as usize + 4], 42, 5),
            Err(Corrupt::Short)
        );
        assert_eq!(verify(&n[..31], 42, 5), Err(Corrupt::Short));
        assert_eq!(verify(&[0u8; 64], 42, 0), Err(Corrupt::Magic));
    }

    /// A file shrunk by a truncate reads the first bytes of its needle,
    /// whose header still must match.
    #[test]
    fn a_cut_needle_serves_its_first_bytes() {
        let n = encode(42, b"hello world");
        assert_eq!(verify(&n, 42, 5).unwrap(), b"hello");
        // Read no further than the cut, as the capability allows.
        assert_eq!(verify(&n[..HEADER as usize + 5], 42, 5).unwrap(), b"hello");
        assert_eq!(verify(&n[..HEADER as usize + 1], 42, 1).unwrap(), b"h");
        assert_eq!(
            verify(&n[..HEADER as usize + 4], 42, 5),
            Err(Corrupt::Short)
        );
        assert_eq!(verify(&n, 43, 5), Err(Corrupt::Ino));
        let mut bad = n.clone();
        bad[0] = b'X';
        assert_eq!(verify(&bad, 42, 5), Err(Corrupt::Magic));
        let mut bad = n;
        bad[20] ^= 1;
        assert_eq!(verify(&bad, 42, 5), Err(Corrupt::HeaderCrc));
    }

    /// Every single flipped bit in header or data is refused (padding is
    /// not covered: it is never served).
    #[test]
    fn every_corrupted_field_is_refused() {
        let data: Vec<u8> = (0..100u8).collect();
        let n = encode(9, &data);
        let covered = HEADER as usize + data.len();
        for at in 0..covered {
            for bit in 0..8 {
                let mut bad = n.clone();
                bad[at] ^= 1 << bit;
                let r = verify(&bad, 9, data.len() as u64);
                assert!(r.is_err(), "flip of byte {at} bit {bit} accepted");
                let want = match at {
                    0..4 => Corrupt::Magic,
                    // A changed field no longer matches the header crc.
                    4..32 => Corrupt::HeaderCrc,
                    _ => Corrupt::DataCrc,
                };
                assert_eq!(r, Err(want), "byte {at}");
            }
        }
    }

    /// A header re-sealed with a valid crc but wrong fields is still refused.
    #[test]
    fn resealed_fields_are_refused() {
        let n = encode(9, b"abcdef");
        let reseal = |mut b: Vec<u8>| {
            let c = crc32c::crc32c(&b[8..32]);
            b[4..8].copy_from_slice(&c.to_le_bytes());
            b
        };
        let mut b = n.clone();
        b[28] = 1;
        assert_eq!(verify(&reseal(b), 9, 6), Err(Corrupt::Reserved));
        let mut b = n.clone();
        b[24] ^= 0xff;
        assert_eq!(verify(&reseal(b), 9, 6), Err(Corrupt::DataCrc));
        let mut b = n.clone();
        b[8] = 10;
        assert_eq!(verify(&reseal(b), 9, 6), Err(Corrupt::Ino));
        let mut b = n;
        b[16] = 5;
        assert_eq!(verify(&reseal(b), 9, 6), Err(Corrupt::Len));
    }
}
